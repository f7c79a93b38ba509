//! The preprocessing functions of lm-evaluation-harness's own tasks that evalmesh runs
//! natively in place of their Python (`process_docs: !function utils.process_docs`), found
//! by the task's name and the function's: each adds the fields lm-eval's adds to a
//! document (`datasets.map` keeps the others).

use serde_json::Value;

use super::config::{python_function, TaskDef};
use super::docs::Record;
use crate::tasks::formats::{capitalize, hellaswag_preprocess};
use crate::tasks::TaskError;

/// A native preprocessing function: the task it belongs to, lm-eval's reference, and what it does.
struct Native {
    task: &'static str,
    function: &'static str,
    apply: fn(&mut Record) -> Result<(), String>,
}

const NATIVE: &[Native] = &[Native { task: "hellaswag", function: "utils.process_docs", apply: hellaswag }];

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
    let native = NATIVE
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
