#!/usr/bin/env bash
# Memory benchmark (issue 19): weights kept as stored against weights widened to f32.
# 1. The test model (Q4_1 GGUF), llama.cpp-style perplexity (ctx 512) of a wikitext-2 slice
#    with --weights-in-memory f32 and stored, alternating, PAIRS times: each run's wall
#    seconds, weight memory and peak RSS, the stored weights over the file's size (target
#    < 1.2), and whether the scores are the same bits.
# 2. A model shaped like Llama-3-8B (tests/fixtures/configs/llama-3-8b.json) with random
#    bf16 weights, about 16 GB, written once by scripts/make-random-model.py into
#    $EVALMESH_CACHE/llama-3-8b-random-bf16 (16 GB of free disk), scores the first 3,000
#    bytes of the slice at ctx 512 with the default --weights-in-memory (auto: on a machine
#    of under 35 GB it keeps the weights stored): its peak RSS (target < 18 GB on a 24 GB
#    machine) and weight memory. Skipped with SKIP_8B=1.
#
# Usage: scripts/bench-memory.sh [PAIRS]   (default 2)
# Environment: EVALMESH_SHARED (default ../shared), THREADS (default 2), SKIP_8B.
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
pairs="${1:-2}"
threads="${THREADS:-2}"
slice="$out/wikitext-slice.raw"
head -c 20000 "$shared/data/wikitext-2/wiki.test.raw" >"$slice"

# Runs evalmesh on the slice: MODEL, DATA, RESULTS, then any further flags; prints the
# wall seconds, the peak RSS and the results' weight memory, in MB.
measured_run() {
    local model="$1" data="$2" results="$3"
    shift 3
    /usr/bin/time -f '%e %M' -o "$out/time.txt" "$bin" run --model "$model" --data "$data" \
        --perplexity-mode llamacpp --ctx 512 --threads "$threads" --output "$results" --overwrite "$@" >/dev/null 2>&1
    python3 - "$out/time.txt" "$results" <<'PY'
import json, sys
wall, peak_kib = open(sys.argv[1]).read().split()[-2:]
stats = json.load(open(sys.argv[2]))["evalmesh"]["monitoring"][0]["stats"]
print(wall, int(peak_kib) * 1024 / 1e6, stats["weight_memory_bytes"] / 1e6)
PY
}

for pair in $(seq "$pairs"); do
    order=(f32 stored)
    [ $((pair % 2)) -eq 0 ] && order=(stored f32)
    for mode in "${order[@]}"; do
        read -r wall peak weights < <(measured_run "$model" "$slice" "$out/$mode.json" --weights-in-memory "$mode")
        printf 'pair %d, %-6s: %6.2f s wall, weights %7.1f MB, peak RSS %7.1f MB\n' \
            "$pair" "$mode" "$wall" "$weights" "$peak"
        echo "$mode $wall" >>"$out/walls.txt"
    done
done
python3 - "$model" "$out/f32.json" "$out/stored.json" "$out/walls.txt" <<'PY'
import json, os, statistics, sys
model, f32, stored, walls = sys.argv[1:]
read = lambda path: json.load(open(path))
weights = read(stored)["evalmesh"]["monitoring"][0]["stats"]["weight_memory_bytes"]
print(f"stored weights over the file's size: {weights / os.path.getsize(model):.3f} (target < 1.2)")
same = read(f32)["results"] == read(stored)["results"]
print(f"scores of f32 and stored weights: {'the same bits' if same else 'DIFFERENT'}")
times = {}
for line in open(walls):
    mode, wall = line.split()
    times.setdefault(mode, []).append(float(wall))
print(f"median wall of stored over f32: {statistics.median(times['stored']) / statistics.median(times['f32']):.3f}")
sys.exit(0 if same else 1)
PY

if [ -n "${SKIP_8B:-}" ]; then
    exit 0
fi
big="${EVALMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/evalmesh}/llama-3-8b-random-bf16"
if [ ! -f "$big/model.safetensors.index.json" ]; then
    python3 "$repo/scripts/make-random-model.py" "$repo/tests/fixtures/configs/llama-3-8b.json" \
        "$shared/reference/architectures/llama3" "$big"
fi
head -c 3000 "$slice" >"$out/short-slice.raw"
read -r wall peak weights < <(measured_run "$big" "$out/short-slice.raw" "$out/8b.json")
python3 - "$wall" "$peak" "$weights" "$big" <<'PY'
import os, sys
wall, peak, weights, big = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
files = sum(os.path.getsize(os.path.join(big, f)) for f in os.listdir(big) if f.endswith(".safetensors"))
print(f"Llama-3-8B-shaped bf16 ({files / 1e9:.2f} GB of files): {wall:.0f} s, weights {weights / 1e3:.2f} GB, "
      f"peak RSS {peak / 1e3:.2f} GB (target < 18 GB)")
PY
