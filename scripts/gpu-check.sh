#!/usr/bin/env bash
# The GPU check, in one go, from a bundle made by scripts/gpu-build.sh, on a machine with an
# NVIDIA GPU, its driver and the CUDA 12 libraries (cuBLAS, NVRTC; those of a pip-installed
# PyTorch are found too) but no Rust or MPI packages:
#   1. the GPU suite: every op against the CPU backend, batch invariance of the matrix
#      products, the pool once warm (cuda_ops); the test model on the GPU against the CPU:
#      perplexity within 0.5%, HellaSwag decisions >= 99% equal (gpu_model);
#   2. throughput of the test model on the GPU beside the CPU (tokens/s, matrix TFLOP/s,
#      peak device memory).
# Not yet here (issue 6): the 1B-parameter benchmark beside PyTorch eager, and two workers
# on one GPU under mpirun (both transports).
#
# Usage: gpu-check.sh OUT_DIR   (logs, results and the table go to OUT_DIR; exit status 0
# only if every part passed). Each part has a time limit (cuda_ops 120 s, gpu_model 240 s,
# each throughput run 60 s), so the check ends within 8 minutes.
set -uo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
bundle="$(cd "$(dirname "$0")" && pwd)"
out="$1"
mkdir -p "$out"

# CUDA libraries of a pip-installed PyTorch (nvidia-* wheels), where the system has none on its path.
wheel_libs="$(python3 - 2>/dev/null <<'PY'
import importlib.util, os
for package in ("nvidia.cublas", "nvidia.cuda_nvrtc", "nvidia.cuda_runtime"):
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        continue
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(os.path.join(folder, "lib")):
            print(os.path.join(folder, "lib"))
PY
)"
LD_LIBRARY_PATH="$bundle/lib$(printf ':%s' $wheel_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH EVALMESH_REQUIRE_GPU=1 EVALMESH_TEST_MODEL="$bundle/data/test-model.gguf" \
    EVALMESH_SHARED="$bundle/data" EVALMESH_CACHE="$out/cache"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "gpu-check: nvidia-smi failed (see $out/nvidia-smi.txt)" >&2

failures=0
for part in cuda_ops:120 gpu_model:240; do
    suite="${part%%:*}"
    start=$(date +%s)
    if timeout "${part#*:}" "$bundle/release/deps/$suite" --test-threads=1 > "$out/$suite.log" 2>&1; then
        echo "gpu-check: $suite passed in $(($(date +%s) - start)) s" >&2
    else
        failures=$((failures + 1))
        echo "gpu-check: $suite FAILED (see $out/$suite.log):" >&2
        grep -E "^test .* FAILED|panicked" "$out/$suite.log" | head -n 20 >&2
    fi
done

for device in cpu cuda; do
    if ! timeout 60 "$bundle/release/evalmesh" run --model "$EVALMESH_TEST_MODEL" --device "$device" \
        --perplexity-mode llamacpp --ctx 512 --batch-tokens 4096 --output "$out/throughput-$device.json" \
        > "$out/throughput-$device.log" 2>&1; then
        failures=$((failures + 1))
        echo "gpu-check: the $device throughput run FAILED (see $out/throughput-$device.log)" >&2
    fi
done
python3 - "$out" <<'PY' | tee "$out/table.md"
import json, os, sys
out = sys.argv[1]
print("| device | perplexity | tokens/s | matrix TFLOP/s | peak device MiB |")
print("|---|---:|---:|---:|---:|")
for device in ("cpu", "cuda"):
    path = os.path.join(out, f"throughput-{device}.json")
    if not os.path.exists(path):
        print(f"| {device} | failed | | | |")
        continue
    r = json.load(open(path))
    e = r["evalmesh"]
    task = e["tasks"]["perplexity"]
    stats = e.get("monitoring", [{}])
    device_mib = max((s.get("stats", {}).get("peak_device_memory_bytes", 0) for s in stats), default=0) / 2**20
    print(f"| {device} | {r['results']['perplexity']['perplexity,none']:.4f} | {task.get('tokens_per_s', 0):.0f} | "
          f"{e['matmul_gflops_per_s'] / 1e3:.2f} | {device_mib:.0f} |")
PY
if [ "$failures" -gt 0 ]; then
    echo "gpu-check: $failures part(s) failed; logs in $out" >&2
    exit 1
fi
echo "gpu-check: every part passed; logs and table in $out" >&2
