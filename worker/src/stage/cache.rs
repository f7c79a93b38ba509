//! The KV cache of the sequences a stage is generating (docs/ARCHITECTURE.md §12): per
//! sequence and per layer of the stage, the keys then values of its tokens so far (its
//! groups' heads only), in host memory, counted a page ([`PAGE_TOKENS`] tokens) at a time
//! against a budget of pages, so that the budget follows the tokens held.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use evalmesh_common::decode::{pages_for, SequenceStep, PAGE_TOKENS};

use super::error::StageError;
use crate::backend::cpu::{CacheView, CachedRows};
use crate::tensor::Matrix;

/// A sequence or layer the cache was never prepared for.
fn missing(sequence: u64, layer: usize) -> StageError {
    StageError::Spec(format!("sequence {sequence} has no cache of layer {layer}"))
}

/// Per layer of the stage: a sequence's tokens, `width` values each.
type Layers = Vec<Vec<f32>>;

struct Sequence {
    /// Tokens held, a shared prefix's included.
    len: usize,
    /// Pages of its own tokens (a shared prefix's are counted by its own sequence).
    pages: usize,
    /// The cache of the prefix it shares with others, and that prefix's tokens.
    prefix: Option<(Arc<Layers>, usize)>,
    /// Its own tokens; shared (the `Arc` cloned) once sequences start with them.
    own: Arc<Layers>,
}

impl Sequence {
    fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |(_, len)| *len)
    }
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

    /// Frees a sequence's pages. A prefix's storage lives on while a sequence still
    /// shares it, uncounted: the coordinator releases a prefix after its last sharer.
    pub fn release(&mut self, sequence: u64) {
        if let Some(s) = self.sequences.remove(&sequence) {
            self.used_pages -= s.pages;
        }
    }

    /// A new sequence's start: empty, or the cache of the held sequence `prefix`.
    fn start(&self, step: &SequenceStep) -> Result<Sequence, StageError> {
        let prefix = match step.prefix {
            None => None,
            Some(id) => {
                let held = self.sequences.get(&id).filter(|p| p.prefix.is_none() && p.len == step.past);
                let held = held.ok_or_else(|| {
                    StageError::Spec(format!(
                        "sequence {} starts after {} tokens of sequence {id}, which holds no such unshared prefix",
                        step.sequence, step.past
                    ))
                })?;
                Some((Arc::clone(&held.own), held.len))
            }
        };
        Ok(Sequence { len: prefix.as_ref().map_or(0, |p| p.1), pages: 0, prefix, own: Arc::default() })
    }

    /// Makes room for a step: each sequence holds its `past` tokens (a new one none, or
    /// its prefix's) and gets the pages its new tokens need, within the budget.
    pub fn prepare(&mut self, steps: &[SequenceStep]) -> Result<(), StageError> {
        for step in steps {
            if !self.sequences.contains_key(&step.sequence) {
                let start = self.start(step)?;
                self.sequences.insert(step.sequence, start);
            }
            let (layers, width) = (self.layers, self.width);
            let Some(sequence) = self.sequences.get_mut(&step.sequence) else {
                return Err(missing(step.sequence, self.first_layer));
            };
            if sequence.len != step.past {
                return Err(StageError::Spec(format!(
                    "sequence {}: a step after {} tokens, but its cache holds {}",
                    step.sequence, step.past, sequence.len
                )));
            }
            let own_tokens = step.past + step.tokens.len() - sequence.prefix_len();
            let pages = pages_for(own_tokens);
            let more = pages.saturating_sub(sequence.pages);
            if self.used_pages + more > self.budget_pages {
                return Err(StageError::KvBudget {
                    tokens: own_tokens,
                    budget_tokens: self.budget_pages * PAGE_TOKENS,
                    free_tokens: (self.budget_pages - self.used_pages.min(self.budget_pages)) * PAGE_TOKENS,
                });
            }
            let own = Arc::get_mut(&mut sequence.own).ok_or_else(|| {
                StageError::Spec(format!(
                    "sequence {}: other sequences share its cache, so it cannot grow",
                    step.sequence
                ))
            })?;
            // The budget counts pages; the storage grows by doubling, so that a long
            // generation copies each layer's cache a few times rather than every page.
            own.resize_with(layers, Vec::new);
            for layer in own.iter_mut() {
                layer.reserve(pages * PAGE_TOKENS * width - layer.len());
            }
            sequence.pages += more;
            self.used_pages += more;
        }
        Ok(())
    }

    /// Each step's cache of `layer` (its `past` tokens) beside its rows in the step.
    pub fn views<'a>(
        &'a self,
        layer: usize,
        steps: &[SequenceStep],
        rows: &[Range<usize>],
    ) -> Result<Vec<CachedRows<'a>>, StageError> {
        let at = layer.wrapping_sub(self.first_layer);
        steps
            .iter()
            .zip(rows)
            .map(|(step, rows)| {
                let s = self.sequences.get(&step.sequence).filter(|_| at < self.layers);
                let s = s.ok_or_else(|| missing(step.sequence, layer))?;
                let piece = |layers: &'a Layers| layers.get(at).map_or(&[][..], Vec::as_slice);
                let cache =
                    CacheView { shared: s.prefix.as_ref().map_or(&[][..], |(p, _)| piece(p)), own: piece(&s.own) };
                Ok(CachedRows { cache, rows: rows.clone() })
            })
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
                .and_then(|s| Arc::get_mut(&mut s.own))
                .and_then(|own| own.get_mut(layer.wrapping_sub(first)))
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
        SequenceStep { sequence, past, tokens: vec![1; len], prefix: None, choice: Choice::Greedy, suppressed: vec![] }
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

    #[test]
    fn a_sequence_starts_after_a_shared_prefix() {
        // One layer of width 2: a page is 16 × 2 × 4 = 128 bytes.
        let mut cache = KvCache::new(0..1, 2, 8 * 128);
        let rows = |range: Range<usize>| {
            Matrix::from_vec(range.len(), 2, range.flat_map(|r| [r as f32, -(r as f32)]).collect())
        };
        let prefix = step(1, 0, 20);
        cache.prepare(std::slice::from_ref(&prefix)).unwrap();
        cache.append(0, std::slice::from_ref(&prefix), std::slice::from_ref(&(0..20)), &rows(0..20), 0..2).unwrap();
        cache.advance(std::slice::from_ref(&prefix));
        // Starting after another length, or after an unknown sequence, is refused.
        for (id, past) in [(1, 19), (9, 20)] {
            let wrong = SequenceStep { prefix: Some(id), ..step(2, past, 5) };
            assert!(cache.prepare(&[wrong]).unwrap_err().to_string().contains("no such unshared prefix"));
            cache.release(2);
        }
        let children: Vec<SequenceStep> = (2..4).map(|s| SequenceStep { prefix: Some(1), ..step(s, 20, 5) }).collect();
        cache.prepare(&children).unwrap();
        // The prefix's two pages count once; each child counts one page of its own.
        assert_eq!(cache.used_bytes(), 4 * 128);
        cache.append(0, &children, &[20..25, 25..30], &rows(0..30), 0..2).unwrap();
        cache.advance(&children);
        cache.release(1);
        let views = cache.views(0, &[step(3, 25, 1)], std::slice::from_ref(&(0..1))).unwrap();
        assert_eq!(views[0].cache.shared, &rows(0..20).data[..]);
        assert_eq!(views[0].cache.own, &rows(25..30).data[..]);
        assert_eq!(cache.used_bytes(), 2 * 128);
        // A prefix others share does not grow.
        let mut cache = KvCache::new(0..1, 2, 8 * 128);
        cache.prepare(std::slice::from_ref(&prefix)).unwrap();
        cache.advance(std::slice::from_ref(&prefix));
        cache.prepare(&[SequenceStep { prefix: Some(1), ..step(2, 20, 1) }]).unwrap();
        assert!(cache.prepare(&[step(1, 20, 1)]).unwrap_err().to_string().contains("cannot grow"));
    }
}
