#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds the binary the integration
# tests run, lints (with and without the cuda feature, and the worker for aarch64),
# checks the developers' docs, runs the worker's unit and oracle tests for aarch64 under
# qemu-user, the CUDA backend's CPU-side tests (NVRTC fetched from PyPI compiles its
# kernels ahead and at run time), the unit and integration tests of the whole workspace
# (a real mpirun and a real local Slurm among them) and the CPU kernels' and oracle tests
# in a build without AVX-512, packs the GPU check and runs it on the CPU
# (scripts/device-check.sh), then a 30-second fuzzing run of each target where the
# nightly toolchain and cargo-fuzz are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

EVALMESH_TEST_MODEL="$(scripts/setup.sh --tests | tail -n 1)"
export EVALMESH_TEST_MODEL

cargo build --locked -p evalmesh
cargo clippy --locked --workspace --all-targets -- -D warnings
# The CUDA backend builds without a GPU or CUDA toolkit, only NVRTC (fetched from PyPI; its
# build compiles the kernels ahead): lint it (with the GPU suite), and run its CPU-side
# tests, among them the built kernels' images and compiling the kernels at run time.
nvrtc_lib="$(scripts/fetch-nvrtc.sh | tail -n 1)"
cargo clippy --locked --workspace --all-targets --features evalmesh/cuda,evalmesh-tests/cuda -- -D warnings
EVALMESH_REQUIRE_NVRTC=1 LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --locked -p evalmesh-worker --features cuda --lib backend::cuda
# The developers' docs (private items included): no broken link or stray HTML, with and
# without the cuda feature, and the worker without MPI.
doc=(cargo doc --locked --no-deps --document-private-items)
RUSTDOCFLAGS="-D warnings" "${doc[@]}" --workspace
RUSTDOCFLAGS="-D warnings" "${doc[@]}" --workspace --features evalmesh/cuda,evalmesh-tests/cuda
RUSTDOCFLAGS="-D warnings" "${doc[@]}" -p evalmesh-worker --no-default-features
# The worker for aarch64 (NEON's kernels, its x86 ones compiled out), without MPI (whose
# library the cross linker does not have; the rest of the workspace has no target-specific
# code): it lints, and its unit tests and every model family against its oracle
# (worker/tests/architectures.rs) run under qemu-user.
if rustup target add aarch64-unknown-linux-gnu >&2; then
    cargo clippy --locked -p evalmesh-worker -p evalmesh-common --no-default-features --all-targets \
        --target aarch64-unknown-linux-gnu -- -D warnings
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        cargo test --locked -p evalmesh-worker --no-default-features --lib --test architectures \
        --target aarch64-unknown-linux-gnu
else
    echo "test: no aarch64 lint or tests: rustup could not add the aarch64-unknown-linux-gnu target" >&2
fi
cargo fmt --all -- --check
cargo test --locked --workspace
# The CPU backend's kernels as an AVX2 machine runs them (no AVX-512 kernels, gemm's
# included): the same bits (docs/ARCHITECTURE.md §4), and every model family against its oracle.
cargo test --locked -p evalmesh-worker --no-default-features --lib backend::cpu
cargo test --locked -p evalmesh-worker --no-default-features --test architectures
# The GPU check's pack: it builds, fits its 48 MiB, and its parts pass here on the CPU.
scripts/device-check.sh --pack target/device-check
scripts/device-check.sh --dry-run target/device-check
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    scripts/fuzz.sh 30
else
    echo "test: no fuzzing smoke run: it needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
fi
