//! Every model family computes the same bits whatever the layout: for each oracle model of
//! `shared/reference/architectures/`, the samples of a multiple-choice run and a rolling
//! perplexity run are byte-identical in one process at `--batch-tokens` 64 and 4096, and
//! under `mpirun` as a pipeline of two stages and as two tensor-parallel shards.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use evalmesh_oracles::{folder, text as oracle_text, FAMILIES};
use evalmesh_tests::{print_output, read_samples, shared_dir, RunArgs};

/// The samples of 12 HellaSwag items and of the oracle's longest text's rolling
/// perplexity, computed by `launch` with `extra` arguments.
fn samples(family: &str, dir: &Path, launch: impl Fn(&RunArgs) -> Output, extra: &[&str]) -> Vec<u8> {
    let model = &folder(family);
    let text = dir.join("text.txt");
    std::fs::write(&text, oracle_text(family, 1)).unwrap();
    let data = shared_dir().join("reference/hellaswag-llamacpp-dev.jsonl");
    let mc = RunArgs::with_model(model).flag("--task", "multiple_choice").path("--data", &data).flag("--limit", 12);
    let ppl = RunArgs::with_model(model).flag("--task", "perplexity").path("--data", &text);
    let mut all = Vec::new();
    for (args, name) in [(mc, "multiple_choice"), (ppl, "perplexity")] {
        let out = dir.join(format!("{name}.json"));
        let output = launch(&args.extend(&["--log-samples", "--overwrite"]).path("--output", &out).extend(extra));
        if !output.status.success() {
            print_output(&format!("{} {extra:?}", model.display()), &output);
            panic!("{} {extra:?} failed", model.display());
        }
        all.extend(read_samples(dir, name));
    }
    all
}

#[test]
fn every_family_gives_the_same_bits_in_every_layout() {
    let layouts: [(usize, &[&str], &str); 3] = [
        (1, &["--batch-tokens", "64"], "batch 64"),
        (3, &["--strategy", "pp"], "PP=2"),
        (3, &["--strategy", "tp"], "TP=2"),
    ];
    for family in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let single = samples(family, dir.path(), RunArgs::run, &["--batch-tokens", "4096"]);
        for (np, layout, name) in layouts {
            let launch = |args: &RunArgs| if np == 1 { args.run() } else { args.mpirun(np) };
            let got = samples(family, dir.path(), launch, layout);
            assert!(got == single, "{family}, {name}: scores differ from the single process at --batch-tokens 4096");
        }
    }
}
