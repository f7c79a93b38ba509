#!/usr/bin/env python3
"""The GPU check's comparisons (scripts/device-check.sh packs this file; run.sh calls it).

  check.py expected PACK SHARED   here, when packing: each architecture oracle's expected
                                  scores, PACK/expected/FAMILY.json: the token ids, transformers'
                                  log-probability of each next token (SHARED's expected.safetensors,
                                  computed on a CPU in f32) and evalmesh's CPU scores
                                  (PACK/expected/FAMILY.cpu.jsonl, removed once read)
  check.py torch PACK OUT         on the device: transformers' log-probabilities of the same
                                  tokens on the GPU in f32, OUT/oracles/FAMILY.torch.json
  check.py summary PACK OUT       the verdict: OUT/summary.json and a table on stdout; exit 0
                                  only when every check that ran passed and none was missing

Standard library only, except `torch` (torch and transformers, which the device has).
"""
import json
import os
import struct
import sys

# evalmesh's f32 paths against each other and against transformers in f32: only the order
# of summation differs, a few 1e-6 nats over these 2-3 layers (tests/oracles/src/lib.rs's
# TOLERANCE holds the CPU to the same bound).
F32_TOLERANCE = 1e-4
# The bf16 path rounds weights and matrix operands to 8 significant bits: a log-probability
# moves by up to a few hundredths of a nat on these tiny random models. The bound catches a
# broken kernel (errors of whole nats), not a precision claim: the f32 path carries that.
# It holds the 99th percentile, not the largest difference: where two experts' router
# logits lie within bf16's rounding of each other, a mixture's top-k choice flips and that
# one token moves by whole nats (the first device run: Mixtral 1 token of 741 at 1.02 nats,
# Qwen3-MoE 2 of 738 at 2.02 and 0.80, while their f32 paths agreed within 2e-5); a broken
# kernel errs on most tokens and still fails.
BF16_MEAN_TOLERANCE = 0.05
BF16_P99_TOLERANCE = 0.5


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[start:end])
    return tensors


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def by_file(lines):
    """Per text (the score command's `file`), the token ids and each next token's log-probability."""
    texts = {}
    for line in lines:
        ids, logprobs = texts.setdefault(line["file"], ([], []))
        ids.append(line["id"])
        if line["logprob"] is not None:
            logprobs.append(line["logprob"])
    return [texts[k] for k in sorted(texts)]


def families(pack):
    return sorted(os.listdir(os.path.join(pack, "oracles")))


def expected(pack, shared):
    for family in families(pack):
        tensors = read_safetensors(os.path.join(shared, "reference/architectures", family, "expected.safetensors"))
        cpu_path = os.path.join(pack, "expected", f"{family}.cpu.jsonl")
        cpu = by_file(read_jsonl(cpu_path))
        record = {"ids": [], "transformers": [], "cpu": []}
        for i, (cpu_ids, cpu_logprobs) in enumerate(cpu):
            _, _, raw = tensors[f"text{i}.ids"]
            ids = list(struct.unpack(f"<{len(raw) // 8}q", raw))
            if ids != cpu_ids:
                sys.exit(f"{family} text {i}: evalmesh's tokens differ from transformers' ({cpu_path})")
            _, (n, vocab), raw = tensors[f"text{i}.logprobs"]
            logprobs = struct.unpack(f"<{n * vocab}f", raw)
            record["ids"].append(ids)
            record["transformers"].append([logprobs[p * vocab + ids[p + 1]] for p in range(n - 1)])
            record["cpu"].append(cpu_logprobs)
        with open(os.path.join(pack, "expected", f"{family}.json"), "w") as f:
            json.dump(record, f)
        os.remove(cpu_path)


def torch_oracles(pack, out):
    import torch
    from transformers import AutoModelForCausalLM

    os.makedirs(os.path.join(out, "oracles"), exist_ok=True)
    for family in families(pack):
        with open(os.path.join(pack, "expected", f"{family}.json")) as f:
            record = json.load(f)
        model = AutoModelForCausalLM.from_pretrained(
            os.path.join(pack, "oracles", family), dtype=torch.float32, attn_implementation="eager"
        )
        model = model.to("cuda").eval()
        texts = []
        with torch.inference_mode():
            for ids in record["ids"]:
                tokens = torch.tensor([ids], device="cuda")
                logprobs = torch.log_softmax(model(tokens).logits[0].float(), dim=-1)[:-1]
                texts.append(logprobs.gather(-1, tokens[0, 1:, None])[:, 0].tolist())
        with open(os.path.join(out, "oracles", f"{family}.torch.json"), "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "logprobs": texts}, f)


def differences(a, b):
    """Largest and mean absolute difference over paired texts of log-probabilities."""
    pairs = [(x, y) for ta, tb in zip(a, b) for x, y in zip(ta, tb)]
    if len(pairs) != sum(len(t) for t in a) or not pairs:
        return None
    diffs = sorted(abs(x - y) for x, y in pairs)
    return {"max": diffs[-1], "p99": diffs[(99 * len(diffs)) // 100], "mean": sum(diffs) / len(diffs)}


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def perplexity(out, name):
    result = load(os.path.join(out, f"{name}.json"))
    return None if result is None else result["results"]["perplexity"]["perplexity,none"]


def summary(pack, out):
    parts = {}
    if os.path.exists(os.path.join(out, "parts.tsv")):
        with open(os.path.join(out, "parts.tsv")) as f:
            for line in f:
                name, status, seconds = line.rstrip("\n").split("\t")
                parts[name] = {"status": status, "seconds": int(seconds)}
    device = open(os.path.join(out, "device.txt")).read().strip() if os.path.exists(os.path.join(out, "device.txt")) else "cuda"
    checks = []  # (name, passed or None for not run, detail)

    def check(name, passed, detail):
        checks.append({"check": name, "passed": passed, "detail": detail})

    for name in ("ops",):
        if name in parts:
            check(name, parts[name]["status"] == "passed", f"{name}: {parts[name]['status']} (see {name}.log)")

    # The architecture oracles.
    oracles = {}
    for family in families(pack):
        record = load(os.path.join(pack, "expected", f"{family}.json"))
        row = {}
        for precision in ("f32", "bf16"):
            path = os.path.join(out, "oracles", f"{family}.{precision}.jsonl")
            if os.path.exists(path):
                got = [logprobs for _, logprobs in by_file(read_jsonl(path))]
                row[f"{precision}_vs_cpu"] = differences(got, record["cpu"])
                row[f"{precision}_vs_transformers_cpu"] = differences(got, record["transformers"])
        torch_run = load(os.path.join(out, "oracles", f"{family}.torch.json"))
        if torch_run:
            row["transformers_gpu_vs_cpu"] = differences(torch_run["logprobs"], record["transformers"])
            if os.path.exists(os.path.join(out, "oracles", f"{family}.f32.jsonl")):
                got = [logprobs for _, logprobs in by_file(read_jsonl(os.path.join(out, "oracles", f"{family}.f32.jsonl")))]
                row["f32_vs_transformers_gpu"] = differences(got, torch_run["logprobs"])
        oracles[family] = row
        for key, value in row.items():
            if value is None:
                check(f"oracle {family} {key}", False, "missing or different length")
                continue
            if key.startswith("bf16"):
                ok = value["mean"] <= BF16_MEAN_TOLERANCE and value["p99"] <= BF16_P99_TOLERANCE
                bound = f"mean <= {BF16_MEAN_TOLERANCE}, p99 <= {BF16_P99_TOLERANCE}"
            else:
                ok = value["max"] <= F32_TOLERANCE
                bound = f"max <= {F32_TOLERANCE}"
            detail = f"max {value['max']:.2e}, p99 {value['p99']:.2e}, mean {value['mean']:.2e} ({bound})"
            check(f"oracle {family} {key}", ok, detail)
        if not any(k.startswith("f32") for k in row):
            check(f"oracle {family}", False, "evalmesh produced no scores (see oracles.log)")

    # Bits across batch sizes, and two pipeline stages against one process.
    single = perplexity(out, "random-8192")
    for name, label in (("random-512", "batch of 512 tokens against 8192"), ("stages", "two pipeline stages against one process")):
        got = perplexity(out, name)
        if name == "stages" and parts.get("stages", {}).get("status") == "not run":
            check(label, None, "not run: no MPI (see mpi.log)")
        elif got is None or single is None:
            check(label, False, f"no result (see {name}.log)")
        else:
            same = struct.pack("<d", got) == struct.pack("<d", single)
            check(label, same, f"perplexity {got!r} against {single!r}")
    cpu = load(os.path.join(pack, "expected", "random-cpu.json"))
    f32 = perplexity(out, "random-f32")
    if cpu is not None and device == "cuda":
        want = cpu["results"]["perplexity"]["perplexity,none"]
        if f32 is None:
            check("random model, f32 path against the CPU", False, "no result (see random-f32.log)")
        else:
            # As the GPU suite's bound for the f32 path: orders of summation only.
            error = abs(f32 / want - 1)
            check("random model, f32 path against the CPU", error < 1e-4, f"perplexity {f32} against the CPU's {want} ({error:.1e})")

    # The peak and the benchmark.
    profile = load(os.path.join(out, "profile.json")) or {}
    peak = profile.get("matmul_peak_flops_per_s")
    bench = {"peak_tflops": peak / 1e12 if peak else None}
    run = load(os.path.join(out, "bench-evalmesh.json"))
    if run is not None:
        e = run["evalmesh"]
        task = e["tasks"]["perplexity"]
        bench["evalmesh_tokens_per_s"] = task["tokens_computed"] / task["seconds"]
        bench["matrix_tflops"] = e["matmul_gflop"] / e["eval_seconds"] / 1e3
        bench["share_of_peak"] = bench["matrix_tflops"] * 1e12 / peak if peak else None
    for attention in ("eager", "sdpa"):
        torch_run = load(os.path.join(out, f"bench-torch-{attention}.json"))
        if torch_run and "evalmesh_tokens_per_s" in bench:
            bench[f"torch_{attention}_tokens_per_s"] = torch_run["tokens_per_s"]
            bench[f"x_torch_{attention}"] = bench["evalmesh_tokens_per_s"] / torch_run["tokens_per_s"]
    if device == "cuda":
        share, ratio = bench.get("share_of_peak"), bench.get("x_torch_eager")
        check("1B benchmark: share of the measured bf16 peak >= 50%", None if share is None else share >= 0.5,
              "not measured" if share is None else f"{100 * share:.0f}% of {bench['peak_tflops']:.0f} TFLOP/s")
        check("1B benchmark: >= 1.5x PyTorch eager", None if ratio is None else ratio >= 1.5,
              "not measured" if ratio is None else f"{ratio:.2f}x ({bench['evalmesh_tokens_per_s']:.0f} against "
              f"{bench['torch_eager_tokens_per_s']:.0f} tokens/s; SDPA: {bench.get('x_torch_sdpa', float('nan')):.2f}x)")

    # What the chip gives at the benchmark's shapes (sweep-torch.py): figures, not checks.
    sweep = load(os.path.join(out, "sweep-torch.json"))
    result = {"device": device, "parts": parts, "checks": checks, "oracles": oracles, "bench": bench,
              "sweep": sweep, "passed": all(c["passed"] for c in checks) and bool(checks)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    for c in checks:
        mark = {True: "pass", False: "FAIL", None: "MISSING"}[c["passed"]]
        print(f"{mark:7} {c['check']}: {c['detail']}")
    if sweep:
        print("\nPyTorch at the benchmark's shapes, TFLOP/s (rows 2048 / 4096 / 8192):")
        for name in dict.fromkeys(p["name"] for p in sweep["products"]):
            figures = " / ".join(f"{p['tflops']:.0f}" for p in sweep["products"] if p["name"] == name)
            print(f"  {name}: {figures}")
        print(f"  attention (SDPA): {sweep['attention_tflops']:.1f}")
    print(f"\n{'every check passed' if result['passed'] else 'some checks failed or did not run'}; the summary: summary.json beside this log")
    return 0 if result["passed"] else 1


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("expected", "torch", "summary"):
        sys.exit(__doc__)
    command, first, second = sys.argv[1:]
    if command == "expected":
        expected(first, second)
    elif command == "torch":
        torch_oracles(first, second)
    else:
        sys.exit(summary(first, second))


if __name__ == "__main__":
    main()
