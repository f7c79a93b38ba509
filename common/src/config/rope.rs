//! Rotary position embeddings: a layer's [`Rope`] (its base, how many dimensions of a
//! head it rotates and the scaling its checkpoint was trained with) and the host table of
//! cosines and sines it gives for a set of positions. The frequencies follow Hugging Face
//! transformers' `modeling_rope_utils` for every scaling type released checkpoints use,
//! computed in f64.

use serde::{Deserialize, Serialize};

/// How a checkpoint stretched its rotary frequencies beyond its pre-training context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope_type: linear`).
    Linear {
        factor: f64,
    },
    /// The base grows with a sequence longer than `original_max` (`rope_type: dynamic`).
    Dynamic {
        factor: f64,
        original_max: f64,
    },
    /// Llama 3.1's smooth blend of scaled and unscaled frequencies (`rope_type: llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: f64,
    },
    /// YaRN: frequencies ramped between interpolation and extrapolation, and the
    /// attention scaled by `attention_factor` (`rope_type: yarn`).
    Yarn {
        factor: f64,
        original_max: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// Phi-3's LongRoPE (`rope_type: longrope`, earlier `su`): per-frequency factors, the
    /// long ones for sequences longer than `original_max`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max: f64,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The name checkpoints give the scaling (`rope_type`).
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::LongRope { .. } => "longrope",
        }
    }
}

/// The rotary embedding of a layer: `rotary_dim` dimensions of each head (all of them
/// unless the model rotates only part) turned by the frequencies of `theta` and `scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub theta: f64,
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

fn ramp(low: f64, high: f64, i: usize) -> f64 {
    let high = if low == high { high + 0.001 } else { high };
    ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)
}

impl Rope {
    /// The longest sequence whose frequencies are those of any shorter one: beyond it,
    /// dynamic and LongRoPE scaling change them with the length.
    pub fn length_free_up_to(&self) -> Option<usize> {
        match &self.scaling {
            RopeScaling::Dynamic { original_max, .. } | RopeScaling::LongRope { original_max, .. } => {
                Some(*original_max as usize)
            }
            _ => None,
        }
    }

    /// The frequency of each rotated pair, for a sequence of `seq_len` positions (only
    /// dynamic and LongRoPE scaling depend on it).
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f64> {
        let dim = self.rotary_dim as f64;
        let exponent = |i: usize| 2.0 * i as f64 / dim;
        let pairs = self.rotary_dim / 2;
        let plain = |theta: f64| -> Vec<f64> { (0..pairs).map(|i| theta.powf(-exponent(i))).collect() };
        match &self.scaling {
            RopeScaling::None => plain(self.theta),
            RopeScaling::Linear { factor } => plain(self.theta).into_iter().map(|f| f / factor).collect(),
            RopeScaling::Dynamic { factor, original_max } => {
                let len = seq_len as f64;
                if len <= *original_max {
                    return plain(self.theta);
                }
                let base = self.theta * ((factor * len / original_max) - (factor - 1.0)).powf(dim / (dim - 2.0));
                plain(base)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                let low_wavelen = original_max / low_freq_factor;
                let high_wavelen = original_max / high_freq_factor;
                plain(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth =
                                (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, truncate, .. } => {
                let correction = |rotations: f64| {
                    dim * (original_max / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, high) = (low.max(0.0), high.min(dim - 1.0));
                plain(self.theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, extrapolated)| {
                        let keep = 1.0 - ramp(low, high, i);
                        extrapolated / factor * (1.0 - keep) + extrapolated * keep
                    })
                    .collect()
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max, .. } => {
                let factors = if seq_len as f64 > *original_max { long_factor } else { short_factor };
                plain(self.theta).into_iter().zip(factors).map(|(f, s)| f / s).collect()
            }
        }
    }

    /// The factor that scales the cosines and sines (YaRN and LongRoPE temper the attention).
    pub fn attention_factor(&self) -> f64 {
        match &self.scaling {
            RopeScaling::Yarn { attention_factor, .. } | RopeScaling::LongRope { attention_factor, .. } => {
                *attention_factor
            }
            _ => 1.0,
        }
    }

    /// Per row, the cosines then the sines of its position's angle with each pair's
    /// frequency (`positions.len() × rotary_dim`, row-major), for rows of sequences of
    /// `seq_lens[row]` positions; computed in f64, rounded once.
    pub fn table(&self, positions: &[u32], seq_lens: &[usize]) -> Vec<f32> {
        let (dim, half) = (self.rotary_dim, self.rotary_dim / 2);
        let factor = self.attention_factor();
        let mut table = vec![0.0f32; positions.len() * dim];
        let mut cached: Option<(usize, Vec<f64>)> = None;
        for ((row, &p), &len) in table.chunks_exact_mut(dim).zip(positions).zip(seq_lens) {
            let inv_freq = match &cached {
                Some((l, f)) if *l == len || !self.depends_on_length() => f,
                _ => &cached.insert((len, self.inv_freq(len))).1,
            };
            let (cos, sin) = row.split_at_mut(half);
            for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
                let angle = p as f64 * f;
                *c = (angle.cos() * factor) as f32;
                *s = (angle.sin() * factor) as f32;
            }
        }
        table
    }

    fn depends_on_length(&self) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> Rope {
        Rope { theta: 500_000.0, rotary_dim: 16, scaling }
    }

    #[test]
    fn default_frequencies_are_powers_of_the_base() {
        let f = rope(RopeScaling::None).inv_freq(10);
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 500_000f64.powf(-2.0 / 16.0)).abs() < 1e-15);
    }

    /// Llama 3.1's rule (transformers `_compute_llama3_parameters`): the highest
    /// frequencies stay, the lowest are divided by the factor, the middle ones blend.
    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = rope(RopeScaling::None).inv_freq(10);
        let scaled =
            rope(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 64.0 })
                .inv_freq(10);
        // Wavelength 2π < 16 = 64/4: unchanged; the lowest frequency's wavelength ≫ 64: divided.
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-18);
        assert!(scaled.iter().zip(&plain).all(|(s, p)| s <= p && *s >= p / 8.0 - 1e-18));
    }

    #[test]
    fn longrope_picks_factors_by_length_and_scales_the_table() {
        let r = Rope {
            theta: 10_000.0,
            rotary_dim: 4,
            scaling: RopeScaling::LongRope {
                short_factor: vec![1.0, 2.0],
                long_factor: vec![4.0, 8.0],
                original_max: 100.0,
                attention_factor: 1.5,
            },
        };
        assert_eq!(r.inv_freq(100), vec![1.0, 0.01 / 2.0]);
        assert_eq!(r.inv_freq(101), vec![0.25, 0.01 / 8.0]);
        let table = r.table(&[0], &[5]);
        assert_eq!(table, vec![1.5, 1.5, 0.0, 0.0], "cos(0)·1.5 and sin(0)");
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = rope(RopeScaling::None).inv_freq(1);
        let linear = rope(RopeScaling::Linear { factor: 4.0 }).inv_freq(1);
        assert!(plain.iter().zip(&linear).all(|(p, l)| *l == p / 4.0));
    }
}
