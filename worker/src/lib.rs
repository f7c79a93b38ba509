//! evalmesh workers: tensors and backends, weight loading (GGUF, safetensors) and the
//! transformer stage. Workers see token ids, never text.

pub mod backend;
pub mod monitor;
pub mod node;
pub mod stage;
pub mod tensor;
pub mod transport;
pub mod weights;
pub mod wire;

pub use backend::{cpu::CpuBackend, Backend, BackendError};
pub use evalmesh_common::StageSpec;
pub use stage::{GroupSum, LlamaStage, LocalSum, StageError, StageInput, StageOutput};
pub use tensor::Matrix;
pub use weights::{WeightError, WeightSource};
