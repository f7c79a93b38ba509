//! `run --random-weights`: a model drawn at random from its config.json alone (the test
//! model's shape, with the test model's tokenizer) scores like a model that knows nothing,
//! and its scores are the same bits whatever the micro-batch budget, and in a pipeline
//! whose last stage holds the tied head without the embedding.

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

/// The perplexity of a finished run's results in `dir`.
fn perplexity(dir: &Path, output: &Output) -> f64 {
    print_output("evalmesh run --random-weights", output);
    assert!(output.status.success());
    let results = std::fs::read_to_string(dir.join("results.json")).unwrap();
    let results: serde_json::Value = serde_json::from_str(&results).unwrap();
    results["results"]["perplexity"]["perplexity,none"].as_f64().unwrap()
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
