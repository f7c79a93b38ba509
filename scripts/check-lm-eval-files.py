#!/usr/bin/env python3
"""Reads an evalmesh output folder with lm-evaluation-harness's own code and checks it.

Usage: check-lm-eval-files.py DIR

Needs a Python where `import lm_eval` works (pip install lm-eval; its readers below need
only numpy, pyyaml, jinja2, requests and pytablewriter besides). It finds the results and
samples files as lm-eval's hub uploader does (lm_eval.utils.get_results_filenames,
get_sample_results_filenames, get_file_task_name, get_file_datetime), prints lm-eval's
tables of the results (lm_eval.utils.make_table, which reads results, groups, versions,
n-shot, higher_is_better and group_subtasks), checks every key against lm-eval's schema
(lm_eval.result_schema), recomputes each sample's doc_hash, prompt_hash and target_hash as
lm_eval/evaluator.py does, and each task's task_hashes as
lm_eval/loggers/evaluation_tracker.py does. Exits 1 with the problems found.
"""

import json
import sys
from pathlib import Path

from lm_eval import result_schema
from lm_eval.utils import (
    get_file_datetime,
    get_file_task_name,
    get_latest_filename,
    get_results_filenames,
    get_sample_results_filenames,
    handle_non_serializable,
    hash_string,
    make_table,
)


problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def main(folder):
    files = sorted(str(p) for p in Path(folder).rglob("*.json*"))
    results_files = get_results_filenames(files)
    sample_files = get_sample_results_filenames(files)
    # A results file named by --output FILE.json is not results_<date>.json: take every
    # .json that is not a journal or a samples file.
    results_files = results_files or [f for f in files if f.endswith(".json")]
    check(results_files, f"no results file in {folder}")
    for path in results_files:
        check_results(path, sample_files)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(results_files)} results files, {len(sample_files)} samples files, {len(problems)} problems")
    return 1 if problems else 0


def check_results(path, sample_files):
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    known = set(result_schema.EvalResults.__annotations__)
    for key in results:
        check(key in known or key == "evalmesh", f"{path}: key {key!r} is not in lm_eval's EvalResults")
    for key in ["results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                "config", "date", "task_hashes"]:
        check(key in results, f"{path}: no {key!r}")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    for task, metrics in results["results"].items():
        for key in ["name", "alias", "sample_len"]:
            check(key in metrics, f"{path}: results[{task!r}] has no {key!r}")
        for key, value in metrics.items():
            if "_stderr," in key:
                check(value == "N/A" or isinstance(value, float), f"{path}: {task} {key} = {value!r}")
    for task, counts in results["n-samples"].items():
        check(set(counts) == {"original", "effective"}, f"{path}: n-samples[{task!r}] = {counts!r}")
    # Samples of this run: those whose date is the run's (one date per run).
    latest = {}
    for f in sample_files:
        task = get_file_task_name(Path(f).name)
        latest.setdefault(task, []).append(f)
    for task in results["configs"]:
        if task not in latest:
            continue
        samples_path = get_latest_filename(latest[task])
        check(get_file_datetime(Path(samples_path).name), f"{samples_path}: no date in the name")
        hashes = []
        for number, line in enumerate(Path(samples_path).read_text(encoding="utf-8").splitlines(), 1):
            sample = json.loads(line)
            hashes.append(check_sample(f"{samples_path}:{number}", sample, results["configs"][task]))
        check(hash_string("".join(hashes)) == results["task_hashes"].get(task),
              f"{samples_path}: task_hashes[{task!r}] differs from the samples' hashes")


def check_sample(where, sample, config):
    schema = result_schema.SampleResult
    for key in schema.__required_keys__:
        check(key in sample, f"{where}: no {key!r}")
    # As lm_eval/evaluator.py computes them.
    doc_hash = hash_string(json.dumps(sample["doc"], indent=2, default=handle_non_serializable, ensure_ascii=False))
    prompt_hash = hash_string(sample["arguments"]["gen_args_0"]["arg_0"])
    target_hash = hash_string(str(sample["target"]))
    check(sample["doc_hash"] == doc_hash, f"{where}: doc_hash")
    check(sample["prompt_hash"] == prompt_hash, f"{where}: prompt_hash")
    check(sample["target_hash"] == target_hash, f"{where}: target_hash")
    check(isinstance(sample["target"], str), f"{where}: target is not a string")
    for metric in sample["metrics"]:
        check(metric in sample, f"{where}: no value for metric {metric!r}")
    for entry in config.get("metric_list", []):
        check(entry["metric"] in sample, f"{where}: no value for metric_list's {entry['metric']!r}")
    # resps: per request, per repeat, the str()s of the response; filtered: per request. A
    # log-likelihood response passes its filter (take_first) unchanged; generated text is
    # filtered into its answer, a string.
    for resp, filtered in zip(sample["resps"], sample["filtered_resps"], strict=True):
        if config.get("output_type") == "generate_until":
            check(all(isinstance(r, str) for r in resp), f"{where}: resps {resp!r} are not texts")
            check(isinstance(filtered, str), f"{where}: filtered_resps {filtered!r} is not a text")
        else:
            check(resp == [filtered], f"{where}: resps {resp!r} against filtered_resps {filtered!r}")
            values = filtered if isinstance(filtered, list) else [filtered]
            float(values[0])
            check(values[1:] in ([], ["True"], ["False"]), f"{where}: {values!r}")
    return doc_hash + prompt_hash + target_hash


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
