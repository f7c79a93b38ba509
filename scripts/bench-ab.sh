#!/usr/bin/env bash
# A/B benchmark of two evalmesh builds on the same workload, side by side: the quick CPU
# benchmark's run (llama.cpp-style perplexity of the built-in excerpt, ctx 512, 13 chunks,
# the test model) alternating A and B, PAIRS times. Prints each run's evaluation seconds
# and the median of B's time over A's (below 1: B is faster).
#
# Usage: scripts/bench-ab.sh BIN_A BIN_B [PAIRS]   (PAIRS default 5)
# Environment: EVALMESH_SHARED (default ../shared), THREADS (default 2).
set -euo pipefail
a="${1:?usage: scripts/bench-ab.sh BIN_A BIN_B [PAIRS]}"
b="${2:?usage: scripts/bench-ab.sh BIN_A BIN_B [PAIRS]}"
pairs="${3:-5}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
model="$("$repo/scripts/setup.sh" | tail -n 1)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

seconds() {
    "$1" run --model "$model" --perplexity-mode llamacpp --ctx 512 --threads "${THREADS:-2}" \
        --output "$out/results.json" --overwrite >/dev/null 2>&1
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["evalmesh"]["tasks"]["perplexity"]["seconds"])' \
        "$out/results.json"
}

ratios=()
for i in $(seq "$pairs"); do
    ta="$(seconds "$a")"
    tb="$(seconds "$b")"
    ratio="$(python3 -c "print(f'{$tb / $ta:.4f}')")"
    ratios+=("$ratio")
    echo "pair $i: A ${ta} s, B ${tb} s, B/A ${ratio}"
done
python3 -c "import statistics,sys; print(f'median B/A over {len(sys.argv)-1} pairs: {statistics.median(map(float, sys.argv[1:])):.4f}')" "${ratios[@]}"
