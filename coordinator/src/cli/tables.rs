//! What the commands print as tables and summary lines: the plans `evalmesh plan`
//! compares, the per-rank monitoring table and the prediction line of a run, and the
//! ping-pong comparison.

use evalmesh_common::hardware::HardwareProfile;
use evalmesh_common::{strategy, ModelConfig};

use crate::pingpong::Measurement;
use crate::results::{PredictionSummary, RankStats};

/// The candidates as a table, best first, each loser with its reason, with each one's
/// decode tokens/s at `decode.0` sequences (`decode.1`, in the candidates' order).
pub fn plan_table(
    config: &ModelConfig,
    workers: usize,
    profile: &HardwareProfile,
    candidates: &[strategy::Candidate],
    decode: (usize, &[f64]),
) -> String {
    let active = match config.experts {
        Some(_) => format!(" ({:.2}B active per token)", config.active_parameter_count() as f64 / 1e9),
        None => String::new(),
    };
    let mut out = format!(
        "{} layers, {:.2}B parameters{active}, on {workers} × {} ({}; {} each)\n\n",
        config.num_layers,
        config.parameter_count() as f64 / 1e9,
        profile.name,
        profile.source,
        strategy::gigabytes(profile.memory_bytes)
    );
    out.push_str(&format!(
        "| DP | PP | TP | stages (layers) | tokens/s | decode tokens/s ({} sequences) | memory per rank | bubble | communication | verdict |\n",
        decode.0
    ));
    out.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
    let best = candidates.iter().find(|c| c.rejected.is_none()).map(|c| c.prediction.tokens_per_s);
    for (c, decode) in candidates.iter().zip(decode.1) {
        let p = &c.prediction;
        let memory = p.memory_per_rank_bytes.iter().copied().max().unwrap_or(0);
        let stages: Vec<String> = c.stages.iter().map(|s| format!("{}-{}", s.layers.start, s.layers.end)).collect();
        let verdict = match (&c.rejected, best) {
            (Some(reason), _) => reason.clone(),
            (None, Some(b)) if p.tokens_per_s >= b => format!(
                "chosen: {} of {} free",
                strategy::gigabytes(profile.memory_bytes.saturating_sub(memory)),
                strategy::gigabytes(profile.memory_bytes)
            ),
            (None, Some(b)) => format!("slower by {:.0}%", 100.0 * (1.0 - p.tokens_per_s / b)),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {decode:.0} | {} | {:.0}% | {:.0}% | {verdict} |\n",
            c.layout.dp,
            c.layout.pp,
            c.layout.tp,
            stages.join(", "),
            p.tokens_per_s,
            strategy::gigabytes(memory),
            (100.0 * p.bubble_share).max(0.0),
            (100.0 * p.communication_share).max(0.0)
        ));
    }
    out
}

/// "predicted X tokens/s, measured Y (error); per stage predicted/measured seconds".
pub fn prediction_line(p: &PredictionSummary) -> String {
    let stages: Vec<String> = p
        .predicted_stage_seconds
        .iter()
        .zip(&p.measured_stage_seconds)
        .map(|(s, b)| format!("{s:.1}/{b:.1}"))
        .collect();
    format!(
        "predicted {:.1} tokens/s, measured {:.1} ({:+.1}%); per stage, predicted/measured busy seconds: {} ({})",
        p.predicted_tokens_per_s,
        p.measured_tokens_per_s,
        p.error_percent,
        stages.join(", "),
        p.profile
    )
}

/// Per rank: micro-batches, tokens, compute time and its distribution, idle, send and
/// receive-wait time, tokens/s while computing, weight memory, peak host and device memory.
pub fn monitoring_table(ranks: &[RankStats]) -> String {
    let mut out = String::from(
        "| Rank | Batches | Tokens | Compute s | p50 ms | p99 ms | Idle s | Send s | Recv-wait s | Tokens/s | Weights MiB | Peak MiB | Device peak MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for RankStats { rank, stats: s } in ranks {
        let compute_s = s.compute.total_ms / 1000.0;
        out.push_str(&format!(
            "| {rank} | {} | {} | {compute_s:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
            s.batches,
            s.tokens,
            s.compute.p50_ms,
            s.compute.p99_ms,
            s.idle.total_ms / 1000.0,
            s.send.total_ms / 1000.0,
            s.receive_wait.total_ms / 1000.0,
            s.tokens as f64 / compute_s.max(1e-9),
            s.weight_memory_bytes as f64 / (1 << 20) as f64,
            s.peak_memory_bytes as f64 / (1 << 20) as f64,
            s.peak_device_memory_bytes as f64 / (1 << 20) as f64,
        ));
    }
    out
}

/// Raw MPI against activation transfers, per message size.
pub fn pingpong_table(measured: &[Measurement]) -> String {
    let mut out = String::from("| Message bytes | Raw MPI GB/s | Activations GB/s | Ratio |\n|---:|---:|---:|---:|\n");
    for m in measured {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} |\n",
            m.bytes,
            m.raw_gb_per_s,
            m.activation_gb_per_s,
            m.activation_gb_per_s / m.raw_gb_per_s
        ));
    }
    out
}
