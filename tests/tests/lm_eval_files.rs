//! The files other tools read: evalmesh's results and samples files against checks written
//! from lm-evaluation-harness 0.4.13's code (`evalmesh_tests::lm_eval`), and, where a
//! Python with `lm_eval` is found ($EVALMESH_LM_EVAL_PYTHON, else python3), against
//! lm-evaluation-harness's own readers (scripts/check-lm-eval-files.py); and
//! lm-evaluation-harness's spellings of the common flags.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use evalmesh_tests::lm_eval::{
    get_file_datetime, get_file_task_name, get_results_filenames, get_sample_results_filenames, hash_string,
    results_problems, sample_problems, task_hash,
};
use evalmesh_tests::{
    evalmesh_bin, numbered_questions, read_report, read_samples, repo_dir, run_evalmesh, samples_file, shared_dir,
    test_model, RunArgs,
};
use serde_json::{json, Value};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Whether a JSON value holds a float anywhere (Python and serde_json write some differently).
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(fields) => fields.values().any(has_float),
        _ => false,
    }
}

/// A Python that imports lm_eval, or why there is none.
fn lm_eval_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("EVALMESH_LM_EVAL_PYTHON").map_or(PathBuf::from("python3"), PathBuf::from);
    let probe = Command::new(&python).args(["-c", "import lm_eval.utils, lm_eval.result_schema"]).output();
    match probe {
        Ok(o) if o.status.success() => Ok(python),
        Ok(_) => Err(format!("{} cannot import lm_eval (set EVALMESH_LM_EVAL_PYTHON)", python.display())),
        Err(e) => Err(format!("{}: {e}", python.display())),
    }
}

#[test]
fn results_and_samples_read_as_lm_eval_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let tasks = "hellaswag,arc_easy,piqa,winogrande,lambada_openai,mmlu,wikitext";
    let args = RunArgs::new().path("--data-dir", &shared_dir().join("data")).flag("--tasks", tasks);
    let output = args.flag("--limit", 2).flag("--ctx", 256).samples_beside(&out).run();
    assert!(output.status.success());
    let r = read_json(&out);
    assert_eq!(results_problems(&r), Vec::<String>::new());

    let mut dates = Vec::new();
    for (task, config) in r["configs"].as_object().unwrap() {
        let path = samples_file(dir.path(), task);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(get_file_task_name(name), task);
        dates.push(get_file_datetime(name));
        let samples = lines(&path);
        assert_eq!(samples.len() as u64, r["n-samples"][task]["effective"].as_u64().unwrap());
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(s["doc_id"], i, "{task}");
            // serde_json's indented text is Python's json.dumps(indent=2) where there is no float.
            assert!(!has_float(&s["doc"]), "{task}: a float in the doc");
            let problems = sample_problems(s, config, &serde_json::to_string_pretty(&s["doc"]).unwrap());
            assert_eq!(problems, Vec::<String>::new(), "{task} document {i}");
        }
        assert_eq!(r["task_hashes"][task], task_hash(&samples).as_str(), "{task}");
    }
    dates.dedup();
    assert_eq!(dates.len(), 1, "one date for the whole run: {dates:?}");

    // The group, as lm-evaluation-harness lays it out.
    assert_eq!(r["results"]["mmlu"]["sample_len"], 114, "57 subjects × 2 questions");
    assert_eq!(r["results"]["mmlu"]["sample_count"], json!({"acc,none": 114}));
    // The metrics of each task file's metric_list (evalmesh's acc_norm_tokens beside them).
    assert!(r["results"]["mmlu_anatomy"].get("acc_norm,none").is_none(), "mmlu's metric_list is acc alone");
    assert!(r["results"]["hellaswag"]["acc_norm,none"].is_number());
    // Its children are the four category groups, theirs the subjects.
    assert_eq!(r["group_subtasks"]["mmlu"].as_array().unwrap().len(), 4);
    let categories = ["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"];
    let subjects: usize = categories.iter().map(|c| r["group_subtasks"][c].as_array().unwrap().len()).sum();
    assert_eq!(subjects, 57);
    assert!(r["configs"].get("mmlu").is_none() && r["n-samples"].get("mmlu").is_none());

    // The prompts and targets of lm-evaluation-harness's templates, from the data's first records.
    let first = |task: &str| lines(&samples_file(dir.path(), task)).swap_remove(0);
    let hellaswag = first("hellaswag");
    assert_eq!(hellaswag["arguments"]["gen_args_0"]["arg_0"], "Roof shingle removal: A man is sitting on a roof. He");
    assert_eq!(hellaswag["arguments"]["gen_args_3"]["arg_1"], " starts pulling up roofing on a roof.");
    assert_eq!(hellaswag["target"], "3");
    let winogrande = first("winogrande");
    assert_eq!(winogrande["target"], "always got the easier cases.");
    assert_eq!(winogrande["arguments"]["gen_args_1"]["arg_0"], "Sarah was a much better surgeon than Maria so Maria");
    let lambada = first("lambada_openai");
    let text = lambada["doc"]["text"].as_str().unwrap();
    let (context, word) = text.rsplit_once(' ').unwrap();
    assert_eq!(
        (&lambada["arguments"]["gen_args_0"]["arg_0"], &lambada["target"]),
        (&json!(context), &json!(format!(" {word}")))
    );
    assert_eq!(lambada["metrics"], json!(["perplexity", "acc"]));
    let anatomy = first("mmlu_anatomy");
    let prompt = anatomy["arguments"]["gen_args_0"]["arg_0"].as_str().unwrap();
    assert!(prompt.starts_with("The following are multiple choice questions (with answers) about anatomy.\n\n"));
    assert_eq!(anatomy["target"], anatomy["doc"]["answer"].to_string());
    let wikitext = first("wikitext");
    assert_eq!(wikitext["arguments"]["gen_args_0"].as_object().unwrap().len(), 1, "a rolling request is (text,)");
    assert_eq!(wikitext["resps"][0].as_array().unwrap().len(), 1);
    assert!(wikitext["word_perplexity"][1].is_u64(), "(log-likelihood, words)");

    match lm_eval_python() {
        Ok(python) => {
            let script = repo_dir().join("scripts/check-lm-eval-files.py");
            let checked = Command::new(&python).arg(&script).arg(dir.path()).output().unwrap();
            let said =
                format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
            assert!(checked.status.success(), "lm-evaluation-harness's readers: {said}");
        }
        Err(why) => eprintln!("lm-evaluation-harness's own readers not run: {why}"),
    }
}

/// generate_until tasks' files: gsm8k_cot (two filters, a line per document and filter) and
/// humaneval (a custom filter, pass@1), checked by the same rules and readers.
#[test]
fn generation_results_read_as_lm_eval_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let fixture = repo_dir().join("tests/fixtures/gsm8k/test.jsonl");
    let gsm8k = RunArgs::new().flag("--tasks", "gsm8k_cot").path("--data", &fixture).samples_beside(&out).run();
    assert!(gsm8k.status.success(), "{}", String::from_utf8_lossy(&gsm8k.stderr));
    let humaneval_dir = dir.path().join("humaneval");
    let humaneval = RunArgs::new()
        .flag("--tasks", "humaneval")
        .path("--data-dir", &evalmesh_tests::humaneval_data_dir())
        .flag("--limit", 2)
        .extend(&["--allow-code-execution"])
        .samples_beside(&humaneval_dir.join("r.json"))
        .run();
    assert!(humaneval.status.success(), "{}", String::from_utf8_lossy(&humaneval.stderr));
    for (folder, task, lines_per_doc) in [(dir.path(), "gsm8k_cot", 2), (humaneval_dir.as_path(), "humaneval", 1)] {
        let r = read_json(&folder.join("r.json"));
        assert_eq!(results_problems(&r), Vec::<String>::new(), "{task}");
        let config = &r["configs"][task];
        assert_eq!(config["output_type"], "generate_until");
        let samples = lines(&samples_file(folder, task));
        let docs = r["n-samples"][task]["effective"].as_u64().unwrap() as usize;
        assert_eq!(samples.len(), docs * lines_per_doc, "{task}: a line per document and filter");
        for s in &samples {
            let problems = sample_problems(s, config, &serde_json::to_string_pretty(&s["doc"]).unwrap());
            assert_eq!(problems, Vec::<String>::new(), "{task}");
        }
        assert_eq!(r["task_hashes"][task], task_hash(&samples).as_str(), "{task}");
        if let Ok(python) = lm_eval_python() {
            let script = repo_dir().join("scripts/check-lm-eval-files.py");
            let checked = Command::new(&python).arg(&script).arg(folder).output().unwrap();
            let said =
                format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
            assert!(checked.status.success(), "lm-evaluation-harness's readers on {task}: {said}");
        }
    }
}

/// A results file and a samples line as lm-evaluation-harness writes them (written by hand
/// from its code, not by evalmesh), for the checks to pass and then fail once each is broken.
fn lm_eval_style() -> (Value, Value) {
    let results = json!({
        "results": {"t": {"name": "t", "alias": "t", "sample_len": 2, "acc,none": 0.5, "acc_stderr,none": 0.5},
                    "g": {"name": "g", "alias": "g", "sample_len": 2, "acc,none": 0.5, "acc_stderr,none": "N/A",
                          "sample_count": {"acc,none": 2}}},
        "groups": {"g": {"name": "g", "alias": "g", "sample_len": 2, "acc,none": 0.5, "acc_stderr,none": "N/A",
                         "sample_count": {"acc,none": 2}}},
        "group_subtasks": {"g": ["t"]},
        "configs": {"t": {"task": "t", "output_type": "multiple_choice", "num_fewshot": 0, "metric_list": [{"metric": "acc"}]}},
        "versions": {"t": 1.0, "g": "N/A"},
        "n-shot": {"t": 0, "g": 0},
        "higher_is_better": {"t": {"acc": true}, "g": {"acc": true}},
        "n-samples": {"t": {"original": 10, "effective": 2}},
        "config": {"model": "hf", "model_args": "pretrained=x", "batch_size": "1", "batch_sizes": [], "limit": 2},
        "date": 1700000000.5,
        "task_hashes": {"t": hash_string("")},
    });
    let doc = json!({"q": "sky?"});
    let target = "0";
    let prompt = "Q: sky?\nA:";
    let sample = json!({
        "doc_id": 0, "doc": doc, "target": target,
        "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": " blue"}, "gen_args_1": {"arg_0": prompt, "arg_1": " red"}},
        "resps": [[["-1.5", "True"]], [["-2.5", "False"]]],
        "filtered_resps": [["-1.5", "True"], ["-2.5", "False"]],
        "filter": "none", "metrics": ["acc"],
        // CPython: hashlib.sha256(json.dumps({"q": "sky?"}, indent=2, ensure_ascii=False).encode()).hexdigest()
        "doc_hash": "6bbf0845a65fdef3f7bf7b4dbb3deeba6ff4f6ae172517bdec3c25dbf2825fd9",
        "prompt_hash": hash_string(prompt), "target_hash": hash_string(target), "acc": 1.0,
    });
    (results, sample)
}

/// A way to break a file, and what it breaks.
type Edit = (&'static str, fn(&mut Value));

#[test]
fn the_checks_catch_what_lm_eval_would_trip_on() {
    let (results, sample) = lm_eval_style();
    let config = &results["configs"]["t"];
    let doc_json = serde_json::to_string_pretty(&sample["doc"]).unwrap();
    assert_eq!(results_problems(&results), Vec::<String>::new());
    assert_eq!(sample_problems(&sample, config, &doc_json), Vec::<String>::new());

    let broken: [Edit; 7] = [
        ("a null stderr (make_table formats it with :.4f)", |r| r["results"]["t"]["acc_stderr,none"] = Value::Null),
        ("no higher_is_better", |r| drop(r.as_object_mut().unwrap().remove("higher_is_better"))),
        ("a group in n-samples without `original`", |r| r["n-samples"]["g"] = json!({"effective": 2})),
        ("no sample_len", |r| drop(r["results"]["t"].as_object_mut().unwrap().remove("sample_len"))),
        ("a group entry that is not in results", |r| r["groups"]["g"]["acc,none"] = json!(0.25)),
        ("an unknown top-level key", |r| r["extra"] = json!(1)),
        ("a date that is not a number", |r| r["date"] = json!("2024-01-01")),
    ];
    for (what, edit) in broken {
        let mut r = results.clone();
        edit(&mut r);
        assert!(!results_problems(&r).is_empty(), "not caught: {what}");
    }
    let broken: [Edit; 6] = [
        ("a target that is not a string", |s| s["target"] = json!(0)),
        ("arguments as a list", |s| s["arguments"] = json!([["Q: sky?\nA:", " blue"]])),
        ("a response that is a number", |s| s["resps"][0][0][0] = json!(-1.5)),
        ("a prompt hash of another prompt", |s| s["prompt_hash"] = json!(hash_string("Q:"))),
        ("a metric without its value", |s| drop(s.as_object_mut().unwrap().remove("acc"))),
        ("another document's hash", |s| s["doc"] = json!({"q": "sea?"})),
    ];
    for (what, edit) in broken {
        let mut s = sample.clone();
        edit(&mut s);
        let doc_json = serde_json::to_string_pretty(&s["doc"]).unwrap();
        assert!(!sample_problems(&s, config, &doc_json).is_empty(), "not caught: {what}");
    }
}

#[test]
fn a_stderr_lm_eval_has_none_is_na() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    assert!(RunArgs::new().hellaswag_items(1).path("--output", &out).run().status.success());
    let r = read_json(&out);
    // One document: no standard error (evaluator_utils.py 221-225 writes "N/A").
    assert_eq!(r["results"]["multiple_choice"]["acc_stderr,none"], "N/A");
    assert_eq!(results_problems(&r), Vec::<String>::new());
    // evalmesh's own reader and printer take it too.
    assert_eq!(read_report(&out).tasks.results["multiple_choice"]["acc_stderr,none"], "N/A");
}

/// lm-evaluation-harness's `sanitize_model_name` (utils.py 300-304): each run of `"<>:/|\?*[]` → `__`.
fn sanitize_model_name(name: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.chars() {
        let special = "\"<>:/|\\?*[]".contains(c);
        if special && !in_run {
            out.push_str("__");
        } else if !special {
            out.push(c);
        }
        in_run = special;
    }
    out
}

#[test]
fn lm_eval_flag_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out");
    let lm_eval_style = RunArgs::new()
        .hellaswag_items(8)
        .extend(&["--log_samples", "--num_fewshot", "0", "--batch_size", "2"])
        .path("--output_path", &folder);
    assert!(lm_eval_style.run().status.success());
    // The output folder as lm-evaluation-harness lays it out (evaluation_tracker.py 269-279, 337-346).
    let mut files: Vec<String> = Vec::new();
    let model_dir = folder.join(sanitize_model_name(test_model().to_str().unwrap()));
    for entry in std::fs::read_dir(&model_dir).unwrap() {
        files.push(entry.unwrap().path().to_str().unwrap().to_string());
    }
    let results = get_results_filenames(&files);
    let samples = get_sample_results_filenames(&files);
    assert_eq!((results.len(), samples.len()), (1, 1), "{files:?}");
    let date = |f: &str| get_file_datetime(Path::new(f).file_name().unwrap().to_str().unwrap()).replace(".json", "");
    assert_eq!(date(&results[0]), date(&samples[0]), "the results and samples of a run share its date");
    assert!(model_dir.join("results.journal.jsonl").is_file());
    let report = read_report(Path::new(&results[0]));
    assert_eq!(report.run.config.batch_size.as_deref(), Some("2"));
    let budget = report.evalmesh.tasks["multiple_choice"].batch_tokens.unwrap();
    assert!(budget >= 2 && budget & 1 == 0, "a budget of 2 requests: {budget}");

    // The same scores with evalmesh's own flags.
    let out = dir.path().join("r.json");
    assert!(RunArgs::new().hellaswag_items(8).samples_beside(&out).run().status.success());
    assert!(read_samples(dir.path(), "multiple_choice") == std::fs::read(&samples[0]).unwrap());

    for (flags, says) in [
        (&["--batch_size", "auto"][..], "--tune"),
        (&["--batch_size", "2", "--batch-tokens", "512"][..], "cannot be used with"),
    ] {
        let output = RunArgs::new().hellaswag_items(1).extend(flags).run();
        assert_eq!(output.status.code(), Some(2), "a usage error");
        assert!(String::from_utf8_lossy(&output.stderr).contains(says), "{flags:?}");
    }
}

/// lm-evaluation-harness's way of naming the model, `--model hf --model_args
/// pretrained=DIR,gguf_file=NAME,…`, scores as `--model DIR/NAME` with the flags its keys
/// stand for; the results record the pairs; a model named twice, lm-eval's model type
/// alone, or a key evalmesh does not take is one clear error.
#[test]
fn lm_eval_model_args_name_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = test_model();
    let (folder, file) = (model.parent().unwrap().to_str().unwrap(), model.file_name().unwrap().to_str().unwrap());
    let data = shared_dir().join("reference/hellaswag-llamacpp-dev.jsonl");
    let items = ["run", "--task", "multiple_choice", "--data", data.to_str().unwrap(), "--limit", "4"];
    let model_args = format!("pretrained={folder},gguf_file={file},max_length=96,trust_remote_code=True");
    let lm_eval_style = dir.path().join("lm-eval-style.json");
    let mut args = items.to_vec();
    args.extend(["--model", "hf", "--model_args", &model_args, "--log_samples", "--output"]);
    args.push(lm_eval_style.to_str().unwrap());
    let output = run_evalmesh(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config = &read_json(&lm_eval_style)["config"]["model_args"];
    assert_eq!((config["pretrained"].as_str(), config["gguf_file"].as_str()), (Some(folder), Some(file)));
    let lm_eval_samples = read_samples(dir.path(), "multiple_choice");

    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    let args = RunArgs::new().hellaswag_items(4).flag("--ctx", 96).samples_beside(&own.join("r.json"));
    assert!(args.run().status.success());
    assert!(read_samples(&own, "multiple_choice") == lm_eval_samples, "the same model and context, other scores");

    let twice = format!("pretrained={folder}");
    let hf_alone: &[&str] = &["--model", "hf"];
    for (flags, code, says) in [
        (hf_alone, 1, "--model_args pretrained=PATH"),
        (&["--model", "other.gguf", "--model_args", &twice][..], 1, "name the model once"),
        (&["--model_args", &format!("{twice},revision=main")][..], 2, "`revision` is not a key"),
        (&["--model_args", &format!("{twice},max_length=64"), "--ctx", "128"][..], 1, "max_length=64 and --ctx 128"),
    ] {
        let mut args = items.to_vec();
        args.extend(flags);
        let output = run_evalmesh(&args);
        assert_eq!(output.status.code(), Some(code), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says) && !stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
}

/// `--gen_kwargs` lays its pairs over a generate_until task's `generation_kwargs`, as
/// lm-evaluation-harness's does: five greedy tokens are the first five of eight, the
/// results' configs and `config.gen_kwargs` say so, and a value the key cannot hold is a
/// usage error naming the key.
#[test]
fn gen_kwargs_lay_over_the_task_files() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let lines = [
        "{\"prompt\": \"def add(a, b):\", \"ignore_eos\": true}",
        "{\"prompt\": \"The capital of France\", \"ignore_eos\": true}",
    ];
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let generate = |name: &str, gen_kwargs: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let args = RunArgs::new().flag("--task", "generate").path("--data", &prompts).flag("--gen_kwargs", gen_kwargs);
        let output = args.samples_beside(&out.join("r.json")).run();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let samples: Vec<Value> = String::from_utf8(read_samples(&out, "generate"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let tokens: Vec<Vec<u64>> = samples
            .iter()
            .map(|s| {
                s["evalmesh"]["generations"][0]["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap())
                    .collect()
            })
            .collect();
        (tokens, read_json(&out.join("r.json")))
    };
    let (five, results) = generate("five", "max_gen_toks=5,temperature=0");
    let (eight, _) = generate("eight", "max_gen_toks=8");
    for (five, eight) in five.iter().zip(&eight) {
        assert_eq!((five.len(), eight.len()), (5, 8));
        assert_eq!(five[..], eight[..5], "greedy tokens are a prefix of a longer run's");
    }
    assert_eq!(results["config"]["gen_kwargs"], json!({"max_gen_toks": 5, "temperature": 0}));
    assert_eq!(results["configs"]["generate"]["generation_kwargs"]["max_gen_toks"], 5);

    let output =
        RunArgs::new().flag("--task", "generate").path("--data", &prompts).flag("--gen_kwargs", "max_gen_toks=0").run();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`max_gen_toks`: must be a whole number of tokens"));
}

/// `--seed`'s few-shot seed draws the demonstrations as lm-evaluation-harness's sampler
/// does with it, and the results record the four seeds.
#[test]
fn the_seed_flag_draws_the_demonstrations_as_lm_eval_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = numbered_questions(dir.path());
    let out = dir.path().join("r.json");
    let args = RunArgs::new().flag("--task", "multiple_choice").path("--data", &data).flag("--limit", 3);
    let output = args.flag("--num_fewshot", 1).flag("--seed", 42).samples_beside(&out).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let samples = String::from_utf8(read_samples(dir.path(), "multiple_choice")).unwrap();
    let contexts: Vec<String> = samples
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["arguments"]["gen_args_0"]["arg_0"].as_str().unwrap().to_string()
        })
        .collect();
    // CPython: r = random.Random(42); [r.sample(range(10), 2) for _ in range(3)] == [[1, 0], [4, 3], [3, 2]];
    // two drawn for one shot, and each document drops itself (documents 0 and 2 here).
    assert_eq!(contexts, ["q1 yes 1\n\nq0", "q4 yes 4\n\nq1", "q3 yes 3\n\nq2"]);
    let config = &read_json(&out)["config"];
    let seeds = [&config["random_seed"], &config["numpy_seed"], &config["torch_seed"], &config["fewshot_seed"]];
    assert_eq!(seeds, [&json!(42); 4]);
}

/// lm-evaluation-harness's logging flags: `--write_out` logs the first document's requests
/// as the model reads them, `--verbosity` sets how much is logged (RUST_LOG, which the
/// other tests set, would win: it is left out here), and `--trust_remote_code` is taken.
#[test]
fn write_out_and_verbosity_as_lm_eval_spells_them() {
    let run = |extra: &[&str]| {
        let args = RunArgs::new().hellaswag_items(2).extend(extra);
        let output = Command::new(evalmesh_bin()).args(args.args()).env_remove("RUST_LOG").output().unwrap();
        assert!(output.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stderr).unwrap()
    };
    let stderr = run(&["--write_out", "--trust_remote_code"]);
    let context = "Roof shingle removal: A man is sitting on a roof. he\n(end of prompt on previous line)";
    assert_eq!(stderr.matches(context).count(), 4, "the first item's context, once per choice: {stderr}");
    assert!(stderr.contains("\n starts pulling up roofing on a roof.\n(end of continuation on previous line)"));
    assert_eq!(stderr.matches("document 1;").count(), 0, "only the first document");
    assert!(stderr.contains("INFO] lightweight engine"), "{stderr}");
    assert!(!run(&["--verbosity", "warning"]).contains("INFO]"), "information logged under WARNING");
    assert_eq!(run(&["--verbosity", "ERROR"]), "", "nothing below an error");
}
