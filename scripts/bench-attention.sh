#!/usr/bin/env bash
# The CPU backend's attention alone (worker/examples/attention_speed.rs): one layer of the
# test model's shape over the full 8,192-token window, and over a micro-batch of four
# 512-token texts (ctx 512), on one thread and on THREADS, each the median of several
# repetitions. Where the time of `bench-cpu.sh`'s long window goes, without the model
# around it: compare two builds by running this on each, alternating (the VM's speed drifts).
#
# Usage: scripts/bench-attention.sh
# Environment: THREADS (default: every core), ISA (native, the default, or avx2: an AVX2
#   machine's kernels, built without the `avx512` feature in target/avx2).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/bench-isa.sh"
cargo build --locked --release -p evalmesh-worker --example attention_speed --manifest-path "$repo/Cargo.toml" \
    --target-dir "$target" "${build[@]}" >&2
bin="$target/release/examples/attention_speed"
threads="${THREADS:-$(nproc)}"
for run in "8192 8192 5" "2048 512 41"; do
    for t in 1 "$threads"; do
        echo -n "ISA=$ISA, $t thread(s): "
        # shellcheck disable=SC2086
        RAYON_NUM_THREADS="$t" "$bin" $run
    done
done
