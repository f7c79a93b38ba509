//! [`BackendError`]: how a backend's operations fail. A leaf, so that the backend traits
//! and the wires they send from (`crate::comm::wire`) both name it without importing each other.

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend `{backend}`: {problem}")]
    Failed { backend: &'static str, problem: String },
    #[error("this evalmesh was built without CUDA: rebuild with `cargo build --release --features cuda` (no CUDA toolkit needed, only the NVRTC that scripts/fetch-nvrtc.sh fetches), or run with --device cpu")]
    CudaNotCompiled,
}
