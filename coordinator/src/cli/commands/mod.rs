//! One module per `evalmesh` command, each a function from its checked arguments to its
//! output (printed, or written to the files it names).

pub mod calibrate;
pub mod inspect;
pub mod pingpong;
pub mod plan;
pub mod run;
pub mod score;
pub mod tokenize;

use std::path::PathBuf;

use crate::cli::args::ModelArgs;
use crate::model::Model;

/// The model `--model` names (or the cached test model) with its tokenizer.
fn open_model(args: &ModelArgs, random_weights: bool) -> anyhow::Result<(PathBuf, Model)> {
    let path = args.path()?;
    let model = Model::open(&path, args.tokenizer.as_deref(), random_weights)?;
    Ok((path, model))
}
