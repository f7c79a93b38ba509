//! The Python functions of lm-evaluation-harness's own tasks that evalmesh runs natively
//! (`process_docs: !function utils.process_docs`, `doc_to_text: !function
//! preprocess_winogrande.doc_to_text`, …), found by the task's name, the key and lm-eval's
//! reference. A `process_docs` adds the fields lm-eval's adds to a document (`datasets.map`
//! keeps the others); a `doc_to_*` gives what lm-eval's returns; a `process_results` of a
//! rolling task gives the text whose words and bytes normalise its perplexities; a `custom`
//! filter's `filter_fn` turns a response into what is scored; HumanEval's `pass_at_k`
//! metric runs the program (`tasks::code_execution`).

use serde_json::Value;

use super::datasets::Record;
use super::docs::Rendered;

/// What a native function does, by the key it stands in.
#[derive(Clone, Copy)]
enum Apply {
    ProcessDocs(fn(&mut Record) -> Result<(), String>),
    DocTo(fn(&Record) -> Result<Rendered, String>),
    /// The text whose words and bytes a rolling task's perplexities are normalised by.
    CountedText(fn(&Record) -> Result<String, String>),
    /// A `custom` filter's `filter_fn` on one response of a document.
    Filter(fn(&str, &Record) -> String),
    /// A metric scored by running the filtered program against the target's tests
    /// (`tasks::code_execution`).
    CodeExecution,
}

/// A native function: the task it belongs to, the key it stands in, lm-eval's reference.
struct Native {
    task: &'static str,
    key: &'static str,
    function: &'static str,
    apply: Apply,
}

const NATIVE: &[Native] = &[
    Native {
        task: "hellaswag",
        key: "process_docs",
        function: "utils.process_docs",
        apply: Apply::ProcessDocs(hellaswag),
    },
    Native {
        task: "winogrande",
        key: "doc_to_text",
        function: "preprocess_winogrande.doc_to_text",
        apply: Apply::DocTo(winogrande_text),
    },
    Native {
        task: "winogrande",
        key: "doc_to_target",
        function: "preprocess_winogrande.doc_to_target",
        apply: Apply::DocTo(winogrande_target),
    },
    Native {
        task: "winogrande",
        key: "doc_to_choice",
        function: "preprocess_winogrande.doc_to_choice",
        apply: Apply::DocTo(winogrande_choice),
    },
    Native {
        task: "wikitext",
        key: "doc_to_target",
        function: "preprocess_wikitext.wikitext_detokenizer",
        apply: Apply::DocTo(wikitext_target),
    },
    Native {
        task: "humaneval",
        key: "filter_list.filter_fn",
        function: "utils.build_predictions",
        apply: Apply::Filter(humaneval_prediction),
    },
    Native { task: "humaneval", key: "metric_list.metric", function: "utils.pass_at_k", apply: Apply::CodeExecution },
    Native {
        task: "wikitext",
        key: "process_results",
        function: "preprocess_wikitext.process_results",
        apply: Apply::CountedText(wikitext_page),
    },
];

fn find(task: &str, key: &str, function: &str) -> Option<Apply> {
    NATIVE.iter().find(|n| n.task == task && n.key == key && n.function == function).map(|n| n.apply)
}

/// Whether evalmesh runs `!function FUNCTION` of task `task` under `key` natively.
pub fn known(task: &str, key: &str, function: &str) -> bool {
    find(task, key, function).is_some()
}

/// A `doc_to_*` function on one document.
pub fn doc_to(task: &str, key: &str, function: &str, doc: &Record) -> Result<Rendered, String> {
    match find(task, key, function) {
        Some(Apply::DocTo(apply)) => apply(doc),
        _ => Err("no native version".into()),
    }
}

/// A `process_docs` function on one document.
pub fn process_doc(task: &str, function: &str, doc: &mut Record) -> Result<(), String> {
    match find(task, "process_docs", function) {
        Some(Apply::ProcessDocs(apply)) => apply(doc),
        _ => Err("no native version".into()),
    }
}

/// The text a rolling task's `process_results` counts words and bytes of.
pub fn counted_text(task: &str, function: &str, doc: &Record) -> Result<String, String> {
    match find(task, "process_results", function) {
        Some(Apply::CountedText(apply)) => apply(doc),
        _ => Err("no native version".into()),
    }
}

/// A `custom` filter's function, where evalmesh has it.
pub fn filter(task: &str, function: &str) -> Option<fn(&str, &Record) -> String> {
    match find(task, "filter_list.filter_fn", function) {
        Some(Apply::Filter(apply)) => Some(apply),
        _ => None,
    }
}

/// Whether a `metric_list` function is scored by running code.
pub fn runs_code(task: &str, function: &str) -> bool {
    matches!(find(task, "metric_list.metric", function), Some(Apply::CodeExecution))
}

/// `lm_eval/tasks/humaneval/utils.py`'s `build_predictions`: the prompt, then the completion.
fn humaneval_prediction(response: &str, doc: &Record) -> String {
    format!("{}{response}", doc.get("prompt").and_then(Value::as_str).unwrap_or_default())
}

fn field<'a>(doc: &'a Record, name: &str) -> Result<&'a str, String> {
    doc.get(name).and_then(Value::as_str).ok_or_else(|| format!("field `{name}` is missing or not text"))
}

/// `lm_eval/tasks/winogrande/preprocess_winogrande.py`: the gold option's index (a
/// multiple-input task: the options go into the contexts)…
fn winogrande_text(doc: &Record) -> Result<Rendered, String> {
    match field(doc, "answer")? {
        "1" => Ok(Rendered::Index(0)),
        "2" => Ok(Rendered::Index(1)),
        other => Err(format!("answer `{other}` is neither 1 nor 2")),
    }
}

/// …the sentence after the blank, stripped, as the shared continuation…
fn winogrande_target(doc: &Record) -> Result<Rendered, String> {
    let sentence = field(doc, "sentence")?;
    let blank = sentence.find('_').ok_or("the sentence has no blank `_`")?;
    Ok(Rendered::Text(sentence[blank + 1..].trim().to_string()))
}

/// …and the sentence up to the blank with each option, as the contexts.
fn winogrande_choice(doc: &Record) -> Result<Rendered, String> {
    let sentence = field(doc, "sentence")?;
    let blank = sentence.find('_').ok_or("the sentence has no blank `_`")?;
    let options = [field(doc, "option1")?, field(doc, "option2")?];
    Ok(Rendered::List(options.iter().map(|o| format!("{}{o}", &sentence[..blank])).collect()))
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

/// lm-evaluation-harness's hellaswag `preprocess`.
fn hellaswag_preprocess(text: &str) -> String {
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

/// `lm_eval/tasks/wikitext/preprocess_wikitext.py`: `wikitext_detokenizer` of the page…
fn wikitext_target(doc: &Record) -> Result<Rendered, String> {
    Ok(Rendered::Text(wikitext_detokenize(field(doc, "page")?)))
}

/// …and `process_results`, which counts the words and bytes of the page as it was.
fn wikitext_page(doc: &Record) -> Result<String, String> {
    field(doc, "page").map(str::to_string)
}

fn wikitext_detokenize(page: &str) -> String {
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
}
