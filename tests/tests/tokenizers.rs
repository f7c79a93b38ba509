//! Tokenizers against their references: the SentencePiece vocabulary of Gemma 3's GGUF
//! against llama.cpp's ids for the whole wikitext-2 test file; the tokenizer.json of every
//! architecture folder in `shared/reference/architectures` against the ids transformers
//! gave (BOS where `add_bos_token` says so); and `--add-bos` over the tokenizer's own policy.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh::tokenizer::TextTokenizer;
use evalmesh_oracles::{adds_bos, expected, folder, text, FAMILIES, TEXTS};
use evalmesh_tests::{assert_clean_error, gemma_model, run_evalmesh, shared_dir, test_model};

/// `evalmesh tokenize --ids` of `text` with the model at `model` and `extra` flags.
fn ids(model: &Path, text: &str, extra: &[&str]) -> Vec<u32> {
    let mut args = vec!["tokenize", "--model", model.to_str().unwrap(), "--ids"];
    args.extend(extra);
    args.push(text);
    let output = run_evalmesh(&args);
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect()
}

#[test]
fn gemma_tokenisation_of_wikitext_matches_llama_cpp() {
    let data = shared_dir().join("data/wikitext-2/wiki.test.raw");
    let model = gemma_model();
    let output =
        run_evalmesh(&["tokenize", "--model", model.to_str().unwrap(), "--file", data.to_str().unwrap(), "--ids"]);
    assert!(output.status.success());
    let ours: Vec<&str> = std::str::from_utf8(&output.stdout).unwrap().lines().collect();
    let reference =
        std::fs::read_to_string(shared_dir().join("reference/architectures/gemma3-wikitext-token-ids.txt")).unwrap();
    let theirs: Vec<&str> = reference.lines().collect();
    assert_eq!(theirs.len(), 292_282);
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("token {i} differs: {} vs llama.cpp's {}", ours[i], theirs[i]);
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn add_bos_overrides_the_vocabulary() {
    // Gemma's vocabulary adds BOS (2), SmolLM2's does not (its BOS is 1).
    let gemma = gemma_model();
    let hello = ids(&gemma, "Hello world", &[]);
    assert_eq!(hello[0], 2);
    assert_eq!(ids(&gemma, "Hello world", &["--add-bos", "false"]), hello[1..].to_vec());
    let smollm = test_model();
    let plain = ids(&smollm, "Hello world", &[]);
    assert_ne!(plain[0], 1);
    assert_eq!(ids(&smollm, "Hello world", &["--add-bos", "true"]), [vec![1], plain].concat());
}

#[test]
fn add_bos_without_a_bos_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = serde_json::json!({"version": "1.0",
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"},
        "pre_tokenizer": {"type": "Whitespace"}});
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let output = run_evalmesh(&["tokenize", "--tokenizer", path.to_str().unwrap(), "--add-bos", "true", "a b"]);
    assert_clean_error(&output, &["--add-bos true", "no BOS token"]);
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"add_bos_token": "yes"}"#).unwrap();
    let output = run_evalmesh(&["tokenize", "--tokenizer", path.to_str().unwrap(), "a b"]);
    assert_clean_error(&output, &["tokenizer_config.json", "add_bos_token"]);
}

#[test]
fn reference_tokenizers_reproduce_transformers_ids() {
    // Every folder with a tokenizer is one of the oracles' families.
    let root = shared_dir().join("reference/architectures");
    let mut on_disk: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("tokenizer.json").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    let mut families = FAMILIES.map(String::from).to_vec();
    families.sort();
    assert_eq!(on_disk, families);
    for family in FAMILIES {
        let tokenizer = TextTokenizer::from_file(&folder(family).join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.add_bos().is_some(), adds_bos(family), "{family}: BOS policy");
        for i in 0..TEXTS {
            let (ids, _) = expected(family, i);
            assert_eq!(tokenizer.encode_document(&text(family, i)).unwrap(), ids, "{family}: text {i}");
        }
    }
}
