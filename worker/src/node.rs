//! A worker rank's life: receive the setup from the coordinator, load the assigned stage
//! (only its tensors), then compute micro-batches until told to stop. Two threads: the
//! compute thread runs the stage; the communication thread alone talks MPI (it receives
//! control messages and the previous stage's activations, and sends scores and
//! activations), so a micro-batch travels while the next one computes. Activations cross
//! in the backend's wires (`crate::wire`): host memory on the CPU; on a GPU, device
//! memory where the MPI is CUDA-aware and pinned host buffers otherwise. Every failure
//! goes back to the coordinator as a message, so no rank is left waiting.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use evalmesh_common::protocol::{
    check_version, CudaAware, Device, ModelRef, Setup, ToCoordinator, ToWorker, WorkerStats, PROTOCOL_VERSION,
};
use evalmesh_common::strategy::check_fits_gpu;
use evalmesh_common::{MicroBatch, StageSpec, TokenScore};
use mpi::topology::{Rank, SimpleCommunicator};

use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, MatmulStats};
use crate::monitor::{peak_memory_bytes, Durations, Spans};
use crate::stage::GroupSum;
use crate::transport::{
    mpi_is_cuda_aware, send, send_activations, set_polling, try_receive, try_receive_activations, Backoff, NodeShare,
    ShardSum,
};
use crate::wire::{HostLanding, Landing, Outbound, Wire};
use crate::{CpuBackend, LlamaStage, LocalSum, StageInput, StageOutput, WeightSource};

const COORDINATOR: Rank = 0;

#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {message}")]
pub struct NodeError {
    pub rank: Rank,
    pub message: String,
}

/// What the communication thread hands the compute thread.
enum Work {
    Setup(Setup),
    Batch {
        id: u64,
        batch: MicroBatch,
        hidden: Option<Received>,
    },
    /// Report the figures; the communication thread adds its send times and spans.
    Report {
        send: Durations,
        send_spans: Spans,
        trace: bool,
    },
    Broken(String),
    Shutdown,
}

/// The previous stage's `rows × cols` hidden states, landed in a wire of the stage's backend.
struct Received {
    rows: usize,
    cols: usize,
    wire: Wire,
}

/// What the compute thread hands the communication thread.
enum Outgoing {
    Control(ToCoordinator),
    /// Where activations from the previous stage land from now on (sent before `Ready`).
    Landing(Arc<dyn Landing>),
    Activations {
        to: Rank,
        id: u64,
        hidden: Outbound,
    },
    Done,
}

/// Runs this worker until the coordinator sends `Shutdown`. MPI must allow threads (the
/// communication thread makes all MPI calls while this one computes).
pub fn serve(rank: Rank, node: NodeShare) -> Result<(), NodeError> {
    let (work_tx, work_rx) = channel();
    let (out_tx, out_rx) = channel();
    let communication = std::thread::spawn(move || communicate(&work_tx, &out_rx));
    let result = compute(rank, node, &work_rx, &out_tx);
    // The receiver lives until `Done`, which ends the communication thread after the last sends.
    let _ = out_tx.send(Outgoing::Done);
    if communication.join().is_err() {
        return Err(NodeError { rank, message: "the communication thread panicked".into() });
    }
    result
}

fn communicate(work: &Sender<Work>, outgoing: &Receiver<Outgoing>) {
    let world = SimpleCommunicator::world();
    let mut previous: Option<Rank> = None;
    let mut batches: VecDeque<(u64, MicroBatch)> = VecDeque::new();
    let (mut send_times, mut send_spans) = (Durations::default(), Spans::default());
    let mut activations: VecDeque<(u64, Received)> = VecDeque::new();
    let mut landing: Arc<dyn Landing> = Arc::new(HostLanding);
    let mut backoff = Backoff::default();
    loop {
        let mut busy = false;
        while let Some((_, message)) = try_receive::<_, ToWorker>(&world, Some(COORDINATOR)) {
            busy = true;
            let forward = match message {
                Ok(ToWorker::Setup(setup)) => {
                    previous = setup.previous;
                    Some(Work::Setup(setup))
                }
                Ok(ToWorker::Batch { id, batch }) if previous.is_some() => {
                    batches.push_back((id, batch));
                    None
                }
                Ok(ToWorker::Batch { id, batch }) => Some(Work::Batch { id, batch, hidden: None }),
                Ok(ToWorker::Report { trace }) => {
                    Some(Work::Report { send: send_times.clone(), send_spans: send_spans.clone(), trace })
                }
                Ok(ToWorker::Shutdown) => Some(Work::Shutdown),
                Err(e) => Some(Work::Broken(e.to_string())),
            };
            if let Some(w) = forward {
                let _ = work.send(w);
            }
        }
        if let Some(from) = previous {
            while let Some(received) = try_receive_activations(&world, from, landing.as_ref()) {
                busy = true;
                match received {
                    Ok((id, rows, cols, wire)) => activations.push_back((id, Received { rows, cols, wire })),
                    Err(problem) => {
                        let _ = work.send(Work::Broken(problem));
                    }
                }
            }
        }
        while !batches.is_empty() && !activations.is_empty() {
            let (Some((id, batch)), Some((hidden_id, hidden))) = (batches.pop_front(), activations.pop_front()) else {
                break;
            };
            let w = if id == hidden_id {
                Work::Batch { id, batch, hidden: Some(hidden) }
            } else {
                Work::Broken(format!("activations of micro-batch {hidden_id} arrived for micro-batch {id}"))
            };
            let _ = work.send(w);
        }
        loop {
            let started = Instant::now();
            let batch = match outgoing.try_recv() {
                Ok(Outgoing::Control(message)) => {
                    send(&world, COORDINATOR, &message);
                    None
                }
                Ok(Outgoing::Landing(l)) => {
                    landing = l;
                    None
                }
                Ok(Outgoing::Activations { to, id, hidden }) => {
                    let (rows, cols) = (hidden.rows, hidden.cols);
                    match hidden.ready() {
                        Ok(wire) => send_activations(&world, to, id, rows, cols, &wire),
                        Err(e) => {
                            let _ = work.send(Work::Broken(format!("micro-batch {id}'s activations: {e}")));
                        }
                    }
                    Some(id)
                }
                Ok(Outgoing::Done) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => break,
            };
            send_spans.record(&mut send_times, "send", started, 1, batch);
            busy = true;
        }
        if busy {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
}

fn compute(rank: Rank, node: NodeShare, work: &Receiver<Work>, outgoing: &Sender<Outgoing>) -> Result<(), NodeError> {
    let mut failure: Option<NodeError> = None;
    let mut fail = |message: String| {
        let _ = outgoing.send(Outgoing::Control(ToCoordinator::Failed { message: message.clone() }));
        failure.get_or_insert(NodeError { rank, message });
    };
    let mut stage: Option<Box<dyn LoadedStage>> = None;
    let mut next: Option<Rank> = None;
    // Waits for a micro-batch count as idle on a first stage (no work from the coordinator)
    // and as receive-wait on later ones (a batch is handed over when its activations arrive).
    let (mut compute_times, mut idle, mut receive_wait) =
        (Durations::default(), Durations::default(), Durations::default());
    let (mut batches, mut tokens) = (0u64, 0u64);
    let mut spans = Spans::default();
    loop {
        let waiting = Instant::now();
        let Ok(w) = work.recv() else { break };
        match w {
            Work::Setup(Setup { version, model, stage: spec, device, threads, next: n, shards, .. }) => {
                next = n;
                let threads = if threads == 0 { node.threads() } else { threads };
                set_polling(node.polling(threads));
                let place = Place { rank, node_index: node.index, threads, shards };
                match load(version, &model, spec, device, &place) {
                    Ok((loaded, bytes_read, load_seconds)) => {
                        let spec = loaded.spec();
                        log::info!(
                            "rank {rank}: layers {:?}, groups {:?}{}{} loaded on {}, {bytes_read} bytes read, {threads} threads",
                            spec.layers,
                            spec.groups,
                            if spec.embedding { " + embedding" } else { "" },
                            if spec.head { " + head" } else { "" },
                            loaded.device()
                        );
                        let ready =
                            ToCoordinator::Ready { version: PROTOCOL_VERSION, threads, bytes_read, load_seconds };
                        let _ = outgoing.send(Outgoing::Landing(loaded.landing()));
                        let _ = outgoing.send(Outgoing::Control(ready));
                        stage = Some(loaded);
                    }
                    Err(message) => fail(message),
                }
            }
            Work::Batch { id, batch, hidden } => {
                let Some(stage) = stage.as_mut() else { continue };
                match hidden {
                    Some(_) => spans.record(&mut receive_wait, "receive-wait", waiting, 0, Some(id)),
                    None => spans.record(&mut idle, "idle", waiting, 0, Some(id)),
                }
                batches += 1;
                tokens += batch.tokens.len() as u64;
                let started = Instant::now();
                match stage.forward(&batch, hidden, next) {
                    Ok(Computed::Scores(scores)) => {
                        let _ = outgoing.send(Outgoing::Control(ToCoordinator::Scores { id, scores }));
                    }
                    Ok(Computed::Hidden { to, hidden }) => {
                        let _ = outgoing.send(Outgoing::Activations { to, id, hidden });
                    }
                    Ok(Computed::Nothing) => {}
                    Err(message) => fail(message),
                }
                spans.record(&mut compute_times, "compute", started, 0, Some(id));
            }
            Work::Report { send, send_spans, trace } => {
                let matmul = stage.as_ref().map(|s| s.matmul_stats()).unwrap_or_default();
                let stats = WorkerStats {
                    batches,
                    tokens,
                    compute: compute_times.summary(),
                    idle: idle.summary(),
                    send: send.summary(),
                    receive_wait: receive_wait.summary(),
                    peak_memory_bytes: peak_memory_bytes(),
                    peak_device_memory_bytes: stage.as_ref().map_or(0, |s| s.peak_device_bytes()),
                    matmul_flops: matmul.flops,
                    matmul_seconds: matmul.seconds,
                    trace: if trace { [spans.timeline.clone(), send_spans.timeline].concat() } else { Vec::new() },
                };
                let _ = outgoing.send(Outgoing::Control(ToCoordinator::Stats { stats: Box::new(stats) }));
            }
            Work::Broken(message) => fail(message),
            Work::Shutdown => break,
        }
    }
    failure.map_or(Ok(()), Err)
}

/// What a micro-batch's forward pass hands on.
enum Computed {
    Scores(Vec<TokenScore>),
    /// Hidden states for the next stage's rank `to`.
    Hidden {
        to: Rank,
        hidden: Outbound,
    },
    /// A shard of the last stage without the head: its part went into the shards' sums.
    Nothing,
}

/// A loaded stage on whatever backend the setup chose, with its shards' sums.
trait LoadedStage {
    fn spec(&self) -> &StageSpec;
    fn device(&self) -> &str;
    /// One micro-batch: from tokens (`hidden` absent) or the previous stage's hidden states;
    /// hidden states out go to `next`, the next stage's rank, if there is one.
    fn forward(&mut self, batch: &MicroBatch, hidden: Option<Received>, next: Option<Rank>)
        -> Result<Computed, String>;
    /// Where the previous stage's hidden states land.
    fn landing(&self) -> Arc<dyn Landing>;
    fn matmul_stats(&self) -> MatmulStats;
    fn peak_device_bytes(&self) -> u64;
}

struct Loaded<B: Backend> {
    stage: LlamaStage<B>,
    sums: Box<dyn GroupSum<B>>,
    device: String,
}

impl<B: Backend> LoadedStage for Loaded<B> {
    fn spec(&self) -> &StageSpec {
        self.stage.spec()
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn forward(
        &mut self,
        batch: &MicroBatch,
        hidden: Option<Received>,
        next: Option<Rank>,
    ) -> Result<Computed, String> {
        let backend = self.stage.backend();
        let input = match hidden {
            Some(h) => StageInput::Hidden(backend.adopt(h.wire, h.rows, h.cols).map_err(|e| e.to_string())?),
            None => StageInput::Tokens,
        };
        match (self.stage.forward(batch, input, self.sums.as_mut()).map_err(|e| e.to_string())?, next) {
            (StageOutput::Scores(scores), _) => Ok(Computed::Scores(scores)),
            (StageOutput::Hidden(h), Some(to)) => {
                Ok(Computed::Hidden { to, hidden: backend.send_out(h).map_err(|e| e.to_string())? })
            }
            (StageOutput::Hidden(_), None) => Ok(Computed::Nothing),
        }
    }

    fn landing(&self) -> Arc<dyn Landing> {
        self.stage.backend().landing()
    }

    fn matmul_stats(&self) -> MatmulStats {
        self.stage.backend().matmul_stats()
    }

    fn peak_device_bytes(&self) -> u64 {
        self.stage.backend().peak_device_bytes()
    }
}

/// Where a worker sits: its rank, its place among its node's workers, its threads, and the
/// ranks of its stage's shards.
struct Place {
    rank: Rank,
    node_index: usize,
    threads: usize,
    shards: Vec<Rank>,
}

/// Loads a stage on `device`; returns it with the bytes read from the model and the seconds taken.
fn load(
    version: u32,
    model: &ModelRef,
    spec: StageSpec,
    device: Device,
    place: &Place,
) -> Result<(Box<dyn LoadedStage>, u64, f64), String> {
    let started = Instant::now();
    check_version(version).map_err(|e| e.to_string())?;
    rayon::ThreadPoolBuilder::new().num_threads(place.threads).build_global().map_err(|e| e.to_string())?;
    let source =
        crate::weights::open(std::path::Path::new(&model.path), model.random_weights).map_err(|e| e.to_string())?;
    let loaded: Box<dyn LoadedStage> = match device {
        Device::Cpu => Box::new(load_on(source.as_ref(), spec, CpuBackend::default(), "cpu".into(), place)?),
        Device::Cuda { cuda_aware, precision } => {
            let gpu = crate::backend::cuda::probe_local(place.node_index).map_err(|e| e.to_string())?;
            check_fits_gpu(source.config(), &spec, gpu.memory_bytes, precision).map_err(|e| {
                format!("GPU {} ({}, {} GB): {e}", gpu.ordinal, gpu.name, gpu.memory_bytes / 1_000_000_000)
            })?;
            let device_memory = match cuda_aware {
                CudaAware::On => {
                    if !mpi_is_cuda_aware() {
                        log::warn!(
                            "rank {}: --cuda-aware on, but this MPI does not say it is CUDA-aware \
                             (MPIX_Query_cuda_support); if it is not, sending device memory will fail in MPI",
                            place.rank
                        );
                    }
                    true
                }
                CudaAware::Off => false,
                CudaAware::Auto => mpi_is_cuda_aware(),
            };
            log::info!(
                "rank {}: worker {} of its node takes GPU {} of {} ({}); activations pass to MPI {} (--cuda-aware {cuda_aware:?})",
                place.rank,
                place.node_index,
                gpu.ordinal,
                gpu.visible,
                gpu.name,
                if device_memory { "in device memory" } else { "through pinned host buffers" },
            );
            let backend = CudaBackend::new(gpu.ordinal, precision).map_err(|e| e.to_string())?;
            backend.pass_device_memory_to_mpi(device_memory);
            Box::new(load_on(source.as_ref(), spec, backend, format!("GPU {} ({})", gpu.ordinal, gpu.name), place)?)
        }
    };
    Ok((loaded, source.bytes_read().load(Ordering::Relaxed), started.elapsed().as_secs_f64()))
}

fn load_on<B: Backend + 'static>(
    source: &dyn WeightSource,
    spec: StageSpec,
    backend: B,
    device: String,
    place: &Place,
) -> Result<Loaded<B>, String> {
    let stage = LlamaStage::load(source, spec, backend).map_err(|e| e.to_string())?;
    let sums: Box<dyn GroupSum<B>> = match place.shards.iter().position(|&r| r == place.rank) {
        Some(index) if place.shards.len() > 1 => Box::new(ShardSum {
            comm: SimpleCommunicator::world(),
            shards: place.shards.clone(),
            index,
            width: stage.config().hidden_size,
        }),
        _ => Box::new(LocalSum),
    };
    Ok(Loaded { stage, sums, device })
}
