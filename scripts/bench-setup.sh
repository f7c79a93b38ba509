# Sourced by the scripts/bench-* benchmarks: sets `repo`, `shared` (EVALMESH_SHARED, default
# ../shared), `model` (the test model, installed if needed), `bin` (a fresh release build) and
# `out` (a temporary folder, removed on exit); defines `llama_tool` and `f32_model`.
# ISA picks the kernels `bin` is built with (bench-isa.sh).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${EVALMESH_SHARED:-$repo/../shared}"
model="$("$repo/scripts/setup.sh" | tail -n 1)"
source "$repo/scripts/bench-isa.sh"
cargo build --locked --release -p evalmesh --manifest-path "$repo/Cargo.toml" --target-dir "$target" "${build[@]}" >&2
bin="$target/release/evalmesh"
# A new build measures the machine for its predictions on its first run (a few seconds):
# `plan` has it done here, so that no timed run includes it.
"$bin" plan --model "$model" --workers 1 >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The path of llama.cpp's tool NAME: in $LLAMA_CPP_DIR/build/bin, else on PATH; else an
# error saying how to get it (under `set -e`, `x="$(llama_tool NAME)"` then stops the script).
# To build the tools: llama.cpp's source is vendor/llama.cpp in the sdist of PyPI's
# llama-cpp-python 0.3.36 (llama_cpp_python-0.3.36.tar.gz, linked from
# https://pypi.org/simple/llama-cpp-python/: `curl -LO` it and untar); there (`pip install
# cmake` where cmake is missing), `cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake
# --build build -j2 --target TOOLS` with the tools the benchmark names, then
# LLAMA_CPP_DIR=that folder.
llama_tool() {
    local name="$1"
    if [ -n "${LLAMA_CPP_DIR:-}" ] && [ -x "$LLAMA_CPP_DIR/build/bin/$name" ]; then
        echo "$LLAMA_CPP_DIR/build/bin/$name"
    elif ! command -v "$name"; then
        echo "$(basename "$0"): llama.cpp's $name not found (set LLAMA_CPP_DIR; scripts/bench-setup.sh says how to build it)" >&2
        return 1
    fi
}

# The test model dequantised to F32 (made once with llama.cpp's llama-quantize), which
# llama.cpp and evalmesh then read alike.
f32_model() {
    local f32="${EVALMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/evalmesh}/$(basename "${model%.gguf}").F32.gguf"
    if [ ! -f "$f32" ]; then
        local quantize
        quantize="$(llama_tool llama-quantize)"
        "$quantize" --allow-requantize "$model" "$f32" F32 >/dev/null 2>&1
    fi
    echo "$f32"
}
