//! Text to token ids through the `tokenizers` crate: from a `tokenizer.json`, or built
//! from a GGUF file's vocabulary (gpt2-style byte-level BPE with the pre-tokenizer
//! that `tokenizer.ggml.pre` names), honouring the model's `add_bos_token`.

use std::path::{Path, PathBuf};

use evalmesh_worker::weights::gguf::{GgufFile, Value};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {problem}", path.display())]
    Model { path: PathBuf, problem: String },
    #[error("{}: cannot load tokenizer: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// GGUF token type of control tokens (`<|endoftext|>` and the like).
const TOKEN_TYPE_CONTROL: i64 = 3;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, as tokenizer.json.
fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    let sequence = |parts: Vec<serde_json::Value>| json!({"type": "Sequence", "pretokenizers": parts});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // llama.cpp splits digits one by one, then applies GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            sequence(vec![json!({"type": "Digits", "individual_digits": true}), byte_level(true)])
        }
        "llama3" | "llama-bpe" => sequence(vec![split(LLAMA3_SPLIT), byte_level(false)]),
        "qwen2" => sequence(vec![split(QWEN2_SPLIT), byte_level(false)]),
        _ => return None,
    })
}

/// Builds a `tokenizer.json` equivalent to the GGUF file's own tokenizer.
pub fn gguf_tokenizer_json(file: &GgufFile) -> Result<serde_json::Value, TokenizerError> {
    let bad = |problem: String| TokenizerError::Model { path: file.path.clone(), problem };
    let string = |key: &str| file.get(key).and_then(Value::as_str);
    match string("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(bad(format!(
                "tokenizer.ggml.model `{other}` is not supported (gpt2-style BPE is); pass a tokenizer.json with --tokenizer"
            )))
        }
        None => return Err(bad("tokenizer.ggml.model is missing; pass a tokenizer.json with --tokenizer".into())),
    }
    let pre_name = string("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        bad(format!(
            "pre-tokenizer `{pre_name}` (tokenizer.ggml.pre) is not supported; pass a tokenizer.json with --tokenizer"
        ))
    })?;
    let strings = |key: &str| -> Result<Vec<&str>, TokenizerError> {
        let items = file.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("{key} is missing")))?;
        items.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("{key} holds a non-string")))).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_u64().map_or(-1, |x| x as i64)).collect(),
        None => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| types.get(*id) == Some(&TOKEN_TYPE_CONTROL))
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// Checks a BPE model's merges before the tokenizers library builds it (which panics on
/// a merge longer than every token instead of refusing it): each merge must join two
/// tokens of the vocabulary into a third, as the library then checks.
fn check_merges(tokenizer: &serde_json::Value) -> Result<(), String> {
    let model = &tokenizer["model"];
    let (Some("BPE"), Some(vocab), Some(merges)) =
        (model["type"].as_str(), model["vocab"].as_object(), model["merges"].as_array())
    else {
        return Ok(());
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        let pair = match merge {
            serde_json::Value::String(s) => s.split_once(' '),
            serde_json::Value::Array(p) => p.first().and_then(|a| Some((a.as_str()?, p.get(1)?.as_str()?))),
            _ => None,
        };
        let Some((a, b)) = pair else { return Err(format!("merge {i} is not a pair of tokens: {merge}")) };
        let joined = format!("{a}{}", b.strip_prefix(prefix).unwrap_or(b));
        if ![a, b, &joined].iter().all(|t| vocab.contains_key(*t)) {
            return Err(format!("merge {i} `{a} {b}` does not join two tokens of the vocabulary into a third"));
        }
    }
    Ok(())
}

/// A tokenizer with the model's BOS policy.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl TextTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let json = gguf_tokenizer_json(file)?;
        let bad = |problem: String| TokenizerError::Model { path: file.path.clone(), problem };
        check_merges(&json).map_err(|e| bad(format!("tokenizer.ggml.merges: {e}")))?;
        let inner = serde_json::from_value::<tokenizers::Tokenizer>(json)
            .map_err(|e| bad(format!("tokenizer from GGUF vocabulary: {e}")))?;
        let id = |key: &str| file.get(key).and_then(Value::as_u64).map(|v| v as u32);
        Ok(TextTokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Loads a `tokenizer.json`. Like lm-evaluation-harness, no BOS is added; the
    /// BOS and EOS ids come from the special tokens the file names.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bad = |problem: String| TokenizerError::File { path: path.to_path_buf(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        check_merges(&json).map_err(bad)?;
        let inner = serde_json::from_value::<tokenizers::Tokenizer>(json).map_err(|e| bad(e.to_string()))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&["<|im_start|>", "<s>", "<|begin_of_text|>", "<|endoftext|>"]);
        let eos = find(&["<|im_end|>", "</s>", "<|end_of_text|>", "<|endoftext|>"]);
        Ok(TextTokenizer { inner, bos, eos, add_bos: false })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a whole document: BOS first when the model asks for it (as llama.cpp does).
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub fn add_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// The token that stands before a request with no context (lm-evaluation-harness's
    /// `prefix_token_id`: BOS when the model has one, else EOS).
    pub fn prefix_token(&self) -> Option<u32> {
        self.bos.or(self.eos)
    }

    /// The text of one token (for display).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }
}
