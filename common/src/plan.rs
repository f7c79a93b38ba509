//! What part of the model a worker runs: a [`StageSpec`] (contiguous layers, with or
//! without the embedding in front and the head behind).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::ModelConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    pub layers: Range<usize>,
    pub embedding: bool,
    pub head: bool,
}

impl StageSpec {
    /// The whole model in one stage.
    pub fn whole(config: &ModelConfig) -> Self {
        StageSpec { layers: 0..config.num_layers, embedding: true, head: true }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("--dp {dp} × --pp {pp} needs {} workers, but the job has {workers} (one rank coordinates): start it with mpirun -np {}, or change the sizes", dp * pp, dp * pp + 1)]
    WrongWorkerCount { dp: usize, pp: usize, workers: usize },
    #[error(
        "{what} is not available yet: use data parallelism (--strategy dp) or pipeline parallelism (--strategy pp)"
    )]
    Unavailable { what: String },
    #[error("a distributed run needs at least one worker: start 2 or more ranks (mpirun -np 2 or more)")]
    NoWorkers,
    #[error("{stages} pipeline stages for a model of {layers} layers: use at most {layers} stages")]
    TooManyStages { stages: usize, layers: usize },
    #[error("a pipeline needs at least one stage")]
    NoStages,
}

/// The kind of parallelism asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Data parallel while the model fits a worker (the strategy search comes later).
    Auto,
    Dp,
    Pp,
    Tp,
}

/// How the workers are arranged: `dp` replicas of a `pp`-stage pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelLayout {
    pub dp: usize,
    pub pp: usize,
}

impl ParallelLayout {
    /// The layout for `workers` from a strategy, or from explicit sizes (which imply it).
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
        if tp.is_some_and(|t| t > 1) || (strategy == Strategy::Tp && dp.is_none() && pp.is_none()) {
            return Err(PlanError::Unavailable { what: "tensor parallelism".into() });
        }
        let (dp, pp) = match (dp, pp) {
            (None, None) => match strategy {
                Strategy::Auto | Strategy::Dp => (workers, 1),
                Strategy::Pp => (1, workers),
                Strategy::Tp => unreachable!("refused above"),
            },
            (Some(d), None) => (d, (workers / d.max(1)).max(1)),
            (None, Some(p)) => ((workers / p.max(1)).max(1), p),
            (Some(d), Some(p)) => (d, p),
        };
        if dp == 0 || pp == 0 || dp * pp != workers {
            return Err(PlanError::WrongWorkerCount { dp, pp, workers });
        }
        Ok(ParallelLayout { dp, pp })
    }
}

/// Cost of the LM head relative to one block: its weight count over a block's, halved
/// because the head runs only on scored rows (about half of them in perplexity chunks,
/// far fewer in multiple choice). The strategy issue's cost model refines this.
pub fn head_cost_in_layers(config: &ModelConfig) -> f64 {
    let block = (config.hidden_size * (2 * config.q_dim() + 2 * config.kv_dim())
        + 3 * config.hidden_size * config.intermediate_size) as f64;
    0.5 * (config.vocab_size * config.hidden_size) as f64 / block
}

/// Contiguous layer ranges for `stages` pipeline stages that minimise the costliest
/// stage (each block costs 1, the head [`head_cost_in_layers`] on the last stage); the
/// first stage holds the embedding, the last the head.
pub fn partition_layers(config: &ModelConfig, stages: usize) -> Result<Vec<StageSpec>, PlanError> {
    let n = config.num_layers;
    if stages == 0 {
        return Err(PlanError::NoStages);
    }
    if stages > n {
        return Err(PlanError::TooManyStages { stages, layers: n });
    }
    let head = head_cost_in_layers(config);
    // best[k][i]: the least possible costliest stage when layers 0..i make k stages.
    let mut best = vec![vec![f64::INFINITY; n + 1]; stages + 1];
    let mut cut = vec![vec![0usize; n + 1]; stages + 1];
    best[0][0] = 0.0;
    for k in 1..=stages {
        for i in k..=n {
            for j in (k - 1)..i {
                let mut cost = (i - j) as f64;
                if k == stages && i == n {
                    cost += head;
                }
                let worst = best[k - 1][j].max(cost);
                if worst < best[k][i] {
                    best[k][i] = worst;
                    cut[k][i] = j;
                }
            }
        }
    }
    let mut bounds = vec![n];
    let mut i = n;
    for k in (1..=stages).rev() {
        i = cut[k][i];
        bounds.push(i);
    }
    bounds.reverse();
    Ok(bounds
        .windows(2)
        .enumerate()
        .map(|(s, w)| StageSpec { layers: w[0]..w[1], embedding: s == 0, head: s == stages - 1 })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RopeStyle;

    fn smollm() -> ModelConfig {
        ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 1e5,
            rms_norm_eps: 1e-5,
            max_position: 8192,
            tied_embeddings: true,
            rope_style: RopeStyle::AdjacentPairs,
        }
    }

    #[test]
    fn stages_cover_every_layer_once_in_order() {
        let c = smollm();
        for stages in 1..=30 {
            let plan = partition_layers(&c, stages).unwrap();
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

    #[test]
    fn the_last_stage_takes_fewer_layers_for_the_head() {
        // SmolLM2's head is 28.3M weights against 3.5M per block: 4 blocks' worth at half the rows.
        let c = smollm();
        assert!((head_cost_in_layers(&c) - 4.0).abs() < 0.01);
        let plan = partition_layers(&c, 2).unwrap();
        assert_eq!(plan[0].layers, 0..17);
        assert_eq!(plan[1].layers, 17..30);
    }

    #[test]
    fn layouts_follow_strategy_or_sizes() {
        let r = |s, dp, pp, tp| ParallelLayout::resolve(4, s, dp, pp, tp);
        assert_eq!(r(Strategy::Auto, None, None, None), Ok(ParallelLayout { dp: 4, pp: 1 }));
        assert_eq!(r(Strategy::Pp, None, None, None), Ok(ParallelLayout { dp: 1, pp: 4 }));
        assert_eq!(r(Strategy::Auto, None, Some(2), None), Ok(ParallelLayout { dp: 2, pp: 2 }));
        assert_eq!(r(Strategy::Auto, Some(2), Some(2), Some(1)), Ok(ParallelLayout { dp: 2, pp: 2 }));
        assert!(r(Strategy::Auto, Some(3), None, None).unwrap_err().to_string().contains("mpirun -np 4"));
        assert!(matches!(r(Strategy::Tp, None, None, None), Err(PlanError::Unavailable { .. })));
        assert_eq!(ParallelLayout::resolve(0, Strategy::Dp, None, None, None), Err(PlanError::NoWorkers));
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert_eq!(partition_layers(&smollm(), 31), Err(PlanError::TooManyStages { stages: 31, layers: 30 }));
        assert_eq!(partition_layers(&smollm(), 0), Err(PlanError::NoStages));
    }
}
