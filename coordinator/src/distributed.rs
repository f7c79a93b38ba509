//! The `DistributedEngine`: rank 0 of an MPI job hands micro-batches to worker ranks.
//! Data parallel for now: every worker holds the whole model, and the next micro-batch
//! goes to whichever worker is free (a work queue), so fast and slow workers finish
//! together. Scores are bit-identical to the lightweight engine's: the same stage code
//! computes each tree independently of the others.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use evalmesh_common::protocol::{check_version, ToCoordinator, ToWorker, PROTOCOL_VERSION};
use evalmesh_common::{MicroBatch, ModelConfig, ScoreTree, StageSpec};
use evalmesh_worker::backend::MatmulStats;
use evalmesh_worker::transport::{receive, send};
use mpi::topology::{Communicator, Rank, SimpleCommunicator};

use crate::engine::{pack_micro_batches, EngineError, EvaluationEngine, ScoreSink};

/// What a worker reported when it was ready.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub rank: Rank,
    pub threads: usize,
    pub bytes_read: u64,
    pub load_seconds: f64,
}

pub struct DistributedEngine<'a> {
    world: &'a SimpleCommunicator,
    workers: Vec<WorkerInfo>,
    config: ModelConfig,
    batch_tokens: usize,
    matmul: MatmulStats,
    compute_seconds: HashMap<Rank, f64>,
}

impl<'a> DistributedEngine<'a> {
    /// Sets every worker up with the whole model and waits until all are ready; the first
    /// failure ends the start with the worker's rank and message.
    pub fn start(
        world: &'a SimpleCommunicator,
        model: &Path,
        config: &ModelConfig,
        batch_tokens: usize,
        threads: usize,
    ) -> Result<Self, EngineError> {
        let mut engine = DistributedEngine {
            world,
            workers: Vec::new(),
            config: config.clone(),
            batch_tokens,
            matmul: MatmulStats::default(),
            compute_seconds: HashMap::new(),
        };
        let setup = ToWorker::Setup {
            version: PROTOCOL_VERSION,
            model: model.display().to_string(),
            stage: StageSpec::whole(config),
            threads,
        };
        for rank in 1..world.size() {
            send(world, rank, &setup);
        }
        for _ in 1..world.size() {
            let (rank, message) = receive::<_, ToCoordinator>(world, None);
            match message {
                Ok(ToCoordinator::Ready { version, threads, bytes_read, load_seconds }) => {
                    check_version(version).map_err(|e| EngineError::Worker { rank, message: e.to_string() })?;
                    log::info!("rank {rank}: whole model (layers 0..{}), {bytes_read} bytes read in {load_seconds:.1} s, {threads} threads", config.num_layers);
                    engine.workers.push(WorkerInfo { rank, threads, bytes_read, load_seconds });
                }
                Ok(ToCoordinator::Failed { message }) => return Err(EngineError::Worker { rank, message }),
                Ok(other) => return Err(EngineError::Worker { rank, message: format!("unexpected reply {other:?}") }),
                Err(e) => return Err(EngineError::Worker { rank, message: e.to_string() }),
            }
        }
        engine.workers.sort_by_key(|w| w.rank);
        Ok(engine)
    }

    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Seconds each worker spent computing.
    pub fn compute_seconds(&self) -> &HashMap<Rank, f64> {
        &self.compute_seconds
    }
}

impl EvaluationEngine for DistributedEngine<'_> {
    fn score(&mut self, trees: &[ScoreTree], done: &mut ScoreSink) -> Result<(), EngineError> {
        for (index, tree) in trees.iter().enumerate() {
            tree.validate(self.config.vocab_size, self.config.max_position)
                .map_err(|e| EngineError::Request { index, problem: e.to_string() })?;
        }
        let mut queue: VecDeque<Vec<usize>> = pack_micro_batches(trees, self.batch_tokens).into();
        let mut in_flight: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut next_id = 0u64;
        let mut hand_out = |rank: Rank, queue: &mut VecDeque<Vec<usize>>, in_flight: &mut HashMap<u64, Vec<usize>>| {
            if let Some(indices) = queue.pop_front() {
                let members: Vec<&ScoreTree> = indices.iter().map(|&i| &trees[i]).collect();
                send(self.world, rank, &ToWorker::Batch { id: next_id, batch: MicroBatch::pack(&members) });
                in_flight.insert(next_id, indices);
                next_id += 1;
            }
        };
        for w in &self.workers {
            hand_out(w.rank, &mut queue, &mut in_flight);
        }
        while !in_flight.is_empty() {
            let (rank, message) = receive::<_, ToCoordinator>(self.world, None);
            match message {
                Ok(ToCoordinator::Scores { id, scores, compute_seconds, matmul_flops, matmul_seconds }) => {
                    let indices = in_flight.remove(&id).ok_or_else(|| EngineError::Worker {
                        rank,
                        message: format!("scores for micro-batch {id}, which it was not given"),
                    })?;
                    hand_out(rank, &mut queue, &mut in_flight);
                    *self.compute_seconds.entry(rank).or_default() += compute_seconds;
                    self.matmul.flops += matmul_flops;
                    self.matmul.seconds += matmul_seconds;
                    let members: Vec<&ScoreTree> = indices.iter().map(|&i| &trees[i]).collect();
                    let unpacked = MicroBatch::unpack(&members, &scores)
                        .map_err(|e| EngineError::Worker { rank, message: e.to_string() })?;
                    for (i, s) in indices.into_iter().zip(unpacked) {
                        done(i, s)?;
                    }
                }
                Ok(ToCoordinator::Failed { message }) => return Err(EngineError::Worker { rank, message }),
                Ok(other) => return Err(EngineError::Worker { rank, message: format!("unexpected reply {other:?}") }),
                Err(e) => return Err(EngineError::Worker { rank, message: e.to_string() }),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let threads: Vec<String> = self.workers.iter().map(|w| w.threads.to_string()).collect();
        format!(
            "distributed engine: data parallel over {} workers (ranks 1-{}), cpu backend, {} threads each",
            self.workers.len(),
            self.world.size() - 1,
            threads.join("/")
        )
    }

    fn matmul_stats(&self) -> MatmulStats {
        self.matmul
    }

    fn parallel_workers(&self) -> usize {
        self.workers.len()
    }
}
