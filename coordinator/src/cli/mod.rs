//! The command line: clap's view of it ([`args`]), lm-evaluation-harness's list-valued
//! flags ([`lm_eval_flags`]), the flags checked once into settings ([`settings`]), one module per command ([`commands`]), and what they print
//! ([`tables`], [`trace`]). Commands return `anyhow` errors: typed where a caller
//! branches on them ([`is_stopped`]), with context on the rest.

pub mod args;
pub mod commands;
pub mod lm_eval_flags;
pub mod settings;
pub mod tables;
pub mod trace;

use mpi::topology::SimpleCommunicator;

pub use args::{Cli, Command};

use crate::engine::EngineError;
use crate::evaluate::EvaluateError;

/// Runs a command. `world` is the MPI world of an `mpirun`/`srun` job (every rank calls
/// this for `pingpong` and `calibrate`, rank 0 alone for `run`); `None` in a single process.
pub fn execute(cli: Cli, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => commands::run::run(*args, world),
        Command::Inspect(args) => commands::inspect::inspect(&args),
        Command::Tokenize(args) => commands::tokenize::tokenize(&args),
        Command::Score(args) => commands::score::score(&args, world),
        Command::Pingpong(args) => commands::pingpong::pingpong(&args, world),
        Command::Calibrate(args) => commands::calibrate::calibrate(&args, world),
        Command::Plan(args) => commands::plan::plan(&args),
    }
}

/// Whether a command's error is a run stopped in order by a signal, which `--resume` finishes.
pub fn is_stopped(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<EvaluateError>(), Some(EvaluateError::Engine(EngineError::Stopped)))
}
