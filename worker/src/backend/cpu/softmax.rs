//! The online softmax of a tile of attention scores (docs/ARCHITECTURE.md §4): each row's
//! visible scores replaced by `exp(s − max)` under its running maximum, their sum folded
//! into its running sum ([`RowState`]), and the factor that rescales what the row has
//! gathered so far. Its two loops over a row, the maximum and then one pass that takes,
//! stores and adds up each exponential, are written with AVX-512 and AVX2 intrinsics and in
//! plain Rust for other machines; all three do the same operations in the same order
//! ([`fast_exp`]'s, sixteen f32 lanes of sums), so they give the same bits.

use std::ops::Range;

use super::kernels::{fast_exp, lane_max, Isa};

/// A row's softmax over the tiles it has seen so far: the largest score and the sum of
/// `exp(s − max)` in eight f64 lanes (lane `j` gathers the tiles' f32 lanes `j` and
/// `j + 8`), which are added once, at the end ([`RowState::total`]).
#[derive(Clone, Copy, Debug)]
pub struct RowState {
    max: f32,
    sum: [f64; 8],
}

impl RowState {
    /// A row that has seen no key.
    pub const EMPTY: RowState = RowState { max: f32::NEG_INFINITY, sum: [0.0; 8] };

    /// The sum of the row's exponentials: its lanes added in order.
    pub fn total(&self) -> f64 {
        self.sum.iter().sum()
    }

    /// Adds a tile's sixteen lanes of exponentials after rescaling the sum by `factor`.
    fn fold(&mut self, lanes: [f32; 16], factor: f32) {
        for (j, sum) in self.sum.iter_mut().enumerate() {
            let tile = lanes[j] as f64 + lanes[j + 8] as f64;
            let kept = if factor == 1.0 { *sum } else { *sum * factor as f64 };
            *sum = kept + tile;
        }
    }
}

/// A tile's scores (rows of `keys`, `ld` apart), row `i` seeing keys `visible[i]` of it,
/// folded into the rows' states; row `i`'s factor goes to `factors[i]`.
pub struct Tile<'a> {
    pub scores: &'a mut [f32],
    pub ld: usize,
    pub keys: usize,
    pub visible: &'a [Range<usize>],
    /// Scores are first capped to `cap·tanh(s/cap)` where given.
    pub softcap: Option<f32>,
    pub states: &'a mut [RowState],
    pub factors: &'a mut [f32],
}

/// Folds each row of `tile` into its running softmax with kernels for `isa`: zeroes the
/// scores the row does not see, replaces the others by `exp(s − max)` under the row's new
/// maximum, and returns through `factors` what rescales the row's gathered values:
/// `exp(old max − new max)`, 1 where the maximum stays (or the tile shows the row no key),
/// 0 for the row's first keys.
pub fn tile_softmax(isa: Isa, tile: Tile<'_>) {
    let rows = tile.scores.chunks_exact_mut(tile.ld).zip(tile.visible);
    for ((row, visible), (state, factor)) in rows.zip(tile.states.iter_mut().zip(tile.factors.iter_mut())) {
        *factor = fold_row(isa, &mut row[..tile.keys], visible.clone(), tile.softcap, state);
    }
}

/// One row of [`tile_softmax`].
fn fold_row(isa: Isa, row: &mut [f32], visible: Range<usize>, softcap: Option<f32>, state: &mut RowState) -> f32 {
    if visible.is_empty() {
        row.fill(0.0);
        return 1.0;
    }
    row[..visible.start].fill(0.0);
    let (live, masked) = row[visible.start..].split_at_mut(visible.len());
    masked.fill(0.0);
    if let Some(cap) = softcap {
        for v in live.iter_mut() {
            *v = cap * (*v / cap).tanh();
        }
    }
    let max = max_of(isa, live).max(state.max);
    let factor = match state.max {
        f32::NEG_INFINITY => 0.0,
        old if old == max => 1.0,
        old => fast_exp(old - max),
    };
    state.fold(exp_lanes(isa, live, max), factor);
    state.max = max;
    factor
}

/// The largest of `xs`, NaNs passed over (−∞ for none): exact, so any order of
/// comparisons gives it.
fn max_of(isa: Isa, xs: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the machine runs `isa`'s features (`Isa::widest`).
        Isa::Avx512 => unsafe { x86::max_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::max_avx2(xs) },
        _ => lane_max(xs),
    }
}

/// Replaces each of `xs` by `fast_exp(x − shift)`, where no `x` exceeds `shift`, and
/// returns the sums of the exponentials in sixteen lanes: lane `l` adds elements `l`,
/// `l + 16`, `l + 32`… in order, the last ones (fewer than sixteen) included.
fn exp_lanes(isa: Isa, xs: &mut [f32], shift: f32) -> [f32; 16] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `max_of`.
        Isa::Avx512 => unsafe { x86::exp_lanes_avx512(xs, shift) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::exp_lanes_avx2(xs, shift) },
        _ => exp_lanes_portable(xs, shift),
    }
}

/// [`exp_lanes`] in plain Rust: the definition the vector kernels follow.
fn exp_lanes_portable(xs: &mut [f32], shift: f32) -> [f32; 16] {
    let mut lanes = [0.0f32; 16];
    for chunk in xs.chunks_mut(16) {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *x = fast_exp(*x - shift);
            *lane += *x;
        }
    }
    lanes
}

/// The x86-64 kernels: `fast_exp`'s arithmetic without its upper clamp, which changes
/// nothing for the arguments they get (`x − shift ≤ 0`); the lower clamp keeps a NaN
/// (`max(LOWEST, x)` returns its second operand when either is NaN), as `clamp` does. 2ⁿ
/// is built from the integer's bits (`power_of_two`) on AVX-512 too: with `vscalefps` a
/// tile took about a third longer here (one build after the other, not alternated).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::kernels::exp_constants::*;

    #[target_feature(enable = "avx512f,fma")]
    fn exp_avx512(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_set1_ps(LOWEST), x);
        let round = _mm512_set1_ps(ROUND);
        let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), round);
        let n = _mm512_sub_ps(shifted, round);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x));
        let p = POLY[1..].iter().fold(_mm512_set1_ps(POLY[0]), |p, &c| _mm512_fmadd_ps(p, r, _mm512_set1_ps(c)));
        let e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
        // `power_of_two`'s two operations.
        let power =
            _mm512_add_epi32(_mm512_slli_epi32::<23>(_mm512_castps_si512(shifted)), _mm512_set1_epi32(127 << 23));
        _mm512_mul_ps(e, _mm512_castsi512_ps(power))
    }

    /// The mask of the first `len` (< 16) lanes.
    fn first_lanes(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    /// One vector's exponentials at a time: on an AMD EPYC Zen 4 (AVX-512), two at a time,
    /// as [`exp_lanes_avx2`] takes them, ran the full window's attention on one thread in
    /// 0.989 of the time (median of 8 alternating pairs, 0.96–1.02), the exponentials'
    /// share of it 8.6% against 8.8%: no gain above the noise.
    ///
    /// # Safety
    /// The machine must run AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn exp_lanes_avx512(xs: &mut [f32], shift: f32) -> [f32; 16] {
        let shift = _mm512_set1_ps(shift);
        let mut lanes = _mm512_setzero_ps();
        let (chunks, tail) = xs.as_chunks_mut::<16>();
        for chunk in chunks {
            // SAFETY: a chunk is 16 values.
            let e = exp_avx512(_mm512_sub_ps(unsafe { _mm512_loadu_ps(chunk.as_ptr()) }, shift));
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), e) };
            lanes = _mm512_add_ps(lanes, e);
        }
        if !tail.is_empty() {
            let k = first_lanes(tail.len());
            // SAFETY: the mask covers the tail's values only.
            let e = exp_avx512(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(k, tail.as_ptr()) }, shift));
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(tail.as_mut_ptr(), k, e) };
            lanes = _mm512_mask_add_ps(lanes, k, lanes, e);
        }
        let mut out = [0.0f32; 16];
        // SAFETY: `out` is 16 values.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), lanes) };
        out
    }

    /// # Safety
    /// The machine must run AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max_avx512(xs: &[f32]) -> f32 {
        // `max(v, m)` keeps `m` where `v` is NaN; four chains, for the latency.
        let mut m = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let (quads, rest) = xs.as_chunks::<64>();
        for quad in quads {
            for (i, m) in m.iter_mut().enumerate() {
                // SAFETY: a quad is 64 values.
                *m = _mm512_max_ps(unsafe { _mm512_loadu_ps(quad.as_ptr().add(16 * i)) }, *m);
            }
        }
        let (chunks, tail) = rest.as_chunks::<16>();
        for chunk in chunks {
            // SAFETY: a chunk is 16 values.
            m[0] = _mm512_max_ps(unsafe { _mm512_loadu_ps(chunk.as_ptr()) }, m[0]);
        }
        if !tail.is_empty() {
            // SAFETY: the mask covers the tail's values only; the other lanes keep `m[0]`.
            let v = unsafe { _mm512_mask_loadu_ps(m[0], first_lanes(tail.len()), tail.as_ptr()) };
            m[0] = _mm512_max_ps(v, m[0]);
        }
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])))
    }

    /// `N` vectors' exponentials, each step taken for all of them before the next, so that
    /// their chains of dependent operations overlap: [`exp_lanes_avx2`] takes two at a time
    /// (on an AMD EPYC Zen 3, AVX2, one vector at a time was latency-bound at about 1.5
    /// cycles a value; with two, the full window's attention on one thread ran 1.02–1.04
    /// times as fast, medians of 8 and 10 alternating pairs, and the exponentials' share
    /// of its time fell from 13.0% to 11.3%).
    #[target_feature(enable = "avx2,fma")]
    fn exp_avx2<const N: usize>(x: [__m256; N]) -> [__m256; N] {
        let x = x.map(|x| _mm256_max_ps(_mm256_set1_ps(LOWEST), x));
        let round = _mm256_set1_ps(ROUND);
        let shifted = x.map(|x| _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), round));
        let n = shifted.map(|s| _mm256_sub_ps(s, round));
        let r: [__m256; N] = std::array::from_fn(|i| {
            _mm256_fmadd_ps(n[i], _mm256_set1_ps(-LN2_LO), _mm256_fmadd_ps(n[i], _mm256_set1_ps(-LN2_HI), x[i]))
        });
        let mut p = [_mm256_set1_ps(POLY[0]); N];
        for &c in &POLY[1..] {
            p = std::array::from_fn(|i| _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(c)));
        }
        let e: [__m256; N] = std::array::from_fn(|i| {
            _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p[i], r[i]), r[i], r[i]), _mm256_set1_ps(1.0))
        });
        // `power_of_two`'s two operations.
        std::array::from_fn(|i| {
            let power = _mm256_add_epi32(
                _mm256_slli_epi32::<23>(_mm256_castps_si256(shifted[i])),
                _mm256_set1_epi32(127 << 23),
            );
            _mm256_mul_ps(e[i], _mm256_castsi256_ps(power))
        })
    }

    /// The mask of the first `len` (≤ 8) of eight lanes.
    #[target_feature(enable = "avx2")]
    fn first_of_eight(len: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// # Safety
    /// The machine must run AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_lanes_avx2(xs: &mut [f32], shift: f32) -> [f32; 16] {
        let shift = _mm256_set1_ps(shift);
        // Lanes 0–7 and 8–15.
        let mut lanes = [_mm256_setzero_ps(); 2];
        let (chunks, tail) = xs.as_chunks_mut::<16>();
        for chunk in chunks {
            let first = chunk.as_mut_ptr();
            // SAFETY: a chunk is 16 values, two halves of 8.
            let at = [first, unsafe { first.add(8) }];
            // SAFETY: as above.
            let e = exp_avx2(at.map(|at| _mm256_sub_ps(unsafe { _mm256_loadu_ps(at) }, shift)));
            for ((lanes, at), e) in lanes.iter_mut().zip(at).zip(e) {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(at, e) };
                *lanes = _mm256_add_ps(*lanes, e);
            }
        }
        for (half, lanes) in lanes.iter_mut().enumerate() {
            let len = tail.len().saturating_sub(8 * half).min(8);
            if len == 0 {
                break;
            }
            let mask = first_of_eight(len);
            let at = tail[8 * half..].as_mut_ptr();
            // SAFETY: the mask covers the tail's values only.
            let [e] = exp_avx2([_mm256_sub_ps(unsafe { _mm256_maskload_ps(at, mask) }, shift)]);
            // SAFETY: as above.
            unsafe { _mm256_maskstore_ps(at, mask, e) };
            // The other lanes add +0, which leaves their sums (≥ +0 or NaN) as they are.
            *lanes = _mm256_add_ps(*lanes, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
        }
        let mut out = [0.0f32; 16];
        // SAFETY: `out` is 16 values.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), lanes[0]);
            _mm256_storeu_ps(out[8..].as_mut_ptr(), lanes[1]);
        }
        out
    }

    /// # Safety
    /// The machine must run AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max_avx2(xs: &[f32]) -> f32 {
        // `max(v, m)` keeps `m` where `v` is NaN; four chains, for the latency.
        let mut m = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let (quads, rest) = xs.as_chunks::<32>();
        for quad in quads {
            for (i, m) in m.iter_mut().enumerate() {
                // SAFETY: a quad is 32 values.
                *m = _mm256_max_ps(unsafe { _mm256_loadu_ps(quad.as_ptr().add(8 * i)) }, *m);
            }
        }
        let (chunks, tail) = rest.as_chunks::<8>();
        for chunk in chunks {
            // SAFETY: a chunk is 8 values.
            m[0] = _mm256_max_ps(unsafe { _mm256_loadu_ps(chunk.as_ptr()) }, m[0]);
        }
        if !tail.is_empty() {
            let mask = first_of_eight(tail.len());
            // SAFETY: the mask covers the tail's values only; the other lanes keep `m[0]`.
            let v =
                _mm256_blendv_ps(m[0], unsafe { _mm256_maskload_ps(tail.as_ptr(), mask) }, _mm256_castsi256_ps(mask));
            m[0] = _mm256_max_ps(v, m[0]);
        }
        let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores of every kind a row meets: a spread of values, ones far below the maximum
    /// (past `exp`'s lowest argument), ties, and signed zeros.
    fn scores(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) >> 8;
                match h % 11 {
                    0 => -200.0,
                    1 => 0.0,
                    2 => -0.0,
                    3 => 3.0,
                    _ => (h % 2000) as f32 / 100.0 - 12.0,
                }
            })
            .collect()
    }

    /// Tiles of `keys` scores for each of several rows, the visible ranges cut at every
    /// offset kind, folded one after another: every state, factor and stored exponential.
    fn fold_tiles(isa: Isa, keys: usize, tiles: usize, softcap: Option<f32>) -> (Vec<f32>, Vec<f32>, Vec<[f64; 9]>) {
        let visible: Vec<Range<usize>> =
            [0..keys, 0..0, 1..keys, 0..keys.min(5), keys / 3..keys - keys / 4, keys.saturating_sub(17)..keys]
                .into_iter()
                .map(|r| r.start.min(r.end)..r.end)
                .collect();
        let rows = visible.len();
        let mut states = vec![RowState::EMPTY; rows];
        let (mut all_scores, mut all_factors) = (Vec::new(), Vec::new());
        for t in 0..tiles {
            let ld = keys + 3;
            let mut tile_scores: Vec<f32> = (0..rows).flat_map(|r| scores(ld, (t * rows + r) as u32)).collect();
            let mut factors = vec![f32::NAN; rows];
            let tile = Tile {
                scores: &mut tile_scores,
                ld,
                keys,
                visible: &visible,
                softcap,
                states: &mut states,
                factors: &mut factors,
            };
            tile_softmax(isa, tile);
            all_scores.extend(tile_scores);
            all_factors.extend(factors);
        }
        let states =
            states.iter().map(|s| std::array::from_fn(|i| if i == 8 { s.max as f64 } else { s.sum[i] })).collect();
        (all_scores, all_factors, states)
    }

    #[test]
    fn every_instruction_set_gives_the_portable_bits() {
        for keys in [1usize, 7, 8, 9, 15, 16, 17, 40, 64, 100, 512] {
            for softcap in [None, Some(30.0)] {
                let want = fold_tiles(Isa::Portable, keys, 3, softcap);
                for isa in Isa::available() {
                    let got = fold_tiles(isa, keys, 3, softcap);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got.0), bits(&want.0), "{isa:?}, {keys} keys: exponentials");
                    assert_eq!(bits(&got.1), bits(&want.1), "{isa:?}, {keys} keys: factors");
                    let state_bits = |s: &[[f64; 9]]| s.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(state_bits(&got.2), state_bits(&want.2), "{isa:?}, {keys} keys: states");
                }
            }
        }
    }

    #[test]
    fn folded_tiles_give_the_softmax_of_the_whole_row() {
        // One row of 1,100 scores in tiles of 512, 512 and 76, its maximum growing in the
        // second: the exponentials rescaled by the later factors, over the total, against
        // the softmax in f64.
        let mut all = scores(1100, 9);
        all[600] = 9.0; // above every score of the first tile
        for isa in Isa::available() {
            let mut state = RowState::EMPTY;
            let mut probabilities: Vec<f64> = Vec::new();
            for tile in all.chunks(512) {
                let mut row = tile.to_vec();
                let factor = fold_row(isa, &mut row, 0..tile.len(), None, &mut state);
                probabilities.iter_mut().for_each(|p| *p *= factor as f64);
                probabilities.extend(row.iter().map(|&e| e as f64));
            }
            let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let total: f64 = all.iter().map(|&s| (s as f64 - max).exp()).sum();
            for (p, &s) in probabilities.iter().zip(&all) {
                let want = (s as f64 - max).exp() / total;
                // Relative error: s − max rounded to f32 (half an ulp of |s − max| < 32 is
                // 1.9e-6 of its exp), fast_exp's 2 ulp, the factor's rounding and f32
                // lanes of ~35 terms: under 4e-6.
                let got = p / state.total();
                assert!((got - want).abs() <= 4e-6 * want + 1e-30, "{isa:?}: score {s}: {got} against {want}");
            }
        }
    }

    #[test]
    fn a_nan_score_is_kept_and_the_maximum_passes_over_it() {
        for isa in Isa::available() {
            let mut row: Vec<f32> = (0..40).map(|i| i as f32 / 10.0).collect();
            row[21] = f32::NAN;
            let mut state = RowState::EMPTY;
            fold_row(isa, &mut row, 0..40, None, &mut state);
            assert_eq!(state.max, 3.9, "{isa:?}");
            assert!(row[21].is_nan() && state.total().is_nan(), "{isa:?}");
            assert_eq!(row[39], 1.0, "{isa:?}");
        }
    }
}
