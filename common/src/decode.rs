//! Generation steps (docs/ARCHITECTURE.md §12): what the coordinator asks of the stages
//! for each step of decoding, and what the last stage answers. A step appends tokens to
//! sequences whose keys and values the stages keep between steps (a KV cache per
//! sequence): a whole prompt when a sequence starts (prefill), then one token at a time.
//! The cache's size per token is here too, so that the coordinator admits only the
//! sequences the workers' budgets hold.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// Tokens of a KV-cache page: a sequence's cache grows, and is counted, in whole pages.
pub const PAGE_TOKENS: usize = 16;

/// How the next token is chosen from the last row's logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    /// The most likely token, ties to the lower id.
    Greedy,
    /// A draw from the softmax of the logits over `temperature`, kept to the `top_k` most
    /// likely (0: all) and to the smallest set of them whose probability reaches `top_p`,
    /// with the uniform number of (`seed`, the token's index in the sequence).
    Sample { temperature: f32, top_k: usize, top_p: f32, seed: u64 },
}

/// One sequence's part of a step: `tokens` appended after the `past` tokens its cache
/// holds (a new sequence: `past` 0 and its whole prompt, or the rest of its prompt after
/// a shared `prefix`), and its next token chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceStep {
    pub sequence: u64,
    pub past: usize,
    pub tokens: Vec<u32>,
    /// On a new sequence's first step: the held sequence whose cache this one starts with
    /// (`past` is its length). Its pages are shared, not copied: a prompt prefix computed
    /// once for the sequences that begin with it. That sequence is never stepped again,
    /// and is released after the last one sharing it.
    pub prefix: Option<u64>,
    pub choice: Choice,
    /// Tokens never chosen: the end-of-text token where generation ignores it (llama.cpp's
    /// `--ignore-eos`, transformers' `min_new_tokens`).
    pub suppressed: Vec<u32>,
}

/// One step of decoding: the caches of `released` sequences are freed first, then every
/// sequence of `steps` advances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeBatch {
    pub released: Vec<u64>,
    pub steps: Vec<SequenceStep>,
}

/// The token chosen after a step, with its log-probability under the model (the
/// untempered log-softmax, computed in f64) and whether it was the most likely.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NextToken {
    pub token: u32,
    pub logprob: f32,
    pub greedy: bool,
}

impl DecodeBatch {
    /// Input rows of the step.
    pub fn rows(&self) -> usize {
        self.steps.iter().map(|s| s.tokens.len()).sum()
    }
}

/// Bytes of KV cache one token takes in `layers` layers over `groups` KV-head groups:
/// a key and a value per head, in f32.
pub fn kv_bytes_per_token(config: &ModelConfig, layers: usize, groups: usize) -> usize {
    2 * layers * groups * config.head_dim * std::mem::size_of::<f32>()
}

/// Pages a sequence of `tokens` tokens holds.
pub fn pages_for(tokens: usize) -> usize {
    tokens.div_ceil(PAGE_TOKENS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_up_to_whole_pages() {
        assert_eq!(pages_for(0), 0);
        assert_eq!(pages_for(1), 1);
        assert_eq!(pages_for(PAGE_TOKENS), 1);
        assert_eq!(pages_for(PAGE_TOKENS + 1), 2);
    }
}
