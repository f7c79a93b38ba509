//! The compute backend: one small op set ([`Backend`]) that the transformer stage is
//! written against, and its implementations: [`cpu`], and [`cuda`]'s behind the `cuda`
//! cargo feature. Every op keeps each row's arithmetic independent of the other rows, so a
//! request's scores do not depend on the batch it was packed in.

pub mod cpu;
pub mod cuda;

use std::ops::Range;
use std::sync::Arc;

use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};
use rayon::prelude::*;

use crate::tensor::Matrix;
use crate::weights::random::random_unit;
use crate::wire::{HostLanding, Landing, Outbound, Wire};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend `{backend}`: {problem}")]
    Failed { backend: &'static str, problem: String },
    #[error("this evalmesh was built without CUDA: rebuild with `cargo build --release --features cuda` (no CUDA toolkit needed to build), or run with --device cpu")]
    CudaNotCompiled,
}

/// The arithmetic version: bumped with every change that moves any score's bits (an order
/// of summation, a kernel), so that a resumed run never mixes scores of two builds.
/// 2: the attention output and down projections are summed by KV-head group.
pub const ARITHMETIC: u32 = 2;

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

/// The rotary table of [`Backend::rope_table`] on the host: per position, the cosines then the
/// sines of its angle with each pair's frequency, computed in f64.
pub fn rope_table(positions: &[u32], head_dim: usize, theta: f64) -> Matrix {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64)).collect();
    let mut table = Matrix::zeros(positions.len(), head_dim);
    for (row, &p) in table.data.chunks_exact_mut(head_dim).zip(positions) {
        let (cos, sin) = row.split_at_mut(half);
        for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(&inv_freq) {
            let angle = p as f64 * f;
            *c = angle.cos() as f32;
            *s = angle.sin() as f32;
        }
    }
    table
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

/// Activations are matrices of rows (tokens) by features. Matrix-product weights are
/// given as `out × in` and kept in whatever layout suits the backend.
pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;
    type Weight: Send + Sync;

    fn name(&self) -> &'static str;
    fn upload(&self, m: Matrix) -> Result<Self::Tensor, BackendError>;
    /// Takes an `out × in` weight for [`Backend::matmul_t`] and [`Backend::embed`].
    fn upload_weight(&self, w: Matrix) -> Result<Self::Weight, BackendError>;
    fn download(&self, t: &Self::Tensor) -> Result<Matrix, BackendError>;
    fn rows(&self, t: &Self::Tensor) -> usize;

    /// Rows `ids` of `table` (an embedding, `vocab × hidden`).
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor, BackendError>;
    /// `x · wᵀ` for `x` of `M × K` and `w` of `N × K`.
    fn matmul_t(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor, BackendError>;
    /// Root-mean-square normalisation of each row, scaled by the one-row `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f64) -> Result<Self::Tensor, BackendError>;
    /// Cosines and sines for each row's position: `rows × head_dim` (cos then sin per pair).
    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f64) -> Result<Self::Tensor, BackendError>;
    /// Rotates each head of the columns `cols` of `x` in place.
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
    ) -> Result<Self::Tensor, BackendError>;
    /// `silu(gate) · up` where the first half of the columns is the gate and the second the up projection.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor, BackendError>;
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<(), BackendError>;
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor, BackendError>;
    /// The columns `cols` of `x`, as a tensor of their own.
    fn columns(&self, x: &Self::Tensor, cols: Range<usize>) -> Result<Self::Tensor, BackendError>;
    /// Log-softmax of each row of `logits` at `targets[row]`, and whether the target is the argmax.
    fn score(&self, logits: &Self::Tensor, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError>;
    /// Waits until every op queued so far is done (a GPU queues ops and returns at once).
    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Floating-point operations and time spent in [`Backend::matmul_t`] so far.
    fn matmul_stats(&self) -> MatmulStats;
    /// The most device memory held so far (weights and buffers), where the backend has its own.
    fn peak_device_bytes(&self) -> u64 {
        0
    }
    /// A `rows × cols` weight of `scale · random_unit(seed, i)` for its values in row-major
    /// order (a random model's: `weights::random`), drawn on the host and uploaded unless
    /// the backend draws them where it keeps them.
    fn random_weight(&self, rows: usize, cols: usize, seed: u64, scale: f32) -> Result<Self::Weight, BackendError> {
        let data = (0..rows * cols).into_par_iter().map(|i| scale * random_unit(seed, i as u64)).collect();
        self.upload_weight(Matrix::from_vec(rows, cols, data))
    }
    /// Rows of logits the stage computes at once: bounds the logits buffer (rows × vocab).
    fn head_rows(&self) -> usize {
        evalmesh_common::cost::CPU_HEAD_ROWS
    }
    /// `t` on its way to another rank, in memory MPI can send from (on the host unless
    /// the backend says otherwise).
    fn send_out(&self, t: Self::Tensor) -> Result<Outbound, BackendError> {
        let m = self.download(&t)?;
        Ok(Outbound::now(m.rows, m.cols, Wire::host(m.data)))
    }
    /// Where activations from another rank land before [`Backend::adopt`] takes them in.
    fn landing(&self) -> Arc<dyn Landing> {
        Arc::new(HostLanding)
    }
    /// A `rows × cols` tensor from values received into a wire of [`Backend::landing`].
    fn adopt(&self, wire: Wire, rows: usize, cols: usize) -> Result<Self::Tensor, BackendError> {
        match wire.into_host_values() {
            Ok(values) if values.len() == rows * cols => self.upload(Matrix::from_vec(rows, cols, values)),
            Ok(values) => Err(BackendError::Failed {
                backend: self.name(),
                problem: format!("{} values received for {rows} × {cols}", values.len()),
            }),
            Err(_) => Err(BackendError::Failed {
                backend: self.name(),
                problem: "activations landed in memory this backend did not lend".into(),
            }),
        }
    }
}
