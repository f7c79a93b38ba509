//! Control messages over MPI: serde values as bincode bytes on one tag (see
//! `evalmesh_common::protocol`), sent at once and received by polling with back-off.

use evalmesh_common::protocol::{decode, encode, ProtocolError, CONTROL_TAG};
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, Rank};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::polling::Backoff;

/// Sends a control message to `to`.
pub fn send<C: Communicator, T: Serialize>(comm: &C, to: Rank, message: &T) {
    comm.process_at_rank(to).send_with_tag(&encode(message)[..], CONTROL_TAG);
}

/// A control message from `from` (or any rank), if one has arrived; with its sender.
pub fn try_receive<C: Communicator, T: DeserializeOwned>(
    comm: &C,
    from: Option<Rank>,
) -> Option<(Rank, Result<T, ProtocolError>)> {
    let probe = match from {
        Some(rank) => comm.process_at_rank(rank).immediate_matched_probe_with_tag(CONTROL_TAG),
        None => comm.any_process().immediate_matched_probe_with_tag(CONTROL_TAG),
    };
    probe.map(|matched| {
        let (bytes, status) = matched.matched_receive_vec::<u8>();
        (status.source_rank(), decode(&bytes))
    })
}

/// Waits for the next control message from `from`, or from any rank; returns the sender.
pub fn receive<C: Communicator, T: DeserializeOwned>(comm: &C, from: Option<Rank>) -> (Rank, Result<T, ProtocolError>) {
    let mut backoff = Backoff::default();
    loop {
        if let Some(received) = try_receive(comm, from) {
            return received;
        }
        backoff.wait();
    }
}
