//! `evalmesh inspect`: a model's architecture, block features, configuration, parameter
//! counts, the memory of its weights in each form `--weights-in-memory` keeps them and,
//! for a GGUF file, its tensors by type; a directory with only its
//! `config.json` (or the file itself) is read without weights or tokenizer.

use std::collections::BTreeMap;

use evalmesh_worker::weights::gguf::GgufFile;
use serde_json::json;

use crate::cli::args::InspectArgs;

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let path = args.model.path()?;
    let config = &super::model_config(&path)?;
    let weights = super::has_weights(&path);
    let vocabulary = match weights {
        true => Some(super::open_model(&args.model, false)?.1.tokenizer.vocab_size()),
        false => None,
    };
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let format = if !weights {
        "huggingface (config only)"
    } else if path.is_dir() {
        "huggingface"
    } else {
        let file = GgufFile::open(&path)?;
        for info in file.tensors.values() {
            let entry = by_type.entry(info.ggml_type.name().to_string()).or_default();
            entry.0 += 1;
            entry.1 += info.byte_len;
        }
        "gguf"
    };
    let (f32_bytes, stored_bytes) = super::weight_memory(&path, config)?;
    let summary = json!({
        "model": path.display().to_string(),
        "format": format,
        "architecture": config.architecture,
        "features": config.features(),
        "config": config,
        "parameters": config.parameter_count(),
        "active_parameters_per_token": config.active_parameter_count(),
        "tensor_types": by_type.iter().map(|(t, (n, b))| (t.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "vocabulary": vocabulary,
        "weights_in_memory_bytes": {"f32": f32_bytes, "stored": stored_bytes},
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
        return Ok(());
    }
    println!("model:        {}", path.display());
    println!("format:       {format}");
    println!(
        "architecture: {} ({} layers, width {}, {} heads, {} KV heads, head dim {}, FFN {}, vocab {})",
        config.architecture,
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.ffn_width(),
        config.vocab_size
    );
    println!("block:        {}", config.features().join("; "));
    println!(
        "rope:         {:?}; RMSNorm eps {:e}; tied embeddings: {}",
        config.rope_style, config.rms_norm_eps, config.tied_embeddings
    );
    println!("context:      {} positions", config.max_position);
    println!("parameters:   {} ({} active per token)", config.parameter_count(), config.active_parameter_count());
    for (t, (n, bytes)) in &by_type {
        println!("tensors {t:>5}: {n:>4} tensors, {bytes:>12} bytes");
    }
    println!("{}", super::weight_memory_line(f32_bytes, stored_bytes));
    Ok(())
}
