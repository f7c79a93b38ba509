//! The CUDA backend's arithmetic: each op of [`Backend`] as a kernel of `kernels.cu` or a
//! cuBLAS product on the backend's stream, and the timing of the matrix products.

use std::ops::Range;
use std::sync::atomic::Ordering;

use cudarc::driver::CudaEvent;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};

use super::backend::{blocks, check, Arg, CudaBackend, CudaTensor, CudaWeight, MATMUL_ROWS, MAX_HEAD_DIM, THREADS};
use crate::backend::error::BackendError;
use crate::backend::memory::DeviceMemory;
use crate::backend::{rope_table, Backend, HeadLayout, MatmulStats};

impl Backend for CudaBackend {
    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor, BackendError> {
        let (vocab, hidden) = (table.out_features, table.in_features);
        check(ids.iter().all(|&id| (id as usize) < vocab), || format!("token id past the {vocab} embedding rows"))?;
        let out = self.tensor(ids.len(), hidden)?;
        if ids.is_empty() {
            return Ok(out);
        }
        let device_ids = self.upload_values(ids)?;
        let [table16, table32] = Self::by_type(table.buffer.ptr(), self.precision);
        self.launch(
            &self.kernels.embed,
            (ids.len() as u32, blocks(hidden, THREADS as usize)),
            THREADS,
            0,
            &mut [table16, table32, Arg::Ptr(device_ids.ptr()), Arg::Ptr(out.ptr()), Arg::I64(hidden as i64)],
        )?;
        Ok(out)
    }

    fn matmul_t(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor, BackendError> {
        let (m, n, k) = (x.rows, w.out_features, w.in_features);
        check(x.cols == k, || format!("matmul of {m}×{} by ({n}×{k})ᵀ", x.cols))?;
        let padded = m.div_ceil(MATMUL_ROWS).max(1) * MATMUL_ROWS;
        let bytes = Self::operand_type(self.precision).0;
        let operand = self.pool.take(padded * k * bytes)?;
        let [y16, y32] = Self::by_type(operand.ptr(), self.precision);
        self.launch(
            &self.kernels.to_operand,
            Self::grid_stride(padded * k),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), y16, y32, Arg::I64(m as i64), Arg::I64(padded as i64), Arg::I64(k as i64)],
        )?;
        let out = self.output(m, n, padded)?;
        let start = self.event()?;
        for block in 0..padded / MATMUL_ROWS {
            let x_block = operand.ptr() + (block * MATMUL_ROWS * k * bytes) as u64;
            let y_block = out.ptr() + (block * MATMUL_ROWS * n * 4) as u64;
            // SAFETY: the operand holds `padded` rows of k and the weight n × k, both in the
            // backend's precision; the output `padded` f32 rows of n.
            unsafe { self.gemm(x_block, w.buffer.ptr(), y_block, (MATMUL_ROWS, n, k), self.precision) }?;
        }
        let end = self.event()?;
        self.matmul_flops.fetch_add(2 * (m * n * k) as u64, Ordering::Relaxed);
        let mut events = self.matmul_events.lock().unwrap_or_else(|p| p.into_inner());
        events.0.push((start, end));
        if events.0.len() >= PENDING_EVENTS {
            settle(&mut events);
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f64) -> Result<CudaTensor, BackendError> {
        check(weight.rows * weight.cols == x.cols, || {
            format!("norm weight of {} for rows of {}", weight.rows * weight.cols, x.cols)
        })?;
        let out = self.tensor(x.rows, x.cols)?;
        if x.rows > 0 {
            self.launch(
                &self.kernels.rms_norm,
                (x.rows as u32, 1),
                THREADS,
                0,
                &mut [
                    Arg::Ptr(x.ptr()),
                    Arg::Ptr(weight.ptr()),
                    Arg::Ptr(out.ptr()),
                    Arg::I64(x.cols as i64),
                    Arg::F32(eps as f32),
                ],
            )?;
        }
        Ok(out)
    }

    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f64) -> Result<CudaTensor, BackendError> {
        // A small table: the CPU backend's, computed on the host.
        self.upload(rope_table(positions, head_dim, theta))
    }

    fn apply_rope(
        &self,
        x: &mut CudaTensor,
        table: &CudaTensor,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError> {
        check(
            table.rows == x.rows
                && table.cols == head_dim
                && cols.end <= x.cols
                && head_dim > 0
                && cols.len().is_multiple_of(head_dim),
            || {
                format!(
                    "rope over columns {cols:?} of {}×{} with a {}×{} table",
                    x.rows, x.cols, table.rows, table.cols
                )
            },
        )?;
        let pairs = cols.len() / 2;
        if x.rows == 0 || pairs == 0 {
            return Ok(());
        }
        self.launch(
            &self.kernels.rope,
            (x.rows as u32, blocks(pairs, THREADS as usize)),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                Arg::Ptr(table.ptr()),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(cols.end as i64),
                Arg::I32(head_dim as i32),
                Arg::I32(i32::from(style == RopeStyle::AdjacentPairs)),
            ],
        )
    }

    fn attention(&self, qkv: &CudaTensor, trees: &[TreeLayout], heads: HeadLayout) -> Result<CudaTensor, BackendError> {
        let covered: usize = trees.iter().map(TreeLayout::len).sum();
        check(
            qkv.cols == heads.width()
                && covered == qkv.rows
                && heads.num_kv_heads > 0
                && heads.num_heads.is_multiple_of(heads.num_kv_heads)
                && heads.head_dim <= MAX_HEAD_DIM,
            || format!("attention over {}×{} with {heads:?} and trees covering {covered} rows", qkv.rows, qkv.cols),
        )?;
        let out = self.tensor(qkv.rows, heads.num_heads * heads.head_dim)?;
        if qkv.rows == 0 {
            return Ok(out);
        }
        let spans = attention_spans(trees, qkv.rows);
        let spans = self.upload_values(&spans)?;
        let items = qkv.rows * heads.num_heads;
        let warps_per_block = 4;
        self.launch(
            &self.kernels.attention,
            (blocks(items, warps_per_block), 1),
            32 * warps_per_block as u32,
            (warps_per_block * heads.head_dim * 4) as u32,
            &mut [
                Arg::Ptr(qkv.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::Ptr(spans.ptr()),
                Arg::I64(qkv.rows as i64),
                Arg::I64(qkv.cols as i64),
                Arg::I32(heads.num_heads as i32),
                Arg::I32(heads.num_kv_heads as i32),
                Arg::I32(heads.head_dim as i32),
                Arg::F32(1.0 / (heads.head_dim as f32).sqrt()),
            ],
        )?;
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor, BackendError> {
        check(gate_up.cols.is_multiple_of(2), || format!("gate/up activation has odd width {}", gate_up.cols))?;
        let f = gate_up.cols / 2;
        let out = self.tensor(gate_up.rows, f)?;
        if gate_up.rows * f > 0 {
            self.launch(
                &self.kernels.silu_mul,
                Self::grid_stride(gate_up.rows * f),
                THREADS,
                0,
                &mut [Arg::Ptr(gate_up.ptr()), Arg::Ptr(out.ptr()), Arg::I64(gate_up.rows as i64), Arg::I64(f as i64)],
            )?;
        }
        Ok(out)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<(), BackendError> {
        check(x.rows == y.rows && x.cols == y.cols, || {
            format!("add of {}×{} and {}×{}", x.rows, x.cols, y.rows, y.cols)
        })?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            &self.kernels.add_assign,
            Self::grid_stride(n),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::I64(n as i64)],
        )
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor, BackendError> {
        check(rows.iter().all(|&r| r < x.rows), || format!("row index past {} rows", x.rows))?;
        let out = self.tensor(rows.len(), x.cols)?;
        if rows.is_empty() || x.cols == 0 {
            return Ok(out);
        }
        let index: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let index = self.upload_values(&index)?;
        self.launch(
            &self.kernels.gather_rows,
            (rows.len() as u32, blocks(x.cols, THREADS as usize)),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(index.ptr()), Arg::Ptr(out.ptr()), Arg::I64(x.cols as i64)],
        )?;
        Ok(out)
    }

    fn columns(&self, x: &CudaTensor, cols: Range<usize>) -> Result<CudaTensor, BackendError> {
        check(cols.start <= cols.end && cols.end <= x.cols, || format!("columns {cols:?} of {}", x.cols))?;
        let out = self.tensor(x.rows, cols.len())?;
        if x.rows == 0 || cols.is_empty() {
            return Ok(out);
        }
        self.launch(
            &self.kernels.columns,
            (x.rows as u32, blocks(cols.len(), THREADS as usize)),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(cols.len() as i64),
            ],
        )?;
        Ok(out)
    }

    fn score(&self, logits: &CudaTensor, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError> {
        check(targets.len() == logits.rows && targets.iter().all(|&t| (t as usize) < logits.cols), || {
            format!("{} targets for {} rows of {} logits", targets.len(), logits.rows, logits.cols)
        })?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let device_targets = self.upload_values(targets)?;
        let logprob = self.pool.take(targets.len() * 4)?;
        let greedy = self.pool.take(targets.len() * 4)?;
        self.launch(
            &self.kernels.score,
            (targets.len() as u32, 1),
            1024,
            0,
            &mut [
                Arg::Ptr(logits.ptr()),
                Arg::Ptr(device_targets.ptr()),
                Arg::Ptr(logprob.ptr()),
                Arg::Ptr(greedy.ptr()),
                Arg::I64(logits.cols as i64),
            ],
        )?;
        let logprob: Vec<f32> = self.download_values(logprob.ptr(), targets.len())?;
        let greedy: Vec<u32> = self.download_values(greedy.ptr(), targets.len())?;
        Ok(logprob.into_iter().zip(greedy).map(|(logprob, g)| TokenScore { logprob, greedy: g == 1 }).collect())
    }

    fn matmul_stats(&self) -> MatmulStats {
        let mut events = self.matmul_events.lock().unwrap_or_else(|p| p.into_inner());
        settle(&mut events);
        MatmulStats { flops: self.matmul_flops.load(Ordering::Relaxed), seconds: events.1 }
    }

    fn head_rows(&self) -> usize {
        evalmesh_common::cost::GPU_HEAD_ROWS
    }
}

/// Matrix products whose events are kept before their times are added up (about one forward
/// pass of a large model): bounds the events held, at the cost of waiting for them then.
const PENDING_EVENTS: usize = 512;

/// Adds the times of the pending products to the total (waiting for the last to finish).
fn settle(events: &mut (Vec<(CudaEvent, CudaEvent)>, f64)) {
    let (pending, seconds) = events;
    for (start, end) in pending.drain(..) {
        // elapsed_ms waits for the end event.
        if let Ok(ms) = start.elapsed_ms(&end) {
            *seconds += ms as f64 / 1e3;
        }
    }
}

/// Each query row's keys as two runs `[shared_start, shared_len, own_start, own_len]`: a
/// prefix row sees its prefix up to itself; a branch row sees the whole prefix, then its
/// branch up to itself (the layout of docs/ARCHITECTURE.md §5, as the CPU backend reads it).
fn attention_spans(trees: &[TreeLayout], rows: usize) -> Vec<i64> {
    let mut spans = Vec::with_capacity(4 * rows);
    for tree in trees {
        let (start, prefix) = (tree.start as i64, tree.prefix_len as i64);
        for i in 0..prefix {
            spans.extend([0, 0, start, i + 1]);
        }
        let mut branch_start = start + prefix;
        for &len in &tree.branch_lens {
            for j in 0..len as i64 {
                spans.extend([start, prefix, branch_start, j + 1]);
            }
            branch_start += len as i64;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_the_tree_layout() {
        // Tree at row 2: prefix of 2, branches of 2 and 1.
        let trees = [
            TreeLayout { start: 0, prefix_len: 2, branch_lens: Vec::new() },
            TreeLayout { start: 2, prefix_len: 2, branch_lens: vec![2, 1] },
        ];
        let spans = attention_spans(&trees, 7);
        let rows: Vec<&[i64]> = spans.chunks(4).collect();
        assert_eq!(
            rows,
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 2],
                &[0, 0, 2, 1],
                &[0, 0, 2, 2],
                &[2, 2, 4, 1],
                &[2, 2, 4, 2],
                &[2, 2, 6, 1],
            ]
        );
    }
}
