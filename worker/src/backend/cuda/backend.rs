//! The CUDA backend: one GPU, one stream. Weights are bf16 (converted at upload, stored
//! once), or f32 on the higher-precision path (`GpuPrecision::F32`); activations are f32,
//! and each matrix product converts its input to the weights' type and multiplies through
//! cuBLAS with f32 accumulation and f32 output. Norms, softmax and every element-wise op
//! run in f32 (DESIGN §4), in the kernels of `kernels.cu`.
//!
//! Determinism: a matrix product is cut into blocks of [`MATMUL_ROWS`] rows, the last one
//! padded with zero rows, so cuBLAS sees the same shape for every block whatever the
//! micro-batch and picks the same kernel: a row's bits do not depend on its batch. The
//! kernels keep each row's reductions to itself (see `kernels.cu`).

use std::ffi::c_void;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUdeviceptr, CUevent_flags};
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream};
use evalmesh_common::protocol::GpuPrecision;
use evalmesh_common::{RopeStyle, TokenScore, TreeLayout};

use super::kernels::{Kernel, Kernels, Param};
use super::pool::{DeviceBuffer, Pool, PoolStats};
use super::staging::Staging;
use crate::backend::{rope_table, Backend, BackendError, HeadLayout, MatmulStats};
use crate::tensor::Matrix;
use crate::wire::{Landing, Outbound, Wire};

/// Rows per matrix-product block: large enough that one block fills an H100/H200 for the
/// shapes of 1B–70B models, small enough that padding a micro-batch costs little.
pub const MATMUL_ROWS: usize = 2048;

/// The widest attention head the kernel holds (4 values per lane of a warp).
const MAX_HEAD_DIM: usize = 128;

/// An f32 activation on the device: `rows × cols`, row-major, in a pool buffer that may be
/// longer (the padded rows of a matrix product).
pub struct CudaTensor {
    buffer: DeviceBuffer,
    rows: usize,
    cols: usize,
}

impl CudaTensor {
    fn ptr(&self) -> CUdeviceptr {
        self.buffer.ptr()
    }
}

/// A bf16 weight on the device, `out × in`, row-major.
pub struct CudaWeight {
    buffer: DeviceBuffer,
    out_features: usize,
    in_features: usize,
}

/// A kernel argument, as the kernel declares it.
enum Arg {
    Ptr(CUdeviceptr),
    I64(i64),
    I32(i32),
    F32(f32),
}

fn failed(problem: impl Into<String>) -> BackendError {
    BackendError::Failed { backend: "cuda", problem: problem.into() }
}

fn check(cond: bool, problem: impl FnOnce() -> String) -> Result<(), BackendError> {
    if cond {
        Ok(())
    } else {
        Err(failed(problem()))
    }
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

pub struct CudaBackend {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    pool: Arc<Pool>,
    staging: Staging,
    precision: GpuPrecision,
    matmul_flops: AtomicU64,
    /// Whether fresh outputs are filled with NaN first (tests: an element a kernel fails
    /// to write then shows).
    poison: AtomicBool,
    /// Start and end events of the matrix products since the stats were last read.
    matmul_events: Mutex<(Vec<(CudaEvent, CudaEvent)>, f64)>,
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
        Ok(CudaBackend {
            context,
            stream,
            blas,
            kernels,
            pool,
            staging,
            precision,
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

    fn bind(&self) -> Result<(), BackendError> {
        self.context.bind_to_thread().map_err(|e| failed(format!("binding the context: {e}")))
    }

    /// Fills every output made from now on with NaN before a kernel writes it (`true`),
    /// so that an element a kernel leaves unwritten fails a comparison.
    pub fn poison_outputs(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// An output of `rows × cols` in a buffer of `capacity_rows` rows.
    fn output(&self, rows: usize, cols: usize, capacity_rows: usize) -> Result<CudaTensor, BackendError> {
        let buffer = self.pool.take(capacity_rows.max(1) * cols.max(1) * 4)?;
        if self.poison.load(Ordering::Relaxed) {
            self.bind()?;
            // SAFETY: the buffer holds `bytes()` bytes; all-ones bytes are a NaN in f32.
            unsafe { result::memset_d8_async(buffer.ptr(), 0xFF, buffer.bytes(), self.stream.cu_stream()) }
                .map_err(|e| failed(format!("poisoning a buffer: {e}")))?;
        }
        Ok(CudaTensor { buffer, rows, cols })
    }

    fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor, BackendError> {
        self.output(rows, cols, rows)
    }

    /// Copies `values` into a fresh pool buffer.
    fn upload_values<T>(&self, values: &[T]) -> Result<DeviceBuffer, BackendError> {
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

    fn download_values<T: Default + Clone>(&self, ptr: CUdeviceptr, len: usize) -> Result<Vec<T>, BackendError> {
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

    fn launch(
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
    fn grid_stride(n: usize) -> (u32, u32) {
        (blocks(n, THREADS as usize).min(65_535), 1)
    }

    /// Bytes of a weight or operand value, and cuBLAS's name of their type.
    fn operand_type(precision: GpuPrecision) -> (usize, blas_sys::cudaDataType_t) {
        match precision {
            GpuPrecision::Bf16 => (2, blas_sys::cudaDataType_t::CUDA_R_16BF),
            GpuPrecision::F32 => (4, blas_sys::cudaDataType_t::CUDA_R_32F),
        }
    }

    /// The pointer arguments of a kernel that writes (or reads) either type, the other null.
    fn by_type(ptr: CUdeviceptr, precision: GpuPrecision) -> [Arg; 2] {
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
    unsafe fn gemm(
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
    /// as [`Backend::matmul_t`] multiplies), the median of `repeats` after a warm-up.
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

    fn event(&self) -> Result<CudaEvent, BackendError> {
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

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, m: Matrix) -> Result<CudaTensor, BackendError> {
        Ok(CudaTensor { buffer: self.upload_values(&m.data)?, rows: m.rows, cols: m.cols })
    }

    fn upload_weight(&self, w: Matrix) -> Result<CudaWeight, BackendError> {
        self.bind()?;
        let buffer = self.pool.take_exact(w.data.len() * Self::operand_type(self.precision).0)?;
        let copied = match self.precision {
            GpuPrecision::Bf16 => {
                let values: Vec<u16> = w.data.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
                // SAFETY: the buffer holds exactly the values; the copy is synchronised
                // below, before they are dropped.
                unsafe { result::memcpy_htod_async(buffer.ptr(), &values, self.stream.cu_stream()) }
            }
            // SAFETY: as above.
            GpuPrecision::F32 => unsafe { result::memcpy_htod_async(buffer.ptr(), &w.data, self.stream.cu_stream()) },
        };
        copied.map_err(|e| failed(format!("copying a weight to the device: {e}")))?;
        self.synchronize()?;
        Ok(CudaWeight { buffer, out_features: w.rows, in_features: w.cols })
    }

    fn random_weight(&self, rows: usize, cols: usize, seed: u64, scale: f32) -> Result<CudaWeight, BackendError> {
        let n = rows * cols;
        let buffer = self.pool.take_exact(n * Self::operand_type(self.precision).0)?;
        if n > 0 {
            let [y16, y32] = Self::by_type(buffer.ptr(), self.precision);
            let mut args = [y16, y32, Arg::I64(n as i64), Arg::I64(seed as i64), Arg::F32(scale)];
            self.launch(&self.kernels.random_weight, Self::grid_stride(n), THREADS, 0, &mut args)?;
        }
        Ok(CudaWeight { buffer, out_features: rows, in_features: cols })
    }

    fn download(&self, t: &CudaTensor) -> Result<Matrix, BackendError> {
        Ok(Matrix::from_vec(t.rows, t.cols, self.download_values(t.ptr(), t.rows * t.cols)?))
    }

    fn rows(&self, t: &CudaTensor) -> usize {
        t.rows
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        self.stream.synchronize().map_err(|e| failed(format!("synchronising: {e}")))?;
        self.staging.synchronize()
    }

    fn send_out(&self, t: CudaTensor) -> Result<Outbound, BackendError> {
        self.bind()?;
        let (ptr, rows, cols) = (t.ptr(), t.rows, t.cols);
        self.staging.send_out(&self.stream, ptr, rows, cols, t)
    }

    fn landing(&self) -> Arc<dyn Landing> {
        self.staging.landing()
    }

    fn adopt(&self, wire: Wire, rows: usize, cols: usize) -> Result<CudaTensor, BackendError> {
        let out = self.tensor(rows, cols)?;
        self.bind()?;
        self.staging.adopt(&self.stream, wire, out.ptr(), rows * cols)?;
        Ok(out)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor, BackendError> {
        let (vocab, hidden) = (table.out_features, table.in_features);
        check(ids.iter().all(|&id| (id as usize) < vocab), || format!("token id past the {vocab} embedding rows"))?;
        let out = self.tensor(ids.len(), hidden)?;
        if ids.is_empty() {
            return Ok(out);
        }
        let device_ids = self.upload_values(ids)?;
        let [table16, table32] = Self::by_type(table.buffer.ptr(), self.precision);
        self.launch(
            &self.kernels.embed,
            (ids.len() as u32, blocks(hidden, THREADS as usize)),
            THREADS,
            0,
            &mut [table16, table32, Arg::Ptr(device_ids.ptr()), Arg::Ptr(out.ptr()), Arg::I64(hidden as i64)],
        )?;
        Ok(out)
    }

    fn matmul_t(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor, BackendError> {
        let (m, n, k) = (x.rows, w.out_features, w.in_features);
        check(x.cols == k, || format!("matmul of {m}×{} by ({n}×{k})ᵀ", x.cols))?;
        let padded = m.div_ceil(MATMUL_ROWS).max(1) * MATMUL_ROWS;
        let bytes = Self::operand_type(self.precision).0;
        let operand = self.pool.take(padded * k * bytes)?;
        let [y16, y32] = Self::by_type(operand.ptr(), self.precision);
        self.launch(
            &self.kernels.to_operand,
            Self::grid_stride(padded * k),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), y16, y32, Arg::I64(m as i64), Arg::I64(padded as i64), Arg::I64(k as i64)],
        )?;
        let out = self.output(m, n, padded)?;
        let start = self.event()?;
        for block in 0..padded / MATMUL_ROWS {
            let x_block = operand.ptr() + (block * MATMUL_ROWS * k * bytes) as u64;
            let y_block = out.ptr() + (block * MATMUL_ROWS * n * 4) as u64;
            // SAFETY: the operand holds `padded` rows of k and the weight n × k, both in the
            // backend's precision; the output `padded` f32 rows of n.
            unsafe { self.gemm(x_block, w.buffer.ptr(), y_block, (MATMUL_ROWS, n, k), self.precision) }?;
        }
        let end = self.event()?;
        self.matmul_flops.fetch_add(2 * (m * n * k) as u64, Ordering::Relaxed);
        let mut events = self.matmul_events.lock().unwrap_or_else(|p| p.into_inner());
        events.0.push((start, end));
        if events.0.len() >= PENDING_EVENTS {
            settle(&mut events);
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f64) -> Result<CudaTensor, BackendError> {
        check(weight.rows * weight.cols == x.cols, || {
            format!("norm weight of {} for rows of {}", weight.rows * weight.cols, x.cols)
        })?;
        let out = self.tensor(x.rows, x.cols)?;
        if x.rows > 0 {
            self.launch(
                &self.kernels.rms_norm,
                (x.rows as u32, 1),
                THREADS,
                0,
                &mut [
                    Arg::Ptr(x.ptr()),
                    Arg::Ptr(weight.ptr()),
                    Arg::Ptr(out.ptr()),
                    Arg::I64(x.cols as i64),
                    Arg::F32(eps as f32),
                ],
            )?;
        }
        Ok(out)
    }

    fn rope_table(&self, positions: &[u32], head_dim: usize, theta: f64) -> Result<CudaTensor, BackendError> {
        // A small table: the CPU backend's, computed on the host.
        self.upload(rope_table(positions, head_dim, theta))
    }

    fn apply_rope(
        &self,
        x: &mut CudaTensor,
        table: &CudaTensor,
        cols: Range<usize>,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<(), BackendError> {
        check(
            table.rows == x.rows
                && table.cols == head_dim
                && cols.end <= x.cols
                && head_dim > 0
                && cols.len().is_multiple_of(head_dim),
            || {
                format!(
                    "rope over columns {cols:?} of {}×{} with a {}×{} table",
                    x.rows, x.cols, table.rows, table.cols
                )
            },
        )?;
        let pairs = cols.len() / 2;
        if x.rows == 0 || pairs == 0 {
            return Ok(());
        }
        self.launch(
            &self.kernels.rope,
            (x.rows as u32, blocks(pairs, THREADS as usize)),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                Arg::Ptr(table.ptr()),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(cols.end as i64),
                Arg::I32(head_dim as i32),
                Arg::I32(i32::from(style == RopeStyle::AdjacentPairs)),
            ],
        )
    }

    fn attention(&self, qkv: &CudaTensor, trees: &[TreeLayout], heads: HeadLayout) -> Result<CudaTensor, BackendError> {
        let covered: usize = trees.iter().map(TreeLayout::len).sum();
        check(
            qkv.cols == heads.width()
                && covered == qkv.rows
                && heads.num_kv_heads > 0
                && heads.num_heads.is_multiple_of(heads.num_kv_heads)
                && heads.head_dim <= MAX_HEAD_DIM,
            || format!("attention over {}×{} with {heads:?} and trees covering {covered} rows", qkv.rows, qkv.cols),
        )?;
        let out = self.tensor(qkv.rows, heads.num_heads * heads.head_dim)?;
        if qkv.rows == 0 {
            return Ok(out);
        }
        let spans = attention_spans(trees, qkv.rows);
        let spans = self.upload_values(&spans)?;
        let items = qkv.rows * heads.num_heads;
        let warps_per_block = 4;
        self.launch(
            &self.kernels.attention,
            (blocks(items, warps_per_block), 1),
            32 * warps_per_block as u32,
            (warps_per_block * heads.head_dim * 4) as u32,
            &mut [
                Arg::Ptr(qkv.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::Ptr(spans.ptr()),
                Arg::I64(qkv.rows as i64),
                Arg::I64(qkv.cols as i64),
                Arg::I32(heads.num_heads as i32),
                Arg::I32(heads.num_kv_heads as i32),
                Arg::I32(heads.head_dim as i32),
                Arg::F32(1.0 / (heads.head_dim as f32).sqrt()),
            ],
        )?;
        Ok(out)
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor, BackendError> {
        check(gate_up.cols.is_multiple_of(2), || format!("gate/up activation has odd width {}", gate_up.cols))?;
        let f = gate_up.cols / 2;
        let out = self.tensor(gate_up.rows, f)?;
        if gate_up.rows * f > 0 {
            self.launch(
                &self.kernels.silu_mul,
                Self::grid_stride(gate_up.rows * f),
                THREADS,
                0,
                &mut [Arg::Ptr(gate_up.ptr()), Arg::Ptr(out.ptr()), Arg::I64(gate_up.rows as i64), Arg::I64(f as i64)],
            )?;
        }
        Ok(out)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<(), BackendError> {
        check(x.rows == y.rows && x.cols == y.cols, || {
            format!("add of {}×{} and {}×{}", x.rows, x.cols, y.rows, y.cols)
        })?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            &self.kernels.add_assign,
            Self::grid_stride(n),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::I64(n as i64)],
        )
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor, BackendError> {
        check(rows.iter().all(|&r| r < x.rows), || format!("row index past {} rows", x.rows))?;
        let out = self.tensor(rows.len(), x.cols)?;
        if rows.is_empty() || x.cols == 0 {
            return Ok(out);
        }
        let index: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let index = self.upload_values(&index)?;
        self.launch(
            &self.kernels.gather_rows,
            (rows.len() as u32, blocks(x.cols, THREADS as usize)),
            THREADS,
            0,
            &mut [Arg::Ptr(x.ptr()), Arg::Ptr(index.ptr()), Arg::Ptr(out.ptr()), Arg::I64(x.cols as i64)],
        )?;
        Ok(out)
    }

    fn columns(&self, x: &CudaTensor, cols: Range<usize>) -> Result<CudaTensor, BackendError> {
        check(cols.start <= cols.end && cols.end <= x.cols, || format!("columns {cols:?} of {}", x.cols))?;
        let out = self.tensor(x.rows, cols.len())?;
        if x.rows == 0 || cols.is_empty() {
            return Ok(out);
        }
        self.launch(
            &self.kernels.columns,
            (x.rows as u32, blocks(cols.len(), THREADS as usize)),
            THREADS,
            0,
            &mut [
                Arg::Ptr(x.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::I64(x.cols as i64),
                Arg::I64(cols.start as i64),
                Arg::I64(cols.len() as i64),
            ],
        )?;
        Ok(out)
    }

    fn score(&self, logits: &CudaTensor, targets: &[u32]) -> Result<Vec<TokenScore>, BackendError> {
        check(targets.len() == logits.rows && targets.iter().all(|&t| (t as usize) < logits.cols), || {
            format!("{} targets for {} rows of {} logits", targets.len(), logits.rows, logits.cols)
        })?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let device_targets = self.upload_values(targets)?;
        let logprob = self.pool.take(targets.len() * 4)?;
        let greedy = self.pool.take(targets.len() * 4)?;
        self.launch(
            &self.kernels.score,
            (targets.len() as u32, 1),
            1024,
            0,
            &mut [
                Arg::Ptr(logits.ptr()),
                Arg::Ptr(device_targets.ptr()),
                Arg::Ptr(logprob.ptr()),
                Arg::Ptr(greedy.ptr()),
                Arg::I64(logits.cols as i64),
            ],
        )?;
        let logprob: Vec<f32> = self.download_values(logprob.ptr(), targets.len())?;
        let greedy: Vec<u32> = self.download_values(greedy.ptr(), targets.len())?;
        Ok(logprob.into_iter().zip(greedy).map(|(logprob, g)| TokenScore { logprob, greedy: g == 1 }).collect())
    }

    fn matmul_stats(&self) -> MatmulStats {
        let mut events = self.matmul_events.lock().unwrap_or_else(|p| p.into_inner());
        settle(&mut events);
        MatmulStats { flops: self.matmul_flops.load(Ordering::Relaxed), seconds: events.1 }
    }

    fn head_rows(&self) -> usize {
        evalmesh_common::cost::GPU_HEAD_ROWS
    }

    fn peak_device_bytes(&self) -> u64 {
        self.pool.stats().peak_bytes
    }
}

/// Matrix products whose events are kept before their times are added up (about one forward
/// pass of a large model): bounds the events held, at the cost of waiting for them then.
const PENDING_EVENTS: usize = 512;

/// Adds the times of the pending products to the total (waiting for the last to finish).
fn settle(events: &mut (Vec<(CudaEvent, CudaEvent)>, f64)) {
    let (pending, seconds) = events;
    for (start, end) in pending.drain(..) {
        // elapsed_ms waits for the end event.
        if let Ok(ms) = start.elapsed_ms(&end) {
            *seconds += ms as f64 / 1e3;
        }
    }
}

/// Each query row's keys as two runs `[shared_start, shared_len, own_start, own_len]`: a
/// prefix row sees its prefix up to itself; a branch row sees the whole prefix, then its
/// branch up to itself (the layout of DESIGN §5, as the CPU backend reads it).
fn attention_spans(trees: &[TreeLayout], rows: usize) -> Vec<i64> {
    let mut spans = Vec::with_capacity(4 * rows);
    for tree in trees {
        let (start, prefix) = (tree.start as i64, tree.prefix_len as i64);
        for i in 0..prefix {
            spans.extend([0, 0, start, i + 1]);
        }
        let mut branch_start = start + prefix;
        for &len in &tree.branch_lens {
            for j in 0..len as i64 {
                spans.extend([start, prefix, branch_start, j + 1]);
            }
            branch_start += len as i64;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_the_tree_layout() {
        // Tree at row 2: prefix of 2, branches of 2 and 1.
        let trees = [
            TreeLayout { start: 0, prefix_len: 2, branch_lens: Vec::new() },
            TreeLayout { start: 2, prefix_len: 2, branch_lens: vec![2, 1] },
        ];
        let spans = attention_spans(&trees, 7);
        let rows: Vec<&[i64]> = spans.chunks(4).collect();
        assert_eq!(
            rows,
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 2],
                &[0, 0, 2, 1],
                &[0, 0, 2, 2],
                &[2, 2, 4, 1],
                &[2, 2, 4, 2],
                &[2, 2, 6, 1],
            ]
        );
    }
}
