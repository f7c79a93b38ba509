#!/usr/bin/env bash
# The main job on the built-in default: installs what evalmesh needs, builds it in
# release mode and scores the test model's perplexity on the built-in wikitext-2
# excerpt, writing results.json in the current folder. Extra arguments go to `evalmesh run`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

model="$("$repo/scripts/setup.sh" | tail -n 1)"
cargo build --locked --release -p evalmesh --manifest-path "$repo/Cargo.toml"
"$repo/target/release/evalmesh" run --model "$model" --output results.json --overwrite "$@"
