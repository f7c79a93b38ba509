//! The CPU backend's numeric kernels, which its ops and its attention build on: the cut of
//! a product's reduction into blocks ([`reduction_blocks`]; `gemm_into`, the strided
//! product through `gemm` that the tests hold the backend's own products to), a
//! vectorisable `exp` ([`fast_exp`], whose constants and 2ⁿ the softmax's vector kernels
//! share: [`exp_constants`],
//! [`power_of_two`]), sums and maxima in a fixed order ([`lane_sum_of`], [`exp_in_place`], [`lane_max`]), memory
//! prefetches ([`prefetch`]), and the instruction sets that kernels compiled more than once
//! choose from at run time ([`Isa`]).

use std::ops::Range;

#[cfg(test)]
use gemm::Parallelism;

/// A strided view of a matrix block for `gemm`: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// The longest reduction that `gemm` (0.19) takes in one block on every machine: it cuts a
/// longer one into blocks of at least this length, whose length its source derives from
/// the machine's L1 cache and register tile (512 with a 32 KiB 8-way L1, or with AVX-512;
/// 1024 with AVX2 on a 48 KiB 12-way one, where it was seen to cut 1,536 inputs 768 + 768
/// with AVX2 and 512 × 3 with AVX-512), and adds the blocks' sums in turn.
pub const ONE_BLOCK_INPUTS: usize = 512;

/// `dst (m × n) = [dst +] scale · lhs (m × k) · rhs (k × n)` on the calling thread. A
/// reduction longer than [`ONE_BLOCK_INPUTS`] is cut here into the fewest blocks of at most
/// that many inputs, all as long but the last (`gemm`'s own cut where its blocks are 512),
/// each multiplied by `gemm` in one block and added to `dst` in turn: each output is then a
/// fused multiply-add chain over each block's inputs in order, the blocks' sums added in
/// order, whatever the machine's caches and instruction set (docs/ARCHITECTURE.md §4).
///
/// # Safety
/// Each view must cover its whole block, and `dst` must not alias `lhs` or `rhs`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
) {
    // One call where `k` is 0, which then writes zeros (or leaves `dst`, where `accumulate`).
    let blocks = reduction_blocks(k).chain((k == 0).then_some(0..0));
    for Range { start, end } in blocks {
        let len = end - start;
        // SAFETY: the caller guarantees the views cover the blocks and do not alias `dst`;
        // inputs `start..start + len` of both lie inside them.
        unsafe {
            gemm::gemm(
                m,
                n,
                len,
                dst,
                1,
                dst_rs as isize,
                accumulate || start > 0,
                lhs.ptr.wrapping_offset(start as isize * lhs.cs),
                lhs.cs,
                lhs.rs,
                rhs.ptr.wrapping_offset(start as isize * rhs.rs),
                rhs.cs,
                rhs.rs,
                1.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

/// The inputs `0..k` cut into the fewest blocks of at most [`ONE_BLOCK_INPUTS`], all as
/// long but the last: the blocks whose sums a product adds in turn (none where `k` is 0).
pub fn reduction_blocks(k: usize) -> impl Iterator<Item = Range<usize>> {
    let block = k.div_ceil(k.div_ceil(ONE_BLOCK_INPUTS).max(1)).max(1);
    (0..k).step_by(block).map(move |start| start..(start + block).min(k))
}

/// A product's output shared by the threads that fill it, each writing only its own
/// elements (a strip of columns).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);

// SAFETY: the threads write disjoint elements (the caller's contract).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer to element `offset` (a method, so that closures capture the whole wrapper).
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The instruction sets the kernels are compiled for, the widest first (x86-64's on x86-64
/// alone; `Portable` is plain Rust, which the compiler vectorises for any target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    /// The widest this machine runs (AVX2 at most in a build without the `avx512` feature).
    pub fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if cfg!(feature = "avx512")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Runs `f` inlined into a function compiled for this instruction set, so that its loops
    /// vectorise for it; the instructions differ, the operations and so the bits do not
    /// (Rust fuses no multiply and add that `f` does not ask to). `f` should be an
    /// `#[inline(always)]` closure: LLVM compiles a longer one on its own, for the baseline
    /// instruction set.
    #[inline(always)]
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` other than `Portable` comes from `Isa::widest`, so the
            // machine runs its features.
            Isa::Avx512 => unsafe { avx512(f) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2(f) },
            _ => f(),
        }
    }

    /// Every one this machine runs (each implies the narrower ones).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        let all = [Isa::Avx512, Isa::Avx2, Isa::Portable];
        #[cfg(not(target_arch = "x86_64"))]
        let all = [Isa::Portable];
        all.into_iter().skip_while(|&isa| isa != Isa::widest()).collect()
    }
}

/// Asks the memory for the cache line holding `at`, ahead of its use: a hint, which reads
/// nothing and cannot fault wherever `at` points (nothing where the target has no such
/// instruction).
#[inline(always)]
pub fn prefetch(at: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The constants of [`fast_exp`] (Cephes' `expf`), which the vector kernels of
/// `softmax.rs` share so that they give its bits.
pub mod exp_constants {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 in two parts, the first exact in few bits, for an exact `n·ln2` reduction.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5·2²³: adding and subtracting it rounds to an integer.
    pub const ROUND: f32 = 12_582_912.0;
    /// The smallest argument: 2ⁿ stays a normal number (n ≥ −126).
    pub const LOWEST: f32 = -87.0;
    /// The polynomial's coefficients, the highest degree first (Cephes: 5.0000001201e-1
    /// for the last, which is 0.5 in f32).
    pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

/// The bits of 2ⁿ for the integer n (−126 ≤ n ≤ 127) that `ROUND + n` holds in its low
/// bits `shifted` (no float-to-integer conversion, whose saturation would keep a loop from
/// vectorising): ROUND's low nine bits are zero, so `shifted << 23` is `n mod 512` in the
/// exponent field, and adding the bias wraps it to n + 127.
#[inline(always)]
pub fn power_of_two(shifted: u32) -> u32 {
    (shifted << 23).wrapping_add(127 << 23)
}

/// `exp` for f32 in a form the compiler vectorises (Cephes' `expf`: 2ⁿ·eʳ with
/// |r| ≤ ln2/2 and a degree-6 polynomial; within 2 ulp of `f32::exp` on [−87, 88]). Its
/// multiplies and adds are fused (`mul_add`: one rounding each, the same bits on every
/// instruction set; a third fewer instructions where the machine has FMA).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    use exp_constants::*;
    let x = x.clamp(LOWEST, 88.0);
    let shifted = x.mul_add(LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = POLY[1..].iter().fold(POLY[0], |p, &c| p.mul_add(r, c));
    let e = (p * r).mul_add(r, r) + 1.0;
    e * f32::from_bits(power_of_two(shifted.to_bits()))
}

/// Sum of `f(x)` over a slice in a fixed order, without storing the values: 16 lanes,
/// then the lanes and the tail in f64. Inlined, so that it vectorises for the caller's
/// instruction set.
#[inline(always)]
pub fn lane_sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 16];
    let (chunks, tail) = xs.as_chunks::<16>();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let lanes: f64 = lanes.into_iter().map(|v| v as f64).sum();
    tail.iter().fold(lanes, |sum, &v| sum + f(v) as f64)
}

/// Replaces each of `xs` by `exp(x − shift)` and returns their sum in [`lane_sum_of`]'s
/// order (two passes: in one, the compiler keeps the lanes in memory, not a register).
#[inline(always)]
pub fn exp_in_place(xs: &mut [f32], shift: f32) -> f64 {
    for v in xs.iter_mut() {
        *v = fast_exp(*v - shift);
    }
    lane_sum_of(xs, |v| v)
}

/// The largest of `xs` (−∞ for none; NaNs are passed over), taken over sixteen lanes so
/// that it vectorises: the largest value is the same whatever order the comparisons take.
#[inline(always)]
pub fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let (chunks, tail) = xs.as_chunks::<16>();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = if v > *l { v } else { *l };
        }
    }
    tail.iter().copied().fold(halved_max(lanes), f32::max)
}

/// The 16 lanes folded by `max` in halves (lane i with lane i + 8, then i + 4, …): four
/// steps of shuffles where one lane after another would be sixteen dependent ones.
#[inline(always)]
fn halved_max(lanes: [f32; 16]) -> f32 {
    let eight: [f32; 8] = std::array::from_fn(|i| lanes[i].max(lanes[i + 8]));
    let four: [f32; 4] = std::array::from_fn(|i| eight[i].max(eight[i + 4]));
    four[0].max(four[2]).max(four[1].max(four[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gemm_into`'s definition, computed directly: per output, a fused multiply-add chain
    /// from zero over each block of inputs in order, the blocks `len` long, their sums
    /// scaled and added to `dst` in order.
    fn blocked_product(
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
        len: usize,
        scale: f32,
        dst: &mut [f32],
    ) {
        for (i, row) in dst.chunks_exact_mut(n).enumerate().take(m) {
            for (j, out) in row.iter_mut().enumerate() {
                for first in (0..k).step_by(len) {
                    let block = first..(first + len).min(k);
                    let sum = block.fold(0.0f32, |acc, t| a[i * k + t].mul_add(b[t * n + j], acc));
                    *out += scale * sum;
                }
            }
        }
    }

    #[test]
    fn products_reduce_in_blocks_of_at_most_512_whatever_the_machine() {
        // (m, n, k, the blocks' length): 1536 inputs in three blocks, 576 in two of 288 (gemm
        // on its own cuts 512 + 64 for products of at most 64 × 64, and 1024 + 512 or 768 +
        // 768 where its blocks are longer), a reduction of one block, and few rows.
        for (m, n, k, len) in
            [(70, 130, 1536, 512), (70, 130, 576, 288), (30, 40, 576, 288), (70, 300, 500, 500), (3, 200, 64, 64)]
        {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.37).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 997) as f32 / 498.0 - 1.0) * 0.91).collect();
            let (lhs, rhs) =
                (View { ptr: a.as_ptr(), rs: k as isize, cs: 1 }, View { ptr: b.as_ptr(), rs: n as isize, cs: 1 });
            let start: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 * 0.25).collect();
            for (accumulate, scale) in [(false, 1.0), (true, 1.0), (false, 0.125)] {
                let mut got = start.clone();
                // SAFETY: `a` is m × k, `b` k × n and `got` m × n, all row-major.
                unsafe { gemm_into(m, n, k, got.as_mut_ptr(), n, accumulate, lhs, rhs, scale) };
                let mut want = if accumulate { start.clone() } else { vec![0.0; m * n] };
                blocked_product(&a, &b, (m, n, k), len, scale, &mut want);
                let differ = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                assert_eq!(differ, 0, "{m} × {k} by {k} × {n}, accumulate {accumulate}, scale {scale}");
            }
        }
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
    fn lane_max_is_the_largest_wherever_it_lies_and_passes_over_nans() {
        for len in [0usize, 1, 15, 16, 17, 40, 513] {
            for at in (0..len).step_by(7) {
                let mut xs: Vec<f32> = (0..len).map(|i| -((i * 37 % 101) as f32)).collect();
                xs[at] = 5.0;
                if len > 1 {
                    xs[(at + 1) % len] = f32::NAN;
                }
                let max = Isa::available().into_iter().map(|isa| isa.run(|| lane_max(&xs)));
                assert!(max.into_iter().all(|m| m == 5.0), "{len} values, the largest at {at}");
            }
            assert_eq!(lane_max(&vec![f32::NEG_INFINITY; len]), f32::NEG_INFINITY);
        }
    }

    #[test]
    fn exp_in_place_stores_the_exponentials_and_returns_their_sum() {
        for len in [0usize, 3, 16, 37, 512] {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
            let mut got = xs.clone();
            let sum = exp_in_place(&mut got, 2.0);
            let want: Vec<f64> = xs.iter().map(|&x| (x as f64 - 2.0).exp()).collect();
            // fast_exp is within 2 ulp of exp; the f32 lanes add a rounding per term.
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 3e-7 * w, "{g} against {w}");
            }
            let total: f64 = want.iter().sum();
            assert!((sum - total).abs() <= 1e-6 * total.max(1e-30), "{len}: {sum} against {total}");
            assert_eq!(sum, lane_sum_of(&got, |v| v), "{len}: the sum in lane_sum_of's order");
        }
    }
}
