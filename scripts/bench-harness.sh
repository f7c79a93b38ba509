#!/usr/bin/env bash
# Harness benchmark: llama.cpp's 400 HellaSwag items (shared/reference) scored with prefix
# sharing and without it, side by side in one run: tokens computed, wall time, tokens/s and
# the ratios, plus the acc_norm_tokens score of each (they must agree; llama.cpp F32: 40.75).
#
# Environment: EVALMESH_SHARED (default ../shared), THREADS (default 2), LIMIT (default 400).
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
threads="${THREADS:-2}"
limit="${LIMIT:-400}"

for mode in shared unshared; do
    flag=()
    if [ "$mode" = unshared ]; then flag=(--no-prefix-sharing); fi
    "$bin" run --model "$model" --task multiple_choice \
        --data "$shared/reference/hellaswag-llamacpp-dev.jsonl" --limit "$limit" --threads "$threads" \
        "${flag[@]}" --output "$out/$mode.json" >&2
done
python3 - "$out/shared.json" "$out/unshared.json" <<'PY'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
stats = [r["evalmesh"]["tasks"]["multiple_choice"] for r in runs]
scores = [100 * r["results"]["multiple_choice"]["acc_norm_tokens,none"] for r in runs]
print(f"{'':<28} {'prefix sharing':>16} {'no sharing':>16} {'ratio':>8}")
print(f"{'tokens computed':<28} {stats[0]['tokens_computed']:>16} {stats[1]['tokens_computed']:>16} {stats[0]['tokens_computed'] / stats[1]['tokens_computed']:>8.3f}")
print(f"{'wall time (s)':<28} {stats[0]['seconds']:>16.1f} {stats[1]['seconds']:>16.1f} {stats[0]['seconds'] / stats[1]['seconds']:>8.3f}")
print(f"{'tokens/s':<28} {stats[0]['tokens_per_s']:>16.1f} {stats[1]['tokens_per_s']:>16.1f}")
print(f"{'acc_norm_tokens':<28} {scores[0]:>16.2f} {scores[1]:>16.2f}   (llama.cpp F32: 40.75)")
PY
