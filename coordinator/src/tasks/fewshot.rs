//! Few-shot contexts as lm-evaluation-harness builds them: the documents of a task in
//! template form ([`Example`]), their solved demonstrations, and the samplers that pick
//! them: `first_n` (MMLU) and the default `ContextSampler`, CPython's `random.Random(seed)`
//! (lm-eval's default seed 1234, or `--seed`'s few-shot one) seeded once per task and drawn from once per document in document order, with or without
//! the document handed over to be left out ([`EvalDoc`]; `lm_eval/api/samplers.py`,
//! `lm_eval/api/task.py`).

use super::python_random::PythonRandom;

/// What joins a demonstration's text to its answer (`target_delimiter`) and follows each
/// demonstration (`fewshot_delimiter`); lm-evaluation-harness's defaults are `" "` and `"\n\n"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters {
    pub target: String,
    pub fewshot: String,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters { target: " ".into(), fewshot: "\n\n".into() }
    }
}

/// A document as the task's templates render it, before it becomes scoring requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// `text`, then `" " + choice` for each choice.
    Choice { text: String, choices: Vec<String>, gold: usize },
    /// Winogrande's multiple-input form: each option's context, then `" " + target`.
    Partial { contexts: Vec<String>, target: String, gold: usize },
    /// `text`, then `target`, which holds its own leading space (LAMBADA).
    Greedy { text: String, target: String },
}

/// A solved example as a few-shot turn: the question (the text) and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

impl Turn {
    /// The turn as plain text: the question, the target delimiter and the answer (the
    /// sampler's `doc_to_text + target_delimiter + doc_to_target`), then the few-shot
    /// delimiter.
    pub fn plain(&self, delimiters: &Delimiters) -> String {
        match self.answer.is_empty() {
            true => format!("{}{}", self.question, delimiters.fewshot),
            false => format!("{}{}{}{}", self.question, delimiters.target, self.answer, delimiters.fewshot),
        }
    }
}

impl Example {
    /// The example as a few-shot turn.
    pub fn turn(&self) -> Turn {
        let (question, answer) = match self {
            Example::Choice { text, choices, gold } => (text.clone(), choices[*gold].clone()),
            Example::Partial { contexts, target, gold } => (contexts[*gold].clone(), target.clone()),
            Example::Greedy { text, target } => (text.clone(), target.clone()),
        };
        Turn { question, answer }
    }
}

/// A document as lm-evaluation-harness's sampler compares it (`x != eval_doc`): its dataset
/// row, equal to another with the same keys and equal values (Python's dict equality).
pub type Row = serde_json::Value;

/// Where a task's demonstrations come from.
pub enum Sampler {
    /// The first examples of a split, the same for every document (`first_n`).
    FirstN(Vec<Example>),
    /// lm-evaluation-harness's default sampler: examples drawn from `pool` for each document
    /// in turn by one `random.Random(seed)`, seeded once for the task (`set_fewshot_seed`).
    Random { pool: Vec<Example>, eval_doc: EvalDoc, seed: u32 },
}

/// Whether lm-evaluation-harness hands the document to the sampler as `eval_doc`: it does
/// when `fewshot_cfg.split == config.test_split` (`lm_eval/api/task.py`), both unset included.
pub enum EvalDoc {
    /// Not handed over (arc and lambada_openai: `test_split: test`, no `fewshot_split`): `k`
    /// drawn and kept, even one that is the document itself.
    Ignored,
    /// Handed over (hellaswag, piqa, winogrande: neither split set, `None == None`; the generic
    /// file, its own few-shot split): `k + 1` drawn, those equal to the document dropped, the
    /// first `k` kept; where that leaves fewer than `k` (the document drawn twice), `k` drawn
    /// again from the pool without it. Document `d` is `doc_rows[d]`, pool example `i` is `pool_rows[i]`.
    Excluded { pool_rows: Vec<Row>, doc_rows: Vec<Row> },
}

impl Sampler {
    /// The default sampler over `pool` for documents that are not handed over.
    pub fn random(pool: Vec<Example>, seed: u32) -> Sampler {
        Sampler::Random { pool, eval_doc: EvalDoc::Ignored, seed }
    }

    /// The default sampler over `pool` (whose rows are `pool_rows`) for documents handed
    /// over, whose rows are `doc_rows`.
    pub fn excluding(pool: Vec<Example>, pool_rows: Vec<Row>, doc_rows: Vec<Row>, seed: u32) -> Sampler {
        Sampler::Random { pool, eval_doc: EvalDoc::Excluded { pool_rows, doc_rows }, seed }
    }
}

/// The demonstrations that precede each of `docs` documents with `shots` examples, or the
/// most shots the sampler allows when it holds too few.
pub fn demonstrations(docs: usize, sampler: &Sampler, shots: usize) -> Result<Vec<Vec<Turn>>, usize> {
    match sampler {
        Sampler::FirstN(examples) => {
            if examples.len() < shots {
                return Err(examples.len());
            }
            Ok(vec![examples[..shots].iter().map(Example::turn).collect(); docs])
        }
        Sampler::Random { pool, eval_doc, seed } => {
            let same = match eval_doc {
                EvalDoc::Ignored => None,
                EvalDoc::Excluded { pool_rows, doc_rows } => Some(|d: usize, i: usize| pool_rows[i] == doc_rows[d]),
            };
            let same = same.as_ref().map(|f| f as &dyn Fn(usize, usize) -> bool);
            let draws = random_draws(*seed, pool.len(), docs, shots, same)?;
            Ok(draws.iter().map(|drawn| drawn.iter().map(|&i| pool[i].turn()).collect()).collect())
        }
    }
}

pub fn random_draws(
    seed: u32,
    pool: usize,
    docs: usize,
    shots: usize,
    same: Option<&dyn Fn(usize, usize) -> bool>,
) -> Result<Vec<Vec<usize>>, usize> {
    if shots == 0 {
        return Ok(vec![Vec::new(); docs]);
    }
    let extra = usize::from(same.is_some());
    if pool < shots + extra {
        return Err(pool.saturating_sub(extra));
    }
    let mut random = PythonRandom::new(seed);
    (0..docs)
        .map(|d| {
            let Some(same) = same else { return Ok(random.sample(pool, shots)) };
            // rm_eval_doc(eval_doc, rnd.sample(pool, n + 1), n)
            let kept: Vec<usize> =
                random.sample(pool, shots + 1).into_iter().filter(|&i| !same(d, i)).take(shots).collect();
            if kept.len() == shots {
                return Ok(kept);
            }
            // The document was drawn more than once: rnd.sample([x for x in pool if x != eval_doc], n).
            let others: Vec<usize> = (0..pool).filter(|&i| !same(d, i)).collect();
            if others.len() < shots {
                return Err(others.len());
            }
            Ok(random.sample(others.len(), shots).into_iter().map(|j| others[j]).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each document's demonstrations as plain text.
    fn contexts(docs: usize, sampler: &Sampler, shots: usize, delimiters: &Delimiters) -> Result<Vec<String>, usize> {
        let turns = demonstrations(docs, sampler, shots)?;
        Ok(turns.iter().map(|t| t.iter().map(|t| t.plain(delimiters)).collect()).collect())
    }

    fn choice(text: &str) -> Example {
        Example::Choice { text: text.into(), choices: vec!["no".into(), "yes".into()], gold: 1 }
    }

    fn rows(values: &[&str]) -> Vec<Row> {
        values.iter().map(|v| serde_json::json!(v)).collect()
    }

    fn handed_over(pool: Vec<Example>, pool_rows: &[&str], doc_rows: &[&str]) -> Sampler {
        Sampler::excluding(pool, rows(pool_rows), rows(doc_rows), 1234)
    }

    #[test]
    fn handed_over_documents_are_left_out_of_one_draw_more() {
        let pool: Vec<Example> = (0..10).map(|i| choice(&format!("q{i}"))).collect();
        let names: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Draws for 3 documents, one extra each: [7, 1], [0, 1], [9, 0] (see above).
        // The first document is q7 itself, so it gets the second draw.
        let sampler = handed_over(pool, &names, &["q7", "q5", "q9"]);
        let got = contexts(3, &sampler, 1, &Delimiters::default()).unwrap();
        assert_eq!(got, ["q1 yes\n\n", "q0 yes\n\n", "q0 yes\n\n"]);
        // Ten examples, one drawn beside the document's own: nine shots at most.
        assert_eq!(contexts(3, &sampler, 10, &Delimiters::default()), Err(9));
    }

    /// A task's own `target_delimiter` and `fewshot_delimiter` join and follow each demonstration.
    #[test]
    fn custom_delimiters_join_the_demonstrations() {
        let sampler = Sampler::FirstN(vec![choice("q0"), choice("q1")]);
        let delimiters = Delimiters { target: " => ".into(), fewshot: "\n###\n".into() };
        assert_eq!(contexts(1, &sampler, 2, &delimiters).unwrap(), ["q0 => yes\n###\nq1 => yes\n###\n"]);
    }

    #[test]
    fn a_document_drawn_twice_has_the_pool_drawn_again_without_it() {
        // lm-eval 0.4.13: s = ContextSampler([a, a, b, c]); s.set_rnd(1234);
        // [s.sample(n=2, eval_doc=a) for _ in range(4)] picks rows [3, 2], [2, 3], [2, 3], [3, 2]:
        // the third draw, [0, 3, 1], holds both copies of a, so [b, c] is drawn from again.
        let pool: Vec<Example> = (0..4).map(|i| choice(&format!("q{i}"))).collect();
        let sampler = handed_over(pool, &["a", "a", "b", "c"], &["a"; 4]);
        let got = contexts(4, &sampler, 2, &Delimiters::default()).unwrap();
        let [two_three, three_two] = ["q2 yes\n\nq3 yes\n\n", "q3 yes\n\nq2 yes\n\n"];
        assert_eq!(got, [three_two, two_three, two_three, three_two]);
        let same = |_: usize, i: usize| i < 2;
        assert_eq!(random_draws(1234, 4, 4, 3, Some(&same)), Err(2), "b and c are all that is left");
    }

    #[test]
    fn documents_not_handed_over_keep_every_draw() {
        // CPython: r = random.Random(1234); [r.sample(range(10), 1) for _ in range(3)] == [[7], [1], [0]].
        let pool: Vec<Example> = (0..10).map(|i| choice(&format!("q{i}"))).collect();
        let got = contexts(3, &Sampler::random(pool, 1234), 1, &Delimiters::default()).unwrap();
        // The first document may be q7: it keeps q7 all the same.
        assert_eq!(got, ["q7 yes\n\n", "q1 yes\n\n", "q0 yes\n\n"]);
        assert_eq!(random_draws(1234, 10, 2, 10, None).map(|d| d.len()), Ok(2), "all ten may be drawn");
        assert_eq!(random_draws(1234, 10, 2, 0, None), Ok(vec![vec![], vec![]]));
    }

    #[test]
    fn demonstrations_use_each_form_of_answer() {
        let partial =
            Example::Partial { contexts: vec!["A went".into(), "B went".into()], target: "home.".into(), gold: 1 };
        let greedy = Example::Greedy { text: "the last".into(), target: " word".into() };
        let sampler = Sampler::FirstN(vec![partial, greedy]);
        assert_eq!(contexts(1, &sampler, 2, &Delimiters::default()).unwrap(), ["B went home.\n\nthe last  word\n\n"]);
    }
}
