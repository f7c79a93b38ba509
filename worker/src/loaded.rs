//! Loading a stage, one way for the single process and the workers alike: what it computes
//! on, found before anything is read ([`Target`]); the fit of its weights on a GPU, the
//! backend, the stage and its row-parallel sums ([`load_stage`]); and the loaded stage
//! behind one object-safe face whatever its backend ([`LoadedStage`]).

use std::ops::Range;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use evalmesh_common::cost::weight_values;
use evalmesh_common::decode::{DecodeBatch, NextToken};
use evalmesh_common::protocol::{CudaAware, Device, GpuPrecision, WeightsInMemory};
use evalmesh_common::strategy::check_fits_gpu;
use evalmesh_common::{MicroBatch, ModelConfig, PlanError, StageSpec, TokenScore};
#[cfg(feature = "mpi")]
use mpi::topology::{Rank, SimpleCommunicator};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{local_rank_from_env, probe, probe_local, CudaBackend, GpuChoice};
use crate::backend::error::BackendError;
use crate::backend::{Backend, MatmulStats};
#[cfg(feature = "mpi")]
use crate::comm::cuda_aware::mpi_is_cuda_aware;
#[cfg(feature = "mpi")]
use crate::comm::shard_sum::ShardSum;
use crate::comm::wire::{Activations, Landing, Outbound};
use crate::monitor::total_memory_bytes;
use crate::stage::{GroupSum, KvCache, LocalSum, StageError, StageInput, StageOutput, TransformerStage};
use crate::weights::WeightSource;

/// What a stage computes on, found before anything is read, so that a machine without
/// the GPU asked for fails at once: the CPU, or a GPU with the type of its products and
/// the way its activations pass to MPI.
#[derive(Debug, Clone)]
pub enum Target {
    Cpu { weights: WeightsInMemory },
    Gpu { gpu: GpuChoice, precision: GpuPrecision, cuda_aware: CudaAware },
}

impl Target {
    /// The target of `device` for the `local`-th worker of a node: for CUDA, its GPU
    /// ([`probe_local`]).
    pub fn find(device: Device, local: usize) -> Result<Target, BackendError> {
        Ok(match device {
            Device::Cpu { weights } => Target::Cpu { weights },
            Device::Cuda { cuda_aware, precision } => Target::Gpu { gpu: probe_local(local)?, precision, cuda_aware },
        })
    }

    /// The target of a single process: for CUDA, GPU `gpu` where given, else the GPU of its
    /// node-local rank (0 outside a launcher), logged.
    pub fn alone(device: Device, gpu: Option<usize>) -> Result<Target, BackendError> {
        let target = match (device, gpu) {
            (Device::Cuda { cuda_aware, precision }, Some(ordinal)) => {
                Target::Gpu { gpu: probe(ordinal)?, precision, cuda_aware }
            }
            _ => Target::find(device, local_rank_from_env().unwrap_or(0))?,
        };
        if let Target::Gpu { gpu, .. } = &target {
            log::info!(
                "GPU {} of {}: {} ({} GB)",
                gpu.ordinal,
                gpu.visible,
                gpu.name,
                gpu.memory_bytes / 1_000_000_000
            );
        }
        Ok(target)
    }
}

/// Where a stage runs.
#[derive(Debug, Clone)]
pub enum Site {
    /// The whole model in this process: no other rank to send to or sum with.
    Alone,
    /// A worker rank of an MPI job: its place among its node's workers (which picked its
    /// GPU), how many they are, and the ranks of its stage's tensor-parallel shards in
    /// group order.
    #[cfg(feature = "mpi")]
    Worker { rank: Rank, node_index: usize, node_workers: usize, shards: Vec<Rank> },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The stage's weights do not fit the memory of `gpu`.
    #[error("{error}")]
    TooBig { gpu: GpuChoice, error: PlanError },
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// What a micro-batch's forward pass gives.
pub enum Forwarded {
    /// The last stage's scores.
    Scores(Vec<TokenScore>),
    /// Hidden states on their way to the next stage.
    Hidden(Outbound),
    /// Hidden states that go nowhere: a shard of a last stage without the head, whose part
    /// went into the shards' sums.
    Summed,
    /// The last stage's next token of each sequence of a generation step.
    Next(Vec<NextToken>),
}

/// A stage loaded on whatever backend its target chose, with its row-parallel sums.
pub trait LoadedStage {
    fn spec(&self) -> &StageSpec;
    fn config(&self) -> &ModelConfig;
    /// Where it computes, for logs: `cpu`, or the GPU's ordinal and name.
    fn device(&self) -> &str;
    /// Its backend's name, as `--device` spells it.
    fn backend_name(&self) -> &'static str;
    /// What fixes the last bits of its backend's arithmetic, for the journal.
    fn provenance(&self) -> String;
    /// One micro-batch: from its tokens (`hidden` absent) or the previous stage's
    /// activations; hidden states out are sent on their way where `hand_on` is set.
    fn forward(
        &mut self,
        batch: &MicroBatch,
        hidden: Option<Activations>,
        hand_on: bool,
    ) -> Result<Forwarded, StageError>;
    /// One generation step (docs/ARCHITECTURE.md §12) on the stage's KV cache, from its
    /// tokens or the previous stage's activations, as [`LoadedStage::forward`].
    fn decode(
        &mut self,
        batch: &DecodeBatch,
        hidden: Option<Activations>,
        hand_on: bool,
    ) -> Result<Forwarded, StageError>;
    /// Sets the most the stage's KV cache may hold, freeing every sequence it holds.
    fn set_kv_budget(&mut self, bytes: usize);
    /// Bytes the KV cache holds now.
    fn kv_bytes(&self) -> usize;
    /// Where the previous stage's activations land.
    fn landing(&self) -> Arc<dyn Landing>;
    fn matmul_stats(&self) -> MatmulStats;
    /// The micro-batches [`LoadedStage::score_alone`] computes at once: its backend's
    /// [`Backend::concurrent_batches`] where the stage is the whole model with no shards to
    /// sum with (which `score_alone` asks), else 1.
    fn scoring_lanes(&self) -> usize;
    /// Scores micro-batches of tokens on this stage, the whole model in one process (no
    /// stage before or after it, no shards to sum with): `next` hands them out with their
    /// ids, and they are computed [`LoadedStage::scoring_lanes`] at once, each on a thread
    /// of its own whose ops' tasks the other threads take up as they idle
    /// (docs/ARCHITECTURE.md §1). Each finished one goes to `done` on the calling thread:
    /// between the batches that thread computes, and at the end. A lane stops at the first
    /// `None` it is given; this returns when every lane has stopped and every batch is done.
    fn score_alone(&mut self, next: &mut BatchFeed<'_>, done: &mut dyn FnMut(Scored));
    fn peak_device_bytes(&self) -> u64;
    /// Bytes of the stage's matrix weights in its backend's memory.
    fn weight_bytes(&self) -> u64;
}

/// Hands out the micro-batches of [`LoadedStage::score_alone`] with their ids: `None` when
/// no more are to start.
pub type BatchFeed<'a> = dyn FnMut() -> Option<(u64, MicroBatch)> + Send + 'a;

/// A micro-batch that [`LoadedStage::score_alone`] computed: its id, when it was computed,
/// the lane that computed it (0 the calling thread's, 1… the others') and its scores.
pub struct Scored {
    pub id: u64,
    pub computed: Range<Instant>,
    pub lane: u8,
    pub scores: Result<Vec<TokenScore>, StageError>,
}

impl Scored {
    /// The thread of a rank's trace that its compute span goes on: 0 for the first lane,
    /// 2 on for the others (1 is a worker's communication thread).
    pub fn trace_thread(&self) -> u8 {
        match self.lane {
            0 => 0,
            lane => lane + 1,
        }
    }
}

/// `Auto` resolved for a CPU stage: `Stored` where its weights widened to f32, and a tenth
/// spare, would not fit in its share of the machine's memory (its node's workers share it
/// evenly), else `F32`, whose products are the faster; logged.
fn resolve_weights(weights: WeightsInMemory, c: &ModelConfig, spec: &StageSpec, site: &Site) -> WeightsInMemory {
    if weights != WeightsInMemory::Auto {
        return weights;
    }
    let share = match site {
        Site::Alone => 1,
        #[cfg(feature = "mpi")]
        Site::Worker { node_workers, .. } => (*node_workers).max(1),
    };
    let f32_bytes = weight_values(c, spec) * 4;
    let available = total_memory_bytes().map_or(u64::MAX, |total| total / share as u64);
    let chosen = match f32_bytes + f32_bytes / 10 > available {
        true => WeightsInMemory::Stored,
        false => WeightsInMemory::F32,
    };
    log::info!(
        "weights in memory: {chosen:?} (widened to f32 they take {:.1} GB of this worker's {:.1} GB; --weights-in-memory chooses)",
        f32_bytes as f64 / 1e9,
        available as f64 / 1e9
    );
    chosen
}

/// Loads `spec` of `source` on `target` at `site`: checks that a GPU's memory holds it,
/// makes the backend (passing activations to MPI as the target says, for a worker), loads
/// the stage's tensors and completes its sums across the shards of its stage, if any.
pub fn load_stage(
    source: &dyn WeightSource,
    spec: StageSpec,
    target: &Target,
    site: &Site,
) -> Result<Box<dyn LoadedStage>, LoadError> {
    Ok(match target {
        Target::Cpu { weights } => {
            let weights = resolve_weights(*weights, source.config(), &spec, site);
            Box::new(Loaded::load(source, spec, CpuBackend::new(weights), "cpu".into(), site)?)
        }
        Target::Gpu { gpu, precision, cuda_aware } => {
            check_fits_gpu(source.config(), &spec, gpu.memory_bytes, *precision)
                .map_err(|error| LoadError::TooBig { gpu: gpu.clone(), error })?;
            let device_memory = match (site, *cuda_aware) {
                (Site::Alone, _) => false,
                #[cfg(feature = "mpi")]
                (Site::Worker { rank, node_index, .. }, cuda_aware) => {
                    let device_memory = passes_device_memory(cuda_aware, *rank);
                    log::info!(
                        "rank {rank}: worker {node_index} of its node takes GPU {} of {} ({}); activations pass to MPI {} (--cuda-aware {cuda_aware:?})",
                        gpu.ordinal,
                        gpu.visible,
                        gpu.name,
                        if device_memory { "in device memory" } else { "through pinned host buffers" },
                    );
                    device_memory
                }
            };
            let backend = CudaBackend::new(gpu.ordinal, *precision)?;
            backend.pass_device_memory_to_mpi(device_memory);
            Box::new(Loaded::load(source, spec, backend, format!("GPU {} ({})", gpu.ordinal, gpu.name), site)?)
        }
    })
}

/// Whether a worker's activations go to MPI in device memory, as `--cuda-aware` says.
#[cfg(feature = "mpi")]
fn passes_device_memory(cuda_aware: CudaAware, rank: Rank) -> bool {
    match cuda_aware {
        CudaAware::On => {
            if !mpi_is_cuda_aware() {
                log::warn!(
                    "rank {rank}: --cuda-aware on, but this MPI does not say it is CUDA-aware \
                     (MPIX_Query_cuda_support); if it is not, sending device memory will fail in MPI"
                );
            }
            true
        }
        CudaAware::Off => false,
        CudaAware::Auto => mpi_is_cuda_aware(),
    }
}

struct Loaded<B: Backend> {
    stage: TransformerStage<B>,
    sums: Box<dyn GroupSum<B>>,
    device: String,
    cache: KvCache,
}

/// The KV-cache budget of a stage until one is set: none, so that a generation step
/// before [`LoadedStage::set_kv_budget`] fails with a clear error.
const NO_KV_BUDGET: usize = 0;

impl<B: Backend + 'static> Loaded<B> {
    fn load(
        source: &dyn WeightSource,
        spec: StageSpec,
        backend: B,
        device: String,
        site: &Site,
    ) -> Result<Self, StageError> {
        let stage = TransformerStage::load(source, spec, backend)?;
        let sums: Box<dyn GroupSum<B>> = match site {
            Site::Alone => Box::new(LocalSum),
            #[cfg(feature = "mpi")]
            Site::Worker { rank, shards, .. } => match shards.iter().position(|r| r == rank) {
                Some(index) if shards.len() > 1 => Box::new(ShardSum {
                    comm: SimpleCommunicator::world(),
                    shards: shards.clone(),
                    index,
                    width: stage.config().hidden_size,
                }),
                _ => Box::new(LocalSum),
            },
        };
        let cache = stage.kv_cache(NO_KV_BUDGET);
        Ok(Loaded { stage, sums, device, cache })
    }
}

impl<B: Backend> Loaded<B> {
    /// The stage's input: its tokens, or the previous stage's activations.
    fn input(&self, hidden: Option<Activations>) -> Result<StageInput<B::Tensor>, StageError> {
        Ok(match hidden {
            Some(h) => StageInput::Hidden(self.stage.backend().adopt(h.wire, h.header.rows, h.header.cols)?),
            None => StageInput::Tokens,
        })
    }

    /// What a pass's output becomes: scores or next tokens, or hidden states sent on
    /// their way where `hand_on` is set.
    fn hand_on(&self, output: StageOutput<B::Tensor>, hand_on: bool) -> Result<Forwarded, StageError> {
        Ok(match output {
            StageOutput::Scores(scores) => Forwarded::Scores(scores),
            StageOutput::Next(next) => Forwarded::Next(next),
            StageOutput::Hidden(h) if hand_on => Forwarded::Hidden(self.stage.backend().send_out(h)?),
            StageOutput::Hidden(_) => Forwarded::Summed,
        })
    }
}

impl<B: Backend> LoadedStage for Loaded<B> {
    fn spec(&self) -> &StageSpec {
        self.stage.spec()
    }

    fn config(&self) -> &ModelConfig {
        self.stage.config()
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn backend_name(&self) -> &'static str {
        self.stage.backend().name()
    }

    fn provenance(&self) -> String {
        self.stage.backend().provenance()
    }

    fn forward(
        &mut self,
        batch: &MicroBatch,
        hidden: Option<Activations>,
        hand_on: bool,
    ) -> Result<Forwarded, StageError> {
        let input = self.input(hidden)?;
        let output = self.stage.forward(batch, input, self.sums.as_mut())?;
        self.hand_on(output, hand_on)
    }

    fn decode(
        &mut self,
        batch: &DecodeBatch,
        hidden: Option<Activations>,
        hand_on: bool,
    ) -> Result<Forwarded, StageError> {
        let input = self.input(hidden)?;
        let output = self.stage.decode(batch, input, self.sums.as_mut(), &mut self.cache)?;
        self.hand_on(output, hand_on)
    }

    fn set_kv_budget(&mut self, bytes: usize) {
        self.cache = self.stage.kv_cache(bytes);
    }

    fn kv_bytes(&self) -> usize {
        self.cache.used_bytes()
    }

    fn landing(&self) -> Arc<dyn Landing> {
        self.stage.backend().landing()
    }

    fn matmul_stats(&self) -> MatmulStats {
        self.stage.backend().matmul_stats()
    }

    fn scoring_lanes(&self) -> usize {
        match self.sums.is_local() && *self.stage.spec() == StageSpec::whole(self.stage.config()) {
            true => self.stage.backend().concurrent_batches(),
            false => 1,
        }
    }

    fn score_alone(&mut self, next: &mut BatchFeed<'_>, done: &mut dyn FnMut(Scored)) {
        debug_assert!(self.sums.is_local() && *self.stage.spec() == StageSpec::whole(self.stage.config()));
        let lanes = self.scoring_lanes();
        let stage = &self.stage;
        let next = Mutex::new(next);
        let take = || next.lock().unwrap_or_else(PoisonError::into_inner)();
        let compute = |lane: u8, (id, batch): (u64, MicroBatch)| {
            let started = Instant::now();
            let scores = match stage.forward(&batch, StageInput::Tokens, &mut LocalSum) {
                Ok(StageOutput::Scores(scores)) => Ok(scores),
                Ok(_) => Err(StageError::Spec("the whole model returned no scores".into())),
                Err(e) => Err(e),
            };
            Scored { id, computed: started..Instant::now(), lane, scores }
        };
        let (sender, finished) = mpsc::channel();
        rayon::in_place_scope(|scope| {
            for lane in 1..lanes {
                let sender = sender.clone();
                scope.spawn(move |_| {
                    while let Some(batch) = take() {
                        if sender.send(compute(lane as u8, batch)).is_err() {
                            return;
                        }
                    }
                });
            }
            while let Some(batch) = take() {
                let scored = compute(0, batch);
                finished.try_iter().for_each(&mut *done);
                done(scored);
            }
        });
        finished.try_iter().for_each(done);
    }

    fn peak_device_bytes(&self) -> u64 {
        self.stage.backend().peak_device_bytes()
    }

    fn weight_bytes(&self) -> u64 {
        self.stage.weight_bytes()
    }
}
