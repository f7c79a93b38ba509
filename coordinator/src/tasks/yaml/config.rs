//! lm-evaluation-harness task YAML files read into definitions: a task ([`TaskDef`]: its
//! data files and splits, its templates, delimiters, few-shot settings, output type and
//! metrics) or a group ([`GroupDef`]: a name and its member tasks), each from one file
//! after its `include` chain is merged; or, for a named file with a mistake, the mistake
//! ([`Unusable`]), reported when the name is asked for. Every error names the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::datasets::{self, Dataset};
use super::files::Origin;
use super::native;
use crate::tasks::filters::{compile, ExactMatch, FilterChain, FilterStep};
use crate::tasks::TaskError;

/// A `doc_to_*` entry: a field name or a Jinja template, a literal index, a list of either,
/// or a `!function` of lm-eval's own tasks that evalmesh runs natively.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Text(String),
    Index(i64),
    List(Vec<String>),
    Function(String),
}

/// What a task's documents are scored for (`output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    MultipleChoice,
    Loglikelihood,
    LoglikelihoodRolling,
    GenerateUntil,
}

impl OutputType {
    /// lm-eval's name for it.
    pub fn name(self) -> &'static str {
        match self {
            OutputType::MultipleChoice => "multiple_choice",
            OutputType::Loglikelihood => "loglikelihood",
            OutputType::LoglikelihoodRolling => "loglikelihood_rolling",
            OutputType::GenerateUntil => "generate_until",
        }
    }
}

/// Where the demonstrations come from (`fewshot_config.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// `default`: drawn with `random.Random(1234)` per document.
    Random,
    /// `first_n`: the first examples of the split.
    FirstN,
}

/// One task file.
#[derive(Debug, Clone)]
pub struct TaskDef {
    pub file: PathBuf,
    pub origin: Origin,
    pub name: String,
    pub tags: Vec<String>,
    /// The data files of each split as written, by split name (found by `files::find`).
    pub data_files: BTreeMap<String, Vec<String>>,
    /// `dataset_path`.
    pub dataset: &'static Dataset,
    pub dataset_name: Option<String>,
    /// `dataset_kwargs.sample_by: document` (the `text` dataset).
    pub whole_documents: bool,
    pub eval_split: String,
    /// Where demonstrations come from: `fewshot_config.split`, `fewshot_split`, else the
    /// training, validation or test split (lm-eval's `fewshot_docs`)…
    pub fewshot_split: Option<String>,
    /// …or, with no split named, `fewshot_config.samples`: the demonstrations themselves.
    pub fewshot_samples: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    /// `fewshot_config`'s own `doc_to_text`, `doc_to_target`, `doc_to_choice`, which render
    /// the demonstrations in place of the task's.
    pub fewshot_templates: [Option<Template>; 3],
    /// `fewshot_config`'s `target_delimiter` and `fewshot_delimiter`, else the task's.
    pub fewshot_delimiters: (String, String),
    /// Whether lm-eval hands each document to its sampler to leave out of the draw: when the
    /// YAML's `fewshot_split` equals its `test_split`, both unset included.
    pub sampler_sees_document: bool,
    pub doc_to_text: Template,
    pub doc_to_target: Template,
    pub doc_to_choice: Option<Template>,
    pub target_delimiter: String,
    /// The task's own `fewshot_delimiter` (the system prompt's join, as lm-eval's).
    pub fewshot_delimiter: String,
    pub description: String,
    pub num_fewshot: Option<usize>,
    pub sampler: SamplerKind,
    pub output_type: OutputType,
    pub metrics: Vec<String>,
    /// A generate_until task's `generation_kwargs`.
    pub generation: GenerationKwargs,
    /// A generate_until task's `filter_list` (lm-eval's `none` chain when absent).
    pub filters: Vec<FilterChain>,
    /// The options of its `exact_match` metric.
    pub exact_match: ExactMatch,
    /// The `metric_list` entry is scored by running code (HumanEval's `pass_at_k`, k = 1).
    pub pass_at_1: bool,
    /// `unsafe_code`: the task runs the model's output as code.
    pub unsafe_code: bool,
    /// `repeats`: generations per document (each drawn with its own seed when sampling).
    pub repeats: usize,
    /// `metadata.evalmesh.generation_kwargs_from_document`: each document's own `until`,
    /// `max_tokens` and `ignore_eos` fields replace the task's (the generic `generate` task).
    pub generation_from_document: bool,
    pub version: f64,
    /// `process_docs: !function NAME`: a preprocessing function of lm-eval's own tasks that
    /// evalmesh implements natively (`native`).
    pub process_docs: Option<String>,
    /// `process_results: !function NAME` of a rolling task, run natively.
    pub process_results: Option<String>,
    /// The whole merged configuration, for the results' `configs`.
    pub config: serde_json::Value,
}

/// One group file: a name and its members (task or tag names), in order.
#[derive(Debug, Clone)]
pub struct GroupDef {
    pub file: PathBuf,
    pub name: String,
    /// `group_alias`, else the name.
    pub alias: String,
    pub tasks: Vec<String>,
}

/// A task or group file that names itself but cannot be used, and why. As in
/// lm-evaluation-harness, whose task index reads every file but builds only the tasks asked
/// for, it stops only a run that asks for its name, or for a group or tag that holds it.
#[derive(Debug, Clone)]
pub struct Unusable {
    pub file: PathBuf,
    pub name: String,
    /// Its `tag` names, where they read as names.
    pub tags: Vec<String>,
    /// The error, naming the file and the key.
    pub problem: String,
}

/// A parsed file.
#[derive(Debug, Clone)]
pub enum Definition {
    Task(Box<TaskDef>),
    Group(GroupDef),
    Unusable(Unusable),
}

impl Definition {
    pub fn name(&self) -> &str {
        match self {
            Definition::Task(t) => &t.name,
            Definition::Group(g) => &g.name,
            Definition::Unusable(u) => &u.name,
        }
    }

    pub fn file(&self) -> &Path {
        match self {
            Definition::Task(t) => &t.file,
            Definition::Group(g) => &g.file,
            Definition::Unusable(u) => &u.file,
        }
    }

    /// The tags it joins.
    pub fn tags(&self) -> &[String] {
        match self {
            Definition::Task(t) => &t.tags,
            Definition::Group(_) => &[],
            Definition::Unusable(u) => &u.tags,
        }
    }
}

/// The metrics evalmesh computes for lm-eval's output types.
pub const KNOWN_METRICS: &[&str] =
    &["acc", "acc_norm", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "exact_match"];

/// A generate_until task's `generation_kwargs`, with lm-evaluation-harness's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationKwargs {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// evalmesh's (llama.cpp's `--ignore-eos`): generation goes on past the end-of-text token.
    pub ignore_eos: bool,
}

impl Default for GenerationKwargs {
    fn default() -> Self {
        GenerationKwargs {
            until: Vec::new(),
            max_gen_toks: 256,
            do_sample: false,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            ignore_eos: false,
        }
    }
}

/// `until` as lm-eval takes it: a string or a list of strings.
pub fn until_list(value: &serde_json::Value) -> Option<Vec<String>> {
    match value {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

impl GenerationKwargs {
    /// Sets the keys given, as lm-evaluation-harness's `generation_kwargs` (a task file's, or
    /// `--gen_kwargs` over them); keys it does not use here are kept in the results' configs
    /// only. An error gives the key and what its value must be.
    pub fn update<'a>(
        &mut self,
        given: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    ) -> Result<(), (String, &'static str)> {
        for (key, value) in given {
            let bad = |what: &'static str| (key.to_string(), what);
            let flag = || value.as_bool().ok_or_else(|| bad("must be true or false"));
            match key {
                "until" => {
                    self.until = until_list(value).ok_or_else(|| bad("must be a string or a list of strings"))?
                }
                "max_gen_toks" => {
                    self.max_gen_toks = match value.as_u64() {
                        Some(n) if n > 0 => n as usize,
                        _ => return Err(bad("must be a whole number of tokens, at least 1")),
                    }
                }
                "do_sample" => self.do_sample = flag()?,
                "temperature" => self.temperature = value.as_f64().ok_or_else(|| bad("must be a number"))?,
                "top_p" => self.top_p = value.as_f64().ok_or_else(|| bad("must be a number"))?,
                "top_k" => self.top_k = value.as_u64().ok_or_else(|| bad("must be a whole number"))? as usize,
                "ignore_eos" => self.ignore_eos = flag()?,
                _ => {}
            }
        }
        if self.do_sample && self.temperature <= 0.0 {
            self.do_sample = false;
        }
        Ok(())
    }
}

/// Reads `generation_kwargs`; every error names the key.
fn generation_kwargs(map: &Mapping, file: &Path) -> Result<GenerationKwargs, TaskError> {
    let mut kwargs = GenerationKwargs::default();
    let Some(given) = map.get("generation_kwargs") else { return Ok(kwargs) };
    let given = given.as_mapping().ok_or_else(|| problem(file, "generation_kwargs", "must be a mapping"))?;
    let given: Vec<(&str, serde_json::Value)> =
        given.iter().map(|(k, v)| (k.as_str().unwrap_or("?"), to_json(v))).collect();
    let pairs = given.iter().map(|(k, v)| (*k, v));
    kwargs.update(pairs).map_err(|(key, what)| problem(file, &format!("generation_kwargs.{key}"), what))?;
    Ok(kwargs)
}

/// Reads `metric_list`'s `exact_match` options.
fn exact_match(map: &Mapping, file: &Path) -> Result<ExactMatch, TaskError> {
    let mut options = ExactMatch::default();
    let entries = map.get("metric_list").and_then(Value::as_sequence).into_iter().flatten();
    for entry in entries.filter(|e| e.get("metric").and_then(Value::as_str) == Some("exact_match")) {
        let flag = |key: &str| entry.get(key).and_then(Value::as_bool).unwrap_or(false);
        options.ignore_case = flag("ignore_case");
        options.ignore_punctuation = flag("ignore_punctuation");
        if let Some(list) = entry.get("regexes_to_ignore").and_then(Value::as_sequence) {
            for pattern in list {
                let key = "metric_list.regexes_to_ignore";
                let pattern = pattern.as_str().ok_or_else(|| problem(file, key, "must list regular expressions"))?;
                let regex = compile(pattern).map_err(|e| problem(file, key, e))?;
                options.regexes_to_ignore.push(regex);
            }
        }
    }
    Ok(options)
}

fn problem(file: &Path, key: &str, what: impl std::fmt::Display) -> TaskError {
    TaskError::Data { path: file.to_path_buf(), problem: format!("`{key}`: {what}") }
}

/// Reads a YAML file's mapping, with its `include` (a file beside it) merged underneath.
fn mapping(file: &Path, origin: Origin, depth: usize) -> Result<Mapping, TaskError> {
    let text = origin.read(file)?;
    let value: Value = serde_norway::from_str(&text)
        .map_err(|e| TaskError::Data { path: file.to_path_buf(), problem: format!("not valid YAML: {e}") })?;
    let Value::Mapping(mut map) = value else {
        return Err(TaskError::Data { path: file.to_path_buf(), problem: "the top level must be a mapping".into() });
    };
    let Some(include) = map.remove("include") else { return Ok(map) };
    let name = include.as_str().ok_or_else(|| problem(file, "include", "must be a file name"))?;
    if depth > 8 {
        return Err(problem(file, "include", "includes nest more than 8 deep"));
    }
    let base_file = file.parent().unwrap_or(Path::new(".")).join(name);
    if !origin.is_file(&base_file) {
        return Err(problem(file, "include", format!("{} does not exist", base_file.display())));
    }
    let mut base = mapping(&base_file, origin, depth + 1)?;
    base.extend(map);
    Ok(base)
}

/// The error for a `!function` reference evalmesh has no native version of.
pub fn python_function(file: &Path, key: &str, name: &str) -> TaskError {
    problem(
        file,
        key,
        format!("`!function {name}` is Python, which evalmesh does not run; write it as a field name, a Jinja template or a list"),
    )
}

/// The name of a `!function` reference, which evalmesh cannot run.
fn function_error(file: &Path, key: &str, value: &Value) -> Option<TaskError> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "!function" => {
            Some(python_function(file, key, tagged.value.as_str().unwrap_or("?")))
        }
        Value::Tagged(tagged) => Some(problem(file, key, format!("unknown YAML tag {}", tagged.tag))),
        _ => None,
    }
}

fn text(map: &Mapping, file: &Path, key: &str) -> Result<Option<String>, TaskError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(function_error(file, key, v).unwrap_or_else(|| problem(file, key, "must be a string"))),
    }
}

/// A `doc_to_*` entry; a `!function` must be one evalmesh runs natively for `task`.
fn template(map: &Mapping, file: &Path, task: &str, key: &str) -> Result<Option<Template>, TaskError> {
    Ok(Some(match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => Template::Text(s.clone()),
        Some(Value::Number(n)) => Template::Index(n.as_i64().ok_or_else(|| problem(file, key, "must be an integer"))?),
        Some(Value::Sequence(items)) => Template::List(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(problem(file, key, "a list must hold strings")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Value::Tagged(tagged)) if tagged.tag == "!function" => {
            Template::Function(native_function(file, task, key, &tagged.value)?)
        }
        Some(v) => {
            return Err(function_error(file, key, v)
                .unwrap_or_else(|| problem(file, key, "must be a field name, a template or a list")))
        }
    }))
}

/// The reference of a `!function` that evalmesh runs natively for `task` under `key`.
fn native_function(file: &Path, task: &str, key: &str, reference: &Value) -> Result<String, TaskError> {
    let name = reference.as_str().ok_or_else(|| problem(file, key, "names no function"))?;
    if native::known(task, key, name) {
        Ok(name.to_string())
    } else {
        Err(python_function(file, key, name))
    }
}

/// An optional `!function` entry (`process_docs`, `process_results`).
fn function(map: &Mapping, file: &Path, task: &str, key: &str) -> Result<Option<String>, TaskError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Tagged(tagged)) if tagged.tag == "!function" => {
            native_function(file, task, key, &tagged.value).map(Some)
        }
        Some(v) => {
            Err(function_error(file, key, v).unwrap_or_else(|| problem(file, key, "must be a !function reference")))
        }
    }
}

fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Tagged(tagged) => serde_json::json!(format!("{} {}", tagged.tag, tagged.value.as_str().unwrap_or("?"))),
        Value::Mapping(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}")), to_json(v)))
                .collect(),
        ),
        Value::Sequence(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
    }
}

/// The data files of `dataset_kwargs.data_files` as written: a path, a list, or a mapping
/// from split to either (a path alone is the `train` split, as in `datasets`).
fn data_files(map: &Mapping, file: &Path) -> Result<BTreeMap<String, Vec<String>>, TaskError> {
    let key = "dataset_kwargs.data_files";
    let files = map
        .get("dataset_kwargs")
        .and_then(|k| k.get("data_files"))
        .ok_or_else(|| problem(file, key, "is missing: evalmesh reads local files only"))?;
    let names = |v: &Value| -> Result<Vec<String>, TaskError> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| problem(file, key, "must list paths")))
                .collect(),
            _ => Err(problem(file, key, "must be a path, a list of paths or a mapping of splits")),
        }
    };
    Ok(match files {
        Value::Mapping(splits) => splits
            .iter()
            .map(|(split, v)| Ok((split.as_str().unwrap_or("?").to_string(), names(v)?)))
            .collect::<Result<_, TaskError>>()?,
        other => BTreeMap::from([("train".to_string(), names(other)?)]),
    })
}

fn task_list(map: &Mapping, file: &Path) -> Result<Vec<String>, TaskError> {
    let Some(Value::Sequence(items)) = map.get("task") else {
        return Err(problem(file, "task", "a group lists its tasks"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Mapping(m) => m
                .get("task")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| problem(file, "task", "each entry needs a task name")),
            _ => Err(problem(file, "task", "entries must be task names")),
        })
        .collect()
}

/// Reads `filter_list`: named chains of lm-eval's filters. On log-likelihood responses
/// only `take_first` means anything (lm-eval's default `none` chain is one); the others
/// work on generated text.
fn filter_list(map: &Mapping, file: &Path, task: &str, generative: bool) -> Result<Vec<FilterChain>, TaskError> {
    let key = "filter_list";
    let Some(list) = map.get(key) else { return Ok(vec![FilterChain::none()]) };
    let chains = list.as_sequence().ok_or_else(|| problem(file, key, "must be a list of named filter chains"))?;
    let mut out = Vec::new();
    for chain in chains {
        let steps = chain
            .get("filter")
            .and_then(Value::as_sequence)
            .ok_or_else(|| problem(file, key, "each entry needs `name` and a `filter` list"))?;
        let name = chain.get("name").and_then(Value::as_str).unwrap_or("none").to_string();
        let mut filters = Vec::new();
        for step in steps {
            let function = step.get("function").and_then(Value::as_str);
            filters.push(match function {
                Some("take_first") => FilterStep::TakeFirst,
                Some(other) if !generative => {
                    return Err(problem(file, key, format!("`{other}` filters generated text, and this task is not generate_until")))
                }
                Some("regex") => {
                    let pattern = step.get("regex_pattern").and_then(Value::as_str).unwrap_or(r"#### (\-?[0-9\.\,]+)");
                    let regex = compile(pattern).map_err(|e| problem(file, key, e))?;
                    let group_select = step.get("group_select").and_then(Value::as_i64).unwrap_or(0);
                    let fallback = step.get("fallback").and_then(Value::as_str).unwrap_or("[invalid]").to_string();
                    FilterStep::Regex { regex, group_select, fallback }
                }
                Some("remove_whitespace") => FilterStep::RemoveWhitespace,
                Some("majority_vote") => FilterStep::MajorityVote,
                Some("lowercase") => FilterStep::Lowercase,
                Some("uppercase") => FilterStep::Uppercase,
                Some("custom") => {
                    let function = match step.get("filter_fn") {
                        Some(Value::Tagged(tagged)) if tagged.tag == "!function" => tagged.value.as_str().unwrap_or("?"),
                        _ => return Err(problem(file, key, "a `custom` filter needs `filter_fn: !function …`")),
                    };
                    let apply = native::filter(task, function)
                        .ok_or_else(|| python_function(file, "filter_list.filter_fn", function))?;
                    FilterStep::Custom(apply)
                }
                Some(other) => {
                    return Err(problem(
                        file,
                        key,
                        format!("`{other}` is not a filter evalmesh has (regex, take_first, majority_vote, remove_whitespace, lowercase, uppercase, custom)"),
                    ))
                }
                None => return Err(problem(file, key, "each filter needs a `function`")),
            });
        }
        out.push(FilterChain { name, steps: filters });
    }
    Ok(out)
}

/// Reads one YAML file into a task or group definition, or its mistake ([`Unusable`]);
/// `None` for a file that defines neither (a template other files `include`). A file that
/// is not YAML, whose `include` fails, or whose name is not text is an error here, as it is
/// in lm-evaluation-harness's task index.
pub fn read(file: &Path, origin: Origin) -> Result<Option<Definition>, TaskError> {
    let map = mapping(file, origin, 0)?;
    let tags = match map.get("tag") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let unusable = |name: String, error: TaskError| {
        Definition::Unusable(Unusable { file: file.to_path_buf(), name, tags, problem: error.to_string() })
    };
    if map.get("group").is_some() && matches!(map.get("task"), Some(Value::Sequence(_))) {
        let name = text(&map, file, "group")?.ok_or_else(|| problem(file, "group", "must be a name"))?;
        let group = group(&map, file, name.clone());
        return Ok(Some(group.map(Definition::Group).unwrap_or_else(|error| unusable(name, error))));
    }
    if map.get("task").is_none() {
        return Ok(None);
    }
    let name = text(&map, file, "task")?.ok_or_else(|| problem(file, "task", "is missing"))?;
    let task = task(map, file, origin, name.clone());
    Ok(Some(task.map(|t| Definition::Task(Box::new(t))).unwrap_or_else(|error| unusable(name, error))))
}

fn group(map: &Mapping, file: &Path, name: String) -> Result<GroupDef, TaskError> {
    let alias = text(map, file, "group_alias")?.unwrap_or_else(|| name.clone());
    Ok(GroupDef { file: file.to_path_buf(), name, alias, tasks: task_list(map, file)? })
}

/// A task file's definition, `name` its `task`.
fn task(map: Mapping, file: &Path, origin: Origin, name: String) -> Result<TaskDef, TaskError> {
    if let Some(err) =
        map.get("doc_to_decontamination_query").and_then(|v| function_error(file, "doc_to_decontamination_query", v))
    {
        return Err(err);
    }
    let process_docs = function(&map, file, &name, "process_docs")?;
    let process_results = function(&map, file, &name, "process_results")?;
    let dataset_path = text(&map, file, "dataset_path")?.ok_or_else(|| problem(file, "dataset_path", "is missing"))?;
    let dataset = datasets::lookup(&dataset_path).ok_or_else(|| {
        problem(
            file,
            "dataset_path",
            format!(
                "`{dataset_path}`: evalmesh reads local files (dataset_kwargs.data_files) of {}",
                datasets::names()
            ),
        )
    })?;
    let whole_documents = match map.get("dataset_kwargs").and_then(|k| k.get("sample_by")).and_then(Value::as_str) {
        None | Some("line") => false,
        Some("document") => true,
        Some(other) => {
            return Err(problem(file, "dataset_kwargs.sample_by", format!("`{other}`: use line or document")))
        }
    };
    let data_files = data_files(&map, file)?;
    let split = |key: &str| text(&map, file, key);
    let eval_split = match (split("test_split")?, split("validation_split")?) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => return Err(problem(file, "test_split", "neither test_split nor validation_split is given")),
    };
    for split_name in std::iter::once(&eval_split) {
        if !data_files.contains_key(split_name) {
            return Err(problem(
                file,
                "dataset_kwargs.data_files",
                format!("has no files for the split `{split_name}`"),
            ));
        }
    }
    let fewshot_config = map.get("fewshot_config");
    let sampler = match fewshot_config.and_then(|c| c.get("sampler")).and_then(Value::as_str) {
        None | Some("default") => SamplerKind::Random,
        Some("first_n") => SamplerKind::FirstN,
        Some(other) => {
            return Err(problem(file, "fewshot_config.sampler", format!("`{other}`: use default or first_n")))
        }
    };
    let fewshot_text = |key: &str| match fewshot_config.map(|c| c.get(key)) {
        None | Some(None) | Some(Some(Value::Null)) => Ok(None),
        Some(Some(Value::String(s))) => Ok(Some(s.clone())),
        Some(Some(_)) => Err(problem(file, &format!("fewshot_config.{key}"), "must be a string")),
    };
    // FewshotConfig.split: its own, else the task's `fewshot_split`; lm-eval hands the
    // document to the sampler when that equals `test_split`.
    let named_split = match fewshot_text("split")? {
        Some(s) => Some(s),
        None => split("fewshot_split")?,
    };
    let sampler_sees_document = named_split == split("test_split")?;
    let fewshot_samples = match (&named_split, fewshot_config.and_then(|c| c.get("samples"))) {
        (None, Some(samples)) => {
            if let Some(err) = function_error(file, "fewshot_config.samples", samples) {
                return Err(err);
            }
            let items = samples
                .as_sequence()
                .ok_or_else(|| problem(file, "fewshot_config.samples", "must be a list of documents"))?;
            let records = items.iter().map(|item| match to_json(item) {
                serde_json::Value::Object(record) => Ok(record),
                _ => Err(problem(file, "fewshot_config.samples", "each sample must be a mapping of fields")),
            });
            Some(records.collect::<Result<Vec<_>, _>>()?)
        }
        _ => None,
    };
    // lm-eval's `fewshot_docs`: the named split, the samples, else the training, validation or test split.
    let fewshot_split = match named_split {
        Some(s) => Some(s),
        None if fewshot_samples.is_some() => None,
        None => split("training_split")?.or(split("validation_split")?).or(split("test_split")?),
    };
    let fewshot_template = |key: &str| -> Result<Option<Template>, TaskError> {
        match fewshot_config.and_then(Value::as_mapping) {
            Some(own) => template(own, file, &name, key),
            None => Ok(None),
        }
    };
    let fewshot_templates =
        [fewshot_template("doc_to_text")?, fewshot_template("doc_to_target")?, fewshot_template("doc_to_choice")?];
    let target_delimiter = text(&map, file, "target_delimiter")?.unwrap_or_else(|| " ".into());
    let fewshot_delimiter = text(&map, file, "fewshot_delimiter")?.unwrap_or_else(|| "\n\n".into());
    let fewshot_delimiters = (
        fewshot_text("target_delimiter")?.unwrap_or_else(|| target_delimiter.clone()),
        fewshot_text("fewshot_delimiter")?.unwrap_or_else(|| fewshot_delimiter.clone()),
    );
    let output_type = match text(&map, file, "output_type")?.as_deref() {
        Some("multiple_choice") => OutputType::MultipleChoice,
        Some("loglikelihood") => OutputType::Loglikelihood,
        Some("loglikelihood_rolling") => OutputType::LoglikelihoodRolling,
        None | Some("generate_until") => OutputType::GenerateUntil,
        Some(other) => return Err(problem(file, "output_type", format!("`{other}` is not an lm-eval output type"))),
    };
    let mut metrics = Vec::new();
    let mut pass_at_1 = false;
    if let Some(list) = map.get("metric_list") {
        let items = list.as_sequence().ok_or_else(|| problem(file, "metric_list", "must be a list"))?;
        for item in items {
            let metric = item.get("metric").ok_or_else(|| problem(file, "metric_list", "each entry needs a metric"))?;
            if let Value::Tagged(tagged) = metric {
                let function = tagged.value.as_str().unwrap_or("?");
                if tagged.tag == "!function" && native::runs_code(&name, function) {
                    // One greedy sample per document (`repeats: 1`): pass@1 alone.
                    match item.get("k").map(to_json) {
                        None => {}
                        Some(k) if k == serde_json::json!([1]) || k == serde_json::json!(1) => {}
                        Some(_) => {
                            return Err(problem(
                                file,
                                "metric_list.k",
                                "evalmesh scores pass@1 (one greedy sample per problem): use k: [1]",
                            ))
                        }
                    }
                    pass_at_1 = true;
                    continue;
                }
            }
            if let Some(err) = function_error(file, "metric_list.metric", metric) {
                return Err(err);
            }
            let name = metric.as_str().ok_or_else(|| problem(file, "metric_list.metric", "must be a name"))?;
            if !KNOWN_METRICS.contains(&name) {
                return Err(problem(
                    file,
                    "metric_list.metric",
                    format!("`{name}` is not a metric evalmesh computes ({})", KNOWN_METRICS.join(", ")),
                ));
            }
            metrics.push(name.to_string());
        }
    }
    let generative = output_type == OutputType::GenerateUntil;
    let repeats = match map.get("repeats") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && (n == 1 || generative) => n as usize,
            Some(n) if n >= 1 => return Err(problem(file, "repeats", "more than 1 needs a generate_until task")),
            _ => return Err(problem(file, "repeats", "must be a whole number, at least 1")),
        },
    };
    let filters = filter_list(&map, file, &name, generative)?;
    let generation = generation_kwargs(&map, file)?;
    let exact_match = exact_match(&map, file)?;
    let generation_from_document = map
        .get("metadata")
        .and_then(|m| m.get("evalmesh"))
        .and_then(|e| e.get("generation_kwargs_from_document"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let doc_to_choice = template(&map, file, &name, "doc_to_choice")?;
    if output_type == OutputType::MultipleChoice && doc_to_choice.is_none() {
        return Err(problem(file, "doc_to_choice", "a multiple_choice task needs its choices"));
    }
    let tags = match map.get("tag") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(_) => return Err(problem(file, "tag", "must be a name or a list of names")),
    };
    let num_fewshot = match map.get("num_fewshot") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| problem(file, "num_fewshot", "must be a whole number"))? as usize),
    };
    let version = map.get("metadata").and_then(|m| m.get("version")).and_then(Value::as_f64).unwrap_or(1.0);
    Ok(TaskDef {
        file: file.to_path_buf(),
        origin,
        tags,
        data_files,
        dataset,
        dataset_name: text(&map, file, "dataset_name")?,
        whole_documents,
        eval_split,
        fewshot_split,
        fewshot_samples,
        fewshot_templates,
        fewshot_delimiters,
        sampler_sees_document,
        doc_to_text: template(&map, file, &name, "doc_to_text")?
            .ok_or_else(|| problem(file, "doc_to_text", "is missing"))?,
        doc_to_target: template(&map, file, &name, "doc_to_target")?
            .ok_or_else(|| problem(file, "doc_to_target", "is missing"))?,
        doc_to_choice,
        target_delimiter,
        fewshot_delimiter,
        description: text(&map, file, "description")?.unwrap_or_default(),
        num_fewshot,
        sampler,
        output_type,
        metrics,
        generation,
        filters,
        exact_match,
        generation_from_document,
        pass_at_1,
        unsafe_code: map.get("unsafe_code").and_then(Value::as_bool).unwrap_or(false),
        repeats,
        version,
        process_docs,
        process_results,
        config: to_json(&Value::Mapping(map)),
        name,
    })
}
