//! The Llama-family transformer stage (docs/ARCHITECTURE.md §3): a contiguous range of
//! blocks, optionally with the token embedding in front and the final norm, LM head and
//! scoring behind, over some or all of the model's groups (`evalmesh_common::plan`).
//! Each block is two named sublayers, [`Attention`] and [`FeedForward`], each loaded and
//! run on its own and added to the residual stream by [`Block::forward`].
//! The single process runs one stage over all layers and groups; a pipeline splits the
//! layers over several stages, tensor parallelism the groups over several shards, whose
//! row-parallel sums a [`GroupSum`] completes in group order.

use std::sync::Arc;

use std::ops::Range;

use evalmesh_common::{group_slice, MicroBatch, ModelConfig, StageSpec, TokenScore, TreeLayout};

use crate::backend::error::BackendError;
use crate::backend::{Backend, HeadLayout};
use crate::tensor::Matrix;
use crate::weights::random::seed_of;
use crate::weights::{load, load_part, LayerTensor, TensorId, WeightError, WeightSource};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stage {0}")]
    Spec(String),
    #[error("the model computed non-finite scores (NaN or infinity) for {count} of {total} tokens: its weights are finite, so its activations overflow; check that the model file is what it claims to be")]
    NonFiniteScores { count: usize, total: usize },
}

/// What a stage receives: token ids (first stage) or hidden states from the previous stage.
pub enum StageInput<T> {
    Tokens,
    Hidden(T),
}

/// What a stage produces: hidden states for the next stage, or the scores (last stage).
pub enum StageOutput<T> {
    Hidden(T),
    Scores(Vec<TokenScore>),
}

/// Completes a row-parallel product (attention output, down projection): adds this
/// worker's per-group partial products, in group order, to the running sum of the groups
/// before them, and returns the sum over all groups.
pub trait GroupSum<B: Backend> {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError>;
}

/// Every group is local (no tensor parallelism): the sum is the fold of the partials.
pub struct LocalSum;

impl<B: Backend> GroupSum<B> for LocalSum {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError> {
        fold(backend, None, partials)
    }
}

/// `((running + p₀) + p₁) + …`, or from `p₀` without a running sum: the canonical order.
pub fn fold<B: Backend>(
    backend: &B,
    running: Option<B::Tensor>,
    partials: Vec<B::Tensor>,
) -> Result<B::Tensor, StageError> {
    let mut total = running;
    for p in partials {
        total = Some(match total {
            None => p,
            Some(mut t) => {
                backend.add_assign(&mut t, &p)?;
                t
            }
        });
    }
    total.ok_or_else(|| StageError::Spec("a row-parallel sum over no groups".into()))
}

/// A row-parallel weight cut by group: each group's input columns (within this
/// worker's share of them) and its slice of the weight.
struct ByGroup<B: Backend> {
    parts: Vec<(Range<usize>, B::Weight)>,
}

impl<B: Backend> ByGroup<B> {
    /// `x · wᵀ` summed over the groups: one product per group, completed by `sums`.
    fn forward(&self, b: &B, x: &B::Tensor, sums: &mut dyn GroupSum<B>) -> Result<B::Tensor, StageError> {
        let partials = self.parts.iter().map(|(cols, part)| Ok(b.matmul_t(&b.columns(x, cols.clone())?, part)?));
        let partials = partials.collect::<Result<Vec<_>, StageError>>()?;
        sums.sum(b, partials)
    }
}

/// What every block shares in one micro-batch's pass.
struct Pass<'a, B: Backend> {
    backend: &'a B,
    config: &'a ModelConfig,
    /// This worker's heads of the fused QKV activation.
    heads: HeadLayout,
    /// The rotary table of the micro-batch's positions.
    rope: B::Tensor,
    trees: &'a [TreeLayout],
}

/// The attention sublayer: `attention(norm(x))`, its output projection summed by group.
struct Attention<B: Backend> {
    norm: B::Tensor,
    /// This worker's rows of the Q, K and V projections stacked.
    qkv: B::Weight,
    out: ByGroup<B>,
}

impl<B: Backend> Attention<B> {
    fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        let c = weights.source.config();
        let (q, kv) = (c.q_dim(), c.kv_dim());
        Ok(Attention {
            norm: weights.norm(TensorId::Layer(layer, LayerTensor::AttnNorm))?,
            qkv: weights.stacked(layer, groups, &[(LayerTensor::Q, q), (LayerTensor::K, kv), (LayerTensor::V, kv)])?,
            out: weights.by_group(layer, groups, LayerTensor::O, q)?,
        })
    }

    fn forward(&self, pass: &Pass<'_, B>, x: &B::Tensor, sums: &mut dyn GroupSum<B>) -> Result<B::Tensor, StageError> {
        let (b, c, heads) = (pass.backend, pass.config, pass.heads);
        let h = b.rms_norm(x, &self.norm, c.rms_norm_eps)?;
        let mut qkv = b.matmul_t(&h, &self.qkv)?;
        b.apply_rope(&mut qkv, &pass.rope, heads.q_cols().start..heads.k_cols().end, c.head_dim, c.rope_style)?;
        let attended = b.attention(&qkv, pass.trees, heads)?;
        self.out.forward(b, &attended, sums)
    }
}

/// The feed-forward sublayer: `down(silu(gate(norm(x))) · up(norm(x)))`, its down
/// projection summed by group.
struct FeedForward<B: Backend> {
    norm: B::Tensor,
    /// This worker's rows of the gate and up projections stacked.
    gate_up: B::Weight,
    down: ByGroup<B>,
}

impl<B: Backend> FeedForward<B> {
    fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        let ffn = weights.source.config().intermediate_size;
        Ok(FeedForward {
            norm: weights.norm(TensorId::Layer(layer, LayerTensor::FfnNorm))?,
            gate_up: weights.stacked(layer, groups, &[(LayerTensor::Gate, ffn), (LayerTensor::Up, ffn)])?,
            down: weights.by_group(layer, groups, LayerTensor::Down, ffn)?,
        })
    }

    fn forward(&self, pass: &Pass<'_, B>, x: &B::Tensor, sums: &mut dyn GroupSum<B>) -> Result<B::Tensor, StageError> {
        let b = pass.backend;
        let h = b.rms_norm(x, &self.norm, pass.config.rms_norm_eps)?;
        let act = b.silu_mul(&b.matmul_t(&h, &self.gate_up)?)?;
        self.down.forward(b, &act, sums)
    }
}

/// A transformer block: attention, then feed-forward, each added to the residual stream.
struct Block<B: Backend> {
    attention: Attention<B>,
    feed_forward: FeedForward<B>,
}

impl<B: Backend> Block<B> {
    /// Loads the block's tensors, only the parts of `groups`.
    fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        Ok(Block {
            attention: Attention::load(weights, layer, groups)?,
            feed_forward: FeedForward::load(weights, layer, groups)?,
        })
    }

    /// `x + attention(x)`, then `+ feed_forward(x)`, on the residual stream `residual`.
    fn forward(
        &self,
        pass: &Pass<'_, B>,
        mut residual: B::Tensor,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        let b = pass.backend;
        let attended = self.attention.forward(pass, &residual, sums)?;
        b.add_assign(&mut residual, &attended)?;
        let fed_forward = self.feed_forward.forward(pass, &residual, sums)?;
        b.add_assign(&mut residual, &fed_forward)?;
        Ok(residual)
    }
}

/// Where a stage's weights come from: its source's tensors, read and uploaded, or, for a
/// random model, values the backend draws itself.
struct Weights<'a, B: Backend> {
    source: &'a dyn WeightSource,
    backend: &'a B,
}

impl<B: Backend> Weights<'_, B> {
    /// The rows `parts` (tensors and row ranges, stacked in order) by the columns `cols`.
    fn matrix(&self, parts: &[(TensorId, Range<usize>)], cols: Range<usize>) -> Result<B::Weight, StageError> {
        if self.source.is_random() {
            let rows = parts.iter().map(|(_, r)| r.len()).sum();
            let (id, first) = parts.first().ok_or_else(|| StageError::Spec("a weight of no tensor".into()))?;
            // A tied head is the embedding, also on a stage that holds only the head.
            let id = match id {
                TensorId::Head if self.source.config().tied_embeddings => &TensorId::Embedding,
                id => id,
            };
            // Uniform on [-a, a) has variance a²/3: a = √(3/fan-in) gives variance 1/fan-in.
            let scale = (3.0 / id.shape(self.source.config()).1 as f32).sqrt();
            return Ok(self.backend.random_weight(rows, cols.len(), seed_of(*id, first, &cols), scale)?);
        }
        let mut read = parts
            .iter()
            .map(|(id, rows)| load_part(self.source, *id, rows.clone(), cols.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let matrix = if read.len() == 1 { read.remove(0) } else { Matrix::vstack(&read) };
        Ok(self.backend.upload_weight(matrix)?)
    }

    /// The rows of `parts` of a layer stacked, each tensor's rows of `groups` (a tensor of
    /// `size` rows cut into the model's groups), by all the hidden columns.
    fn stacked(
        &self,
        layer: usize,
        groups: &Range<usize>,
        parts: &[(LayerTensor, usize)],
    ) -> Result<B::Weight, StageError> {
        let c = self.source.config();
        let parts: Vec<_> = parts
            .iter()
            .map(|&(t, size)| (TensorId::Layer(layer, t), group_slice(size, c.num_kv_heads, groups.clone())))
            .collect();
        self.matrix(&parts, 0..c.hidden_size)
    }

    /// A layer's row-parallel tensor `t`, whose `size` input columns are cut into the
    /// model's groups: one weight per group of `groups`.
    fn by_group(
        &self,
        layer: usize,
        groups: &Range<usize>,
        t: LayerTensor,
        size: usize,
    ) -> Result<ByGroup<B>, StageError> {
        let c = self.source.config();
        let (g, id) = (c.num_kv_heads, TensorId::Layer(layer, t));
        let local = group_slice(size, g, groups.clone()).start;
        let parts = groups.clone().map(|k| {
            let cols = group_slice(size, g, k..k + 1);
            let weight = self.matrix(&[(id, 0..id.shape(c).0)], cols.clone())?;
            Ok((cols.start - local..cols.end - local, weight))
        });
        Ok(ByGroup { parts: parts.collect::<Result<_, StageError>>()? })
    }

    /// A whole tensor (the embedding or the head).
    fn whole(&self, id: TensorId) -> Result<B::Weight, StageError> {
        let (rows, cols) = id.shape(self.source.config());
        self.matrix(&[(id, 0..rows)], 0..cols)
    }

    /// A norm's weights: read, or all ones for a random model.
    fn norm(&self, id: TensorId) -> Result<B::Tensor, StageError> {
        let weights = match self.source.is_random() {
            true => {
                let (rows, cols) = id.shape(self.source.config());
                Matrix::from_vec(rows, cols, vec![1.0; rows * cols])
            }
            false => load(self.source, id)?,
        };
        Ok(self.backend.upload(weights)?)
    }
}

struct Head<B: Backend> {
    norm: B::Tensor,
    weight: Arc<B::Weight>,
}

pub struct LlamaStage<B: Backend> {
    backend: B,
    config: ModelConfig,
    spec: StageSpec,
    embedding: Option<Arc<B::Weight>>,
    blocks: Vec<Block<B>>,
    head: Option<Head<B>>,
}

impl<B: Backend> LlamaStage<B> {
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
        let weights = Weights { source, backend: &backend };
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
        Ok(LlamaStage { backend, config, spec, embedding, blocks, head })
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

    /// Runs the stage on one micro-batch; `sums` completes its row-parallel products.
    pub fn forward(
        &self,
        batch: &MicroBatch,
        input: StageInput<B::Tensor>,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<StageOutput<B::Tensor>, StageError> {
        let b = &self.backend;
        let c = &self.config;
        batch.validate(c.vocab_size).map_err(|e| StageError::Spec(e.to_string()))?;
        let mut x = match (input, &self.embedding) {
            (StageInput::Tokens, Some(table)) => b.embed(table, &batch.tokens)?,
            (StageInput::Hidden(h), None) if b.rows(&h) == batch.tokens.len() => h,
            _ => return Err(StageError::Spec(
                "input does not match the stage: tokens go to the first stage, hidden rows of the batch to the others"
                    .into(),
            )),
        };
        let groups = self.spec.groups.len();
        let heads =
            HeadLayout { num_heads: c.num_heads / c.num_kv_heads * groups, num_kv_heads: groups, head_dim: c.head_dim };
        let rope = b.rope_table(&batch.positions(), c.head_dim, c.rope_theta)?;
        let pass = Pass { backend: b, config: c, heads, rope, trees: &batch.trees };
        for block in &self.blocks {
            x = block.forward(&pass, x, sums)?;
        }
        let Some(head) = &self.head else {
            return Ok(StageOutput::Hidden(x));
        };
        let mut scores = Vec::with_capacity(batch.scored.len());
        for chunk in batch.scored.chunks(b.head_rows()) {
            let rows: Vec<usize> = chunk.iter().map(|s| s.row).collect();
            let targets: Vec<u32> = chunk.iter().map(|s| s.target).collect();
            let h = b.rms_norm(&b.gather_rows(&x, &rows)?, &head.norm, c.rms_norm_eps)?;
            scores.extend(b.score(&b.matmul_t(&h, &head.weight)?, &targets)?);
        }
        let count = scores.iter().filter(|s| !s.logprob.is_finite()).count();
        if count > 0 {
            return Err(StageError::NonFiniteScores { count, total: scores.len() });
        }
        Ok(StageOutput::Scores(scores))
    }
}
