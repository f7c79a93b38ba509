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
use evalmesh_common::{HfConfig, ModelConfig};
use evalmesh_worker::weights::{HfModel, CONFIG_FILE};

use crate::cli::args::ModelArgs;
use crate::model::Model;
use crate::tasks::read_text;

/// The model `--model` names (or the cached test model) with its tokenizer.
fn open_model(args: &ModelArgs, random_weights: bool) -> anyhow::Result<(PathBuf, Model)> {
    let path = args.path()?;
    let model = Model::open(&path, args.tokenizer.as_deref(), random_weights)?;
    Ok((path, model))
}

/// The configuration of a model file, a directory (with or without its weights) or a
/// config.json, reading nothing else.
pub fn model_config(path: &Path) -> anyhow::Result<ModelConfig> {
    let config_file = match path.is_dir() {
        true if !HfModel::has_weights(path) => path.join(CONFIG_FILE),
        true => return Ok(evalmesh_worker::weights::open(path, false)?.config().clone()),
        false if path.extension().is_some_and(|e| e == "json") => path.to_path_buf(),
        false => return Ok(evalmesh_worker::weights::open(path, false)?.config().clone()),
    };
    let text = read_text(&config_file)?;
    let config = HfConfig::parse(&text).and_then(|c| c.to_model_config());
    config.with_context(|| config_file.display().to_string())
}
