//! The `evalmesh` binary: parses the command line, decides the rank's role once (under
//! `mpirun` or `srun`, rank 0 coordinates and every other rank serves as a worker), sets
//! up logging with the rank, and turns any error into one line on standard error and a
//! non-zero exit: the binary's one error path.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use evalmesh::cli::{is_stopped, Cli, Command};
use evalmesh::distributed::WorkerRelease;
use evalmesh::signals::STOPPED_EXIT_CODE;
use evalmesh_worker::comm::NodeShare;
use mpi::topology::Communicator;

/// mimalloc keeps freed activation buffers for reuse; glibc's malloc returns large
/// blocks to the system and page-faults them back on every layer (measured: 20% slower).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, v3): how long freed memory stays
/// with the process before it goes back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory never goes back to the system: a long window's activations (tens of MB a
/// tensor) are freed and allocated again on every layer, and each return made every page
/// fault and be zeroed anew (measured: rolling perplexity at 8,192 tokens 13% faster). The
/// process keeps its peak, which it needed anyway.
fn keep_freed_memory() {
    // SAFETY: called first in `main`, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Transparent huge pages off for this process. On the KVM guests measured, a fresh
/// 2 MiB page faulted in at 0.3–1.2 GB/s against 2.3 GB/s for 4 KiB pages, so widening the
/// test model's 0.5 GB of weights took 1.4–2.0 s where it takes 0.5 s; evaluation ran at the
/// same speed either way (the weights are read in strips that the products pack).
/// mimalloc is built with its `no_thp` feature, so that it does not ask for huge pages
/// (`MADV_HUGEPAGE`) itself: where the system gives them only on request, the few that
/// its first allocations faulted in before `main` cost up to 70 ms at every start.
fn small_pages() {
    // SAFETY: `prctl` takes integers here. Where the kernel refuses, pages stay as they were.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Whether a process manager started this process as one rank of several (OpenMPI's
/// mpirun, or any PMIx launcher such as `srun --mpi=pmix`).
fn launched_as_mpi_job() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"].iter().any(|v| std::env::var_os(v).is_some())
}

/// Logs to standard error at `level` (`run --verbosity`, else info), unless RUST_LOG says otherwise.
fn init_logging(rank: i32, level: log::LevelFilter) {
    let level = level.as_str().to_lowercase();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(move |buf, record| writeln!(buf, "[evalmesh rank {rank} {}] {}", record.level(), record.args()))
        .init();
}

/// A command's outcome as the exit code: a run stopped in order by a signal exits with
/// [`STOPPED_EXIT_CODE`] (resumable), any other error with 1 after one line naming it.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match is_stopped(&e) {
                true => ExitCode::from(STOPPED_EXIT_CODE),
                false => ExitCode::FAILURE,
            }
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    small_pages();
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Run(args) => args.verbosity.unwrap_or(log::LevelFilter::Info),
        _ => log::LevelFilter::Info,
    };
    if !(matches!(cli.command, Command::Run(_) | Command::Pingpong(_) | Command::Calibrate(_)) && launched_as_mpi_job())
    {
        init_logging(0, level);
        return report(evalmesh::cli::execute(cli, None));
    }
    // Workers make their MPI calls from a communication thread.
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
        eprintln!("error: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let rank = world.rank();
    init_logging(rank, level);
    // Every rank takes part in the ping-pong.
    if let Command::Pingpong(_) = &cli.command {
        return report(evalmesh::cli::execute(cli, Some(&world)));
    }
    // Collective: every rank of a run learns its node, rank 0 included.
    let node = matches!(cli.command, Command::Run(_)).then(|| NodeShare::of(&world));
    if rank == 0 {
        // Success or failure, every worker is released (when `_release` drops), so that no
        // rank is left waiting; the outcome is printed first: once told to stop, a failed
        // worker exits non-zero and mpirun may end this rank before it could say why.
        let _release = WorkerRelease::new(&world);
        return report(evalmesh::cli::execute(cli, Some(&world)));
    }
    let Some(node) = node else {
        // The other ranks of a calibration wait inside it until rank 0 releases them.
        return report(evalmesh::cli::execute(cli, Some(&world)));
    };
    if let Err(e) = evalmesh::signals::leave_stopping_to_the_coordinator() {
        return report(Err(anyhow::Error::from(e).context("signal handlers")));
    }
    report(evalmesh_worker::node::serve(rank, node).map_err(anyhow::Error::from))
}
