//! The compute backend, split by concern: the arithmetic the transformer stage is written
//! against ([`Backend`], here), the memory its tensors and weights live in
//! ([`DeviceMemory`], [`memory`]) and the way its activations leave for and arrive from
//! other ranks ([`Transfer`], [`transfer`]); how they fail ([`BackendError`], [`error`]).
//! The implementations: [`cpu`], and [`cuda`]'s behind the `cuda` cargo feature. Every op
//! keeps each row's arithmetic independent of the other rows, so a request's scores do not
//! depend on the batch it was packed in.

pub mod cpu;
pub mod cuda;
pub mod error;
pub mod memory;
pub mod transfer;

use std::ops::Range;

use evalmesh_common::config::Activation;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};

pub use error::BackendError;
pub use memory::DeviceMemory;
pub use transfer::Transfer;

/// The arithmetic version: bumped with every change that moves any score's bits (an order
/// of summation, a kernel), so that a resumed run never mixes scores of two builds.
/// 2: the attention output and down projections are summed by KV-head group.
/// 3: the attention scale comes from the model's configuration (1/√head_dim computed in
/// f64 and rounded once, where it was computed in f32: the same for the test model's
/// head width of 64, possibly a bit apart for others).
/// 4: the rows of single-token generation steps, and the LM head's rows in generation, are
/// multiplied by the CPU's streamed product ([`Backend::matmul_t_rows`]).
/// 5: the CPU's attention takes its keys in tiles of 256 with an online softmax.
/// 6: the GPU's attention on tensor cores (bf16 operands); and the CPU's exponential with
/// fused multiply-adds and its softmax's sums in vector lanes, which had moved the last
/// bits under 5.
/// 7: the CPU cuts a product's reduction into blocks of at most 512 itself: the bits of
/// `gemm`'s own blocks on the machines measured so far, other ones where `gemm`'s blocks
/// were longer (AVX2 with a 12-way L1) or cut 512 + 64 (products of at most 64 × 64).
/// 8: the CPU's attention multiplies on `gemm`'s microkernels itself, over keys and values
/// laid out once: the same bits where `gemm` took its microkernels, one fused chain per
/// output where it summed otherwise (a block of one query row, a tile of one or two keys,
/// a small tile).
pub const ARITHMETIC: u32 = 8;

/// Which rows of a product are rows of single-token generation steps (docs/ARCHITECTURE.md
/// §12), which a backend may multiply by a product made for few rows
/// ([`Backend::matmul_t_rows`]). A row's kind comes from its own step, never from the rest
/// of the batch, so a row's product does not depend on what it is batched with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeRows {
    /// One entry a row; empty where no row decodes.
    decoding: Vec<bool>,
}

impl DecodeRows {
    /// No row decodes (scoring, and prompts).
    pub fn none() -> DecodeRows {
        DecodeRows::default()
    }

    /// Every one of `rows` decodes.
    pub fn all(rows: usize) -> DecodeRows {
        DecodeRows { decoding: vec![true; rows] }
    }

    /// The rows of steps of `lengths` tokens each, in order: a step of one token decodes.
    pub fn of_steps(lengths: impl IntoIterator<Item = usize>) -> DecodeRows {
        let decoding = lengths.into_iter().flat_map(|len| std::iter::repeat_n(len == 1, len)).collect();
        DecodeRows { decoding }
    }

    /// The kinds of rows `rows` of these, in that order (a gathered tensor's).
    pub fn select(&self, rows: &[usize]) -> DecodeRows {
        if self.decoding.is_empty() {
            return DecodeRows::none();
        }
        DecodeRows { decoding: rows.iter().map(|&r| self.decoding[r]).collect() }
    }

    /// Whether any row decodes.
    pub fn any(&self) -> bool {
        self.decoding.contains(&true)
    }

    /// The runs of rows of one kind among `total` rows, in order, each with whether it decodes.
    pub fn runs(&self, total: usize) -> Vec<(Range<usize>, bool)> {
        let kind = |r: usize| self.decoding.get(r).copied().unwrap_or(false);
        let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
        for r in 0..total {
            match runs.last_mut() {
                Some((run, decoding)) if *decoding == kind(r) => run.end = r + 1,
                _ => runs.push((r..r + 1, kind(r))),
            }
        }
        runs
    }
}

/// Where the heads of a fused QKV activation lie: queries in columns
/// `0..num_heads·head_dim`, then keys, then values (`num_kv_heads·head_dim` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl HeadLayout {
    pub fn q_cols(&self) -> Range<usize> {
        0..self.num_heads * self.head_dim
    }

    pub fn k_cols(&self) -> Range<usize> {
        let q = self.num_heads * self.head_dim;
        q..q + self.num_kv_heads * self.head_dim
    }

    pub fn v_cols(&self) -> Range<usize> {
        let k = self.k_cols();
        k.end..k.end + self.num_kv_heads * self.head_dim
    }

    pub fn width(&self) -> usize {
        self.v_cols().end
    }
}

/// What a layer's attention does beyond softmax(q·kᵀ)·v over the visible keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// The factor of every query·key product.
    pub scale: f32,
    /// `cap·tanh(s/cap)` on the scaled scores.
    pub softcap: Option<f32>,
    /// A query sees only the keys of its last `window` positions, itself included.
    pub window: Option<usize>,
}

/// The shapes a rotation accepts ([`Backend::apply_rope`]): a table row per row of `x`, at
/// most a head's width of even columns, and whole heads inside `x`; `None` when they fit,
/// else the problem in words.
pub fn rope_shape_problem(
    (rows, width): (usize, usize),
    (table_rows, table_cols): (usize, usize),
    cols: &Range<usize>,
    head_dim: usize,
) -> Option<String> {
    let fits = table_rows == rows
        && table_cols <= head_dim
        && table_cols.is_multiple_of(2)
        && cols.end <= width
        && head_dim > 0
        && cols.len().is_multiple_of(head_dim);
    (!fits).then(|| format!("rope over columns {cols:?} of {rows}×{width} with a {table_rows}×{table_cols} table"))
}

/// Work done in matrix products, for throughput reports.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MatmulStats {
    pub flops: u64,
    pub seconds: f64,
}

impl MatmulStats {
    pub fn gflops_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.flops as f64 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

/// The arithmetic of a backend on the tensors and weights of its [`DeviceMemory`]:
/// activations are matrices of rows (tokens) by features, and matrix-product weights are
/// given as `out × in`.
pub trait Backend: DeviceMemory + Transfer {
    /// Rows `ids` of `table` (an embedding, `vocab × hidden`).
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor, BackendError>;
    /// Runs a generation step's work. A step is hundreds of small operations; the CPU keeps
    /// its other compute threads looking for work meanwhile rather than asleep between them.
    fn generation_step<R>(&self, step: impl FnOnce() -> R) -> R {
        step()
    }
    /// `x · wᵀ` for `x` of `M × K` and `w` of `N × K`.
    fn matmul_t(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor, BackendError>;
    /// `x · wᵀ` with the rows that `decode` marks multiplied by a product made for the few
    /// rows of decode steps, the others as [`Backend::matmul_t`]. A backend with one product
    /// for all (its rows already independent of the batch) keeps this default.
    fn matmul_t_rows(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        decode: &DecodeRows,
    ) -> Result<Self::Tensor, BackendError> {
        let _ = decode;
        self.matmul_t(x, w)
    }
    /// For each of `parts` (a row-parallel weight's groups), `x`'s columns `cols` by its
    /// weight as [`Backend::matmul_t_rows`] multiplies them. A backend may run the parts
    /// together; by default each runs alone.
    fn matmul_t_parts(
        &self,
        x: &Self::Tensor,
        parts: &[(Range<usize>, &Self::Weight)],
        decode: &DecodeRows,
    ) -> Result<Vec<Self::Tensor>, BackendError> {
        let part = |(cols, w): &(Range<usize>, &Self::Weight)| {
            self.matmul_t_rows(&self.columns(x, std::slice::from_ref(cols))?, w, decode)
        };
        parts.iter().map(part).collect()
    }
    /// The products of [`Backend::matmul_t_parts`] added in order
    /// ([`Backend::add_in_order`]), bit for bit; `None` for no parts. A backend may multiply
    /// and add in one pass; by default it adds the parts' products.
    fn matmul_t_sum(
        &self,
        x: &Self::Tensor,
        parts: &[(Range<usize>, &Self::Weight)],
        decode: &DecodeRows,
    ) -> Result<Option<Self::Tensor>, BackendError> {
        self.add_in_order(self.matmul_t_parts(x, parts, decode)?)
    }
    /// `((t₀ + t₁) + …) + tₙ`: how a row-parallel product's per-group parts add up, in
    /// group order (`None` for no tensors).
    fn add_in_order(
        &self,
        tensors: impl IntoIterator<Item = Self::Tensor>,
    ) -> Result<Option<Self::Tensor>, BackendError> {
        let mut sum = None;
        for t in tensors {
            sum = Some(match sum {
                None => t,
                Some(mut s) => {
                    self.add_assign(&mut s, &t)?;
                    s
                }
            });
        }
        Ok(sum)
    }
    /// Root-mean-square normalisation of each row, scaled by the one-row `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f64) -> Result<Self::Tensor, BackendError>;
    /// Normalises in place, within the columns `cols` of every row, each run of
    /// `weight`'s width (a head, or all of them) to unit root-mean-square, scaled by `weight`.
    fn rms_norm_runs(
        &self,
        x: &mut Self::Tensor,
        cols: Range<usize>,
        weight: &Self::Tensor,
        eps: f64,
    ) -> Result<(), BackendError>;
    /// Rotates the first `table`-width dimensions of each head of the columns `cols` of `x`
    /// in place; `table` holds each row's cosines then sines (`common::config::Rope::table`).
    fn apply_rope(
        &self,
        x: &mut Self::Tensor,
        table: &Self::Tensor,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError>;
    /// Scaled-dot-product attention over packed prefix trees; returns `rows × num_heads·head_dim`.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
    ) -> Result<Self::Tensor, BackendError>;
    /// [`Backend::attention`] of the rows `rows` alone, in that order (`rows.len() ×
    /// num_heads·head_dim`): the last block's rows that no one reads still give their keys
    /// and values. A backend that computes every row anyway keeps this default.
    fn attention_of_rows(
        &self,
        qkv: &Self::Tensor,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
        rows: &[usize],
    ) -> Result<Self::Tensor, BackendError> {
        self.gather_rows(&self.attention(qkv, trees, heads, spec)?, rows)
    }
    /// `act(gate) · up` where the first half of the columns is the gate and the second the up projection.
    fn gated(&self, gate_up: &Self::Tensor, act: Activation) -> Result<Self::Tensor, BackendError>;
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<(), BackendError>;
    /// Adds the one-row `row` to every row of `x` (a bias).
    fn add_row(&self, x: &mut Self::Tensor, row: &Self::Tensor) -> Result<(), BackendError>;
    /// Multiplies every value of `x` by `factor`.
    fn scale(&self, x: &mut Self::Tensor, factor: f32) -> Result<(), BackendError>;
    /// Multiplies row `i` of `x` by `factors[i]`.
    fn scale_rows(&self, x: &mut Self::Tensor, factors: &[f32]) -> Result<(), BackendError>;
    /// `cap·tanh(v/cap)` on every value of `x`.
    fn soft_cap(&self, x: &mut Self::Tensor, cap: f32) -> Result<(), BackendError>;
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor, BackendError>;
    /// Adds row `i` of `y` to row `rows[i]` of `x`, in order.
    fn scatter_add_rows(&self, x: &mut Self::Tensor, y: &Self::Tensor, rows: &[usize]) -> Result<(), BackendError>;
    /// The columns `cols` of `x`, side by side in order, as a tensor of their own.
    fn columns(&self, x: &Self::Tensor, cols: &[Range<usize>]) -> Result<Self::Tensor, BackendError>;
    /// Log-softmax of each row of `logits` at `targets[row]`, and whether the target is the argmax.
    fn score(&self, logits: &Self::Tensor, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError>;
    /// Floating-point operations and time spent in [`Backend::matmul_t`] so far.
    fn matmul_stats(&self) -> MatmulStats;
    /// Rows of logits the stage computes at once: bounds the logits buffer (rows × vocab).
    fn head_rows(&self) -> usize {
        evalmesh_common::cost::CPU_HEAD_ROWS
    }
    /// Micro-batches that a whole model alone on this backend computes at once
    /// ([`crate::LoadedStage::score_alone`]): one, unless running several gains.
    fn concurrent_batches(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeRows;

    #[test]
    fn decode_rows_follow_their_steps() {
        let rows = DecodeRows::of_steps([2, 1, 1, 3, 1]);
        assert_eq!(rows.runs(8), vec![(0..2, false), (2..4, true), (4..7, false), (7..8, true)]);
        assert_eq!(rows.select(&[7, 0, 3]).runs(3), vec![(0..1, true), (1..2, false), (2..3, true)]);
        assert_eq!(DecodeRows::none().runs(3), vec![(0..3, false)]);
        assert_eq!(DecodeRows::all(2).runs(2), vec![(0..2, true)]);
        assert_eq!(DecodeRows::none().select(&[1, 2]).runs(2), vec![(0..2, false)]);
    }
}
