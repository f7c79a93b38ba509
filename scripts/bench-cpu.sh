#!/usr/bin/env bash
# CPU benchmark: llama.cpp-style perplexity on the whole wikitext-2 test file (ctx 512,
# 589 chunks, 301,568 tokens through the model) with the test model on 2 threads.
# Prints window tokens/s, the GFLOP/s of the backend's matrix products, peak memory,
# and the ratio to llama.cpp's speed on the same machine kind (shared/reference/README.md).
#
# Usage: scripts/bench-cpu.sh [--quick]   (--quick: the built-in excerpt only, 13 chunks)
# Environment: EVALMESH_SHARED (default ../shared), THREADS (default 2).
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
threads="${THREADS:-2}"

data_args=(--data "$shared/data/wikitext-2/wiki.test.raw")
if [ "${1:-}" = "--quick" ]; then data_args=(); fi

/usr/bin/time -v -o "$out/time.txt" "$bin" run --model "$model" "${data_args[@]}" \
    --perplexity-mode llamacpp --ctx 512 --threads "$threads" --output "$out/results.json" >&2

python3 - "$out/results.json" "$out/time.txt" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
e = r["evalmesh"]
t = e["tasks"]["perplexity"]
peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1))
window_tokens = t["trees"] * 512  # llama.cpp counts every token of every chunk
tps = window_tokens / t["seconds"]
llama_f32, llama_q4 = 350.6, 138.0  # shared/reference/README.md, same machine kind, 2 threads
print(f"{'perplexity':<34} {r['results']['perplexity']['perplexity,none']:.4f}  (llama.cpp F32 23.4433, Q4_1 23.5150 on the full file)")
print(f"{'tokens through the model':<34} {window_tokens} ({t['tokens_computed']} input rows: a chunk's last token is only a target)")
print(f"{'evaluation time':<34} {t['seconds']:.1f} s")
print(f"{'window tokens/s':<34} {tps:.1f}  (target >= 420)")
print(f"{'ratio to llama.cpp F32 (350.6/s)':<34} {tps / llama_f32:.2f}x  (target >= 1.2x)")
print(f"{'ratio to llama.cpp Q4_1 (138.0/s)':<34} {tps / llama_q4:.2f}x")
print(f"{'matrix products':<34} {e['matmul_gflops_per_s']:.1f} GFLOP/s, {100 * e['matmul_seconds'] / e['eval_seconds']:.0f}% of the time")
print(f"{'peak memory (max RSS)':<34} {peak_kib / 1024:.0f} MiB  (target < 1024)")
PY
