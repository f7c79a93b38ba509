//! The GPU suite's op tests: every op of the CUDA backend against the CPU backend on fresh
//! random inputs, with NaN-poisoned outputs so that an element a kernel leaves unwritten
//! fails; a matrix product's rows do not depend on the batch; the pool stops allocating
//! once warm. Built with `--features cuda`; where no GPU can be used each test prints why
//! and returns, unless EVALMESH_REQUIRE_GPU is set (the device check, scripts/device/run.sh, sets it), where
//! that is a failure.
#![cfg(feature = "cuda")]

use evalmesh_common::config::{Activation, Rope, RopeScaling};
use evalmesh_common::protocol::GpuPrecision;
use evalmesh_common::{RopeStyle, TreeLayout};
use evalmesh_worker::backend::cuda::{probe, skip_without_gpu, CudaBackend, MATMUL_ROWS};
use evalmesh_worker::backend::{AttentionSpec, DecodeRows, HeadLayout};
use evalmesh_worker::{Backend, CpuBackend, DeviceMemory, Matrix};

/// The GPU backend, or `None` (with the reason printed) where there is no usable GPU.
fn gpu() -> Option<CudaBackend> {
    gpu_in(GpuPrecision::Bf16)
}

/// The GPU backend multiplying in `precision`, as [`gpu`].
fn gpu_in(precision: GpuPrecision) -> Option<CudaBackend> {
    let backend = skip_without_gpu(probe(0).and_then(|_| CudaBackend::new(0, precision)))?;
    backend.poison_outputs(true);
    Some(backend)
}

/// The same values rounded to bf16, as the GPU stores weights and multiplies activations.
fn bf16_rounded(m: &Matrix) -> Matrix {
    let data = m.data.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    Matrix::from_vec(m.rows, m.cols, data)
}

/// Asserts |gpu − cpu| ≤ tolerance · (1 + |cpu|) elementwise, and that nothing is NaN.
fn assert_close(what: &str, gpu: &Matrix, cpu: &Matrix, tolerance: f32) {
    assert_eq!((gpu.rows, gpu.cols), (cpu.rows, cpu.cols), "{what}: shape");
    for (i, (&g, &c)) in gpu.data.iter().zip(&cpu.data).enumerate() {
        assert!(
            g.is_finite() && (g - c).abs() <= tolerance * (1.0 + c.abs()),
            "{what}: element {i} (row {}, column {}): GPU {g}, CPU {c}",
            i / cpu.cols,
            i % cpu.cols
        );
    }
}

#[test]
fn matmul_matches_the_cpu_on_the_same_bf16_operands() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::default();
    // Rows across a block edge; K and N of the test model's shapes and odd ones.
    for (m, k, n, seed) in [(3, 64, 40, 1), (MATMUL_ROWS + 5, 576, 1536, 2), (300, 130, 200, 3)] {
        let x = Matrix::random(m, k, seed, 1.0);
        let w = Matrix::random(n, k, seed + 100, 1.0);
        let got = gpu
            .download(&gpu.matmul_t(&gpu.upload(x.clone()).unwrap(), &gpu.upload_weight(w.clone()).unwrap()).unwrap())
            .unwrap();
        let want = cpu.matmul_t(&bf16_rounded(&x), &cpu.upload_weight(bf16_rounded(&w)).unwrap()).unwrap();
        // Same bf16 operands, both accumulating in f32 in different orders: sums of up to 576
        // products of size ≤ 1 differ by a few f32 ulps of the running sum (≤ 1e-4 absolute).
        assert_close(&format!("matmul {m}×{k}·({n}×{k})ᵀ"), &got, &want, 1e-4);
    }
}

#[test]
fn the_f32_path_multiplies_as_the_cpu_does() {
    let Some(gpu) = gpu_in(GpuPrecision::F32) else { return };
    let cpu = CpuBackend::default();
    for (m, k, n, seed) in [(3, 64, 40, 11), (MATMUL_ROWS + 5, 576, 1536, 12)] {
        let x = Matrix::random(m, k, seed, 1.0);
        let w = Matrix::random(n, k, seed + 100, 1.0);
        let got = gpu
            .download(&gpu.matmul_t(&gpu.upload(x.clone()).unwrap(), &gpu.upload_weight(w.clone()).unwrap()).unwrap())
            .unwrap();
        let want = cpu.matmul_t(&x, &cpu.upload_weight(w).unwrap()).unwrap();
        // The same f32 operands (no bf16 rounding, no TF32), accumulated in f32 in another
        // order: as close as the bf16 path on its rounded operands (≤ 1e-4 absolute).
        assert_close(&format!("f32 matmul {m}×{k}·({n}×{k})ᵀ"), &got, &want, 1e-4);
    }
    // The embedding reads f32 rows unchanged.
    let table = Matrix::random(50, 24, 13, 1.0);
    let ids = [7u32, 0, 49, 7];
    let got = gpu.download(&gpu.embed(&gpu.upload_weight(table.clone()).unwrap(), &ids).unwrap()).unwrap();
    assert_close("f32 embedding", &got, &cpu.embed(&cpu.upload_weight(table).unwrap(), &ids).unwrap(), 0.0);
}

#[test]
fn random_weights_are_the_cpus_drawn_on_the_device() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::default();
    // x = I picks out each weight's columns: y = I·Wᵀ = Wᵀ.
    let (n, k) = (96, 64);
    let identity = Matrix::from_vec(k, k, (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect());
    let got = gpu
        .download(
            &gpu.matmul_t(&gpu.upload(identity.clone()).unwrap(), &gpu.random_weight(n, k, 42, 0.5).unwrap()).unwrap(),
        )
        .unwrap();
    let want = cpu.matmul_t(&identity, &cpu.random_weight(n, k, 42, 0.5).unwrap()).unwrap();
    // The same values (both draw weights::random's stream), the GPU's rounded to bf16: a
    // relative error of at most 2⁻⁹ of values up to 0.5.
    assert_close("random weights", &got, &bf16_rounded(&want), 0.0);
    assert_close("random weights, unrounded", &got, &want, 0.5f32.powi(9));
}

#[test]
fn row_parallel_parts_and_their_sum_have_the_plain_ops_bits() {
    let Some(gpu) = gpu() else { return };
    let x = gpu.upload(Matrix::random(MATMUL_ROWS + 7, 576, 20, 1.0)).unwrap();
    let groups = [0..64, 64..320, 320..576];
    let weights: Vec<_> = groups
        .iter()
        .zip(30..)
        .map(|(cols, seed)| gpu.upload_weight(Matrix::random(300, cols.len(), seed, 1.0)).unwrap())
        .collect();
    let parts: Vec<_> = groups.iter().cloned().zip(&weights).collect();
    let got = gpu.matmul_t_parts(&x, &parts, &DecodeRows::none()).unwrap();
    let mut want = Vec::new();
    for ((cols, w), part) in parts.iter().zip(&got) {
        // Each part's columns converted straight into its operand: the bits of copying
        // them out first, then multiplying.
        let plain =
            gpu.download(&gpu.matmul_t(&gpu.columns(&x, std::slice::from_ref(cols)).unwrap(), w).unwrap()).unwrap();
        let part = gpu.download(part).unwrap();
        assert!(part.data.iter().zip(&plain.data).all(|(a, b)| a.to_bits() == b.to_bits()), "columns {cols:?}");
        want.push(part);
    }
    // The sum in one pass: ((p₀ + p₁) + p₂) in f32, as adding them one by one.
    let sum = gpu.download(&gpu.add_in_order(got).unwrap().unwrap()).unwrap();
    for (i, &s) in sum.data.iter().enumerate() {
        let folded = (want[0].data[i] + want[1].data[i]) + want[2].data[i];
        assert_eq!(s.to_bits(), folded.to_bits(), "element {i}: {s} against {folded}");
    }
}

#[test]
fn matmul_rows_do_not_depend_on_the_batch() {
    let Some(gpu) = gpu() else { return };
    let w = gpu.upload_weight(Matrix::random(1536, 576, 4, 1.0)).unwrap();
    let x = Matrix::random(MATMUL_ROWS + 900, 576, 5, 1.0);
    let all = gpu.download(&gpu.matmul_t(&gpu.upload(x.clone()).unwrap(), &w).unwrap()).unwrap();
    for rows in [1usize, 2, 17, 513, MATMUL_ROWS, MATMUL_ROWS + 1] {
        let part = Matrix::from_vec(rows, 576, x.data[..rows * 576].to_vec());
        let y = gpu.download(&gpu.matmul_t(&gpu.upload(part).unwrap(), &w).unwrap()).unwrap();
        let same = y.data.iter().zip(&all.data).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "the first {rows} rows differ from the same rows in a batch of {}", x.rows);
    }
    // The same rows at other places inside a 2048-row block: after 1, 37 and 1000 other rows.
    let rows = 300;
    for shift in [1usize, 37, 1000] {
        let other = Matrix::random(shift, 576, 6, 1.0);
        let mut shifted = other.data.clone();
        shifted.extend_from_slice(&x.data[..rows * 576]);
        let batch = Matrix::from_vec(shift + rows, 576, shifted);
        let y = gpu.download(&gpu.matmul_t(&gpu.upload(batch).unwrap(), &w).unwrap()).unwrap();
        let same = y.data[shift * y.cols..].iter().zip(&all.data).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{rows} rows moved down by {shift} inside a block give other bits");
    }
}

#[test]
fn element_wise_ops_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::default();
    let x = Matrix::random(37, 576, 6, 3.0);
    let gx = gpu.upload(x.clone()).unwrap();
    let norm = Matrix::random(1, 576, 7, 1.0);
    // f32 throughout; the sums of squares are taken in another order (and the CPU finishes
    // in f64): a few ulps.
    assert_close(
        "rms_norm",
        &gpu.download(&gpu.rms_norm(&gx, &gpu.upload(norm.clone()).unwrap(), 1e-5).unwrap()).unwrap(),
        &cpu.rms_norm(&x, &norm, 1e-5).unwrap(),
        1e-5,
    );
    // In place, each head of 64 of the first 512 columns, then the whole width as one run.
    for (cols, run) in [(0..512, 64), (0..576, 576)] {
        let weight = Matrix::random(1, run, 17, 1.0);
        let mut g = gpu.upload(x.clone()).unwrap();
        gpu.rms_norm_runs(&mut g, cols.clone(), &gpu.upload(weight.clone()).unwrap(), 1e-6).unwrap();
        let mut c = x.clone();
        cpu.rms_norm_runs(&mut c, cols.clone(), &weight, 1e-6).unwrap();
        // As rms_norm: a few ulps; the columns outside `cols` are untouched on both.
        assert_close(&format!("rms_norm_runs of {run} over {cols:?}"), &gpu.download(&g).unwrap(), &c, 1e-5);
    }
    let gate_up = Matrix::random(37, 2 * 300, 8, 6.0);
    // expf and tanhf on the GPU and the CPU's polynomial exp and Rust's tanh agree within a
    // few ulps.
    for act in [Activation::Silu, Activation::GeluTanh] {
        assert_close(
            &format!("gated {act:?}"),
            &gpu.download(&gpu.gated(&gpu.upload(gate_up.clone()).unwrap(), act).unwrap()).unwrap(),
            &cpu.gated(&gate_up, act).unwrap(),
            1e-5,
        );
    }
    let y = Matrix::random(37, 576, 9, 3.0);
    let mut sum = gpu.upload(x.clone()).unwrap();
    gpu.add_assign(&mut sum, &gpu.upload(y.clone()).unwrap()).unwrap();
    let mut want = x.clone();
    cpu.add_assign(&mut want, &y).unwrap();
    // One f32 addition each: exact.
    assert_close("add_assign", &gpu.download(&sum).unwrap(), &want, 0.0);
    let rows = [36usize, 0, 5, 5, 17];
    // Copies: exact.
    assert_close(
        "gather_rows",
        &gpu.download(&gpu.gather_rows(&gx, &rows).unwrap()).unwrap(),
        &cpu.gather_rows(&x, &rows).unwrap(),
        0.0,
    );
    for cols in [vec![64..128, 128..256], vec![500..576, 3..3, 0..10, 100..164]] {
        assert_close(
            &format!("columns {cols:?}"),
            &gpu.download(&gpu.columns(&gx, &cols).unwrap()).unwrap(),
            &cpu.columns(&x, &cols).unwrap(),
            0.0,
        );
    }
    let bias = Matrix::random(1, 576, 18, 1.0);
    let factors: Vec<f32> = (0..37).map(|i| 0.25 + i as f32 / 8.0).collect();
    let mut g = [(); 4].map(|_| gpu.upload(x.clone()).unwrap());
    gpu.add_row(&mut g[0], &gpu.upload(bias.clone()).unwrap()).unwrap();
    gpu.scale(&mut g[1], 0.37).unwrap();
    gpu.scale_rows(&mut g[2], &factors).unwrap();
    gpu.soft_cap(&mut g[3], 2.5).unwrap();
    let mut c = [(); 4].map(|_| x.clone());
    cpu.add_row(&mut c[0], &bias).unwrap();
    cpu.scale(&mut c[1], 0.37).unwrap();
    cpu.scale_rows(&mut c[2], &factors).unwrap();
    cpu.soft_cap(&mut c[3], 2.5).unwrap();
    // One f32 operation per value: exact, as on the CPU; but tanhf against Rust's tanh, an
    // ulp or two of values below the cap.
    let ops = [("add_row", 0.0), ("scale", 0.0), ("scale_rows", 0.0), ("soft_cap", 1e-6)];
    for (((what, tolerance), g), c) in ops.into_iter().zip(g).zip(c) {
        assert_close(what, &gpu.download(&g).unwrap(), &c, tolerance);
    }
    // Distinct rows (as a mixture scatters them), then repeated ones, added in list order on
    // both: the same additions in the same order, exact.
    for targets in [vec![36usize, 0, 5, 20], vec![5, 36, 5, 0, 5]] {
        let y = Matrix::random(targets.len(), 576, 19, 3.0);
        let mut g = gpu.upload(x.clone()).unwrap();
        gpu.scatter_add_rows(&mut g, &gpu.upload(y.clone()).unwrap(), &targets).unwrap();
        let mut c = x.clone();
        cpu.scatter_add_rows(&mut c, &y, &targets).unwrap();
        assert_close(&format!("scatter_add_rows {targets:?}"), &gpu.download(&g).unwrap(), &c, 0.0);
    }
    let table = Matrix::random(1000, 576, 10, 1.0);
    let ids = [999u32, 0, 17, 17, 500];
    // The GPU's table is bf16: the same rows of the rounded table, exactly.
    assert_close(
        "embed",
        &gpu.download(&gpu.embed(&gpu.upload_weight(table.clone()).unwrap(), &ids).unwrap()).unwrap(),
        &cpu.embed(&cpu.upload_weight(bf16_rounded(&table)).unwrap(), &ids).unwrap(),
        0.0,
    );
}

#[test]
fn rope_matches_the_cpu_in_both_conventions() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::default();
    let positions: Vec<u32> = (0..29).map(|i| (i * 37) % 2000).collect();
    // Whole heads, and partial rotary (the first 16 of 64 dimensions turn).
    for rotary_dim in [64, 16] {
        let rope = Rope { theta: 1e4, rotary_dim, scaling: RopeScaling::None };
        let table = Matrix::from_vec(29, rotary_dim, rope.table(&positions, &[2000; 29]));
        for style in [RopeStyle::AdjacentPairs, RopeStyle::RotateHalf] {
            let x = Matrix::random(29, 9 * 64 + 2 * 3 * 64, 11, 2.0);
            let cols = 0..12 * 64;
            let mut g = gpu.upload(x.clone()).unwrap();
            gpu.apply_rope(&mut g, &gpu.upload(table.clone()).unwrap(), cols.clone(), 64, style).unwrap();
            let mut c = x.clone();
            cpu.apply_rope(&mut c, &table, cols, 64, style).unwrap();
            // The same table (computed on the host), two f32 products and a sum: a few ulps.
            assert_close(&format!("rope {style:?} of {rotary_dim}"), &gpu.download(&g).unwrap(), &c, 1e-6);
        }
    }
}

/// A plain sequence longer than a 64-key chunk and two trees with branches.
fn attention_trees() -> Vec<TreeLayout> {
    vec![
        TreeLayout { start: 0, prefix_len: 70, branch_lens: Vec::new() },
        TreeLayout { start: 70, prefix_len: 33, branch_lens: vec![5, 1, 40] },
        TreeLayout { start: 149, prefix_len: 1, branch_lens: vec![2] },
    ]
}

/// Plain; Gemma 2's kind: another scale, a cap, and windows that cut into the prefixes of
/// branch rows (9) or only into long branches and sequences (50).
const ATTENTION_SPECS: [AttentionSpec; 3] = [
    AttentionSpec { scale: 1.0 / 8.0, softcap: None, window: None },
    AttentionSpec { scale: 0.1, softcap: Some(5.0), window: Some(9) },
    AttentionSpec { scale: 0.2, softcap: Some(50.0), window: Some(50) },
];

/// The test model's heads (9 over 3 KV heads of 64: one head a block on tensor cores), a
/// Llama-3.2-1B group (8 heads over 2 KV heads of 64: four a block), the oracles' (4 over 2
/// of 16: two a block), a 128-wide head, and Gemma's 256-wide heads (wider than tensor
/// cores take: the f32 kernel on either path).
const HEAD_LAYOUTS: [HeadLayout; 5] = [
    HeadLayout { num_heads: 9, num_kv_heads: 3, head_dim: 64 },
    HeadLayout { num_heads: 8, num_kv_heads: 2, head_dim: 64 },
    HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 16 },
    HeadLayout { num_heads: 2, num_kv_heads: 1, head_dim: 128 },
    HeadLayout { num_heads: 4, num_kv_heads: 1, head_dim: 256 },
];

#[test]
fn attention_over_trees_matches_the_cpu() {
    let cpu = CpuBackend::default();
    for precision in [GpuPrecision::F32, GpuPrecision::Bf16] {
        let Some(gpu) = gpu_in(precision) else { return };
        for heads in HEAD_LAYOUTS {
            let qkv = Matrix::random(152, heads.width(), 12, 2.0);
            let gq = gpu.upload(qkv.clone()).unwrap();
            for spec in ATTENTION_SPECS {
                let got = gpu.download(&gpu.attention(&gq, &attention_trees(), heads, spec).unwrap()).unwrap();
                let what = format!("{precision:?} attention {heads:?} {spec:?}");
                if precision == GpuPrecision::F32 || heads.head_dim > 128 {
                    let want = cpu.attention(&qkv, &attention_trees(), heads, spec).unwrap();
                    // f32 throughout with another summation order and an online softmax:
                    // weighted means of values ≤ 2 agree within 1e-5.
                    assert_close(&what, &got, &want, 1e-5);
                } else {
                    let want = cpu.attention(&bf16_rounded(&qkv), &attention_trees(), heads, spec).unwrap();
                    // Tensor cores on the same bf16 queries, keys and values, with each softmax
                    // weight also rounded to bf16 (relative error ≤ 2⁻⁹) before it multiplies
                    // a value ≤ 2: a weighted mean moves by at most 2 · 2⁻⁹ ≈ 3.9e-3; twice
                    // that is allowed for the sums' other order.
                    assert_close(&what, &got, &want, 8e-3);
                }
            }
        }
    }
}

#[test]
fn attention_rows_do_not_depend_on_the_batch() {
    for precision in [GpuPrecision::F32, GpuPrecision::Bf16] {
        let Some(gpu) = gpu_in(precision) else { return };
        for heads in HEAD_LAYOUTS {
            let width = heads.width();
            let qkv = Matrix::random(152, width, 14, 2.0);
            for spec in ATTENTION_SPECS {
                let all = gpu
                    .download(
                        &gpu.attention(&gpu.upload(qkv.clone()).unwrap(), &attention_trees(), heads, spec).unwrap(),
                    )
                    .unwrap();
                let out = all.cols;
                // The second and third trees (rows 70..152) after 1, 37 and 1000 rows of a
                // sequence of other values, and alone.
                for shift in [0usize, 1, 37, 1000] {
                    let mut data = Matrix::random(shift, width, 15, 2.0).data;
                    data.extend_from_slice(&qkv.data[70 * width..]);
                    let mut trees = Vec::new();
                    if shift > 0 {
                        trees.push(TreeLayout { start: 0, prefix_len: shift, branch_lens: Vec::new() });
                    }
                    for tree in &attention_trees()[1..] {
                        trees.push(TreeLayout { start: tree.start - 70 + shift, ..tree.clone() });
                    }
                    let batch = gpu.upload(Matrix::from_vec(shift + 82, width, data)).unwrap();
                    let got = gpu.download(&gpu.attention(&batch, &trees, heads, spec).unwrap()).unwrap();
                    let same = got.data[shift * out..]
                        .iter()
                        .zip(&all.data[70 * out..])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{precision:?} {heads:?} {spec:?}: two trees after {shift} other rows give other bits"
                    );
                }
            }
        }
    }
}

#[test]
fn scores_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::default();
    let mut logits = Matrix::random(40, 49152, 13, 8.0);
    // A tie for the maximum: the first index wins on both.
    logits.data[3 * 49152 + 10] = 20.0;
    logits.data[3 * 49152 + 20] = 20.0;
    let targets: Vec<u32> = (0..40).map(|i| if i == 3 { 20 } else { (i * 1201) % 49152 }).collect();
    let got = gpu.score(&gpu.upload(logits.clone()).unwrap(), &targets).unwrap();
    let want = cpu.score(&logits, &targets).unwrap();
    for (i, (g, c)) in got.iter().zip(&want).enumerate() {
        // A log-sum-exp over 49152 f32 terms in another order: within 1e-4 of a value near −11.
        assert!((g.logprob - c.logprob).abs() <= 1e-4, "row {i}: GPU {}, CPU {}", g.logprob, c.logprob);
        assert_eq!(g.greedy, c.greedy, "row {i}: greedy");
    }
    assert!(!got[3].greedy, "a tie goes to the first maximum");
}

#[test]
fn the_pool_stops_allocating_once_warm() {
    let Some(gpu) = gpu() else { return };
    let mut warm = None;
    {
        let w = gpu.upload_weight(Matrix::random(1536, 576, 14, 1.0)).unwrap();
        let norm = gpu.upload(Matrix::random(1, 576, 15, 1.0)).unwrap();
        for step in 0..100 {
            // Micro-batches of ten lengths in turn, as a run packs them: every shape is seen
            // in the first ten steps.
            let rows = 200 + (step % 10) * 50;
            let x = gpu.upload(Matrix::random(rows, 576, 16 + step as u64, 1.0)).unwrap();
            let h = gpu.rms_norm(&x, &norm, 1e-5).unwrap();
            let act = gpu.gated(&gpu.matmul_t(&h, &w).unwrap(), Activation::Silu).unwrap();
            gpu.download(&act).unwrap();
            if step == 9 {
                warm = Some(gpu.memory().driver_allocations);
            }
        }
    }
    let memory = gpu.memory();
    assert_eq!(Some(memory.driver_allocations), warm, "the pool kept allocating: {memory:?}");
    assert_eq!((memory.in_use_bytes, memory.exact_bytes), (0, 0), "every buffer went back: {memory:?}");
}
