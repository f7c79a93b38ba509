//! A task as lm-evaluation-harness describes it in the results' `configs`: the dictionary
//! of its `TaskConfig` (`lm_eval/config/task.py`, `TaskConfig.to_dict`: every field that is
//! not `None`, the defaults filled in, the few-shot settings as a nested `FewshotConfig`),
//! from the task's YAML; evalmesh's own settings of the task go under `metadata.evalmesh`.
//! A run adds `num_fewshot` and the `metric_list` it reported. Also the `higher_is_better`
//! and aggregation lm-eval names for each metric.

use serde_json::{json, Map, Value};

/// The `TaskConfig` fields a task file may set (those of lm-eval 0.4.13 that evalmesh
/// reads or passes through); others (a group's keys) are left out, as `TaskConfig` has none.
const FIELDS: &[&str] = &[
    "task",
    "task_alias",
    "tag",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "process_docs",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "process_results",
    "description",
    "generation_kwargs",
    "filter_list",
    "doc_to_decontamination_query",
    "gen_prefix",
];

/// The `TaskConfig` dictionary of the task file `yaml` (its merged mapping), with evalmesh's
/// settings `evalmesh` under `metadata.evalmesh`.
pub fn task_config(yaml: &Value, evalmesh: &Value) -> Map<String, Value> {
    let field = |key: &str| yaml.get(key).filter(|v| !v.is_null()).cloned();
    let mut config: Map<String, Value> = FIELDS.iter().filter_map(|k| Some((k.to_string(), field(k)?))).collect();
    for (key, default) in [
        ("unsafe_code", json!(false)),
        ("description", json!("")),
        ("target_delimiter", json!(" ")),
        ("fewshot_delimiter", json!("\n\n")),
        ("repeats", json!(1)),
        ("should_decontaminate", json!(false)),
    ] {
        config.insert(key.into(), field(key).unwrap_or(default));
    }
    config.insert("output_type".into(), field("output_type").unwrap_or(json!("generate_until")));
    // FewshotConfig.from_dict: the task's split, templates and delimiters, then the file's own settings.
    let mut fewshot = json!({
        "sampler": "default",
        "split": field("fewshot_split"),
        "process_docs": field("process_docs"),
        "fewshot_indices": null,
        "samples": null,
        "doc_to_text": field("doc_to_text"),
        "doc_to_choice": field("doc_to_choice"),
        "doc_to_target": field("doc_to_target"),
        "gen_prefix": field("gen_prefix"),
        "fewshot_delimiter": config["fewshot_delimiter"],
        "target_delimiter": config["target_delimiter"],
    });
    if let (Some(own), Some(fewshot)) = (yaml.get("fewshot_config").and_then(Value::as_object), fewshot.as_object_mut())
    {
        fewshot.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    config.insert("fewshot_config".into(), fewshot);
    let mut metadata = yaml.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    metadata.entry("version").or_insert(json!(1.0));
    metadata.insert("evalmesh".into(), evalmesh.clone());
    config.insert("metadata".into(), Value::Object(metadata));
    config
}

/// lm-evaluation-harness's `higher_is_better` of a metric evalmesh reports (`is_higher_better`
/// of `lm_eval/api/metrics.py`; `acc_norm_tokens` is evalmesh's own, an accuracy).
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "acc" | "acc_norm" | "acc_norm_tokens" | "exact_match" | "pass@1" => Some(true),
        "perplexity" | "word_perplexity" | "byte_perplexity" | "bits_per_byte" => Some(false),
        _ => None,
    }
}

/// The aggregation lm-evaluation-harness names for a metric evalmesh reports: `mean` for
/// accuracies, `perplexity` for LAMBADA's (a loglikelihood task), the weighted figures for
/// rolling perplexity.
pub fn aggregation(metric: &str, output_type: &str) -> &'static str {
    match (metric, output_type) {
        ("perplexity", "loglikelihood") => "perplexity",
        ("perplexity" | "word_perplexity" | "byte_perplexity", _) => "weighted_perplexity",
        ("bits_per_byte", _) => "bits_per_byte",
        _ => "mean",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_fill_task_config_defaults_and_drop_other_keys() {
        let yaml = json!({"task": "t", "dataset_path": "json", "doc_to_text": "{{q}}", "output_type": "multiple_choice",
            "fewshot_config": {"sampler": "first_n"}, "aggregate_metric_list": [], "metadata": {"version": 2.0}});
        let c = task_config(&yaml, &json!({"x": 1}));
        assert_eq!(c["dataset_path"], "json");
        assert_eq!(c["target_delimiter"], " ");
        assert_eq!(c["fewshot_delimiter"], "\n\n");
        assert_eq!(c["metadata"], json!({"version": 2.0, "evalmesh": {"x": 1}}));
        assert!(!c.contains_key("aggregate_metric_list"), "TaskConfig has no such field");
        assert!(!c.contains_key("test_split"), "None fields are left out, as TaskConfig.to_dict does");
        // The nested FewshotConfig keeps its nulls (to_dict only drops top-level ones).
        assert!(c["fewshot_config"]["split"].is_null());
        assert_eq!(c["fewshot_config"]["sampler"], "first_n");
        assert_eq!(c["fewshot_config"]["doc_to_text"], "{{q}}");
        assert_eq!(task_config(&json!({}), &json!({}))["output_type"], "generate_until");
    }
}
