//! The validated model configuration and its parts: shapes, the [`BlockSpec`] every layer
//! runs, each layer's [`LayerSpec`], the [`Experts`] of a mixture, and the errors a
//! configuration can give ([`ConfigError`]).

use serde::{Deserialize, Serialize};

use super::rope::Rope;

/// A configuration value that cannot describe a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("field `{field}` is missing")]
    Missing { field: String },
    #[error("field `{field}` = {value}: {problem}")]
    Invalid { field: String, value: String, problem: String },
    #[error("architecture `{name}` is not supported (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },
    #[error("config.json is not valid: {0}")]
    Json(String),
}

impl ConfigError {
    pub fn invalid(field: &str, value: impl ToString, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.to_string(), value: value.to_string(), problem: problem.into() }
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeStyle {
    /// Dimensions (2i, 2i+1) rotate together: GGUF Llama files, whose Q/K rows llama.cpp's converter permuted.
    AdjacentPairs,
    /// Dimensions (i, i + d/2) rotate together: Hugging Face checkpoints and the other GGUF families.
    RotateHalf,
}

/// The gated MLP's activation, applied to the gate before it multiplies the up projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x·σ(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GeGLU; `gelu_pytorch_tanh`).
    GeluTanh,
}

/// RMSNorm on the queries and keys, after their projections and before the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QkNorm {
    None,
    /// Each head normalised on its own, one weight of `head_dim` shared by the heads (Qwen 3, Gemma 3).
    PerHead,
    /// All the heads' queries (and all the keys) normalised as one vector (OLMo 2).
    Whole,
}

/// What every block of the model computes, beyond the Llama block's RMSNorm, rotary
/// grouped-query attention and gated MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Norms of each sublayer's input (every family but OLMo 2).
    pub pre_norms: bool,
    /// Norms of each sublayer's output, before it joins the residual (Gemma 2/3, OLMo 2).
    pub post_norms: bool,
    /// Biases on the Q, K and V projections (Qwen 2).
    pub qkv_bias: bool,
    pub qk_norm: QkNorm,
    pub activation: Activation,
    /// The factor of every query·key product (`1/√head_dim`, or Gemma's `query_pre_attn_scalar`).
    pub attention_scale: f64,
    /// `cap·tanh(s/cap)` on the scaled attention scores (Gemma 2).
    pub attention_softcap: Option<f64>,
}

/// What differs between layers: the attention window and the rotary embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// A query sees only the keys of the last `window` positions, itself included.
    pub window: Option<usize>,
    /// Index into [`ModelConfig::ropes`].
    pub rope: usize,
}

/// A mixture of experts in place of every block's MLP: the router picks `per_token` of
/// `count` experts by softmax probability, whose outputs are summed with those
/// probabilities (renormalised over the chosen when `normalize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experts {
    pub count: usize,
    pub per_token: usize,
    pub normalize: bool,
    /// Each expert's hidden width.
    pub intermediate_size: usize,
}

/// A decoder-only transformer, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family's name in `config::FAMILIES`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The dense MLP's hidden width (unused by a mixture of experts).
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Added to every stored norm weight (Gemma's Hugging Face checkpoints store `w − 1`).
    pub norm_weight_offset: f32,
    pub max_position: usize,
    pub tied_embeddings: bool,
    pub rope_style: RopeStyle,
    /// Multiplies the embedded tokens (Gemma: √hidden).
    pub embedding_scale: Option<f64>,
    /// `cap·tanh(x/cap)` on the final logits (Gemma 2).
    pub final_softcap: Option<f64>,
    pub block: BlockSpec,
    pub layers: Vec<LayerSpec>,
    pub ropes: Vec<Rope>,
    pub experts: Option<Experts>,
}

/// Largest dimension accepted for any size field: far above any real model, low
/// enough that products of sizes cannot overflow.
const MAX_DIM: u64 = 1 << 24;

/// A size field: present, and between 1 and [`MAX_DIM`].
pub fn required(value: Option<u64>, field: &str) -> Result<usize, ConfigError> {
    let v = value.ok_or_else(|| ConfigError::Missing { field: field.to_string() })?;
    if v == 0 || v > MAX_DIM {
        return Err(ConfigError::invalid(field, v, format!("must be between 1 and {MAX_DIM}")));
    }
    Ok(v as usize)
}

/// A positive, finite number.
pub fn positive(value: f64, field: &str) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ConfigError::invalid(field, value, "must be a positive number"))
    }
}

impl ModelConfig {
    /// Width of the query projection (all heads).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and value) projection (all KV heads).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The longest prompt that can be prefilled as a prefix then the rest with the rope
    /// frequencies of its whole length: the model's positions, or a scaling rope's
    /// original window, beyond which the frequencies follow the length.
    pub fn prefix_split_limit(&self) -> usize {
        self.ropes.iter().filter_map(Rope::length_free_up_to).fold(self.max_position, usize::min)
    }

    /// The width of the MLP a token runs through: the dense MLP's, or one expert's.
    pub fn ffn_width(&self) -> usize {
        self.experts.as_ref().map_or(self.intermediate_size, |e| e.intermediate_size)
    }

    /// The MLPs a token runs through in each block: one, or its chosen experts.
    pub fn active_mlps(&self) -> usize {
        self.experts.as_ref().map_or(1, |e| e.per_token)
    }

    /// The MLPs each block holds: one, or all its experts.
    pub fn stored_mlps(&self) -> usize {
        self.experts.as_ref().map_or(1, |e| e.count)
    }

    /// Values of one block's attention: projections, biases and Q/K norms.
    fn attention_values(&self) -> u64 {
        let (h, q, kv) = (self.hidden_size as u64, self.q_dim() as u64, self.kv_dim() as u64);
        let biases = if self.block.qkv_bias { q + 2 * kv } else { 0 };
        let qk_norms = match self.block.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * self.head_dim as u64,
            QkNorm::Whole => q + kv,
        };
        2 * h * q + 2 * h * kv + biases + qk_norms
    }

    /// Values of one block's norms.
    fn norm_values(&self) -> u64 {
        let per_sublayer = self.block.pre_norms as u64 + self.block.post_norms as u64;
        2 * per_sublayer * self.hidden_size as u64
    }

    /// Parameters a block holds with `mlps` MLPs (and the router, for experts).
    fn block_values(&self, mlps: usize) -> u64 {
        let h = self.hidden_size as u64;
        let router = self.experts.as_ref().map_or(0, |e| e.count as u64 * h);
        self.attention_values() + self.norm_values() + router + mlps as u64 * 3 * h * self.ffn_width() as u64
    }

    fn count(&self, mlps: usize) -> u64 {
        let (h, v) = (self.hidden_size as u64, self.vocab_size as u64);
        let head = if self.tied_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * self.block_values(mlps) + h + head
    }

    /// Parameter count, embedding, every expert and head included (a tied head counts once).
    pub fn parameter_count(&self) -> u64 {
        self.count(self.stored_mlps())
    }

    /// Parameters one token runs through: only its chosen experts of a mixture.
    pub fn active_parameter_count(&self) -> u64 {
        self.count(self.active_mlps())
    }

    /// The distinct features of the block, in words, for `inspect`.
    pub fn features(&self) -> Vec<String> {
        let b = &self.block;
        let mut out = Vec::new();
        let norms = match (b.pre_norms, b.post_norms) {
            (true, true) => "norms before and after each sublayer",
            (false, true) => "norms after each sublayer",
            _ => "norms before each sublayer",
        };
        out.push(norms.to_string());
        if self.norm_weight_offset != 0.0 {
            out.push(format!("norm weights + {}", self.norm_weight_offset));
        }
        out.push(match b.activation {
            Activation::Silu => "SwiGLU MLP".into(),
            Activation::GeluTanh => "GeGLU (tanh) MLP".into(),
        });
        if b.qkv_bias {
            out.push("Q/K/V biases".into());
        }
        match b.qk_norm {
            QkNorm::None => {}
            QkNorm::PerHead => out.push("per-head Q/K RMSNorm".into()),
            QkNorm::Whole => out.push("whole-width Q/K RMSNorm".into()),
        }
        if let Some(cap) = b.attention_softcap {
            out.push(format!("attention soft-cap {cap}"));
        }
        if let Some(cap) = self.final_softcap {
            out.push(format!("final logit soft-cap {cap}"));
        }
        if let Some(scale) = self.embedding_scale {
            out.push(format!("embedding × {scale:.4}"));
        }
        let windows: Vec<_> = self.layers.iter().filter_map(|l| l.window).collect();
        if !windows.is_empty() {
            out.push(format!("sliding window {} on {} of {} layers", windows[0], windows.len(), self.num_layers));
        }
        for rope in &self.ropes {
            let part = if rope.rotary_dim < self.head_dim {
                format!(", {} of {} dims", rope.rotary_dim, self.head_dim)
            } else {
                String::new()
            };
            out.push(format!("rope base {} ({}{part})", rope.theta, rope.scaling.name()));
        }
        if let Some(e) = &self.experts {
            let normalized = if e.normalize { ", renormalised" } else { "" };
            out.push(format!("{} experts of width {}, top {}{normalized}", e.count, e.intermediate_size, e.per_token));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HfConfig;

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
        assert_eq!(c.active_parameter_count(), c.parameter_count());
    }

    /// Mixtral 8x7B: 46.7B parameters, 12.9B active per token (Mistral AI's figures).
    #[test]
    fn mixtral_counts_all_and_active_parameters() {
        let v = serde_json::json!({
            "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
            "num_local_experts": 8, "num_experts_per_tok": 2
        });
        let c = parse(&v).unwrap();
        let hundred_millions = |n: u64| (n + 50_000_000) / 100_000_000;
        assert_eq!(hundred_millions(c.parameter_count()), 467);
        assert_eq!(hundred_millions(c.active_parameter_count()), 129);
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
    fn unsupported_architecture_is_named_with_the_supported_ones() {
        let mut v = smollm_json();
        v["model_type"] = "gpt_neox".into();
        let err = parse(&v).unwrap_err();
        assert!(matches!(&err, ConfigError::UnsupportedArchitecture { name, .. } if name == "gpt_neox"), "{err}");
        let text = err.to_string();
        assert!(text.contains("gpt_neox") && text.contains("gemma3") && text.contains("qwen3_moe"), "{text}");
    }
}
