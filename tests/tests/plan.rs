//! `evalmesh plan` on configurations of models we do not have: Llama-3-70B must be split
//! over 8 H100s (a whole copy is 141 GB of bf16 weights), Llama-3-8B runs one copy per
//! GPU; impossible requests are clear errors.

#![allow(clippy::unwrap_used)]

use evalmesh_tests::{assert_clean_error, repo_dir, run_evalmesh};

fn fixture(name: &str) -> String {
    repo_dir().join("tests/fixtures/configs").join(name).display().to_string()
}

fn plan_json(model: &str, workers: &str, device: &str) -> serde_json::Value {
    plan_json_with(model, workers, device, &[])
}

fn plan_json_with(model: &str, workers: &str, device: &str, extra: &[&str]) -> serde_json::Value {
    let model = fixture(model);
    let mut args = vec!["plan", "--model", &model, "--workers", workers, "--device", device, "--json"];
    args.extend(extra);
    let output = run_evalmesh(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn llama3_70b_is_split_over_eight_h100s() {
    let plan = plan_json("llama-3-70b.json", "8", "h100");
    let chosen = &plan["chosen"];
    let (dp, pp, tp) = (chosen["dp"].as_u64().unwrap(), chosen["pp"].as_u64().unwrap(), chosen["tp"].as_u64().unwrap());
    assert_eq!(dp * pp * tp, 8);
    assert!(dp < 8, "one replica per GPU cannot hold the model: {chosen}");
    let memory = chosen["memory_per_rank_bytes"].as_u64().unwrap();
    assert!(memory < 72_000_000_000, "a tenth of the memory stays free: {chosen}");
    let stages = chosen["stages"].as_array().unwrap();
    assert_eq!(stages.len() as u64, pp);
    assert_eq!(stages.last().unwrap()[1], 80);
    let replicas = plan["candidates"].as_array().unwrap().iter().find(|c| c["dp"] == 8).unwrap();
    let reason = replicas["rejected"].as_str().unwrap();
    assert!(reason.contains("does not fit") && reason.contains("72.0 GB usable of 80.0 GB"), "{reason}");
}

/// Mixtral-8x7B holds 46.7B parameters (93 GB of bf16) of which 12.9B run per token;
/// Qwen3-30B-A3B 30.5B, 3.3B per token. On 8 H100s, Mixtral cannot be copied per GPU;
/// both get a layout that fits with a stated margin, and the table counts both figures.
#[test]
fn mixtures_of_experts_fit_eight_h100s() {
    for (model, total, active, per_gpu) in
        [("mixtral-8x7b.json", "46.70B", "12.88B", false), ("qwen3-30b-a3b.json", "30.53B", "3.35B", true)]
    {
        let plan = plan_json(model, "8", "h100");
        let chosen = &plan["chosen"];
        let memory = chosen["memory_per_rank_bytes"].as_u64().unwrap();
        assert!(memory < 72_000_000_000, "{model}: a tenth of the memory stays free: {chosen}");
        let replicas = plan["candidates"].as_array().unwrap().iter().find(|c| c["dp"] == 8).unwrap();
        assert_eq!(replicas["rejected"].is_null(), per_gpu, "{model}: {replicas}");
        let output = run_evalmesh(&["plan", "--model", &fixture(model), "--workers", "8", "--device", "h100"]);
        let table = String::from_utf8_lossy(&output.stdout);
        let header = format!("{total} parameters ({active} active per token)");
        assert!(table.contains(&header) && table.contains("chosen: ") && table.contains("GB free"), "{table}");
    }
}

#[test]
fn llama3_8b_runs_a_copy_per_gpu() {
    let plan = plan_json("llama-3-8b.json", "8", "h100");
    assert_eq!((plan["chosen"]["dp"].as_u64(), plan["chosen"]["tp"].as_u64()), (Some(8), Some(1)));
    // Qwen2-72B's config is read for planning too.
    let qwen = plan_json("qwen2-72b.json", "8", "h200");
    assert!(qwen["chosen"]["predicted_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_table_marks_the_choice_and_the_losers() {
    let output = run_evalmesh(&["plan", "--model", &fixture("llama-3-70b.json"), "--workers", "8", "--device", "a100"]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(table.matches("| chosen").count(), 1, "{table}");
    assert!(table.contains("does not fit") && table.contains("datasheet"), "{table}");
}

#[test]
fn impossible_plans_are_clear_errors() {
    let model = fixture("llama-3-70b.json");
    assert_clean_error(
        &run_evalmesh(&["plan", "--model", &model, "--workers", "1", "--device", "l40s"]),
        &["no layout", "fits", "GB"],
    );
    assert_clean_error(
        &run_evalmesh(&["plan", "--model", &model, "--workers", "8", "--device", "tpu"]),
        &["tpu", "h100"],
    );
    assert_clean_error(
        &run_evalmesh(&["plan", "--model", &model, "--workers", "0", "--device", "h100"]),
        &["--workers"],
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("profile.json");
    std::fs::write(&bad, "{\"name\": 1}").unwrap();
    assert_clean_error(
        &run_evalmesh(&["plan", "--model", &model, "--workers", "8", "--profile", bad.to_str().unwrap()]),
        &[bad.to_str().unwrap(), "calibrate"],
    );
}

/// Decoding is memory-bound: one H100's 3.35 TB/s, derated to 0.8 as the datasheet profile
/// says, reads Llama-3-8B's 16.06 GB of bf16 weights, less its 1.05 GB embedding table
/// (a step looks up rows of it), at most 178 times a second, so one sequence decodes at
/// most that fast; 32 sequences share each read of the weights.
#[test]
fn decode_throughput_follows_the_weights_read() {
    let decode = |sequences: &str| {
        let plan = plan_json_with("llama-3-8b.json", "1", "h100", &["--decode-sequences", sequences, "--ctx", "1024"]);
        plan["chosen"]["predicted_decode_tokens_per_s"].as_f64().unwrap()
    };
    let bound = 3.35e12 * 0.8 / (16.06e9 - 2.0 * 128_256.0 * 4096.0);
    let one = decode("1");
    assert!(one < bound && one > 0.8 * bound, "{one} tokens/s at one sequence against a bound of {bound}");
    let many = decode("32");
    assert!(many > 10.0 * one, "{many} tokens/s at 32 sequences against {one} at one");
}

/// Llama-3.1-405B on 16 H200s: eight-way tensor parallelism (one KV-head group a shard)
/// sums by a reduce-scatter and an all-gather, each shard sending about two sums' worth of
/// activations at once; a chain through the shards (14 messages one after another a sum)
/// spent 81% of its time communicating. The model counts the new sum: under half, and the
/// share grows with the shard count.
#[test]
fn tensor_parallel_sums_are_a_reduce_scatter_in_the_cost_model() {
    let plan = plan_json("llama-3.1-405b.json", "16", "h200");
    let candidates = plan["candidates"].as_array().unwrap();
    let share = |dp: u64, pp: u64, tp: u64| {
        let c = candidates.iter().find(|c| c["dp"] == dp && c["pp"] == pp && c["tp"] == tp).unwrap();
        c["communication_share"].as_f64().unwrap()
    };
    let (tp2, tp4, tp8) = (share(1, 8, 2), share(1, 4, 4), share(1, 2, 8));
    assert!(tp8 < 0.5, "TP=8 communicates {:.0}% of its time", 100.0 * tp8);
    assert!(tp2 < tp4 && tp4 < tp8, "{tp2} {tp4} {tp8}");
    assert!(plan["chosen"]["rejected"].is_null());
}

/// A profile cached by another build is measured again (its rates belong to other kernels
/// and another cost model), and the new one is then reused.
#[test]
fn a_profile_cached_by_another_build_is_measured_again() {
    use evalmesh_common::hardware::HardwareProfile;
    let cache = tempfile::tempdir().unwrap();
    let path = evalmesh::prediction::cached_profile_path(
        cache.path(),
        evalmesh_common::protocol::Device::Cpu { weights: evalmesh_common::protocol::WeightsInMemory::Auto },
    );
    let mut stale = HardwareProfile::built_in("h100").unwrap();
    stale.name = "stale".into();
    stale.measured_by = Some("evalmesh 0.0.0, another build".into());
    std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
    let model = fixture("smollm2-135m.json");
    let plan = || {
        let output = std::process::Command::new(evalmesh_tests::evalmesh_bin())
            .args(["plan", "--model", &model, "--workers", "1", "--json"])
            .env("EVALMESH_CACHE", cache.path())
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let first = plan();
    assert!(first.contains("was measured by another build of evalmesh: measuring again"), "{first}");
    let measured = HardwareProfile::read(&path).unwrap();
    assert_ne!(measured.name, "stale");
    assert!(measured.measured_by.as_deref().is_some_and(|b| b.starts_with("evalmesh ") && !b.contains("another")));
    let second = plan();
    assert!(!second.contains("measuring"), "the profile this build measured is reused: {second}");
}
