//! [`DeviceMemory`]: where a backend keeps its tensors and weights, and how values move
//! between there and the host (upload, download, random weights drawn in place), with
//! the waits and the figures of that memory.

use super::error::BackendError;
use crate::tensor::Matrix;
use crate::weights::StoredMatrix;

/// A backend's memory: its tensors (activations, `rows × features`) and weights (given as
/// `out × in`, kept in whatever layout suits the backend), and the copies to and from
/// the host.
pub trait DeviceMemory: Send + Sync {
    type Tensor: Send + Sync;
    type Weight: Send + Sync;

    /// The backend's name, as `--device` spells it.
    fn name(&self) -> &'static str;
    /// What else fixes the last bits of its arithmetic, recorded in a run's journal (a GPU's
    /// model, multiprocessor count, cuBLAS version and kernel image); the name alone on
    /// the CPU.
    fn provenance(&self) -> String {
        self.name().to_string()
    }
    fn upload(&self, m: Matrix) -> Result<Self::Tensor, BackendError>;
    /// Takes an `out × in` weight for `Backend::matmul_t` and `Backend::embed`.
    fn upload_weight(&self, w: Matrix) -> Result<Self::Weight, BackendError>;
    /// Takes an `out × in` weight in its file's encoding; a backend that computes with
    /// widened weights widens it here.
    fn upload_stored(&self, w: StoredMatrix<'_>) -> Result<Self::Weight, BackendError> {
        self.upload_weight(w.widen())
    }
    /// The bytes of memory a weight occupies.
    fn weight_bytes(&self, w: &Self::Weight) -> u64;
    fn download(&self, t: &Self::Tensor) -> Result<Matrix, BackendError>;
    fn rows(&self, t: &Self::Tensor) -> usize;
    /// A `rows × cols` weight of `scale · random_unit(seed, i)` for its values in row-major
    /// order (a random model's: `weights::random`), drawn on the host and uploaded unless
    /// the backend draws them where it keeps them.
    fn random_weight(&self, rows: usize, cols: usize, seed: u64, scale: f32) -> Result<Self::Weight, BackendError> {
        self.upload_weight(Matrix::random(rows, cols, seed, scale))
    }
    /// Waits until every op queued so far is done (a GPU queues ops and returns at once).
    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// The most device memory held so far (weights and buffers), where the backend has its own.
    fn peak_device_bytes(&self) -> u64 {
        0
    }
}
