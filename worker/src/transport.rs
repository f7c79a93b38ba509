//! Messages over MPI. Control messages are bincode bytes on one tag (see
//! `evalmesh_common::protocol`); a rank that waits for one polls with back-off instead
//! of blocking in MPI, whose blocking receive spins a core that the compute threads need.

use std::time::Duration;

use evalmesh_common::protocol::{decode, encode, ProtocolError, CONTROL_TAG};
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, Rank};
use mpi::traits::CommunicatorCollectives;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The longest pause between two polls: the most a message waits unnoticed.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(2);

pub fn send<C: Communicator, T: Serialize>(comm: &C, to: Rank, message: &T) {
    comm.process_at_rank(to).send_with_tag(&encode(message)[..], CONTROL_TAG);
}

/// Waits for the next control message from `from`, or from any rank; returns the sender.
pub fn receive<C: Communicator, T: DeserializeOwned>(comm: &C, from: Option<Rank>) -> (Rank, Result<T, ProtocolError>) {
    let mut pause = Duration::from_micros(20);
    loop {
        let probe = match from {
            Some(rank) => comm.process_at_rank(rank).immediate_matched_probe_with_tag(CONTROL_TAG),
            None => comm.any_process().immediate_matched_probe_with_tag(CONTROL_TAG),
        };
        if let Some(matched) = probe {
            let (bytes, status) = matched.matched_receive_vec::<u8>();
            return (status.source_rank(), decode(&bytes));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
}

/// Compute threads for each worker on this node: the node's cores shared among its
/// workers (rank 0 coordinates and mostly sleeps, so it does not count). Collective: every
/// rank calls it.
pub fn default_worker_threads<C: Communicator>(world: &C) -> usize {
    let node = world.split_shared(world.rank());
    let mut ranks = vec![0 as Rank; node.size() as usize];
    node.all_gather_into(&world.rank(), &mut ranks[..]);
    let workers = ranks.iter().filter(|&&r| r != 0).count().max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers).max(1)
}
