//! `--trace`: every rank's timeline as a Chrome trace (one process per rank, a thread
//! for computing and one for communicating, and one per further lane of micro-batches
//! that the lightweight engine computes at once), to open in Perfetto.

use std::path::Path;

use serde_json::json;

use crate::results::{EngineDetails, RankStats};

/// Writes the timelines of `ranks` to `path`, each rank labelled with the layers it held.
pub fn write_trace(path: &Path, ranks: &[RankStats], details: &EngineDetails) -> std::io::Result<()> {
    let label = |rank: i32| {
        let worker = match details {
            EngineDetails::Distributed { workers, .. } => workers.iter().find(|w| w.rank == rank),
            EngineDetails::Lightweight { .. } => None,
        };
        match worker {
            Some(w) => format!("rank {rank}: layers {}..{}", w.layers[0], w.layers[1]),
            None => format!("rank {rank}"),
        }
    };
    let mut events = Vec::new();
    for RankStats { rank, stats } in ranks {
        events.push(json!({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": label(*rank)}}));
        let lanes = stats.trace.iter().map(|e| e.thread).max().unwrap_or(0).saturating_sub(1);
        let names = [(0, "compute".to_string()), (1, "communication".to_string())]
            .into_iter()
            .chain((1..=lanes).map(|lane| (lane + 1, format!("compute, lane {lane}"))));
        for (tid, name) in names {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": name}}));
        }
        for e in &stats.trace {
            events.push(json!({"name": e.name, "ph": "X", "pid": rank, "tid": e.thread, "ts": e.start_us,
                "dur": e.duration_us, "args": {"micro_batch": e.batch}}));
        }
    }
    let text = serde_json::to_string(&json!({"traceEvents": events, "displayTimeUnit": "ms"})).unwrap_or_default();
    crate::results::write_atomically(path, text.as_bytes())
}
