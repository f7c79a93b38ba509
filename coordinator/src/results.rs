//! The results file: lm-evaluation-harness's layout (`results`, `configs`, `versions`,
//! `n-shot`, `n-samples`: [`TaskResults`]) plus a typed `evalmesh` section
//! ([`EvalmeshSection`]) with what ran where and how fast. The printers and the tests
//! read the same types. Written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use evalmesh_common::protocol::WorkerStats;
use evalmesh_common::ModelConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("cannot write results to {}: {error}", path.display())]
pub struct ResultsError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// The whole results file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub tasks: TaskResults,
    pub evalmesh: EvalmeshSection,
}

/// The part of the results lm-evaluation-harness's readers know, keyed by task (and group).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TaskResults {
    /// Per task, `metric,filter` → value (and `alias`).
    pub results: BTreeMap<String, BTreeMap<String, Value>>,
    pub configs: BTreeMap<String, Value>,
    pub versions: BTreeMap<String, Value>,
    #[serde(rename = "n-shot")]
    pub n_shot: BTreeMap<String, Value>,
    #[serde(rename = "n-samples")]
    pub n_samples: BTreeMap<String, Value>,
}

/// evalmesh's own figures: the model, the engine and where it ran, per task what was
/// computed, the throughput of the matrix products, per rank what it measured, and the
/// cost model's prediction beside the measurement.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvalmeshSection {
    pub batch_tokens: usize,
    pub config: ModelConfig,
    /// One line saying what ran where.
    pub engine: String,
    pub engine_details: EngineDetails,
    pub eval_seconds: f64,
    pub load_seconds: f64,
    pub matmul_gflop: f64,
    pub matmul_gflops_per_s: f64,
    pub matmul_seconds: f64,
    pub model: String,
    pub model_fingerprint: String,
    pub monitoring: Vec<RankStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionSummary>,
    pub tasks: BTreeMap<String, TaskStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningSummary>,
    /// Workers that computed at once.
    pub workers: usize,
}

/// Where the work ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EngineDetails {
    /// The whole model in this process.
    Lightweight { layers: [usize; 2], threads: usize },
    /// Worker ranks in `dp` replicas of `pp` stages of `tp` shards.
    Distributed { dp: usize, pp: usize, tp: usize, workers: Vec<WorkerPlacement> },
}

/// What a worker rank held and how it loaded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerPlacement {
    pub bytes_read: u64,
    pub embedding: bool,
    pub groups: [usize; 2],
    pub head: bool,
    pub layers: [usize; 2],
    pub load_seconds: f64,
    pub rank: i32,
    pub threads: usize,
}

/// One rank's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankStats {
    pub rank: i32,
    pub stats: WorkerStats,
}

/// What one task cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Perplexity after each chunk, as llama.cpp prints it (llama.cpp-style perplexity only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cumulative_perplexity: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_error_percent: Option<f64>,
    pub seconds: f64,
    pub tokens_computed: usize,
    pub tokens_per_s: f64,
    pub tokens_scored: usize,
    pub tokens_without_prefix_sharing: usize,
    pub trees: usize,
    pub trees_computed: usize,
    pub trees_from_journal: usize,
}

/// The cost model's figures for the whole run beside the measured ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionSummary {
    pub error_percent: f64,
    pub layout: LayoutSizes,
    /// Per stage, the busy seconds (compute and send) of its slowest rank.
    #[serde(default)]
    pub measured_stage_seconds: Vec<f64>,
    pub measured_seconds: f64,
    pub measured_tokens_per_s: f64,
    pub predicted_seconds: f64,
    pub predicted_stage_seconds: Vec<f64>,
    pub predicted_tokens_per_s: f64,
    pub profile: String,
    pub profile_source: String,
    /// Each stage's layers, as `[start, end)`.
    pub stages: Vec<[usize; 2]>,
    pub threads_per_worker: usize,
}

/// The sizes of a parallel layout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayoutSizes {
    pub dp: usize,
    pub pp: usize,
    pub tp: usize,
}

/// `--tune`'s trials and the budget it kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningSummary {
    pub chosen_batch_tokens: usize,
    pub tried: Vec<TuningTrial>,
}

/// One micro-batch budget tried on a slice of the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningTrial {
    pub batch_tokens: usize,
    pub measured_over_predicted: f64,
    pub seconds: f64,
    pub tokens: usize,
}

impl Report {
    /// Writes the report as JSON through a temporary file and a rename, so a reader
    /// never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), ResultsError> {
        let err = |error| ResultsError { path: path.to_path_buf(), error };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        json.push(b'\n');
        write_atomically(path, &json).map_err(err)
    }
}

impl TaskResults {
    /// A table of every task's metrics with their standard errors, like lm-evaluation-harness prints.
    pub fn table(&self) -> String {
        let mut out = String::from("| Task | n-shot | Metric | Value | | Stderr |\n|---|---:|---|---:|---|---:|\n");
        for (task, metrics) in &self.results {
            let shots = self.n_shot.get(task).map_or(String::new(), |v| v.to_string());
            for (name, value) in metrics {
                let Some(metric) = name.strip_suffix(",none").filter(|m| !m.ends_with("_stderr")) else { continue };
                let Some(v) = value.as_f64() else { continue };
                let se = metrics.get(&format!("{metric}_stderr,none")).and_then(Value::as_f64);
                let se = se.map_or("N/A".to_string(), |s| format!("{s:.4}"));
                out.push_str(&format!("| {task} | {shots} | {metric} | {v:.4} | ± | {se} |\n"));
            }
        }
        out
    }
}

/// Writes a file through a temporary file beside it and a rename, so that a reader (or
/// a run killed part-way) never leaves half a file: every file evalmesh writes whole
/// goes through here.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
