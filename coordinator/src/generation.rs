//! Generation with continuous batching (docs/ARCHITECTURE.md §12): requests wait in
//! order; each step decodes one token of every live sequence, and admits waiting ones
//! (their whole prompt as one prefill) while the step's tokens stay within `--batch-tokens`,
//! the live sequences within `--max-sequences`, and their reserved KV-cache pages
//! (prompt and `max_gen_toks`) within the budget of the replica each goes to (the one with
//! the most pages free: each replica of the engine has the budget). A sequence ends at a stop token (the
//! end-of-text token, and a chat template's end-of-turn tokens),
//! at one of its `until` strings (checked on the decoded text, which is cut before it, as
//! lm-evaluation-harness does) or after its `max_gen_toks`; its slot is refilled at once.
//! A sequence whose request names a shared prefix starts after that prefix's cache: the
//! prefix is prefilled once (once per replica of the engine, as the sequences spread over
//! them), held while sequences that begin with it are live or waiting, and its pages are
//! counted once. A sequence's tokens are the same whatever else decodes with it: its
//! prefill is always its whole prompt, or always its prefix then the rest, and every
//! step's arithmetic is per row. Where the engine holds
//! several steps at once (a pipeline's stages), the sequences are split into as many
//! groups, each with its own step in flight, so every stage has work.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use evalmesh_common::cost::BatchShape;
use evalmesh_common::decode::{pages_for, Choice, DecodeBatch, SequenceStep, PAGE_TOKENS};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, EvaluationEngine};
use crate::tokenizer::TextTokenizer;

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    /// Leading tokens of `prompt` that other sequences may begin with (a few-shot head, a
    /// repeated prompt; 0: none, else fewer than the prompt's). They are always computed
    /// apart, as a prefix whose cache the sequences that begin with it share, so the
    /// sequence's tokens are the same whether or not another one shares it (§6).
    pub prefix: usize,
    pub until: Vec<String>,
    pub max_tokens: usize,
    /// Tokens that end the sequence (the end-of-text token, and a chat template's
    /// end-of-turn tokens), kept in its tokens but not in its text.
    pub stop_tokens: Vec<u32>,
    /// Tokens never chosen (with `ignore_eos`, the end-of-text token: llama.cpp's `--ignore-eos`).
    pub suppressed: Vec<u32>,
    pub choice: Choice,
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Eos,
    Until,
    MaxTokens,
    /// The model's last position was reached.
    Context,
}

/// A finished sequence: its tokens (the end-of-text token included where it ended so),
/// their log-probabilities, and its text without special tokens, cut before the first
/// `until` string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub text: String,
    pub stop: Stop,
}

/// How generation is batched.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Tokens a step may hold (prefills and one per live sequence); a prompt longer than
    /// this is prefilled in a step of its own.
    pub batch_tokens: usize,
    /// Sequences decoding at once.
    pub max_sequences: usize,
    /// KV-cache bytes per worker.
    pub kv_budget_bytes: usize,
    /// The model's positions.
    pub max_position: usize,
}

/// Where a run's time went: steps that prefilled a prompt (with the decode rows they held),
/// and steps of decoding alone, with the tokens each gave; and the prompt tokens computed
/// (a shared prefix counted once per copy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Throughput {
    pub prompt_tokens: usize,
    /// Each step's shape, for the cost model's prediction of the same steps.
    pub steps: Vec<BatchShape>,
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
}

struct Live {
    index: usize,
    pages: usize,
    replica: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
}

/// Sequences that step together, with at most one step in flight.
#[derive(Default)]
struct Group {
    live: Vec<Live>,
    /// Prefixes the step in flight computes (their steps follow the live sequences').
    prefixes: Vec<u64>,
    in_flight: bool,
    /// Whether the step in flight prefills prompts, and its rows.
    prefilled: bool,
    rows: usize,
}

/// One copy of a shared prefix in the engine's caches.
struct Prefix {
    id: u64,
    pages: usize,
    replica: usize,
    /// Live sequences that start with it.
    users: usize,
    /// Whether its step is done, so that sequences may start with it.
    ready: bool,
}

/// The shared prefixes: per prefix, its copies (at most one per replica of the engine)
/// and how many waiting requests begin with it.
struct Prefixes<'a> {
    copies: HashMap<&'a [u32], Vec<Prefix>>,
    waiting: HashMap<&'a [u32], usize>,
    next_id: u64,
    replicas: usize,
}

impl GenerationRequest {
    /// The prefix it may share with others, if it has one.
    fn shared_prefix(&self) -> Option<&[u32]> {
        (self.prefix > 0).then(|| &self.prompt[..self.prefix])
    }
}

/// Request `index`'s first step: its whole prompt after an empty cache.
fn first_step(index: usize, r: &GenerationRequest) -> SequenceStep {
    SequenceStep {
        sequence: index as u64,
        past: 0,
        tokens: r.prompt.clone(),
        prefix: None,
        choice: r.choice,
        suppressed: r.suppressed.clone(),
    }
}

/// Where a request that begins with a shared prefix stands.
enum Found {
    /// It can start after this ready copy (its id and replica).
    After(u64, usize),
    /// A copy it will start after is being computed.
    Wait,
    /// A new copy is to be computed first, on a replica other than these.
    New(Vec<usize>),
}

impl<'a> Prefixes<'a> {
    /// A ready copy of `key` with the fewest users, unless every copy has users and the
    /// engine has replicas without one: then a new copy, so that the sequences spread.
    fn find(&self, key: &[u32]) -> Found {
        let copies = self.copies.get(key).map_or(&[][..], Vec::as_slice);
        let ready = copies.iter().filter(|c| c.ready).min_by_key(|c| c.users);
        match ready {
            Some(c) if c.users == 0 => Found::After(c.id, c.replica),
            _ if copies.iter().any(|c| !c.ready) => Found::Wait,
            Some(c) if copies.len() >= self.replicas => Found::After(c.id, c.replica),
            _ => Found::New(copies.iter().map(|c| c.replica).collect()),
        }
    }

    /// A new copy of `key` taking `pages` on `replica`: the step that computes it.
    fn add(&mut self, key: &'a [u32], pages: usize, replica: usize) -> SequenceStep {
        let id = self.next_id;
        self.next_id += 1;
        self.copies.entry(key).or_default().push(Prefix { id, pages, replica, users: 0, ready: false });
        SequenceStep {
            sequence: id,
            past: 0,
            tokens: key.to_vec(),
            prefix: None,
            choice: Choice::Greedy,
            suppressed: vec![],
        }
    }

    fn copy_mut(&mut self, id: u64) -> Option<&mut Prefix> {
        self.copies.values_mut().flatten().find(|c| c.id == id)
    }

    /// Copies no live sequence uses and no waiting request begins with, removed.
    fn unused(&mut self) -> Vec<Prefix> {
        self.evict(|_, waiting| waiting == 0)
    }

    /// Ready copies no live sequence uses, removed where `drop(key, waiting requests)` says.
    fn evict(&mut self, drop: impl Fn(&[u32], usize) -> bool) -> Vec<Prefix> {
        let mut freed = Vec::new();
        for (key, copies) in &mut self.copies {
            if drop(key, self.waiting.get(key).copied().unwrap_or(0)) {
                let (idle, kept) = std::mem::take(copies).into_iter().partition(|c| c.users == 0 && c.ready);
                *copies = kept;
                freed.extend::<Vec<Prefix>>(idle);
            }
        }
        self.copies.retain(|_, copies| !copies.is_empty());
        freed
    }
}

/// The pages each replica's caches hold for the sequences and prefixes placed there,
/// against the budget each has.
struct Replicas {
    reserved: Vec<usize>,
    budget: usize,
}

impl Replicas {
    /// The replica, other than `taken`, with the most pages free, if `pages` fit there.
    fn room(&self, pages: usize, taken: &[usize]) -> Option<usize> {
        let free = (0..self.reserved.len()).filter(|r| !taken.contains(r)).min_by_key(|&r| (self.reserved[r], r))?;
        (self.reserved[free] + pages <= self.budget).then_some(free)
    }

    /// Frees sequence or copy `id`'s `pages` on `replica`; the engine frees its cache with the next step.
    fn release(&mut self, replica: usize, pages: usize, released: &mut Vec<u64>, id: u64) {
        self.reserved[replica] -= pages;
        released.push(id);
    }
}

/// `text` cut before the earliest of `until` (empty strings ignored), and whether one was found.
pub fn cut_at_until(text: &str, until: &[String]) -> (String, bool) {
    let first = until.iter().filter(|u| !u.is_empty()).filter_map(|u| text.find(u.as_str())).min();
    match first {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// Generates `todo` (indices into `requests`), handing each finished sequence to `done`
/// as soon as it ends. Fails before any step when one request could never fit the cache.
pub fn generate(
    engine: &mut dyn EvaluationEngine,
    tokenizer: &TextTokenizer,
    requests: &[GenerationRequest],
    todo: &[usize],
    batching: Batching,
    done: &mut dyn FnMut(usize, Generation) -> Result<(), EngineError>,
) -> Result<Throughput, EngineError> {
    let page_bytes = engine.kv_bytes_per_token() * PAGE_TOKENS;
    let budget_pages = batching.kv_budget_bytes / page_bytes.max(1);
    // The pages a sequence reserves for itself: the tokens after its prefix and the most
    // it may generate. A prefix's pages are counted once, by its copy.
    let own_pages = |r: &GenerationRequest| pages_for(r.prompt.len() - r.prefix + r.max_tokens);
    for &i in todo {
        let r = &requests[i];
        let need = own_pages(r) + pages_for(r.prefix);
        if need > budget_pages {
            return Err(EngineError::Request {
                index: i,
                problem: format!(
                    "a prompt of {} tokens and up to {} generated need {} MiB of KV cache, more than --kv-cache-mb {} holds: raise --kv-cache-mb or lower max_gen_toks",
                    r.prompt.len(),
                    r.max_tokens,
                    (need * page_bytes).div_ceil(1 << 20),
                    batching.kv_budget_bytes >> 20
                ),
            });
        }
    }
    engine.set_kv_budget(budget_pages * page_bytes)?;
    // One group of sequences per step the engine holds at once (a pipeline's stages), each
    // with its own step in flight; a group is at most its share of --max-sequences.
    let depth = engine.decode_depth().max(1);
    let per_group = batching.max_sequences.div_ceil(depth);
    let mut groups: Vec<Group> = (0..depth).map(|_| Group::default()).collect();
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    let mut waiting: VecDeque<usize> = todo.iter().copied().collect();
    let replica_count = engine.decode_replicas().max(1);
    let mut replicas = Replicas { reserved: vec![0; replica_count], budget: budget_pages };
    let mut prefixes = Prefixes {
        copies: HashMap::new(),
        waiting: HashMap::new(),
        next_id: requests.len() as u64,
        replicas: replica_count,
    };
    for &i in todo {
        if let Some(key) = requests[i].shared_prefix() {
            *prefixes.waiting.entry(key).or_default() += 1;
        }
    }
    // The copy each live sequence started after.
    let mut after: HashMap<usize, u64> = HashMap::new();
    let (mut released, mut live_total) = (Vec::new(), 0);
    let mut throughput = Throughput::default();
    let mut last = Instant::now();
    loop {
        for (g, group) in groups.iter_mut().enumerate().filter(|(_, group)| !group.in_flight) {
            // Each live sequence feeds back its last token; waiting ones are admitted.
            let mut steps: Vec<SequenceStep> = group
                .live
                .iter()
                .filter_map(|l| {
                    let r = &requests[l.index];
                    Some(SequenceStep {
                        sequence: l.index as u64,
                        past: r.prompt.len() + l.tokens.len() - 1,
                        tokens: vec![*l.tokens.last()?],
                        prefix: None,
                        choice: r.choice,
                        suppressed: r.suppressed.clone(),
                    })
                })
                .collect();
            let mut placed: Vec<usize> = group.live.iter().map(|l| l.replica).collect();
            let (mut prefix_steps, mut prefix_placed) = (Vec::new(), Vec::new());
            let mut rows = steps.len();
            let mut shape = BatchShape {
                decode_rows: steps.len(),
                cached_keys: steps.iter().map(|s| s.past as u64 + 1).sum(),
                generating: true,
                ..BatchShape::default()
            };
            group.prefilled = false;
            while let Some(&i) = waiting.front() {
                let r = &requests[i];
                if live_total >= batching.max_sequences || group.live.len() >= per_group {
                    break;
                }
                let key = r.shared_prefix();
                let found = key.map(|key| prefixes.find(key));
                // The rows its admission adds (its own, or its prefix's first), and the
                // replica it goes to: its copy's, or the one with the most room for its
                // pages (a new copy's and then its own).
                let (new_rows, replica) = match &found {
                    None => (r.prompt.len(), replicas.room(own_pages(r), &[])),
                    Some(Found::After(_, replica)) => (r.prompt.len() - r.prefix, Some(*replica)),
                    Some(Found::New(taken)) => (r.prefix, replicas.room(pages_for(r.prefix) + own_pages(r), taken)),
                    Some(Found::Wait) => break,
                };
                if rows + new_rows > batching.batch_tokens && group.prefilled {
                    break;
                }
                let replica = match replica.filter(|&p| replicas.reserved[p] + own_pages(r) <= budget_pages) {
                    Some(replica) => replica,
                    None => {
                        // Idle copies of other prefixes make room (computed again if needed).
                        let freed = prefixes.evict(|k, _| Some(k) != key);
                        if freed.is_empty() {
                            break;
                        }
                        for copy in freed {
                            replicas.release(copy.replica, copy.pages, &mut released, copy.id);
                        }
                        continue;
                    }
                };
                rows += new_rows;
                throughput.prompt_tokens += new_rows;
                group.prefilled = true;
                // Its rows see the prefix before them and causally each other.
                let (before, n) = match found {
                    Some(Found::After(..)) => (r.prefix as u64, new_rows as u64),
                    _ => (0, new_rows as u64),
                };
                shape.attention_pairs += n * before + n * (n + 1) / 2;
                let step = match (key, found) {
                    (Some(key), Some(Found::New(_))) => {
                        // The request waits for its copy, computed in this step.
                        replicas.reserved[replica] += pages_for(r.prefix);
                        let step = prefixes.add(key, pages_for(r.prefix), replica);
                        group.prefixes.push(step.sequence);
                        prefix_steps.push(step);
                        prefix_placed.push(replica);
                        continue;
                    }
                    (Some(key), Some(Found::After(copy, _))) => {
                        if let Some(w) = prefixes.waiting.get_mut(key) {
                            *w -= 1;
                        }
                        if let Some(c) = prefixes.copy_mut(copy) {
                            c.users += 1;
                        }
                        after.insert(i, copy);
                        let rest = r.prompt[r.prefix..].to_vec();
                        SequenceStep { past: r.prefix, tokens: rest, prefix: Some(copy), ..first_step(i, r) }
                    }
                    _ => first_step(i, r),
                };
                waiting.pop_front();
                live_total += 1;
                replicas.reserved[replica] += own_pages(r);
                steps.push(step);
                placed.push(replica);
                group.live.push(Live {
                    index: i,
                    pages: own_pages(r),
                    replica,
                    tokens: Vec::new(),
                    logprobs: Vec::new(),
                });
            }
            steps.extend(prefix_steps);
            placed.extend(prefix_placed);
            if steps.is_empty() {
                continue;
            }
            throughput.steps.push(BatchShape { tokens: rows, scored_rows: steps.len(), ..shape });
            let id = engine.start_decode(DecodeBatch { released: std::mem::take(&mut released), steps }, &placed)?;
            group.rows = rows;
            group.in_flight = true;
            in_flight.insert(id, g);
        }
        if in_flight.is_empty() {
            return match waiting.front() {
                None => Ok(throughput),
                Some(&index) => Err(EngineError::Request {
                    index,
                    problem: "it cannot be admitted with nothing else decoding (a KV-cache budget or --max-sequences too small)".into(),
                }),
            };
        }
        let (id, next) = engine.finish_decode()?;
        let g = in_flight.remove(&id).ok_or_else(|| EngineError::Sink(format!("step {id} is not in flight")))?;
        let group = &mut groups[g];
        group.in_flight = false;
        // Wall time since the last step ended, to the kind of this step.
        let seconds = std::mem::replace(&mut last, Instant::now()).elapsed().as_secs_f64();
        let (tokens, spent) = match group.prefilled {
            true => (&mut throughput.prefill_tokens, &mut throughput.prefill_seconds),
            false => (&mut throughput.decode_tokens, &mut throughput.decode_seconds),
        };
        *tokens += group.rows;
        *spent += seconds;
        if next.len() != group.live.len() + group.prefixes.len() {
            return Err(EngineError::Sink(format!(
                "{} next tokens for {} sequences and {} prefixes",
                next.len(),
                group.live.len(),
                group.prefixes.len()
            )));
        }
        // A prefix's next token is not wanted: its copy is ready for the sequences that wait.
        for id in std::mem::take(&mut group.prefixes) {
            if let Some(c) = prefixes.copy_mut(id) {
                c.ready = true;
            }
        }
        let mut still = Vec::with_capacity(group.live.len());
        for (mut l, n) in std::mem::take(&mut group.live).into_iter().zip(next) {
            let r = &requests[l.index];
            l.tokens.push(n.token);
            l.logprobs.push(n.logprob);
            let at_eos = r.stop_tokens.contains(&n.token);
            let text_tokens = if at_eos { &l.tokens[..l.tokens.len() - 1] } else { &l.tokens[..] };
            let decode = || tokenizer.decode(text_tokens).map_err(|e| EngineError::Sink(e.to_string()));
            // The text is decoded at each step only where stop strings are looked for.
            let (text, found) = match r.until.iter().any(|u| !u.is_empty()) {
                true => {
                    let (text, found) = cut_at_until(&decode()?, &r.until);
                    (Some(text), found)
                }
                false => (None, false),
            };
            let stop = if at_eos {
                Stop::Eos
            } else if found {
                Stop::Until
            } else if l.tokens.len() >= r.max_tokens {
                Stop::MaxTokens
            } else if r.prompt.len() + l.tokens.len() >= batching.max_position {
                Stop::Context
            } else {
                still.push(l);
                continue;
            };
            let text = match text {
                Some(text) => text,
                None => decode()?,
            };
            replicas.release(l.replica, l.pages, &mut released, l.index as u64);
            live_total -= 1;
            if let Some(c) = after.remove(&l.index).and_then(|copy| prefixes.copy_mut(copy)) {
                c.users -= 1;
            }
            done(l.index, Generation { tokens: l.tokens, logprobs: l.logprobs, text, stop })?;
        }
        group.live = still;
        for copy in prefixes.unused() {
            replicas.release(copy.replica, copy.pages, &mut released, copy.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use evalmesh_common::decode::NextToken;
    use evalmesh_common::protocol::WorkerStats;
    use evalmesh_common::ScoreTree;

    use super::*;
    use crate::engine::ScoreSink;
    use crate::results::EngineDetails;
    use crate::tokenizer::testing::{word_level, HELLO};

    /// An engine that records each step and answers `hello` for every sequence of it.
    struct Recorder {
        replicas: usize,
        steps: Vec<DecodeBatch>,
        /// Each step's replicas, one a sequence.
        placed: Vec<Vec<usize>>,
        answers: VecDeque<(u64, Vec<NextToken>)>,
    }

    impl EvaluationEngine for Recorder {
        fn score(&mut self, _: &[ScoreTree], _: usize, _: &mut ScoreSink) -> Result<(), EngineError> {
            Err(EngineError::Unsupported("scoring".into()))
        }
        fn decode_depth(&self) -> usize {
            1
        }
        fn decode_replicas(&self) -> usize {
            self.replicas
        }
        fn start_decode(&mut self, batch: DecodeBatch, replicas: &[usize]) -> Result<u64, EngineError> {
            assert_eq!(replicas.len(), batch.steps.len());
            assert!(replicas.iter().all(|&r| r < self.replicas));
            self.placed.push(replicas.to_vec());
            let next = batch.steps.iter().map(|_| NextToken { token: HELLO, logprob: -1.0, greedy: true }).collect();
            self.answers.push_back((self.steps.len() as u64, next));
            self.steps.push(batch);
            Ok(self.steps.len() as u64 - 1)
        }
        fn finish_decode(&mut self) -> Result<(u64, Vec<NextToken>), EngineError> {
            self.answers.pop_front().ok_or(EngineError::NoScores)
        }
        fn set_kv_budget(&mut self, _: usize) -> Result<(), EngineError> {
            Ok(())
        }
        /// A page is 64 bytes.
        fn kv_bytes_per_token(&self) -> usize {
            4
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn provenance(&self) -> Vec<String> {
            vec!["cpu".into()]
        }
        fn parallel_workers(&self) -> usize {
            1
        }
        fn details(&self) -> EngineDetails {
            EngineDetails::Lightweight { layers: [0, 1], threads: 1, lanes: 1 }
        }
        fn monitoring(&mut self, _: bool) -> Result<Vec<(i32, WorkerStats)>, EngineError> {
            Ok(Vec::new())
        }
    }

    /// A request of `head` (a 32-token prefix shared by requests of the same head) and 3 tokens of its own.
    fn request(head: u32, own: u32) -> GenerationRequest {
        let mut prompt = vec![head; 32];
        prompt.extend([own; 3]);
        GenerationRequest {
            prompt,
            prefix: 32,
            until: vec![],
            max_tokens: 2,
            stop_tokens: vec![],
            suppressed: vec![],
            choice: Choice::Greedy,
        }
    }

    /// Runs `requests` on a recorder with `replicas`, `max_sequences` and a budget of
    /// `pages` a replica; returns the steps it was asked for and the prompt tokens computed.
    fn run(
        requests: &[GenerationRequest],
        replicas: usize,
        max_sequences: usize,
        pages: usize,
    ) -> (Vec<DecodeBatch>, usize) {
        let (engine, prompt_tokens) = run_on(requests, replicas, max_sequences, pages);
        (engine.steps, prompt_tokens)
    }

    /// [`run`], returning the recorder.
    fn run_on(
        requests: &[GenerationRequest],
        replicas: usize,
        max_sequences: usize,
        pages: usize,
    ) -> (Recorder, usize) {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = word_level(dir.path(), None);
        let mut engine = Recorder { replicas, steps: Vec::new(), placed: Vec::new(), answers: VecDeque::new() };
        let batching = Batching { batch_tokens: 4096, max_sequences, kv_budget_bytes: pages * 64, max_position: 1024 };
        let todo: Vec<usize> = (0..requests.len()).collect();
        let mut finished = Vec::new();
        let throughput = generate(&mut engine, &tokenizer, requests, &todo, batching, &mut |i, g| {
            assert_eq!(g.tokens, [HELLO; 2]);
            finished.push(i);
            Ok(())
        })
        .unwrap();
        finished.sort();
        assert_eq!(finished, todo);
        (engine, throughput.prompt_tokens)
    }

    #[test]
    fn each_replica_holds_a_budget_of_sequences() {
        // A sequence of 35 prompt tokens and 2 generated takes 3 pages; each replica's 6
        // pages hold two: one replica decodes two at once, two replicas four.
        let requests: Vec<GenerationRequest> =
            (0..6).map(|i| GenerationRequest { prefix: 0, ..request(7 + i, 1) }).collect();
        let (one, _) = run_on(&requests, 1, 48, 6);
        assert_eq!(one.steps[0].steps.len(), 2);
        let (two, _) = run_on(&requests, 2, 48, 6);
        assert_eq!(two.steps[0].steps.len(), 4);
        assert_eq!(two.placed[0], [0, 1, 0, 1]);
    }

    #[test]
    fn a_shared_prefix_is_computed_once_and_started_after() {
        let requests: Vec<GenerationRequest> = (0..5).map(|i| request(7, 10 + i)).collect();
        let (steps, prompt_tokens) = run(&requests, 1, 48, 64);
        // The prefix's step first, alone; then every request after it, with its own tokens.
        assert_eq!(steps[0].steps.len(), 1);
        assert_eq!((steps[0].steps[0].sequence, steps[0].steps[0].tokens.len()), (5, 32));
        for (i, step) in steps[1].steps.iter().enumerate() {
            assert_eq!((step.sequence, step.past, step.prefix, step.tokens.len()), (i as u64, 32, Some(5), 3));
        }
        assert_eq!(prompt_tokens, 32 + 5 * 3);
        // One sequence at a time: the prefix stays while requests that begin with it wait.
        let (steps, prompt_tokens) = run(&requests, 1, 1, 64);
        assert_eq!(steps.iter().flat_map(|b| &b.steps).filter(|s| s.sequence == 5).count(), 1);
        assert_eq!(prompt_tokens, 32 + 5 * 3);
    }

    #[test]
    fn each_replica_gets_its_own_copy_of_a_prefix() {
        let requests: Vec<GenerationRequest> = (0..5).map(|i| request(7, 10 + i)).collect();
        let (engine, _) = run_on(&requests, 2, 48, 64);
        let steps = &engine.steps;
        let starts: Vec<u64> = steps.iter().flat_map(|b| &b.steps).filter_map(|s| s.prefix).collect();
        // The copies sit on different replicas, and each sequence on its copy's.
        let replica_of = |id: u64| {
            let mut all = steps.iter().zip(&engine.placed).flat_map(|(b, p)| b.steps.iter().zip(p));
            all.find(|(s, _)| s.sequence == id).map(|(_, &r)| r).unwrap()
        };
        assert_ne!(replica_of(5), replica_of(6));
        for s in steps.iter().flat_map(|b| &b.steps).filter(|s| s.prefix.is_some()) {
            assert_eq!(replica_of(s.sequence), replica_of(s.prefix.unwrap()));
        }
        assert_eq!(starts.iter().filter(|&&p| p == 5).count(), 3, "{starts:?}");
        assert_eq!(starts.iter().filter(|&&p| p == 6).count(), 2, "{starts:?}");
    }

    #[test]
    fn an_idle_prefix_makes_room_for_another() {
        // Room for one prefix (2 pages) and one sequence (1 page) only: A's copy, idle while
        // a request for it waits, is released for B's and computed again after.
        let requests = [request(7, 1), request(8, 2), request(7, 3)];
        let mut steps = Vec::new();
        for batch in run(&requests, 1, 1, 3).0 {
            steps
                .push((batch.released.clone(), batch.steps.iter().map(|s| (s.sequence, s.prefix)).collect::<Vec<_>>()));
        }
        let computed: Vec<u64> =
            steps.iter().flat_map(|(_, s)| s).filter(|(id, _)| *id >= 3).map(|(id, _)| *id).collect();
        assert_eq!(computed, [3, 4, 5], "{steps:?}");
        let b = steps.iter().position(|(_, s)| s.contains(&(4, None))).unwrap();
        assert!(steps[b].0.contains(&3), "A's copy is released before B's is computed: {steps:?}");
    }

    #[test]
    fn text_is_cut_before_the_earliest_until_string() {
        let until = vec!["\n\n".to_string(), "".to_string(), "Question:".to_string()];
        assert_eq!(cut_at_until("42\nQuestion: x\n\ny", &until), ("42\n".to_string(), true));
        assert_eq!(cut_at_until("no stop here", &until), ("no stop here".to_string(), false));
    }
}
