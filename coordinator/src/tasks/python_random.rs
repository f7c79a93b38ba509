//! CPython's `random` module as far as lm-evaluation-harness's draws use it: the few-shot
//! sampler's `random.Random(1234).sample` and the bootstrap's `random.Random(i).choices`,
//! so that evalmesh draws what lm-eval draws.

use rand_mt::Mt;

/// CPython's `random.Random(seed)` for a seed below 2³²: MT19937 seeded by
/// `init_by_array([seed])`.
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

    /// `random()`: a float in [0, 1) from 53 bits of two outputs.
    pub fn random(&mut self) -> f64 {
        let (a, b) = (self.0.next_u32() >> 5, self.0.next_u32() >> 6);
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `choices(range(n), k=k)`: `floor(random() * n)`, `k` times.
    pub fn choices(&mut self, n: usize, k: usize) -> impl Iterator<Item = usize> + '_ {
        (0..k).map(move |_| (self.random() * n as f64) as usize)
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
        let mut r = PythonRandom::new(1234);
        assert_eq!([r.0.next_u32(), r.0.next_u32(), r.0.next_u32()], [4150886329, 3342196574, 1892932127]);
        let mut r = PythonRandom::new(1234);
        assert_eq!([r.sample(10, 2), r.sample(10, 2), r.sample(10, 2)], [[7, 1], [0, 1], [9, 0]]);
        let mut r = PythonRandom::new(1234);
        assert_eq!(r.sample(1000, 6), [989, 796, 451, 119, 7, 92]);
        assert_eq!(r.sample(1000, 6), [932, 965, 961, 826, 596, 35]);
        let mut r = PythonRandom::new(1234);
        assert_eq!(r.sample(5153, 4), [3610, 957, 61, 742]);
        assert_eq!(r.sample(5153, 4), [4769, 286, 687, 806]);
    }

    // CPython 3: random.Random(0).random() twice; Random(7).choices(range(10), k=8);
    // Random(99).choices(range(500), k=5).
    #[test]
    fn floats_and_choices_match_cpython() {
        let mut r = PythonRandom::new(0);
        assert_eq!([r.random(), r.random()], [0.8444218515250481, 0.7579544029403025]);
        assert_eq!(PythonRandom::new(7).choices(10, 8).collect::<Vec<_>>(), [3, 1, 6, 0, 5, 3, 0, 5]);
        assert_eq!(PythonRandom::new(99).choices(500, 5).collect::<Vec<_>>(), [201, 100, 89, 124, 379]);
    }
}
