//! Model configurations that cannot describe a model evalmesh computes: each is refused
//! with one clear error line naming the file or field, a non-zero exit and no panic.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh_tests::{assert_clean_error, path_str, repo_dir, run_evalmesh, shared_dir};

/// A directory holding only `config.json`: Mixtral-8x7B's, edited by `edit`.
fn config_dir(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> &Path {
    let text = std::fs::read_to_string(repo_dir().join("tests/fixtures/configs/mixtral-8x7b.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn inspect(dir: &Path) -> std::process::Output {
    run_evalmesh(&["inspect", "--model", path_str(dir)])
}

#[test]
fn an_unsupported_architecture_lists_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let model = config_dir(dir.path(), |c| c["model_type"] = "gpt_neox".into());
    let line = assert_clean_error(&inspect(model), &["config.json", "architecture `gpt_neox` is not supported"]);
    for family in ["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "olmo2"] {
        assert!(line.contains(family), "{family} missing from: {line}");
    }
    let output = run_evalmesh(&["plan", "--model", path_str(model), "--workers", "2", "--device", "h100"]);
    assert_clean_error(&output, &["gpt_neox", "supported: llama"]);
}

#[test]
fn more_experts_per_token_than_experts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = config_dir(dir.path(), |c| c["num_experts_per_tok"] = 9.into());
    assert_clean_error(&inspect(model), &["config.json", "num_experts_per_tok", "9", "8 of num_local_experts"]);
}

#[test]
fn an_unknown_rope_scaling_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = config_dir(dir.path(), |c| c["rope_scaling"] = serde_json::json!({"type": "spiral", "factor": 2.0}));
    assert_clean_error(&inspect(model), &["config.json", "rope_scaling.rope_type", "spiral", "yarn, longrope"]);
}

/// Qwen 3's oracle with a `head_dim` its tensors do not have (8 for 32): the first tensor
/// read that disagrees, its per-head query norm, is named with both shapes.
#[test]
fn a_config_that_contradicts_the_tensors_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = shared_dir().join("reference/architectures/qwen3");
    for file in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(oracle.join(file), dir.path().join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(oracle.join("config.json")).unwrap()).unwrap();
    config["head_dim"] = 8.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "a short text to score").unwrap();
    let output = run_evalmesh(&["score", "--model", path_str(dir.path()), "--file", path_str(&text)]);
    assert_clean_error(&output, &["model.layers.0.self_attn.q_norm.weight", "1 × 32", "1 × 8", "disagree"]);
}

/// A folder that is not a model (no `config.json`) is named as such, with what a model is,
/// by every command that opens one.
#[test]
fn a_folder_without_a_config_is_named_as_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let folder = path_str(dir.path());
    let needles = [folder, "not a model", "config.json", "GGUF"];
    assert_clean_error(&inspect(dir.path()), &needles);
    assert_clean_error(&run_evalmesh(&["plan", "--model", folder, "--workers", "2"]), &needles);
    assert_clean_error(&run_evalmesh(&["run", "--model", folder, "--random-weights", "--task", "hellaswag"]), &needles);
}
