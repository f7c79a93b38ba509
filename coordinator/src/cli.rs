//! The command line: clap definitions for `run`, `inspect` and `tokenize`, turned into
//! validated settings once, and the commands themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use evalmesh_common::cost::{BatchShape, Placement};
use evalmesh_common::hardware::HardwareProfile;
use evalmesh_common::protocol::{CudaAware, Device, GpuPrecision, ModelRef, ToWorker, WorkerStats};
use evalmesh_common::{
    partition_layers, strategy, HfConfig, ModelConfig, ParallelLayout, PlanError, StageSpec, Strategy,
};
use evalmesh_worker::backend::MatmulStats;
use evalmesh_worker::comm::{receive, send};
use evalmesh_worker::weights::gguf::GgufFile;
use evalmesh_worker::Target;
use mpi::topology::{Communicator, SimpleCommunicator};
use serde_json::json;

use crate::distributed::DistributedEngine;
use crate::engine::{EngineError, EvaluationEngine, LightweightEngine};
use crate::evaluate::{evaluate, EvaluateError, Limit, Settings};
use crate::journal::{model_fingerprint, Journal, JournalError};
use crate::model::{Model, ModelError};
use crate::prediction::{cached_profile_path, run_profile, write_profile, PredictionError, Predictor};
use crate::results::{Report, ResultsError};
use crate::tasks::formats::{self, Source};
use crate::tasks::perplexity::PerplexityMode;
use crate::tasks::requests::Windows;
use crate::tasks::{read_text, TaskError};
use crate::tokenizer::TokenizerError;

/// The test model's file name in the cache (see scripts/fetch-test-model.sh).
pub const TEST_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no --model given and the test model is not in the cache at {}: run scripts/fetch-test-model.sh, or pass --model", .0.display())]
    NoDefaultModel(PathBuf),
    #[error("results file {} exists: pass --overwrite to replace it, or --resume to finish the run it belongs to", .0.display())]
    OutputExists(PathBuf),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0} measures MPI transfers: start it with mpirun -np 2 evalmesh {0}")]
    NeedsMpi(&'static str),
    #[error("{0} spreads the model over worker ranks, and this is one process: start it under mpirun or srun (for example mpirun -np 3 evalmesh run …), or leave out {0}")]
    LayoutNeedsRanks(String),
    #[error("{0} sets how GPUs compute or pass activations: it needs --device cuda (drop it for --device cpu)")]
    GpuFlagWithoutCuda(&'static str),
    #[error(transparent)]
    PingPong(#[from] crate::pingpong::PingPongError),
    #[error(transparent)]
    Prediction(#[from] PredictionError),
    #[error(transparent)]
    Backend(#[from] evalmesh_worker::BackendError),
    #[error(transparent)]
    Calibrate(#[from] crate::calibrate::CalibrateError),
    #[error("{}: {error}", path.display())]
    Config { path: PathBuf, error: evalmesh_common::ConfigError },
    #[error("--resume needs --output: the journal lives next to the results file")]
    ResumeWithoutOutput,
    #[error("--log-samples needs --output: the samples files are written next to the results file")]
    SamplesWithoutOutput,
    #[error("{flag} must be at least {min}, got {value}")]
    TooSmall { flag: &'static str, min: usize, value: usize },
    #[error("cannot start {0} threads: {1}")]
    Threads(usize, String),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Weights(#[from] evalmesh_worker::WeightError),
    #[error(transparent)]
    Load(#[from] evalmesh_worker::LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Evaluate(#[from] EvaluateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl CliError {
    /// Whether the run was stopped in order by a signal (and can be resumed).
    pub fn is_stopped(&self) -> bool {
        matches!(
            self,
            CliError::Engine(EngineError::Stopped) | CliError::Evaluate(EvaluateError::Engine(EngineError::Stopped))
        )
    }
}

#[derive(Debug, Parser)]
#[command(name = "evalmesh", version, about = "Evaluates language models, in one process or across MPI ranks.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scores a task with a model and writes the results.
    Run(Box<RunArgs>),
    /// Prints a model's architecture, configuration, parameter count and tensor types.
    Inspect(InspectArgs),
    /// Prints the tokens of a text, like llama.cpp's llama-tokenize.
    Tokenize(TokenizeArgs),
    /// Measures activation transfers between two ranks beside a raw MPI ping-pong of the
    /// same sizes (start it with mpirun -np 2).
    Pingpong(PingPongArgs),
    /// Measures this machine for the cost model (under `mpirun --bind-to none -np 2`, also
    /// the link between ranks; mpirun would otherwise bind rank 0 to one core) and writes a
    /// hardware profile.
    Calibrate(CalibrateArgs),
    /// Lists the ways to spread a model over N workers, predicted from its configuration
    /// alone, and the one --strategy auto picks.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens per micro-batch to measure at.
    #[arg(long, default_value_t = 512)]
    pub batch_tokens: usize,
    /// Where to write the profile (default: this host's cached profile of the device, which runs use).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// What to measure: the CPU, or GPU 0 (`cuda`: its rates at the model's shapes and its
    /// bf16 matrix peak).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Go on measuring for this long, round after round, and keep the median of each figure:
    /// on a machine whose speed wanders (a shared virtual machine), a profile measured over
    /// about as long as a run predicts runs better (default: 3 rounds, a few seconds).
    #[arg(long, value_parser = non_negative_seconds, allow_negative_numbers = true)]
    pub seconds: Option<f64>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A GGUF file, a Hugging Face directory, or a config.json (only the configuration is read).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Workers to spread the model over (ranks besides the coordinator).
    #[arg(long)]
    pub workers: usize,
    /// A built-in device profile (h100, h200, a100, l40s) or `cpu` (this machine's profile).
    #[arg(long, default_value = "cpu", conflicts_with = "profile")]
    pub device: String,
    /// A hardware profile written by evalmesh calibrate.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Tokens per micro-batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// Tokens per sequence of the assumed workload (half of each is scored).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Print the plans as JSON, the chosen one under `chosen`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PingPongArgs {
    /// Rows (tokens) of each activation message, separated by commas.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024,4096")]
    pub rows: Vec<usize>,
    /// Columns of each message: the model's hidden size (SmolLM2-135M: 576).
    #[arg(long, default_value_t = 576)]
    pub width: usize,
    /// Round trips per trial.
    #[arg(long, default_value_t = 50)]
    pub round_trips: usize,
    /// Trials per path and size, alternating the two paths; the best of each is kept.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face directory (config.json + safetensors). Default: the
    /// test model in the cache ($EVALMESH_CACHE, else $XDG_CACHE_HOME/evalmesh or ~/.cache/evalmesh).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A tokenizer.json to use instead of the model's own tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tasks to score, separated by commas: hellaswag, arc_easy, arc_challenge, piqa, winogrande,
    /// lambada_openai, mmlu, wikitext, multiple_choice (with --data FILE.jsonl), perplexity (with --data FILE.txt).
    #[arg(long, visible_alias = "tasks", default_value = "perplexity")]
    pub task: String,
    /// The data file of the generic tasks: multiple_choice (JSON lines {"context", "choices", "gold"})
    /// and perplexity (a UTF-8 text; default: a built-in wikitext-2 excerpt).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The benchmarks' data folder, laid out like shared/data (hellaswag/, arc/, piqa/, …).
    #[arg(long, env = "EVALMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Score only the first N documents of each task, or a fraction (0.1) of them.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<Limit>,
    /// Solved examples before each question, picked as lm-evaluation-harness does (seed 1234;
    /// mmlu: the first N of the dev split; hellaswag, arc, piqa, winogrande: the training split).
    #[arg(long, default_value_t = 0)]
    pub num_fewshot: usize,
    /// rolling: lm-evaluation-harness's loglikelihood_rolling; llamacpp: llama-perplexity's chunks.
    #[arg(long, value_enum, default_value_t = PerplexityMode::Rolling)]
    pub perplexity_mode: PerplexityMode,
    /// Context length in tokens. Default: 512 for llamacpp mode, the model's maximum for rolling.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Compute threads (of each worker, under MPI). Default: all cores; under MPI, each node's
    /// cores shared among its workers.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most input tokens in one micro-batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// How to spread the work over the ranks of an MPI job (see README).
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,
    /// Data-parallel replicas (with --pp and --tp: their product is the number of workers).
    #[arg(long)]
    pub dp: Option<usize>,
    /// Pipeline stages per replica.
    #[arg(long)]
    pub pp: Option<usize>,
    /// Tensor-parallel shards per stage: 1 up to the model's KV-head count.
    #[arg(long)]
    pub tp: Option<usize>,
    /// Where the workers compute: `cpu`, or `cuda` (one GPU per worker; needs a build with
    /// `--features cuda`).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// With --device cuda under mpirun: `on` passes activations to MPI in device memory
    /// (the MPI must be CUDA-aware), `off` stages them through pinned host buffers, `auto`
    /// asks the MPI (`MPIX_Query_cuda_support`).
    #[arg(long, value_enum, default_value_t = CudaAwareArg::Auto)]
    pub cuda_aware: CudaAwareArg,
    /// With --device cuda: the type of the weights and of the matrix products' operands,
    /// `bf16` (the default) or `f32` (the CPU's, at a fraction of the speed: for checking
    /// numerics). Products accumulate in f32 either way.
    #[arg(long, value_enum, default_value_t = GpuPrecisionArg::Bf16)]
    pub gpu_precision: GpuPrecisionArg,
    /// Draw every weight at random (fixed seeds; on the GPU with --device cuda) instead of
    /// reading weight files, to measure a model's speed from its config.json alone: --model
    /// names the config.json or its directory, the tokenizer comes from --tokenizer (a
    /// tokenizer.json or a GGUF file) or the directory's tokenizer.json. The scores mean nothing.
    #[arg(long)]
    pub random_weights: bool,
    /// Try micro-batch budgets of 512 to 4096 tokens on the first trees (their scores count:
    /// they do not depend on the budget) and keep the fastest for the rest; the results'
    /// `evalmesh.tuning` records the trials.
    #[arg(long)]
    pub tune: bool,
    /// A hardware profile from evalmesh calibrate for the cost model (default: this host's
    /// cached profile, measured on the first run).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Compute each choice with its own copy of the context instead of sharing it (for comparison).
    #[arg(long)]
    pub no_prefix_sharing: bool,
    /// Where to write the results JSON; the journal goes beside it (NAME.journal.jsonl).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write samples_<task>.jsonl beside the results: every document's scores.
    #[arg(long)]
    pub log_samples: bool,
    /// Reuse the scores in the journal of an earlier run of the same model and tasks.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing results file and journal.
    #[arg(long)]
    pub overwrite: bool,
    /// Write a Chrome trace of every rank's timeline (open it in Perfetto).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "text"])))]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Read the text from this file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The text to tokenize.
    pub text: Option<String>,
    /// Print only the ids, one per line.
    #[arg(long)]
    pub ids: bool,
}

/// The cache folder of scripts/fetch-test-model.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVALMESH_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("evalmesh")
}

impl ModelArgs {
    fn path(&self) -> Result<PathBuf, CliError> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                let default = cache_dir().join(TEST_MODEL_FILE);
                if default.is_file() {
                    Ok(default)
                } else {
                    Err(CliError::NoDefaultModel(default))
                }
            }
        }
    }

    fn open(&self, random_weights: bool) -> Result<(PathBuf, Model), CliError> {
        let path = self.path()?;
        let model = Model::open(&path, self.tokenizer.as_deref(), random_weights)?;
        Ok((path, model))
    }
}

pub fn execute(cli: Cli, world: Option<&SimpleCommunicator>) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run(*args, world),
        Command::Inspect(args) => inspect(args),
        Command::Tokenize(args) => tokenize(args),
        Command::Pingpong(args) => match world {
            Some(world) => pingpong(&args, world),
            None => Err(CliError::NeedsMpi("pingpong")),
        },
        Command::Calibrate(args) => calibrate(&args, world),
        Command::Plan(args) => plan(&args),
    }
}

/// Measures this machine; under MPI ranks 0 and 1 first time their link, then rank 0 the rest.
fn calibrate(args: &CalibrateArgs, world: Option<&SimpleCommunicator>) -> Result<(), CliError> {
    if args.batch_tokens < 16 {
        return Err(CliError::TooSmall { flag: "--batch-tokens", min: 16, value: args.batch_tokens });
    }
    let config = plan_config(&args.model.path()?)?;
    let link = match world {
        Some(w) => crate::calibrate::measure_link(w, &config, args.batch_tokens)?,
        None => None,
    };
    // The other ranks wait, sleeping between polls, until rank 0 is done: MPI's own
    // finalisation would spin a core and skew what rank 0 measures.
    match world {
        Some(w) if w.rank() != 0 => {
            let _ = receive::<_, ToWorker>(w, Some(0));
            return Ok(());
        }
        _ => {}
    }
    let device = device_of(args.device, CudaAwareArg::Auto, GpuPrecisionArg::Bf16)?;
    let measured = crate::calibrate::calibrate(&config, args.batch_tokens, link, args.seconds.unwrap_or(0.0), device);
    for rank in 1..world.map_or(1, |w| w.size()) {
        if let Some(w) = world {
            send(w, rank, &ToWorker::Shutdown);
        }
    }
    let profile = measured?;
    let output = args.output.clone().unwrap_or_else(|| cached_profile_path(&cache_dir(), device));
    write_profile(&profile, &output)?;
    println!("{}", serde_json::to_string_pretty(&profile).unwrap_or_default());
    log::info!("profile written to {}", output.display());
    Ok(())
}

/// The configuration of a model file, directory or config.json, reading nothing else.
fn plan_config(path: &Path) -> Result<ModelConfig, CliError> {
    if path.is_file() && path.extension().is_some_and(|e| e == "json") {
        let text = read_text(path)?;
        let config = HfConfig::parse(&text).and_then(|c| c.to_plan_config());
        return config.map_err(|error| CliError::Config { path: path.to_path_buf(), error });
    }
    Ok(evalmesh_worker::weights::open(path, false)?.config().clone())
}

/// `evalmesh plan`: every layout predicted on a workload of `--ctx`-token sequences.
fn plan(args: &PlanArgs) -> Result<(), CliError> {
    if args.workers == 0 {
        return Err(CliError::TooSmall { flag: "--workers", min: 1, value: 0 });
    }
    if args.ctx == 0 {
        return Err(CliError::TooSmall { flag: "--ctx", min: 1, value: 0 });
    }
    if args.batch_tokens < args.ctx {
        return Err(CliError::TooSmall {
            flag: "--batch-tokens (at least --ctx)",
            min: args.ctx,
            value: args.batch_tokens,
        });
    }
    let path = ModelArgs { model: args.model.clone(), tokenizer: None }.path()?;
    let config = plan_config(&path)?;
    let profile = match (&args.profile, args.device.as_str()) {
        (Some(file), _) => HardwareProfile::read(file).map_err(PredictionError::from)?,
        (None, "cpu") => run_profile(None, &cache_dir(), &config, args.batch_tokens, Device::Cpu)?,
        (None, device) => HardwareProfile::built_in(device).map_err(PredictionError::from)?,
    };
    let per_batch = args.batch_tokens / args.ctx;
    let batches = vec![BatchShape::sequences(per_batch, args.ctx, args.ctx / 2); 64];
    let place = placement(&profile, args.workers, None);
    let candidates = strategy::candidates(&config, args.workers, &batches, &profile, place);
    let chosen = strategy::choose(&candidates);
    if args.json {
        let chosen_json = chosen.as_ref().ok().map(|c| plan_json(c));
        let all: Vec<_> = candidates.iter().map(plan_json).collect();
        let out = json!({"model": path.display().to_string(), "workers": args.workers, "profile": profile.name,
            "profile_source": profile.source, "memory_bytes": profile.memory_bytes, "candidates": all, "chosen": chosen_json});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print!("{}", plan_table(&config, args.workers, &profile, &candidates));
    }
    chosen.map(|_| ()).map_err(CliError::from)
}

/// A plan as JSON: sizes, stages as layer ranges, memory and predicted throughput.
fn plan_json(c: &strategy::Candidate) -> serde_json::Value {
    json!({
        "dp": c.layout.dp, "pp": c.layout.pp, "tp": c.layout.tp,
        "stages": c.stages.iter().map(|s| [s.layers.start, s.layers.end]).collect::<Vec<_>>(),
        "memory_per_rank_bytes": c.prediction.memory_per_rank_bytes.iter().copied().max().unwrap_or(0),
        "predicted_tokens_per_s": c.prediction.tokens_per_s,
        "bubble_share": c.prediction.bubble_share,
        "communication_share": c.prediction.communication_share,
        "rejected": c.rejected,
    })
}

/// The candidates as a table, best first, each loser with its reason.
fn plan_table(
    config: &ModelConfig,
    workers: usize,
    profile: &HardwareProfile,
    candidates: &[strategy::Candidate],
) -> String {
    let mut out = format!(
        "{} layers, {:.2}B parameters, on {workers} × {} ({}; {} each)\n\n",
        config.num_layers,
        config.parameter_count() as f64 / 1e9,
        profile.name,
        profile.source,
        strategy::gigabytes(profile.memory_bytes)
    );
    out.push_str(
        "| DP | PP | TP | stages (layers) | tokens/s | memory per rank | bubble | communication | verdict |\n",
    );
    out.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---|\n");
    let best = candidates.iter().find(|c| c.rejected.is_none()).map(|c| c.prediction.tokens_per_s);
    for c in candidates {
        let p = &c.prediction;
        let memory = p.memory_per_rank_bytes.iter().copied().max().unwrap_or(0);
        let stages: Vec<String> = c.stages.iter().map(|s| format!("{}-{}", s.layers.start, s.layers.end)).collect();
        let verdict = match (&c.rejected, best) {
            (Some(reason), _) => reason.clone(),
            (None, Some(b)) if p.tokens_per_s >= b => format!(
                "chosen: {} of {} free",
                strategy::gigabytes(profile.memory_bytes.saturating_sub(memory)),
                strategy::gigabytes(profile.memory_bytes)
            ),
            (None, Some(b)) => format!("slower by {:.0}%", 100.0 * (1.0 - p.tokens_per_s / b)),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {:.0}% | {:.0}% | {verdict} |\n",
            c.layout.dp,
            c.layout.pp,
            c.layout.tp,
            stages.join(", "),
            p.tokens_per_s,
            strategy::gigabytes(memory),
            (100.0 * p.bubble_share).max(0.0),
            (100.0 * p.communication_share).max(0.0)
        ));
    }
    out
}

/// The layout and stages of a distributed run: `--strategy auto` without sizes takes the
/// cost model's fastest plan that fits; otherwise the sizes or strategy given, with the
/// layers balanced by the cost model.
fn choose_layout(
    args: &RunArgs,
    config: &ModelConfig,
    workers: usize,
    profile: &HardwareProfile,
) -> Result<(ParallelLayout, Vec<StageSpec>), CliError> {
    let place = placement(profile, workers, args.threads);
    let sequence = args.ctx.unwrap_or(512).min(args.batch_tokens);
    let batches = vec![BatchShape::sequences(args.batch_tokens / sequence, sequence, sequence / 2); 64];
    if args.strategy == StrategyArg::Auto && args.dp.is_none() && args.pp.is_none() && args.tp.is_none() {
        let candidates = strategy::candidates(config, workers, &batches, profile, place);
        let chosen = strategy::choose(&candidates)?;
        log::info!(
            "--strategy auto: DP={} × PP={} × TP={}, predicted {:.0} tokens/s, the fastest of {} plans that fit \
             (evalmesh plan lists them)",
            chosen.layout.dp,
            chosen.layout.pp,
            chosen.layout.tp,
            chosen.prediction.tokens_per_s,
            candidates.iter().filter(|c| c.rejected.is_none()).count()
        );
        return Ok((chosen.layout, chosen.stages.clone()));
    }
    let layout = ParallelLayout::resolve(workers, args.strategy.into(), args.dp, args.pp, args.tp)?;
    let (embedding, head) = strategy::end_costs(config, &batches, profile, place);
    Ok((layout, partition_layers(config, layout.pp, embedding, head)?))
}

/// Where the workers run: on the CPU, all on this node sharing its cores (`threads` each
/// when given); on GPUs, one worker per device.
fn placement(profile: &HardwareProfile, workers: usize, threads: Option<usize>) -> Placement {
    if profile.backend == "cpu" {
        let per_node = workers.min(profile.devices_per_node).max(1);
        let threads = threads.unwrap_or((profile.devices_per_node / per_node).max(1));
        Placement { threads_per_worker: threads, workers_per_node: workers }
    } else {
        Placement { threads_per_worker: 1, workers_per_node: workers.min(profile.devices_per_node) }
    }
}

/// The transport benchmark; every rank takes part, rank 0 prints the table.
fn pingpong(args: &PingPongArgs, world: &SimpleCommunicator) -> Result<(), CliError> {
    let measured = crate::pingpong::measure(world, &args.rows, args.width, args.round_trips, args.trials)?;
    if world.rank() == 0 {
        println!("| Message bytes | Raw MPI GB/s | Activations GB/s | Ratio |\n|---:|---:|---:|---:|");
        for m in measured {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                m.bytes,
                m.raw_gb_per_s,
                m.activation_gb_per_s,
                m.activation_gb_per_s / m.raw_gb_per_s
            );
        }
    }
    Ok(())
}

/// Busy seconds (compute and send) of each stage: its slowest rank.
fn stage_busy_seconds(monitoring: &[(i32, WorkerStats)], layout: ParallelLayout) -> Vec<f64> {
    let mut busy = vec![0.0f64; layout.pp];
    for (rank, s) in monitoring {
        let stage = layout.stage_of(*rank as usize);
        busy[stage] = busy[stage].max((s.compute.total_ms + s.send.total_ms) / 1000.0);
    }
    busy
}

/// "predicted X tokens/s, measured Y (error); per stage predicted/measured seconds".
fn prediction_line(p: &serde_json::Value, busy: &[f64]) -> String {
    let num = |k: &str| p[k].as_f64().unwrap_or(0.0);
    let stages: Vec<String> = p["predicted_stage_seconds"]
        .as_array()
        .map(|a| a.iter().zip(busy).map(|(s, b)| format!("{:.1}/{b:.1}", s.as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    format!(
        "predicted {:.1} tokens/s, measured {:.1} ({:+.1}%); per stage, predicted/measured busy seconds: {} ({})",
        num("predicted_tokens_per_s"),
        num("measured_tokens_per_s"),
        num("error_percent"),
        stages.join(", "),
        p["profile"].as_str().unwrap_or("")
    )
}

/// Per rank: micro-batches, tokens, compute time and its distribution, idle, send and
/// receive-wait time, tokens/s while computing, peak host and device memory.
fn monitoring_table(ranks: &[(i32, WorkerStats)]) -> String {
    let mut out = String::from(
        "| Rank | Batches | Tokens | Compute s | p50 ms | p99 ms | Idle s | Send s | Recv-wait s | Tokens/s | Peak MiB | Device peak MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (rank, s) in ranks {
        let compute_s = s.compute.total_ms / 1000.0;
        out.push_str(&format!(
            "| {rank} | {} | {} | {compute_s:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
            s.batches,
            s.tokens,
            s.compute.p50_ms,
            s.compute.p99_ms,
            s.idle.total_ms / 1000.0,
            s.send.total_ms / 1000.0,
            s.receive_wait.total_ms / 1000.0,
            s.tokens as f64 / compute_s.max(1e-9),
            s.peak_memory_bytes as f64 / (1 << 20) as f64,
            s.peak_device_memory_bytes as f64 / (1 << 20) as f64,
        ));
    }
    out
}

/// Writes every rank's timeline as a Chrome trace: one process per rank, a thread for
/// computing and one for communicating.
fn write_trace(path: &Path, ranks: &[(i32, WorkerStats)], details: &serde_json::Value) -> Result<(), CliError> {
    let label = |rank: i32| {
        let worker = details["workers"].as_array().and_then(|ws| ws.iter().find(|w| w["rank"] == rank));
        match worker {
            Some(w) => format!("rank {rank}: layers {}..{}", w["layers"][0], w["layers"][1]),
            None => format!("rank {rank}"),
        }
    };
    let mut events = Vec::new();
    for (rank, stats) in ranks {
        events.push(json!({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": label(*rank)}}));
        for (tid, name) in [(0, "compute"), (1, "communication")] {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": name}}));
        }
        for e in &stats.trace {
            events.push(json!({"name": e.name, "ph": "X", "pid": rank, "tid": e.thread, "ts": e.start_us,
                "dur": e.duration_us, "args": {"micro_batch": e.batch}}));
        }
    }
    let text = serde_json::to_string(&json!({"traceEvents": events, "displayTimeUnit": "ms"})).unwrap_or_default();
    crate::results::write_atomically(path, text.as_bytes())
        .map_err(|error| CliError::Io { path: path.to_path_buf(), error })
}

/// `--limit`: a count of documents, or a fraction below 1.
fn parse_limit(s: &str) -> Result<Limit, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v < 1.0 {
        Ok(Limit::Fraction(v))
    } else if v >= 1.0 && v.fract() == 0.0 {
        Ok(Limit::First(v as usize))
    } else {
        Err(format!("`{s}` is neither a whole count nor a fraction in (0, 1)"))
    }
}

/// A duration in seconds: finite and not negative.
fn non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds (0 or more)")),
    }
}

/// Where the journal of a results file lives: `results.json` → `results.journal.jsonl`.
pub fn journal_path(output: &Path) -> PathBuf {
    output.with_extension("journal.jsonl")
}

/// The compute device of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// How GPU workers hand activations to MPI (`--cuda-aware`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CudaAwareArg {
    Auto,
    On,
    Off,
}

/// The type of a GPU's weights and matrix-product operands (`--gpu-precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuPrecisionArg {
    Bf16,
    F32,
}

/// The workers' device from `--device`, and `--cuda-aware` and `--gpu-precision`, which
/// only a GPU run takes.
fn device_of(device: DeviceArg, cuda_aware: CudaAwareArg, precision: GpuPrecisionArg) -> Result<Device, CliError> {
    match (device, cuda_aware, precision) {
        (DeviceArg::Cpu, CudaAwareArg::Auto, GpuPrecisionArg::Bf16) => Ok(Device::Cpu),
        (DeviceArg::Cpu, CudaAwareArg::Auto, _) => Err(CliError::GpuFlagWithoutCuda("--gpu-precision")),
        (DeviceArg::Cpu, _, _) => Err(CliError::GpuFlagWithoutCuda("--cuda-aware")),
        (DeviceArg::Cuda, cuda_aware, precision) => Ok(Device::Cuda {
            cuda_aware: match cuda_aware {
                CudaAwareArg::Auto => CudaAware::Auto,
                CudaAwareArg::On => CudaAware::On,
                CudaAwareArg::Off => CudaAware::Off,
            },
            precision: match precision {
                GpuPrecisionArg::Bf16 => GpuPrecision::Bf16,
                GpuPrecisionArg::F32 => GpuPrecision::F32,
            },
        }),
    }
}

/// How the work is spread over the ranks of an MPI job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// The cost model's fastest plan that fits (evalmesh plan shows the candidates).
    Auto,
    /// Data parallel: every worker holds the whole model.
    Dp,
    /// Pipeline parallel: the layers split over the workers.
    Pp,
    /// Tensor parallel: every layer split over the workers by KV-head group.
    Tp,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Strategy {
        match s {
            StrategyArg::Auto => Strategy::Auto,
            StrategyArg::Dp => Strategy::Dp,
            StrategyArg::Pp => Strategy::Pp,
            StrategyArg::Tp => Strategy::Tp,
        }
    }
}

/// `world` is the MPI world of an `mpirun`/`srun` job, seen from rank 0; `None` in a single process.
fn run(args: RunArgs, world: Option<&SimpleCommunicator>) -> Result<(), CliError> {
    if args.batch_tokens < 16 {
        return Err(CliError::TooSmall { flag: "--batch-tokens", min: 16, value: args.batch_tokens });
    }
    if args.ctx == Some(0) {
        return Err(CliError::TooSmall { flag: "--ctx", min: 1, value: 0 });
    }
    if world.is_none() {
        let sizes = [("--dp", args.dp), ("--pp", args.pp), ("--tp", args.tp)];
        if let Some((flag, Some(n))) = sizes.iter().find(|(_, n)| n.is_some()) {
            return Err(CliError::LayoutNeedsRanks(format!("{flag} {n}")));
        }
        if args.strategy != StrategyArg::Auto {
            let name = clap::ValueEnum::to_possible_value(&args.strategy)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            return Err(CliError::LayoutNeedsRanks(format!("--strategy {name}")));
        }
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            return Err(CliError::TooSmall { flag: "--threads", min: 1, value: 0 });
        }
        // Under MPI the workers take --threads from their setup message; this pool serves rank 0.
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| CliError::Threads(threads, e.to_string()))?;
    }
    if let Some(output) = &args.output {
        if output.exists() && !args.overwrite && !args.resume {
            return Err(CliError::OutputExists(output.clone()));
        }
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| CliError::Io { path: dir.to_path_buf(), error })?;
        }
    }
    if args.resume && args.output.is_none() {
        return Err(CliError::ResumeWithoutOutput);
    }
    if args.log_samples && args.output.is_none() {
        return Err(CliError::SamplesWithoutOutput);
    }
    // In one process, its GPU is found before anything is read, so that a machine without
    // one fails at once; under MPI each worker finds its own (rank 0 needs none).
    let distributed = world.is_some_and(|w| w.size() > 1);
    let device = device_of(args.device, args.cuda_aware, args.gpu_precision)?;
    let alone = match distributed {
        false => Some(Target::alone(device)?),
        true => None,
    };
    let names: Vec<&str> = args.task.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let source =
        Source { data_dir: args.data_dir.as_deref(), data_file: args.data.as_deref(), num_fewshot: args.num_fewshot };
    let mut tasks = Vec::new();
    for name in &names {
        tasks.extend(formats::load(name, &source)?);
    }
    let (model_path, model) = args.model.open(args.random_weights)?;
    let config = model.source.config().clone();
    let windows = match args.perplexity_mode {
        PerplexityMode::Llamacpp => Windows::Llamacpp { ctx: args.ctx.unwrap_or(512) },
        PerplexityMode::Rolling => Windows::Rolling { max_len: args.ctx.unwrap_or(config.max_position) },
    };
    let fingerprint = model_fingerprint(&model_path, args.random_weights)
        .map_err(|error| CliError::Io { path: model_path.clone(), error })?;
    let mut journal = match &args.output {
        Some(output) => {
            Some(Journal::open(&journal_path(output), &fingerprint, device.arithmetic(), args.resume, args.overwrite)?)
        }
        None => None,
    };

    let mut profile = run_profile(args.profile.as_deref(), &cache_dir(), &config, args.batch_tokens, device)?;
    if let Device::Cuda { precision: GpuPrecision::F32, .. } = device {
        // Weights of 4 bytes for the memory model; the rates stay bf16's, so the predicted
        // throughput of the f32 path is optimistic.
        profile.compute_bytes = 4;
    }
    let stop = crate::signals::coordinator_stop_flag()
        .map_err(|error| CliError::Io { path: PathBuf::from("signal handlers"), error })?;
    let load_start = Instant::now();
    let (mut engine, predictor): (Box<dyn EvaluationEngine + '_>, Predictor) = match world {
        Some(world) if world.size() > 1 => {
            let workers = world.size() as usize - 1;
            let (layout, stages) = choose_layout(&args, &config, workers, &profile)?;
            let threads = args.threads.unwrap_or(0);
            let model = ModelRef { path: model_path.display().to_string(), random_weights: args.random_weights };
            let engine = DistributedEngine::start(world, &model, &config, layout, &stages, device, threads)?;
            let threads = engine.workers().first().map_or(1, |w| w.threads);
            let placement = Placement { threads_per_worker: threads, workers_per_node: workers };
            (Box::new(engine), Predictor { config: config.clone(), layout, stages, profile, placement })
        }
        _ => {
            let Some(target) = &alone else { unreachable!("a single process finds its target first") };
            let engine = Box::new(LightweightEngine::load(model.source.as_ref(), target)?);
            let placement = Placement { threads_per_worker: rayon::current_num_threads(), workers_per_node: 1 };
            let layout = ParallelLayout { dp: 1, pp: 1, tp: 1 };
            let stages = vec![StageSpec::whole(&config)];
            (engine, Predictor { config: config.clone(), layout, stages, profile, placement })
        }
    };
    let load_seconds = load_start.elapsed().as_secs_f64();
    log::info!("{} (weights loaded in {load_seconds:.1} s)", engine.describe());

    let samples_dir = args.output.as_deref().filter(|_| args.log_samples).map(|o| match o.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let settings = Settings {
        windows,
        limit: args.limit,
        max_position: config.max_position,
        share_prefixes: !args.no_prefix_sharing,
        samples_dir: samples_dir.as_deref(),
        model_fingerprint: &fingerprint,
        batch_tokens: args.batch_tokens,
        predictor: Some(&predictor),
        tune: args.tune,
        stop: Some(&stop),
    };
    let mut report = Report::default();
    let start = Instant::now();
    evaluate(engine.as_mut(), &model.tokenizer, &tasks, &settings, journal.as_mut(), &mut report)?;
    let seconds = start.elapsed().as_secs_f64();

    let mut monitoring = engine.monitoring(args.trace.is_some())?;
    let matmul = monitoring.iter().fold(MatmulStats::default(), |m, (_, s)| MatmulStats {
        flops: m.flops + s.matmul_flops,
        seconds: m.seconds + s.matmul_seconds,
    });
    if let Some(path) = &args.trace {
        write_trace(path, &monitoring, &engine.details())?;
        log::info!("timeline written to {} (open it in Perfetto or chrome://tracing)", path.display());
    }
    for (_, stats) in &mut monitoring {
        stats.trace.clear();
    }
    let evalmesh = &mut report.evalmesh;
    evalmesh.insert(
        "monitoring".into(),
        json!(monitoring.iter().map(|(rank, s)| json!({"rank": rank, "stats": s})).collect::<Vec<_>>()),
    );
    evalmesh.insert("model".into(), json!(model_path.display().to_string()));
    evalmesh.insert("model_fingerprint".into(), json!(fingerprint));
    evalmesh.insert("engine".into(), json!(engine.describe()));
    evalmesh.insert("config".into(), json!(config));
    evalmesh.insert("batch_tokens".into(), json!(args.batch_tokens));
    evalmesh.insert("load_seconds".into(), json!(load_seconds));
    evalmesh.insert("eval_seconds".into(), json!(seconds));
    evalmesh.insert("workers".into(), json!(engine.parallel_workers()));
    evalmesh.insert("engine_details".into(), engine.details());
    evalmesh.insert("matmul_gflop".into(), json!(matmul.flops as f64 / 1e9));
    evalmesh.insert("matmul_seconds".into(), json!(matmul.seconds));
    evalmesh.insert("matmul_gflops_per_s".into(), json!(matmul.gflops_per_s()));

    let busy = stage_busy_seconds(&monitoring, predictor.layout);
    if let Some(serde_json::Value::Object(p)) = report.evalmesh.get_mut("prediction") {
        p.insert("measured_stage_seconds".into(), json!(busy));
    }

    print!("{}", report.table());
    print!("{}", monitoring_table(&monitoring));
    println!(
        "evaluated in {seconds:.1} s; matrix products {:.1} GFLOP/s, {:.0}% of the time",
        matmul.gflops_per_s(),
        100.0 * matmul.seconds / (seconds * engine.parallel_workers() as f64).max(1e-9)
    );
    if let Some(p) = report.evalmesh.get("prediction") {
        println!("{}", prediction_line(p, &busy));
    }
    if let Some(path) = &args.output {
        report.write(path)?;
        log::info!("results written to {}", path.display());
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let path = args.model.path()?;
    let model = Model::open(&path, args.model.tokenizer.as_deref(), false)?;
    let config = model.source.config();
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let format = if path.is_dir() {
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
    let summary = json!({
        "model": path.display().to_string(),
        "format": format,
        "architecture": "llama",
        "config": config,
        "parameters": config.parameter_count(),
        "tensor_types": by_type.iter().map(|(t, (n, b))| (t.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "vocabulary": model.tokenizer.vocab_size(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
        return Ok(());
    }
    println!("model:        {}", path.display());
    println!("format:       {format}");
    println!(
        "architecture: llama ({} layers, width {}, {} heads, {} KV heads, head dim {}, FFN {}, vocab {})",
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.intermediate_size,
        config.vocab_size
    );
    println!(
        "rope:         base {}, {:?}; RMSNorm eps {:e}; tied embeddings: {}",
        config.rope_theta, config.rope_style, config.rms_norm_eps, config.tied_embeddings
    );
    println!("context:      {} positions", config.max_position);
    println!("parameters:   {}", config.parameter_count());
    for (t, (n, bytes)) in &by_type {
        println!("tensors {t:>5}: {n:>4} tensors, {bytes:>12} bytes");
    }
    Ok(())
}

fn tokenize(args: TokenizeArgs) -> Result<(), CliError> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) => read_text(path)?,
        (None, Some(text)) => text.clone(),
        (None, None) => String::new(),
    };
    let path = args.model.path()?;
    let model = Model::open(&path, args.model.tokenizer.as_deref(), false)?;
    let ids = model.tokenizer.encode_document(&text)?;
    let mut out = String::with_capacity(ids.len() * 8);
    for id in ids {
        if args.ids {
            out.push_str(&format!("{id}\n"));
        } else {
            out.push_str(&format!("{id:>6} -> '{}'\n", model.tokenizer.token_text(id)));
        }
    }
    write_stdout(&out, Path::new("<stdout>"))
}

fn write_stdout(text: &str, name: &Path) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).map_err(|error| CliError::Io { path: name.to_path_buf(), error })
}
