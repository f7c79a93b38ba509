//! The built-in tasks: one table ([`TASKS`]) that names each task, says what it reads
//! (for `--help` and the unknown-task error) and loads it from the data folder (the
//! layout of `shared/data`) or the generic tasks' `--data` file, each document led by its
//! few-shot demonstrations.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::configs::task_config;
use super::fewshot::{self, Delimiters, Sampler};
use super::formats::{
    arc, examples, hellaswag, lambada, multiple_choice, piqa, read_mmlu_csv, rolling_doc, wikitext, winogrande,
    Documented,
};
use super::{read_text, Doc, Task, TaskError};

/// A built-in task: its name, what `--help` says of it, and how its documents are read.
pub struct BuiltinTask {
    pub name: &'static str,
    pub about: &'static str,
    load: fn(&str, &Source) -> Result<Vec<Task>, TaskError>,
}

/// Every built-in task, in the order `--help` and the unknown-task error list them.
pub const TASKS: &[BuiltinTask] = &[
    BuiltinTask { name: "hellaswag", about: "HellaSwag validation (hellaswag/)", load: hellaswag_task },
    BuiltinTask { name: "arc_easy", about: "ARC-Easy test (arc/)", load: arc_task },
    BuiltinTask { name: "arc_challenge", about: "ARC-Challenge test (arc/)", load: arc_task },
    BuiltinTask { name: "piqa", about: "PIQA validation (piqa/)", load: piqa_task },
    BuiltinTask {
        name: "winogrande",
        about: "WinoGrande xl validation, partial scoring (winogrande/)",
        load: winogrande_task,
    },
    BuiltinTask {
        name: "lambada_openai",
        about: "LAMBADA (OpenAI) test: acc and perplexity (lambada/)",
        load: lambada_task,
    },
    BuiltinTask {
        name: "mmlu",
        about: "MMLU: 57 subjects, their four category groups and the mmlu group (mmlu/)",
        load: mmlu_task,
    },
    BuiltinTask {
        name: "wikitext",
        about: "wikitext-2 test: word and byte perplexity, one document per article (wikitext-2/)",
        load: wikitext_task,
    },
    BuiltinTask {
        name: "multiple_choice",
        about: "JSON lines {\"context\", \"choices\", \"gold\"} from --data FILE.jsonl",
        load: multiple_choice_task,
    },
    BuiltinTask {
        name: "perplexity",
        about: "rolling perplexity of --data FILE.txt (default: a built-in wikitext-2 excerpt)",
        load: perplexity_task,
    },
];

/// The names of the built-in tasks, separated by commas.
pub fn task_names() -> String {
    TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// `--task`'s help: every built-in task with what it reads.
pub fn tasks_help() -> String {
    let lines: Vec<String> = TASKS.iter().map(|t| format!("  {}: {}", t.name, t.about)).collect();
    format!("Tasks to score, separated by commas:\n{}", lines.join("\n"))
}

/// Where a task's data comes from.
pub struct Source<'a> {
    /// A folder laid out like `shared/data`.
    pub data_dir: Option<&'a Path>,
    /// The file of the generic tasks (`multiple_choice`, `perplexity`).
    pub data_file: Option<&'a Path>,
    pub num_fewshot: usize,
}

impl Source<'_> {
    fn file(&self, task: &str, relative: &str) -> Result<PathBuf, TaskError> {
        let dir = self.data_dir.ok_or_else(|| {
            TaskError::Settings(format!(
                "{task} reads its data from a folder laid out like shared/data: pass --data-dir"
            ))
        })?;
        let path = dir.join(relative);
        if path.is_file() {
            Ok(path)
        } else {
            Err(TaskError::MissingData { task: task.into(), path, data_dir: dir.to_path_buf() })
        }
    }

    /// A file of a task's few-shot split, which shared/data does not ship for every task.
    fn fewshot_file(&self, task: &str, relative: &str) -> Result<PathBuf, TaskError> {
        self.file(task, relative).map_err(|e| match e {
            TaskError::MissingData { task, path, data_dir } => TaskError::MissingFewShotSplit { task, path, data_dir },
            other => other,
        })
    }

    fn generic_file(&self, task: &str) -> Result<&Path, TaskError> {
        self.data_file.ok_or_else(|| TaskError::Settings(format!("task {task} needs --data FILE")))
    }

    /// The data files a task reads, as `(split, path)`: its evaluated split, and its few-shot
    /// split's files when few-shot examples are asked for.
    fn files<'p>(&self, eval: Vec<(&'p str, PathBuf)>, fewshot: &[(&'p str, &str)]) -> Vec<(&'p str, PathBuf)> {
        let dir = self.data_dir.unwrap_or(Path::new("."));
        let shots =
            fewshot.iter().filter(|_| self.num_fewshot > 0).map(|(split, relative)| (*split, dir.join(relative)));
        eval.into_iter().chain(shots).collect()
    }

    /// A task of `documents`, each preceded by `--num-fewshot` demonstrations from the
    /// sampler, which is built (and its split read) only when few-shot is asked for; `files`
    /// are the data files read, `config` evalmesh's settings of the task.
    fn example_task(
        &self,
        name: &str,
        documents: Vec<Documented>,
        config: serde_json::Value,
        files: &[(&str, PathBuf)],
        sampler: impl FnOnce() -> Result<Sampler, TaskError>,
    ) -> Result<Task, TaskError> {
        let docs = self.fewshot_docs(name, "", documents, sampler)?;
        let output_type = match docs.first().map(|d| &d.target) {
            Some(super::Target::Greedy) => "loglikelihood",
            _ => "multiple_choice",
        };
        Ok(Task {
            name: name.into(),
            docs,
            lm_eval_config: lm_eval_config(name, output_type, files, &config),
            config,
            version: 1.0,
            num_fewshot: self.num_fewshot,
            groups: Vec::new(),
        })
    }

    /// The documents of `documents`, each context led by `description` and the document's demonstrations.
    fn fewshot_docs(
        &self,
        name: &str,
        description: &str,
        documents: Vec<Documented>,
        sampler: impl FnOnce() -> Result<Sampler, TaskError>,
    ) -> Result<Vec<Doc>, TaskError> {
        let shots = self.num_fewshot;
        let (examples, records): (Vec<_>, Vec<_>) = documents.into_iter().map(|d| (d.example, d.doc)).unzip();
        let prefixes = if shots == 0 {
            vec![String::new(); examples.len()]
        } else {
            fewshot::contexts(examples.len(), &sampler()?, shots, &Delimiters::default()).map_err(|most| {
                TaskError::Settings(format!(
                    "--num-fewshot {shots} is more than {name}'s few-shot split allows ({most})"
                ))
            })?
        };
        Ok(examples
            .into_iter()
            .zip(prefixes)
            .zip(records)
            .enumerate()
            .map(|(i, ((example, prefix), record))| Doc {
                record,
                ..example.into_doc(i, &format!("{description}{prefix}"))
            })
            .collect())
    }
}

/// [`task_config`] with the files as `(split, path)`.
fn lm_eval_config(
    name: &str,
    output_type: &str,
    files: &[(&str, PathBuf)],
    config: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let files: Vec<(&str, &Path)> = files.iter().map(|(split, path)| (*split, path.as_path())).collect();
    task_config(name, output_type, &files, config)
}

/// Loads a task by name; `mmlu` gives one task per subject.
pub fn load(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let task = TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TaskError::UnknownTask { name: name.to_string(), available: task_names() })?;
    (task.load)(name, source)
}

// How lm-evaluation-harness samples each task's demonstrations (`fewshot_context` hands the
// document to the sampler when `fewshot_split == test_split`): hellaswag, piqa and winogrande
// set neither (None == None), so they draw one more from the training split and leave the
// document out ([`excluding`]); arc and lambada_openai set `test_split: test`, so they draw
// from the training split (lambada_openai, which has none: the test split) and keep every
// draw ([`random`]).

/// lm-evaluation-harness's default sampler over `pool` for documents not handed over.
fn random(pool: Vec<Documented>) -> Sampler {
    Sampler::random(examples(pool))
}

/// lm-evaluation-harness's default sampler over `pool` for `docs`, each handed over to be
/// left out of its draw (the sampler compares the documents as their files hold them).
fn excluding(pool: Vec<Documented>, docs: &[Documented]) -> Sampler {
    let (pool, pool_rows) = pool.into_iter().map(|d| (d.example, d.doc)).unzip();
    Sampler::excluding(pool, pool_rows, docs.iter().map(|d| d.doc.clone()).collect())
}

fn hellaswag_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let path = source.file(name, "hellaswag/hellaswag_val.jsonl")?;
    let docs = hellaswag(&path)?;
    let config = json!({"dataset": "Rowan/hellaswag", "split": "validation", "fewshot_split": "train"});
    let files = source.files(vec![("validation", path)], &[("train", "hellaswag/hellaswag_train.jsonl")]);
    let task = source.example_task(name, docs.clone(), config, &files, || {
        Ok(excluding(hellaswag(&source.fewshot_file(name, "hellaswag/hellaswag_train.jsonl")?)?, &docs))
    })?;
    Ok(vec![task])
}

fn arc_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let split = if name == "arc_easy" { "arc/ARC-Easy" } else { "arc/ARC-Challenge" };
    let path = source.file(name, &format!("{split}-Test.jsonl"))?;
    let docs = arc(&path)?;
    let config = json!({"dataset": "allenai/ai2_arc", "split": "test", "fewshot_split": "train"});
    let train = format!("{split}-Train.jsonl");
    let files = source.files(vec![("test", path)], &[("train", &train)]);
    let task =
        source.example_task(name, docs, config, &files, || Ok(random(arc(&source.fewshot_file(name, &train)?)?)))?;
    Ok(vec![task])
}

fn piqa_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let (path, labels) = (source.file(name, "piqa/valid.jsonl")?, source.file(name, "piqa/valid-labels.lst")?);
    let docs = piqa(&path, &labels)?;
    let config = json!({"dataset": "baber/piqa", "split": "validation", "fewshot_split": "train"});
    let eval = vec![("validation", path), ("validation_labels", labels)];
    let files = source.files(eval, &[("train", "piqa/train.jsonl"), ("train_labels", "piqa/train-labels.lst")]);
    let task = source.example_task(name, docs.clone(), config, &files, || {
        let train = source.fewshot_file(name, "piqa/train.jsonl")?;
        Ok(excluding(piqa(&train, &source.fewshot_file(name, "piqa/train-labels.lst")?)?, &docs))
    })?;
    Ok(vec![task])
}

fn winogrande_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let path = source.file(name, "winogrande/winogrande_xl_validation.jsonl")?;
    let docs = winogrande(&path)?;
    let config = json!({"dataset": "allenai/winogrande", "config": "winogrande_xl", "fewshot_split": "train"});
    let files = source.files(vec![("validation", path)], &[("train", "winogrande/winogrande_xl_train.jsonl")]);
    let task = source.example_task(name, docs.clone(), config, &files, || {
        Ok(excluding(winogrande(&source.fewshot_file(name, "winogrande/winogrande_xl_train.jsonl")?)?, &docs))
    })?;
    Ok(vec![task])
}

fn lambada_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let path = source.file(name, "lambada/lambada_test.jsonl")?;
    let docs = lambada(&path)?;
    // No few-shot split: lm-evaluation-harness draws from the test split, the document itself included.
    let config = json!({"dataset": "EleutherAI/lambada_openai", "split": "test", "fewshot_split": null});
    let files = [("test", path)];
    Ok(vec![source.example_task(name, docs.clone(), config, &files, || Ok(random(docs)))?])
}

fn multiple_choice_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let path = source.generic_file(name)?;
    let docs = multiple_choice(path)?;
    let config = json!({"data": path.display().to_string(), "fewshot_split": "the same file"});
    let files = [("test", path.to_path_buf())];
    // The file is its own few-shot split, as a task whose fewshot_split is its test_split: the document is left out.
    let task = source.example_task(name, docs.clone(), config, &files, || Ok(excluding(docs.clone(), &docs)))?;
    Ok(vec![task])
}

/// Rolling-perplexity tasks score whole documents and take no demonstrations.
fn refuse_fewshot(name: &str, source: &Source) -> Result<(), TaskError> {
    match source.num_fewshot {
        0 => Ok(()),
        _ => Err(TaskError::Settings(format!(
            "{name} is scored by rolling perplexity over whole documents and takes no --num-fewshot"
        ))),
    }
}

fn wikitext_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    refuse_fewshot(name, source)?;
    let path = source.file(name, "wikitext-2/wiki.test.raw")?;
    let docs = wikitext(&path)?;
    let config = json!({"dataset": "wikitext-2-raw-v1", "split": "test", "unit": "article"});
    let lm_eval_config = lm_eval_config(name, "loglikelihood_rolling", &[("test", path)], &config);
    Ok(vec![Task { name: name.into(), docs, config, lm_eval_config, version: 2.0, num_fewshot: 0, groups: Vec::new() }])
}

fn perplexity_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    refuse_fewshot(name, source)?;
    let (text, data) = match source.data_file {
        Some(path) => (read_text(path)?, path.display().to_string()),
        None => (super::perplexity::BUILTIN_TEXT.to_string(), "built-in wikitext-2 excerpt".into()),
    };
    let docs = vec![rolling_doc(0, &text, text.clone(), json!({ "text": text }))];
    let config = json!({ "data": data });
    let files: Vec<(&str, PathBuf)> = source.data_file.map(|p| ("test", p.to_path_buf())).into_iter().collect();
    let lm_eval_config = lm_eval_config(name, "loglikelihood_rolling", &files, &config);
    Ok(vec![Task { name: name.into(), docs, config, lm_eval_config, version: 1.0, num_fewshot: 0, groups: Vec::new() }])
}

/// The 57 subjects, each its own task in its category's group and in `mmlu`; few-shot examples are the first
/// `num_fewshot` of the subject's dev split (lm-evaluation-harness's `first_n` sampler).
fn mmlu_task(_name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let dir = source.file("mmlu", "mmlu/test").or_else(|e| match e {
        TaskError::MissingData { path, .. } if path.is_dir() => Ok(path),
        other => Err(other),
    })?;
    let mut subjects: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|error| TaskError::Io { path: dir.clone(), error })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix("_test.csv").map(str::to_string))
        .collect();
    subjects.sort();
    if subjects.is_empty() {
        return Err(TaskError::Data { path: dir, problem: "no <subject>_test.csv files".into() });
    }
    subjects
        .iter()
        .map(|subject| {
            let name = format!("mmlu_{subject}");
            let path = dir.join(format!("{subject}_test.csv"));
            let questions = read_mmlu_csv(&path, subject)?;
            let description =
                format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "));
            let dev = format!("mmlu/dev/{subject}_dev.csv");
            let docs = source.fewshot_docs(&name, &description, questions, || {
                Ok(Sampler::FirstN(examples(read_mmlu_csv(&source.fewshot_file("mmlu", &dev)?, subject)?)))
            })?;
            let config = json!({"dataset": "cais/mmlu", "subject": subject, "split": "test", "fewshot_split": "dev", "sampler": "first_n"});
            let files = source.files(vec![("test", path)], &[("dev", &dev)]);
            Ok(Task {
                lm_eval_config: lm_eval_config(&name, "multiple_choice", &files, &config),
                name,
                docs,
                config,
                version: 1.0,
                num_fewshot: source.num_fewshot,
                groups: super::mmlu::groups(subject),
            })
        })
        .collect()
}
