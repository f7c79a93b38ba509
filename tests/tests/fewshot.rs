//! Few-shot contexts against lm-evaluation-harness's sampler: the demonstrations of the
//! first 200 documents of each task against the vectors its own `ContextSampler` picked
//! (`tests/fixtures/fewshot/draws.json`, written by `generate.py` beside it, over stand-in
//! training splits of the real sizes), the draws of CPython's `random.Random(1234).sample`
//! rebuilt from the raw data files; and the errors when few-shot cannot be done.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use evalmesh::tasks::catalog::{Catalog, Source};
use evalmesh::tasks::Doc;
use evalmesh_tests::{assert_clean_error, numbered_questions, repo_dir, run_evalmesh, shared_dir, test_model};
use serde_json::Value;

fn load_docs(task: &str, data_dir: Option<&Path>, data_file: Option<&Path>, shots: usize) -> Vec<Doc> {
    let tasks = Catalog::new(None)
        .unwrap()
        .load(task, &Source { data_dir, data_file, num_fewshot: shots, ..Default::default() })
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].num_fewshot, shots);
    tasks.into_iter().next().unwrap().docs
}

/// The vectors generate.py wrote from lm-evaluation-harness 0.4.13's sampler.
fn vectors() -> Value {
    let path = repo_dir().join("tests/fixtures/fewshot/draws.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The pool indices lm-eval picked for the first documents of `task` at `shots`, from the vectors.
fn picked(vectors: &Value, task: &str, shots: usize) -> Vec<Vec<usize>> {
    serde_json::from_value(vectors["tasks"][task]["shots"][shots.to_string()].clone()).unwrap()
}

/// A data folder with `copies` (paths in shared/data) and the `written` files (path, contents).
fn data_folder(copies: &[&str], written: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_dir().join("data");
    for (path, contents) in copies
        .iter()
        .map(|p| (p, std::fs::read(shared.join(p)).unwrap()))
        .chain(written.iter().map(|(p, c)| (p, c.clone().into_bytes())))
    {
        let to = dir.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, contents).unwrap();
    }
    dir
}

/// `lines(n, f)`: the `n` lines `f(0)`, `f(1)`, … of a stand-in training split.
fn lines(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(|i| f(i) + "\n").collect()
}

/// Checks that each of the first documents of `task` (read from `data`) is led by the
/// demonstrations `demo(i)` of the pool rows lm-eval picked, and by nothing else.
fn check_draws(task: &str, data: &Path, vectors: &Value, vector: &str, demo: impl Fn(usize) -> String) {
    let zero_shot = load_docs(task, Some(data), None, 0);
    for shots in [5, 10] {
        let docs = load_docs(task, Some(data), None, shots);
        let picked = picked(vectors, vector, shots);
        assert_eq!(picked.len(), 200);
        for (d, drawn) in picked.iter().enumerate() {
            assert_eq!(drawn.len(), shots);
            let demonstrations: String = drawn.iter().map(|&i| demo(i) + "\n\n").collect();
            for (request, alone) in docs[d].requests.iter().zip(&zero_shot[d].requests) {
                let rest = request.context.strip_prefix(&demonstrations);
                assert_eq!(
                    rest,
                    Some(alone.context.as_str()),
                    "{task} document {d} at {shots} shots: lm-eval picked {drawn:?}"
                );
            }
        }
    }
}

/// The size lm-eval's few-shot split of `task` has (the stand-in's size).
fn pool_size(vectors: &Value, task: &str) -> usize {
    vectors["tasks"][task]["fewshot_split_size"].as_u64().unwrap() as usize
}

#[test]
fn hellaswag_leaves_the_document_out_of_one_draw_more_as_lm_eval_does() {
    let v = vectors();
    assert_eq!(v["tasks"]["hellaswag"]["eval_doc_passed"], true);
    // Stand-in training rows: row i is the query "Row: i" with the one ending "x".
    let train = lines(pool_size(&v, "hellaswag"), |i| {
        format!(
            r#"{{"ind": {i}, "activity_label": "Row", "ctx_a": "{i}", "ctx_b": "", "ctx": "{i}", "split": "train", "split_type": "indomain", "label": 0, "endings": ["x"], "source_id": "s"}}"#
        )
    });
    let data = data_folder(&["hellaswag/hellaswag_val.jsonl"], &[("hellaswag/hellaswag_train.jsonl", train)]);
    check_draws("hellaswag", data.path(), &v, "hellaswag", |i| format!("Row: {i} x"));
}

#[test]
fn piqa_leaves_the_document_out_of_one_draw_more_as_lm_eval_does() {
    let v = vectors();
    assert_eq!(v["tasks"]["piqa"]["eval_doc_passed"], true);
    let size = pool_size(&v, "piqa");
    let train = lines(size, |i| format!(r#"{{"goal": "Row {i}", "sol1": "x", "sol2": "y"}}"#));
    let written = [("piqa/train.jsonl", train), ("piqa/train-labels.lst", lines(size, |_| "0".into()))];
    let data = data_folder(&["piqa/valid.jsonl", "piqa/valid-labels.lst"], &written);
    check_draws("piqa", data.path(), &v, "piqa", |i| format!("Question: Row {i}\nAnswer: x"));
}

#[test]
fn winogrande_leaves_the_document_out_of_one_draw_more_as_lm_eval_does() {
    let v = vectors();
    assert_eq!(v["tasks"]["winogrande"]["eval_doc_passed"], true);
    let train = lines(pool_size(&v, "winogrande"), |i| {
        format!(r#"{{"sentence": "Row {i} _ x.", "option1": "a", "option2": "b", "answer": "1"}}"#)
    });
    let validation = "winogrande/winogrande_xl_validation.jsonl";
    let data = data_folder(&[validation], &[("winogrande/winogrande_xl_train.jsonl", train)]);
    check_draws("winogrande", data.path(), &v, "winogrande", |i| format!("Row {i} a x."));
}

#[test]
fn winogrande_drops_training_rows_equal_to_the_document_as_lm_eval_does() {
    // A training split whose rows repeat validation rows 0-11 (0-3 twice): lm-eval dropped
    // 12 drawn rows for equalling their document and drew the pool again twice.
    let v = vectors();
    let fixture = repo_dir().join("tests/fixtures/fewshot/winogrande_xl_train.jsonl");
    let train = std::fs::read_to_string(fixture).unwrap();
    let demos: Vec<String> = train
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let sentence = row["sentence"].as_str().unwrap();
            let (before, after) = sentence.split_once('_').unwrap();
            let option = if row["answer"] == "1" { &row["option1"] } else { &row["option2"] };
            format!("{before}{} {}", option.as_str().unwrap(), after.trim())
        })
        .collect();
    assert_eq!(demos.len(), pool_size(&v, "winogrande_overlap"));
    let validation = "winogrande/winogrande_xl_validation.jsonl";
    let data = data_folder(&[validation], &[("winogrande/winogrande_xl_train.jsonl", train)]);
    check_draws("winogrande", data.path(), &v, "winogrande_overlap", |i| demos[i].clone());
}

#[test]
fn arc_keeps_every_draw_from_its_training_split_as_lm_eval_does() {
    let v = vectors();
    for (task, split) in [("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")] {
        assert_eq!(v["tasks"][task]["eval_doc_passed"], false);
        let train = lines(pool_size(&v, task), |i| {
            format!(
                r#"{{"question": {{"stem": "Row {i}", "choices": [{{"text": "x", "label": "A"}}]}}, "answerKey": "A"}}"#
            )
        });
        let test = format!("arc/{split}-Test.jsonl");
        let data = data_folder(&[&test], &[(&format!("arc/{split}-Train.jsonl"), train)]);
        check_draws(task, data.path(), &v, task, |i| format!("Question: Row {i}\nAnswer: x"));
    }
}

#[test]
fn lambada_keeps_the_document_among_its_own_demonstrations_as_lm_eval_does() {
    let v = vectors();
    assert_eq!(v["tasks"]["lambada_openai"]["eval_doc_passed"], false);
    let data = shared_dir().join("data");
    let text = std::fs::read_to_string(data.join("lambada/lambada_test.jsonl")).unwrap();
    let demos: Vec<String> = text
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            let (context, word) = row["text"].as_str().unwrap().rsplit_once(' ').unwrap();
            format!("{context}  {word}")
        })
        .collect();
    check_draws("lambada_openai", &data, &v, "lambada_openai", |i| demos[i].clone());
    // Documents that lm-eval gave themselves as a demonstration, beyond the first 200.
    let self_draws = v["lambada_self_draws"].as_array().unwrap();
    assert!(!self_draws.is_empty());
    for shots in [5, 10] {
        let docs = load_docs("lambada_openai", Some(&data), None, shots);
        for draw in self_draws.iter().filter(|s| s["shots"] == shots) {
            let d = draw["doc"].as_u64().unwrap() as usize;
            let picked: Vec<usize> = serde_json::from_value(draw["picked"].clone()).unwrap();
            assert!(picked.contains(&d));
            let demonstrations: String = picked.iter().map(|&i| format!("{}\n\n", demos[i])).collect();
            let context = &docs[d].requests[0].context;
            assert_eq!(context, &(demonstrations + &demos[d][..demos[d].rfind("  ").unwrap()]), "document {d}");
        }
    }
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
    let path = numbered_questions(dir.path());
    // CPython: r = random.Random(1234); [r.sample(range(10), 2) for _ in range(3)] == [[7, 1], [0, 1], [9, 0]];
    // one example more than asked is drawn, and document 1 drops itself from its draw.
    let docs = load_docs("multiple_choice", None, Some(&path), 1);
    let contexts: Vec<&str> = docs[..3].iter().map(|d| d.requests[0].context.as_str()).collect();
    assert_eq!(contexts, ["q7 yes 7\n\nq0", "q0 yes 0\n\nq1", "q9 yes 9\n\nq2"]);
}

#[test]
fn mmlu_takes_the_first_dev_examples_after_the_description() {
    let data = shared_dir().join("data");
    let source = Source { data_dir: Some(&data), num_fewshot: 1, ..Default::default() };
    let tasks = Catalog::new(None).unwrap().load("mmlu", &source).unwrap();
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
