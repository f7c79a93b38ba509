//! The CPU backend: f32 activations and accumulation. Matrix products run the `gemm`
//! crate's microkernels (its AVX-512 ones where the machine has AVX-512) over weights laid
//! out for them ([`panels`]), a piece of rows of a strip of output features per task
//! ([`strips`], [`row_pieces`]), or [`streamed`] for the rows of
//! single-token generation steps; everything else is row-parallel with rayon on the
//! current thread pool ([`start_threads`]), its element-wise loops compiled for the
//! machine's widest vectors ([`Isa::run`]). A row-parallel weight's groups read their
//! columns of the activation in place ([`Operand`]).
//!
//! Weights are widened to f32 at load into panels of output features ([`CpuWeight`],
//! [`Panels`]), the layout the microkernels read; or, with `--weights-in-memory stored`,
//! kept in their file's encoding and widened a strip of output features at a time, by
//! the thread that multiplies it, into that same layout
//! (docs/ARCHITECTURE.md §13). Activations are multiplied in blocks of at most
//! [`MATMUL_ROWS`] rows, which keeps them in cache whatever the micro-batch size.
//!
//! Determinism: a product's reduction is cut into blocks by its length only, so a row of
//! `x · wᵀ` does not depend on how many rows are multiplied with it. The rows of
//! single-token generation steps are multiplied by [`streamed`] instead, whose every
//! output is one chain in input order. Strips are multiplied as the whole weight would be
//! in one call (see [`STRIP_PANELS`]), so neither the thread count nor a stored weight
//! changes a product's bits. Attention works per tree in fixed row
//! blocks, and row sums are taken in a fixed order, so no result depends on the batch or
//! the thread count.
//!
//! Its memory is the host's: tensors are [`Matrix`] values, and activations leave for
//! other ranks in the vectors that hold them.

mod attention;
mod kernels;
mod panels;
mod softmax;
mod streamed;
mod widen;

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use evalmesh_common::config::Activation;
use evalmesh_common::protocol::WeightsInMemory;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};
use rayon::prelude::*;

use self::attention::attention;
pub use self::attention::{cached_attention, CacheView, CachedRows};
use self::kernels::{fast_exp, lane_max, lane_sum_of, Isa, SendPtr, View, ONE_BLOCK_INPUTS};
use self::panels::{lay_out, multiply, Microkernels, Panels};
use self::streamed::{Columns, Product};
use self::widen::{widen_transposed, with_widened_panels};
use super::error::BackendError;
use super::memory::DeviceMemory;
use super::transfer::Transfer;
use super::{rope_shape_problem, AttentionSpec, Backend, DecodeRows, HeadLayout, MatmulStats};
use crate::comm::wire::{Outbound, Wire};
use crate::monitor::BusyTime;
use crate::tensor::{cleared, Matrix, Unwritten};
use crate::weights::StoredMatrix;

/// Activation rows per matrix product: a block of 512 rows of width ≤ 1536 stays in
/// the L2 cache (measured fastest here; 2048-row blocks ran 20–35% slower).
const MATMUL_ROWS: usize = 512;

/// Starts the global thread pool of the CPU backend with `threads` threads (0: one per
/// core, or `RAYON_NUM_THREADS`), the calling thread among them. Ops called from that
/// thread then run on it and the others without handing the call to a pool thread and
/// waiting to be woken: a generation step is hundreds of small ops.
pub fn start_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global()
}

/// The columns of `gemm`'s widest register tile (4 × 16 lanes on AVX-512; four of AVX2's
/// 16-column tiles): a strip of whole panels runs that tile only, where a strip of 96
/// columns, say, ran a half-width tile on a third of its columns (8% of an evaluation's
/// time, at lower speed).
const PANEL: usize = 64;

/// The most panels in a strip, the output features that one task of [`gemm_rows`]
/// multiplies (and widens first, for a stored weight): 256 × 1536 values stay in L2
/// (measured here: strips of at most 4 panels ran 2% faster than of 3, and of 6 5% slower).
/// A product's bits do not depend on the strips ([`strips`]), since [`multiply`] blocks the
/// reduction by its length alone: a stored weight's products are the widened one's.
const STRIP_PANELS: usize = 4;

/// A matrix-product weight of `in_features` inputs and `out_features` outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuWeight {
    in_features: usize,
    out_features: usize,
    values: Values,
}

/// How a [`CpuWeight`] holds its values (`--weights-in-memory`).
#[derive(Debug, Clone, PartialEq)]
enum Values {
    /// Widened to f32 at load into panels of output features ([`Panels::of_weight`]):
    /// the layout that `gemm`'s microkernels read, in which the streamed product also
    /// reads each panel as one run.
    Widened(Vec<f32>),
    /// In the file's encoding, `out × in`; products widen it a strip at a time.
    Stored(StoredMatrix<'static>),
}

impl CpuWeight {
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The weight as the streamed product reads it.
    fn columns(&self) -> Columns<'_> {
        match &self.values {
            Values::Widened(panels) => Columns::Widened(panels),
            Values::Stored(w) => Columns::Stored(w),
        }
    }
}

/// `out (m × n) = Σ xᵢ (m × k) · wᵢᵀ` over `parts` in order, `((x₀·w₀ᵀ + x₁·w₁ᵀ) + …)`,
/// `out` row-major, every value stored, a piece of rows of a strip of output features per
/// task over the pool ([`strips`], [`row_pieces`]), which multiplies each part into it in
/// turn ([`multiply`]); a stored weight's strip is widened into panels by the thread that
/// multiplies it. Every part after the first has at most [`ONE_BLOCK_INPUTS`] inputs: its
/// product added to the output adds each output's whole sum once, so that the parts summed
/// as they are multiplied have the bits of the products added afterwards.
fn gemm_rows(parts: &[(Operand<'_>, &CpuWeight)], m: usize, out: &mut [MaybeUninit<f32>]) {
    let Some((_, first)) = parts.first() else { return };
    let n = first.out_features;
    debug_assert!(parts.iter().all(|(x, w)| x.k() == w.in_features && w.out_features == n) && out.len() == m * n);
    debug_assert!(parts.iter().skip(1).all(|(_, w)| w.in_features <= ONE_BLOCK_INPUTS));
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    let strips = strips(n);
    // A widened weight's strip is read again for each piece; a stored one's is widened
    // again, so its pieces are only as many as the threads' shares need.
    let longest = match parts.iter().any(|(_, w)| matches!(w.values, Values::Stored(_))) {
        false => MATMUL_ROWS,
        true => m,
    };
    let pieces = row_pieces(m, strips.len(), rayon::current_num_threads(), longest);
    let tasks: Vec<(Range<usize>, Range<usize>)> =
        strips.iter().flat_map(|cols| pieces.iter().map(move |rows| (cols.clone(), rows.clone()))).collect();
    tasks.into_par_iter().with_max_len(1).for_each(|(cols, rows)| {
        let out = SendPtr(out_ptr.at(rows.start * n + cols.start));
        for (i, (x, w)) in parts.iter().enumerate() {
            let (x, m, accumulate) = (x.skip_rows(rows.start), rows.len(), i > 0);
            let lhs = View { ptr: x.row(0).as_ptr(), rs: x.rs as isize, cs: 1 };
            let (k, width) = (x.k(), Microkernels::panel_width());
            let multiply_by = |w: Panels| {
                // SAFETY: the panels hold k inputs of the strip's columns (a strip starts at
                // a panel's first column); rows `rows` of `x` are m × k, `x.rs` apart; each
                // task writes only its own rows and columns of `out` (m × n), the first part
                // before the others add to them.
                unsafe { multiply(m, cols.len(), k, lhs, w, out.0, n, accumulate, 1.0) }
            };
            match &w.values {
                Values::Widened(panels) => {
                    multiply_by(Panels::of_weight(panels[cols.start / width * k * width..].as_ptr(), k))
                }
                Values::Stored(stored) => with_widened_panels(stored, cols.clone(), width, |strip| {
                    multiply_by(Panels::of_weight(strip.as_ptr(), k))
                }),
            }
        }
    });
}

/// The left operand of a product: columns `cols` of the rows of `data` (rows `rs` values
/// apart), read in place, so that a row-parallel weight's groups take their columns of
/// one activation without copying them.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    rs: usize,
    cols: (usize, usize),
}

impl<'a> Operand<'a> {
    /// Columns `cols` of `x`; an error where they are not inside it.
    fn columns(x: &'a Matrix, cols: Range<usize>) -> Result<Self, BackendError> {
        check(cols.start <= cols.end && cols.end <= x.cols, || format!("columns {cols:?} of {}", x.cols))?;
        Ok(Operand { data: &x.data, rows: x.rows, rs: x.cols, cols: (cols.start, cols.end) })
    }

    fn k(&self) -> usize {
        self.cols.1 - self.cols.0
    }

    fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.rs + self.cols.0..r * self.rs + self.cols.1]
    }

    /// The operand from row `first` on.
    fn skip_rows(self, first: usize) -> Self {
        Operand { data: &self.data[first * self.rs..], rows: self.rows - first, ..self }
    }

    /// Rows `rows` as one `rows.len() × k` slice: borrowed where the operand is whole rows,
    /// else copied.
    fn contiguous(&self, rows: Range<usize>) -> Cow<'a, [f32]> {
        match self.k() == self.rs {
            true => Cow::Borrowed(&self.data[rows.start * self.rs..rows.end * self.rs]),
            false => Cow::Owned(rows.flat_map(|r| self.row(r).iter().copied()).collect()),
        }
    }
}

/// `n` output features cut into strips of whole [`PANEL`]s (the last may be short), as
/// even as the panels allow and at most [`STRIP_PANELS`] wide, each of at least two panels
/// (wider than 64 even where the last is short) unless `n` fits in one. The cut does not
/// change a product's bits (see [`STRIP_PANELS`]).
fn strips(n: usize) -> Vec<Range<usize>> {
    let panels = n.div_ceil(PANEL);
    let count = panels.div_ceil(STRIP_PANELS).max(1);
    let edge = |i: usize| (i * panels / count * PANEL).min(n);
    (0..count).map(|i| edge(i)..edge(i + 1)).filter(|s| !s.is_empty()).collect()
}

/// Rows `0..m` cut into even pieces, as few as leave none longer than `longest` and give
/// each of `threads` threads an equal share of at least four tasks (a piece of each of
/// `strips` strips), each piece of at least two rows where `m` has them: rows do not change
/// each other's bits, but a piece of one row would read its strip of the weight for one row.
fn row_pieces(m: usize, strips: usize, threads: usize, longest: usize) -> Vec<Range<usize>> {
    let (strips, threads) = (strips.max(1), threads.max(1));
    let mut count = m.div_ceil(longest.max(1)).max((4 * threads).div_ceil(strips));
    while (count * strips) % threads != 0 {
        count += 1;
    }
    let count = count.min(m / 2).max(1);
    (0..count).map(|i| i * m / count..(i + 1) * m / count).collect()
}

/// Gives `values`' fresh pages their memory before they are written, chunks in parallel
/// (Linux's `MADV_POPULATE_WRITE`): one call a chunk instead of a page fault a page, about
/// half the time on the KVM guests measured. A kernel without it (before 5.14), or pages
/// larger than 4 KiB that a chunk's ends do not align to, leave the pages to fault in as
/// they are written.
fn populate(values: &mut [f32]) {
    const CHUNK: usize = 1 << 20; // values: 4 MiB a call
    const PAGE: usize = 4096;
    values.par_chunks_mut(CHUNK).for_each(|chunk| {
        let start = (chunk.as_mut_ptr() as usize).next_multiple_of(PAGE);
        let end = (chunk.as_mut_ptr() as usize + chunk.len() * 4) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside `chunk`, which this task holds; populating
            // pages changes no value (they are zero, as they were).
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
        }
    });
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// `act(gate) · up` of each row, the gate the first half of the columns.
fn gate_rows(gate_up: &Matrix, act: impl Fn(f32) -> f32 + Sync) -> Matrix {
    let f = gate_up.cols / 2;
    let mut out = Unwritten::new(gate_up.rows, f);
    let isa = Isa::widest();
    out.values().par_chunks_mut(f.max(1)).zip(gate_up.data.par_chunks(gate_up.cols.max(1))).for_each(|(y, gu)| {
        let (gate, up) = gu.split_at(f);
        isa.run(
            #[inline(always)]
            || gate_row(y, gate, up, &act),
        )
    });
    // SAFETY: each of the rows' `f` values was stored.
    unsafe { out.assume_written() }
}

/// `y = act(gate) · up`, element by element, every value of `y` stored.
#[inline(always)]
fn gate_row(y: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32], act: impl Fn(f32) -> f32) {
    debug_assert!(gate.len() == y.len() && up.len() >= y.len());
    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
        y.write(act(g) * u);
    }
}

/// `y = x · w / rms(x)`, every value of `y` stored (`w` as long as `x`).
#[inline(always)]
fn norm_row(y: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f64) {
    debug_assert!(x.len() == y.len() && w.len() == y.len());
    let scale = (1.0 / (lane_sum_of(x, |v| v * v) / x.len() as f64 + eps).sqrt()) as f32;
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        y.write(x * scale * w);
    }
}

/// `x += y`, element by element.
#[inline(always)]
fn add_into(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Each pair `(x₀, x₁)` of a head turned by its angle: `(x₀·cos − x₁·sin, x₀·sin + x₁·cos)`.
#[inline(always)]
fn rotate<'a>(pairs: impl Iterator<Item = (&'a mut f32, &'a mut f32)>, cos: &[f32], sin: &[f32]) {
    for (((x0, x1), &c), &s) in pairs.zip(cos).zip(sin) {
        let (a, b) = (*x0, *x1);
        *x0 = a * c - b * s;
        *x1 = a * s + b * c;
    }
}

/// A row of logits scored at `target`: its log-softmax there (the exponentials summed in
/// a fixed order, the logarithm in f64) and whether `target` is the row's first largest
/// logit (greedy decoding's choice).
#[inline(always)]
fn score_row(row: &[f32], target: u32) -> TokenScore {
    let max = lane_max(row);
    let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
    let log_sum = lane_sum_of(row, |v| fast_exp(v - max)).ln();
    let logprob = ((row[target as usize] - max) as f64 - log_sum) as f32;
    TokenScore { logprob, greedy: argmax == target as usize }
}

/// Checks attention's operands: `qkv` as wide as `heads` say, every row in one of `trees`.
fn check_attention(qkv: &Matrix, trees: &[TreeLayout], heads: HeadLayout) -> Result<(), BackendError> {
    let covered: usize = trees.iter().map(TreeLayout::len).sum();
    check(
        qkv.cols == heads.width() && covered == qkv.rows && heads.num_heads.is_multiple_of(heads.num_kv_heads),
        || format!("attention over {}×{} with {heads:?} and trees covering {covered} rows", qkv.rows, qkv.cols),
    )
}

/// The CPU backend; it counts the work of its matrix products.
#[derive(Debug, Default)]
pub struct CpuBackend {
    matmul_flops: AtomicU64,
    matmul_time: BusyTime,
    /// Weights stay in their file's encoding (`--weights-in-memory stored`).
    keep_stored: bool,
}

impl CpuBackend {
    /// A backend that keeps its weights as `weights` says: stored, or widened to f32.
    pub fn new(weights: WeightsInMemory) -> Self {
        CpuBackend { keep_stored: weights == WeightsInMemory::Stored, ..CpuBackend::default() }
    }
}

fn failed(problem: String) -> BackendError {
    BackendError::Failed { backend: "cpu", problem }
}

fn check(cond: bool, problem: impl FnOnce() -> String) -> Result<(), BackendError> {
    if cond {
        Ok(())
    } else {
        Err(failed(problem()))
    }
}

impl DeviceMemory for CpuBackend {
    type Tensor = Matrix;
    type Weight = CpuWeight;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// The name, or where `gemm`'s kernels multiply and add apart (x86-64 without FMA; any
    /// machine but x86-64 and aarch64), the name and that: its products have other bits
    /// there (docs/ARCHITECTURE.md §6), which a journal must not mix with these.
    fn provenance(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        let fused = std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fused = cfg!(target_arch = "aarch64");
        match fused {
            true => self.name().into(),
            false => format!("{} without fused multiply-adds", self.name()),
        }
    }

    fn upload(&self, m: Matrix) -> Result<Matrix, BackendError> {
        Ok(m)
    }

    fn upload_weight(&self, w: Matrix) -> Result<CpuWeight, BackendError> {
        let panels = lay_out(w.rows, w.cols, |c, i| w.data[c * w.cols + i]);
        Ok(CpuWeight { in_features: w.cols, out_features: w.rows, values: Values::Widened(panels) })
    }

    /// Kept as stored (copied out of the file's mapping), or widened from where it lies a
    /// panel of output features per task straight into its panel.
    fn upload_stored(&self, w: StoredMatrix<'_>) -> Result<CpuWeight, BackendError> {
        let (n, k) = (w.rows(), w.cols());
        if self.keep_stored {
            return Ok(CpuWeight { in_features: k, out_features: n, values: Values::Stored(w.into_owned()) });
        }
        let width = Microkernels::panel_width();
        let mut panels = vec![0.0f32; n.div_ceil(width) * k * width];
        populate(&mut panels);
        panels.par_chunks_mut((k * width).max(1)).enumerate().for_each(|(p, panel)| {
            let cols = p * width..((p + 1) * width).min(n);
            // SAFETY: `panel` is k × width, and `cols` at most `width` columns.
            unsafe { widen_transposed(&w, cols, panel.as_mut_ptr(), width) };
        });
        Ok(CpuWeight { in_features: k, out_features: n, values: Values::Widened(panels) })
    }

    fn weight_bytes(&self, w: &CpuWeight) -> u64 {
        match &w.values {
            Values::Widened(panels) => (panels.len() * 4) as u64,
            Values::Stored(stored) => stored.bytes() as u64,
        }
    }

    fn download(&self, t: &Matrix) -> Result<Matrix, BackendError> {
        Ok(t.clone())
    }

    fn rows(&self, t: &Matrix) -> usize {
        t.rows
    }
}

impl Transfer for CpuBackend {
    fn send_out(&self, t: Matrix) -> Result<Outbound, BackendError> {
        Ok(Outbound::now(t.rows, t.cols, Wire::host(t.data)))
    }
}

impl CpuBackend {
    /// `x · wᵀ` for each pair: the rows `decode` marks through the streamed product, all
    /// pairs' at once, the others through `gemm`.
    fn multiply(&self, pairs: &[(Operand<'_>, &CpuWeight)], decode: &DecodeRows) -> Result<Vec<Matrix>, BackendError> {
        let rows = checked_rows(pairs)?;
        let mut outs: Vec<Unwritten> = pairs.iter().map(|(_, w)| Unwritten::new(rows, w.out_features())).collect();
        self.counted(pairs, rows, || {
            for (run, decoding) in decode.runs(rows) {
                let items = pairs.iter().zip(&mut outs).map(|((x, w), out)| {
                    let n = w.out_features();
                    (*x, *w, &mut out.values()[run.start * n..run.end * n])
                });
                match decoding {
                    true => {
                        let items: Vec<_> = items.map(|(x, w, out)| (x, w, cleared(out))).collect();
                        let xs: Vec<Cow<'_, [f32]>> = items.iter().map(|(x, _, _)| x.contiguous(run.clone())).collect();
                        streamed::products(
                            items
                                .into_iter()
                                .zip(&xs)
                                .map(|((_, w, out), x)| Product {
                                    x,
                                    m: run.len(),
                                    k: w.in_features(),
                                    w: w.columns(),
                                    n: w.out_features(),
                                    out,
                                })
                                .collect(),
                        )
                    }
                    false => items.for_each(|(x, w, out)| gemm_rows(&[(x.skip_rows(run.start), w)], run.len(), out)),
                }
            }
        });
        // SAFETY: the runs cover rows 0..rows, and each product stored every value of its
        // rows: `gemm` overwrites its output, and the streamed products' were cleared.
        Ok(outs.into_iter().map(|out| unsafe { out.assume_written() }).collect())
    }

    /// Runs `products`, the products of `pairs` of `rows` rows, timed, and adds their work
    /// to the backend's statistics.
    fn counted<T>(&self, pairs: &[(Operand<'_>, &CpuWeight)], rows: usize, products: impl FnOnce() -> T) -> T {
        let flops: usize = pairs.iter().map(|(x, w)| 2 * rows * w.out_features() * x.k()).sum();
        self.matmul_flops.fetch_add(flops as u64, Ordering::Relaxed);
        self.matmul_time.time(products)
    }
}

/// The rows of the products of `pairs`, an error where an operand's columns are not its
/// weight's inputs or the operands' rows differ.
fn checked_rows(pairs: &[(Operand<'_>, &CpuWeight)]) -> Result<usize, BackendError> {
    let rows = pairs.first().map_or(0, |(x, _)| x.rows);
    for (x, w) in pairs {
        let (n, k) = (w.out_features(), w.in_features());
        check(x.k() == k, || format!("matmul of {}×{} by ({n}×{k})ᵀ", x.rows, x.k()))?;
        check(x.rows == rows, || "parts of a product with different rows".into())?;
    }
    Ok(rows)
}

/// `x`'s columns of each part, with its weight.
fn operands<'a>(
    x: &'a Matrix,
    parts: &[(Range<usize>, &'a CpuWeight)],
) -> Result<Vec<(Operand<'a>, &'a CpuWeight)>, BackendError> {
    parts.iter().map(|(cols, w)| Ok((Operand::columns(x, cols.clone())?, *w))).collect()
}

impl Backend for CpuBackend {
    /// The pool's other threads spin over its queues while the step runs: waking a sleeping
    /// thread for each of a step's small products would cost more than the product. The
    /// spinner returns at once where the calling thread itself picks it up (one thread).
    fn generation_step<R>(&self, step: impl FnOnce() -> R) -> R {
        let running = AtomicBool::new(true);
        let caller = rayon::current_thread_index();
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| {
                if rayon::current_thread_index() == caller {
                    return;
                }
                while running.load(Ordering::Relaxed) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
            let result = step();
            running.store(false, Ordering::Relaxed);
            result
        })
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Result<Matrix, BackendError> {
        let (vocab, hidden) = (table.out_features(), table.in_features());
        check(ids.iter().all(|&id| (id as usize) < vocab), || format!("token id past the {vocab} embedding rows"))?;
        let mut out = Matrix::zeros(ids.len(), hidden);
        let rows = out.data.par_chunks_mut(hidden).zip(ids.par_iter());
        match &table.values {
            Values::Widened(panels) => rows.for_each(|(row, &id)| {
                let width = Microkernels::panel_width();
                let (id, panel) = (id as usize, &panels[id as usize / width * hidden * width..]);
                for (i, v) in row.iter_mut().enumerate() {
                    *v = panel[i * width + id % width];
                }
            }),
            Values::Stored(stored) => {
                rows.for_each_init(Vec::new, |scratch, (row, &id)| stored.widen_row(id as usize, row, scratch))
            }
        }
        Ok(out)
    }

    fn matmul_t(&self, x: &Matrix, w: &CpuWeight) -> Result<Matrix, BackendError> {
        self.matmul_t_rows(x, w, &DecodeRows::none())
    }

    fn matmul_t_rows(&self, x: &Matrix, w: &CpuWeight, decode: &DecodeRows) -> Result<Matrix, BackendError> {
        let mut outs = self.multiply(&[(Operand::columns(x, 0..x.cols)?, w)], decode)?;
        outs.pop().ok_or_else(|| failed("a product without its output".into()))
    }

    /// The parts' decode rows in one parallel region of the streamed product.
    fn matmul_t_parts(
        &self,
        x: &Matrix,
        parts: &[(Range<usize>, &CpuWeight)],
        decode: &DecodeRows,
    ) -> Result<Vec<Matrix>, BackendError> {
        self.multiply(&operands(x, parts)?, decode)
    }

    /// In one pass where no row decodes and no part after the first has more inputs than
    /// `gemm` reduces in one block ([`ONE_BLOCK_INPUTS`]): each task multiplies its block of
    /// every part into the output in turn ([`gemm_rows`]), which adds them with the bits of
    /// [`Backend::add_in_order`] without writing each product first.
    fn matmul_t_sum(
        &self,
        x: &Matrix,
        parts: &[(Range<usize>, &CpuWeight)],
        decode: &DecodeRows,
    ) -> Result<Option<Matrix>, BackendError> {
        if decode.any() || parts.iter().skip(1).any(|(_, w)| w.in_features() > ONE_BLOCK_INPUTS) {
            return self.add_in_order(self.matmul_t_parts(x, parts, decode)?);
        }
        let pairs = operands(x, parts)?;
        let rows = checked_rows(&pairs)?;
        let Some(n) = pairs.first().map(|(_, w)| w.out_features()) else { return Ok(None) };
        check(pairs.iter().all(|(_, w)| w.out_features() == n), || "a sum of products of different widths".into())?;
        let mut out = Unwritten::new(rows, n);
        self.counted(&pairs, rows, || gemm_rows(&pairs, rows, out.values()));
        // SAFETY: `gemm_rows` stored every value (the first part's product).
        Ok(Some(unsafe { out.assume_written() }))
    }

    fn rms_norm(&self, x: &Matrix, weight: &Matrix, eps: f64) -> Result<Matrix, BackendError> {
        check(weight.data.len() == x.cols, || format!("norm weight of {} for rows of {}", weight.data.len(), x.cols))?;
        let mut out = Unwritten::new(x.rows, x.cols);
        let isa = Isa::widest();
        out.values().par_chunks_mut(x.cols.max(1)).zip(x.data.par_chunks(x.cols.max(1))).for_each(|(y, x)| {
            isa.run(
                #[inline(always)]
                || norm_row(y, x, &weight.data, eps),
            )
        });
        // SAFETY: every row's values were stored (the weight is as long as a row).
        Ok(unsafe { out.assume_written() })
    }

    fn rms_norm_runs(&self, x: &mut Matrix, cols: Range<usize>, weight: &Matrix, eps: f64) -> Result<(), BackendError> {
        let run = weight.data.len();
        check(run > 0 && cols.end <= x.cols && cols.len().is_multiple_of(run), || {
            format!("norm of runs of {run} over columns {cols:?} of {}", x.cols)
        })?;
        let width = x.cols;
        x.data.par_chunks_mut(width).for_each(|row| {
            for values in row[cols.clone()].chunks_exact_mut(run) {
                let scale = (1.0 / (lane_sum_of(values, |v| v * v) / run as f64 + eps).sqrt()) as f32;
                for (v, &w) in values.iter_mut().zip(&weight.data) {
                    *v = *v * scale * w;
                }
            }
        });
        Ok(())
    }

    fn apply_rope(
        &self,
        x: &mut Matrix,
        table: &Matrix,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError> {
        if let Some(problem) = rope_shape_problem((x.rows, x.cols), (table.rows, table.cols), &cols, head_dim) {
            return Err(failed(problem));
        }
        let half = table.cols / 2;
        let width = x.cols;
        let isa = Isa::widest();
        x.data.par_chunks_mut(width).zip(table.data.par_chunks(table.cols.max(1))).for_each(|(row, t)| {
            let (cos, sin) = t.split_at(half);
            for head in row[cols.clone()].chunks_exact_mut(head_dim) {
                match style {
                    RopeStyle::AdjacentPairs => isa.run(
                        #[inline(always)]
                        || {
                            rotate(
                                head.chunks_exact_mut(2)
                                    .map(|pair| pair.split_at_mut(1))
                                    .map(|(a, b)| (&mut a[0], &mut b[0])),
                                cos,
                                sin,
                            )
                        },
                    ),
                    RopeStyle::RotateHalf => isa.run(
                        #[inline(always)]
                        || {
                            let (first, second) = head.split_at_mut(half);
                            rotate(first.iter_mut().zip(second), cos, sin)
                        },
                    ),
                }
            }
        });
        Ok(())
    }

    fn attention(
        &self,
        qkv: &Matrix,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
    ) -> Result<Matrix, BackendError> {
        check_attention(qkv, trees, heads)?;
        Ok(attention(Isa::widest(), qkv, trees, heads, spec, |_| true))
    }

    /// Only the blocks of query rows that hold some of `rows`, each from the first of them
    /// to the last. Over the test model's full window the second window's context (5,811
    /// rows) attends to nothing in the last block: 0.45% of the evaluation's FLOPs, and
    /// 0.991 of its time (AVX2 build, the median of 8 alternating pairs, 0.889–1.062 on
    /// a noisy KVM guest, Intel Xeon family 6 model 207).
    fn attention_of_rows(
        &self,
        qkv: &Matrix,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
        rows: &[usize],
    ) -> Result<Matrix, BackendError> {
        check_attention(qkv, trees, heads)?;
        check(rows.iter().all(|&r| r < qkv.rows), || format!("row index past {} rows", qkv.rows))?;
        let mut needed = vec![false; qkv.rows];
        rows.iter().for_each(|&r| needed[r] = true);
        self.gather_rows(&attention(Isa::widest(), qkv, trees, heads, spec, |r| needed[r]), rows)
    }

    fn gated(&self, gate_up: &Matrix, act: Activation) -> Result<Matrix, BackendError> {
        check(gate_up.cols.is_multiple_of(2), || format!("gate/up activation has odd width {}", gate_up.cols))?;
        // One loop per activation, so that each compiles to its own vectorised loop.
        Ok(match act {
            Activation::Silu => gate_rows(gate_up, |g| g / (1.0 + fast_exp(-g))),
            Activation::GeluTanh => gate_rows(gate_up, gelu_tanh),
        })
    }

    fn add_row(&self, x: &mut Matrix, row: &Matrix) -> Result<(), BackendError> {
        check(row.data.len() == x.cols, || format!("row of {} added to rows of {}", row.data.len(), x.cols))?;
        x.data.par_chunks_mut(x.cols.max(1)).for_each(|r| {
            for (v, b) in r.iter_mut().zip(&row.data) {
                *v += b;
            }
        });
        Ok(())
    }

    fn scale(&self, x: &mut Matrix, factor: f32) -> Result<(), BackendError> {
        x.data.par_iter_mut().for_each(|v| *v *= factor);
        Ok(())
    }

    fn scale_rows(&self, x: &mut Matrix, factors: &[f32]) -> Result<(), BackendError> {
        check(factors.len() == x.rows, || format!("{} factors for {} rows", factors.len(), x.rows))?;
        x.data.par_chunks_mut(x.cols.max(1)).zip(factors.par_iter()).for_each(|(r, &f)| {
            for v in r {
                *v *= f;
            }
        });
        Ok(())
    }

    fn soft_cap(&self, x: &mut Matrix, cap: f32) -> Result<(), BackendError> {
        x.data.par_iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        Ok(())
    }

    fn scatter_add_rows(&self, x: &mut Matrix, y: &Matrix, rows: &[usize]) -> Result<(), BackendError> {
        check(y.cols == x.cols && y.rows == rows.len() && rows.iter().all(|&r| r < x.rows), || {
            format!("{} rows of {} scattered into {}×{}", y.rows, y.cols, x.rows, x.cols)
        })?;
        for (&r, values) in rows.iter().zip(y.data.chunks_exact(y.cols.max(1))) {
            for (v, add) in x.data[r * x.cols..(r + 1) * x.cols].iter_mut().zip(values) {
                *v += add;
            }
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut Matrix, y: &Matrix) -> Result<(), BackendError> {
        check(x.rows == y.rows && x.cols == y.cols, || {
            format!("add of {}×{} and {}×{}", x.rows, x.cols, y.rows, y.cols)
        })?;
        let isa = Isa::widest();
        x.data.par_chunks_mut(4096).zip(y.data.par_chunks(4096)).for_each(|(x, y)| {
            isa.run(
                #[inline(always)]
                || add_into(x, y),
            )
        });
        Ok(())
    }

    fn gather_rows(&self, x: &Matrix, rows: &[usize]) -> Result<Matrix, BackendError> {
        check(rows.iter().all(|&r| r < x.rows), || format!("row index past {} rows", x.rows))?;
        let data = rows.iter().flat_map(|&r| x.row(r).iter().copied()).collect();
        Ok(Matrix::from_vec(rows.len(), x.cols, data))
    }

    fn columns(&self, x: &Matrix, cols: &[Range<usize>]) -> Result<Matrix, BackendError> {
        check(cols.iter().all(|c| c.start <= c.end && c.end <= x.cols), || format!("columns {cols:?} of {}", x.cols))?;
        let width = cols.iter().map(Range::len).sum();
        let data = x
            .data
            .chunks_exact(x.cols.max(1))
            .flat_map(|row| cols.iter().flat_map(|c| row[c.clone()].iter().copied()))
            .collect();
        Ok(Matrix::from_vec(x.rows, width, data))
    }

    fn score(&self, logits: &Matrix, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError> {
        check(targets.len() == logits.rows && targets.iter().all(|&t| (t as usize) < logits.cols), || {
            format!("{} targets for {} rows of {} logits", targets.len(), logits.rows, logits.cols)
        })?;
        let isa = Isa::widest();
        Ok(logits
            .data
            .par_chunks(logits.cols)
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                isa.run(
                    #[inline(always)]
                    || score_row(row, target),
                )
            })
            .collect())
    }

    fn matmul_stats(&self) -> MatmulStats {
        MatmulStats { flops: self.matmul_flops.load(Ordering::Relaxed), seconds: self.matmul_time.seconds() }
    }

    /// Two where the pool has two threads or more: each op ends with its threads waiting
    /// for the last of its tasks, and while one micro-batch's op ends, the other's tasks
    /// keep them busy. A ctx-512 evaluation of the test model took 0.965 of the time of one
    /// micro-batch at a time, the full window 0.973 (AVX2 build, 2 threads, alternating
    /// pairs: 4 and 2). One where the weights stay stored: memory is what is short there,
    /// and a second micro-batch's activations would take more of it.
    fn concurrent_batches(&self) -> usize {
        match self.keep_stored {
            true => 1,
            false => rayon::current_num_threads().min(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use evalmesh_common::config::{Rope, RopeScaling};

    use super::*;

    #[test]
    fn matmul_matches_f64_reference() {
        let (x, w) = (Matrix::random(7, 130, 1, 1.0), Matrix::random(200, 130, 2, 1.0));
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
        let w = CpuBackend::default().upload_weight(Matrix::random(1536, 576, 3, 1.0)).unwrap();
        let x = Matrix::random(1100, 576, 4, 1.0);
        let all = CpuBackend::default().matmul_t(&x, &w).unwrap();
        for rows in [1usize, 2, 3, 17, 64, 65, 129, 513, 1025] {
            let part = Matrix::from_vec(rows, 576, x.data[..rows * 576].to_vec());
            let y = CpuBackend::default().matmul_t(&part, &w).unwrap();
            let same = y.data.iter().zip(&all.data).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "rows differ when {rows} rows are multiplied");
        }
    }

    #[test]
    fn strips_are_whole_panels_wider_than_64() {
        for n in [0usize, 50, 100, 130, 192, 200, 576, 640, 960, 1536, 49152] {
            let strips = strips(n);
            let ends: Vec<usize> = strips.iter().map(|s| s.end).collect();
            let starts: Vec<usize> = strips.iter().map(|s| s.start).collect();
            assert!(starts.first().is_none_or(|&s| s == 0) && ends.last().copied().unwrap_or(0) == n);
            assert!(starts.iter().skip(1).eq(ends.iter().take(ends.len().saturating_sub(1))), "{n}: {strips:?}");
            assert!(strips.len() == 1 || strips.iter().all(|s| s.len() > 64), "{n}: {strips:?}");
            assert!(starts.iter().all(|s| s % PANEL == 0), "{n}: {strips:?}");
            assert!(strips.iter().all(|s| s.len() <= STRIP_PANELS * PANEL), "{n}: {strips:?}");
        }
        assert_eq!(strips(576), [0..192, 192..384, 384..576]);
    }

    #[test]
    fn row_pieces_give_each_thread_an_equal_share() {
        for m in [0usize, 1, 2, 3, 5, 100, 511, 513, 2028, 2048, 8192] {
            for (strips, threads, longest) in
                [(1, 2, 512), (3, 2, 512), (5, 2, 512), (3, 4, 512), (256, 2, 512), (5, 3, usize::MAX)]
            {
                let pieces = row_pieces(m, strips, threads, longest);
                let case = format!("{m} rows, {strips} strips, {threads} threads: {pieces:?}");
                assert!(
                    pieces.first().is_some_and(|p| p.start == 0) && pieces.last().is_some_and(|p| p.end == m),
                    "{case}"
                );
                assert!(pieces.windows(2).all(|p| p[0].end == p[1].start), "{case}");
                assert!(pieces.iter().all(|p| p.len() >= 2.min(m) && p.len() <= longest), "{case}");
                if m >= 8 * threads {
                    assert_eq!((pieces.len() * strips) % threads, 0, "{case}");
                    assert!(pieces.len() * strips >= 4 * threads, "{case}");
                }
            }
        }
    }

    #[test]
    fn a_products_bits_do_not_depend_on_the_threads_or_strips() {
        // The reference multiplies the whole weight in one call; the pools cut it
        // into strips and pieces of rows.
        for (n, k, rows) in [(576, 576, 513), (960, 576, 70), (200, 1088, 3), (1600, 96, 1100)] {
            let (x, w) = (Matrix::random(rows, k, 5, 1.0), Matrix::random(n, k, 6, 1.0));
            let weight = CpuBackend::default().upload_weight(w).unwrap();
            let Values::Widened(panels) = &weight.values else { panic!("a widened weight") };
            let mut whole = vec![0.0f32; rows * n];
            let lhs = View { ptr: x.data.as_ptr(), rs: k as isize, cs: 1 };
            // SAFETY: the panels hold the weight's k inputs of n columns; `whole` is rows × n.
            unsafe {
                multiply(rows, n, k, lhs, Panels::of_weight(panels.as_ptr(), k), whole.as_mut_ptr(), n, false, 1.0)
            };
            for threads in [1, 2, 3, 5] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let y = pool.install(|| CpuBackend::default().matmul_t(&x, &weight)).unwrap();
                let same = y.data.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{rows}×{k} by ({n}×{k})ᵀ on {threads} threads");
            }
        }
    }

    #[test]
    fn parts_multiply_their_columns_in_place_as_copies_would() {
        let b = CpuBackend::default();
        let x = Matrix::random(9, 3 * 80, 7, 1.0);
        let weights: Vec<CpuWeight> =
            (0..3).map(|g| b.upload_weight(Matrix::random(130, 80, 8 + g, 1.0)).unwrap()).collect();
        let parts: Vec<(Range<usize>, &CpuWeight)> =
            weights.iter().enumerate().map(|(g, w)| (g * 80..(g + 1) * 80, w)).collect();
        for decode in [DecodeRows::none(), DecodeRows::of_steps([4, 1, 3, 1])] {
            let together = b.matmul_t_parts(&x, &parts, &decode).unwrap();
            for ((cols, w), got) in parts.iter().zip(&together) {
                let copied = b.columns(&x, std::slice::from_ref(cols)).unwrap();
                assert_eq!(got, &b.matmul_t_rows(&copied, w, &decode).unwrap(), "columns {cols:?}");
            }
        }
    }

    /// A `rows × cols` weight of random Q4_1 blocks (scales and offsets kept small and
    /// finite), stored.
    fn q4_1_weight(rows: usize, cols: usize, seed: u64) -> StoredMatrix<'static> {
        let mut bytes = Vec::new();
        let noise = Matrix::random(1, rows * cols / 32 * 20, seed, 1.0);
        for (block, values) in noise.data.chunks_exact(20).enumerate() {
            let scale = half::f16::from_f32(0.01 + (block % 7) as f32 * 1e-3);
            let offset = half::f16::from_f32(values[0] * 0.05);
            bytes.extend(scale.to_le_bytes());
            bytes.extend(offset.to_le_bytes());
            bytes.extend(values[4..].iter().map(|v| (v.to_bits() >> 7) as u8));
        }
        let mut w = StoredMatrix::new(cols);
        w.push(crate::weights::quant::GgmlType::Q4_1, rows, 0, bytes);
        w
    }

    #[test]
    fn stored_weights_multiply_to_the_bits_of_widened_ones() {
        // Strips of 128 with a last one of up to 64 joined to the one before (200 = 128 +
        // 72, 1600 = 12 · 128 + 64), a weight under one strip (50), row counts of one
        // block, of gemm's pair path and past a block; decode rows through the streamed
        // product (the rows of 1-token steps); reductions past one of gemm's blocks (1088).
        let (f32s, stored) = (CpuBackend::default(), CpuBackend::new(WeightsInMemory::Stored));
        for (n, k) in [(200, 64), (1600, 96), (50, 32), (200, 1088), (50, 1088)] {
            let w = q4_1_weight(n, k, n as u64);
            let (wide, kept) = (f32s.upload_stored(w.clone()).unwrap(), stored.upload_stored(w).unwrap());
            assert!(stored.weight_bytes(&kept) * 5 < f32s.weight_bytes(&wide), "Q4_1 is 5 bits a value");
            for rows in [3usize, 4, 513, 1100] {
                let x = Matrix::random(rows, k, rows as u64, 1.0);
                for decode in [DecodeRows::none(), DecodeRows::of_steps([rows - 2, 1, 1])] {
                    let (a, b) = (f32s.matmul_t_rows(&x, &wide, &decode), stored.matmul_t_rows(&x, &kept, &decode));
                    let same = a.unwrap().data.iter().zip(&b.unwrap().data).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{rows} rows by a stored {n}×{k} weight");
                }
            }
            let ids = [0, 7, (n - 1) as u32];
            assert_eq!(f32s.embed(&wide, &ids).unwrap(), stored.embed(&kept, &ids).unwrap());
        }
    }

    #[test]
    fn a_sum_of_products_taken_as_they_multiply_has_the_bits_of_the_products_added() {
        // Groups of 192 and of 512 inputs (one of gemm's reduction blocks: the sum taken in
        // the products), and of 544 (the products added after the first); row counts of one block,
        // of gemm's pair path and past a block; widened and stored weights.
        for backend in [CpuBackend::default(), CpuBackend::new(WeightsInMemory::Stored)] {
            for (groups, width, n) in [(3, 192, 576), (2, 512, 200), (2, 544, 130)] {
                let weights: Vec<CpuWeight> =
                    (0..groups).map(|g| backend.upload_stored(q4_1_weight(n, width, g as u64)).unwrap()).collect();
                let parts: Vec<(Range<usize>, &CpuWeight)> =
                    weights.iter().enumerate().map(|(g, w)| (g * width..(g + 1) * width, w)).collect();
                for rows in [3usize, 4, 513, 1100] {
                    let x = Matrix::random(rows, groups * width, rows as u64, 1.0);
                    let products = backend.matmul_t_parts(&x, &parts, &DecodeRows::none()).unwrap();
                    let mut added = products[0].clone();
                    for p in &products[1..] {
                        added.data.iter_mut().zip(&p.data).for_each(|(a, p)| *a += p);
                    }
                    let summed = backend.matmul_t_sum(&x, &parts, &DecodeRows::none()).unwrap().unwrap();
                    let same = added.data.iter().zip(&summed.data).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && summed.rows == rows, "{rows} rows, {groups} groups of {width} inputs");
                }
            }
        }
    }

    #[test]
    fn decoding_rows_take_the_streamed_product_and_the_others_gemm() {
        // Steps of 3, 1, 1 and 4 tokens: rows 3 and 4 decode, each one fused chain over
        // the inputs in order; the others are gemm's rows, as without any decoding row.
        let (b, weight) = (CpuBackend::default(), Matrix::random(300, 70, 3, 1.0));
        let w = b.upload_weight(weight.clone()).unwrap();
        let x = Matrix::random(9, 70, 4, 1.0);
        let mixed = b.matmul_t_rows(&x, &w, &DecodeRows::of_steps([3, 1, 1, 4])).unwrap();
        let plain = b.matmul_t(&x, &w).unwrap();
        for r in [0, 1, 2, 5, 6, 7, 8] {
            assert_eq!(mixed.row(r), plain.row(r), "row {r}");
        }
        for r in [3, 4] {
            for c in 0..300 {
                let chain = (0..70).fold(0.0f32, |s, i| x.row(r)[i].mul_add(weight.row(c)[i], s));
                assert_eq!(mixed.row(r)[c].to_bits(), chain.to_bits(), "({r}, {c})");
            }
        }
    }

    #[test]
    fn embedding_gathers_rows_of_the_table() {
        let table = Matrix::random(10, 6, 7, 1.0);
        let w = CpuBackend::default().upload_weight(table.clone()).unwrap();
        let x = CpuBackend::default().embed(&w, &[3, 9, 3]).unwrap();
        assert_eq!(x.row(0), table.row(3));
        assert_eq!(x.row(1), table.row(9));
        assert!(CpuBackend::default().embed(&w, &[10]).is_err());
    }

    #[test]
    fn rope_styles_rotate_their_pairs() {
        let rope = Rope { theta: 10_000.0, rotary_dim: 4, scaling: RopeScaling::None };
        let table = Matrix::from_vec(1, 4, rope.table(&[3], &[4]));
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
    fn long_rows_score_against_f64_and_greedy_takes_the_first_largest() {
        // 41 logits (two lanes' chunks and a tail) with the largest twice, at 37 and 39:
        // greedy decoding would take 37.
        let mut row: Vec<f32> = (0..41).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        row[37] = 4.0;
        row[39] = 4.0;
        let logits = Matrix::from_vec(3, 41, [row.clone(), row.clone(), row.clone()].concat());
        let scores = CpuBackend::default().score(&logits, &[37, 39, 3]).unwrap();
        let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        for (score, target) in scores.iter().zip([37, 39, 3]) {
            // f32 exponentials summed over 41 terms: relative error well under 1e-6.
            assert!((score.logprob as f64 - (row[target] as f64 - lse)).abs() < 1e-6, "target {target}");
        }
        assert_eq!(scores.iter().map(|s| s.greedy).collect::<Vec<_>>(), [true, false, false]);
    }

    #[test]
    fn kernels_store_every_value_of_the_outputs_they_do_not_clear() {
        // Each output is allocated right after a NaN-filled buffer of its size is freed, and
        // the allocator hands that block back: a value a kernel left unstored reads as NaN.
        fn after_nans(len: usize, make: impl FnOnce() -> Matrix) -> Matrix {
            drop(std::hint::black_box(vec![f32::NAN; len]));
            make()
        }
        let b = CpuBackend::default();
        let w = b.upload_weight(Matrix::random(300, 70, 3, 1.0)).unwrap();
        let (x, norm) = (Matrix::random(9, 70, 4, 1.0), Matrix::random(1, 70, 5, 1.0));
        let outputs = [
            ("product", after_nans(9 * 300, || b.matmul_t(&x, &w).unwrap())),
            (
                "decoding product",
                after_nans(9 * 300, || b.matmul_t_rows(&x, &w, &DecodeRows::of_steps([3, 1, 1, 4])).unwrap()),
            ),
            ("norm", after_nans(9 * 70, || b.rms_norm(&x, &norm, 1e-6).unwrap())),
            ("gate", after_nans(9 * 35, || b.gated(&x, Activation::Silu).unwrap())),
        ];
        for (name, out) in outputs {
            assert!(out.data.iter().all(|v| v.is_finite()), "{name}: {:?}", out.data);
        }
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
