//! Helpers for the integration tests: where the built binary, the test model and the
//! shared reference data are, running the binary with its command and output printed
//! on failure, and rewriting GGUF files to make bad inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use evalmesh_worker::weights::gguf::writer::{write, RawTensor};
use evalmesh_worker::weights::gguf::{GgufFile, Value};

/// The `evalmesh` binary next to the test executable (scripts/test.sh builds it first).
pub fn evalmesh_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let bin = profile_dir.join("evalmesh");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p evalmesh` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The test model: $EVALMESH_TEST_MODEL, else the fetch script's cache.
pub fn test_model() -> PathBuf {
    let path = match std::env::var_os("EVALMESH_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => evalmesh::cli::cache_dir().join(evalmesh::cli::TEST_MODEL_FILE),
    };
    assert!(
        path.is_file(),
        "test model {} is missing: run scripts/fetch-test-model.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The project's shared folder (reference figures and data): $EVALMESH_SHARED, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("EVALMESH_SHARED") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    assert!(dir.join("reference").is_dir(), "shared data not found at {}: set EVALMESH_SHARED", dir.display());
    dir
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs evalmesh with `args`; the command and its output are printed so that a failing
/// test shows them.
pub fn run_evalmesh(args: &[&str]) -> Output {
    let bin = evalmesh_bin();
    let output = Command::new(&bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    eprintln!("$ {} {}", bin.display(), args.join(" "));
    eprintln!("exit: {:?}", output.status.code());
    eprintln!("stdout:\n{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Asserts that a run failed cleanly: a non-zero exit (not a signal), no panic, and one
/// error line that contains every one of `needles`. Returns the line.
pub fn assert_clean_error(output: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "expected exit code 1");
    assert!(!stderr.contains("panicked"), "the process panicked");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected exactly one error line");
    for needle in needles {
        assert!(errors[0].contains(needle), "error line lacks `{needle}`: {}", errors[0]);
    }
    errors[0].to_string()
}

/// A GGUF file's contents, editable and writable again.
pub struct EditableGguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
}

impl EditableGguf {
    pub fn read(path: &Path) -> EditableGguf {
        let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
        let metadata = file.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut infos: Vec<_> = file.tensors.values().collect();
        infos.sort_by_key(|t| t.offset);
        let tensors = infos
            .iter()
            .map(|t| RawTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                type_code: t.ggml_type.code(),
                bytes: file.tensor_bytes(t).to_vec(),
            })
            .collect();
        EditableGguf { metadata, tensors }
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn write(&self, path: &Path) {
        let metadata: Vec<(&str, Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        std::fs::write(path, write(&metadata, &self.tensors)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
