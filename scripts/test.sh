#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds the binary the integration
# tests run, lints (with and without the cuda feature), then runs the unit and
# integration tests of the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

EVALMESH_TEST_MODEL="$(scripts/setup.sh | tail -n 1)"
export EVALMESH_TEST_MODEL

cargo build --locked -p evalmesh
cargo clippy --locked --workspace --all-targets -- -D warnings
# The CUDA backend builds without a GPU or CUDA toolkit: lint it, and run its CPU-side tests.
cargo clippy --locked --workspace --all-targets --features evalmesh/cuda -- -D warnings
cargo test --locked -p evalmesh-worker --features cuda --lib backend::cuda
cargo fmt --all -- --check
cargo test --locked --workspace
