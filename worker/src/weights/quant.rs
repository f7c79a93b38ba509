//! GGML tensor types and their widening to f32: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q4_K, Q5_K and Q6_K, bit for bit as ggml's reference `dequantize_row_*`.

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
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// Maps GGUF's type code; `None` for a code evalmesh does not read.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
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
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
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
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// (elements, bytes) of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
        }
    }

    /// Bytes that `elements` values occupy, or `None` when they do not fill whole blocks.
    pub fn byte_size(self, elements: u64) -> Option<u64> {
        let (block_elems, block_bytes) = self.block();
        elements.is_multiple_of(block_elems as u64).then(|| elements / block_elems as u64 * block_bytes as u64)
    }

    /// Widens `src` (whole blocks) into `dst`, whose length is the element count.
    pub fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        let (block_elems, block_bytes) = self.block();
        debug_assert_eq!(src.len() / block_bytes * block_elems, dst.len());
        let blocks = src.chunks_exact(block_bytes).zip(dst.chunks_exact_mut(block_elems));
        match self {
            GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Bf16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
            GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
            GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
            GgmlType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
            GgmlType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
            GgmlType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
        }
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

#[cfg(test)]
mod tests {
    //! Each block is built by hand; expected values follow from the format's definition.
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn widen(t: GgmlType, block: &[u8]) -> Vec<f32> {
        let mut y = vec![f32::NAN; t.block().0];
        t.dequantize(block, &mut y);
        y
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
