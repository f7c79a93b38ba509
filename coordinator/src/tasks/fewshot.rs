//! Few-shot contexts as lm-evaluation-harness builds them: the documents of a task in
//! template form ([`Example`]), their solved demonstrations, and the samplers that pick
//! them: `first_n` (MMLU) and the default one, Python's `random.Random(1234).sample`
//! drawn once per document in document order (`lm_eval/api/samplers.py`).

use rand_mt::Mt;

use super::{Doc, Request, Target};

/// lm-evaluation-harness's default `fewshot_random_seed`.
pub const SEED: u32 = 1234;

/// lm-evaluation-harness's `fewshot_delimiter`, written after every demonstration.
const DELIMITER: &str = "\n\n";

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

impl Example {
    /// The example solved, as a few-shot demonstration: the text, the target delimiter
    /// `" "` and the answer (the sampler's `doc_to_text + target_delimiter + doc_to_target`).
    pub fn demonstration(&self) -> String {
        match self {
            Example::Choice { text, choices, gold } => format!("{text} {}", choices[*gold]),
            Example::Partial { contexts, target, gold } if target.is_empty() => contexts[*gold].clone(),
            Example::Partial { contexts, target, gold } => format!("{} {target}", contexts[*gold]),
            Example::Greedy { text, target } => format!("{text} {target}"),
        }
    }

    /// The example's scoring requests, `prefix` (description and demonstrations) before every
    /// context; the document's record is left for the caller to set.
    pub fn into_doc(self, id: usize, prefix: &str) -> Doc {
        match self {
            Example::Choice { text, choices, gold } => {
                let context = format!("{prefix}{text}");
                let requests = choices
                    .iter()
                    .map(|c| Request { context: context.clone(), continuation: format!(" {c}") })
                    .collect();
                Doc { id, requests, target: Target::Choice { gold, choices }, record: serde_json::Value::Null }
            }
            Example::Partial { contexts, target, gold } => {
                let requests = contexts
                    .iter()
                    .map(|c| Request { context: format!("{prefix}{c}"), continuation: format!(" {target}") })
                    .collect();
                Doc { id, requests, target: Target::Partial { gold }, record: serde_json::Value::Null }
            }
            Example::Greedy { text, target } => {
                let request = Request { context: format!("{prefix}{text}"), continuation: target };
                Doc { id, requests: vec![request], target: Target::Greedy, record: serde_json::Value::Null }
            }
        }
    }
}

/// Where a task's demonstrations come from.
pub enum Sampler {
    /// The first examples of a split, the same for every document (`first_n`).
    FirstN(Vec<Example>),
    /// Examples drawn at random from `pool` for each document in turn. `draws_extra`: the
    /// pool is the evaluated split itself (`fewshot_split == test_split`), so one more is
    /// drawn; in every case a drawn example equal to the document is dropped.
    Random { pool: Vec<Example>, draws_extra: bool },
}

/// The demonstrations (each followed by `"\n\n"`) that precede each of `docs` with `shots`
/// examples, or the most shots the sampler allows when it holds too few.
pub fn contexts(docs: &[Example], sampler: &Sampler, shots: usize) -> Result<Vec<String>, usize> {
    let join = |examples: &mut dyn Iterator<Item = &Example>| -> String {
        examples.map(|e| e.demonstration() + DELIMITER).collect()
    };
    match sampler {
        Sampler::FirstN(examples) => {
            if examples.len() < shots {
                return Err(examples.len());
            }
            let context = join(&mut examples[..shots].iter());
            Ok(vec![context; docs.len()])
        }
        Sampler::Random { pool, draws_extra } => {
            let extra = usize::from(*draws_extra);
            if pool.len() < shots + extra {
                return Err(pool.len().saturating_sub(extra));
            }
            let mut random = PythonRandom::new(SEED);
            Ok(docs
                .iter()
                .map(|doc| {
                    let drawn = random.sample(pool.len(), shots + extra);
                    join(&mut drawn.into_iter().map(|i| &pool[i]).filter(|e| *e != doc).take(shots))
                })
                .collect())
        }
    }
}

/// CPython's `random.Random(seed)` for a seed below 2³², as far as `sample` uses it:
/// MT19937 seeded by `init_by_array([seed])`, `getrandbits` and `_randbelow`.
pub struct PythonRandom(Mt);

impl PythonRandom {
    pub fn new(seed: u32) -> Self {
        PythonRandom(Mt::new_with_key([seed]))
    }

    /// `getrandbits(bits)` for `bits` in 1..=32: the top bits of one 32-bit output.
    fn bits(&mut self, bits: u32) -> u64 {
        u64::from(self.0.next_u32() >> (32 - bits))
    }

    /// `_randbelow_with_getrandbits(n)`: rejection sampling on `n.bit_length()` bits.
    fn below(&mut self, n: usize) -> usize {
        let bits = usize::BITS - n.leading_zeros();
        assert!(bits <= 32, "pool of {n} examples is beyond getrandbits' one-word path");
        loop {
            let r = self.bits(bits);
            if r < n as u64 {
                return r as usize;
            }
        }
    }

    /// `sample(range(n), k)`: a partial Fisher-Yates over a pool list when the
    /// population is small, else rejection of repeats through a set.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut set_size = 21;
        if k > 5 {
            set_size += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= set_size {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.below(n - i);
                    let chosen = pool[j];
                    pool[j] = pool[n - i - 1];
                    chosen
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| loop {
                    let j = self.below(n);
                    if selected.insert(j) {
                        return j;
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3 (`random.Random(1234)`), the sampler lm-evaluation-harness uses.
    #[test]
    fn python_random_matches_cpython() {
        let mut r = PythonRandom::new(SEED);
        assert_eq!([r.0.next_u32(), r.0.next_u32(), r.0.next_u32()], [4150886329, 3342196574, 1892932127]);
        let mut r = PythonRandom::new(SEED);
        assert_eq!([r.sample(10, 2), r.sample(10, 2), r.sample(10, 2)], [[7, 1], [0, 1], [9, 0]]);
        let mut r = PythonRandom::new(SEED);
        assert_eq!(r.sample(1000, 6), [989, 796, 451, 119, 7, 92]);
        assert_eq!(r.sample(1000, 6), [932, 965, 961, 826, 596, 35]);
        let mut r = PythonRandom::new(SEED);
        assert_eq!(r.sample(5153, 4), [3610, 957, 61, 742]);
        assert_eq!(r.sample(5153, 4), [4769, 286, 687, 806]);
    }

    fn choice(text: &str) -> Example {
        Example::Choice { text: text.into(), choices: vec!["no".into(), "yes".into()], gold: 1 }
    }

    #[test]
    fn random_demonstrations_follow_the_draws_and_skip_the_document() {
        let pool: Vec<Example> = (0..10).map(|i| choice(&format!("q{i}"))).collect();
        // Draws for 3 documents, one extra each: [7, 1], [0, 1], [9, 0] (see above).
        // The first document is q7 itself, so it gets the second draw.
        let docs = [pool[7].clone(), pool[5].clone(), pool[9].clone()];
        let sampler = Sampler::Random { pool, draws_extra: true };
        let got = contexts(&docs, &sampler, 1).unwrap();
        assert_eq!(got, ["q1 yes\n\n", "q0 yes\n\n", "q0 yes\n\n"]);
        // Ten examples, one drawn beside the document's own: nine shots at most.
        assert_eq!(contexts(&docs, &sampler, 10), Err(9));
    }

    #[test]
    fn demonstrations_use_each_form_of_answer() {
        let partial =
            Example::Partial { contexts: vec!["A went".into(), "B went".into()], target: "home.".into(), gold: 1 };
        let greedy = Example::Greedy { text: "the last".into(), target: " word".into() };
        let sampler = Sampler::FirstN(vec![partial, greedy]);
        assert_eq!(contexts(&[choice("x")], &sampler, 2).unwrap(), ["B went home.\n\nthe last  word\n\n"]);
    }
}
