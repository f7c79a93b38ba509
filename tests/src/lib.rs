//! Helpers for the integration tests: where the built binary, the test model and the
//! shared reference data are, running the binary with its command and output printed
//! on failure, finding the samples files as lm-evaluation-harness's readers do
//! ([`lm_eval`]), and rewriting GGUF files to make bad inputs.

pub mod fuzz;
pub mod lm_eval;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use evalmesh::results::Report;
/// The project's shared folder (reference figures and data).
pub use evalmesh_oracles::shared_dir;
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
        None => evalmesh::model::cache_dir().join(evalmesh::model::TEST_MODEL_FILE),
    };
    assert!(
        path.is_file(),
        "test model {} is missing: run scripts/fetch-test-model.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The Gemma 3 270M GGUF (a SentencePiece vocabulary): `gemma-3-270m-q4_k_m.gguf` in the
/// test model's folder, where scripts/fetch-test-model.sh puts it.
pub fn gemma_model() -> PathBuf {
    let path = test_model().with_file_name(GEMMA_MODEL_FILE);
    assert!(path.is_file(), "{} is missing: run scripts/fetch-test-model.sh (scripts/test.sh does)", path.display());
    path
}

/// The folder holding `humaneval/HumanEval.jsonl.gz` (the cache, where
/// scripts/fetch-humaneval.sh puts it): the `--data-dir` of the humaneval task.
pub fn humaneval_data_dir() -> PathBuf {
    let dir = test_model().parent().map(Path::to_path_buf).unwrap_or_default();
    let file = dir.join("humaneval/HumanEval.jsonl.gz");
    assert!(file.is_file(), "{} is missing: run scripts/fetch-humaneval.sh (scripts/setup.sh does)", file.display());
    dir
}

/// The Gemma model's file name in the cache.
pub const GEMMA_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

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

/// `mpirun --oversubscribe -np N evalmesh ARGS`, as root would need it (OpenMPI refuses
/// root without the two variables), with warnings only from the ranks.
pub fn mpirun_command(np: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &np.to_string()])
        .arg(evalmesh_bin())
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs `mpirun -np NP evalmesh ARGS` to its end; prints the command and output.
pub fn mpirun(np: usize, args: &[&str]) -> Output {
    let output = mpirun_command(np, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start mpirun (scripts/setup.sh installs OpenMPI): {e}"));
    print_output(&format!("mpirun -np {np} evalmesh {}", args.join(" ")), &output);
    output
}

/// Prints a finished command's exit and output, so that a failing test shows them.
pub fn print_output(what: &str, output: &Output) {
    eprintln!(
        "$ {what}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The tree keys recorded in a journal, in order (none if it does not exist yet).
pub fn journal_keys(journal: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.lines().filter_map(|l| Some(l.split("\"key\":\"").nth(1)?.split('"').next()?.to_string())).collect()
}

/// The PID of MPI rank `rank` among the processes whose environment holds `marker`
/// (`NAME=VALUE`, set on the launcher, which passes it to its ranks).
pub fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let rank_var = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        let has = |var: &str| vars.contains(&var.as_bytes());
        (has(marker) && has(&rank_var)).then_some(pid)
    })
}

/// An `evalmesh run` command line, built flag by flag: [`RunArgs::new`] starts with
/// `run --model TEST_MODEL`, the task helpers add a task and its data, and [`RunArgs::run`]
/// or [`RunArgs::mpirun`] start it.
#[derive(Debug, Clone)]
pub struct RunArgs(Vec<String>);

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs::new()
    }
}

impl RunArgs {
    /// `run --model TEST_MODEL`.
    pub fn new() -> Self {
        RunArgs::with_model(&test_model())
    }

    /// `run --model MODEL`.
    pub fn with_model(model: &Path) -> Self {
        RunArgs(vec!["run".into(), "--model".into(), path_str(model).into()])
    }

    /// `FLAG VALUE`.
    pub fn flag(mut self, flag: &str, value: impl ToString) -> Self {
        self.0.extend([flag.to_string(), value.to_string()]);
        self
    }

    /// `FLAG PATH`.
    pub fn path(self, flag: &str, path: &Path) -> Self {
        self.flag(flag, path_str(path))
    }

    /// Flags without values, and whole `FLAG VALUE` pairs, as given.
    pub fn extend(mut self, args: &[&str]) -> Self {
        self.0.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The first `limit` of llama.cpp's HellaSwag items (`shared/reference`) as the
    /// `multiple_choice` task.
    pub fn hellaswag_items(self, limit: usize) -> Self {
        let data = shared_dir().join("reference/hellaswag-llamacpp-dev.jsonl");
        self.flag("--task", "multiple_choice").path("--data", &data).flag("--limit", limit)
    }

    /// The `perplexity` task over the text file `text`.
    pub fn perplexity_of(self, text: &Path) -> Self {
        self.flag("--task", "perplexity").path("--data", text)
    }

    /// `--log-samples --output OUT`.
    pub fn samples_beside(self, out: &Path) -> Self {
        self.extend(&["--log-samples"]).path("--output", out)
    }

    pub fn args(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }

    /// Runs it in one process (see [`run_evalmesh`]).
    pub fn run(&self) -> Output {
        run_evalmesh(&self.args())
    }

    /// Runs it under `mpirun -np NP` (see [`mpirun`]).
    pub fn mpirun(&self, np: usize) -> Output {
        mpirun(np, &self.args())
    }
}

/// `dir/mc.jsonl`: ten questions for the generic multiple_choice task, `q{i}` answered
/// `yes {i}` (choice 1 of `no` and it), so that a context shows which demonstrations it drew.
pub fn numbered_questions(dir: &Path) -> PathBuf {
    let path = dir.join("mc.jsonl");
    let lines: String = (0..10)
        .map(|i| format!("{{\"context\": \"q{i}\", \"choices\": [\"no\", \"yes {i}\"], \"gold\": 1}}\n"))
        .collect();
    std::fs::write(&path, lines).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// A results file, read into the types evalmesh writes it from.
pub fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `evalmesh run` arguments for the first `limit` of llama.cpp's HellaSwag items, in
/// micro-batches of about one tree (so that a fault lands part-way), one thread per
/// rank, with samples beside `out`.
pub fn hellaswag_sample_args(out: &Path, limit: usize) -> Vec<String> {
    let args = RunArgs::new().hellaswag_items(limit).flag("--batch-tokens", 256).flag("--threads", 1);
    args.samples_beside(out).0
}

/// The samples file a `hellaswag_sample_args` run wrote beside `out`.
pub fn hellaswag_samples(out: &Path) -> Vec<u8> {
    read_samples(out.parent().unwrap_or(Path::new(".")), "multiple_choice")
}

/// Task `task`'s samples file in `dir`, found as lm-evaluation-harness's readers find it:
/// among the `samples_*.json*` files, those whose task (`get_file_task_name`) is `task`,
/// the latest by the date in the name (`get_latest_filename`).
pub fn samples_file(dir: &Path, task: &str) -> PathBuf {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|name| format!("/{name}"))
        .collect();
    let mine: Vec<String> = lm_eval::get_sample_results_filenames(&names)
        .into_iter()
        .filter(|f| lm_eval::get_file_task_name(&f[1..]) == task)
        .collect();
    let latest = lm_eval::get_latest_filename(&mine);
    let latest = latest.unwrap_or_else(|| panic!("no samples of {task} in {} (among {names:?})", dir.display()));
    dir.join(&latest[1..])
}

/// The bytes of task `task`'s samples file in `dir` (see [`samples_file`]).
pub fn read_samples(dir: &Path, task: &str) -> Vec<u8> {
    let path = samples_file(dir, task);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A path as the UTF-8 the command lines of the tests need.
pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// Where the data offset of tensor `name` sits in a GGUF file's header: after the name
/// (u64 length and bytes), the dimension count (u32), the dimensions (u64 each) and the
/// type (u32).
pub fn gguf_tensor_offset_field(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("no tensor {name}"));
    let dims_at = at + needle.len();
    let dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap_or_default()) as usize;
    dims_at + 4 + 8 * dims + 4
}

/// The test model with `edit` applied, written to a temporary folder (kept alive by the
/// returned guard).
pub fn edited_model(edit: impl FnOnce(&mut EditableGguf)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
    let path = dir.path().join("edited.gguf");
    let mut model = EditableGguf::read(&test_model());
    edit(&mut model);
    model.write(&path);
    (dir, path)
}

/// The test model's bytes with `edit` applied, written to a temporary folder.
pub fn edited_bytes(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
    let path = dir.path().join("edited.gguf");
    let mut bytes = std::fs::read(test_model()).unwrap_or_else(|e| panic!("test model: {e}"));
    edit(&mut bytes);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (dir, path)
}
