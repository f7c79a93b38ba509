//! The results file: lm-evaluation-harness's layout (`results`, `configs`, `n-samples`)
//! plus an `evalmesh` section with what ran and how fast. Written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("cannot write results to {}: {source}", path.display())]
pub struct ResultsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub results: BTreeMap<String, BTreeMap<String, Value>>,
    pub configs: BTreeMap<String, Value>,
    #[serde(rename = "n-samples")]
    pub n_samples: BTreeMap<String, Value>,
    pub evalmesh: BTreeMap<String, Value>,
}

impl Report {
    /// Records `metric` of `task` under lm-evaluation-harness's `metric,none` key.
    pub fn metric(&mut self, task: &str, metric: &str, value: f64) {
        let entry = self.results.entry(task.to_string()).or_default();
        entry.insert("alias".into(), Value::from(task));
        entry.insert(format!("{metric},none"), Value::from(value));
    }

    /// Writes the report as JSON through a temporary file and a rename, so a reader
    /// never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), ResultsError> {
        let err = |source| ResultsError { path: path.to_path_buf(), source };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        tmp.write_all(&json).and_then(|_| tmp.write_all(b"\n")).map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// A table of every task's metrics, like lm-evaluation-harness prints.
    pub fn table(&self) -> String {
        let mut out = String::from("| Task | Metric | Value |\n|---|---|---:|\n");
        for (task, metrics) in &self.results {
            for (name, value) in metrics {
                if let (Some(metric), Some(v)) = (name.strip_suffix(",none"), value.as_f64()) {
                    out.push_str(&format!("| {task} | {metric} | {v:.4} |\n"));
                }
            }
        }
        out
    }
}
