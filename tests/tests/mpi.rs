//! The distributed engine under a real `mpirun`: per-request scores bit-identical to the
//! single process for data parallelism (a worker alone on two lanes among it), pipelines
//! of 2 and 3 stages, tensor parallelism over 2 and 3 shards, and mixes, and a worker's
//! failure reported by rank 0 with the worker's rank.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use evalmesh::results::EngineDetails;
use evalmesh_tests::{
    assert_clean_error, edited_model, mpirun, mpirun_command, print_output, read_report, read_samples, run_evalmesh,
    test_model, RunArgs,
};
use evalmesh_worker::weights::gguf::Value;

/// The samples of a HellaSwag sample and a perplexity sample, computed by `launch` with
/// `extra` arguments.
fn samples(dir: &Path, launch: impl Fn(&RunArgs) -> Output, extra: &[&str]) -> Vec<u8> {
    let text = dir.join("text.txt");
    std::fs::write(&text, &evalmesh::tasks::perplexity::BUILTIN_TEXT[..4000]).unwrap();
    let hellaswag = RunArgs::new().hellaswag_items(16).flag("--batch-tokens", 384);
    assert!(launch(&hellaswag.samples_beside(&dir.join("mc.json")).extend(extra)).status.success());
    let mc = read_samples(dir, "multiple_choice");
    let perplexity = RunArgs::new().perplexity_of(&text).flag("--ctx", 256).flag("--batch-tokens", 512);
    assert!(launch(&perplexity.samples_beside(&dir.join("ppl.json")).extend(extra)).status.success());
    [mc, read_samples(dir, "perplexity")].concat()
}

#[test]
fn every_layout_gives_the_single_process_bits() {
    let single_dir = tempfile::tempdir().unwrap();
    let single = samples(single_dir.path(), RunArgs::run, &[]);
    let layouts: [(usize, &[&str], &str); 8] = [
        (2, &["--threads", "2"], "one worker on two lanes"),
        (3, &["--strategy", "dp"], "DP=2"),
        (3, &["--strategy", "pp"], "PP=2"),
        (4, &["--strategy", "pp"], "PP=3"),
        (3, &["--strategy", "tp"], "TP=2"),
        (4, &["--strategy", "tp"], "TP=3"),
        (5, &["--dp", "2", "--pp", "2"], "DP=2 x PP=2"),
        (5, &["--pp", "2", "--tp", "2"], "PP=2 x TP=2"),
    ];
    for (np, layout, name) in layouts {
        let dir = tempfile::tempdir().unwrap();
        let got = samples(dir.path(), |args| args.mpirun(np), layout);
        assert!(got == single, "{name}: scores differ from the single process");
    }
}

#[test]
fn impossible_layouts_are_refused() {
    let output = mpirun(3, &["run", "--model", test_model().to_str().unwrap(), "--dp", "3"]);
    assert_clean_error(&output, &["--dp 3", "mpirun -np 4"]);
    // The test model has 3 KV-head groups to share out.
    let output = mpirun(5, &["run", "--model", test_model().to_str().unwrap(), "--strategy", "tp"]);
    assert_clean_error(&output, &["--tp 4", "3 KV-head groups", "1 to 3"]);
    // More stages than layers: the test model cut to its first two layers.
    let (_dir, path) = edited_model(|model| {
        model.set("llama.block_count", Value::Uint(2));
        let kept = |name: &str| name.strip_prefix("blk.").is_none_or(|r| r.starts_with("0.") || r.starts_with("1."));
        model.tensors.retain(|t| kept(&t.name));
    });
    let output = mpirun(4, &["run", "--model", path.to_str().unwrap(), "--pp", "3"]);
    assert_clean_error(&output, &["--pp 3", "2 layers"]);
}

#[test]
fn pingpong_measures_both_paths_under_mpirun_only() {
    let output = mpirun(2, &["pingpong", "--rows", "4,64", "--round-trips", "5", "--trials", "1"]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 9216 |") || l.starts_with("| 147456 |")).collect();
    assert_eq!(rows.len(), 2, "one row per size (4 and 64 rows of 576 f32):\n{table}");
    assert_clean_error(&run_evalmesh(&["pingpong"]), &["mpirun -np 2"]);
}

#[test]
fn a_failing_worker_ends_the_run_naming_its_rank() {
    // NaN in one weight: the coordinator reads only the header and loads fine, the workers
    // refuse the tensor at load.
    let (_dir, path) = edited_model(|model| {
        let t = model.tensors.iter_mut().find(|t| t.name == "blk.3.ffn_down.weight").unwrap();
        t.bytes[..2].copy_from_slice(&[0x00, 0x7E]); // the first Q4_1 block's scale: f16 NaN
    });
    let line = worker_failure(&["run", "--model", path.to_str().unwrap()]);
    assert!(line.contains("blk.3.ffn_down.weight") && line.contains("non-finite"), "{line}");
}

/// Runs `args` under `mpirun -np 3`, which a worker fails: the run must end within a minute
/// with exit code 1, no panic, and rank 0's error line naming the worker, which is returned.
fn worker_failure(args: &[&str]) -> String {
    let started = Instant::now();
    let output = mpirun(3, args);
    assert!(started.elapsed() < Duration::from_secs(60), "the failure took {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"));
    let line = stderr.lines().find(|l| l.starts_with("error: worker rank"));
    line.unwrap_or_else(|| panic!("no worker error from rank 0")).to_string()
}

#[test]
fn gpu_workers_without_a_gpu_end_the_run_naming_a_rank() {
    // Rank 0 needs no GPU; each worker looks for its own and reports why it has none (a
    // build without the cuda feature, or no driver here).
    let line = worker_failure(&["run", "--model", test_model().to_str().unwrap(), "--device", "cuda"]);
    assert!(line.contains("cuda") && line.contains("--device cpu"), "{line}");
}

#[test]
fn the_trace_has_a_track_per_rank_and_the_results_a_table_per_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, out) = (dir.path().join("trace.json"), dir.path().join("r.json"));
    let args = RunArgs::new().flag("--strategy", "pp").hellaswag_items(6).flag("--batch-tokens", 256);
    let output = args.path("--trace", &trace).path("--output", &out).mpirun(3);
    assert!(output.status.success());
    let events: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = events["traceEvents"].as_array().unwrap();
    for rank in [1, 2] {
        let named = events.iter().any(|e| e["ph"] == "M" && e["name"] == "process_name" && e["pid"] == rank);
        let computes = events.iter().filter(|e| e["ph"] == "X" && e["name"] == "compute" && e["pid"] == rank).count();
        assert!(named && computes > 0, "rank {rank}: named {named}, {computes} compute spans");
    }
    // The second stage waits for the first stage's activations, the first sends them.
    assert!(events.iter().any(|e| e["name"] == "receive-wait" && e["pid"] == 2));
    assert!(events.iter().any(|e| e["name"] == "send" && e["pid"] == 1 && e["args"]["micro_batch"].is_u64()));
    let ranks = read_report(&out).evalmesh.monitoring;
    assert_eq!(ranks.iter().map(|r| r.rank).collect::<Vec<_>>(), [1, 2]);
    assert!(ranks.iter().all(|r| r.stats.batches > 0 && r.stats.peak_memory_bytes > 0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("| Rank | Batches |"));
}

/// `mpirun -np 2 evalmesh ARGS` with each rank bound as `binding` says (mpirun's
/// `--bind-to`), stopped (SIGTERM, which mpirun passes to the ranks) and failed if it has
/// not ended within five minutes: a hang fails the test instead of holding up the suite.
fn mpirun_bound(binding: &str, args: &RunArgs) -> Output {
    let logs = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = mpirun_command(2, &args.args())
        .env("OMPI_MCA_hwloc_base_binding_policy", binding)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!(
                "mpirun -np 2 evalmesh {} hung:\n{}",
                args.args().join(" "),
                std::fs::read_to_string(&stderr).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output { status, stdout: std::fs::read(&stdout).unwrap(), stderr: std::fs::read(&stderr).unwrap() };
    print_output(&format!("mpirun --bind-to {binding} -np 2 evalmesh {}", args.args().join(" ")), &output);
    output
}

#[test]
fn a_worker_alone_with_two_threads_scores_on_two_lanes() {
    // The whole model on one worker of two threads: two micro-batches at once, as the
    // single process computes them (their bits: every_layout_gives_the_single_process_bits).
    // Perplexity's micro-batches of 2,048 tokens, and their scores, are past what MPI sends
    // eagerly: a worker that waited in its send while rank 0 sent it the next one would
    // hang here.
    let dir = tempfile::tempdir().unwrap();
    let (trace, out) = (dir.path().join("trace.json"), dir.path().join("r.json"));
    let text = dir.path().join("text.txt");
    std::fs::write(&text, evalmesh::tasks::perplexity::BUILTIN_TEXT.repeat(2)).unwrap();
    let args = RunArgs::new().perplexity_of(&text).flag("--perplexity-mode", "llamacpp").flag("--ctx", 512);
    let args = args.flag("--batch-tokens", 2048).flag("--threads", 2).path("--trace", &trace).path("--output", &out);
    let output = mpirun_bound("none", &args);
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("--bind-to none"), "a warning about cores it has");
    let report = read_report(&out);
    let EngineDetails::Distributed { workers, .. } = report.evalmesh.engine_details else {
        panic!("not the distributed engine")
    };
    assert_eq!(workers.iter().map(|w| (w.threads, w.lanes)).collect::<Vec<_>>(), [(2, 2)]);
    assert_eq!(report.evalmesh.prediction.map(|p| p.lanes), Some(2));
    // Compute spans on the first lane's thread (0) and the second's (2; 1 communicates).
    let events: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = events["traceEvents"].as_array().unwrap();
    let computes =
        |tid: u64| events.iter().filter(|e| e["name"] == "compute" && e["pid"] == 1 && e["tid"] == tid).count();
    assert!(computes(0) > 0 && computes(2) > 0, "lane 0: {} spans, lane 1: {}", computes(0), computes(2));
    // Its compute time is the wall time it computed, not its lanes' times added up.
    let worker = report.evalmesh.monitoring.iter().find(|r| r.rank == 1).unwrap();
    let (compute, wall) = (worker.stats.compute.total_ms / 1e3, report.evalmesh.eval_seconds);
    assert!(compute > 0.0 && compute <= wall, "{compute} s of compute in a {wall} s evaluation");
}

#[test]
fn a_worker_with_more_threads_than_cores_says_so() {
    // Bound to one core (mpirun's default for two ranks), two threads take turns on it.
    let output = mpirun_bound("core", &RunArgs::new().hellaswag_items(2).flag("--threads", 2));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rank 1: 2 compute threads on the 1 core(s)") && stderr.contains("--bind-to none"));
}
