#!/usr/bin/env python3
"""PyTorch beside evalmesh in the GPU check (scripts/device/run.sh): transformers'
LlamaForCausalLM in bf16 with random weights of the same config.json (initialised on the
GPU), its attention ATTENTION (`eager`, or `sdpa`: PyTorch's fused scaled-dot-product
kernels, flash attention where it applies), scoring WINDOWS
windows of CTX random tokens in batches of PER_BATCH windows, as evalmesh's llama.cpp-style
perplexity does: the log-softmax at the target of each window's second half. Writes
{"tokens_per_s", "seconds", "windows", "ctx", "per_batch", "attention", "torch", "transformers"}
to OUT.

Usage: bench-torch.py CONFIG_JSON WINDOWS CTX PER_BATCH OUT_JSON ATTENTION
"""
import json
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    if len(sys.argv) != 7 or sys.argv[6] not in ("eager", "sdpa"):
        sys.exit(__doc__.strip().splitlines()[-1])
    config_path, out, attention = sys.argv[1], sys.argv[5], sys.argv[6]
    windows, ctx, per_batch = (int(a) for a in sys.argv[2:5])
    config = LlamaConfig(**json.load(open(config_path)), attn_implementation=attention)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (windows, ctx), device="cuda")

    def score(batch):
        logits = model(batch).logits[:, ctx // 2 - 1 : -1].float()
        targets = batch[:, ctx // 2 :].unsqueeze(-1)
        return torch.log_softmax(logits, dim=-1).gather(-1, targets).sum()

    with torch.inference_mode():
        score(ids[:per_batch])  # warm-up: kernels chosen, memory pooled
        torch.cuda.synchronize()
        started = time.perf_counter()
        total = torch.zeros((), device="cuda")
        for i in range(0, windows, per_batch):
            total += score(ids[i : i + per_batch])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    result = {
        "tokens_per_s": windows * ctx / seconds,
        "seconds": seconds,
        "windows": windows,
        "ctx": ctx,
        "per_batch": per_batch,
        "attention": attention,
        "log_likelihood": total.item(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    json.dump(result, open(out, "w"), indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
