//! A transformer block as the configuration's [`BlockSpec`](evalmesh_common::config::BlockSpec)
//! describes it: two named sublayers, [`Attention`] and [`FeedForward`] (a dense gated MLP or
//! a mixture of experts), each loaded and run on its own, with its optional norms before
//! and after, and added to the residual stream by [`Block::forward`].

use std::cell::RefCell;
use std::ops::Range;

use evalmesh_common::config::{LayerSpec, QkNorm};
use evalmesh_common::decode::SequenceStep;
use evalmesh_common::group_slice;
use evalmesh_common::{ModelConfig, TreeLayout};

use super::cache::KvCache;
use super::error::StageError;
use super::sums::{ByGroup, GroupSum};
use super::weights::Weights;
use crate::backend::cpu::cached_attention;
use crate::backend::{AttentionSpec, Backend, DecodeRows, HeadLayout};
use crate::tensor::Matrix;
use crate::weights::{LayerTensor, TensorId};

/// What every block shares in one micro-batch's pass.
pub struct Pass<'a, B: Backend> {
    pub backend: &'a B,
    pub config: &'a ModelConfig,
    /// This worker's heads of the fused QKV activation.
    pub heads: HeadLayout,
    /// The rotary tables of the micro-batch's positions, one per rotary embedding of the model.
    pub ropes: Vec<B::Tensor>,
    pub attend: Attend<'a>,
    /// The rows of single-token generation steps, multiplied by the backend's decode product.
    pub decode: DecodeRows,
}

/// What a pass's rows attend to.
pub enum Attend<'a> {
    /// Packed prefix trees (scoring, docs/ARCHITECTURE.md §5).
    Trees(&'a [TreeLayout]),
    /// A generation step (§12): each step's `rows` see its sequence's cache and causally
    /// each other, and their keys and values join the cache.
    Cached { steps: &'a [SequenceStep], rows: Vec<Range<usize>>, cache: RefCell<&'a mut KvCache> },
}

/// The rows a block's sublayers output after attention: `kept` of the pass's rows (all where
/// `None`), of kinds `decode`.
struct Rows<'a> {
    kept: Option<&'a [usize]>,
    decode: &'a DecodeRows,
}

/// The norms around a sublayer: of its input, and of its output before the residual add.
struct Norms<B: Backend> {
    pre: Option<B::Tensor>,
    post: Option<B::Tensor>,
}

impl<B: Backend> Norms<B> {
    fn load(weights: &Weights<'_, B>, layer: usize, pre: LayerTensor, post: LayerTensor) -> Result<Self, StageError> {
        let block = &weights.source.config().block;
        let norm = |wanted: bool, t| wanted.then(|| weights.norm(TensorId::Layer(layer, t))).transpose();
        Ok(Norms { pre: norm(block.pre_norms, pre)?, post: norm(block.post_norms, post)? })
    }

    /// `sublayer(norm(x))`, normed again after when the block says so.
    fn around(
        &self,
        pass: &Pass<'_, B>,
        x: &B::Tensor,
        sublayer: impl FnOnce(&B::Tensor) -> Result<B::Tensor, StageError>,
    ) -> Result<B::Tensor, StageError> {
        let (b, eps) = (pass.backend, pass.config.rms_norm_eps);
        let out = match &self.pre {
            Some(norm) => sublayer(&b.rms_norm(x, norm, eps)?)?,
            None => sublayer(x)?,
        };
        match &self.post {
            Some(norm) => Ok(b.rms_norm(&out, norm, eps)?),
            None => Ok(out),
        }
    }
}

/// The attention sublayer: projections (with biases and Q/K norms where the model has
/// them), rotation, attention over the layer's window, and the output projection summed
/// by group.
struct Attention<B: Backend> {
    /// The stage's rows of the Q, K and V projections stacked; for a whole-width Q/K
    /// norm, the Q and K rows of every group, which the norm needs.
    qkv: B::Weight,
    bias: Option<B::Tensor>,
    qk_norms: Option<(B::Tensor, B::Tensor)>,
    /// The columns of the stage's own heads after a whole-width norm, when it holds only some.
    own_columns: Option<Vec<Range<usize>>>,
    layer: LayerSpec,
    /// The layer's index in the model.
    index: usize,
    out: ByGroup<B>,
}

impl<B: Backend> Attention<B> {
    fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        let c = weights.source.config();
        let (q, kv, g) = (c.q_dim(), c.kv_dim(), c.num_kv_heads);
        let whole = c.block.qk_norm == QkNorm::Whole;
        let qk_groups = if whole { 0..g } else { groups.clone() };
        let l = |t| TensorId::Layer(layer, t);
        let qk_norms = match c.block.qk_norm {
            QkNorm::None => None,
            _ => Some((weights.norm(l(LayerTensor::QNorm))?, weights.norm(l(LayerTensor::KNorm))?)),
        };
        let own_columns = (whole && *groups != (0..g)).then(|| {
            let (own_q, own_k) = (group_slice(q, g, groups.clone()), group_slice(kv, g, groups.clone()));
            let v_width = own_k.len();
            vec![own_q, q + own_k.start..q + own_k.end, q + kv..q + kv + v_width]
        });
        let bias = match c.block.qkv_bias {
            true => Some(weights.row(&[
                (l(LayerTensor::QBias), q, groups.clone()),
                (l(LayerTensor::KBias), kv, groups.clone()),
                (l(LayerTensor::VBias), kv, groups.clone()),
            ])?),
            false => None,
        };
        Ok(Attention {
            qkv: weights.stacked(
                layer,
                &[
                    (LayerTensor::Q, q, qk_groups.clone()),
                    (LayerTensor::K, kv, qk_groups),
                    (LayerTensor::V, kv, groups.clone()),
                ],
            )?,
            bias,
            qk_norms,
            own_columns,
            layer: c.layers[layer].clone(),
            index: layer,
            out: weights.by_group(layer, groups, LayerTensor::O, q)?,
        })
    }

    /// The sublayer on every row of `x`, its output only for `rows.kept` (of kinds
    /// `rows.decode`): every row's keys and values are needed, its output only where read.
    fn forward(
        &self,
        pass: &Pass<'_, B>,
        x: &B::Tensor,
        rows: &Rows<'_>,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        let (b, c, heads) = (pass.backend, pass.config, pass.heads);
        let mut qkv = b.matmul_t_rows(x, &self.qkv, &pass.decode)?;
        if let Some(bias) = &self.bias {
            b.add_row(&mut qkv, bias)?;
        }
        if let Some((q_norm, k_norm)) = &self.qk_norms {
            // Before any selection the Q columns come first, then the K columns.
            let q_width = if self.own_columns.is_some() { c.q_dim() } else { heads.q_cols().len() };
            let k_width = if self.own_columns.is_some() { c.kv_dim() } else { heads.k_cols().len() };
            b.rms_norm_runs(&mut qkv, 0..q_width, q_norm, c.rms_norm_eps)?;
            b.rms_norm_runs(&mut qkv, q_width..q_width + k_width, k_norm, c.rms_norm_eps)?;
        }
        if let Some(own) = &self.own_columns {
            qkv = b.columns(&qkv, own)?;
        }
        let rope = &pass.ropes[self.layer.rope];
        b.apply_rope(&mut qkv, rope, heads.q_cols().start..heads.k_cols().end, c.head_dim, c.rope_style)?;
        let spec = AttentionSpec {
            scale: c.block.attention_scale as f32,
            softcap: c.block.attention_softcap.map(|cap| cap as f32),
            window: self.layer.window,
        };
        let attended = match (&pass.attend, rows.kept) {
            (Attend::Trees(trees), Some(kept)) => b.attention_of_rows(&qkv, trees, heads, spec, kept)?,
            (Attend::Trees(trees), None) => b.attention(&qkv, trees, heads, spec)?,
            (Attend::Cached { steps, rows: step_rows, cache }, kept) => {
                // The cache is kept on the host for every backend, and attention over it
                // computed there (§12).
                let host = b.download(&qkv)?;
                let mut cache = cache.borrow_mut();
                let out = cached_attention(&host, &cache.views(self.index, steps, step_rows)?, heads, spec);
                cache.append(self.index, steps, step_rows, &host, heads.k_cols().start..heads.v_cols().end)?;
                let out = b.upload(out)?;
                match kept {
                    Some(kept) => b.gather_rows(&out, kept)?,
                    None => out,
                }
            }
        };
        self.out.forward(b, &attended, rows.decode, sums)
    }
}

/// A gated MLP: `down(act(gate(x)) · up(x))`, its down projection cut by group.
struct Mlp<B: Backend> {
    /// The stage's rows of the gate and up projections stacked.
    gate_up: B::Weight,
    down: ByGroup<B>,
}

impl<B: Backend> Mlp<B> {
    fn load(
        weights: &Weights<'_, B>,
        layer: usize,
        groups: &Range<usize>,
        [gate, up, down]: [LayerTensor; 3],
    ) -> Result<Self, StageError> {
        let f = weights.source.config().ffn_width();
        Ok(Mlp {
            gate_up: weights.stacked(layer, &[(gate, f, groups.clone()), (up, f, groups.clone())])?,
            down: weights.by_group(layer, groups, down, f)?,
        })
    }

    /// The gated activation of the MLP on `x`, whose decoding rows are `decode`: the down
    /// projection's input.
    fn gated(&self, pass: &Pass<'_, B>, x: &B::Tensor, decode: &DecodeRows) -> Result<B::Tensor, StageError> {
        let b = pass.backend;
        Ok(b.gated(&b.matmul_t_rows(x, &self.gate_up, decode)?, pass.config.block.activation)?)
    }

    /// The per-group partial products of the MLP on `x`.
    fn partials(&self, pass: &Pass<'_, B>, x: &B::Tensor, decode: &DecodeRows) -> Result<Vec<B::Tensor>, StageError> {
        self.down.partials(pass.backend, &self.gated(pass, x, decode)?, decode)
    }
}

/// The MLP sublayer: one dense MLP, or a mixture of experts whose router every shard
/// holds whole and whose experts each shard holds its groups' share of.
enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Experts { router: B::Weight, experts: Vec<Mlp<B>> },
}

impl<B: Backend> FeedForward<B> {
    fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        use LayerTensor::*;
        let c = weights.source.config();
        Ok(match &c.experts {
            None => FeedForward::Dense(Mlp::load(weights, layer, groups, [Gate, Up, Down])?),
            Some(e) => FeedForward::Experts {
                router: weights.whole(TensorId::Layer(layer, Router))?,
                experts: (0..e.count)
                    .map(|i| Mlp::load(weights, layer, groups, [ExpertGate(i), ExpertUp(i), ExpertDown(i)]))
                    .collect::<Result<_, _>>()?,
            },
        })
    }

    /// The sublayer on `x`, whose rows are of kinds `decode`.
    fn forward(
        &self,
        pass: &Pass<'_, B>,
        x: &B::Tensor,
        decode: &DecodeRows,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        match self {
            FeedForward::Dense(mlp) => mlp.down.forward(pass.backend, &mlp.gated(pass, x, decode)?, decode, sums),
            FeedForward::Experts { router, experts } => {
                sums.sum(pass.backend, mixture(pass, x, decode, router, experts)?)
            }
        }
    }
}

/// Each row's chosen experts and their weights: the `per_token` most probable of the
/// router's softmax (ties to the lower index), renormalised over the chosen when
/// `normalize`. Computed on the host in f64 from the f32 logits, row by row, so a row's
/// routing never depends on the batch.
fn route(logits: &[f32], experts: usize, per_token: usize, normalize: bool) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks_exact(experts)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
            order.truncate(per_token);
            let chosen: f64 = order.iter().map(|&e| exps[e]).sum();
            let denominator = if normalize { chosen } else { total };
            let mut picked: Vec<(usize, f32)> = order.iter().map(|&e| (e, (exps[e] / denominator) as f32)).collect();
            picked.sort_by_key(|&(e, _)| e);
            picked
        })
        .collect()
}

/// A mixture's per-group partial products: for each expert in index order, the rows
/// routed to it through its MLP, weighted, and added into each group's sum; so each
/// row's sum runs over its experts in index order whatever the batch. `x`'s rows are of
/// kinds `decode`.
fn mixture<B: Backend>(
    pass: &Pass<'_, B>,
    x: &B::Tensor,
    decode: &DecodeRows,
    router: &B::Weight,
    experts: &[Mlp<B>],
) -> Result<Vec<B::Tensor>, StageError> {
    let (b, c) = (pass.backend, pass.config);
    let e = c.experts.as_ref().ok_or_else(|| StageError::Spec("experts without a mixture".into()))?;
    let logits = b.download(&b.matmul_t_rows(x, router, decode)?)?;
    let routes = route(&logits.data, e.count, e.per_token, e.normalize);
    let rows = b.rows(x);
    let mut sums: Option<Vec<B::Tensor>> = None;
    for (index, expert) in experts.iter().enumerate() {
        let (chosen, factors): (Vec<usize>, Vec<f32>) = routes
            .iter()
            .enumerate()
            .filter_map(|(row, picks)| picks.iter().find(|(i, _)| *i == index).map(|&(_, w)| (row, w)))
            .unzip();
        if chosen.is_empty() {
            continue;
        }
        let partials = expert.partials(pass, &b.gather_rows(x, &chosen)?, &decode.select(&chosen))?;
        let totals = match &mut sums {
            Some(totals) => totals,
            None => {
                let zeros = |_| b.upload(Matrix::zeros(rows, c.hidden_size));
                sums.insert(partials.iter().map(zeros).collect::<Result<_, _>>()?)
            }
        };
        for (total, mut part) in totals.iter_mut().zip(partials) {
            b.scale_rows(&mut part, &factors)?;
            b.scatter_add_rows(total, &part, &chosen)?;
        }
    }
    match sums {
        Some(sums) => Ok(sums),
        None => Err(StageError::Spec("a mixture with no rows routed to any expert".into())),
    }
}

/// A transformer block: attention, then feed-forward, each added to the residual stream.
pub struct Block<B: Backend> {
    attention_norms: Norms<B>,
    attention: Attention<B>,
    ffn_norms: Norms<B>,
    feed_forward: FeedForward<B>,
}

impl<B: Backend> Block<B> {
    /// Loads the block's tensors, only the parts of `groups`.
    pub fn load(weights: &Weights<'_, B>, layer: usize, groups: &Range<usize>) -> Result<Self, StageError> {
        Ok(Block {
            attention_norms: Norms::load(weights, layer, LayerTensor::AttnNorm, LayerTensor::PostAttnNorm)?,
            attention: Attention::load(weights, layer, groups)?,
            ffn_norms: Norms::load(weights, layer, LayerTensor::FfnNorm, LayerTensor::PostFfnNorm)?,
            feed_forward: FeedForward::load(weights, layer, groups)?,
        })
    }

    /// `x + attention(x)`, then `+ feed_forward(x)`, on the residual stream `residual`; only
    /// for rows `kept` (in that order) after attention where given: the last block's rows
    /// that no one reads (a scored window's context, a prompt's rows before its last) skip
    /// the output projection and the feed-forward. A row's arithmetic does not depend on the
    /// rows beside it, so the kept rows are the same bits either way.
    pub fn forward(
        &self,
        pass: &Pass<'_, B>,
        mut residual: B::Tensor,
        kept: Option<&[usize]>,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        let b = pass.backend;
        let selected = kept.map(|kept| pass.decode.select(kept));
        let rows = Rows { kept, decode: selected.as_ref().unwrap_or(&pass.decode) };
        let attended =
            self.attention_norms.around(pass, &residual, |h| self.attention.forward(pass, h, &rows, sums))?;
        if let Some(kept) = kept {
            residual = b.gather_rows(&residual, kept)?;
        }
        b.add_assign(&mut residual, &attended)?;
        let fed_forward =
            self.ffn_norms.around(pass, &residual, |h| self.feed_forward.forward(pass, h, rows.decode, sums))?;
        b.add_assign(&mut residual, &fed_forward)?;
        Ok(residual)
    }
}
