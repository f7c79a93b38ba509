//! The model configuration: one validated [`ModelConfig`] with no optional fields,
//! built once from a source's own fields (GGUF metadata or a Hugging Face
//! `config.json`, mirrored by [`HfConfig`]). Every error names the field and its value.

use serde::{Deserialize, Serialize};

/// A configuration value that cannot describe a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("field `{field}` is missing")]
    Missing { field: String },
    #[error("field `{field}` = {value}: {problem}")]
    Invalid { field: String, value: String, problem: String },
    #[error("architecture `{0}` is not supported (supported: llama and the models that share its block)")]
    UnsupportedArchitecture(String),
    #[error("config.json is not valid: {0}")]
    Json(String),
}

impl ConfigError {
    fn invalid(field: &str, value: impl ToString, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.to_string(), value: value.to_string(), problem: problem.into() }
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeStyle {
    /// Dimensions (2i, 2i+1) rotate together: GGUF files, whose Q/K rows llama.cpp's converter permuted.
    AdjacentPairs,
    /// Dimensions (i, i + d/2) rotate together: Hugging Face checkpoints.
    RotateHalf,
}

/// A Llama-family transformer (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position: usize,
    pub tied_embeddings: bool,
    pub rope_style: RopeStyle,
}

/// The raw fields of a configuration, before validation; each source fills it.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub vocab_size: Option<u64>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_layers: Option<u64>,
    pub num_heads: Option<u64>,
    pub num_kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub max_position: Option<u64>,
    pub tied_embeddings: bool,
}

/// The field names a source uses, so that errors speak the source's language.
pub struct FieldNames {
    pub vocab_size: String,
    pub hidden_size: String,
    pub intermediate_size: String,
    pub num_layers: String,
    pub num_heads: String,
    pub num_kv_heads: String,
    pub head_dim: String,
    pub rope_theta: String,
    pub rms_norm_eps: String,
    pub max_position: String,
}

impl FieldNames {
    /// GGUF metadata keys for an architecture prefix such as `llama`.
    pub fn gguf(arch: &str) -> Self {
        FieldNames {
            vocab_size: format!("{arch}.vocab_size"),
            hidden_size: format!("{arch}.embedding_length"),
            intermediate_size: format!("{arch}.feed_forward_length"),
            num_layers: format!("{arch}.block_count"),
            num_heads: format!("{arch}.attention.head_count"),
            num_kv_heads: format!("{arch}.attention.head_count_kv"),
            head_dim: format!("{arch}.attention.key_length"),
            rope_theta: format!("{arch}.rope.freq_base"),
            rms_norm_eps: format!("{arch}.attention.layer_norm_rms_epsilon"),
            max_position: format!("{arch}.context_length"),
        }
    }

    /// Hugging Face `config.json` keys.
    pub fn hf() -> Self {
        FieldNames {
            vocab_size: "vocab_size".into(),
            hidden_size: "hidden_size".into(),
            intermediate_size: "intermediate_size".into(),
            num_layers: "num_hidden_layers".into(),
            num_heads: "num_attention_heads".into(),
            num_kv_heads: "num_key_value_heads".into(),
            head_dim: "head_dim".into(),
            rope_theta: "rope_theta".into(),
            rms_norm_eps: "rms_norm_eps".into(),
            max_position: "max_position_embeddings".into(),
        }
    }
}

/// Largest dimension accepted for any size field: far above any real model, low
/// enough that products of sizes cannot overflow.
const MAX_DIM: u64 = 1 << 24;

fn required(value: Option<u64>, field: &str) -> Result<usize, ConfigError> {
    let v = value.ok_or_else(|| ConfigError::Missing { field: field.to_string() })?;
    if v == 0 || v > MAX_DIM {
        return Err(ConfigError::invalid(field, v, format!("must be between 1 and {MAX_DIM}")));
    }
    Ok(v as usize)
}

impl ModelConfig {
    /// Validates raw fields; `names` says how the source calls each field.
    pub fn from_raw(raw: &RawConfig, names: &FieldNames, rope_style: RopeStyle) -> Result<Self, ConfigError> {
        let vocab_size = required(raw.vocab_size, &names.vocab_size)?;
        let hidden_size = required(raw.hidden_size, &names.hidden_size)?;
        let intermediate_size = required(raw.intermediate_size, &names.intermediate_size)?;
        let num_layers = required(raw.num_layers, &names.num_layers)?;
        let num_heads = required(raw.num_heads, &names.num_heads)?;
        let num_kv_heads = required(raw.num_kv_heads.or(raw.num_heads), &names.num_kv_heads)?;
        let max_position = required(raw.max_position, &names.max_position)?;
        if hidden_size % num_heads != 0 && raw.head_dim.is_none() {
            return Err(ConfigError::invalid(
                &names.num_heads,
                num_heads,
                format!("does not divide {} = {hidden_size}", names.hidden_size),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => required(Some(d), &names.head_dim)?,
            None => hidden_size / num_heads,
        };
        if head_dim % 2 != 0 {
            return Err(ConfigError::invalid(&names.head_dim, head_dim, "must be even for rotary embeddings"));
        }
        if num_heads % num_kv_heads != 0 {
            return Err(ConfigError::invalid(
                &names.num_kv_heads,
                num_kv_heads,
                format!("must divide {} = {num_heads}", names.num_heads),
            ));
        }
        let rope_theta = raw.rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(ConfigError::invalid(&names.rope_theta, rope_theta, "must be a positive number"));
        }
        let rms_norm_eps =
            raw.rms_norm_eps.ok_or_else(|| ConfigError::Missing { field: names.rms_norm_eps.clone() })?;
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(ConfigError::invalid(&names.rms_norm_eps, rms_norm_eps, "must be in (0, 1)"));
        }
        Ok(ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rms_norm_eps,
            max_position,
            tied_embeddings: raw.tied_embeddings,
            rope_style,
        })
    }

    /// Width of the query projection (all heads).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and value) projection (all KV heads).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count, embedding and head included (a tied head counts once).
    pub fn parameter_count(&self) -> u64 {
        let (h, f, v) = (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        let attention = h * (self.q_dim() as u64) * 2 + h * (self.kv_dim() as u64) * 2;
        let per_layer = attention + 3 * h * f + 2 * h;
        let head = if self.tied_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * per_layer + h + head
    }
}

/// The fields of a Hugging Face `config.json` that evalmesh reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: Option<u64>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_hidden_layers: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_key_value_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: Option<u64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `model_type` values whose checkpoints use the Llama block without biases.
const HF_LLAMA_TYPES: &[&str] = &["llama", "mistral"];

/// `model_type` values with the Llama block's shapes, for planning: Qwen2 adds biases to
/// Q, K and V, a few thousand values per layer that do not move a plan.
const HF_PLANNABLE_TYPES: &[&str] = &["llama", "mistral", "qwen2"];

impl HfConfig {
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))
    }

    /// The configuration of a model evalmesh can run.
    pub fn to_model_config(&self) -> Result<ModelConfig, ConfigError> {
        self.shapes(HF_LLAMA_TYPES)
    }

    /// The shapes of a model to plan for, which evalmesh need not be able to run.
    pub fn to_plan_config(&self) -> Result<ModelConfig, ConfigError> {
        self.shapes(HF_PLANNABLE_TYPES)
    }

    fn shapes(&self, types: &[&str]) -> Result<ModelConfig, ConfigError> {
        let model_type =
            self.model_type.as_deref().ok_or_else(|| ConfigError::Missing { field: "model_type".into() })?;
        if !types.contains(&model_type) {
            return Err(ConfigError::UnsupportedArchitecture(model_type.to_string()));
        }
        let raw = RawConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            max_position: self.max_position_embeddings,
            tied_embeddings: self.tie_word_embeddings,
        };
        ModelConfig::from_raw(&raw, &FieldNames::hf(), RopeStyle::RotateHalf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
            "tie_word_embeddings": true
        })
    }

    fn parse(v: &serde_json::Value) -> Result<ModelConfig, ConfigError> {
        HfConfig::parse(&v.to_string())?.to_model_config()
    }

    #[test]
    fn hf_config_gives_smollm_shapes() {
        let c = parse(&smollm_json()).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (64, 576, 192));
        assert_eq!(c.rope_style, RopeStyle::RotateHalf);
        // SmolLM2-135M has 134,515,008 parameters (its model card rounds to 135M).
        assert_eq!(c.parameter_count(), 134_515_008);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = smollm_json();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert_eq!(parse(&v).unwrap_err(), ConfigError::Missing { field: "hidden_size".into() });
    }

    #[test]
    fn kv_heads_must_divide_heads() {
        let mut v = smollm_json();
        v["num_key_value_heads"] = 4.into();
        let err = parse(&v).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads") && err.contains("must divide"), "{err}");
    }

    #[test]
    fn absurd_sizes_are_refused() {
        let mut v = smollm_json();
        v["num_hidden_layers"] = 0.into();
        assert!(parse(&v).unwrap_err().to_string().contains("num_hidden_layers"));
        let mut v = smollm_json();
        v["hidden_size"] = (1u64 << 40).into();
        assert!(parse(&v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = smollm_json();
        v["rms_norm_eps"] = (-1.0).into();
        assert!(parse(&v).unwrap_err().to_string().contains("rms_norm_eps"));
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let mut v = smollm_json();
        v["model_type"] = "gpt_neox".into();
        assert_eq!(parse(&v).unwrap_err(), ConfigError::UnsupportedArchitecture("gpt_neox".into()));
    }
}
