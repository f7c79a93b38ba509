//! What each fuzz target does with its input (`fuzz/fuzz_targets/` calls these), kept
//! here so that `tests/tests/fuzz_regressions.rs` replays every input a fuzzer ever
//! crashed on, on every test run, without the fuzzing toolchain. Each function must
//! return, whatever the bytes: a panic, an abort or an unbounded allocation is the bug.

use std::path::{Path, PathBuf};

use evalmesh::tasks::formats::{self, Source};
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
    let _ = evalmesh::model::Model::open(&path, None);
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
    let Ok(config) = HfConfig::parse(text).and_then(|c| c.to_plan_config()) else { return };
    let Ok(profile) = HardwareProfile::built_in("h100") else { return };
    let batches = vec![BatchShape::sequences(4, 512, 256); 4];
    let place = Placement { threads_per_worker: 1, workers_per_node: 8 };
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
    let source =
        Source { data_dir: Some(&dir), data_file: Some(&path), num_fewshot: (pick as usize / TASKS.len()) % 3 };
    let _ = formats::load(task, &source);
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
