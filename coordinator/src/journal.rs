//! The journal: every finished tree's scores, appended to a JSON-lines file next to the
//! results as soon as they are computed, keyed by a content hash of (model, task
//! configuration, tree). `--resume` reuses every journaled tree and computes only the
//! rest, whatever the batch size, engine or rank count was before.
//!
//! Lines: a header `{"evalmesh_journal":1,"model":FINGERPRINT}`, a line per task
//! `{"task":NAME,"config":HASH}`, a record per tree `{"key":HASH,"scores":…,"check":SUM}`
//! whose checksum covers its key and scores, and one per generated sequence
//! `{"key":HASH,"generation":…,"check":SUM}`. A line cut short by a crash is dropped (it is
//! always the last one); a record whose checksum fails is refused with its line number.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use evalmesh_common::{ScoreTree, TreeScores};
use evalmesh_worker::backend::ARITHMETIC;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::generation::{Generation, GenerationRequest};
use crate::tasks::requests::Windows;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("journal {} exists from an earlier run: pass --resume to reuse its scores, or --overwrite to start again", path.display())]
    Exists { path: PathBuf },
    #[error("journal {} was written for another model (fingerprint {theirs}; this run's model is {ours}): delete the journal, or pass --overwrite instead of --resume to start again", path.display())]
    OtherModel { path: PathBuf, theirs: String, ours: String },
    #[error("journal {} holds task {task} with another configuration (for example --num-fewshot or --ctx changed): delete the journal or restore the settings", path.display())]
    OtherTaskConfig { path: PathBuf, task: String },
    #[error("journal {} was written by an evalmesh whose arithmetic differs (version {theirs}, this one's is {ARITHMETIC}): its scores would not match this build's bit for bit; finish the run with the earlier build, or delete the journal", path.display())]
    OtherArithmetic { path: PathBuf, theirs: u32 },
    #[error("journal {} holds scores computed on the {theirs} backend, and this run computes on {ours}: backends differ in their last bits, so finish the run with --device {theirs}, or pass --overwrite instead of --resume to start again", path.display())]
    OtherBackend { path: PathBuf, theirs: String, ours: String },
    #[error("journal {} holds scores computed on {theirs:?}, and this run computes on {ours:?}: GPU models, cuBLAS versions and kernel images differ in their last bits, so finish the run where it began, or pass --overwrite instead of --resume to start again", path.display())]
    OtherDevices { path: PathBuf, theirs: Vec<String>, ours: Vec<String> },
    #[error("journal {}: line {line} is not a journal record: {problem}", path.display())]
    Corrupt { path: PathBuf, line: usize, problem: String },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header {
        evalmesh_journal: u32,
        model: String,
        /// [`ARITHMETIC`] of the build that wrote it (absent before there was one: 1).
        #[serde(default = "first_arithmetic")]
        arithmetic: u32,
        /// The backend that computed its scores (absent before there were two: the CPU's).
        #[serde(default = "cpu_backend")]
        backend: String,
    },
    Task {
        task: String,
        config: String,
    },
    Record {
        key: String,
        scores: TreeScores,
        /// [`record_check`] of the key and scores (absent in journals from before checksums).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<String>,
    },
    /// A finished generated sequence (docs/ARCHITECTURE.md §12).
    Generated {
        key: String,
        generation: Generation,
        check: String,
    },
    /// What fixed the last bits of the workers' arithmetic (`EvaluationEngine::provenance`),
    /// written once they are loaded.
    Devices {
        devices: Vec<String>,
    },
}

/// A record's checksum: the first 16 hex digits of the SHA-256 of its key and its
/// content as written (serde_json writes every f32 the same way each time).
fn record_check(key: &str, content: &impl Serialize) -> String {
    let json = serde_json::to_vec(content).unwrap_or_default();
    hash_hex(&[key.as_bytes(), &json])[..16].to_string()
}

fn first_arithmetic() -> u32 {
    1
}

fn cpu_backend() -> String {
    "cpu".into()
}

pub struct Journal {
    path: PathBuf,
    file: File,
    tasks: HashMap<String, String>,
    done: HashMap<String, TreeScores>,
    generated: HashMap<String, Generation>,
    /// The devices a resumed journal recorded, if it got that far.
    devices: Option<Vec<String>>,
}

/// Hex SHA-256 of some bytes.
pub fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of a task's settings that its trees' keys include: its configuration (as
/// JSON), its perplexity windows and its shot count, in encoding 1: the text
/// `{config}`, then `Rolling { max_len: N } fewshot=K` or `Llamacpp { ctx: N } fewshot=K`
/// (written out, so that renaming a type cannot change a key; it is the text earlier
/// builds took from `Debug`, so their journals resume).
pub fn task_key(config: &serde_json::Value, windows: Windows, num_fewshot: usize) -> String {
    let windows = match windows {
        Windows::Rolling { max_len } => format!("Rolling {{ max_len: {max_len} }}"),
        Windows::Llamacpp { ctx } => format!("Llamacpp {{ ctx: {ctx} }}"),
    };
    hash_hex(&[config.to_string().as_bytes(), format!("{windows} fewshot={num_fewshot}").as_bytes()])
}

/// Where the journal of a results file lives: `results.json` → `results.journal.jsonl`.
pub fn journal_path(output: &Path) -> PathBuf {
    output.with_extension("journal.jsonl")
}

/// The key of a tree: the model, the task's configuration hash and the tree's tokens.
pub fn tree_key(model: &str, task_config: &str, tree: &ScoreTree) -> String {
    let tokens = serde_json::to_vec(tree).unwrap_or_default();
    hash_hex(&[model.as_bytes(), task_config.as_bytes(), &tokens])
}

/// The key of a generated sequence: the model, the task's configuration hash and the
/// request (its prompt's tokens, stops, limit and choice).
pub fn generation_key(model: &str, task_config: &str, request: &GenerationRequest) -> String {
    let request = serde_json::to_vec(request).unwrap_or_default();
    hash_hex(&[model.as_bytes(), task_config.as_bytes(), b"generation", &request])
}

/// A fingerprint of a model's content without reading all of it: its size, its first
/// 8 MiB (the header and the first tensors) and 64 KiB at each of 256 even offsets.
/// A directory's fingerprint covers its files in name order; a model of random weights
/// (`random_weights`) is its config.json, marked as such.
pub fn model_fingerprint(path: &Path, random_weights: bool) -> Result<String, std::io::Error> {
    let mut h = Sha256::new();
    let mut files: Vec<PathBuf> = if random_weights {
        h.update(b"random weights");
        vec![if path.is_dir() { path.join("config.json") } else { path.to_path_buf() }]
    } else if path.is_dir() {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for file in files.drain(..) {
        let mut f = File::open(&file)?;
        let len = f.metadata()?.len();
        h.update(file.file_name().map(|n| n.as_encoded_bytes().to_vec()).unwrap_or_default());
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; 8 << 20];
        let head = f.read(&mut buf)?;
        h.update(&buf[..head]);
        let sample = 64 << 10;
        for i in 0..256u64 {
            let at = len.saturating_sub(sample as u64) * i / 255;
            f.seek(std::io::SeekFrom::Start(at))?;
            let n = f.read(&mut buf[..sample])?;
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Journal {
    /// Opens the journal at `path` for a run on `model`. Without `resume`, an existing
    /// journal is refused unless `overwrite` is set.
    pub fn open(path: &Path, model: &str, backend: &str, resume: bool, overwrite: bool) -> Result<Self, JournalError> {
        let io = |error| JournalError::Io { path: path.to_path_buf(), error };
        let mut tasks = HashMap::new();
        let mut done = HashMap::new();
        let mut generated = HashMap::new();
        let mut devices = None;
        let exists = path.exists();
        let mut kept = 0;
        if exists && !resume && !overwrite {
            return Err(JournalError::Exists { path: path.to_path_buf() });
        }
        if exists && resume {
            let text = std::fs::read_to_string(path).map_err(io)?;
            kept = text.rfind('\n').map_or(0, |i| i + 1);
            let complete = &text[..kept];
            for (i, line) in complete.lines().enumerate() {
                let corrupt =
                    |problem: String| JournalError::Corrupt { path: path.to_path_buf(), line: i + 1, problem };
                match serde_json::from_str::<Line>(line).map_err(|e| corrupt(e.to_string()))? {
                    Line::Header { model: theirs, .. } if theirs != model => {
                        return Err(JournalError::OtherModel {
                            path: path.to_path_buf(),
                            theirs,
                            ours: model.to_string(),
                        })
                    }
                    Line::Header { arithmetic, .. } if arithmetic != ARITHMETIC => {
                        return Err(JournalError::OtherArithmetic { path: path.to_path_buf(), theirs: arithmetic })
                    }
                    Line::Header { backend: theirs, .. } if theirs != backend => {
                        return Err(JournalError::OtherBackend {
                            path: path.to_path_buf(),
                            theirs,
                            ours: backend.to_string(),
                        })
                    }
                    Line::Header { .. } => {}
                    Line::Task { task, config } => {
                        tasks.insert(task, config);
                    }
                    Line::Record { key, scores, check } => {
                        if check.is_some_and(|c| c != record_check(&key, &scores)) {
                            return Err(corrupt(
                                "its checksum does not match its scores (the file was damaged): delete this line to compute the tree again".into(),
                            ));
                        }
                        done.insert(key, scores);
                    }
                    Line::Generated { key, generation, check } => {
                        if check != record_check(&key, &generation) {
                            return Err(corrupt(
                                "its checksum does not match its sequence (the file was damaged): delete this line to generate it again".into(),
                            ));
                        }
                        generated.insert(key, generation);
                    }
                    Line::Devices { devices: theirs } => devices = Some(theirs),
                }
            }
            // Drop a torn last line so that new records start on a line of their own.
            let file = OpenOptions::new().write(true).open(path).map_err(io)?;
            file.set_len(kept as u64).map_err(io)?;
        }
        let fresh = !exists || !resume;
        let mut file =
            if fresh { File::create(path) } else { OpenOptions::new().append(true).open(path) }.map_err(io)?;
        if fresh || kept == 0 {
            let header = serde_json::to_string(&Line::Header {
                evalmesh_journal: 1,
                model: model.to_string(),
                arithmetic: ARITHMETIC,
                backend: backend.to_string(),
            })
            .unwrap_or_default();
            writeln!(file, "{header}").map_err(io)?;
        }
        Ok(Journal { path: path.to_path_buf(), file, tasks, done, generated, devices })
    }

    /// Records the devices that compute this run's scores (`EvaluationEngine::provenance`),
    /// or, resuming, refuses devices other than those that computed the journal's.
    pub fn record_devices(&mut self, ours: &[String]) -> Result<(), JournalError> {
        match &self.devices {
            Some(theirs) if theirs != ours => {
                Err(JournalError::OtherDevices { path: self.path.clone(), theirs: theirs.clone(), ours: ours.to_vec() })
            }
            Some(_) => Ok(()),
            None => {
                self.devices = Some(ours.to_vec());
                self.append(&Line::Devices { devices: ours.to_vec() })
            }
        }
    }

    /// Registers a task's configuration hash; refuses one that changed since the journal began.
    pub fn begin_task(&mut self, task: &str, config: &str) -> Result<(), JournalError> {
        match self.tasks.get(task) {
            Some(c) if c == config => Ok(()),
            Some(_) => Err(JournalError::OtherTaskConfig { path: self.path.clone(), task: task.to_string() }),
            None => {
                self.tasks.insert(task.to_string(), config.to_string());
                self.append(&Line::Task { task: task.to_string(), config: config.to_string() })
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&TreeScores> {
        self.done.get(key)
    }

    /// Appends a finished tree, written through to the file at once.
    pub fn record(&mut self, key: String, scores: TreeScores) -> Result<(), JournalError> {
        let check = Some(record_check(&key, &scores));
        self.append(&Line::Record { key: key.clone(), scores: scores.clone(), check })?;
        self.done.insert(key, scores);
        Ok(())
    }

    pub fn generation(&self, key: &str) -> Option<&Generation> {
        self.generated.get(key)
    }

    /// Appends a finished generated sequence, written through to the file at once.
    pub fn record_generation(&mut self, key: String, generation: Generation) -> Result<(), JournalError> {
        let check = record_check(&key, &generation);
        self.append(&Line::Generated { key: key.clone(), generation: generation.clone(), check })?;
        self.generated.insert(key, generation);
        Ok(())
    }

    fn append(&mut self, line: &Line) -> Result<(), JournalError> {
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(|error| JournalError::Io { path: self.path.clone(), error })
    }
}

#[cfg(test)]
mod tests {
    use evalmesh_common::TokenScore;

    use super::*;

    fn scores(v: f32) -> TreeScores {
        TreeScores { prefix: vec![TokenScore { logprob: v, greedy: true }], branches: vec![] }
    }

    #[test]
    fn task_keys_hash_the_text_of_encoding_1() {
        let config = serde_json::json!({"data": "built-in wikitext-2 excerpt"});
        let expected = |windows: &str| hash_hex(&[br#"{"data":"built-in wikitext-2 excerpt"}"#, windows.as_bytes()]);
        assert_eq!(task_key(&config, Windows::Llamacpp { ctx: 512 }, 0), expected("Llamacpp { ctx: 512 } fewshot=0"));
        assert_eq!(
            task_key(&config, Windows::Rolling { max_len: 8192 }, 5),
            expected("Rolling { max_len: 8192 } fewshot=5")
        );
    }

    #[test]
    fn resume_reads_records_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path, "m", "cpu", false, false).unwrap();
        j.begin_task("t", "c").unwrap();
        let odd = f32::from_bits(0xBF12_3457);
        j.record("k1".into(), scores(odd)).unwrap();
        drop(j);
        let j = Journal::open(&path, "m", "cpu", true, false).unwrap();
        assert_eq!(j.get("k1").unwrap().prefix[0].logprob.to_bits(), odd.to_bits());
    }

    #[test]
    fn refuses_other_model_config_or_silent_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path, "m", "cpu", false, false).unwrap();
        j.begin_task("t", "c").unwrap();
        drop(j);
        assert!(matches!(Journal::open(&path, "m", "cpu", false, false), Err(JournalError::Exists { .. })));
        assert!(matches!(Journal::open(&path, "other", "cpu", true, false), Err(JournalError::OtherModel { .. })));
        let other_backend = Journal::open(&path, "m", "cuda", true, false).err().unwrap();
        assert!(matches!(other_backend, JournalError::OtherBackend { .. }), "{other_backend}");
        assert!(other_backend.to_string().contains("--device cpu"), "{other_backend}");
        let mut j = Journal::open(&path, "m", "cpu", true, false).unwrap();
        assert!(matches!(j.begin_task("t", "changed"), Err(JournalError::OtherTaskConfig { .. })));
    }

    /// The devices are recorded once; a resumed run on other GPUs (another model, cuBLAS or
    /// kernel image) is refused, and a journal from before devices were recorded takes them.
    #[test]
    fn refuses_scores_of_other_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let h200 =
            vec!["cuda: NVIDIA H200, 132 multiprocessors, cuBLAS 130000, kernels sm_90 cubin, NVRTC 12.8".to_string()];
        let a100 =
            vec!["cuda: NVIDIA A100-SXM4-80GB, 108 multiprocessors, cuBLAS 120800, kernels sm_80 cubin, NVRTC 12.8"
                .to_string()];
        let mut j = Journal::open(&path, "m", "cuda", false, false).unwrap();
        j.record_devices(&h200).unwrap();
        j.record("k1".into(), scores(-1.0)).unwrap();
        drop(j);
        let mut j = Journal::open(&path, "m", "cuda", true, false).unwrap();
        j.record_devices(&h200).unwrap();
        drop(j);
        let mut j = Journal::open(&path, "m", "cuda", true, false).unwrap();
        let e = j.record_devices(&a100).unwrap_err();
        assert!(matches!(e, JournalError::OtherDevices { .. }), "{e}");
        assert!(e.to_string().contains("A100") && e.to_string().contains("H200"), "{e}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"devices\"").count(), 1, "{text}");
        // Before devices were recorded: a header and records only.
        let old = dir.path().join("old.jsonl");
        let header =
            format!("{{\"evalmesh_journal\":1,\"model\":\"m\",\"arithmetic\":{ARITHMETIC},\"backend\":\"cpu\"}}\n");
        std::fs::write(&old, header).unwrap();
        let mut j = Journal::open(&old, "m", "cpu", true, false).unwrap();
        j.record_devices(&["cpu".to_string()]).unwrap();
        drop(j);
        let mut j = Journal::open(&old, "m", "cpu", true, false).unwrap();
        assert!(j.record_devices(&a100).is_err());
    }

    #[test]
    fn refuses_a_journal_of_other_arithmetic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        // A header from before the arithmetic version was recorded: version 1.
        std::fs::write(&path, "{\"evalmesh_journal\":1,\"model\":\"m\"}\n").unwrap();
        let err = Journal::open(&path, "m", "cpu", true, false).err().unwrap();
        assert!(matches!(err, JournalError::OtherArithmetic { theirs: 1, .. }), "{err}");
        assert!(err.to_string().contains("bit for bit"));
    }

    #[test]
    fn a_damaged_record_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path, "m", "cpu", false, false).unwrap();
        j.record("k1".into(), scores(-1.25)).unwrap();
        j.record("k2".into(), scores(-2.5)).unwrap();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"check\":"));
        std::fs::write(&path, text.replace("-2.5", "-2.25")).unwrap();
        let err = Journal::open(&path, "m", "cpu", true, false).err().unwrap();
        assert!(matches!(err, JournalError::Corrupt { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("checksum"));
    }

    #[test]
    fn generated_sequences_resume_and_are_checked() {
        use crate::generation::Stop;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let generation = Generation {
            tokens: vec![5, 6],
            logprobs: vec![-0.5, f32::from_bits(0xBF12_3457)],
            text: "ab".into(),
            stop: Stop::Until,
        };
        let mut j = Journal::open(&path, "m", "cpu", false, false).unwrap();
        j.record_generation("g1".into(), generation.clone()).unwrap();
        drop(j);
        let j = Journal::open(&path, "m", "cpu", true, false).unwrap();
        assert_eq!(j.generation("g1"), Some(&generation));
        assert!(j.get("g1").is_none());
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"ab\"", "\"ac\"")).unwrap();
        let err = Journal::open(&path, "m", "cpu", true, false).err().unwrap();
        assert!(matches!(err, JournalError::Corrupt { line: 2, .. }), "{err}");
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path, "m", "cpu", false, false).unwrap();
        j.record("k1".into(), scores(-1.0)).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\":\"k2\",\"sco").unwrap();
        drop(f);
        let mut j = Journal::open(&path, "m", "cpu", true, false).unwrap();
        assert!(j.get("k2").is_none());
        j.record("k3".into(), scores(-2.0)).unwrap();
        drop(j);
        let j = Journal::open(&path, "m", "cpu", true, false).unwrap();
        assert!(j.get("k1").is_some() && j.get("k3").is_some());
    }
}
