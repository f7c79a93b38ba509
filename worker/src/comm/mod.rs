//! Everything between ranks over MPI: the memory activations travel in ([`wire`]),
//! control messages ([`control`]: bincode bytes on one tag, see
//! `evalmesh_common::protocol`), activations between pipeline stages ([`activations`]:
//! a header, then raw f32 values), the tensor-parallel sum across shards ([`shard_sum`]),
//! how a waiting rank polls ([`polling`]), whether the MPI is CUDA-aware ([`cuda_aware`])
//! and this rank's node ([`node_share`]). The transformer stage knows nothing of this:
//! it meets other ranks only through the `GroupSum` it is handed. The modules that call
//! MPI come with the `mpi` feature.

// Without the `mpi` feature, the links above to the modules it brings lead nowhere.
#![cfg_attr(not(feature = "mpi"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "mpi")]
pub mod activations;
#[cfg(feature = "mpi")]
pub mod control;
pub mod cuda_aware;
#[cfg(feature = "mpi")]
pub mod node_share;
pub mod polling;
#[cfg(feature = "mpi")]
pub mod shard_sum;
pub mod wire;

#[cfg(feature = "mpi")]
pub use activations::{send_activations, try_receive_activations};
#[cfg(feature = "mpi")]
pub use control::{receive, send, try_receive};
pub use cuda_aware::mpi_is_cuda_aware;
#[cfg(feature = "mpi")]
pub use node_share::NodeShare;
pub use polling::{set_polling, Backoff, Polling};
#[cfg(feature = "mpi")]
pub use shard_sum::ShardSum;
pub use wire::{ActivationHeader, Activations, HostLanding, Landing, Memory, Outbound, Wire};
