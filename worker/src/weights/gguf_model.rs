//! A GGUF file as a [`WeightSource`]: the configuration from its metadata and the
//! tensors under llama.cpp's names (`blk.N.attn_q.weight`, …).

use std::path::Path;
use std::sync::atomic::AtomicU64;

use evalmesh_common::config::{FieldNames, RawConfig};
use evalmesh_common::{ConfigError, ModelConfig, RopeStyle};

use super::gguf::{GgufFile, Value};
use super::{LayerTensor, Located, TensorId, WeightError, WeightSource};

/// Architectures whose GGUF tensors follow the Llama block.
const LLAMA_ARCHITECTURES: &[&str] = &["llama"];

pub struct GgufModel {
    pub file: GgufFile,
    config: ModelConfig,
    bytes_read: AtomicU64,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = GgufFile::open(path)?;
        let config =
            config_from_metadata(&file).map_err(|error| WeightError::Config { path: path.to_path_buf(), error })?;
        Ok(GgufModel { file, config, bytes_read: AtomicU64::new(0) })
    }

    pub fn tensor_name(&self, id: TensorId) -> String {
        match id {
            TensorId::Embedding => "token_embd.weight".into(),
            TensorId::FinalNorm => "output_norm.weight".into(),
            TensorId::Head if self.config.tied_embeddings => "token_embd.weight".into(),
            TensorId::Head => "output.weight".into(),
            TensorId::Layer(l, t) => {
                let part = match t {
                    LayerTensor::AttnNorm => "attn_norm",
                    LayerTensor::Q => "attn_q",
                    LayerTensor::K => "attn_k",
                    LayerTensor::V => "attn_v",
                    LayerTensor::O => "attn_output",
                    LayerTensor::FfnNorm => "ffn_norm",
                    LayerTensor::Gate => "ffn_gate",
                    LayerTensor::Up => "ffn_up",
                    LayerTensor::Down => "ffn_down",
                };
                format!("blk.{l}.{part}.weight")
            }
        }
    }
}

fn config_from_metadata(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
    let arch_key = "general.architecture";
    let arch = file.get(arch_key).ok_or_else(|| ConfigError::Missing { field: arch_key.into() })?.as_str().ok_or_else(
        || ConfigError::Invalid { field: arch_key.into(), value: "?".into(), problem: "must be a string".into() },
    )?;
    if !LLAMA_ARCHITECTURES.contains(&arch) {
        return Err(ConfigError::UnsupportedArchitecture(arch.to_string()));
    }
    let names = FieldNames::gguf(arch);
    let uint = |key: &str| -> Result<Option<u64>, ConfigError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| ConfigError::Invalid {
                field: key.into(),
                value: format!("{v:?}"),
                problem: "must be an unsigned integer".into(),
            }),
        }
    };
    let float = |key: &str| -> Result<Option<f64>, ConfigError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| ConfigError::Invalid {
                field: key.into(),
                value: format!("{v:?}"),
                problem: "must be a number".into(),
            }),
        }
    };
    let vocab_from_tokens = file.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|t| t.len() as u64);
    let raw = RawConfig {
        vocab_size: uint(&names.vocab_size)?.or(vocab_from_tokens),
        hidden_size: uint(&names.hidden_size)?,
        intermediate_size: uint(&names.intermediate_size)?,
        num_layers: uint(&names.num_layers)?,
        num_heads: uint(&names.num_heads)?,
        num_kv_heads: uint(&names.num_kv_heads)?,
        head_dim: uint(&names.head_dim)?,
        rope_theta: float(&names.rope_theta)?,
        rms_norm_eps: float(&names.rms_norm_eps)?,
        max_position: uint(&names.max_position)?,
        tied_embeddings: !file.tensors.contains_key("output.weight"),
    };
    ModelConfig::from_raw(&raw, &names, RopeStyle::AdjacentPairs)
}

impl WeightSource for GgufModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn path(&self) -> &Path {
        &self.file.path
    }

    fn locate(&self, id: TensorId) -> Result<Located<'_>, WeightError> {
        let name = self.tensor_name(id);
        let info = self
            .file
            .tensors
            .get(&name)
            .ok_or_else(|| WeightError::MissingTensor { path: self.file.path.clone(), name: name.clone() })?;
        let shape = match info.dims[..] {
            [cols] => (1, cols as usize),
            [cols, rows] => (rows as usize, cols as usize),
            _ => {
                return Err(WeightError::Format {
                    path: self.file.path.clone(),
                    problem: format!("tensor `{name}` has {} dimensions, expected 1 or 2", info.dims.len()),
                })
            }
        };
        Ok(Located { name, shape, dtype: info.ggml_type, bytes: self.file.tensor_bytes(info) })
    }

    fn bytes_read(&self) -> &AtomicU64 {
        &self.bytes_read
    }
}
