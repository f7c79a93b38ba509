//! Weight loading: the [`WeightSource`] trait over a model file, its GGUF and
//! Hugging Face safetensors implementations, [`read_part`], which reads a rectangle of a
//! tensor in its file's encoding ([`StoredMatrix`]) after checking its shape against the
//! configuration, and [`load`] and [`load_part`], which widen what it reads to f32. A
//! source locates each tensor by role ([`TensorId`]), also where the file fuses several
//! into one (Phi-3's QKV) or stacks experts in one array (GGUF).

pub mod gguf;
mod gguf_model;
mod hf;
pub mod quant;
pub mod random;
mod stored;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use evalmesh_common::config::QkNorm;
use evalmesh_common::{ConfigError, ModelConfig};

use crate::tensor::Matrix;
pub use gguf_model::GgufModel;
pub use hf::{config_file, hf_tensor, read_shard_header, HfModel};
pub use random::RandomModel;
pub use stored::StoredMatrix;

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
    /// The norm of the attention's input.
    AttnNorm,
    /// The norm of the attention's output (Gemma 2/3, OLMo 2).
    PostAttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    O,
    /// The norm of the MLP's input.
    FfnNorm,
    /// The norm of the MLP's output (Gemma 2/3, OLMo 2).
    PostFfnNorm,
    Gate,
    Up,
    Down,
    /// A mixture's router: one row of logits weights per expert.
    Router,
    ExpertGate(usize),
    ExpertUp(usize),
    ExpertDown(usize),
}

impl LayerTensor {
    /// The tensor's name in keys that must not move when the code does (random models'
    /// seeds): written out, not taken from `Debug`.
    pub fn key_name(self) -> String {
        match self {
            LayerTensor::AttnNorm => "AttnNorm".into(),
            LayerTensor::PostAttnNorm => "PostAttnNorm".into(),
            LayerTensor::Q => "Q".into(),
            LayerTensor::K => "K".into(),
            LayerTensor::V => "V".into(),
            LayerTensor::QBias => "QBias".into(),
            LayerTensor::KBias => "KBias".into(),
            LayerTensor::VBias => "VBias".into(),
            LayerTensor::QNorm => "QNorm".into(),
            LayerTensor::KNorm => "KNorm".into(),
            LayerTensor::O => "O".into(),
            LayerTensor::FfnNorm => "FfnNorm".into(),
            LayerTensor::PostFfnNorm => "PostFfnNorm".into(),
            LayerTensor::Gate => "Gate".into(),
            LayerTensor::Up => "Up".into(),
            LayerTensor::Down => "Down".into(),
            LayerTensor::Router => "Router".into(),
            LayerTensor::ExpertGate(e) => format!("ExpertGate{e}"),
            LayerTensor::ExpertUp(e) => format!("ExpertUp{e}"),
            LayerTensor::ExpertDown(e) => format!("ExpertDown{e}"),
        }
    }
}

/// Every tensor of a model, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorId {
    Embedding,
    Layer(usize, LayerTensor),
    FinalNorm,
    Head,
}

impl TensorId {
    /// (rows, cols) the configuration implies; norms and biases are one row.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, q, kv, f) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.ffn_width());
        let qk_norm = |whole: usize| match c.block.qk_norm {
            QkNorm::Whole => (1, whole),
            _ => (1, c.head_dim),
        };
        match self {
            TensorId::Embedding | TensorId::Head => (c.vocab_size, h),
            TensorId::FinalNorm => (1, h),
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::PostAttnNorm | LayerTensor::FfnNorm | LayerTensor::PostFfnNorm => {
                    (1, h)
                }
                LayerTensor::Q => (q, h),
                LayerTensor::K | LayerTensor::V => (kv, h),
                LayerTensor::QBias => (1, q),
                LayerTensor::KBias | LayerTensor::VBias => (1, kv),
                LayerTensor::QNorm => qk_norm(q),
                LayerTensor::KNorm => qk_norm(kv),
                LayerTensor::O => (h, q),
                LayerTensor::Gate | LayerTensor::Up | LayerTensor::ExpertGate(_) | LayerTensor::ExpertUp(_) => (f, h),
                LayerTensor::Down | LayerTensor::ExpertDown(_) => (h, f),
                LayerTensor::Router => (c.experts.as_ref().map_or(0, |e| e.count), h),
            },
        }
    }

    /// Whether the tensor is a norm's weight, which the stage offsets by the configuration's
    /// `norm_weight_offset`.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            TensorId::FinalNorm
                | TensorId::Layer(
                    _,
                    LayerTensor::AttnNorm
                        | LayerTensor::PostAttnNorm
                        | LayerTensor::FfnNorm
                        | LayerTensor::PostFfnNorm
                        | LayerTensor::QNorm
                        | LayerTensor::KNorm
                )
        )
    }
}

/// A tensor found in a model file: its name there, its (rows, cols) and where to read it.
pub struct Located<'a> {
    pub name: String,
    pub shape: (usize, usize),
    pub dtype: quant::GgmlType,
    /// The tensor's bytes, inside a read-only mapping of its file.
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
    /// The bytes of every tensor in the files, as stored (0 for weights drawn at random).
    fn stored_bytes(&self) -> u64 {
        0
    }
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

/// Reads the rectangle `rows × cols` of a tensor widened to f32, as [`read_part`] reads it.
pub fn load_part(
    source: &dyn WeightSource,
    id: TensorId,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Result<Matrix, WeightError> {
    Ok(read_part(source, id, rows, cols)?.widen())
}

/// Reads the rectangle `rows × cols` of a tensor in its file's encoding, where it lies in
/// the file's mapping, after checking the tensor's shape against the config, and refuses
/// weights with NaN or infinity: a tensor-parallel shard reads only its rows, or in each
/// row only the quantisation blocks that hold its columns. The file's pages it spans leave
/// the process's memory (they stay in the page cache) when the matrix goes, so that a
/// model copied out in its stored form ([`StoredMatrix::into_owned`]) or widened occupies
/// its size once.
pub fn read_part(
    source: &dyn WeightSource,
    id: TensorId,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Result<StoredMatrix<'_>, WeightError> {
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
    let read_bytes = blocks.len() * block_bytes;
    let first = rows.start * row_bytes + blocks.start * block_bytes;
    let span = match rows.len() {
        0 => &found.bytes[..0],
        n => &found.bytes[first..first + (n - 1) * row_bytes + read_bytes],
    };
    source.bytes_read().fetch_add((rows.len() * read_bytes) as u64, Ordering::Relaxed);
    let mut stored = StoredMatrix::new(cols.len());
    let skip = cols.start - blocks.start * block_elems;
    // SAFETY: a located tensor's bytes lie in a read-only mapping of its file (`Located`).
    unsafe { stored.push_mapped(found.dtype, rows.len(), row_bytes, read_bytes, skip, span) };
    let count = stored.non_finite();
    if count > 0 {
        return Err(WeightError::NonFinite { path: source.path().to_path_buf(), name: found.name, count });
    }
    Ok(stored)
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
