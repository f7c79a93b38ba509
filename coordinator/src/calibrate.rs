//! `evalmesh calibrate`: measures this machine for the cost model. It times a backend's
//! own kernels on one block of the model's shapes (random weights) and divides each time
//! by the cost model's count of the same work (generation's streamed product over enough
//! blocks that their weights come from memory): on the CPU with one worker using every core
//! and with one single-threaded worker per core all busy at once; on a GPU (`--device
//! cuda`) on GPU 0, with the GPU's bf16 matrix peak beside. Under `mpirun` it also times
//! the link between ranks 0 and 1 with the activation messages.

use std::time::{Instant, UNIX_EPOCH};

use evalmesh_common::cost::{block_work, head_work, BatchShape};
use evalmesh_common::hardware::{HardwareProfile, Link, Rates, GPU_OVERHEAD_BYTES};
use evalmesh_common::protocol::{Device, GpuPrecision};
use evalmesh_common::{group_slice, ModelConfig, TreeLayout};
use evalmesh_worker::backend::cuda::{probe, CudaBackend};
use evalmesh_worker::backend::{AttentionSpec, DecodeRows, HeadLayout};
use evalmesh_worker::monitor::total_memory_bytes;
use evalmesh_worker::{Backend, CpuBackend, Matrix};
use mpi::topology::{Communicator, SimpleCommunicator};

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Backend(#[from] evalmesh_worker::BackendError),
    #[error("calibration: cannot start {threads} threads: {problem}")]
    Threads { threads: usize, problem: String },
    #[error(transparent)]
    PingPong(#[from] crate::pingpong::PingPongError),
}

/// Tokens of each sequence in the calibration batch (llama.cpp's perplexity chunk).
const SEQUENCE: usize = 512;
/// The shortest sequence of attention's second measurement, which with the first gives
/// its cost per row apart from its FLOPs (`fit_attention`).
const LONG_SEQUENCE: usize = 2048;
/// Decode rows of the streamed product's second measurement (a typical batch of sequences).
const DECODE_ROWS: usize = 32;
/// Timed repetitions of each kernel; the median counts (the runs it predicts meet the
/// same interruptions, so the fastest would flatter them).
const REPEATS: usize = 7;

/// The median time of `f`'s work on `b`, each run waited for to its end.
fn median_of<B: Backend>(b: &B, mut f: impl FnMut() -> Result<(), CalibrateError>) -> Result<f64, CalibrateError> {
    median_prepared(b, || Ok(()), |()| f())
}

/// The median time of `run`'s work on `b` on what `prepare` makes afresh for each run
/// (made and waited for before the clock starts).
fn median_prepared<B: Backend, T>(
    b: &B,
    mut prepare: impl FnMut() -> Result<T, CalibrateError>,
    mut run: impl FnMut(T) -> Result<(), CalibrateError>,
) -> Result<f64, CalibrateError> {
    run(prepare()?)?;
    b.synchronize()?;
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let input = prepare()?;
        b.synchronize()?;
        let started = Instant::now();
        run(input)?;
        b.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[REPEATS / 2])
}

/// Bytes of f32 weights the streamed product's measurement reads at least (as many of
/// the model's blocks as that takes, at most all): more than a processor's caches hold.
const STREAMED_BYTES: usize = 256 << 20;

/// One block's weights, random, as a stage holds them: the fused QKV, the output per
/// group, the fused gate and up, the down projection per group.
struct BlockWeights<W> {
    qkv: W,
    out: Vec<W>,
    gate_up: W,
    down: Vec<W>,
}

impl<W> BlockWeights<W> {
    fn random<B: Backend<Weight = W>>(b: &B, c: &ModelConfig, seed: u64) -> Result<Self, CalibrateError> {
        let (g, h, ffn) = (c.num_kv_heads, c.hidden_size, c.ffn_width());
        let by_group = |rows: usize, width: usize, seed: u64| {
            (0..g)
                .map(|k| {
                    b.upload_weight(Matrix::random(rows, group_slice(width, g, k..k + 1).len(), seed + k as u64, 0.5))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(BlockWeights {
            qkv: b.upload_weight(Matrix::random(c.q_dim() + 2 * c.kv_dim(), h, seed, 0.5))?,
            out: by_group(h, c.q_dim(), seed + 1)?,
            gate_up: b.upload_weight(Matrix::random(2 * ffn, h, seed + 1 + g as u64, 0.5))?,
            down: by_group(h, ffn, seed + 2 + g as u64)?,
        })
    }
}

/// A row-parallel weight's parts: each group's slice of `width` input columns, with its
/// weight (one per group, in order).
fn parts_of<W>(width: usize, weights: &[W]) -> Vec<(std::ops::Range<usize>, &W)> {
    let g = weights.len();
    (0..g).map(|k| group_slice(width, g, k..k + 1)).zip(weights).collect()
}

/// One worker's rates on `b` on micro-batches of `tokens` tokens (sequences of [`SEQUENCE`]).
fn worker_rates<B: Backend>(b: &B, c: &ModelConfig, tokens: usize) -> Result<Rates, CalibrateError> {
    let g = c.num_kv_heads;
    let (h, q, kv, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.ffn_width());
    let sequences = (tokens / SEQUENCE).max(1);
    let tokens = sequences * SEQUENCE;
    let shape = BatchShape::sequences(sequences, SEQUENCE, 0);
    let x = b.upload(Matrix::random(tokens, h, 1, 0.5))?;
    let block = BlockWeights::random(b, c, 2)?;
    let attended = b.upload(Matrix::random(tokens, q, 6, 0.5))?;
    let act = b.upload(Matrix::random(tokens, ffn, 7, 0.5))?;
    let matmul = median_of(b, || {
        b.matmul_t(&x, &block.qkv)?;
        b.matmul_t(&x, &block.gate_up)?;
        b.matmul_t_parts(&attended, &parts_of(q, &block.out), &DecodeRows::none())?;
        b.matmul_t_parts(&act, &parts_of(ffn, &block.down), &DecodeRows::none())?;
        Ok(())
    })?;
    let qkv = b.matmul_t(&x, &block.qkv)?;
    let heads = HeadLayout { num_heads: c.num_heads, num_kv_heads: g, head_dim: c.head_dim };
    let spec = AttentionSpec { scale: c.block.attention_scale as f32, softcap: None, window: None };
    // Attention of `qkv`'s rows in sequences of `len`: its rows and heads, FLOPs and seconds.
    let attention_in = |qkv: &B::Tensor, len: usize| -> Result<Attended, CalibrateError> {
        let rows = b.rows(qkv);
        let trees: Vec<TreeLayout> =
            (0..rows / len).map(|s| TreeLayout { start: s * len, prefix_len: len, branch_lens: Vec::new() }).collect();
        let seconds = median_of(b, || {
            b.attention(qkv, &trees, heads, spec)?;
            Ok(())
        })?;
        let work = block_work(c, 0..g, &BatchShape::sequences(rows / len, len, 0));
        Ok(Attended { rows: work.attention_rows, flops: work.attention_flops, seconds })
    };
    // The micro-batch in sequences of 512, and one sequence of the micro-batch or of
    // LONG_SEQUENCE, whichever is longer.
    let long = tokens.max(LONG_SEQUENCE);
    let long_qkv = b.matmul_t(&b.upload(Matrix::random(long, h, 17, 0.5))?, &block.qkv)?;
    let (attention_flops_per_s, attention_row_seconds) =
        fit_attention(attention_in(&qkv, SEQUENCE)?, attention_in(&long_qkv, long)?);
    let norm = b.upload(Matrix::random(1, h, 8, 0.5))?;
    // The element-wise work of one block on `n` rows, as the cost model counts it.
    let elementwise_on = |n: usize| -> Result<f64, CalibrateError> {
        let random = |cols: usize, seed: u64| b.upload(Matrix::random(n, cols, seed, 0.5));
        let (x, gate_up) = (random(h, 1)?, random(2 * ffn, 9)?);
        let (mut rotated, mut residual) = (random(q + 2 * kv, 10)?, random(h, 11)?);
        let positions: Vec<u32> = (0..n).map(|i| (i % SEQUENCE) as u32).collect();
        let rope = &c.ropes[0];
        let rope = b.upload(Matrix::from_vec(n, rope.rotary_dim, rope.table(&positions, &vec![SEQUENCE; n])))?;
        let rest = median_of(b, || {
            b.rms_norm(&x, &norm, c.rms_norm_eps)?;
            b.rms_norm(&x, &norm, c.rms_norm_eps)?;
            b.apply_rope(&mut rotated, &rope, 0..q + kv, c.head_dim, c.rope_style)?;
            b.gated(&gate_up, c.block.activation)?;
            b.add_assign(&mut residual, &x)?;
            b.add_assign(&mut residual, &x)?;
            Ok(())
        })?;
        // A row-parallel product's parts summed in group order, twice a block.
        let partials = || (0..g).map(|k| random(h, 20 + k as u64)).collect::<Result<Vec<_>, _>>().map_err(Into::into);
        let sum = median_prepared(b, partials, |parts| {
            b.add_in_order(parts)?;
            Ok(())
        })?;
        Ok(rest + 2.0 * sum)
    };
    let elementwise = elementwise_on(tokens)?;
    // On one row, what is left is the cost of its many small operations.
    let block_fixed = elementwise_on(1)?;
    // The head as a stage runs it: a chunk of the backend's head rows at a time.
    let rows = b.head_rows();
    let scored = b.upload(Matrix::random(rows, h, 12, 0.5))?;
    let head_w = b.upload_weight(Matrix::random(c.vocab_size, h, 13, 0.5))?;
    let head_matmul = median_of(b, || {
        b.matmul_t(&scored, &head_w)?;
        Ok(())
    })?;
    let logits = b.upload(Matrix::random(rows, c.vocab_size, 14, 0.5))?;
    let targets: Vec<u32> = (0..rows as u32).collect();
    let softmax = median_of(b, || {
        b.score(&logits, &targets)?;
        Ok(())
    })?;
    // Generation's streamed product, one decode row then several, over enough blocks'
    // weights that they come from memory rather than a cache, as a decode step's do.
    let weights = ((q + 2 * kv) * h + h * q + 3 * ffn * h) as f64;
    let copies = ((STREAMED_BYTES as f64 / (4.0 * weights)) as usize).clamp(1, c.num_layers);
    let blocks = (0..copies).map(|i| BlockWeights::random(b, c, 100 + i as u64)).collect::<Result<Vec<_>, _>>()?;
    let streamed = |rows: usize| -> Result<f64, CalibrateError> {
        let decode = DecodeRows::all(rows);
        let x = b.upload(Matrix::random(rows, h, 15, 0.5))?;
        let per_group = |width: usize, seed: u64| -> Result<Vec<B::Tensor>, CalibrateError> {
            (0..g)
                .map(|k| {
                    Ok(b.upload(Matrix::random(rows, group_slice(width, g, k..k + 1).len(), seed + k as u64, 0.5))?)
                })
                .collect()
        };
        let (attended, act) = (per_group(q, 16)?, per_group(ffn, 16 + g as u64)?);
        median_of(b, || {
            for w in &blocks {
                b.matmul_t_rows(&x, &w.qkv, &decode)?;
                b.matmul_t_rows(&x, &w.gate_up, &decode)?;
                for k in 0..g {
                    b.matmul_t_rows(&attended[k], &w.out[k], &decode)?;
                    b.matmul_t_rows(&act[k], &w.down[k], &decode)?;
                }
            }
            Ok(())
        })
    };
    let (one_row, several) = (streamed(1)?, streamed(DECODE_ROWS)?);
    let weights = weights * copies as f64;
    let work = block_work(c, 0..g, &shape);
    let head = head_work(c, &BatchShape { tokens: rows, scored_rows: rows, ..BatchShape::default() });
    Ok(Rates {
        threads_per_worker: rayon::current_num_threads(),
        concurrent_workers: 1,
        matmul_flops_per_s: work.matmul_flops / matmul,
        head_matmul_flops_per_s: Some(head.head_flops / head_matmul),
        attention_flops_per_s,
        attention_row_seconds,
        elementwise_bytes_per_s: work.elementwise_bytes / elementwise,
        softmax_entries_per_s: head.softmax_entries / softmax,
        block_fixed_seconds: Some(block_fixed),
        streamed_values_per_s: Some(weights / one_row),
        decode_row_flops_per_s: Some(2.0 * (DECODE_ROWS - 1) as f64 * weights / (several - one_row).max(1e-9)),
    })
}

/// One attention measurement: its attending rows times heads, its FLOPs and its seconds.
#[derive(Debug, Clone, Copy)]
struct Attended {
    rows: f64,
    flops: f64,
    seconds: f64,
}

/// Attention's FLOP rate and cost per attending row and head, fitted to a measurement in
/// short sequences and one in a long sequence: the two unknowns of the two equations
/// `seconds = rows · cost + flops / rate`. Where the two do not fit it (a rate or cost
/// below zero: noise), the short sequences' FLOP rate alone, as a profile without the cost.
fn fit_attention(short: Attended, long: Attended) -> (f64, Option<f64>) {
    let alone = (short.flops / short.seconds, None);
    let determinant = short.rows * long.flops - short.flops * long.rows;
    let row_seconds = (short.seconds * long.flops - short.flops * long.seconds) / determinant;
    let seconds_per_flop = (short.rows * long.seconds - long.rows * short.seconds) / determinant;
    match row_seconds.is_finite() && row_seconds >= 0.0 && seconds_per_flop.is_finite() && seconds_per_flop > 0.0 {
        true => (1.0 / seconds_per_flop, Some(row_seconds)),
        false => alone,
    }
}

/// Rounds of measurement per mode, at least.
const ROUNDS: usize = 3;

/// The median of each figure.
fn median_rates(rounds: &[Rates]) -> Rates {
    let median = |f: fn(&Rates) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Rates {
        matmul_flops_per_s: median(|r| r.matmul_flops_per_s),
        head_matmul_flops_per_s: Some(median(Rates::head_matmul_rate)),
        attention_flops_per_s: median(|r| r.attention_flops_per_s),
        attention_row_seconds: Some(median(Rates::attention_row)),
        elementwise_bytes_per_s: median(|r| r.elementwise_bytes_per_s),
        softmax_entries_per_s: median(|r| r.softmax_entries_per_s),
        block_fixed_seconds: Some(median(Rates::block_fixed)),
        streamed_values_per_s: Some(median(Rates::streamed_rate)),
        decode_row_flops_per_s: Some(median(Rates::decode_flops_rate)),
        ..rounds[0].clone()
    }
}

/// Rates of `workers` workers of `threads` threads each, all measuring at once; the mean of their rates.
fn concurrent_rates(c: &ModelConfig, tokens: usize, threads: usize, workers: usize) -> Result<Rates, CalibrateError> {
    let pools = (0..workers)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CalibrateError::Threads { threads, problem: e.to_string() })?;
    let measured: Vec<Result<Rates, CalibrateError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pools
            .iter()
            .map(|pool| scope.spawn(|| pool.install(|| worker_rates(&CpuBackend::default(), c, tokens))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| unreachable!("calibration threads do not panic")))
            .collect()
    });
    let measured = measured.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mean = |f: fn(&Rates) -> f64| measured.iter().map(f).sum::<f64>() / measured.len() as f64;
    Ok(Rates {
        threads_per_worker: threads,
        concurrent_workers: workers,
        matmul_flops_per_s: mean(|r| r.matmul_flops_per_s),
        head_matmul_flops_per_s: Some(mean(Rates::head_matmul_rate)),
        attention_flops_per_s: mean(|r| r.attention_flops_per_s),
        attention_row_seconds: Some(mean(Rates::attention_row)),
        elementwise_bytes_per_s: mean(|r| r.elementwise_bytes_per_s),
        softmax_entries_per_s: mean(|r| r.softmax_entries_per_s),
        block_fixed_seconds: Some(mean(Rates::block_fixed)),
        streamed_values_per_s: Some(mean(Rates::streamed_rate)),
        decode_row_flops_per_s: Some(mean(Rates::decode_flops_rate)),
    })
}

/// The link between ranks 0 and 1: latency from a one-row message, bandwidth from the
/// difference to a full micro-batch's. Every rank calls it; ranks past 1 get `None`, and so
/// does a world of one rank.
pub fn measure_link(
    world: &SimpleCommunicator,
    c: &ModelConfig,
    tokens: usize,
) -> Result<Option<Link>, CalibrateError> {
    if world.size() < 2 || world.rank() > 1 {
        return Ok(None);
    }
    let measured = crate::pingpong::measure(world, &[1, tokens], c.hidden_size, 50, 3)?;
    let one_way = |m: &crate::pingpong::Measurement| m.bytes as f64 / (m.activation_gb_per_s * 1e9);
    let (small, big) = (&measured[0], &measured[1]);
    let bytes_per_s = (big.bytes - small.bytes) as f64 / (one_way(big) - one_way(small)).max(1e-12);
    Ok(Some(Link { latency_s: (one_way(small) - small.bytes as f64 / bytes_per_s).max(0.0), bytes_per_s }))
}

/// This build, as what a calibration measures depends on it: evalmesh's version and its
/// executable's size and modification time, which a rebuild changes.
pub fn build_identity() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let exe = std::env::current_exe().and_then(|path| path.metadata());
    let modified = exe.as_ref().ok().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    match (exe, modified) {
        (Ok(m), Some(t)) => format!("evalmesh {version}, executable of {} bytes modified at {}", m.len(), t.as_secs()),
        _ => format!("evalmesh {version}, executable unknown"),
    }
}

/// This machine's name, for profiles and their cache file.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "host".into(), |h| h.trim().to_string())
}

/// Measures `device` at the model's shapes with micro-batches of `tokens` tokens, for
/// [`ROUNDS`] rounds or until `seconds` have passed, whichever is longer; `link` is what
/// [`measure_link`] found, if it ran. A GPU is measured on `gpu` (after `CUDA_VISIBLE_DEVICES`).
pub fn calibrate(
    c: &ModelConfig,
    tokens: usize,
    link: Option<Link>,
    seconds: f64,
    device: Device,
    gpu: usize,
) -> Result<HardwareProfile, CalibrateError> {
    match device {
        Device::Cpu { .. } => calibrate_cpu(c, tokens, link, seconds),
        Device::Cuda { .. } => calibrate_cuda(c, tokens, link, seconds, gpu),
    }
}

/// The measured part of a profile's source: what was measured and for how long.
fn measured_source(host: &str, c: &ModelConfig, tokens: usize, rounds: usize, seconds: f64, link: bool) -> String {
    format!(
        "measured by evalmesh calibrate on {host} at the shapes of a {}-layer model, {tokens}-token micro-batches, \
         medians of {rounds} rounds over {seconds:.0} s{}",
        c.num_layers,
        if link { "" } else { "; links not measured (run under mpirun -np 2 to measure them)" }
    )
}

/// GPU `gpu` (after `CUDA_VISIBLE_DEVICES`): one worker's rates, and the bf16 matrix peak.
fn calibrate_cuda(
    c: &ModelConfig,
    tokens: usize,
    link: Option<Link>,
    seconds: f64,
    gpu: usize,
) -> Result<HardwareProfile, CalibrateError> {
    let gpu = probe(gpu)?;
    let backend = CudaBackend::new(gpu.ordinal, GpuPrecision::Bf16)?;
    let mut rounds = Vec::new();
    let started = Instant::now();
    while rounds.len() < ROUNDS || started.elapsed().as_secs_f64() < seconds {
        rounds.push(Rates { threads_per_worker: 1, ..worker_rates(&backend, c, tokens)? });
    }
    // 8192³: 1.1 TFLOP a product, long enough for any GPU's peak (about 1.5 ms on an H100).
    let peak = backend.matmul_peak(8192, 10)?;
    let host = host_name();
    // Without a measured link: PCIe Gen4 x16 between GPUs, which NVLink only betters.
    let assumed = Link { latency_s: 10e-6, bytes_per_s: 25e9 };
    Ok(HardwareProfile {
        name: format!("{} ({host})", gpu.name),
        source: measured_source(&host, c, tokens, rounds.len(), started.elapsed().as_secs_f64(), link.is_some()),
        backend: "cuda".into(),
        memory_bytes: gpu.memory_bytes,
        compute_bytes: 2,
        overhead_bytes: GPU_OVERHEAD_BYTES,
        devices_per_node: gpu.visible,
        rates: vec![median_rates(&rounds)],
        matmul_peak_flops_per_s: Some(peak),
        measured_by: Some(build_identity()),
        same_node: link.unwrap_or(assumed),
        across_nodes: link.unwrap_or(assumed),
    })
}

/// This machine's cores: one worker on all of them and one worker on each, in turn.
fn calibrate_cpu(
    c: &ModelConfig,
    tokens: usize,
    link: Option<Link>,
    seconds: f64,
) -> Result<HardwareProfile, CalibrateError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The modes alternate round by round, so that a slow spell of the machine does not
    // fall on one mode alone; each figure is the median over the rounds.
    let modes: Vec<(usize, usize)> = if cores > 1 { vec![(cores, 1), (1, cores)] } else { vec![(1, 1)] };
    let mut rounds: Vec<Vec<Rates>> = vec![Vec::new(); modes.len()];
    let started = Instant::now();
    while rounds[0].len() < ROUNDS || started.elapsed().as_secs_f64() < seconds {
        for (m, &(threads, workers)) in modes.iter().enumerate() {
            rounds[m].push(concurrent_rates(c, tokens, threads, workers)?);
        }
    }
    let rates = rounds.iter().map(|r| median_rates(r)).collect();
    let host = host_name();
    let assumed = Link { latency_s: 5e-6, bytes_per_s: 5e9 };
    Ok(HardwareProfile {
        name: format!("cpu ({host}, {cores} cores)"),
        source: measured_source(&host, c, tokens, rounds[0].len(), started.elapsed().as_secs_f64(), link.is_some()),
        backend: "cpu".into(),
        memory_bytes: total_memory_bytes().unwrap_or(0),
        compute_bytes: 4,
        overhead_bytes: 150_000_000,
        devices_per_node: cores,
        rates,
        matmul_peak_flops_per_s: None,
        measured_by: Some(build_identity()),
        same_node: link.unwrap_or(assumed),
        across_nodes: link.unwrap_or(assumed),
    })
}

#[cfg(test)]
mod tests {
    use super::{fit_attention, Attended};

    /// Rows of 2 µs each and FLOPs at 1 GFLOP/s.
    fn measured(rows: f64, flops: f64) -> Attended {
        Attended { rows, flops, seconds: rows * 2e-6 + flops / 1e9 }
    }

    #[test]
    fn attention_fits_a_rate_and_a_cost_per_row() {
        let close = |(rate, row): (f64, Option<f64>)| {
            (rate / 1e9 - 1.0).abs() < 1e-9 && (row.unwrap() / 2e-6 - 1.0).abs() < 1e-9
        };
        // The same 100 rows with 1 and 4 MFLOP; 100 rows against 400 with 16 MFLOP.
        assert!(close(fit_attention(measured(100.0, 1e6), measured(100.0, 4e6))));
        assert!(close(fit_attention(measured(100.0, 1e6), measured(400.0, 16e6))));
        // A longer window no slower (the rate would be negative), or a rate that leaves the
        // rows less than nothing: the short sequences' rate alone.
        let short = Attended { rows: 100.0, flops: 1e6, seconds: 1.2e-3 };
        assert_eq!(fit_attention(short, Attended { seconds: 1.1e-3, ..measured(100.0, 4e6) }), (1e6 / 1.2e-3, None));
        let short = Attended { seconds: 1e-3, ..short };
        assert_eq!(fit_attention(short, Attended { seconds: 5e-3, ..measured(100.0, 4e6) }), (1e9, None));
    }
}
