//! Weight loading: the [`WeightSource`] trait over a model file, its GGUF and
//! Hugging Face safetensors implementations, and [`load`] and [`load_part`], which read
//! a tensor (or a rectangle of it) widened to f32 after checking its shape against the
//! configuration.

pub mod gguf;
mod gguf_model;
mod hf;
pub mod quant;
pub mod random;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use evalmesh_common::{ConfigError, ModelConfig};

use crate::tensor::Matrix;
pub use gguf_model::GgufModel;
pub use hf::{hf_tensor_name, read_shard_header, HfModel};
pub use random::RandomModel;

/// Why a model's weights could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    #[error("{}: {error}", path.display())]
    Config { path: PathBuf, error: ConfigError },
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` is {} × {} (rows × columns) but the model's config implies {} × {}: the file and its config disagree", path.display(), found.0, found.1, expected.0, expected.1)]
    Shape { path: PathBuf, name: String, expected: (usize, usize), found: (usize, usize) },
    #[error("{}: tensor `{name}` contains {count} non-finite values (NaN or infinity)", path.display())]
    NonFinite { path: PathBuf, name: String, count: usize },
}

impl WeightError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        WeightError::Io { path: path.to_path_buf(), error }
    }
}

/// A tensor of one transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl LayerTensor {
    /// The tensor's name in keys that must not move when the code does (random models'
    /// seeds): written out, not taken from `Debug`.
    pub fn key_name(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "AttnNorm",
            LayerTensor::Q => "Q",
            LayerTensor::K => "K",
            LayerTensor::V => "V",
            LayerTensor::O => "O",
            LayerTensor::FfnNorm => "FfnNorm",
            LayerTensor::Gate => "Gate",
            LayerTensor::Up => "Up",
            LayerTensor::Down => "Down",
        }
    }
}

/// Every tensor of a Llama-family model, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorId {
    Embedding,
    Layer(usize, LayerTensor),
    FinalNorm,
    Head,
}

impl TensorId {
    /// (rows, cols) the configuration implies; norms are one row.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        match self {
            TensorId::Embedding | TensorId::Head => (c.vocab_size, c.hidden_size),
            TensorId::FinalNorm => (1, c.hidden_size),
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => (1, c.hidden_size),
                LayerTensor::Q => (c.q_dim(), c.hidden_size),
                LayerTensor::K | LayerTensor::V => (c.kv_dim(), c.hidden_size),
                LayerTensor::O => (c.hidden_size, c.q_dim()),
                LayerTensor::Gate | LayerTensor::Up => (c.intermediate_size, c.hidden_size),
                LayerTensor::Down => (c.hidden_size, c.intermediate_size),
            },
        }
    }
}

/// A tensor found in a model file: its name there, its (rows, cols) and where to read it.
pub struct Located<'a> {
    pub name: String,
    pub shape: (usize, usize),
    pub dtype: quant::GgmlType,
    pub bytes: &'a [u8],
}

/// A model file (or directory) that yields its configuration and its tensors by role.
pub trait WeightSource: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn path(&self) -> &Path;
    /// Finds a tensor without reading its data.
    fn locate(&self, id: TensorId) -> Result<Located<'_>, WeightError>;
    /// Counts bytes that [`load`] read from this source.
    fn bytes_read(&self) -> &AtomicU64;
    /// Whether the weights are drawn at random instead of read ([`random::RandomModel`]).
    fn is_random(&self) -> bool {
        false
    }
}

/// Reads one tensor widened to f32, after checking its shape against the config,
/// and refuses weights with NaN or infinity.
pub fn load(source: &dyn WeightSource, id: TensorId) -> Result<Matrix, WeightError> {
    let (rows, cols) = id.shape(source.config());
    load_part(source, id, 0..rows, 0..cols)
}

/// Reads the rectangle `rows × cols` of a tensor, as [`load`] does the whole: a
/// tensor-parallel shard reads only its rows, or in each row only the quantisation
/// blocks that hold its columns.
pub fn load_part(
    source: &dyn WeightSource,
    id: TensorId,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Result<Matrix, WeightError> {
    let expected = id.shape(source.config());
    let found = source.locate(id)?;
    if found.shape != expected {
        return Err(WeightError::Shape {
            path: source.path().to_path_buf(),
            name: found.name,
            expected,
            found: found.shape,
        });
    }
    assert!(rows.end <= expected.0 && cols.end <= expected.1, "{rows:?} × {cols:?} outside {expected:?}");
    let (block_elems, block_bytes) = found.dtype.block();
    let row_bytes = expected.1 / block_elems * block_bytes;
    let blocks = cols.start / block_elems..cols.end.div_ceil(block_elems);
    let first = blocks.start * block_elems;
    let mut widened = vec![0.0f32; blocks.len() * block_elems];
    let mut data = Vec::with_capacity(rows.len() * cols.len());
    for r in rows.clone() {
        let start = r * row_bytes + blocks.start * block_bytes;
        let bytes = &found.bytes[start..start + blocks.len() * block_bytes];
        found.dtype.dequantize(bytes, &mut widened);
        data.extend_from_slice(&widened[cols.start - first..cols.end - first]);
    }
    let read = rows.len() * blocks.len() * block_bytes;
    source.bytes_read().fetch_add(read as u64, Ordering::Relaxed);
    let count = data.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(WeightError::NonFinite { path: source.path().to_path_buf(), name: found.name, count });
    }
    Ok(Matrix::from_vec(rows.len(), cols.len(), data))
}

/// Opens a model: a GGUF file, or a Hugging Face directory with `config.json` and
/// safetensors; with `random_weights`, a `config.json` (or its directory) whose weights are
/// drawn at random.
pub fn open(path: &Path, random_weights: bool) -> Result<Box<dyn WeightSource>, WeightError> {
    if random_weights {
        Ok(Box::new(RandomModel::open(path)?))
    } else if path.is_dir() {
        Ok(Box::new(HfModel::open(path)?))
    } else {
        Ok(Box::new(GgufModel::open(path)?))
    }
}
