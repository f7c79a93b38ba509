//! [`Transfer`]: how a backend's tensors leave for another rank and arrive from one, in
//! the wires of `crate::comm::wire` (host memory unless the backend lends its own).

use std::sync::Arc;

use super::error::BackendError;
use super::memory::DeviceMemory;
use crate::comm::wire::{HostLanding, Landing, Outbound, Wire};
use crate::tensor::Matrix;

/// Activations between a backend and MPI: out of a tensor into a wire, and from a wire
/// into a tensor.
pub trait Transfer: DeviceMemory {
    /// `t` on its way to another rank, in memory MPI can send from (on the host unless
    /// the backend says otherwise).
    fn send_out(&self, t: Self::Tensor) -> Result<Outbound, BackendError> {
        let m = self.download(&t)?;
        Ok(Outbound::now(m.rows, m.cols, Wire::host(m.data)))
    }
    /// Where activations from another rank land before [`Transfer::adopt`] takes them in.
    fn landing(&self) -> Arc<dyn Landing> {
        Arc::new(HostLanding)
    }
    /// A `rows × cols` tensor from values received into a wire of [`Transfer::landing`].
    fn adopt(&self, wire: Wire, rows: usize, cols: usize) -> Result<Self::Tensor, BackendError> {
        match wire.into_host_values() {
            Ok(values) if values.len() == rows * cols => self.upload(Matrix::from_vec(rows, cols, values)),
            Ok(values) => Err(BackendError::Failed {
                backend: self.name(),
                problem: format!("{} values received for {rows} × {cols}", values.len()),
            }),
            Err(_) => Err(BackendError::Failed {
                backend: self.name(),
                problem: "activations landed in memory this backend did not lend".into(),
            }),
        }
    }
}
