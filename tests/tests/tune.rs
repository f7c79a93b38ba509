//! `--tune` and the prediction report: tuning scores the first trees under several
//! micro-batch budgets, and the scores stay bit-identical to an untuned run; every run
//! reports predicted beside measured throughput.

#![allow(clippy::unwrap_used)]

use evalmesh_tests::{run_evalmesh, test_model};

fn run(dir: &std::path::Path, text: &std::path::Path, extra: &[&str]) -> (Vec<u8>, serde_json::Value) {
    let model = test_model();
    let out = dir.join("r.json");
    let mut args = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "perplexity",
        "--data",
        text.to_str().unwrap(),
        "--perplexity-mode",
        "llamacpp",
        "--ctx",
        "128",
        "--log-samples",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = run_evalmesh(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let samples = std::fs::read(dir.join("samples_perplexity.jsonl")).unwrap();
    (samples, serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap())
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

    let trials = tuned_report["evalmesh"]["tuning"]["tried"].as_array().unwrap();
    assert!(trials.len() >= 2, "{trials:?}");
    assert_eq!(trials[0]["batch_tokens"], 512);
    assert!(trials.iter().all(|t| t["measured_over_predicted"].as_f64().unwrap() > 0.0));

    let prediction = &report["evalmesh"]["prediction"];
    for key in ["predicted_tokens_per_s", "measured_tokens_per_s"] {
        assert!(prediction[key].as_f64().unwrap() > 0.0, "{prediction}");
    }
    assert_eq!(prediction["layout"], serde_json::json!({"dp": 1, "pp": 1, "tp": 1}));
    assert_eq!(prediction["measured_stage_seconds"].as_array().unwrap().len(), 1);
}
