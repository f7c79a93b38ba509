//! Matrix products by weights on register-tile microkernels, driven here over weights
//! widened at load into [`Panels`] of output features: the layout into which `gemm` packs a
//! weight on every call, made once (docs/ARCHITECTURE.md §4). Packing each strip again for
//! every piece of rows had taken about 5% of an evaluation. Attention's products by its
//! keys and values run here too, over panels laid out once a layer. With FMA's kernels,
//! the next row tile's inputs are asked of memory while a row tile multiplies ([`Ahead`]).
//!
//! The arithmetic is `gemm`'s: the microkernels `gemm` picks for the machine
//! ([`Microkernels::machine`]; FMA's are this backend's own, [`fma`], which do the same
//! operations), each output one chain of fused multiply-adds over a block of inputs in
//! order from zero, the blocks cut as `gemm_into` (the tests' product through `gemm`) cuts
//! them and their sums added in turn. A product's bits are those of `gemm_into` on the same
//! operands wherever `gemm` takes its microkernels (at least two rows and three inputs),
//! and a row's bits do not depend on the rows beside it.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::kernels::{prefetch, reduction_blocks, View};

/// A microkernel of `gemm_f32` (0.19): `(m, n, k, dst, lhs, rhs, dst_cs, dst_rs, lhs_cs,
/// rhs_rs, rhs_cs, alpha, beta, alpha_status, conj ×3, next)` computes `m ≤ MR` outputs
/// (contiguous in `dst`) for each of `n ≤ NR` columns `dst_cs` apart: the sum over `k` of
/// `lhs` (MR values a step, `lhs_cs` apart) times `rhs` (a value a column, `rhs_cs` apart;
/// steps `rhs_rs` apart), stored as `beta · sum` (status 0) or `beta · sum + dst`, fused
/// (status 1). Its whole-vector loads read `m` rounded up to whole vectors.
type Microkernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// The microkernels of this machine, as `gemm` (0.19) picks them: AVX-512 where the build
/// has the `avx512` feature and the machine AVX-512F, else FMA's on x86-64 with FMA ([`fma`]'s
/// own), NEON's on aarch64, else the scalar ones (which multiply and add apart: the CPU's
/// provenance says so).
#[derive(Clone, Copy)]
pub struct Microkernels {
    /// Values in a vector.
    lanes: usize,
    /// The widest tile's outputs per column (`MR`): the width of a [`Panels`] panel.
    rows: usize,
    /// The widest tile's columns (`NR`).
    cols: usize,
    /// The kernel for tiles of `vectors` vectors by `cols` columns (each at least 1).
    pick: fn(vectors: usize, cols: usize) -> Microkernel,
    /// Whether [`multiply`] asks for the next row tile's inputs ahead ([`Ahead`]): with
    /// [`fma`]'s kernels, a ctx-512 evaluation took 0.97–0.98 of the time on `gemm`'s FMA
    /// ones without it (AVX2 build, 4 alternating pairs, two builds); with AVX-512 kernels
    /// of the same design as [`fma`]'s it took longer (1.11 of `gemm`'s time, against 1.04
    /// without it), so AVX-512 keeps `gemm`'s kernels and does not ask.
    ahead: bool,
}

impl Microkernels {
    /// This machine's, found once.
    pub fn machine() -> Microkernels {
        static MACHINE: OnceLock<Microkernels> = OnceLock::new();
        *MACHINE.get_or_init(Microkernels::detect)
    }

    fn detect() -> Microkernels {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(feature = "avx512")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                use gemm_f32::microkernel::avx512f::f32 as k;
                return Microkernels::of(16, k::MR_DIV_N, k::NR, |v, c| k::UKR[v - 1][c - 1]);
            }
            if std::arch::is_x86_feature_detected!("fma") {
                use gemm_f32::microkernel::fma::f32 as k;
                let own = Microkernels::of(8, k::MR_DIV_N, fma::COLS, |v, c| fma::KERNELS[v - 1][c - 1]);
                return Microkernels { ahead: true, ..own };
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use gemm_f32::microkernel::neon::f32 as k;
            return Microkernels::of(4, k::MR_DIV_N, k::NR, |v, c| k::UKR[v - 1][c - 1]);
        }
        #[allow(unreachable_code)]
        {
            use gemm_f32::microkernel::scalar::f32 as k;
            Microkernels::of(1, k::MR_DIV_N, k::NR, |v, c| k::UKR[v - 1][c - 1])
        }
    }

    fn of(lanes: usize, vectors: usize, cols: usize, pick: fn(usize, usize) -> Microkernel) -> Microkernels {
        Microkernels { lanes, rows: lanes * vectors, cols, pick, ahead: false }
    }

    /// The rows of the widest tile (`NR`).
    pub fn row_tile(&self) -> usize {
        self.cols
    }

    /// The width of this machine's [`Panels`]: the widest tile's outputs, and at least
    /// 16, the streamed product's narrowest tile of columns, so that its tiles (16 or 64
    /// wide) each lie in one panel. Each kernel's tile is a whole number of vectors.
    pub fn panel_width() -> usize {
        Microkernels::machine().rows.max(16)
    }
}

/// This backend's own microkernels for x86-64 with FMA, where `gemm` (0.19) would pick its
/// FMA ones: the same tiles (2 vectors of 8 by 6 columns at most) and the same operations
/// in the same order, so the same bits (`products_have_gemms_bits`). `gemm`'s step from one
/// column's input to the next's through a chain of six dependent additions an input (the
/// columns lie a row of `x` apart, not packed side by side as `gemm` would have them), as
/// many cycles as the input's twelve multiply-adds take on two FMA units; here each column
/// has its own pointer and one index steps them all. Alone they ran as fast as `gemm`'s;
/// with [`Ahead`], whose waits they no longer hide, 0.98 of the time (`Microkernels::ahead`).
/// The loop takes four inputs a pass (`UNROLL`), so that its count and addresses
/// take fewer of the instructions that share the FMA units' ports: one core's product of 12
/// rows by 512 columns over 64 inputs (an attention tile's scores) ran at 77 GFLOP/s
/// against 73 stepping one input a pass, and the full 8,192-token window's evaluation took
/// 0.964 of the time (AVX2 build, 4 alternating pairs; ctx 512 the same: 1.000).
#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    use super::Microkernel;

    /// The widest tile's columns (`gemm`'s `NR`).
    pub const COLS: usize = 6;

    /// Values in a vector.
    const LANES: usize = 8;

    /// Inputs a pass of a tile's loop takes (8 ran at 57 GFLOP/s where 2 and 4 ran at 77).
    const UNROLL: usize = 4;

    /// A tile of `m ≤ 8·V` outputs by `C` columns with [`Microkernel`]'s contract, for the
    /// operands `multiply` passes (outputs contiguous, `alpha` 1): each output's
    /// multiply-adds in input order from zero, then `beta · sum` stored (`status` 0) or
    /// fused into what `dst` holds, as `gemm`'s kernel does (its partial tiles value by
    /// value).
    ///
    /// # Safety
    /// The machine must run AVX and FMA; [`Microkernel`]'s contract.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx,fma")]
    unsafe fn tile<const V: usize, const C: usize>(
        m: usize,
        _: usize,
        k: usize,
        dst: *mut f32,
        lhs: *const f32,
        rhs: *const f32,
        dst_cs: isize,
        _: isize,
        lhs_cs: isize,
        _: isize,
        rhs_cs: isize,
        _: f32,
        beta: f32,
        status: u8,
        _: bool,
        _: bool,
        _: bool,
        _: *const f32,
    ) {
        let columns: [*const f32; C] = std::array::from_fn(|c| rhs.wrapping_offset(c as isize * rhs_cs));
        let mut sums = [[_mm256_setzero_ps(); V]; C];
        // Step `i`: the panel's vectors at `panel` times each column's input `i`.
        let step = |sums: &mut [[__m256; V]; C], panel: *const f32, i: usize| {
            // SAFETY: the panel holds `k` steps of whole vectors, `lhs_cs` apart.
            let w: [__m256; V] = std::array::from_fn(|v| unsafe { _mm256_loadu_ps(panel.add(v * LANES)) });
            for (column, sums) in columns.iter().zip(sums.iter_mut()) {
                // SAFETY: each column holds `k` inputs.
                let x = _mm256_set1_ps(unsafe { *column.add(i) });
                for (sum, w) in sums.iter_mut().zip(&w) {
                    *sum = _mm256_fmadd_ps(*w, x, *sum);
                }
            }
        };
        let mut panel = lhs;
        let mut i = 0;
        while i + UNROLL <= k {
            for u in 0..UNROLL {
                step(&mut sums, panel.wrapping_offset(u as isize * lhs_cs), i + u);
            }
            panel = panel.wrapping_offset(UNROLL as isize * lhs_cs);
            i += UNROLL;
        }
        for i in i..k {
            step(&mut sums, panel, i);
            panel = panel.wrapping_offset(lhs_cs);
        }
        let accumulate = status != 0;
        for (c, sums) in sums.iter().enumerate() {
            let out = dst.wrapping_offset(c as isize * dst_cs);
            if m == V * LANES {
                let scale = _mm256_set1_ps(beta);
                for (v, sum) in sums.iter().enumerate() {
                    let at = out.wrapping_add(v * LANES);
                    // SAFETY: `dst` holds the tile's `m` outputs of each column.
                    unsafe {
                        let value = match accumulate {
                            true => _mm256_fmadd_ps(scale, *sum, _mm256_loadu_ps(at)),
                            false => _mm256_mul_ps(scale, *sum),
                        };
                        _mm256_storeu_ps(at, value);
                    }
                }
            } else {
                let mut values = [0.0f32; 16];
                for (v, sum) in sums.iter().enumerate() {
                    // SAFETY: `values` holds the widest tile's outputs.
                    unsafe { _mm256_storeu_ps(values[v * LANES..].as_mut_ptr(), *sum) };
                }
                for (j, value) in values[..m].iter().enumerate() {
                    // SAFETY: `dst` holds the tile's `m` outputs of each column.
                    let at = unsafe { &mut *out.add(j) };
                    *at = match accumulate {
                        true => beta.mul_add(*value, *at),
                        false => beta * value,
                    };
                }
            }
        }
    }

    /// A row of tiles of `V` vectors, by 1 to [`COLS`] columns.
    macro_rules! by_columns {
        ($v:literal) => {
            [tile::<$v, 1>, tile::<$v, 2>, tile::<$v, 3>, tile::<$v, 4>, tile::<$v, 5>, tile::<$v, 6>]
        };
    }

    /// The kernels for 1 or 2 vectors by 1 to 6 columns.
    pub const KERNELS: [[Microkernel; COLS]; 2] = [by_columns!(1), by_columns!(2)];
}

/// A weight of `k` inputs in panels of [`Microkernels::panel_width`] output features from
/// `ptr`, each `k × width`: column `c`'s input `i` at `(c / width)·k·width + i·width +
/// c % width`, the last panel's columns past the weight's padded (with zeros where
/// [`lay_out`] laid it out).
#[derive(Clone, Copy)]
pub struct Panels {
    pub ptr: *const f32,
    k: usize,
    width: usize,
}

impl Panels {
    pub fn of_weight(ptr: *const f32, k: usize) -> Panels {
        Panels { ptr, k, width: Microkernels::panel_width() }
    }

    /// The same panels without their first `first` inputs: a product over inputs `first..`.
    pub fn skipping(self, first: usize) -> Panels {
        Panels { ptr: self.ptr.wrapping_add(first * self.width), ..self }
    }

    /// Column `c`'s input `i`.
    fn at(&self, c: usize, i: usize) -> *const f32 {
        self.ptr.wrapping_add((c / self.width) * self.k * self.width + i * self.width + c % self.width)
    }
}

/// `out (rows × cols) = [out +] scale · x (rows × k) · w (k × cols)`: `x`'s rows `x.rs`
/// apart with their inputs side by side (`x.cs` must be 1), `out`'s rows `out_rs` apart.
/// Added to `out` where `accumulate`: each output once, as `out + scale · sum`. Each row
/// tile of [`Microkernels`]' height (`NR`, read in place) multiplies by every column tile
/// of the weight in turn, the panels' block of inputs coming from L2.
///
/// # Safety
/// `x` must cover `rows × k`, `w` `k` inputs of `cols` columns, `out` `rows` rows of `cols`
/// values that nothing else reads or writes meanwhile; none may alias `out`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn multiply(
    rows: usize,
    cols: usize,
    k: usize,
    x: View,
    w: Panels,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
    scale: f32,
) {
    debug_assert!(x.cs == 1 && w.k >= k && w.width.is_multiple_of(Microkernels::machine().rows));
    let kernels = Microkernels::machine();
    let (tile_rows, tile_cols) = (kernels.cols, kernels.rows);
    if k == 0 && !accumulate {
        for r in 0..rows {
            // SAFETY: the caller's `out` holds `rows` rows of `cols` values.
            unsafe { std::ptr::write_bytes(out.add(r * out_rs), 0, cols) };
        }
    }
    for (block, inputs) in reduction_blocks(k).enumerate() {
        let status = u8::from(accumulate || block > 0);
        for r in (0..rows).step_by(tile_rows) {
            let height = tile_rows.min(rows - r);
            let rhs = x.ptr.wrapping_offset(r as isize * x.rs).wrapping_add(inputs.start);
            // The next row tile's inputs, asked of memory a share before each column tile:
            // they come from L3 or farther (a task takes a new piece of rows), and a tile's
            // first column tile would otherwise wait for all its rows' lines at once. Not for
            // a product of at most two row tiles (attention's slices): its inputs were just
            // written or copied and lie in L1, and asking for them again only took the load
            // ports' slots (the full window in 0.9945 of the time, AVX2 build, 4 alternating
            // pairs: 0.994, 0.982, 0.995, 0.999; ctx 512 the same).
            let next = match kernels.ahead && rows > 2 * tile_rows {
                true => (r + tile_rows..(r + 2 * tile_rows).min(rows)).len(),
                false => 0,
            };
            let mut ahead = Ahead::new(rhs.wrapping_offset(tile_rows as isize * x.rs), x.rs, next, inputs.len());
            let share = ahead.lines().div_ceil(cols.div_ceil(tile_cols));
            for c in (0..cols).step_by(tile_cols) {
                ahead.ask(share);
                let width = tile_cols.min(cols - c);
                let kernel = (kernels.pick)(width.div_ceil(kernels.lanes), height);
                // SAFETY: the tile's outputs lie in the caller's `out`, its inputs in `x`
                // and in `w`'s panel, whose padding holds the whole vectors it loads.
                unsafe {
                    kernel(
                        width,
                        height,
                        inputs.len(),
                        out.add(r * out_rs + c),
                        w.at(c, inputs.start),
                        rhs,
                        out_rs as isize,
                        1,
                        w.width as isize,
                        1,
                        x.rs,
                        1.0,
                        scale,
                        status,
                        false,
                        false,
                        false,
                        std::ptr::null(),
                    )
                };
            }
        }
    }
}

/// The cache lines of a row tile's inputs, asked of memory a few at a time ([`prefetch`]):
/// `rows` rows `rs` apart from `first`, the lines of `len` inputs from each (a hint: a row
/// that starts inside a line may have its last line left out).
struct Ahead {
    first: *const f32,
    rs: isize,
    rows: usize,
    per_row: usize,
    row: usize,
    line: usize,
}

impl Ahead {
    /// Floats in a cache line.
    const LINE: usize = 16;

    fn new(first: *const f32, rs: isize, rows: usize, len: usize) -> Ahead {
        Ahead { first, rs, rows, per_row: len.div_ceil(Ahead::LINE), row: 0, line: 0 }
    }

    fn lines(&self) -> usize {
        self.rows * self.per_row
    }

    /// Asks for the next `count` lines (fewer where fewer are left).
    fn ask(&mut self, count: usize) {
        for _ in 0..count {
            if self.row == self.rows {
                return;
            }
            prefetch(self.first.wrapping_offset(self.row as isize * self.rs).wrapping_add(self.line * Ahead::LINE));
            self.line += 1;
            if self.line == self.per_row {
                (self.line, self.row) = (0, self.row + 1);
            }
        }
    }
}

/// A weight of `n` output features and `k` inputs laid out in [`Panels::of_weight`]'s
/// panels, a panel per task: output `c`'s input `i` is `value(c, i)`; the last panel's
/// columns past `n` are zeros.
pub fn lay_out(n: usize, k: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    let width = Microkernels::panel_width();
    let mut panels = vec![0.0f32; n.div_ceil(width) * k * width];
    panels.par_chunks_mut((k * width).max(1)).enumerate().for_each(|(p, panel)| {
        for (i, step) in panel.chunks_exact_mut(width).enumerate() {
            for (j, v) in step.iter_mut().enumerate().take(n.saturating_sub(p * width)) {
                *v = value(p * width + j, i);
            }
        }
    });
    panels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::gemm_into;
    use crate::tensor::Matrix;

    /// `x (m × k) · w (k × n)` through `gemm_into` on `w` laid out `k × n`, row-major.
    fn through_gemm(x: &Matrix, w: &[f32], n: usize, scale: f32, out: &mut [f32], accumulate: bool) {
        let (m, k) = (x.rows, x.cols);
        let lhs = View { ptr: x.data.as_ptr(), rs: k as isize, cs: 1 };
        let rhs = View { ptr: w.as_ptr(), rs: n as isize, cs: 1 };
        // SAFETY: x is m × k, w k × n, out m × n.
        unsafe { gemm_into(m, n, k, out.as_mut_ptr(), n, accumulate, lhs, rhs, scale) };
    }

    /// Bit for bit `gemm`'s products: rows past a tile, columns
    /// that fill no tile or vector, tiles of each whole number of vectors (24, 96 and 112
    /// columns), reductions cut into blocks (576: two of 288; 1100:
    /// three), a scale, and sums added to what the output held. (`gemm` takes one row, or
    /// two inputs or fewer, through other paths, which sum in another order.) A row alone
    /// has the bits it has among others.
    #[test]
    fn products_have_gemms_bits() {
        let shapes = [
            (2, 64, 37),
            (7, 576, 130),
            (13, 1100, 64),
            (70, 23, 200),
            (6, 3, 5),
            (3, 0, 9),
            (8, 20, 24),
            (4, 40, 96),
            (9, 33, 112),
        ];
        for (m, k, n) in shapes {
            let x = Matrix::random(m, k, 1, 1.0);
            let w = Matrix::random(k, n, 2, 1.0).data;
            let start = Matrix::random(m, n, 3, 1.0).data;
            for (accumulate, scale) in [(false, 1.0), (true, 1.0), (false, 0.125), (true, 0.3)] {
                let case = format!("{m}×{k} · {k}×{n}, accumulate {accumulate}, scale {scale}");
                let mut expected = start.clone();
                through_gemm(&x, &w, n, scale, &mut expected, accumulate);
                let lhs = View { ptr: x.data.as_ptr(), rs: k as isize, cs: 1 };
                let panels = lay_out(n, k, |c, i| w[i * n + c]);
                for rows in [m, 1] {
                    let mut out = start.clone();
                    let w = Panels::of_weight(panels.as_ptr(), k);
                    // SAFETY: x is m × k, the panels k inputs of n columns, out m × n.
                    unsafe { multiply(rows, n, k, lhs, w, out.as_mut_ptr(), n, accumulate, scale) };
                    let same = out[..rows * n].iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{case}, {rows} rows");
                }
            }
        }
    }
}
