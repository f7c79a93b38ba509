//! Bad task input: each gives one error line naming the file (and line) and the
//! problem, exit code 1, no panic, and the journal of an earlier run left as it was.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh_tests::{assert_clean_error, run_evalmesh, shared_dir, test_model};

fn run_multiple_choice(data: &Path, extra: &[&str]) -> std::process::Output {
    let model = test_model();
    let mut args =
        vec!["run", "--model", model.to_str().unwrap(), "--task", "multiple_choice", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_evalmesh(&args)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = "{\"context\": \"The sky is\", \"choices\": [\"blue\", \"green\"], \"gold\": 0}\n";

#[test]
fn malformed_json_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mc.jsonl", &format!("{GOOD}{{\"context\": \"x\", \"choices\": [\"a\"\n"));
    assert_clean_error(&run_multiple_choice(&path, &[]), &[path.to_str().unwrap(), "line 2"]);
}

#[test]
fn missing_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mc.jsonl", &format!("{GOOD}{{\"context\": \"x\", \"gold\": 0}}\n"));
    assert_clean_error(
        &run_multiple_choice(&path, &[]),
        &[path.to_str().unwrap(), "line 2", "`doc_to_choice`", "no field `choices`"],
    );
}

#[test]
fn gold_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mc.jsonl", "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n");
    assert_clean_error(
        &run_multiple_choice(&path, &[]),
        &[path.to_str().unwrap(), "line 1", "`doc_to_target`", "2 is out of range for 2 choices"],
    );
}

#[test]
fn no_choices() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mc.jsonl", "{\"context\": \"x\", \"choices\": [], \"gold\": 0}\n");
    assert_clean_error(&run_multiple_choice(&path, &[]), &[path.to_str().unwrap(), "line 1", "no choices"]);
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mc.jsonl", "");
    assert_clean_error(&run_multiple_choice(&path, &[]), &[path.to_str().unwrap(), "no documents"]);
}

#[test]
fn empty_text_for_rolling_perplexity_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.txt", "");
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--data", path.to_str().unwrap()]);
    assert_clean_error(&output, &[path.to_str().unwrap(), "no documents"]);
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--task", "hellaswagg"]);
    assert_clean_error(
        &output,
        &["unknown task `hellaswagg`", "arc_easy, generate, gsm8k", "hellaswag, humaneval", "mmlu"],
    );
}

#[test]
fn missing_data_file_names_the_path_and_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_evalmesh(&[
        "run",
        "--model",
        test_model().to_str().unwrap(),
        "--task",
        "piqa",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let expected = dir.path().join("piqa/valid.jsonl");
    assert_clean_error(&output, &[expected.to_str().unwrap(), "--data-dir is", dir.path().to_str().unwrap()]);
}

#[test]
fn task_without_data_dir_says_which_flag() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--task", "arc_easy"]);
    assert_clean_error(&output, &["arc_easy", "--data-dir"]);
}

#[test]
fn bad_input_leaves_the_journal_intact() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.jsonl", GOOD);
    let out = dir.path().join("r.json");
    let output = run_multiple_choice(&good, &["--output", out.to_str().unwrap()]);
    assert!(output.status.success());
    let journal = dir.path().join("r.journal.jsonl");
    let before = std::fs::read(&journal).unwrap();
    let bad = write(dir.path(), "bad.jsonl", "not json\n");
    let output = run_multiple_choice(&bad, &["--output", out.to_str().unwrap(), "--resume"]);
    assert_clean_error(&output, &[bad.to_str().unwrap(), "line 1"]);
    assert_eq!(std::fs::read(&journal).unwrap(), before, "the journal changed");
    // Without --resume or --overwrite, an existing results file is refused.
    let output = run_multiple_choice(&good, &["--output", out.to_str().unwrap()]);
    assert_clean_error(&output, &[out.to_str().unwrap(), "--overwrite", "--resume"]);
}

#[test]
fn data_dir_tasks_read_the_shared_layout() {
    // Every benchmark loads from shared/data (2 documents each, so this stays quick).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let data_dir = shared_dir().join("data");
    let output = run_evalmesh(&[
        "run",
        "--model",
        test_model().to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--limit",
        "2",
        "--tasks",
        "hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada_openai,mmlu,wikitext",
        "--ctx",
        "256",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for task in [
        "hellaswag",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "winogrande",
        "lambada_openai",
        "mmlu",
        "mmlu_anatomy",
        "wikitext",
    ] {
        assert!(r["results"].get(task).is_some(), "no results for {task}");
    }
    // lm-evaluation-harness counts a group's documents in its results entry (n-samples is per task).
    assert_eq!(r["results"]["mmlu"]["sample_len"], 114, "57 subjects × 2 questions");
    assert_eq!(r["n-samples"]["mmlu_anatomy"], serde_json::json!({"original": 135, "effective": 2}));
    assert!(r["results"]["wikitext"]["word_perplexity,none"].as_f64().unwrap() > 1.0);
    assert!(r["results"]["winogrande"].get("acc_norm,none").is_none(), "winogrande reports acc only");
}
