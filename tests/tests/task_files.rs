//! lm-evaluation-harness task YAML files through `--include-path`: a multiple-choice task
//! (from an `include`d base) scores exactly as the built-in `multiple_choice` task on the
//! same items, a loglikelihood task renders its Jinja templates as Jinja would (from CSV
//! and from parquet alike), a group runs its members; bad files get one error line naming the file and key,
//! and stop only the runs that ask for them.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh_tests::{
    assert_clean_error, path_str, read_report, read_samples, repo_dir, run_evalmesh, shared_dir, RunArgs,
};

/// The fixture folder copied beside the first 24 of llama.cpp's HellaSwag items (`items.jsonl`).
fn task_dir(dir: &Path) {
    let fixtures = repo_dir().join("tests/fixtures/lmeval_tasks");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let items = std::fs::read_to_string(shared_dir().join("reference/hellaswag-llamacpp-dev.jsonl")).unwrap();
    let first: Vec<&str> = items.lines().take(24).collect();
    std::fs::write(dir.join("items.jsonl"), first.join("\n") + "\n").unwrap();
}

fn samples(dir: &Path, task: &str) -> Vec<serde_json::Value> {
    let text = String::from_utf8(read_samples(dir, task)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// What two runs of a document must share to have scored the same requests: lm-eval's
/// `arguments` and `target`, and evalmesh's exact scores and gold.
fn scored(sample: &serde_json::Value) -> (&serde_json::Value, &serde_json::Value, &serde_json::Value) {
    (&sample["arguments"], &sample["target"], &sample["evalmesh"])
}

/// At 0 and 3 shots: with neither `fewshot_split` nor `test_split`, lm-eval draws the
/// demonstrations from the validation split itself, leaving the document out, as the
/// built-in task does with its file.
#[test]
fn a_yaml_multiple_choice_task_scores_as_the_built_in_one() {
    for shots in ["0", "3"] {
        multiple_choice_matches_at(shots);
    }
}

fn multiple_choice_matches_at(shots: &str) {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    let out = tempfile::tempdir().unwrap();
    let yaml = RunArgs::new().path("--include-path", tasks.path()).flag("--task", "story_endings");
    let yaml = yaml.flag("--num-fewshot", shots);
    assert!(yaml.samples_beside(&out.path().join("yaml.json")).run().status.success());
    let builtin = RunArgs::new().flag("--task", "multiple_choice").path("--data", &tasks.path().join("items.jsonl"));
    let builtin = builtin.flag("--num-fewshot", shots);
    assert!(builtin.samples_beside(&out.path().join("builtin.json")).run().status.success());
    let (yaml, builtin) = (samples(out.path(), "story_endings"), samples(out.path(), "multiple_choice"));
    assert_eq!(yaml.len(), 24);
    for (y, b) in yaml.iter().zip(&builtin) {
        assert_eq!(scored(y), scored(b), "document {}", y["doc_id"]);
    }
    let report = read_report(&out.path().join("yaml.json"));
    assert_eq!(report.tasks.results["story_endings"]["acc,none"], report_acc(&out.path().join("builtin.json")));
}

/// `fewshot_config.samples`, its own `doc_to_text` and delimiters: the demonstrations as
/// lm-eval's `fewshot_context` joins them, after the description (a template of the
/// document), and the document itself in the task's template.
#[test]
fn demonstrations_written_into_the_task_file_lead_each_document() {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    let out = tempfile::tempdir().unwrap();
    let args = RunArgs::new().path("--include-path", tasks.path()).flag("--task", "worked_examples").flag("--limit", 2);
    assert!(args.samples_beside(&out.path().join("r.json")).run().status.success());
    let items = std::fs::read_to_string(tasks.path().join("items.jsonl")).unwrap();
    let demonstrations =
        "Story: A cook cracks an egg. -> He fries it.\n--\nStory: A dog sees a ball. -> It runs after it.\n--\n";
    for (sample, item) in samples(out.path(), "worked_examples").iter().zip(items.lines()) {
        let item: serde_json::Value = serde_json::from_str(item).unwrap();
        let context = format!("Item {}.\n{demonstrations}{}", item["id"], item["context"].as_str().unwrap());
        assert_eq!(sample["arguments"]["gen_args_0"]["arg_0"], context.as_str());
        assert_eq!(sample["arguments"]["gen_args_0"]["arg_1"], format!(" {}", item["choices"][0].as_str().unwrap()));
    }
    assert_eq!(read_report(&out.path().join("r.json")).tasks.n_shot["worked_examples"], 2);
}

/// lm-eval's `--tasks list`: every shipped and included name with what it reads, nothing run.
#[test]
fn tasks_list_names_every_task_and_what_it_reads() {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    let output = run_evalmesh(&["run", "--tasks", "list", "--include-path", path_str(tasks.path())]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listing = String::from_utf8(output.stdout).unwrap();
    for line in [
        "  mmlu_anatomy: multiple_choice on mmlu/test/anatomy_test.csv",
        "  mmlu: a group of mmlu_stem, mmlu_other, mmlu_social_sciences, mmlu_humanities",
        "  multiple_choice: multiple_choice on --data FILE",
        "  capitals_parquet: loglikelihood on capitals.parquet",
        "  geography: a tag of capitals, capitals_parquet",
    ] {
        assert!(listing.lines().any(|l| l == line), "no line `{line}` in:\n{listing}");
    }
}

fn report_acc(path: &Path) -> serde_json::Value {
    read_report(path).tasks.results["multiple_choice"]["acc,none"].clone()
}

#[test]
fn templates_filters_and_groups_run() {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    let out = tempfile::tempdir().unwrap();
    let args = RunArgs::new().path("--include_path", tasks.path()).flag("--task", "suite");
    let output = args.samples_beside(&out.path().join("r.json")).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let capitals = samples(out.path(), "capitals");
    let requests: Vec<(String, String)> = capitals
        .iter()
        .map(|s| {
            let r = &s["arguments"]["gen_args_0"];
            (r["arg_0"].as_str().unwrap().to_string(), r["arg_1"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = [
        ("The capital of FRANCE is", " Paris"),
        ("The capital of JAPAN is", " Tokyo"),
        ("The capital of KENYA is", " Nairobi"),
        ("The capital of PERU is", " Lima"),
    ];
    assert_eq!(requests, expected.map(|(c, t)| (c.to_string(), t.to_string())));
    // The same rows from a parquet file: the same documents and requests.
    let parquet = samples(out.path(), "capitals_parquet");
    assert_eq!(parquet.len(), capitals.len());
    for (p, c) in parquet.iter().zip(&capitals) {
        assert_eq!((&p["doc"], &p["arguments"], &p["doc_hash"]), (&c["doc"], &c["arguments"], &c["doc_hash"]));
    }
    let report = read_report(&out.path().join("r.json"));
    for name in ["story_endings", "capitals", "capitals_parquet", "suite"] {
        assert!(report.tasks.results.contains_key(name), "{name} missing from {:?}", report.tasks.results.keys());
    }
}

/// Writes `body` as `bad.yaml` in a copy of the fixtures and runs it.
fn run_bad(body: &str) -> std::process::Output {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    std::fs::write(tasks.path().join("bad.yaml"), body).unwrap();
    RunArgs::new().path("--include-path", tasks.path()).flag("--task", "bad").run()
}

const BAD_BASE: &str = "task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: items.jsonl\n\
validation_split: validation\noutput_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\n";

#[test]
fn bad_task_files_name_the_file_and_key() {
    let output = run_bad(&format!("{BAD_BASE}process_docs: !function utils.process_docs\n"));
    assert_clean_error(&output, &["bad.yaml", "`process_docs`", "!function utils.process_docs", "Python"]);
    let output = run_bad(&format!("{BAD_BASE}metric_list:\n  - metric: bleu\n"));
    assert_clean_error(&output, &["bad.yaml", "`metric_list.metric`", "`bleu`", "acc_norm"]);
    let output = run_bad(&BAD_BASE.replace("items.jsonl", "missing.jsonl"));
    assert_clean_error(&output, &["bad.yaml", "`dataset_kwargs.data_files`", "missing.jsonl", "does not exist"]);
    let output = run_bad(&BAD_BASE.replace("doc_to_text: context", "doc_to_text: \"{{ contxt }}\""));
    assert_clean_error(&output, &["bad.yaml", "`doc_to_text` on ", "items.jsonl line 1", "no field `contxt`"]);
    let output = run_bad(&BAD_BASE.replace("dataset_path: json", "dataset_path: someone/dataset"));
    assert_clean_error(&output, &["bad.yaml", "`dataset_path`", "`someone/dataset`", "cais/mmlu"]);
    let output = run_bad(&format!("{BAD_BASE}filter_list:\n  - name: m\n    filter:\n      - function: regex\n"));
    assert_clean_error(&output, &["bad.yaml", "`filter_list`", "`regex`", "generate_until"]);
    let output = run_bad(&BAD_BASE.replace("doc_to_target: gold", "doc_to_target: 7"));
    assert_clean_error(&output, &["bad.yaml", "`doc_to_target` on ", "items.jsonl line 1", "7 is out of range"]);
    let path = Path::new("/nonexistent-folder");
    let output = RunArgs::new().path("--include-path", path).flag("--task", "bad").run();
    assert_clean_error(&output, &["--include-path", path_str(path), "not a folder"]);
}

/// As in lm-eval, whose task index reads every file but builds only the tasks asked for: a
/// file with a mistake stops only a run that asks for it, by name, tag or group, with the
/// error naming the file and key; `--tasks list` says why it cannot be used.
#[test]
fn a_task_file_with_a_mistake_stops_only_the_runs_that_ask_for_it() {
    let tasks = tempfile::tempdir().unwrap();
    task_dir(tasks.path());
    std::fs::write(
        tasks.path().join("bad.yaml"),
        format!("{BAD_BASE}tag: geography\nmetric_list:\n  - metric: bleu\n"),
    )
    .unwrap();
    let run = |task: &str| RunArgs::new().path("--include-path", tasks.path()).flag("--task", task).run();
    let output = run("capitals");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mistake = ["bad.yaml", "`metric_list.metric`", "`bleu`"];
    assert_clean_error(&run("bad"), &mistake);
    assert_clean_error(&run("geography"), &mistake);
    let listing = run_evalmesh(&["run", "--tasks", "list", "--include-path", path_str(tasks.path())]);
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8(listing.stdout).unwrap();
    let line =
        listing.lines().find(|l| l.starts_with("  bad: cannot be used: ")).unwrap_or_else(|| panic!("{listing}"));
    assert!(mistake.iter().all(|m| line.contains(m)), "{line}");
    std::fs::write(tasks.path().join("bad_suite.yaml"), "group: bad_suite\ntask:\n  - capitals\n  - bad\n").unwrap();
    assert_clean_error(&run("bad_suite"), &mistake);
}

/// ARC-Easy as a YAML task over shared/data's AI2 files, its templates using Jinja's
/// `map`/`list` and Python's `list.index` (as lm-eval's own arc YAML does): the same
/// requests and scores as the built-in `arc_easy` task.
#[test]
fn a_yaml_arc_task_scores_as_the_built_in_one() {
    let tasks = tempfile::tempdir().unwrap();
    let data = shared_dir().join("data/arc/ARC-Easy-Test.jsonl");
    let yaml = format!(
        "task: arc_yaml\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n\
         output_type: multiple_choice\ndoc_to_text: \"Question: {{{{question.stem}}}}\\nAnswer:\"\n\
         doc_to_target: \"{{{{ (question.choices | map(attribute='label') | list).index(answerKey) }}}}\"\n\
         doc_to_choice: \"{{{{ question.choices | map(attribute='text') | list }}}}\"\n",
        path_str(&data)
    );
    std::fs::write(tasks.path().join("arc.yaml"), yaml).unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = RunArgs::new().path("--include-path", tasks.path()).flag("--task", "arc_yaml").flag("--limit", 30);
    let output = args.samples_beside(&out.path().join("yaml.json")).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let builtin = RunArgs::new().flag("--task", "arc_easy").path("--data-dir", &shared_dir().join("data"));
    assert!(builtin.flag("--limit", 30).samples_beside(&out.path().join("builtin.json")).run().status.success());
    let (yaml, builtin) = (samples(out.path(), "arc_yaml"), samples(out.path(), "arc_easy"));
    assert_eq!(yaml.len(), 30);
    for (y, b) in yaml.iter().zip(&builtin) {
        assert_eq!(scored(y), scored(b), "document {}", y["doc_id"]);
    }
}

/// lm-eval 0.4.13's `lm_eval/tasks/hellaswag/hellaswag.yaml`, its dataset made local.
const LM_EVAL_HELLASWAG: &str = r#"tag:
  - multiple_choice
task: hellaswag
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: DATA
output_type: multiple_choice
training_split: null
validation_split: validation
test_split: null
process_docs: !function utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"#;

/// lm-eval 0.4.13's `lm_eval/tasks/winogrande/default.yaml`, its dataset made local.
const LM_EVAL_WINOGRANDE: &str = r#"task: winogrande
dataset_path: json
dataset_name: winogrande_xl
output_type: multiple_choice
training_split: train
validation_split: validation
doc_to_text: !function preprocess_winogrande.doc_to_text
doc_to_target: !function preprocess_winogrande.doc_to_target
doc_to_choice: !function preprocess_winogrande.doc_to_choice
should_decontaminate: true
doc_to_decontamination_query: sentence
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
dataset_kwargs:
  trust_remote_code: true
  data_files:
    validation: DATA
"#;

/// lm-eval 0.4.13's `lm_eval/tasks/lambada/lambada_openai.yaml`, its dataset made local.
const LM_EVAL_LAMBADA: &str = r#"tag:
  - lambada
task: lambada_openai
dataset_path: json
dataset_name: default
dataset_kwargs:
  data_files:
    test: DATA
output_type: loglikelihood
test_split: test
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
should_decontaminate: true
doc_to_decontamination_query: "{{text}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"#;

/// lm-eval's own task files, their data made local, with the `!function`s evalmesh runs
/// natively (hellaswag's `process_docs`; winogrande's `doc_to_*`, a multiple-input task):
/// the requests and golds of the built-in tasks on their first 30 documents.
#[test]
fn lm_evals_own_task_files_score_as_the_built_in_tasks() {
    let cases = [
        ("hellaswag", LM_EVAL_HELLASWAG, "data/hellaswag/hellaswag_val.jsonl"),
        ("winogrande", LM_EVAL_WINOGRANDE, "data/winogrande/winogrande_xl_validation.jsonl"),
        ("lambada_openai", LM_EVAL_LAMBADA, "data/lambada/lambada_test.jsonl"),
    ];
    for (task, yaml, data) in cases {
        let tasks = tempfile::tempdir().unwrap();
        std::fs::write(
            tasks.path().join(format!("{task}.yaml")),
            yaml.replace("DATA", path_str(&shared_dir().join(data))),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let yaml_run = RunArgs::new().path("--include-path", tasks.path()).flag("--task", task).flag("--limit", 30);
        let output = yaml_run.samples_beside(&out.path().join("yaml/r.json")).run();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let builtin = RunArgs::new().flag("--task", task).path("--data-dir", &shared_dir().join("data"));
        assert!(builtin.flag("--limit", 30).samples_beside(&out.path().join("builtin/r.json")).run().status.success());
        let (yaml, builtin) = (samples(&out.path().join("yaml"), task), samples(&out.path().join("builtin"), task));
        assert_eq!(yaml.len(), 30);
        for (y, b) in yaml.iter().zip(&builtin) {
            assert_eq!(scored(y), scored(b), "{task} document {}", y["doc_id"]);
        }
    }
}
