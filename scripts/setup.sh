#!/usr/bin/env bash
# Installs what evalmesh needs on a fresh Debian machine with Rust: system packages
# (when missing), HumanEval's problems and the test model. Idempotent; prints the test model's path last.
# Usage: scripts/setup.sh [--tests]   (--tests: also what only scripts/test.sh needs)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# System packages: a C compiler (mimalloc), OpenMPI and libclang (the mpi crate's bindings);
# with --tests, a Slurm with munge for the tests' local cluster (scripts/slurm-local.sh), and
# an aarch64 cross linker and qemu-user for the worker's unit tests on aarch64.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if [ "${1:-}" = --tests ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
    command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
    for package in slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
fi
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev openmpi-bin)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev clang)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

scripts/fetch-humaneval.sh >/dev/null
scripts/fetch-test-model.sh
