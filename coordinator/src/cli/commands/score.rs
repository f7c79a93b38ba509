//! `evalmesh score`: every token of one or more texts with its log-probability given the
//! tokens before it and the most likely tokens at its position, one JSON line per
//! position, in one process, on the CPU or this process's GPU. The log-probabilities are
//! the ones a run computes (the same stage, the same ops); the alternatives' come from the
//! same logits, in f64.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{bail, Context};
use evalmesh_common::strategy::check_fits_gpu;
use evalmesh_common::{MicroBatch, ScoreTree, StageSpec, TokenScore};
use evalmesh_worker::backend::cuda::CudaBackend;
use evalmesh_worker::{
    Alternatives, Backend, CpuBackend, LoadError, LocalSum, StageInput, StageOutput, Target, TransformerStage,
};
use mpi::topology::{Communicator, SimpleCommunicator};
use serde_json::json;

use crate::cli::args::ScoreArgs;
use crate::tasks::read_text;

pub fn score(args: &ScoreArgs, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    if world.is_some_and(|w| w.size() > 1) {
        bail!("evalmesh score runs in one process: start it without mpirun");
    }
    evalmesh_worker::start_threads(args.threads.map_or(0, |t| t.max(1))).context("--threads")?;
    let (_, model) = super::open_model(&args.model, false)?;
    let config = model.source.config().clone();
    let mut texts = Vec::with_capacity(args.file.len());
    for file in &args.file {
        let ids = model.tokenizer.encode_document(&read_text(file)?)?;
        if ids.len() > config.max_position {
            bail!(
                "{}: {} tokens, more than the model's {} positions; score a shorter text",
                file.display(),
                ids.len(),
                config.max_position
            );
        }
        texts.push(ids);
    }
    let spec = StageSpec::whole(&config);
    let source = &*model.source;
    let scored = match Target::alone(args.check()?, args.device.gpu())? {
        Target::Cpu { weights } => {
            scores(&TransformerStage::load(source, spec, CpuBackend::new(weights))?, &texts, args.top)?
        }
        Target::Gpu { gpu, precision, .. } => {
            check_fits_gpu(&config, &spec, gpu.memory_bytes, precision)
                .map_err(|error| LoadError::TooBig { gpu: gpu.clone(), error })?;
            scores(&TransformerStage::load(source, spec, CudaBackend::new(gpu.ordinal, precision)?)?, &texts, args.top)?
        }
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| path.display().to_string())?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let token = |id: u32| model.tokenizer.token_text(id);
    for (file, (ids, lines)) in texts.iter().zip(scored).enumerate() {
        for (position, &id) in ids.iter().enumerate() {
            let scored = if position == 0 { None } else { lines.get(position - 1) };
            let line = match scored {
                None => {
                    json!({"file": file, "position": position, "id": id, "text": token(id), "logprob": null, "top": []})
                }
                Some((score, top)) => json!({
                    "file": file, "position": position, "id": id, "text": token(id), "logprob": score.logprob,
                    "greedy": score.greedy,
                    "top": top.iter().map(|&(alt, logprob)| json!({"id": alt, "text": token(alt), "logprob": logprob}))
                        .collect::<Vec<_>>(),
                }),
            };
            writeln!(out, "{line}").context("writing the scores")?;
        }
    }
    out.flush().context("writing the scores")
}

/// For each text, each next token's score and its position's `top` alternatives, from one
/// forward pass of `stage` over the text's `ids` (none for a text of one token).
fn scores<B: Backend>(
    stage: &TransformerStage<B>,
    texts: &[Vec<u32>],
    top: usize,
) -> anyhow::Result<Vec<Vec<(TokenScore, Alternatives)>>> {
    let mut all = Vec::with_capacity(texts.len());
    for ids in texts {
        if ids.len() < 2 {
            all.push(Vec::new());
            continue;
        }
        let tree = ScoreTree { prefix: ids.clone(), prefix_targets_from: 1, branches: vec![] };
        let batch = MicroBatch::pack(&[&tree]);
        let (output, alternatives) = stage.forward_with_alternatives(&batch, StageInput::Tokens, &mut LocalSum, top)?;
        let StageOutput::Scores(scores) = output else { bail!("a whole model's stage returned no scores") };
        let alternatives = if top == 0 { vec![Vec::new(); scores.len()] } else { alternatives };
        all.push(scores.into_iter().zip(alternatives).collect());
    }
    Ok(all)
}
