# Sourced by the scripts/bench-* benchmarks: sets `repo`, `shared` (EVALMESH_SHARED, default
# ../shared), `model` (the test model, installed if needed), `bin` (a fresh release build) and
# `out` (a temporary folder, removed on exit).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${EVALMESH_SHARED:-$repo/../shared}"
model="$("$repo/scripts/setup.sh" | tail -n 1)"
cargo build --locked --release -p evalmesh --manifest-path "$repo/Cargo.toml" >&2
bin="$repo/target/release/evalmesh"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
