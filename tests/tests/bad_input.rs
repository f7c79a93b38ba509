//! Bad inputs: each gives one error line naming the file and the problem, exit code 1
//! and no panic.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use evalmesh_tests::{
    assert_clean_error, edited_bytes, edited_model, gguf_tensor_offset_field, mpirun, repo_dir, run_evalmesh,
    test_model,
};
use evalmesh_worker::weights::gguf::Value;

fn run_with_model(model: &Path) -> std::process::Output {
    run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--perplexity-mode", "llamacpp"])
}

#[test]
fn truncated_gguf() {
    let (_dir, path) = edited_bytes(|bytes| bytes.truncate(bytes.len() / 2));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "past the end of the file", "truncated"]);
}

#[test]
fn wrong_magic() {
    let (_dir, path) = edited_bytes(|bytes| bytes[..4].copy_from_slice(b"GGML"));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "wrong magic", "not a GGUF file"]);
}

#[test]
fn unknown_tensor_type() {
    let (_dir, path) = edited_model(|model| {
        model.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap().type_code = 99;
    });
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.0.attn_q.weight", "type code 99"]);
}

#[test]
fn tensor_shape_contradicts_config() {
    let (_dir, path) = edited_model(|model| model.set("llama.feed_forward_length", Value::Uint(1024)));
    assert_clean_error(
        &run_with_model(&path),
        &[path.to_str().unwrap(), "blk.0.ffn_gate.weight", "1536 × 576", "1024 × 576"],
    );
}

#[test]
fn config_missing_a_field() {
    let (_dir, path) = edited_model(|model| model.remove("llama.embedding_length"));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "llama.embedding_length", "missing"]);
}

#[test]
fn hf_config_missing_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 1,
        "num_attention_heads": 1, "intermediate_size": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 16});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let output = run_with_model(dir.path());
    assert_clean_error(&output, &["config.json", "`hidden_size` is missing"]);
}

#[test]
fn missing_model_file() {
    let output = run_with_model(Path::new("/nonexistent/model.gguf"));
    assert_clean_error(&output, &["/nonexistent/model.gguf", "no such file"]);
}

#[test]
fn non_utf8_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    std::fs::write(&path, b"caf\xe9 au lait").unwrap();
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--data", path.to_str().unwrap()]);
    assert_clean_error(&output, &[path.to_str().unwrap(), "not UTF-8", "offset 3"]);
}

#[test]
fn missing_data_file() {
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--data", "/nonexistent/text.txt"]);
    assert_clean_error(&output, &["/nonexistent/text.txt", "No such file"]);
}

#[test]
fn text_too_short_for_llamacpp_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.txt");
    std::fs::write(&path, "Only a few words.").unwrap();
    let model = test_model();
    let output = run_evalmesh(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--data",
        path.to_str().unwrap(),
        "--perplexity-mode",
        "llamacpp",
    ]);
    assert_clean_error(&output, &["--ctx 512", "needs at least 1024"]);
}

#[test]
fn cuda_without_a_gpu() {
    // Without the cuda feature the error says how to build it; with it, no GPU loads here.
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--device", "cuda"]);
    assert_clean_error(&output, &["cuda", "--device cpu"]);
    let output = run_evalmesh(&["calibrate", "--model", test_model().to_str().unwrap(), "--device", "cuda"]);
    assert_clean_error(&output, &["cuda", "--device cpu"]);
    // lm-evaluation-harness's `cuda:N` is a GPU too, for each command; a malformed one is a
    // usage error, and under mpirun, where each worker takes its node's GPU, one GPU is refused.
    let (model, text) = (test_model(), repo_dir().join("coordinator/tasks/perplexity/wikitext-2-excerpt.txt"));
    for command in [&["run"][..], &["score", "--file", text.to_str().unwrap()], &["calibrate"]] {
        let mut args = command.to_vec();
        args.extend(["--model", model.to_str().unwrap(), "--device", "cuda:1"]);
        assert_clean_error(&run_evalmesh(&args), &["cuda", "--device cpu"]);
    }
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--device", "cuda:one"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("give cpu, cuda, or cuda:N"));
    let output = mpirun(2, &["run", "--model", model.to_str().unwrap(), "--device", "cuda:0"]);
    assert_clean_error(&output, &["--device cuda:0 names one process's GPU", "give --device cuda"]);
}

#[test]
fn gpu_flags_without_cuda() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--cuda-aware", "on"]);
    assert_clean_error(&output, &["--cuda-aware", "--device cuda"]);
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--gpu-precision", "f32"]);
    assert_clean_error(&output, &["--gpu-precision", "--device cuda"]);
}

#[test]
fn cpu_weights_flag_with_cuda() {
    let model = test_model();
    let output =
        run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--device", "cuda", "--weights-in-memory", "stored"]);
    assert_clean_error(&output, &["--weights-in-memory", "--device cuda", "--gpu-precision"]);
}

#[test]
fn empty_model_file() {
    let (_dir, path) = edited_bytes(Vec::clear);
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "empty"]);
}

#[test]
fn unsupported_gguf_version() {
    let (_dir, path) = edited_bytes(|bytes| bytes[4..8].copy_from_slice(&99u32.to_le_bytes()));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "version 99", "2 and 3"]);
}

/// Rewrites one tensor's data offset in the test model's header.
fn with_tensor_offset(name: &str, offset: impl Fn(u64) -> u64) -> (tempfile::TempDir, PathBuf) {
    edited_bytes(|bytes| {
        let field = gguf_tensor_offset_field(bytes, name);
        let old = u64::from_le_bytes(bytes[field..field + 8].try_into().unwrap());
        bytes[field..field + 8].copy_from_slice(&offset(old).to_le_bytes());
    })
}

#[test]
fn tensor_offset_past_the_end() {
    let (_dir, path) = with_tensor_offset("blk.7.attn_v.weight", |_| 1 << 40);
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.7.attn_v.weight", "past the end"]);
}

#[test]
fn overlapping_tensors() {
    // Move blk.2.attn_k.weight's data 32 bytes back, into whichever tensor is stored before it.
    let (_dir, path) = with_tensor_offset("blk.2.attn_k.weight", |offset| offset - 32);
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.2.attn_k.weight", "overlap"]);
}

#[test]
fn missing_tensor() {
    let (_dir, path) = edited_model(|model| model.tensors.retain(|t| t.name != "blk.5.ffn_up.weight"));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.5.ffn_up.weight", "missing"]);
}

#[test]
fn non_finite_weight() {
    let (_dir, path) = edited_model(|model| {
        let t = model.tensors.iter_mut().find(|t| t.name == "blk.9.attn_output.weight").unwrap();
        t.bytes[..2].copy_from_slice(&[0x00, 0x7C]); // the first Q4_1 block's scale: f16 infinity
    });
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "blk.9.attn_output.weight", "non-finite"]);
}

#[test]
fn heads_that_do_not_divide_the_width() {
    let (_dir, path) = edited_model(|model| model.set("llama.attention.head_count", Value::Uint(7)));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "head_count", "7"]);
}

#[test]
fn zero_layers() {
    let (_dir, path) = edited_model(|model| model.set("llama.block_count", Value::Uint(0)));
    assert_clean_error(&run_with_model(&path), &[path.to_str().unwrap(), "block_count", "0"]);
}

#[test]
fn missing_tokenizer_file() {
    let model = test_model();
    let output =
        run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--tokenizer", "/nonexistent/tokenizer.json"]);
    assert_clean_error(&output, &["/nonexistent/tokenizer.json"]);
}

#[test]
fn tokenizer_with_another_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..100).map(|i| (format!("t{i}"), serde_json::Value::from(i))).collect();
    let tokenizer = serde_json::json!({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
        "pre_tokenizer": {"type": "Whitespace"}});
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--tokenizer", path.to_str().unwrap()]);
    assert_clean_error(&output, &[path.to_str().unwrap(), "100", "49152"]);
}

#[test]
fn pipeline_without_mpirun() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--strategy", "pp"]);
    assert_clean_error(&output, &["--strategy pp", "mpirun -np 3"]);
    // The example launch counts the coordinator and every worker the sizes ask for.
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--dp", "2", "--pp", "2"]);
    assert_clean_error(&output, &["--dp 2", "mpirun -np 5"]);
}

#[test]
fn output_folder_that_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = file.join("results.json");
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_clean_error(&output, &[file.to_str().unwrap()]);
}

#[test]
fn zero_batch_tokens() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--batch-tokens", "0"]);
    assert_clean_error(&output, &["--batch-tokens"]);
}

#[test]
fn zero_context() {
    let output = run_evalmesh(&["run", "--model", test_model().to_str().unwrap(), "--ctx", "0"]);
    assert_clean_error(&output, &["--ctx"]);
}

#[test]
fn context_longer_than_the_model_names_its_positions() {
    for mode in ["rolling", "llamacpp"] {
        let model = test_model();
        let args = ["run", "--model", model.to_str().unwrap(), "--ctx", "8193", "--perplexity-mode", mode];
        assert_clean_error(&run_evalmesh(&args), &["--ctx 8193", "the model's 8192 positions"]);
    }
}

#[test]
fn journal_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, &evalmesh::tasks::perplexity::BUILTIN_TEXT[..2000]).unwrap();
    let out = dir.path().join("r.json");
    let (_other_dir, other) = edited_model(|model| model.set("general.name", Value::String("another model".into())));
    let run = |model: &Path, extra: &[&str]| {
        let mut args = vec!["run", "--model", model.to_str().unwrap(), "--data", text.to_str().unwrap()];
        args.extend_from_slice(&["--ctx", "128", "--output", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        run_evalmesh(&args)
    };
    assert!(run(&test_model(), &[]).status.success());
    let journal = dir.path().join("r.journal.jsonl");
    let before = std::fs::read(&journal).unwrap();
    assert_clean_error(&run(&other, &["--resume"]), &[journal.to_str().unwrap(), "another model", "--overwrite"]);
    assert_eq!(std::fs::read(&journal).unwrap(), before, "the journal changed");
}

#[test]
fn hostile_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 16});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    // A header length of 2^60 bytes in an 8-byte file.
    std::fs::write(dir.path().join("model.safetensors"), (1u64 << 60).to_le_bytes()).unwrap();
    let output = run_with_model(dir.path());
    assert_clean_error(&output, &["model.safetensors"]);
}

#[test]
fn finite_weights_whose_activations_overflow() {
    // The final norm's scales near f32's largest value: the logits overflow, the scores are NaN.
    let (_dir, path) = edited_model(|model| {
        let t = model.tensors.iter_mut().find(|t| t.name == "output_norm.weight").unwrap();
        assert_eq!(t.type_code, 0, "output_norm.weight is F32");
        t.bytes = 3.0e38f32.to_le_bytes().repeat(t.bytes.len() / 4);
    });
    assert_clean_error(&run_with_model(&path), &["non-finite scores", "overflow"]);
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 16});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    // The header promises 10 × 8 f32 (320 bytes); the file holds 16.
    let header = br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[10,8],"data_offsets":[0,320]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    assert_clean_error(
        &run_with_model(dir.path()),
        &["model.safetensors", "not a valid safetensors file", "not fully covered"],
    );
}

#[test]
fn tokenizer_merge_outside_the_vocabulary() {
    // The tokenizers library panics on this merge (longer than every token); evalmesh refuses it first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..49152).map(|i| (format!("t{i}"), serde_json::Value::from(i))).collect();
    let tokenizer =
        serde_json::json!({"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": ["t40000 t40001"]}});
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let model = test_model();
    let output = run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--tokenizer", path.to_str().unwrap()]);
    assert_clean_error(&output, &[path.to_str().unwrap(), "merge 0 `t40000 t40001`"]);
}
