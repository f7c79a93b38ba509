//! One module per `evalmesh` command, each a function from its checked arguments to its
//! output (printed, or written to the files it names).

pub mod calibrate;
pub mod inspect;
pub mod pingpong;
pub mod plan;
pub mod run;
pub mod score;
pub mod tokenize;

use std::path::{Path, PathBuf};

use anyhow::Context;
use evalmesh_common::cost::weight_values;
use evalmesh_common::strategy::gigabytes;
use evalmesh_common::{HfConfig, ModelConfig, StageSpec};
use evalmesh_worker::weights::{config_file, HfModel};

use crate::cli::args::ModelArgs;
use crate::model::Model;
use crate::tasks::read_text;

/// The model `--model` names (or the cached test model) with its tokenizer.
fn open_model(args: &ModelArgs, random_weights: bool) -> anyhow::Result<(PathBuf, Model)> {
    let path = args.path()?;
    let model = Model::open(&path, args.tokenizer.as_deref(), random_weights)?;
    Ok((path, model))
}

/// The memory of a model's weights in each form `--weights-in-memory` keeps them: its
/// matrices widened to f32, and every tensor as its files store it (`None` where `path` is
/// a configuration without weights).
pub fn weight_memory(path: &Path, config: &ModelConfig) -> anyhow::Result<(u64, Option<u64>)> {
    let f32_bytes = weight_values(config, &StageSpec::whole(config)) * 4;
    let stored = match has_weights(path) {
        true => Some(evalmesh_worker::weights::open(path, false)?.stored_bytes()),
        false => None,
    };
    Ok((f32_bytes, stored))
}

/// Whether `path` is a model with weights: a GGUF file, or a directory with safetensors,
/// not a config.json or a directory with only that.
pub fn has_weights(path: &Path) -> bool {
    match path.is_dir() {
        true => HfModel::has_weights(path),
        false => path.extension().is_none_or(|e| e != "json"),
    }
}

/// [`weight_memory`] as `inspect` and `plan` print it.
pub fn weight_memory_line(f32_bytes: u64, stored: Option<u64>) -> String {
    let f32_bytes = gigabytes(f32_bytes);
    match stored {
        Some(stored) => {
            format!(
                "weights in memory: {f32_bytes} widened to f32, {} as stored (--weights-in-memory)",
                gigabytes(stored)
            )
        }
        None => format!("weights in memory: {f32_bytes} widened to f32 (a configuration alone: no stored size)"),
    }
}

/// The configuration of a model file, a directory (with or without its weights) or a
/// config.json, reading nothing else.
pub fn model_config(path: &Path) -> anyhow::Result<ModelConfig> {
    let config_file = match path.is_dir() {
        true if !HfModel::has_weights(path) => config_file(path)?,
        true => return Ok(evalmesh_worker::weights::open(path, false)?.config().clone()),
        false if path.extension().is_some_and(|e| e == "json") => path.to_path_buf(),
        false => return Ok(evalmesh_worker::weights::open(path, false)?.config().clone()),
    };
    let text = read_text(&config_file)?;
    let config = HfConfig::parse(&text).and_then(|c| c.to_model_config());
    config.with_context(|| config_file.display().to_string())
}
