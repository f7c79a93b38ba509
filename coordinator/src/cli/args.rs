//! The command line as clap parses it: the commands, their flags with their help texts,
//! and the flag values' own parsers. Nothing here checks flags against each other:
//! `settings` does that once, into the settings a command runs with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use evalmesh_common::Strategy;

use super::lm_eval_flags::{parse_pairs, GenKwargs, ModelArgsGiven, Seeds};
use crate::evaluate::Limit;
use crate::tasks::perplexity::PerplexityMode;
use crate::tasks::yaml::config::GenerationKwargs;

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
    /// Writes each token of a text with its log-probability given the tokens before it and
    /// the most likely alternatives there, one JSON line per position, to compare evalmesh
    /// with another engine token by token (runs in one process, on the CPU).
    Score(ScoreArgs),
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
    /// What to measure: the CPU, or a GPU (`cuda`: GPU 0, or `cuda:N`: its rates at the
    /// model's shapes and its bf16 matrix peak).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
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
    /// Sequences decoding at once in the assumed generation workload, each after a
    /// cache of --ctx tokens: its decode tokens/s is shown beside the scoring throughput.
    #[arg(long, default_value_t = 32)]
    pub decode_sequences: usize,
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
    /// A tokenizer.json to use instead of the model's own tokenizer (with the
    /// tokenizer_config.json beside it, where there is one), or a GGUF file whose tokenizer to take.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// The help of `--add-bos`, shared by `run` and `tokenize`.
const ADD_BOS_HELP: &str = "Whether to put the BOS token before each text that is tokenized (`true` or `false`). \
Default: what the tokenizer says, as lm-evaluation-harness and llama.cpp do: GGUF tokenizer.ggml.add_bos_token \
(when missing: yes for SentencePiece vocabularies, no for gpt2-style ones), or add_bos_token of the \
tokenizer_config.json beside a tokenizer.json (when missing: no). With a BOS, requests' contexts, rolling \
perplexity's texts and llamacpp perplexity's chunks start with it.";

// The fields' docs are `--help`'s text, where `<model>` is a placeholder, not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, visible_alias = "tasks", default_value = "perplexity", help = crate::tasks::catalog::tasks_help())]
    pub task: String,
    /// lm-evaluation-harness's model arguments, for its users (`--model hf --model_args
    /// pretrained=DIR`): `pretrained` names the model as --model does (a folder, or with
    /// `gguf_file=NAME` the GGUF file in it), `tokenizer`, `max_length` and `add_bos_token` act
    /// as --tokenizer, --ctx and --add-bos; `dtype` and the loading keys (trust_remote_code,
    /// device_map, parallelize…) change nothing here (`device` is --device). --model may then be left out or be
    /// lm-eval's model type (hf).
    #[arg(long, visible_alias = "model_args", value_name = "KEY=VALUE,…", value_parser = ModelArgsGiven::parse)]
    pub model_args: Option<ModelArgsGiven>,
    /// The data file of the evaluated split, in place of the task file's: the input of the
    /// generic tasks multiple_choice (JSON lines {"context", "choices", "gold"}) and perplexity
    /// (a UTF-8 text; default: a built-in wikitext-2 excerpt).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A folder of lm-evaluation-harness task YAML files (every *.yaml under it): their tasks,
    /// groups and tags become names --task accepts, looked up before the shipped tasks. Data
    /// must be local (dataset_kwargs.data_files, found beside the file, under --data-dir or
    /// as written): dataset_path json, csv or text, or one of the shipped tasks' datasets.
    #[arg(long, alias = "include_path")]
    pub include_path: Option<PathBuf>,
    /// The benchmarks' data folder, laid out like shared/data (hellaswag/, arc/, piqa/, …):
    /// where task files' data files are looked for when they are not beside the file.
    #[arg(long, env = "EVALMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Score only the first N documents of each task, or a fraction (0.1) of them.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<Limit>,
    /// Solved examples before each question, picked as lm-evaluation-harness does (seed 1234;
    /// mmlu: the first N of the dev split; hellaswag, arc, piqa, winogrande: the training split;
    /// lambada_openai: its test split); 0: the task file's own num_fewshot, else none.
    #[arg(long, visible_alias = "num_fewshot", default_value_t = 0)]
    pub num_fewshot: usize,
    /// rolling: lm-evaluation-harness's loglikelihood_rolling; llamacpp: llama-perplexity's chunks.
    #[arg(long, value_enum, default_value_t = PerplexityMode::Rolling)]
    pub perplexity_mode: PerplexityMode,
    /// Context length in tokens, at most the model's positions. Default: 512 for llamacpp mode, the
    /// model's maximum for rolling.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Compute threads (of each worker, under MPI). Default: all cores; under MPI, each node's
    /// cores shared among its workers.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most input tokens in one micro-batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// lm-evaluation-harness's batch size, for its users: N requests per micro-batch, taken as a
    /// token budget of N times each task's longest request (a context with its longest
    /// continuation, or a rolling window), instead of --batch-tokens. Scores do not depend on
    /// it; the results' `evalmesh.tasks.<task>.batch_tokens` records each task's budget.
    #[arg(long, visible_alias = "batch_size", value_name = "N", value_parser = parse_batch_size,
          conflicts_with_all = ["batch_tokens", "tune"])]
    pub batch_size: Option<usize>,
    /// Write each context through the model's chat template (GGUF `tokenizer.chat_template`
    /// or the tokenizer_config.json's), as lm-evaluation-harness's --apply_chat_template:
    /// the system prompt, the few-shot turns and the document as one user message, then the
    /// assistant's turn; generation also stops at the template's end-of-turn tokens.
    #[arg(long, visible_alias = "apply_chat_template")]
    pub apply_chat_template: bool,
    /// With --apply-chat-template: each few-shot example as its own user and assistant
    /// turns (lm-evaluation-harness's --fewshot_as_multiturn).
    #[arg(long, visible_alias = "fewshot_as_multiturn", requires = "apply_chat_template")]
    pub fewshot_as_multiturn: bool,
    /// A system prompt before each context (with the task's description after it); a
    /// system message with --apply-chat-template (lm-evaluation-harness's --system_instruction).
    #[arg(long, visible_alias = "system_instruction")]
    pub system_instruction: Option<String>,
    /// generate_until tasks: generation settings laid over each task file's
    /// `generation_kwargs`, as lm-evaluation-harness's --gen_kwargs: `max_gen_toks=64`,
    /// `until=NAME` (one stop text), `do_sample=true,temperature=0.7`, `top_k`, `top_p`.
    /// A document's own `until` and `max_tokens` (the generic `generate` task) still win.
    #[arg(long, visible_alias = "gen_kwargs", value_name = "KEY=VALUE,…", value_parser = parse_gen_kwargs)]
    pub gen_kwargs: Option<GenKwargs>,
    /// lm-evaluation-harness's seeds: one number for all four, or `random,numpy,torch,fewshot`
    /// (`None` for the first two). The few-shot seed picks the demonstrations (as lm-eval's
    /// sampler does with it); the torch seed starts each sampled document's draws (below
    /// 65536); the first two are recorded, nothing here draws from them.
    #[arg(long, default_value = "0,1234,1234,1234", value_parser = Seeds::parse)]
    pub seed: Seeds,
    /// Let tasks that score by running the model's output as code (humaneval) run it: each
    /// program in a sandboxed child `python3` (its own network namespace with no network,
    /// a time limit, resource limits, a fresh temporary folder). Off by default, as
    /// lm-evaluation-harness asks for --confirm_run_unsafe_code.
    #[arg(long, visible_alias = "confirm_run_unsafe_code")]
    pub allow_code_execution: bool,
    /// generate_until tasks: the most sequences decoding at once (continuous batching: a
    /// finished sequence's slot is refilled at once). Generated text does not depend on it.
    #[arg(long, default_value_t = 32)]
    pub max_sequences: usize,
    /// generate_until tasks: the KV cache's budget in MiB (per worker); sequences wait
    /// until their prompt and max_gen_toks fit it.
    #[arg(long, default_value_t = 2048)]
    pub kv_cache_mb: usize,
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
    /// Where the workers compute: `cpu`, or `cuda` (one GPU per worker, by its rank on the
    /// node; needs a build with `--features cuda`), or as lm-evaluation-harness's `cuda:N`,
    /// GPU N of a single process.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
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
    /// With --device cpu: how the weights are kept. `f32` widens them at load (the fastest
    /// products, four bytes a value); `stored` keeps them as the file stores them (bf16,
    /// f16, GGUF quantisation blocks) and widens them strip by strip inside each product,
    /// so that memory follows the file's size; `auto` (the default) takes `stored` where f32
    /// would not fit in the machine's memory with a tenth spare, else `f32`. The scores are
    /// the same bits either way.
    #[arg(long, value_enum, default_value_t = WeightsArg::Auto)]
    pub weights_in_memory: WeightsArg,
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
    /// Compute each choice with its own copy of the context, and each generated sequence's
    /// whole prompt, instead of sharing them (for comparison).
    #[arg(long)]
    pub no_prefix_sharing: bool,
    /// Where to write the results: a FILE.json, the journal beside it (FILE.journal.jsonl); or,
    /// as lm-evaluation-harness's --output_path, a folder (any path not ending in .json):
    /// DIR/<model>/results_<date>.json (<model>: --model with `/` and the like as `__`),
    /// the journal beside it (results.journal.jsonl).
    #[arg(long, visible_alias = "output_path")]
    pub output: Option<PathBuf>,
    /// Write samples_<task>_<date>.jsonl beside the results, in lm-evaluation-harness's schema:
    /// every document with its requests, scores and metrics.
    #[arg(long, visible_alias = "log_samples")]
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
    #[arg(long, value_name = "true|false", help = ADD_BOS_HELP)]
    pub add_bos: Option<bool>,
    /// How much the run logs, as lm-evaluation-harness's --verbosity: CRITICAL, ERROR,
    /// WARNING, INFO (the default) or DEBUG, in any case; RUST_LOG, where set, wins.
    #[arg(long, value_parser = parse_verbosity)]
    pub verbosity: Option<log::LevelFilter>,
    /// Where standard error is not a terminal (a batch job's log, the output mpirun
    /// forwards), a line of progress at most every SECONDS while a task is scored or
    /// generated: done and total, the rate and the time left (0: none). A terminal shows a
    /// live bar instead.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = non_negative_seconds,
          allow_negative_numbers = true)]
    pub progress_every: f64,
    /// Log each task's first document before it is scored: its context and each
    /// continuation, as the model reads them (lm-evaluation-harness's --write_out).
    #[arg(long, visible_alias = "write_out")]
    pub write_out: bool,
    /// lm-evaluation-harness's --trust_remote_code, accepted for its users: evalmesh runs no
    /// code from a model's folder, only its own implementation of the model's architecture.
    #[arg(long, visible_alias = "trust_remote_code")]
    pub trust_remote_code: bool,
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
    #[arg(long, value_name = "true|false", help = ADD_BOS_HELP)]
    pub add_bos: Option<bool>,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A text to score (UTF-8), tokenized with the model's BOS policy; repeat the flag for
    /// more (each line's `file` is the text's place among them, from 0).
    #[arg(long, required = true)]
    pub file: Vec<PathBuf>,
    /// The most likely tokens to list at each position.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Write the JSON lines to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Compute threads. Default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to compute: `cpu`, or `cuda` (this process's GPU, `cuda:N` GPU N; needs a
    /// build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceArg,
    /// With --device cuda: `bf16` or `f32` weights and matrix operands, as for `run`.
    #[arg(long, value_enum, default_value_t = GpuPrecisionArg::Bf16)]
    pub gpu_precision: GpuPrecisionArg,
}

/// The compute device of the workers (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    /// `cuda`: each worker its node's GPU by local rank (GPU 0 in one process); `cuda:N`
    /// (lm-evaluation-harness's spelling): GPU N of a single process.
    Cuda {
        gpu: Option<usize>,
    },
}

impl DeviceArg {
    /// The GPU `cuda:N` names.
    pub fn gpu(&self) -> Option<usize> {
        match self {
            DeviceArg::Cuda { gpu } => *gpu,
            DeviceArg::Cpu => None,
        }
    }
}

/// `--device`: `cpu`, `cuda`, or `cuda:N`.
fn parse_device(s: &str) -> Result<DeviceArg, String> {
    match s {
        "cpu" => Ok(DeviceArg::Cpu),
        "cuda" => Ok(DeviceArg::Cuda { gpu: None }),
        _ => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(n)) => Ok(DeviceArg::Cuda { gpu: Some(n) }),
            _ => Err(format!("`{s}`: give cpu, cuda, or cuda:N (GPU N, counted after CUDA_VISIBLE_DEVICES)")),
        },
    }
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

/// How CPU workers keep their weights (`--weights-in-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    Auto,
    F32,
    Stored,
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

/// `--gen_kwargs`: its pairs, each a key lm-eval's `generation_kwargs` takes with a value it
/// can hold ([`GenerationKwargs::update`]).
fn parse_gen_kwargs(s: &str) -> Result<GenKwargs, String> {
    let pairs = parse_pairs(s)?;
    let given = pairs.iter().map(|(k, v)| (k.as_str(), v));
    GenerationKwargs::default().update(given).map_err(|(key, what)| format!("`{key}`: {what}"))?;
    Ok(GenKwargs(pairs))
}

/// `--verbosity`: Python's logging levels (CRITICAL has no level of its own here: ERROR).
fn parse_verbosity(s: &str) -> Result<log::LevelFilter, String> {
    match s.to_uppercase().as_str() {
        "CRITICAL" | "ERROR" => Ok(log::LevelFilter::Error),
        "WARNING" | "WARN" => Ok(log::LevelFilter::Warn),
        "INFO" => Ok(log::LevelFilter::Info),
        "DEBUG" => Ok(log::LevelFilter::Debug),
        _ => Err(format!("`{s}`: give CRITICAL, ERROR, WARNING, INFO or DEBUG")),
    }
}

/// `--batch-size`: a number of requests, 1 or more (not lm-evaluation-harness's `auto`).
fn parse_batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ if s.starts_with("auto") => Err(format!(
            "`{s}`: evalmesh packs micro-batches by tokens, and --tune picks the fastest budget; give a number of requests"
        )),
        _ => Err(format!("`{s}` is not a number of requests (1 or more)")),
    }
}

/// A duration in seconds: finite and not negative.
fn non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds (0 or more)")),
    }
}
