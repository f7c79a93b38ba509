#!/usr/bin/env bash
# Generation benchmark, side by side with llama.cpp on this machine: decode throughput
# (generated tokens/s over all sequences) at 1, 8 and 32 concurrent sequences, each with
# a 128-token prompt and 128 generated tokens (end of text ignored), on the test model
# dequantised to F32 (both read the same weights; llama.cpp keeps its KV cache in f32 too),
# 2 threads. At each width, llama.cpp's llama-batched-bench and evalmesh's `generate` task
# run back to back, in alternating order, PAIRS times; prints each pair and the median
# ratio per width.
#
# Usage: scripts/bench-generate.sh [PAIRS]   (default 6: an even count, so that each side goes first as often)
# Environment: LLAMA_CPP_DIR (a llama.cpp checkout built with its tools, else
#   llama-batched-bench and llama-quantize on PATH), THREADS (default 2).
# To build llama.cpp, see bench-setup.sh (targets llama-batched-bench llama-quantize).
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
pairs="${1:-6}"
threads="${THREADS:-2}"
widths=(1 8 32)
prompt_tokens=128
generated=128

batched="$(llama_tool llama-batched-bench)"
f32="$(f32_model)"

# evalmesh's prompts: per width, that many distinct 128-token prompts.
for width in "${widths[@]}"; do
    python3 - "$out/prompts-$width.jsonl" "$width" "$prompt_tokens" "$generated" <<'PY'
import json, sys
path, width, length, generated = sys.argv[1], *map(int, sys.argv[2:])
with open(path, "w") as f:
    for s in range(width):
        ids = [1000 + (s * 131 + i * 7) % 20000 for i in range(length)]
        f.write(json.dumps({"prompt": "", "prompt_ids": ids, "max_tokens": generated, "ignore_eos": True}) + "\n")
PY
done

# llama.cpp's decode tokens/s (S_TG) at one width.
llama_rate() {
    local width="$1"
    "$batched" -m "$f32" -c $((width * (prompt_tokens + generated) + 256)) -b 4096 -ub 512 \
        -npp "$prompt_tokens" -ntg "$generated" -npl "$width" -t "$threads" -ctk f32 -ctv f32 2>/dev/null |
        python3 -c '
import sys
for line in sys.stdin:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 8 and cells[2].isdigit():
        print(cells[7])  # S_TG t/s
'
}

evalmesh_rate() {
    local width="$1"
    "$bin" run --model "$f32" --task generate --data "$out/prompts-$width.jsonl" --threads "$threads" \
        --max-sequences "$width" --batch-tokens 8192 --output "$out/results.json" --overwrite >/dev/null 2>&1
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["evalmesh"]["tasks"]["generate"]["decode_tokens_per_s"])' \
        "$out/results.json"
}

# Each pair runs both sides at one width back to back (which goes first alternates), so
# that the machine's drift over minutes falls on both alike.
declare -A ratios
for pair in $(seq "$pairs"); do
    for width in "${widths[@]}"; do
        if [ $((pair % 2)) -eq 1 ]; then
            theirs="$(llama_rate "$width")"
            ours="$(evalmesh_rate "$width")"
        else
            ours="$(evalmesh_rate "$width")"
            theirs="$(llama_rate "$width")"
        fi
        ratio="$(python3 -c "print(f'{$ours / $theirs:.3f}')")"
        ratios[$width]="${ratios[$width]:-} $ratio"
        printf 'pair %d, %2d sequences: llama.cpp %8.1f tokens/s, evalmesh %8.1f tokens/s, ratio %s\n' \
            "$pair" "$width" "$theirs" "$ours" "$ratio"
    done
done
echo "median ratio of decode tokens/s, evalmesh over llama.cpp (targets: >= 1.0 at 1 sequence, >= 1.5 at 32):"
for width in "${widths[@]}"; do
    # shellcheck disable=SC2086
    python3 -c "import statistics,sys; print(f'  {sys.argv[1]:>2} sequences: {statistics.median(map(float, sys.argv[2:])):.3f}')" \
        "$width" ${ratios[$width]}
done
