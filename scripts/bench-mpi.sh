#!/usr/bin/env bash
# MPI benchmark, measured side by side in one run:
# 1. `evalmesh pingpong` (mpirun -np 2): the engine's activation messages against a raw MPI
#    ping-pong of the same sizes (target ratio >= 0.9);
# 2. llama.cpp-style perplexity (ctx 512) on a wikitext-2 slice: the single process with 2
#    threads, then 2 workers x 1 thread (mpirun -np 3: rank 0 coordinates) as data
#    parallelism, a 2-stage pipeline and 2 tensor-parallel shards, and one worker of 2 threads
#    (mpirun --bind-to none -np 2: mpirun would bind it to one core), which scores on two
#    lanes as the single process does. Prints tokens/s of
#    each and the ratios to the single process (targets for DP and PP: >= 0.85).
#
# Environment: EVALMESH_SHARED (default ../shared), BYTES (slice size, default 60000).
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
bytes="${BYTES:-60000}"

head -c "$bytes" "$shared/data/wikitext-2/wiki.test.raw" > "$out/slice.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
echo "activation transfer against a raw MPI ping-pong (target ratio >= 0.9):"
mpirun --oversubscribe -np 2 "$bin" pingpong --round-trips 100
echo
args=(run --model "$model" --task perplexity --data "$out/slice.txt" --perplexity-mode llamacpp --ctx 512 --batch-tokens 512)
"$bin" "${args[@]}" --threads 2 --output "$out/single.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy dp --output "$out/dp.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy pp --output "$out/pp.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy tp --output "$out/tp.json" >&2
mpirun --oversubscribe --bind-to none -np 2 "$bin" "${args[@]}" --threads 2 --output "$out/alone.json" >&2

python3 - "$out" <<'PY'
import json, sys
runs = {name: json.load(open(f"{sys.argv[1]}/{name}.json")) for name in ("single", "dp", "pp", "tp", "alone")}
def tps(r):
    t = r["evalmesh"]["tasks"]["perplexity"]
    return t["tokens_computed"] / t["seconds"]
ppl = {n: r["results"]["perplexity"]["perplexity,none"] for n, r in runs.items()}
base = tps(runs["single"])
print(f"{'configuration':<44} {'tokens/s':>9} {'ratio':>6}")
print(f"{'single process, 2 threads':<44} {base:>9.1f} {1.0:>6.2f}")
print(f"{'DP: 2 workers x 1 thread (mpirun -np 3)':<44} {tps(runs['dp']):>9.1f} {tps(runs['dp']) / base:>6.2f}  (target >= 0.85)")
print(f"{'PP: 2 stages x 1 thread (mpirun -np 3)':<44} {tps(runs['pp']):>9.1f} {tps(runs['pp']) / base:>6.2f}  (target >= 0.85)")
print(f"{'TP: 2 shards x 1 thread (mpirun -np 3)':<44} {tps(runs['tp']):>9.1f} {tps(runs['tp']) / base:>6.2f}")
lanes = runs["alone"]["evalmesh"]["engine_details"]["workers"][0]["lanes"]
print(f"{f'1 worker x 2 threads, {lanes} lanes (mpirun -np 2)':<44} {tps(runs['alone']):>9.1f} {tps(runs['alone']) / base:>6.2f}")
print(f"perplexity: single {ppl['single']!r}, DP {ppl['dp']!r}, PP {ppl['pp']!r}, TP {ppl['tp']!r}, "
      f"1 worker {ppl['alone']!r} (must be equal)")
PY
