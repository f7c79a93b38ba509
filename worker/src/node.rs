//! A worker rank's life: receive the setup from the coordinator, load the assigned stage
//! (only its tensors), then compute micro-batches and generation steps until told to stop.
//! Two threads: the compute thread runs the stage; the communication thread alone talks
//! MPI (it receives control messages and the previous stage's activations, and sends
//! scores and activations), so a micro-batch travels while the next one computes. A worker
//! that holds the whole model on the CPU scores its micro-batches on its lanes, several at
//! once, as the single process does ([`LoadedStage::score_alone`], [`next_on_lanes`]).
//! Activations cross in the backend's wires (`crate::comm::wire`): host memory on the CPU;
//! on a GPU, device memory where the MPI is CUDA-aware and pinned host buffers otherwise.
//! Every failure goes back to the coordinator as a message, so no rank is left waiting.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evalmesh_common::decode::DecodeBatch;
use evalmesh_common::protocol::{check_version, Setup, ToCoordinator, ToWorker, WorkerStats, PROTOCOL_VERSION};
use evalmesh_common::MicroBatch;
use mpi::topology::{Rank, SimpleCommunicator};

use crate::comm::activations::{send_activations, try_receive_activations};
use crate::comm::control::{try_receive, Outbox};
use crate::comm::node_share::NodeShare;
use crate::comm::polling::{set_polling, Backoff};
use crate::comm::wire::{ActivationHeader, Activations, HostLanding, Landing, Outbound};
use crate::loaded::{load_stage, Forwarded, LoadError, LoadedStage, Scored, Site, Target};
use crate::monitor::{peak_memory_bytes, ComputeTime, Durations, Spans};

const COORDINATOR: Rank = 0;

#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {message}")]
pub struct NodeError {
    pub rank: Rank,
    pub message: String,
}

/// A unit of work from the coordinator: a micro-batch to score or a generation step.
enum Job {
    Score(MicroBatch),
    Decode(DecodeBatch),
}

impl Job {
    fn rows(&self) -> usize {
        match self {
            Job::Score(batch) => batch.tokens.len(),
            Job::Decode(batch) => batch.rows(),
        }
    }
}

/// What the communication thread hands the compute thread.
enum Work {
    Setup(Setup),
    Batch {
        id: u64,
        job: Job,
        hidden: Option<Activations>,
    },
    KvBudget(u64),
    /// Report the figures; the communication thread adds its send times and spans.
    Report {
        send: Durations,
        send_spans: Spans,
        trace: bool,
    },
    Broken(String),
    Shutdown,
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
    let result = compute(rank, node, work_rx, &out_tx);
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
    let mut batches: VecDeque<(u64, Job)> = VecDeque::new();
    let (mut send_times, mut send_spans) = (Durations::default(), Spans::default());
    let mut activations: VecDeque<Activations> = VecDeque::new();
    let mut landing: Arc<dyn Landing> = Arc::new(HostLanding);
    let mut backoff = Backoff::default();
    let mut outbox = Outbox::default();
    loop {
        let mut busy = outbox.progress();
        while let Some((_, message)) = try_receive::<_, ToWorker>(&world, Some(COORDINATOR)) {
            busy = true;
            let forward = match message {
                Ok(ToWorker::Setup(setup)) => {
                    previous = setup.previous;
                    Some(Work::Setup(setup))
                }
                Ok(ToWorker::Batch { id, batch }) => receive_job(&mut batches, previous, id, Job::Score(batch)),
                Ok(ToWorker::Decode { id, batch }) => receive_job(&mut batches, previous, id, Job::Decode(batch)),
                Ok(ToWorker::KvBudget { bytes }) => Some(Work::KvBudget(bytes)),
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
                    Ok(received) => activations.push_back(received),
                    Err(problem) => {
                        let _ = work.send(Work::Broken(problem));
                    }
                }
            }
        }
        while !batches.is_empty() && !activations.is_empty() {
            let (Some((id, job)), Some(hidden)) = (batches.pop_front(), activations.pop_front()) else {
                break;
            };
            let w = if id == hidden.header.batch {
                Work::Batch { id, job, hidden: Some(hidden) }
            } else {
                Work::Broken(format!("activations of micro-batch {} arrived for micro-batch {id}", hidden.header.batch))
            };
            let _ = work.send(w);
        }
        loop {
            let started = Instant::now();
            let batch = match outgoing.try_recv() {
                Ok(Outgoing::Control(message)) => {
                    outbox.send(&world, COORDINATOR, &message);
                    None
                }
                Ok(Outgoing::Landing(l)) => {
                    landing = l;
                    None
                }
                Ok(Outgoing::Activations { to, id, hidden }) => {
                    let header = ActivationHeader { batch: id, rows: hidden.rows, cols: hidden.cols };
                    match hidden.ready() {
                        Ok(wire) => send_activations(&world, to, header, &wire),
                        Err(e) => {
                            let _ = work.send(Work::Broken(format!("micro-batch {id}'s activations: {e}")));
                        }
                    }
                    Some(id)
                }
                Ok(Outgoing::Done) | Err(TryRecvError::Disconnected) => {
                    outbox.flush();
                    return;
                }
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

/// A job from the coordinator: computed at once on a first stage, or queued until the
/// previous stage's activations arrive.
fn receive_job(batches: &mut VecDeque<(u64, Job)>, previous: Option<Rank>, id: u64, job: Job) -> Option<Work> {
    match previous {
        Some(_) => {
            batches.push_back((id, job));
            None
        }
        None => Some(Work::Batch { id, job, hidden: None }),
    }
}

fn compute(
    rank: Rank,
    node: NodeShare,
    mut work: Receiver<Work>,
    outgoing: &Sender<Outgoing>,
) -> Result<(), NodeError> {
    let mut failure: Option<NodeError> = None;
    let mut fail = |message: String| {
        let _ = outgoing.send(Outgoing::Control(ToCoordinator::Failed { message: message.clone() }));
        failure.get_or_insert(NodeError { rank, message });
    };
    let mut stage: Option<Box<dyn LoadedStage>> = None;
    let mut next: Option<Rank> = None;
    // Waits for a micro-batch count as idle on a first stage (no work from the coordinator)
    // and as receive-wait on later ones (a batch is handed over when its activations arrive).
    let (mut compute, mut idle, mut receive_wait) =
        (ComputeTime::default(), Durations::default(), Durations::default());
    let (mut batches, mut tokens) = (0u64, 0u64);
    let mut spans = Spans::default();
    // The micro-batches the stage scores at once, and what came while its lanes waited for
    // one (handled next).
    let mut lanes = 1;
    let mut pending: Option<Work> = None;
    loop {
        let waiting = Instant::now();
        let w = match pending.take() {
            Some(w) => w,
            None => match work.recv() {
                Ok(w) => w,
                Err(_) => break,
            },
        };
        match w {
            Work::Setup(setup) => {
                next = setup.next;
                let threads = if setup.threads == 0 { node.threads() } else { setup.threads };
                if threads > node.cores {
                    log::warn!(
                        "rank {rank}: {threads} compute threads on the {} core(s) this rank may run on: they take turns; \
                         mpirun binds each rank to a core unless started with --bind-to none",
                        node.cores
                    );
                }
                set_polling(node.polling(threads));
                match load(setup, threads, rank, node) {
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
                        lanes = loaded.scoring_lanes();
                        let ready = ToCoordinator::Ready {
                            version: PROTOCOL_VERSION,
                            threads,
                            lanes,
                            bytes_read,
                            load_seconds,
                            provenance: loaded.provenance(),
                        };
                        let _ = outgoing.send(Outgoing::Landing(loaded.landing()));
                        let _ = outgoing.send(Outgoing::Control(ready));
                        stage = Some(loaded);
                    }
                    Err(message) => fail(message),
                }
            }
            Work::Batch { id, job: Job::Score(batch), hidden: None } if lanes > 1 => {
                let Some(stage) = stage.as_mut() else { continue };
                spans.record(&mut idle, "idle", waiting, 0, Some(id));
                let mut first = Some((id, batch));
                let work = &mut work;
                let pending = &mut pending;
                let mut feed = || {
                    let (id, batch) = first.take().or_else(|| next_on_lanes(work, pending))?;
                    batches += 1;
                    tokens += batch.tokens.len() as u64;
                    Some((id, batch))
                };
                // The lanes' wall time is the compute time (their last wait for another
                // micro-batch, at most LANE_WAIT, included).
                let started = Instant::now();
                stage.score_alone(&mut feed, &mut |scored: Scored| {
                    spans.record_between(
                        &mut compute.each,
                        "compute",
                        scored.computed.clone(),
                        scored.trace_thread(),
                        Some(scored.id),
                    );
                    match scored.scores {
                        Ok(scores) => {
                            let _ = outgoing.send(Outgoing::Control(ToCoordinator::Scores { id: scored.id, scores }));
                        }
                        Err(e) => fail(e.to_string()),
                    }
                });
                compute.add_wall(started.elapsed());
            }
            Work::Batch { id, job, hidden } => {
                let Some(stage) = stage.as_mut() else { continue };
                match hidden {
                    Some(_) => spans.record(&mut receive_wait, "receive-wait", waiting, 0, Some(id)),
                    None => spans.record(&mut idle, "idle", waiting, 0, Some(id)),
                }
                batches += 1;
                tokens += job.rows() as u64;
                let started = Instant::now();
                let forwarded = match &job {
                    Job::Score(batch) => stage.forward(batch, hidden, next.is_some()),
                    Job::Decode(batch) => stage.decode(batch, hidden, next.is_some()),
                };
                match (forwarded, next) {
                    (Ok(Forwarded::Scores(scores)), _) => {
                        let _ = outgoing.send(Outgoing::Control(ToCoordinator::Scores { id, scores }));
                    }
                    (Ok(Forwarded::Next(next)), _) => {
                        let _ = outgoing.send(Outgoing::Control(ToCoordinator::Next { id, next }));
                    }
                    (Ok(Forwarded::Hidden(hidden)), Some(to)) => {
                        let _ = outgoing.send(Outgoing::Activations { to, id, hidden });
                    }
                    (Ok(Forwarded::Hidden(_) | Forwarded::Summed), _) => {}
                    (Err(e), _) => fail(e.to_string()),
                }
                spans.record(&mut compute.each, "compute", started, 0, Some(id));
                compute.add_wall(started.elapsed());
            }
            Work::KvBudget(bytes) => {
                if let Some(stage) = stage.as_mut() {
                    stage.set_kv_budget(usize::try_from(bytes).unwrap_or(usize::MAX));
                }
            }
            Work::Report { send, send_spans, trace } => {
                let matmul = stage.as_ref().map(|s| s.matmul_stats()).unwrap_or_default();
                let stats = WorkerStats {
                    batches,
                    tokens,
                    compute: compute.summary(),
                    idle: idle.summary(),
                    send: send.summary(),
                    receive_wait: receive_wait.summary(),
                    peak_memory_bytes: peak_memory_bytes(),
                    peak_device_memory_bytes: stage.as_ref().map_or(0, |s| s.peak_device_bytes()),
                    weight_memory_bytes: stage.as_ref().map_or(0, |s| s.weight_bytes()),
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

/// How long a worker's lanes wait for the next micro-batch before they stop (they start
/// again with the next one to come): the coordinator keeps two a lane in flight, so one
/// is normally waiting already, and a lane's finished scores go out only between the
/// first lane's batches or when the lanes stop, so a wait must end.
const LANE_WAIT: Duration = Duration::from_millis(20);

/// The next micro-batch to score where one comes within [`LANE_WAIT`]; anything else that
/// comes goes to `pending`, after which no more is taken.
fn next_on_lanes(work: &mut Receiver<Work>, pending: &mut Option<Work>) -> Option<(u64, MicroBatch)> {
    if pending.is_some() {
        return None;
    }
    match work.recv_timeout(LANE_WAIT) {
        Ok(Work::Batch { id, job: Job::Score(batch), hidden: None }) => Some((id, batch)),
        Ok(other) => {
            *pending = Some(other);
            None
        }
        Err(_) => None,
    }
}

/// Loads the stage of `setup` with `threads` compute threads for this worker of `node`;
/// returns it with the bytes read from the model and the seconds taken.
fn load(setup: Setup, threads: usize, rank: Rank, node: NodeShare) -> Result<(Box<dyn LoadedStage>, u64, f64), String> {
    let started = Instant::now();
    check_version(setup.version).map_err(|e| e.to_string())?;
    crate::start_threads(threads).map_err(|e| e.to_string())?;
    let model = &setup.model;
    let source =
        crate::weights::open(std::path::Path::new(&model.path), model.random_weights).map_err(|e| e.to_string())?;
    let target = Target::find(setup.device, node.index).map_err(|e| e.to_string())?;
    let site = Site::Worker { rank, node_index: node.index, node_workers: node.workers, shards: setup.shards };
    let loaded = load_stage(source.as_ref(), setup.stage, &target, &site).map_err(|e| match e {
        LoadError::TooBig { gpu, error } => {
            format!("GPU {} ({}, {} GB): {error}", gpu.ordinal, gpu.name, gpu.memory_bytes / 1_000_000_000)
        }
        e => e.to_string(),
    })?;
    Ok((loaded, source.bytes_read().load(Ordering::Relaxed), started.elapsed().as_secs_f64()))
}
