//! Text to token ids, and the BOS policy. Two engines behind one [`TextTokenizer`]:
//! the `tokenizers` crate, from a `tokenizer.json` or from a GGUF file's gpt2-style
//! byte-level BPE vocabulary (`bpe` writes its tokenizer.json); and [`spm`], llama.cpp's
//! SentencePiece tokenizer, for GGUF vocabularies of `tokenizer.ggml.model = "llama"`
//! (Gemma, Llama 2). This module reads the BOS policy and the `tokenizer_config.json`.
//!
//! Whether a BOS goes first is the tokenizer's own default, as lm-evaluation-harness (which
//! leaves it to the tokenizer) and llama.cpp decide: GGUF `tokenizer.ggml.add_bos_token`
//! (absent: yes for SentencePiece vocabularies, as llama.cpp; no for gpt2-style ones), or
//! `add_bos_token` of the `tokenizer_config.json` beside a `tokenizer.json` (absent: no).
//! `--add-bos` overrides it ([`TextTokenizer::set_add_bos`]). The model's chat template
//! is kept with it and rendered by [`chat`].

mod bpe;
pub mod chat;
pub mod spm;

use std::path::{Path, PathBuf};

use evalmesh_worker::weights::gguf::{GgufFile, Value};

use bpe::check_merges;
pub use bpe::gguf_tokenizer_json;
use spm::SpmVocab;

pub use self::chat::ChatTemplate;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {problem}", path.display())]
    Model { path: PathBuf, problem: String },
    #[error("{}: cannot load tokenizer: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("--add-bos true: the tokenizer has no BOS token (no bos_token_id in the GGUF file, no bos_token in tokenizer_config.json); leave out --add-bos")]
    NoBos,
}

/// What a `tokenizer_config.json` says about the special tokens: each field `None` where
/// the file or the key is missing, `Some(None)` for a token given as null.
#[derive(Debug, Default)]
struct TokenizerConfig {
    path: PathBuf,
    add_bos_token: Option<bool>,
    bos_token: Option<Option<String>>,
    eos_token: Option<Option<String>>,
    chat_template: Option<String>,
}

impl TokenizerConfig {
    /// The `tokenizer_config.json` in the folder of `tokenizer_json`, where there is one.
    fn beside(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let mut config =
            TokenizerConfig { path: tokenizer_json.with_file_name("tokenizer_config.json"), ..Default::default() };
        let text = match std::fs::read_to_string(&config.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(config),
            Err(e) => return Err(config.error(e.to_string())),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| config.error(format!("not JSON ({e}): fix or remove it")))?;
        let Some(json) = json.as_object() else {
            return Err(config.error("not a JSON object: fix or remove it".into()));
        };
        config.add_bos_token = match json.get("add_bos_token") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(add)) => Some(*add),
            Some(other) => return Err(config.error(format!("add_bos_token is {other}; it must be true or false"))),
        };
        config.bos_token = config.token_name(json, "bos_token")?;
        config.eos_token = config.token_name(json, "eos_token")?;
        // A template, or a list of named ones whose `default` is the chat template.
        config.chat_template = match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(_) => return Err(config.error("chat_template must be a template or a list of named ones".into())),
        };
        Ok(config)
    }

    /// A special token's name: a string, an object with `content` (transformers' AddedToken),
    /// or null (the tokenizer has none).
    fn token_name(
        &self,
        json: &serde_json::Map<String, serde_json::Value>,
        key: &str,
    ) -> Result<Option<Option<String>>, TokenizerError> {
        match json.get(key) {
            None => Ok(None),
            Some(serde_json::Value::Null) => Ok(Some(None)),
            Some(serde_json::Value::String(name)) => Ok(Some(Some(name.clone()))),
            Some(other) => match other.get("content").and_then(serde_json::Value::as_str) {
                Some(name) => Ok(Some(Some(name.to_string()))),
                None => Err(self
                    .error(format!("{key} is {other}; it must be a token's text, an object with `content`, or null"))),
            },
        }
    }

    fn error(&self, problem: String) -> TokenizerError {
        TokenizerError::File { path: self.path.clone(), problem }
    }
}

/// What turns text into ids.
enum Engine {
    /// The `tokenizers` crate: a tokenizer.json, or a GGUF gpt2-style vocabulary.
    Library(Box<tokenizers::Tokenizer>),
    /// A GGUF SentencePiece vocabulary, as llama.cpp tokenizes it.
    SentencePiece(Box<SpmVocab>),
}

/// A tokenizer with its BOS policy.
pub struct TextTokenizer {
    engine: Engine,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// The model's chat template (GGUF `tokenizer.chat_template`, or `chat_template` of the
    /// tokenizer_config.json), where it has one.
    chat_template: Option<String>,
}

impl TextTokenizer {
    fn new(engine: Engine, bos: Option<u32>, eos: Option<u32>, add_bos: bool, source: &Path) -> Self {
        if add_bos && bos.is_none() {
            log::warn!("{}: the tokenizer asks for a BOS token first but names none: none is added", source.display());
        }
        TextTokenizer { engine, bos, eos, add_bos, chat_template: None }
    }

    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`): gpt2-style BPE through
    /// the `tokenizers` crate, llama-style SentencePiece natively ([`spm`]).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let bad = |problem: String| TokenizerError::Model { path: file.path.clone(), problem };
        let sentencepiece = file.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
        let engine = if sentencepiece {
            Engine::SentencePiece(Box::new(SpmVocab::from_gguf(file).map_err(bad)?))
        } else {
            let json = gguf_tokenizer_json(file)?;
            check_merges(&json).map_err(|e| bad(format!("tokenizer.ggml.merges: {e}")))?;
            let inner = serde_json::from_value::<tokenizers::Tokenizer>(json)
                .map_err(|e| bad(format!("tokenizer from GGUF vocabulary: {e}")))?;
            Engine::Library(Box::new(inner))
        };
        let tokens = engine.vocab_size();
        let id = |key: &str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            match file.get(key) {
                None => Ok(default.filter(|&id| (id as usize) < tokens)),
                Some(value) => match value.as_u64() {
                    Some(id) if id < tokens as u64 => Ok(Some(id as u32)),
                    _ => Err(bad(format!("{key} must be a token id below {tokens}, the vocabulary's size"))),
                },
            }
        };
        // llama.cpp's defaults for SentencePiece vocabularies: BOS 1, EOS 2, BOS added.
        let (bos, eos) = if sentencepiece { (Some(1), Some(2)) } else { (None, None) };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id", bos)?, id("tokenizer.ggml.eos_token_id", eos)?);
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            None => sentencepiece,
            Some(value) => {
                value.as_bool().ok_or_else(|| bad("tokenizer.ggml.add_bos_token must be true or false".into()))?
            }
        };
        let mut tokenizer = TextTokenizer::new(engine, bos, eos, add_bos, &file.path);
        tokenizer.chat_template = file.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        Ok(tokenizer)
    }

    /// Loads a `tokenizer.json`, with what the `tokenizer_config.json` beside it says:
    /// `add_bos_token` (missing: no BOS, as before), `bos_token` and `eos_token` (missing:
    /// the first of the usual names that the vocabulary holds).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bad = |problem: String| TokenizerError::File { path: path.to_path_buf(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        check_merges(&json).map_err(bad)?;
        let inner = serde_json::from_value::<tokenizers::Tokenizer>(json).map_err(|e| bad(e.to_string()))?;
        let config = TokenizerConfig::beside(path)?;
        let special = |named: &Option<Option<String>>, key: &str, usual: &[&str]| match named {
            None => Ok(usual.iter().find_map(|n| inner.token_to_id(n))),
            Some(None) => Ok(None),
            Some(Some(name)) => inner
                .token_to_id(name)
                .map(Some)
                .ok_or_else(|| config.error(format!("{key} `{name}` is not a token of {}", path.display()))),
        };
        let bos =
            special(&config.bos_token, "bos_token", &["<|im_start|>", "<s>", "<|begin_of_text|>", "<|endoftext|>"])?;
        let eos = special(&config.eos_token, "eos_token", &["<|im_end|>", "</s>", "<|end_of_text|>", "<|endoftext|>"])?;
        let add_bos = config.add_bos_token.unwrap_or(false);
        let mut tokenizer = TextTokenizer::new(Engine::Library(Box::new(inner)), bos, eos, add_bos, &config.path);
        tokenizer.chat_template = config.chat_template;
        Ok(tokenizer)
    }

    /// Overrides the BOS policy (`--add-bos`); a BOS is refused where the tokenizer has none.
    pub fn set_add_bos(&mut self, add: bool) -> Result<(), TokenizerError> {
        if add && self.bos.is_none() {
            return Err(TokenizerError::NoBos);
        }
        self.add_bos = add;
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.engine.vocab_size()
    }

    /// Token ids of `text`, without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match &self.engine {
            Engine::Library(inner) => {
                let encoding = inner.encode_fast(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
                ids.extend_from_slice(encoding.get_ids());
            }
            Engine::SentencePiece(vocab) => vocab.encode(text, ids).map_err(TokenizerError::Encode)?,
        }
        Ok(())
    }

    /// Token ids of `text` with what the tokenizer adds by default: BOS first when the BOS
    /// policy says so (llama.cpp's `add_special`, transformers' `add_special_tokens=True`).
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids: Vec<u32> = self.add_bos().into_iter().collect();
        self.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    /// The BOS token when the policy adds one.
    pub fn add_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// The token that stands before a request with no context (lm-evaluation-harness's
    /// `prefix_token_id`: BOS when the model has one, else EOS), whatever the BOS policy.
    pub fn prefix_token(&self) -> Option<u32> {
        self.bos.or(self.eos)
    }

    /// The text of `ids` without special tokens (lm-evaluation-harness's `tok_decode`,
    /// `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match &self.engine {
            Engine::Library(inner) => inner.decode(ids, true).map_err(|e| TokenizerError::Encode(e.to_string())),
            Engine::SentencePiece(vocab) => Ok(vocab.decode(ids)),
        }
    }

    /// The end-of-text token, where the tokenizer has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The model's chat template, where it has one, with the texts of its BOS and EOS tokens.
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        let text = |id: Option<u32>| id.map(|id| self.token_text(id)).unwrap_or_default();
        let source = self.chat_template.clone()?;
        Some(ChatTemplate { source, bos_token: text(self.bos), eos_token: text(self.eos) })
    }

    /// The id of the token whose text is `text` exactly, where the vocabulary has one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.engine {
            Engine::Library(inner) => inner.token_to_id(text),
            Engine::SentencePiece(vocab) => vocab.token_id(text),
        }
    }

    /// The text of one token (for display).
    pub fn token_text(&self, id: u32) -> String {
        match &self.engine {
            Engine::Library(inner) => inner.decode(&[id], false).unwrap_or_default(),
            Engine::SentencePiece(vocab) => vocab.token_text(id),
        }
    }
}

impl Engine {
    fn vocab_size(&self) -> usize {
        match self {
            Engine::Library(inner) => inner.get_vocab_size(true),
            Engine::SentencePiece(vocab) => vocab.vocab_size(),
        }
    }
}

/// Small tokenizers for the tests of the modules that tokenize.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use super::TextTokenizer;

    /// Ids: `<bos>` 0, `<eos>` 1, `[UNK]` 2, `hello` 3, `world` 4.
    pub const HELLO: u32 = 3;
    pub const WORLD: u32 = 4;

    /// A word-level tokenizer.json in `dir`, with a tokenizer_config.json holding `config`
    /// when one is given.
    pub fn word_level(dir: &Path, config: Option<serde_json::Value>) -> TextTokenizer {
        let vocab = serde_json::json!({"<bos>": 0, "<eos>": 1, "[UNK]": 2, "hello": 3, "world": 4});
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let tokenizer = serde_json::json!({"version": "1.0",
            "added_tokens": [special(0, "<bos>"), special(1, "<eos>")],
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
            "pre_tokenizer": {"type": "Whitespace"}});
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        if let Some(config) = config {
            std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        }
        TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use evalmesh_worker::weights::gguf::writer::write;
    use serde_json::json;

    use super::testing::{word_level, HELLO, WORLD};
    use super::*;

    #[test]
    fn tokenizer_config_decides_the_bos() {
        let dir = tempfile::tempdir().unwrap();
        let no_bos = word_level(dir.path(), Some(json!({"add_bos_token": false, "bos_token": "<bos>"})));
        assert_eq!(no_bos.encode_document("hello world").unwrap(), vec![HELLO, WORLD]);
        assert_eq!(no_bos.add_bos(), None);
        assert_eq!(no_bos.prefix_token(), Some(0), "the prefix token is BOS whatever the policy");
        let bos = word_level(dir.path(), Some(json!({"add_bos_token": true, "bos_token": {"content": "<bos>"}})));
        assert_eq!(bos.encode_document("hello world").unwrap(), vec![0, HELLO, WORLD]);
        assert_eq!(bos.encode("hello world").unwrap(), vec![HELLO, WORLD]);
    }

    #[test]
    fn without_tokenizer_config_no_bos_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_level(dir.path(), None);
        assert_eq!(tok.encode_document("hello").unwrap(), vec![HELLO]);
        // `<bos>` is none of the usual names, and no config names it.
        assert_eq!(tok.prefix_token(), None);
        let named = word_level(dir.path(), Some(json!({"bos_token": null, "eos_token": "<eos>"})));
        assert_eq!((named.add_bos(), named.prefix_token()), (None, Some(1)));
    }

    #[test]
    fn the_flag_overrides_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut tok = word_level(dir.path(), Some(json!({"add_bos_token": false, "bos_token": "<bos>"})));
        tok.set_add_bos(true).unwrap();
        assert_eq!(tok.encode_document("hello").unwrap(), vec![0, HELLO]);
        tok.set_add_bos(false).unwrap();
        assert_eq!(tok.encode_document("hello").unwrap(), vec![HELLO]);
        let mut without = word_level(dir.path(), Some(json!({"bos_token": null})));
        assert!(matches!(without.set_add_bos(true), Err(TokenizerError::NoBos)));
        assert!(without.set_add_bos(false).is_ok());
    }

    #[test]
    fn bad_tokenizer_config_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        word_level(dir.path(), None);
        let tokenizer_json = dir.path().join("tokenizer.json");
        let config = dir.path().join("tokenizer_config.json");
        for (text, needle) in [
            (r#"{"add_bos_token": "yes"}"#, "add_bos_token"),
            (r#"{"bos_token": "<s>"}"#, "bos_token `<s>` is not a token"),
            (r#"{"eos_token": 7}"#, "eos_token"),
            ("[1, 2]", "not a JSON object"),
            ("{", "not JSON"),
        ] {
            std::fs::write(&config, text).unwrap();
            let error = TextTokenizer::from_file(&tokenizer_json).err().unwrap().to_string();
            assert!(error.contains("tokenizer_config.json") && error.contains(needle), "{text}: {error}");
        }
    }

    /// A GGUF file holding only a SentencePiece vocabulary and `extra` metadata.
    fn spm_gguf(dir: &Path, extra: Vec<(&str, Value)>) -> GgufFile {
        let strings = |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
        let mut metadata = vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>", "▁a", "▁", "a"])),
            ("tokenizer.ggml.scores", Value::Array(vec![Value::Float(0.0); 6])),
            ("tokenizer.ggml.token_type", Value::Array([2, 3, 3, 1, 1, 1].map(Value::Int).to_vec())),
        ];
        for (key, value) in extra {
            metadata.retain(|(k, _)| *k != key);
            metadata.push((key, value));
        }
        let path = dir.join("vocab.gguf");
        std::fs::write(&path, write(&metadata, &[])).unwrap();
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn sentencepiece_gguf_adds_bos_unless_it_says_not_to() {
        let dir = tempfile::tempdir().unwrap();
        // llama.cpp's defaults: BOS 1 added, a space prefix.
        let tok = TextTokenizer::from_gguf(&spm_gguf(dir.path(), vec![])).unwrap();
        assert_eq!(tok.encode_document("a").unwrap(), vec![1, 3]);
        assert_eq!(tok.token_text(3), " a");
        let said = vec![
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
            ("tokenizer.ggml.bos_token_id", Value::Uint(2)),
        ];
        let mut tok = TextTokenizer::from_gguf(&spm_gguf(dir.path(), said)).unwrap();
        assert_eq!(tok.encode_document(" a").unwrap(), vec![3]);
        assert_eq!(tok.encode_document("a").unwrap(), vec![5]);
        tok.set_add_bos(true).unwrap();
        assert_eq!(tok.encode_document(" a").unwrap(), vec![2, 3]);
    }

    #[test]
    fn bad_gguf_vocabulary_is_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, needle) in [
            (("tokenizer.ggml.bos_token_id", Value::Uint(99)), "tokenizer.ggml.bos_token_id"),
            (("tokenizer.ggml.add_bos_token", Value::Uint(1)), "tokenizer.ggml.add_bos_token"),
            (("tokenizer.ggml.add_space_prefix", Value::String("no".into())), "tokenizer.ggml.add_space_prefix"),
            (("tokenizer.ggml.scores", Value::Array(vec![Value::Float(0.0); 2])), "tokenizer.ggml.scores has 2"),
            (("tokenizer.ggml.scores", Value::Array(vec![Value::Float(f64::NAN); 6])), "NaN"),
        ] {
            let error = TextTokenizer::from_gguf(&spm_gguf(dir.path(), vec![extra])).err().unwrap().to_string();
            assert!(error.contains("vocab.gguf") && error.contains(needle), "{needle}: {error}");
        }
    }
}
