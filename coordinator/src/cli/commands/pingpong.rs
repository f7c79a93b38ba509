//! `mpirun -np 2 evalmesh pingpong`: activation transfers against a raw MPI ping-pong of
//! the same sizes; every rank takes part, rank 0 prints the table.

use mpi::topology::{Communicator, SimpleCommunicator};

use crate::cli::args::PingPongArgs;
use crate::cli::settings::UsageError;
use crate::cli::tables::pingpong_table;

pub fn pingpong(args: &PingPongArgs, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    let world = world.ok_or(UsageError::NeedsMpi("pingpong"))?;
    let measured = crate::pingpong::measure(world, &args.rows, args.width, args.round_trips, args.trials)?;
    if world.rank() == 0 {
        print!("{}", pingpong_table(&measured));
    }
    Ok(())
}
