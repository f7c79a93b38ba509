#!/usr/bin/env bash
# The GPU check, built and packed here, run on a GPU machine in one command.
#
#   scripts/device-check.sh --pack DIR     builds the release binary and the op tests with the
#       cuda feature (stripped), computes the CPU's expected scores, and packs them with this
#       machine's OpenMPI (scripts/mpi-bundle.sh: the binary needs its libraries even without
#       mpirun), the ten architecture oracles of ../shared/reference/architectures (texts,
#       tokenizers, bf16 weights), two model configs with the test model's tokenizer (its
#       GGUF's metadata, scripts/device/gguf-metadata.py) and wikitext slices into
#       DIR/evalmesh-check.tar.xz (at most 48 MiB; no 94 MB model: random weights and the
#       oracles instead); prints its size.
#   scripts/device-check.sh --dry-run DIR  unpacks DIR's pack in a temporary folder and runs it
#       here on the CPU (every part that can run without a GPU, no benchmark): its plumbing;
#       the results go to DIR-dry-run.
#
# On the GPU machine, from this repository's root with DIR (target/device-check here) carried
# along (8 minutes at most; what the parts check: scripts/device/run.sh):
#   d=$(mktemp -d) && tar -xJf target/device-check/evalmesh-check.tar.xz -C "$d" && "$d"/evalmesh-check/run.sh "$OUT"
# It writes OUT/summary.json, OUT/check.log and OUT/parts.tar.xz (each part's log and output).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="${EVALMESH_SHARED:-$repo/../shared}"
limit_mib=48
usage() {
    echo "usage: $0 --pack DIR | --dry-run DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
mode="$1"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
archive="$dir/evalmesh-check.tar.xz"

case "$mode" in
--pack) ;;
--dry-run)
    [ -f "$archive" ] || { echo "device-check: no pack at $archive: run $0 --pack $2 first" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    tar -xJf "$archive" -C "$work"
    rm -rf "$dir-dry-run"
    "$work/evalmesh-check/run.sh" "$dir-dry-run" cpu
    exit
    ;;
*) usage ;;
esac

cd "$repo"
nvrtc="$(scripts/fetch-nvrtc.sh | tail -n 1)"
export EVALMESH_NVRTC="$nvrtc"
cargo build --locked --release -p evalmesh --features cuda >&2
ops="$(cargo test --locked --release --no-run --message-format=json -p evalmesh-worker --features cuda --test cuda_ops |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_ops":
        print(m["executable"])
')"
[ -n "$ops" ] || { echo "device-check: cargo built no cuda_ops test executable" >&2; exit 1; }

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pack="$stage/evalmesh-check"
mkdir -p "$pack/bin" "$pack/oracles" "$pack/expected" "$pack/models" "$pack/data"
strip -o "$pack/bin/evalmesh" target/release/evalmesh
strip -o "$pack/bin/cuda_ops" "$ops"
cp scripts/device/run.sh scripts/device/check.py scripts/device/bench-torch.py scripts/device/sweep-torch.py "$pack/"
python3 scripts/device/gguf-metadata.py "$(scripts/setup.sh | tail -n 1)" "$pack/models/tokenizer.gguf"
cp tests/fixtures/configs/smollm2-135m.json tests/fixtures/configs/llama-1b-bench.json "$pack/models/"
scripts/mpi-bundle.sh "$pack/mpi" >&2
wiki="$shared/data/wikitext-2/wiki.test.raw"
head -c 20000 "$wiki" > "$pack/data/wiki.small.raw"
head -c 400000 "$wiki" > "$pack/data/wiki.bench.raw"

# The oracles, and the CPU's scores of their texts (this build's, as the device computes them).
for folder in "$shared"/reference/architectures/*/; do
    family="$(basename "$folder")"
    mkdir -p "$pack/oracles/$family"
    cp "$folder"/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "$pack/oracles/$family/"
    python3 - "$folder/texts.json" "$pack/oracles/$family" <<'PY'
import json, sys
texts = json.load(open(sys.argv[1]))["texts"]
for i, t in enumerate(texts):
    open(f"{sys.argv[2]}/text{i}.txt", "w").write(t["text"])
PY
    target/release/evalmesh score --model "$pack/oracles/$family" --top 0 --file "$pack/oracles/$family/text0.txt" \
        --file "$pack/oracles/$family/text1.txt" --file "$pack/oracles/$family/text2.txt" \
        --output "$pack/expected/$family.cpu.jsonl"
done
python3 scripts/device/check.py expected "$pack" "$shared"
# The random model's perplexity on the CPU, for the GPU's f32 path.
target/release/evalmesh run --model "$pack/models/smollm2-135m.json" --random-weights \
    --tokenizer "$pack/models/tokenizer.gguf" --task perplexity --data "$pack/data/wiki.small.raw" \
    --perplexity-mode llamacpp --ctx 512 --output "$stage/random-cpu.json" >&2
cp "$stage/random-cpu.json" "$pack/expected/"

tar -cJf "$archive" -C "$stage" evalmesh-check
bytes="$(stat -c %s "$archive")"
mib="$(python3 -c "print(f'{$bytes / 2**20:.1f}')")"
if [ "$bytes" -gt $((limit_mib << 20)) ]; then
    echo "device-check: the pack is $mib MiB, over the $limit_mib MiB budget" >&2
    exit 1
fi
echo "device-check: $archive, $mib MiB (budget $limit_mib MiB)"
