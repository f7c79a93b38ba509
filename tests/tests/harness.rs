//! The evaluation harness end to end: llama.cpp's HellaSwag score, bit-identical scores
//! across micro-batch sizes and micro-batches computed one or two at once, across a kill
//! and `--resume`, and across an orderly stop on
//! SIGTERM and `--resume`, and the results layout, MMLU's groups included.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evalmesh::results::Report;
use evalmesh_tests::{evalmesh_bin, journal_keys, read_report, read_samples, shared_dir, RunArgs};

#[test]
fn hellaswag_acc_norm_tokens_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let output = RunArgs::new().hellaswag_items(400).path("--output", &out).run();
    assert!(output.status.success());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let score = 100.0 * r["results"]["multiple_choice"]["acc_norm_tokens,none"].as_f64().unwrap();
    // llama.cpp on the dequantised F32 model: 40.75 over these 400 items (shared/reference/README.md).
    // Same weights and the same per-token mean, so only near-ties could flip: 0.5 points is 2 items.
    assert!((score - 40.75).abs() <= 0.5, "acc_norm_tokens {score} vs llama.cpp's 40.75");
    let stats = &read_report(&out).evalmesh.tasks["multiple_choice"];
    let shared = stats.tokens_computed as f64 / stats.tokens_without_prefix_sharing as f64;
    assert!(shared <= 0.55, "prefix sharing computes {:.1}% of the unshared tokens", 100.0 * shared);
    for key in ["results", "configs", "versions", "n-shot", "n-samples", "evalmesh"] {
        assert!(r.get(key).is_some(), "results lack `{key}`");
    }
    assert_eq!(r["n-samples"]["multiple_choice"]["effective"], 400);
}

/// Runs hellaswag and arc_easy on a few documents with `--log-samples`; returns the samples files.
fn sample_run(dir: &Path, batch_tokens: &str, extra: &[&str]) -> (Vec<u8>, Vec<u8>, Report) {
    let out = dir.join("r.json");
    let output = sample_args(&out).flag("--batch-tokens", batch_tokens).extend(extra).run();
    assert!(output.status.success());
    (read_samples(dir, "hellaswag"), read_samples(dir, "arc_easy"), read_report(&out))
}

/// Hellaswag and arc_easy on their first 40 documents, with samples beside `out`.
fn sample_args(out: &Path) -> RunArgs {
    let args = RunArgs::new().flag("--tasks", "hellaswag,arc_easy").path("--data-dir", &shared_dir().join("data"));
    args.flag("--limit", 40).samples_beside(out)
}

#[test]
fn scores_are_bit_identical_across_batch_sizes_threads_and_a_killed_run_resumed() {
    let base = tempfile::tempdir().unwrap();
    // Two threads compute two micro-batches at once; one, one at a time.
    let runs: Vec<_> = [("256", "2"), ("2048", "2"), ("8192", "2"), ("256", "1")]
        .iter()
        .map(|&(b, threads)| {
            let dir = base.path().join(format!("{b}-{threads}"));
            std::fs::create_dir(&dir).unwrap();
            sample_run(&dir, b, &["--threads", threads])
        })
        .collect();
    // The samples hold every request's summed log-probability as an exact f64.
    for run in &runs[1..] {
        assert!(run.0 == runs[0].0, "hellaswag samples differ between batch sizes or thread counts");
        assert!(run.1 == runs[0].1, "arc_easy samples differ between batch sizes or thread counts");
    }

    // Kill a run once its journal holds some trees, then resume it.
    let dir = base.path().join("killed");
    std::fs::create_dir(&dir).unwrap();
    let journal = dir.join("r.journal.jsonl");
    let out = dir.join("r.json");
    let mut child = Command::new(evalmesh_bin())
        .args(sample_args(&out).flag("--batch-tokens", 256).args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let records = |p: &Path| journal_keys(p).len();
    while records(&journal) < 12 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(120), "no journal records after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run must not leave a results file");
    let journaled = records(&journal);

    let resumed = sample_run(&dir, "2048", &["--resume"]);
    assert!(resumed.0 == runs[0].0 && resumed.1 == runs[0].1, "resumed scores differ from an uninterrupted run");
    let stats = &resumed.2.evalmesh.tasks;
    let from_journal: usize = stats.values().map(|t| t.trees_from_journal).sum();
    let computed: usize = stats.values().map(|t| t.trees_computed).sum();
    let total: usize = stats.values().map(|t| t.trees).sum();
    assert_eq!(stats.len(), 2);
    assert!(
        from_journal >= journaled.min(total) && from_journal >= 12,
        "{from_journal} trees reused of {journaled} journaled"
    );
    assert_eq!(from_journal + computed, total, "every tree is either reused or computed, once");
    let keys = journal_keys(&journal);
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), unique.len(), "a tree was scored twice");
    assert_eq!(keys.len(), total);
}

#[test]
fn a_terminated_run_stops_in_order_and_resumes_to_the_same_bits() {
    let base = tempfile::tempdir().unwrap();
    let args = |out: &Path| {
        let args = RunArgs::new().flag("--task", "perplexity").flag("--perplexity-mode", "llamacpp").flag("--ctx", 128);
        args.flag("--batch-tokens", 256).samples_beside(out)
    };
    let whole = base.path().join("whole");
    std::fs::create_dir(&whole).unwrap();
    let status = Command::new(evalmesh_bin()).args(args(&whole.join("r.json")).args()).output().unwrap().status;
    assert!(status.success());

    let stopped = base.path().join("stopped");
    std::fs::create_dir(&stopped).unwrap();
    let out = stopped.join("r.json");
    let journal = stopped.join("r.journal.jsonl");
    let child = Command::new(evalmesh_bin())
        .args(args(&out).args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let records = |p: &Path| journal_keys(p).len();
    while records(&journal) < 4 {
        assert!(started.elapsed() < Duration::from_secs(120), "no journal records after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(75), "an orderly stop exits with EX_TEMPFAIL");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopped by a signal") && stderr.contains("--resume"), "{stderr}");
    assert!(!out.exists(), "a stopped run writes no results");
    let journaled = records(&journal);

    let resumed = Command::new(evalmesh_bin()).args(args(&out).args()).arg("--resume").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let samples = |dir: &Path| read_samples(dir, "perplexity");
    assert!(samples(&stopped) == samples(&whole), "resumed scores differ from an uninterrupted run");
    let report = read_report(&out);
    let task = &report.evalmesh.tasks["perplexity"];
    assert!(task.trees_from_journal >= journaled.min(4));
    assert_eq!(task.trees_from_journal + task.trees_computed, task.trees);
}

#[test]
fn mmlu_groups_weigh_their_children_by_size_and_keep_scores_without_a_stderr() {
    // Every subject with 2 to 4 made-up questions, abstract_algebra with one (its stderr is
    // undefined, so mmlu_stem's and mmlu's are "N/A"); lm-eval's YAMLs file the subjects under
    // the four categories, and the categories under mmlu.
    let shared = shared_dir().join("data/mmlu/test");
    let mut subjects: Vec<String> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap().trim_end_matches("_test.csv").to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects.len(), 57);
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("data/mmlu/test");
    std::fs::create_dir_all(&test).unwrap();
    // The answers go A, B, C, D, A, … across the subjects, so that their scores differ.
    let mut answers = ["A", "B", "C", "D"].iter().cycle();
    for (k, subject) in subjects.iter().enumerate() {
        let n = if subject == "abstract_algebra" { 1 } else { 2 + k % 3 };
        let rows: String = (0..n)
            .map(|i| {
                format!("What is {i} plus one?,{},{},{},{},{}\n", i + 1, i + 2, i + 3, i + 4, answers.next().unwrap())
            })
            .collect();
        std::fs::write(test.join(format!("{subject}_test.csv")), rows).unwrap();
    }
    let out = dir.path().join("r.json");
    let output = RunArgs::new()
        .flag("--tasks", "mmlu")
        .path("--data-dir", &dir.path().join("data"))
        .path("--output", &out)
        .run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let (results, children) = (&r["results"], &r["group_subtasks"]);
    assert_eq!(
        children["mmlu"],
        serde_json::json!(["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"])
    );
    assert!(children["mmlu_stem"].as_array().unwrap().contains(&"mmlu_abstract_algebra".into()));
    assert!(children["mmlu_humanities"].as_array().unwrap().contains(&"mmlu_philosophy".into()));
    let aliases = [("mmlu", "mmlu"), ("mmlu_stem", "stem"), ("mmlu_humanities", "humanities")];
    let aliases = aliases.into_iter().chain([("mmlu_social_sciences", "social sciences"), ("mmlu_other", "other")]);
    let mut subtasks = 0;
    for (group, alias) in aliases {
        assert_eq!(results[group]["alias"], alias);
        // lm-eval's Group.aggregate with weight_by_size over the group's children: the
        // size-weighted mean; the pooled stderr (pooled_sample_stderr), or "N/A" where a
        // child's is.
        let members: Vec<&serde_json::Value> =
            children[group].as_array().unwrap().iter().map(|c| &results[c.as_str().unwrap()]).collect();
        let size = |m: &serde_json::Value| m["sample_len"].as_f64().unwrap();
        let total: f64 = members.iter().map(|m| size(m)).sum();
        let mean = members.iter().map(|m| m["acc,none"].as_f64().unwrap() * size(m)).sum::<f64>() / total;
        assert!((results[group]["acc,none"].as_f64().unwrap() - mean).abs() < 1e-12, "{group}");
        let stderr = &results[group]["acc_stderr,none"];
        if members.iter().any(|m| m["acc_stderr,none"] == "N/A") {
            assert_eq!(stderr, "N/A", "{group}");
        } else {
            let var = members
                .iter()
                .map(|m| (size(m) - 1.0) * m["acc_stderr,none"].as_f64().unwrap().powi(2) * size(m))
                .sum::<f64>()
                / (total - members.len() as f64);
            assert!((stderr.as_f64().unwrap() - (var / total).sqrt()).abs() < 1e-12, "{group}: {stderr}");
        }
        // lm-eval counts a group's documents in its result (`sample_len`), not in `n-samples`.
        assert_eq!(results[group]["sample_len"].as_f64(), Some(total), "{group}");
        subtasks += if group == "mmlu" { 0 } else { members.len() };
    }
    assert_eq!(subtasks, 57);
    assert_eq!(results["mmlu_stem"]["acc_stderr,none"], "N/A");
    assert!(results["mmlu_humanities"]["acc_stderr,none"].is_f64());
}

/// Where standard error is not a terminal (a pipe here, as in a batch job's log), progress
/// comes as log lines, at most one every `--progress-every` seconds: the task, its tokens
/// done and their total, growing to the total; none for 0, and none in a run shorter than
/// the default 30 s. (RUST_LOG, which the other tests set, would silence them.)
#[test]
fn progress_is_logged_where_no_bar_can_be_drawn() {
    let run = |every: Option<&str>| {
        let mut args = RunArgs::new().hellaswag_items(8);
        if let Some(every) = every {
            args = args.flag("--progress-every", every);
        }
        let output = Command::new(evalmesh_bin()).args(args.args()).env_remove("RUST_LOG").output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{every:?}: {stderr}");
        // "… INFO] multiple_choice: 1,234 of 5,678 tokens (21%), …" as (done, total).
        let counts: Vec<(u64, u64)> = stderr
            .lines()
            .filter_map(|l| l.split_once("INFO] multiple_choice: ")?.1.split_once(" tokens")?.0.split_once(" of "))
            .map(|(done, total)| (done.replace(',', "").parse().unwrap(), total.replace(',', "").parse().unwrap()))
            .collect();
        (counts, stderr)
    };
    let (counts, stderr) = run(Some("0.000001"));
    assert_eq!(counts.len(), 8, "a line for each of the 8 items' trees: {stderr}");
    assert!(counts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 == w[1].1), "{counts:?}");
    let (done, total) = counts[counts.len() - 1];
    assert_eq!(done, total, "{stderr}");
    let last = stderr.lines().rfind(|l| l.contains("INFO] multiple_choice: ")).unwrap();
    assert!(last.contains("tokens (100%), ") && last.contains(" tokens/s") && !last.contains("left"), "{last}");
    assert!(run(Some("0")).0.is_empty());
    assert!(run(None).0.is_empty());
}
