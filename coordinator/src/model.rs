//! Opens a model for the coordinator: its weight source (GGUF file or Hugging Face
//! directory) and its tokenizer, checked against each other.

use std::path::{Path, PathBuf};

use evalmesh_worker::weights::{GgufModel, HfModel};
use evalmesh_worker::{WeightError, WeightSource};

use crate::tokenizer::{TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("tokenizer has {tokenizer} tokens but the model's vocabulary is {model}: they do not belong together")]
    VocabularyMismatch { tokenizer: usize, model: usize },
}

pub struct Model {
    pub source: Box<dyn WeightSource>,
    pub tokenizer: TextTokenizer,
}

impl Model {
    /// `tokenizer` overrides the model's own (GGUF metadata or the directory's `tokenizer.json`).
    pub fn open(path: &Path, tokenizer: Option<&Path>) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let (source, own_tokenizer): (Box<dyn WeightSource>, Option<TextTokenizer>) = if path.is_dir() {
            (Box::new(HfModel::open(path)?), None)
        } else {
            let gguf = GgufModel::open(path)?;
            let tok = match tokenizer {
                Some(_) => None,
                None => Some(TextTokenizer::from_gguf(&gguf.file)?),
            };
            (Box::new(gguf), tok)
        };
        let tokenizer = match (own_tokenizer, tokenizer) {
            (Some(t), _) => t,
            (None, Some(file)) => TextTokenizer::from_file(file)?,
            (None, None) => TextTokenizer::from_file(&path.join("tokenizer.json"))?,
        };
        let model_vocab = source.config().vocab_size;
        if tokenizer.vocab_size() > model_vocab {
            return Err(ModelError::VocabularyMismatch { tokenizer: tokenizer.vocab_size(), model: model_vocab });
        }
        Ok(Model { source, tokenizer })
    }
}
