//! Every model family through the binary against its oracle (`evalmesh_oracles`):
//! `evalmesh score` gives the tokenizer's tokens and, at every position, the whole
//! distribution within the oracles' tolerance of transformers'. The stage's own
//! comparison, and stored weights against widened ones, are the worker's tests
//! (`worker/tests/architectures.rs`).

#![allow(clippy::unwrap_used)]

use evalmesh_oracles::{expected, folder, text, FAMILIES, TEXTS, TOLERANCE};
use evalmesh_tests::{path_str, run_evalmesh};

/// `evalmesh score --top VOCAB` lists every token at every position: the text's tokens are
/// the tokenizer's (BOS where it adds one), and each position's whole distribution is
/// transformers' within the tolerance.
#[test]
fn score_command_gives_every_tokens_log_probability() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let model = folder(family);
        for i in 0..TEXTS {
            let (ids, logprobs) = expected(family, i);
            let vocab = logprobs.len() / ids.len();
            let file = dir.path().join("text.txt");
            std::fs::write(&file, text(family, i)).unwrap();
            let top = vocab.to_string();
            let args = ["score", "--model", path_str(&model), "--file", path_str(&file), "--top", &top];
            let output = run_evalmesh(&args);
            assert!(output.status.success(), "{family}: {}", String::from_utf8_lossy(&output.stderr));
            let lines: Vec<serde_json::Value> = output
                .stdout
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            let got_ids: Vec<u32> = lines.iter().map(|l| l["id"].as_u64().unwrap() as u32).collect();
            assert_eq!(got_ids, ids, "{family} text {i}: tokens differ from the tokenizer's");
            assert!(lines[0]["logprob"].is_null());
            let mut worst = 0.0f64;
            for (position, line) in lines.iter().enumerate().skip(1) {
                let row = &logprobs[(position - 1) * vocab..position * vocab];
                let alternatives = line["top"].as_array().unwrap();
                assert_eq!(alternatives.len(), vocab);
                for alternative in alternatives {
                    let id = alternative["id"].as_u64().unwrap() as usize;
                    worst = worst.max((alternative["logprob"].as_f64().unwrap() - row[id] as f64).abs());
                }
                worst = worst.max((line["logprob"].as_f64().unwrap() - row[ids[position] as usize] as f64).abs());
            }
            assert!(worst < TOLERANCE, "{family} text {i}: {worst:.2e} from transformers");
        }
    }
}
