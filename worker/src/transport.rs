//! Messages over MPI. Control messages are bincode bytes on one tag (see
//! `evalmesh_common::protocol`); activations are raw f32 buffers on their own tags, each
//! after a small header naming its micro-batch and shape, sent from and received into
//! [`Wire`]s (device memory where the MPI is CUDA-aware: [`mpi_is_cuda_aware`]). A rank that waits polls with
//! back-off instead of blocking in MPI, whose blocking receive spins a core that the
//! compute threads need.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use evalmesh_common::protocol::{
    decode, encode, ProtocolError, ACTIVATION_DATA_TAG, ACTIVATION_HEADER_TAG, CONTROL_TAG, PARTIAL_SUM_TAG,
};
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::raw::AsRawMut;
use mpi::topology::{Communicator, Rank};
use mpi::traits::CommunicatorCollectives;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Backend;
use crate::stage::{fold, GroupSum, StageError};
use crate::tensor::Matrix;
use crate::wire::{Landing, Wire};

/// The longest pause between two polls: the most a message waits unnoticed.
pub const MAX_POLL_PAUSE: Duration = Duration::from_millis(2);

/// How long a tensor-parallel sum's wait yields before it sleeps where every worker has
/// cores of its own: longer than a shard's share of a layer takes, since a sleep there
/// delays the whole stage by up to [`MAX_POLL_PAUSE`] twice a layer (measured on 2 cores,
/// TP=2: yielding for 2 ms, then sleeping, made the stage a third slower than yielding
/// throughout).
const SUM_YIELD_FOR: Duration = Duration::from_millis(200);

/// How long a wait yields the core between polls before it starts sleeping, when the
/// node has cores to spare ([`set_polling`]).
const YIELD_FOR: Duration = Duration::from_micros(200);

/// Whether waits begin by yielding instead of sleeping: set where the node has a core to
/// spare for polling; where every core computes, the yields would take time from the
/// compute threads (measured: a fifth of data-parallel throughput on 2 cores).
static POLL_YIELDS: AtomicBool = AtomicBool::new(false);

/// Whether a sum's wait yields for [`SUM_YIELD_FOR`] (every worker has cores of its own)
/// or for [`MAX_POLL_PAUSE`] only: where workers share cores, the long yields take turns
/// from the very peers they wait for (measured: PP=2 × TP=2 on 2 cores, a fifth slower).
static SUMS_YIELD: AtomicBool = AtomicBool::new(false);

/// How a process's waits poll, from its node's share of the cores.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// A core is left over: waits begin with [`YIELD_FOR`] of yielding.
    pub spare_core: bool,
    /// Every worker has cores of its own: sums' waits yield for [`SUM_YIELD_FOR`].
    pub own_cores: bool,
}

/// Sets how this process's waits poll.
pub fn set_polling(polling: Polling) {
    POLL_YIELDS.store(polling.spare_core, Ordering::Relaxed);
    SUMS_YIELD.store(polling.own_cores, Ordering::Relaxed);
}

/// A poll pause: where the node has cores to spare, for the first [`YIELD_FOR`] of a wait
/// it only yields the core, so that a message about to arrive is seen at once; then (or
/// from the start) it sleeps, doubling from 20 µs to [`MAX_POLL_PAUSE`] while nothing arrives.
pub struct Backoff {
    started: Option<Instant>,
    sleep: Duration,
    /// How long a wait yields before it sleeps.
    yield_for: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        let yield_for = if POLL_YIELDS.load(Ordering::Relaxed) { YIELD_FOR } else { Duration::ZERO };
        Backoff { started: None, sleep: Duration::from_micros(20), yield_for }
    }
}

impl Backoff {
    /// A wait of a compute thread in the middle of its work (a tensor-parallel sum, which
    /// the shard's peers send within milliseconds): its core would idle anyway, so it
    /// yields before it sleeps whatever the node: for [`SUM_YIELD_FOR`] where every worker
    /// has cores of its own, else for [`MAX_POLL_PAUSE`].
    pub fn computing() -> Self {
        let yield_for = if SUMS_YIELD.load(Ordering::Relaxed) { SUM_YIELD_FOR } else { MAX_POLL_PAUSE };
        Backoff { yield_for, ..Backoff::default() }
    }

    pub fn wait(&mut self) {
        if self.started.get_or_insert_with(Instant::now).elapsed() < self.yield_for {
            std::thread::yield_now();
            return;
        }
        std::thread::sleep(self.sleep);
        self.sleep = (self.sleep * 2).min(MAX_POLL_PAUSE);
    }

    pub fn reset(&mut self) {
        self.started = None;
        self.sleep = Duration::from_micros(20);
    }
}

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

/// Sends a micro-batch's activations: the header, then the values, straight from the
/// wire's memory (device memory only where the worker found the MPI CUDA-aware).
pub fn send_activations<C: Communicator>(comm: &C, to: Rank, id: u64, rows: usize, cols: usize, wire: &Wire) {
    let header = [id, rows as u64, cols as u64];
    comm.process_at_rank(to).send_with_tag(&header[..], ACTIVATION_HEADER_TAG);
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

/// Whether this process's MPI reads and writes device memory, as
/// `MPIX_Query_cuda_support()` says where the library has it (Open MPI, MPICH 4 and
/// later); `false` where it does not. Looked up at run time, so that any MPI links.
pub fn mpi_is_cuda_aware() -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT only searches the loaded objects' symbols.
    let query = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_Query_cuda_support".as_ptr()) };
    if query.is_null() {
        return false;
    }
    // SAFETY: the symbol is MPI's `int MPIX_Query_cuda_support(void)`, callable once MPI
    // is initialised (every worker runs after it).
    let query: extern "C" fn() -> i32 = unsafe { std::mem::transmute(query) };
    query() == 1
}

/// A message's element count as MPI takes it. Activations stay far below 2³¹ values (a
/// micro-batch of 2¹⁶ tokens of a 16384-wide model is 2³⁰); past that MPI cannot count them.
fn wire_count(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// Activations from `from`, if their header has arrived: (micro-batch id, rows, columns,
/// values in a wire of `landing`).
pub fn try_receive_activations<C: Communicator>(
    comm: &C,
    from: Rank,
    landing: &dyn Landing,
) -> Option<Result<(u64, usize, usize, Wire), String>> {
    let matched = comm.process_at_rank(from).immediate_matched_probe_with_tag(ACTIVATION_HEADER_TAG)?;
    let (header, _) = matched.matched_receive_vec::<u64>();
    // The values follow their header at once.
    let (mut message, status) = comm.process_at_rank(from).matched_probe_with_tag(ACTIVATION_DATA_TAG);
    let count = status.count(f32::equivalent_datatype()) as usize;
    let shape = match header[..] {
        [id, rows, cols] if rows.checked_mul(cols) == Some(count as u64) => Ok((id, rows as usize, cols as usize)),
        _ => Err(format!("activation header {header:?} does not match {count} values from rank {from}")),
    };
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
    Some(shape.map(|(id, rows, cols)| (id, rows, cols, wire)))
}

/// The row-parallel sums of a tensor-parallel stage, passed along its shards in group
/// order: each shard adds its groups' partials to the running sum from the shard before
/// it and passes it on; the last shard has the total and sends it back to the others.
/// The compute thread makes these calls itself, on their own tag, since every shard
/// waits for them in the middle of a micro-batch.
pub struct ShardSum<C: Communicator> {
    pub comm: C,
    /// The ranks of the stage's shards, in group order.
    pub shards: Vec<Rank>,
    /// This rank's place among them.
    pub index: usize,
    /// The columns of every sum (the model's hidden size).
    pub width: usize,
}

impl<C: Communicator> ShardSum<C> {
    fn send(&self, to: usize, m: &Matrix) {
        self.comm.process_at_rank(self.shards[to]).send_with_tag(&m.data[..], PARTIAL_SUM_TAG);
    }

    fn receive(&self, from: usize, rows: usize) -> Result<Matrix, StageError> {
        let cols = self.width;
        let rank = self.comm.process_at_rank(self.shards[from]);
        let mut backoff = Backoff::computing();
        let matched = loop {
            match rank.immediate_matched_probe_with_tag(PARTIAL_SUM_TAG) {
                Some(m) => break m,
                None => backoff.wait(),
            }
        };
        let (data, _) = matched.matched_receive_vec::<f32>();
        if data.len() != rows * cols {
            return Err(StageError::Spec(format!(
                "a partial sum of {} values came from rank {} for {rows} × {cols}",
                data.len(),
                self.shards[from]
            )));
        }
        Ok(Matrix::from_vec(rows, cols, data))
    }
}

impl<C: Communicator, B: Backend> GroupSum<B> for ShardSum<C> {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError> {
        let rows = partials.first().map_or(0, |p| backend.rows(p));
        let running = match self.index {
            0 => None,
            i => Some(backend.upload(self.receive(i - 1, rows)?)?),
        };
        let total = fold(backend, running, partials)?;
        let last = self.shards.len() - 1;
        if self.index < last {
            self.send(self.index + 1, &backend.download(&total)?);
            return Ok(backend.upload(self.receive(last, rows)?)?);
        }
        let bits = backend.download(&total)?;
        for shard in 0..last {
            self.send(shard, &bits);
        }
        Ok(total)
    }
}

/// This rank's node: its cores, the workers that share them (rank 0 coordinates and
/// mostly sleeps, so it does not count) and this rank's place among them (which picks its
/// GPU). Collective: every rank calls it.
#[derive(Debug, Clone, Copy)]
pub struct NodeShare {
    pub cores: usize,
    pub workers: usize,
    /// This rank's place among the node's workers, in rank order.
    pub index: usize,
}

impl NodeShare {
    pub fn of<C: Communicator>(world: &C) -> Self {
        let node = world.split_shared(world.rank());
        let mut ranks = vec![0 as Rank; node.size() as usize];
        node.all_gather_into(&world.rank(), &mut ranks[..]);
        ranks.retain(|&r| r != 0);
        ranks.sort_unstable();
        let index = ranks.iter().position(|&r| r == world.rank()).unwrap_or(0);
        NodeShare {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            workers: ranks.len().max(1),
            index,
        }
    }

    /// Compute threads per worker when the setup leaves it open: the cores shared out.
    pub fn threads(&self) -> usize {
        (self.cores / self.workers).max(1)
    }

    /// How waits poll once every worker runs `threads` compute threads: whether a core is
    /// left over, and whether every thread has a core of its own.
    pub fn polling(&self, threads: usize) -> Polling {
        let busy = self.workers * threads;
        Polling { spare_core: self.cores > busy, own_cores: self.cores >= busy }
    }
}
