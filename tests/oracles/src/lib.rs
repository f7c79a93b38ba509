//! The tests' shared data ([`shared_dir`]) and its architecture oracles: for each model
//! family of `shared/reference/architectures/` ([`FAMILIES`]), a tiny random model that
//! Hugging Face transformers wrote, three texts, and transformers' token ids and
//! log-probabilities on them ([`expected`]). A crate of its own, with no MPI and no
//! coordinator, so that the worker's tests read them too, on aarch64 under qemu as well
//! (scripts/test.sh), and the integration tests (`tests/tests/`) read them the same way.

use std::path::{Path, PathBuf};

/// The families, one folder each.
pub const FAMILIES: [&str; 10] =
    ["llama3", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "mixtral", "olmo2"];

/// Texts in each family's oracle.
pub const TEXTS: usize = 3;

/// How far a log-probability may lie from transformers': both sides compute in f32 from
/// the same bf16 weights; only the order of summation differs (transformers' eager
/// attention and matmuls against evalmesh's blocked ones), which moves a log-probability
/// by a few 1e-6 over these 2–3 layers.
pub const TOLERANCE: f64 = 1e-4;

/// The project's shared folder (reference figures and data): $EVALMESH_SHARED, else
/// `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("EVALMESH_SHARED") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(dir.join("reference").is_dir(), "shared data not found at {}: set EVALMESH_SHARED", dir.display());
    dir
}

/// The oracle model of `family`: a Hugging Face folder.
pub fn folder(family: &str) -> PathBuf {
    shared_dir().join("reference/architectures").join(family)
}

/// `family`'s texts.json: its texts, and whether transformers' tokenizer put a BOS first.
fn texts(family: &str) -> (PathBuf, serde_json::Value) {
    let path = folder(family).join("texts.json");
    let read = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let texts = serde_json::from_str(&read).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, texts)
}

/// Text `i` of `family`'s oracle.
pub fn text(family: &str, i: usize) -> String {
    let (path, texts) = texts(family);
    match texts["texts"][i]["text"].as_str() {
        Some(text) => text.to_string(),
        None => panic!("{}: no texts[{i}].text", path.display()),
    }
}

/// Whether `family`'s tokenizer starts a text with BOS (its `add_bos_token`).
pub fn adds_bos(family: &str) -> bool {
    let (path, texts) = texts(family);
    match texts["add_bos_token"].as_bool() {
        Some(adds) => adds,
        None => panic!("{}: no add_bos_token", path.display()),
    }
}

/// Text `i`'s token ids and transformers' log-probabilities after each of them (`ids ×
/// vocab`, row by row) for `family`.
pub fn expected(family: &str, i: usize) -> (Vec<u32>, Vec<f32>) {
    let path = folder(family).join("expected.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensor = |name: String| file.tensor(&name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    let ids = tensor(format!("text{i}.ids"));
    let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(std::array::from_fn(|j| b[j])) as u32).collect();
    let logprobs = tensor(format!("text{i}.logprobs"));
    let logprobs = logprobs.data().chunks_exact(4).map(|b| f32::from_le_bytes(std::array::from_fn(|j| b[j]))).collect();
    (ids, logprobs)
}
