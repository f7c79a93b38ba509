//! What each fuzz target does with its input (`fuzz/fuzz_targets/` calls these), kept
//! here so that `tests/tests/fuzz_regressions.rs` replays every input a fuzzer ever
//! crashed on, on every test run, without the fuzzing toolchain. Each function must
//! return, whatever the bytes: a panic, an abort or an unbounded allocation is the bug.

use std::path::{Path, PathBuf};

use evalmesh::tasks::catalog::{Catalog, Source};
use evalmesh_common::cost::{BatchShape, Placement};
use evalmesh_common::hardware::HardwareProfile;
use evalmesh_common::protocol::{self, ToCoordinator, ToWorker};
use evalmesh_common::{strategy, HfConfig};

/// A scratch file for inputs the code under test reads from disk, one per process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("evalmesh-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir.join(name)
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A GGUF file: its header, the model configuration from its metadata, the tensors'
/// shapes against it, and its tokenizer, as `evalmesh run` opens a model.
pub fn gguf(data: &[u8]) {
    let path = scratch("model.gguf");
    write(&path, data);
    let _ = evalmesh::model::Model::open(&path, None, false);
}

/// A safetensors file's header, then every tensor's data sliced as a load would.
pub fn safetensors_header(data: &[u8]) {
    if let Ok((start, metadata)) = evalmesh_worker::weights::read_shard_header(Path::new("fuzz"), data) {
        for info in metadata.tensors().values() {
            let (from, to) = info.data_offsets;
            assert!(start + from <= start + to && start + to <= data.len(), "tensor data outside the file");
        }
    }
}

/// A Hugging Face `config.json`, then the plans `evalmesh plan` would weigh for it on
/// 8 GPUs.
pub fn config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = HfConfig::parse(text).and_then(|c| c.to_model_config()) else { return };
    let Ok(profile) = HardwareProfile::built_in("h100") else { return };
    let batches = vec![BatchShape::sequences(4, 512, 256); 4];
    let place = Placement { threads_per_worker: 1, workers_per_node: 8, lanes: 1 };
    let candidates = strategy::candidates(&config, 8, &batches, &profile, place);
    let _ = strategy::choose(&candidates);
}

/// The benchmark files: the first byte picks a task (and a few-shot count), the rest is
/// its data file (PIQA's labels follow its questions after a NUL byte).
pub fn task_files(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    const TASKS: [(&str, &str); 9] = [
        ("multiple_choice", "mc.jsonl"),
        ("hellaswag", "hellaswag/hellaswag_val.jsonl"),
        ("arc_easy", "arc/ARC-Easy-Test.jsonl"),
        ("piqa", "piqa/valid.jsonl"),
        ("winogrande", "winogrande/winogrande_xl_validation.jsonl"),
        ("lambada_openai", "lambada/lambada_test.jsonl"),
        ("wikitext", "wikitext-2/wiki.test.raw"),
        ("perplexity", "text.txt"),
        ("mmlu", "mmlu/test/abstract_algebra_test.csv"),
    ];
    let (task, file) = TASKS[pick as usize % TASKS.len()];
    let dir = scratch("data");
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join(file);
    match task {
        "piqa" => {
            let (questions, labels) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            write(&path, questions);
            write(&dir.join("piqa/valid-labels.lst"), labels);
        }
        "mmlu" => {
            write(&path, rest);
            write(&dir.join("mmlu/dev/abstract_algebra_dev.csv"), rest);
        }
        _ => write(&path, rest),
    }
    let source = Source {
        data_dir: Some(&dir),
        data_file: Some(&path),
        num_fewshot: (pick as usize / TASKS.len()) % 3,
        ..Default::default()
    };
    if let Ok(catalog) = Catalog::new(None) {
        let _ = catalog.load(task, &source);
    }
}

/// A control message as a worker or the coordinator receives it: decoded within the
/// message limit, and a micro-batch checked as the worker checks it before computing.
pub fn protocol_message(data: &[u8]) {
    if let Ok(message) = protocol::decode::<ToWorker>(data) {
        if let ToWorker::Batch { batch, .. } = &message {
            if batch.validate(49152).is_ok() {
                let _ = batch.positions();
            }
        }
        round_trips(&message);
    }
    if let Ok(message) = protocol::decode::<ToCoordinator>(data) {
        round_trips(&message);
    }
}

/// A decoded message encodes to bytes that decode and encode to the same bytes (bytes,
/// not values, are compared: a NaN in a message is not equal to itself).
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) {
    let bytes = protocol::encode(message);
    let again: T = protocol::decode(&bytes).unwrap_or_else(|e| panic!("an encoded message does not decode: {e}"));
    assert!(protocol::encode(&again) == bytes, "a message changed in a round trip");
}

/// What a fuzz target does with one input.
pub type Check = fn(&[u8]);

/// Every fuzz target by name (its file in `fuzz/fuzz_targets`), with its check.
pub const TARGETS: [(&str, Check); 5] = [
    ("gguf", gguf),
    ("safetensors_header", safetensors_header),
    ("config_json", config_json),
    ("task_files", task_files),
    ("protocol_message", protocol_message),
];

/// Inputs the repository does not keep as files, each as (target, name, bytes): the
/// binary seeds and former crashes, made here, and the `config.json` fixtures. The
/// regression test replays them; `examples/fuzz_seeds.rs` writes them into the corpus
/// before a fuzzing run.
pub fn generated_inputs() -> Vec<(&'static str, String, Vec<u8>)> {
    let letters = ["a", "b", "c", "d", "e", "f", "g"];
    let mut inputs = vec![
        ("gguf", "tiny-llama.gguf".to_string(), tiny_gguf(&[&letters[..], &["ab"]].concat(), &["a b"])),
        // The merge makes a token longer than every token: the tokenizers crate panicked.
        (
            "gguf",
            "merge-longer-than-every-token.gguf".to_string(),
            tiny_gguf(&[&letters[..], &["h"]].concat(), &["a b"]),
        ),
        ("safetensors_header", "two-tensors.safetensors".to_string(), two_tensor_safetensors()),
        // A string length claiming 738 MB in a 10-byte message.
        (
            "protocol_message",
            "string-length-claims-738-mb.bin".to_string(),
            vec![0, 0x17, 0xfc, 4, 0, 1, 0x2c, 0, 0xff, 0],
        ),
        // A Ready message whose seconds are NaN: it must round-trip by its bytes.
        ("protocol_message", "nan-seconds-round-trip.bin".to_string(), [&[0u8, 0, 0x50, 0][..], &[0xff; 8]].concat()),
    ];
    let tree = evalmesh_common::ScoreTree {
        prefix: vec![1, 2, 3],
        prefix_targets_from: 1,
        branches: vec![vec![4, 5], vec![6]],
    };
    let batch = evalmesh_common::MicroBatch::pack(&[&tree]);
    let messages = [
        ("batch.bin", protocol::encode(&ToWorker::Batch { id: 7, batch })),
        ("report.bin", protocol::encode(&ToWorker::Report { trace: true })),
        ("shutdown.bin", protocol::encode(&ToWorker::Shutdown)),
        (
            "ready.bin",
            protocol::encode(&ToCoordinator::Ready {
                version: 2,
                threads: 2,
                lanes: 2,
                bytes_read: 1000,
                load_seconds: 0.5,
                provenance: "cpu".into(),
            }),
        ),
    ];
    inputs.extend(messages.into_iter().map(|(name, bytes)| ("protocol_message", name.to_string(), bytes)));
    let fixtures = crate::repo_dir().join("tests/fixtures/configs");
    for name in ["llama-3-8b.json", "qwen2-72b.json"] {
        let path = fixtures.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        inputs.push(("config_json", name.to_string(), bytes));
    }
    inputs
}

/// A one-layer Llama GGUF (width 8, two heads, one KV head, F32) with a gpt2-style
/// tokenizer of `tokens` and `merges`.
fn tiny_gguf(tokens: &[&str], merges: &[&str]) -> Vec<u8> {
    use evalmesh_worker::weights::gguf::writer::{write, RawTensor};
    use evalmesh_worker::weights::gguf::Value;
    let tensor = |name: &str, dims: &[u64]| {
        let count = dims.iter().product::<u64>() as usize;
        let bytes = (0..count).flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes()).collect();
        RawTensor { name: name.into(), dims: dims.to_vec(), type_code: 0, bytes }
    };
    let mut tensors = vec![tensor("token_embd.weight", &[8, tokens.len() as u64]), tensor("output_norm.weight", &[8])];
    for (name, dims) in [
        ("attn_norm", &[8][..]),
        ("attn_q", &[8, 8]),
        ("attn_k", &[8, 4]),
        ("attn_v", &[8, 4]),
        ("attn_output", &[8, 8]),
        ("ffn_norm", &[8]),
        ("ffn_gate", &[8, 16]),
        ("ffn_up", &[8, 16]),
        ("ffn_down", &[16, 8]),
    ] {
        tensors.push(tensor(&format!("blk.0.{name}.weight"), dims));
    }
    let strings = |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::Uint(1)),
        ("llama.embedding_length", Value::Uint(8)),
        ("llama.feed_forward_length", Value::Uint(16)),
        ("llama.attention.head_count", Value::Uint(2)),
        ("llama.attention.head_count_kv", Value::Uint(1)),
        ("llama.context_length", Value::Uint(32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::Float(1e-5)),
        ("llama.rope.freq_base", Value::Float(10000.0)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.bos_token_id", Value::Uint(0)),
    ];
    write(&metadata, &tensors)
}

/// A safetensors file of an F32 2×2 tensor and a BF16 vector of 4.
fn two_tensor_safetensors() -> Vec<u8> {
    let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]}}"#;
    [&(header.len() as u64).to_le_bytes()[..], header, &[0; 24]].concat()
}
