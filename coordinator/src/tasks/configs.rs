//! Each built-in task as lm-evaluation-harness describes a task in the results' `configs`:
//! the dictionary of its `TaskConfig` (`lm_eval/config/task.py`, `TaskConfig.to_dict`: every
//! field that is not `None`, the few-shot settings as a nested `FewshotConfig`). The fields
//! are those of lm-evaluation-harness's own YAML file for the task wherever evalmesh follows
//! it (dataset, splits, templates, delimiters, sampler, version), with the files evalmesh
//! read under `dataset_kwargs.data_files` and evalmesh's own task settings under
//! `metadata.evalmesh`. A run adds `num_fewshot` and the `metric_list` it reported.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::mmlu::CATEGORIES;

/// What sets one built-in task's configuration apart: lm-evaluation-harness's YAML fields
/// for it, as `(key, value)` in `TaskConfig`'s order.
struct Yaml {
    fields: Vec<(&'static str, Value)>,
    /// `fewshot_config.sampler`.
    sampler: &'static str,
    version: f64,
}

/// lm-evaluation-harness's YAML fields of built-in task `task` (an MMLU subject is
/// `mmlu_<subject>`); `None` for a task lm-evaluation-harness has no file for.
fn yaml(task: &str) -> Option<Yaml> {
    let choice_metrics = |fields: Vec<(&'static str, Value)>| Yaml { fields, sampler: "default", version: 1.0 };
    let yaml = match task {
        "hellaswag" => choice_metrics(vec![
            ("tag", json!(["multiple_choice"])),
            ("dataset_path", json!("Rowan/hellaswag")),
            ("training_split", json!("train")),
            ("validation_split", json!("validation")),
            ("process_docs", json!("!function utils.process_docs")),
            ("doc_to_text", json!("{{query}}")),
            ("doc_to_target", json!("{{label}}")),
            ("doc_to_choice", json!("choices")),
        ]),
        "arc_easy" | "arc_challenge" => choice_metrics(vec![
            ("tag", json!(["ai2_arc"])),
            ("dataset_path", json!("allenai/ai2_arc")),
            ("dataset_name", json!(if task == "arc_easy" { "ARC-Easy" } else { "ARC-Challenge" })),
            ("training_split", json!("train")),
            ("test_split", json!("test")),
            ("doc_to_text", json!("Question: {{question}}\nAnswer:")),
            ("doc_to_target", json!("{{choices.label.index(answerKey)}}")),
            ("doc_to_choice", json!("{{choices.text}}")),
        ]),
        "piqa" => choice_metrics(vec![
            ("dataset_path", json!("baber/piqa")),
            ("training_split", json!("train")),
            ("validation_split", json!("validation")),
            ("doc_to_text", json!("Question: {{goal}}\nAnswer:")),
            ("doc_to_target", json!("label")),
            ("doc_to_choice", json!("{{[sol1, sol2]}}")),
        ]),
        "winogrande" => choice_metrics(vec![
            ("dataset_path", json!("allenai/winogrande")),
            ("dataset_name", json!("winogrande_xl")),
            ("training_split", json!("train")),
            ("validation_split", json!("validation")),
            ("doc_to_text", json!("!function preprocess_winogrande.doc_to_text")),
            ("doc_to_target", json!("!function preprocess_winogrande.doc_to_target")),
            ("doc_to_choice", json!("!function preprocess_winogrande.doc_to_choice")),
        ]),
        "lambada_openai" => choice_metrics(vec![
            ("tag", json!(["lambada"])),
            ("dataset_path", json!("EleutherAI/lambada_openai")),
            ("dataset_name", json!("default")),
            ("test_split", json!("test")),
            ("doc_to_text", json!("{{text.split(' ')[:-1]|join(' ')}}")),
            ("doc_to_target", json!("{{' '+text.split(' ')[-1]}}")),
        ]),
        "wikitext" => Yaml {
            fields: vec![
                ("dataset_path", json!("EleutherAI/wikitext_document_level")),
                ("dataset_name", json!("wikitext-2-raw-v1")),
                ("test_split", json!("test")),
                ("doc_to_text", json!("")),
                ("doc_to_target", json!("!function preprocess_wikitext.wikitext_detokenizer")),
                ("process_results", json!("!function preprocess_wikitext.process_results")),
            ],
            sampler: "default",
            version: 2.0,
        },
        mmlu if mmlu.starts_with("mmlu_") => {
            let subject = &mmlu["mmlu_".len()..];
            let about = subject.replace('_', " ");
            Yaml {
                fields: vec![
                    ("task_alias", json!(subject)),
                    ("tag", json!(format!("mmlu_{}_tasks", category(subject)))),
                    ("dataset_path", json!("cais/mmlu")),
                    ("dataset_name", json!(subject)),
                    ("test_split", json!("test")),
                    ("fewshot_split", json!("dev")),
                    (
                        "doc_to_text",
                        json!(
                            "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
                        ),
                    ),
                    ("doc_to_target", json!("answer")),
                    ("doc_to_choice", json!(["A", "B", "C", "D"])),
                    (
                        "description",
                        json!(format!("The following are multiple choice questions (with answers) about {about}.\n\n")),
                    ),
                ],
                sampler: "first_n",
                version: 1.0,
            }
        }
        _ => return None,
    };
    Some(yaml)
}

/// The MMLU category lm-evaluation-harness files a subject under (the `tag`
/// `mmlu_<category>_tasks` of `lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml`): its group's
/// name in [`CATEGORIES`] without `mmlu_`; `other` for a subject lm-eval does not list.
fn category(subject: &str) -> &'static str {
    CATEGORIES
        .iter()
        .find(|(_, _, subjects)| subjects.contains(&subject))
        .and_then(|(group, _, _)| group.strip_prefix("mmlu_"))
        .unwrap_or("other")
}

/// The `TaskConfig` dictionary of task `task`: lm-evaluation-harness's YAML fields for it
/// (for the generic tasks, their own), `output_type`, the data files read (`(split, path)`)
/// and evalmesh's task settings `evalmesh` (the journal's task key).
pub fn task_config(task: &str, output_type: &str, files: &[(&str, &Path)], evalmesh: &Value) -> Map<String, Value> {
    let data_files: Map<String, Value> =
        files.iter().map(|(split, path)| (split.to_string(), json!(path.display().to_string()))).collect();
    let yaml = yaml(task).unwrap_or_else(|| {
        // The generic tasks read one file with the loader of its kind.
        let loader = if output_type == "loglikelihood_rolling" { "text" } else { "json" };
        let split = files.first().map_or("test", |f| f.0);
        let mut fields = vec![("dataset_path", json!(loader)), ("test_split", json!(split))];
        if output_type == "multiple_choice" {
            fields.extend([
                ("doc_to_text", json!("context")),
                ("doc_to_target", json!("gold")),
                ("doc_to_choice", json!("choices")),
            ]);
        } else {
            fields.extend([("doc_to_text", json!("")), ("doc_to_target", json!("text"))]);
        }
        Yaml { fields, sampler: "default", version: 1.0 }
    });
    let field = |key: &str| yaml.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let mut config = Map::new();
    config.insert("task".into(), json!(task));
    // TaskConfig's fields in its order, each where the task sets it or TaskConfig has a default.
    for key in ["task_alias", "tag", "dataset_path", "dataset_name"] {
        if let Some(value) = field(key) {
            config.insert(key.into(), value);
        }
    }
    config.insert("dataset_kwargs".into(), json!({ "data_files": data_files }));
    for key in ["training_split", "validation_split", "test_split", "fewshot_split", "process_docs"] {
        if let Some(value) = field(key) {
            config.insert(key.into(), value);
        }
    }
    for key in ["doc_to_text", "doc_to_target"] {
        config.insert(key.into(), field(key).unwrap_or(Value::Null));
    }
    config.insert("unsafe_code".into(), json!(false));
    if let Some(choice) = field("doc_to_choice") {
        config.insert("doc_to_choice".into(), choice);
    }
    if let Some(process_results) = field("process_results") {
        config.insert("process_results".into(), process_results);
    }
    config.insert("description".into(), field("description").unwrap_or(json!("")));
    config.insert("target_delimiter".into(), json!(" "));
    config.insert("fewshot_delimiter".into(), json!("\n\n"));
    // FewshotConfig.from_dict: the task's split, templates and delimiters, and its sampler.
    config.insert(
        "fewshot_config".into(),
        json!({
            "sampler": yaml.sampler,
            "split": field("fewshot_split"),
            "process_docs": field("process_docs"),
            "fewshot_indices": null,
            "samples": null,
            "doc_to_text": field("doc_to_text"),
            "doc_to_choice": field("doc_to_choice"),
            "doc_to_target": field("doc_to_target"),
            "gen_prefix": null,
            "fewshot_delimiter": "\n\n",
            "target_delimiter": " ",
        }),
    );
    config.insert("output_type".into(), json!(output_type));
    config.insert("repeats".into(), json!(1));
    config.insert("should_decontaminate".into(), json!(false));
    config.insert("metadata".into(), json!({"version": yaml.version, "evalmesh": evalmesh}));
    config.retain(|_, v| !v.is_null());
    config
}

/// lm-evaluation-harness's `higher_is_better` of a metric evalmesh reports (`is_higher_better`
/// of `lm_eval/api/metrics.py`; `acc_norm_tokens` is evalmesh's own, an accuracy).
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "acc" | "acc_norm" | "acc_norm_tokens" => Some(true),
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
    fn configs_carry_lm_eval_fields_and_drop_nulls() {
        let files = [("validation", Path::new("/d/hellaswag_val.jsonl"))];
        let c = task_config("hellaswag", "multiple_choice", &files, &json!({"x": 1}));
        assert_eq!(c["dataset_path"], "Rowan/hellaswag");
        assert_eq!(c["doc_to_text"], "{{query}}");
        assert_eq!(c["dataset_kwargs"]["data_files"]["validation"], "/d/hellaswag_val.jsonl");
        assert_eq!(c["metadata"], json!({"version": 1.0, "evalmesh": {"x": 1}}));
        assert!(!c.contains_key("test_split"), "None fields are left out, as TaskConfig.to_dict does");
        // The nested FewshotConfig keeps its nulls (to_dict only drops top-level ones).
        assert!(c["fewshot_config"]["split"].is_null());
        let m = task_config("mmlu_college_physics", "multiple_choice", &files, &json!({}));
        assert_eq!(m["tag"], "mmlu_stem_tasks");
        assert_eq!(m["fewshot_config"]["sampler"], "first_n");
        assert_eq!(
            m["description"],
            "The following are multiple choice questions (with answers) about college physics.\n\n"
        );
        assert_eq!(category("professional_law"), "humanities");
        assert_eq!(category("nutrition"), "other");
    }
}
