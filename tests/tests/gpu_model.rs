//! The GPU suite's model tests: the whole test model on `--device cuda` against the CPU
//! backend's scores, and two pipeline stages sharing one GPU under mpirun against the
//! single process's bits, over both transports where the MPI is CUDA-aware. Built with `--features cuda` (and a binary built with it); where no
//! GPU can be used each test prints why and returns, unless EVALMESH_REQUIRE_GPU is set
//! (as the device check does for its op tests), where that is a failure.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh_tests::{
    hellaswag_sample_args, hellaswag_samples, mpirun_command, path_str, print_output, run_evalmesh, test_model,
};
use evalmesh_worker::backend::cuda::{probe, skip_without_gpu};

fn have_gpu() -> bool {
    skip_without_gpu(probe(0)).is_some()
}

fn results(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The perplexity of `run` on the built-in excerpt (llama.cpp's 512-token windows) on the
/// GPU, in one process or (`np` > 1) under mpirun with `extra` arguments; with the log.
fn gpu_perplexity(np: usize, extra: &[&str]) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let model = test_model();
    let args =
        ["run", "--model", path_str(&model), "--perplexity-mode", "llamacpp", "--ctx", "512", "--device", "cuda"];
    let args = [&args[..], extra, &["--output", path_str(&out)]].concat();
    let output = match np {
        1 => run_evalmesh(&args),
        _ => mpirun_command(np, &args).env("RUST_LOG", "info").output().unwrap(),
    };
    print_output(&format!("{np} rank(s): evalmesh {}", args.join(" ")), &output);
    assert!(output.status.success());
    let ppl = results(&out)["results"]["perplexity"]["perplexity,none"].as_f64().unwrap();
    (ppl, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn two_stages_on_one_gpu_give_the_single_process_bits_over_each_transport() {
    if !have_gpu() {
        return;
    }
    let (single, _) = gpu_perplexity(1, &[]);
    // Pinned host buffers: every MPI can carry them.
    let (staged, log) = gpu_perplexity(3, &["--strategy", "pp", "--cuda-aware", "off"]);
    assert!(log.contains("through pinned host buffers"), "the workers did not stage through pinned buffers");
    assert_eq!(staged.to_bits(), single.to_bits(), "pinned staging: {staged} against {single}");
    // Device memory, where the MPI says it is CUDA-aware (the workers log what `auto` chose).
    let (direct, log) = gpu_perplexity(3, &["--strategy", "pp", "--cuda-aware", "auto"]);
    if log.contains("in device memory") {
        assert_eq!(direct.to_bits(), single.to_bits(), "device memory: {direct} against {single}");
    } else {
        eprintln!("not run: this MPI is not CUDA-aware (MPIX_Query_cuda_support), so device memory cannot go to it");
    }
}

#[test]
fn perplexity_on_the_gpu_is_within_half_a_percent_of_the_cpu_and_its_f32_path_closer() {
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = test_model();
    let mut ppl = Vec::new();
    for (name, device) in [
        ("cpu", &["--device", "cpu"][..]),
        ("bf16", &["--device", "cuda"]),
        ("f32", &["--device", "cuda", "--gpu-precision", "f32"]),
    ] {
        let out = dir.path().join(format!("{name}.json"));
        let args = ["run", "--model", path_str(&model), "--perplexity-mode", "llamacpp", "--ctx", "512"];
        let output = run_evalmesh(&[&args[..], device, &["--output", path_str(&out)]].concat());
        assert!(output.status.success());
        ppl.push(results(&out)["results"]["perplexity"]["perplexity,none"].as_f64().unwrap());
    }
    // bf16 weights and matrix operands against f32: about 0.1–0.3% on a 135M model's
    // perplexity; half a percent is the bound.
    let error = (ppl[1] / ppl[0] - 1.0).abs();
    assert!(error < 5e-3, "perplexity on the GPU {} against the CPU's {} ({:.2}%)", ppl[1], ppl[0], 100.0 * error);
    // The f32 path has the CPU's weights and operands; only orders of summation differ,
    // worth about 1e-5 of the perplexity (as between the CPU and llama.cpp's F32 run).
    let error = (ppl[2] / ppl[0] - 1.0).abs();
    assert!(error < 1e-4, "f32 perplexity on the GPU {} against the CPU's {} ({error:.1e})", ppl[2], ppl[0]);
}

/// Each document's choice: the request with the highest log-likelihood (evalmesh's exact
/// figures, beside lm-evaluation-harness's `resps`).
fn decisions(samples: &[u8]) -> Vec<usize> {
    String::from_utf8_lossy(samples)
        .lines()
        .map(|line| {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            let logprobs: Vec<f64> = doc["evalmesh"]["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["logprob"].as_f64().unwrap())
                .collect();
            (0..logprobs.len()).fold(0, |best, i| if logprobs[i] > logprobs[best] { i } else { best })
        })
        .collect()
}

#[test]
fn hellaswag_decisions_on_the_gpu_match_the_cpu() {
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut chosen = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = dir.path().join(device).join("results.json");
        let args = hellaswag_sample_args(&out, 400);
        let args: Vec<&str> = args.iter().map(String::as_str).chain(["--device", device]).collect();
        assert!(run_evalmesh(&args).status.success());
        chosen.push(decisions(&hellaswag_samples(&out)));
    }
    assert_eq!(chosen[0].len(), 400);
    let same = chosen[0].iter().zip(&chosen[1]).filter(|(a, b)| a == b).count();
    // Near-ties between choices may flip under bf16; the bound is 99% equal.
    assert!(same * 100 >= 99 * chosen[0].len(), "{same} of {} decisions equal", chosen[0].len());
}
