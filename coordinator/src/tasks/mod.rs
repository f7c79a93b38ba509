//! Evaluation tasks: each turns its data into scoring requests and the scores into metrics.

pub mod perplexity;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Data { path: PathBuf, problem: String },
    #[error("{0}")]
    Settings(String),
}

/// Reads a UTF-8 text file; the error names the file and, for bad bytes, their offset.
pub fn read_text(path: &Path) -> Result<String, TaskError> {
    let bytes = std::fs::read(path).map_err(|source| TaskError::Io { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes).map_err(|e| TaskError::Data {
        path: path.to_path_buf(),
        problem: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })
}
