//! Every model family against its oracle: for each folder of
//! `shared/reference/architectures/` (a tiny random model that Hugging Face transformers
//! wrote, with transformers' log-probabilities on three texts), evalmesh's stage reproduces
//! the log-probability of every next token within 1e-4 nats, and `evalmesh score` the
//! tokens and the whole distribution at every position.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use evalmesh_common::protocol::WeightsInMemory;
use evalmesh_common::{MicroBatch, ScoreTree, TokenScore};
use evalmesh_tests::{path_str, run_evalmesh, shared_dir};
use evalmesh_worker::weights::HfModel;
use evalmesh_worker::{CpuBackend, LocalSum, StageInput, StageOutput, StageSpec, TransformerStage, WeightSource};
use safetensors::SafeTensors;

const FAMILIES: [&str; 10] =
    ["llama3", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "mixtral", "olmo2"];

/// Both sides compute in f32 from the same bf16 weights; only the order of summation
/// differs (transformers' eager attention and matmuls against evalmesh's blocked ones),
/// which moves a log-probability by a few 1e-6 over these 2–3 layers.
const TOLERANCE: f64 = 1e-4;

fn folder(family: &str) -> PathBuf {
    shared_dir().join("reference/architectures").join(family)
}

/// Text `i`'s token ids and transformers' log-probabilities (`n × vocab`).
fn expected(family: &str, i: usize) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(folder(family).join("expected.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let ids = file.tensor(&format!("text{i}.ids")).unwrap();
    let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let logprobs = file.tensor(&format!("text{i}.logprobs")).unwrap();
    let logprobs = logprobs.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (ids, logprobs)
}

fn scores(stage: &TransformerStage<CpuBackend>, ids: &[u32]) -> Vec<TokenScore> {
    let tree = ScoreTree { prefix: ids.to_vec(), prefix_targets_from: 1, branches: vec![] };
    match stage.forward(&MicroBatch::pack(&[&tree]), StageInput::Tokens, &mut LocalSum).unwrap() {
        StageOutput::Scores(s) => s,
        StageOutput::Hidden(_) | StageOutput::Next(_) => panic!("a whole stage returns scores"),
    }
}

#[test]
fn every_family_reproduces_transformers_log_probabilities() {
    let mut failures = Vec::new();
    for family in FAMILIES {
        let model = HfModel::open(&folder(family)).unwrap();
        let vocab = model.config().vocab_size;
        let stage = TransformerStage::load(&model, StageSpec::whole(model.config()), CpuBackend::default()).unwrap();
        let mut worst = 0.0f64;
        for i in 0..3 {
            let (ids, logprobs) = expected(family, i);
            let got = scores(&stage, &ids);
            assert_eq!(got.len(), ids.len() - 1);
            for (position, score) in got.iter().enumerate() {
                let want = logprobs[position * vocab + ids[position + 1] as usize] as f64;
                worst = worst.max((score.logprob as f64 - want).abs());
            }
        }
        eprintln!("{family}: largest difference {worst:.2e}");
        if worst > TOLERANCE {
            failures.push(format!("{family}: {worst:.2e}"));
        }
    }
    assert!(failures.is_empty(), "beyond {TOLERANCE}: {failures:?}");
}

/// Weights kept as the files store them (bf16), widened strip by strip inside each
/// product, give every family's scores bit for bit as weights widened at load, and take
/// half their memory.
#[test]
fn stored_weights_score_every_family_to_the_same_bits() {
    for family in FAMILIES {
        let model = HfModel::open(&folder(family)).unwrap();
        let spec = StageSpec::whole(model.config());
        let widened = TransformerStage::load(&model, spec.clone(), CpuBackend::new(WeightsInMemory::F32)).unwrap();
        let stored = TransformerStage::load(&model, spec, CpuBackend::new(WeightsInMemory::Stored)).unwrap();
        // bf16 is half of f32, whose rows the backend pads.
        assert!(stored.weight_bytes() * 2 <= widened.weight_bytes(), "{family}: stored weights take more memory");
        for i in 0..3 {
            let (ids, _) = expected(family, i);
            let bits = |s: &[TokenScore]| s.iter().map(|s| s.logprob.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&scores(&stored, &ids)), bits(&scores(&widened, &ids)), "{family} text {i}");
        }
    }
}

/// `evalmesh score --top VOCAB` lists every token at every position: the text's tokens are
/// the tokenizer's (BOS where it adds one), and each position's whole distribution is
/// transformers' within the tolerance.
#[test]
fn score_command_gives_every_tokens_log_probability() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let model = folder(family);
        let texts: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("texts.json")).unwrap()).unwrap();
        for i in 0..3 {
            let (ids, logprobs) = expected(family, i);
            let vocab = logprobs.len() / ids.len();
            let text = dir.path().join("text.txt");
            std::fs::write(&text, texts["texts"][i]["text"].as_str().unwrap()).unwrap();
            let top = vocab.to_string();
            let args = ["score", "--model", path_str(&model), "--file", path_str(&text), "--top", &top];
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
