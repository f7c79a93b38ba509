//! The KV cache of the sequences a stage is generating (docs/ARCHITECTURE.md §12): per
//! sequence and per layer of the stage, the keys then values of its tokens so far (its
//! groups' heads only), in host memory, counted a page ([`PAGE_TOKENS`] tokens) at a time
//! against a budget of pages, so that the budget follows the tokens held.

use std::collections::HashMap;
use std::ops::Range;

use evalmesh_common::decode::{pages_for, SequenceStep, PAGE_TOKENS};

use super::error::StageError;
use crate::backend::cpu::CachedRows;
use crate::tensor::Matrix;

/// A sequence or layer the cache was never prepared for.
fn missing(sequence: u64, layer: usize) -> StageError {
    StageError::Spec(format!("sequence {sequence} has no cache of layer {layer}"))
}

struct Sequence {
    len: usize,
    pages: usize,
    /// Per layer of the stage: `len` rows of `width` values.
    layers: Vec<Vec<f32>>,
}

/// The caches of one stage's sequences.
pub struct KvCache {
    first_layer: usize,
    layers: usize,
    /// Values a token takes in one layer: a key and a value per KV head of the stage.
    width: usize,
    budget_pages: usize,
    used_pages: usize,
    sequences: HashMap<u64, Sequence>,
}

impl KvCache {
    /// The cache of layers `layers` with `width` values a token each, holding at most
    /// `budget_bytes`.
    pub fn new(layers: Range<usize>, width: usize, budget_bytes: usize) -> KvCache {
        let page_bytes = (PAGE_TOKENS * width * layers.len() * std::mem::size_of::<f32>()).max(1);
        KvCache {
            first_layer: layers.start,
            layers: layers.len(),
            width,
            budget_pages: budget_bytes / page_bytes,
            used_pages: 0,
            sequences: HashMap::new(),
        }
    }

    /// Bytes held by the sequences' pages.
    pub fn used_bytes(&self) -> usize {
        self.used_pages * PAGE_TOKENS * self.width * self.layers * std::mem::size_of::<f32>()
    }

    pub fn release(&mut self, sequence: u64) {
        if let Some(s) = self.sequences.remove(&sequence) {
            self.used_pages -= s.pages;
        }
    }

    /// Makes room for a step: each sequence holds its `past` tokens (a new one none) and
    /// gets the pages its new tokens need, within the budget.
    pub fn prepare(&mut self, steps: &[SequenceStep]) -> Result<(), StageError> {
        for step in steps {
            let layers = self.layers;
            let sequence = self.sequences.entry(step.sequence).or_insert_with(|| Sequence {
                len: 0,
                pages: 0,
                layers: vec![Vec::new(); layers],
            });
            if sequence.len != step.past {
                return Err(StageError::Spec(format!(
                    "sequence {}: a step after {} tokens, but its cache holds {}",
                    step.sequence, step.past, sequence.len
                )));
            }
            let pages = pages_for(step.past + step.tokens.len());
            let more = pages.saturating_sub(sequence.pages);
            if self.used_pages + more > self.budget_pages {
                return Err(StageError::KvBudget {
                    tokens: step.past + step.tokens.len(),
                    budget_tokens: self.budget_pages * PAGE_TOKENS,
                    free_tokens: (self.budget_pages - self.used_pages.min(self.budget_pages)) * PAGE_TOKENS,
                });
            }
            // The budget counts pages; the storage grows by doubling, so that a long
            // generation copies each layer's cache a few times rather than every page.
            for layer in &mut sequence.layers {
                layer.reserve(pages * PAGE_TOKENS * self.width - layer.len());
            }
            sequence.pages += more;
            self.used_pages += more;
        }
        Ok(())
    }

    /// The layer cache of a sequence that [`KvCache::prepare`] made room for.
    fn layer(&self, sequence: u64, layer: usize) -> Result<&Vec<f32>, StageError> {
        self.sequences
            .get(&sequence)
            .and_then(|s| s.layers.get(layer.wrapping_sub(self.first_layer)))
            .ok_or_else(|| missing(sequence, layer))
    }

    /// Each step's cache of `layer` (its `past` tokens) beside its rows in the step.
    pub fn views<'a>(
        &'a self,
        layer: usize,
        steps: &[SequenceStep],
        rows: &[Range<usize>],
    ) -> Result<Vec<CachedRows<'a>>, StageError> {
        steps
            .iter()
            .zip(rows)
            .map(|(step, rows)| Ok(CachedRows { cache: self.layer(step.sequence, layer)?, rows: rows.clone() }))
            .collect()
    }

    /// Appends the keys and values of each step's rows of `layer`: the columns `kv` of
    /// `qkv` (keys, then values).
    pub fn append(
        &mut self,
        layer: usize,
        steps: &[SequenceStep],
        rows: &[Range<usize>],
        qkv: &Matrix,
        kv: Range<usize>,
    ) -> Result<(), StageError> {
        let first = self.first_layer;
        for (step, rows) in steps.iter().zip(rows) {
            let cache = self
                .sequences
                .get_mut(&step.sequence)
                .and_then(|s| s.layers.get_mut(layer.wrapping_sub(first)))
                .ok_or_else(|| missing(step.sequence, layer))?;
            for row in rows.clone() {
                cache.extend_from_slice(&qkv.row(row)[kv.clone()]);
            }
        }
        Ok(())
    }

    /// Counts each step's tokens as held, once every layer has them.
    pub fn advance(&mut self, steps: &[SequenceStep]) {
        for step in steps {
            if let Some(s) = self.sequences.get_mut(&step.sequence) {
                s.len += step.tokens.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalmesh_common::decode::Choice;

    fn step(sequence: u64, past: usize, len: usize) -> SequenceStep {
        SequenceStep { sequence, past, tokens: vec![1; len], choice: Choice::Greedy, suppressed: vec![] }
    }

    #[test]
    fn pages_follow_the_tokens_and_the_budget_holds() {
        // Two layers of width 4: a page is 16 tokens × 4 × 2 layers × 4 bytes = 512 bytes.
        let mut cache = KvCache::new(3..5, 4, 3 * 512);
        cache.prepare(&[step(7, 0, 20)]).unwrap();
        assert_eq!(cache.used_bytes(), 2 * 512);
        cache.advance(&[step(7, 0, 20)]);
        // A step that does not continue where the cache is is refused.
        assert!(cache.prepare(&[step(7, 5, 1)]).is_err());
        cache.prepare(&[step(7, 20, 1)]).unwrap();
        assert_eq!(cache.used_bytes(), 2 * 512);
        // Another sequence of two pages does not fit the one page left.
        let err = cache.prepare(&[step(8, 0, 17)]).unwrap_err().to_string();
        assert!(err.contains("48 tokens"), "{err}");
        cache.release(7);
        assert_eq!(cache.used_bytes(), 0);
        cache.prepare(&[step(8, 0, 17)]).unwrap();
    }
}
