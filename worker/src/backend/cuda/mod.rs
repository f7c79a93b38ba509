//! The CUDA backend: finding a usable GPU for this worker ([`probe`]) and the backend on it
//! ([`CudaBackend`]). The CUDA libraries are loaded at run time (cudarc's dynamic loading),
//! so their absence is an error here and never a panic; without the `cuda` cargo feature
//! [`CudaBackend`] is a type that cannot be made and every call says how to build with it,
//! so callers need no `cfg` of their own. Tests that need a GPU skip through
//! [`skip_without_gpu`].

#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod libraries;
#[cfg(feature = "cuda")]
mod memory;
#[cfg(feature = "cuda")]
mod ops;
#[cfg(feature = "cuda")]
pub mod pool;
#[cfg(feature = "cuda")]
mod staging;
#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(feature = "cuda")]
mod transfer;

#[cfg(feature = "cuda")]
pub use backend::{CudaBackend, CudaTensor, CudaWeight, MATMUL_ROWS};
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;

use super::error::BackendError;

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
        let visible = device::count()?;
        let (name, memory_bytes) = device::describe(ordinal, visible)?;
        Ok(GpuChoice { ordinal, name, memory_bytes, visible })
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
            visible => probe(local % visible),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = local;
        Err(BackendError::CudaNotCompiled)
    }
}

/// For a test that needs a GPU: what `found` holds, or `None` where finding it failed
/// because no GPU can be used here, after printing why (the test then returns: skipped).
/// Where `EVALMESH_REQUIRE_GPU` is set (the device check, scripts/device/run.sh, sets it), that failure panics
/// instead, so that a GPU machine cannot pass by skipping.
pub fn skip_without_gpu<T>(found: Result<T, BackendError>) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(e) if std::env::var_os("EVALMESH_REQUIRE_GPU").is_none() => {
            eprintln!("skipped: no usable GPU here: {e}");
            None
        }
        Err(e) => panic!("EVALMESH_REQUIRE_GPU is set, but: {e}"),
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
