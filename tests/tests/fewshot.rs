//! Few-shot contexts against lm-evaluation-harness's sampler: the draws of CPython's
//! `random.Random(1234).sample`, one call per document in document order, rebuilt here
//! from the raw data files; and the errors when few-shot cannot be done.

#![allow(clippy::unwrap_used)]

use evalmesh::tasks::builtin::{load, Source};
use evalmesh::tasks::Doc;
use evalmesh_tests::{assert_clean_error, run_evalmesh, shared_dir, test_model};

fn load_docs(
    task: &str,
    data_dir: Option<&std::path::Path>,
    data_file: Option<&std::path::Path>,
    shots: usize,
) -> Vec<Doc> {
    let tasks = load(task, &Source { data_dir, data_file, num_fewshot: shots }).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].num_fewshot, shots);
    tasks.into_iter().next().unwrap().docs
}

#[test]
fn lambada_draws_from_its_test_split_as_lm_eval_does() {
    let data = shared_dir().join("data");
    let text = std::fs::read_to_string(data.join("lambada/lambada_test.jsonl")).unwrap();
    let split: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (context, word) = v["text"].as_str().unwrap().rsplit_once(' ').unwrap();
            (context.to_string(), word.to_string())
        })
        .collect();
    // CPython: r = random.Random(1234); [r.sample(range(5153), 2) for _ in range(3)]
    let draws = [[3610, 957], [61, 742], [4769, 286]];
    let docs = load_docs("lambada_openai", Some(&data), None, 2);
    assert_eq!(docs.len(), split.len());
    for (doc, drawn) in docs.iter().zip(draws) {
        // Each demonstration: text, the target delimiter " ", then the target " word" (two spaces).
        let shots: String = drawn.iter().map(|&i| format!("{}  {}\n\n", split[i].0, split[i].1)).collect();
        let (context, word) = &split[doc.id];
        assert_eq!(doc.requests[0].context, format!("{shots}{context}"));
        assert_eq!(doc.requests[0].continuation, format!(" {word}"));
    }
}

#[test]
fn a_generic_file_is_its_own_few_shot_split_without_the_document_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.jsonl");
    let lines: String = (0..10)
        .map(|i| format!("{{\"context\": \"q{i}\", \"choices\": [\"no\", \"yes {i}\"], \"gold\": 1}}\n"))
        .collect();
    std::fs::write(&path, lines).unwrap();
    // CPython: r = random.Random(1234); [r.sample(range(10), 2) for _ in range(3)] == [[7, 1], [0, 1], [9, 0]];
    // one example more than asked is drawn, and document 1 drops itself from its draw.
    let docs = load_docs("multiple_choice", None, Some(&path), 1);
    let contexts: Vec<&str> = docs[..3].iter().map(|d| d.requests[0].context.as_str()).collect();
    assert_eq!(contexts, ["q7 yes 7\n\nq0", "q0 yes 0\n\nq1", "q9 yes 9\n\nq2"]);
}

#[test]
fn mmlu_takes_the_first_dev_examples_after_the_description() {
    let data = shared_dir().join("data");
    let tasks = load("mmlu", &Source { data_dir: Some(&data), data_file: None, num_fewshot: 1 }).unwrap();
    let algebra = tasks.iter().find(|t| t.name == "mmlu_abstract_algebra").unwrap();
    let context = &algebra.docs[0].requests[0].context;
    let description = "The following are multiple choice questions (with answers) about abstract algebra.\n\n";
    let dev = std::fs::read_to_string(data.join("mmlu/dev/abstract_algebra_dev.csv")).unwrap();
    let first_question = dev.split(',').next().unwrap();
    assert!(context.starts_with(&format!("{description}{first_question}\nA. ")), "{context}");
    assert_eq!(context.matches("\nAnswer:").count(), 2, "{context}");
}

#[test]
fn a_missing_training_split_is_named() {
    let model = test_model();
    let data = shared_dir().join("data");
    let args = ["run", "--model", model.to_str().unwrap(), "--task", "hellaswag", "--num-fewshot", "3"];
    let output = run_evalmesh(&[&args[..], &["--data-dir", data.to_str().unwrap()]].concat());
    assert_clean_error(&output, &["hellaswag/hellaswag_train.jsonl", "--data-dir is", "0-shot"]);
}

#[test]
fn rolling_perplexity_takes_no_few_shot() {
    let model = test_model();
    let output =
        run_evalmesh(&["run", "--model", model.to_str().unwrap(), "--task", "perplexity", "--num-fewshot", "1"]);
    assert_clean_error(&output, &["perplexity", "--num-fewshot"]);
}
