//! The CUDA backend on one GPU, one stream: its state ([`CudaBackend`]: context, stream,
//! cuBLAS handle, kernels, pool and staging), its tensors and weights, and the launches
//! and products its ops are made of. Its traits are implemented by concern: the
//! arithmetic in `ops.rs` (its attention in `attention.rs`), the memory in `memory.rs`, the transfer in `transfer.rs`.
//!
//! Weights are bf16 (converted at upload, stored once), or f32 on the higher-precision
//! path (`GpuPrecision::F32`); activations are f32, and each matrix product converts its
//! input to the weights' type and multiplies through cuBLAS with f32 accumulation and f32
//! output. Norms, softmax and every element-wise op run in f32 (docs/ARCHITECTURE.md §4),
//! in the kernels of `kernels.cu`.
//!
//! Determinism: a matrix product is cut into blocks of [`MATMUL_ROWS`] rows, the last one
//! padded with zero rows, so cuBLAS sees the same shape for every block whatever the
//! micro-batch and picks the same kernel: a row's bits do not depend on its batch. The
//! kernels keep each row's reductions to itself (see `kernels.cu`).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUdevice_attribute, CUdeviceptr, CUevent_flags};
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream};
use evalmesh_common::protocol::GpuPrecision;

use super::kernels::{Kernel, Kernels, Param};
use super::pool::{DeviceBuffer, Pool, PoolStats};
use super::staging::Staging;
use crate::backend::error::BackendError;
use crate::backend::memory::DeviceMemory;

/// Rows per matrix-product block: large enough that one block fills an H100/H200 for the
/// shapes of 1B–70B models, small enough that padding a micro-batch costs little.
pub const MATMUL_ROWS: usize = 2048;

/// The widest attention head the kernels hold: `attention`'s (8 values per lane of a warp,
/// its SIMT_MAX_DIM); `attention_tc` takes heads up to [`TENSOR_CORE_HEAD_DIM`].
pub(super) const MAX_HEAD_DIM: usize = 256;
/// The widest head `attention_tc` holds (its TC_MAX_DIM).
pub(super) const TENSOR_CORE_HEAD_DIM: usize = 128;

/// An f32 activation on the device: `rows × cols`, row-major, in a pool buffer that may be
/// longer (the padded rows of a matrix product).
pub struct CudaTensor {
    pub(super) buffer: DeviceBuffer,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl CudaTensor {
    pub(super) fn ptr(&self) -> CUdeviceptr {
        self.buffer.ptr()
    }
}

/// A bf16 weight on the device, `out × in`, row-major.
pub struct CudaWeight {
    pub(super) buffer: DeviceBuffer,
    pub(super) out_features: usize,
    pub(super) in_features: usize,
}

/// A kernel argument, as the kernel declares it.
pub(super) enum Arg {
    Ptr(CUdeviceptr),
    I64(i64),
    I32(i32),
    F32(f32),
}

pub(super) fn failed(problem: impl Into<String>) -> BackendError {
    BackendError::Failed { backend: "cuda", problem: problem.into() }
}

pub(super) fn check(cond: bool, problem: impl FnOnce() -> String) -> Result<(), BackendError> {
    if cond {
        Ok(())
    } else {
        Err(failed(problem()))
    }
}

pub(super) fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

/// Threads per block of the element-wise kernels.
pub(super) const THREADS: u32 = 256;

pub struct CudaBackend {
    pub(super) context: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    pub(super) kernels: Kernels,
    pub(super) pool: Arc<Pool>,
    pub(super) staging: Staging,
    pub(super) precision: GpuPrecision,
    /// The GPU's model and multiprocessor count, cuBLAS's version and the kernels' image:
    /// what, besides this build, decides the last bits of its results.
    pub(super) provenance: String,
    pub(super) matmul_flops: AtomicU64,
    /// Whether fresh outputs are filled with NaN first (tests: an element a kernel fails
    /// to write then shows).
    pub(super) poison: AtomicBool,
    /// Start and end events of the matrix products since the stats were last read.
    pub(super) matmul_events: Mutex<(Vec<(CudaEvent, CudaEvent)>, f64)>,
}

impl CudaBackend {
    /// The backend of GPU `ordinal` (among the visible ones) multiplying in `precision`: its
    /// context, stream, cuBLAS handle and kernels. Call [`super::probe`] first: it turns
    /// missing libraries into errors.
    pub fn new(ordinal: usize, precision: GpuPrecision) -> Result<Self, BackendError> {
        let context = CudaContext::new(ordinal).map_err(|e| failed(format!("GPU {ordinal}: {e}")))?;
        let stream = context.new_stream().map_err(|e| failed(format!("creating a stream: {e}")))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| failed(format!("starting cuBLAS: {e}")))?;
        let kernels = Kernels::load(&context)?;
        let pool = Pool::new(context.clone());
        let staging = Staging::new(&context, &pool)?;
        let name = context.name().map_err(|e| failed(format!("GPU {ordinal}: {e}")))?;
        let multiprocessors = context
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| failed(format!("GPU {ordinal}: {e}")))?;
        let mut cublas_version = 0;
        // SAFETY: a live handle; cuBLAS writes one int.
        let status = unsafe { blas_sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) };
        check(status == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS, || {
            format!("asking cuBLAS its version: {status:?}")
        })?;
        let provenance = format!(
            "cuda: {name}, {multiprocessors} multiprocessors, cuBLAS {cublas_version}, kernels {}",
            kernels.image
        );
        Ok(CudaBackend {
            context,
            stream,
            blas,
            kernels,
            pool,
            staging,
            precision,
            provenance,
            matmul_flops: AtomicU64::new(0),
            poison: AtomicBool::new(false),
            matmul_events: Mutex::new((Vec::new(), 0.0)),
        })
    }

    /// What the device memory holds now and at its peak.
    pub fn memory(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Whether activations go to MPI in device memory (`true`: the MPI must be CUDA-aware)
    /// or through pinned host buffers (`false`, the default). Set before the first micro-batch.
    pub fn pass_device_memory_to_mpi(&self, on: bool) {
        self.staging.set_device_memory(on);
    }

    pub(super) fn bind(&self) -> Result<(), BackendError> {
        self.context.bind_to_thread().map_err(|e| failed(format!("binding the context: {e}")))
    }

    /// Fills every output made from now on with NaN before a kernel writes it (`true`),
    /// so that an element a kernel leaves unwritten fails a comparison.
    pub fn poison_outputs(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// An output of `rows × cols` in a buffer of `capacity_rows` rows.
    pub(super) fn output(&self, rows: usize, cols: usize, capacity_rows: usize) -> Result<CudaTensor, BackendError> {
        let buffer = self.pool.take(capacity_rows.max(1) * cols.max(1) * 4)?;
        if self.poison.load(Ordering::Relaxed) {
            self.bind()?;
            // SAFETY: the buffer holds `bytes()` bytes; all-ones bytes are a NaN in f32.
            unsafe { result::memset_d8_async(buffer.ptr(), 0xFF, buffer.bytes(), self.stream.cu_stream()) }
                .map_err(|e| failed(format!("poisoning a buffer: {e}")))?;
        }
        Ok(CudaTensor { buffer, rows, cols })
    }

    pub(super) fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor, BackendError> {
        self.output(rows, cols, rows)
    }

    /// Copies `values` into a fresh pool buffer.
    pub(super) fn upload_values<T>(&self, values: &[T]) -> Result<DeviceBuffer, BackendError> {
        self.bind()?;
        let buffer = self.pool.take(std::mem::size_of_val(values))?;
        if !values.is_empty() {
            // SAFETY: the buffer holds at least the slice's bytes; a copy from pageable memory
            // returns once the values are staged, so the slice may go after it.
            unsafe { result::memcpy_htod_async(buffer.ptr(), values, self.stream.cu_stream()) }
                .map_err(|e| failed(format!("copying to the device: {e}")))?;
        }
        Ok(buffer)
    }

    pub(super) fn download_values<T: Default + Clone>(
        &self,
        ptr: CUdeviceptr,
        len: usize,
    ) -> Result<Vec<T>, BackendError> {
        self.bind()?;
        let mut values = vec![T::default(); len];
        if len > 0 {
            // SAFETY: `ptr` holds at least `len` values of T; the stream is synchronised
            // before `values` is read.
            unsafe { result::memcpy_dtoh_async(&mut values, ptr, self.stream.cu_stream()) }
                .map_err(|e| failed(format!("copying from the device: {e}")))?;
        }
        self.synchronize()?;
        Ok(values)
    }

    pub(super) fn launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32),
        block: u32,
        shared_bytes: u32,
        args: &mut [Arg],
    ) -> Result<(), BackendError> {
        let kinds: Vec<Param> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(_) => Param::Ptr,
                Arg::I64(_) => Param::I64,
                Arg::I32(_) => Param::I32,
                Arg::F32(_) => Param::F32,
            })
            .collect();
        check(kinds == kernel.params, || {
            format!("kernel `{}` takes {:?}, launched with {kinds:?}", kernel.name, kernel.params)
        })?;
        self.bind()?;
        let mut params: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| match a {
                Arg::Ptr(v) => v as *mut CUdeviceptr as *mut c_void,
                Arg::I64(v) => v as *mut i64 as *mut c_void,
                Arg::I32(v) => v as *mut i32 as *mut c_void,
                Arg::F32(v) => v as *mut f32 as *mut c_void,
            })
            .collect();
        // SAFETY: the arguments match the kernel's declaration in kernels.cu in order and
        // kind (checked above), and every pointer covers what the kernel touches (checked by each op).
        unsafe {
            result::launch_kernel(
                kernel.function.cu_function(),
                (grid.0, grid.1, 1),
                (block, 1, 1),
                shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| failed(format!("launching a kernel: {e}")))
    }

    /// An element-wise launch over `n` items with a grid-stride loop.
    pub(super) fn grid_stride(n: usize) -> (u32, u32) {
        (blocks(n, THREADS as usize).min(65_535), 1)
    }

    /// Bytes of a weight or operand value, and cuBLAS's name of their type.
    pub(super) fn operand_type(precision: GpuPrecision) -> (usize, blas_sys::cudaDataType_t) {
        match precision {
            GpuPrecision::Bf16 => (2, blas_sys::cudaDataType_t::CUDA_R_16BF),
            GpuPrecision::F32 => (4, blas_sys::cudaDataType_t::CUDA_R_32F),
        }
    }

    /// The pointer arguments of a kernel that writes (or reads) either type, the other null.
    pub(super) fn by_type(ptr: CUdeviceptr, precision: GpuPrecision) -> [Arg; 2] {
        match precision {
            GpuPrecision::Bf16 => [Arg::Ptr(ptr), Arg::Ptr(0)],
            GpuPrecision::F32 => [Arg::Ptr(0), Arg::Ptr(ptr)],
        }
    }

    /// `y = x · wᵀ` through cuBLAS on this backend's stream: `x` of `rows × k` and `w` of
    /// `n × k` in `precision`, `y` of `rows × n` in f32, all row-major, accumulated in f32
    /// (no TF32: CUBLAS_COMPUTE_32F).
    ///
    /// # Safety
    /// The pointers must hold those sizes, and nothing else may write them meanwhile.
    pub(super) unsafe fn gemm(
        &self,
        x: CUdeviceptr,
        w: CUdeviceptr,
        y: CUdeviceptr,
        (rows, n, k): (usize, usize, usize),
        precision: GpuPrecision,
    ) -> Result<(), BackendError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let operand = Self::operand_type(precision).1;
        // Row-major Y (rows × n) = X · Wᵀ is column-major Yᵀ (n × rows) = Wᵀᶜ · Xᶜ, where
        // W row-major (n × k) is column-major k × n and X row-major is column-major k × rows.
        // SAFETY: the handle works on this backend's stream; the caller vouches for the sizes.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                rows as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                operand,
                k as i32,
                x as *const c_void,
                operand,
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                blas_sys::cudaDataType_t::CUDA_R_32F,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| failed(format!("cuBLAS matmul of {rows}×{k} by ({n}×{k})ᵀ: {e:?}")))
    }

    /// The bf16 matrix peak of this GPU as measured: floating-point operations per second
    /// of cuBLAS on square `size`-wide products (bf16 operands, f32 accumulation and output,
    /// as [`Backend::matmul_t`](crate::Backend::matmul_t) multiplies), the median of `repeats` after a warm-up.
    pub fn matmul_peak(&self, size: usize, repeats: usize) -> Result<f64, BackendError> {
        let (operands, weight) = (self.pool.take(size * size * 2)?, self.pool.take(size * size * 2)?);
        for (buffer, seed) in [(&operands, 1), (&weight, 2)] {
            let [y16, y32] = Self::by_type(buffer.ptr(), GpuPrecision::Bf16);
            let n = (size * size) as i64;
            let mut args = [y16, y32, Arg::I64(n), Arg::I64(seed), Arg::F32(1.0)];
            self.launch(&self.kernels.random_weight, Self::grid_stride(size * size), THREADS, 0, &mut args)?;
        }
        let out = self.pool.take(size * size * 4)?;
        let repeats = repeats.max(1);
        let mut times = Vec::with_capacity(repeats);
        for round in 0..repeats + 2 {
            let start = self.event()?;
            // SAFETY: the three buffers hold size × size values of their types.
            unsafe { self.gemm(operands.ptr(), weight.ptr(), out.ptr(), (size, size, size), GpuPrecision::Bf16) }?;
            let end = self.event()?;
            let ms = start.elapsed_ms(&end).map_err(|e| failed(format!("timing a product: {e}")))?;
            if round >= 2 {
                times.push(ms as f64 / 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * (size as f64).powi(3) / times[repeats / 2])
    }

    pub(super) fn event(&self) -> Result<CudaEvent, BackendError> {
        let event = self.context.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| failed(e.to_string()))?;
        event.record(&self.stream).map_err(|e| failed(e.to_string()))?;
        Ok(event)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Buffers go back to the pool as their tensors drop; nothing may still use them.
        let _ = self.synchronize();
    }
}
