//! A micro-batch's activations between pipeline stages: a small header
//! ([`ActivationHeader`]: the micro-batch and the shape, as three u64 on their own tag),
//! then the raw f32 values on theirs, sent from and received into [`Wire`]s (device
//! memory where the MPI is CUDA-aware).

use std::ffi::c_void;

use evalmesh_common::protocol::{ACTIVATION_DATA_TAG, ACTIVATION_HEADER_TAG};
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::raw::AsRawMut;
use mpi::topology::{Communicator, Rank};

use super::wire::{ActivationHeader, Activations, Landing, Wire};

/// On the wire, a header is `[batch, rows, cols]` as u64.
impl ActivationHeader {
    fn to_words(self) -> [u64; 3] {
        [self.batch, self.rows as u64, self.cols as u64]
    }

    /// The header of `words`, if it describes exactly `count` values.
    fn from_words(words: &[u64], count: usize) -> Option<ActivationHeader> {
        match *words {
            [batch, rows, cols] if rows.checked_mul(cols) == Some(count as u64) => {
                Some(ActivationHeader { batch, rows: rows as usize, cols: cols as usize })
            }
            _ => None,
        }
    }
}

/// Sends a micro-batch's activations: the header, then the values, straight from the
/// wire's memory (device memory only where the worker found the MPI CUDA-aware).
pub fn send_activations<C: Communicator>(comm: &C, to: Rank, header: ActivationHeader, wire: &Wire) {
    comm.process_at_rank(to).send_with_tag(&header.to_words()[..], ACTIVATION_HEADER_TAG);
    // SAFETY: the wire holds `len` f32 values at its address, untouched by anything else
    // while it lives, in memory this MPI reads (host memory, or device memory for an MPI
    // the worker found or was told to be CUDA-aware).
    unsafe {
        ffi::MPI_Send(
            wire.address() as *const c_void,
            wire_count(wire.len()),
            ffi::RSMPI_FLOAT,
            to,
            ACTIVATION_DATA_TAG,
            comm.as_raw(),
        );
    }
}

/// A message's element count as MPI takes it. Activations stay far below 2³¹ values (a
/// micro-batch of 2¹⁶ tokens of a 16384-wide model is 2³⁰); past that MPI cannot count them.
fn wire_count(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// Activations from `from`, if their header has arrived, with their values in a wire of
/// `landing`.
pub fn try_receive_activations<C: Communicator>(
    comm: &C,
    from: Rank,
    landing: &dyn Landing,
) -> Option<Result<Activations, String>> {
    let matched = comm.process_at_rank(from).immediate_matched_probe_with_tag(ACTIVATION_HEADER_TAG)?;
    let (header, _) = matched.matched_receive_vec::<u64>();
    // The values follow their header at once.
    let (mut message, status) = comm.process_at_rank(from).matched_probe_with_tag(ACTIVATION_DATA_TAG);
    let count = status.count(f32::equivalent_datatype()) as usize;
    let shape = ActivationHeader::from_words(&header, count)
        .ok_or_else(|| format!("activation header {header:?} does not match {count} values from rank {from}"));
    let landed = shape.and_then(|shape| {
        let wire = landing.take(count).map_err(|e| format!("receiving activations from rank {from}: {e}"))?;
        Ok((shape, wire))
    });
    // Values that cannot land as they should are still received (on the host), so that
    // MPI holds nothing back, and the problem is reported.
    let (shape, wire) = match landed {
        Ok((shape, wire)) => (Ok(shape), wire),
        Err(problem) => (Err(problem), Wire::host(vec![0.0; count])),
    };
    // SAFETY: the wire holds `count` f32 values, untouched by anything else while it lives,
    // in memory this MPI writes (host memory, or device memory for an MPI the worker found
    // or was told to be CUDA-aware); the message is the one probed, received once.
    unsafe {
        ffi::MPI_Mrecv(
            wire.address() as *mut c_void,
            wire_count(count),
            ffi::RSMPI_FLOAT,
            message.as_raw_mut(),
            ffi::RSMPI_STATUS_IGNORE,
        );
    }
    Some(shape.map(|header| Activations { header, wire }))
}
