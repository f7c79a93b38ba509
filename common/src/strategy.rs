//! Strategy search (docs/ARCHITECTURE.md §9): every layout of the workers (dp · pp · tp = workers, tp
//! at most the KV-head groups, pp at most the layers), its layers balanced over the
//! stages by the cost model, plans that do not fit in memory set aside with the reason,
//! the rest ranked by predicted throughput.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::cost::{block_work, embedding_work, head_work, predict, weight_values, BatchShape, Placement, Prediction};
use crate::hardware::{HardwareProfile, GPU_OVERHEAD_BYTES};
use crate::plan::{partition_layers, ParallelLayout, PlanError, StageSpec};
use crate::protocol::GpuPrecision;

/// Share of a device's memory a plan may fill: the rest is headroom for allocator
/// fragmentation and what the estimate leaves out.
pub const USABLE_MEMORY: f64 = 0.9;

/// One layout, predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub layout: ParallelLayout,
    pub stages: Vec<StageSpec>,
    pub prediction: Prediction,
    /// Why the plan cannot run (it does not fit), if it cannot.
    pub rejected: Option<String>,
}

/// The cost of the stage ends in blocks, for balancing: the embedding on the first stage,
/// the head on the last, each over one block's time on the same micro-batches.
pub fn end_costs(c: &ModelConfig, batches: &[BatchShape], profile: &HardwareProfile, place: Placement) -> (f64, f64) {
    let rates = profile.rates_for(place.threads_per_worker, place.workers_per_node);
    let sum = |f: &dyn Fn(&BatchShape) -> f64| batches.iter().map(f).sum::<f64>();
    let block = sum(&|b| block_work(c, 0..c.num_kv_heads, b).seconds(&rates));
    if block <= 0.0 {
        return (0.0, 0.0);
    }
    let embedding = sum(&|b| embedding_work(c, b).seconds(&rates)) / block;
    let head = sum(&|b| head_work(c, b).seconds(&rates)) / block;
    (embedding, head)
}

/// Every layout for `workers`, predicted on `batches` (whose largest is the micro-batch
/// size for memory); feasible plans first, fastest first.
pub fn candidates(
    c: &ModelConfig,
    workers: usize,
    batches: &[BatchShape],
    profile: &HardwareProfile,
    place: Placement,
) -> Vec<Candidate> {
    let (embedding, head) = end_costs(c, batches, profile, place);
    let mut all = Vec::new();
    for tp in (1..=c.num_kv_heads.min(workers)).filter(|t| workers.is_multiple_of(*t)) {
        for pp in (1..=c.num_layers.min(workers / tp)).filter(|p| (workers / tp).is_multiple_of(*p)) {
            let layout = ParallelLayout { dp: workers / tp / pp, pp, tp };
            let Ok(stages) = partition_layers(c, pp, embedding, head) else { continue };
            let Ok(prediction) = predict(c, layout, &stages, batches, profile, place) else { continue };
            let worst = prediction.memory_per_rank_bytes.iter().copied().max().unwrap_or(0);
            let usable = (profile.memory_bytes as f64 * USABLE_MEMORY) as u64;
            let rejected = (worst > usable).then(|| {
                format!(
                    "does not fit: {} per rank against {} usable of {} {} memory",
                    gigabytes(worst),
                    gigabytes(usable),
                    gigabytes(profile.memory_bytes),
                    profile.name
                )
            });
            all.push(Candidate { layout, stages, prediction, rejected });
        }
    }
    all.sort_by(|a, b| {
        (a.rejected.is_some(), -a.prediction.tokens_per_s)
            .partial_cmp(&(b.rejected.is_some(), -b.prediction.tokens_per_s))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    all
}

/// Refuses, before anything is loaded, a stage whose weights alone (in `precision`) and
/// the GPU runtime's overhead leave less than a tenth of a GPU of `memory_bytes` for
/// activations.
pub fn check_fits_gpu(
    c: &ModelConfig,
    spec: &StageSpec,
    memory_bytes: u64,
    precision: GpuPrecision,
) -> Result<(), PlanError> {
    let bytes = match precision {
        GpuPrecision::Bf16 => 2,
        GpuPrecision::F32 => 4,
    };
    let needed = weight_values(c, spec) * bytes + GPU_OVERHEAD_BYTES;
    let usable = (memory_bytes as f64 * USABLE_MEMORY) as u64;
    if needed > usable {
        return Err(PlanError::StageTooBig { needed: gigabytes(needed), usable: gigabytes(usable) });
    }
    Ok(())
}

/// The fastest plan that fits, or why none does.
pub fn choose(candidates: &[Candidate]) -> Result<&Candidate, PlanError> {
    candidates.iter().find(|c| c.rejected.is_none()).ok_or_else(|| PlanError::NothingFits {
        smallest: candidates
            .iter()
            .map(|c| c.prediction.memory_per_rank_bytes.iter().copied().max().unwrap_or(0))
            .min()
            .map_or_else(|| "no layout".into(), gigabytes),
    })
}

pub fn gigabytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HfConfig;

    fn llama(json: &str) -> ModelConfig {
        HfConfig::parse(json).unwrap().to_model_config().unwrap()
    }

    const LLAMA3_70B: &str = include_str!("../../tests/fixtures/configs/llama-3-70b.json");
    const LLAMA3_8B: &str = include_str!("../../tests/fixtures/configs/llama-3-8b.json");

    fn search(json: &str, workers: usize) -> Vec<Candidate> {
        let batches = vec![BatchShape::sequences(4, 2048, 1024); 64];
        let place = Placement { threads_per_worker: 1, workers_per_node: 8, lanes: 1 };
        candidates(&llama(json), workers, &batches, &HardwareProfile::built_in("h100").unwrap(), place)
    }

    #[test]
    fn every_plan_uses_every_worker_once_and_every_layer_once() {
        let c = llama(LLAMA3_8B);
        for plan in search(LLAMA3_8B, 8) {
            let l = plan.layout;
            assert_eq!(l.dp * l.pp * l.tp, 8);
            assert!(l.tp <= c.num_kv_heads);
            assert_eq!(plan.stages.len(), l.pp);
            assert_eq!(plan.stages[0].layers.start, 0);
            assert_eq!(plan.stages[l.pp - 1].layers.end, c.num_layers);
            assert!(plan.stages.windows(2).all(|w| w[0].layers.end == w[1].layers.start));
            assert_eq!(plan.prediction.memory_per_rank_bytes.len(), l.pp);
        }
    }

    #[test]
    fn llama3_70b_needs_a_split_and_8b_runs_data_parallel() {
        let plans = search(LLAMA3_70B, 8);
        let dp8 = plans.iter().find(|p| p.layout.dp == 8).unwrap();
        // 70.6 billion bf16 weights are 141 GB: no single H100 holds them.
        assert!(dp8.rejected.as_deref().unwrap().contains("does not fit"));
        let chosen = choose(&plans).unwrap();
        assert!(chosen.layout.dp < 8);
        assert!(chosen.prediction.memory_per_rank_bytes.iter().all(|&m| m < 72_000_000_000));
        assert_eq!(choose(&search(LLAMA3_8B, 8)).unwrap().layout, ParallelLayout { dp: 8, pp: 1, tp: 1 });
    }

    #[test]
    fn a_gpu_refuses_a_stage_whose_weights_do_not_fit() {
        let (big, small) = (llama(LLAMA3_70B), llama(LLAMA3_8B));
        let h100 = 80_000_000_000;
        // 141 GB of bf16 weights against 72 GB usable; a quarter of the layers is 35 GB.
        let bf16 = GpuPrecision::Bf16;
        let error = check_fits_gpu(&big, &StageSpec::whole(&big), h100, bf16).unwrap_err().to_string();
        assert!(error.contains("GB") && error.contains("--pp"), "{error}");
        let quarter = StageSpec { layers: 0..20, embedding: true, head: false, groups: 0..8 };
        assert!(check_fits_gpu(&big, &quarter, h100, bf16).is_ok());
        // ... but not in f32 (71 GB).
        assert!(check_fits_gpu(&big, &quarter, h100, GpuPrecision::F32).is_err());
        // 8.0 B weights are 16 GB: they fit an 80 GB GPU, not a 16 GB one.
        assert!(check_fits_gpu(&small, &StageSpec::whole(&small), h100, bf16).is_ok());
        assert!(check_fits_gpu(&small, &StageSpec::whole(&small), 16_000_000_000, bf16).is_err());
    }

    #[test]
    fn nothing_fits_says_how_much_is_needed() {
        let plans = search(LLAMA3_70B, 1);
        assert!(choose(&plans).unwrap_err().to_string().contains("GB"));
    }
}
