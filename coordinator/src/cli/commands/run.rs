//! `evalmesh run`: loads the tasks and the model, starts the engine (the lightweight one
//! in a single process, the distributed one on rank 0 of an MPI job), evaluates with
//! the journal, and prints and writes the results.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use evalmesh_common::cost::{BatchShape, Placement};
use evalmesh_common::hardware::HardwareProfile;
use evalmesh_common::protocol::{Device, GpuPrecision, ModelRef};
use evalmesh_common::{partition_layers, strategy, ModelConfig, ParallelLayout, StageSpec};
use evalmesh_worker::backend::MatmulStats;
use evalmesh_worker::Target;
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::cli::args::RunArgs;
use crate::cli::settings::{LayoutRequest, RunSettings};
use crate::cli::tables::{monitoring_table, prediction_line};
use crate::cli::trace::write_trace;
use crate::distributed::DistributedEngine;
use crate::engine::{EvaluationEngine, LightweightEngine};
use crate::evaluate::{evaluate, Limit, Settings};
use crate::journal::{model_fingerprint, Journal};
use crate::lm_eval::files::{sanitize_model_name, SamplesFiles};
use crate::lm_eval::python::float_repr;
use crate::model::cache_dir;
use crate::prediction::{placement, run_profile, Predictor};
use crate::results::{EvalmeshSection, RankStats, Report, RunConfig, RunInfo};
use crate::tasks::catalog::{Catalog, Source};
use crate::tasks::code_execution::Sandbox;
use crate::tasks::metrics::BOOTSTRAP_ITERATIONS;
use crate::tasks::perplexity::PerplexityMode;
use crate::tasks::prompt::PromptStyle;
use crate::tasks::requests::Windows;
use crate::tasks::Task;
use crate::tokenizer::chat::END_OF_TURN_TOKENS;

/// Where a run computes: on the worker ranks of an MPI job, or in this process.
enum Place<'w> {
    Ranks(&'w SimpleCommunicator),
    Alone(Target),
}

/// `world` is the MPI world of an `mpirun`/`srun` job, seen from rank 0; `None` in a single process.
pub fn run(args: RunArgs, world: Option<&SimpleCommunicator>) -> anyhow::Result<()> {
    if args.task == "list" {
        // lm-eval's `--tasks list`: what the names stand for, and nothing run.
        println!("{}", Catalog::new(args.include_path.as_deref())?.listing());
        return Ok(());
    }
    let (started, started_at) = (Instant::now(), SystemTime::now());
    let settings = args.resolve(world.is_some())?;
    // Under MPI the workers take --threads from their setup message; this pool serves rank 0.
    let threads = settings.threads.unwrap_or(0);
    evalmesh_worker::start_threads(threads).context("cannot start the compute threads: lower --threads")?;
    if let Some(dir) = settings.output.as_ref().and_then(|o| o.results.parent()).filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    // In one process, its GPU is found before anything is read, so that a machine without
    // one fails at once; under MPI each worker finds its own (rank 0 needs none).
    let place = match world.filter(|w| w.size() > 1) {
        Some(world) => Place::Ranks(world),
        None => Place::Alone(Target::alone(settings.device, settings.gpu)?),
    };
    let (model_path, mut model) = super::open_model(&settings.model, settings.random_weights)?;
    if let Some(add) = settings.add_bos {
        model.tokenizer.set_add_bos(add)?;
    }
    let chat_template = match settings.apply_chat_template {
        true => Some(model.tokenizer.chat_template().ok_or_else(|| {
            anyhow::anyhow!(
                "--apply-chat-template: {} has no chat template (GGUF tokenizer.chat_template, or chat_template in tokenizer_config.json)",
                model_path.display()
            )
        })?),
        false => None,
    };
    let source = Source {
        data_dir: settings.data_dir.as_deref(),
        data_file: settings.data.as_deref(),
        num_fewshot: settings.num_fewshot,
        prompt: PromptStyle {
            system_instruction: settings.system_instruction.as_deref(),
            chat: chat_template.as_ref().map(|t| (t, settings.fewshot_as_multiturn)),
        },
        fewshot_seed: settings.seeds.fewshot,
        gen_kwargs: &settings.gen_kwargs.0,
    };
    let catalog = Catalog::new(settings.include_path.as_deref())?;
    let mut tasks = Vec::new();
    for name in &settings.tasks {
        tasks.extend(catalog.load(name, &source)?);
    }
    if settings.write_out {
        tasks.iter().for_each(write_out);
    }
    if !settings.gen_kwargs.0.is_empty() && !tasks.iter().any(|t| t.generates()) {
        log::warn!("--gen_kwargs: no generate_until task in this run, so they change nothing");
    }
    let mut stop_tokens: Vec<u32> = model.tokenizer.eos().into_iter().collect();
    if chat_template.is_some() {
        stop_tokens.extend(END_OF_TURN_TOKENS.iter().filter_map(|t| model.tokenizer.token_id(t)));
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
    }
    let config = model.source.config().clone();
    if let Some(ctx) = settings.ctx.filter(|&ctx| ctx > config.max_position) {
        anyhow::bail!(
            "--ctx {ctx} is more than the model's {} positions: pass --ctx {} or less",
            config.max_position,
            config.max_position
        );
    }
    let windows = match settings.perplexity_mode {
        PerplexityMode::Llamacpp => Windows::Llamacpp { ctx: settings.ctx.unwrap_or(512) },
        PerplexityMode::Rolling => Windows::Rolling { max_len: settings.ctx.unwrap_or(config.max_position) },
    };
    let fingerprint =
        model_fingerprint(&model_path, settings.random_weights).with_context(|| model_path.display().to_string())?;
    let mut journal = match &settings.output {
        Some(output) => Some(Journal::open(
            &output.journal,
            &fingerprint,
            settings.device.arithmetic(),
            settings.resume,
            settings.overwrite,
        )?),
        None => None,
    };

    let mut profile = run_profile(
        settings.profile.as_deref(),
        &cache_dir(),
        &config,
        settings.batch_tokens,
        settings.device,
        settings.gpu.unwrap_or(0),
    )?;
    if let Device::Cuda { precision: GpuPrecision::F32, .. } = settings.device {
        // Weights of 4 bytes for the memory model; the rates stay bf16's, so the predicted
        // throughput of the f32 path is optimistic.
        profile.compute_bytes = 4;
    }
    let stop = crate::signals::coordinator_stop_flag().context("signal handlers")?;
    let load_start = Instant::now();
    let (mut engine, predictor): (Box<dyn EvaluationEngine + '_>, Predictor) = match place {
        Place::Ranks(world) => {
            let workers = world.size() as usize - 1;
            let (layout, stages) = choose_layout(&settings, &config, workers, &profile)?;
            let threads = settings.threads.unwrap_or(0);
            let model = ModelRef { path: model_path.display().to_string(), random_weights: settings.random_weights };
            let engine = DistributedEngine::start(world, &model, &config, layout, &stages, settings.device, threads)?;
            let (threads, lanes) = engine.workers().first().map_or((1, 1), |w| (w.threads, w.lanes));
            let placement = Placement { threads_per_worker: threads, workers_per_node: workers, lanes };
            (Box::new(engine), Predictor { config: config.clone(), layout, stages, profile, placement })
        }
        Place::Alone(target) => {
            let engine = Box::new(LightweightEngine::load(model.source.as_ref(), &target)?);
            let placement = Placement {
                threads_per_worker: rayon::current_num_threads(),
                workers_per_node: 1,
                lanes: engine.lanes(),
            };
            let layout = ParallelLayout { dp: 1, pp: 1, tp: 1 };
            let stages = vec![StageSpec::whole(&config)];
            (engine, Predictor { config: config.clone(), layout, stages, profile, placement })
        }
    };
    let load_seconds = load_start.elapsed().as_secs_f64();
    log::info!("{} (weights loaded in {load_seconds:.1} s)", engine.describe());
    if let Some(journal) = journal.as_mut() {
        journal.record_devices(&engine.provenance())?;
    }

    let sandbox = match settings.allow_code_execution {
        true => Some(Sandbox::new()?),
        false => None,
    };
    let evaluation_settings = Settings {
        windows,
        limit: settings.limit,
        max_position: config.max_position,
        share_prefixes: settings.share_prefixes,
        prefix_split_limit: config.prefix_split_limit(),
        samples: settings
            .output
            .as_ref()
            .and_then(|o| Some(SamplesFiles { dir: o.samples_dir.as_deref()?, date_id: o.date_id.as_str() })),
        model_fingerprint: &fingerprint,
        batch_tokens: settings.batch_tokens,
        batch_size: settings.batch_size,
        predictor: Some(&predictor),
        tune: settings.tune,
        stop: Some(&stop),
        max_sequences: settings.max_sequences,
        kv_budget_bytes: settings.kv_cache_mb << 20,
        sandbox: sandbox.as_ref(),
        stop_tokens: &stop_tokens,
        sampling_seed: settings.seeds.torch,
        progress_every: settings.progress_every,
    };
    let start = Instant::now();
    let evaluation = evaluate(engine.as_mut(), &model.tokenizer, &tasks, &evaluation_settings, journal.as_mut())?;
    let seconds = start.elapsed().as_secs_f64();

    let mut monitoring: Vec<RankStats> = engine
        .monitoring(settings.trace.is_some())?
        .into_iter()
        .map(|(rank, stats)| RankStats { rank, stats })
        .collect();
    let matmul = monitoring.iter().fold(MatmulStats::default(), |m, r| MatmulStats {
        flops: m.flops + r.stats.matmul_flops,
        seconds: m.seconds + r.stats.matmul_seconds,
    });
    let engine_details = engine.details();
    if let Some(path) = &settings.trace {
        write_trace(path, &monitoring, &engine_details).with_context(|| path.display().to_string())?;
        log::info!("timeline written to {} (open it in Perfetto or chrome://tracing)", path.display());
    }
    for rank in &mut monitoring {
        rank.stats.trace.clear();
    }
    let mut prediction = evaluation.prediction;
    if let Some(p) = &mut prediction {
        p.measured_stage_seconds = stage_busy_seconds(&monitoring, predictor.layout);
    }
    let report = Report {
        tasks: evaluation.results,
        run: run_info(&settings, &model_path, config.parameter_count(), started_at, started.elapsed().as_secs_f64()),
        evalmesh: EvalmeshSection {
            batch_tokens: settings.batch_tokens,
            config,
            engine: engine.describe(),
            engine_details,
            eval_seconds: seconds,
            load_seconds,
            matmul_gflop: matmul.flops as f64 / 1e9,
            matmul_gflops_per_s: matmul.gflops_per_s(),
            matmul_seconds: matmul.seconds,
            model: model_path.display().to_string(),
            model_fingerprint: fingerprint,
            monitoring,
            prediction,
            tasks: evaluation.tasks,
            tuning: evaluation.tuning,
            workers: engine.parallel_workers(),
        },
    };

    print!("{}", report.tasks.table());
    print!("{}", monitoring_table(&report.evalmesh.monitoring));
    println!(
        "evaluated in {seconds:.1} s; matrix products {:.1} GFLOP/s, {:.0}% of the time",
        matmul.gflops_per_s(),
        100.0 * matmul.seconds / (seconds * engine.parallel_workers() as f64).max(1e-9)
    );
    if let Some(p) = &report.evalmesh.prediction {
        println!("{}", prediction_line(p));
    }
    if let Some(output) = &settings.output {
        report.write(&output.results)?;
        log::info!("results written to {}", output.results.display());
    }
    Ok(())
}

/// Logs the task's first document as the model reads it, each request's context and
/// continuation (lm-evaluation-harness's `--write_out`, `print_writeout`).
fn write_out(task: &Task) {
    let Some(doc) = task.docs.first() else { return };
    for request in &doc.requests {
        log::info!(
            "Task: {}; document {}; context prompt (starting on next line):\n{}\n(end of prompt on previous line)\n\
             continuation (starting on next line):\n{}\n(end of continuation on previous line)",
            task.name,
            doc.id,
            request.context,
            request.continuation
        );
    }
}

/// What lm-evaluation-harness's results say about the run: its `config` (the model, the
/// batch size, the device, the limit, the seeds), its date and how long it took.
fn run_info(settings: &RunSettings, model: &Path, parameters: u64, started: SystemTime, seconds: f64) -> RunInfo {
    let model_name = model.display().to_string();
    let mut model_args = BTreeMap::from([("model".to_string(), serde_json::json!(model_name))]);
    model_args.extend(settings.model_args.iter().cloned());
    if let Some(tokenizer) = &settings.model.tokenizer {
        model_args.insert("tokenizer".into(), serde_json::json!(tokenizer.display().to_string()));
    }
    if let Some(add_bos) = settings.add_bos {
        model_args.insert("add_bos_token".into(), serde_json::json!(add_bos));
    }
    if settings.random_weights {
        model_args.insert("random_weights".into(), serde_json::json!(true));
    }
    let device = match settings.device {
        Device::Cpu { .. } => "cpu",
        Device::Cuda { .. } => "cuda",
    };
    RunInfo {
        config: RunConfig {
            model: "evalmesh".into(),
            model_args,
            model_num_parameters: parameters,
            batch_size: settings.batch_size.map(|n| n.to_string()),
            batch_sizes: Vec::new(),
            device: device.into(),
            use_cache: None,
            limit: settings.limit.map(|l| match l {
                Limit::First(n) => serde_json::json!(n),
                Limit::Fraction(f) => serde_json::json!(f),
            }),
            bootstrap_iters: BOOTSTRAP_ITERATIONS,
            gen_kwargs: (!settings.gen_kwargs.0.is_empty())
                .then(|| serde_json::Value::Object(settings.gen_kwargs.0.iter().cloned().collect())),
            random_seed: settings.seeds.random,
            numpy_seed: settings.seeds.numpy,
            torch_seed: settings.seeds.torch,
            fewshot_seed: settings.seeds.fewshot,
        },
        date: started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
        model_source: "evalmesh".into(),
        model_name_sanitized: sanitize_model_name(&model_name),
        model_name,
        system_instruction: None,
        system_instruction_sha: None,
        fewshot_as_multiturn: None,
        chat_template: None,
        chat_template_sha: None,
        total_evaluation_time_seconds: float_repr(seconds),
    }
}

/// The layout and stages of a distributed run: `--strategy auto` without sizes takes the
/// cost model's fastest plan that fits; otherwise the sizes or strategy given, with the
/// layers balanced by the cost model.
fn choose_layout(
    settings: &RunSettings,
    config: &ModelConfig,
    workers: usize,
    profile: &HardwareProfile,
) -> anyhow::Result<(ParallelLayout, Vec<StageSpec>)> {
    let place = placement(profile, workers, settings.threads);
    let sequence = settings.ctx.unwrap_or(512).min(settings.batch_tokens);
    let batches = vec![BatchShape::sequences(settings.batch_tokens / sequence, sequence, sequence / 2); 64];
    let LayoutRequest { strategy: wanted, dp, pp, tp } = settings.layout;
    if settings.layout.is_auto() {
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
    let layout = ParallelLayout::resolve(workers, wanted, dp, pp, tp)?;
    let (embedding, head) = strategy::end_costs(config, &batches, profile, place);
    Ok((layout, partition_layers(config, layout.pp, embedding, head)?))
}

/// Busy seconds (compute and send) of each stage: its slowest rank.
fn stage_busy_seconds(monitoring: &[RankStats], layout: ParallelLayout) -> Vec<f64> {
    let mut busy = vec![0.0f64; layout.pp];
    for RankStats { rank, stats: s } in monitoring {
        let stage = layout.stage_of(*rank as usize);
        busy[stage] = busy[stage].max((s.compute.total_ms + s.send.total_ms) / 1000.0);
    }
    busy
}
