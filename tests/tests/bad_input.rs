//! Bad inputs: each gives one error line naming the file and the problem, exit code 1
//! and no panic.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh_tests::{assert_clean_error, run_evalmesh, test_model, EditableGguf};
use evalmesh_worker::weights::gguf::Value;

fn run_with_model(model: &Path) -> std::process::Output {
    run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--perplexity-mode", "llamacpp"])
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(test_model()).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "past the end of the file", "truncated"]);
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("magic.gguf");
    let mut bytes = std::fs::read(test_model()).unwrap()[..4096].to_vec();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&path, bytes).unwrap();
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "wrong magic", "not a GGUF file"]);
}

#[test]
fn unknown_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("type.gguf");
    let mut model = EditableGguf::read(&test_model());
    let t = model.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
    t.type_code = 99;
    model.write(&path);
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.0.attn_q.weight", "type code 99"]);
}

#[test]
fn tensor_shape_contradicts_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.gguf");
    let mut model = EditableGguf::read(&test_model());
    model.set("llama.feed_forward_length", Value::Uint(1024));
    model.write(&path);
    assert_clean_error(
        &run_with_model(&path),
        &[path.to_str().unwrap(), "blk.0.ffn_gate.weight", "1536 × 576", "1024 × 576"],
    );
}

#[test]
fn config_missing_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.gguf");
    let mut model = EditableGguf::read(&test_model());
    model.remove("llama.embedding_length");
    model.write(&path);
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "llama.embedding_length", "missing"]);
}

#[test]
fn hf_config_missing_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 1,
        "num_attention_heads": 1, "intermediate_size": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 16});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let output = run_with_model(dir.path());
    assert_clean_error(&output, &["config.json", "`hidden_size` is missing"]);
}

#[test]
fn missing_model_file() {
    let output = run_with_model(Path::new("/nonexistent/model.gguf"));
    assert_clean_error(&output, &["/nonexistent/model.gguf", "no such file"]);
}

#[test]
fn non_utf8_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    std::fs::write(&path, b"caf\xe9 au lait").unwrap();
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--data", path.to_str().unwrap()]);
    assert_clean_error(&output, &[path.to_str().unwrap(), "not UTF-8", "offset 3"]);
}

#[test]
fn missing_data_file() {
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--data", "/nonexistent/text.txt"]);
    assert_clean_error(&output, &["/nonexistent/text.txt", "No such file"]);
}

#[test]
fn text_too_short_for_llamacpp_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.txt");
    std::fs::write(&path, "Only a few words.").unwrap();
    let model = test_model();
    let output = run_evalmesh(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--data",
        path.to_str().unwrap(),
        "--perplexity-mode",
        "llamacpp",
    ]);
    assert_clean_error(&output, &["--ctx 512", "needs at least 1024"]);
}

#[test]
fn cuda_without_a_gpu() {
    // Without the cuda feature the error says how to build it; with it, no GPU loads here.
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--device", "cuda"]);
    assert_clean_error(&output, &["cuda", "--device cpu"]);
}
