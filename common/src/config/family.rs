//! The supported model families as one table ([`FAMILIES`]): each row says how the
//! family's block differs from Llama's and which of its configuration fields fill the
//! rest, and [`RawConfig::build`] turns any source's fields into a validated
//! [`ModelConfig`]. A new family is a row here and a tensor-name mapping in the worker's
//! loaders, not a new forward pass.

use super::{
    positive, required, Activation, BlockSpec, ConfigError, Experts, LayerSpec, ModelConfig, QkNorm, Rope, RopeScaling,
    RopeStyle,
};

/// Which layers use the sliding window when the configuration lists no `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingLayers {
    /// Every layer, when a window is given (Mistral, Mixtral, Phi-3).
    All,
    /// Layers from `max_window_layers` on, when `use_sliding_window` (Qwen 2/3).
    FromMaxWindowLayers,
    /// Even layers (Gemma 2: 0, 2, …).
    Even,
    /// All but every `sliding_window_pattern`-th layer (Gemma 3: 5 local, 1 global).
    AllButEveryNth,
}

/// How a mixture's router weights the chosen experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// A dense MLP.
    Dense,
    /// Softmax over the chosen experts (Mixtral).
    Renormalized,
    /// Softmax over all experts, renormalised over the chosen when `norm_topk_prob` (Qwen 3 MoE).
    NormTopkProbField,
}

/// One supported family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    /// Hugging Face `model_type` values.
    pub hf_model_types: &'static [&'static str],
    /// `general.architecture` in GGUF files, where evalmesh reads that family's GGUF.
    pub gguf_architecture: Option<&'static str>,
    pub pre_norms: bool,
    pub post_norms: bool,
    pub qkv_bias: bool,
    pub qk_norm: QkNorm,
    pub activation: Activation,
    /// Hugging Face checkpoints store norm weights less this (Gemma: 1); GGUF files store them whole.
    pub hf_norm_weight_offset: f32,
    /// Embedded tokens × √hidden (Gemma).
    pub embedding_scaled: bool,
    pub sliding: SlidingLayers,
    pub routing: Routing,
    /// `tie_word_embeddings` when the configuration does not say.
    pub tied_by_default: bool,
}

const LLAMA: Family = Family {
    name: "llama",
    hf_model_types: &["llama"],
    gguf_architecture: Some("llama"),
    pre_norms: true,
    post_norms: false,
    qkv_bias: false,
    qk_norm: QkNorm::None,
    activation: Activation::Silu,
    hf_norm_weight_offset: 0.0,
    embedding_scaled: false,
    sliding: SlidingLayers::All,
    routing: Routing::Dense,
    tied_by_default: false,
};

const GEMMA2: Family = Family {
    name: "gemma2",
    hf_model_types: &["gemma2"],
    gguf_architecture: Some("gemma2"),
    post_norms: true,
    activation: Activation::GeluTanh,
    hf_norm_weight_offset: 1.0,
    embedding_scaled: true,
    sliding: SlidingLayers::Even,
    tied_by_default: true,
    ..LLAMA
};

/// Every family evalmesh computes.
pub const FAMILIES: &[Family] = &[
    LLAMA,
    Family { name: "mistral", hf_model_types: &["mistral"], gguf_architecture: None, ..LLAMA },
    Family {
        name: "mixtral",
        hf_model_types: &["mixtral"],
        gguf_architecture: None,
        routing: Routing::Renormalized,
        ..LLAMA
    },
    Family {
        name: "qwen2",
        hf_model_types: &["qwen2"],
        gguf_architecture: Some("qwen2"),
        qkv_bias: true,
        sliding: SlidingLayers::FromMaxWindowLayers,
        ..LLAMA
    },
    Family {
        name: "qwen3",
        hf_model_types: &["qwen3"],
        gguf_architecture: Some("qwen3"),
        qk_norm: QkNorm::PerHead,
        sliding: SlidingLayers::FromMaxWindowLayers,
        ..LLAMA
    },
    Family {
        name: "qwen3_moe",
        hf_model_types: &["qwen3_moe"],
        gguf_architecture: Some("qwen3moe"),
        qk_norm: QkNorm::PerHead,
        sliding: SlidingLayers::FromMaxWindowLayers,
        routing: Routing::NormTopkProbField,
        ..LLAMA
    },
    GEMMA2,
    Family {
        name: "gemma3",
        hf_model_types: &["gemma3_text"],
        gguf_architecture: Some("gemma3"),
        qk_norm: QkNorm::PerHead,
        sliding: SlidingLayers::AllButEveryNth,
        ..GEMMA2
    },
    Family { name: "phi3", hf_model_types: &["phi3"], gguf_architecture: Some("phi3"), ..LLAMA },
    Family {
        name: "olmo2",
        hf_model_types: &["olmo2"],
        gguf_architecture: Some("olmo2"),
        pre_norms: false,
        post_norms: true,
        qk_norm: QkNorm::Whole,
        ..LLAMA
    },
];

/// The error for an architecture no family describes, listing the supported ones.
pub fn unsupported(name: &str) -> ConfigError {
    let supported = FAMILIES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    ConfigError::UnsupportedArchitecture { name: name.to_string(), supported }
}

impl Family {
    pub fn by_hf_model_type(model_type: &str) -> Result<&'static Family, ConfigError> {
        FAMILIES.iter().find(|f| f.hf_model_types.contains(&model_type)).ok_or_else(|| unsupported(model_type))
    }

    pub fn by_gguf_architecture(arch: &str) -> Result<&'static Family, ConfigError> {
        FAMILIES.iter().find(|f| f.gguf_architecture == Some(arch)).ok_or_else(|| unsupported(arch))
    }

    pub fn by_name(name: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.name == name)
    }
}

/// A rotary embedding as a source gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRope {
    pub theta: Option<f64>,
    pub scaling: RopeScaling,
    /// The share of each head rotated.
    pub partial_rotary_factor: Option<f64>,
}

impl Default for RawRope {
    fn default() -> Self {
        RawRope { theta: None, scaling: RopeScaling::None, partial_rotary_factor: None }
    }
}

/// The fields of a configuration, before validation; each source fills it.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub vocab_size: Option<u64>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_layers: Option<u64>,
    pub num_heads: Option<u64>,
    pub num_kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub rms_norm_eps: Option<f64>,
    pub max_position: Option<u64>,
    pub tied_embeddings: Option<bool>,
    /// The rotary embedding of the global (or every) layer.
    pub rope: RawRope,
    /// A sliding layer's own rotary embedding (Gemma 3's local base).
    pub local_rope: Option<RawRope>,
    pub sliding_window: Option<u64>,
    /// Per layer, whether it slides; `None` leaves it to the family's rule.
    pub layer_sliding: Option<Vec<bool>>,
    /// The family rule's parameter: Qwen's `max_window_layers` or Gemma 3's pattern.
    pub sliding_parameter: Option<u64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attention_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub activation: Option<Activation>,
    pub experts: Option<u64>,
    pub experts_per_token: Option<u64>,
    pub expert_intermediate_size: Option<u64>,
    pub norm_topk_prob: Option<bool>,
    /// Norm weights are stored less one (Gemma's Hugging Face checkpoints).
    pub norm_weights_offset: bool,
    pub rope_style: Option<RopeStyle>,
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
    pub partial_rotary_factor: String,
    pub rms_norm_eps: String,
    pub max_position: String,
    pub sliding_window: String,
    pub experts: String,
    pub experts_per_token: String,
    pub expert_intermediate_size: String,
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
            partial_rotary_factor: format!("{arch}.rope.dimension_count"),
            rms_norm_eps: format!("{arch}.attention.layer_norm_rms_epsilon"),
            max_position: format!("{arch}.context_length"),
            sliding_window: format!("{arch}.attention.sliding_window"),
            experts: format!("{arch}.expert_count"),
            experts_per_token: format!("{arch}.expert_used_count"),
            expert_intermediate_size: format!("{arch}.expert_feed_forward_length"),
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
            partial_rotary_factor: "partial_rotary_factor".into(),
            rms_norm_eps: "rms_norm_eps".into(),
            max_position: "max_position_embeddings".into(),
            sliding_window: "sliding_window".into(),
            experts: "num_local_experts".into(),
            experts_per_token: "num_experts_per_tok".into(),
            expert_intermediate_size: "moe_intermediate_size".into(),
        }
    }
}

impl RawConfig {
    /// Validates the fields into the configuration of a model of `family`; `names` says
    /// how the source calls each field.
    pub fn build(&self, family: &Family, names: &FieldNames) -> Result<ModelConfig, ConfigError> {
        let vocab_size = required(self.vocab_size, &names.vocab_size)?;
        let hidden_size = required(self.hidden_size, &names.hidden_size)?;
        let num_layers = required(self.num_layers, &names.num_layers)?;
        let num_heads = required(self.num_heads, &names.num_heads)?;
        let num_kv_heads = required(self.num_kv_heads.or(self.num_heads), &names.num_kv_heads)?;
        let max_position = required(self.max_position, &names.max_position)?;
        if hidden_size % num_heads != 0 && self.head_dim.is_none() {
            return Err(ConfigError::invalid(
                &names.num_heads,
                num_heads,
                format!("does not divide {} = {hidden_size}", names.hidden_size),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => required(Some(d), &names.head_dim)?,
            None => hidden_size / num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(ConfigError::invalid(
                &names.num_kv_heads,
                num_kv_heads,
                format!("must divide {} = {num_heads}", names.num_heads),
            ));
        }
        let rms_norm_eps =
            self.rms_norm_eps.ok_or_else(|| ConfigError::Missing { field: names.rms_norm_eps.clone() })?;
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(ConfigError::invalid(&names.rms_norm_eps, rms_norm_eps, "must be in (0, 1)"));
        }
        let experts = self.experts(family, names)?;
        let intermediate_size = match (&experts, self.intermediate_size) {
            (Some(e), None) => e.intermediate_size,
            _ => required(self.intermediate_size, &names.intermediate_size)?,
        };
        let mut ropes = vec![self.rope(&self.rope, head_dim, names)?];
        if let Some(local) = &self.local_rope {
            ropes.push(self.rope(local, head_dim, names)?);
        }
        let layers = self.layers(family, num_layers, names, ropes.len() - 1)?;
        let attention_scale = match self.query_pre_attn_scalar {
            Some(s) => 1.0 / positive(s, "query_pre_attn_scalar")?.sqrt(),
            None => 1.0 / (head_dim as f64).sqrt(),
        };
        let cap = |value: Option<f64>, field: &str| value.map(|v| positive(v, field)).transpose();
        Ok(ModelConfig {
            architecture: family.name.to_string(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            norm_weight_offset: if self.norm_weights_offset { family.hf_norm_weight_offset } else { 0.0 },
            max_position,
            tied_embeddings: self.tied_embeddings.unwrap_or(family.tied_by_default),
            rope_style: self.rope_style.unwrap_or(RopeStyle::RotateHalf),
            embedding_scale: family.embedding_scaled.then(|| (hidden_size as f32).sqrt() as f64),
            final_softcap: cap(self.final_softcap, "final_logit_softcapping")?,
            block: BlockSpec {
                pre_norms: family.pre_norms,
                post_norms: family.post_norms,
                qkv_bias: family.qkv_bias,
                qk_norm: family.qk_norm,
                activation: self.activation.unwrap_or(family.activation),
                attention_scale,
                attention_softcap: cap(self.attention_softcap, "attn_logit_softcapping")?,
            },
            layers,
            ropes,
            experts,
        })
    }

    fn rope(&self, raw: &RawRope, head_dim: usize, names: &FieldNames) -> Result<Rope, ConfigError> {
        let theta = positive(raw.theta.unwrap_or(10_000.0), &names.rope_theta)?;
        let share = raw.partial_rotary_factor.unwrap_or(1.0);
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::invalid(&names.partial_rotary_factor, share, "must be in (0, 1]"));
        }
        let rotary_dim = (head_dim as f64 * share) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            return Err(ConfigError::invalid(
                &names.head_dim,
                head_dim,
                format!("rotates {rotary_dim} dimensions of each head, which must be even and positive"),
            ));
        }
        if let RopeScaling::LongRope { short_factor, long_factor, .. } = &raw.scaling {
            for (field, factors) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if factors.len() != rotary_dim / 2 || !factors.iter().all(|f| f.is_finite() && *f > 0.0) {
                    return Err(ConfigError::invalid(
                        &format!("rope_scaling.{field}"),
                        format!("{} values", factors.len()),
                        format!("must be {} positive numbers (one per rotated pair)", rotary_dim / 2),
                    ));
                }
            }
        }
        Ok(Rope { theta, rotary_dim, scaling: raw.scaling.clone() })
    }

    /// Each layer's window and rotary embedding (`local` indexes the sliding layers' own).
    fn layers(
        &self,
        family: &Family,
        num_layers: usize,
        names: &FieldNames,
        local: usize,
    ) -> Result<Vec<LayerSpec>, ConfigError> {
        let sliding: Vec<bool> = match &self.layer_sliding {
            Some(list) if list.len() != num_layers => {
                return Err(ConfigError::invalid(
                    "layer_types",
                    format!("{} entries", list.len()),
                    format!("must list one type per layer ({} = {num_layers})", names.num_layers),
                ))
            }
            Some(list) => list.clone(),
            None => (0..num_layers)
                .map(|l| match family.sliding {
                    SlidingLayers::All => self.sliding_window.is_some(),
                    SlidingLayers::FromMaxWindowLayers => {
                        self.sliding_parameter.is_some_and(|from| l as u64 >= from) && self.sliding_window.is_some()
                    }
                    SlidingLayers::Even => l % 2 == 0,
                    SlidingLayers::AllButEveryNth => {
                        !(l as u64 + 1).is_multiple_of(self.sliding_parameter.unwrap_or(6).max(1))
                    }
                })
                .collect(),
        };
        let window = match sliding.iter().any(|&s| s) {
            true => Some(required(self.sliding_window, &names.sliding_window)?),
            false => None,
        };
        Ok(sliding
            .into_iter()
            .map(|s| LayerSpec { window: window.filter(|_| s), rope: if s { local } else { 0 } })
            .collect())
    }

    fn experts(&self, family: &Family, names: &FieldNames) -> Result<Option<Experts>, ConfigError> {
        if family.routing == Routing::Dense {
            return Ok(None);
        }
        let count = required(self.experts, &names.experts)?;
        let per_token = required(self.experts_per_token, &names.experts_per_token)?;
        if per_token > count {
            return Err(ConfigError::invalid(
                &names.experts_per_token,
                per_token,
                format!("chooses more experts per token than the {count} of {}", names.experts),
            ));
        }
        let intermediate_size = match self.expert_intermediate_size {
            Some(size) => required(Some(size), &names.expert_intermediate_size)?,
            None => required(self.intermediate_size, &names.intermediate_size)?,
        };
        let normalize = match family.routing {
            Routing::NormTopkProbField => self.norm_topk_prob.unwrap_or(false),
            _ => true,
        };
        Ok(Some(Experts { count, per_token, normalize, intermediate_size }))
    }
}
