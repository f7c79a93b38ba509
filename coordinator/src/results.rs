//! The results file: lm-evaluation-harness's layout, key for key (`results`, `groups`,
//! `group_subtasks`, `configs`, `versions`, `n-shot`, `higher_is_better`, `n-samples`,
//! `task_hashes`: [`TaskResults`]; `config`, `date` and what its tracker adds: [`RunInfo`])
//! plus a typed `evalmesh` section ([`EvalmeshSection`]) with what ran where and how fast.
//! The printers and the tests read the same types. Written atomically.

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
    #[serde(flatten)]
    pub run: RunInfo,
    pub evalmesh: EvalmeshSection,
}

/// The part of the results lm-evaluation-harness's readers know, keyed by task (and group),
/// as `EvalAcc._to_eval_results` (`lm_eval/evaluator_utils.py`) lays it out.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TaskResults {
    /// Per task and group: `name`, `alias`, `sample_len` (documents scored), `metric,filter`
    /// → value, a stderr that is not a number `"N/A"`; a group's also `sample_count`.
    pub results: BTreeMap<String, BTreeMap<String, Value>>,
    /// The groups' entries again; lm-evaluation-harness leaves the key out when there is none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, BTreeMap<String, Value>>,
    /// Per group, its tasks.
    #[serde(default)]
    pub group_subtasks: BTreeMap<String, Vec<String>>,
    /// Per task, its configuration as lm-evaluation-harness's `TaskConfig` dictionary.
    pub configs: BTreeMap<String, Value>,
    /// Per task its version (a number), per group `"N/A"`.
    pub versions: BTreeMap<String, Value>,
    #[serde(rename = "n-shot")]
    pub n_shot: BTreeMap<String, Value>,
    /// Per task and group, per metric: whether higher is better (`null` where its tasks disagree).
    #[serde(default)]
    pub higher_is_better: BTreeMap<String, BTreeMap<String, Option<bool>>>,
    /// Per task, the documents there are and those scored (`--limit`).
    #[serde(rename = "n-samples")]
    pub n_samples: BTreeMap<String, SampleCount>,
    /// Per task, the hash of its samples' hashes (lm-evaluation-harness's formula, written
    /// whether or not `--log-samples` writes the samples).
    #[serde(default)]
    pub task_hashes: BTreeMap<String, String>,
}

/// A task's documents: all of them, and those scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleCount {
    pub original: usize,
    pub effective: usize,
}

/// What lm-evaluation-harness's `simple_evaluate` and its `EvaluationTracker` add to the
/// results about the run (`lm_eval/evaluator.py`, `lm_eval/loggers/evaluation_tracker.py`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub config: RunConfig,
    /// When the run started, in seconds since the UNIX epoch.
    pub date: f64,
    /// The engine: `evalmesh`.
    pub model_source: String,
    /// `--model` as given.
    pub model_name: String,
    /// `model_name` as a folder name (`sanitize_model_name`).
    pub model_name_sanitized: String,
    pub system_instruction: Option<String>,
    pub system_instruction_sha: Option<String>,
    pub fewshot_as_multiturn: Option<bool>,
    pub chat_template: Option<String>,
    pub chat_template_sha: Option<String>,
    /// Seconds from the start of the run to the results, as Python's `str` of a float.
    pub total_evaluation_time_seconds: String,
}

/// The results' `config`: the model and how the run was set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// The engine (lm-evaluation-harness writes its model type here, such as `hf`).
    pub model: String,
    /// `model` (the `--model` path), and `tokenizer` and `add_bos_token` where given.
    pub model_args: BTreeMap<String, Value>,
    pub model_num_parameters: u64,
    /// `--batch-size` as given (requests per micro-batch), or null.
    pub batch_size: Option<String>,
    pub batch_sizes: Vec<usize>,
    /// `cpu` or `cuda`.
    pub device: String,
    pub use_cache: Option<String>,
    /// `--limit` as given: a count, a fraction, or null.
    pub limit: Option<Value>,
    /// Resamples for the bootstrap standard errors (the perplexities'; means have a closed form).
    pub bootstrap_iters: usize,
    /// `--gen_kwargs`'s pairs, or null.
    pub gen_kwargs: Option<Value>,
    /// `--seed`'s four, as lm-evaluation-harness records them.
    pub random_seed: Option<u64>,
    pub numpy_seed: Option<u64>,
    pub torch_seed: u16,
    /// The seed of the few-shot draws.
    pub fewshot_seed: u32,
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
    /// The whole model in this process, scoring `lanes` micro-batches at once.
    Lightweight { layers: [usize; 2], threads: usize, lanes: usize },
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
    /// The micro-batches it scored at once.
    pub lanes: usize,
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
    /// Query–key pairs the computed trees' attention took, per layer and head, before any
    /// sliding window (a causal sequence of n rows: n(n + 1)/2), for log-likelihood and
    /// perplexity tasks: with the matrix products' FLOPs, the work done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_pairs: Option<u64>,
    /// The micro-batch budget in tokens, where `--batch-size` set it for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
    /// Perplexity after each chunk, as llama.cpp prints it (llama.cpp-style perplexity only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cumulative_perplexity: Option<Vec<f64>>,
    /// Generation (generate_until tasks): tokens/s of the steps that decoded alone (one
    /// token of each live sequence) and of those that prefilled prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_error_percent: Option<f64>,
    pub seconds: f64,
    pub tokens_computed: usize,
    /// Tokens generated (generate_until tasks); `tokens_computed` counts them with the prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_generated: Option<usize>,
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
    /// The micro-batches each worker scored at once, as predicted.
    pub lanes: usize,
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
        let mut out =
            String::from("| Task | Filter | n-shot | Metric | Value | | Stderr |\n|---|---|---:|---|---:|---|---:|\n");
        for (task, metrics) in &self.results {
            let shots = self.n_shot.get(task).map_or(String::new(), |v| v.to_string());
            for (name, value) in metrics {
                let Some((metric, filter)) = name.split_once(',').filter(|(m, _)| !m.ends_with("_stderr")) else {
                    continue;
                };
                let Some(v) = value.as_f64() else { continue };
                let se = metrics.get(&format!("{metric}_stderr,{filter}")).and_then(Value::as_f64);
                let se = se.map_or("N/A".to_string(), |s| format!("{s:.4}"));
                out.push_str(&format!("| {task} | {filter} | {shots} | {metric} | {v:.4} | ± | {se} |\n"));
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
