#!/usr/bin/env python3
"""What the GPU's products and attention reach at the benchmark model's shapes, through
PyTorch (cuBLAS, and its SDPA kernels), for the GPU check (scripts/device/run.sh): the figures
that say where evalmesh's products and attention stand against what the chip gives there.

Products: bf16 operands, f32 outputs (as evalmesh's), blocks of ROWS rows for each ROWS of
2048 (evalmesh's block), 4096 and 8192: the fused QKV, output, gate/up, down and head
products, and the two row-parallel ones (output, down) also as evalmesh multiplies them to
keep tensor parallelism bit-identical: one product per KV group, the parts added in order.
Attention: causal SDPA over 16 windows of 512 tokens (the benchmark's micro-batch), bf16.
Each figure is the median of 10 timed repetitions after a warm-up. Writes
{"products": [{"name", "rows", "n", "k", "parts", "tflops"}], "attention_tflops", "torch"}
to OUT.

Usage: sweep-torch.py CONFIG_JSON OUT_JSON
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def median_seconds(step, repetitions=10):
    """The median time of `step()` on the GPU, after one warm-up call."""
    step()
    times = []
    for _ in range(repetitions):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def product(x, w):
    """x · wᵀ with an f32 result, as evalmesh's cuBLAS call (bf16 in, f32 out)."""
    try:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    except TypeError:  # a torch without out_dtype: bf16 results, the same products
        return torch.mm(x, w.t())


def products(config):
    h, ffn = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = h // heads
    shapes = [
        ("qkv", (heads + 2 * kv) * d, h, 1),
        ("output", h, heads * d, 1),
        ("output per group", h, heads * d, kv),
        ("gate_up", 2 * ffn, h, 1),
        ("down", h, ffn, 1),
        ("down per group", h, ffn, kv),
        ("head", config["vocab_size"], h, 1),
    ]
    rows_list = (2048, 4096, 8192)
    results = []
    for name, n, k, parts in shapes:
        part_k = k // parts
        weights = [torch.randn(n, part_k, device="cuda", dtype=torch.bfloat16) for _ in range(parts)]
        for rows in rows_list:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)

            def step():
                total = product(x[:, :part_k], weights[0])
                for p in range(1, parts):
                    total = total + product(x[:, p * part_k : (p + 1) * part_k], weights[p])
                return total

            seconds = median_seconds(step)
            results.append({"name": name, "rows": rows, "n": n, "k": k, "parts": parts,
                            "tflops": 2 * rows * n * k / seconds / 1e12})
            print(json.dumps(results[-1]))
    return results


def attention(config, windows=16, ctx=512):
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config["hidden_size"] // heads
    q = torch.randn(windows, heads, ctx, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(windows, kv, ctx, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    seconds = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    # Causal: each head's scores and weighted values over ctx·(ctx+1)/2 query-key pairs.
    flops = 4 * windows * heads * d * ctx * (ctx + 1) / 2
    return flops / seconds / 1e12


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    config = json.load(open(sys.argv[1]))
    torch.manual_seed(0)
    with torch.inference_mode():
        result = {"products": products(config), "attention_tflops": attention(config), "torch": torch.__version__}
    json.dump(result, open(sys.argv[2], "w"), indent=1)
    print(f"attention (SDPA, causal, 16 x 512): {result['attention_tflops']:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
