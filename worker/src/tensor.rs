//! `Matrix`: a row-major f32 matrix in host memory. It is what weight loaders produce
//! and the CPU backend's tensor; `Unwritten`, the values of one before a kernel stores
//! them. Random matrices (`Matrix::random`) are drawn in `weights::random`, next to the
//! stream they come from.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Row-major `rows × cols` f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

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

/// The values of a `rows × cols` matrix that a kernel is about to store, every one of
/// them: left uncleared, because clearing a micro-batch's megabytes of activations only
/// to overwrite them took 6% of the CPU time of a ctx-512 perplexity run.
pub struct Unwritten {
    rows: usize,
    cols: usize,
    data: Vec<MaybeUninit<f32>>,
}

impl Unwritten {
    pub fn new(rows: usize, cols: usize) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        data.resize_with(rows * cols, MaybeUninit::uninit);
        Unwritten { rows, cols, data }
    }

    pub fn values(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.data
    }

    /// The matrix of the values stored.
    ///
    /// # Safety
    /// Every value must have been stored.
    pub unsafe fn assume_written(self) -> Matrix {
        let mut data = std::mem::ManuallyDrop::new(self.data);
        let (ptr, len, capacity) = (data.as_mut_ptr().cast::<f32>(), data.len(), data.capacity());
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, the allocation is the same, and the
        // caller says every value is initialised.
        let data = unsafe { Vec::from_raw_parts(ptr, len, capacity) };
        Matrix { rows: self.rows, cols: self.cols, data }
    }
}

/// `values` set to zero, as the `f32`s they now are: for kernels that take their output as
/// initialised values (the streamed products).
pub fn cleared(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) }
}
