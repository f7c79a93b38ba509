#!/usr/bin/env bash
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each cargo-fuzz target (default: all of fuzz/fuzz_targets) for SECONDS (default
# 600) with libFuzzer, starting from the committed seeds (fuzz/seeds/TARGET) and the
# corpus it grows (fuzz/corpus/TARGET, not committed, where the seeds made in code,
# binary ones among them, are written first), under an allocation cap so that
# a hostile length that would allocate without bound counts as a crash. Prints a line per
# target: time, executions, corpus size, crashes. A crash's input lands in
# fuzz/artifacts/TARGET/; once fixed, copy it to fuzz/regressions/TARGET/, where
# tests/tests/fuzz_regressions.rs replays it on every test run (a binary one belongs in
# evalmesh_tests::fuzz::generated_inputs instead).
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=($(ls fuzz/fuzz_targets | sed 's/\.rs$//'))
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: needs the nightly toolchain and cargo-fuzz: rustup toolchain install nightly; cargo install cargo-fuzz --locked" >&2
    exit 1
fi
cargo +nightly fuzz build -O >&2
cargo run --quiet -p evalmesh-tests --example fuzz_seeds -- fuzz/corpus

failed=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log=$(mktemp)
    status=0
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "$seconds")
    corpus=$(ls "fuzz/corpus/$target" | wc -l)
    if [ "$status" -ne 0 ]; then
        failed=1
        echo "$target: CRASH after ${runs} executions; input in fuzz/artifacts/$target/:"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|out-of-memory|malloc' "$log" | head -5
    else
        echo "$target: ${took} s, ${runs} executions, corpus ${corpus} inputs, no crash"
    fi
    rm -f "$log"
done
exit "$failed"
