//! `--tune` and the prediction report: tuning scores the first trees under several
//! micro-batch budgets, and the scores stay bit-identical to an untuned run; every run
//! reports predicted beside measured throughput.

#![allow(clippy::unwrap_used)]

use evalmesh::results::Report;
use evalmesh_tests::{read_report, read_samples, RunArgs};

fn run(dir: &std::path::Path, text: &std::path::Path, extra: &[&str]) -> (Vec<u8>, Report) {
    let out = dir.join("r.json");
    let args = RunArgs::new().perplexity_of(text).flag("--perplexity-mode", "llamacpp").flag("--ctx", 128);
    let output = args.samples_beside(&out).extend(extra).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (read_samples(dir, "perplexity"), read_report(&out))
}

#[test]
fn tuning_keeps_the_scores_and_records_its_trials() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, &evalmesh::tasks::perplexity::BUILTIN_TEXT[..12000]).unwrap();
    let (plain_dir, tuned_dir) = (dir.path().join("plain"), dir.path().join("tuned"));
    let (plain, report) = run(&plain_dir, &text, &[]);
    let (tuned, tuned_report) = run(&tuned_dir, &text, &["--tune"]);
    assert!(plain == tuned, "--tune changed the scores");

    let tuning = tuned_report.evalmesh.tuning.unwrap();
    assert!(tuning.tried.len() >= 2, "{tuning:?}");
    assert_eq!(tuning.tried[0].batch_tokens, 512);
    assert!(tuning.tried.iter().all(|t| t.measured_over_predicted > 0.0));

    let prediction = report.evalmesh.prediction.unwrap();
    assert!(prediction.predicted_tokens_per_s > 0.0 && prediction.measured_tokens_per_s > 0.0, "{prediction:?}");
    assert_eq!((prediction.layout.dp, prediction.layout.pp, prediction.layout.tp), (1, 1, 1));
    assert_eq!(prediction.measured_stage_seconds.len(), 1);
}
