#!/usr/bin/env bash
# Installs what evalmesh needs on a fresh Debian machine with Rust: system packages
# (when missing) and the test model. Idempotent; prints the test model's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# System packages: none are needed yet beyond a C compiler for mimalloc.
if ! command -v cc >/dev/null 2>&1; then
    echo "setup: installing a C compiler" >&2
    apt-get update -qq && apt-get install -y -qq build-essential >&2
fi

scripts/fetch-test-model.sh
