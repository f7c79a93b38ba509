//! The CPU backend: f32 activations and accumulation. Matrix products go through the
//! `gemm` crate (its AVX-512 kernels are picked at run time); everything else is
//! row-parallel with rayon on the current thread pool.
//!
//! Weights are stored transposed (`in × out`, row-major), the layout in which `gemm`
//! multiplies fastest here, and activations are multiplied in blocks of at most
//! [`MATMUL_ROWS`] rows, which keeps them in cache whatever the micro-batch size.
//!
//! Determinism: `gemm` blocks its reduction by the reduction length only, so a row of
//! `x · wᵀ` does not depend on how many rows are multiplied with it, except through
//! its one-row fast path, which [`CpuBackend::matmul_t`] avoids by never passing a
//! single row. Attention works per tree in fixed row blocks, and row sums are taken
//! in a fixed order, so no result depends on the batch or the thread count.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{rope_table, Backend, BackendError, HeadLayout, MatmulStats};
use crate::tensor::Matrix;
use crate::wire::{Outbound, Wire};

/// Query rows per attention block: bounds the score buffer and skips most of the
/// masked upper triangle.
const ATTENTION_BLOCK: usize = 64;

/// Activation rows per matrix product: a block of 512 rows of width ≤ 1536 stays in
/// the L2 cache (measured fastest here; 2048-row blocks ran 20–35% slower).
const MATMUL_ROWS: usize = 512;

/// A matrix-product weight stored transposed: `t` is `in × out`.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    t: Matrix,
}

impl CpuWeight {
    pub fn out_features(&self) -> usize {
        self.t.cols
    }

    pub fn in_features(&self) -> usize {
        self.t.rows
    }
}

/// The CPU backend; it counts the work of its matrix products.
#[derive(Debug, Default)]
pub struct CpuBackend {
    matmul_flops: AtomicU64,
    matmul_nanos: AtomicU64,
}

fn failed(problem: String) -> BackendError {
    BackendError::Failed { backend: "cpu", problem }
}

/// A strided view of a matrix block for `gemm`: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`, single-threaded when `threads` is false.
///
/// # Safety
/// Each view must cover its whole block, and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    threads: bool,
) {
    let parallelism = if threads { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the caller guarantees the views cover the blocks and do not alias `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `exp` for f32 in a form the compiler vectorises (Cephes' `expf`: 2ⁿ·eʳ with
/// |r| ≤ ln2/2 and a degree-6 polynomial; within 2 ulp of `f32::exp` on [−87, 88]).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Sum of a slice in a fixed order: 16 lanes, then the lanes in f64.
fn lane_sum(xs: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().chain(tail).map(|&v| v as f64).sum()
}

/// Normalises `row[..valid]` to a softmax in place and zeroes the rest.
fn softmax_prefix(row: &mut [f32], valid: usize) {
    let (live, masked) = row.split_at_mut(valid);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in live.iter_mut() {
        *v = fast_exp(*v - max);
    }
    let inv = (1.0 / lane_sum(live)) as f32;
    for v in live.iter_mut() {
        *v *= inv;
    }
    masked.fill(0.0);
}

/// One block of attention work: query rows `rows` (absolute) of head `head` attend to
/// all of `shared` (absolute rows, unmasked) and causally to `own` (absolute rows,
/// query row `rows.start + i` sees `own.start ..= own.start + causal_offset + i`).
struct AttentionBlock {
    head: usize,
    rows: Range<usize>,
    shared: Range<usize>,
    own_start: usize,
    causal_offset: usize,
}

impl AttentionBlock {
    fn compute(&self, qkv: &Matrix, heads: HeadLayout) -> Vec<f32> {
        let d = heads.head_dim;
        let ld = qkv.cols;
        let group = heads.num_heads / heads.num_kv_heads;
        let kv = self.head / group;
        let q_col = self.head * d;
        let k_col = heads.k_cols().start + kv * d;
        let v_col = heads.v_cols().start + kv * d;
        let m = self.rows.len();
        let a = self.shared.len();
        let b = self.causal_offset + m;
        let keys = a + b;
        let at = |row: usize, col: usize| qkv.data[row * ld + col..].as_ptr();
        let q = View { ptr: at(self.rows.start, q_col), rs: ld as isize, cs: 1 };
        // Keys transposed: element (j, t) is component j of key t.
        let kt = |start: usize| View { ptr: at(start, k_col), rs: 1, cs: ld as isize };
        let v = |start: usize| View { ptr: at(start, v_col), rs: ld as isize, cs: 1 };
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0.0f32; m * keys];
        let mut out = vec![0.0f32; m * d];
        // SAFETY: every view lies inside `qkv` (rows and columns come from a validated
        // layout and the head layout), and `scores`/`out` are fresh buffers of the sizes used.
        unsafe {
            if a > 0 {
                gemm_into(m, a, d, scores.as_mut_ptr(), keys, false, q, kt(self.shared.start), scale, false);
            }
            gemm_into(m, b, d, scores.as_mut_ptr().add(a), keys, false, q, kt(self.own_start), scale, false);
        }
        for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
            softmax_prefix(row, a + self.causal_offset + i + 1);
        }
        let s = |col: usize| View { ptr: scores[col..].as_ptr(), rs: keys as isize, cs: 1 };
        // SAFETY: as above; `out` is m × d.
        unsafe {
            if a > 0 {
                gemm_into(m, d, a, out.as_mut_ptr(), d, false, s(0), v(self.shared.start), 1.0, false);
            }
            gemm_into(m, d, b, out.as_mut_ptr(), d, a > 0, s(a), v(self.own_start), 1.0, false);
        }
        out
    }
}

/// Splits the trees into attention blocks of at most [`ATTENTION_BLOCK`] query rows,
/// per head: prefix rows attend causally within the prefix; branch rows attend to the
/// whole prefix and causally within their branch.
fn attention_blocks(trees: &[TreeLayout], num_heads: usize) -> Vec<AttentionBlock> {
    let mut blocks = Vec::new();
    for tree in trees {
        let prefix = tree.start..tree.start + tree.prefix_len;
        let mut segments = vec![(0..0, prefix.clone())];
        let mut branch_start = prefix.end;
        for &len in &tree.branch_lens {
            segments.push((prefix.clone(), branch_start..branch_start + len));
            branch_start += len;
        }
        for (shared, own) in segments {
            for offset in (0..own.len()).step_by(ATTENTION_BLOCK) {
                let rows = own.start + offset..(own.start + offset + ATTENTION_BLOCK).min(own.end);
                for head in 0..num_heads {
                    blocks.push(AttentionBlock {
                        head,
                        rows: rows.clone(),
                        shared: shared.clone(),
                        own_start: own.start,
                        causal_offset: offset,
                    });
                }
            }
        }
    }
    blocks
}

fn check(cond: bool, problem: impl FnOnce() -> String) -> Result<(), BackendError> {
    if cond {
        Ok(())
    } else {
        Err(failed(problem()))
    }
}

impl Backend for CpuBackend {
    type Tensor = Matrix;
    type Weight = CpuWeight;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, m: Matrix) -> Result<Matrix, BackendError> {
        Ok(m)
    }

    fn upload_weight(&self, w: Matrix) -> Result<CpuWeight, BackendError> {
        let mut t = Matrix::zeros(w.cols, w.rows);
        t.data.par_chunks_mut(w.rows).enumerate().for_each(|(i, column)| {
            for (j, v) in column.iter_mut().enumerate() {
                *v = w.data[j * w.cols + i];
            }
        });
        Ok(CpuWeight { t })
    }

    fn download(&self, t: &Matrix) -> Result<Matrix, BackendError> {
        Ok(t.clone())
    }

    fn send_out(&self, t: Matrix) -> Result<Outbound, BackendError> {
        Ok(Outbound::now(t.rows, t.cols, Wire::host(t.data)))
    }

    fn rows(&self, t: &Matrix) -> usize {
        t.rows
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Result<Matrix, BackendError> {
        let (vocab, hidden) = (table.out_features(), table.in_features());
        check(ids.iter().all(|&id| (id as usize) < vocab), || format!("token id past the {vocab} embedding rows"))?;
        let mut out = Matrix::zeros(ids.len(), hidden);
        out.data.par_chunks_mut(hidden).zip(ids.par_iter()).for_each(|(row, &id)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = table.t.data[j * vocab + id as usize];
            }
        });
        Ok(out)
    }

    fn matmul_t(&self, x: &Matrix, w: &CpuWeight) -> Result<Matrix, BackendError> {
        let (n, k) = (w.out_features(), w.in_features());
        check(x.cols == k, || format!("matmul of {}×{} by ({n}×{k})ᵀ", x.rows, x.cols))?;
        let started = Instant::now();
        let mut out = Matrix::zeros(x.rows, n);
        let rhs = View { ptr: w.t.data.as_ptr(), rs: n as isize, cs: 1 };
        let mut start = 0;
        while start < x.rows {
            let mut end = (start + MATMUL_ROWS).min(x.rows);
            if x.rows - end == 1 {
                end -= 1; // leave two rows for the last block
            }
            if end - start == 1 {
                // One row would take gemm's matrix-vector path, whose sums run in another order.
                let pair = [x.row(start), x.row(start)].concat();
                let mut two = Matrix::zeros(2, n);
                let lhs = View { ptr: pair.as_ptr(), rs: k as isize, cs: 1 };
                // SAFETY: `pair` is 2 × k, the weight k × n, `two` a fresh 2 × n.
                unsafe { gemm_into(2, n, k, two.data.as_mut_ptr(), n, false, lhs, rhs, 1.0, true) };
                out.data[start * n..(start + 1) * n].copy_from_slice(two.row(0));
            } else {
                let lhs = View { ptr: x.data[start * k..].as_ptr(), rs: k as isize, cs: 1 };
                // SAFETY: rows start..end of `x` are (end − start) × k, the weight k × n, and
                // the destination rows start..end of `out` are (end − start) × n.
                unsafe {
                    gemm_into(end - start, n, k, out.data[start * n..].as_mut_ptr(), n, false, lhs, rhs, 1.0, true)
                };
            }
            start = end;
        }
        self.matmul_flops.fetch_add(2 * (x.rows * n * k) as u64, Ordering::Relaxed);
        self.matmul_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn rms_norm(&self, x: &Matrix, weight: &Matrix, eps: f64) -> Result<Matrix, BackendError> {
        check(weight.data.len() == x.cols, || format!("norm weight of {} for rows of {}", weight.data.len(), x.cols))?;
        let mut out = Matrix::zeros(x.rows, x.cols);
        out.data.par_chunks_mut(x.cols).zip(x.data.par_chunks(x.cols)).for_each(|(y, x)| {
            let squares: Vec<f32> = x.iter().map(|v| v * v).collect();
            let scale = (1.0 / (lane_sum(&squares) / x.len() as f64 + eps).sqrt()) as f32;
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(&weight.data) {
                *y = x * scale * w;
            }
        });
        Ok(out)
    }

    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f64) -> Result<Matrix, BackendError> {
        Ok(rope_table(positions, head_dim, theta))
    }

    fn apply_rope(
        &self,
        x: &mut Matrix,
        table: &Matrix,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError> {
        check(
            table.rows == x.rows && table.cols == head_dim && cols.end <= x.cols && cols.len().is_multiple_of(head_dim),
            || {
                format!(
                    "rope over columns {cols:?} of {}×{} with a {}×{} table",
                    x.rows, x.cols, table.rows, table.cols
                )
            },
        )?;
        let half = head_dim / 2;
        let width = x.cols;
        x.data.par_chunks_mut(width).zip(table.data.par_chunks(head_dim)).for_each(|(row, t)| {
            let (cos, sin) = t.split_at(half);
            for head in row[cols.clone()].chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match style {
                        RopeStyle::AdjacentPairs => (2 * i, 2 * i + 1),
                        RopeStyle::RotateHalf => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        });
        Ok(())
    }

    fn attention(&self, qkv: &Matrix, trees: &[TreeLayout], heads: HeadLayout) -> Result<Matrix, BackendError> {
        let covered: usize = trees.iter().map(TreeLayout::len).sum();
        check(
            qkv.cols == heads.width() && covered == qkv.rows && heads.num_heads.is_multiple_of(heads.num_kv_heads),
            || format!("attention over {}×{} with {heads:?} and trees covering {covered} rows", qkv.rows, qkv.cols),
        )?;
        let d = heads.head_dim;
        let blocks = attention_blocks(trees, heads.num_heads);
        let results: Vec<Vec<f32>> = blocks.par_iter().map(|b| b.compute(qkv, heads)).collect();
        let width = heads.num_heads * d;
        let mut out = Matrix::zeros(qkv.rows, width);
        for (block, result) in blocks.iter().zip(results) {
            for (row, values) in block.rows.clone().zip(result.chunks_exact(d)) {
                let at = row * width + block.head * d;
                out.data[at..at + d].copy_from_slice(values);
            }
        }
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &Matrix) -> Result<Matrix, BackendError> {
        check(gate_up.cols.is_multiple_of(2), || format!("gate/up activation has odd width {}", gate_up.cols))?;
        let f = gate_up.cols / 2;
        let mut out = Matrix::zeros(gate_up.rows, f);
        out.data.par_chunks_mut(f).zip(gate_up.data.par_chunks(gate_up.cols)).for_each(|(y, gu)| {
            let (gate, up) = gu.split_at(f);
            for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
                *y = g / (1.0 + fast_exp(-g)) * u;
            }
        });
        Ok(out)
    }

    fn add_assign(&self, x: &mut Matrix, y: &Matrix) -> Result<(), BackendError> {
        check(x.rows == y.rows && x.cols == y.cols, || {
            format!("add of {}×{} and {}×{}", x.rows, x.cols, y.rows, y.cols)
        })?;
        x.data.par_chunks_mut(4096).zip(y.data.par_chunks(4096)).for_each(|(x, y)| {
            for (x, y) in x.iter_mut().zip(y) {
                *x += y;
            }
        });
        Ok(())
    }

    fn gather_rows(&self, x: &Matrix, rows: &[usize]) -> Result<Matrix, BackendError> {
        check(rows.iter().all(|&r| r < x.rows), || format!("row index past {} rows", x.rows))?;
        let data = rows.iter().flat_map(|&r| x.row(r).iter().copied()).collect();
        Ok(Matrix::from_vec(rows.len(), x.cols, data))
    }

    fn columns(&self, x: &Matrix, cols: Range<usize>) -> Result<Matrix, BackendError> {
        check(cols.start <= cols.end && cols.end <= x.cols, || format!("columns {cols:?} of {}", x.cols))?;
        let data = x.data.chunks_exact(x.cols).flat_map(|row| row[cols.clone()].iter().copied()).collect();
        Ok(Matrix::from_vec(x.rows, cols.len(), data))
    }

    fn score(&self, logits: &Matrix, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError> {
        check(targets.len() == logits.rows && targets.iter().all(|&t| (t as usize) < logits.cols), || {
            format!("{} targets for {} rows of {} logits", targets.len(), logits.rows, logits.cols)
        })?;
        Ok(logits
            .data
            .par_chunks(logits.cols)
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                let (argmax, max) =
                    row.iter().enumerate().fold(
                        (0, f32::NEG_INFINITY),
                        |(bi, bv), (i, &v)| {
                            if v > bv {
                                (i, v)
                            } else {
                                (bi, bv)
                            }
                        },
                    );
                let exps: Vec<f32> = row.iter().map(|&v| fast_exp(v - max)).collect();
                let log_sum = lane_sum(&exps).ln();
                let logprob = ((row[target as usize] - max) as f64 - log_sum) as f32;
                TokenScore { logprob, greedy: argmax == target as usize }
            })
            .collect())
    }

    fn matmul_stats(&self) -> MatmulStats {
        MatmulStats {
            flops: self.matmul_flops.load(Ordering::Relaxed),
            seconds: self.matmul_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
        Matrix::from_vec(rows, cols, noise(rows * cols, seed))
    }

    #[test]
    fn fast_exp_is_within_two_ulp() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0 + 0.003;
            let (got, want) = (fast_exp(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn matmul_matches_f64_reference() {
        let (x, w) = (matrix(7, 130, 1), matrix(200, 130, 2));
        let y = CpuBackend::default().matmul_t(&x, &CpuBackend::default().upload_weight(w.clone()).unwrap()).unwrap();
        for i in 0..7 {
            for j in 0..200 {
                let want: f64 = (0..130).map(|k| x.row(i)[k] as f64 * w.row(j)[k] as f64).sum();
                // f32 accumulation over 130 terms of size ≤ 1: error well under 1e-4.
                assert!((y.row(i)[j] as f64 - want).abs() < 1e-4, "({i},{j})");
            }
        }
    }

    #[test]
    fn matmul_rows_do_not_depend_on_the_batch() {
        // The test model's shapes: a row's bits must not change with the number of rows.
        let w = CpuBackend::default().upload_weight(matrix(1536, 576, 3)).unwrap();
        let x = matrix(1100, 576, 4);
        let all = CpuBackend::default().matmul_t(&x, &w).unwrap();
        for rows in [1usize, 2, 3, 17, 64, 65, 129, 513, 1025] {
            let part = Matrix::from_vec(rows, 576, x.data[..rows * 576].to_vec());
            let y = CpuBackend::default().matmul_t(&part, &w).unwrap();
            let same = y.data.iter().zip(&all.data).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "rows differ when {rows} rows are multiplied");
        }
    }

    #[test]
    fn embedding_gathers_rows_of_the_table() {
        let table = matrix(10, 6, 7);
        let w = CpuBackend::default().upload_weight(table.clone()).unwrap();
        let x = CpuBackend::default().embed(&w, &[3, 9, 3]).unwrap();
        assert_eq!(x.row(0), table.row(3));
        assert_eq!(x.row(1), table.row(9));
        assert!(CpuBackend::default().embed(&w, &[10]).is_err());
    }

    /// Attention computed naively in f64 for a tree, query row by query row.
    fn reference_attention(qkv: &Matrix, tree: &TreeLayout, heads: HeadLayout) -> Vec<Vec<f64>> {
        let d = heads.head_dim;
        let group = heads.num_heads / heads.num_kv_heads;
        let mut visible: Vec<Vec<usize>> = Vec::new();
        for i in 0..tree.prefix_len {
            visible.push((tree.start..=tree.start + i).collect());
        }
        let mut start = tree.start + tree.prefix_len;
        for &len in &tree.branch_lens {
            for i in 0..len {
                let mut keys: Vec<usize> = (tree.start..tree.start + tree.prefix_len).collect();
                keys.extend(start..=start + i);
                visible.push(keys);
            }
            start += len;
        }
        visible
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let row = tree.start + i;
                let mut out = vec![0.0f64; heads.num_heads * d];
                for h in 0..heads.num_heads {
                    let kv = h / group;
                    let q = &qkv.row(row)[h * d..(h + 1) * d];
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&k| {
                            let kr = &qkv.row(k)[heads.k_cols().start + kv * d..][..d];
                            q.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for (&k, p) in keys.iter().zip(&e) {
                        let vr = &qkv.row(k)[heads.v_cols().start + kv * d..][..d];
                        for j in 0..d {
                            out[h * d + j] += p / total * vr[j] as f64;
                        }
                    }
                }
                out
            })
            .collect()
    }

    #[test]
    fn tree_attention_matches_reference() {
        let heads = HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        // Two trees: a 70-row prefix (two blocks) with branches of 3 and 66 rows, and a plain sequence.
        let trees = vec![
            TreeLayout { start: 0, prefix_len: 70, branch_lens: vec![3, 66] },
            TreeLayout { start: 139, prefix_len: 5, branch_lens: vec![] },
        ];
        let qkv = matrix(144, heads.width(), 5);
        let out = CpuBackend::default().attention(&qkv, &trees, heads).unwrap();
        for tree in &trees {
            for (i, want) in reference_attention(&qkv, tree, heads).iter().enumerate() {
                let got = out.row(tree.start + i);
                for (g, w) in got.iter().zip(want) {
                    // f32 softmax and sums over ≤ 140 keys: absolute error ≪ 1e-5.
                    assert!((*g as f64 - w).abs() < 1e-5, "row {} differs: {g} vs {w}", tree.start + i);
                }
            }
        }
    }

    #[test]
    fn branch_rows_do_not_see_sibling_branches() {
        let heads = HeadLayout { num_heads: 1, num_kv_heads: 1, head_dim: 4 };
        let tree = vec![TreeLayout { start: 0, prefix_len: 2, branch_lens: vec![2, 2] }];
        let mut qkv = matrix(6, heads.width(), 6);
        let before = CpuBackend::default().attention(&qkv, &tree, heads).unwrap();
        for v in &mut qkv.data[2 * heads.width()..4 * heads.width()] {
            *v += 1.0; // change the first branch only
        }
        let after = CpuBackend::default().attention(&qkv, &tree, heads).unwrap();
        assert_eq!(before.data[..2 * 4], after.data[..2 * 4], "prefix rows changed");
        assert_eq!(before.data[4 * 4..], after.data[4 * 4..], "second branch changed");
    }

    #[test]
    fn rope_styles_rotate_their_pairs() {
        let table = CpuBackend::default().rope_table(&[3], 4, 10_000.0).unwrap();
        let (c0, s0) = (3.0f64.cos() as f32, 3.0f64.sin() as f32);
        let mut adjacent = Matrix::from_vec(1, 4, vec![1.0, 2.0, 0.0, 0.0]);
        CpuBackend::default().apply_rope(&mut adjacent, &table, 0..4, 4, RopeStyle::AdjacentPairs).unwrap();
        assert_eq!(adjacent.data[..2], [c0 - 2.0 * s0, s0 + 2.0 * c0]);
        let mut half = Matrix::from_vec(1, 4, vec![1.0, 0.0, 2.0, 0.0]);
        CpuBackend::default().apply_rope(&mut half, &table, 0..4, 4, RopeStyle::RotateHalf).unwrap();
        assert_eq!([half.data[0], half.data[2]], [c0 - 2.0 * s0, s0 + 2.0 * c0]);
    }

    #[test]
    fn score_is_log_softmax_at_the_target() {
        let logits = Matrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, 0.5, 0.5, -1.0]);
        let scores = CpuBackend::default().score(&logits, &[2, 2]).unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((scores[0].logprob as f64 - (3.0 - lse)).abs() < 1e-6);
        assert!(scores[0].greedy && !scores[1].greedy);
    }

    #[test]
    fn rms_norm_scales_rows() {
        let x = Matrix::from_vec(1, 2, vec![3.0, 4.0]);
        let w = Matrix::from_vec(1, 2, vec![1.0, 2.0]);
        let y = CpuBackend::default().rms_norm(&x, &w, 0.0).unwrap();
        let rms = (12.5f32).sqrt();
        assert!((y.data[0] - 3.0 / rms).abs() < 1e-6 && (y.data[1] - 8.0 / rms).abs() < 1e-6);
    }
}
