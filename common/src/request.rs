//! Scoring requests and their packed form (docs/ARCHITECTURE.md §5).
//!
//! A [`ScoreTree`] is one shared prefix and zero or more branches; a branch token
//! attends to the whole prefix and causally within its branch. The coordinator packs
//! trees into a [`MicroBatch`]: a flat list of input tokens, a small layout table
//! ([`TreeLayout`]) and the (row, target) pairs whose log-probabilities are wanted.
//! No padding: the layout drives attention on every backend.

use serde::{Deserialize, Serialize};

/// A request that cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("a tree needs at least one prefix token")]
    EmptyPrefix,
    #[error("prefix targets start at {from}, past the prefix of {len} tokens")]
    TargetsPastPrefix { from: usize, len: usize },
    #[error("a branch has no tokens")]
    EmptyBranch,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfVocabulary { id: u32, vocab: usize },
    #[error("a tree needs {len} positions, more than the model's {max}")]
    TooLong { len: usize, max: usize },
    #[error("micro-batch layout: {0}")]
    Layout(String),
}

/// One loglikelihood request in prefix-tree form.
///
/// Prefix tokens at index `prefix_targets_from` and later are scored (each predicted
/// by the token before it), and so is every branch token (the first predicted by the
/// last prefix token). A multiple-choice question is one tree, its choices the branches;
/// a perplexity window is a tree with no branches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreTree {
    pub prefix: Vec<u32>,
    pub prefix_targets_from: usize,
    pub branches: Vec<Vec<u32>>,
}

/// Log-probability of one target token and whether it was the model's greedy choice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    pub logprob: f32,
    pub greedy: bool,
}

/// The scores of one tree, in the order of its targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeScores {
    pub prefix: Vec<TokenScore>,
    pub branches: Vec<Vec<TokenScore>>,
}

impl ScoreTree {
    /// Rows this tree occupies in a micro-batch: every prefix token (or all but the
    /// last when no branch follows), and every branch token but the last.
    pub fn input_len(&self) -> usize {
        let prefix_rows = if self.branches.is_empty() { self.prefix.len() - 1 } else { self.prefix.len() };
        prefix_rows + self.branches.iter().map(|b| b.len() - 1).sum::<usize>()
    }

    /// Number of scored target tokens.
    pub fn target_count(&self) -> usize {
        self.prefix.len().saturating_sub(self.prefix_targets_from.max(1))
            + self.branches.iter().map(Vec::len).sum::<usize>()
    }

    /// Tokens a model would compute without prefix sharing: each branch with its own copy of the prefix.
    pub fn unshared_input_len(&self) -> usize {
        if self.branches.is_empty() {
            return self.input_len();
        }
        self.branches.iter().map(|b| self.prefix.len() + b.len() - 1).sum()
    }

    pub fn validate(&self, vocab: usize, max_position: usize) -> Result<(), RequestError> {
        if self.prefix.is_empty() {
            return Err(RequestError::EmptyPrefix);
        }
        if self.prefix_targets_from > self.prefix.len() {
            return Err(RequestError::TargetsPastPrefix { from: self.prefix_targets_from, len: self.prefix.len() });
        }
        if self.branches.iter().any(Vec::is_empty) {
            return Err(RequestError::EmptyBranch);
        }
        // Every token but the last of the longest path is an input row with a position.
        let positions = self.prefix.len() + self.branches.iter().map(Vec::len).max().unwrap_or(0) - 1;
        if positions > max_position {
            return Err(RequestError::TooLong { len: positions, max: max_position });
        }
        let all = self.prefix.iter().chain(self.branches.iter().flatten());
        match all.copied().find(|&id| id as usize >= vocab) {
            Some(id) => Err(RequestError::TokenOutOfVocabulary { id, vocab }),
            None => Ok(()),
        }
    }
}

/// Where one tree lies in a micro-batch: `prefix_len` rows from `start`, then each
/// branch's rows in order. Branches with no input rows (one-token branches) are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeLayout {
    pub start: usize,
    pub prefix_len: usize,
    pub branch_lens: Vec<usize>,
}

impl TreeLayout {
    pub fn len(&self) -> usize {
        self.prefix_len + self.branch_lens.iter().sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One row whose next-token distribution is scored against `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoredRow {
    pub row: usize,
    pub target: u32,
}

/// Trees packed into flat rows: the unit of work a stage computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicroBatch {
    pub tokens: Vec<u32>,
    pub trees: Vec<TreeLayout>,
    pub scored: Vec<ScoredRow>,
}

impl MicroBatch {
    /// Packs trees in the given order. Targets are listed tree by tree: the prefix
    /// targets, then each branch's.
    pub fn pack(trees: &[&ScoreTree]) -> MicroBatch {
        let mut batch = MicroBatch { tokens: Vec::new(), trees: Vec::new(), scored: Vec::new() };
        for tree in trees {
            let start = batch.tokens.len();
            let prefix_rows = if tree.branches.is_empty() { tree.prefix.len() - 1 } else { tree.prefix.len() };
            batch.tokens.extend_from_slice(&tree.prefix[..prefix_rows]);
            for (i, &target) in tree.prefix.iter().enumerate().skip(tree.prefix_targets_from.max(1)) {
                batch.scored.push(ScoredRow { row: start + i - 1, target });
            }
            let last_prefix_row = start + tree.prefix.len() - 1;
            let mut branch_lens = Vec::new();
            for branch in &tree.branches {
                let branch_start = batch.tokens.len();
                batch.tokens.extend_from_slice(&branch[..branch.len() - 1]);
                for (j, &target) in branch.iter().enumerate() {
                    let row = if j == 0 { last_prefix_row } else { branch_start + j - 1 };
                    batch.scored.push(ScoredRow { row, target });
                }
                if branch.len() > 1 {
                    branch_lens.push(branch.len() - 1);
                }
            }
            batch.trees.push(TreeLayout { start, prefix_len: prefix_rows, branch_lens });
        }
        batch
    }

    /// Position of every row: prefix rows count from 0, branch rows continue after the prefix.
    pub fn positions(&self) -> Vec<u32> {
        let mut positions = Vec::with_capacity(self.tokens.len());
        for tree in &self.trees {
            positions.extend(0..tree.prefix_len as u32);
            for &len in &tree.branch_lens {
                positions.extend(tree.prefix_len as u32..(tree.prefix_len + len) as u32);
            }
        }
        positions
    }

    /// Checks that the layout covers the rows exactly once and the targets are in range.
    pub fn validate(&self, vocab: usize) -> Result<(), RequestError> {
        let mut next = 0;
        for tree in &self.trees {
            if tree.start != next
                || tree.prefix_len == 0 && !tree.branch_lens.is_empty()
                || tree.branch_lens.contains(&0)
            {
                return Err(RequestError::Layout(format!("tree at row {} does not follow row {next}", tree.start)));
            }
            next += tree.len();
        }
        if next != self.tokens.len() {
            return Err(RequestError::Layout(format!("trees cover {next} rows of {}", self.tokens.len())));
        }
        if let Some(s) = self.scored.iter().find(|s| s.row >= self.tokens.len()) {
            return Err(RequestError::Layout(format!("scored row {} is past {} rows", s.row, self.tokens.len())));
        }
        let ids = self.tokens.iter().chain(self.scored.iter().map(|s| &s.target));
        match ids.copied().find(|&id| id as usize >= vocab) {
            Some(id) => Err(RequestError::TokenOutOfVocabulary { id, vocab }),
            None => Ok(()),
        }
    }

    /// Splits the flat scores of [`MicroBatch::pack`]'s targets back into trees.
    pub fn unpack(trees: &[&ScoreTree], scores: &[TokenScore]) -> Result<Vec<TreeScores>, RequestError> {
        let expected: usize = trees.iter().map(|t| t.target_count()).sum();
        if scores.len() != expected {
            return Err(RequestError::Layout(format!("{} scores returned for {expected} targets", scores.len())));
        }
        let mut rest = scores;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head.to_vec()
        };
        Ok(trees
            .iter()
            .map(|tree| TreeScores {
                prefix: take(tree.prefix.len().saturating_sub(tree.prefix_targets_from.max(1))),
                branches: tree.branches.iter().map(|b| take(b.len())).collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice_tree() -> ScoreTree {
        ScoreTree {
            prefix: vec![10, 11, 12],
            prefix_targets_from: 3,
            branches: vec![vec![20, 21], vec![30], vec![40, 41, 42]],
        }
    }

    #[test]
    fn packs_prefix_once_and_branches_without_their_last_token() {
        let a = choice_tree();
        let b = ScoreTree { prefix: vec![1, 2, 3, 4], prefix_targets_from: 2, branches: vec![] };
        let batch = MicroBatch::pack(&[&a, &b]);
        assert_eq!(batch.tokens, vec![10, 11, 12, 20, 40, 41, 1, 2, 3]);
        assert_eq!(batch.trees[0], TreeLayout { start: 0, prefix_len: 3, branch_lens: vec![1, 2] });
        assert_eq!(batch.trees[1], TreeLayout { start: 6, prefix_len: 3, branch_lens: vec![] });
        let rows: Vec<(usize, u32)> = batch.scored.iter().map(|s| (s.row, s.target)).collect();
        assert_eq!(rows, vec![(2, 20), (3, 21), (2, 30), (2, 40), (4, 41), (5, 42), (7, 3), (8, 4)]);
        assert_eq!(batch.positions(), vec![0, 1, 2, 3, 3, 4, 0, 1, 2]);
        assert_eq!(a.input_len() + b.input_len(), batch.tokens.len());
        assert_eq!(a.target_count() + b.target_count(), batch.scored.len());
        batch.validate(100).unwrap();
    }

    #[test]
    fn unpack_returns_scores_per_tree_and_branch() {
        let a = choice_tree();
        let batch = MicroBatch::pack(&[&a]);
        let scores: Vec<TokenScore> =
            (0..batch.scored.len()).map(|i| TokenScore { logprob: -(i as f32), greedy: i % 2 == 0 }).collect();
        let out = MicroBatch::unpack(&[&a], &scores).unwrap();
        assert!(out[0].prefix.is_empty());
        let lens: Vec<usize> = out[0].branches.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![2, 1, 3]);
        assert_eq!(out[0].branches[2][0].logprob, -3.0);
        assert!(MicroBatch::unpack(&[&a], &scores[1..]).is_err());
    }

    #[test]
    fn sharing_saves_the_repeated_prefix() {
        let a = choice_tree();
        // Prefix rows 3; the branches of 2, 1 and 3 tokens add 1, 0 and 2 rows.
        assert_eq!(a.input_len(), 6);
        assert_eq!(a.unshared_input_len(), (3 + 1) + 3 + (3 + 2));
    }

    #[test]
    fn invalid_trees_are_refused() {
        let empty = ScoreTree { prefix: vec![], prefix_targets_from: 0, branches: vec![] };
        assert_eq!(empty.validate(10, 10), Err(RequestError::EmptyPrefix));
        let oov = ScoreTree { prefix: vec![1, 99], prefix_targets_from: 1, branches: vec![] };
        assert_eq!(oov.validate(10, 10), Err(RequestError::TokenOutOfVocabulary { id: 99, vocab: 10 }));
        // 8 prefix rows and 3 branch rows: the branch's last token is a target only.
        let long = ScoreTree { prefix: vec![1; 8], prefix_targets_from: 1, branches: vec![vec![1; 4]] };
        assert_eq!(long.validate(10, 10), Err(RequestError::TooLong { len: 11, max: 10 }));
        let fits = ScoreTree { prefix: vec![1; 8], prefix_targets_from: 1, branches: vec![vec![1; 3]] };
        assert_eq!(fits.validate(10, 10), Ok(()));
        // A rolling window: `max` input rows and one more target.
        let window = ScoreTree { prefix: vec![1; 11], prefix_targets_from: 1, branches: vec![] };
        assert_eq!(window.validate(10, 10), Ok(()));
        let empty_branch = ScoreTree { prefix: vec![1], prefix_targets_from: 1, branches: vec![vec![]] };
        assert_eq!(empty_branch.validate(10, 10), Err(RequestError::EmptyBranch));
    }

    #[test]
    fn broken_layouts_are_refused() {
        let a = choice_tree();
        let mut batch = MicroBatch::pack(&[&a]);
        batch.tokens.push(5);
        assert!(batch.validate(100).is_err());
        let mut batch = MicroBatch::pack(&[&a]);
        batch.scored[0].row = 99;
        assert!(batch.validate(100).is_err());
    }
}
