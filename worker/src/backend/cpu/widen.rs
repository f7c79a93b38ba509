//! A stored weight's rows widened into the products' panels (docs/ARCHITECTURE.md §13):
//! [`widen_transposed`], which lays out a weight kept widened at load, and
//! [`with_widened_panels`], a thread's strip of a weight kept as stored, widened when a
//! product takes it. Rows are widened a few at a time ([`StoredMatrix::widen_row`], the
//! values the widened weight holds) and put transposed, each input feature's values side
//! by side, with a register transpose on x86-64: moving values changes no bit.

use std::ops::Range;

use super::kernels::Isa;
use crate::weights::StoredMatrix;

/// Rows that [`widen_transposed`] widens together before putting them transposed: an input
/// feature's 16 values side by side fill a 64-byte cache line (written one row at a time,
/// each of a row's values went to a line of its own), and an AVX-512 register.
const TRANSPOSED_ROWS: usize = 16;

thread_local! {
    /// A thread's buffer for the strips of a stored weight it widens.
    static STRIP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on the output features `cols` of `w` widened into panels of `width` (the
/// strip's own, from `cols.start`): feature `cols.start + j`'s input `i` at
/// `[(j / width)·k·width + i·width + j % width]`, `k` the weight's inputs.
pub fn with_widened_panels<R>(
    w: &StoredMatrix<'_>,
    cols: Range<usize>,
    width: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    STRIP.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let panel = w.cols() * width;
        buffer.resize(cols.len().div_ceil(width) * panel, 0.0);
        for (p, out) in buffer.chunks_exact_mut(panel.max(1)).enumerate() {
            let first = cols.start + p * width;
            // SAFETY: `out` is this thread's, `k` inputs of `width ≥` the panel's columns.
            unsafe { widen_transposed(w, first..(first + width).min(cols.end), out.as_mut_ptr(), width) };
        }
        f(&buffer)
    })
}

/// Rows `rows` of `w` widened and transposed into `out`: the value of input feature `i` of
/// row `rows.start + j` at `out + i·stride + j`. Rows are widened [`TRANSPOSED_ROWS`] at a
/// time and written input feature by input feature, so that each feature's values land
/// side by side (a bf16 model's ctx-512 run with its weights stored spent 3.7% of its time
/// on this one value at a time).
///
/// # Safety
/// `out + i·stride + j` must be valid for writes for every `i < w.cols()` and
/// `j < rows.len()`, and no other thread may touch those values meanwhile.
pub unsafe fn widen_transposed(w: &StoredMatrix<'_>, rows: Range<usize>, out: *mut f32, stride: usize) {
    let (isa, cols) = (Isa::widest(), w.cols());
    let (mut block, mut scratch) = (vec![0.0f32; TRANSPOSED_ROWS * cols], Vec::new());
    for first in rows.clone().step_by(TRANSPOSED_ROWS) {
        let count = TRANSPOSED_ROWS.min(rows.end - first);
        for (j, row) in block.chunks_exact_mut(cols.max(1)).take(count).enumerate() {
            w.widen_row(first + j, row, &mut scratch);
        }
        // SAFETY: the machine runs `Isa::widest`; the caller's contract, for rows
        // `first..first + count`.
        unsafe { transpose(isa, &block[..count * cols], count, out.add(first - rows.start), stride) };
    }
}

/// Puts `rows` rows of `block` (row-major, `block.len() / rows` values each) transposed
/// at `out`: row `j`'s value `i` at `out + i·stride + j`; with `isa`'s register transposes
/// where the rows and features fill them, one value at a time for the rest.
///
/// # Safety
/// The machine must run `isa`; and as [`widen_transposed`]'s, for `rows` rows of the
/// block's columns.
unsafe fn transpose(isa: Isa, block: &[f32], rows: usize, out: *mut f32, stride: usize) {
    let cols = block.len() / rows.max(1);
    // A register transpose: its tile's rows and features, and the function that writes the
    // tile at `from` (rows `cols` apart) transposed at `to` (rows `stride` apart).
    type Tile = unsafe fn(*const f32, usize, *mut f32, usize);
    let tile: Option<(usize, usize, Tile)> = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some((16, 16, x86::tile_avx512)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some((8, 8, x86::tile_avx2)),
        _ => None,
    };
    let (whole_rows, whole_cols) = tile.map_or((0, 0), |(r, c, _)| (rows / r * r, cols / c * c));
    if let Some((tile_rows, tile_cols, tile)) = tile {
        for j in (0..whole_rows).step_by(tile_rows) {
            for i in (0..whole_cols).step_by(tile_cols) {
                // SAFETY: the machine runs `isa` (the caller's contract); the tile's rows lie in
                // `block`, `cols` apart, and its features of `tile_rows` rows in the caller's
                // `out`, `stride` apart.
                unsafe { tile(block[j * cols + i..].as_ptr(), cols, out.add(i * stride + j), stride) };
            }
        }
    }
    // What the tiles left: the features past the whole tiles, then the rows past them.
    let rest = (0..whole_rows).flat_map(|j| (whole_cols..cols).map(move |i| (j, i)));
    for (j, i) in rest.chain((whole_rows..rows).flat_map(|j| (0..cols).map(move |i| (j, i)))) {
        // SAFETY: the caller's contract, for feature `i` of row `j`.
        unsafe { *out.add(i * stride + j) = block[j * cols + i] };
    }
}

/// The register transposes of x86-64.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The 16 × 16 tile at `from` (rows `cols` apart) transposed to `to` (rows `stride` apart).
    ///
    /// # Safety
    /// The machine must run AVX-512F; both tiles must lie in memory the caller may read
    /// and write.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512(from: *const f32, cols: usize, to: *mut f32, stride: usize) {
        // SAFETY: row r of the tile is 16 values at `from + r·cols`.
        let r: [__m512; 16] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(from.add(r * cols)) });
        // Pairs of rows interleaved within each 128-bit lane: t[2k] holds rows 2k and 2k + 1's
        // values 4l and 4l + 1 of lane l, t[2k + 1] their values 4l + 2 and 4l + 3.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Quads of rows: u[4k + c] holds, in lane l, value 4l + c of rows 4k..4k + 4.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (k, c) = (i / 4, i % 4);
            let (a, b) = (_mm512_castps_pd(t[4 * k + c / 2]), _mm512_castps_pd(t[4 * k + c / 2 + 2]));
            _mm512_castpd_ps(if c % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        // Value 4l + c of all 16 rows: lane l of u[c], u[4 + c], u[8 + c] and u[12 + c].
        for c in 0..4 {
            let (even_low, odd_low) =
                (_mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]), _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]));
            let (even_high, odd_high) =
                (_mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]), _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]));
            let lanes = [
                _mm512_shuffle_f32x4::<0x88>(even_low, even_high),
                _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high),
                _mm512_shuffle_f32x4::<0xdd>(even_low, even_high),
                _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high),
            ];
            for (l, v) in lanes.into_iter().enumerate() {
                // SAFETY: feature 4l + c of the tile is 16 values at `to + (4l + c)·stride`.
                unsafe { _mm512_storeu_ps(to.add((4 * l + c) * stride), v) };
            }
        }
    }

    /// The 8 × 8 tile at `from` (rows `cols` apart) transposed to `to` (rows `stride` apart).
    ///
    /// # Safety
    /// The machine must run AVX; both tiles must lie in memory the caller may read and write.
    #[target_feature(enable = "avx")]
    pub unsafe fn tile_avx2(from: *const f32, cols: usize, to: *mut f32, stride: usize) {
        // SAFETY: row r of the tile is 8 values at `from + r·cols`.
        let r: [__m256; 8] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(from.add(r * cols)) });
        // As in `tile_avx512`, within each 128-bit half.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4k + c] holds, in half h, value 4h + c of rows 4k..4k + 4.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (k, c) = (i / 4, i % 4);
            let (a, b) = (t[4 * k + c / 2], t[4 * k + c / 2 + 2]);
            if c % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xee>(a, b)
            }
        });
        for c in 0..4 {
            let (low, high) =
                (_mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]), _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]));
            // SAFETY: features c and 4 + c of the tile are 8 values at `to + c·stride` and
            // `to + (4 + c)·stride`.
            unsafe {
                _mm256_storeu_ps(to.add(c * stride), low);
                _mm256_storeu_ps(to.add((4 + c) * stride), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::weights::quant::GgmlType;

    #[test]
    fn every_instruction_set_transposes_alike() {
        // Rows and features that fill some tiles and leave some over, on every side.
        for (rows, cols) in [(16, 48), (16, 37), (13, 40), (8, 16), (3, 5), (16, 0)] {
            let block: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let stride = rows + 3;
            for isa in Isa::available() {
                let mut out = vec![-1.0f32; cols * stride];
                // SAFETY: the machine runs `isa` (`Isa::available`); feature i of row j at
                // i·stride + j < cols·stride.
                unsafe { transpose(isa, &block, rows, out.as_mut_ptr(), stride) };
                for i in 0..cols {
                    let want: Vec<f32> = (0..rows).map(|j| block[j * cols + i]).chain([-1.0; 3]).collect();
                    assert_eq!(out[i * stride..(i + 1) * stride], want, "{isa:?}, {rows} × {cols}, feature {i}");
                }
            }
        }
    }

    #[test]
    fn rows_widen_transposed_from_each_part() {
        // 20 rows of bf16 over 24 columns (a whole AVX-512 tile of rows and some over),
        // then one Q8_0 row of 32 values of which the matrix holds columns 3..27.
        let values = |r: usize| (0..24).map(move |i| (r * 24 + i) as f32 - 100.0);
        let bytes: Vec<u8> = (0..20).flat_map(values).flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect();
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| i as u8));
        let mut m = StoredMatrix::new(24);
        m.push(GgmlType::Bf16, 20, 0, bytes);
        m.push(GgmlType::Q8_0, 1, 3, q8);
        let widened = m.widen();
        let (rows, stride) = (2..21, 22);
        let mut t = vec![0.0f32; 24 * stride];
        // SAFETY: input feature i's 19 values at 22i.., inside `t`.
        unsafe { widen_transposed(&m, rows.clone(), t.as_mut_ptr(), stride) };
        for i in 0..24 {
            for (j, r) in rows.clone().enumerate() {
                assert_eq!(t[i * stride + j], widened.row(r)[i], "feature {i} of row {r}");
            }
        }
        // The Q8_0 row's feature 5 is its block's value 8: 0.5 · 8.
        assert_eq!(t[5 * stride + 18], 4.0);
    }
}
