//! lm-evaluation-harness 0.4.13's readers of results and samples files, as checks written
//! from its code (each check cites the lines it comes from): the file-name functions of
//! `lm_eval/utils.py` (ported as they are), the schema of `lm_eval/result_schema.py`, and
//! what `make_table` (`lm_eval/utils.py`), `EvaluationTracker`
//! (`lm_eval/loggers/evaluation_tracker.py`) and `WandbLogger`
//! (`lm_eval/loggers/wandb_logger.py`) read. A check returns the problems it finds: none
//! means lm-evaluation-harness's readers take the file.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `get_file_task_name` (utils.py 286-290): `filename[filename.find("_") + 1 : filename.rfind("_")]`.
pub fn get_file_task_name(filename: &str) -> &str {
    let (first, last) = (filename.find('_').map_or(0, |i| i + 1), filename.rfind('_').unwrap_or(0));
    filename.get(first..last).unwrap_or("")
}

/// `get_file_datetime` (utils.py 293-297): after the last `_`, without `.jsonl`.
pub fn get_file_datetime(filename: &str) -> String {
    filename[filename.rfind('_').map_or(0, |i| i + 1)..].replace(".jsonl", "")
}

/// `get_results_filenames` (utils.py 321-325): paths with `/results_` and `.json`.
pub fn get_results_filenames(paths: &[String]) -> Vec<String> {
    paths.iter().filter(|f| f.contains("/results_") && f.contains(".json")).cloned().collect()
}

/// `get_sample_results_filenames` (utils.py 328-332): paths with `/samples_` and `.json`.
pub fn get_sample_results_filenames(paths: &[String]) -> Vec<String> {
    paths.iter().filter(|f| f.contains("/samples_") && f.contains(".json")).cloned().collect()
}

/// `get_latest_filename` (utils.py 314-318): the name with the greatest date.
pub fn get_latest_filename(names: &[String]) -> Option<&String> {
    names.iter().max_by_key(|f| get_file_datetime(f))
}

/// `hash_string` (utils.py 129-130): SHA-256 of the UTF-8 text, in hex.
pub fn hash_string(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Top-level keys of `EvalResults` (result_schema.py 20-104).
const EVAL_RESULTS_KEYS: &[&str] = &[
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "samples",
    "config",
    "git_hash",
    "date",
    "pretty_env_info",
    "transformers_version",
    "lm_eval_version",
    "upper_git_hash",
    "tokenizer_pad_token",
    "tokenizer_eos_token",
    "tokenizer_bos_token",
    "eot_token_id",
    "max_length",
    "model_source",
    "model_name",
    "model_name_sanitized",
    "system_instruction",
    "system_instruction_sha",
    "fewshot_as_multiturn",
    "chat_template",
    "chat_template_sha",
    "task_hashes",
    "total_evaluation_time_seconds",
];

fn is_hex_hash(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The problems lm-evaluation-harness's readers would have with a results file.
pub fn results_problems(r: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let Some(top) = r.as_object() else { return vec!["the results are not a JSON object".into()] };
    for key in top.keys() {
        check(EVAL_RESULTS_KEYS.contains(&key.as_str()) || key == "evalmesh", format!("unknown top-level key {key}"));
    }
    // _to_eval_results (evaluator_utils.py 157-166), simple_evaluate (evaluator.py 394-420),
    // save_results_aggregated (evaluation_tracker.py 250-261): always written.
    for key in [
        "results",
        "group_subtasks",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "date",
    ] {
        check(top.contains_key(key), format!("no `{key}`"));
    }
    check(top.contains_key("task_hashes"), "no `task_hashes`".into());
    let empty = serde_json::Map::new();
    let object = |key: &str| top.get(key).and_then(Value::as_object).unwrap_or(&empty);
    let results = object("results");
    for (task, entry) in results {
        let Some(entry) = entry.as_object() else {
            check(false, format!("results.{task} is not an object"));
            continue;
        };
        // _collect_results (evaluator_utils.py 280-285) and Group.aggregate (group.py 202-219).
        check(entry.get("name").is_some_and(Value::is_string), format!("results.{task}.name"));
        check(entry.get("alias").is_some_and(Value::is_string), format!("results.{task}.alias"));
        check(entry.get("sample_len").is_some_and(Value::is_u64), format!("results.{task}.sample_len"));
        for (key, value) in entry {
            if ["name", "alias", "sample_len", "sample_count"].contains(&key.as_str()) {
                continue;
            }
            // make_table (utils.py 536-548): `metric,filter` keys; a stderr is "N/A" or
            // formatted with `:.4f` (a null stderr raises there); values print as they are.
            let (metric, filter) = key.split_once(',').unwrap_or((key, ""));
            check(!filter.is_empty(), format!("results.{task}: `{key}` is not `metric,filter`"));
            if metric.ends_with("_stderr") {
                check(
                    value.is_number() || value == "N/A",
                    format!("results.{task}.{key} = {value}: not a number or \"N/A\""),
                );
            } else {
                check(value.is_number(), format!("results.{task}.{key} = {value}: not a number"));
            }
        }
    }
    // EvalAcc.collect (evaluator_utils.py 120-132): a group's entry is its results' entry.
    for (group, entry) in object("groups") {
        check(results.get(group) == Some(entry), format!("groups.{group} differs from results.{group}"));
    }
    // group_subtasks (evaluator_utils.py 148-149): group → its children, each with results;
    // make_table walks them (utils.py 445-476).
    for (group, children) in object("group_subtasks") {
        let children = children.as_array().map(Vec::as_slice).unwrap_or_default();
        check(!children.is_empty(), format!("group_subtasks.{group} lists no tasks"));
        for c in children {
            check(
                c.as_str().is_some_and(|c| results.contains_key(c)),
                format!("group_subtasks.{group}: {c} has no results"),
            );
        }
    }
    // configs: each task's TaskConfig.to_dict (task.py 514-518, config/task.py 176-202); the
    // W&B logger reads `output_type` and `metric_list[].metric` (wandb_logger.py 233-290).
    for (task, config) in object("configs") {
        check(config["task"] == task.as_str(), format!("configs.{task}.task"));
        let output = config["output_type"].as_str().unwrap_or("");
        let types = ["loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until"];
        check(types.contains(&output), format!("configs.{task}.output_type = {}", config["output_type"]));
        check(config["num_fewshot"].is_u64(), format!("configs.{task}.num_fewshot"));
        let metrics = config["metric_list"].as_array().map(Vec::as_slice).unwrap_or_default();
        check(!metrics.is_empty(), format!("configs.{task}.metric_list"));
        for m in metrics {
            check(m["metric"].is_string(), format!("configs.{task}.metric_list: {m}"));
        }
        check(results.contains_key(task), format!("configs.{task} has no results"));
        // n-samples (evaluator_utils.py 292-296): original and effective; effective is sample_len.
        let counts = &top.get("n-samples").unwrap_or(&Value::Null)[task];
        check(counts["original"].is_u64() && counts["effective"].is_u64(), format!("n-samples.{task} = {counts}"));
        check(
            counts["effective"] == results.get(task).unwrap_or(&Value::Null)["sample_len"],
            format!("n-samples.{task}.effective"),
        );
    }
    // _SampleCount (result_schema.py 140-147): both counts, for every entry.
    for (task, counts) in object("n-samples") {
        let mut keys: Vec<&String> = counts.as_object().map(|c| c.keys().collect()).unwrap_or_default();
        keys.sort();
        check(keys == ["effective", "original"], format!("n-samples.{task} has keys {keys:?}"));
    }
    for (task, n) in object("n-shot") {
        check(n.is_u64(), format!("n-shot.{task} = {n}"));
    }
    // higher_is_better: per metric a bool, or null where a group's tasks disagree (evaluator_utils.py 430-446).
    for (task, metrics) in object("higher_is_better") {
        let ok = metrics.as_object().is_some_and(|m| m.values().all(|h| h.is_boolean() || h.is_null()));
        check(ok, format!("higher_is_better.{task} = {metrics}"));
    }
    for (task, version) in object("versions") {
        check(version.is_number() || version.is_string() || version.is_null(), format!("versions.{task}"));
    }
    // _EvalConfig (result_schema.py 150-168); the CLI joins config.batch_sizes (_cli/run.py 443).
    let config = &r["config"];
    check(config["model"].is_string(), "config.model".into());
    check(config["batch_sizes"].is_array(), "config.batch_sizes".into());
    check(config["limit"].is_number() || config["limit"].is_null(), "config.limit".into());
    check(r["date"].is_number(), "date is not a number (a UNIX time)".into());
    for (task, hash) in object("task_hashes") {
        check(is_hex_hash(hash), format!("task_hashes.{task} = {hash}"));
    }
    problems
}

/// The problems lm-evaluation-harness's readers would have with one samples line of a task
/// configured as `config`; `doc_json` is Python's `json.dumps(doc, indent=2, ensure_ascii=False)`
/// of the line's `doc`, which `doc_hash` hashes.
pub fn sample_problems(line: &Value, config: &Value, doc_json: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{what}: {}", line.get(what).unwrap_or(&Value::Null)));
        }
    };
    // The line evaluate() builds (evaluator.py 644-666) as save_results_samples writes it
    // (evaluation_tracker.py 353-374): arguments as gen_args_i → arg_j, responses and
    // target as strings.
    check(line["doc_id"].is_u64(), "doc_id");
    check(line["doc"].is_object(), "doc");
    check(line["target"].is_string(), "target");
    let requests = line["arguments"].as_object().map_or(0, |a| a.len());
    let args_ok = (0..requests).all(|i| {
        line["arguments"][format!("gen_args_{i}")]
            .as_object()
            .is_some_and(|a| (0..a.len()).all(|j| a.contains_key(&format!("arg_{j}"))))
    });
    check(requests > 0 && args_ok, "arguments");
    // sanitize_list (utils.py 212-221): every leaf a string; one response per request.
    let strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    let resps_ok = line["resps"].as_array().is_some_and(|r| {
        r.len() == requests
            && r.iter().all(|per| per.as_array().is_some_and(|reps| reps.iter().all(|x| x.is_string() || strings(x))))
    });
    check(resps_ok, "resps");
    let filtered_ok = line["filtered_resps"]
        .as_array()
        .is_some_and(|r| r.len() == requests && r.iter().all(|x| x.is_string() || strings(x)));
    check(filtered_ok, "filtered_resps");
    check(line["filter"].is_string(), "filter");
    let names: Vec<&str> =
        line["metrics"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    check(!names.is_empty() && names.iter().all(|m| line.get(*m).is_some()), "metrics");
    // The W&B logger reads a key for every metric of the task (wandb_logger.py 233-243).
    let listed = config["metric_list"].as_array().map(Vec::as_slice).unwrap_or_default();
    check(listed.iter().all(|m| m["metric"].as_str().is_some_and(|m| line.get(m).is_some())), "metric_list");
    // The hashes (evaluator.py 655-664).
    check(line["doc_hash"] == hash_string(doc_json).as_str(), "doc_hash");
    let prompt = line["arguments"]["gen_args_0"]["arg_0"].as_str().unwrap_or("");
    check(line["prompt_hash"] == hash_string(prompt).as_str(), "prompt_hash");
    check(line["target_hash"] == hash_string(line["target"].as_str().unwrap_or("")).as_str(), "target_hash");
    problems
}

/// `task_hashes[task]` from a task's sample lines (evaluation_tracker.py 250-257).
pub fn task_hash(lines: &[Value]) -> String {
    let joined: String = lines
        .iter()
        .map(|s| ["doc_hash", "prompt_hash", "target_hash"].map(|k| s[k].as_str().unwrap_or("")).concat())
        .collect();
    hash_string(&joined)
}
