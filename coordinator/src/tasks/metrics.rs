//! Metrics as lm-evaluation-harness defines them: `acc`, `acc_norm` (log-probability per
//! character of the choice), llama.cpp's `acc_norm_tokens`, LAMBADA's perplexity and
//! accuracy, and the rolling-perplexity family; standard errors as lm-eval computes them:
//! in closed form for means, by its own bootstrap for LAMBADA's perplexity, none for the
//! weighted rolling figures, pooled for groups.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::python_random::PythonRandom;
use super::requests::{PlannedRequest, RequestScore};
use super::Target;

/// lm-evaluation-harness's bootstrap: `bootstrap_iters` (100,000) resamples in chunks of
/// 1,000, chunk `i` drawn by `random.Random(i).choices`.
pub const BOOTSTRAP_ITERATIONS: usize = 100_000;
const BOOTSTRAP_CHUNK: usize = 1000;
const BOOTSTRAP_CHUNKS: u32 = (BOOTSTRAP_ITERATIONS / BOOTSTRAP_CHUNK) as u32;

/// One document's outcome, for aggregation and the samples log.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Choice { acc: f64, acc_norm: f64, acc_norm_tokens: f64 },
    Partial { acc: f64 },
    Greedy { acc: f64, logprob: f64 },
    Rolling { logprob: f64, tokens: usize, words: usize, bytes: usize },
}

/// Index of the first maximum (numpy's argmax).
fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// Length of the token prefix that every branch shares.
fn common_prefix(branches: &[&[u32]]) -> usize {
    let shortest = branches.iter().map(|b| b.len()).min().unwrap_or(0);
    (0..shortest).find(|&i| branches.iter().any(|b| b[i] != branches[0][i])).unwrap_or(shortest)
}

/// Scores one document by its log-likelihoods; `None` for a generated one, which its
/// filters and `exact_match` score instead (`filters`).
pub fn outcome(target: &Target, planned: &[PlannedRequest], scores: &[RequestScore]) -> Option<Outcome> {
    Some(match target {
        Target::Choice { gold, choices } => {
            let lls: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
            let per_char: Vec<f64> =
                lls.iter().zip(choices).map(|(ll, c)| ll / c.chars().count().max(1) as f64).collect();
            // llama.cpp: drop the tokens every choice starts with, average the rest.
            let continuations: Vec<&[u32]> = planned.iter().map(|p| p.continuation.as_slice()).collect();
            let skip = common_prefix(&continuations);
            let per_token: Vec<f64> = scores
                .iter()
                .map(|s| {
                    let rest = &s.token_logprobs[skip.min(s.token_logprobs.len())..];
                    rest.iter().map(|&v| v as f64).sum::<f64>() / rest.len().max(1) as f64
                })
                .collect();
            let hit = |values: &[f64]| if argmax(values) == *gold { 1.0 } else { 0.0 };
            Outcome::Choice { acc: hit(&lls), acc_norm: hit(&per_char), acc_norm_tokens: hit(&per_token) }
        }
        Target::Partial { gold } => {
            let lls: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
            Outcome::Partial { acc: if argmax(&lls) == *gold { 1.0 } else { 0.0 } }
        }
        Target::Greedy => Outcome::Greedy { acc: if scores[0].greedy { 1.0 } else { 0.0 }, logprob: scores[0].logprob },
        Target::Rolling { words, bytes } => Outcome::Rolling {
            logprob: scores.iter().map(|s| s.logprob).sum(),
            tokens: scores.iter().map(|s| s.token_logprobs.len()).sum(),
            words: *words,
            bytes: *bytes,
        },
        Target::Generate { .. } => return None,
    })
}

/// Python's `sum(xs) / len(xs)`, lm-evaluation-harness's `mean`.
fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// lm-evaluation-harness's `sample_stddev`, its operations in its order.
fn sample_stddev(xs: &[f64]) -> f64 {
    let mu = mean(xs);
    (xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0)).sqrt()
}

/// Mean and its standard error (`mean_stderr`: the sample standard deviation over √n).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    (mean(xs), sample_stddev(xs) / (xs.len() as f64).sqrt())
}

/// lm-evaluation-harness's `bootstrap_stderr` of `f` over `items`: the same resamples, so
/// the same figure.
fn bootstrap_stderr(items: &[f64], f: impl Fn(&[f64]) -> f64) -> f64 {
    let mut sample = Vec::with_capacity(items.len());
    let mut values = Vec::with_capacity(BOOTSTRAP_CHUNKS as usize * BOOTSTRAP_CHUNK);
    for chunk in 0..BOOTSTRAP_CHUNKS {
        let mut random = PythonRandom::new(chunk);
        for _ in 0..BOOTSTRAP_CHUNK {
            sample.clear();
            sample.extend(random.choices(items.len(), items.len()).map(|i| items[i]));
            values.push(f(&sample));
        }
    }
    sample_stddev(&values)
}

/// The task's metrics under lm-evaluation-harness's `metric,none` and `metric_stderr,none` keys.
pub fn aggregate(outcomes: &[Outcome]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, value: f64, stderr: f64| {
        out.insert(format!("{name},none"), json!(value));
        out.insert(format!("{name}_stderr,none"), json!(stderr));
    };
    let column = |f: fn(&Outcome) -> Option<f64>| outcomes.iter().filter_map(f).collect::<Vec<f64>>();
    let acc = column(|o| match o {
        Outcome::Choice { acc, .. } | Outcome::Partial { acc } | Outcome::Greedy { acc, .. } => Some(*acc),
        Outcome::Rolling { .. } => None,
    });
    if !acc.is_empty() {
        let (m, se) = mean_stderr(&acc);
        put("acc", m, se);
    }
    for (name, f) in [
        (
            "acc_norm",
            (|o: &Outcome| if let Outcome::Choice { acc_norm, .. } = o { Some(*acc_norm) } else { None })
                as fn(&Outcome) -> Option<f64>,
        ),
        ("acc_norm_tokens", |o| {
            if let Outcome::Choice { acc_norm_tokens, .. } = o {
                Some(*acc_norm_tokens)
            } else {
                None
            }
        }),
    ] {
        let values = column(f);
        if !values.is_empty() {
            let (m, se) = mean_stderr(&values);
            put(name, m, se);
        }
    }
    let lls = column(|o| if let Outcome::Greedy { logprob, .. } = o { Some(*logprob) } else { None });
    if !lls.is_empty() {
        // lambada: perplexity = exp(−mean log-likelihood) over documents, bootstrapped.
        let ppl = |xs: &[f64]| (-mean(xs)).exp();
        put("perplexity", ppl(&lls), if lls.len() > 1 { bootstrap_stderr(&lls, ppl) } else { f64::NAN });
    }
    let rolling: Vec<(f64, f64, f64, f64)> = outcomes
        .iter()
        .filter_map(|o| match *o {
            Outcome::Rolling { logprob, tokens, words, bytes } => {
                Some((logprob, tokens as f64, words as f64, bytes as f64))
            }
            _ => None,
        })
        .collect();
    if !rolling.is_empty() {
        // Weighted perplexities, exp(−Σ log-likelihood / Σ units), and bits per byte: lm-eval
        // has no standard error for these aggregations ("N/A").
        let total = |unit: fn(&(f64, f64, f64, f64)) -> f64| rolling.iter().map(unit).sum::<f64>();
        let logprob = total(|x| x.0);
        put("perplexity", (-logprob / total(|x| x.1)).exp(), f64::NAN);
        put("word_perplexity", (-logprob / total(|x| x.2)).exp(), f64::NAN);
        put("byte_perplexity", (-logprob / total(|x| x.3)).exp(), f64::NAN);
        put("bits_per_byte", -logprob / total(|x| x.3) / std::f64::consts::LN_2, f64::NAN);
    }
    out
}

/// A group's score from its tasks' (mean, stderr, size), as lm-evaluation-harness aggregates
/// a group with `weight_by_size: true` (`lm_eval/api/group.py`): the size-weighted mean, and
/// the pooled standard error (`pooled_sample_stderr`), or `None` (lm-eval's `"N/A"`) where a
/// task's standard error is undefined (a task of one document): the mean is kept either way.
pub fn pooled(parts: &[(f64, Option<f64>, usize)]) -> (f64, Option<f64>) {
    let total: usize = parts.iter().map(|p| p.2).sum();
    let mean = parts.iter().map(|(m, _, n)| m * *n as f64).sum::<f64>() / total as f64;
    let stderrs: Option<Vec<(f64, usize)>> = parts.iter().map(|(_, se, n)| se.map(|se| (se, *n))).collect();
    let stderr = stderrs.map(|stderrs| {
        let var = stderrs.iter().map(|(se, n)| (*n as f64 - 1.0) * se * se * *n as f64).sum::<f64>()
            / (total as f64 - parts.len() as f64);
        (var / total as f64).sqrt()
    });
    (mean, stderr.filter(|se| se.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::super::requests::Scored;
    use super::*;

    fn planned(tokens: &[&[u32]]) -> Vec<PlannedRequest> {
        tokens.iter().map(|t| PlannedRequest { scored: Scored::Prefixes(0..0), continuation: t.to_vec() }).collect()
    }

    fn score(lps: &[f32]) -> RequestScore {
        RequestScore { logprob: lps.iter().map(|&v| v as f64).sum(), greedy: false, token_logprobs: lps.to_vec() }
    }

    #[test]
    fn choice_metrics_disagree_where_they_should() {
        // Choice 0: −3 over 1 char; choice 1: −4 over 8 chars. acc picks 0, acc_norm picks 1.
        // Both continuations start with token 7 (scored −2.5 in both), which acc_norm_tokens drops:
        // choice 0 then averages −0.5, choice 1 averages (−0.5 −1)/2 = −0.75, so it picks 0.
        let target = Target::Choice { gold: 1, choices: vec!["a".into(), "abcdefgh".into()] };
        let p = planned(&[&[7, 1], &[7, 2, 3]]);
        let o = outcome(&target, &p, &[score(&[-2.5, -0.5]), score(&[-2.5, -0.5, -1.0])]).unwrap();
        assert_eq!(o, Outcome::Choice { acc: 0.0, acc_norm: 1.0, acc_norm_tokens: 0.0 });
    }

    #[test]
    fn stderr_of_a_mean_uses_n_minus_one() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        // sample variance 1/3, divided by n = 4.
        assert!((se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn rolling_perplexities_weight_by_units() {
        let outcomes = vec![
            Outcome::Rolling { logprob: -10.0, tokens: 5, words: 4, bytes: 20 },
            Outcome::Rolling { logprob: -30.0, tokens: 15, words: 6, bytes: 40 },
        ];
        let m = aggregate(&outcomes);
        let get = |k: &str| m[k].as_f64().unwrap();
        assert!((get("word_perplexity,none") - 4.0f64.exp()).abs() < 1e-12);
        assert!((get("perplexity,none") - 2.0f64.exp()).abs() < 1e-12);
        assert!((get("bits_per_byte,none") - 40.0 / 60.0 / std::f64::consts::LN_2).abs() < 1e-12);
        // lm-eval has no standard error for weighted aggregations: null here, "N/A" in the results.
        assert!(m["word_perplexity_stderr,none"].is_null());
    }

    #[test]
    fn perplexity_is_bootstrapped_as_lm_eval_does() {
        // lm-eval 0.4.13: bootstrap_stderr(perplexity, [-1.5, -0.25, -3.0, -0.75, -2.0], 100000)
        // with DISABLE_MULTIPROC=1 (the pool's chunks draw the same) printed 2.2458309397060896.
        let xs = [-1.5, -0.25, -3.0, -0.75, -2.0];
        assert_eq!(bootstrap_stderr(&xs, |s| (-mean(s)).exp()), 2.2458309397060896);
    }

    #[test]
    fn pooled_group_weights_by_size() {
        let (m, _) = pooled(&[(1.0, Some(0.0), 10), (0.0, Some(0.0), 30)]);
        assert_eq!(m, 0.25);
        // lm-eval's pooled_sample_stderr([0.1, 0.2], [10, 20]):
        // sqrt((9·0.01·10 + 19·0.04·20) / (30 − 2) / 30) = sqrt(16.1 / 28 / 30).
        let (m, se) = pooled(&[(0.5, Some(0.1), 10), (0.25, Some(0.2), 20)]);
        assert!((m - 1.0 / 3.0).abs() < 1e-15);
        assert!((se.unwrap() - (16.1f64 / 28.0 / 30.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn a_group_keeps_its_score_where_a_stderr_is_undefined() {
        // A task of one document has no stderr (lm-eval: "N/A"); the group's is then "N/A" too.
        assert_eq!(pooled(&[(1.0, None, 1), (0.0, Some(0.0), 3)]), (0.25, None));
        assert_eq!(pooled(&[(1.0, None, 1)]), (1.0, None));
    }
}
