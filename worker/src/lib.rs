//! evalmesh workers: tensors and backends, weight loading (GGUF, safetensors) and the
//! transformer stage. Workers see token ids, never text.

pub mod backend;
pub mod stage;
pub mod tensor;
pub mod weights;

pub use backend::{cpu::CpuBackend, Backend, BackendError};
pub use stage::{LlamaStage, StageError, StageInput, StageOutput, StageSpec};
pub use tensor::Matrix;
pub use weights::{WeightError, WeightSource};
