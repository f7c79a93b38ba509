//! What SIGTERM, SIGUSR1 and SIGINT do to each role. Slurm sends SIGUSR1 before a time
//! limit or a preemption (`--signal=USR1@120`) and SIGTERM when it ends a job, to every
//! rank at once; the coordinator decides when the run stops, so that it stops in order
//! after the micro-batches in hand with its journal complete, and workers serve until it
//! tells them to shut down. A second SIGINT or SIGTERM ends any rank at once.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The exit code of a run stopped in order by a signal: EX_TEMPFAIL, "try again": the
/// journal holds every finished tree and `--resume` finishes the run (the Slurm
/// templates requeue the job on it).
pub const STOPPED_EXIT_CODE: u8 = 75;

/// Registers the three signals: the first sets the returned flag; a second SIGINT or
/// SIGTERM after it ends the process.
fn register() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&flag))?;
    }
    for signal in [SIGTERM, SIGUSR1, SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// The coordinator's stop flag: set by the first signal, checked before each micro-batch.
pub fn coordinator_stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    register()
}

/// A worker keeps computing through the first signal: the coordinator, which receives it
/// too, collects the micro-batches in hand and then shuts the worker down.
pub fn leave_stopping_to_the_coordinator() -> std::io::Result<()> {
    register().map(drop)
}
