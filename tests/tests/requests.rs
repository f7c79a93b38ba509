//! lm-evaluation-harness's request boundary with the test model's real tokenizer.

#![allow(clippy::unwrap_used)]

use evalmesh::tasks::requests::encode_pair;
use evalmesh::tokenizer::TextTokenizer;
use evalmesh_tests::test_model;
use evalmesh_worker::weights::gguf::GgufFile;

#[test]
fn trailing_context_whitespace_moves_to_the_continuation() {
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&test_model()).unwrap()).unwrap();
    let (context, continuation) = encode_pair(&tok, "The cat sat on the ", "mat").unwrap();
    assert_eq!(context, tok.encode("The cat sat on the").unwrap());
    let whole = tok.encode("The cat sat on the mat").unwrap();
    assert_eq!(continuation, whole[context.len()..].to_vec());
    assert_eq!(continuation, tok.encode(" mat").unwrap());
}

#[test]
fn continuation_tokens_come_from_the_whole_encoding() {
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&test_model()).unwrap()).unwrap();
    // "1" and "23" would be one number token each if encoded alone; SmolLM2 splits digits,
    // so the whole-string encoding decides, as in lm-evaluation-harness.
    let (context, continuation) = encode_pair(&tok, "Answer: 1", "23").unwrap();
    let whole = tok.encode("Answer: 123").unwrap();
    assert_eq!([context.clone(), continuation.clone()].concat(), whole);
}

#[test]
fn empty_context_becomes_the_prefix_token() {
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&test_model()).unwrap()).unwrap();
    let (context, continuation) = encode_pair(&tok, "", "Hello world").unwrap();
    // SmolLM2's BOS is token 1 (shared/reference/README.md).
    assert_eq!(context, vec![1]);
    assert_eq!(continuation, tok.encode("Hello world").unwrap());
}
