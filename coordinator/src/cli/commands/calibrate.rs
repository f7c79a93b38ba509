//! `evalmesh calibrate`: measures this machine (or a GPU: 0, or N of `cuda:N`) for the cost model and writes
//! a hardware profile; under MPI, ranks 0 and 1 first time their link, then rank 0
//! measures the rest while the other ranks wait for it.

use mpi::topology::{Communicator, SimpleCommunicator};

use crate::cli::args::CalibrateArgs;
use crate::model::cache_dir;
use crate::prediction::{cached_profile_path, write_profile};

pub fn calibrate(args: &CalibrateArgs, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    let device = args.check()?;
    let config = super::model_config(&args.model.path()?)?;
    let link = match world {
        Some(w) => crate::calibrate::measure_link(w, &config, args.batch_tokens)?,
        None => None,
    };
    // The other ranks wait, sleeping between polls, until rank 0 is done and releases them
    // (`WorkerRelease`): MPI's own finalisation would spin a core and skew what rank 0 measures.
    if let Some(w) = world.filter(|w| w.rank() != 0) {
        let _ = evalmesh_worker::comm::receive::<_, evalmesh_common::protocol::ToWorker>(w, Some(0));
        return Ok(());
    }
    let seconds = args.seconds.unwrap_or(0.0);
    let gpu = args.device.gpu().unwrap_or(0);
    let profile = crate::calibrate::calibrate(&config, args.batch_tokens, link, seconds, device, gpu)?;
    let output = args.output.clone().unwrap_or_else(|| cached_profile_path(&cache_dir(), device));
    write_profile(&profile, &output)?;
    println!("{}", serde_json::to_string_pretty(&profile).unwrap_or_default());
    log::info!("profile written to {}", output.display());
    Ok(())
}
