//! A Hugging Face `config.json` read into [`RawConfig`] for its family: both the older
//! layout (`rope_theta`, `rope_scaling`, `torch_dtype`, Gemma 3's `rope_local_base_freq`)
//! and transformers 5's (`rope_parameters`, per layer type where layers differ, and
//! `layer_types`).

use serde_json::{Map, Value};

use super::family::{Family, FieldNames, RawConfig, RawRope};
use super::model::{Activation, ConfigError, ModelConfig};
use super::rope::RopeScaling;

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub struct HfConfig {
    fields: Map<String, Value>,
}

fn wrong(field: &str, value: &Value, expected: &str) -> ConfigError {
    ConfigError::invalid(field, value, format!("must be {expected}"))
}

/// The fields of one JSON object, `null` read as absent; errors name `prefix.field`.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl Fields<'_> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| wrong(&self.name(key), v, "an unsigned integer"))).transpose()
    }

    fn float(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| wrong(&self.name(key), v, "a number"))).transpose()
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| wrong(&self.name(key), v, "true or false"))).transpose()
    }

    fn text(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| wrong(&self.name(key), v, "a string"))).transpose()
    }

    fn floats(&self, key: &str) -> Result<Vec<f64>, ConfigError> {
        let missing = || ConfigError::Missing { field: self.name(key) };
        let list = self.get(key).ok_or_else(missing)?;
        let items = list.as_array().ok_or_else(|| wrong(&self.name(key), list, "a list of numbers"))?;
        items.iter().map(|v| v.as_f64().ok_or_else(|| wrong(&self.name(key), list, "a list of numbers"))).collect()
    }

    fn need(&self, key: &str) -> Result<f64, ConfigError> {
        self.float(key)?.ok_or_else(|| ConfigError::Missing { field: self.name(key) })
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'_>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map, prefix: format!("{}.", self.name(key)) })),
            Some(v) => Err(wrong(&self.name(key), v, "an object")),
        }
    }
}

/// A rope scaling object (`rope_scaling`, or a `rope_parameters` entry), with `top` the
/// configuration's top level for the fields some layouts keep there.
fn scaling(params: &Fields<'_>, top: &Fields<'_>) -> Result<RopeScaling, ConfigError> {
    let kind = match params.text("rope_type")? {
        Some(kind) => kind,
        None => params.text("type")?.unwrap_or("default"),
    };
    let original = |fallback: &str| -> Result<f64, ConfigError> {
        match params.float("original_max_position_embeddings")? {
            Some(v) => Ok(v),
            None => top
                .float("original_max_position_embeddings")?
                .or(top.float(fallback)?)
                .ok_or_else(|| ConfigError::Missing { field: params.name("original_max_position_embeddings") }),
        }
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: params.need("factor")? },
        "dynamic" => {
            RopeScaling::Dynamic { factor: params.need("factor")?, original_max: original("max_position_embeddings")? }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: params.need("factor")?,
            low_freq_factor: params.need("low_freq_factor")?,
            high_freq_factor: params.need("high_freq_factor")?,
            original_max: params.need("original_max_position_embeddings")?,
        },
        "yarn" => {
            let original_max = original("max_position_embeddings")?;
            let mut factor = params.need("factor")?;
            if params.get("original_max_position_embeddings").is_some() {
                if let Some(max) = top.float("max_position_embeddings")? {
                    factor = max / original_max;
                }
            }
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match params.float("attention_factor")? {
                Some(f) => f,
                None => match (params.float("mscale")?, params.float("mscale_all_dim")?) {
                    (Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                },
            };
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast: params.float("beta_fast")?.unwrap_or(32.0),
                beta_slow: params.float("beta_slow")?.unwrap_or(1.0),
                attention_factor,
                truncate: params.flag("truncate")?.unwrap_or(true),
            }
        }
        "longrope" | "su" => {
            let original_max = original("max_position_embeddings")?;
            let factor = match top.float("max_position_embeddings")? {
                Some(max) if top.get("original_max_position_embeddings").is_some() => max / original_max,
                _ => params.float("factor")?.unwrap_or(1.0),
            };
            let attention_factor = match params.float("attention_factor")? {
                Some(f) => f,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / original_max.ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: params.floats("short_factor")?,
                long_factor: params.floats("long_factor")?,
                original_max,
                attention_factor,
            }
        }
        other => {
            return Err(ConfigError::invalid(
                &params.name("rope_type"),
                other,
                "is not a rope scaling evalmesh knows (default, linear, dynamic, llama3, yarn, longrope)",
            ))
        }
    })
}

/// A rotary embedding from a `rope_parameters`-style object, or from the older
/// top-level fields with `theta_key` naming the base.
fn rope_from(params: Option<&Fields<'_>>, top: &Fields<'_>, theta_key: &str) -> Result<RawRope, ConfigError> {
    let partial = |f: &Fields<'_>| f.float("partial_rotary_factor");
    match params {
        Some(p) => Ok(RawRope {
            theta: p.float("rope_theta")?.or(top.float(theta_key)?),
            scaling: scaling(p, top)?,
            partial_rotary_factor: partial(p)?.or(partial(top)?),
        }),
        None => Ok(RawRope {
            theta: top.float(theta_key)?,
            scaling: RopeScaling::None,
            partial_rotary_factor: partial(top)?,
        }),
    }
}

impl HfConfig {
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        match serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))? {
            Value::Object(fields) => Ok(HfConfig { fields }),
            _ => Err(ConfigError::Json("the top level must be an object".into())),
        }
    }

    fn top(&self) -> Fields<'_> {
        Fields { map: &self.fields, prefix: String::new() }
    }

    /// The family its `model_type` names.
    pub fn family(&self) -> Result<&'static Family, ConfigError> {
        let top = self.top();
        let model_type = top.text("model_type")?.ok_or_else(|| ConfigError::Missing { field: "model_type".into() })?;
        Family::by_hf_model_type(model_type)
    }

    /// The configuration of the model.
    pub fn to_model_config(&self) -> Result<ModelConfig, ConfigError> {
        let family = self.family()?;
        self.raw(family)?.build(family, &FieldNames::hf())
    }

    fn raw(&self, family: &Family) -> Result<RawConfig, ConfigError> {
        let top = self.top();
        for unsupported in ["mlp_bias", "attention_bias"] {
            if top.flag(unsupported)? == Some(true) && !family.qkv_bias {
                return Err(ConfigError::invalid(unsupported, true, format!("is not supported for {}", family.name)));
            }
        }
        let layer_sliding = match top.get("layer_types") {
            None => None,
            Some(Value::Array(types)) => Some(
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(false),
                        Some("sliding_attention") => Ok(true),
                        _ => Err(wrong("layer_types", t, "full_attention or sliding_attention")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(v) => return Err(wrong("layer_types", v, "a list")),
        };
        // transformers 5 keys rope_parameters by layer type where the types differ (Gemma 3).
        let params = top.object("rope_parameters")?;
        let by_type = |kind: &str| params.as_ref().map(|p| p.object(kind)).transpose().map(Option::flatten);
        let (rope, local_rope) = match (by_type("full_attention")?, by_type("sliding_attention")?) {
            (Some(full), Some(local)) => {
                (rope_from(Some(&full), &top, "rope_theta")?, Some(rope_from(Some(&local), &top, "rope_theta")?))
            }
            _ => {
                let old = top.object("rope_scaling")?;
                let rope = rope_from(params.as_ref().or(old.as_ref()), &top, "rope_theta")?;
                let local = top.float("rope_local_base_freq")?.map(|theta| RawRope {
                    theta: Some(theta),
                    scaling: RopeScaling::None,
                    ..rope.clone()
                });
                (rope, local)
            }
        };
        let activation = match top.text("hidden_activation")?.or(top.text("hidden_act")?) {
            None => None,
            Some("silu" | "swish") => Some(Activation::Silu),
            Some("gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new") => Some(Activation::GeluTanh),
            Some(other) => {
                return Err(ConfigError::invalid(
                    "hidden_act",
                    other,
                    "is not an activation evalmesh knows (silu, gelu_pytorch_tanh)",
                ))
            }
        };
        let sliding_parameter = match family.name {
            "gemma3" => top.uint("sliding_window_pattern")?.or(top.uint("_sliding_window_pattern")?),
            _ if top.flag("use_sliding_window")? == Some(true) => top.uint("max_window_layers")?,
            _ => None,
        };
        let sliding_window = match top.flag("use_sliding_window")? {
            Some(false) if layer_sliding.is_none() => None,
            _ => top.uint("sliding_window")?,
        };
        Ok(RawConfig {
            vocab_size: top.uint("vocab_size")?,
            hidden_size: top.uint("hidden_size")?,
            intermediate_size: top.uint("intermediate_size")?,
            num_layers: top.uint("num_hidden_layers")?,
            num_heads: top.uint("num_attention_heads")?,
            num_kv_heads: top.uint("num_key_value_heads")?,
            head_dim: top.uint("head_dim")?,
            rms_norm_eps: top.float("rms_norm_eps")?,
            max_position: top.uint("max_position_embeddings")?,
            tied_embeddings: top.flag("tie_word_embeddings")?,
            rope,
            local_rope,
            sliding_window,
            layer_sliding,
            sliding_parameter,
            query_pre_attn_scalar: top.float("query_pre_attn_scalar")?,
            attention_softcap: top.float("attn_logit_softcapping")?,
            final_softcap: top.float("final_logit_softcapping")?,
            activation,
            experts: top.uint("num_local_experts")?.or(top.uint("num_experts")?),
            experts_per_token: top.uint("num_experts_per_tok")?,
            expert_intermediate_size: top.uint("moe_intermediate_size")?,
            norm_topk_prob: top.flag("norm_topk_prob")?,
            norm_weights_offset: true,
            rope_style: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::QkNorm;

    fn config(json: serde_json::Value) -> Result<ModelConfig, ConfigError> {
        HfConfig::parse(&json.to_string())?.to_model_config()
    }

    fn gemma3(rope: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "model_type": "gemma3_text", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "sliding_window": 16,
            "query_pre_attn_scalar": 16
        });
        v.as_object_mut().unwrap().extend(rope.as_object().unwrap().clone());
        v
    }

    /// Both layouts of Gemma 3's two bases give the same layers: five local, one global.
    #[test]
    fn gemma3_reads_either_rope_layout() {
        let old = config(gemma3(serde_json::json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4}))).unwrap();
        let new = config(gemma3(serde_json::json!({
            "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
                            "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}
        })))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(new.ropes.iter().map(|r| r.theta).collect::<Vec<_>>(), [1e6, 1e4]);
        assert_eq!(new.layers[0].window, Some(16));
        assert_eq!((new.layers[5].window, new.layers[5].rope), (None, 0));
        assert_eq!(new.block.qk_norm, QkNorm::PerHead);
        assert_eq!((new.norm_weight_offset, new.embedding_scale), (1.0, Some(8.0)));
        assert_eq!(new.block.attention_scale, 0.25);
    }

    #[test]
    fn rope_scaling_reads_either_layout() {
        let base = serde_json::json!({
            "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096
        });
        let scaling = serde_json::json!({"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0, "rope_type": "llama3"});
        let mut new = base.clone();
        new["rope_parameters"] = scaling.clone();
        let mut old = base.clone();
        old["rope_theta"] = 500000.0.into();
        old["rope_scaling"] = scaling;
        old["rope_scaling"].as_object_mut().unwrap().remove("rope_theta");
        let (new, old) = (config(new).unwrap(), config(old).unwrap());
        assert_eq!(new, old);
        assert_eq!(new.ropes[0].scaling.name(), "llama3");
        assert_eq!(new.ropes[0].theta, 500000.0);
    }

    #[test]
    fn unknown_rope_scaling_is_named() {
        let v = serde_json::json!({
            "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
            "rope_scaling": {"rope_type": "spiral", "factor": 2.0}
        });
        let err = config(v).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.rope_type") && err.contains("spiral") && err.contains("longrope"), "{err}");
    }

    #[test]
    fn more_experts_per_token_than_experts_is_refused() {
        let v = serde_json::json!({
            "model_type": "mixtral", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
            "num_local_experts": 4, "num_experts_per_tok": 5
        });
        let err = config(v).unwrap_err().to_string();
        assert!(err.contains("num_experts_per_tok") && err.contains("5") && err.contains("num_local_experts"), "{err}");
    }
}
