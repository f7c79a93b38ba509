//! The Hugging Face route, proven: the test model's widened weights written as a sharded
//! safetensors directory (Q/K rows back in rotate-half order, `config.json`, a
//! `tokenizer.json` built from the GGUF vocabulary) give the same tokens and the same
//! per-token log-probabilities as the GGUF file, so both RoPE conventions and both loaders agree.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use evalmesh::tokenizer::{gguf_tokenizer_json, TextTokenizer};
use evalmesh_common::{MicroBatch, ModelConfig, ScoreTree, TokenScore};
use evalmesh_tests::{run_evalmesh, test_model};
use evalmesh_worker::weights::{hf_tensor, load, GgufModel, HfModel, LayerTensor, TensorId};
use evalmesh_worker::{
    CpuBackend, LocalSum, Matrix, StageInput, StageOutput, StageSpec, TransformerStage, WeightSource,
};
use safetensors::tensor::{Dtype, TensorView};

/// GGUF stores each head's Q/K rows so that dimensions (2i, 2i+1) rotate together;
/// Hugging Face keeps (i, i + d/2). Row `half·d/2 + i` of a head in HF order is row `2i + half` in GGUF order.
fn to_rotate_half(m: &Matrix, head_dim: usize) -> Matrix {
    let mut out = m.clone();
    for head in 0..m.rows / head_dim {
        for half in 0..2 {
            for i in 0..head_dim / 2 {
                let hf_row = head * head_dim + half * head_dim / 2 + i;
                let gguf_row = head * head_dim + 2 * i + half;
                out.data[hf_row * m.cols..(hf_row + 1) * m.cols].copy_from_slice(m.row(gguf_row));
            }
        }
    }
    out
}

fn hf_config(c: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "rope_theta": c.ropes[0].theta, "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position,
        "tie_word_embeddings": c.tied_embeddings,
    })
}

/// Writes the GGUF model as an HF directory with two safetensors shards and an index.
fn export_hf(gguf: &GgufModel, dir: &Path) {
    let c = gguf.config().clone();
    let mut ids = vec![TensorId::Embedding, TensorId::FinalNorm];
    for l in 0..c.num_layers {
        use LayerTensor::*;
        ids.extend([AttnNorm, Q, K, V, O, FfnNorm, Gate, Up, Down].map(|t| TensorId::Layer(l, t)));
    }
    let mut shards: [Vec<(String, Matrix)>; 2] = Default::default();
    for id in ids {
        let mut m = load(gguf, id).unwrap();
        if matches!(id, TensorId::Layer(_, LayerTensor::Q | LayerTensor::K)) {
            m = to_rotate_half(&m, c.head_dim);
        }
        let shard = matches!(id, TensorId::Layer(l, _) if l >= c.num_layers / 2) as usize;
        shards[shard].push((hf_tensor(&c, id).0, m));
    }
    let mut weight_map = BTreeMap::new();
    for (i, tensors) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(name, m)| {
                let shape = if m.rows == 1 { vec![m.cols] } else { vec![m.rows, m.cols] };
                (name.clone(), m.data.iter().flat_map(|v| v.to_le_bytes()).collect(), shape)
            })
            .collect();
        let views: Vec<(String, TensorView)> =
            bytes.iter().map(|(n, b, s)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for (name, _) in tensors {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), hf_config(&c).to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), gguf_tokenizer_json(&gguf.file).unwrap().to_string()).unwrap();
}

fn scores(source: &dyn WeightSource, trees: &[ScoreTree]) -> Vec<TokenScore> {
    let stage = TransformerStage::load(source, StageSpec::whole(source.config()), CpuBackend::default()).unwrap();
    let refs: Vec<&ScoreTree> = trees.iter().collect();
    match stage.forward(&MicroBatch::pack(&refs), StageInput::Tokens, &mut LocalSum).unwrap() {
        StageOutput::Scores(s) => s,
        StageOutput::Hidden(_) | StageOutput::Next(_) => panic!("a whole-model stage returns scores"),
    }
}

#[test]
fn hf_directory_gives_the_gguf_log_probabilities() {
    let gguf = GgufModel::open(&test_model()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_hf(&gguf, dir.path());
    let hf = HfModel::open(dir.path()).unwrap();
    assert_eq!(hf.config().rope_style, evalmesh_common::RopeStyle::RotateHalf);

    let text = evalmesh::tasks::perplexity::BUILTIN_TEXT;
    let gguf_tokens = TextTokenizer::from_gguf(&gguf.file).unwrap().encode(text).unwrap();
    let hf_tokens = TextTokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap().encode(text).unwrap();
    assert_eq!(gguf_tokens, hf_tokens, "tokenizer.json built from the GGUF vocabulary tokenizes differently");

    // A 300-token sequence scored at every position, and a tree with three branches.
    let trees = vec![
        ScoreTree { prefix: gguf_tokens[..300].to_vec(), prefix_targets_from: 1, branches: vec![] },
        ScoreTree {
            prefix: gguf_tokens[300..340].to_vec(),
            prefix_targets_from: 40,
            branches: vec![
                gguf_tokens[340..350].to_vec(),
                gguf_tokens[400..401].to_vec(),
                gguf_tokens[500..520].to_vec(),
            ],
        },
    ];
    let a = scores(&gguf, &trees);
    let b = scores(&hf, &trees);
    assert_eq!(a.len(), 299 + 31);
    let mut worst = 0.0f64;
    let mut total = 0.0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        total += (x.logprob as f64 - y.logprob as f64).abs() / (y.logprob.abs() as f64).max(1.0);
        // The two routes multiply the same f32 weights; only the order of the 64 terms in
        // each query·key product differs (permuted head dimensions), a float rounding of
        // ~1e-7 relative that grows through 30 layers. Relative to the log-probability,
        // with 1 as the floor so that near-certain tokens are not judged on noise alone.
        // Measured: at most 1.8e-5 over these 330 targets, 1.1e-6 on average; a wrong
        // weight layout or rotation would move them by whole units.
        let err = (x.logprob as f64 - y.logprob as f64).abs() / (y.logprob.abs() as f64).max(1.0);
        worst = worst.max(err);
        assert!(err < 5e-5, "target {i}: GGUF {} vs HF {} ({err:.2e})", x.logprob, y.logprob);
    }
    let mean = total / a.len() as f64;
    eprintln!("largest relative difference between the routes: {worst:.2e}, mean {mean:.2e}");
    assert!(mean < 5e-6, "mean relative difference {mean:.2e}: more than rounding noise");

    let output = run_evalmesh(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("format:       huggingface"));
}
