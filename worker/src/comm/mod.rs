//! Everything between ranks over MPI: the memory activations travel in ([`wire`]),
//! control messages ([`control`]: bincode bytes on one tag, see
//! `evalmesh_common::protocol`), activations between pipeline stages ([`activations`]:
//! a header, then raw f32 values), the tensor-parallel sum across shards ([`shard_sum`]),
//! how a waiting rank polls ([`polling`]), whether the MPI is CUDA-aware ([`cuda_aware`])
//! and this rank's node ([`node_share`]). The transformer stage knows nothing of this:
//! it meets other ranks only through the `GroupSum` it is handed.

pub mod activations;
pub mod control;
pub mod cuda_aware;
pub mod node_share;
pub mod polling;
pub mod shard_sum;
pub mod wire;

pub use activations::{send_activations, try_receive_activations, ActivationHeader, Activations};
pub use control::{receive, send, try_receive};
pub use cuda_aware::mpi_is_cuda_aware;
pub use node_share::NodeShare;
pub use polling::{set_polling, Backoff, Polling};
pub use shard_sum::ShardSum;
pub use wire::{HostLanding, Landing, Memory, Outbound, Wire};
