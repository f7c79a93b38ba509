#!/usr/bin/env bash
# Side by side with lm-evaluation-harness 0.4.13 (scripts/compare-lm-eval.py says what it
# runs and prints): by default the test model on hellaswag (400 documents), arc_easy,
# winogrande, piqa and lambada_openai (500 each) and two MMLU subjects, at 0 and 5 shots
# (shared/data ships no training splits: a 5-shot run without one draws its examples from
# the evaluated split's documents after the first LIMIT, on both sides). Not part of CI:
# lm-eval with torch and transformers is about 4 GB and its runs take tens of minutes on a CPU.
#
# Usage: scripts/compare-lm-eval.sh [TASK:LIMIT:SHOTS ...]
# Environment:
#   LM_EVAL_PYTHON  a Python where `import lm_eval` works (default: python3). To make one:
#                   python3 -m venv ~/lm-eval && ~/lm-eval/bin/pip install lm-eval==0.4.13 torch \
#                       transformers accelerate gguf sentencepiece
#   EVALMESH_SHARED the shared folder (default ../shared); its data/ is the --data-dir
#   COMPARE_WORK    where lm-eval's runs are kept and reused (default target/compare-lm-eval)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${LM_EVAL_PYTHON:-python3}"
if ! "$python" -c 'import lm_eval, torch, transformers' 2>/dev/null; then
    echo "compare-lm-eval: $python cannot import lm_eval, torch and transformers; set LM_EVAL_PYTHON (see the top of $0)" >&2
    exit 1
fi
shared="${EVALMESH_SHARED:-$repo/../shared}"
model="$("$repo/scripts/setup.sh" | tail -n 1)"
cargo build --locked --release -p evalmesh --manifest-path "$repo/Cargo.toml"
specs=("$@")
if [ ${#specs[@]} -eq 0 ]; then
    for shots in 0 5; do
        specs+=(hellaswag:400:$shots arc_easy:500:$shots winogrande:500:$shots piqa:500:$shots
            lambada_openai:500:$shots mmlu_abstract_algebra:500:$shots mmlu_anatomy:500:$shots)
    done
fi
exec "$python" "$repo/scripts/compare-lm-eval.py" --evalmesh "$repo/target/release/evalmesh" --model "$model" \
    --data-dir "$shared/data" --stand-in-training-splits --work "${COMPARE_WORK:-$repo/target/compare-lm-eval}" "${specs[@]}"
