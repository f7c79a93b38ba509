//! lm-evaluation-harness's files as its readers expect them: each task's and group's
//! entries in the results file as `_collect_results`, `Group.aggregate` and
//! `EvalAcc._to_eval_results` build them (`lm_eval/evaluator_utils.py`,
//! `lm_eval/api/group.py`), the samples lines ([`samples`]), the file names ([`files`]),
//! and the bits of Python they are made of ([`python`]).

pub mod files;
pub mod python;
pub mod samples;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::results::{SampleCount, TaskResults};
use crate::tasks::configs::{aggregation, higher_is_better};
use crate::tasks::metrics::pooled;
use crate::tasks::{Group, Task};

/// The metric names among a task's `metric,filter` keys, once each (stderrs and the fixed
/// keys left out).
fn metric_names(entry: &BTreeMap<String, Value>) -> Vec<String> {
    let mut names: Vec<String> = entry
        .keys()
        .filter_map(|k| Some(k.split_once(',')?.0))
        .filter(|m| !m.ends_with("_stderr"))
        .map(str::to_string)
        .collect();
    names.dedup();
    names
}

/// Adds task `task`'s entries: `metrics` (`metric,FILTER` and `metric_stderr,FILTER`, a stderr
/// that is not a number written `"N/A"`, as lm-evaluation-harness does where it has none),
/// `effective` the documents scored, `task_hash` the hash of its samples' hashes.
pub fn add_task(
    results: &mut TaskResults,
    task: &Task,
    mut metrics: BTreeMap<String, Value>,
    effective: usize,
    task_hash: String,
) {
    for (key, value) in metrics.iter_mut() {
        if key.contains("_stderr,") && !value.is_number() {
            *value = json!("N/A");
        }
    }
    let names = metric_names(&metrics);
    let output_type = task.lm_eval_config.get("output_type").and_then(Value::as_str).unwrap_or("multiple_choice");
    let metric_list: Vec<Value> = names
        .iter()
        .map(|m| json!({"metric": m, "aggregation": aggregation(m, output_type), "higher_is_better": higher_is_better(m)}))
        .collect();
    let mut config = task.lm_eval_config.clone();
    config.insert("num_fewshot".into(), json!(task.num_fewshot));
    config.insert("metric_list".into(), json!(metric_list));
    let name = task.name.clone();
    metrics.insert("name".into(), json!(name));
    metrics.insert("alias".into(), config.get("task_alias").cloned().unwrap_or(json!(name)));
    metrics.insert("sample_len".into(), json!(effective));
    results.results.insert(name.clone(), metrics);
    results.configs.insert(name.clone(), Value::Object(config));
    results.versions.insert(name.clone(), json!(task.version));
    results.n_shot.insert(name.clone(), json!(task.num_fewshot));
    results.higher_is_better.insert(name.clone(), names.iter().map(|m| (m.clone(), higher_is_better(m))).collect());
    results.n_samples.insert(name.clone(), SampleCount { original: task.docs.len(), effective });
    results.task_hashes.insert(name, task_hash);
}

/// Adds each group's entries from its `children` (task or group names), as lm-evaluation-harness's
/// `Group.aggregate` with `aggregate_metric_list: [{metric: acc, weight_by_size: true}]`:
/// the size-weighted mean of the children's `acc`, the pooled stderr where every child has a
/// number for it (else `"N/A"`), the documents summed; the entry goes into `results` and
/// `groups`, the children into `group_subtasks`, and `n-shot` and `higher_is_better` are
/// carried up where the children agree (`_propagate_num_fewshot`, `_propagate_higher_is_better`).
pub fn add_groups(results: &mut TaskResults, groups: &BTreeMap<Group, Vec<String>>) {
    // A group is aggregated once its children are: MMLU's categories before `mmlu`, whose
    // standard error lm-eval pools from theirs.
    let mut order: Vec<(&Group, &Vec<String>)> = Vec::new();
    while order.len() < groups.len() {
        let before = order.len();
        for (group, children) in groups {
            let ready = children
                .iter()
                .all(|c| !groups.keys().any(|g| &g.name == c) || order.iter().any(|(o, _)| &o.name == c));
            if ready && !order.iter().any(|(o, _)| *o == group) {
                order.push((group, children));
            }
        }
        if order.len() == before {
            break;
        }
    }
    for (Group { name: group, alias }, children) in order {
        let entries: Vec<&BTreeMap<String, Value>> = children.iter().filter_map(|c| results.results.get(c)).collect();
        let size = |e: &BTreeMap<String, Value>| e.get("sample_len").and_then(Value::as_u64).unwrap_or(0) as usize;
        let mut entry = BTreeMap::new();
        entry.insert("alias".to_string(), json!(alias));
        entry.insert("name".to_string(), json!(group));
        entry.insert("sample_len".to_string(), json!(entries.iter().map(|e| size(e)).sum::<usize>()));
        let with_acc: Vec<(f64, Option<f64>, usize)> = entries
            .iter()
            .filter_map(|e| {
                let acc = e.get("acc,none")?.as_f64()?;
                Some((acc, e.get("acc_stderr,none").and_then(Value::as_f64), size(e)))
            })
            .collect();
        if !with_acc.is_empty() {
            let total: usize = with_acc.iter().map(|p| p.2).sum();
            let (mean, stderr) = pooled(&with_acc);
            entry.insert("acc,none".to_string(), json!(mean));
            entry.insert("acc_stderr,none".to_string(), stderr.map_or(json!("N/A"), |se| json!(se)));
            entry.insert("sample_count".to_string(), json!({ "acc,none": total }));
        }
        let shots: Vec<&Value> = children.iter().filter_map(|c| results.n_shot.get(c)).collect();
        if let Some(first) = shots.first().filter(|f| shots.iter().all(|s| s == *f)) {
            results.n_shot.insert(group.clone(), (*first).clone());
        }
        let mut better: BTreeMap<String, Option<bool>> = BTreeMap::new();
        for child in children.iter().filter_map(|c| results.higher_is_better.get(c)) {
            for (metric, h) in child {
                match better.get(metric) {
                    None => {
                        better.insert(metric.clone(), *h);
                    }
                    Some(Some(seen)) if Some(*seen) != *h => {
                        better.insert(metric.clone(), None);
                    }
                    Some(_) => {}
                }
            }
        }
        if !better.is_empty() {
            results.higher_is_better.insert(group.clone(), better);
        }
        results.versions.insert(group.clone(), json!("N/A"));
        results.group_subtasks.insert(group.clone(), children.clone());
        results.groups.insert(group.clone(), entry.clone());
        results.results.insert(group.clone(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(results: &mut TaskResults, name: &str, acc: f64, se: Value, n: usize) {
        let entry = [("acc,none", json!(acc)), ("acc_stderr,none", se), ("sample_len", json!(n))];
        results.results.insert(name.into(), entry.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        results.n_shot.insert(name.into(), json!(0));
        results.higher_is_better.insert(name.into(), [("acc".to_string(), Some(true))].into());
    }

    #[test]
    fn a_group_keeps_its_score_when_a_stderr_is_missing() {
        let mut r = TaskResults::default();
        child(&mut r, "a", 1.0, json!(0.0), 1);
        child(&mut r, "b", 0.0, json!("N/A"), 3);
        let group = Group { name: "g".into(), alias: "g".into() };
        add_groups(&mut r, &[(group, vec!["a".to_string(), "b".to_string()])].into());
        let g = &r.results["g"];
        assert_eq!(g["acc,none"], json!(0.25), "size-weighted mean");
        assert_eq!(g["acc_stderr,none"], "N/A");
        assert_eq!((g["sample_len"].as_u64(), &g["sample_count"]), (Some(4), &json!({"acc,none": 4})));
        assert_eq!(r.groups["g"], *g);
        assert_eq!(r.group_subtasks["g"], ["a", "b"]);
        assert_eq!((&r.n_shot["g"], &r.versions["g"]), (&json!(0), &json!("N/A")));
        assert_eq!(r.higher_is_better["g"]["acc"], Some(true));
    }

    #[test]
    fn a_group_of_groups_pools_its_childrens_figures_as_lm_eval_does() {
        let mut r = TaskResults::default();
        child(&mut r, "a", 0.5, json!(0.1), 10);
        child(&mut r, "b", 0.25, json!(0.2), 30);
        child(&mut r, "c", 1.0, json!(0.05), 20);
        let group = |name: &str| Group { name: name.into(), alias: name.into() };
        let groups = [
            (group("all"), vec!["inner".to_string(), "c".to_string()]),
            (group("inner"), vec!["a".to_string(), "b".to_string()]),
        ];
        add_groups(&mut r, &groups.into());
        assert_eq!(r.group_subtasks["all"], ["inner", "c"]);
        // lm-eval's pooled_sample_stderr, first over a and b, then over inner and c.
        let pool = |parts: &[(f64, f64)]| {
            let total: f64 = parts.iter().map(|p| p.1).sum();
            let var = parts.iter().map(|(se, n)| (n - 1.0) * se * se * n).sum::<f64>() / (total - parts.len() as f64);
            (var / total).sqrt()
        };
        let inner = pool(&[(0.1, 10.0), (0.2, 30.0)]);
        assert_eq!(r.results["inner"]["acc_stderr,none"], json!(inner));
        assert_eq!(r.results["all"]["acc_stderr,none"], json!(pool(&[(inner, 40.0), (0.05, 20.0)])));
        assert_eq!(r.results["all"]["acc,none"], json!((0.3125 * 40.0 + 20.0) / 60.0));
    }
}
