#!/usr/bin/env bash
# Predicted beside measured: calibrates this machine (under mpirun -np 2, so that the link
# between ranks is measured too), then runs llama.cpp-style perplexity (ctx 512) on a
# wikitext-2 slice in six configurations (single process with 2 threads; DP=2, PP=2, TP=2
# with 1 thread per worker; PP=3 and DP=2 x PP=2, oversubscribed) and prints the cost
# model's tokens/s beside the measured ones (target: every error within 15%), then what
# --strategy auto chooses for 2 workers and how it measures against the best.
#
# Environment: EVALMESH_SHARED (default ../shared), BYTES (slice size, default 60000).
# Run it on an otherwise idle machine: other work skews both the calibration and the runs.
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
bytes="${BYTES:-60000}"

head -c "$bytes" "$shared/data/wikitext-2/wiki.test.raw" > "$out/slice.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
mpirun --oversubscribe --bind-to none -np 2 "$bin" calibrate --model "$model" --batch-tokens 512 --output "$out/profile.json" > /dev/null
args=(run --model "$model" --task perplexity --data "$out/slice.txt" --perplexity-mode llamacpp --ctx 512
      --batch-tokens 512 --profile "$out/profile.json")
"$bin" "${args[@]}" --threads 2 --output "$out/single.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy dp --output "$out/dp2.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy pp --output "$out/pp2.json" >&2
mpirun --oversubscribe -np 4 "$bin" "${args[@]}" --threads 1 --strategy pp --output "$out/pp3.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy tp --output "$out/tp2.json" >&2
mpirun --oversubscribe -np 5 "$bin" "${args[@]}" --threads 1 --dp 2 --pp 2 --output "$out/dp2pp2.json" >&2
mpirun --oversubscribe -np 3 "$bin" "${args[@]}" --threads 1 --strategy auto --output "$out/auto.json" >&2

python3 - "$out" <<'PY'
import json, sys
names = [("single", "single process, 2 threads"), ("dp2", "DP=2 (np 3)"), ("pp2", "PP=2 (np 3)"),
         ("pp3", "PP=3 (np 4, 3 workers on 2 cores)"), ("tp2", "TP=2 (np 3)"),
         ("dp2pp2", "DP=2 x PP=2 (np 5, 4 workers on 2 cores)")]
runs = {n: json.load(open(f"{sys.argv[1]}/{n}.json"))["evalmesh"]["prediction"] for n, _ in names + [("auto", "")]}
print(f"{'configuration':<44} {'predicted':>10} {'measured':>10} {'error':>8}")
worst = 0.0
for n, label in names:
    p = runs[n]
    worst = max(worst, abs(p["error_percent"]))
    print(f"{label:<44} {p['predicted_tokens_per_s']:>10.1f} {p['measured_tokens_per_s']:>10.1f} {p['error_percent']:>+7.1f}%")
print(f"largest error {worst:.1f}% (target: within 15%)")
two = ["dp2", "pp2", "tp2"]
best = max(two, key=lambda n: runs[n]["measured_tokens_per_s"])
a = runs["auto"]
l = a["layout"]
ratio = a["measured_tokens_per_s"] / runs[best]["measured_tokens_per_s"]
print(f"--strategy auto with 2 workers chose DP={l['dp']} x PP={l['pp']} x TP={l['tp']}: "
      f"{a['measured_tokens_per_s']:.1f} tokens/s, {ratio:.3f} of the best 2-worker configuration ({best}, "
      f"{runs[best]['measured_tokens_per_s']:.1f}; target >= 0.95)")
PY
