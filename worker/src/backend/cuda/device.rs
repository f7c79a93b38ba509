//! Probing a GPU through cudarc, after loading each CUDA library (cudarc panics on first
//! use of a library it cannot load).

use cudarc::driver::CudaContext;

use super::libraries;
use crate::backend::error::BackendError;

fn failed(problem: impl Into<String>) -> BackendError {
    BackendError::Failed { backend: "cuda", problem: problem.into() }
}

/// GPUs this process can see, once the driver and cuBLAS are loaded ([`libraries`]: their
/// versioned names, wherever they are installed; NVRTC only where no built kernel fits).
pub fn count() -> Result<usize, BackendError> {
    for library in [libraries::DRIVER, libraries::CUBLAS] {
        libraries::load(library)?;
    }
    // SAFETY: these only try to load the shared libraries (already open) and report whether they loaded.
    let present = unsafe { cudarc::driver::sys::is_culib_present() && cudarc::cublas::sys::is_culib_present() };
    if !present {
        return Err(failed("cudarc cannot open the CUDA libraries that were found (a library named libcuda.so or libcublas.so of another CUDA version earlier on the loader's path?)"));
    }
    let visible = CudaContext::device_count().map_err(|e| failed(format!("counting GPUs: {e}")))?;
    Ok(usize::try_from(visible).unwrap_or(0))
}

/// The name and memory of GPU `ordinal` of the `visible` ones.
pub fn describe(ordinal: usize, visible: usize) -> Result<(String, u64), BackendError> {
    if ordinal >= visible {
        return Err(failed(format!("GPU {ordinal} asked for, {visible} visible (check CUDA_VISIBLE_DEVICES)")));
    }
    let context = CudaContext::new(ordinal).map_err(|e| failed(format!("GPU {ordinal}: {e}")))?;
    let name = context.name().map_err(|e| failed(format!("GPU {ordinal}: {e}")))?;
    let memory_bytes = context.total_mem().map_err(|e| failed(format!("GPU {ordinal}: {e}")))? as u64;
    Ok((name, memory_bytes))
}
