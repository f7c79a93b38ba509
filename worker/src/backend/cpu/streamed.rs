//! The CPU's product for the rows of single-token generation steps (docs/ARCHITECTURE.md
//! §12). A decode step multiplies a few rows by every weight of the model, so its time is
//! mostly the time to read the weights from memory. This product reads each weight once,
//! each of its panels ([`Panels::of_weight`]) as one run (several weights at once in one
//! parallel region: a row-parallel weight's groups), and:
//! - for one row, each thread takes spans of output columns reaching into a few panels,
//!   keeps their sums in L1 and adds the products of four inputs at a time, the pieces of
//!   every panel together;
//! - for more rows, each thread takes strips of a few registers' width of output columns
//!   (inside one panel) and keeps the sums of up to six rows in registers over the whole
//!   reduction.
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

use super::kernels::{prefetch, Isa, SendPtr};
use super::panels::Microkernels;
#[cfg(doc)]
use super::panels::Panels;
use super::widen::with_widened_panels;
use crate::weights::StoredMatrix;

/// Panels a span reaches into at most: the streams of weights it reads at once, which the
/// hardware's prefetchers follow (their sums in L1).
const SPAN_PANELS: usize = 16;
/// Output columns a span is a multiple of: one AVX-512 register.
const LANES: usize = 16;
/// Rows of a register tile.
const TILE_ROWS: usize = 6;
/// Output columns of a register tile: four AVX-512 registers, or two AVX2 ones (whose 16
/// registers hold six rows of two and the weight's).
const WIDE_TILE: usize = 64;
const NARROW_TILE: usize = 16;
/// Inputs ahead of the one read that a strip asks the memory for: one stream a thread is
/// too few for the hardware's prefetchers to keep the memory busy.
const PREFETCH_ROWS: usize = 96;
/// Floats ahead in a panel (6 KiB) that a span asks the memory for, for each of its pieces.
const SPAN_PREFETCH: usize = 1536;

/// One product of [`products`]: `out (m × n) = x (m × k) · w (k × n)`, row-major.
pub struct Product<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub w: Columns<'a>,
    pub n: usize,
    pub out: &'a mut [f32],
}

/// A product's weight: widened into panels ([`Panels::of_weight`]); or stored, `n × k` in
/// its file's encoding, whose strips a thread widens when it takes them.
#[derive(Clone, Copy)]
pub enum Columns<'a> {
    Widened(&'a [f32]),
    Stored(&'a StoredMatrix<'static>),
}

/// Each of `items` (a weight, or a row-parallel weight's groups), in one parallel region:
/// each output as the product alone computes it.
pub fn products(items: Vec<Product<'_>>) {
    products_on(Isa::widest(), items);
}

/// A weight of `k` inputs and `n` output columns in panels `width` columns wide in
/// `panels` (column `c`'s input `i` at `[(c / width)·k·width + i·width + c % width]`).
#[derive(Clone, Copy)]
struct Weight<'a> {
    panels: &'a [f32],
    k: usize,
    width: usize,
    n: usize,
}

impl<'a> Weight<'a> {
    /// Where column `c`'s input `i` lies in `panels`.
    fn at(&self, i: usize, c: usize) -> usize {
        c / self.width * self.k * self.width + i * self.width + c % self.width
    }

    /// Input `i` of the columns `cols`, which lie in one panel.
    fn row(&self, i: usize, cols: Range<usize>) -> &'a [f32] {
        debug_assert!(cols.start / self.width == (cols.end - 1) / self.width);
        let at = self.at(i, cols.start);
        &self.panels[at..at + cols.len()]
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
        let panels = match w {
            Columns::Widened(panels) => panels,
            Columns::Stored(w) => {
                let out = SendPtr(out.as_mut_ptr());
                jobs.extend((0..n.div_ceil(width)).map(|strip| {
                    let cols = strip * width..(strip * width + width).min(n);
                    Job::StoredStrip { x, m, w, cols, out }
                }));
                continue;
            }
        };
        let w = Weight { panels, k, width: Microkernels::panel_width(), n };
        debug_assert!(w.panels.len() >= n.div_ceil(w.width) * k * w.width);
        match m {
            0 => {}
            1 => {
                // At least two spans a thread, so that a thread that starts late takes fewer.
                let threads = rayon::current_num_threads();
                let count = n.div_ceil(SPAN_PANELS * w.width).max(2 * threads).next_multiple_of(threads);
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
                with_widened_panels(w, cols.clone(), width, |panels| {
                    let tile = Tile { x, k, w: Weight { panels, k, width, n: width }, cols: 0..width };
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
        Kernel::Span => span_sums::<C>(tile, sums),
        Kernel::Registers => register_sums::<C>(tile, sums),
    }
}

/// `sum = fma(x[i], w[i][c], sum)` for the one row `x`, `i` in order, four weight rows
/// at a time, so that each load and store of a sum serves four. The span's pieces in each
/// panel advance together, so that the sums of the whole span are in flight at once; a
/// piece `C` columns wide (a whole panel where the panels are as wide as the kernel's
/// tile) runs unrolled.
#[inline(always)]
fn span_sums<const C: usize>(t: &Tile<'_>, sums: &mut [f32]) {
    let (x, w) = (t.x, t.w);
    // Each piece: where its first column's input 0 lies in the panels, and its sums.
    let mut pieces: Vec<(usize, &mut [f32])> =
        panel_pieces(t.cols.clone(), w.width, sums).map(|(cols, sums)| (w.at(0, cols.start), sums)).collect();
    let fours = t.k / 4 * 4;
    for i in (0..fours).step_by(4) {
        let x = [x[i], x[i + 1], x[i + 2], x[i + 3]];
        for (at, sums) in &mut pieces {
            let ahead = w.panels.as_ptr().wrapping_add(*at + i * w.width + SPAN_PREFETCH);
            for line in (0..4 * w.width).step_by(16) {
                prefetch(ahead.wrapping_add(line));
            }
            let rows = &w.panels[*at + i * w.width..];
            let row = |j: usize, len: usize| &rows[j * w.width..j * w.width + len];
            if let Ok(sums) = <&mut [f32; C]>::try_from(&mut **sums) {
                // Through registers: the compiler leaves the unrolled loop scalar when it
                // works on the sums in memory.
                let mut acc = *sums;
                add_four(&mut acc, [row(0, C), row(1, C), row(2, C), row(3, C)], x);
                *sums = acc;
            } else {
                let len = sums.len();
                add_four(sums, [row(0, len), row(1, len), row(2, len), row(3, len)], x);
            }
        }
    }
    for (i, &xi) in x.iter().enumerate().skip(fours) {
        for (at, sums) in &mut pieces {
            let at = *at + i * w.width;
            let row = &w.panels[at..at + sums.len()];
            for (s, &a) in sums.iter_mut().zip(row) {
                *s = xi.mul_add(a, *s);
            }
        }
    }
}

/// `sum = fma(x[3], w[3][c], fma(x[2], w[2][c], fma(x[1], w[1][c], fma(x[0], w[0][c], sum))))`.
#[inline(always)]
fn add_four(sums: &mut [f32], [w0, w1, w2, w3]: [&[f32]; 4], [x0, x1, x2, x3]: [f32; 4]) {
    for ((((s, &a), &b), &c), &d) in sums.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
        *s = x3.mul_add(d, x2.mul_add(c, x1.mul_add(b, x0.mul_add(a, *s))));
    }
}

/// The pieces of the columns `cols` that lie in one panel `width` columns wide each, with
/// their parts of `sums` (one for each column of `cols`).
fn panel_pieces(
    cols: Range<usize>,
    width: usize,
    sums: &mut [f32],
) -> impl Iterator<Item = (Range<usize>, &mut [f32])> {
    let (mut first, mut rest) = (cols.start, sums);
    std::iter::from_fn(move || {
        let piece = first..((first / width + 1) * width).min(cols.end);
        first = piece.end;
        let (sums, tail) = std::mem::take(&mut rest).split_at_mut(piece.len());
        rest = tail;
        (!piece.is_empty()).then_some((piece, sums))
    })
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
        let w = t.w.row(i, t.cols.clone());
        for line in (0..C).step_by(16) {
            prefetch(w.as_ptr().wrapping_add(PREFETCH_ROWS * t.w.width + line));
        }
        // A slice of a constant length, read in place: copied into an array, it went
        // element by element.
        let w = &w[..C];
        for (acc, xr) in acc.iter_mut().zip(&xs) {
            for (a, &wv) in acc.iter_mut().zip(w) {
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
    use crate::backend::cpu::panels::lay_out;

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
        let panels: Vec<Vec<f32>> =
            shapes.iter().zip(&inputs).map(|(&(_, k, n), (_, wt))| lay_out(n, k, |c, i| wt[i * (n + 5) + c])).collect();
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
            ((x, _), panels): (&'a (Vec<f32>, Vec<f32>), &'a [f32]),
            out: &'a mut [f32],
        ) -> Product<'a> {
            Product { x, m, k, w: Columns::Widened(panels), n, out }
        }
        let stored: Vec<StoredMatrix<'static>> =
            shapes.iter().zip(&inputs).map(|(&(_, k, n), (_, wt))| stored(wt, k, n, n + 5)).collect();
        for isa in Isa::available() {
            let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(m, _, n)| vec![f32::NAN; m * n]).collect();
            for (((&shape, input), panels), out) in shapes.iter().zip(&inputs).zip(&panels).zip(&mut outs) {
                products_on(isa, vec![product(shape, (input, panels), out)]);
            }
            check(isa, &outs);
            let mut together: Vec<Vec<f32>> = shapes.iter().map(|&(m, _, n)| vec![f32::NAN; m * n]).collect();
            let items = shapes
                .iter()
                .zip(inputs.iter().zip(&panels))
                .zip(&mut together)
                .map(|((&s, (i, p)), out)| product(s, (i, p), out))
                .collect();
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
