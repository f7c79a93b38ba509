//! Hardware profiles: what the cost model needs to know about a device and the links
//! between devices. Built-in profiles carry datasheet figures for common GPUs (marked
//! as such); `evalmesh calibrate` measures the machine it runs on and saves a profile as
//! JSON, which `--profile FILE` reads back.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown device `{0}`; built-in profiles: {list}; or pass --profile FILE from evalmesh calibrate", list = BUILT_IN.join(", "))]
    UnknownDevice(String),
    #[error("{}: {error}", path.display())]
    Io { path: std::path::PathBuf, error: std::io::Error },
    #[error("{}: not a hardware profile: {error} (write one with evalmesh calibrate --output FILE)", path.display())]
    Json { path: std::path::PathBuf, error: serde_json::Error },
    #[error("{}: {problem}", path.display())]
    Invalid { path: std::path::PathBuf, problem: String },
}

/// Rates of one worker, measured (or taken) at the model's shapes: matrix products,
/// attention, and the memory-bound element-wise work and log-softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Compute threads of the worker these rates were measured with.
    pub threads_per_worker: usize,
    /// Workers running at once on the node while measuring (each busy).
    pub concurrent_workers: usize,
    pub matmul_flops_per_s: f64,
    /// The LM head's product (a chunk of scored rows by the whole vocabulary), whose long,
    /// thin shape runs at its own rate; where not measured, [`Rates::matmul_flops_per_s`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_matmul_flops_per_s: Option<f64>,
    pub attention_flops_per_s: f64,
    /// Seconds of attention a query row and head takes besides its FLOPs at
    /// [`Rates::attention_flops_per_s`]: its softmax's fixed part and its block's setup,
    /// which a short window's rows pay over few keys (calibrate fits both figures to two
    /// windows); where not measured, none, the FLOP rate carrying it at its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_row_seconds: Option<f64>,
    /// Bytes read and written per second by norms, rotations, activations and additions.
    pub elementwise_bytes_per_s: f64,
    /// Vocabulary entries per second through the log-softmax of the scored rows.
    pub softmax_entries_per_s: f64,
    /// Seconds one block's element-wise operations take on a single row: the fixed cost of
    /// a step's many small operations, which matters where a step has few rows (decoding);
    /// where not measured, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_fixed_seconds: Option<f64>,
    /// Weight values per second that generation's streamed product reads for one decode
    /// row (memory-bound: the time to read the weights); where not measured, the
    /// element-wise bytes rate over 4 bytes a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamed_values_per_s: Option<f64>,
    /// FLOPs per second that each further decode row adds to the streamed product; where
    /// not measured, [`Rates::matmul_flops_per_s`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_row_flops_per_s: Option<f64>,
}

impl Rates {
    /// The LM head's product rate: its own where measured, else the block products'.
    pub fn head_matmul_rate(&self) -> f64 {
        self.head_matmul_flops_per_s.unwrap_or(self.matmul_flops_per_s)
    }

    /// An attending row and head's cost besides its FLOPs: measured, or none.
    pub fn attention_row(&self) -> f64 {
        self.attention_row_seconds.unwrap_or(0.0)
    }

    /// A block's fixed cost per pass: measured, or none.
    pub fn block_fixed(&self) -> f64 {
        self.block_fixed_seconds.unwrap_or(0.0)
    }

    /// The streamed product's rate of weight values read: its own where measured.
    pub fn streamed_rate(&self) -> f64 {
        self.streamed_values_per_s.unwrap_or(self.elementwise_bytes_per_s / 4.0)
    }

    /// The streamed product's FLOP rate of further rows: its own where measured.
    pub fn decode_flops_rate(&self) -> f64 {
        self.decode_row_flops_per_s.unwrap_or(self.matmul_flops_per_s)
    }
}

/// A point-to-point link: a message of `b` bytes takes `latency_s + b / bytes_per_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub latency_s: f64,
    pub bytes_per_s: f64,
}

impl Link {
    pub fn seconds(&self, bytes: f64) -> f64 {
        self.latency_s + bytes / self.bytes_per_s
    }
}

/// A device kind and its links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareProfile {
    pub name: String,
    /// Where the figures come from: a datasheet, or a calibration run (host and date).
    pub source: String,
    /// `cpu` or `cuda`.
    pub backend: String,
    /// Memory of one device (a GPU's, or the node's for the CPU).
    pub memory_bytes: u64,
    /// Bytes of one weight or activation value in the backend's compute type.
    pub compute_bytes: usize,
    /// Memory a worker uses whatever it holds (runtime, libraries, workspace).
    pub overhead_bytes: u64,
    /// Devices (GPUs, or cores for the CPU) on one node.
    pub devices_per_node: usize,
    pub rates: Vec<Rates>,
    /// The device's bf16 matrix peak, where calibrate measured it (cuBLAS on large square
    /// products): what a run's matrix rate is a share of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matmul_peak_flops_per_s: Option<f64>,
    /// The evalmesh build whose kernels and cost model a calibration measured: a run
    /// measures again rather than predict from a cached profile of another build, whose
    /// rates belong to other kernels. `None` for a datasheet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_by: Option<String>,
    pub same_node: Link,
    pub across_nodes: Link,
}

/// Memory a GPU worker uses whatever it holds: the CUDA context, cuBLAS's workspace, the
/// kernels (an estimate, not a measurement).
pub const GPU_OVERHEAD_BYTES: u64 = 2_000_000_000;

/// The built-in profiles' names.
pub const BUILT_IN: &[&str] = &["h100", "h200", "a100", "l40s"];

/// Share of the datasheet's dense matrix rate that large GEMMs reach in practice, and of
/// its memory bandwidth that streaming kernels reach: assumptions, not measurements.
const GEMM_EFFICIENCY: f64 = 0.7;
const BANDWIDTH_EFFICIENCY: f64 = 0.8;

impl HardwareProfile {
    /// A datasheet profile: dense bf16 rate, memory and bandwidth, NVLink or PCIe per GPU.
    fn datasheet(name: &str, model: &str, bf16_tflops: f64, memory_gb: f64, tb_per_s: f64, link_gb_per_s: f64) -> Self {
        let bandwidth = tb_per_s * 1e12 * BANDWIDTH_EFFICIENCY;
        let matmul = bf16_tflops * 1e12 * GEMM_EFFICIENCY;
        HardwareProfile {
            name: name.into(),
            source: format!(
                "datasheet: {model} (dense bf16 {bf16_tflops} TFLOP/s, {memory_gb} GB at {tb_per_s} TB/s, \
                 link {link_gb_per_s} GB/s per direction), derated to {GEMM_EFFICIENCY} of the matrix rate and \
                 {BANDWIDTH_EFFICIENCY} of the bandwidth"
            ),
            backend: "cuda".into(),
            memory_bytes: (memory_gb * 1e9) as u64,
            compute_bytes: 2,
            overhead_bytes: GPU_OVERHEAD_BYTES,
            devices_per_node: 8,
            rates: vec![Rates {
                threads_per_worker: 1,
                concurrent_workers: 1,
                matmul_flops_per_s: matmul,
                head_matmul_flops_per_s: None,
                // Fused attention kernels reach about half the GEMM rate.
                attention_flops_per_s: matmul / 2.0,
                attention_row_seconds: None,
                elementwise_bytes_per_s: bandwidth,
                softmax_entries_per_s: bandwidth / 8.0,
                // Decoding streams bf16 weights.
                block_fixed_seconds: None,
                streamed_values_per_s: Some(bandwidth / 2.0),
                decode_row_flops_per_s: None,
            }],
            matmul_peak_flops_per_s: None,
            measured_by: None,
            same_node: Link { latency_s: 10e-6, bytes_per_s: link_gb_per_s * 1e9 },
            // 400 Gb/s InfiniBand per GPU.
            across_nodes: Link { latency_s: 20e-6, bytes_per_s: 50e9 },
        }
    }

    /// A built-in profile by name (`h100`, `h200`, `a100`, `l40s`).
    pub fn built_in(name: &str) -> Result<Self, ProfileError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "h100" => Self::datasheet("h100", "NVIDIA H100 SXM5 80GB", 989.0, 80.0, 3.35, 450.0),
            "h200" => Self::datasheet("h200", "NVIDIA H200 SXM 141GB", 989.0, 141.0, 4.8, 450.0),
            "a100" => Self::datasheet("a100", "NVIDIA A100 SXM4 80GB", 312.0, 80.0, 2.039, 300.0),
            "l40s" => {
                let mut p = Self::datasheet("l40s", "NVIDIA L40S 48GB (PCIe Gen4 x16)", 362.0, 48.0, 0.864, 32.0);
                p.same_node.latency_s = 15e-6;
                p
            }
            other => return Err(ProfileError::UnknownDevice(other.into())),
        })
    }

    /// Reads a profile that `evalmesh calibrate` wrote.
    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ProfileError::Io { path: path.into(), error })?;
        let profile: HardwareProfile =
            serde_json::from_str(&text).map_err(|error| ProfileError::Json { path: path.into(), error })?;
        profile.validate().map_err(|problem| ProfileError::Invalid { path: path.into(), problem })?;
        Ok(profile)
    }

    /// Every rate positive and finite, at least one set of rates.
    pub fn validate(&self) -> Result<(), String> {
        if self.rates.is_empty() {
            return Err("`rates` is empty".into());
        }
        for r in &self.rates {
            let figures = [
                ("matmul_flops_per_s", r.matmul_flops_per_s),
                ("attention_flops_per_s", r.attention_flops_per_s),
                ("elementwise_bytes_per_s", r.elementwise_bytes_per_s),
                ("softmax_entries_per_s", r.softmax_entries_per_s),
            ];
            if let Some((field, value)) = figures.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                return Err(format!("rates.{field} = {value}: must be a positive number"));
            }
            if r.threads_per_worker == 0 || r.concurrent_workers == 0 {
                return Err("rates: threads_per_worker and concurrent_workers must be at least 1".into());
            }
        }
        for (name, link) in [("same_node", self.same_node), ("across_nodes", self.across_nodes)] {
            if !(link.bytes_per_s > 0.0 && link.latency_s >= 0.0) {
                return Err(format!("{name}: bytes_per_s must be positive and latency_s not negative"));
            }
        }
        if self.devices_per_node == 0 || self.compute_bytes == 0 {
            return Err("devices_per_node and compute_bytes must be at least 1".into());
        }
        Ok(())
    }

    /// The rates of a worker with `threads` threads when `workers` such workers share a
    /// node: the measured set closest in threads per worker, scaled down when the node
    /// has fewer cores than threads in all (oversubscription).
    pub fn rates_for(&self, threads: usize, workers: usize) -> Rates {
        let closest = self
            .rates
            .iter()
            .min_by_key(|r| (r.threads_per_worker.abs_diff(threads), r.concurrent_workers.abs_diff(workers)))
            .unwrap_or_else(|| unreachable!("validated profiles have rates"));
        let mut rates = closest.clone();
        if self.backend == "cpu" {
            let share = (self.devices_per_node as f64 / (threads * workers) as f64).min(1.0);
            let measured_share = (self.devices_per_node as f64
                / (closest.threads_per_worker * closest.concurrent_workers) as f64)
                .min(1.0);
            let scale = share / measured_share;
            rates.matmul_flops_per_s *= scale;
            rates.head_matmul_flops_per_s = rates.head_matmul_flops_per_s.map(|r| r * scale);
            rates.attention_flops_per_s *= scale;
            rates.attention_row_seconds = rates.attention_row_seconds.map(|s| s / scale);
            rates.elementwise_bytes_per_s *= scale;
            rates.softmax_entries_per_s *= scale;
            rates.streamed_values_per_s = rates.streamed_values_per_s.map(|r| r * scale);
            rates.decode_row_flops_per_s = rates.decode_row_flops_per_s.map(|r| r * scale);
        }
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_valid_and_named() {
        for name in BUILT_IN {
            let p = HardwareProfile::built_in(name).unwrap();
            p.validate().unwrap();
            assert!(p.source.starts_with("datasheet"));
        }
        assert_eq!(HardwareProfile::built_in("H100").unwrap().memory_bytes, 80_000_000_000);
        assert!(HardwareProfile::built_in("tpu").unwrap_err().to_string().contains("h100, h200, a100, l40s"));
    }

    #[test]
    fn oversubscribed_cpu_workers_share_the_cores() {
        let rates = |threads, workers, matmul| Rates {
            threads_per_worker: threads,
            concurrent_workers: workers,
            matmul_flops_per_s: matmul,
            head_matmul_flops_per_s: None,
            attention_flops_per_s: 1.0,
            attention_row_seconds: None,
            elementwise_bytes_per_s: 1.0,
            softmax_entries_per_s: 1.0,
            block_fixed_seconds: None,
            streamed_values_per_s: None,
            decode_row_flops_per_s: None,
        };
        let mut p = HardwareProfile::built_in("h100").unwrap();
        p.backend = "cpu".into();
        p.devices_per_node = 2;
        p.rates = vec![rates(2, 1, 100.0), rates(1, 2, 60.0)];
        assert_eq!(p.rates_for(2, 1).matmul_flops_per_s, 100.0);
        assert_eq!(p.rates_for(1, 2).matmul_flops_per_s, 60.0);
        // Three one-thread workers on two cores: each gets two thirds of a core.
        assert!((p.rates_for(1, 3).matmul_flops_per_s - 40.0).abs() < 1e-9);
    }
}
