//! `Matrix`: a row-major f32 matrix in host memory. It is what weight loaders produce
//! and the CPU backend's tensor. Random matrices (`Matrix::random`) are drawn in
//! `weights::random`, next to the stream they come from.

/// Row-major `rows × cols` f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

use rayon::prelude::*;

/// Values from which [`Matrix::zeros`] zeroes in parallel: the activations of a
/// micro-batch are megabytes, which one thread would clear while the others wait.
const PARALLEL_ZEROS: usize = 1 << 16;

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        let len = rows * cols;
        let data = match len >= PARALLEL_ZEROS {
            true => rayon::iter::repeat_n(0.0, len).collect(),
            false => vec![0.0; len],
        };
        Matrix { rows, cols, data }
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        Matrix { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}
