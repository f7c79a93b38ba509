//! [`StoredMatrix`]: a weight kept in its file's encoding (f32, f16, bf16 or GGUF
//! quantisation blocks) instead of widened to f32 at load, so that its memory follows the
//! file's size (docs/ARCHITECTURE.md §13). Rows are widened when a product needs them,
//! through the same [`GgmlType::dequantize`] as loading, so they are the values the
//! widened weight would hold, bit for bit. As read, its rows lie in the file's mapping;
//! [`StoredMatrix::into_owned`] copies them out for keeping, and a part that lay in the
//! mapping drops the file's pages it spans from the process when it goes.

use std::borrow::Cow;

use rayon::prelude::*;

use super::quant::GgmlType;
use crate::tensor::Matrix;

/// A `rows × cols` weight, its rows stacked from one or more tensors (Q, K and V; gate and
/// up), each part in its own encoding, held or lying in a file's mapping (`'a`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMatrix<'a> {
    rows: usize,
    cols: usize,
    parts: Vec<StoredRows<'a>>,
}

/// Consecutive rows in one encoding: row `r` is the `row_bytes` of whole blocks at
/// `bytes[r · row_stride..]`, of which the matrix's columns start `skip` values into the
/// first block.
#[derive(Debug, Clone, PartialEq)]
struct StoredRows<'a> {
    dtype: GgmlType,
    rows: usize,
    row_stride: usize,
    row_bytes: usize,
    skip: usize,
    bytes: Cow<'a, [u8]>,
}

impl StoredRows<'_> {
    fn row(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.row_stride..][..self.row_bytes]
    }
}

impl Drop for StoredRows<'_> {
    /// A part read in place drops the whole pages it spans from the process's resident
    /// memory: it was the last to read them, and a later read maps them again from the file.
    fn drop(&mut self) {
        const PAGE: usize = 4096;
        if let Cow::Borrowed(bytes) = self.bytes {
            let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
            let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
            if end > start {
                // SAFETY: the range lies inside `bytes`, which lies in a read-only mapping
                // of a file (`push_mapped`'s contract: a part spanning no whole page never
                // gets here), so dropping its pages loses nothing: they are read again from
                // the file if touched. Advice that fails leaves the pages mapped, which is
                // only memory.
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
        }
    }
}

impl<'a> StoredMatrix<'a> {
    /// A matrix of `cols` columns and no rows yet.
    pub fn new(cols: usize) -> Self {
        StoredMatrix { rows: 0, cols, parts: Vec::new() }
    }

    /// Adds `rows` rows below the others: each `bytes.len() / rows` bytes of `dtype`'s whole
    /// blocks, the matrix's columns starting `skip` values into each row's first block.
    pub fn push(&mut self, dtype: GgmlType, rows: usize, skip: usize, bytes: Vec<u8>) {
        let row_bytes = bytes.len().checked_div(rows).unwrap_or(0);
        self.push_part(StoredRows { dtype, rows, row_stride: row_bytes, row_bytes, skip, bytes: Cow::Owned(bytes) });
    }

    /// Adds `rows` rows below the others, read where they lie in a read-only mapping of a
    /// file: row `r` is the `row_bytes` of `dtype`'s whole blocks at `bytes[r · row_stride..]`,
    /// the matrix's columns starting `skip` values into its first block. The pages `bytes`
    /// spans leave the process's memory when the part goes (not when it is copied out).
    ///
    /// # Safety
    /// `bytes` must lie in a read-only mapping of a file, whose dropped pages are read
    /// again from the file, or span no whole page (nothing is then dropped).
    pub unsafe fn push_mapped(
        &mut self,
        dtype: GgmlType,
        rows: usize,
        row_stride: usize,
        row_bytes: usize,
        skip: usize,
        bytes: &'a [u8],
    ) {
        debug_assert!(rows == 0 || (rows - 1) * row_stride + row_bytes <= bytes.len());
        self.push_part(StoredRows { dtype, rows, row_stride, row_bytes, skip, bytes: Cow::Borrowed(bytes) });
    }

    fn push_part(&mut self, part: StoredRows<'a>) {
        debug_assert!(part.row_bytes / part.dtype.block().1 * part.dtype.block().0 >= part.skip + self.cols);
        self.rows += part.rows;
        self.parts.push(part);
    }

    /// Adds the rows of `below` (of the same columns) below these.
    pub fn append(&mut self, below: StoredMatrix<'a>) {
        debug_assert_eq!(below.cols, self.cols);
        self.rows += below.rows;
        self.parts.extend(below.parts);
    }

    /// The matrix holding its rows itself: those that lie in a file's mapping copied out,
    /// rows in parallel (and the mapping's pages then dropped).
    pub fn into_owned(self) -> StoredMatrix<'static> {
        let parts = self.parts.into_iter().map(|part| {
            let mut bytes = vec![0u8; part.rows * part.row_bytes];
            let rows = bytes.par_chunks_exact_mut(part.row_bytes.max(1)).enumerate();
            rows.for_each(|(r, out)| out.copy_from_slice(part.row(r)));
            let (dtype, rows, row_bytes, skip) = (part.dtype, part.rows, part.row_bytes, part.skip);
            StoredRows { dtype, rows, row_stride: row_bytes, row_bytes, skip, bytes: Cow::Owned(bytes) }
        });
        StoredMatrix { rows: self.rows, cols: self.cols, parts: parts.collect() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The bytes of its rows.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.rows * p.row_bytes).sum()
    }

    /// Row `r`'s part and bytes.
    fn part_row(&self, r: usize) -> (&StoredRows<'a>, &[u8]) {
        let (mut r, mut parts) = (r, self.parts.iter());
        loop {
            match parts.next() {
                Some(p) if r < p.rows => return (p, p.row(r)),
                Some(p) => r -= p.rows,
                None => panic!("row {} of a {}-row stored weight", r, self.rows),
            }
        }
    }

    /// Widens row `r` into `out` (`cols` values); `scratch` holds a row's whole blocks
    /// where the columns do not start and end at block edges.
    pub fn widen_row(&self, r: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        let (part, bytes) = self.part_row(r);
        let values = part.row_bytes / part.dtype.block().1 * part.dtype.block().0;
        if part.skip == 0 && values == self.cols {
            part.dtype.dequantize(bytes, out);
        } else {
            scratch.resize(values, 0.0);
            part.dtype.dequantize(bytes, scratch);
            out.copy_from_slice(&scratch[part.skip..part.skip + self.cols]);
        }
    }

    /// The whole matrix widened to f32, rows in parallel.
    pub fn widen(&self) -> Matrix {
        let mut data = vec![0.0f32; self.rows * self.cols];
        let rows = data.par_chunks_exact_mut(self.cols.max(1)).enumerate().take(self.rows);
        rows.for_each_init(Vec::new, |scratch, (r, out)| self.widen_row(r, out, scratch));
        Matrix::from_vec(self.rows, self.cols, data)
    }

    /// How many of the widened values are NaN or infinite, rows in parallel: a float
    /// type's rows (of one value a block, so exactly the matrix's columns) read from their
    /// bits, the others widened.
    pub fn non_finite(&self) -> usize {
        let rows = (0..self.rows).into_par_iter();
        let counts = rows.map_init(
            || (vec![0.0f32; self.cols], Vec::new()),
            |(row, scratch), r| {
                let (part, bytes) = self.part_row(r);
                part.dtype.non_finite_floats(bytes).unwrap_or_else(|| {
                    self.widen_row(r, row, scratch);
                    row.iter().filter(|v| !v.is_finite()).count()
                })
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
        assert_eq!(m.bytes(), 16 + 34);
    }

    #[test]
    fn rows_read_in_place_with_a_stride_widen_and_copy_out_as_the_owned_ones() {
        // Three rows of six bf16 values (12 bytes apart), of which the matrix reads the
        // bytes of values 1..5 of each row (a buffer under a page: no page is dropped).
        let values: Vec<f32> = (0..18).map(|i| i as f32 - 4.5).collect();
        let file: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        let mut mapped = StoredMatrix::new(3);
        // SAFETY: 36 bytes span no whole page.
        unsafe { mapped.push_mapped(GgmlType::Bf16, 3, 12, 8, 1, &file[2..]) };
        let owned_rows: Vec<u8> = (0..3).flat_map(|r| file[r * 12 + 2..r * 12 + 10].to_vec()).collect();
        let mut owned = StoredMatrix::new(3);
        owned.push(GgmlType::Bf16, 3, 1, owned_rows);
        assert_eq!(mapped.widen().row(2), [14.0 - 4.5, 15.0 - 4.5, 16.0 - 4.5]);
        assert_eq!(mapped.widen(), owned.widen());
        assert_eq!(mapped.bytes(), 24);
        let copied = mapped.into_owned();
        assert_eq!(copied, owned);
    }
}
