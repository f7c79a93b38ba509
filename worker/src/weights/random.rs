//! A model drawn at random from its `config.json` alone ([`RandomModel`]), for measuring
//! a model's speed without its weights: every weight uniform with the variance of a
//! fan-in initialisation (1/fan-in), every norm 1, from seeds fixed by the tensor and the
//! part of it a stage holds, drawn from one stream ([`random_unit`], also behind
//! `Matrix::random`). The backend draws the values where the weights live
//! (`DeviceMemory::random_weight`: on the GPU for a GPU run), so nothing is read or sent.
//! The scores of such a model mean nothing; its throughput is the real model's.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use evalmesh_common::{HfConfig, ModelConfig};
use rayon::prelude::*;

use super::hf::config_file;
use super::{Located, TensorId, WeightError, WeightSource};
use crate::tensor::Matrix;

pub struct RandomModel {
    config_path: PathBuf,
    config: ModelConfig,
    bytes_read: AtomicU64,
}

impl RandomModel {
    /// The model of a `config.json`, given as the file or the directory that holds it.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let config_path = if path.is_dir() { config_file(path)? } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&config_path).map_err(|e| WeightError::io(&config_path, e))?;
        let config = HfConfig::parse(&text)
            .and_then(|c| c.to_model_config())
            .map_err(|error| WeightError::Config { path: config_path.clone(), error })?;
        Ok(RandomModel { config_path, config, bytes_read: AtomicU64::new(0) })
    }
}

impl WeightSource for RandomModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn path(&self) -> &Path {
        &self.config_path
    }

    fn locate(&self, id: TensorId) -> Result<Located<'_>, WeightError> {
        Err(WeightError::Format {
            path: self.config_path.clone(),
            problem: format!("{id:?} is drawn at random (--random-weights): there is nothing to read"),
        })
    }

    fn bytes_read(&self) -> &AtomicU64 {
        &self.bytes_read
    }

    fn is_random(&self) -> bool {
        true
    }
}

/// The seed of the part `rows × cols` of tensor `id`: FNV-1a of their description
/// ([`seed_text`]).
pub fn seed_of(id: TensorId, rows: &std::ops::Range<usize>, cols: &std::ops::Range<usize>) -> u64 {
    seed_text(id, rows, cols)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The description a part's seed hashes, written out so that renaming a type cannot move
/// the weights: encoding 1, `Layer(3, Q) 0..64 0..576` (the text earlier builds took from
/// `Debug`, so a random model draws the same values as before).
pub fn seed_text(id: TensorId, rows: &std::ops::Range<usize>, cols: &std::ops::Range<usize>) -> String {
    let tensor = match id {
        TensorId::Embedding => "Embedding".to_string(),
        TensorId::Layer(layer, t) => format!("Layer({layer}, {})", t.key_name()),
        TensorId::FinalNorm => "FinalNorm".to_string(),
        TensorId::Head => "Head".to_string(),
    };
    format!("{tensor} {}..{} {}..{}", rows.start, rows.end, cols.start, cols.end)
}

/// The `index`-th value of the stream `seed`, uniform in [-1, 1): SplitMix64 of both,
/// its top 24 bits as a fraction. `kernels.cu`'s `random_bf16` computes the same.
pub fn random_unit(seed: u64, index: u64) -> f32 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

impl Matrix {
    /// A `rows × cols` matrix of `scale · random_unit(seed, i)` for its values in row-major
    /// order: a random model's weights as the CPU holds them, and the inputs of tests and
    /// calibration (uniform in [−scale, scale)).
    pub fn random(rows: usize, cols: usize, seed: u64, scale: f32) -> Matrix {
        let data = (0..rows * cols).into_par_iter().map(|i| scale * random_unit(seed, i as u64)).collect();
        Matrix::from_vec(rows, cols, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_uniform_in_minus_one_to_one() {
        let n = 100_000;
        let values: Vec<f32> = (0..n).map(|i| random_unit(7, i)).collect();
        assert!(values.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let variance = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Uniform on [-1, 1): mean 0, variance 1/3; 10⁵ draws put both within 0.01.
        assert!(mean.abs() < 0.01 && (variance - 1.0 / 3.0).abs() < 0.01, "mean {mean}, variance {variance}");
        assert_ne!(random_unit(7, 0), random_unit(8, 0));
    }

    #[test]
    fn seeds_hash_the_descriptions_of_encoding_1() {
        let q = TensorId::Layer(3, super::super::LayerTensor::Q);
        assert_eq!(seed_text(q, &(0..64), &(0..576)), "Layer(3, Q) 0..64 0..576");
        let down = TensorId::Layer(29, super::super::LayerTensor::Down);
        assert_eq!(seed_text(down, &(0..576), &(512..1536)), "Layer(29, Down) 0..576 512..1536");
        assert_eq!(seed_text(TensorId::Head, &(0..49152), &(0..576)), "Head 0..49152 0..576");
    }

    #[test]
    fn every_part_of_every_tensor_has_its_own_seed() {
        let id = TensorId::Layer(3, super::super::LayerTensor::Q);
        let seeds = [
            seed_of(id, &(0..64), &(0..576)),
            seed_of(id, &(64..128), &(0..576)),
            seed_of(TensorId::Layer(4, super::super::LayerTensor::Q), &(0..64), &(0..576)),
            seed_of(TensorId::Head, &(0..64), &(0..576)),
        ];
        for (i, a) in seeds.iter().enumerate() {
            assert!(seeds[i + 1..].iter().all(|b| a != b));
        }
    }
}
