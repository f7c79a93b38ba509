//! The transformer stage (docs/ARCHITECTURE.md §3): a contiguous range of blocks,
//! optionally with the token embedding in front and the final norm, LM head and scoring
//! behind, over some or all of the model's groups (`evalmesh_common::plan`), for any
//! model the configuration describes. Each block ([`block`]) is two named sublayers, each
//! loaded and run on its own and added to the residual stream; [`weights`] reads and cuts
//! their tensors. The single process runs one stage over all layers and groups; a
//! pipeline splits the layers over several stages, tensor parallelism the groups over
//! several shards, whose row-parallel sums a [`GroupSum`] completes in group order.

mod block;
mod cache;
mod choose;
mod error;
mod sums;
mod weights;

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use evalmesh_common::decode::{DecodeBatch, NextToken};
use evalmesh_common::{MicroBatch, ModelConfig, StageSpec, TokenScore, TreeLayout};
use rayon::prelude::*;

use self::block::{Attend, Block, Pass};
pub use self::cache::KvCache;
use self::choose::choose;
pub use self::error::StageError;
pub use self::sums::{fold, ByGroup, GroupSum, LocalSum};
use self::weights::Weights;
use crate::backend::{Backend, DecodeRows, HeadLayout};
use crate::tensor::Matrix;
use crate::weights::{TensorId, WeightSource};

/// What a stage receives: token ids (first stage) or hidden states from the previous stage.
pub enum StageInput<T> {
    Tokens,
    Hidden(T),
}

/// What a stage produces: hidden states for the next stage, or the last stage's answer:
/// the scores of a micro-batch, or the next token of each sequence of a generation step.
pub enum StageOutput<T> {
    Hidden(T),
    Scores(Vec<TokenScore>),
    Next(Vec<NextToken>),
}

/// Each row's sequence length, for the rotary scalings that depend on it: its tree's
/// longest path (the prefix and its longest branch), so that it never depends on the batch.
fn sequence_lengths(trees: &[TreeLayout]) -> Vec<usize> {
    trees
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.prefix_len + t.branch_lens.iter().copied().max().unwrap_or(0), t.len()))
        .collect()
}

/// A position's most likely tokens and their log-probabilities.
pub type Alternatives = Vec<(u32, f64)>;

/// The `top` most likely tokens of a row of logits, with their log-softmax in f64.
fn most_likely(logits: &[f32], top: usize) -> Alternatives {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    order.truncate(top);
    order.into_iter().map(|id| (id, logits[id as usize] as f64 - max - log_sum)).collect()
}

struct Head<B: Backend> {
    norm: B::Tensor,
    weight: Arc<B::Weight>,
}

pub struct TransformerStage<B: Backend> {
    backend: B,
    config: ModelConfig,
    spec: StageSpec,
    embedding: Option<Arc<B::Weight>>,
    blocks: Vec<Block<B>>,
    head: Option<Head<B>>,
    /// Bytes of its matrix weights in the backend's memory.
    weight_bytes: u64,
}

impl<B: Backend> TransformerStage<B> {
    /// Loads only the tensors the stage owns.
    pub fn load(source: &dyn WeightSource, spec: StageSpec, backend: B) -> Result<Self, StageError> {
        let config = source.config().clone();
        if spec.layers.start > spec.layers.end || spec.layers.end > config.num_layers {
            return Err(StageError::Spec(format!(
                "layers {:?} are outside the model's {} layers",
                spec.layers, config.num_layers
            )));
        }
        if spec.groups.is_empty() || spec.groups.end > config.num_kv_heads {
            return Err(StageError::Spec(format!(
                "groups {:?} are outside the model's {} KV-head groups",
                spec.groups, config.num_kv_heads
            )));
        }
        let weights = Weights { source, backend: &backend, bytes: Cell::new(0) };
        let embedding = match spec.embedding {
            true => Some(Arc::new(weights.whole(TensorId::Embedding)?)),
            false => None,
        };
        let blocks =
            spec.layers.clone().map(|l| Block::load(&weights, l, &spec.groups)).collect::<Result<Vec<_>, _>>()?;
        let head = match (spec.head, &embedding) {
            (false, _) => None,
            (true, Some(shared)) if config.tied_embeddings => {
                Some(Head { norm: weights.norm(TensorId::FinalNorm)?, weight: Arc::clone(shared) })
            }
            (true, _) => Some(Head {
                norm: weights.norm(TensorId::FinalNorm)?,
                weight: Arc::new(weights.whole(TensorId::Head)?),
            }),
        };
        let weight_bytes = weights.bytes.get();
        Ok(TransformerStage { backend, config, spec, embedding, blocks, head, weight_bytes })
    }

    pub fn spec(&self) -> &StageSpec {
        &self.spec
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Bytes of its matrix weights in the backend's memory (as `--weights-in-memory` keeps them).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Runs the stage on one micro-batch; `sums` completes its row-parallel products.
    pub fn forward(
        &self,
        batch: &MicroBatch,
        input: StageInput<B::Tensor>,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<StageOutput<B::Tensor>, StageError> {
        Ok(self.forward_with_alternatives(batch, input, sums, 0)?.0)
    }

    /// [`Self::forward`], and for each scored row of a last stage its `top` most likely
    /// tokens with their log-probabilities, most likely first (ties to the lower id),
    /// computed on the host in f64 from the logits.
    pub fn forward_with_alternatives(
        &self,
        batch: &MicroBatch,
        input: StageInput<B::Tensor>,
        sums: &mut dyn GroupSum<B>,
        top: usize,
    ) -> Result<(StageOutput<B::Tensor>, Vec<Alternatives>), StageError> {
        batch.validate(self.config.vocab_size).map_err(|e| StageError::Spec(e.to_string()))?;
        let positions = batch.positions();
        let seq_lens = sequence_lengths(&batch.trees);
        // Only the scored rows leave the model's last block, in row order.
        let mut kept: Vec<usize> = batch.scored.iter().map(|s| s.row).collect();
        kept.sort_unstable();
        kept.dedup();
        let attend = Attend::Trees(&batch.trees);
        let x = self.hidden(&batch.tokens, input, &positions, &seq_lens, attend, self.kept_at_end(&kept), sums)?;
        let Some(head) = &self.head else {
            return Ok((StageOutput::Hidden(x), Vec::new()));
        };
        let b = &self.backend;
        let mut scores = Vec::with_capacity(batch.scored.len());
        let mut alternatives = Vec::new();
        for chunk in batch.scored.chunks(b.head_rows()) {
            let rows: Vec<usize> = chunk.iter().map(|s| kept.partition_point(|&r| r < s.row)).collect();
            let targets: Vec<u32> = chunk.iter().map(|s| s.target).collect();
            let logits = self.logits(head, &x, &rows, false)?;
            scores.extend(b.score(&logits, &targets)?);
            if top > 0 {
                let logits = b.download(&logits)?;
                alternatives.extend(logits.data.chunks_exact(logits.cols).map(|row| most_likely(row, top)));
            }
        }
        let count = scores.iter().filter(|s| !s.logprob.is_finite()).count();
        if count > 0 {
            return Err(StageError::NonFiniteScores { count, total: scores.len() });
        }
        Ok((StageOutput::Scores(scores), alternatives))
    }

    /// One generation step (docs/ARCHITECTURE.md §12): frees the released sequences'
    /// caches, runs each step's tokens after its sequence's cache, adds their keys and
    /// values to it, and on a last stage chooses each sequence's next token from its last row.
    pub fn decode(
        &self,
        batch: &DecodeBatch,
        input: StageInput<B::Tensor>,
        sums: &mut dyn GroupSum<B>,
        cache: &mut KvCache,
    ) -> Result<StageOutput<B::Tensor>, StageError> {
        let c = &self.config;
        for &sequence in &batch.released {
            cache.release(sequence);
        }
        let (mut tokens, mut positions, mut seq_lens, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for step in &batch.steps {
            let end = step.past + step.tokens.len();
            if step.tokens.is_empty() || end > c.max_position {
                return Err(StageError::Spec(format!(
                    "sequence {}: a step of {} tokens after {} does not fit the model's {} positions",
                    step.sequence,
                    step.tokens.len(),
                    step.past,
                    c.max_position
                )));
            }
            if let Some(&id) = step.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(StageError::Spec(format!("token id {id} is outside the vocabulary of {}", c.vocab_size)));
            }
            rows.push(tokens.len()..tokens.len() + step.tokens.len());
            tokens.extend_from_slice(&step.tokens);
            positions.extend(step.past as u32..end as u32);
            seq_lens.extend(std::iter::repeat_n(end, step.tokens.len()));
        }
        cache.prepare(&batch.steps)?;
        self.backend.generation_step(|| {
            // Only each step's last row leaves the model's last block.
            let last_rows: Vec<usize> = rows.iter().map(|r| r.end - 1).collect();
            let attend = Attend::Cached { steps: &batch.steps, rows, cache: RefCell::new(&mut *cache) };
            let x = self.hidden(&tokens, input, &positions, &seq_lens, attend, self.kept_at_end(&last_rows), sums)?;
            cache.advance(&batch.steps);
            let Some(head) = &self.head else {
                return Ok(StageOutput::Hidden(x));
            };
            let b = &self.backend;
            let mut next = Vec::with_capacity(batch.steps.len());
            let kept: Vec<usize> = (0..batch.steps.len()).collect();
            for (chunk, steps) in kept.chunks(b.head_rows()).zip(batch.steps.chunks(b.head_rows())) {
                let logits = b.download(&self.logits(head, &x, chunk, true)?)?;
                let rows: Vec<&[f32]> = logits.data.chunks_exact(logits.cols).collect();
                let count = rows.iter().filter(|row| row.iter().any(|v| !v.is_finite())).count();
                if count > 0 {
                    return Err(StageError::NonFiniteScores { count, total: rows.len() });
                }
                let chosen = rows
                    .into_par_iter()
                    .zip(steps)
                    .map(|(row, step)| choose(row, step.choice, step.past + step.tokens.len(), &step.suppressed));
                next.par_extend(chosen);
            }
            Ok(StageOutput::Next(next))
        })
    }

    /// `rows` where this stage ends the model (every shard of the last stage, the head's
    /// and the others, so that their partial sums have the same rows), else none.
    fn kept_at_end<'r>(&self, rows: &'r [usize]) -> Option<&'r [usize]> {
        (self.spec.layers.end == self.config.num_layers).then_some(rows)
    }

    /// The hidden states after the stage's blocks of `tokens` (first stage) or `input`, at
    /// `positions`, attending as `attend` says; of rows `kept` alone, in that order, where
    /// given (the last block computes only those after attention).
    #[allow(clippy::too_many_arguments)]
    fn hidden<'a>(
        &'a self,
        tokens: &[u32],
        input: StageInput<B::Tensor>,
        positions: &[u32],
        seq_lens: &[usize],
        attend: Attend<'a>,
        kept: Option<&[usize]>,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        let b = &self.backend;
        let c = &self.config;
        let mut x = match (input, &self.embedding) {
            (StageInput::Tokens, Some(table)) => {
                let mut x = b.embed(table, tokens)?;
                if let Some(scale) = c.embedding_scale {
                    b.scale(&mut x, scale as f32)?;
                }
                x
            }
            (StageInput::Hidden(h), None) if b.rows(&h) == tokens.len() => h,
            _ => return Err(StageError::Spec(
                "input does not match the stage: tokens go to the first stage, hidden rows of the batch to the others"
                    .into(),
            )),
        };
        let groups = self.spec.groups.len();
        let heads =
            HeadLayout { num_heads: c.num_heads / c.num_kv_heads * groups, num_kv_heads: groups, head_dim: c.head_dim };
        let ropes = c
            .ropes
            .iter()
            .map(|rope| b.upload(Matrix::from_vec(positions.len(), rope.rotary_dim, rope.table(positions, seq_lens))));
        let ropes = ropes.collect::<Result<Vec<_>, _>>()?;
        let decode = match &attend {
            Attend::Cached { rows, .. } => DecodeRows::of_steps(rows.iter().map(|r| r.len())),
            Attend::Trees(_) => DecodeRows::none(),
        };
        let pass = Pass { backend: b, config: c, heads, ropes, attend, decode };
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&pass, x, kept.filter(|_| i == last), sums)?;
        }
        match (kept, self.blocks.is_empty()) {
            (Some(kept), true) => Ok(b.gather_rows(&x, kept)?),
            _ => Ok(x),
        }
    }

    /// The logits of rows `rows` of `x`: final norm, LM head, soft cap where the model has one.
    /// In generation, every row is multiplied as a decode row: one per step, whatever its kind.
    fn logits(&self, head: &Head<B>, x: &B::Tensor, rows: &[usize], generating: bool) -> Result<B::Tensor, StageError> {
        let (b, c) = (&self.backend, &self.config);
        let h = b.rms_norm(&b.gather_rows(x, rows)?, &head.norm, c.rms_norm_eps)?;
        let decode = if generating { DecodeRows::all(rows.len()) } else { DecodeRows::none() };
        let mut logits = b.matmul_t_rows(&h, &head.weight, &decode)?;
        if let Some(cap) = c.final_softcap {
            b.soft_cap(&mut logits, cap as f32)?;
        }
        Ok(logits)
    }

    /// A KV cache for this stage's layers and groups, of at most `budget_bytes`.
    pub fn kv_cache(&self, budget_bytes: usize) -> KvCache {
        KvCache::new(self.spec.layers.clone(), 2 * self.spec.groups.len() * self.config.head_dim, budget_bytes)
    }
}
