//! The CUDA backend of a build without the `cuda` feature: a type with no values, whose
//! constructor says how to build with CUDA, so that code choosing a backend needs no `cfg`.

use std::convert::Infallible;
use std::ops::Range;

use evalmesh_common::config::Activation;
use evalmesh_common::protocol::GpuPrecision;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};

use crate::backend::error::BackendError;
use crate::backend::memory::DeviceMemory;
use crate::backend::transfer::Transfer;
use crate::backend::{AttentionSpec, Backend, HeadLayout, MatmulStats};
use crate::tensor::Matrix;

pub enum CudaBackend {}

impl CudaBackend {
    pub fn new(_ordinal: usize, _precision: GpuPrecision) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    pub fn pass_device_memory_to_mpi(&self, _: bool) {
        match *self {}
    }

    pub fn matmul_peak(&self, _: usize, _: usize) -> Result<f64, BackendError> {
        match *self {}
    }
}

impl DeviceMemory for CudaBackend {
    type Tensor = Infallible;
    type Weight = Infallible;

    fn name(&self) -> &'static str {
        match *self {}
    }
    fn upload(&self, _: Matrix) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn upload_weight(&self, _: Matrix) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn weight_bytes(&self, _: &Infallible) -> u64 {
        match *self {}
    }
    fn download(&self, _: &Infallible) -> Result<Matrix, BackendError> {
        match *self {}
    }
    fn rows(&self, _: &Infallible) -> usize {
        match *self {}
    }
}

impl Transfer for CudaBackend {}

impl Backend for CudaBackend {
    fn embed(&self, _: &Infallible, _: &[u32]) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn matmul_t(&self, _: &Infallible, _: &Infallible) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn rms_norm(&self, _: &Infallible, _: &Infallible, _: f64) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn rms_norm_runs(&self, _: &mut Infallible, _: Range<usize>, _: &Infallible, _: f64) -> Result<(), BackendError> {
        match *self {}
    }
    fn apply_rope(
        &self,
        _: &mut Infallible,
        _: &Infallible,
        _: Range<usize>,
        _: usize,
        _: RopeStyle,
    ) -> Result<(), BackendError> {
        match *self {}
    }
    fn attention(
        &self,
        _: &Infallible,
        _: &[TreeLayout],
        _: HeadLayout,
        _: AttentionSpec,
    ) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn gated(&self, _: &Infallible, _: Activation) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn add_row(&self, _: &mut Infallible, _: &Infallible) -> Result<(), BackendError> {
        match *self {}
    }
    fn scale(&self, _: &mut Infallible, _: f32) -> Result<(), BackendError> {
        match *self {}
    }
    fn scale_rows(&self, _: &mut Infallible, _: &[f32]) -> Result<(), BackendError> {
        match *self {}
    }
    fn soft_cap(&self, _: &mut Infallible, _: f32) -> Result<(), BackendError> {
        match *self {}
    }
    fn scatter_add_rows(&self, _: &mut Infallible, _: &Infallible, _: &[usize]) -> Result<(), BackendError> {
        match *self {}
    }
    fn add_assign(&self, _: &mut Infallible, _: &Infallible) -> Result<(), BackendError> {
        match *self {}
    }
    fn gather_rows(&self, _: &Infallible, _: &[usize]) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn columns(&self, _: &Infallible, _: &[Range<usize>]) -> Result<Infallible, BackendError> {
        match *self {}
    }
    fn score(&self, _: &Infallible, _: &[u32]) -> Result<Vec<TokenScore>, BackendError> {
        match *self {}
    }
    fn matmul_stats(&self) -> MatmulStats {
        match *self {}
    }
}
