//! Generation with continuous batching (docs/ARCHITECTURE.md §12): requests wait in
//! order; each step decodes one token of every live sequence, and admits waiting ones
//! (their whole prompt as one prefill) while the step's tokens stay within `--batch-tokens`,
//! the live sequences within `--max-sequences`, and their reserved KV-cache pages
//! (prompt and `max_gen_toks`) within the budget. A sequence ends at a stop token (the
//! end-of-text token, and a chat template's end-of-turn tokens),
//! at one of its `until` strings (checked on the decoded text, which is cut before it, as
//! lm-evaluation-harness does) or after its `max_gen_toks`; its slot is refilled at once.
//! A sequence's tokens are the same whatever else decodes with it: its prefill is always
//! its whole prompt, and every step's arithmetic is per row. Where the engine holds
//! several steps at once (a pipeline's stages), the sequences are split into as many
//! groups, each with its own step in flight, so every stage has work.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use evalmesh_common::decode::{pages_for, Choice, DecodeBatch, SequenceStep, PAGE_TOKENS};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, EvaluationEngine};
use crate::tokenizer::TextTokenizer;

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
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
/// and steps of decoding alone, with the tokens each gave.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
}

struct Live {
    index: usize,
    pages: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
}

/// Sequences that step together, with at most one step in flight.
#[derive(Default)]
struct Group {
    live: Vec<Live>,
    in_flight: bool,
    /// Whether the step in flight prefills prompts, and its rows.
    prefilled: bool,
    rows: usize,
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
    let reserve = |r: &GenerationRequest| pages_for(r.prompt.len() + r.max_tokens);
    for &i in todo {
        let r = &requests[i];
        if reserve(r) > budget_pages {
            return Err(EngineError::Request {
                index: i,
                problem: format!(
                    "a prompt of {} tokens and up to {} generated need {} MiB of KV cache, more than --kv-cache-mb {} holds: raise --kv-cache-mb or lower max_gen_toks",
                    r.prompt.len(),
                    r.max_tokens,
                    (reserve(r) * page_bytes).div_ceil(1 << 20),
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
    let (mut reserved, mut released, mut live_total) = (0, Vec::new(), 0);
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
                        choice: r.choice,
                        suppressed: r.suppressed.clone(),
                    })
                })
                .collect();
            let mut rows = steps.len();
            group.prefilled = false;
            while let Some(&i) = waiting.front() {
                let r = &requests[i];
                let fits_step = rows + r.prompt.len() <= batching.batch_tokens || !group.prefilled;
                if live_total >= batching.max_sequences
                    || group.live.len() >= per_group
                    || reserved + reserve(r) > budget_pages
                    || !fits_step
                {
                    break;
                }
                waiting.pop_front();
                live_total += 1;
                reserved += reserve(r);
                rows += r.prompt.len();
                group.prefilled = true;
                steps.push(SequenceStep {
                    sequence: i as u64,
                    past: 0,
                    tokens: r.prompt.clone(),
                    choice: r.choice,
                    suppressed: r.suppressed.clone(),
                });
                group.live.push(Live { index: i, pages: reserve(r), tokens: Vec::new(), logprobs: Vec::new() });
            }
            if steps.is_empty() {
                continue;
            }
            let id = engine.start_decode(DecodeBatch { released: std::mem::take(&mut released), steps })?;
            group.rows = rows;
            group.in_flight = true;
            in_flight.insert(id, g);
        }
        if in_flight.is_empty() {
            return Ok(throughput);
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
        if next.len() != group.live.len() {
            return Err(EngineError::Sink(format!("{} next tokens for {} sequences", next.len(), group.live.len())));
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
            reserved -= l.pages;
            live_total -= 1;
            released.push(l.index as u64);
            done(l.index, Generation { tokens: l.tokens, logprobs: l.logprobs, text, stop })?;
        }
        group.live = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_before_the_earliest_until_string() {
        let until = vec!["\n\n".to_string(), "".to_string(), "Question:".to_string()];
        assert_eq!(cut_at_until("42\nQuestion: x\n\ny", &until), ("42\n".to_string(), true));
        assert_eq!(cut_at_until("no stop here", &until), ("no stop here".to_string(), false));
    }
}
