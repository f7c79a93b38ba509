//! GGML tensor types and their widening to f32: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS, bit for bit as ggml's
//! reference `dequantize_row_*`; also ggml's names for every type code, read or not.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A GGML tensor type that evalmesh can widen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Iq4Nl,
    Iq4Xs,
}

impl GgmlType {
    /// Every type evalmesh reads, in order of type code.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
        GgmlType::Bf16,
    ];

    /// Maps GGUF's type code; `None` for a code evalmesh does not read.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            20 => GgmlType::Iq4Nl,
            23 => GgmlType::Iq4Xs,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// GGUF's type code.
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Iq4Nl => 20,
            GgmlType::Iq4Xs => 23,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Iq4Nl => "IQ4_NL",
            GgmlType::Iq4Xs => "IQ4_XS",
        }
    }

    /// (elements, bytes) of one block.
    pub const fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Iq4Nl => (32, 18),
            GgmlType::Iq4Xs => (256, 136),
        }
    }

    /// Bytes that `elements` values occupy, or `None` when they do not fill whole blocks.
    pub fn byte_size(self, elements: u64) -> Option<u64> {
        let (block_elems, block_bytes) = self.block();
        elements.is_multiple_of(block_elems as u64).then(|| elements / block_elems as u64 * block_bytes as u64)
    }

    /// How many of the values in `src` are NaN or infinite, read from their bits (an
    /// exponent of all ones), where the type is a float of one value a block; `None` for a
    /// block type, whose values must be widened to tell.
    pub fn non_finite_floats(self, src: &[u8]) -> Option<usize> {
        let all_ones = |bits: u32, exponent: u32| bits & exponent == exponent;
        match self {
            GgmlType::F32 => {
                Some(src.as_chunks::<4>().0.iter().filter(|b| all_ones(u32::from_le_bytes(**b), 0x7f80_0000)).count())
            }
            GgmlType::F16 | GgmlType::Bf16 => {
                let exponent = if self == GgmlType::F16 { 0x7c00 } else { 0x7f80 };
                let halves = src.as_chunks::<2>().0.iter();
                Some(halves.filter(|b| all_ones(u16::from_le_bytes(**b) as u32, exponent)).count())
            }
            _ => None,
        }
    }

    /// Widens `src` (whole blocks) into `dst`, whose length is the element count.
    pub fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / self.block().1 * self.block().0, dst.len());
        // Each block of type `$t` through `$widen`, at sizes the compiler knows, so that it
        // drops the bounds checks and vectorises the loops; the float types value by value
        // over arrays of their bytes, which it vectorises best. (Over blocks whose sizes it
        // did not know, one value at a time, the float types took about 4% of a ctx-512 run
        // of a bf16 model with its weights stored, and Q4_1 2.3% of the test model's.)
        macro_rules! blocks {
            ($t:ident, $widen:expr) => {
                each_block::<{ GgmlType::$t.block().1 }, { GgmlType::$t.block().0 }>(src, dst, $widen)
            };
        }
        match self {
            GgmlType::F32 => dst.iter_mut().zip(src.as_chunks::<4>().0).for_each(|(y, b)| *y = f32::from_le_bytes(*b)),
            GgmlType::F16 => widen_halves(src, dst),
            GgmlType::Bf16 => {
                dst.iter_mut().zip(src.as_chunks::<2>().0).for_each(|(y, b)| *y = bf16::from_le_bytes(*b).to_f32())
            }
            GgmlType::Q8_0 => blocks!(Q8_0, q8_0),
            GgmlType::Q4_0 => blocks!(Q4_0, q4_0),
            GgmlType::Q4_1 => blocks!(Q4_1, q4_1),
            GgmlType::Q5_0 => blocks!(Q5_0, q5_0),
            GgmlType::Q5_1 => blocks!(Q5_1, q5_1),
            GgmlType::Q2K => blocks!(Q2K, q2_k),
            GgmlType::Q3K => blocks!(Q3K, q3_k),
            GgmlType::Q4K => blocks!(Q4K, q4_k),
            GgmlType::Q5K => blocks!(Q5K, q5_k),
            GgmlType::Q6K => blocks!(Q6K, q6_k),
            GgmlType::Iq4Nl => blocks!(Iq4Nl, iq4_nl),
            GgmlType::Iq4Xs => blocks!(Iq4Xs, iq4_xs),
        }
    }
}

/// `widen` on each block of `src` (`B` bytes) and its `E` values in `dst`.
#[inline(always)]
fn each_block<const B: usize, const E: usize>(src: &[u8], dst: &mut [f32], widen: impl Fn(&[u8], &mut [f32])) {
    for (b, y) in src.as_chunks::<B>().0.iter().zip(dst.as_chunks_mut::<E>().0) {
        widen(b, y);
    }
}

/// f16 values (little-endian bytes) widened into `dst` a run at a time by `half`'s slice
/// conversion, F16C's where the machine has it, as its value-by-value one is: exact either way.
fn widen_halves(src: &[u8], dst: &mut [f32]) {
    const RUN: usize = 256;
    let mut halves = [f16::ZERO; RUN];
    for (bytes, out) in src.as_chunks::<2>().0.chunks(RUN).zip(dst.chunks_mut(RUN)) {
        let halves = &mut halves[..out.len()];
        halves.iter_mut().zip(bytes).for_each(|(h, b)| *h = f16::from_le_bytes(*b));
        halves.convert_to_f32_slice(out);
    }
}

/// ggml's name for a tensor type code (as `enum ggml_type` in ggml.h, in GGUF's upper
/// case), whether evalmesh reads it or not; `None` for a code ggml has removed or never used.
pub fn type_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        _ => return None,
    })
}

/// Why a tensor of type `code` cannot be read, on one line: the type by its ggml name
/// (or that ggml has none for the code) and the types evalmesh does read.
pub fn unsupported_type(code: u32) -> String {
    let supported = GgmlType::ALL.map(GgmlType::name).join(", ");
    match type_name(code) {
        Some(name) => format!("type {name} (code {code}), which evalmesh does not read; supported: {supported}"),
        None => format!("unknown or unsupported type code {code} (ggml has no type with it); supported: {supported}"),
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0: f16 scale d, 32 × i8; y = d·q.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// Q4_0: f16 scale d, 16 bytes of nibbles; low nibbles are elements 0..16, high 16..32; y = d·(q − 8).
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 scale d and minimum m, 16 bytes of nibbles; y = d·q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 32 five-bit values of a Q5_0 or Q5_1 block: four low bits from the nibbles in `qs`
/// (low nibbles are elements 0..16, high 16..32), the fifth from bit i of the little-endian
/// u32 `qh` for element i.
fn five_bit_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|i| {
        let nibble = if i < 16 { qs[i] & 0x0F } else { qs[i - 16] >> 4 };
        nibble | ((((qh >> i) & 1) as u8) << 4)
    })
}

/// Q5_0: f16 scale d, 4 bytes of fifth bits, 16 bytes of nibbles; y = d·(q − 16).
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(five_bit_values(&b[2..6], &b[6..22])) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

/// Q5_1: f16 scale d and minimum m, 4 bytes of fifth bits, 16 bytes of nibbles; y = d·q + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (y, q) in y.iter_mut().zip(five_bit_values(&b[4..8], &b[8..24])) {
        *y = q as f32 * d + m;
    }
}

/// Where Q2_K's and Q3_K's 16 sub-blocks of 16 keep their 2-bit values: sub-block `sub` is the
/// bits at `shift` of 16 bytes from `start` in the 64 value bytes. Each 32-byte half holds
/// 128 elements; within it sub-blocks 2j and 2j+1 take shift 2j of bytes 0..16 and 16..32.
fn two_bit_sub_block(sub: usize) -> (usize, u32) {
    let (half, pair) = (sub / 8, sub % 8);
    (32 * half + 16 * (pair % 2), 2 * (pair / 2) as u32)
}

/// Q2_K: 16 scale bytes (low nibble a scale, high nibble a minimum), 64 bytes of 2-bit
/// values, f16 d and dmin; 16 sub-blocks of 16, each y = d·sc·q − dmin·m.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let qs = &b[16..80];
    for (sub, (&sc, y)) in b[..16].iter().zip(y.chunks_exact_mut(16)).enumerate() {
        let (start, shift) = two_bit_sub_block(sub);
        let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
        for (y, &q) in y.iter_mut().zip(&qs[start..start + 16]) {
            *y = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

/// Q3_K's sixteen 6-bit scales (stored offset by 32) from their 12 packed bytes: the low
/// nibbles of bytes 0..8 then their high nibbles, each topped by two bits of bytes 8..12.
fn q3_k_scales(p: &[u8]) -> [u8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { p[i] & 0x0F } else { p[i - 8] >> 4 };
        let high = (p[8 + i % 4] >> (2 * (i / 4))) & 3;
        low | (high << 4)
    })
}

/// Q3_K: 32 bytes of high bits, 64 bytes of 2-bit values, 12 scale bytes, f16 d; 16
/// sub-blocks of 16, each y = d·(sc − 32)·(q − 4), with no 4 subtracted where the element's
/// high bit is set. Sub-block 8·half + 2j (+ 1) takes bit 4·half + j of high-bit bytes
/// 0..16 (16..32).
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (sub, y) in y.chunks_exact_mut(16).enumerate() {
        let (start, shift) = two_bit_sub_block(sub);
        let high_start = 16 * (sub % 2);
        let bit = 1u8 << (4 * (sub / 8) + (sub % 8) / 2);
        let dl = d * (scales[sub] as i32 - 32) as f32;
        let values = qs[start..start + 16].iter().zip(&hmask[high_start..high_start + 16]);
        for (y, (&q, &h)) in y.iter_mut().zip(values) {
            let q = ((q >> shift) & 3) as i32 - if h & bit != 0 { 0 } else { 4 };
            *y = dl * q as f32;
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` in a K-quant's 12 packed scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (d as f32, m as f32)
}

/// Q4_K: f16 d and dmin, 12 scale bytes, 128 bytes of nibbles; 8 sub-blocks of 32,
/// each y = d·sc·q − dmin·m.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per element from 32 bytes of high bits.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    for (chunk, (q, y)) in ql.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 d;
/// y = d·scale·(q − 32) over 16 sub-blocks of 16.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |i: usize| d * (sc[i] as i8) as f32;
            y[l] = scale(is) * q1 as f32;
            y[l + 32] = scale(is + 2) * q2 as f32;
            y[l + 64] = scale(is + 4) * q3 as f32;
            y[l + 96] = scale(is + 6) * q4 as f32;
        }
    }
}

/// The 16 non-linear levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// 32 elements from 16 bytes of IQ4 nibbles (low nibbles are elements 0..16, high 16..32);
/// y = d·level.
fn iq4_levels(d: f32, qs: &[u8], y: &mut [f32]) {
    for (j, &q) in qs.iter().enumerate() {
        y[j] = d * IQ4_LEVELS[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * IQ4_LEVELS[(q >> 4) as usize] as f32;
    }
}

/// IQ4_NL: f16 scale d, 16 bytes of nibbles indexing the IQ4 levels.
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    iq4_levels(f16_at(b, 0), &b[2..18], y);
}

/// IQ4_XS: f16 d, a u16 of scales' high bits, 4 bytes of scales' low nibbles, 128 bytes of
/// IQ4 nibbles; 8 sub-blocks of 32, each at scale d·(ls − 32), where sub-block i's 6-bit ls
/// is nibble i of the low bytes topped by bits 2i and 2i + 1 of the u16.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_high = u16::from_le_bytes([b[2], b[3]]);
    let scales_low = &b[4..8];
    for (i, (qs, y)) in b[8..136].chunks_exact(16).zip(y.chunks_exact_mut(32)).enumerate() {
        let low = (scales_low[i / 2] >> (4 * (i % 2))) & 0x0F;
        let high = ((scales_high >> (2 * i)) & 3) as u8;
        let ls = (low | (high << 4)) as i32 - 32;
        iq4_levels(d * ls as f32, qs, y);
    }
}

#[cfg(test)]
mod tests {
    //! Most blocks are built by hand, their expected values following from the format's
    //! definition; `matches_gguf_py_bit_for_bit` checks every type against gguf-py.
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn float_types_count_their_non_finite_values_from_the_bits_as_widened() {
        // Infinities, NaNs, the largest finite values and the smallest of each type.
        let values = [1.0f32, f32::INFINITY, -0.0, f32::NAN, -f32::INFINITY, 65504.0, 3.0e38, 1e-40, -f32::NAN];
        let f32s: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = values.iter().flat_map(|&v| h(v)).collect();
        let bf16s: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        for (t, bytes, expected) in [(GgmlType::F32, f32s, 4), (GgmlType::F16, f16s, 5), (GgmlType::Bf16, bf16s, 4)] {
            let mut widened = vec![0.0f32; values.len()];
            t.dequantize(&bytes, &mut widened);
            let count = widened.iter().filter(|v| !v.is_finite()).count();
            assert_eq!((t.non_finite_floats(&bytes), count), (Some(expected), expected), "{t:?}");
        }
        assert_eq!(GgmlType::Q8_0.non_finite_floats(&[0; 34]), None);
    }

    fn widen(t: GgmlType, block: &[u8]) -> Vec<f32> {
        let mut y = vec![f32::NAN; t.block().0];
        t.dequantize(block, &mut y);
        y
    }

    #[test]
    fn half_floats_widen_every_bit_pattern_exactly() {
        // Every f16 and bf16 value in one row (runs of whole vectors and a tail), against
        // their definitions: f16 a sign, 5 exponent bits (bias 15, subnormal at 0) and 10
        // mantissa bits; bf16 the upper half of an f32.
        let patterns: Vec<u16> = (0..=u16::MAX).chain([0x3c00, 0x8001, 0x7bff]).collect();
        let bytes: Vec<u8> = patterns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let f16_value = |p: u16| {
            let (sign, exponent, mantissa) = (if p >> 15 == 1 { -1.0 } else { 1.0 }, (p >> 10) & 31, p & 1023);
            match exponent {
                0 => sign * mantissa as f64 * 2f64.powi(-24),
                31 if mantissa == 0 => sign * f64::INFINITY,
                31 => f64::NAN,
                e => sign * (1024 + mantissa) as f64 * 2f64.powi(e as i32 - 25),
            }
        };
        let bf16_value = |p: u16| f32::from_bits((p as u32) << 16) as f64;
        for (t, value) in [(GgmlType::F16, &f16_value as &dyn Fn(u16) -> f64), (GgmlType::Bf16, &bf16_value)] {
            let mut widened = vec![0.0f32; patterns.len()];
            t.dequantize(&bytes, &mut widened);
            for (&p, &w) in patterns.iter().zip(&widened) {
                let want = value(p) as f32;
                assert!(
                    w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
                    "{t:?} {p:#06x}: {w} for {want}"
                );
            }
        }
    }

    #[test]
    fn plain_floats() {
        assert_eq!(widen(GgmlType::F32, &1.5f32.to_le_bytes()), vec![1.5]);
        assert_eq!(widen(GgmlType::F16, &h(-0.25)), vec![-0.25]);
        assert_eq!(widen(GgmlType::Bf16, &bf16::from_f32(3.0).to_le_bytes()), vec![3.0]);
    }

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = widen(GgmlType::Q8_0, &b);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_low_then_high_nibbles() {
        let mut b = h(2.0).to_vec();
        b.extend([0x9Fu8; 16]); // low nibble 15, high nibble 9
        let y = widen(GgmlType::Q4_0, &b);
        assert_eq!(y[0], (15 - 8) as f32 * 2.0);
        assert_eq!(y[16], (9 - 8) as f32 * 2.0);
    }

    #[test]
    fn q4_1_adds_the_minimum() {
        let mut b = h(0.5).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = widen(GgmlType::Q4_1, &b);
        assert_eq!(y[3], 3.0 * 0.5 - 1.0);
        assert_eq!(y[16 + 3], 12.0 * 0.5 - 1.0);
    }

    /// Twelve scale bytes that give sub-block j the scale `sc[j]` and minimum `mn[j]`
    /// (6 bits each): sub-blocks 0..4 in the low 6 bits of bytes 0..4 and 4..8; sub-blocks
    /// 4..8 split into a low nibble in bytes 8..12 and two high bits on top of bytes 0..8.
    fn k_scales(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        q
    }

    #[test]
    fn q4_k_sub_block_scales_and_minima() {
        let sc = [1, 2, 3, 4, 33, 45, 60, 63];
        let mn = [5, 6, 7, 8, 17, 50, 62, 1];
        let mut b = h(0.25).to_vec();
        b.extend(h(0.125));
        b.extend(k_scales(sc, mn));
        b.extend([0x73u8; 128]); // low nibble 3 (even sub-blocks), high nibble 7 (odd)
        let y = widen(GgmlType::Q4K, &b);
        for sub in 0..8 {
            let q = if sub % 2 == 0 { 3.0 } else { 7.0 };
            let want = 0.25 * sc[sub] as f32 * q - 0.125 * mn[sub] as f32;
            assert_eq!(y[32 * sub + 5], want, "sub-block {sub}");
        }
    }

    #[test]
    fn q5_k_high_bits() {
        let sc = [1, 1, 1, 1, 2, 2, 2, 2];
        let mn = [0; 8];
        let mut b = h(1.0).to_vec();
        b.extend(h(1.0));
        b.extend(k_scales(sc, mn));
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0001; // element 0 of sub-block 0 gets +16
        qh[1] = 0b1000_0000; // element 1 of sub-block 7 gets +16
        b.extend(qh);
        b.extend([0x21u8; 128]); // low nibble 1, high nibble 2
        let y = widen(GgmlType::Q5K, &b);
        assert_eq!(y[0], 17.0);
        assert_eq!(y[1], 1.0);
        assert_eq!(y[224 + 1], 2.0 * 18.0);
        assert_eq!(y[224], 2.0 * 2.0);
    }

    #[test]
    fn q6_k_six_bit_values() {
        let mut b = vec![0u8; 210];
        b[0] = 0x5A; // element 0: low nibble 0xA; element 64: high nibble 0x5
        b[128] = 0b11_00_10_01; // high bits for elements 0 (01), 32 (10), 64 (00), 96 (11)
        b[32] = 0x0F; // element 32: low nibble 0xF
        for i in 0..16 {
            b[192 + i] = (i as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&h(0.5));
        let y = widen(GgmlType::Q6K, &b);
        assert_eq!(y[0], 0.5 * -8.0 * ((0xA | (1 << 4)) - 32) as f32);
        assert_eq!(y[32], 0.5 * -6.0 * ((0xF | (2 << 4)) - 32) as f32);
        assert_eq!(y[64], 0.5 * -4.0 * (0x5 - 32) as f32);
        assert_eq!(y[96], 0.5 * -2.0 * ((3 << 4) - 32) as f32);
        assert_eq!(y[128], 0.5 * 0.0 * -32.0);
    }

    /// `generate.py`'s SplitMix64 stream, seeded with its SEED plus the type's code.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// `generate.py`'s `scale_bits`: a finite f16 between 2⁻⁷ and 2⁻¹ in magnitude.
    fn scale_bits(r: u64) -> [u8; 2] {
        (((r & 1) << 15 | (8 + (r >> 1) % 6) << 10 | (r >> 8) & 0x3FF) as u16).to_le_bytes()
    }

    /// `generate.py`'s `fixture_bytes`: the input the reference values were computed from,
    /// drawn here rather than kept as a binary file.
    fn fixture_bytes(t: GgmlType) -> Vec<u8> {
        let mut rng = SplitMix64(20240611 + u64::from(t.code()));
        let (blocks, scales): (usize, &[usize]) = match t {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => (64, &[]),
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Iq4Nl => (8, &[0]),
            GgmlType::Q4_1 | GgmlType::Q5_1 => (8, &[0, 2]),
            GgmlType::Q2K => (4, &[80, 82]),
            GgmlType::Q3K => (4, &[108]),
            GgmlType::Q4K | GgmlType::Q5K => (4, &[0, 2]),
            GgmlType::Q6K => (4, &[208]),
            GgmlType::Iq4Xs => (4, &[0]),
        };
        let mut data = Vec::new();
        for _ in 0..blocks {
            let r = rng.next();
            let (sign, exponent) = (r & 1, 120 + (r >> 1) % 11);
            match t {
                GgmlType::F32 => {
                    data.extend(((sign << 31 | exponent << 23 | (r >> 8) & 0x7F_FFFF) as u32).to_le_bytes())
                }
                GgmlType::Bf16 => data.extend(((sign << 15 | exponent << 7 | (r >> 8) & 0x7F) as u16).to_le_bytes()),
                GgmlType::F16 => data.extend(scale_bits(r)),
                _ => {
                    let mut block: Vec<u8> =
                        std::iter::once(r as u8).chain((1..t.block().1).map(|_| rng.next() as u8)).collect();
                    for &at in scales {
                        block[at..at + 2].copy_from_slice(&scale_bits(rng.next()));
                    }
                    data.extend(block);
                }
            }
        }
        data
    }

    /// An external reference: blocks drawn by [`fixture_bytes`] (finite f16 scales, every
    /// other byte random) and the f32 values that gguf-py 0.19.0's `gguf.quants.dequantize`
    /// (with numpy 2.4.6) widens them to (`worker/tests/data/quant/generate.py`). gguf-py
    /// computes in the same order as ggml's `dequantize_row_*`, so every element must match
    /// to the bit.
    #[test]
    fn matches_gguf_py_bit_for_bit() {
        macro_rules! values {
            ($name:literal) => {
                include_bytes!(concat!("../../tests/data/quant/", $name, ".f32")).as_slice()
            };
        }
        let cases = [
            (GgmlType::F32, values!("f32")),
            (GgmlType::F16, values!("f16")),
            (GgmlType::Bf16, values!("bf16")),
            (GgmlType::Q4_0, values!("q4_0")),
            (GgmlType::Q4_1, values!("q4_1")),
            (GgmlType::Q5_0, values!("q5_0")),
            (GgmlType::Q5_1, values!("q5_1")),
            (GgmlType::Q8_0, values!("q8_0")),
            (GgmlType::Q2K, values!("q2_k")),
            (GgmlType::Q3K, values!("q3_k")),
            (GgmlType::Q4K, values!("q4_k")),
            (GgmlType::Q5K, values!("q5_k")),
            (GgmlType::Q6K, values!("q6_k")),
            (GgmlType::Iq4Nl, values!("iq4_nl")),
            (GgmlType::Iq4Xs, values!("iq4_xs")),
        ];
        let mut covered: Vec<GgmlType> = cases.iter().map(|&(t, _)| t).collect();
        covered.sort();
        let mut all = GgmlType::ALL.to_vec();
        all.sort();
        assert_eq!(covered, all, "every type has a fixture");
        for (t, values) in cases {
            let blocks = &fixture_bytes(t)[..];
            let want: Vec<f32> = values.chunks_exact(4).map(|v| f32::from_le_bytes(v.try_into().unwrap())).collect();
            let (block_elems, block_bytes) = t.block();
            assert!(blocks.len().is_multiple_of(block_bytes) && blocks.len() >= 4 * block_bytes, "{}", t.name());
            assert_eq!(blocks.len() / block_bytes * block_elems, want.len(), "{}", t.name());
            let mut got = vec![f32::NAN; want.len()];
            t.dequantize(blocks, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{} element {i}: {g} but gguf-py gives {w}", t.name());
            }
        }
    }

    #[test]
    fn type_names_follow_ggml() {
        for t in GgmlType::ALL {
            assert_eq!(type_name(t.code()), Some(t.name()));
        }
        assert_eq!(type_name(16), Some("IQ2_XXS"));
        assert_eq!(type_name(9), Some("Q8_1"));
        assert_eq!(type_name(39), Some("MXFP4"));
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 43, 99] {
            assert_eq!(type_name(removed), None, "code {removed}");
        }
    }

    #[test]
    fn unsupported_types_are_named() {
        let why = unsupported_type(16);
        assert!(why.starts_with("type IQ2_XXS (code 16), which evalmesh does not read; supported: F32, F16, Q4_0,"));
        assert!(why.ends_with("IQ4_NL, IQ4_XS, BF16"), "{why}");
        assert!(unsupported_type(77).starts_with("unknown or unsupported type code 77 (ggml has no type with it)"));
        assert!(!why.contains('\n'));
    }

    #[test]
    fn byte_sizes_need_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.byte_size(64), Some(40));
        assert_eq!(GgmlType::Q6K.byte_size(100), None);
        assert_eq!(GgmlType::from_code(99), None);
        for code in 0..64 {
            if let Some(t) = GgmlType::from_code(code) {
                assert_eq!(t.code(), code);
            }
        }
    }
}
