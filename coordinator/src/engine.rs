//! The `EvaluationEngine` trait, which scores prefix trees, the micro-batch packing
//! every engine shares, and the `LightweightEngine`: one process that runs the whole
//! model in one stage.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use evalmesh_common::decode::{kv_bytes_per_token, DecodeBatch, NextToken};
use evalmesh_common::protocol::WorkerStats;
use evalmesh_common::{MicroBatch, ModelConfig, ScoreTree, TreeScores};
use evalmesh_worker::monitor::{peak_memory_bytes, ComputeTime, Spans};
use evalmesh_worker::{
    load_stage, Forwarded, LoadError, LoadedStage, Site, StageError, StageSpec, Target, WeightSource,
};

use crate::results::EngineDetails;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("request {index}: {problem}")]
    Request { index: usize, problem: String },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("the last stage returned hidden states instead of its answer")]
    NoScores,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Sink(String),
    #[error("plan: {0}")]
    Plan(String),
    #[error("worker rank {rank}: {message}")]
    Worker { rank: i32, message: String },
    #[error("stopped by a signal after the micro-batches in hand; with --output, the journal holds every finished tree: run again with --resume to finish")]
    Stopped,
}

/// Called with each finished tree's index and scores, as soon as its micro-batch is done.
pub type ScoreSink<'a> = dyn FnMut(usize, TreeScores) -> Result<(), EngineError> + 'a;

/// Scores requests.
pub trait EvaluationEngine {
    /// Scores every tree in micro-batches of at most `batch_tokens` input tokens, handing
    /// each result to `done` (in no particular order).
    fn score(&mut self, trees: &[ScoreTree], batch_tokens: usize, done: &mut ScoreSink) -> Result<(), EngineError>;
    /// Generation steps (docs/ARCHITECTURE.md §12) the engine works on at once: a
    /// pipeline's stages each hold one.
    fn decode_depth(&self) -> usize;
    /// Replicas of the model whose caches generation spreads sequences over, each with
    /// the KV budget; a shared prefix is computed once on each that its sequences go to.
    fn decode_replicas(&self) -> usize;
    /// Starts a generation step; returns its id. A new sequence's cache goes to replica
    /// `replicas[i]` (`i` its step's index): the coordinator balances the replicas' budgets.
    fn start_decode(&mut self, batch: DecodeBatch, replicas: &[usize]) -> Result<u64, EngineError>;
    /// Waits until a started step is done: its id and the next token of each of its
    /// sequences, in their order.
    fn finish_decode(&mut self) -> Result<(u64, Vec<NextToken>), EngineError>;
    /// Sets the KV-cache budget of every stage, freeing what the caches hold.
    fn set_kv_budget(&mut self, bytes: usize) -> Result<(), EngineError>;
    /// The most bytes of KV cache a token takes on any one worker: the coordinator admits
    /// the sequences that the budget holds there.
    fn kv_bytes_per_token(&self) -> usize;
    /// One line saying what runs where.
    fn describe(&self) -> String;
    /// What fixes the last bits of the workers' arithmetic, each different one once, sorted:
    /// the journal records it and a resumed run must match it.
    fn provenance(&self) -> Vec<String>;
    /// How many workers compute at once.
    fn parallel_workers(&self) -> usize;
    /// Where the work ran, for the results' `evalmesh.engine_details`.
    fn details(&self) -> EngineDetails;
    /// What each worker measured so far, labelled by rank; with its timeline when `trace` is set.
    fn monitoring(&mut self, trace: bool) -> Result<Vec<(i32, WorkerStats)>, EngineError>;
}

/// Checks every tree against the model before any is computed; the error names the request.
pub fn validate_trees(trees: &[ScoreTree], config: &ModelConfig) -> Result<(), EngineError> {
    for (index, tree) in trees.iter().enumerate() {
        tree.validate(config.vocab_size, config.max_position)
            .map_err(|e| EngineError::Request { index, problem: e.to_string() })?;
    }
    Ok(())
}

/// Groups request indices into micro-batches of at most `budget` input tokens: longest
/// first, packed greedily in that order; a tree longer than the budget goes alone.
pub fn pack_micro_batches(trees: &[ScoreTree], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..trees.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(trees[i].input_len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        let len = trees[i].input_len();
        match batches.last_mut() {
            Some(batch) if used + len <= budget => {
                batch.push(i);
                used += len;
            }
            _ => {
                batches.push(vec![i]);
                used = len;
            }
        }
    }
    batches
}

/// The whole model in this process, on one backend.
pub struct LightweightEngine {
    stage: Box<dyn LoadedStage>,
    compute: ComputeTime,
    spans: Spans,
    batches: u64,
    tokens: u64,
    /// Generation steps computed and not yet handed over.
    decoded: VecDeque<(u64, Vec<NextToken>)>,
    next_step: u64,
}

impl LightweightEngine {
    /// The whole model of `source` on `target` (found before the model was opened).
    pub fn load(source: &dyn WeightSource, target: &Target) -> Result<Self, LoadError> {
        let stage = load_stage(source, StageSpec::whole(source.config()), target, &Site::Alone)?;
        Ok(LightweightEngine {
            stage,
            compute: ComputeTime::default(),
            spans: Spans::default(),
            batches: 0,
            tokens: 0,
            decoded: VecDeque::new(),
            next_step: 0,
        })
    }

    /// The micro-batches it scores at once ([`LoadedStage::scoring_lanes`]), for the cost model.
    pub fn lanes(&self) -> usize {
        self.stage.scoring_lanes()
    }
}

impl EvaluationEngine for LightweightEngine {
    /// The stage computes the micro-batches as many at once as its backend gains from
    /// ([`LoadedStage::score_alone`]). Once `done` fails, no micro-batch starts; those
    /// already computing still go to `done` as they finish (a signal's stop keeps every tree
    /// computed), and the first error is returned.
    fn score(&mut self, trees: &[ScoreTree], batch_tokens: usize, done: &mut ScoreSink) -> Result<(), EngineError> {
        validate_trees(trees, self.stage.config())?;
        let batches = pack_micro_batches(trees, batch_tokens);
        let members = |id: u64| -> Vec<&ScoreTree> { batches[id as usize].iter().map(|&i| &trees[i]).collect() };
        let failed = AtomicBool::new(false);
        let mut queue = (0..batches.len() as u64).map(|id| (id, MicroBatch::pack(&members(id))));
        let mut next = || if failed.load(Ordering::Relaxed) { None } else { queue.next() };
        let LightweightEngine { stage, compute, spans, batches: computed, tokens, .. } = self;
        let mut first_error = None;
        let started = Instant::now();
        stage.score_alone(&mut next, &mut |scored| {
            let hand_over = || -> Result<(), EngineError> {
                let thread = scored.trace_thread();
                let scores = scored.scores?;
                spans.record_between(&mut compute.each, "compute", scored.computed, thread, Some(scored.id));
                let members = members(scored.id);
                *computed += 1;
                *tokens += members.iter().map(|t| t.input_len() as u64).sum::<u64>();
                let indices = &batches[scored.id as usize];
                let unpacked = MicroBatch::unpack(&members, &scores)
                    .map_err(|e| EngineError::Request { index: indices[0], problem: e.to_string() })?;
                indices.iter().zip(unpacked).try_for_each(|(&i, s)| done(i, s))
            };
            if let Err(e) = hand_over() {
                failed.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        });
        compute.add_wall(started.elapsed());
        first_error.map_or(Ok(()), Err)
    }

    fn decode_depth(&self) -> usize {
        1
    }

    fn decode_replicas(&self) -> usize {
        1
    }

    /// Computes the step at once (one replica: `replicas` says nothing); `finish_decode`
    /// hands its tokens over.
    fn start_decode(&mut self, batch: DecodeBatch, _replicas: &[usize]) -> Result<u64, EngineError> {
        let started = Instant::now();
        let Forwarded::Next(next) = self.stage.decode(&batch, None, false)? else {
            return Err(EngineError::NoScores);
        };
        self.spans.record(&mut self.compute.each, "compute", started, 0, None);
        self.compute.add_wall(started.elapsed());
        self.batches += 1;
        self.tokens += batch.rows() as u64;
        let id = self.next_step;
        self.next_step += 1;
        self.decoded.push_back((id, next));
        Ok(id)
    }

    fn finish_decode(&mut self) -> Result<(u64, Vec<NextToken>), EngineError> {
        self.decoded.pop_front().ok_or_else(|| EngineError::Sink("no generation step was started".into()))
    }

    fn set_kv_budget(&mut self, bytes: usize) -> Result<(), EngineError> {
        self.stage.set_kv_budget(bytes);
        Ok(())
    }

    fn kv_bytes_per_token(&self) -> usize {
        let c = self.stage.config();
        kv_bytes_per_token(c, c.num_layers, c.num_kv_heads)
    }

    fn describe(&self) -> String {
        format!(
            "lightweight engine: one process, {} backend, {} threads, layers 0..{}",
            self.stage.backend_name(),
            rayon::current_num_threads(),
            self.stage.config().num_layers
        )
    }

    fn provenance(&self) -> Vec<String> {
        vec![self.stage.provenance()]
    }

    fn parallel_workers(&self) -> usize {
        1
    }

    fn monitoring(&mut self, trace: bool) -> Result<Vec<(i32, WorkerStats)>, EngineError> {
        let matmul = self.stage.matmul_stats();
        Ok(vec![(
            0,
            WorkerStats {
                batches: self.batches,
                tokens: self.tokens,
                compute: self.compute.summary(),
                peak_memory_bytes: peak_memory_bytes(),
                peak_device_memory_bytes: self.stage.peak_device_bytes(),
                weight_memory_bytes: self.stage.weight_bytes(),
                matmul_flops: matmul.flops,
                matmul_seconds: matmul.seconds,
                trace: if trace { self.spans.timeline.clone() } else { Vec::new() },
                ..WorkerStats::default()
            },
        )])
    }

    fn details(&self) -> EngineDetails {
        EngineDetails::Lightweight {
            layers: [0, self.stage.config().num_layers],
            threads: rayon::current_num_threads(),
            lanes: self.lanes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(len: usize) -> ScoreTree {
        ScoreTree { prefix: vec![1; len + 1], prefix_targets_from: 1, branches: vec![] }
    }

    #[test]
    fn packs_longest_first_within_budget() {
        let trees = vec![tree(3), tree(10), tree(6), tree(2), tree(20)];
        let batches = pack_micro_batches(&trees, 12);
        assert_eq!(batches, vec![vec![4], vec![1], vec![2, 0, 3]]);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
