//! Predicted beside measured: the hardware profile a run uses (given, cached for this
//! host, or measured now and cached), the plan it runs, and the cost model applied to
//! the very micro-batches the engine computes.

use std::path::{Path, PathBuf};

use evalmesh_common::cost::{predict, predict_generation, BatchShape, Placement, Prediction};
use evalmesh_common::hardware::{HardwareProfile, ProfileError};
use evalmesh_common::protocol::Device;
use evalmesh_common::{MicroBatch, ModelConfig, ParallelLayout, PlanError, ScoreTree, StageSpec};

use crate::calibrate::{build_identity, calibrate, host_name, CalibrateError};
use crate::engine::pack_micro_batches;

#[derive(Debug, thiserror::Error)]
pub enum PredictionError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Calibrate(#[from] CalibrateError),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// Where this host's measured profile of `device` is cached.
pub fn cached_profile_path(cache: &Path, device: Device) -> PathBuf {
    match device {
        Device::Cpu { .. } => cache.join(format!("profile-{}.json", host_name())),
        Device::Cuda { .. } => cache.join(format!("profile-{}-cuda.json", host_name())),
    }
}

/// Writes a profile as JSON, whole or not at all.
pub fn write_profile(profile: &HardwareProfile, path: &Path) -> Result<(), PredictionError> {
    let io = |error| PredictionError::Io { path: path.to_path_buf(), error };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_string_pretty(profile).unwrap_or_else(|e| unreachable!("profiles serialise: {e}"));
    crate::results::write_atomically(path, (text + "\n").as_bytes()).map_err(io)
}

/// The profile for a run on `device`: `--profile FILE`, else this host's cached one if this
/// build measured it, else a quick calibration now (a few seconds, without links), cached
/// for the next runs (a GPU's on GPU `gpu`, the one a single process runs on). A GPU run
/// whose coordinator sees no GPU predicts from the H100's datasheet instead, and says so.
pub fn run_profile(
    given: Option<&Path>,
    cache: &Path,
    config: &ModelConfig,
    batch_tokens: usize,
    device: Device,
    gpu: usize,
) -> Result<HardwareProfile, PredictionError> {
    if let Some(path) = given {
        return Ok(HardwareProfile::read(path)?);
    }
    let cached = cached_profile_path(cache, device);
    match HardwareProfile::read(&cached) {
        Ok(profile) if profile.measured_by.as_deref() == Some(build_identity().as_str()) => return Ok(profile),
        Ok(_) => log::info!(
            "the {} profile cached at {} was measured by another build of evalmesh: measuring again",
            device.name(),
            cached.display()
        ),
        Err(_) => log::info!(
            "no {} profile for this host yet: measuring it (evalmesh calibrate does it thoroughly)",
            device.name()
        ),
    }
    let profile = match (calibrate(config, batch_tokens.min(2048), None, 0.0, device, gpu), device) {
        (Ok(profile), _) => profile,
        (Err(e), Device::Cuda { .. }) => {
            log::warn!(
                "predictions assume an H100's datasheet: this rank cannot measure a GPU ({e}); \
                 run evalmesh calibrate --device cuda on a GPU node and pass its --profile"
            );
            return Ok(HardwareProfile::built_in("h100")?);
        }
        (Err(e), Device::Cpu { .. }) => return Err(e.into()),
    };
    // A cache that cannot be written costs the next run a calibration, not this run.
    match write_profile(&profile, &cached) {
        Ok(()) => log::info!("hardware profile cached at {}", cached.display()),
        Err(e) => log::warn!("hardware profile not cached: {e}"),
    }
    Ok(profile)
}

/// The cost model for one run: its plan, profile and placement.
pub struct Predictor {
    pub config: ModelConfig,
    pub layout: ParallelLayout,
    pub stages: Vec<StageSpec>,
    pub profile: HardwareProfile,
    pub placement: Placement,
}

impl Predictor {
    /// The prediction for `trees` packed as the engines pack them.
    pub fn predict(&self, trees: &[ScoreTree], batch_tokens: usize) -> Result<Prediction, PlanError> {
        let shapes: Vec<BatchShape> = pack_micro_batches(trees, batch_tokens)
            .iter()
            .map(|indices| {
                let members: Vec<&ScoreTree> = indices.iter().map(|&i| &trees[i]).collect();
                BatchShape::of(&MicroBatch::pack(&members))
            })
            .collect();
        predict(&self.config, self.layout, &self.stages, &shapes, &self.profile, self.placement)
    }
}

impl Predictor {
    /// The prediction for generation steps of these shapes.
    pub fn predict_generation(&self, steps: &[BatchShape]) -> Result<Prediction, PlanError> {
        predict_generation(&self.config, self.layout, &self.stages, steps, &self.profile, self.placement)
    }
}

/// `(predicted − measured) / measured` in percent.
pub fn error_percent(predicted: f64, measured: f64) -> f64 {
    100.0 * (predicted - measured) / measured.max(1e-12)
}

/// Where the workers run: on the CPU, all on this node sharing its cores (`threads` each
/// when given); on GPUs, one worker per device.
pub fn placement(profile: &HardwareProfile, workers: usize, threads: Option<usize>) -> Placement {
    if profile.backend == "cpu" {
        let per_node = workers.min(profile.devices_per_node).max(1);
        let threads = threads.unwrap_or((profile.devices_per_node / per_node).max(1));
        Placement { threads_per_worker: threads, workers_per_node: workers, lanes: 1 }
    } else {
        Placement { threads_per_worker: 1, workers_per_node: workers.min(profile.devices_per_node), lanes: 1 }
    }
}
