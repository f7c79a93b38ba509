//! Runs tasks through an engine: plans each task's trees, takes what the journal already
//! holds, scores the rest (journaling each tree as it finishes), turns scores into
//! metrics (lm-evaluation-harness's part of the results, and what each task cost) and writes
//! the per-sample logs in lm-evaluation-harness's schema.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use evalmesh_common::cost::{BatchShape, Prediction};
use evalmesh_common::decode::{Choice, PAGE_TOKENS};
use evalmesh_common::{MicroBatch, ScoreTree, TreeScores};
use rayon::prelude::*;

use crate::engine::{EngineError, EvaluationEngine};
use crate::generation::{generate, Batching, Generation, GenerationRequest};
use crate::journal::{generation_key, task_key, tree_key, Journal, JournalError};
use crate::lm_eval::files::SamplesFiles;
use crate::lm_eval::python::hash_string;
use crate::lm_eval::samples::{generation_sample, sample, Sample};
use crate::prediction::{error_percent, Predictor};
use crate::progress::Progress;
use crate::results::{LayoutSizes, PredictionSummary, TaskResults, TaskStats, TuningSummary, TuningTrial};
use crate::tasks::code_execution::{pass_at_k, Sandbox};
use crate::tasks::metrics::{aggregate, mean_stderr, outcome, Outcome};
use crate::tasks::requests::{plan, request_scores, RequestScore, Windows};
use crate::tasks::{Doc, Group, Target, Task, TaskError};
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
    /// Whether a document's choices share its context's tree, and generated sequences a
    /// prefix's cache (§5, §12).
    pub share_prefixes: bool,
    /// The longest prompt generation may prefill as a shared prefix then the rest
    /// (`ModelConfig::prefix_split_limit`).
    pub prefix_split_limit: usize,
    /// Where `samples_<task>_<date>.jsonl` files go, when they are wanted.
    pub samples: Option<SamplesFiles<'a>>,
    pub model_fingerprint: &'a str,
    /// The micro-batch token budget the engine packs with.
    pub batch_tokens: usize,
    /// `--batch-size N`: each task's budget is N times its longest request instead.
    pub batch_size: Option<usize>,
    /// The cost model of the run, for predicted beside measured.
    pub predictor: Option<&'a Predictor>,
    /// Try several micro-batch budgets on the first trees and keep the fastest.
    pub tune: bool,
    /// Set by SIGTERM, SIGUSR1 or SIGINT: stop after the micro-batches in hand.
    pub stop: Option<&'a AtomicBool>,
    /// Sequences decoding at once (generate_until tasks).
    pub max_sequences: usize,
    /// KV-cache bytes per worker (generate_until tasks).
    pub kv_budget_bytes: usize,
    /// Where programs run, with `--allow-code-execution` (HumanEval).
    pub sandbox: Option<&'a Sandbox>,
    /// The tokens that end a generated sequence: the end-of-text token, and with a chat
    /// template the end-of-turn tokens of the vocabulary.
    pub stop_tokens: &'a [u32],
    /// The seed of sampled generation (`--seed`'s torch seed; lm-evaluation-harness's
    /// default, 1234, where not given): each sampled document draws from its own stream,
    /// `seed << 48 | repeat << 32 | document`, so that its text does not depend on the others.
    pub sampling_seed: u16,
    /// Where standard error is not a terminal, how often a line of progress is logged
    /// (`--progress-every`; none where `None`).
    pub progress_every: Option<Duration>,
}

impl Settings<'_> {
    /// Whether work goes on after the piece in hand: not once a signal asked to stop.
    fn go_on(&self) -> Result<(), EngineError> {
        match self.stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            true => Err(EngineError::Stopped),
            false => Ok(()),
        }
    }
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
    // Per group (innermost first for each task), its tasks in order.
    let mut groups: BTreeMap<Group, Vec<String>> = BTreeMap::new();
    let mut task_stats = BTreeMap::new();
    let mut predicted = Totals::default();
    let mut budget = settings.batch_tokens;
    let mut tuner = settings.tune.then(Tuner::default);
    if let Some(task) = tasks.iter().find(|t| t.unsafe_code && settings.sandbox.is_none()) {
        return Err(code_execution_refused(&task.name).into());
    }
    for task in tasks {
        let docs = &task.docs[..settings.limit.map_or(task.docs.len(), |l| l.apply(task.docs.len()))];
        if task.generates() {
            let (Scored { metrics, samples, stats }, prediction) =
                generate_task(engine, tokenizer, task, docs, settings, journal.as_deref_mut())?;
            if let Some(p) = &prediction {
                predicted.add(p, stats.seconds, stats.tokens_computed);
            }
            add_to_groups(&mut groups, task);
            let task_hash = hash_string(&samples.iter().map(|s| s.hashes.as_str()).collect::<String>());
            if let Some(files) = settings.samples {
                write_samples(&files.path(&task.name), &samples)?;
            }
            crate::lm_eval::add_task(&mut results, task, metrics, docs.len(), task_hash);
            task_stats.insert(task.name.clone(), stats);
            continue;
        }
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
        if let Some(n) = settings.batch_size {
            budget = n * longest_request(&plan.trees);
        }
        let todo: Vec<usize> = (0..plan.trees.len()).filter(|&i| scores[i].is_none()).collect();
        let todo_trees: Vec<ScoreTree> = todo.iter().map(|&i| plan.trees[i].clone()).collect();
        let mut stats = TaskStats {
            trees: plan.trees.len(),
            trees_from_journal: plan.trees.len() - todo.len(),
            trees_computed: todo.len(),
            tokens_computed: todo_trees.iter().map(ScoreTree::input_len).sum(),
            attention_pairs: Some(
                todo_trees.iter().map(|t| BatchShape::of(&MicroBatch::pack(&[t])).attention_pairs).sum(),
            ),
            tokens_without_prefix_sharing: todo_trees.iter().map(ScoreTree::unshared_input_len).sum(),
            tokens_scored: plan.trees.iter().map(ScoreTree::target_count).sum(),
            batch_tokens: settings.batch_size.map(|_| budget),
            ..TaskStats::default()
        };
        let bar = Progress::tokens(stats.tokens_computed, &task.name, settings.progress_every);
        let started = Instant::now();
        // Scores the computed trees `part` (indices into `todo_trees`) with `budget`.
        let mut compute = |part: &[usize], budget: usize| -> Result<(), EngineError> {
            let trees: Vec<ScoreTree> = part.iter().map(|&i| todo_trees[i].clone()).collect();
            engine.score(&trees, budget, &mut |i, s| {
                let index = todo[part[i]];
                bar.inc(plan.trees[index].input_len() as u64, None);
                if let Some(j) = journal.as_deref_mut() {
                    j.record(keys[index].clone(), s.clone()).map_err(|e| EngineError::Sink(e.to_string()))?;
                }
                scores[index] = Some(s);
                settings.go_on()
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
        bar.finish();
        let scores: Vec<TreeScores> = scores.into_iter().flatten().collect();

        let per_doc: Vec<(Vec<RequestScore>, Outcome)> = docs
            .iter()
            .zip(&plan.docs)
            .filter_map(|(doc, planned)| {
                let s = request_scores(planned, &scores);
                outcome(&doc.target, planned, &s).map(|o| (s, o))
            })
            .collect();
        let outcomes: Vec<Outcome> = per_doc.iter().map(|(_, o)| o.clone()).collect();
        let mut metrics = aggregate(&outcomes);
        metrics.retain(|key, _| {
            let metric = key.split(',').next().unwrap_or(key);
            task.reports(metric.strip_suffix("_stderr").unwrap_or(metric))
        });
        if let Windows::Llamacpp { .. } = settings.windows {
            // Chunks score only their second halves: per-word and per-byte figures do not apply.
            metrics.retain(|k, _| k.starts_with("perplexity"));
        }
        add_to_groups(&mut groups, task);
        let reported = |m: &str| metrics.contains_key(&format!("{m},none"));
        let samples: Vec<_> = docs.iter().zip(&per_doc).map(|(doc, (s, o))| sample(doc, s, o, &reported)).collect();
        let task_hash = hash_string(&samples.iter().map(|s| s.hashes.as_str()).collect::<String>());
        if let Some(files) = settings.samples {
            write_samples(&files.path(&task.name), &samples)?;
        }
        crate::lm_eval::add_task(&mut results, task, metrics, docs.len(), task_hash);
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
    }
    crate::lm_eval::add_groups(&mut results, &groups);
    Ok(Evaluation {
        results,
        tasks: task_stats,
        prediction: settings.predictor.filter(|_| predicted.tokens > 0).map(|p| predicted.summary(p)),
        tuning: tuner.map(|t| t.summary(budget)),
    })
}

/// Adds `task` to its groups: each group's children are what sits right under it, the
/// task or the group inside it.
fn add_to_groups(groups: &mut BTreeMap<Group, Vec<String>>, task: &Task) {
    let children = std::iter::once(&task.name).chain(task.groups.iter().map(|g| &g.name));
    for (group, child) in task.groups.iter().zip(children) {
        let members = groups.entry(group.clone()).or_default();
        if !members.contains(child) {
            members.push(child.clone());
        }
    }
}

/// The refusal to score a task that runs the model's output as code without the user's leave.
fn code_execution_refused(task: &str) -> TaskError {
    TaskError::Settings(format!(
        "{task} runs the model's completions as Python programs to score them: pass --allow-code-execution (lm-evaluation-harness: --confirm_run_unsafe_code) to allow it; each runs in a sandboxed child process (no network, a time limit, resource limits)"
    ))
}

/// What a task's run gave: its metrics under lm-evaluation-harness's keys, its samples and its cost.
struct Scored {
    metrics: BTreeMap<String, serde_json::Value>,
    samples: Vec<Sample>,
    stats: TaskStats,
}

/// A generate_until task (docs/ARCHITECTURE.md §12): each document's context tokenised
/// (left-truncated, as lm-evaluation-harness does, to leave `max_gen_toks` positions), its
/// continuation generated (`repeats` times), filtered by each filter chain and matched with
/// `exact_match`, or run against its tests for pass@1; with the cost model's prediction of
/// the steps it ran.
fn generate_task(
    engine: &mut dyn EvaluationEngine,
    tokenizer: &TextTokenizer,
    task: &Task,
    docs: &[Doc],
    settings: &Settings,
    mut journal: Option<&mut Journal>,
) -> Result<(Scored, Option<Prediction>), EvaluateError> {
    // The tokens of each head (system prompt, description, demonstrations) the documents
    // share, encoded once; then each document's requests, tokenised in parallel and laid
    // end to end in document order (an error is a head's, else the first failing document's).
    let mut heads: Vec<&str> = docs.iter().filter_map(|doc| document_head(doc)).collect();
    heads.sort_unstable();
    heads.dedup();
    let heads: HashMap<&str, Vec<u32>> = heads
        .into_par_iter()
        .map(|head| Ok((head, tokenizer.encode_document(head)?)))
        .collect::<Result<_, TaskError>>()?;
    let per_doc: Vec<Result<Vec<GenerationRequest>, TaskError>> =
        docs.par_iter().map(|doc| generation_requests(doc, task, tokenizer, &heads, settings)).collect();
    let mut requests = Vec::with_capacity(docs.len() * task.repeats);
    for doc in per_doc {
        requests.extend(doc?);
    }
    let config_hash = task_key(&task.config, settings.windows, task.num_fewshot);
    let keys: Vec<String> =
        requests.iter().map(|r| generation_key(settings.model_fingerprint, &config_hash, r)).collect();
    let mut generations: Vec<Option<Generation>> = vec![None; requests.len()];
    if let Some(j) = journal.as_deref_mut() {
        j.begin_task(&task.name, &config_hash)?;
        for (slot, key) in generations.iter_mut().zip(&keys) {
            *slot = j.generation(key).cloned();
        }
    }
    let todo: Vec<usize> = (0..requests.len()).filter(|&i| generations[i].is_none()).collect();
    let from_journal = requests.len() - todo.len();
    let bar = Progress::sequences(todo.len(), &task.name, settings.progress_every);
    let started = Instant::now();
    let mut generated = 0usize;
    let batching = Batching {
        batch_tokens: settings.batch_tokens,
        max_sequences: settings.max_sequences,
        kv_budget_bytes: settings.kv_budget_bytes,
        max_position: settings.max_position,
    };
    let throughput = generate(engine, tokenizer, &requests, &todo, batching, &mut |i, g| {
        generated += g.tokens.len();
        let rate = generated as f64 / started.elapsed().as_secs_f64();
        bar.inc(1, Some(format!("{generated} tokens, {rate:.1} tokens/s")));
        if let Some(j) = journal.as_deref_mut() {
            j.record_generation(keys[i].clone(), g.clone()).map_err(|e| EngineError::Sink(e.to_string()))?;
        }
        generations[i] = Some(g);
        settings.go_on()
    })?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let generations: Vec<Generation> = generations.into_iter().flatten().collect();
    let mut metrics = BTreeMap::new();
    let mut samples = Vec::new();
    let empty = serde_json::Map::new();
    for filter in &task.filters {
        let mut scored = Vec::with_capacity(docs.len());
        for (doc, g) in docs.iter().zip(generations.chunks(task.repeats)) {
            let Target::Generate { reference, .. } = &doc.target else { continue };
            let record = doc.record.as_object().unwrap_or(&empty);
            let texts: Vec<String> = g.iter().map(|g| g.text.clone()).collect();
            let filtered = filter.apply(&texts, record).into_iter().next().unwrap_or_default();
            scored.push((doc, g, reference, filtered));
        }
        let (metric, scores): (&str, Vec<f64>) = match (task.pass_at_1, settings.sandbox) {
            (false, _) => ("exact_match", scored.iter().map(|(_, _, r, f)| task.exact_match.score(f, r)).collect()),
            // code_eval's program: the candidate, a newline, the test.
            (true, Some(sandbox)) => {
                let passed: Vec<bool> = scored
                    .par_iter()
                    .map(|(_, _, reference, filtered)| sandbox.passes(&format!("{filtered}\n{reference}")))
                    .collect::<Result<_, _>>()?;
                ("pass@1", passed.into_iter().map(|p| pass_at_k(1, usize::from(p), 1)).collect())
            }
            (true, None) => return Err(code_execution_refused(&task.name).into()),
        };
        for ((doc, g, _, filtered), score) in scored.iter().zip(&scores) {
            samples.push(generation_sample(doc, g, &filter.name, filtered, (metric, *score)));
        }
        let (mean, stderr) = mean_stderr(&scores);
        metrics.insert(format!("{metric},{}", filter.name), serde_json::json!(mean));
        metrics.insert(format!("{metric}_stderr,{}", filter.name), serde_json::json!(stderr));
    }
    let prompt_tokens = throughput.prompt_tokens;
    let mut stats = TaskStats {
        trees: requests.len(),
        trees_computed: todo.len(),
        trees_from_journal: from_journal,
        tokens_computed: prompt_tokens + generated,
        tokens_generated: Some(generated),
        prefill_tokens_per_s: Some(throughput.prefill_tokens as f64 / throughput.prefill_seconds.max(1e-9)),
        decode_tokens_per_s: Some(throughput.decode_tokens as f64 / throughput.decode_seconds.max(1e-9)),
        seconds,
        tokens_per_s: (prompt_tokens + generated) as f64 / seconds.max(1e-9),
        ..TaskStats::default()
    };
    let prediction = match settings.predictor {
        Some(p) => Some(p.predict_generation(&throughput.steps).map_err(|e| EngineError::Plan(e.to_string()))?),
        None => None,
    };
    if let Some(p) = &prediction {
        // The rates of the same tokens: the prompts' and the generated ones.
        stats.predicted_seconds = Some(p.seconds);
        stats.predicted_tokens_per_s = Some(stats.tokens_computed as f64 / p.seconds.max(1e-9));
        stats.prediction_error_percent = Some(error_percent(seconds, p.seconds));
    }
    Ok((Scored { metrics, samples, stats }, prediction))
}

/// The head (system prompt, description, demonstrations) that begins a generation
/// document's context, where the context is text to tokenise and has one.
fn document_head(doc: &Doc) -> Option<&str> {
    let Target::Generate { prompt_ids: None, head, .. } = &doc.target else { return None };
    let context = doc.requests.first().map_or("", |r| r.context.as_str());
    context.get(..*head).filter(|head| !head.is_empty())
}

/// A generation document's requests (`repeats` of them): its prompt tokenised and
/// left-truncated to leave `max_gen_toks` positions, with the prefix it shares with the
/// other documents (the tokens of its head, `heads`, that begin the prompt).
fn generation_requests(
    doc: &Doc,
    task: &Task,
    tokenizer: &TextTokenizer,
    heads: &HashMap<&str, Vec<u32>>,
    settings: &Settings,
) -> Result<Vec<GenerationRequest>, TaskError> {
    let Target::Generate { kwargs, prompt_ids, .. } = &doc.target else {
        return Err(TaskError::Settings(format!("{}: document {} is not a generation", task.name, doc.id)));
    };
    let room = settings.max_position.checked_sub(kwargs.max_gen_toks).filter(|&r| r > 0).ok_or_else(|| {
        TaskError::Settings(format!(
            "{}: max_gen_toks {} leaves no room for a prompt in the model's {} positions",
            task.name, kwargs.max_gen_toks, settings.max_position
        ))
    })?;
    let context = doc.requests.first().map_or("", |r| r.context.as_str());
    let mut prompt = match prompt_ids {
        Some(ids) => ids.clone(),
        None => tokenizer.encode_document(context)?,
    };
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= tokenizer.vocab_size()) {
        return Err(TaskError::Settings(format!(
            "{}: document {}: prompt token {id} is outside the vocabulary of {}",
            task.name,
            doc.id,
            tokenizer.vocab_size()
        )));
    }
    if prompt.is_empty() {
        prompt.extend(tokenizer.prefix_token());
    }
    // The shared prefix: the head's tokens that begin the prompt (its last one may merge
    // with the document's text), or, for repeats, all of the prompt but its last token.
    let mut prefix = match document_head(doc) {
        Some(head) => heads[head].iter().zip(&prompt).take_while(|(a, b)| a == b).count(),
        None => 0,
    };
    let dropped = prompt.len().saturating_sub(room);
    prompt.drain(..dropped);
    // At least the last token is the sequence's own: the step that chooses its first token.
    let last = prompt.len().saturating_sub(1);
    prefix = match task.repeats > 1 {
        true => last,
        false => prefix.saturating_sub(dropped).min(last),
    };
    // A prefix shorter than a page is not worth a step of its own; a prompt longer
    // than the split limit is prefilled whole.
    if !settings.share_prefixes || prefix < PAGE_TOKENS || prompt.len() > settings.prefix_split_limit {
        prefix = 0;
    }
    let (stop_tokens, suppressed) = match kwargs.ignore_eos {
        true => (Vec::new(), settings.stop_tokens.to_vec()),
        false => (settings.stop_tokens.to_vec(), Vec::new()),
    };
    // `repeats` requests per document, each sampled with its own seed.
    let mut requests = Vec::with_capacity(task.repeats);
    for repeat in 0..task.repeats as u64 {
        let choice = match kwargs.do_sample {
            true => Choice::Sample {
                temperature: kwargs.temperature as f32,
                top_k: kwargs.top_k,
                top_p: kwargs.top_p as f32,
                seed: (settings.sampling_seed as u64) << 48 | repeat << 32 | doc.id as u64,
            },
            false => Choice::Greedy,
        };
        requests.push(GenerationRequest {
            prompt: prompt.clone(),
            prefix,
            until: kwargs.until.clone(),
            max_tokens: kwargs.max_gen_toks,
            stop_tokens: stop_tokens.clone(),
            suppressed: suppressed.clone(),
            choice,
        });
    }
    Ok(requests)
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
            lanes: p.placement.lanes,
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

/// The longest request of a task's trees in tokens, as a batch of lm-evaluation-harness
/// pads it: a context with its longest continuation, or a rolling window.
fn longest_request(trees: &[ScoreTree]) -> usize {
    let request = |t: &ScoreTree| match t.branches.iter().map(Vec::len).max() {
        Some(branch) => t.prefix.len() + branch - 1,
        None => t.prefix.len().saturating_sub(1),
    };
    trees.iter().map(request).max().unwrap_or(1).max(1)
}

/// The samples file of a task: one line per document (see [`sample`]).
fn write_samples(path: &Path, samples: &[Sample]) -> Result<(), EvaluateError> {
    let mut out = Vec::new();
    for s in samples {
        out.extend_from_slice(s.line.as_bytes());
        out.push(b'\n');
    }
    crate::results::write_atomically(path, &out)
        .map_err(|error| EvaluateError::Samples { path: path.to_path_buf(), error })
}
