//! `evalmesh plan`: every way to spread a model over N workers, predicted by the cost
//! model from the model's configuration alone (scoring, and generation's decode steps),
//! and the one `--strategy auto` picks.

use evalmesh_common::cost::{predict_generation, BatchShape};
use evalmesh_common::hardware::HardwareProfile;
use evalmesh_common::protocol::{Device, WeightsInMemory};
use evalmesh_common::strategy;
use serde_json::json;

use crate::cli::args::PlanArgs;
use crate::cli::settings::model_path;
use crate::cli::tables::plan_table;
use crate::model::cache_dir;
use crate::prediction::{placement, run_profile, PredictionError};

/// Every layout predicted on a workload of `--ctx`-token sequences.
pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    args.check()?;
    let path = model_path(args.model.as_deref())?;
    let config = super::model_config(&path)?;
    let profile = match (&args.profile, args.device.as_str()) {
        (Some(file), _) => HardwareProfile::read(file).map_err(PredictionError::from)?,
        (None, "cpu") => run_profile(
            None,
            &cache_dir(),
            &config,
            args.batch_tokens,
            Device::Cpu { weights: WeightsInMemory::Auto },
            0,
        )?,
        (None, device) => HardwareProfile::built_in(device).map_err(PredictionError::from)?,
    };
    let per_batch = args.batch_tokens / args.ctx;
    let batches = vec![BatchShape::sequences(per_batch, args.ctx, args.ctx / 2); 64];
    let place = placement(&profile, args.workers, None);
    let candidates = strategy::candidates(&config, args.workers, &batches, &profile, place);
    // Generation: one step of every sequence, each after --ctx tokens of cache.
    let step = [BatchShape::decode(args.decode_sequences, args.ctx)];
    let decode: Vec<f64> = candidates
        .iter()
        .map(|c| {
            predict_generation(&config, c.layout, &c.stages, &step, &profile, place).map_or(0.0, |p| p.tokens_per_s)
        })
        .collect();
    let chosen = strategy::choose(&candidates);
    if args.json {
        let all: Vec<_> = candidates.iter().zip(&decode).map(|(c, &d)| plan_json(c, d)).collect();
        let chosen_json = chosen
            .as_ref()
            .ok()
            .and_then(|c| candidates.iter().position(|o| std::ptr::eq(o, *c)))
            .map(|i| all[i].clone());
        let out = json!({"model": path.display().to_string(), "workers": args.workers, "profile": profile.name,
            "profile_source": profile.source, "memory_bytes": profile.memory_bytes,
            "decode_sequences": args.decode_sequences, "candidates": all, "chosen": chosen_json});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let (f32_bytes, stored_bytes) = super::weight_memory(&path, &config)?;
        println!("{}", super::weight_memory_line(f32_bytes, stored_bytes));
        print!("{}", plan_table(&config, args.workers, &profile, &candidates, (args.decode_sequences, &decode)));
    }
    chosen.map(|_| ()).map_err(anyhow::Error::from)
}

/// A plan as JSON: sizes, stages as layer ranges, memory and predicted throughput (of
/// scoring, and `decode` of generation).
fn plan_json(c: &strategy::Candidate, decode: f64) -> serde_json::Value {
    json!({
        "dp": c.layout.dp, "pp": c.layout.pp, "tp": c.layout.tp,
        "stages": c.stages.iter().map(|s| [s.layers.start, s.layers.end]).collect::<Vec<_>>(),
        "memory_per_rank_bytes": c.prediction.memory_per_rank_bytes.iter().copied().max().unwrap_or(0),
        "predicted_tokens_per_s": c.prediction.tokens_per_s,
        "predicted_decode_tokens_per_s": decode,
        "bubble_share": c.prediction.bubble_share,
        "communication_share": c.prediction.communication_share,
        "rejected": c.rejected,
    })
}
