//! Control messages over MPI: serde values as bincode bytes on one tag (see
//! `evalmesh_common::protocol`), sent at once, or by a worker without waiting for them to
//! be received ([`Outbox`]), and received by polling with back-off.

use std::ffi::c_void;

use evalmesh_common::protocol::{decode, encode, ProtocolError, CONTROL_TAG};
use mpi::ffi;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, Rank};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::polling::Backoff;

/// Sends a control message to `to`.
pub fn send<C: Communicator, T: Serialize>(comm: &C, to: Rank, message: &T) {
    comm.process_at_rank(to).send_with_tag(&encode(message)[..], CONTROL_TAG);
}

/// A worker's control messages on their way, each sent without waiting for it to be
/// received, its bytes kept until it has been. Rank 0 waits in its sends (a micro-batch
/// larger than what MPI sends eagerly waits for the worker to receive it), so a worker
/// whose one MPI thread waited in a send to rank 0 meanwhile would wait forever: as when
/// it hands over two micro-batches' scores at once, the first of which has rank 0 send it
/// the next micro-batch.
#[derive(Default)]
pub struct Outbox {
    pending: Vec<(ffi::MPI_Request, Vec<u8>)>,
}

impl Outbox {
    /// Starts sending `message` to `to`; messages to one rank arrive in the order sent.
    pub fn send<C: Communicator, T: Serialize>(&mut self, comm: &C, to: Rank, message: &T) {
        let bytes = encode(message);
        // SAFETY: `request` is written by MPI_Isend; the bytes stay where they are on the
        // heap, unread and unwritten by us, until the send completes (`pending` holds them
        // until `progress` or `flush` sees it complete; dropping the outbox flushes it).
        // Control messages stay far below 2³¹ bytes (`protocol::MAX_MESSAGE_BYTES`).
        let request = unsafe {
            let mut request = ffi::RSMPI_REQUEST_NULL;
            ffi::MPI_Isend(
                bytes.as_ptr() as *const c_void,
                i32::try_from(bytes.len()).unwrap_or(i32::MAX),
                ffi::RSMPI_UINT8_T,
                to,
                CONTROL_TAG,
                comm.as_raw(),
                &mut request,
            );
            request
        };
        self.pending.push((request, bytes));
    }

    /// Lets go of the messages that have been received; returns whether any is still on
    /// its way (MPI moves them on during these calls).
    pub fn progress(&mut self) -> bool {
        self.pending.retain_mut(|(request, _)| {
            let mut done = 0;
            // SAFETY: `request` is an active send request of ours (set to null once done).
            unsafe { ffi::MPI_Test(request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            done == 0
        });
        !self.pending.is_empty()
    }

    /// Waits until every message has been received.
    pub fn flush(&mut self) {
        for (request, _) in &mut self.pending {
            // SAFETY: as in `progress`.
            unsafe { ffi::MPI_Wait(request, ffi::RSMPI_STATUS_IGNORE) };
        }
        self.pending.clear();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.flush();
    }
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
