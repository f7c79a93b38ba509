//! A YAML task's documents: its data files found and read ([`super::datasets`]), and its
//! `doc_to_*` entries applied to each as
//! lm-evaluation-harness applies them (a field name, else a Jinja template with its
//! `regex_replace` filter; digits from a template become an index where there are choices).

use std::path::PathBuf;

use minijinja::value::{Value as MjValue, ValueKind};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;

use super::config::{TaskDef, Template};
use super::datasets::{Document, Reading, Record};
use super::files::{self, DataFile, Origin};
use crate::tasks::catalog::Source;
use crate::tasks::TaskError;

/// The documents of `split`, in file order: its data files found (`--data FILE` in place
/// of the evaluated split's, each added to `read` with its split) and read by the task's dataset.
pub fn read_split(
    def: &TaskDef,
    split: &str,
    source: &Source,
    read: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<Document>, TaskError> {
    let written = def.data_files.get(split).ok_or_else(|| TaskError::Data {
        path: def.file.clone(),
        problem: format!("`dataset_kwargs.data_files`: no files for the split `{split}`"),
    })?;
    let files = match source.data_file {
        Some(path) if split == def.eval_split => vec![DataFile { path: path.to_path_buf(), origin: Origin::Disk }],
        _ if written.is_empty() => {
            return Err(TaskError::Settings(format!("task {} needs --data FILE", def.name)));
        }
        _ => written
            .iter()
            .map(|name| files::find(name, &def.file, def.origin, source.data_dir))
            .collect::<Result<_, _>>()
            .map_err(|e| match e {
                // What the files are, so that the user knows where to get them.
                TaskError::Data { path, problem } => TaskError::Data {
                    path,
                    problem: format!("{problem} ({}: {})", def.dataset.path, def.dataset.reads),
                },
                other => other,
            })?,
    };
    let reading = Reading { dataset_name: def.dataset_name.as_deref(), whole_document: def.whole_documents };
    let mut documents = Vec::new();
    for file in &files {
        let found = def.dataset.read(file, &reading)?;
        if found.is_empty() {
            return Err(TaskError::Data { path: file.path.clone(), problem: "no documents in the file".into() });
        }
        documents.extend(found);
        read.push((split.to_string(), file.path.clone()));
    }
    Ok(documents)
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

/// Applies templates to the documents of one split of a task; errors name the task file,
/// the key and where the document was read.
pub struct Renderer<'a> {
    pub env: &'a Environment<'static>,
    pub def: &'a TaskDef,
    pub documents: &'a [Document],
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Renderer<'_> {
    pub fn fail(&self, key: &str, doc: usize, what: impl std::fmt::Display) -> TaskError {
        let place = self.documents.get(doc).map_or_else(|| format!("document {doc}"), |d| d.place.clone());
        TaskError::Data { path: self.def.file.clone(), problem: format!("`{key}` on {place}: {what}") }
    }

    /// A template's error; an undefined name is named, with the fields the document has.
    fn template_error(
        &self,
        key: &str,
        doc: usize,
        error: minijinja::Error,
        names: impl FnOnce() -> Vec<String>,
    ) -> TaskError {
        let record = &self.documents[doc].record;
        let mut missing: Vec<String> = names().into_iter().filter(|n| !record.contains_key(n)).collect();
        missing.sort();
        match (error.kind(), missing.first()) {
            (ErrorKind::UndefinedError, Some(name)) => {
                let fields: Vec<&str> = record.keys().map(String::as_str).collect();
                self.fail(
                    key,
                    doc,
                    format!("undefined value: the document has no field `{name}` (it has {})", fields.join(", ")),
                )
            }
            _ => self.fail(key, doc, error),
        }
    }

    fn render(&self, key: &str, doc: usize, template: &str, record: &Record) -> Result<String, TaskError> {
        self.env.render_str(template, record).map_err(|e| {
            let names = || {
                self.env
                    .template_from_str(template)
                    .map(|t| t.undeclared_variables(false).into_iter().collect())
                    .unwrap_or_default()
            };
            self.template_error(key, doc, e, names)
        })
    }

    /// A text entry (`description`) on one document: a field of it, else a template.
    pub fn resolve(&self, key: &str, doc: usize, text: &str) -> Result<String, TaskError> {
        let record = &self.documents[doc].record;
        match record.get(text) {
            Some(value) => Ok(plain(value)),
            None => self.render(key, doc, text, record),
        }
    }

    /// One `doc_to_*` entry on one document; `choices` says whether the task has choices
    /// (then a template's digits are an index, as lm-eval's `ast.literal_eval` makes them).
    pub fn apply(&self, key: &str, template: &Template, doc: usize, choices: bool) -> Result<Rendered, TaskError> {
        let record = &self.documents[doc].record;
        match template {
            Template::Function(function) => super::native::doc_to(&self.def.name, key, function, record)
                .map_err(|what| self.fail(key, doc, format!("{function} (native): {what}"))),
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
                    let compiled = self.env.compile_expression(expression).map_err(|e| self.fail(key, doc, e))?;
                    let value = compiled.eval(record).map_err(|e| {
                        self.template_error(key, doc, e, || compiled.undeclared_variables(false).into_iter().collect())
                    })?;
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
