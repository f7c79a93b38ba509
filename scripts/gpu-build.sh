#!/usr/bin/env bash
# Builds the bundle that scripts/gpu-check.sh runs on a GPU machine where the NVIDIA driver
# and the CUDA 12 libraries exist but neither Rust nor MPI packages are installed: the
# release binary and the GPU suite's test executables built with the `cuda` feature, the
# shared libraries they load that are not part of glibc (OpenMPI's among them: a run
# without mpirun never starts MPI, but the loader needs the library), this machine's
# OpenMPI as a relocatable folder (mpi/, by scripts/mpi-bundle.sh: mpirun for the suite's
# two-worker tests), the test model, the HellaSwag sample, the benchmark's config and the
# wikitext-2 test set, gpu-check.sh and bench-torch.py.
#
# Usage: scripts/gpu-build.sh BUNDLE_DIR   (then copy BUNDLE_DIR to the GPU machine and run
# BUNDLE_DIR/gpu-check.sh OUT_DIR there).
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 BUNDLE_DIR" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$1"
shared="${EVALMESH_SHARED:-$repo/../shared}"
model="$("$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"

cargo build --locked --release -p evalmesh --features cuda >&2
# The test executables' paths, from cargo's JSON messages.
tests="$(cargo test --locked --release --no-run --message-format=json \
    -p evalmesh-worker -p evalmesh-tests --features evalmesh-worker/cuda,evalmesh-tests/cuda \
    --test cuda_ops --test gpu_model |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("cuda_ops", "gpu_model"):
        print(m["executable"])
')"

rm -rf "$bundle"
# The test executables find the binary at ../evalmesh from their folder, as in target/.
mkdir -p "$bundle/release/deps" "$bundle/lib" "$bundle/data/reference"
cp target/release/evalmesh "$bundle/release/"
for t in $tests; do
    cp "$t" "$bundle/release/deps/$(basename "$t" | sed 's/-[0-9a-f]*$//')"
done
ldd target/release/evalmesh $tests | awk '/=> \// { print $3 }' | sort -u |
    grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s|ld-linux[^/]*)\.so' |
    xargs -r cp -L -t "$bundle/lib"
cp "$model" "$bundle/data/test-model.gguf"
cp "$shared/reference/hellaswag-llamacpp-dev.jsonl" "$bundle/data/reference/"
mkdir -p "$bundle/data/wikitext-2"
cp "$shared/data/wikitext-2/wiki.test.raw" "$bundle/data/wikitext-2/"
cp tests/fixtures/configs/llama-1b-bench.json "$bundle/data/"
scripts/mpi-bundle.sh "$bundle/mpi" >&2
cp scripts/gpu-check.sh scripts/bench-torch.py "$bundle/"
echo "gpu-build: bundle in $bundle ($(du -sh "$bundle" | cut -f1)); on the GPU machine run: $bundle/gpu-check.sh OUT_DIR" >&2
