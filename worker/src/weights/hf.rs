//! A Hugging Face model directory as a [`WeightSource`]: `config.json` plus
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`.
//! F32, F16 and BF16 tensors are read; Q/K rows are in rotate-half order. [`hf_tensor`]
//! maps each tensor role to its name in the family's checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use evalmesh_common::{HfConfig, ModelConfig};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use super::quant::GgmlType;
use super::{LayerTensor, Located, TensorId, WeightError, WeightSource};

const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The `config.json` of a Hugging Face model folder; an error naming the folder and what a
/// model is where it has none.
pub fn config_file(dir: &Path) -> Result<PathBuf, WeightError> {
    let path = dir.join(CONFIG_FILE);
    match path.is_file() {
        true => Ok(path),
        false => Err(WeightError::Format {
            path: dir.to_path_buf(),
            problem: format!(
                "not a model: a folder needs a {CONFIG_FILE} (a Hugging Face model, its weights in safetensors); else pass a GGUF file"
            ),
        }),
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

pub struct HfModel {
    dir: PathBuf,
    config: ModelConfig,
    shards: Vec<Shard>,
    /// Tensor name → index in `shards`.
    index: HashMap<String, usize>,
    bytes_read: AtomicU64,
}

#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

fn read_text(path: &Path) -> Result<String, WeightError> {
    std::fs::read_to_string(path).map_err(|e| WeightError::io(path, e))
}

fn open_shard(path: PathBuf) -> Result<Shard, WeightError> {
    let file = File::open(&path).map_err(|e| WeightError::io(&path, e))?;
    // SAFETY: read-only private map of a file evalmesh never writes (see gguf.rs).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| WeightError::io(&path, e))?;
    let (data_start, metadata) = read_shard_header(&path, &map)?;
    Ok(Shard { path, map, data_start, metadata })
}

/// The header of a safetensors file held in `bytes`: where its data starts and its
/// tensors. The safetensors crate checks that the tensors tile the data exactly, so
/// every tensor lies inside `bytes`.
pub fn read_shard_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata), WeightError> {
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| WeightError::Format {
        path: path.to_path_buf(),
        problem: format!("not a valid safetensors file: {e}"),
    })?;
    Ok((8 + header_len, metadata))
}

impl HfModel {
    /// Whether `dir` holds weights (`model.safetensors` or a shard index), not only a config.
    pub fn has_weights(dir: &Path) -> bool {
        dir.join(SINGLE_FILE).is_file() || dir.join(INDEX_FILE).is_file()
    }

    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let config_path = config_file(dir)?;
        let config = HfConfig::parse(&read_text(&config_path)?)
            .and_then(|c| c.to_model_config())
            .map_err(|error| WeightError::Config { path: config_path.clone(), error })?;
        let index_path = dir.join(INDEX_FILE);
        let shard_names: Vec<String> = if index_path.exists() {
            let index: IndexFile = serde_json::from_str(&read_text(&index_path)?)
                .map_err(|e| WeightError::Format { path: index_path.clone(), problem: e.to_string() })?;
            let mut names: Vec<String> = index.weight_map.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else {
            vec![SINGLE_FILE.to_string()]
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for name in shard_names {
            if name.contains('/') || name.contains("..") {
                return Err(WeightError::Format {
                    path: index_path,
                    problem: format!("shard name `{name}` leaves the directory"),
                });
            }
            let shard = open_shard(dir.join(&name))?;
            for tensor in shard.metadata.tensors().into_keys() {
                index.insert(tensor, shards.len());
            }
            shards.push(shard);
        }
        Ok(HfModel { dir: dir.to_path_buf(), config, shards, index, bytes_read: AtomicU64::new(0) })
    }
}

/// Where a tensor lies in a Hugging Face checkpoint: its name, and the rows it takes of a
/// tensor that fuses several (Phi-3's `qkv_proj` and `gate_up_proj`); a tied head is the embedding.
pub fn hf_tensor(c: &ModelConfig, id: TensorId) -> (String, Option<Range<usize>>) {
    let (q, kv, f) = (c.q_dim(), c.kv_dim(), c.ffn_width());
    let fused = c.architecture == "phi3";
    let experts = if c.architecture == "mixtral" { "block_sparse_moe" } else { "mlp" };
    let expert = |e: usize, mixtral: &str, other: &str| match c.architecture.as_str() {
        "mixtral" => format!("block_sparse_moe.experts.{e}.{mixtral}"),
        _ => format!("mlp.experts.{e}.{other}"),
    };
    let (part, rows) = match id {
        TensorId::Embedding => return ("model.embed_tokens.weight".into(), None),
        TensorId::FinalNorm => return ("model.norm.weight".into(), None),
        TensorId::Head if c.tied_embeddings => return ("model.embed_tokens.weight".into(), None),
        TensorId::Head => return ("lm_head.weight".into(), None),
        TensorId::Layer(_, t) => match t {
            LayerTensor::AttnNorm => ("input_layernorm.weight".into(), None),
            // Gemma and OLMo 2 name the attention's output norm as Llama names the MLP's input norm.
            LayerTensor::PostAttnNorm => ("post_attention_layernorm.weight".into(), None),
            LayerTensor::FfnNorm if c.block.post_norms => ("pre_feedforward_layernorm.weight".into(), None),
            LayerTensor::FfnNorm => ("post_attention_layernorm.weight".into(), None),
            LayerTensor::PostFfnNorm => ("post_feedforward_layernorm.weight".into(), None),
            LayerTensor::Q if fused => ("self_attn.qkv_proj.weight".into(), Some(0..q)),
            LayerTensor::K if fused => ("self_attn.qkv_proj.weight".into(), Some(q..q + kv)),
            LayerTensor::V if fused => ("self_attn.qkv_proj.weight".into(), Some(q + kv..q + 2 * kv)),
            LayerTensor::Q => ("self_attn.q_proj.weight".into(), None),
            LayerTensor::K => ("self_attn.k_proj.weight".into(), None),
            LayerTensor::V => ("self_attn.v_proj.weight".into(), None),
            LayerTensor::QBias => ("self_attn.q_proj.bias".into(), None),
            LayerTensor::KBias => ("self_attn.k_proj.bias".into(), None),
            LayerTensor::VBias => ("self_attn.v_proj.bias".into(), None),
            LayerTensor::QNorm => ("self_attn.q_norm.weight".into(), None),
            LayerTensor::KNorm => ("self_attn.k_norm.weight".into(), None),
            LayerTensor::O => ("self_attn.o_proj.weight".into(), None),
            LayerTensor::Gate if fused => ("mlp.gate_up_proj.weight".into(), Some(0..f)),
            LayerTensor::Up if fused => ("mlp.gate_up_proj.weight".into(), Some(f..2 * f)),
            LayerTensor::Gate => ("mlp.gate_proj.weight".into(), None),
            LayerTensor::Up => ("mlp.up_proj.weight".into(), None),
            LayerTensor::Down => ("mlp.down_proj.weight".into(), None),
            LayerTensor::Router => (format!("{experts}.gate.weight"), None),
            LayerTensor::ExpertGate(e) => (format!("{}.weight", expert(e, "w1", "gate_proj")), None),
            LayerTensor::ExpertUp(e) => (format!("{}.weight", expert(e, "w3", "up_proj")), None),
            LayerTensor::ExpertDown(e) => (format!("{}.weight", expert(e, "w2", "down_proj")), None),
        },
    };
    let TensorId::Layer(l, _) = id else { unreachable!("whole-model tensors returned above") };
    (format!("model.layers.{l}.{part}"), rows)
}

impl WeightSource for HfModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn locate(&self, id: TensorId) -> Result<Located<'_>, WeightError> {
        let (name, rows) = hf_tensor(&self.config, id);
        let missing = || WeightError::MissingTensor { path: self.dir.clone(), name: name.clone() };
        let shard = &self.shards[*self.index.get(&name).ok_or_else(missing)?];
        let info = shard.metadata.info(&name).ok_or_else(missing)?;
        let bad = |problem: String| WeightError::Format { path: shard.path.clone(), problem };
        let dtype = match info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::Bf16,
            other => return Err(bad(format!("tensor `{name}` has dtype {other}; F32, F16 and BF16 are supported"))),
        };
        let shape = match info.shape[..] {
            [cols] => (1, cols),
            [rows, cols] => (rows, cols),
            _ => return Err(bad(format!("tensor `{name}` has shape {:?}, expected 1 or 2 dimensions", info.shape))),
        };
        let (start, end) = info.data_offsets;
        let mut bytes = &shard.map[shard.data_start + start..shard.data_start + end];
        let shape = match rows {
            Some(rows) if rows.end <= shape.0 => {
                let row_bytes = bytes.len() / shape.0;
                bytes = &bytes[rows.start * row_bytes..rows.end * row_bytes];
                (rows.len(), shape.1)
            }
            Some(rows) => {
                return Err(bad(format!(
                    "tensor `{name}` has {} rows; the config implies at least {}: the file and its config disagree",
                    shape.0, rows.end
                )))
            }
            None => shape,
        };
        Ok(Located { name, shape, dtype, bytes })
    }

    fn bytes_read(&self) -> &AtomicU64 {
        &self.bytes_read
    }

    fn stored_bytes(&self) -> u64 {
        self.shards.iter().map(|s| (s.map.len() - s.data_start) as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};
    use safetensors::tensor::TensorView;

    use super::*;
    use crate::weights::load;

    /// A one-layer model directory with a single `model.safetensors`: a BF16 embedding,
    /// an F16 query projection, a key projection of the wrong shape and no value projection.
    fn tiny_model(dir: &Path) {
        let config = serde_json::json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 6,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 16, "tie_word_embeddings": true
        });
        std::fs::write(dir.join(CONFIG_FILE), config.to_string()).unwrap();
        let embed: Vec<u8> = (0..32).flat_map(|i| bf16::from_f32(i as f32 / 4.0).to_le_bytes()).collect();
        let q: Vec<u8> = (0..16).flat_map(|i| f16::from_f32(-(i as f32)).to_le_bytes()).collect();
        let k: Vec<u8> = vec![0; 3 * 4 * 4];
        let views = vec![
            ("model.embed_tokens.weight", TensorView::new(Dtype::BF16, vec![8, 4], &embed).unwrap()),
            ("model.layers.0.self_attn.q_proj.weight", TensorView::new(Dtype::F16, vec![4, 4], &q).unwrap()),
            ("model.layers.0.self_attn.k_proj.weight", TensorView::new(Dtype::F32, vec![3, 4], &k).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &dir.join(SINGLE_FILE)).unwrap();
    }

    #[test]
    fn single_file_directory_widens_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path());
        let model = HfModel::open(dir.path()).unwrap();
        assert_eq!(model.config().head_dim, 2);
        let embed = load(&model, TensorId::Embedding).unwrap();
        assert_eq!((embed.rows, embed.cols), (8, 4));
        assert_eq!(embed.row(7)[3], 31.0 / 4.0);
        let head = load(&model, TensorId::Head).unwrap();
        assert_eq!(head, embed, "a tied head is the embedding");
        let q = load(&model, TensorId::Layer(0, LayerTensor::Q)).unwrap();
        assert_eq!(q.row(2), [-8.0, -9.0, -10.0, -11.0]);
    }

    #[test]
    fn wrong_shape_and_missing_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path());
        let model = HfModel::open(dir.path()).unwrap();
        let err = load(&model, TensorId::Layer(0, LayerTensor::K)).unwrap_err().to_string();
        assert!(
            err.contains("model.layers.0.self_attn.k_proj.weight") && err.contains("3 × 4") && err.contains("2 × 4"),
            "{err}"
        );
        let err = load(&model, TensorId::Layer(0, LayerTensor::V)).unwrap_err().to_string();
        assert!(err.contains("model.layers.0.self_attn.v_proj.weight") && err.contains("missing"), "{err}");
    }

    #[test]
    fn corrupt_safetensors_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(dir.path());
        let path = dir.path().join(SINGLE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = HfModel::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    }
}
