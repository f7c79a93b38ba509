//! The CUDA backend's arithmetic: each op of [`Backend`] as a kernel of `kernels.cu` or a
//! cuBLAS product on the backend's stream (attention in `attention.rs`), and the timing
//! of the matrix products.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;

use cudarc::driver::CudaEvent;
use evalmesh_common::config::Activation;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};

use super::backend::{blocks, check, failed, Arg, CudaBackend, CudaTensor, CudaWeight, MATMUL_ROWS, THREADS};
use crate::backend::error::BackendError;
use crate::backend::{rope_shape_problem, AttentionSpec, Backend, DecodeRows, HeadLayout, MatmulStats};

/// The most blocks a grid's second dimension holds.
const MAX_GRID_Y: usize = 65_535;

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
        self.matmul_t_columns(x, 0..x.cols, w)
    }

    /// Each part's columns straight into its product's operand, with no f32 copy of them.
    fn matmul_t_parts(
        &self,
        x: &CudaTensor,
        parts: &[(Range<usize>, &CudaWeight)],
        _decode: &DecodeRows,
    ) -> Result<Vec<CudaTensor>, BackendError> {
        parts.iter().map(|(cols, w)| self.matmul_t_columns(x, cols.clone(), w)).collect()
    }

    /// The first tensor plus the others, in order, in one pass.
    fn add_in_order(&self, tensors: impl IntoIterator<Item = CudaTensor>) -> Result<Option<CudaTensor>, BackendError> {
        let mut tensors = tensors.into_iter();
        let Some(sum) = tensors.next() else { return Ok(None) };
        let rest: Vec<CudaTensor> = tensors.collect();
        check(rest.iter().all(|t| (t.rows, t.cols) == (sum.rows, sum.cols)), || {
            format!("a sum of tensors of other shapes than {}×{}", sum.rows, sum.cols)
        })?;
        let n = sum.rows * sum.cols;
        if rest.is_empty() || n == 0 {
            return Ok(Some(sum));
        }
        let addresses: Vec<u64> = rest.iter().map(CudaTensor::ptr).collect();
        let addresses = self.upload_values(&addresses)?;
        self.launch(
            &self.kernels.add_all_in_order,
            Self::grid_stride(n),
            THREADS,
            0,
            &mut [Arg::Ptr(sum.ptr()), Arg::Ptr(addresses.ptr()), Arg::I64(rest.len() as i64), Arg::I64(n as i64)],
        )?;
        Ok(Some(sum))
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

    fn rms_norm_runs(
        &self,
        x: &mut CudaTensor,
        cols: Range<usize>,
        weight: &CudaTensor,
        eps: f64,
    ) -> Result<(), BackendError> {
        let run = weight.rows * weight.cols;
        check(run > 0 && cols.end <= x.cols && cols.len().is_multiple_of(run), || {
            format!("norm of runs of {run} over columns {cols:?} of {}", x.cols)
        })?;
        let runs = cols.len() / run;
        if x.rows == 0 || runs == 0 {
            return Ok(());
        }
        check(runs <= MAX_GRID_Y, || format!("norm of {runs} runs: more than a grid holds"))?;
        self.launch(
            &self.kernels.rms_norm_runs,
            (x.rows as u32, runs as u32),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                Arg::Ptr(weight.ptr()),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(run as i64),
                Arg::F32(eps as f32),
            ],
        )
    }

    fn apply_rope(
        &self,
        x: &mut CudaTensor,
        table: &CudaTensor,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError> {
        if let Some(problem) = rope_shape_problem((x.rows, x.cols), (table.rows, table.cols), &cols, head_dim) {
            return Err(failed(problem));
        }
        // Only the first `table.cols` dimensions of each head turn (partial rotary).
        let pairs = cols.len() / head_dim * (table.cols / 2);
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
                Arg::I32(table.cols as i32),
                Arg::I32(i32::from(style == RopeStyle::AdjacentPairs)),
            ],
        )
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
    ) -> Result<CudaTensor, BackendError> {
        self.attend(qkv, trees, heads, spec)
    }

    fn gated(&self, gate_up: &CudaTensor, act: Activation) -> Result<CudaTensor, BackendError> {
        check(gate_up.cols.is_multiple_of(2), || format!("gate/up activation has odd width {}", gate_up.cols))?;
        let f = gate_up.cols / 2;
        let out = self.tensor(gate_up.rows, f)?;
        if gate_up.rows * f > 0 {
            let activation = match act {
                Activation::Silu => 0,
                Activation::GeluTanh => 1,
            };
            self.launch(
                &self.kernels.gated,
                Self::grid_stride(gate_up.rows * f),
                THREADS,
                0,
                &mut [
                    Arg::Ptr(gate_up.ptr()),
                    Arg::Ptr(out.ptr()),
                    Arg::I64(gate_up.rows as i64),
                    Arg::I64(f as i64),
                    Arg::I32(activation),
                ],
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

    fn add_row(&self, x: &mut CudaTensor, row: &CudaTensor) -> Result<(), BackendError> {
        let len = row.rows * row.cols;
        check(len == x.cols, || format!("row of {len} added to rows of {}", x.cols))?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            &self.kernels.add_row,
            Self::grid_stride(n),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(row.ptr()), Arg::I64(x.rows as i64), Arg::I64(x.cols as i64)],
        )
    }

    fn scale(&self, x: &mut CudaTensor, factor: f32) -> Result<(), BackendError> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let mut args = [Arg::Ptr(x.ptr()), Arg::I64(n as i64), Arg::F32(factor)];
        self.launch(&self.kernels.scale, Self::grid_stride(n), THREADS, 0, &mut args)
    }

    fn scale_rows(&self, x: &mut CudaTensor, factors: &[f32]) -> Result<(), BackendError> {
        check(factors.len() == x.rows, || format!("{} factors for {} rows", factors.len(), x.rows))?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let factors = self.upload_values(factors)?;
        self.launch(
            &self.kernels.scale_rows,
            Self::grid_stride(n),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(factors.ptr()), Arg::I64(x.rows as i64), Arg::I64(x.cols as i64)],
        )
    }

    fn soft_cap(&self, x: &mut CudaTensor, cap: f32) -> Result<(), BackendError> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        let mut args = [Arg::Ptr(x.ptr()), Arg::I64(n as i64), Arg::F32(cap)];
        self.launch(&self.kernels.soft_cap, Self::grid_stride(n), THREADS, 0, &mut args)
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

    fn scatter_add_rows(&self, x: &mut CudaTensor, y: &CudaTensor, rows: &[usize]) -> Result<(), BackendError> {
        check(y.cols == x.cols && y.rows == rows.len() && rows.iter().all(|&r| r < x.rows), || {
            format!("{} rows of {} scattered into {}×{}", y.rows, y.cols, x.rows, x.cols)
        })?;
        if rows.is_empty() || x.cols == 0 {
            return Ok(());
        }
        let chains = self.upload_values(&scatter_chains(rows))?;
        self.launch(
            &self.kernels.scatter_add_rows,
            (rows.len() as u32, blocks(x.cols, THREADS as usize)),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::Ptr(chains.ptr()), Arg::I64(x.cols as i64)],
        )
    }

    fn columns(&self, x: &CudaTensor, cols: &[Range<usize>]) -> Result<CudaTensor, BackendError> {
        check(cols.iter().all(|c| c.start <= c.end && c.end <= x.cols), || format!("columns {cols:?} of {}", x.cols))?;
        let width = cols.iter().map(Range::len).sum();
        let out = self.tensor(x.rows, width)?;
        // One launch per run, each writing its own columns of the output.
        let mut at = 0;
        for run in cols.iter().filter(|c| !c.is_empty()) {
            if x.rows > 0 {
                self.launch(
                    &self.kernels.columns,
                    (x.rows as u32, blocks(run.len(), THREADS as usize)),
                    THREADS,
                    0,
                    &mut [
                        Arg::Ptr(x.ptr()),
                        Arg::Ptr(out.ptr()),
                        Arg::I64(x.cols as i64),
                        Arg::I64(run.start as i64),
                        Arg::I64(run.len() as i64),
                        Arg::I64(width as i64),
                        Arg::I64(at as i64),
                    ],
                )?;
            }
            at += run.len();
        }
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

impl CudaBackend {
    /// `x[:, cols] · wᵀ`: the columns converted to the operand type into a buffer of whole
    /// [`MATMUL_ROWS`] blocks (zero rows past x's), multiplied block by block.
    fn matmul_t_columns(&self, x: &CudaTensor, cols: Range<usize>, w: &CudaWeight) -> Result<CudaTensor, BackendError> {
        let (m, n, k) = (x.rows, w.out_features, w.in_features);
        check(cols.len() == k && cols.end <= x.cols, || {
            format!("matmul of {m}×{} columns {cols:?} by ({n}×{k})ᵀ", x.cols)
        })?;
        let padded = m.div_ceil(MATMUL_ROWS).max(1) * MATMUL_ROWS;
        let bytes = Self::operand_type(self.precision).0;
        let operand = self.pool.take(padded * k * bytes)?;
        let [y16, y32] = Self::by_type(operand.ptr(), self.precision);
        self.launch(
            &self.kernels.to_operand,
            (padded as u32, blocks(k, THREADS as usize)),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                y16,
                y32,
                Arg::I64(m as i64),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(k as i64),
            ],
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

/// The `scatter_add_rows` kernel's plan for `rows` (the target row of each row added):
/// `[target, next]` per added row, where the first row aimed at a target (its leader)
/// carries the target and the later ones −1, and `next` is the next row aimed at the same
/// target or −1. The leader's threads add the whole chain in the list's order, so repeated
/// targets are summed in order, deterministically, and distinct ones (the usual case) in
/// parallel.
fn scatter_chains(rows: &[usize]) -> Vec<i64> {
    let mut chains = vec![-1i64; 2 * rows.len()];
    let mut last: HashMap<usize, usize> = HashMap::with_capacity(rows.len());
    for (i, &target) in rows.iter().enumerate() {
        match last.insert(target, i) {
            Some(previous) => chains[2 * previous + 1] = i as i64,
            None => chains[2 * i] = target as i64,
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_chains_link_repeated_targets_in_order() {
        // Distinct targets: every row leads a chain of one.
        assert_eq!(scatter_chains(&[4, 0, 2]), [4, -1, 0, -1, 2, -1]);
        // Row 3 gets rows 0, 2 and 3 of the list, in that order; row 1 gets row 1.
        assert_eq!(scatter_chains(&[3, 1, 3, 3]), [3, 2, 1, -1, -1, 3, -1, -1]);
        assert!(scatter_chains(&[]).is_empty());
    }
}
