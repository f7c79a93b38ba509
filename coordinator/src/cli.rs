//! The command line: clap definitions for `run`, `inspect` and `tokenize`, turned into
//! validated settings once, and the commands themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use evalmesh_common::ScoreTree;
use evalmesh_worker::weights::gguf::GgufFile;
use serde_json::{json, Value};

use crate::engine::{EngineError, EvaluationEngine, LightweightEngine};
use crate::model::{Model, ModelError};
use crate::progress::token_bar;
use crate::results::{Report, ResultsError};
use crate::tasks::perplexity::{self, PerplexityMode};
use crate::tasks::{read_text, TaskError};
use crate::tokenizer::TokenizerError;

/// The test model's file name in the cache (see scripts/fetch-test-model.sh).
pub const TEST_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The text scored when `run` gets no `--data`.
pub const BUILTIN_TEXT: &str = include_str!("../data/wikitext-2-excerpt.txt");
const BUILTIN_TEXT_NAME: &str = "built-in wikitext-2 excerpt";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no --model given and the test model is not in the cache at {}: run scripts/fetch-test-model.sh, or pass --model", .0.display())]
    NoDefaultModel(PathBuf),
    #[error("unknown task `{0}` (available: perplexity)")]
    UnknownTask(String),
    #[error("{flag} must be at least {min}, got {value}")]
    TooSmall { flag: &'static str, min: usize, value: usize },
    #[error("cannot start {0} threads: {1}")]
    Threads(usize, String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Weights(#[from] evalmesh_worker::WeightError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Results(#[from] ResultsError),
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
    Run(RunArgs),
    /// Prints a model's architecture, configuration, parameter count and tensor types.
    Inspect(InspectArgs),
    /// Prints the tokens of a text, like llama.cpp's llama-tokenize.
    Tokenize(TokenizeArgs),
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
    /// The task to score.
    #[arg(long, visible_alias = "tasks", default_value = "perplexity")]
    pub task: String,
    /// The task's data file (perplexity: a UTF-8 text). Default: a built-in wikitext-2 excerpt.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// rolling: lm-evaluation-harness's loglikelihood_rolling; llamacpp: llama-perplexity's chunks.
    #[arg(long, value_enum, default_value_t = PerplexityMode::Rolling)]
    pub perplexity_mode: PerplexityMode,
    /// Context length in tokens. Default: 512 for llamacpp mode, the model's maximum for rolling.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Compute threads. Default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most input tokens in one micro-batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// Where to write the results JSON.
    #[arg(long)]
    pub output: Option<PathBuf>,
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

    fn open(&self) -> Result<(PathBuf, Model), CliError> {
        let path = self.path()?;
        let model = Model::open(&path, self.tokenizer.as_deref())?;
        Ok((path, model))
    }
}

pub fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Inspect(args) => inspect(args),
        Command::Tokenize(args) => tokenize(args),
    }
}

fn run(args: RunArgs) -> Result<(), CliError> {
    if args.task != "perplexity" {
        return Err(CliError::UnknownTask(args.task));
    }
    if args.batch_tokens < 16 {
        return Err(CliError::TooSmall { flag: "--batch-tokens", min: 16, value: args.batch_tokens });
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            return Err(CliError::TooSmall { flag: "--threads", min: 1, value: 0 });
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| CliError::Threads(threads, e.to_string()))?;
    }
    let (text, data_name) = match &args.data {
        Some(path) => (read_text(path)?, path.display().to_string()),
        None => (BUILTIN_TEXT.to_string(), BUILTIN_TEXT_NAME.to_string()),
    };
    let (model_path, model) = args.model.open()?;
    let config = model.source.config().clone();
    let ctx = args.ctx.unwrap_or(match args.perplexity_mode {
        PerplexityMode::Llamacpp => 512,
        PerplexityMode::Rolling => config.max_position,
    });
    if ctx > config.max_position {
        log::warn!("--ctx {ctx} is beyond the model's {} positions", config.max_position);
    }
    let tokens = model.tokenizer.encode_document(&text)?;
    log::info!("{data_name}: {} bytes, {} tokens", text.len(), tokens.len());
    let trees: Vec<ScoreTree> = match args.perplexity_mode {
        PerplexityMode::Llamacpp => perplexity::llamacpp_chunks(&tokens, ctx, model.tokenizer.add_bos())?,
        PerplexityMode::Rolling => {
            let prefix = model.tokenizer.prefix_token().ok_or_else(|| {
                TaskError::Settings("rolling perplexity needs a BOS or EOS token and the tokenizer has neither".into())
            })?;
            perplexity::rolling_windows(&tokens, prefix, ctx)
        }
    };
    let load_start = Instant::now();
    let mut engine = LightweightEngine::load(model.source.as_ref(), args.batch_tokens)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    log::info!("{} (weights loaded in {load_seconds:.1} s)", engine.describe());

    let total: usize = trees.iter().map(ScoreTree::input_len).sum();
    let bar = token_bar(total, "perplexity");
    let start = Instant::now();
    let scores = engine.score(&trees, &mut |n| bar.inc(n as u64))?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let m = perplexity::metrics(&text, &scores);
    let mut report = Report::default();
    report.metric("perplexity", "perplexity", m.perplexity);
    if args.perplexity_mode == PerplexityMode::Rolling {
        report.metric("perplexity", "word_perplexity", m.word_perplexity);
        report.metric("perplexity", "byte_perplexity", m.byte_perplexity);
        report.metric("perplexity", "bits_per_byte", m.bits_per_byte);
    }
    report.configs.insert(
        "perplexity".into(),
        json!({"task": "perplexity", "data": data_name, "mode": args.perplexity_mode, "ctx": ctx}),
    );
    report.n_samples.insert("perplexity".into(), json!({"original": trees.len(), "effective": trees.len()}));
    let window_tokens: usize = trees.iter().map(|t| t.prefix.len()).sum();
    let mut evalmesh: BTreeMap<String, Value> = BTreeMap::new();
    evalmesh.insert("model".into(), json!(model_path.display().to_string()));
    evalmesh.insert("engine".into(), json!(engine.describe()));
    evalmesh.insert("config".into(), json!(config));
    evalmesh.insert("tokens_in_text".into(), json!(tokens.len()));
    evalmesh.insert("tokens_computed".into(), json!(total));
    evalmesh.insert("tokens_in_windows".into(), json!(window_tokens));
    evalmesh.insert("tokens_scored".into(), json!(m.tokens_scored));
    evalmesh.insert("words".into(), json!(m.words));
    evalmesh.insert("bytes".into(), json!(m.bytes));
    evalmesh.insert("load_seconds".into(), json!(load_seconds));
    evalmesh.insert("eval_seconds".into(), json!(seconds));
    evalmesh.insert("window_tokens_per_s".into(), json!(window_tokens as f64 / seconds));
    let matmul = engine.matmul_stats();
    evalmesh.insert("matmul_gflop".into(), json!(matmul.flops as f64 / 1e9));
    evalmesh.insert("matmul_seconds".into(), json!(matmul.seconds));
    evalmesh.insert("matmul_gflops_per_s".into(), json!(matmul.gflops_per_s()));
    evalmesh.insert("cumulative_perplexity".into(), json!(perplexity::cumulative_perplexity(&scores)));
    report.evalmesh = evalmesh;

    print!("{}", report.table());
    println!(
        "{} windows, {} tokens scored in {seconds:.1} s ({:.1} window tokens/s; matrix products {:.1} GFLOP/s, {:.0}% of the time)",
        trees.len(),
        m.tokens_scored,
        window_tokens as f64 / seconds,
        matmul.gflops_per_s(),
        100.0 * matmul.seconds / seconds
    );
    if let Some(path) = &args.output {
        report.write(path)?;
        log::info!("results written to {}", path.display());
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let path = args.model.path()?;
    let model = Model::open(&path, args.model.tokenizer.as_deref())?;
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
    let model = Model::open(&path, args.model.tokenizer.as_deref())?;
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
    stdout.write_all(text.as_bytes()).map_err(|source| CliError::Io { path: name.to_path_buf(), source })
}
