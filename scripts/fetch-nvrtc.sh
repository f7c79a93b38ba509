#!/usr/bin/env bash
# Fetches NVRTC (CUDA 12.8's run-time compiler; it needs no GPU) from the PyPI package
# nvidia-cuda-nvrtc-cu12, checks its sha256 and caches its libraries: the CPU-side test of
# the CUDA backend compiles the kernels with it. Prints the libraries' folder (for
# LD_LIBRARY_PATH). Idempotent.
set -euo pipefail
"$(dirname "$0")/fetch-from-pypi.sh" "nvidia-cuda-nvrtc-cu12==12.8.93" nvrtc-12.8 \
    "libnvrtc.so.12=43731e24cd89e3749826304f304e8aa11fbecf1188715271b1f5018d6212b5e6" \
    "libnvrtc-builtins.so.12.8=eccaa824230ee7858a94a3055cb01f1cb634df05d313880d0bdcf195161fcb4e"
