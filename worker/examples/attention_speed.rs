//! The CPU backend's attention alone, timed (scripts/bench-attention.sh runs it): one
//! layer's attention of the test model's shape (9 query heads sharing 3 KV heads of 64)
//! over `TOKENS` rows of fixed pseudo-random queries, keys and values, cut into causal
//! texts of `TEXT` tokens each, `REPS` times on the pool's threads (`RAYON_NUM_THREADS`).
//! Prints the median seconds, the GFLOP/s of the products it needs (4 · pairs · 64 · 9
//! FLOP, the causal pairs only) and a checksum of the output, which does not depend on the
//! threads.
//!
//! Usage: `attention_speed TOKENS TEXT REPS`, e.g. `8192 8192 5` (the full window) or
//! `2048 512 41` (a micro-batch of four ctx-512 chunks).

use evalmesh_common::TreeLayout;
use evalmesh_worker::backend::cpu::CpuBackend;
use evalmesh_worker::backend::{AttentionSpec, Backend, HeadLayout};
use evalmesh_worker::tensor::Matrix;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("attention_speed: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().map_err(|_| format!("'{a}' is not a count; usage: attention_speed TOKENS TEXT REPS")))
        .collect::<Result<_, _>>()?;
    let &[tokens, text, reps] = args.as_slice() else {
        return Err("usage: attention_speed TOKENS TEXT REPS".into());
    };
    if text == 0 || reps == 0 || !tokens.is_multiple_of(text) {
        return Err(format!("TEXT ({text}) must divide TOKENS ({tokens}), and REPS ({reps}) be at least 1"));
    }
    let heads = HeadLayout { num_heads: 9, num_kv_heads: 3, head_dim: 64 };
    let cols = (heads.num_heads + 2 * heads.num_kv_heads) * heads.head_dim;
    // A linear congruential sequence in [-1, 1): the same rows on every run.
    let mut state = 12_345u32;
    let data = (0..tokens * cols)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let qkv = Matrix::from_vec(tokens, cols, data);
    let trees: Vec<TreeLayout> =
        (0..tokens / text).map(|t| TreeLayout { start: t * text, prefix_len: text, branch_lens: vec![] }).collect();
    let spec = AttentionSpec { scale: 1.0 / (heads.head_dim as f32).sqrt(), softcap: None, window: None };
    let backend = CpuBackend::default();
    let mut seconds = Vec::new();
    let mut checksum = 0.0f64;
    for _ in 0..reps {
        let started = Instant::now();
        let out = backend.attention(&qkv, &trees, heads, spec).map_err(|e| e.to_string())?;
        seconds.push(started.elapsed().as_secs_f64());
        checksum = out.data.iter().map(|&v| f64::from(v)).sum();
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[reps / 2];
    let pairs = (tokens / text) as f64 * (text * (text + 1) / 2) as f64;
    let flop = 4.0 * pairs * (heads.head_dim * heads.num_heads) as f64;
    println!(
        "{tokens} rows in texts of {text}: {median:.4} s, {:.1} GFLOP/s (checksum {checksum})",
        flop / median / 1e9
    );
    Ok(())
}
