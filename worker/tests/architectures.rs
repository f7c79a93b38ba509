//! Every model family's stage against its oracle (`evalmesh_oracles`): the log-probability
//! of every next token within the oracles' tolerance of transformers', and weights kept as
//! stored giving the bits of weights widened at load. The worker alone, so that these run
//! wherever its kernels do: on aarch64 under qemu too, and without AVX-512 (scripts/test.sh).

#![allow(clippy::unwrap_used)]

use evalmesh_common::protocol::WeightsInMemory;
use evalmesh_common::{MicroBatch, ScoreTree, TokenScore};
use evalmesh_oracles::{expected, folder, FAMILIES, TEXTS, TOLERANCE};
use evalmesh_worker::weights::HfModel;
use evalmesh_worker::{CpuBackend, LocalSum, StageInput, StageOutput, StageSpec, TransformerStage, WeightSource};

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
        for i in 0..TEXTS {
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
        for i in 0..TEXTS {
            let (ids, _) = expected(family, i);
            let bits = |s: &[TokenScore]| s.iter().map(|s| s.logprob.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&scores(&stored, &ids)), bits(&scores(&widened, &ids)), "{family} text {i}");
        }
    }
}
