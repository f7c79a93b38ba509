//! Evaluation tasks: lm-evaluation-harness task files ([`yaml`]), those shipped with
//! evalmesh (the built-in tasks) and a user's, looked up by name in one place ([`catalog`])
//! and described as lm-eval's `TaskConfig` ([`configs`]); documents turned into scoring
//! requests ([`requests`]), each led by its few-shot demonstrations ([`fewshot`]), and
//! scores into metrics and group scores ([`metrics`]), plus perplexity over a text
//! ([`perplexity`]); a context written as plain text or through the model's chat template
//! ([`prompt`]); generated text filtered and matched ([`filters`]), programs run
//! ([`code_execution`]); the draws of
//! CPython's `random` that lm-eval makes ([`python_random`]).

pub mod catalog;
pub mod code_execution;
pub mod configs;
pub mod fewshot;
pub mod filters;
pub mod metrics;
pub mod perplexity;
pub mod prompt;
pub mod python_random;
pub mod requests;
pub mod yaml;

use std::path::{Path, PathBuf};

use self::filters::{ExactMatch, FilterChain};
use self::yaml::config::GenerationKwargs;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Data { path: PathBuf, problem: String },
    #[error("{task}: data file {} not found (--data-dir is {}); pass --data-dir with the layout of shared/data", path.display(), data_dir.display())]
    MissingData { task: String, path: PathBuf, data_dir: PathBuf },
    #[error("{task}: --num-fewshot draws its examples from {}, which is not there (--data-dir is {}); shared/data does not ship the training splits: add the official file there, or run 0-shot", path.display(), data_dir.display())]
    MissingFewShotSplit { task: String, path: PathBuf, data_dir: PathBuf },
    #[error("unknown task `{name}`; available: {available}")]
    UnknownTask { name: String, available: String },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// Reads a UTF-8 text file; the error names the file and, for bad bytes, their offset.
pub fn read_text(path: &Path) -> Result<String, TaskError> {
    let bytes = std::fs::read(path).map_err(|error| TaskError::Io { path: path.to_path_buf(), error })?;
    String::from_utf8(bytes).map_err(|e| TaskError::Data {
        path: path.to_path_buf(),
        problem: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })
}

/// One loglikelihood request: the log-probability of `continuation` after `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// What a document's requests are scored for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One request per choice; `choices` are the choice strings whose character
    /// lengths normalise `acc_norm`.
    Choice { gold: usize, choices: Vec<String> },
    /// One request per option with the option in the context and a shared continuation
    /// (winogrande's partial scoring): only `acc`.
    Partial { gold: usize },
    /// One request whose continuation should be the greedy one (LAMBADA).
    Greedy,
    /// One rolling request over a whole document, with the original text's word and byte counts.
    Rolling { words: usize, bytes: usize },
    /// One generated continuation of the request's context, filtered and matched against
    /// `reference` (generate_until); `prompt_ids`, where the document gives them, are the
    /// context's tokens as given (the generic `generate` task's `prompt_ids` field); `head`,
    /// the bytes of the context before the document's own text (system prompt, description,
    /// demonstrations), which other documents' contexts may share.
    Generate { reference: String, kwargs: GenerationKwargs, prompt_ids: Option<Vec<u32>>, head: usize },
}

/// One document of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub id: usize,
    pub requests: Vec<Request>,
    pub target: Target,
    /// The document as its data file holds it: the samples' `doc` (null where there is none).
    pub record: serde_json::Value,
}

/// A task's documents and how it was set up.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub docs: Vec<Doc>,
    /// The settings that define the task's requests (the journal key; kept in the results'
    /// `configs[task].metadata.evalmesh`).
    pub config: serde_json::Value,
    /// The task as lm-evaluation-harness's `TaskConfig` would describe it (results' `configs`),
    /// without what a run sets: `num_fewshot` and `metric_list`.
    pub lm_eval_config: serde_json::Map<String, serde_json::Value>,
    pub version: f64,
    pub num_fewshot: usize,
    /// The task file's `metric_list`: the lm-eval metrics reported (all of the output type's
    /// when empty); evalmesh's own (`acc_norm_tokens`, a rolling task's token perplexity) are
    /// reported beside them.
    pub metric_list: Vec<String>,
    /// The groups this task's score rolls up into, innermost first (an MMLU subject: its category, then `mmlu`).
    pub groups: Vec<Group>,
    /// A generate_until task's filter chains, each scored with `exact_match`, or with
    /// pass@1 (the program run against the target's tests) where `pass_at_1` is set.
    pub filters: Vec<FilterChain>,
    pub exact_match: ExactMatch,
    pub pass_at_1: bool,
    /// The task runs the model's output as code (`unsafe_code`): only with `--allow-code-execution`.
    pub unsafe_code: bool,
    /// Generations per document (`repeats`), for filters such as `majority_vote`.
    pub repeats: usize,
}

/// A group of tasks, whose score lm-evaluation-harness aggregates from theirs: its name and alias.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    pub name: String,
    pub alias: String,
}

impl Task {
    /// Whether the task generates text (generate_until).
    pub fn generates(&self) -> bool {
        self.docs.iter().any(|d| matches!(d.target, Target::Generate { .. }))
    }

    /// Whether the results report `metric` (its name, without `_stderr`).
    pub fn reports(&self, metric: &str) -> bool {
        let rolling = matches!(self.docs.first().map(|d| &d.target), Some(Target::Rolling { .. }));
        self.metric_list.is_empty()
            || self.metric_list.iter().any(|m| m == metric)
            || metric == "acc_norm_tokens"
            || (rolling && metric == "perplexity")
    }
}
