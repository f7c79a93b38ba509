//! Control messages between the coordinator (rank 0) and the workers: plain serde enums,
//! bincode-encoded, one tag. The first message to a worker is its setup, which carries
//! the protocol version; decoding never trusts a length beyond a cap proportional to the
//! message's size (and never beyond [`MAX_MESSAGE_BYTES`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeBatch, NextToken};
use crate::plan::StageSpec;
use crate::request::{MicroBatch, TokenScore};

pub const PROTOCOL_VERSION: u32 = 9;
/// The MPI tag of control messages.
pub const CONTROL_TAG: i32 = 1;
/// The tag of an activation header: `[micro-batch id, rows, columns]` as u64.
pub const ACTIVATION_HEADER_TAG: i32 = 2;
/// The tag of an activation's data: raw f32 values, row-major, right after its header.
pub const ACTIVATION_DATA_TAG: i32 = 3;
/// The tag of a tensor-parallel partial sum: raw f32 values between the shards of a stage,
/// whose order alone (MPI keeps it per sender and tag) says which sum they belong to.
pub const PARTIAL_SUM_TAG: i32 = 4;
/// The most bytes a control message may claim when decoded.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("undecodable control message ({0})")]
    Decode(String),
    #[error("protocol version {theirs} is not this build's {ours}: run the same evalmesh binary on every rank")]
    Version { theirs: u32, ours: u32 },
}

/// What a worker computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// The CPU, its weights kept as `weights` says.
    Cpu { weights: WeightsInMemory },
    /// The GPU of the worker's place among the workers of its node (modulo the GPUs it sees),
    /// multiplying in `precision` and passing activations to other ranks as `cuda_aware` says.
    Cuda { cuda_aware: CudaAware, precision: GpuPrecision },
}

/// The type of a GPU's weights and matrix-product operands; products accumulate in f32
/// either way, and activations are f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuPrecision {
    Bf16,
    /// Weights and operands as the CPU backend keeps them: the higher-precision path.
    F32,
}

/// How a CPU worker keeps its weights in memory (`--weights-in-memory`). Scores are the
/// same bits either way: widening is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsInMemory {
    /// `Stored` where the stage's weights widened to f32 would not fit in the machine's
    /// memory with a tenth spare, else `F32`.
    Auto,
    /// Widened to f32 at load: the fastest products, four bytes a value.
    F32,
    /// In the file's encoding (bf16, f16, GGUF quantisation blocks), widened strip by strip
    /// inside each product: the memory of the file.
    Stored,
}

/// Whether activations go to MPI from device memory (which only a CUDA-aware MPI can read)
/// or are staged through pinned host buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CudaAware {
    /// Device memory where the MPI says it is CUDA-aware (`MPIX_Query_cuda_support`).
    Auto,
    /// Device memory: the MPI is CUDA-aware whatever it says.
    On,
    /// Pinned host buffers.
    Off,
}

impl Device {
    /// The name of its backend, as `--device` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu { .. } => "cpu",
            Device::Cuda { .. } => "cuda",
        }
    }

    /// The arithmetic that computes scores here, as journals record it: the flags that
    /// choose it (scores of two arithmetics differ in their last bits).
    pub fn arithmetic(self) -> &'static str {
        match self {
            Device::Cpu { .. } => "cpu",
            Device::Cuda { precision: GpuPrecision::Bf16, .. } => "cuda",
            Device::Cuda { precision: GpuPrecision::F32, .. } => "cuda --gpu-precision f32",
        }
    }
}

/// The model a worker loads: a model file or directory, or (`random_weights`) a
/// `config.json` whose weights are drawn at random.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: String,
    pub random_weights: bool,
}

/// A worker's setup: load `stage` of the model at `model` on `device` with `threads` compute
/// threads (0: the worker decides); hidden states come from rank `previous` and go to rank
/// `next` (pipeline neighbours), and `shards` are the ranks of the stage's tensor-parallel
/// shards in group order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub version: u32,
    pub model: ModelRef,
    pub stage: StageSpec,
    pub device: Device,
    pub threads: usize,
    pub previous: Option<i32>,
    pub next: Option<i32>,
    pub shards: Vec<i32>,
}

/// From the coordinator to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message to a worker. bincode encodes this newtype variant as it did the
    /// struct variant before it: the variant's index, then the fields in order.
    Setup(Setup),
    /// Compute a micro-batch and return its scores.
    Batch { id: u64, batch: MicroBatch },
    /// Report the monitoring figures gathered so far, with the timeline when `trace` is set.
    Report { trace: bool },
    /// Finish: no more work.
    Shutdown,
    /// Run a generation step (docs/ARCHITECTURE.md §12) on the stage's KV cache.
    Decode { id: u64, batch: DecodeBatch },
    /// Set the KV cache's budget in bytes, freeing what it holds.
    KvBudget { bytes: u64 },
}

/// A distribution of durations, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a worker measured: per micro-batch, the time computing, waiting for work while
/// idle, sending its output and waiting for the previous stage's activations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub batches: u64,
    pub tokens: u64,
    pub compute: Quantiles,
    pub idle: Quantiles,
    pub send: Quantiles,
    pub receive_wait: Quantiles,
    pub peak_memory_bytes: u64,
    /// The most device memory the backend held (weights and buffers); 0 on the CPU.
    pub peak_device_memory_bytes: u64,
    /// The memory of the stage's matrix weights, in the form the backend keeps them.
    pub weight_memory_bytes: u64,
    /// Floating-point operations and seconds in matrix products.
    pub matmul_flops: u64,
    pub matmul_seconds: f64,
    /// The timeline, when asked for: one event per compute, wait and send.
    pub trace: Vec<TraceEvent>,
}

/// One span of a rank's timeline (Chrome trace "complete" events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// compute, idle, receive-wait or send.
    pub name: String,
    /// Microseconds since the Unix epoch, and duration in microseconds.
    pub start_us: u64,
    pub duration_us: u64,
    /// 0: the compute thread, 1: the communication thread; 2 on: the lightweight engine's
    /// further lanes of micro-batches computed at once (lane `thread − 1`).
    pub thread: u8,
    pub batch: Option<u64>,
}

/// From a worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToCoordinator {
    Ready {
        version: u32,
        threads: usize,
        /// The micro-batches it scores at once (a worker holding the whole model on the
        /// CPU: its lanes), for the coordinator's depth and the cost model.
        lanes: usize,
        bytes_read: u64,
        load_seconds: f64,
        /// What fixes the last bits of its backend's arithmetic (`cpu`, or the GPU's model,
        /// multiprocessors, cuBLAS and kernels), for the journal.
        provenance: String,
    },
    Scores {
        id: u64,
        scores: Vec<TokenScore>,
    },
    Failed {
        message: String,
    },
    Stats {
        stats: Box<WorkerStats>,
    },
    /// The next token of each sequence of a generation step.
    Next {
        id: u64,
        next: Vec<NextToken>,
    },
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(message, config()).unwrap_or_default()
}

/// Decodes a message that must fill `bytes` exactly. A length inside the message may
/// claim memory only in proportion to the bytes it came in: a decoded message takes at
/// most about 16 times its encoding (a one-byte varint becomes up to 16 bytes with
/// padding), so claims are capped at the first power-of-two tier above 64 times the
/// input, and a few hostile bytes cannot make a rank allocate gigabytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    match bytes.len().saturating_mul(64) {
        claim if claim <= 1 << 16 => decode_within::<T, { 1 << 16 }>(bytes),
        claim if claim <= 1 << 20 => decode_within::<T, { 1 << 20 }>(bytes),
        claim if claim <= 1 << 24 => decode_within::<T, { 1 << 24 }>(bytes),
        claim if claim <= 1 << 28 => decode_within::<T, { 1 << 28 }>(bytes),
        _ => decode_within::<T, MAX_MESSAGE_BYTES>(bytes),
    }
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (message, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(message)
}

/// Checks the version a peer announced.
pub fn check_version(theirs: u32) -> Result<(), ProtocolError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Version { theirs, ours: PROTOCOL_VERSION })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ScoreTree;

    #[test]
    fn messages_round_trip() {
        let tree = ScoreTree { prefix: vec![1, 2, 3], prefix_targets_from: 1, branches: vec![vec![4]] };
        let msg = ToWorker::Batch { id: 7, batch: MicroBatch::pack(&[&tree]) };
        assert_eq!(decode::<ToWorker>(&encode(&msg)).unwrap(), msg);
        let reply = ToCoordinator::Scores { id: 7, scores: vec![TokenScore { logprob: -1.5, greedy: true }] };
        assert_eq!(decode::<ToCoordinator>(&encode(&reply)).unwrap(), reply);
        // A long run's timeline: large, and dense in memory for its encoding.
        let event = TraceEvent { name: "compute".into(), start_us: 1, duration_us: 2, thread: 0, batch: Some(3) };
        let stats = WorkerStats { trace: vec![event; 200_000], ..WorkerStats::default() };
        let report = ToCoordinator::Stats { stats: Box::new(stats) };
        assert_eq!(decode::<ToCoordinator>(&encode(&report)).unwrap(), report);
    }

    #[test]
    fn a_setup_encodes_as_the_struct_variant_did() {
        let setup = ToWorker::Setup(Setup {
            version: 4,
            model: ModelRef { path: "models/m.gguf".into(), random_weights: true },
            stage: StageSpec { layers: 2..5, embedding: false, head: true, groups: 1..3 },
            device: Device::Cuda { cuda_aware: CudaAware::Off, precision: GpuPrecision::F32 },
            threads: 300,
            previous: Some(1),
            next: None,
            shards: vec![2, 5],
        });
        // The bytes of `ToWorker::Setup { .. }` with these fields, when Setup was a struct
        // variant (protocol version 4).
        let struct_variant = [
            0, 4, 13, 109, 111, 100, 101, 108, 115, 47, 109, 46, 103, 103, 117, 102, 1, 2, 5, 0, 1, 1, 3, 1, 2, 1, 251,
            44, 1, 1, 2, 0, 2, 4, 10,
        ];
        assert_eq!(encode(&setup), struct_variant);
        assert_eq!(decode::<ToWorker>(&struct_variant).unwrap(), setup);
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // Variant 1 (Batch), id 0, then a token vector claiming u64::MAX elements.
        let mut bytes = vec![1u8, 0];
        bytes.push(255);
        bytes.extend(u64::MAX.to_le_bytes());
        assert!(decode::<ToWorker>(&bytes).is_err());
        assert!(decode::<ToWorker>(&[]).is_err());
        assert!(decode::<ToWorker>(&[9]).is_err());
    }

    #[test]
    fn versions_must_match() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        assert!(check_version(PROTOCOL_VERSION + 1).unwrap_err().to_string().contains("same evalmesh binary"));
    }
}
