//! The `DistributedEngine`: rank 0 of an MPI job hands micro-batches to worker ranks
//! arranged as `dp` replicas of a `pp`-stage pipeline, each stage `tp` tensor-parallel
//! shards. The first stage embeds, each stage passes its hidden states to the next
//! (shard i to shard i), and the last returns scores (from its shard with the head). The next
//! micro-batch goes to whichever pipeline has room (a work queue), and a pipeline keeps
//! up to 4 × stages micro-batches in flight so that every stage has work (a worker alone,
//! two a lane). Scores are bit-identical to the lightweight engine's: the same stage code
//! computes each tree independently of the others, and activations travel as exact f32
//! bits. Generation steps (docs/ARCHITECTURE.md §12) go the same way, each sequence to the
//! pipeline that holds its KV cache (each stage the cache of its layers, each shard of its
//! KV heads), with as many steps in flight as a pipeline has stages.

use std::collections::{HashMap, VecDeque};

use evalmesh_common::decode::{kv_bytes_per_token, DecodeBatch, NextToken};
use evalmesh_common::protocol::{
    check_version, Device, ModelRef, Setup, ToCoordinator, ToWorker, WorkerStats, PROTOCOL_VERSION,
};
use evalmesh_common::{MicroBatch, ModelConfig, ParallelLayout, PlanError, ScoreTree, StageSpec};
use evalmesh_worker::comm::{receive, send};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};

use crate::engine::{pack_micro_batches, validate_trees, EngineError, EvaluationEngine, ScoreSink};
use crate::results::{EngineDetails, WorkerPlacement};

/// What a worker reported when it was ready.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub rank: Rank,
    pub stage: StageSpec,
    pub threads: usize,
    /// The micro-batches it scores at once.
    pub lanes: usize,
    pub bytes_read: u64,
    pub load_seconds: f64,
    /// What fixes the last bits of its arithmetic, as it reported.
    pub provenance: String,
}

/// The ranks of one pipeline: each stage's shards, first stage first.
struct Pipeline {
    ranks: Vec<Rank>,
    in_flight: usize,
}

/// Releases every worker of the job when dropped, so that no rank is left waiting
/// whatever rank 0's command did: each is sent `Shutdown` (the workers of a run stop
/// serving, those of a calibration stop waiting).
pub struct WorkerRelease<'a> {
    world: &'a SimpleCommunicator,
}

impl<'a> WorkerRelease<'a> {
    pub fn new(world: &'a SimpleCommunicator) -> Self {
        WorkerRelease { world }
    }
}

impl Drop for WorkerRelease<'_> {
    fn drop(&mut self) {
        for worker in 1..self.world.size() {
            send(self.world, worker, &ToWorker::Shutdown);
        }
    }
}

pub struct DistributedEngine<'a> {
    world: &'a SimpleCommunicator,
    layout: ParallelLayout,
    pipelines: Vec<Pipeline>,
    workers: Vec<WorkerInfo>,
    config: ModelConfig,
    /// Generation: the pipeline holding each live sequence's KV cache.
    sequences: HashMap<u64, usize>,
    /// Generation: per pipeline, the finished sequences whose caches it frees with its next step.
    releases: Vec<Vec<u64>>,
    /// Generation steps in flight, and each message sent for one: its step and rows in it.
    steps: HashMap<u64, PendingStep>,
    parts: HashMap<u64, (u64, Vec<usize>)>,
    next_step: u64,
    next_message: u64,
}

/// A generation step in flight: the next tokens received so far, and the parts awaited.
struct PendingStep {
    next: Vec<Option<NextToken>>,
    parts: usize,
}

fn worker_error(rank: Rank, message: impl Into<String>) -> EngineError {
    EngineError::Worker { rank, message: message.into() }
}

impl<'a> DistributedEngine<'a> {
    /// Sets every worker up with its stage and waits until all are ready; the first
    /// failure ends the start with the worker's rank and message.
    pub fn start(
        world: &'a SimpleCommunicator,
        model: &ModelRef,
        config: &ModelConfig,
        layout: ParallelLayout,
        stages: &[StageSpec],
        device: Device,
        threads: usize,
    ) -> Result<Self, EngineError> {
        let plan = |e: PlanError| EngineError::Plan(e.to_string());
        // shards[s][t]: shard t of stage s.
        let shards = stages.iter().map(|s| s.shard(config, layout.tp)).collect::<Result<Vec<_>, _>>().map_err(plan)?;
        let rank_of = |p: usize, s: usize, t: usize| layout.rank(p, s, t) as Rank;
        let mut specs = HashMap::new();
        let mut pipelines = Vec::new();
        for p in 0..layout.dp {
            for (s, stage_shards) in shards.iter().enumerate() {
                let stage_ranks: Vec<Rank> = (0..layout.tp).map(|t| rank_of(p, s, t)).collect();
                for (t, spec) in stage_shards.iter().enumerate() {
                    let rank = rank_of(p, s, t);
                    log::info!(
                        "pipeline {p} stage {s} shard {t}: rank {rank}, layers {}..{}, groups {}..{}{}{}",
                        spec.layers.start,
                        spec.layers.end,
                        spec.groups.start,
                        spec.groups.end,
                        if spec.embedding { " + embedding" } else { "" },
                        if spec.head { " + head" } else { "" }
                    );
                    let setup = ToWorker::Setup(Setup {
                        version: PROTOCOL_VERSION,
                        model: model.clone(),
                        stage: spec.clone(),
                        device,
                        threads,
                        previous: s.checked_sub(1).map(|s| rank_of(p, s, t)),
                        next: (s + 1 < layout.pp).then(|| rank_of(p, s + 1, t)),
                        shards: stage_ranks.clone(),
                    });
                    send(world, rank, &setup);
                    specs.insert(rank, spec.clone());
                }
            }
            let ranks = (0..layout.pp).flat_map(|s| (0..layout.tp).map(move |t| rank_of(p, s, t))).collect();
            pipelines.push(Pipeline { ranks, in_flight: 0 });
        }
        let mut workers = Vec::new();
        for _ in 0..layout.workers() {
            let (rank, message) = receive::<_, ToCoordinator>(world, None);
            match message.map_err(|e| worker_error(rank, e.to_string()))? {
                ToCoordinator::Ready { version, threads, lanes, bytes_read, load_seconds, provenance } => {
                    check_version(version).map_err(|e| worker_error(rank, e.to_string()))?;
                    log::info!(
                        "rank {rank}: ready, {bytes_read} bytes read in {load_seconds:.1} s, {threads} threads, {lanes} lane(s), {provenance}"
                    );
                    let stage = specs[&rank].clone();
                    workers.push(WorkerInfo { rank, stage, threads, lanes, bytes_read, load_seconds, provenance });
                }
                ToCoordinator::Failed { message } => return Err(worker_error(rank, message)),
                other => return Err(worker_error(rank, format!("unexpected reply {other:?}"))),
            }
        }
        workers.sort_by_key(|w| w.rank);
        let releases = vec![Vec::new(); pipelines.len()];
        Ok(DistributedEngine {
            world,
            layout,
            pipelines,
            workers,
            config: config.clone(),
            sequences: HashMap::new(),
            releases,
            steps: HashMap::new(),
            parts: HashMap::new(),
            next_step: 0,
            next_message: 0,
        })
    }

    /// The workers as they reported ready, by rank.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Micro-batches a pipeline holds at once: without a pipeline, one computing and one
    /// waiting per lane of its worker (the most any worker has); 4 × stages with one, so
    /// every stage stays busy.
    fn depth(&self) -> usize {
        if self.layout.pp == 1 {
            2 * self.workers.iter().map(|w| w.lanes).max().unwrap_or(1)
        } else {
            4 * self.layout.pp
        }
    }
}

/// Micro-batches waiting and in flight.
struct Schedule {
    queue: VecDeque<Vec<usize>>,
    /// Micro-batch id → (pipeline, tree indices).
    in_flight: HashMap<u64, (usize, Vec<usize>)>,
    next_id: u64,
}

impl Schedule {
    /// Sends micro-batches to pipeline `index` until it holds `limit` or none are left;
    /// every stage of the pipeline gets the layout.
    fn fill(
        &mut self,
        world: &SimpleCommunicator,
        trees: &[ScoreTree],
        pipeline: &mut Pipeline,
        index: usize,
        limit: usize,
    ) {
        while pipeline.in_flight < limit {
            let Some(indices) = self.queue.pop_front() else { return };
            let members: Vec<&ScoreTree> = indices.iter().map(|&i| &trees[i]).collect();
            let message = ToWorker::Batch { id: self.next_id, batch: MicroBatch::pack(&members) };
            for &rank in &pipeline.ranks {
                send(world, rank, &message);
            }
            pipeline.in_flight += 1;
            self.in_flight.insert(self.next_id, (index, indices));
            self.next_id += 1;
        }
    }
}

impl EvaluationEngine for DistributedEngine<'_> {
    fn score(&mut self, trees: &[ScoreTree], batch_tokens: usize, done: &mut ScoreSink) -> Result<(), EngineError> {
        validate_trees(trees, &self.config)?;
        let depth = self.depth();
        let mut schedule =
            Schedule { queue: pack_micro_batches(trees, batch_tokens).into(), in_flight: HashMap::new(), next_id: 0 };
        // Deal the first micro-batches out one at a time, so that every pipeline starts at once.
        for level in 1..=depth {
            for p in 0..self.pipelines.len() {
                schedule.fill(self.world, trees, &mut self.pipelines[p], p, level);
            }
        }
        while !schedule.in_flight.is_empty() {
            let (rank, message) = receive::<_, ToCoordinator>(self.world, None);
            match message.map_err(|e| worker_error(rank, e.to_string()))? {
                ToCoordinator::Scores { id, scores } => {
                    let (pipeline, indices) = schedule.in_flight.remove(&id).ok_or_else(|| {
                        worker_error(rank, format!("scores for micro-batch {id}, which is not in flight"))
                    })?;
                    self.pipelines[pipeline].in_flight -= 1;
                    schedule.fill(self.world, trees, &mut self.pipelines[pipeline], pipeline, depth);
                    let members: Vec<&ScoreTree> = indices.iter().map(|&i| &trees[i]).collect();
                    let unpacked =
                        MicroBatch::unpack(&members, &scores).map_err(|e| worker_error(rank, e.to_string()))?;
                    for (i, s) in indices.into_iter().zip(unpacked) {
                        done(i, s)?;
                    }
                }
                ToCoordinator::Failed { message } => return Err(worker_error(rank, message)),
                other => return Err(worker_error(rank, format!("unexpected reply {other:?}"))),
            }
        }
        Ok(())
    }

    /// A pipeline holds one step per stage.
    fn decode_depth(&self) -> usize {
        self.layout.pp
    }

    fn decode_replicas(&self) -> usize {
        self.pipelines.len()
    }

    /// A step's sequences go to the pipeline that holds their caches (a new one to the
    /// pipeline the coordinator chose for it), and every pipeline's part is sent at once.
    fn start_decode(&mut self, batch: DecodeBatch, replicas: &[usize]) -> Result<u64, EngineError> {
        for sequence in &batch.released {
            if let Some(p) = self.sequences.remove(sequence) {
                self.releases[p].push(*sequence);
            }
        }
        let mut parts: Vec<(Vec<usize>, DecodeBatch)> =
            vec![(Vec::new(), DecodeBatch::default()); self.pipelines.len()];
        for (i, step) in batch.steps.iter().enumerate() {
            let pipeline = match self.sequences.get(&step.sequence) {
                Some(&p) => p,
                None => {
                    let p = replicas.get(i).copied().filter(|&p| p < self.pipelines.len()).ok_or_else(|| {
                        EngineError::Sink(format!(
                            "sequence {} has no replica of {}",
                            step.sequence,
                            self.pipelines.len()
                        ))
                    })?;
                    self.sequences.insert(step.sequence, p);
                    p
                }
            };
            parts[pipeline].0.push(i);
            parts[pipeline].1.steps.push(step.clone());
        }
        let step = self.next_step;
        self.next_step += 1;
        let mut pending = PendingStep { next: vec![None; batch.steps.len()], parts: 0 };
        for (p, (indices, mut part)) in parts.into_iter().enumerate() {
            if part.steps.is_empty() {
                continue;
            }
            part.released = std::mem::take(&mut self.releases[p]);
            let id = self.next_message;
            self.next_message += 1;
            let message = ToWorker::Decode { id, batch: part };
            for &rank in &self.pipelines[p].ranks {
                send(self.world, rank, &message);
            }
            self.parts.insert(id, (step, indices));
            pending.parts += 1;
        }
        self.steps.insert(step, pending);
        Ok(step)
    }

    /// Receives the pipelines' parts until a step has them all.
    fn finish_decode(&mut self) -> Result<(u64, Vec<NextToken>), EngineError> {
        loop {
            let (rank, message) = receive::<_, ToCoordinator>(self.world, None);
            let (id, tokens) = match message.map_err(|e| worker_error(rank, e.to_string()))? {
                ToCoordinator::Next { id, next } => (id, next),
                ToCoordinator::Failed { message } => return Err(worker_error(rank, message)),
                other => return Err(worker_error(rank, format!("unexpected reply {other:?}"))),
            };
            let (step, indices) = self
                .parts
                .remove(&id)
                .ok_or_else(|| worker_error(rank, format!("next tokens for step {id}, which is not in flight")))?;
            if indices.len() != tokens.len() {
                return Err(worker_error(
                    rank,
                    format!("{} next tokens for {} sequences", tokens.len(), indices.len()),
                ));
            }
            let pending =
                self.steps.get_mut(&step).ok_or_else(|| worker_error(rank, format!("step {step} is not in flight")))?;
            for (i, token) in indices.into_iter().zip(tokens) {
                pending.next[i] = Some(token);
            }
            pending.parts -= 1;
            if pending.parts == 0 {
                let done = self.steps.remove(&step).map(|p| p.next.into_iter().flatten().collect()).unwrap_or_default();
                return Ok((step, done));
            }
        }
    }

    fn set_kv_budget(&mut self, bytes: usize) -> Result<(), EngineError> {
        self.sequences.clear();
        self.releases.iter_mut().for_each(Vec::clear);
        for worker in &self.workers {
            send(self.world, worker.rank, &ToWorker::KvBudget { bytes: bytes as u64 });
        }
        Ok(())
    }

    /// The most any worker's cache takes a token: its stage's layers over its groups.
    fn kv_bytes_per_token(&self) -> usize {
        let per = |w: &WorkerInfo| kv_bytes_per_token(&self.config, w.stage.layers.len(), w.stage.groups.len());
        self.workers.iter().map(per).max().unwrap_or(0)
    }

    fn describe(&self) -> String {
        let threads: Vec<String> = self.workers.iter().map(|w| w.threads.to_string()).collect();
        format!(
            "distributed engine: DP={} × PP={} × TP={} over {} workers (ranks 1-{}), cpu backend, {} threads each",
            self.layout.dp,
            self.layout.pp,
            self.layout.tp,
            self.workers.len(),
            self.workers.len(),
            threads.join("/")
        )
    }

    fn provenance(&self) -> Vec<String> {
        let mut all: Vec<String> = self.workers.iter().map(|w| w.provenance.clone()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn parallel_workers(&self) -> usize {
        self.workers.len()
    }

    fn monitoring(&mut self, trace: bool) -> Result<Vec<(Rank, WorkerStats)>, EngineError> {
        for w in &self.workers {
            send(self.world, w.rank, &ToWorker::Report { trace });
        }
        let mut all = Vec::new();
        while all.len() < self.workers.len() {
            let (rank, message) = receive::<_, ToCoordinator>(self.world, None);
            match message.map_err(|e| worker_error(rank, e.to_string()))? {
                ToCoordinator::Stats { stats } => all.push((rank, *stats)),
                ToCoordinator::Failed { message } => return Err(worker_error(rank, message)),
                other => return Err(worker_error(rank, format!("unexpected reply {other:?}"))),
            }
        }
        all.sort_by_key(|(rank, _)| *rank);
        Ok(all)
    }

    fn details(&self) -> EngineDetails {
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerPlacement {
                rank: w.rank,
                layers: [w.stage.layers.start, w.stage.layers.end],
                groups: [w.stage.groups.start, w.stage.groups.end],
                embedding: w.stage.embedding,
                head: w.stage.head,
                threads: w.threads,
                lanes: w.lanes,
                bytes_read: w.bytes_read,
                load_seconds: w.load_seconds,
            })
            .collect();
        EngineDetails::Distributed { dp: self.layout.dp, pp: self.layout.pp, tp: self.layout.tp, workers }
    }
}
