//! Probing a GPU through cudarc, after checking that each CUDA library loads (cudarc
//! panics on first use of a library it cannot load).

use cudarc::driver::CudaContext;

use crate::backend::error::BackendError;

fn failed(problem: impl Into<String>) -> BackendError {
    BackendError::Failed { backend: "cuda", problem: problem.into() }
}

/// GPUs this process can see, once the driver, cuBLAS and NVRTC are known to load.
pub fn count() -> Result<usize, BackendError> {
    // SAFETY: these only try to load the shared libraries and report whether they loaded.
    let (driver, cublas, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    for (present, library) in [
        (driver, "the NVIDIA driver (libcuda.so)"),
        (cublas, "cuBLAS (libcublas.so.12)"),
        (nvrtc, "NVRTC (libnvrtc.so.12)"),
    ] {
        if !present {
            return Err(failed(format!(
                "{library} cannot be loaded: no usable GPU here (install the driver and CUDA 12 libraries, or run with --device cpu)"
            )));
        }
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
