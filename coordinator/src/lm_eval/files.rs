//! lm-evaluation-harness's file names (`lm_eval/loggers/evaluation_tracker.py`): the run's
//! date in them, the folder named after the model, `results_<date>.json` and
//! `samples_<task>_<date>.jsonl`, which its readers find by those prefixes and take the
//! task and date back from (`get_file_task_name`, `get_file_datetime` in `lm_eval/utils.py`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a run's samples files go: `DIR/samples_<task>_<date>.jsonl`.
#[derive(Debug, Clone, Copy)]
pub struct SamplesFiles<'a> {
    pub dir: &'a Path,
    /// The run's date as lm-evaluation-harness puts it in file names ([`date_id`]).
    pub date_id: &'a str,
}

impl SamplesFiles<'_> {
    /// lm-evaluation-harness's name for a task's samples: `samples_<task>_<date>.jsonl`.
    pub fn path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("samples_{task}_{}.jsonl", self.date_id))
    }
}

/// lm-evaluation-harness's date in file names, `datetime.now().isoformat().replace(":", "-")`
/// (`2025-01-31T09-05-07.123456`; no fraction when the microseconds are 0), in UTC where
/// lm-evaluation-harness takes local time.
pub fn date_id(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, day_seconds) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (day_seconds / 3600, day_seconds / 60 % 60, day_seconds % 60);
    let micros = since.subsec_micros();
    let fraction = if micros == 0 { String::new() } else { format!(".{micros:06}") };
    format!("{year:04}-{month:02}-{day:02}T{h:02}-{m:02}-{s:02}{fraction}")
}

/// lm-evaluation-harness's `sanitize_model_name`: each run of `"<>:/|\?*[]` becomes `__`.
pub fn sanitize_model_name(name: &str) -> String {
    let unsafe_run = regex::Regex::new(r#"["<>:/|\\?*\[\]]+"#).unwrap_or_else(|e| unreachable!("fixed pattern: {e}"));
    unsafe_run.replace_all(name, "__").into_owned()
}

/// The results file in an output folder, as lm-evaluation-harness names it:
/// `DIR/<model, sanitized>/results_<date>.json`.
pub fn results_in_folder(dir: &Path, model: &str, date_id: &str) -> PathBuf {
    dir.join(sanitize_model_name(model)).join(format!("results_{date_id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_lm_eval_names_them() {
        let at = |secs: u64, micros: u32| UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000);
        // datetime.datetime.utcfromtimestamp(1735689599.5).isoformat() == '2024-12-31T23:59:59.500000'
        assert_eq!(date_id(at(1_735_689_599, 500_000)), "2024-12-31T23-59-59.500000");
        // ... (951782400) == '2000-02-29T00:00:00': no fraction when it is 0.
        assert_eq!(date_id(at(951_782_400, 0)), "2000-02-29T00-00-00");
    }

    #[test]
    fn model_names_become_folder_names_as_in_lm_eval() {
        // CPython: re.sub(r"[\"<>:/|\\?*\[\]]+", "__", "/models/x:y[1].gguf")
        assert_eq!(sanitize_model_name("/models/x:y[1].gguf"), "__models__x__y__1__.gguf");
        assert_eq!(sanitize_model_name("EleutherAI/pythia-14m"), "EleutherAI__pythia-14m");
        let path = results_in_folder(Path::new("out"), "a/b", "2000-02-29T00-00-00");
        assert_eq!(path, Path::new("out/a__b/results_2000-02-29T00-00-00.json"));
    }
}
