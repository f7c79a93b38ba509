//! A GGUF file as a [`WeightSource`]: the configuration from its metadata, read for the
//! family its `general.architecture` names, and the tensors under llama.cpp's names
//! (`blk.N.attn_q.weight`, …), experts sliced out of llama.cpp's stacked arrays and Phi-3's
//! fused projections cut into their parts.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use evalmesh_common::config::family::{unsupported, FieldNames, RawConfig, RawRope};
use evalmesh_common::config::{Family, RopeScaling};
use evalmesh_common::{ConfigError, ModelConfig, RopeStyle};

use super::gguf::{GgufFile, Value};
use super::{LayerTensor, Located, TensorId, WeightError, WeightSource};

pub struct GgufModel {
    pub file: GgufFile,
    config: ModelConfig,
    bytes_read: AtomicU64,
}

/// Where a tensor lies in a GGUF file: its name, and which part of it is the tensor.
struct Place {
    name: String,
    part: Part,
}

enum Part {
    Whole,
    /// Rows of a fused matrix.
    Rows(Range<usize>),
    /// One expert's matrix of an array stacking all of a layer's experts.
    Expert(usize),
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = GgufFile::open(path)?;
        let config =
            config_from_metadata(&file).map_err(|error| WeightError::Config { path: path.to_path_buf(), error })?;
        Ok(GgufModel { file, config, bytes_read: AtomicU64::new(0) })
    }

    /// The tensor's name in the file.
    pub fn tensor_name(&self, id: TensorId) -> String {
        self.place(id).name
    }

    fn place(&self, id: TensorId) -> Place {
        let c = &self.config;
        let (q, kv, f) = (c.q_dim(), c.kv_dim(), c.ffn_width());
        let fused = c.architecture == "phi3";
        let whole = |name: &str| Place { name: name.into(), part: Part::Whole };
        let (part, what) = match id {
            TensorId::Embedding => return whole("token_embd.weight"),
            TensorId::FinalNorm => return whole("output_norm.weight"),
            TensorId::Head if c.tied_embeddings => return whole("token_embd.weight"),
            TensorId::Head => return whole("output.weight"),
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm => ("attn_norm.weight", Part::Whole),
                LayerTensor::PostAttnNorm => ("post_attention_norm.weight", Part::Whole),
                LayerTensor::FfnNorm => ("ffn_norm.weight", Part::Whole),
                LayerTensor::PostFfnNorm => ("post_ffw_norm.weight", Part::Whole),
                LayerTensor::Q if fused => ("attn_qkv.weight", Part::Rows(0..q)),
                LayerTensor::K if fused => ("attn_qkv.weight", Part::Rows(q..q + kv)),
                LayerTensor::V if fused => ("attn_qkv.weight", Part::Rows(q + kv..q + 2 * kv)),
                LayerTensor::Q => ("attn_q.weight", Part::Whole),
                LayerTensor::K => ("attn_k.weight", Part::Whole),
                LayerTensor::V => ("attn_v.weight", Part::Whole),
                LayerTensor::QBias => ("attn_q.bias", Part::Whole),
                LayerTensor::KBias => ("attn_k.bias", Part::Whole),
                LayerTensor::VBias => ("attn_v.bias", Part::Whole),
                LayerTensor::QNorm => ("attn_q_norm.weight", Part::Whole),
                LayerTensor::KNorm => ("attn_k_norm.weight", Part::Whole),
                LayerTensor::O => ("attn_output.weight", Part::Whole),
                // Phi-3's file holds the gate and up projections stacked as `ffn_up`.
                LayerTensor::Gate if fused => ("ffn_up.weight", Part::Rows(0..f)),
                LayerTensor::Up if fused => ("ffn_up.weight", Part::Rows(f..2 * f)),
                LayerTensor::Gate => ("ffn_gate.weight", Part::Whole),
                LayerTensor::Up => ("ffn_up.weight", Part::Whole),
                LayerTensor::Down => ("ffn_down.weight", Part::Whole),
                LayerTensor::Router => ("ffn_gate_inp.weight", Part::Whole),
                LayerTensor::ExpertGate(e) => ("ffn_gate_exps.weight", Part::Expert(e)),
                LayerTensor::ExpertUp(e) => ("ffn_up_exps.weight", Part::Expert(e)),
                LayerTensor::ExpertDown(e) => ("ffn_down_exps.weight", Part::Expert(e)),
            },
        };
        let TensorId::Layer(l, _) = id else { unreachable!("whole-model tensors returned above") };
        Place { name: format!("blk.{l}.{part}"), part: what }
    }
}

/// A metadata value read as `T`, absent as `None`, of another type an error naming the key.
fn typed<T>(file: &GgufFile, key: &str, read: fn(&Value) -> Option<T>, what: &str) -> Result<Option<T>, ConfigError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => read(v).map(Some).ok_or_else(|| ConfigError::Invalid {
            field: key.into(),
            value: format!("{v:?}"),
            problem: format!("must be {what}"),
        }),
    }
}

fn config_from_metadata(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
    let arch_key = "general.architecture";
    let arch = typed(file, arch_key, |v| v.as_str().map(str::to_string), "a string")?
        .ok_or_else(|| ConfigError::Missing { field: arch_key.into() })?;
    let names = FieldNames::gguf(&arch);
    let uint = |key: &str| typed(file, key, Value::as_u64, "an unsigned integer");
    let float = |key: &str| typed(file, key, Value::as_f64, "a number");
    let experts = uint(&names.experts)?.filter(|&n| n > 0);
    // llama.cpp writes Mixtral as `llama` with experts.
    let family = match (arch.as_str(), experts) {
        ("llama", Some(_)) => Family::by_name("mixtral").ok_or_else(|| unsupported("llama with experts"))?,
        _ => Family::by_gguf_architecture(&arch)?,
    };
    let head_dim = uint(&names.head_dim)?;
    let rotary = uint(&names.partial_rotary_factor)?;
    let scaling =
        match typed(file, &format!("{arch}.rope.scaling.type"), |v| v.as_str().map(str::to_string), "a string")? {
            None => RopeScaling::None,
            Some(kind) if kind == "none" => RopeScaling::None,
            Some(kind) if kind == "linear" => RopeScaling::Linear {
                factor: float(&format!("{arch}.rope.scaling.factor"))?
                    .ok_or_else(|| ConfigError::Missing { field: format!("{arch}.rope.scaling.factor") })?,
            },
            Some(kind) => {
                return Err(ConfigError::invalid(
                    &format!("{arch}.rope.scaling.type"),
                    kind,
                    "is not a rope scaling evalmesh reads from GGUF (none, linear)",
                ))
            }
        };
    let partial_rotary_factor = match (rotary, head_dim) {
        (Some(r), Some(d)) if d > 0 => Some(r as f64 / d as f64),
        _ => None,
    };
    let rope = RawRope { theta: float(&names.rope_theta)?, scaling, partial_rotary_factor };
    // llama.cpp gives Gemma 3's local layers a fixed base of 10,000 and no scaling.
    let local_rope = (family.name == "gemma3").then(|| RawRope {
        theta: Some(10_000.0),
        scaling: RopeScaling::None,
        ..rope.clone()
    });
    let vocab_from_tokens = file.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|t| t.len() as u64);
    let raw = RawConfig {
        vocab_size: uint(&names.vocab_size)?.or(vocab_from_tokens),
        hidden_size: uint(&names.hidden_size)?,
        intermediate_size: uint(&names.intermediate_size)?,
        num_layers: uint(&names.num_layers)?,
        num_heads: uint(&names.num_heads)?,
        num_kv_heads: uint(&names.num_kv_heads)?,
        head_dim,
        rms_norm_eps: float(&names.rms_norm_eps)?,
        max_position: uint(&names.max_position)?,
        tied_embeddings: Some(!file.tensors.contains_key("output.weight")),
        rope,
        local_rope,
        sliding_window: uint(&names.sliding_window)?,
        layer_sliding: None,
        sliding_parameter: None,
        query_pre_attn_scalar: None,
        attention_softcap: float(&format!("{arch}.attn_logit_softcapping"))?,
        final_softcap: float(&format!("{arch}.final_logit_softcapping"))?,
        activation: None,
        experts,
        experts_per_token: uint(&names.experts_per_token)?,
        expert_intermediate_size: uint(&names.expert_intermediate_size)?,
        norm_topk_prob: typed(file, &format!("{arch}.expert_weights_norm"), Value::as_bool, "true or false")?,
        // llama.cpp's converter stores Gemma's norm weights with the 1 added.
        norm_weights_offset: false,
        // Its converter permutes Llama's Q/K rows into adjacent pairs; the other families rotate halves.
        rope_style: Some(if arch == "llama" { RopeStyle::AdjacentPairs } else { RopeStyle::RotateHalf }),
    };
    raw.build(family, &names)
}

impl WeightSource for GgufModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn path(&self) -> &Path {
        &self.file.path
    }

    fn locate(&self, id: TensorId) -> Result<Located<'_>, WeightError> {
        let Place { name, part } = self.place(id);
        let path = &self.file.path;
        let info = self
            .file
            .tensors
            .get(&name)
            .ok_or_else(|| WeightError::MissingTensor { path: path.clone(), name: name.clone() })?;
        let bad = |problem: String| WeightError::Format { path: path.clone(), problem };
        let bytes = self.file.tensor_bytes(info);
        let (rows, cols, count) = match info.dims[..] {
            [cols] => (1, cols as usize, 1),
            [cols, rows] => (rows as usize, cols as usize, 1),
            [cols, rows, count] => (rows as usize, cols as usize, count as usize),
            _ => return Err(bad(format!("tensor `{name}` has {} dimensions, expected 1 to 3", info.dims.len()))),
        };
        let matrix_bytes = bytes.len() / count.max(1);
        let row_bytes = matrix_bytes / rows.max(1);
        let (shape, bytes) = match part {
            Part::Whole if count == 1 => ((rows, cols), bytes),
            Part::Rows(r) if count == 1 && r.end <= rows => {
                ((r.len(), cols), &bytes[r.start * row_bytes..r.end * row_bytes])
            }
            Part::Expert(e) if e < count => ((rows, cols), &bytes[e * matrix_bytes..(e + 1) * matrix_bytes]),
            _ => {
                return Err(bad(format!(
                    "tensor `{name}` has dimensions {:?}, which do not hold the part of it the config implies",
                    info.dims
                )))
            }
        };
        Ok(Located { name, shape, dtype: info.ggml_type, bytes })
    }

    fn bytes_read(&self) -> &AtomicU64 {
        &self.bytes_read
    }

    fn stored_bytes(&self) -> u64 {
        self.file.tensors.values().map(|t| t.byte_len).sum()
    }
}
