//! The CUDA backend: finding a usable GPU for this worker ([`probe`]) and the backend on it
//! ([`CudaBackend`]). The CUDA libraries are loaded at run time (cudarc's dynamic loading),
//! so their absence is an error here and never a panic; without the `cuda` cargo feature
//! [`CudaBackend`] is a type that cannot be made and every call says how to build with it,
//! so callers need no `cfg` of their own.

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod pool;
#[cfg(feature = "cuda")]
mod staging;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
pub use backend::{CudaBackend, CudaTensor, CudaWeight, MATMUL_ROWS};
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;

use super::BackendError;

/// The GPU a worker takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuChoice {
    /// The device's ordinal among the visible ones (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: u64,
    /// GPUs this process can see.
    pub visible: usize,
}

/// The node-local rank of this process, from the launcher's environment (OpenMPI's
/// `OMPI_COMM_WORLD_LOCAL_RANK`, Slurm's `SLURM_LOCALID`, PMIx's `PMIX_LOCAL_RANK`), or
/// `None` outside a launcher.
pub fn local_rank_from_env() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "PMIX_LOCAL_RANK", "MPI_LOCALRANKID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Finds the GPU `ordinal` and checks that the driver, cuBLAS and NVRTC can be loaded.
pub fn probe(ordinal: usize) -> Result<GpuChoice, BackendError> {
    #[cfg(feature = "cuda")]
    {
        device::probe(ordinal)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(BackendError::CudaNotCompiled)
    }
}

/// The GPU of the `local`-th worker of a node: one GPU each, in turn where the workers
/// outnumber the GPUs this process sees (after `CUDA_VISIBLE_DEVICES`).
pub fn probe_local(local: usize) -> Result<GpuChoice, BackendError> {
    #[cfg(feature = "cuda")]
    {
        match device::count()? {
            0 => Err(BackendError::Failed {
                backend: "cuda",
                problem: "no GPU visible (check CUDA_VISIBLE_DEVICES), or run with --device cpu".into(),
            }),
            visible => device::probe(local % visible),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = local;
        Err(BackendError::CudaNotCompiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_probing_is_an_error_not_a_panic() {
        // This machine has no GPU (or the binary has no CUDA): either way, an error.
        if let Err(e) = probe(0) {
            assert!(!e.to_string().is_empty());
        }
    }
}
