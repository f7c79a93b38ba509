//! `--log-samples`: one line per document in lm-evaluation-harness's schema (`evaluate` in
//! `lm_eval/evaluator.py` builds it, `save_results_samples` in
//! `lm_eval/loggers/evaluation_tracker.py` writes it): `doc_id`, `doc`, `target`, `arguments`
//! (`gen_args_N` → `arg_M`), `resps` and `filtered_resps` (Python's `str` of each
//! log-likelihood and greedy flag), `filter`, `metrics` (the names), the three hashes, one
//! key per metric, and evalmesh's own figures under `evalmesh`. Nothing in a line changes
//! between runs: the date is in the file's name only ([`super::files`]), as
//! lm-evaluation-harness has it.

use serde_json::{json, Value};

use super::python::{dumps_indented, float_repr, hash_string};
use crate::generation::Generation;
use crate::tasks::metrics::Outcome;
use crate::tasks::requests::RequestScore;
use crate::tasks::{Doc, Target};

/// One document's line and its part of the task's hash.
pub struct Sample {
    /// The JSON line, without its newline.
    pub line: String,
    /// `doc_hash + prompt_hash + target_hash`, which the results' `task_hashes` hash in turn.
    pub hashes: String,
}

/// The document's metrics under lm-evaluation-harness's names (what `process_results`
/// returns for its output type), in its order, kept to `reported`: the task's metrics.
fn metrics(outcome: &Outcome, reported: &dyn Fn(&str) -> bool) -> Vec<(&'static str, Value)> {
    let all = match *outcome {
        Outcome::Choice { acc, acc_norm, acc_norm_tokens } => {
            vec![("acc", json!(acc)), ("acc_norm", json!(acc_norm)), ("acc_norm_tokens", json!(acc_norm_tokens))]
        }
        Outcome::Partial { acc } => vec![("acc", json!(acc))],
        // loglikelihood: the log-likelihood for perplexity, `int(is_greedy)` for acc.
        Outcome::Greedy { acc, logprob } => vec![("perplexity", json!(logprob)), ("acc", json!(acc as i64))],
        // loglikelihood_rolling: (log-likelihood, units) pairs, weighted when aggregated.
        Outcome::Rolling { logprob, tokens, words, bytes } => vec![
            ("word_perplexity", json!([logprob, words])),
            ("byte_perplexity", json!([logprob, bytes])),
            ("bits_per_byte", json!([logprob, bytes])),
            ("perplexity", json!([logprob, tokens])),
        ],
    };
    all.into_iter().filter(|(name, _)| reported(name)).collect()
}

/// lm-evaluation-harness's `str(doc_to_target(doc))`: the gold index of a multiple-choice
/// document, the continuation of winogrande's (without the delimiter) and LAMBADA's, the
/// text of a rolling one.
fn target(doc: &Doc) -> String {
    let continuation = doc.requests.first().map_or("", |r| r.continuation.as_str());
    match &doc.target {
        Target::Choice { gold, .. } => gold.to_string(),
        Target::Partial { .. } => continuation.strip_prefix(' ').unwrap_or(continuation).to_string(),
        Target::Greedy | Target::Rolling { .. } => continuation.to_string(),
        Target::Generate { reference, .. } => reference.clone(),
    }
}

/// The sample of one document: its requests, their scores, its outcome; `reported` says
/// which metric names the task reports.
pub fn sample(doc: &Doc, scores: &[RequestScore], outcome: &Outcome, reported: &dyn Fn(&str) -> bool) -> Sample {
    let rolling = matches!(doc.target, Target::Rolling { .. });
    let python_bool = |b: bool| if b { "True" } else { "False" };
    // A request's arguments: (context, continuation), or (text,) for a rolling one.
    let arguments: Vec<Vec<&str>> = doc
        .requests
        .iter()
        .map(
            |r| if rolling { vec![r.continuation.as_str()] } else { vec![r.context.as_str(), r.continuation.as_str()] },
        )
        .collect();
    let gen_args: serde_json::Map<String, Value> = arguments
        .iter()
        .enumerate()
        .map(|(i, args)| {
            let args: serde_json::Map<String, Value> =
                args.iter().enumerate().map(|(j, a)| (format!("arg_{j}"), json!(a))).collect();
            (format!("gen_args_{i}"), Value::Object(args))
        })
        .collect();
    // One response per request (repeats = 1); the `none` filter takes it as it is.
    let filtered: Vec<Value> = scores
        .iter()
        .map(|s| match rolling {
            true => json!(float_repr(s.logprob)),
            false => json!([float_repr(s.logprob), python_bool(s.greedy)]),
        })
        .collect();
    let resps: Vec<Value> = filtered.iter().map(|f| json!([f])).collect();
    let target = target(doc);
    let metrics = metrics(outcome, reported);
    let doc_hash = hash_string(&dumps_indented(&doc.record));
    let prompt_hash = hash_string(arguments.first().and_then(|a| a.first()).copied().unwrap_or(""));
    let target_hash = hash_string(&target);
    let gold = match &doc.target {
        Target::Choice { gold, .. } | Target::Partial { gold } => json!(gold),
        _ => Value::Null,
    };
    let requests: Vec<Value> = scores
        .iter()
        .map(|s| json!({"logprob": s.logprob, "tokens": s.token_logprobs.len(), "greedy": s.greedy}))
        .collect();
    let mut fields: Vec<(&str, Value)> = vec![
        ("doc_id", json!(doc.id)),
        ("doc", doc.record.clone()),
        ("target", json!(target)),
        ("arguments", Value::Object(gen_args)),
        ("resps", json!(resps)),
        ("filtered_resps", json!(filtered)),
        ("filter", json!("none")),
        ("metrics", json!(metrics.iter().map(|m| m.0).collect::<Vec<_>>())),
        ("doc_hash", json!(doc_hash)),
        ("prompt_hash", json!(prompt_hash)),
        ("target_hash", json!(target_hash)),
    ];
    fields.extend(metrics);
    fields.push(("evalmesh", json!({"gold": gold, "requests": requests})));
    // Written field by field to keep lm-evaluation-harness's order.
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", Value::from(*k))).collect();
    Sample { line: format!("{{{}}}", body.join(",")), hashes: format!("{doc_hash}{prompt_hash}{target_hash}") }
}

/// The sample of one generated document under one filter chain (lm-evaluation-harness
/// writes a line per document and filter): the context and generation arguments, the raw
/// texts (one per repeat), the filtered answer and its metric (`exact_match` or `pass@1`),
/// with each generation's tokens, their log-probabilities and why it stopped under
/// `evalmesh.generations`.
pub fn generation_sample(
    doc: &Doc,
    generations: &[Generation],
    filter: &str,
    filtered: &str,
    metric: (&str, f64),
) -> Sample {
    let context = doc.requests.first().map_or("", |r| r.context.as_str());
    let (reference, kwargs) = match &doc.target {
        Target::Generate { reference, kwargs, .. } => (reference.as_str(), Some(kwargs)),
        _ => ("", None),
    };
    let arg_1 = kwargs.map_or(Value::Null, |k| {
        json!({"until": k.until, "max_gen_toks": k.max_gen_toks, "do_sample": k.do_sample, "temperature": k.temperature})
    });
    let doc_hash = hash_string(&dumps_indented(&doc.record));
    let prompt_hash = hash_string(context);
    let target_hash = hash_string(reference);
    let fields: Vec<(&str, Value)> = vec![
        ("doc_id", json!(doc.id)),
        ("doc", doc.record.clone()),
        ("target", json!(reference)),
        ("arguments", json!({"gen_args_0": {"arg_0": context, "arg_1": arg_1}})),
        ("resps", json!([generations.iter().map(|g| g.text.as_str()).collect::<Vec<_>>()])),
        ("filtered_resps", json!([filtered])),
        ("filter", json!(filter)),
        ("metrics", json!([metric.0])),
        ("doc_hash", json!(doc_hash)),
        ("prompt_hash", json!(prompt_hash)),
        ("target_hash", json!(target_hash)),
        (metric.0, json!(metric.1)),
        ("evalmesh", json!({"generations": generations})),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", Value::from(*k))).collect();
    Sample { line: format!("{{{}}}", body.join(",")), hashes: format!("{doc_hash}{prompt_hash}{target_hash}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::Request;

    #[test]
    fn a_multiple_choice_line_follows_lm_eval() {
        let doc = Doc {
            id: 3,
            requests: vec![
                Request { context: "Q: sky?\nA:".into(), continuation: " blue".into() },
                Request { context: "Q: sky?\nA:".into(), continuation: " green".into() },
            ],
            target: Target::Choice { gold: 0, choices: vec!["blue".into(), "green".into()] },
            record: json!({"q": "sky?"}),
        };
        let scores = [
            RequestScore { logprob: -1.5, greedy: true, token_logprobs: vec![-1.5] },
            RequestScore { logprob: -2.25, greedy: false, token_logprobs: vec![-2.0, -0.25] },
        ];
        let outcome = Outcome::Choice { acc: 1.0, acc_norm: 0.0, acc_norm_tokens: 1.0 };
        let s = sample(&doc, &scores, &outcome, &|m| m != "acc_norm_tokens");
        let line: Value = serde_json::from_str(&s.line).unwrap();
        assert!(s.line.starts_with("{\"doc_id\":3,\"doc\":{\"q\":\"sky?\"},\"target\":\"0\",\"arguments\":"));
        assert_eq!(line["arguments"]["gen_args_1"], json!({"arg_0": "Q: sky?\nA:", "arg_1": " green"}));
        assert_eq!(line["resps"], json!([[["-1.5", "True"]], [["-2.25", "False"]]]));
        assert_eq!(line["filtered_resps"], json!([["-1.5", "True"], ["-2.25", "False"]]));
        assert_eq!(line["metrics"], json!(["acc", "acc_norm"]));
        assert_eq!((line["acc"].as_f64(), line.get("acc_norm_tokens")), (Some(1.0), None));
        // CPython: hashlib.sha256(json.dumps({"q": "sky?"}, indent=2, ensure_ascii=False).encode()).hexdigest(),
        // then of "Q: sky?\nA:" (the first request's context) and of "0" (str of the target).
        assert_eq!(line["doc_hash"], "6bbf0845a65fdef3f7bf7b4dbb3deeba6ff4f6ae172517bdec3c25dbf2825fd9");
        assert_eq!(line["prompt_hash"], "6fd5dc08d9cf658b15726b7fcebd21bff9b553e04829638099e7095dc3ce41bd");
        assert_eq!(line["target_hash"], "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9");
        assert_eq!(line["evalmesh"]["requests"][1], json!({"logprob": -2.25, "tokens": 2, "greedy": false}));
        let hashes = [&line["doc_hash"], &line["prompt_hash"], &line["target_hash"]].map(|h| h.as_str().unwrap());
        assert_eq!(s.hashes, hashes.concat());
    }
}
