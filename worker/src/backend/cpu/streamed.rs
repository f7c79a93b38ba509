//! The CPU's product for the rows of single-token generation steps (docs/ARCHITECTURE.md
//! §12). A decode step multiplies a few rows by every weight of the model, so its time is
//! mostly the time to read the weights from memory; `gemm`, made for many rows, packs
//! them on every call. This product reads each weight once (several weights at once in
//! one parallel region: a row-parallel weight's groups), and:
//! - for one row, each thread takes spans of output columns, keeps their sums in L1 and
//!   adds the products of four weight rows at a time, reading long runs of each row;
//! - for more rows, each thread takes strips of a few registers' width of output columns
//!   and keeps the sums of up to six rows in registers over the whole reduction.
//!
//! A weight kept in its file's encoding is taken in strips one register tile wide, each
//! widened by the thread that takes it and multiplied as a widened weight would be.
//!
//! Whatever the kernel and the weight's form, each output is one chain of fused
//! multiply-adds over the inputs in order, from zero. A fused multiply-add is correctly
//! rounded whatever the instruction set, so a row's result depends on nothing but its
//! inputs: not the other rows, the kernel, the span or strip width, the thread count, nor
//! the vector width (AVX-512, AVX2 or scalar).

use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{prefetch, with_widened_strip, Isa, SendPtr};
use crate::weights::StoredMatrix;

/// Output columns a span holds at most: long runs of each weight row, their sums in L1.
const SPAN_COLUMNS: usize = 1024;
/// Output columns a span is a multiple of: one AVX-512 register.
const LANES: usize = 16;
/// Rows of a register tile.
const TILE_ROWS: usize = 6;
/// Output columns of a register tile: four AVX-512 registers, or two AVX2 ones (whose 16
/// registers hold six rows of two and the weight's).
const WIDE_TILE: usize = 64;
const NARROW_TILE: usize = 16;
/// Weight rows ahead of the one read that a strip asks the memory for: its rows lie a
/// whole weight row apart, too far for the hardware's prefetchers to follow.
const PREFETCH_ROWS: usize = 96;

/// One product of [`products`]: `out (m × n) = x (m × k) · w (k × n)`, row-major.
pub struct Product<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub w: Columns<'a>,
    pub n: usize,
    pub out: &'a mut [f32],
}

/// A product's weight: widened, `k × n` with rows `stride` apart in `wt`; or stored,
/// `n × k` in its file's encoding, whose strips a thread widens when it takes them.
#[derive(Clone, Copy)]
pub enum Columns<'a> {
    Widened { wt: &'a [f32], stride: usize },
    Stored(&'a StoredMatrix<'static>),
}

/// Each of `items` (a weight, or a row-parallel weight's groups), in one parallel region:
/// each output as the product alone computes it.
pub fn products(items: Vec<Product<'_>>) {
    products_on(Isa::widest(), items);
}

/// A weight `k × n` whose rows lie `stride` apart in `wt`.
#[derive(Clone, Copy)]
struct Weight<'a> {
    wt: &'a [f32],
    stride: usize,
    n: usize,
}

impl<'a> Weight<'a> {
    /// Columns `cols` of row `i`.
    fn row(&self, i: usize, cols: Range<usize>) -> &'a [f32] {
        &self.wt[i * self.stride + cols.start..i * self.stride + cols.end]
    }
}

/// A share of a product's work that one thread takes.
enum Job<'a> {
    /// One row: a span of output columns, its sums in L1.
    Span { tile: Tile<'a>, sums: &'a mut [f32] },
    /// Several rows: a strip of tile-wide output columns for every row, written into the
    /// product's output `out` of `n` columns.
    Strip { tile: Tile<'a>, m: usize, out: SendPtr },
    /// Every row by a strip `cols` of a stored weight, widened first.
    StoredStrip { x: &'a [f32], m: usize, w: &'a StoredMatrix<'static>, cols: Range<usize>, out: SendPtr },
}

fn products_on(isa: Isa, items: Vec<Product<'_>>) {
    let mut jobs = Vec::new();
    let width = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => WIDE_TILE,
        _ => NARROW_TILE,
    };
    for Product { x, m, k, w, n, out } in items {
        debug_assert!(x.len() == m * k && out.len() == m * n);
        let (wt, stride) = match w {
            Columns::Widened { wt, stride } => (wt, stride),
            Columns::Stored(w) => {
                let out = SendPtr(out.as_mut_ptr());
                jobs.extend((0..n.div_ceil(width)).map(|strip| {
                    let cols = strip * width..(strip * width + width).min(n);
                    Job::StoredStrip { x, m, w, cols, out }
                }));
                continue;
            }
        };
        let w = Weight { wt, stride, n };
        debug_assert!(w.wt.len() >= (k.max(1) - 1) * w.stride + w.n);
        match m {
            0 => {}
            1 => {
                // At least two spans a thread, so that a thread that starts late takes fewer.
                let threads = rayon::current_num_threads();
                let count = n.div_ceil(SPAN_COLUMNS).max(2 * threads).next_multiple_of(threads);
                let width = n.div_ceil(count).next_multiple_of(LANES);
                jobs.extend(out.chunks_mut(width).enumerate().map(|(span, sums)| {
                    let cols = span * width..span * width + sums.len();
                    Job::Span { tile: Tile { x, k, w, cols }, sums }
                }));
            }
            _ => {
                let out = SendPtr(out.as_mut_ptr());
                jobs.extend((0..n.div_ceil(width)).map(|strip| {
                    let cols = strip * width..(strip * width + width).min(n);
                    Job::Strip { tile: Tile { x, k, w, cols }, m, out }
                }));
            }
        }
    }
    jobs.into_par_iter().with_max_len(1).for_each(|job| job.run(isa));
}

impl Job<'_> {
    fn run(self, isa: Isa) {
        match self {
            Job::Span { tile, sums } => {
                sums.fill(0.0);
                add_sums(isa, Kernel::Span, &tile, sums);
            }
            Job::Strip { tile, m, out } => {
                let (n, first) = (tile.w.n, tile.cols.start);
                strip_rows(isa, tile, m, out, n, first);
            }
            Job::StoredStrip { x, m, w, cols, out } => {
                let (k, width) = (w.cols(), cols.len());
                with_widened_strip(w, cols.clone(), width, |wt| {
                    let tile = Tile { x, k, w: Weight { wt, stride: width, n: width }, cols: 0..width };
                    strip_rows(isa, tile, m, out, w.rows(), cols.start);
                });
            }
        }
    }
}

/// Every one of `m` rows of `t.x` by the columns `t.cols` of `t.w`, [`TILE_ROWS`] rows at a
/// time, into the columns from `first` of `out` (`m × n`).
fn strip_rows(isa: Isa, t: Tile<'_>, m: usize, out: SendPtr, n: usize, first: usize) {
    let (k, width) = (t.k, t.cols.len());
    let mut sums = [0.0f32; WIDE_TILE * TILE_ROWS];
    for start in (0..m).step_by(TILE_ROWS) {
        let rows = start..(start + TILE_ROWS).min(m);
        let tile = Tile { x: &t.x[rows.start * k..rows.end * k], k, w: t.w, cols: t.cols.clone() };
        let sums = &mut sums[..rows.len() * width];
        add_sums(isa, Kernel::Registers, &tile, sums);
        for (r, row) in rows.zip(sums.chunks_exact(width)) {
            // SAFETY: `out` is m × n, and each strip writes only its own columns.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.at(r * n + first), width) };
        }
    }
}

/// One kernel call's work: rows `x` (each `k` long) by the columns `cols` of `w`, into
/// sums of `x.len() / k` rows by `cols.len()`.
struct Tile<'a> {
    x: &'a [f32],
    k: usize,
    w: Weight<'a>,
    cols: Range<usize>,
}

/// Where a kernel keeps its sums.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// In L1, four weight rows at a time ([`span_sums`]).
    Span,
    /// In registers ([`register_sums`]).
    Registers,
}

/// A tile's products into `sums` (zeroed for [`Kernel::Span`], any for [`Kernel::Registers`])
/// with `kernel` compiled for `isa`.
fn add_sums(isa: Isa, kernel: Kernel, tile: &Tile<'_>, sums: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the machine runs its features (`Isa::widest`).
        Isa::Avx512 => unsafe { add_sums_avx512(kernel, tile, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the machine runs its features (`Isa::widest`).
        Isa::Avx2 => unsafe { add_sums_avx2(kernel, tile, sums) },
        _ => add_sums_generic::<NARROW_TILE>(kernel, tile, sums),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn add_sums_avx512(kernel: Kernel, tile: &Tile<'_>, sums: &mut [f32]) {
    add_sums_generic::<WIDE_TILE>(kernel, tile, sums);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_sums_avx2(kernel: Kernel, tile: &Tile<'_>, sums: &mut [f32]) {
    add_sums_generic::<NARROW_TILE>(kernel, tile, sums);
}

/// The kernels, inlined into each caller so that they are vectorised for its features;
/// `C` is the register tile's width for those features.
#[inline(always)]
fn add_sums_generic<const C: usize>(kernel: Kernel, tile: &Tile<'_>, sums: &mut [f32]) {
    match kernel {
        Kernel::Span => span_sums(tile, sums),
        Kernel::Registers => register_sums::<C>(tile, sums),
    }
}

/// `sum = fma(x[i], w[i][c], sum)` for the one row `x`, `i` in order, four weight rows
/// at a time, so that each load and store of a sum serves four.
#[inline(always)]
fn span_sums(t: &Tile<'_>, sums: &mut [f32]) {
    let (x, row) = (t.x, |i: usize| t.w.row(i, t.cols.clone()));
    let fours = t.k / 4 * 4;
    for i in (0..fours).step_by(4) {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        let (x0, x1, x2, x3) = (x[i], x[i + 1], x[i + 2], x[i + 3]);
        for ((((s, &a), &b), &c), &d) in sums.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
            *s = x3.mul_add(d, x2.mul_add(c, x1.mul_add(b, x0.mul_add(a, *s))));
        }
    }
    for (i, &xi) in x.iter().enumerate().skip(fours) {
        for (s, &a) in sums.iter_mut().zip(row(i)) {
            *s = xi.mul_add(a, *s);
        }
    }
}

/// A full tile (`C` columns) of 1 to [`TILE_ROWS`] rows through [`tile`], whose sums the
/// compiler keeps in registers; a narrower one (the weight's last columns) plainly.
#[inline(always)]
fn register_sums<const C: usize>(t: &Tile<'_>, sums: &mut [f32]) {
    if t.cols.len() == C {
        match sums.len() / C {
            1 => return tile::<C, 1>(t, sums),
            2 => return tile::<C, 2>(t, sums),
            3 => return tile::<C, 3>(t, sums),
            4 => return tile::<C, 4>(t, sums),
            5 => return tile::<C, 5>(t, sums),
            _ => return tile::<C, TILE_ROWS>(t, sums),
        }
    }
    sums.fill(0.0);
    for i in 0..t.k {
        for (r, sums) in sums.chunks_exact_mut(t.cols.len()).enumerate() {
            for (s, &w) in sums.iter_mut().zip(t.w.row(i, t.cols.clone())) {
                *s = t.x[r * t.k + i].mul_add(w, *s);
            }
        }
    }
}

/// `R` rows by `C` columns: `sum = fma(x[r][i], w[i][c], sum)` for `i` in order, from zero.
#[inline(always)]
fn tile<const C: usize, const R: usize>(t: &Tile<'_>, sums: &mut [f32]) {
    let mut acc = [[0.0f32; C]; R];
    let xs: [&[f32]; R] = std::array::from_fn(|r| &t.x[r * t.k..(r + 1) * t.k]);
    for i in 0..t.k {
        for line in (0..C).step_by(16) {
            prefetch(t.w.wt.as_ptr().wrapping_add((i + PREFETCH_ROWS) * t.w.stride + t.cols.start + line));
        }
        let w = t.w.row(i, t.cols.clone());
        let w: [f32; C] = std::array::from_fn(|c| w[c]);
        for (acc, xr) in acc.iter_mut().zip(&xs) {
            for (a, &wv) in acc.iter_mut().zip(&w) {
                *a = xr[i].mul_add(wv, *a);
            }
        }
    }
    // Constant indices (not an iterator over `acc`), so that `acc` stays in registers.
    for (r, acc) in acc.into_iter().enumerate() {
        sums[r * C..(r + 1) * C].copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that bf16 holds exactly, so that a stored bf16 weight widens to them.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let unit = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) as f32 / 65_536.0;
        (0..len).map(|i| half::bf16::from_f32(unit(i) - 0.5).to_f32()).collect()
    }

    /// The weight `k × n` (rows `stride` apart in `wt`) stored as bf16, `n × k`.
    fn stored(wt: &[f32], k: usize, n: usize, stride: usize) -> StoredMatrix<'static> {
        let bytes =
            (0..n).flat_map(|c| (0..k).flat_map(move |i| half::bf16::from_f32(wt[i * stride + c]).to_le_bytes()));
        let mut w = StoredMatrix::new(k);
        w.push(crate::weights::quant::GgmlType::Bf16, n, 0, bytes.collect());
        w
    }

    /// Every output against the one chain it must be, on every instruction set the machine
    /// runs: one row (spans), 2 to 13 rows (whole and partial tiles of rows), and weights
    /// whose sizes are no multiple of the step, the lanes or the tile, their rows padded;
    /// each product alone, all of them in one parallel region, and the weights stored.
    #[test]
    fn each_output_is_one_fused_chain_in_input_order() {
        let shapes = [(1, 23, 37), (1, 64, 2100), (2, 23, 37), (7, 130, 150), (13, 9, 200)];
        // Rows padded, as the backend's weights are.
        let inputs: Vec<(Vec<f32>, Vec<f32>)> =
            shapes.iter().map(|&(m, k, n)| (values(m * k, 1), values(k * (n + 5), 2))).collect();
        let check = |isa: Isa, outs: &[Vec<f32>]| {
            for (((m, k, n), (x, wt)), out) in shapes.iter().zip(&inputs).zip(outs) {
                for r in 0..*m {
                    for c in 0..*n {
                        let chain = (0..*k).fold(0.0f32, |s, i| x[r * k + i].mul_add(wt[i * (n + 5) + c], s));
                        assert_eq!(out[r * n + c].to_bits(), chain.to_bits(), "{isa:?} {m}×{k}·{k}×{n} at ({r}, {c})");
                    }
                }
            }
        };
        fn product<'a>(
            (m, k, n): (usize, usize, usize),
            (x, wt): &'a (Vec<f32>, Vec<f32>),
            out: &'a mut [f32],
        ) -> Product<'a> {
            Product { x, m, k, w: Columns::Widened { wt, stride: n + 5 }, n, out }
        }
        let stored: Vec<StoredMatrix<'static>> =
            shapes.iter().zip(&inputs).map(|(&(_, k, n), (_, wt))| stored(wt, k, n, n + 5)).collect();
        for isa in Isa::available() {
            let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(m, _, n)| vec![f32::NAN; m * n]).collect();
            for ((&shape, input), out) in shapes.iter().zip(&inputs).zip(&mut outs) {
                products_on(isa, vec![product(shape, input, out)]);
            }
            check(isa, &outs);
            let mut together: Vec<Vec<f32>> = shapes.iter().map(|&(m, _, n)| vec![f32::NAN; m * n]).collect();
            let items =
                shapes.iter().zip(&inputs).zip(&mut together).map(|((&s, i), out)| product(s, i, out)).collect();
            products_on(isa, items);
            check(isa, &together);
            let mut from_stored: Vec<Vec<f32>> = shapes.iter().map(|&(m, _, n)| vec![f32::NAN; m * n]).collect();
            let items = shapes
                .iter()
                .zip(&inputs)
                .zip(&stored)
                .zip(&mut from_stored)
                .map(|(((&(m, k, n), (x, _)), w), out)| Product { x, m, k, w: Columns::Stored(w), n, out })
                .collect();
            products_on(isa, items);
            check(isa, &from_stored);
        }
    }
}
