//! evalmesh workers: tensors and backends, weight loading (GGUF, safetensors) and the
//! transformer stage; loading a stage on its device ([`loaded`]), everything between
//! ranks over MPI ([`comm`]) and a worker rank's life (`node`). Workers see token ids,
//! never text. Without the `mpi` feature, the ranks' side ([`comm`]'s MPI modules and
//! `node`) is left out.

pub mod backend;
pub mod comm;
pub mod loaded;
pub mod monitor;
#[cfg(feature = "mpi")]
pub mod node;
pub mod stage;
pub mod tensor;
pub mod weights;

pub use backend::{cpu::start_threads, cpu::CpuBackend, Backend, BackendError, DeviceMemory, Transfer};
pub use evalmesh_common::StageSpec;
pub use loaded::{load_stage, Forwarded, LoadError, LoadedStage, Site, Target};
pub use stage::{Alternatives, GroupSum, LocalSum, StageError, StageInput, StageOutput, TransformerStage};
pub use tensor::Matrix;
pub use weights::{WeightError, WeightSource};
