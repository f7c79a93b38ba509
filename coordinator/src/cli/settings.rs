//! Flags checked once: `RunArgs::resolve` turns what clap parsed into the [`RunSettings`]
//! a run works from, and the other commands' `check`s refuse what cannot work, each with a
//! [`UsageError`] that names the flag and what to do. Nothing here reads a model or data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use evalmesh_common::protocol::{CudaAware, Device, GpuPrecision, WeightsInMemory};
use evalmesh_common::Strategy;

use super::args::{
    CalibrateArgs, CudaAwareArg, DeviceArg, GpuPrecisionArg, ModelArgs, PlanArgs, RunArgs, ScoreArgs, StrategyArg,
    WeightsArg,
};
use super::lm_eval_flags::{GenKwargs, ModelArgsGiven, Seeds, HF_MODEL_TYPES};
use crate::evaluate::Limit;
use crate::journal::journal_path;
use crate::lm_eval::files::{date_id, results_in_folder};
use crate::model::{cache_dir, TEST_MODEL_FILE};
use crate::tasks::perplexity::PerplexityMode;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no --model given and the test model is not in the cache at {}: run scripts/fetch-test-model.sh, or pass --model", .0.display())]
    NoDefaultModel(PathBuf),
    #[error("results file {} exists: pass --overwrite to replace it, or --resume to finish the run it belongs to", .0.display())]
    OutputExists(PathBuf),
    #[error("{0} measures MPI transfers: start it with mpirun -np 2 evalmesh {0}")]
    NeedsMpi(&'static str),
    #[error("{flag} spreads the model over worker ranks, and this is one process: start it under mpirun or srun with a rank for the coordinator and one for each worker (for example mpirun -np {ranks} evalmesh run …), or leave out {flag}")]
    LayoutNeedsRanks { flag: String, ranks: usize },
    #[error("{0} sets how GPUs compute or pass activations: it needs --device cuda (drop it for --device cpu)")]
    GpuFlagWithoutCuda(&'static str),
    #[error("{0} sets how the CPU keeps its weights: drop it for --device cuda, whose weights are kept as --gpu-precision says")]
    CpuFlagWithCuda(&'static str),
    #[error("--resume needs --output: the journal lives next to the results file")]
    ResumeWithoutOutput,
    #[error("--log-samples needs --output: the samples files are written next to the results file")]
    SamplesWithoutOutput,
    #[error("--output {}: not a folder (a results file's name ends in .json)", .0.display())]
    OutputNotAFolder(PathBuf),
    #[error("{flag} must be at least {min}, got {value}")]
    TooSmall { flag: &'static str, min: usize, value: usize },
    #[error("--model {0} and --model_args pretrained=…: name the model once (beside --model_args, --model may only be lm-evaluation-harness's model type, hf)")]
    ModelTwice(PathBuf),
    #[error("--model {0} is lm-evaluation-harness's model type: name the model with --model_args pretrained=PATH, or give its path as --model")]
    ModelTypeWithoutPath(String),
    #[error("--device cuda:{0} names one process's GPU; under mpirun each worker takes its node's GPU by its local rank: give --device cuda (CUDA_VISIBLE_DEVICES chooses which GPUs)")]
    OneGpuUnderMpi(usize),
    #[error("--model_args {key}={given} and {flag} {other}: give it once")]
    GivenTwice { key: &'static str, given: String, flag: &'static str, other: String },
}

/// The fewest tokens a micro-batch may hold (`--batch-tokens`).
const MIN_BATCH_TOKENS: usize = 16;

/// How the workers of an MPI job are to be laid out: `--strategy` and the sizes given.
#[derive(Debug, Clone, Copy)]
pub struct LayoutRequest {
    pub strategy: Strategy,
    pub dp: Option<usize>,
    pub pp: Option<usize>,
    pub tp: Option<usize>,
}

impl LayoutRequest {
    /// Whether the cost model chooses the whole layout: `--strategy auto` and no size given.
    pub fn is_auto(&self) -> bool {
        self.strategy == Strategy::Auto && self.dp.is_none() && self.pp.is_none() && self.tp.is_none()
    }
}

/// The files a run writes: the results, the journal beside them, and the samples' folder
/// when `--log-samples` asks for them.
#[derive(Debug, Clone)]
pub struct OutputFiles {
    pub results: PathBuf,
    pub journal: PathBuf,
    pub samples_dir: Option<PathBuf>,
    /// The run's date in lm-evaluation-harness's file names (the samples', and the results'
    /// in an output folder).
    pub date_id: String,
}

impl OutputFiles {
    /// `--output`: a path ending in `.json` is the results file, the journal and samples
    /// beside it; any other path is a folder, as lm-evaluation-harness's `--output_path`:
    /// the results go to `DIR/<model>/results_<date>.json`, the samples beside them, the
    /// journal to `DIR/<model>/results.journal.jsonl` (one name, for `--resume`).
    fn new(output: PathBuf, model: &Path, log_samples: bool) -> Result<Self, UsageError> {
        let date_id = date_id(std::time::SystemTime::now());
        let (results, journal) = if output.extension().is_some_and(|e| e == "json") {
            (output.clone(), journal_path(&output))
        } else {
            if output.is_file() {
                return Err(UsageError::OutputNotAFolder(output));
            }
            let results = results_in_folder(&output, &model.display().to_string(), &date_id);
            let journal = results.with_file_name("results.journal.jsonl");
            (results, journal)
        };
        let dir = match results.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(OutputFiles { samples_dir: log_samples.then_some(dir), results, journal, date_id })
    }
}

/// A run's settings, every flag checked.
#[derive(Debug)]
pub struct RunSettings {
    pub model: ModelArgs,
    pub random_weights: bool,
    pub tasks: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub include_path: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub num_fewshot: usize,
    pub limit: Option<Limit>,
    pub perplexity_mode: PerplexityMode,
    pub ctx: Option<usize>,
    pub threads: Option<usize>,
    pub batch_tokens: usize,
    /// `--batch-size N`: each task's budget is N times its longest request.
    pub batch_size: Option<usize>,
    pub max_sequences: usize,
    pub kv_cache_mb: usize,
    pub allow_code_execution: bool,
    pub apply_chat_template: bool,
    pub fewshot_as_multiturn: bool,
    pub system_instruction: Option<String>,
    pub layout: LayoutRequest,
    pub device: Device,
    /// `--device cuda:N`: the GPU of a single process (else its local rank's).
    pub gpu: Option<usize>,
    pub tune: bool,
    pub profile: Option<PathBuf>,
    pub share_prefixes: bool,
    pub output: Option<OutputFiles>,
    pub resume: bool,
    pub overwrite: bool,
    pub trace: Option<PathBuf>,
    /// `--add-bos`: overrides the tokenizer's BOS policy where given.
    pub add_bos: Option<bool>,
    /// `--model_args`'s pairs as given, for the results' `config.model_args`.
    pub model_args: Vec<(String, serde_json::Value)>,
    /// `--gen_kwargs`: laid over each generate_until task's `generation_kwargs`.
    pub gen_kwargs: GenKwargs,
    pub seeds: Seeds,
    /// `--write_out`: log each task's first document before scoring.
    pub write_out: bool,
    /// `--progress-every`: how often a log line tells the progress (none for 0).
    pub progress_every: Option<Duration>,
}

impl RunArgs {
    /// Checks the flags against each other; `under_mpi` says whether a launcher started
    /// this process as a rank of a job (layout flags need one).
    pub fn resolve(mut self, under_mpi: bool) -> Result<RunSettings, UsageError> {
        if self.batch_tokens < MIN_BATCH_TOKENS {
            return Err(UsageError::TooSmall {
                flag: "--batch-tokens",
                min: MIN_BATCH_TOKENS,
                value: self.batch_tokens,
            });
        }
        if self.max_sequences == 0 {
            return Err(UsageError::TooSmall { flag: "--max-sequences", min: 1, value: 0 });
        }
        if self.kv_cache_mb == 0 {
            return Err(UsageError::TooSmall { flag: "--kv-cache-mb", min: 1, value: 0 });
        }
        if self.ctx == Some(0) {
            return Err(UsageError::TooSmall { flag: "--ctx", min: 1, value: 0 });
        }
        if !under_mpi {
            // The coordinator, and the workers the sizes given ask for (at least two).
            let ranks = 1 + [self.dp, self.pp, self.tp].iter().map(|n| n.unwrap_or(1)).product::<usize>().max(2);
            let sizes = [("--dp", self.dp), ("--pp", self.pp), ("--tp", self.tp)];
            if let Some((flag, Some(n))) = sizes.iter().find(|(_, n)| n.is_some()) {
                return Err(UsageError::LayoutNeedsRanks { flag: format!("{flag} {n}"), ranks });
            }
            if self.strategy != StrategyArg::Auto {
                let name = clap::ValueEnum::to_possible_value(&self.strategy)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default();
                return Err(UsageError::LayoutNeedsRanks { flag: format!("--strategy {name}"), ranks });
            }
        }
        if let (true, Some(gpu)) = (under_mpi, self.device.gpu()) {
            return Err(UsageError::OneGpuUnderMpi(gpu));
        }
        if self.threads == Some(0) {
            return Err(UsageError::TooSmall { flag: "--threads", min: 1, value: 0 });
        }
        // A results file named by --output is never replaced unawares; in an output folder each
        // run writes a new dated one.
        if let Some(output) = self.output.as_ref().filter(|o| o.extension().is_some_and(|e| e == "json")) {
            if output.exists() && !self.overwrite && !self.resume {
                return Err(UsageError::OutputExists(output.clone()));
            }
        }
        if self.resume && self.output.is_none() {
            return Err(UsageError::ResumeWithoutOutput);
        }
        if self.log_samples && self.output.is_none() {
            return Err(UsageError::SamplesWithoutOutput);
        }
        let model_args = match self.model_args.take() {
            Some(given) => self.take_model_args(given)?,
            None => match self.model.model.as_ref().and_then(|m| m.to_str()) {
                Some(kind) if HF_MODEL_TYPES.contains(&kind) && !Path::new(kind).exists() => {
                    return Err(UsageError::ModelTypeWithoutPath(kind.into()))
                }
                _ => Vec::new(),
            },
        };
        let device = device_of(self.device, self.cuda_aware, self.gpu_precision, self.weights_in_memory)?;
        let output = match self.output {
            Some(output) => Some(OutputFiles::new(output, &self.model.path()?, self.log_samples)?),
            None => None,
        };
        Ok(RunSettings {
            model: self.model,
            random_weights: self.random_weights,
            tasks: self.task.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
            data_dir: self.data_dir,
            include_path: self.include_path,
            data: self.data,
            num_fewshot: self.num_fewshot,
            limit: self.limit,
            perplexity_mode: self.perplexity_mode,
            ctx: self.ctx,
            threads: self.threads,
            batch_tokens: self.batch_tokens,
            batch_size: self.batch_size,
            max_sequences: self.max_sequences,
            kv_cache_mb: self.kv_cache_mb,
            allow_code_execution: self.allow_code_execution,
            apply_chat_template: self.apply_chat_template,
            fewshot_as_multiturn: self.fewshot_as_multiturn,
            system_instruction: self.system_instruction,
            gpu: self.device.gpu(),
            layout: LayoutRequest { strategy: self.strategy.into(), dp: self.dp, pp: self.pp, tp: self.tp },
            device,
            tune: self.tune,
            profile: self.profile,
            share_prefixes: !self.no_prefix_sharing,
            output,
            resume: self.resume,
            overwrite: self.overwrite,
            trace: self.trace,
            add_bos: self.add_bos,
            model_args,
            gen_kwargs: self.gen_kwargs.unwrap_or_default(),
            seeds: self.seed,
            write_out: self.write_out,
            progress_every: Some(Duration::from_secs_f64(self.progress_every)).filter(|d| !d.is_zero()),
        })
    }

    /// Takes `--model_args` into the flags it stands for (the model, --tokenizer, --ctx,
    /// --add-bos), refusing one given both ways; returns its pairs.
    fn take_model_args(&mut self, given: ModelArgsGiven) -> Result<Vec<(String, serde_json::Value)>, UsageError> {
        if let Some(model) = self.model.model.take() {
            if !model.to_str().is_some_and(|kind| HF_MODEL_TYPES.contains(&kind)) {
                return Err(UsageError::ModelTwice(model));
            }
        }
        if let Some(dtype) = &given.dtype {
            log::warn!("--model_args dtype={dtype}: not taken: the CPU computes in f32 (widening the weights exactly), a GPU as --gpu-precision says");
        }
        self.model.model = Some(given.model);
        let twice = |key, given: String, flag, other: String| UsageError::GivenTwice { key, given, flag, other };
        if let Some(tokenizer) = given.tokenizer {
            if let Some(other) = &self.model.tokenizer {
                let given = tokenizer.display().to_string();
                return Err(twice("tokenizer", given, "--tokenizer", other.display().to_string()));
            }
            self.model.tokenizer = Some(tokenizer);
        }
        if let Some(length) = given.max_length {
            if let Some(ctx) = self.ctx.filter(|&c| c != length) {
                return Err(twice("max_length", length.to_string(), "--ctx", ctx.to_string()));
            }
            self.ctx = Some(length);
        }
        if let Some(add) = given.add_bos {
            if let Some(other) = self.add_bos.filter(|&b| b != add) {
                return Err(twice("add_bos_token", add.to_string(), "--add-bos", other.to_string()));
            }
            self.add_bos = Some(add);
        }
        Ok(given.pairs)
    }
}

impl PlanArgs {
    pub fn check(&self) -> Result<(), UsageError> {
        if self.workers == 0 {
            return Err(UsageError::TooSmall { flag: "--workers", min: 1, value: 0 });
        }
        if self.ctx == 0 {
            return Err(UsageError::TooSmall { flag: "--ctx", min: 1, value: 0 });
        }
        if self.decode_sequences == 0 {
            return Err(UsageError::TooSmall { flag: "--decode-sequences", min: 1, value: 0 });
        }
        if self.batch_tokens < self.ctx {
            return Err(UsageError::TooSmall {
                flag: "--batch-tokens (at least --ctx)",
                min: self.ctx,
                value: self.batch_tokens,
            });
        }
        Ok(())
    }
}

impl CalibrateArgs {
    pub fn check(&self) -> Result<Device, UsageError> {
        if self.batch_tokens < MIN_BATCH_TOKENS {
            return Err(UsageError::TooSmall {
                flag: "--batch-tokens",
                min: MIN_BATCH_TOKENS,
                value: self.batch_tokens,
            });
        }
        device_of(self.device, CudaAwareArg::Auto, GpuPrecisionArg::Bf16, WeightsArg::Auto)
    }
}

impl ScoreArgs {
    pub fn check(&self) -> Result<Device, UsageError> {
        device_of(self.device, CudaAwareArg::Auto, self.gpu_precision, WeightsArg::Auto)
    }
}

impl ModelArgs {
    /// `--model`, or the cached test model where it is not given.
    pub fn path(&self) -> Result<PathBuf, UsageError> {
        model_path(self.model.as_deref())
    }
}

/// A model path as given, or the cached test model.
pub fn model_path(given: Option<&Path>) -> Result<PathBuf, UsageError> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            let default = cache_dir().join(TEST_MODEL_FILE);
            match default.is_file() {
                true => Ok(default),
                false => Err(UsageError::NoDefaultModel(default)),
            }
        }
    }
}

/// The workers' device from `--device`, with `--cuda-aware` and `--gpu-precision`, which
/// only a GPU run takes, and `--weights-in-memory`, which only a CPU run takes.
fn device_of(
    device: DeviceArg,
    cuda_aware: CudaAwareArg,
    precision: GpuPrecisionArg,
    weights: WeightsArg,
) -> Result<Device, UsageError> {
    match (device, cuda_aware, precision) {
        (DeviceArg::Cpu, CudaAwareArg::Auto, GpuPrecisionArg::Bf16) => Ok(Device::Cpu {
            weights: match weights {
                WeightsArg::Auto => WeightsInMemory::Auto,
                WeightsArg::F32 => WeightsInMemory::F32,
                WeightsArg::Stored => WeightsInMemory::Stored,
            },
        }),
        (DeviceArg::Cpu, CudaAwareArg::Auto, _) => Err(UsageError::GpuFlagWithoutCuda("--gpu-precision")),
        (DeviceArg::Cpu, _, _) => Err(UsageError::GpuFlagWithoutCuda("--cuda-aware")),
        (DeviceArg::Cuda { .. }, ..) if weights != WeightsArg::Auto => {
            Err(UsageError::CpuFlagWithCuda("--weights-in-memory"))
        }
        (DeviceArg::Cuda { .. }, cuda_aware, precision) => Ok(Device::Cuda {
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
