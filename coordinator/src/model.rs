//! Opens a model for the coordinator: its weight source (GGUF file, Hugging Face
//! directory, or a config.json with random weights) and its tokenizer, checked against
//! each other, or its tokenizer alone (`evalmesh tokenize`); and where the cached test
//! model lives.

use std::path::{Path, PathBuf};

use evalmesh_worker::weights::gguf::GgufFile;
use evalmesh_worker::weights::{GgufModel, HfModel, RandomModel};
use evalmesh_worker::{WeightError, WeightSource};

use crate::tokenizer::{TextTokenizer, TokenizerError};

/// The test model's file name in the cache (see scripts/fetch-test-model.sh).
pub const TEST_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache folder of scripts/fetch-test-model.sh and of hardware profiles:
/// `$EVALMESH_CACHE`, else `$XDG_CACHE_HOME/evalmesh` or `~/.cache/evalmesh`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVALMESH_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("evalmesh")
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("tokenizer {} has {tokenizer} tokens but the model's vocabulary is {model}: they do not belong together; pass the model's own tokenizer with --tokenizer", path.display())]
    VocabularyMismatch { path: PathBuf, tokenizer: usize, model: usize },
}

pub struct Model {
    pub source: Box<dyn WeightSource>,
    pub tokenizer: TextTokenizer,
}

impl Model {
    /// `tokenizer` overrides the model's own (GGUF metadata or the directory's
    /// `tokenizer.json`): a tokenizer.json, or a GGUF file whose tokenizer to take. With
    /// `random_weights`, `path` is a config.json or its directory and the weights are drawn
    /// at random.
    pub fn open(path: &Path, tokenizer: Option<&Path>, random_weights: bool) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let (source, own_tokenizer): (Box<dyn WeightSource>, Option<TextTokenizer>) = if random_weights {
            (Box::new(RandomModel::open(path)?), None)
        } else if path.is_dir() {
            (Box::new(HfModel::open(path)?), None)
        } else {
            let gguf = GgufModel::open(path)?;
            let tok = match tokenizer {
                Some(_) => None,
                None => Some(TextTokenizer::from_gguf(&gguf.file)?),
            };
            (Box::new(gguf), tok)
        };
        let (tokenizer, tokenizer_path) = match own_tokenizer {
            Some(t) => (t, path.to_path_buf()),
            None => open_tokenizer(path, tokenizer)?,
        };
        // A model's embedding may have a few more rows than its tokenizer has tokens
        // (padded to a round size: Qwen2 and Phi-3 pad by under 1%), never fewer.
        let (tokens, model_vocab) = (tokenizer.vocab_size(), source.config().vocab_size);
        if tokens > model_vocab || (tokens as f64) < 0.9 * model_vocab as f64 {
            return Err(ModelError::VocabularyMismatch { path: tokenizer_path, tokenizer: tokens, model: model_vocab });
        }
        Ok(Model { source, tokenizer })
    }
}

/// The tokenizer of the model at `path`, without its weights: `tokenizer` where given (a
/// tokenizer.json, or a GGUF file whose vocabulary to take), else the GGUF file's own
/// vocabulary, or the tokenizer.json in the model's directory (beside its config.json).
/// Returns it with the file it came from.
pub fn open_tokenizer(path: &Path, tokenizer: Option<&Path>) -> Result<(TextTokenizer, PathBuf), ModelError> {
    let is_gguf = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let file = match tokenizer {
        Some(file) => file.to_path_buf(),
        None if !path.exists() => return Err(ModelError::NotFound(path.to_path_buf())),
        None if path.is_dir() => path.join("tokenizer.json"),
        None if path.extension().is_some_and(|e| e == "json") => {
            path.parent().unwrap_or(Path::new(".")).join("tokenizer.json")
        }
        None => return Ok((TextTokenizer::from_gguf(&GgufFile::open_metadata(path)?)?, path.to_path_buf())),
    };
    let tokenizer = if is_gguf(&file) {
        TextTokenizer::from_gguf(&GgufFile::open_metadata(&file)?)?
    } else {
        TextTokenizer::from_file(&file)?
    };
    Ok((tokenizer, file))
}
