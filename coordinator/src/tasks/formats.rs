//! The benchmarks' data files and lm-evaluation-harness's templates for them
//! (`shared/data/LM_EVAL_FORMATS.md`): each loader reads one task's files from the
//! data folder (the layout of `shared/data`) and returns its documents as requests.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::fewshot::{self, Example, Sampler};
use super::{read_text, Doc, Target, Task, TaskError};

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
    BuiltinTask { name: "mmlu", about: "MMLU: 57 subjects and the group score (mmlu/)", load: mmlu_task },
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

    /// A task of `examples`, each preceded by `--num-fewshot` demonstrations from the
    /// sampler, which is built (and its split read) only when few-shot is asked for.
    fn example_task(
        &self,
        name: &str,
        examples: Vec<Example>,
        config: serde_json::Value,
        sampler: impl FnOnce() -> Result<Sampler, TaskError>,
    ) -> Result<Task, TaskError> {
        let docs = self.fewshot_docs(name, "", examples, sampler)?;
        Ok(Task { name: name.into(), docs, config, version: 1.0, num_fewshot: self.num_fewshot, group: None })
    }

    /// The documents of `examples`, each context led by `description` and the document's demonstrations.
    fn fewshot_docs(
        &self,
        name: &str,
        description: &str,
        examples: Vec<Example>,
        sampler: impl FnOnce() -> Result<Sampler, TaskError>,
    ) -> Result<Vec<Doc>, TaskError> {
        let shots = self.num_fewshot;
        let prefixes = if shots == 0 {
            vec![String::new(); examples.len()]
        } else {
            fewshot::contexts(&examples, &sampler()?, shots).map_err(|most| {
                TaskError::Settings(format!(
                    "--num-fewshot {shots} is more than {name}'s few-shot split allows ({most})"
                ))
            })?
        };
        Ok(examples
            .into_iter()
            .zip(prefixes)
            .enumerate()
            .map(|(i, (example, prefix))| example.into_doc(i, &format!("{description}{prefix}")))
            .collect())
    }
}

/// Loads a task by name; `mmlu` gives one task per subject.
pub fn load(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let task = TASKS.iter().find(|t| t.name == name).ok_or_else(|| TaskError::UnknownTask(name.to_string()))?;
    (task.load)(name, source)
}

/// Draws demonstrations from `pool` as lm-evaluation-harness does for a task whose few-shot
/// split is not its test split.
fn random(pool: Vec<Example>) -> Sampler {
    Sampler::Random { pool, draws_extra: false }
}

fn hellaswag_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let docs = hellaswag(&source.file(name, "hellaswag/hellaswag_val.jsonl")?)?;
    let config = json!({"dataset": "Rowan/hellaswag", "split": "validation", "fewshot_split": "train"});
    let task = source.example_task(name, docs, config, || {
        Ok(random(hellaswag(&source.fewshot_file(name, "hellaswag/hellaswag_train.jsonl")?)?))
    })?;
    Ok(vec![task])
}

fn arc_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let split = if name == "arc_easy" { "arc/ARC-Easy" } else { "arc/ARC-Challenge" };
    let docs = arc(&source.file(name, &format!("{split}-Test.jsonl"))?)?;
    let config = json!({"dataset": "allenai/ai2_arc", "split": "test", "fewshot_split": "train"});
    let task = source.example_task(name, docs, config, || {
        Ok(random(arc(&source.fewshot_file(name, &format!("{split}-Train.jsonl"))?)?))
    })?;
    Ok(vec![task])
}

fn piqa_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let docs = piqa(&source.file(name, "piqa/valid.jsonl")?, &source.file(name, "piqa/valid-labels.lst")?)?;
    let config = json!({"dataset": "baber/piqa", "split": "validation", "fewshot_split": "train"});
    let task = source.example_task(name, docs, config, || {
        let train = source.fewshot_file(name, "piqa/train.jsonl")?;
        Ok(random(piqa(&train, &source.fewshot_file(name, "piqa/train-labels.lst")?)?))
    })?;
    Ok(vec![task])
}

fn winogrande_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let docs = winogrande(&source.file(name, "winogrande/winogrande_xl_validation.jsonl")?)?;
    let config = json!({"dataset": "allenai/winogrande", "config": "winogrande_xl", "fewshot_split": "train"});
    let task = source.example_task(name, docs, config, || {
        Ok(random(winogrande(&source.fewshot_file(name, "winogrande/winogrande_xl_train.jsonl")?)?))
    })?;
    Ok(vec![task])
}

fn lambada_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let docs = lambada(&source.file(name, "lambada/lambada_test.jsonl")?)?;
    // No few-shot split: lm-evaluation-harness draws from the test split without the extra draw.
    let config = json!({"dataset": "EleutherAI/lambada_openai", "split": "test", "fewshot_split": null});
    Ok(vec![source.example_task(name, docs.clone(), config, || Ok(random(docs)))?])
}

fn multiple_choice_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    let path = source.generic_file(name)?;
    let docs = multiple_choice(path)?;
    let config = json!({"data": path.display().to_string(), "fewshot_split": "the same file"});
    let task =
        source.example_task(name, docs.clone(), config, || Ok(Sampler::Random { pool: docs, draws_extra: true }))?;
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
    Ok(vec![Task { name: name.into(), docs, config, version: 2.0, num_fewshot: 0, group: None }])
}

fn perplexity_task(name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
    refuse_fewshot(name, source)?;
    let (text, data) = match source.data_file {
        Some(path) => (read_text(path)?, path.display().to_string()),
        None => (super::perplexity::BUILTIN_TEXT.to_string(), "built-in wikitext-2 excerpt".into()),
    };
    let docs = vec![rolling_doc(0, &text, text.clone())];
    Ok(vec![Task { name: name.into(), docs, config: json!({"data": data}), version: 1.0, num_fewshot: 0, group: None }])
}

/// Reads a JSON-lines file into records; errors name the file and line.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, TaskError> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line)
            .map_err(|e| TaskError::Data { path: path.to_path_buf(), problem: format!("line {}: {e}", i + 1) })?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(TaskError::Data { path: path.to_path_buf(), problem: "no documents in the file".into() });
    }
    Ok(records)
}

fn bad(path: &Path, line: usize, problem: String) -> TaskError {
    TaskError::Data { path: path.to_path_buf(), problem: format!("line {line}: {problem}") }
}

fn check_choices(path: &Path, line: usize, choices: &[String], gold: usize) -> Result<(), TaskError> {
    if choices.is_empty() {
        return Err(bad(path, line, "no choices".into()));
    }
    if gold >= choices.len() {
        return Err(bad(path, line, format!("gold {gold} is out of range for {} choices", choices.len())));
    }
    Ok(())
}

/// lm-evaluation-harness's hellaswag `preprocess`.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    // re.sub("\\[.*?\\]", "", text): remove each shortest [...] span (no newline inside).
    while let Some(open) = rest.find('[') {
        match rest[open..].find([']', '\n']) {
            Some(close) if rest[open + close..].starts_with(']') => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

#[derive(Deserialize)]
struct HellaswagRecord {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    endings: Vec<String>,
    label: serde_json::Value,
}

fn hellaswag(path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<HellaswagRecord> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let gold = match &r.label {
                serde_json::Value::Number(n) => n.as_u64().map(|v| v as usize),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| bad(path, i + 1, format!("label {} is not an integer", r.label)))?;
            let ctx = format!("{} {}", r.ctx_a, capitalize(&r.ctx_b));
            let query = hellaswag_preprocess(&format!("{}: {ctx}", r.activity_label));
            let choices: Vec<String> = r.endings.iter().map(|e| hellaswag_preprocess(e)).collect();
            check_choices(path, i + 1, &choices, gold)?;
            Ok(Example::Choice { text: query, choices, gold })
        })
        .collect()
}

#[derive(Deserialize)]
struct ArcChoice {
    text: String,
    label: String,
}

#[derive(Deserialize)]
struct ArcQuestion {
    stem: String,
    choices: Vec<ArcChoice>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArcRecord {
    question: ArcQuestion,
    answer_key: String,
}

fn arc(path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<ArcRecord> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let gold = r.question.choices.iter().position(|c| c.label == r.answer_key).ok_or_else(|| {
                bad(path, i + 1, format!("answerKey `{}` is not among the choice labels", r.answer_key))
            })?;
            let choices: Vec<String> = r.question.choices.into_iter().map(|c| c.text).collect();
            check_choices(path, i + 1, &choices, gold)?;
            Ok(Example::Choice { text: format!("Question: {}\nAnswer:", r.question.stem), choices, gold })
        })
        .collect()
}

#[derive(Deserialize)]
struct PiqaRecord {
    goal: String,
    sol1: String,
    sol2: String,
}

fn piqa(path: &Path, labels_path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<PiqaRecord> = read_jsonl(path)?;
    let labels_text = read_text(labels_path)?;
    let labels: Vec<&str> = labels_text.lines().filter(|l| !l.trim().is_empty()).collect();
    if labels.len() != records.len() {
        return Err(TaskError::Data {
            path: labels_path.to_path_buf(),
            problem: format!("{} labels for {} documents in {}", labels.len(), records.len(), path.display()),
        });
    }
    records
        .into_iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (r, label))| {
            let gold: usize =
                label.trim().parse().map_err(|_| bad(labels_path, i + 1, format!("label `{label}` is not 0 or 1")))?;
            let choices = vec![r.sol1, r.sol2];
            check_choices(labels_path, i + 1, &choices, gold)?;
            Ok(Example::Choice { text: format!("Question: {}\nAnswer:", r.goal), choices, gold })
        })
        .collect()
}

#[derive(Deserialize)]
struct WinograndeRecord {
    sentence: String,
    option1: String,
    option2: String,
    answer: String,
}

/// Partial scoring: the option goes in the context, the text after the blank is the continuation.
fn winogrande(path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<WinograndeRecord> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let blank = r.sentence.find('_').ok_or_else(|| bad(path, i + 1, "sentence has no `_` blank".into()))?;
            let gold = match r.answer.as_str() {
                "1" => 0,
                "2" => 1,
                other => return Err(bad(path, i + 1, format!("answer `{other}` is neither \"1\" nor \"2\""))),
            };
            let contexts = [r.option1, r.option2].iter().map(|o| format!("{}{o}", &r.sentence[..blank])).collect();
            Ok(Example::Partial { contexts, target: r.sentence[blank + 1..].trim().to_string(), gold })
        })
        .collect()
}

#[derive(Deserialize)]
struct LambadaRecord {
    text: String,
}

fn lambada(path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<LambadaRecord> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let (context, word) = r
                .text
                .rsplit_once(' ')
                .ok_or_else(|| bad(path, i + 1, "text has no space to split the last word at".into()))?;
            Ok(Example::Greedy { text: context.to_string(), target: format!(" {word}") })
        })
        .collect()
}

/// A document scored whole by rolling windows: `scored` is the text the model sees,
/// `original` the one whose words and bytes normalise the perplexities.
fn rolling_doc(id: usize, original: &str, scored: String) -> Doc {
    let target = Target::Rolling { words: super::perplexity::word_count(original), bytes: original.len() };
    Doc { id, requests: vec![super::Request { context: String::new(), continuation: scored }], target }
}

/// Splits the wikitext test file into its articles: an article starts at a ` = Title = ` line.
pub fn wikitext_articles(text: &str) -> Vec<String> {
    let mut articles: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let is_title = t.starts_with("= ") && t.ends_with(" =") && !t.starts_with("= =");
        if is_title || articles.is_empty() {
            articles.push(String::new());
        }
        if let Some(a) = articles.last_mut() {
            a.push_str(line);
        }
    }
    articles
}

/// lm-evaluation-harness's `wikitext_detokenizer`.
pub fn wikitext_detokenize(page: &str) -> String {
    use regex::Regex;
    let mut s = page.replace("s '", "s'");
    let rules: [(&str, &str); 6] = [
        (r"/' [0-9]/", "/'[0-9]/"),
        (r"\(\s*([^\)]*?)\s*\)", "($1)"),
        (r"\[\s*([^\]]*?)\s*\]", "[$1]"),
        (r"\{\s*([^}]*?)\s*\}", "{$1}"),
        ("\"\\s*([^\"]*?)\\s*\"", "\"$1\""),
        (r"'\s*([^']*?)\s*'", "'$1'"),
    ];
    let regex = |pattern: &str| Regex::new(pattern).unwrap_or_else(|e| unreachable!("fixed pattern {pattern}: {e}"));
    s = regex(rules[0].0).replace_all(&s, rules[0].1).into_owned();
    for (from, to) in [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". ")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" ! ", "! "), (" ? ", "? "), (" , ", ", ")] {
        s = s.replace(from, to);
    }
    for (pattern, to) in &rules[1..] {
        s = regex(pattern).replace_all(&s, *to).into_owned();
    }
    for (from, to) in [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u{b0} ", "\u{b0}")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")] {
        s = s.replace(from, to);
    }
    s
}

fn wikitext(path: &Path) -> Result<Vec<Doc>, TaskError> {
    let text = read_text(path)?;
    Ok(wikitext_articles(&text)
        .into_iter()
        .enumerate()
        .map(|(i, page)| rolling_doc(i, &page, wikitext_detokenize(&page)))
        .collect())
}

#[derive(Deserialize)]
struct ChoiceRecord {
    context: String,
    choices: Vec<String>,
    gold: i64,
}

fn multiple_choice(path: &Path) -> Result<Vec<Example>, TaskError> {
    let records: Vec<ChoiceRecord> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let gold = usize::try_from(r.gold).map_err(|_| {
                bad(path, i + 1, format!("gold {} is out of range for {} choices", r.gold, r.choices.len()))
            })?;
            check_choices(path, i + 1, &r.choices, gold)?;
            Ok(Example::Choice { text: r.context, choices: r.choices, gold })
        })
        .collect()
}

/// Reads a hendrycks MMLU csv (question,A,B,C,D,answer-letter) with lm-evaluation-harness's template.
fn read_mmlu_csv(path: &Path) -> Result<Vec<Example>, TaskError> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(path, i + 1, e.to_string()))?;
        if record.len() != 6 {
            return Err(bad(path, i + 1, format!("{} fields; expected question,A,B,C,D,answer", record.len())));
        }
        let gold = LETTERS
            .iter()
            .position(|l| *l == &record[5])
            .ok_or_else(|| bad(path, i + 1, format!("answer `{}` is not A, B, C or D", &record[5])))?;
        let text = format!(
            "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
            record[0].trim(),
            &record[1],
            &record[2],
            &record[3],
            &record[4]
        );
        out.push(Example::Choice { text, choices: LETTERS.map(String::from).to_vec(), gold });
    }
    if out.is_empty() {
        return Err(TaskError::Data { path: path.to_path_buf(), problem: "no questions in the file".into() });
    }
    Ok(out)
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// The 57 subjects, each its own task in group `mmlu`; few-shot examples are the first
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
            let questions = read_mmlu_csv(&dir.join(format!("{subject}_test.csv")))?;
            let description =
                format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "));
            let docs = source.fewshot_docs(&name, &description, questions, || {
                Ok(Sampler::FirstN(read_mmlu_csv(&source.fewshot_file("mmlu", &format!("mmlu/dev/{subject}_dev.csv"))?)?))
            })?;
            Ok(Task {
                name,
                docs,
                config: json!({"dataset": "cais/mmlu", "subject": subject, "split": "test", "fewshot_split": "dev", "sampler": "first_n"}),
                version: 1.0,
                num_fewshot: source.num_fewshot,
                group: Some("mmlu".into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocessing_follows_lm_eval() {
        assert_eq!(hellaswag_preprocess(" Ab [title] Cd [step] ef  gh "), "Ab. Cd ef gh");
        assert_eq!(capitalize("the LADY"), "The lady");
    }

    #[test]
    fn wikitext_detokenizer_follows_lm_eval() {
        let page = " = Title = \n It 's 1 @,@ 000 ( big ) , \" he \" said : N @-@ fold . N items \n";
        assert_eq!(wikitext_detokenize(page), " = Title =\nIt's 1,000 (big), \"he\" said: N-fold. 1 items\n");
    }

    #[test]
    fn wikitext_splits_articles_at_top_level_titles() {
        let text = " = A = \n x \n = = Sub = = \n y \n = B = \n z \n";
        let articles = wikitext_articles(text);
        assert_eq!(articles, vec![" = A = \n x \n = = Sub = = \n y \n", " = B = \n z \n"]);
    }
}
