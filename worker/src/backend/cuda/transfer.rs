//! The CUDA backend's activations to and from other ranks: through its staging
//! (`super::staging`), in device memory where the MPI is CUDA-aware and pinned host
//! buffers otherwise.

use std::sync::Arc;

use super::backend::{CudaBackend, CudaTensor};
use crate::backend::error::BackendError;
use crate::backend::transfer::Transfer;
use crate::comm::wire::{Landing, Outbound, Wire};

impl Transfer for CudaBackend {
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
}
