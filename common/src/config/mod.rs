//! The model configuration: one validated [`ModelConfig`] that describes the whole
//! transformer as data: its shapes, the block every layer runs ([`BlockSpec`]: which
//! norms, which activation, biases, Q/K norms, attention scale and caps), each layer's
//! attention window and rotary embedding ([`LayerSpec`], [`Rope`]) and its experts
//! ([`Experts`]). Every supported family fills it from its own fields ([`family`]): a
//! Hugging Face `config.json` ([`hf`]) or GGUF metadata (read by the worker). Every
//! error names the field and its value.

pub mod family;
pub mod hf;
pub mod model;
pub mod rope;

pub use family::{Family, FAMILIES};
pub use hf::HfConfig;
pub use model::{
    positive, required, Activation, BlockSpec, ConfigError, Experts, LayerSpec, ModelConfig, QkNorm, RopeStyle,
};
pub use rope::{Rope, RopeScaling};
