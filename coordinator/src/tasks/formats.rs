//! The benchmarks' data files and lm-evaluation-harness's templates for them
//! (`shared/data/LM_EVAL_FORMATS.md`): each reader parses one task's file into examples
//! (or documents), applying lm-evaluation-harness's preprocessing, and keeps each
//! document as the file holds it ([`Documented::doc`], the samples' `doc`).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fewshot::Example;
use super::{read_text, Doc, Target, TaskError};

/// One document of a data file: the example it becomes and the record it was read from.
#[derive(Debug, Clone)]
pub struct Documented {
    pub example: Example,
    /// The document as its file holds it (lm-evaluation-harness's `doc` in the samples).
    pub doc: Value,
}

/// The examples of `documents`, without their records (a few-shot pool).
pub fn examples(documents: Vec<Documented>) -> Vec<Example> {
    documents.into_iter().map(|d| d.example).collect()
}

/// Reads a JSON-lines file into records, each beside the JSON it was read from; errors
/// name the file and line.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<(T, Value)>, TaskError> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad_line = |e: serde_json::Error| TaskError::Data {
            path: path.to_path_buf(),
            problem: format!("line {}: {e}", i + 1),
        };
        let record = serde_json::from_str(line).map_err(bad_line)?;
        records.push((record, serde_json::from_str(line).map_err(bad_line)?));
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
pub fn capitalize(s: &str) -> String {
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

pub fn hellaswag(path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(HellaswagRecord, Value)> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (r, doc))| {
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
            Ok(Documented { example: Example::Choice { text: query, choices, gold }, doc })
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

pub fn arc(path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(ArcRecord, Value)> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (r, record))| {
            let gold = r.question.choices.iter().position(|c| c.label == r.answer_key).ok_or_else(|| {
                bad(path, i + 1, format!("answerKey `{}` is not among the choice labels", r.answer_key))
            })?;
            // The record in the Hugging Face dataset's shape (`allenai/ai2_arc`), which
            // lm-evaluation-harness's templates name.
            let labels: Vec<&str> = r.question.choices.iter().map(|c| c.label.as_str()).collect();
            let texts: Vec<&str> = r.question.choices.iter().map(|c| c.text.as_str()).collect();
            let doc = json!({"id": record.get("id"), "question": r.question.stem, "choices": {"text": texts, "label": labels},
                "answerKey": r.answer_key});
            let choices: Vec<String> = r.question.choices.into_iter().map(|c| c.text).collect();
            check_choices(path, i + 1, &choices, gold)?;
            let text = format!("Question: {}\nAnswer:", r.question.stem);
            Ok(Documented { example: Example::Choice { text, choices, gold }, doc })
        })
        .collect()
}

#[derive(Deserialize)]
struct PiqaRecord {
    goal: String,
    sol1: String,
    sol2: String,
}

pub fn piqa(path: &Path, labels_path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(PiqaRecord, Value)> = read_jsonl(path)?;
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
        .map(|(i, ((r, mut doc), label))| {
            let gold: usize =
                label.trim().parse().map_err(|_| bad(labels_path, i + 1, format!("label `{label}` is not 0 or 1")))?;
            let choices = vec![r.sol1, r.sol2];
            check_choices(labels_path, i + 1, &choices, gold)?;
            // The labels file's label joins the record, as in the Hugging Face dataset.
            if let Value::Object(fields) = &mut doc {
                fields.insert("label".into(), json!(gold));
            }
            let text = format!("Question: {}\nAnswer:", r.goal);
            Ok(Documented { example: Example::Choice { text, choices, gold }, doc })
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
pub fn winogrande(path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(WinograndeRecord, Value)> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (r, doc))| {
            let blank = r.sentence.find('_').ok_or_else(|| bad(path, i + 1, "sentence has no `_` blank".into()))?;
            let gold = match r.answer.as_str() {
                "1" => 0,
                "2" => 1,
                other => return Err(bad(path, i + 1, format!("answer `{other}` is neither \"1\" nor \"2\""))),
            };
            let contexts = [r.option1, r.option2].iter().map(|o| format!("{}{o}", &r.sentence[..blank])).collect();
            let target = r.sentence[blank + 1..].trim().to_string();
            Ok(Documented { example: Example::Partial { contexts, target, gold }, doc })
        })
        .collect()
}

#[derive(Deserialize)]
struct LambadaRecord {
    text: String,
}

pub fn lambada(path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(LambadaRecord, Value)> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (r, doc))| {
            let (context, word) = r
                .text
                .rsplit_once(' ')
                .ok_or_else(|| bad(path, i + 1, "text has no space to split the last word at".into()))?;
            let example = Example::Greedy { text: context.to_string(), target: format!(" {word}") };
            Ok(Documented { example, doc })
        })
        .collect()
}

/// A document scored whole by rolling windows: `scored` is the text the model sees,
/// `original` the one whose words and bytes normalise the perplexities, `doc` the record.
pub fn rolling_doc(id: usize, original: &str, scored: String, doc: Value) -> Doc {
    let target = Target::Rolling { words: super::perplexity::word_count(original), bytes: original.len() };
    Doc { id, requests: vec![super::Request { context: String::new(), continuation: scored }], target, record: doc }
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

pub fn wikitext(path: &Path) -> Result<Vec<Doc>, TaskError> {
    let text = read_text(path)?;
    Ok(wikitext_articles(&text)
        .into_iter()
        .enumerate()
        .map(|(i, page)| {
            let scored = wikitext_detokenize(&page);
            rolling_doc(i, &page, scored, json!({ "page": page }))
        })
        .collect())
}

#[derive(Deserialize)]
struct ChoiceRecord {
    context: String,
    choices: Vec<String>,
    gold: i64,
}

pub fn multiple_choice(path: &Path) -> Result<Vec<Documented>, TaskError> {
    let records: Vec<(ChoiceRecord, Value)> = read_jsonl(path)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, (r, doc))| {
            let gold = usize::try_from(r.gold).map_err(|_| {
                bad(path, i + 1, format!("gold {} is out of range for {} choices", r.gold, r.choices.len()))
            })?;
            check_choices(path, i + 1, &r.choices, gold)?;
            Ok(Documented { example: Example::Choice { text: r.context, choices: r.choices, gold }, doc })
        })
        .collect()
}

/// Reads a hendrycks MMLU csv (question,A,B,C,D,answer-letter) of `subject` with
/// lm-evaluation-harness's template; each record as `cais/mmlu` holds it.
pub fn read_mmlu_csv(path: &Path, subject: &str) -> Result<Vec<Documented>, TaskError> {
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
        let doc = json!({"question": &record[0], "subject": subject, "choices": [&record[1], &record[2], &record[3], &record[4]], "answer": gold});
        out.push(Documented {
            example: Example::Choice { text, choices: LETTERS.map(String::from).to_vec(), gold },
            doc,
        });
    }
    if out.is_empty() {
        return Err(TaskError::Data { path: path.to_path_buf(), problem: "no questions in the file".into() });
    }
    Ok(out)
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

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
