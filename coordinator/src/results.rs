//! The results file: lm-evaluation-harness's layout (`results`, `configs`, `n-samples`)
//! plus an `evalmesh` section with what ran and how fast. Written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("cannot write results to {}: {error}", path.display())]
pub struct ResultsError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub results: BTreeMap<String, BTreeMap<String, Value>>,
    pub configs: BTreeMap<String, Value>,
    pub versions: BTreeMap<String, Value>,
    #[serde(rename = "n-shot")]
    pub n_shot: BTreeMap<String, Value>,
    #[serde(rename = "n-samples")]
    pub n_samples: BTreeMap<String, Value>,
    pub evalmesh: BTreeMap<String, Value>,
}

impl Report {
    /// Writes the report as JSON through a temporary file and a rename, so a reader
    /// never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), ResultsError> {
        let err = |error| ResultsError { path: path.to_path_buf(), error };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        json.push(b'\n');
        write_atomically(path, &json).map_err(err)
    }

    /// A table of every task's metrics with their standard errors, like lm-evaluation-harness prints.
    pub fn table(&self) -> String {
        let mut out = String::from("| Task | n-shot | Metric | Value | | Stderr |\n|---|---:|---|---:|---|---:|\n");
        for (task, metrics) in &self.results {
            let shots = self.n_shot.get(task).map_or(String::new(), |v| v.to_string());
            for (name, value) in metrics {
                let Some(metric) = name.strip_suffix(",none").filter(|m| !m.ends_with("_stderr")) else { continue };
                let Some(v) = value.as_f64() else { continue };
                let se = metrics.get(&format!("{metric}_stderr,none")).and_then(Value::as_f64);
                let se = se.map_or("N/A".to_string(), |s| format!("{s:.4}"));
                out.push_str(&format!("| {task} | {shots} | {metric} | {v:.4} | ± | {se} |\n"));
            }
        }
        out
    }
}

/// Writes a file through a temporary file beside it and a rename, so that a reader (or
/// a run killed part-way) never leaves half a file: every file evalmesh writes whole
/// goes through here.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
