//! The Llama-family transformer stage (DESIGN §3): a contiguous range of blocks,
//! optionally with the token embedding in front and the final norm, LM head and
//! scoring behind. The single process runs one stage over all layers; a pipeline
//! splits the layers over several.

use std::sync::Arc;

use evalmesh_common::{MicroBatch, ModelConfig, StageSpec, TokenScore};

use crate::backend::{Backend, BackendError, HeadLayout};
use crate::tensor::Matrix;
use crate::weights::{load, LayerTensor, TensorId, WeightError, WeightSource};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stage {0}")]
    Spec(String),
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

/// Rows of the LM head computed at once: bounds the logits buffer (rows × vocab).
const HEAD_ROWS: usize = 256;

struct Block<B: Backend> {
    attn_norm: B::Tensor,
    /// Q, K and V projections stacked: `(q_dim + 2·kv_dim) × hidden`.
    qkv: B::Weight,
    out: B::Weight,
    ffn_norm: B::Tensor,
    /// Gate and up projections stacked: `2·intermediate × hidden`.
    gate_up: B::Weight,
    down: B::Weight,
}

impl<B: Backend> Block<B> {
    fn load(source: &dyn WeightSource, backend: &B, layer: usize) -> Result<Self, StageError> {
        let get = |t: LayerTensor| load(source, TensorId::Layer(layer, t));
        let stacked = |parts: &[LayerTensor]| -> Result<Matrix, WeightError> {
            Ok(Matrix::vstack(&parts.iter().map(|&t| get(t)).collect::<Result<Vec<_>, _>>()?))
        };
        Ok(Block {
            attn_norm: backend.upload(get(LayerTensor::AttnNorm)?)?,
            qkv: backend.upload_weight(stacked(&[LayerTensor::Q, LayerTensor::K, LayerTensor::V])?)?,
            out: backend.upload_weight(get(LayerTensor::O)?)?,
            ffn_norm: backend.upload(get(LayerTensor::FfnNorm)?)?,
            gate_up: backend.upload_weight(stacked(&[LayerTensor::Gate, LayerTensor::Up])?)?,
            down: backend.upload_weight(get(LayerTensor::Down)?)?,
        })
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
        let embedding = match spec.embedding {
            true => Some(Arc::new(backend.upload_weight(load(source, TensorId::Embedding)?)?)),
            false => None,
        };
        let blocks = spec.layers.clone().map(|l| Block::load(source, &backend, l)).collect::<Result<Vec<_>, _>>()?;
        let head = match (spec.head, &embedding) {
            (false, _) => None,
            (true, Some(shared)) if config.tied_embeddings => {
                Some(Head { norm: backend.upload(load(source, TensorId::FinalNorm)?)?, weight: Arc::clone(shared) })
            }
            (true, _) => Some(Head {
                norm: backend.upload(load(source, TensorId::FinalNorm)?)?,
                weight: Arc::new(backend.upload_weight(load(source, TensorId::Head)?)?),
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

    /// Runs the stage on one micro-batch.
    pub fn forward(
        &self,
        batch: &MicroBatch,
        input: StageInput<B::Tensor>,
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
        let heads = HeadLayout { num_heads: c.num_heads, num_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let rope = b.rope_table(&batch.positions(), c.head_dim, c.rope_theta)?;
        for block in &self.blocks {
            let h = b.rms_norm(&x, &block.attn_norm, c.rms_norm_eps)?;
            let mut qkv = b.matmul_t(&h, &block.qkv)?;
            b.apply_rope(&mut qkv, &rope, heads.q_cols().start..heads.k_cols().end, c.head_dim, c.rope_style)?;
            let attended = b.attention(&qkv, &batch.trees, heads)?;
            b.add_assign(&mut x, &b.matmul_t(&attended, &block.out)?)?;
            let h = b.rms_norm(&x, &block.ffn_norm, c.rms_norm_eps)?;
            let act = b.silu_mul(&b.matmul_t(&h, &block.gate_up)?)?;
            b.add_assign(&mut x, &b.matmul_t(&act, &block.down)?)?;
        }
        let Some(head) = &self.head else {
            return Ok(StageOutput::Hidden(x));
        };
        let mut scores = Vec::with_capacity(batch.scored.len());
        for chunk in batch.scored.chunks(HEAD_ROWS) {
            let rows: Vec<usize> = chunk.iter().map(|s| s.row).collect();
            let targets: Vec<u32> = chunk.iter().map(|s| s.target).collect();
            let h = b.rms_norm(&b.gather_rows(&x, &rows)?, &head.norm, c.rms_norm_eps)?;
            scores.extend(b.score(&b.matmul_t(&h, &head.weight)?, &targets)?);
        }
        Ok(StageOutput::Scores(scores))
    }
}
