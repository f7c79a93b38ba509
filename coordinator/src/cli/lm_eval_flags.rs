//! lm-evaluation-harness's flags whose values are lists (`lm_eval/utils.py`,
//! `lm_eval/__main__.py`): `--model_args` and `--gen_kwargs`, `key=value` pairs separated
//! by commas, each value read as lm-eval reads it ([`parse_pairs`]); and `--seed`, one to
//! four seeds ([`Seeds`]). What they mean to a run is settled in `settings.rs`.

use std::path::PathBuf;

use serde_json::Value;

/// lm-evaluation-harness's `--model` values that say "a Hugging Face model", which
/// `--model_args pretrained=…` then names; evalmesh's `--model` is the model's path.
pub const HF_MODEL_TYPES: &[&str] = &["hf", "hf-auto", "huggingface"];

/// `a=1,b=true,c=text` as lm-eval's `simple_parse_args_string` reads it: pairs split at
/// commas, each at its first `=`, keys and values trimmed; a value is `true` or `false`
/// (any case), a whole number, a number, or else the text. An error names the pair.
pub fn parse_pairs(text: &str) -> Result<Vec<(String, Value)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), typed(value.trim()))),
            _ => Err(format!("`{pair}` is not key=value")),
        })
        .collect()
}

/// lm-eval's `handle_arg_string`.
fn typed(value: &str) -> Value {
    match value.to_lowercase().as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
        if let Ok(n) = value.parse::<u64>() {
            return Value::from(n);
        }
    }
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() => Value::from(v),
        _ => Value::String(value.to_string()),
    }
}

/// `--gen_kwargs`'s pairs, checked ([`crate::tasks::yaml::config::GenerationKwargs::update`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenKwargs(pub Vec<(String, Value)>);

/// What `--model_args` says of the model, for lm-eval's `--model hf --model_args
/// pretrained=DIR[,gguf_file=NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelArgsGiven {
    /// `pretrained`, joined with `gguf_file` where it is given.
    pub model: PathBuf,
    pub tokenizer: Option<PathBuf>,
    /// `max_length`: the context length.
    pub max_length: Option<usize>,
    /// `add_bos_token`.
    pub add_bos: Option<bool>,
    /// `dtype`, which changes nothing here (the run says so).
    pub dtype: Option<String>,
    /// The pairs as given, for the results' `config.model_args`.
    pub pairs: Vec<(String, Value)>,
}

/// Keys of lm-eval's `hf` model that choose how it loads and change no score here (not
/// `device`, which `--device` sets).
const LOADING_KEYS: &[&str] =
    &["trust_remote_code", "device_map", "parallelize", "use_fast_tokenizer", "low_cpu_mem_usage"];

impl ModelArgsGiven {
    /// Reads `--model_args`; an error names the key and what it takes.
    pub fn parse(text: &str) -> Result<ModelArgsGiven, String> {
        let pairs = parse_pairs(text)?;
        let (mut pretrained, mut gguf_file, mut tokenizer) = (None, None, None);
        let (mut max_length, mut add_bos, mut dtype) = (None, None, None);
        let path = |key: &str, value: &Value| match value {
            Value::String(s) if !s.is_empty() => Ok(PathBuf::from(s)),
            other => Err(format!("`{key}`: `{other}` is not a path")),
        };
        for (key, value) in &pairs {
            match key.as_str() {
                "pretrained" => pretrained = Some(path(key, value)?),
                "gguf_file" => gguf_file = Some(path(key, value)?),
                "tokenizer" => tokenizer = Some(path(key, value)?),
                "max_length" => {
                    max_length = match value.as_u64() {
                        Some(n) if n > 0 => Some(n as usize),
                        _ => return Err(format!("`max_length`: `{value}` is not a number of tokens (1 or more)")),
                    }
                }
                "add_bos_token" => {
                    add_bos =
                        Some(value.as_bool().ok_or_else(|| format!("`add_bos_token`: `{value}` is not true or false"))?)
                }
                "dtype" => dtype = Some(value.as_str().map_or_else(|| value.to_string(), str::to_string)),
                key if LOADING_KEYS.contains(&key) => {}
                other => {
                    return Err(format!(
                        "`{other}` is not a key evalmesh takes (pretrained, gguf_file, tokenizer, max_length, add_bos_token, dtype; or {}, which change nothing here)",
                        LOADING_KEYS.join(", ")
                    ))
                }
            }
        }
        let pretrained =
            pretrained.ok_or("no `pretrained=PATH`: it names the model (a folder, or one with gguf_file=NAME)")?;
        let model = match gguf_file {
            Some(file) => pretrained.join(file),
            None => pretrained,
        };
        Ok(ModelArgsGiven { model, tokenizer, max_length, add_bos, dtype, pairs })
    }
}

/// `--seed`'s four seeds, as lm-eval reads them: one number for all four, or three or four
/// separated by commas (a missing fourth takes its default), each a whole number or `None`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seeds {
    /// Python's `random` and numpy's: lm-eval seeds them; nothing here draws from them.
    pub random: Option<u64>,
    pub numpy: Option<u64>,
    /// torch's, which lm-eval's sampled generation draws from: here, the seed of each
    /// sampled document's own stream.
    pub torch: u16,
    /// The few-shot sampler's (`random.Random(seed)`, once per task).
    pub fewshot: u32,
}

impl Default for Seeds {
    /// lm-eval's `0,1234,1234,1234`.
    fn default() -> Self {
        Seeds { random: Some(0), numpy: Some(1234), torch: 1234, fewshot: 1234 }
    }
}

impl Seeds {
    /// Reads `--seed`; an error names the value and what it must be.
    pub fn parse(text: &str) -> Result<Seeds, String> {
        let items: Vec<Option<u64>> = text
            .split(',')
            .map(|item| match item.trim().to_lowercase().as_str() {
                "none" => Ok(None),
                number => {
                    number.parse().map(Some).map_err(|_| format!("`{}` is not a whole number or None", item.trim()))
                }
            })
            .collect::<Result<_, _>>()?;
        let defaults = Seeds::default();
        let [random, numpy, torch, fewshot] = match items[..] {
            [one] => [one; 4],
            [a, b, c] => [a, b, c, Some(defaults.fewshot as u64)],
            [a, b, c, d] => [a, b, c, d],
            _ => {
                return Err(
                    "give one seed, or three or four separated by commas (random, numpy, torch, few-shot)".into()
                )
            }
        };
        let drawn = |seed: Option<u64>, what: &str, below: u64| match seed {
            Some(s) if s < below => Ok(s),
            Some(s) => Err(format!("the {what} seed {s} must be below {below}")),
            None => Err(format!(
                "the {what} seed cannot be None: evalmesh's draws are always seeded, so that a run repeats"
            )),
        };
        Ok(Seeds {
            random,
            numpy,
            torch: drawn(torch, "sampling (torch)", 1 << 16)? as u16,
            fewshot: drawn(fewshot, "few-shot", 1 << 32)? as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_typed_as_lm_eval_types_them() {
        let pairs = parse_pairs("a=1, b=True,c=0.5,d=text,e=1e3,f=-2,g=").unwrap();
        let want = [
            ("a", Value::from(1u64)),
            ("b", Value::Bool(true)),
            ("c", Value::from(0.5)),
            ("d", Value::from("text")),
            ("e", Value::from(1000.0)),
            ("f", Value::from(-2.0)),
            ("g", Value::from("")),
        ];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v)));
        assert!(parse_pairs("a=1,b").unwrap_err().contains("`b`"));
    }

    #[test]
    fn model_args_name_the_model_and_refuse_unknown_keys() {
        let given =
            ModelArgsGiven::parse("pretrained=/m,gguf_file=x.gguf,max_length=64,trust_remote_code=True").unwrap();
        assert_eq!(given.model, PathBuf::from("/m/x.gguf"));
        assert_eq!(given.max_length, Some(64));
        assert!(ModelArgsGiven::parse("gguf_file=x.gguf").unwrap_err().contains("pretrained"));
        assert!(ModelArgsGiven::parse("pretrained=/m,revision=main").unwrap_err().contains("`revision`"));
        assert!(ModelArgsGiven::parse("pretrained=/m,max_length=0").unwrap_err().contains("max_length"));
    }

    #[test]
    fn seeds_are_read_as_lm_eval_reads_them() {
        assert_eq!(Seeds::parse("42").unwrap(), Seeds { random: Some(42), numpy: Some(42), torch: 42, fewshot: 42 });
        assert_eq!(Seeds::parse("None,1,2").unwrap(), Seeds { random: None, numpy: Some(1), torch: 2, fewshot: 1234 });
        assert!(Seeds::parse("1,2").is_err());
        assert!(Seeds::parse("1,2,3,None").unwrap_err().contains("few-shot"));
        assert!(Seeds::parse("1,2,70000,4").unwrap_err().contains("below 65536"));
        assert!(Seeds::parse("x").unwrap_err().contains("`x`"));
    }
}
