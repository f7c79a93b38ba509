//! GGUF vocabularies of `tokenizer.ggml.model = "gpt2"` (byte-level BPE) as the
//! `tokenizer.json` the `tokenizers` crate builds: the vocabulary, the merges, the control
//! tokens as added tokens, and the pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`;
//! and the check of a BPE model's merges that keeps the crate from panicking.

use evalmesh_worker::weights::gguf::{GgufFile, Value};
use serde_json::json;

use super::TokenizerError;

/// GGUF token type of control tokens (`<|endoftext|>` and the like).
const TOKEN_TYPE_CONTROL: i64 = 3;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, as tokenizer.json.
fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    let sequence = |parts: Vec<serde_json::Value>| json!({"type": "Sequence", "pretokenizers": parts});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // llama.cpp splits digits one by one, then applies GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            sequence(vec![json!({"type": "Digits", "individual_digits": true}), byte_level(true)])
        }
        "llama3" | "llama-bpe" => sequence(vec![split(LLAMA3_SPLIT), byte_level(false)]),
        "qwen2" => sequence(vec![split(QWEN2_SPLIT), byte_level(false)]),
        _ => return None,
    })
}

/// Builds a `tokenizer.json` equivalent to the GGUF file's own tokenizer.
pub fn gguf_tokenizer_json(file: &GgufFile) -> Result<serde_json::Value, TokenizerError> {
    let bad = |problem: String| TokenizerError::Model { path: file.path.clone(), problem };
    let string = |key: &str| file.get(key).and_then(Value::as_str);
    match string("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some("llama") => {
            return Err(bad(
                "tokenizer.ggml.model `llama` (SentencePiece) has no tokenizer.json form here; TextTokenizer::from_gguf tokenizes it natively".into(),
            ))
        }
        Some(other) => {
            return Err(bad(format!(
                "tokenizer.ggml.model `{other}` is not supported (gpt2-style BPE and llama-style SentencePiece are); pass a tokenizer.json with --tokenizer"
            )))
        }
        None => return Err(bad("tokenizer.ggml.model is missing; pass a tokenizer.json with --tokenizer".into())),
    }
    let pre_name = string("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        bad(format!(
            "pre-tokenizer `{pre_name}` (tokenizer.ggml.pre) is not supported; pass a tokenizer.json with --tokenizer"
        ))
    })?;
    let strings = |key: &str| -> Result<Vec<&str>, TokenizerError> {
        let items = file.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("{key} is missing")))?;
        items.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("{key} holds a non-string")))).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_u64().map_or(-1, |x| x as i64)).collect(),
        None => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| types.get(*id) == Some(&TOKEN_TYPE_CONTROL))
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// Checks a BPE model's merges before the tokenizers library builds it (which panics on
/// a merge longer than every token instead of refusing it): each merge must join two
/// tokens of the vocabulary into a third, as the library then checks.
pub(super) fn check_merges(tokenizer: &serde_json::Value) -> Result<(), String> {
    let model = &tokenizer["model"];
    let (Some("BPE"), Some(vocab), Some(merges)) =
        (model["type"].as_str(), model["vocab"].as_object(), model["merges"].as_array())
    else {
        return Ok(());
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        let pair = match merge {
            serde_json::Value::String(s) => s.split_once(' '),
            serde_json::Value::Array(p) => p.first().and_then(|a| Some((a.as_str()?, p.get(1)?.as_str()?))),
            _ => None,
        };
        let Some((a, b)) = pair else { return Err(format!("merge {i} is not a pair of tokens: {merge}")) };
        let joined = format!("{a}{}", b.strip_prefix(prefix).unwrap_or(b));
        if ![a, b, &joined].iter().all(|t| vocab.contains_key(*t)) {
            return Err(format!("merge {i} `{a} {b}` does not join two tokens of the vocabulary into a third"));
        }
    }
    Ok(())
}
