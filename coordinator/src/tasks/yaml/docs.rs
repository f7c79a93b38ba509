//! A YAML task's documents: its data files read as lm-eval's `datasets` builders read them
//! (`json`: JSON lines or an array of objects; `csv`: one object per row, by the header;
//! `text`: one `{"text": line}` per line), and its `doc_to_*` entries applied to each as
//! lm-evaluation-harness applies them (a field name, else a Jinja template with its
//! `regex_replace` filter; digits from a template become an index where there are choices).

use std::path::Path;

use minijinja::value::{Value as MjValue, ValueKind};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::{Map, Value};

use super::config::{TaskDef, Template};
use crate::tasks::{read_text, TaskError};

pub type Record = Map<String, Value>;

/// The documents of `split`, in file order.
pub fn read_split(def: &TaskDef, split: &str) -> Result<Vec<Record>, TaskError> {
    let files = def.data_files.get(split).ok_or_else(|| TaskError::Data {
        path: def.file.clone(),
        problem: format!("`dataset_kwargs.data_files`: no files for the split `{split}`"),
    })?;
    let mut records = Vec::new();
    for file in files {
        if !file.is_file() {
            return Err(TaskError::Data {
                path: def.file.clone(),
                problem: format!("`dataset_kwargs.data_files`: {} does not exist", file.display()),
            });
        }
        records.extend(match def.format.as_str() {
            "json" => json_records(file)?,
            "csv" => csv_records(file)?,
            _ => read_text(file)?.lines().map(|l| Record::from_iter([("text".to_string(), Value::from(l))])).collect(),
        });
    }
    Ok(records)
}

fn bad(path: &Path, problem: String) -> TaskError {
    TaskError::Data { path: path.to_path_buf(), problem }
}

fn json_records(path: &Path) -> Result<Vec<Record>, TaskError> {
    let text = read_text(path)?;
    let object = |v: Value, line: usize| match v {
        Value::Object(map) => Ok(map),
        _ => Err(bad(path, format!("line {line}: each document must be a JSON object"))),
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| bad(path, format!("not a JSON array: {e}")))?;
        return items.into_iter().map(|v| object(v, 1)).collect();
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| object(serde_json::from_str(l).map_err(|e| bad(path, format!("line {}: {e}", i + 1)))?, i + 1))
        .collect()
}

fn csv_records(path: &Path) -> Result<Vec<Record>, TaskError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(path, e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(path, e.to_string()))?.clone();
    reader
        .records()
        .map(|row| {
            let row = row.map_err(|e| bad(path, e.to_string()))?;
            Ok(headers.iter().zip(row.iter()).map(|(h, v)| (h.to_string(), Value::from(v))).collect())
        })
        .collect()
}

/// Python's methods on values that lm-eval's templates call (Jinja runs them in Python):
/// `list.index(x)` here, the string and dict ones through minijinja-contrib's `pycompat`.
fn python_method(state: &State, value: &MjValue, method: &str, args: &[MjValue]) -> Result<MjValue, minijinja::Error> {
    match (method, value.kind(), args) {
        ("index", ValueKind::Seq, [wanted]) => {
            value.try_iter()?.position(|item| &item == wanted).map(MjValue::from).ok_or_else(|| {
                minijinja::Error::new(ErrorKind::InvalidOperation, format!("{wanted} is not in the list"))
            })
        }
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

/// lm-eval's Jinja environment: strict about undefined names, trailing newlines kept,
/// its `regex_replace(pattern, replacement)` filter, and Python's methods.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_unknown_method_callback(python_method);
    env.add_filter("regex_replace", |value: String, pattern: String, replacement: String| {
        regex::Regex::new(&pattern)
            .map(|re| re.replace_all(&value, replacement.replace("\\\\", "$").as_str()).into_owned())
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env
}

/// A rendered `doc_to_*` value.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    Text(String),
    Index(usize),
    List(Vec<String>),
}

/// Applies templates to the documents of one task; errors name the task file and key.
pub struct Renderer<'a> {
    pub env: Environment<'static>,
    pub def: &'a TaskDef,
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Renderer<'_> {
    fn fail(&self, key: &str, doc: usize, what: impl std::fmt::Display) -> TaskError {
        TaskError::Data { path: self.def.file.clone(), problem: format!("`{key}` on document {doc}: {what}") }
    }

    fn render(&self, key: &str, doc: usize, template: &str, record: &Record) -> Result<String, TaskError> {
        self.env.render_str(template, record).map_err(|e| self.fail(key, doc, e))
    }

    /// One `doc_to_*` entry on one document; `choices` says whether the task has choices
    /// (then a template's digits are an index, as lm-eval's `ast.literal_eval` makes them).
    pub fn apply(
        &self,
        key: &str,
        template: &Template,
        doc: usize,
        record: &Record,
        choices: bool,
    ) -> Result<Rendered, TaskError> {
        match template {
            Template::Function(function) => super::native::doc_to(self.def, key, function, doc, record),
            Template::Index(i) => {
                usize::try_from(*i).map(Rendered::Index).map_err(|_| self.fail(key, doc, "a negative index"))
            }
            Template::List(items) => {
                Ok(Rendered::List(items.iter().map(|t| self.render(key, doc, t, record)).collect::<Result<_, _>>()?))
            }
            Template::Text(field) if record.contains_key(field) => Ok(match &record[field] {
                Value::Number(n) if n.is_u64() && choices => Rendered::Index(n.as_u64().unwrap_or(0) as usize),
                Value::Array(items) => Rendered::List(items.iter().map(plain).collect()),
                other => Rendered::Text(plain(other)),
            }),
            Template::Text(text) => {
                let expression = text.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}"));
                if let Some(expression) = expression.filter(|e| !e.contains("{{") && !e.contains("}}")) {
                    let value = self.env.compile_expression(expression).and_then(|e| e.eval(record));
                    let value = value.map_err(|e| self.fail(key, doc, e))?;
                    if let Ok(items) = value.try_iter() {
                        if value.kind() == ValueKind::Seq {
                            return Ok(Rendered::List(
                                items.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect(),
                            ));
                        }
                    }
                }
                let rendered = self.render(key, doc, text, record)?;
                match rendered.trim().parse::<usize>() {
                    Ok(i) if choices && rendered.chars().all(|c| c.is_ascii_digit()) => Ok(Rendered::Index(i)),
                    _ => Ok(Rendered::Text(rendered)),
                }
            }
        }
    }
}
