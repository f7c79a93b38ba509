//! The CUDA backend's memory: tensors and weights in its pool, copies to and from the
//! host on its stream, random weights drawn on the device, and the pool's peak.

use cudarc::driver::result;
use evalmesh_common::protocol::GpuPrecision;

use super::backend::{failed, Arg, CudaBackend, CudaTensor, CudaWeight, THREADS};
use crate::backend::error::BackendError;
use crate::backend::memory::DeviceMemory;
use crate::tensor::Matrix;

impl DeviceMemory for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn provenance(&self) -> String {
        self.provenance.clone()
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

    fn weight_bytes(&self, w: &CudaWeight) -> u64 {
        (w.out_features * w.in_features * Self::operand_type(self.precision).0) as u64
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

    fn peak_device_bytes(&self) -> u64 {
        self.pool.stats().peak_bytes
    }
}
