#!/usr/bin/env python3
"""Side by side with lm-evaluation-harness: the same documents, model and shots through
lm-eval and through evalmesh, compared metric by metric and request by request.

Run it through scripts/compare-lm-eval.sh, which says how to install lm-eval. For each
TASK:LIMIT:SHOTS it
- writes the task's documents in the Hugging Face datasets' shape (from the official files
  of --data-dir, laid out as shared/data) as JSON lines lm-eval's `json` loader reads; with
  --stand-in-training-splits, a few-shot run whose training split is not there draws from
  the evaluated split's documents after the first LIMIT instead (on both sides);
- writes a task file for lm-eval that includes lm-eval's own YAML for the task (copied from
  the installed package, its `!function` modules beside it) and points it at those files;
- runs `lm_eval --model hf` on the GGUF (dequantised by transformers, float32), unless the
  work folder already holds that run's results (lm-eval takes minutes a task on a CPU);
- runs `evalmesh run` on the same official files with its shipped task;
- prints, per task and shots: each metric from both results files, the number of requests
  whose prompt (context and continuation) differs, the documents whose samples' hashes
  (doc_hash, prompt_hash, target_hash) differ, whether the results' task_hashes agree, the
  largest per-request log-likelihood difference, and each document whose accuracy differs
  with the gap between its two best choices (a flip below 1e-3 is a near-tie, not a
  different prompt).

transformers builds lm-eval's tokenizer from the GGUF, and may build it unlike the model's
own (for SmolLM2 it drops the pre-tokenizer that splits digits, so text with runs of spaces
before digits is cut otherwise than llama.cpp and evalmesh cut it): --lm-eval-tokenizer DIR
gives lm-eval the model's own tokenizer files instead (a new --work folder, since lm-eval's
runs are reused by name).
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lm_eval

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"

# Each task: lm-eval's YAML (relative to lm_eval/tasks), the Python modules it names with
# `!function`, and its splits as (lm-eval's split name, converter, official file).
TASKS = {
    "hellaswag": ("hellaswag/hellaswag.yaml", ["utils.py"],
                  {"validation": "hellaswag/hellaswag_val.jsonl", "train": "hellaswag/hellaswag_train.jsonl"}),
    "arc_easy": ("arc/arc_easy.yaml", [],
                 {"test": "arc/ARC-Easy-Test.jsonl", "train": "arc/ARC-Easy-Train.jsonl"}),
    "arc_challenge": ("arc/arc_easy.yaml", [],
                      {"test": "arc/ARC-Challenge-Test.jsonl", "train": "arc/ARC-Challenge-Train.jsonl"}),
    "piqa": ("piqa/piqa.yaml", [], {"validation": "piqa/valid.jsonl", "train": "piqa/train.jsonl"}),
    "winogrande": ("winogrande/default.yaml", ["preprocess_winogrande.py"],
                   {"validation": "winogrande/winogrande_xl_validation.jsonl",
                    "train": "winogrande/winogrande_xl_train.jsonl"}),
    "lambada_openai": ("lambada/lambada_openai.yaml", [], {"test": "lambada/lambada_test.jsonl"}),
}


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def hf_docs(task, official):
    """The documents of an official file as the Hugging Face dataset holds them."""
    if task.startswith("arc_"):
        return [{"id": d["id"], "question": d["question"]["stem"],
                 "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                             "label": [c["label"] for c in d["question"]["choices"]]},
                 "answerKey": d["answerKey"]} for d in jsonl(official)]
    if task == "piqa":
        labels = official.with_name(official.stem + "-labels.lst").read_text().split()
        return [dict(d, label=int(l)) for d, l in zip(jsonl(official), labels)]
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_"):]
        with open(official, encoding="utf-8", newline="") as f:
            return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                    for r in csv.reader(f)]
    return jsonl(official)


def task_spec(task):
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_"):]
        return ("mmlu/default/_default_template_yaml", [],
                {"test": f"mmlu/test/{subject}_test.csv", "dev": f"mmlu/dev/{subject}_dev.csv"})
    if task not in TASKS:
        sys.exit(f"compare-lm-eval: unknown task {task}; known: {', '.join(TASKS)}, mmlu_<subject>")
    return TASKS[task]


def with_stand_in_training_split(task, limit, shots, data_dir, work):
    """The data folder for a run: `data_dir` itself, or, where a few-shot run needs the
    training split and the folder lacks it, a folder of links to its files with a stand-in
    training split: the evaluated split's documents after the first `limit` (so never one
    that is evaluated), in the official file's format. Both sides read the same files."""
    _, _, splits = task_spec(task)
    if shots == 0 or "train" not in splits or (data_dir / splits["train"]).is_file():
        return data_dir
    folder = work / "data" / f"{task}-{limit}"
    shutil.rmtree(folder, ignore_errors=True)
    evaluated = next(relative for split, relative in splits.items() if split != "train")
    for relative in splits.values():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        if (data_dir / relative).is_file():
            (folder / relative).symlink_to(data_dir / relative)
    pairs = [(evaluated, splits["train"])]
    if task == "piqa":
        pairs.append(("piqa/valid-labels.lst", "piqa/train-labels.lst"))
        (folder / pairs[1][0]).symlink_to(data_dir / pairs[1][0])
    for source, stand_in in pairs:
        lines = (data_dir / source).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / stand_in).write_text("".join(lines[int(limit):]), encoding="utf-8")
    return folder


def lm_eval_task(task, shots, data_dir, work):
    """Writes lm-eval's task file `cmp_<task>` over HF-shaped copies of the files; returns
    its folder, or None when a split the shots need is not in the data folder."""
    base, modules, splits = task_spec(task)
    folder = work / "tasks" / task
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, relative in splits.items():
        official = data_dir / relative
        if not official.is_file():
            continue
        files[split] = folder / f"{split}.jsonl"
        write_jsonl(files[split], hf_docs(task, official))
    # The split lm-eval draws demonstrations from (lambada_openai has none: its test split).
    fewshot = next((split for split in ("dev", "train") if split in splits), None)
    if shots and fewshot and fewshot not in files:
        return None
    # lm-eval's YAML beside its modules, renamed so that neither is found as a task or
    # shadows another module named alike.
    text = (LM_EVAL_TASKS / base).read_text()
    for module in modules:
        name = module[:-3]
        shutil.copy(LM_EVAL_TASKS / base.rsplit("/", 1)[0] / module, folder / f"cmp_{task}_{name}.py")
        text = text.replace(f"!function {name}.", f"!function cmp_{task}_{name}.")
    (folder / "base_yaml").write_text(text)
    lines = ["include: base_yaml", f"task: cmp_{task}", "dataset_path: json", "dataset_name: null"]
    # lm-eval reads every split its YAML names (the training split even at 0 shots): those
    # without a file are unset.
    for key, split in re.findall(r"^(training_split|validation_split|test_split|fewshot_split): (\S+)$", text, re.M):
        if split != "null" and split not in files:
            lines.append(f"{key}: null")
    lines += ["dataset_kwargs:", "  data_files:"] + [f"    {split}: {path}" for split, path in files.items()]
    if task.startswith("mmlu_"):
        about = task[len("mmlu_"):].replace("_", " ")
        # A JSON string is a YAML double-quoted scalar.
        lines.append("description: " + json.dumps(f"The following are multiple choice questions (with answers) about {about}.\n\n"))
    (folder / f"cmp_{task}.yaml").write_text("\n".join(lines) + "\n")
    return folder


def run(cmd, log, env=None):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    with open(log, "w") as out:
        done = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"compare-lm-eval: failed ({done.returncode}); see {log}")


def newest(folder, pattern):
    found = sorted(Path(folder).rglob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def requests(sample):
    args = sample["arguments"]
    if isinstance(args, dict):
        args = [[a["arg_0"], a["arg_1"]] for a in args.values()]
    return [tuple(a) for a in args]


def loglikelihoods(sample):
    return [float(r[0][0] if isinstance(r[0], list) else r[0]) for r in sample["resps"]]


def compare(task, shots, limit, lm_dir, em_dir):
    lm_results = json.loads(newest(lm_dir, "results_*.json").read_text())
    em_results = json.loads(newest(em_dir, "results_*.json").read_text())
    lm_metrics = lm_results["results"][f"cmp_{task}"]
    em_metrics = em_results["results"][task]
    lm_samples = {s["doc_id"]: s for s in map(json.loads, newest(lm_dir, "samples_*.jsonl").open())}
    em_samples = {s["doc_id"]: s for s in map(json.loads, newest(em_dir, "samples_*.jsonl").open())}
    prompts, hashes, largest, flips = 0, 0, 0.0, []
    for doc_id, lm in lm_samples.items():
        em = em_samples[doc_id]
        prompts += sum(a != b for a, b in zip(requests(lm), requests(em)))
        hashes += any(lm[h] != em[h] for h in ("doc_hash", "prompt_hash", "target_hash"))
        a, b = loglikelihoods(lm), loglikelihoods(em)
        largest = max([largest] + [abs(x - y) for x, y in zip(a, b)])
        for metric in ("acc", "acc_norm"):
            if metric in lm and lm[metric] != em.get(metric):
                top = sorted(a, reverse=True)
                gap = top[0] - top[1] if len(top) > 1 else float("nan")
                flips.append(f"doc {doc_id} {metric}: lm-eval {lm[metric]}, evalmesh {em.get(metric)}, "
                             f"gap between the two best choices {gap:.2e}")
    def figure(metrics, key):
        value, stderr = metrics.get(key), metrics.get(key.replace(",", "_stderr,", 1))
        if not isinstance(value, (int, float)):
            return "-"
        return f"{value:.4f} ± {stderr:.4f}" if isinstance(stderr, (int, float)) else f"{value:.4f}"

    rows = []
    for key in lm_metrics:
        metric = key.split(",")[0]
        if "," not in key or "stderr" in key or metric == "sample_len":
            continue
        same_task_hash = lm_results["task_hashes"].get(f"cmp_{task}") == em_results["task_hashes"].get(task)
        rows.append(f"| {task} | {shots} | {len(lm_samples)} | {metric} | {figure(lm_metrics, key)} | "
                    f"{figure(em_metrics, key)} | {prompts} | {hashes} | {'same' if same_task_hash else 'differs'} "
                    f"| {largest:.1e} | {len(flips)} |")
    return rows, flips


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evalmesh", required=True, type=Path)
    parser.add_argument("--model", required=True, type=Path, help="a GGUF file")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--batch-size", default="16")
    parser.add_argument("--lm-eval-tokenizer", type=Path, help="a folder with the model's own tokenizer files")
    parser.add_argument("--stand-in-training-splits", action="store_true",
                        help="where a few-shot run needs a training split the data folder lacks, use the "
                             "evaluated split's documents after the first LIMIT in its place")
    parser.add_argument("specs", nargs="+", help="TASK:LIMIT:SHOTS, e.g. hellaswag:400:0")
    args = parser.parse_args()
    work = args.work.resolve()
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    link = model_dir / args.model.name
    if not link.exists():
        link.symlink_to(args.model.resolve())
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    table = ["| task | shots | docs | metric | lm-eval | evalmesh | prompts differing | samples' hashes differing "
             "| task hash | largest Δ log-likelihood | flips |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    all_flips = []
    for spec in args.specs:
        task, limit, shots = spec.split(":")
        name = f"{task}-{limit}-{shots}shot"
        data_dir = args.data_dir.resolve()
        if args.stand_in_training_splits:
            data_dir = with_stand_in_training_split(task, limit, int(shots), data_dir, work)
        folder = lm_eval_task(task, int(shots), data_dir, work)
        if folder is None:
            table.append(f"| {task} | {shots} | - | (the few-shot split is not in {args.data_dir}) | | | | | | | |")
            continue
        lm_dir, em_dir = work / "lm-eval" / name, work / "evalmesh" / name
        if newest(lm_dir, "results_*.json") is None:
            run([Path(sys.executable).parent / "lm_eval", "--model", "hf", "--model_args",
                 f"pretrained={model_dir},gguf_file={args.model.name},dtype=float32"
                 + (f",tokenizer={args.lm_eval_tokenizer.resolve()}" if args.lm_eval_tokenizer else ""),
                 "--tasks", f"cmp_{task}", "--include_path", folder, "--num_fewshot", shots,
                 "--limit", limit, "--batch_size", args.batch_size, "--log_samples", "--output_path", lm_dir],
                work / f"{name}.lm-eval.log", env)
        shutil.rmtree(em_dir, ignore_errors=True)
        run([args.evalmesh, "run", "--model", args.model, "--task", task, "--data-dir", data_dir,
             "--num_fewshot", shots, "--limit", limit, "--log_samples", "--output_path", em_dir],
            work / f"{name}.evalmesh.log")
        rows, flips = compare(task, shots, limit, lm_dir, em_dir)
        table += rows
        all_flips += [f"{task} {shots}-shot: {f}" for f in flips]
    print("\n".join(table))
    print("\nFlips:" if all_flips else "\nNo flips.")
    for flip in all_flips:
        print("  " + flip)


if __name__ == "__main__":
    main()
