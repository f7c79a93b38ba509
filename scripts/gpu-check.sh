#!/usr/bin/env bash
# The GPU check, in one go, from a bundle made by scripts/gpu-build.sh, on a machine with an
# NVIDIA GPU, its driver and the CUDA 12 libraries (cuBLAS, NVRTC; those of a pip-installed
# PyTorch are found too) but no Rust or MPI packages:
#   1. the GPU suite: every op against the CPU backend, batch invariance of the matrix
#      products, the pool once warm (cuda_ops); the test model on the GPU against the CPU:
#      perplexity within 0.5%, HellaSwag decisions >= 99% equal, and two pipeline stages
#      on the one GPU under mpirun giving the single process's bits over each transport
#      (gpu_model);
#   2. the GPU's profile (evalmesh calibrate --device cuda): its rates at the benchmark
#      model's shapes and its measured bf16 matrix peak;
#   3. throughput: the test model on the CPU and the GPU; a Llama-shaped model of 1.17 B
#      parameters (data/llama-1b-bench.json) with random bf16 weights drawn on the GPU,
#      scoring the wikitext-2 test set in 512-token windows, beside PyTorch eager
#      (transformers' LlamaForCausalLM in bf16, same config, windows and batch) where
#      `python3 -c "import torch, transformers"` works.
# The table (table.md) shows tokens/s, matrix TFLOP/s over the whole evaluation, its share
# of the measured peak, and the ratio to PyTorch; the targets are >= 50% of the peak and
# >= 1.5x PyTorch on the 1B model.
#
# Usage: gpu-check.sh OUT_DIR [MPI_DIR]
#   OUT_DIR: logs, results and the table. MPI_DIR: where mpirun and the MPI libraries are
#   (default: the bundle's mpi/, from scripts/mpi-bundle.sh): a folder with an env.sh to
#   source, or Debian's OpenMPI packages unpacked with dpkg -x (usr/bin/mpirun, ...).
# Exit status 0 only if every part passed and both targets were met. Each part has a time
# limit (together 450 s), so the check ends within 8 minutes.
set -uo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [MPI_DIR]" >&2
    exit 2
fi
bundle="$(cd "$(dirname "$0")" && pwd)"
out="$1"
mpi="${2:-$bundle/mpi}"
mkdir -p "$out"
evalmesh="$bundle/release/evalmesh"
data="$bundle/data"

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
export LD_LIBRARY_PATH EVALMESH_REQUIRE_GPU=1 EVALMESH_TEST_MODEL="$data/test-model.gguf" \
    EVALMESH_SHARED="$data" EVALMESH_CACHE="$out/cache"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "gpu-check: nvidia-smi failed (see $out/nvidia-smi.txt)" >&2

# The MPI of the two-worker tests, in a subshell's environment only: its libraries stay off
# the path of everything else (PyTorch among them).
with_mpi() {
    (
        if [ -f "$mpi/env.sh" ]; then
            . "$mpi/env.sh"
        else
            export PATH="$mpi/usr/bin:$PATH" OPAL_PREFIX="$mpi/usr" \
                LD_LIBRARY_PATH="$mpi/usr/lib/x86_64-linux-gnu:$mpi/usr/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
        fi
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        "$@"
    )
}
if ! with_mpi mpirun --version > "$out/mpirun-version.txt" 2>&1; then
    echo "gpu-check: no working mpirun in $mpi (see $out/mpirun-version.txt); the two-worker tests will fail" >&2
fi

failures=0
# part NAME SECONDS [with_mpi] COMMAND...: runs COMMAND with a time limit (in the MPI's
# environment after with_mpi), its output in OUT/NAME.log.
part() {
    local name="$1" limit="$2" start runner=()
    shift 2
    if [ "$1" = with_mpi ]; then
        runner=(with_mpi)
        shift
    fi
    start=$(date +%s)
    if "${runner[@]}" timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
        echo "gpu-check: $name passed in $(($(date +%s) - start)) s" >&2
    else
        failures=$((failures + 1))
        echo "gpu-check: $name FAILED (see $out/$name.log):" >&2
        grep -E "^test .* FAILED|panicked|^error" "$out/$name.log" | head -n 20 >&2
    fi
}

part cuda_ops 60 "$bundle/release/deps/cuda_ops" --test-threads=1
part gpu_model 150 with_mpi "$bundle/release/deps/gpu_model" --test-threads=1
part calibrate 40 "$evalmesh" calibrate --device cuda --model "$data/llama-1b-bench.json" --batch-tokens 8192 \
    --output "$out/profile-cuda.json"
for device in cpu cuda; do
    part "test-model-$device" 40 "$evalmesh" run --model "$EVALMESH_TEST_MODEL" --device "$device" \
        --perplexity-mode llamacpp --ctx 512 --batch-tokens 4096 --output "$out/test-model-$device.json"
done
part bench-1b-evalmesh 60 "$evalmesh" run --model "$data/llama-1b-bench.json" --random-weights \
    --tokenizer "$EVALMESH_TEST_MODEL" --device cuda --task perplexity --data "$data/wikitext-2/wiki.test.raw" \
    --perplexity-mode llamacpp --ctx 512 --batch-tokens 8192 --profile "$out/profile-cuda.json" \
    --output "$out/bench-1b-evalmesh.json"
if python3 -c "import torch, transformers" 2> "$out/torch-import.log"; then
    windows="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["evalmesh"]["tasks"]["perplexity"]["trees_computed"])' \
        "$out/bench-1b-evalmesh.json" 2>/dev/null || echo 600)"
    part bench-1b-pytorch 60 python3 "$bundle/bench-torch.py" "$data/llama-1b-bench.json" "$windows" 512 16 \
        "$out/bench-1b-pytorch.json"
else
    echo "gpu-check: PyTorch eager not measured: python3 cannot import torch and transformers (see $out/torch-import.log)" >&2
fi

python3 - "$out" <<'PY' | tee "$out/table.md"
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
profile = load("profile-cuda.json") or {}
peak = profile.get("matmul_peak_flops_per_s")
print(f"Measured bf16 matrix peak: {peak / 1e12:.0f} TFLOP/s\n" if peak else "Measured bf16 matrix peak: not measured\n")
print("| model | device | tokens/s | matrix TFLOP/s | share of peak | x PyTorch eager | peak device MiB |")
print("|---|---|---:|---:|---:|---:|---:|")
torch_run = load("bench-1b-pytorch.json")
targets = []
for label, device, name in (("test model 135M", "cpu", "test-model-cpu.json"), ("test model 135M", "cuda", "test-model-cuda.json"),
                            ("llama-1b-bench (random bf16)", "cuda", "bench-1b-evalmesh.json")):
    r = load(name)
    if r is None:
        print(f"| {label} | {device} | failed | | | | |")
        continue
    e = r["evalmesh"]
    task = e["tasks"]["perplexity"]
    tokens_per_s = task["tokens_computed"] / task["seconds"]
    # Matrix FLOPs over the evaluation's whole time (not only the products' own time).
    tflops = e["matmul_gflop"] / e["eval_seconds"] / 1e3
    share = tflops * 1e12 / peak if peak and device == "cuda" else None
    ratio = tokens_per_s / torch_run["tokens_per_s"] if torch_run and name.startswith("bench") else None
    device_mib = max((s.get("stats", {}).get("peak_device_memory_bytes", 0) for s in e.get("monitoring", [])), default=0) / 2**20
    print(f"| {label} | {device} | {tokens_per_s:.0f} | {tflops:.1f} | {f'{100 * share:.0f}%' if share else ''} | "
          f"{f'{ratio:.2f}' if ratio else ''} | {device_mib:.0f} |")
    if name.startswith("bench"):
        targets = [("share of the peak >= 50%", share is not None and share >= 0.5),
                   ("x PyTorch eager >= 1.5", ratio is not None and ratio >= 1.5)]
if torch_run:
    print(f"| llama-1b-bench (random bf16) | cuda, PyTorch eager {torch_run['torch']} | {torch_run['tokens_per_s']:.0f} | | | 1.00 | |")
print()
for target, met in targets or [("1B benchmark", False)]:
    print(f"- {target}: {'met' if met else 'NOT MET'}")
sys.exit(0 if targets and all(met for _, met in targets) else 3)
PY
targets=${PIPESTATUS[0]}
if [ "$failures" -gt 0 ] || [ "$targets" -ne 0 ]; then
    echo "gpu-check: $failures part(s) failed$([ "$targets" -ne 0 ] && echo ", targets not met"); logs in $out" >&2
    exit 1
fi
echo "gpu-check: every part passed and both targets were met; logs and table in $out" >&2
