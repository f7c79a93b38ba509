//! [`StoredMatrix`]: a weight kept in its file's encoding (f32, f16, bf16 or GGUF
//! quantisation blocks) instead of widened to f32 at load, so that its memory follows the
//! file's size (docs/ARCHITECTURE.md §13). Rows are widened when a product needs them,
//! through the same [`GgmlType::dequantize`] as loading, so they are the values the
//! widened weight would hold, bit for bit.

use std::ops::Range;

use rayon::prelude::*;

use super::quant::GgmlType;
use crate::tensor::Matrix;

/// A `rows × cols` weight, its rows stacked from one or more tensors (Q, K and V; gate and
/// up), each part in its own encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMatrix {
    rows: usize,
    cols: usize,
    parts: Vec<StoredRows>,
}

/// Consecutive rows in one encoding: each row `row_bytes` of whole blocks, of which the
/// matrix's columns start `skip` values into the first block.
#[derive(Debug, Clone, PartialEq)]
struct StoredRows {
    dtype: GgmlType,
    rows: usize,
    row_bytes: usize,
    skip: usize,
    bytes: Vec<u8>,
}

impl StoredMatrix {
    /// A matrix of `cols` columns and no rows yet.
    pub fn new(cols: usize) -> Self {
        StoredMatrix { rows: 0, cols, parts: Vec::new() }
    }

    /// Adds `rows` rows below the others: each `bytes.len() / rows` bytes of `dtype`'s whole
    /// blocks, the matrix's columns starting `skip` values into each row's first block.
    pub fn push(&mut self, dtype: GgmlType, rows: usize, skip: usize, bytes: Vec<u8>) {
        let row_bytes = bytes.len().checked_div(rows).unwrap_or(0);
        debug_assert!(row_bytes / dtype.block().1 * dtype.block().0 >= skip + self.cols);
        self.rows += rows;
        self.parts.push(StoredRows { dtype, rows, row_bytes, skip, bytes });
    }

    /// Adds the rows of `below` (of the same columns) below these.
    pub fn append(&mut self, below: StoredMatrix) {
        debug_assert_eq!(below.cols, self.cols);
        self.rows += below.rows;
        self.parts.extend(below.parts);
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes.len()).sum()
    }

    /// Widens row `r` into `out` (`cols` values); `scratch` holds a row's whole blocks
    /// where the columns do not start and end at block edges.
    pub fn widen_row(&self, r: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        let (mut r, mut parts) = (r, self.parts.iter());
        let part = loop {
            match parts.next() {
                Some(p) if r < p.rows => break p,
                Some(p) => r -= p.rows,
                None => panic!("row {} of a {}-row stored weight", r, self.rows),
            }
        };
        let bytes = &part.bytes[r * part.row_bytes..(r + 1) * part.row_bytes];
        let values = part.row_bytes / part.dtype.block().1 * part.dtype.block().0;
        if part.skip == 0 && values == self.cols {
            part.dtype.dequantize(bytes, out);
        } else {
            scratch.resize(values, 0.0);
            part.dtype.dequantize(bytes, scratch);
            out.copy_from_slice(&scratch[part.skip..part.skip + self.cols]);
        }
    }

    /// Rows `rows` widened and transposed: input feature `i` of row `rows.start + j` at
    /// `out[i · stride + j]`.
    pub fn widen_transposed(&self, rows: Range<usize>, out: &mut [f32], stride: usize) {
        let (mut row, mut scratch) = (vec![0.0f32; self.cols], Vec::new());
        for (j, r) in rows.enumerate() {
            self.widen_row(r, &mut row, &mut scratch);
            for (i, &v) in row.iter().enumerate() {
                out[i * stride + j] = v;
            }
        }
    }

    /// The whole matrix widened to f32, rows in parallel.
    pub fn widen(&self) -> Matrix {
        let mut data = vec![0.0f32; self.rows * self.cols];
        let rows = data.par_chunks_exact_mut(self.cols.max(1)).enumerate().take(self.rows);
        rows.for_each_init(Vec::new, |scratch, (r, out)| self.widen_row(r, out, scratch));
        Matrix::from_vec(self.rows, self.cols, data)
    }

    /// How many of the widened values are NaN or infinite, rows in parallel.
    pub fn non_finite(&self) -> usize {
        let rows = (0..self.rows).into_par_iter();
        let counts = rows.map_init(
            || (vec![0.0f32; self.cols], Vec::new()),
            |(row, scratch), r| {
                self.widen_row(r, row, scratch);
                row.iter().filter(|v| !v.is_finite()).count()
            },
        );
        counts.sum()
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn rows_widen_from_each_part_and_from_inside_blocks() {
        // Two rows of bf16 over four columns, then one Q8_0 row of 32 values of which the
        // matrix holds columns 3..7.
        let bf = |v: f32| bf16::from_f32(v).to_le_bytes();
        let first: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0].iter().flat_map(|&v| bf(v)).collect();
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| i as u8));
        let mut m = StoredMatrix::new(4);
        m.push(GgmlType::Bf16, 2, 0, first);
        m.push(GgmlType::Q8_0, 1, 3, q8);
        let widened = m.widen();
        assert_eq!((widened.rows, widened.cols), (3, 4));
        assert_eq!(widened.row(1), [5.0, 6.0, 7.0, 8.0]);
        assert_eq!(widened.row(2), [1.5, 2.0, 2.5, 3.0]);
        let mut t = vec![0.0f32; 4 * 5];
        m.widen_transposed(1..3, &mut t, 5);
        assert_eq!([t[0], t[1], t[15], t[16]], [5.0, 1.5, 8.0, 3.0]);
        assert_eq!(m.bytes(), 16 + 34);
    }
}
