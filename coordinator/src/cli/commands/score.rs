//! `evalmesh score`: every token of a text with its log-probability given the tokens
//! before it and the most likely tokens at its position, one JSON line per position, in
//! one process on the CPU. The log-probabilities are the ones a run computes (the same
//! stage, the same ops); the alternatives' come from the same logits, in f64.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{bail, Context};
use evalmesh_common::{MicroBatch, ScoreTree, StageSpec};
use evalmesh_worker::{CpuBackend, LocalSum, StageInput, StageOutput, TransformerStage};
use mpi::topology::{Communicator, SimpleCommunicator};
use serde_json::json;

use crate::cli::args::ScoreArgs;
use crate::tasks::read_text;

pub fn score(args: &ScoreArgs, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    if world.is_some_and(|w| w.size() > 1) {
        bail!("evalmesh score runs in one process: start it without mpirun");
    }
    evalmesh_worker::start_threads(args.threads.map_or(0, |t| t.max(1))).context("--threads")?;
    let text = read_text(&args.file)?;
    let (_, model) = super::open_model(&args.model, false)?;
    let config = model.source.config().clone();
    let ids = model.tokenizer.encode_document(&text)?;
    if ids.len() > config.max_position {
        bail!(
            "{}: {} tokens, more than the model's {} positions; score a shorter text",
            args.file.display(),
            ids.len(),
            config.max_position
        );
    }
    let mut lines = Vec::with_capacity(ids.len());
    if ids.len() > 1 {
        let stage = TransformerStage::load(&*model.source, StageSpec::whole(&config), CpuBackend::default())?;
        let tree = ScoreTree { prefix: ids.clone(), prefix_targets_from: 1, branches: vec![] };
        let batch = MicroBatch::pack(&[&tree]);
        let (output, alternatives) =
            stage.forward_with_alternatives(&batch, StageInput::Tokens, &mut LocalSum, args.top)?;
        let StageOutput::Scores(scores) = output else { bail!("a whole model's stage returned no scores") };
        lines.extend(scores.into_iter().zip(alternatives).map(Some));
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| path.display().to_string())?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let token = |id: u32| model.tokenizer.token_text(id);
    for (position, &id) in ids.iter().enumerate() {
        let scored = if position == 0 { None } else { lines.get(position - 1).cloned().flatten() };
        let line = match scored {
            None => json!({"position": position, "id": id, "text": token(id), "logprob": null, "top": []}),
            Some((score, top)) => json!({
                "position": position, "id": id, "text": token(id), "logprob": score.logprob, "greedy": score.greedy,
                "top": top.iter().map(|&(alt, logprob)| json!({"id": alt, "text": token(alt), "logprob": logprob}))
                    .collect::<Vec<_>>(),
            }),
        };
        writeln!(out, "{line}").context("writing the scores")?;
    }
    out.flush().context("writing the scores")
}
