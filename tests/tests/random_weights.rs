//! `run --random-weights`: a model drawn at random from its config.json alone (the test
//! model's shape, with the test model's tokenizer) scores like a model that knows nothing,
//! and its scores are the same bits whatever the micro-batch budget, and in a pipeline
//! whose last stage holds the tied head without the embedding; the last block's output
//! projection and MLP take only the rows scored.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use evalmesh_tests::{mpirun_command, print_output, repo_dir, run_evalmesh, test_model};

/// The arguments of a perplexity run of the random model on the start of the built-in
/// wikitext excerpt (its first 15 of 70 lines, about 1500 tokens), written into `dir`.
fn args(dir: &Path, batch_tokens: &str) -> Vec<String> {
    let excerpt =
        std::fs::read_to_string(repo_dir().join("coordinator/tasks/perplexity/wikitext-2-excerpt.txt")).unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, excerpt.lines().take(15).collect::<Vec<_>>().join("\n")).unwrap();
    let config = repo_dir().join("tests/fixtures/configs/smollm2-135m.json");
    [
        "run",
        "--model",
        config.to_str().unwrap(),
        "--random-weights",
        "--data",
        text.to_str().unwrap(),
        "--tokenizer",
        test_model().to_str().unwrap(),
        "--perplexity-mode",
        "llamacpp",
        "--ctx",
        "128",
        "--batch-tokens",
        batch_tokens,
        "--output",
        dir.join("results.json").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// The results of a finished run in `dir`.
fn results(dir: &Path, output: &Output) -> serde_json::Value {
    print_output("evalmesh run --random-weights", output);
    assert!(output.status.success());
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

/// The perplexity of a finished run's results in `dir`.
fn perplexity(dir: &Path, output: &Output) -> f64 {
    results(dir, output)["results"]["perplexity"]["perplexity,none"].as_f64().unwrap()
}

fn single_process(batch_tokens: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path(), batch_tokens);
    perplexity(dir.path(), &run_evalmesh(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

#[test]
fn a_random_model_knows_nothing_and_scores_the_same_bits_in_any_batch() {
    let ppl = single_process("512");
    // The trained model's perplexity on this text is about 27. Random weights of variance
    // 1/fan-in behind RMS norms (of weight 1) give logits of variance about 1, unrelated to
    // the text: the mean loss is ln V + σ²/2, a perplexity near 49152 · e^½ ≈ 81000.
    assert!(ppl > 49_152.0 && ppl < 3.0 * 49_152.0, "perplexity {ppl}");
    assert_eq!(ppl.to_bits(), single_process("128").to_bits());
}

#[test]
fn a_pipeline_draws_the_same_random_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path(), "512");
    args.extend(["--strategy", "pp"].map(String::from));
    let output = mpirun_command(3, &args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
    assert_eq!(perplexity(dir.path(), &output).to_bits(), single_process("512").to_bits());
}

#[test]
fn the_last_block_computes_only_the_scored_rows_after_attention() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path(), "512");
    let results = results(dir.path(), &run_evalmesh(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let task = &results["evalmesh"]["tasks"]["perplexity"];
    let (rows, scored) = (task["tokens_computed"].as_u64().unwrap(), task["tokens_scored"].as_u64().unwrap());
    // llama.cpp's way scores the second half of each window of 128.
    assert!(scored > 0 && 2 * scored <= rows, "{scored} of {rows} rows scored");
    // The config's shapes: hidden 576; 9 query heads and 3 KV heads of 64; an MLP of 1536
    // (gate, up, down); 30 layers; 49,152 tokens. Every row goes through every block's
    // QKV projection; the last block's output projection and MLP, like the head, take the
    // scored rows alone.
    let (qkv, out, mlp, head) = (576 * (576 + 2 * 192), 576 * 576, 3 * 576 * 1536, 576 * 49_152);
    let products = rows * 30 * (qkv + out + mlp) - (rows - scored) * (out + mlp) + scored * head;
    let flop = results["evalmesh"]["matmul_gflop"].as_f64().unwrap() * 1e9;
    // The count is an integer reported in GFLOP as an f64: equal to its rounding.
    assert!((flop / (2 * products) as f64 - 1.0).abs() < 1e-12, "{flop} FLOP, want {}", 2 * products);
    // Each window of 128 tokens is a causal sequence of 127 rows (its last token is only a
    // target): 127 · 128 / 2 query–key pairs.
    let windows = task["trees_computed"].as_u64().unwrap();
    assert_eq!(rows, windows * 127);
    assert_eq!(task["attention_pairs"].as_u64(), Some(windows * 127 * 128 / 2));
}
