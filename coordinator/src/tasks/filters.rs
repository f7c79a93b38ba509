//! What lm-evaluation-harness does to generated text before scoring it: its filter chains
//! (`filter_list`: `regex`, `take_first`, `majority_vote`, `remove_whitespace`, `lowercase`, `uppercase`, as
//! `lm_eval/filters/` defines them, and `custom` ones evalmesh runs natively) and its `exact_match` metric with `ignore_case`,
//! `ignore_punctuation` and `regexes_to_ignore` (Hugging Face evaluate's `exact_match`).

use regex::Regex;

use super::yaml::datasets::Record;

/// `pattern` compiled, or why not in one line (the regex crate's error without its drawing).
pub fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| {
        let text = e.to_string();
        let reason = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid").trim().to_string();
        format!("`{pattern}` is not a regular expression evalmesh reads ({})", reason.trim_start_matches("error: "))
    })
}

/// One filter of a chain.
#[derive(Debug, Clone)]
pub enum FilterStep {
    /// `take_first`: the first response of a document (there is one per repeat).
    TakeFirst,
    /// `regex`: Python's `findall` of `regex` on each response, the match `group_select`
    /// (negative: from the end), its first non-empty group where the pattern has several,
    /// stripped; `fallback` where nothing matches.
    Regex {
        regex: Regex,
        group_select: i64,
        fallback: String,
    },
    /// `remove_whitespace`: leading whitespace removed.
    RemoveWhitespace,
    /// `majority_vote`: the most frequent response (of equals, the first given), for
    /// tasks with `repeats`.
    MajorityVote,
    Lowercase,
    Uppercase,
    /// `custom` with a `filter_fn` evalmesh runs natively (`yaml::native`), given the document.
    Custom(fn(&str, &Record) -> String),
}

/// A named chain of filters (`filter_list` entry); a task without one has lm-eval's
/// `none` chain, `take_first` alone.
#[derive(Debug, Clone)]
pub struct FilterChain {
    pub name: String,
    pub steps: Vec<FilterStep>,
}

impl FilterChain {
    pub fn none() -> FilterChain {
        FilterChain { name: "none".into(), steps: vec![FilterStep::TakeFirst] }
    }

    /// The chain applied to a document's responses: what is scored.
    pub fn apply(&self, responses: &[String], doc: &Record) -> Vec<String> {
        let mut values = responses.to_vec();
        for step in &self.steps {
            values = match step {
                FilterStep::TakeFirst => values.into_iter().take(1).collect(),
                FilterStep::Regex { regex, group_select, fallback } => {
                    values.iter().map(|v| find(regex, *group_select, v).unwrap_or_else(|| fallback.clone())).collect()
                }
                FilterStep::RemoveWhitespace => values.iter().map(|v| v.trim_start().to_string()).collect(),
                FilterStep::MajorityVote => {
                    let count = |v: &String| values.iter().filter(|w| *w == v).count();
                    let most = values.iter().map(count).max().unwrap_or(0);
                    values.iter().find(|v| count(v) == most).cloned().into_iter().collect()
                }
                FilterStep::Lowercase => values.iter().map(|v| v.to_lowercase()).collect(),
                FilterStep::Uppercase => values.iter().map(|v| v.to_uppercase()).collect(),
                FilterStep::Custom(function) => values.iter().map(|v| function(v, doc)).collect(),
            };
        }
        values
    }
}

/// lm-eval's `RegexFilter` on one response: `re.findall`, then the selected match.
fn find(regex: &Regex, group_select: i64, text: &str) -> Option<String> {
    let groups = regex.captures_len() - 1;
    let matches: Vec<Vec<String>> = regex
        .captures_iter(text)
        .map(|c| match groups {
            0 => vec![c[0].to_string()],
            n => (1..=n).map(|g| c.get(g).map_or(String::new(), |m| m.as_str().to_string())).collect(),
        })
        .collect();
    if matches.is_empty() {
        return None;
    }
    let index = if group_select < 0 { matches.len() as i64 + group_select } else { group_select };
    let chosen = matches.get(usize::try_from(index).ok()?)?;
    // A tuple of groups: its first non-empty one.
    let value = chosen.iter().find(|g| !g.is_empty())?;
    Some(value.trim().to_string())
}

/// `exact_match`'s options (`metric_list` entry keys).
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub regexes_to_ignore: Vec<Regex>,
}

impl ExactMatch {
    /// 1.0 when `prediction` equals `reference` after the options' changes, else 0.0.
    pub fn score(&self, prediction: &str, reference: &str) -> f64 {
        let clean = |text: &str| {
            let mut text = text.to_string();
            for regex in &self.regexes_to_ignore {
                text = regex.replace_all(&text, "").into_owned();
            }
            if self.ignore_case {
                text = text.to_lowercase();
            }
            if self.ignore_punctuation {
                text.retain(|c| !c.is_ascii_punctuation());
            }
            text
        };
        if clean(prediction) == clean(reference) {
            1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(pattern: &str, group_select: i64) -> FilterStep {
        FilterStep::Regex { regex: Regex::new(pattern).unwrap(), group_select, fallback: "[invalid]".into() }
    }

    #[test]
    fn gsm8k_filters_pick_answers_as_lm_eval() {
        let response = "She pays 3 * 4 = $12.\n#### 12\nQuestion: next".to_string();
        let strict = FilterChain {
            name: "strict-match".into(),
            steps: vec![regex(r"#### (\-?[0-9\.\,]+)", 0), FilterStep::TakeFirst],
        };
        assert_eq!(strict.apply(std::slice::from_ref(&response), &Record::new()), vec!["12"]);
        // flexible-extract: the last of the numbers, each match a tuple of two groups.
        let flexible = FilterChain {
            name: "flexible-extract".into(),
            steps: vec![regex(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1), FilterStep::TakeFirst],
        };
        assert_eq!(flexible.apply(std::slice::from_ref(&response), &Record::new()), vec!["12"]);
        assert_eq!(strict.apply(&["no answer".to_string()], &Record::new()), vec!["[invalid]"]);
        let votes: Vec<String> = ["7", "12", "12", "7", "9"].iter().map(|v| v.to_string()).collect();
        let majority = FilterChain { name: "maj".into(), steps: vec![FilterStep::MajorityVote, FilterStep::TakeFirst] };
        assert_eq!(majority.apply(&votes, &Record::new()), vec!["7"], "of equal counts, the first given");
        let words = FilterChain { name: "w".into(), steps: vec![FilterStep::RemoveWhitespace, FilterStep::Lowercase] };
        assert_eq!(words.apply(&["  Paris Is".to_string()], &Record::new()), vec!["paris is"]);
    }

    #[test]
    fn exact_match_applies_its_options_as_evaluate() {
        let gsm8k = ExactMatch {
            ignore_case: true,
            ignore_punctuation: false,
            regexes_to_ignore: [",", r"\$", "(?s).*#### ", r"\.$"].iter().map(|r| Regex::new(r).unwrap()).collect(),
        };
        assert_eq!(gsm8k.score("1,234", "Natalia sold 48/2 = 24.\n#### 1234"), 1.0);
        assert_eq!(gsm8k.score("$18.", "#### 18"), 1.0);
        assert_eq!(gsm8k.score("17", "#### 18"), 0.0);
        let plain = ExactMatch::default();
        assert_eq!(plain.score("Paris", "paris"), 0.0);
        let loose = ExactMatch { ignore_case: true, ignore_punctuation: true, ..ExactMatch::default() };
        assert_eq!(loose.score("Paris!", "paris"), 1.0);
    }
}
