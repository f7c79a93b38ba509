//! The functions of lm-evaluation-harness's own tasks that evalmesh runs natively in place
//! of their Python (`process_docs: !function utils.process_docs`, `doc_to_text: !function
//! preprocess_winogrande.doc_to_text`), found by the task's name and the function's. A
//! `process_docs` adds the fields lm-eval's adds to a document (`datasets.map` keeps the
//! others); a `doc_to_*` gives what lm-eval's returns.

use serde_json::Value;

use super::config::{python_function, TaskDef};
use super::docs::{Record, Rendered};
use crate::tasks::formats::{capitalize, hellaswag_preprocess};
use crate::tasks::TaskError;

/// A native `process_docs`: the task it belongs to, lm-eval's reference, and what it does.
struct Processor {
    task: &'static str,
    function: &'static str,
    apply: fn(&mut Record) -> Result<(), String>,
}

const PROCESSORS: &[Processor] = &[Processor { task: "hellaswag", function: "utils.process_docs", apply: hellaswag }];

/// A native `doc_to_*` function: the task it belongs to, lm-eval's reference, and what it gives.
struct DocFunction {
    task: &'static str,
    function: &'static str,
    apply: fn(&Record) -> Result<Rendered, String>,
}

const DOC_FUNCTIONS: &[DocFunction] = &[
    DocFunction { task: "winogrande", function: "preprocess_winogrande.doc_to_text", apply: winogrande_text },
    DocFunction { task: "winogrande", function: "preprocess_winogrande.doc_to_target", apply: winogrande_target },
    DocFunction { task: "winogrande", function: "preprocess_winogrande.doc_to_choice", apply: winogrande_choice },
];

/// `lm_eval/tasks/winogrande/preprocess_winogrande.py`: the gold option's index (a
/// multiple-input task: the options go into the contexts)…
fn winogrande_text(doc: &Record) -> Result<Rendered, String> {
    match field(doc, "answer")? {
        "1" => Ok(Rendered::Index(0)),
        "2" => Ok(Rendered::Index(1)),
        other => Err(format!("answer `{other}` is neither 1 nor 2")),
    }
}

/// …the sentence after the blank, stripped, as the shared continuation…
fn winogrande_target(doc: &Record) -> Result<Rendered, String> {
    let sentence = field(doc, "sentence")?;
    let blank = sentence.find('_').ok_or("the sentence has no blank `_`")?;
    Ok(Rendered::Text(sentence[blank + 1..].trim().to_string()))
}

/// …and the sentence up to the blank with each option, as the contexts.
fn winogrande_choice(doc: &Record) -> Result<Rendered, String> {
    let sentence = field(doc, "sentence")?;
    let blank = sentence.find('_').ok_or("the sentence has no blank `_`")?;
    let options = [field(doc, "option1")?, field(doc, "option2")?];
    Ok(Rendered::List(options.iter().map(|o| format!("{}{o}", &sentence[..blank])).collect()))
}

/// A `doc_to_*` function of the task, run natively on one document.
pub fn doc_to(def: &TaskDef, key: &str, function: &str, doc: usize, record: &Record) -> Result<Rendered, TaskError> {
    let native = DOC_FUNCTIONS
        .iter()
        .find(|n| n.function == function && n.task == def.name)
        .ok_or_else(|| python_function(&def.file, key, function))?;
    (native.apply)(record).map_err(|problem| TaskError::Data {
        path: def.file.clone(),
        problem: format!("`{key}` ({function}, native) on document {doc}: {problem}"),
    })
}

fn field<'a>(doc: &'a Record, name: &str) -> Result<&'a str, String> {
    doc.get(name).and_then(Value::as_str).ok_or_else(|| format!("field `{name}` is missing or not text"))
}

/// `lm_eval/tasks/hellaswag/utils.py`: `query` from the activity label and both contexts,
/// `choices` from the endings, each through `preprocess`, and `gold` from the label.
fn hellaswag(doc: &mut Record) -> Result<(), String> {
    let ctx = format!("{} {}", field(doc, "ctx_a")?, capitalize(field(doc, "ctx_b")?));
    let query = hellaswag_preprocess(&format!("{}: {ctx}", field(doc, "activity_label")?));
    let endings = doc.get("endings").and_then(Value::as_array).ok_or("field `endings` is missing or not a list")?;
    let choices: Vec<Value> = endings
        .iter()
        .map(|e| e.as_str().map(|e| Value::from(hellaswag_preprocess(e))))
        .collect::<Option<_>>()
        .ok_or("an ending is not text")?;
    let gold = match doc.get("label") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or("field `label` is not an integer")?;
    doc.insert("query".into(), Value::from(query));
    doc.insert("choices".into(), Value::from(choices));
    doc.insert("gold".into(), Value::from(gold));
    Ok(())
}

/// Applies the task's `process_docs` to its documents.
pub fn process_docs(def: &TaskDef, docs: &mut [Record]) -> Result<(), TaskError> {
    let Some(function) = &def.process_docs else { return Ok(()) };
    let native = PROCESSORS
        .iter()
        .find(|n| n.function == function && n.task == def.name)
        .ok_or_else(|| python_function(&def.file, "process_docs", function))?;
    for (i, doc) in docs.iter_mut().enumerate() {
        (native.apply)(doc).map_err(|problem| TaskError::Data {
            path: def.file.clone(),
            problem: format!("`process_docs` ({function}, native) on document {i}: {problem}"),
        })?;
    }
    Ok(())
}
