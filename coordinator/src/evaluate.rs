//! Runs tasks through an engine: plans each task's trees, takes what the journal already
//! holds, scores the rest (journaling each tree as it finishes), turns scores into
//! metrics (lm-evaluation-harness's part of the results, and what each task cost) and writes
//! the per-sample logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use evalmesh_common::cost::Prediction;
use evalmesh_common::{ScoreTree, TreeScores};
use serde_json::{json, Value};

use crate::engine::{EngineError, EvaluationEngine};
use crate::journal::{task_key, tree_key, Journal, JournalError};
use crate::prediction::{error_percent, Predictor};
use crate::progress::token_bar;
use crate::results::{LayoutSizes, PredictionSummary, TaskResults, TaskStats, TuningSummary, TuningTrial};
use crate::tasks::metrics::{aggregate, outcome, pooled, Outcome};
use crate::tasks::requests::{plan, request_scores, RequestScore, Windows};
use crate::tasks::{Group, Task, TaskError};
use crate::tokenizer::TextTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot write samples to {}: {error}", path.display())]
    Samples { path: PathBuf, error: std::io::Error },
}

/// How many documents of each task to score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    First(usize),
    Fraction(f64),
}

impl Limit {
    /// lm-evaluation-harness: a fraction rounds up, a count is taken as it is.
    fn apply(self, n: usize) -> usize {
        match self {
            Limit::First(k) => k.min(n),
            Limit::Fraction(f) => ((n as f64 * f).ceil() as usize).min(n),
        }
    }
}

pub struct Settings<'a> {
    pub windows: Windows,
    pub limit: Option<Limit>,
    pub max_position: usize,
    pub share_prefixes: bool,
    /// Folder for `samples_<task>.jsonl` files, when they are wanted.
    pub samples_dir: Option<&'a Path>,
    pub model_fingerprint: &'a str,
    /// The micro-batch token budget the engine packs with.
    pub batch_tokens: usize,
    /// The cost model of the run, for predicted beside measured.
    pub predictor: Option<&'a Predictor>,
    /// Try several micro-batch budgets on the first trees and keep the fastest.
    pub tune: bool,
    /// Set by SIGTERM, SIGUSR1 or SIGINT: stop after the micro-batch in hand.
    pub stop: Option<&'a AtomicBool>,
}

/// Scores some of a task's computed trees with a budget.
type Compute<'c> = dyn FnMut(&[usize], usize) -> Result<(), EngineError> + 'c;

/// Micro-batch budgets `--tune` tries.
const TUNE_BUDGETS: [usize; 4] = [512, 1024, 2048, 4096];
/// Micro-batches' worth of trees each budget is tried on.
const TUNE_BATCHES: usize = 2;

/// `--tune`: the first trees of the run go out in slices, one per budget. Scores do not
/// depend on the budget, so every slice's scores are kept. Slices hold different trees,
/// so each is judged by its time over the cost model's prediction for the same trees;
/// the budget with the lowest ratio serves the rest of the run.
#[derive(Default)]
struct Tuner {
    tried: Vec<(usize, usize, f64, f64)>,
    chosen: Option<usize>,
}

impl Tuner {
    /// Tries the budgets on slices of `todo` and returns what is left of it.
    fn tune(
        &mut self,
        trees: &[ScoreTree],
        mut todo: Vec<usize>,
        predictor: &Predictor,
        compute: &mut Compute,
    ) -> Result<Vec<usize>, EngineError> {
        for budget in TUNE_BUDGETS.into_iter().skip(self.tried.len()) {
            let (mut tokens, mut take) = (0, 0);
            while take < todo.len() && tokens < TUNE_BATCHES * budget {
                tokens += trees[todo[take]].input_len();
                take += 1;
            }
            if take == 0 {
                break;
            }
            let slice: Vec<usize> = todo.drain(..take).collect();
            let started = Instant::now();
            compute(&slice, budget)?;
            let seconds = started.elapsed().as_secs_f64();
            let part: Vec<ScoreTree> = slice.iter().map(|&i| trees[i].clone()).collect();
            let predicted = predictor.predict(&part, budget).map_err(|e| EngineError::Plan(e.to_string()))?.seconds;
            self.tried.push((budget, tokens, seconds, seconds / predicted.max(1e-12)));
        }
        if self.tried.len() == TUNE_BUDGETS.len() {
            self.chosen = self.tried.iter().min_by(|a, b| a.3.total_cmp(&b.3)).map(|t| t.0);
            log::info!("--tune: {} tokens per micro-batch", self.chosen.unwrap_or_default());
        }
        Ok(todo)
    }

    fn summary(&self, budget: usize) -> TuningSummary {
        let tried = self
            .tried
            .iter()
            .map(|&(batch_tokens, tokens, seconds, measured_over_predicted)| TuningTrial {
                batch_tokens,
                measured_over_predicted,
                seconds,
                tokens,
            })
            .collect();
        TuningSummary { tried, chosen_batch_tokens: budget }
    }
}

/// What a run of tasks produced: their metrics in lm-evaluation-harness's layout, and
/// what each cost, predicted beside measured.
pub struct Evaluation {
    pub results: TaskResults,
    pub tasks: BTreeMap<String, TaskStats>,
    pub prediction: Option<PredictionSummary>,
    pub tuning: Option<TuningSummary>,
}

/// Scores `tasks`.
pub fn evaluate(
    engine: &mut dyn EvaluationEngine,
    tokenizer: &TextTokenizer,
    tasks: &[Task],
    settings: &Settings,
    mut journal: Option<&mut Journal>,
) -> Result<Evaluation, EvaluateError> {
    let mut results = TaskResults::default();
    // Per group: its tasks' (acc, acc stderr, documents).
    let mut groups: BTreeMap<Group, Vec<(f64, Option<f64>, usize)>> = BTreeMap::new();
    let mut task_stats = BTreeMap::new();
    let mut predicted = Totals::default();
    let mut budget = settings.batch_tokens;
    let mut tuner = settings.tune.then(Tuner::default);
    for task in tasks {
        let docs = &task.docs[..settings.limit.map_or(task.docs.len(), |l| l.apply(task.docs.len()))];
        let plan = plan(docs, tokenizer, settings.windows, settings.max_position, settings.share_prefixes)?;
        let config_hash = task_key(&task.config, settings.windows, task.num_fewshot);
        let keys: Vec<String> =
            plan.trees.iter().map(|t| tree_key(settings.model_fingerprint, &config_hash, t)).collect();
        let mut scores: Vec<Option<TreeScores>> = vec![None; plan.trees.len()];
        if let Some(j) = journal.as_deref_mut() {
            j.begin_task(&task.name, &config_hash)?;
            for (slot, key) in scores.iter_mut().zip(&keys) {
                *slot = j.get(key).cloned();
            }
        }
        let todo: Vec<usize> = (0..plan.trees.len()).filter(|&i| scores[i].is_none()).collect();
        let todo_trees: Vec<ScoreTree> = todo.iter().map(|&i| plan.trees[i].clone()).collect();
        let mut stats = TaskStats {
            trees: plan.trees.len(),
            trees_from_journal: plan.trees.len() - todo.len(),
            trees_computed: todo.len(),
            tokens_computed: todo_trees.iter().map(ScoreTree::input_len).sum(),
            tokens_without_prefix_sharing: todo_trees.iter().map(ScoreTree::unshared_input_len).sum(),
            tokens_scored: plan.trees.iter().map(ScoreTree::target_count).sum(),
            ..TaskStats::default()
        };
        let bar = token_bar(stats.tokens_computed, &task.name);
        let started = Instant::now();
        // Scores the computed trees `part` (indices into `todo_trees`) with `budget`.
        let mut compute = |part: &[usize], budget: usize| -> Result<(), EngineError> {
            let trees: Vec<ScoreTree> = part.iter().map(|&i| todo_trees[i].clone()).collect();
            engine.score(&trees, budget, &mut |i, s| {
                let index = todo[part[i]];
                bar.inc(plan.trees[index].input_len() as u64);
                if let Some(j) = journal.as_deref_mut() {
                    j.record(keys[index].clone(), s.clone()).map_err(|e| EngineError::Sink(e.to_string()))?;
                }
                scores[index] = Some(s);
                match settings.stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                    true => Err(EngineError::Stopped),
                    false => Ok(()),
                }
            })
        };
        let mut rest: Vec<usize> = (0..todo_trees.len()).collect();
        if let (Some(tuning), Some(predictor)) = (tuner.as_mut().filter(|t| t.chosen.is_none()), settings.predictor) {
            rest = tuning.tune(&todo_trees, rest, predictor, &mut compute)?;
            budget = tuning.chosen.unwrap_or(budget);
        }
        compute(&rest, budget)?;
        stats.seconds = started.elapsed().as_secs_f64();
        let prediction = match settings.predictor {
            Some(p) => Some(p.predict(&todo_trees, budget).map_err(|e| EngineError::Plan(e.to_string()))?),
            None => None,
        };
        bar.finish_and_clear();
        let scores: Vec<TreeScores> = scores.into_iter().flatten().collect();

        let per_doc: Vec<(Vec<RequestScore>, Outcome)> = docs
            .iter()
            .zip(&plan.docs)
            .map(|(doc, planned)| {
                let s = request_scores(planned, &scores);
                let o = outcome(&doc.target, planned, &s);
                (s, o)
            })
            .collect();
        let outcomes: Vec<Outcome> = per_doc.iter().map(|(_, o)| o.clone()).collect();
        let mut metrics = aggregate(&outcomes);
        if let Windows::Llamacpp { .. } = settings.windows {
            // Chunks score only their second halves: per-word and per-byte figures do not apply.
            metrics.retain(|k, _| k.starts_with("perplexity"));
        }
        if let Some(acc) = metrics.get("acc,none").and_then(Value::as_f64) {
            let se = metrics.get("acc_stderr,none").and_then(Value::as_f64);
            for group in &task.groups {
                groups.entry(group.clone()).or_default().push((acc, se, docs.len()));
            }
        }
        metrics.insert("alias".into(), json!(task.name));
        results.results.insert(task.name.clone(), metrics);
        results.configs.insert(
            task.name.clone(),
            json!({"task": task.name, "config": task.config, "num_fewshot": task.num_fewshot}),
        );
        results.versions.insert(task.name.clone(), json!(task.version));
        results.n_shot.insert(task.name.clone(), json!(task.num_fewshot));
        results.n_samples.insert(task.name.clone(), json!({"original": task.docs.len(), "effective": docs.len()}));
        stats.tokens_per_s = stats.tokens_computed as f64 / stats.seconds.max(1e-9);
        if let Some(p) = &prediction {
            stats.predicted_seconds = Some(p.seconds);
            stats.predicted_tokens_per_s = Some(p.tokens_per_s);
            stats.prediction_error_percent = Some(error_percent(p.tokens_per_s, stats.tokens_per_s));
            predicted.add(p, stats.seconds, stats.tokens_computed);
        }
        if let Windows::Llamacpp { .. } = settings.windows {
            stats.cumulative_perplexity = cumulative_perplexity(&scores);
        }
        task_stats.insert(task.name.clone(), stats);
        if let Some(dir) = settings.samples_dir {
            write_samples(&dir.join(format!("samples_{}.jsonl", task.name)), docs, &per_doc)?;
        }
    }
    for (Group { name: group, alias }, parts) in groups {
        let (acc, se) = pooled(&parts);
        let mut metrics = BTreeMap::new();
        metrics.insert("alias".to_string(), json!(alias));
        metrics.insert("acc,none".to_string(), json!(acc));
        metrics.insert("acc_stderr,none".to_string(), se.map_or(json!("N/A"), |se| json!(se)));
        results.results.insert(group.clone(), metrics);
        results.n_samples.insert(group, json!({"effective": parts.iter().map(|p| p.2).sum::<usize>()}));
    }
    Ok(Evaluation {
        results,
        tasks: task_stats,
        prediction: settings.predictor.map(|p| predicted.summary(p)),
        tuning: tuner.map(|t| t.summary(budget)),
    })
}

/// Predicted and measured figures summed over the tasks of a run.
#[derive(Default)]
struct Totals {
    predicted_seconds: f64,
    stage_seconds: Vec<f64>,
    measured_seconds: f64,
    tokens: usize,
}

impl Totals {
    fn add(&mut self, p: &Prediction, measured_seconds: f64, tokens: usize) {
        self.predicted_seconds += p.seconds;
        self.stage_seconds.resize(p.stage_seconds.len(), 0.0);
        for (total, s) in self.stage_seconds.iter_mut().zip(&p.stage_seconds) {
            *total += s;
        }
        self.measured_seconds += measured_seconds;
        self.tokens += tokens;
    }

    fn summary(&self, p: &Predictor) -> PredictionSummary {
        let rate = |seconds: f64| self.tokens as f64 / seconds.max(1e-9);
        let (predicted, measured) = (rate(self.predicted_seconds), rate(self.measured_seconds));
        PredictionSummary {
            profile: p.profile.name.clone(),
            profile_source: p.profile.source.clone(),
            layout: LayoutSizes { dp: p.layout.dp, pp: p.layout.pp, tp: p.layout.tp },
            stages: p.stages.iter().map(|s| [s.layers.start, s.layers.end]).collect(),
            threads_per_worker: p.placement.threads_per_worker,
            predicted_seconds: self.predicted_seconds,
            measured_seconds: self.measured_seconds,
            predicted_tokens_per_s: predicted,
            measured_tokens_per_s: measured,
            error_percent: error_percent(predicted, measured),
            predicted_stage_seconds: self.stage_seconds.clone(),
            measured_stage_seconds: Vec::new(),
        }
    }
}

/// Perplexity after each tree of prefix targets, as llama.cpp prints it per chunk.
fn cumulative_perplexity(scores: &[TreeScores]) -> Option<Vec<f64>> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    scores
        .iter()
        .map(|s| {
            sum += s.prefix.iter().map(|t| t.logprob as f64).sum::<f64>();
            count += s.prefix.len();
            (count > 0).then(|| (-sum / count as f64).exp())
        })
        .collect()
}

/// One line per document with every request's log-probability, token count and greedy
/// flag and the document's metrics; nothing that changes between runs.
fn write_samples(
    path: &Path,
    docs: &[crate::tasks::Doc],
    per_doc: &[(Vec<RequestScore>, Outcome)],
) -> Result<(), EvaluateError> {
    let mut out = Vec::new();
    for (doc, (scores, outcome)) in docs.iter().zip(per_doc) {
        let requests: Vec<Value> = doc
            .requests
            .iter()
            .zip(scores)
            .map(|(r, s)| {
                json!({"context": r.context, "continuation": r.continuation, "logprob": s.logprob,
                       "tokens": s.token_logprobs.len(), "greedy": s.greedy})
            })
            .collect();
        let metrics = match outcome {
            Outcome::Choice { acc, acc_norm, acc_norm_tokens } => {
                json!({"acc": acc, "acc_norm": acc_norm, "acc_norm_tokens": acc_norm_tokens})
            }
            Outcome::Partial { acc } => json!({"acc": acc}),
            Outcome::Greedy { acc, logprob } => json!({"acc": acc, "logprob": logprob}),
            Outcome::Rolling { logprob, tokens, words, bytes } => {
                json!({"logprob": logprob, "tokens": tokens, "words": words, "bytes": bytes})
            }
        };
        let gold = match &doc.target {
            crate::tasks::Target::Choice { gold, .. } | crate::tasks::Target::Partial { gold } => json!(gold),
            _ => Value::Null,
        };
        let line = json!({"doc_id": doc.id, "gold": gold, "requests": requests, "metrics": metrics});
        out.extend_from_slice(format!("{line}\n").as_bytes());
    }
    crate::results::write_atomically(path, &out)
        .map_err(|error| EvaluateError::Samples { path: path.to_path_buf(), error })
}
