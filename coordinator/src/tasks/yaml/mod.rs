//! lm-evaluation-harness task YAML files, those shipped with evalmesh (the built-in tasks,
//! `coordinator/tasks/`) and a user's (`--include-path DIR`): every `*.yaml` read into task
//! and group definitions ([`config`]) from where it lives ([`files`]), a task's documents
//! read ([`datasets`]) and rendered through its templates ([`docs`], [`native`]), and turned
//! into a [`Task`], each document led by its few-shot demonstrations.

pub mod config;
pub mod datasets;
pub mod docs;
pub mod files;
pub mod native;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use self::config::{until_list, Definition, GenerationKwargs, OutputType, SamplerKind, TaskDef};
use self::datasets::Document;
use self::docs::{read_split, Rendered, Renderer};
use self::files::Origin;
use crate::tasks::catalog::Source;
use crate::tasks::configs::task_config;
use crate::tasks::fewshot::{self, Delimiters, Example, Row, Sampler, Turn};
use crate::tasks::perplexity::word_count;
use crate::tasks::prompt::compose;
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
        Registry::read(files, Origin::Disk)
    }

    /// The task files shipped with evalmesh: the built-in tasks, every one usable.
    pub fn shipped() -> Result<Self, TaskError> {
        let registry = Registry::read(files::shipped_yaml_files(), Origin::Shipped)?;
        for definition in registry.definitions.values() {
            if let Definition::Unusable(u) = definition {
                return Err(TaskError::Settings(u.problem.clone()));
            }
        }
        Ok(registry)
    }

    fn read(files: Vec<PathBuf>, origin: Origin) -> Result<Self, TaskError> {
        let mut registry = Registry::default();
        for file in files {
            let Some(definition) = config::read(&file, origin)? else { continue };
            let name = definition.name().to_string();
            for tag in definition.tags() {
                registry.tags.entry(tag.clone()).or_default().push(name.clone());
            }
            if let Some(earlier) = registry.definitions.insert(name.clone(), definition) {
                return Err(TaskError::Data {
                    path: file,
                    problem: format!("task `{name}` is also defined in {}", earlier.file().display()),
                });
            }
        }
        Ok(registry)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.definitions.contains_key(name) || self.tags.contains_key(name)
    }

    /// The names a user picks from, each with what it is, one a line: the tasks and groups
    /// (`all`: every one; else those no group holds, so that MMLU's subjects are reached
    /// through `mmlu` and its categories), and the tags.
    pub fn summary(&self, all: bool) -> Vec<String> {
        let mut held: Vec<&str> = Vec::new();
        for definition in self.definitions.values().filter(|_| !all) {
            if let Definition::Group(g) = definition {
                for member in &g.tasks {
                    held.push(member);
                    held.extend(self.tags.get(member).into_iter().flatten().map(String::as_str));
                }
            }
        }
        let tasks =
            self.definitions.iter().filter(|(name, _)| !held.contains(&name.as_str())).map(|(name, d)| match d {
                Definition::Task(t) => {
                    let files = t.data_files.get(&t.eval_split).filter(|f| !f.is_empty());
                    let files = files.map_or_else(|| "--data FILE".to_string(), |f| f.join(", "));
                    format!("{name}: {} on {files}", t.output_type.name())
                }
                Definition::Group(g) => format!("{name}: a group of {}", g.tasks.join(", ")),
                Definition::Unusable(u) => format!("{name}: cannot be used: {}", u.problem),
            });
        let tags = self
            .tags
            .iter()
            .filter(|(name, _)| !held.contains(&name.as_str()) && !self.definitions.contains_key(*name))
            .map(|(name, members)| format!("{name}: a tag of {}", members.join(", ")));
        tasks.chain(tags).collect()
    }

    /// The tasks of a task, group or tag name; `source.num_fewshot` (when above 0) overrides
    /// a task's own `num_fewshot`, as lm-eval's `--num_fewshot` does.
    pub fn load(&self, name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
        self.load_nested(name, source, 0)
    }

    fn load_nested(&self, name: &str, source: &Source, depth: usize) -> Result<Vec<Task>, TaskError> {
        if depth > 8 {
            return Err(TaskError::Settings(format!(
                "group `{name}` nests more than 8 deep (does it include itself?)"
            )));
        }
        let unknown = || TaskError::Settings(format!("`{name}` is not a task, group or tag here"));
        match self.definitions.get(name) {
            Some(Definition::Task(def)) => Ok(vec![load_task(def, source)?]),
            Some(Definition::Unusable(u)) => Err(TaskError::Settings(u.problem.clone())),
            Some(Definition::Group(group)) => {
                let mut tasks = Vec::new();
                for member in &group.tasks {
                    if !self.contains(member) {
                        return Err(TaskError::Data {
                            path: group.file.clone(),
                            problem: format!("`task`: `{member}` is not a task, group or tag in the include folder"),
                        });
                    }
                    for mut task in self.load_nested(member, source, depth + 1)? {
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
                    .map(|m| self.load_nested(m, source, depth + 1))
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

fn render_all(renderer: &Renderer<'_>) -> Result<Vec<Rendering>, TaskError> {
    let def = renderer.def;
    (0..renderer.documents.len())
        .map(|i| {
            let choices = match &def.doc_to_choice {
                None => None,
                Some(t) => match renderer.apply("doc_to_choice", t, i, false)? {
                    Rendered::List(items) if items.is_empty() => {
                        return Err(renderer.fail("doc_to_choice", i, "gives no choices"))
                    }
                    Rendered::List(items) => Some(items),
                    _ => return Err(renderer.fail("doc_to_choice", i, "does not give a list")),
                },
            };
            let text = match renderer.apply("doc_to_text", &def.doc_to_text, i, choices.is_some())? {
                Rendered::Text(t) => Text::Plain(t),
                // A multiple-input task (lm-eval's `multiple_input`): the text is the gold
                // index, and the choices are the contexts.
                Rendered::Index(gold) if choices.is_some() => Text::GoldOption(gold),
                _ => return Err(renderer.fail("doc_to_text", i, "gives neither a text nor an option's index")),
            };
            let target = renderer.apply("doc_to_target", &def.doc_to_target, i, choices.is_some())?;
            Ok(Rendering { text, choices, target })
        })
        .collect()
}

/// A rendered document as a few-shot example (and the shape its requests take).
fn example(renderer: &Renderer<'_>, doc: usize, r: Rendering) -> Result<Example, TaskError> {
    let def = renderer.def;
    let fail = |what: String| renderer.fail("doc_to_target", doc, what);
    let target_text = |choices: &Option<Vec<String>>| match (&r.target, choices) {
        (Rendered::Text(t), _) => Ok(t.clone()),
        (Rendered::Index(i), Some(c)) => {
            c.get(*i).cloned().ok_or_else(|| fail(format!("{i} is out of range for {} choices", c.len())))
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
                Rendered::Index(i) => return Err(fail(format!("{i} is out of range for {} choices", choices.len()))),
                Rendered::List(_) => return Err(fail("gives a list, not one answer".into())),
            };
            Example::Choice { text, choices, gold }
        }
        OutputType::Loglikelihood | OutputType::LoglikelihoodRolling | OutputType::GenerateUntil => {
            Example::Greedy { target: target_text(&r.choices)?, text }
        }
    })
}

/// Writes a context around a document's text (`tasks::prompt::compose` with the document's
/// description and demonstrations).
type Context<'a> = dyn Fn(&str) -> Result<String, TaskError> + 'a;

/// A document's requests as lm-eval's `construct_requests` makes them: each text in its
/// `context` (system prompt, description and demonstrations); the target delimiter before
/// each choice of a multiple-choice task, and none before a loglikelihood task's target.
fn into_doc(
    def: &TaskDef,
    id: usize,
    example: Example,
    context: &Context,
    document: Document,
) -> Result<Doc, TaskError> {
    let delimiter = &def.target_delimiter;
    let record = Row::Object(document.record);
    Ok(match (def.output_type, example) {
        (OutputType::LoglikelihoodRolling, Example::Greedy { target, .. }) => {
            // Words and bytes of the target, or of what the task's `process_results` counts.
            let counted = match (&def.process_results, record.as_object()) {
                (Some(function), Some(fields)) => {
                    native::counted_text(&def.name, function, fields).map_err(|what| TaskError::Data {
                        path: def.file.clone(),
                        problem: format!("`process_results` on {}: {function} (native): {what}", document.place),
                    })?
                }
                _ => target.clone(),
            };
            let target_counts = Target::Rolling { words: word_count(&counted), bytes: counted.len() };
            let request = Request { context: String::new(), continuation: target };
            Doc { id, requests: vec![request], target: target_counts, record }
        }
        (OutputType::GenerateUntil, Example::Greedy { text, target }) => {
            let (kwargs, prompt_ids) = match def.generation_from_document {
                true => document_generation(def, &record, &document.place)?,
                false => (def.generation.clone(), None),
            };
            let request = Request { context: context(&text)?, continuation: String::new() };
            let head = request.context.rfind(&text).unwrap_or(0);
            Doc {
                id,
                requests: vec![request],
                target: Target::Generate { reference: target, kwargs, prompt_ids, head },
                record,
            }
        }
        (_, Example::Choice { text, choices, gold }) => {
            let context = context(&text)?;
            let requests = choices
                .iter()
                .map(|c| Request { context: context.clone(), continuation: format!("{delimiter}{c}") })
                .collect();
            Doc { id, requests, target: Target::Choice { gold, choices }, record }
        }
        (_, Example::Partial { contexts, target, gold }) => {
            let requests = contexts
                .iter()
                .map(|c| Ok(Request { context: context(c)?, continuation: format!("{delimiter}{target}") }))
                .collect::<Result<_, TaskError>>()?;
            Doc { id, requests, target: Target::Partial { gold }, record }
        }
        (_, Example::Greedy { text, target }) => {
            // lm-eval's loglikelihood request is `(ctx, doc_to_target)`: no delimiter.
            let request = Request { context: context(&text)?, continuation: target };
            Doc { id, requests: vec![request], target: Target::Greedy, record }
        }
    })
}

/// The task's `generation_kwargs` with the document's own `until`, `max_tokens` and
/// `ignore_eos` in their place, and its `prompt_ids` where it gives them (the generic
/// `generate` task, whose documents give a `prompt`, its `prompt_ids`, or both).
fn document_generation(
    def: &TaskDef,
    record: &Row,
    place: &str,
) -> Result<(GenerationKwargs, Option<Vec<u32>>), TaskError> {
    let mut kwargs = def.generation.clone();
    let fail = |field: &str, what: &str| TaskError::Data {
        path: def.file.clone(),
        problem: format!("{place}: field `{field}` {what}"),
    };
    let Some(fields) = record.as_object() else { return Ok((kwargs, None)) };
    let prompt_ids = match fields.get("prompt_ids") {
        None => None,
        Some(ids) => Some(
            ids.as_array()
                .and_then(|ids| ids.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect())
                .ok_or_else(|| fail("prompt_ids", "must be a list of token ids"))?,
        ),
    };
    if prompt_ids.is_none() && !fields.contains_key("prompt") {
        return Err(fail("prompt", "is missing: give the prompt, or its tokens as `prompt_ids`"));
    }
    if let Some(until) = fields.get("until") {
        kwargs.until = until_list(until).ok_or_else(|| fail("until", "must be a string or a list of strings"))?;
    }
    if let Some(max) = fields.get("max_tokens") {
        kwargs.max_gen_toks = match max.as_u64() {
            Some(n) if n > 0 => n as usize,
            _ => return Err(fail("max_tokens", "must be a whole number of tokens, at least 1")),
        };
    }
    if let Some(ignore) = fields.get("ignore_eos") {
        kwargs.ignore_eos = ignore.as_bool().ok_or_else(|| fail("ignore_eos", "must be true or false"))?;
    }
    Ok((kwargs, prompt_ids))
}

/// A split's documents, each through the task's `process_docs`.
fn documents(
    def: &TaskDef,
    split: &str,
    source: &Source,
    read: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<Document>, TaskError> {
    let mut documents = read_split(def, split, source, read)?;
    if let Some(function) = &def.process_docs {
        for document in &mut documents {
            native::process_doc(&def.name, function, &mut document.record).map_err(|what| TaskError::Data {
                path: def.file.clone(),
                problem: format!("`process_docs` on {}: {function} (native): {what}", document.place),
            })?;
        }
    }
    Ok(documents)
}

/// The documents of a split as examples.
fn examples(renderer: &Renderer<'_>) -> Result<Vec<Example>, TaskError> {
    render_all(renderer)?.into_iter().enumerate().map(|(i, r)| example(renderer, i, r)).collect()
}

fn load_task(def: &TaskDef, source: &Source) -> Result<Task, TaskError> {
    let with_gen_kwargs;
    let def = match def.output_type {
        OutputType::GenerateUntil if !source.gen_kwargs.is_empty() => {
            with_gen_kwargs = gen_kwargs_over(def, source.gen_kwargs)?;
            &with_gen_kwargs
        }
        _ => def,
    };
    let env = docs::environment();
    let mut read = Vec::new();
    let documents = documents(def, &def.eval_split, source, &mut read)?;
    let renderer = Renderer { env: &env, def, documents: &documents };
    let examples = examples(&renderer)?;
    // lm-eval's `resolve_field`: the description is a field of the document or a template.
    let descriptions = (0..documents.len())
        .map(|i| match &def.description {
            d if d.is_empty() => Ok(String::new()),
            d => renderer.resolve("description", i, d),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shots = if source.num_fewshot > 0 { source.num_fewshot } else { def.num_fewshot.unwrap_or(0) };
    let (target, fewshot) = def.fewshot_delimiters.clone();
    let delimiters = Delimiters { target, fewshot };
    let turns = match shots {
        0 => vec![Vec::new(); examples.len()],
        _ => fewshot_turns(def, &env, &documents, shots, source, &mut read)?,
    };
    let docs = examples
        .into_iter()
        .zip(descriptions.into_iter().zip(turns))
        .zip(documents)
        .enumerate()
        .map(|(i, ((example, (description, turns)), document))| {
            let place = document.place.clone();
            let context = |text: &str| {
                compose(&source.prompt, &description, &def.fewshot_delimiter, &turns, &delimiters, text).map_err(|e| {
                    TaskError::Data { path: def.file.clone(), problem: format!("the chat template on {place}: {e}") }
                })
            };
            into_doc(def, i, example, &context, document)
        })
        .collect::<Result<_, _>>()?;
    // The files read, as `dataset_kwargs.data_files` of the results' configs.
    let mut data_files = serde_json::Map::new();
    for (split, path) in read {
        let files = data_files.entry(split).or_insert_with(|| serde_json::json!([]));
        let path = serde_json::Value::from(path.display().to_string());
        if let Some(files) = files.as_array_mut().filter(|f| !f.contains(&path)) {
            files.push(path);
        }
    }
    let config = serde_json::json!({"task": def.config, "data_files": data_files});
    let mut lm_eval_config = task_config(&def.config, &config);
    lm_eval_config.insert("dataset_kwargs".into(), serde_json::json!({"data_files": data_files}));
    Ok(Task {
        name: def.name.clone(),
        docs,
        lm_eval_config,
        config,
        version: def.version,
        num_fewshot: shots,
        metric_list: def.metrics.clone(),
        groups: Vec::new(),
        filters: def.filters.clone(),
        exact_match: def.exact_match.clone(),
        pass_at_1: def.pass_at_1,
        unsafe_code: def.unsafe_code,
        repeats: def.repeats,
    })
}

/// `def` with `--gen_kwargs` laid over its `generation_kwargs`, in its settings and its
/// configuration alike (lm-evaluation-harness's `set_config(key="generation_kwargs",
/// update=True)`).
fn gen_kwargs_over(def: &TaskDef, given: &[(String, serde_json::Value)]) -> Result<TaskDef, TaskError> {
    let mut def = def.clone();
    let pairs = given.iter().map(|(k, v)| (k.as_str(), v));
    def.generation
        .update(pairs)
        .map_err(|(key, what)| TaskError::Settings(format!("--gen_kwargs: `{key}`: {what}")))?;
    if let Some(config) = def.config.as_object_mut() {
        let kwargs = config.entry("generation_kwargs").or_insert_with(|| serde_json::json!({}));
        if let Some(kwargs) = kwargs.as_object_mut() {
            kwargs.extend(given.iter().cloned());
        }
    }
    Ok(def)
}

/// Each document's demonstrations, as lm-eval's sampler picks them from the few-shot split.
fn fewshot_turns(
    def: &TaskDef,
    env: &minijinja::Environment<'static>,
    documents: &[Document],
    shots: usize,
    source: &Source,
    read: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<Vec<Turn>>, TaskError> {
    let refuse = |what: &str| TaskError::Data { path: def.file.clone(), problem: format!("`num_fewshot`: {what}") };
    if def.output_type == OutputType::LoglikelihoodRolling {
        return Err(TaskError::Settings(format!(
            "{} is scored by rolling log-likelihood over whole documents and takes no --num-fewshot",
            def.name
        )));
    }
    // The demonstrations rendered by `fewshot_config`'s own templates where it has them.
    let [text, target, choice] = def.fewshot_templates.clone();
    let fewshot_def = TaskDef {
        doc_to_text: text.unwrap_or_else(|| def.doc_to_text.clone()),
        doc_to_target: target.unwrap_or_else(|| def.doc_to_target.clone()),
        doc_to_choice: choice.or_else(|| def.doc_to_choice.clone()),
        ..def.clone()
    };
    let (split, pool_documents) = match (&def.fewshot_split, &def.fewshot_samples) {
        (Some(split), _) => (split.as_str(), documents_of_fewshot_split(&fewshot_def, split, source, read)?),
        (None, Some(samples)) => {
            let place = |i: usize| format!("fewshot_config.samples item {}", i + 1);
            let samples = samples.iter().enumerate().map(|(i, r)| Document { record: r.clone(), place: place(i) });
            ("fewshot_config.samples", samples.collect())
        }
        (None, None) => return Err(refuse("the task names no split to draw demonstrations from")),
    };
    let pool = examples(&Renderer { env, def: &fewshot_def, documents: &pool_documents })?;
    let rows = |documents: &[Document]| documents.iter().map(|d| Row::Object(d.record.clone())).collect();
    let sampler = match (def.sampler, def.sampler_sees_document) {
        (SamplerKind::FirstN, _) => Sampler::FirstN(pool),
        (SamplerKind::Random, false) => Sampler::random(pool, source.fewshot_seed),
        (SamplerKind::Random, true) => {
            Sampler::excluding(pool, rows(&pool_documents), rows(documents), source.fewshot_seed)
        }
    };
    fewshot::demonstrations(documents.len(), &sampler, shots)
        .map_err(|most| refuse(&format!("{shots} demonstrations, but the split `{split}` allows {most}")))
}

/// The few-shot split's documents; a missing file says that 0-shot needs none.
fn documents_of_fewshot_split(
    def: &TaskDef,
    split: &str,
    source: &Source,
    read: &mut Vec<(String, PathBuf)>,
) -> Result<Vec<Document>, TaskError> {
    documents(def, split, source, read).map_err(|e| match e {
        TaskError::Data { path, problem } if problem.starts_with("`dataset_kwargs.data_files`") => TaskError::Data {
            path,
            problem: format!(
                "{problem}; the few-shot split `{split}` is needed for --num-fewshot (shared/data does not ship the training splits): add its file, or run 0-shot"
            ),
        },
        other => other,
    })
}
