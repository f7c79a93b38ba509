//! Choosing the next token from a row of logits (docs/ARCHITECTURE.md §12), on the host
//! in f64: greedy (the most likely, ties to the lower id) or a seeded draw after
//! temperature, top-k and top-p, whose uniform number depends only on the request's seed
//! and the token's index, so a sampled sequence is reproducible whatever the batch.

use evalmesh_common::decode::{Choice, NextToken};

/// The token `choice` picks from `logits`, the `index`-th generated of its sequence,
/// never one of `suppressed`; its log-probability is under the whole distribution.
pub fn choose(logits: &[f32], choice: Choice, index: usize, suppressed: &[u32]) -> NextToken {
    let first_max = |values: &[f32]| {
        values
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
    };
    let (best, max) = first_max(logits);
    let max = max as f64;
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let allowed: std::borrow::Cow<[f32]> = match suppressed {
        [] => logits.into(),
        _ => {
            let mut masked = logits.to_vec();
            for &t in suppressed {
                if let Some(v) = masked.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            masked.into()
        }
    };
    let token = match choice {
        Choice::Greedy => first_max(&allowed).0,
        Choice::Sample { temperature, top_k, top_p, seed } => {
            sample(&allowed, temperature as f64, top_k, top_p as f64, uniform(seed, index as u64))
        }
    };
    NextToken { token: token as u32, logprob: (logits[token] as f64 - max - log_sum) as f32, greedy: token == best }
}

/// A token drawn at `u` ∈ [0, 1) from the tempered softmax kept to the top `k` (0: all)
/// and then to the smallest most-likely set whose probability reaches `p`.
fn sample(logits: &[f32], temperature: f64, k: usize, p: f64, u: f64) -> usize {
    if temperature <= 0.0 {
        return logits.iter().enumerate().fold(0, |b, (i, &v)| if v > logits[b] { i } else { b });
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if k > 0 {
        order.truncate(k);
    }
    let top = logits[order[0]] as f64 / temperature;
    let weights: Vec<f64> = order.iter().map(|&i| (logits[i] as f64 / temperature - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < weights.len() && (kept == 0 || mass < p * total) {
        mass += weights[kept];
        kept += 1;
    }
    let target = u * mass;
    let mut running = 0.0;
    for (&token, &w) in order.iter().zip(&weights[..kept]) {
        running += w;
        if running > target {
            return token;
        }
    }
    order[kept - 1]
}

/// A uniform number in [0, 1) from (seed, index): SplitMix64 of both, 53 bits.
fn uniform(seed: u64, index: u64) -> f64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    (mix(seed ^ mix(index)) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_with_its_log_probability() {
        let next = choose(&[1.0, 3.0, 3.0, 0.0], Choice::Greedy, 0, &[]);
        assert_eq!(next.token, 1);
        assert!(next.greedy);
        let want = 3.0 - (1f64.exp() + 2.0 * 3f64.exp() + 1.0).ln();
        assert!((next.logprob as f64 - want).abs() < 1e-6);
        // With the first maximum suppressed, the second is chosen, no longer the greedy one.
        let next = choose(&[1.0, 3.0, 3.0, 0.0], Choice::Greedy, 0, &[1]);
        assert_eq!((next.token, next.greedy), (2, false));
    }

    #[test]
    fn sampling_follows_the_distribution_and_its_cuts() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let draws = |choice| (0..4000).map(|i| choose(&logits, choice, i, &[]).token as usize).collect::<Vec<_>>();
        let all = draws(Choice::Sample { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 5 });
        let share = all.iter().filter(|&&t| t == 0).count() as f64 / all.len() as f64;
        let want = 1.0 / (1.0 + (-1f64).exp() + (-2f64).exp() + (-3f64).exp());
        // 4000 draws: the standard error of the share is under 0.008.
        assert!((share - want).abs() < 0.03, "{share} vs {want}");
        let top2 = draws(Choice::Sample { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 5 });
        assert!(top2.iter().all(|&t| t < 2));
        // The first token alone holds 64% of the mass: top-p 0.5 keeps only it.
        let nucleus = draws(Choice::Sample { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 5 });
        assert!(nucleus.iter().all(|&t| t == 0));
        // The same seed and index give the same token; another seed other draws.
        assert_eq!(all, draws(Choice::Sample { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 5 }));
        assert_ne!(all, draws(Choice::Sample { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 6 }));
    }
}
