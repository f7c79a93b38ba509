//! How a rank waits for messages: it polls with back-off ([`Backoff`]) instead of
//! blocking in MPI, whose blocking receive spins a core that the compute threads need;
//! how long a wait yields before it sleeps follows the node's share of the cores
//! ([`Polling`], set once per process by [`set_polling`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
