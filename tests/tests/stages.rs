//! The stage on the real model: a model split into two stages gives the single stage's
//! scores bit for bit, and a tree's scores do not depend on the trees packed beside it.

#![allow(clippy::unwrap_used)]

use evalmesh_common::{MicroBatch, ScoreTree, TokenScore};
use evalmesh_tests::test_model;
use evalmesh_worker::weights::GgufModel;
use evalmesh_worker::{CpuBackend, LocalSum, StageInput, StageOutput, StageSpec, TransformerStage, WeightSource};

fn trees() -> Vec<ScoreTree> {
    let ids = |start: u32, n: u32| (start..start + n).map(|i| (i * 7919) % 49152).collect::<Vec<u32>>();
    vec![
        ScoreTree { prefix: ids(1, 120), prefix_targets_from: 60, branches: vec![] },
        ScoreTree {
            prefix: ids(500, 30),
            prefix_targets_from: 30,
            branches: vec![ids(900, 5), ids(950, 1), ids(990, 12)],
        },
        ScoreTree { prefix: ids(2000, 3), prefix_targets_from: 1, branches: vec![ids(3000, 2)] },
    ]
}

fn bits(scores: &[TokenScore]) -> Vec<(u32, bool)> {
    scores.iter().map(|s| (s.logprob.to_bits(), s.greedy)).collect()
}

fn scores_of(output: StageOutput<evalmesh_worker::Matrix>) -> Vec<TokenScore> {
    match output {
        StageOutput::Scores(s) => s,
        StageOutput::Hidden(_) | StageOutput::Next(_) => panic!("expected scores from the last stage"),
    }
}

#[test]
fn two_stages_give_the_whole_models_bits() {
    let model = GgufModel::open(&test_model()).unwrap();
    let layers = model.config().num_layers;
    let trees = trees();
    let refs: Vec<&ScoreTree> = trees.iter().collect();
    let batch = MicroBatch::pack(&refs);

    let whole = TransformerStage::load(&model, StageSpec::whole(model.config()), CpuBackend::default()).unwrap();
    let expected = scores_of(whole.forward(&batch, StageInput::Tokens, &mut LocalSum).unwrap());
    drop(whole);

    let groups = 0..model.config().num_kv_heads;
    let spec = StageSpec { layers: 0..12, embedding: true, head: false, groups: groups.clone() };
    let first = TransformerStage::load(&model, spec, CpuBackend::default()).unwrap();
    let spec = StageSpec { layers: 12..layers, embedding: false, head: true, groups };
    let last = TransformerStage::load(&model, spec, CpuBackend::default()).unwrap();
    let StageOutput::Hidden(hidden) = first.forward(&batch, StageInput::Tokens, &mut LocalSum).unwrap() else {
        panic!("a first stage without the head returns hidden states");
    };
    let split = scores_of(last.forward(&batch, StageInput::Hidden(hidden), &mut LocalSum).unwrap());
    assert_eq!(bits(&split), bits(&expected));
    assert!(
        last.forward(&batch, StageInput::Tokens, &mut LocalSum).is_err(),
        "a stage without the embedding must refuse tokens"
    );
}

#[test]
fn a_trees_scores_do_not_depend_on_its_neighbours() {
    let model = GgufModel::open(&test_model()).unwrap();
    let stage = TransformerStage::load(&model, StageSpec::whole(model.config()), CpuBackend::default()).unwrap();
    let trees = trees();
    let together: Vec<&ScoreTree> = trees.iter().collect();
    let packed = scores_of(stage.forward(&MicroBatch::pack(&together), StageInput::Tokens, &mut LocalSum).unwrap());
    let per_tree = MicroBatch::unpack(&together, &packed).unwrap();
    for (tree, joint) in trees.iter().zip(per_tree) {
        let alone = scores_of(stage.forward(&MicroBatch::pack(&[tree]), StageInput::Tokens, &mut LocalSum).unwrap());
        let joint_flat: Vec<TokenScore> = joint.prefix.iter().chain(joint.branches.iter().flatten()).copied().collect();
        assert_eq!(bits(&alone), bits(&joint_flat));
    }
}
