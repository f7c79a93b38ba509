#!/usr/bin/env bash
# MPI benchmark: llama.cpp-style perplexity (ctx 512) on a wikitext-2 slice, measured side by
# side in one run: the single process with 2 threads, data parallelism with 2 workers × 1
# thread, and a 2-stage pipeline with 2 workers × 1 thread (mpirun -np 3: rank 0 coordinates).
# Prints tokens/s of each and the ratios to the single process (targets: >= 0.85).
#
# Environment: EVALMESH_SHARED (default ../shared), BYTES (slice size, default 60000).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="${EVALMESH_SHARED:-$repo/../shared}"
bytes="${BYTES:-60000}"

model="$("$repo/scripts/setup.sh" | tail -n 1)"
cargo build --locked --release -p evalmesh --manifest-path "$repo/Cargo.toml" >&2
bin="$repo/target/release/evalmesh"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
head -c "$bytes" "$shared/data/wikitext-2/wiki.test.raw" > "$out/slice.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
args=(run --model "$model" --task perplexity --data "$out/slice.txt" --perplexity-mode llamacpp --ctx 512 --batch-tokens 512)
"$bin" "${args[@]}" --threads 2 --output "$out/single.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy dp --output "$out/dp.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy pp --output "$out/pp.json" >&2

python3 - "$out" <<'PY'
import json, sys
runs = {name: json.load(open(f"{sys.argv[1]}/{name}.json")) for name in ("single", "dp", "pp")}
def tps(r):
    t = r["evalmesh"]["tasks"]["perplexity"]
    return t["tokens_computed"] / t["seconds"]
ppl = {n: r["results"]["perplexity"]["perplexity,none"] for n, r in runs.items()}
base = tps(runs["single"])
print(f"{'configuration':<44} {'tokens/s':>9} {'ratio':>6}")
print(f"{'single process, 2 threads':<44} {base:>9.1f} {1.0:>6.2f}")
print(f"{'DP: 2 workers x 1 thread (mpirun -np 3)':<44} {tps(runs['dp']):>9.1f} {tps(runs['dp']) / base:>6.2f}  (target >= 0.85)")
print(f"{'PP: 2 stages x 1 thread (mpirun -np 3)':<44} {tps(runs['pp']):>9.1f} {tps(runs['pp']) / base:>6.2f}  (target >= 0.85)")
print(f"perplexity: single {ppl['single']!r}, DP {ppl['dp']!r}, PP {ppl['pp']!r} (must be equal)")
PY
