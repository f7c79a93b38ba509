#!/usr/bin/env bash
# The GPU check, run from its unpacked pack (scripts/device-check.sh makes it) on a machine
# with an NVIDIA GPU, its driver, CUDA 12 or 13 libraries (PyTorch's wheels will do: evalmesh
# finds them beside the python3 on PATH) and python3 with torch and transformers; no Rust,
# MPI or network needed. Each part has a time limit; together 475 s, within 8 minutes.
#   calibrate   the profile the runs predict with; on the GPU, the measured bf16 matrix peak
#   ops         every op against the CPU backend, batch invariance of the products (also
#               the same rows shifted by 1, 37 and 1000 inside a 2048-row block)
#   oracles     the ten architecture oracles scored on the GPU in f32 and bf16, against the
#               CPU's scores computed when packing, transformers' on a CPU (the oracle's own
#               figures) and transformers' on this GPU (oracles-torch)
#   random-*    a SmolLM2-135M-shaped model of random weights over a wikitext slice: the
#               same bits with micro-batches of 512 and 8192 tokens, the f32 path against
#               the CPU's perplexity computed when packing
#   stages      two pipeline stages on the one GPU under the pack's OpenMPI, against the
#               single process's bits
#   bench-*     a Llama-3.2-1B-shaped model of random bf16 weights over wikitext in
#               512-token windows, beside PyTorch eager and PyTorch's SDPA attention
#   sweep-torch what cuBLAS and SDPA reach (through PyTorch) at that model's shapes: its
#               products whole and per KV group, in blocks of 2048, 4096 and 8192 rows
# Writes OUT/summary.json (check.py summary), OUT/check.log and OUT/parts.tar.xz (each
# part's log and output): three files, as a device tool that brings back few files wants.
#
# Usage: run.sh OUT [cpu]   (cpu: the dry run scripts/device-check.sh --dry-run makes here,
#                           every part on the CPU that can run there, without the benchmark)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
results="${1:?usage: run.sh OUT [cpu]}"
device="${2:-cuda}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
# The parts write into a work folder, packed into OUT at the end.
out="$(mktemp -d)"
mkdir -p "$out/oracles"
exec > >(tee "$results/check.log") 2>&1
echo "$device" > "$out/device.txt"
export EVALMESH_CACHE="$out/cache" RUST_LOG="${RUST_LOG:-info}"
[ "$device" = cuda ] && export EVALMESH_REQUIRE_GPU=1
: > "$out/parts.tsv"

# evalmesh and the op tests, with the pack's OpenMPI (their libraries) on the path; Python
# stays off it.
with_mpi() {
    (
        . "$here/mpi/env.sh"
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader
        "$@"
    )
}
evalmesh() { with_mpi "$here/bin/evalmesh" "$@"; }

# part NAME SECONDS COMMAND...: runs COMMAND (a program or one of the functions exported
# here) with a time limit, its output in OUT/NAME.log.
part() {
    local name="$1" limit="$2" start status
    shift 2
    start=$(date +%s)
    if timeout "$limit" bash -c '"$@"' "$name" "$@" > "$out/$name.log" 2>&1; then status=passed; else status="failed ($?)"; fi
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >> "$out/parts.tsv"
    echo "device-check: $name $status in $(($(date +%s) - start)) s"
}
not_run() { printf '%s\tnot run\t0\n' "$1" >> "$out/parts.tsv"; echo "device-check: $1 not run: $2"; }

oracles() {
    local family precisions=(f32 bf16)
    [ "$device" = cuda ] || precisions=(cpu)
    for family in $(ls "$here/oracles"); do
        for precision in "${precisions[@]}"; do
            local flags=(--device "$device")
            [ "$precision" = f32 ] && flags+=(--gpu-precision f32)
            evalmesh score --model "$here/oracles/$family" --top 0 "${flags[@]}" \
                --file "$here/oracles/$family/text0.txt" --file "$here/oracles/$family/text1.txt" \
                --file "$here/oracles/$family/text2.txt" \
                --output "$out/oracles/$family.${precision/cpu/f32}.jsonl" || return 1
        done
    done
}

random_run() {
    local name="$1"
    shift
    local profile=()
    [ -f "$out/profile.json" ] && profile=(--profile "$out/profile.json")
    evalmesh run --model "$here/models/smollm2-135m.json" --random-weights --tokenizer "$here/models/tokenizer.gguf" \
        --task perplexity --data "$here/data/wiki.small.raw" --perplexity-mode llamacpp --ctx 512 \
        "${profile[@]}" --output "$out/$name.json" "$@"
}

export here out device
export -f with_mpi evalmesh oracles random_run

{ nvidia-smi; python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'; } \
    > "$out/environment.log" 2>&1
# The pack's OpenMPI (10 MiB of the pack) serves evalmesh whatever the machine has: the
# binary was linked against it. What the machine has is recorded beside it.
echo "the machine's own mpirun: $(command -v mpirun || echo none)" >> "$out/environment.log"
with_mpi ldd "$here/bin/evalmesh" >> "$out/environment.log" 2>&1

if [ "$device" = cuda ]; then
    part ops 30 with_mpi "$here/bin/cuda_ops" --test-threads=1
fi

# The profile every run below predicts with (a run without one calibrates first): on the
# GPU, its rates at the benchmark model's shapes and its measured bf16 matrix peak.
if [ "$device" = cuda ]; then
    part calibrate 40 evalmesh calibrate --device cuda --model "$here/models/llama-1b-bench.json" --batch-tokens 8192 \
        --output "$out/profile.json"
else
    part calibrate 40 evalmesh calibrate --device cpu --model "$here/models/smollm2-135m.json" --output "$out/profile.json"
fi
# Without a profile (calibration failed) a run calibrates first, in its own time.
profile=()
[ -f "$out/profile.json" ] && profile=(--profile "$out/profile.json")
part oracles 60 oracles
if [ "$device" = cuda ]; then
    part oracles-torch 60 python3 "$here/check.py" torch "$here" "$out"
fi

part random-8192 30 random_run random-8192 --device "$device" --batch-tokens 8192
part random-512 30 random_run random-512 --device "$device" --batch-tokens 512
if [ "$device" = cuda ]; then
    part random-f32 30 random_run random-f32 --device "$device" --gpu-precision f32 --batch-tokens 8192
fi
if with_mpi mpirun --version > "$out/mpi.log" 2>&1; then
    part stages 45 with_mpi mpirun -np 3 --oversubscribe "$here/bin/evalmesh" run --model "$here/models/smollm2-135m.json" \
        --random-weights --tokenizer "$here/models/tokenizer.gguf" --task perplexity \
        --data "$here/data/wiki.small.raw" --perplexity-mode llamacpp --ctx 512 --batch-tokens 8192 \
        --strategy pp --device "$device" $([ "$device" = cuda ] && echo --cuda-aware off) "${profile[@]}" \
        --output "$out/stages.json"
else
    not_run stages "the pack's mpirun does not start here (see mpi.log)"
fi

if [ "$device" = cuda ]; then
    part bench-evalmesh 50 evalmesh run --model "$here/models/llama-1b-bench.json" --random-weights \
        --tokenizer "$here/models/tokenizer.gguf" --device cuda --task perplexity \
        --data "$here/data/wiki.bench.raw" --perplexity-mode llamacpp --ctx 512 --batch-tokens 8192 \
        "${profile[@]}" --output "$out/bench-evalmesh.json"
    windows="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["evalmesh"]["tasks"]["perplexity"]["trees_computed"])' \
        "$out/bench-evalmesh.json" 2>/dev/null || echo 600)"
    for attention in eager sdpa; do
        part "bench-torch-$attention" 40 python3 "$here/bench-torch.py" "$here/models/llama-1b-bench.json" "$windows" 512 16 \
            "$out/bench-torch-$attention.json" "$attention"
    done
    part sweep-torch 20 python3 "$here/sweep-torch.py" "$here/models/llama-1b-bench.json" "$out/sweep-torch.json"
fi

python3 "$here/check.py" summary "$here" "$out"
status=$?
cp "$out/summary.json" "$results/" 2>/dev/null
tar -cJf "$results/parts.tar.xz" -C "$out" --exclude=./cache .
rm -rf "$out"
exit "$status"
