//! lm-evaluation-harness task YAML files (`--include-path DIR`): every `*.yaml` under the
//! folder read into task and group definitions ([`config`]), a task's documents read and
//! rendered through its templates ([`docs`]), and turned into the same [`Task`] a
//! built-in task is, each document led by its few-shot demonstrations.

pub mod config;
pub mod docs;
pub mod native;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use self::config::{Definition, OutputType, SamplerKind, TaskDef};
use self::docs::{read_split, Record, Rendered, Renderer};
use crate::tasks::fewshot::{self, Delimiters, EvalDoc, Example, Row, Sampler};
use crate::tasks::formats::rolling_doc;
use crate::tasks::{Doc, Group, Request, Target, Task, TaskError};

/// The task and group definitions of an include folder, by name, and the tasks of each tag.
#[derive(Debug, Default)]
pub struct Registry {
    definitions: BTreeMap<String, Definition>,
    tags: BTreeMap<String, Vec<String>>,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TaskError> {
    let entries = std::fs::read_dir(dir).map_err(|error| TaskError::Io { path: dir.to_path_buf(), error })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

impl Registry {
    /// Reads every task and group file under `dir`.
    pub fn scan(dir: &Path) -> Result<Self, TaskError> {
        if !dir.is_dir() {
            return Err(TaskError::Settings(format!("--include-path {}: not a folder", dir.display())));
        }
        let mut files = Vec::new();
        yaml_files(dir, &mut files)?;
        let mut registry = Registry::default();
        for file in files {
            let Some(definition) = config::read(&file)? else { continue };
            let name = match &definition {
                Definition::Task(t) => {
                    for tag in &t.tags {
                        registry.tags.entry(tag.clone()).or_default().push(t.name.clone());
                    }
                    t.name.clone()
                }
                Definition::Group(g) => g.name.clone(),
            };
            if let Some(earlier) = registry.definitions.insert(name.clone(), definition) {
                let earlier = match earlier {
                    Definition::Task(t) => t.file,
                    Definition::Group(g) => g.file,
                };
                return Err(TaskError::Data {
                    path: file,
                    problem: format!("task `{name}` is also defined in {}", earlier.display()),
                });
            }
        }
        Ok(registry)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.definitions.contains_key(name) || self.tags.contains_key(name)
    }

    /// The names it defines (tasks, groups and tags), separated by commas.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.definitions.keys().chain(self.tags.keys()).map(String::as_str).collect();
        names.join(", ")
    }

    /// The tasks of a task, group or tag name; `cli_fewshot` (when above 0) overrides a
    /// task's own `num_fewshot`, as lm-eval's `--num_fewshot` does.
    pub fn load(&self, name: &str, cli_fewshot: usize) -> Result<Vec<Task>, TaskError> {
        self.load_nested(name, cli_fewshot, 0)
    }

    fn load_nested(&self, name: &str, cli_fewshot: usize, depth: usize) -> Result<Vec<Task>, TaskError> {
        if depth > 8 {
            return Err(TaskError::Settings(format!(
                "group `{name}` nests more than 8 deep (does it include itself?)"
            )));
        }
        let unknown = || TaskError::Settings(format!("`{name}` is not a task, group or tag of --include-path"));
        match self.definitions.get(name) {
            Some(Definition::Task(def)) => Ok(vec![load_task(def, cli_fewshot)?]),
            Some(Definition::Group(group)) => {
                let mut tasks = Vec::new();
                for member in &group.tasks {
                    if !self.contains(member) {
                        return Err(TaskError::Data {
                            path: group.file.clone(),
                            problem: format!("`task`: `{member}` is not a task, group or tag in the include folder"),
                        });
                    }
                    for mut task in self.load_nested(member, cli_fewshot, depth + 1)? {
                        task.groups.push(Group { name: group.name.clone(), alias: group.alias.clone() });
                        tasks.push(task);
                    }
                }
                Ok(tasks)
            }
            None => {
                let members = self.tags.get(name).ok_or_else(unknown)?;
                members
                    .iter()
                    .map(|m| self.load_nested(m, cli_fewshot, depth + 1))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|t| t.concat())
            }
        }
    }
}

/// What `doc_to_text` gave: the context, or (a multiple-input task) the gold option.
enum Text {
    Plain(String),
    GoldOption(usize),
}

/// A document rendered: its text, choices and target.
struct Rendering {
    text: Text,
    choices: Option<Vec<String>>,
    target: Rendered,
}

fn render_all(def: &TaskDef, renderer: &Renderer<'_>, records: &[Record]) -> Result<Vec<Rendering>, TaskError> {
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let choices = match &def.doc_to_choice {
                None => None,
                Some(t) => match renderer.apply("doc_to_choice", t, i, record, false)? {
                    Rendered::List(items) => Some(items),
                    _ => {
                        return Err(TaskError::Data {
                            path: def.file.clone(),
                            problem: format!("`doc_to_choice` on document {i}: does not give a list"),
                        })
                    }
                },
            };
            let text = match renderer.apply("doc_to_text", &def.doc_to_text, i, record, choices.is_some())? {
                Rendered::Text(t) => Text::Plain(t),
                // A multiple-input task (lm-eval's `multiple_input`): the text is the gold
                // index, and the choices are the contexts.
                Rendered::Index(gold) if choices.is_some() => Text::GoldOption(gold),
                _ => {
                    return Err(TaskError::Data {
                        path: def.file.clone(),
                        problem: format!("`doc_to_text` on document {i}: gives neither a text nor an option's index"),
                    })
                }
            };
            let target = renderer.apply("doc_to_target", &def.doc_to_target, i, record, choices.is_some())?;
            Ok(Rendering { text, choices, target })
        })
        .collect()
}

/// A rendered document as a few-shot example (and the shape its requests take).
fn example(def: &TaskDef, doc: usize, r: Rendering) -> Result<Example, TaskError> {
    let fail = |what: String| TaskError::Data {
        path: def.file.clone(),
        problem: format!("`doc_to_target` on document {doc}: {what}"),
    };
    let target_text = |choices: &Option<Vec<String>>| match (&r.target, choices) {
        (Rendered::Text(t), _) => Ok(t.clone()),
        (Rendered::Index(i), Some(c)) => {
            c.get(*i).cloned().ok_or_else(|| fail(format!("index {i} of {} choices", c.len())))
        }
        _ => Err(fail("does not give a target text".into())),
    };
    let text = match r.text {
        Text::Plain(text) => text,
        Text::GoldOption(gold) => {
            let contexts = r.choices.clone().unwrap_or_default();
            if def.output_type != OutputType::MultipleChoice || gold >= contexts.len() {
                return Err(fail(format!(
                    "option {gold} of {} in a multiple-input {:?} task",
                    contexts.len(),
                    def.output_type
                )));
            }
            return Ok(Example::Partial { target: target_text(&None)?, contexts, gold });
        }
    };
    Ok(match def.output_type {
        OutputType::MultipleChoice => {
            let choices = r.choices.clone().unwrap_or_default();
            let gold = match &r.target {
                Rendered::Index(i) if *i < choices.len() => *i,
                Rendered::Text(t) => choices
                    .iter()
                    .position(|c| c == t)
                    .ok_or_else(|| fail(format!("`{t}` is not one of the choices")))?,
                Rendered::Index(i) => return Err(fail(format!("index {i} of {} choices", choices.len()))),
                Rendered::List(_) => return Err(fail("gives a list, not one answer".into())),
            };
            Example::Choice { text, choices, gold }
        }
        OutputType::Loglikelihood | OutputType::LoglikelihoodRolling => {
            Example::Greedy { target: target_text(&r.choices)?, text }
        }
    })
}

/// A document's requests as lm-eval's `construct_requests` makes them: `prefix` (description
/// and demonstrations) before its text; the target delimiter before each choice of a
/// multiple-choice task, and none before a loglikelihood task's target.
fn into_doc(def: &TaskDef, id: usize, example: Example, prefix: &str, record: Record) -> Doc {
    let delimiter = &def.target_delimiter;
    let record = Row::Object(record);
    match (def.output_type, example) {
        (OutputType::LoglikelihoodRolling, Example::Greedy { target, .. }) => {
            rolling_doc(id, &target, target.clone(), record)
        }
        (_, Example::Choice { text, choices, gold }) => {
            let context = format!("{prefix}{text}");
            let requests = choices
                .iter()
                .map(|c| Request { context: context.clone(), continuation: format!("{delimiter}{c}") })
                .collect();
            Doc { id, requests, target: Target::Choice { gold, choices }, record }
        }
        (_, Example::Partial { contexts, target, gold }) => {
            let requests = contexts
                .iter()
                .map(|c| Request { context: format!("{prefix}{c}"), continuation: format!("{delimiter}{target}") })
                .collect();
            Doc { id, requests, target: Target::Partial { gold }, record }
        }
        (_, Example::Greedy { text, target }) => {
            // lm-eval's loglikelihood request is `(ctx, doc_to_target)`: no delimiter.
            let request = Request { context: format!("{prefix}{text}"), continuation: target };
            Doc { id, requests: vec![request], target: Target::Greedy, record }
        }
    }
}

fn load_task(def: &TaskDef, cli_fewshot: usize) -> Result<Task, TaskError> {
    let renderer = Renderer { env: docs::environment(), def };
    let mut records = read_split(def, &def.eval_split)?;
    native::process_docs(def, &mut records)?;
    let examples = render_all(def, &renderer, &records)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| example(def, i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let shots = if cli_fewshot > 0 { cli_fewshot } else { def.num_fewshot.unwrap_or(0) };
    let prefixes = match shots {
        0 => vec![String::new(); examples.len()],
        _ => fewshot_prefixes(def, &renderer, &records, shots)?,
    };
    let docs = examples
        .into_iter()
        .zip(prefixes)
        .zip(records)
        .enumerate()
        .map(|(i, ((example, prefix), record))| {
            into_doc(def, i, example, &format!("{}{prefix}", def.description), record)
        })
        .collect();
    // The YAML is lm-evaluation-harness's own `TaskConfig`.
    let lm_eval_config = def.config.as_object().cloned().unwrap_or_default();
    Ok(Task {
        name: def.name.clone(),
        docs,
        lm_eval_config,
        config: def.config.clone(),
        version: def.version,
        num_fewshot: shots,
        groups: Vec::new(),
    })
}

/// Each document's demonstrations, as lm-eval's sampler picks them from the few-shot split.
fn fewshot_prefixes(
    def: &TaskDef,
    renderer: &Renderer<'_>,
    documents: &[Record],
    shots: usize,
) -> Result<Vec<String>, TaskError> {
    let refuse = |what: &str| TaskError::Data { path: def.file.clone(), problem: format!("`num_fewshot`: {what}") };
    if def.output_type == OutputType::LoglikelihoodRolling {
        return Err(refuse("rolling log-likelihood tasks take no demonstrations"));
    }
    let split =
        def.fewshot_split.as_deref().ok_or_else(|| refuse("the task names no split to draw demonstrations from"))?;
    let mut records = read_split(def, split)?;
    native::process_docs(def, &mut records)?;
    let pool = render_all(def, renderer, &records)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| example(def, i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = |records: &[Record]| records.iter().map(|r| Row::Object(r.clone())).collect();
    let sampler = match (def.sampler, def.sampler_sees_document) {
        (SamplerKind::FirstN, _) => Sampler::FirstN(pool),
        (SamplerKind::Random, false) => Sampler::random(pool),
        (SamplerKind::Random, true) => Sampler::Random {
            pool,
            eval_doc: EvalDoc::Excluded { pool_rows: rows(&records), doc_rows: rows(documents) },
        },
    };
    let delimiters = Delimiters { target: def.target_delimiter.clone(), fewshot: def.fewshot_delimiter.clone() };
    fewshot::contexts(documents.len(), &sampler, shots, &delimiters)
        .map_err(|most| refuse(&format!("{shots} demonstrations, but the split `{split}` allows {most}")))
}
