//! What part of the model a worker runs: a [`StageSpec`] (contiguous layers, with or
//! without the embedding in front and the head behind, and which of the model's head
//! groups for tensor parallelism), and how the workers are arranged ([`ParallelLayout`]).
//!
//! Tensor parallelism cuts a model along its **groups**: group `g` is KV head `g`, the
//! query heads that share it, and the `g`-th of `num_kv_heads` equal slices of the
//! feed-forward width. A tensor-parallel rank owns a contiguous range of groups. The
//! row-parallel layers (attention output, down projection) sum one partial product per
//! group in group order on every path, the single process included (docs/ARCHITECTURE.md §6).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    pub layers: Range<usize>,
    pub embedding: bool,
    pub head: bool,
    /// The groups (KV heads with their query heads and feed-forward slice) computed here.
    pub groups: Range<usize>,
}

impl StageSpec {
    /// The whole model in one stage.
    pub fn whole(config: &ModelConfig) -> Self {
        StageSpec { layers: 0..config.num_layers, embedding: true, head: true, groups: 0..config.num_kv_heads }
    }

    /// The stage cut into `tp` tensor-parallel shards of contiguous groups, as even as the
    /// group count allows (the first shards take one more). Only the last shard runs the
    /// head: it has the fewest groups.
    pub fn shard(&self, config: &ModelConfig, tp: usize) -> Result<Vec<StageSpec>, PlanError> {
        let groups = config.num_kv_heads;
        if tp == 0 || tp > groups {
            return Err(PlanError::TooManyShards { tp, groups });
        }
        Ok((0..tp)
            .map(|t| StageSpec { groups: even_part(groups, tp, t), head: self.head && t + 1 == tp, ..self.clone() })
            .collect())
    }
}

/// Where group `g`'s slice of a dimension of `size` split in `groups` lies.
/// Part `index` of `total` items cut into `parts` even runs in order, the first
/// `total % parts` runs one longer (a stage's KV-head groups over its shards, a sum's
/// columns over them).
pub fn even_part(total: usize, parts: usize, index: usize) -> Range<usize> {
    let (base, longer) = (total / parts, total % parts);
    let start = index * base + index.min(longer);
    start..start + base + usize::from(index < longer)
}

pub fn group_slice(size: usize, groups: usize, g: Range<usize>) -> Range<usize> {
    g.start * size / groups..g.end * size / groups
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("--dp {dp} × --pp {pp} × --tp {tp} needs {} workers, but the job has {workers} (one rank coordinates): start it with mpirun -np {}, or change the sizes", dp * pp * tp, dp * pp * tp + 1)]
    WrongWorkerCount { dp: usize, pp: usize, tp: usize, workers: usize },
    #[error("--tp {tp}: tensor parallelism splits the model's {groups} KV-head groups, so use 1 to {groups} shards")]
    TooManyShards { tp: usize, groups: usize },
    #[error("a distributed run needs at least one worker: start 2 or more ranks (mpirun -np 2 or more)")]
    NoWorkers,
    #[error("--pp {stages}: {stages} pipeline stages for a model of {layers} layers; use at most --pp {layers}")]
    TooManyStages { stages: usize, layers: usize },
    #[error("a pipeline needs at least one stage")]
    NoStages,
    #[error("no layout of the workers fits the model in memory (the smallest needs {smallest} per rank): add workers, or use devices with more memory")]
    NothingFits { smallest: String },
    #[error("this stage's weights need {needed} with the GPU runtime, against {usable} usable on its GPU: spread the model over more GPUs (more --pp stages or --tp shards; evalmesh plan shows what fits)")]
    StageTooBig { needed: String, usable: String },
}

/// The kind of parallelism asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// The strategy search's choice; with some sizes given, the others fill up data parallel first.
    Auto,
    Dp,
    Pp,
    Tp,
}

/// How the workers are arranged: `dp` replicas of a `pp`-stage pipeline whose stages are
/// each `tp` tensor-parallel shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelLayout {
    pub dp: usize,
    pub pp: usize,
    pub tp: usize,
}

impl ParallelLayout {
    /// The layout for `workers` from a strategy, or from explicit sizes (which imply it):
    /// a missing size is what the given ones leave, data parallelism first.
    pub fn resolve(
        workers: usize,
        strategy: Strategy,
        dp: Option<usize>,
        pp: Option<usize>,
        tp: Option<usize>,
    ) -> Result<ParallelLayout, PlanError> {
        if workers == 0 {
            return Err(PlanError::NoWorkers);
        }
        let rest = |given: &[usize]| (workers / given.iter().product::<usize>().max(1)).max(1);
        let (dp, pp, tp) = match (dp, pp, tp) {
            (None, None, None) => match strategy {
                Strategy::Auto | Strategy::Dp => (workers, 1, 1),
                Strategy::Pp => (1, workers, 1),
                Strategy::Tp => (1, 1, workers),
            },
            (Some(d), None, None) => (d, rest(&[d]), 1),
            (None, Some(p), None) => (rest(&[p]), p, 1),
            (None, None, Some(t)) => (rest(&[t]), 1, t),
            (Some(d), Some(p), None) => (d, p, rest(&[d, p])),
            (Some(d), None, Some(t)) => (d, rest(&[d, t]), t),
            (None, Some(p), Some(t)) => (rest(&[p, t]), p, t),
            (Some(d), Some(p), Some(t)) => (d, p, t),
        };
        if dp == 0 || pp == 0 || tp == 0 || dp * pp * tp != workers {
            return Err(PlanError::WrongWorkerCount { dp, pp, tp, workers });
        }
        Ok(ParallelLayout { dp, pp, tp })
    }

    pub fn workers(&self) -> usize {
        self.dp * self.pp * self.tp
    }

    /// The MPI rank of shard `shard` of stage `stage` of replica `replica`: worker ranks
    /// follow rank 0, replica by replica, stage by stage, shard by shard.
    pub fn rank(&self, replica: usize, stage: usize, shard: usize) -> usize {
        1 + (replica * self.pp + stage) * self.tp + shard
    }

    /// The stage a rank computes (rank 0, the single process, counts as stage 0).
    pub fn stage_of(&self, rank: usize) -> usize {
        rank.saturating_sub(1) / self.tp % self.pp
    }
}

/// Cost of the LM head relative to one block when no cost model is at hand: its weight
/// count over a block's, halved because the head runs only on scored rows (about half of
/// them in perplexity chunks, far fewer in multiple choice).
pub fn head_cost_in_layers(config: &ModelConfig) -> f64 {
    let block = (config.hidden_size * (2 * config.q_dim() + 2 * config.kv_dim())
        + 3 * config.hidden_size * config.ffn_width() * config.active_mlps()) as f64;
    0.5 * (config.vocab_size * config.hidden_size) as f64 / block
}

/// Contiguous layer ranges for `stages` pipeline stages that minimise the costliest
/// stage, each block costing 1, the embedding `embedding` on the first stage and the head
/// `head` on the last (in blocks). Of the optimal splits it takes the one whose later
/// stages hold the most layers, the earlier ones split optimally among themselves.
/// Time is linear in `stages`, whatever the layer count.
pub fn partition_layers(
    config: &ModelConfig,
    stages: usize,
    embedding: f64,
    head: f64,
) -> Result<Vec<StageSpec>, PlanError> {
    let n = config.num_layers;
    if stages == 0 {
        return Err(PlanError::NoStages);
    }
    if stages > n {
        return Err(PlanError::TooManyStages { stages, layers: n });
    }
    let mut bounds = vec![n];
    let (mut end, mut last_extra) = (n, head);
    for k in (2..=stages).rev() {
        // The last of the first k stages takes all the layers the least costliest stage
        // of those k allows, leaving one at least to each stage before it.
        let worst = least_costliest_stage(end, k, embedding, last_extra);
        let take = ((worst - last_extra).floor().max(1.0) as usize).min(end - (k - 1));
        end -= take;
        bounds.push(end);
        last_extra = 0.0;
    }
    bounds.push(0);
    bounds.reverse();
    Ok(bounds
        .windows(2)
        .enumerate()
        .map(|(s, w)| StageSpec {
            layers: w[0]..w[1],
            embedding: s == 0,
            head: s == stages - 1,
            groups: 0..config.num_kv_heads,
        })
        .collect())
}

/// The least costliest stage possible when `layers` blocks make `stages` stages (each of
/// one block at least), the first carrying `first` more and the last `last` more: the
/// smallest bound whose stage capacities hold every block, found by bisection.
fn least_costliest_stage(layers: usize, stages: usize, first: f64, last: f64) -> f64 {
    let blocks_within = |bound: f64, extra: f64| (bound - extra).floor();
    let capacity = |bound: f64| -> f64 {
        let ends = match stages {
            1 => vec![blocks_within(bound, first + last)],
            _ => vec![blocks_within(bound, first), blocks_within(bound, last)],
        };
        let middle = blocks_within(bound, 0.0);
        if ends.iter().any(|&c| c < 1.0) || (stages > 2 && middle < 1.0) {
            return 0.0;
        }
        ends.iter().sum::<f64>() + (stages.saturating_sub(2)) as f64 * middle
    };
    let (mut low, mut high) = (0.0, layers as f64 + first + last + 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if capacity(mid) >= layers as f64 {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

#[cfg(test)]
mod tests {
    #[test]
    fn even_parts_cover_the_items_once_in_order() {
        for (total, parts) in [(576, 3), (10, 4), (16384, 8), (3, 3), (5, 2), (8, 8)] {
            let cut: Vec<_> = (0..parts).map(|i| even_part(total, parts, i)).collect();
            assert_eq!(cut[0].start, 0);
            assert_eq!(cut[parts - 1].end, total);
            for pair in cut.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len() && pair[0].len() - pair[1].len() <= 1);
            }
        }
        assert_eq!(even_part(10, 4, 0), 0..3);
        assert_eq!(even_part(10, 4, 3), 8..10);
    }

    use super::*;

    fn smollm() -> ModelConfig {
        let json = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 1e5, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "tie_word_embeddings": true}"#;
        crate::config::HfConfig::parse(json).unwrap().to_model_config().unwrap()
    }

    #[test]
    fn stages_cover_every_layer_once_in_order() {
        let c = smollm();
        for stages in 1..=30 {
            let plan = partition_layers(&c, stages, 0.0, head_cost_in_layers(&c)).unwrap();
            assert_eq!(plan.len(), stages);
            assert_eq!(plan[0].layers.start, 0);
            assert_eq!(plan[stages - 1].layers.end, 30);
            assert!(plan.windows(2).all(|w| w[0].layers.end == w[1].layers.start));
            assert!(plan.iter().all(|s| !s.layers.is_empty()));
            assert!(plan[0].embedding && plan[stages - 1].head);
            assert_eq!(plan.iter().filter(|s| s.embedding).count(), 1);
            assert_eq!(plan.iter().filter(|s| s.head).count(), 1);
        }
    }

    /// The least costliest stage by exhaustive dynamic programming over every cut.
    fn exhaustive_least_costliest(n: usize, stages: usize, first: f64, last: f64) -> f64 {
        let mut best = vec![vec![f64::INFINITY; n + 1]; stages + 1];
        best[0][0] = 0.0;
        for k in 1..=stages {
            for i in k..=n {
                for j in (k - 1)..i {
                    let extra = if k == 1 { first } else { 0.0 } + if k == stages && i == n { last } else { 0.0 };
                    best[k][i] = best[k][i].min(best[k - 1][j].max((i - j) as f64 + extra));
                }
            }
        }
        best[stages][n]
    }

    #[test]
    fn splits_are_as_balanced_as_an_exhaustive_search_finds() {
        for n in 1..=24 {
            let mut c = smollm();
            c.num_layers = n;
            for stages in 1..=n {
                for (first, last) in [(0.0, 0.0), (0.0, 4.0), (1.5, 0.3), (2.0, 7.25), (0.6, 0.6)] {
                    let plan = partition_layers(&c, stages, first, last).unwrap();
                    let cost = |s: &StageSpec| {
                        s.layers.len() as f64 + if s.embedding { first } else { 0.0 } + if s.head { last } else { 0.0 }
                    };
                    let worst = plan.iter().map(cost).fold(0.0, f64::max);
                    let least = exhaustive_least_costliest(n, stages, first, last);
                    assert!(
                        (worst - least).abs() < 1e-9,
                        "{n} layers, {stages} stages, {first}/{last}: {worst} > {least}"
                    );
                    assert_eq!(plan.iter().map(|s| s.layers.len()).sum::<usize>(), n);
                    assert!(plan.iter().all(|s| !s.layers.is_empty()));
                }
            }
        }
    }

    #[test]
    fn the_last_stage_takes_fewer_layers_for_the_head() {
        // SmolLM2's head is 28.3M weights against 3.5M per block: 4 blocks' worth at half the rows.
        let c = smollm();
        assert!((head_cost_in_layers(&c) - 4.0).abs() < 0.01);
        let plan = partition_layers(&c, 2, 0.0, head_cost_in_layers(&c)).unwrap();
        assert_eq!(plan[0].layers, 0..17);
        assert_eq!(plan[1].layers, 17..30);
    }

    #[test]
    fn layouts_follow_strategy_or_sizes() {
        let r = |s, dp, pp, tp| ParallelLayout::resolve(4, s, dp, pp, tp);
        let layout = |dp, pp, tp| Ok(ParallelLayout { dp, pp, tp });
        assert_eq!(r(Strategy::Auto, None, None, None), layout(4, 1, 1));
        assert_eq!(r(Strategy::Pp, None, None, None), layout(1, 4, 1));
        assert_eq!(r(Strategy::Tp, None, None, None), layout(1, 1, 4));
        assert_eq!(r(Strategy::Auto, None, Some(2), None), layout(2, 2, 1));
        assert_eq!(r(Strategy::Auto, None, None, Some(2)), layout(2, 1, 2));
        assert_eq!(r(Strategy::Auto, None, Some(2), Some(2)), layout(1, 2, 2));
        assert_eq!(r(Strategy::Auto, Some(2), Some(2), Some(1)), layout(2, 2, 1));
        assert!(r(Strategy::Auto, Some(3), None, None).unwrap_err().to_string().contains("mpirun -np 4"));
        assert!(r(Strategy::Auto, Some(2), Some(2), Some(2)).unwrap_err().to_string().contains("mpirun -np 9"));
        // DP=2 × PP=2 × TP=2: ranks 1-4 are replica 0, stage 0 holds ranks 1, 2 and 5, 6.
        let l = ParallelLayout { dp: 2, pp: 2, tp: 2 };
        assert_eq!((l.rank(0, 1, 0), l.rank(1, 0, 1)), (3, 6));
        assert_eq!((1..=8).map(|r| l.stage_of(r)).collect::<Vec<_>>(), [0, 0, 1, 1, 0, 0, 1, 1]);
        assert_eq!(l.stage_of(0), 0);
        assert_eq!(ParallelLayout::resolve(0, Strategy::Dp, None, None, None), Err(PlanError::NoWorkers));
    }

    #[test]
    fn shards_split_the_groups_evenly_and_keep_one_head() {
        let c = smollm();
        let stage = StageSpec::whole(&c);
        let groups = |tp| stage.shard(&c, tp).unwrap().iter().map(|s| s.groups.clone()).collect::<Vec<_>>();
        assert_eq!(groups(1), vec![0..3]);
        assert_eq!(groups(2), [0..2, 2..3]);
        assert_eq!(groups(3), [0..1, 1..2, 2..3]);
        let shards = stage.shard(&c, 3).unwrap();
        assert!(!shards[0].head && !shards[1].head && shards[2].head);
        assert!(shards.iter().all(|s| s.embedding && s.layers == (0..30)));
        assert_eq!(stage.shard(&c, 4), Err(PlanError::TooManyShards { tp: 4, groups: 3 }));
        assert_eq!(group_slice(1536, 3, 1..3), 512..1536);
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert_eq!(partition_layers(&smollm(), 31, 0.0, 4.0), Err(PlanError::TooManyStages { stages: 31, layers: 30 }));
        assert_eq!(partition_layers(&smollm(), 0, 0.0, 4.0), Err(PlanError::NoStages));
    }
}
