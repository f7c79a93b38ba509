//! From documents to prefix trees and back. Requests are tokenised with
//! lm-evaluation-harness's boundary (`_encode_pair`); the requests of one document that
//! share a context become one tree, its continuations the branches, so the context is
//! computed once. Rolling documents become windows.

use std::collections::HashMap;
use std::ops::Range;

use evalmesh_common::{ScoreTree, TreeScores};
use rayon::prelude::*;

use super::perplexity::{llamacpp_chunks, rolling_windows};
use super::{Doc, Target, TaskError};
use crate::tokenizer::TextTokenizer;

/// How rolling documents are cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// lm-evaluation-harness's `loglikelihood_rolling` with windows of `max_len` tokens.
    Rolling { max_len: usize },
    /// llama.cpp's perplexity chunks of `ctx` tokens, scored on their second half.
    Llamacpp { ctx: usize },
}

/// Where a request's scored tokens are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scored {
    Branch { tree: usize, branch: usize },
    Prefixes(Range<usize>),
}

impl Scored {
    /// The same place among trees that come `offset` later.
    fn shift(&mut self, offset: usize) {
        match self {
            Scored::Branch { tree, .. } => *tree += offset,
            Scored::Prefixes(range) => *range = range.start + offset..range.end + offset,
        }
    }
}

/// A request's place in the trees and its continuation tokens.
#[derive(Debug, Clone)]
pub struct PlannedRequest {
    pub scored: Scored,
    pub continuation: Vec<u32>,
}

/// A task's documents as trees.
#[derive(Debug, Default)]
pub struct Plan {
    pub trees: Vec<ScoreTree>,
    /// Per document, per request.
    pub docs: Vec<Vec<PlannedRequest>>,
}

/// The summed log-probability of a request's continuation and whether every token was greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestScore {
    pub logprob: f64,
    pub greedy: bool,
    pub token_logprobs: Vec<f32>,
}

/// lm-evaluation-harness's `_encode_pair`: trailing whitespace of the context moves to
/// the continuation; the continuation's tokens are those of context + continuation past
/// the context's own tokens, both encoded with the tokenizer's defaults (BOS first when its
/// policy adds one, as `tok_encode` does). An empty context becomes the prefix token, and
/// the continuation is encoded without BOS; where it starts with the prefix token, that
/// token is the context (lm-evaluation-harness's `loglikelihood`).
pub fn encode_pair(
    tokenizer: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), TaskError> {
    encode_pair_sharing(tokenizer, context, continuation, &mut HashMap::new())
}

/// [`encode_pair`], with the context's tokens taken from `contexts` where an earlier
/// request encoded it (a document's requests mostly share one context) and kept there.
fn encode_pair_sharing<'a>(
    tokenizer: &TextTokenizer,
    context: &'a str,
    continuation: &str,
    contexts: &mut HashMap<&'a str, Vec<u32>>,
) -> Result<(Vec<u32>, Vec<u32>), TaskError> {
    let trimmed = context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
    if context.is_empty() {
        let prefix = tokenizer.prefix_token().ok_or_else(|| {
            TaskError::Settings(
                "a request with an empty context needs a BOS or EOS token, and the tokenizer has neither".into(),
            )
        })?;
        let mut continuation = tokenizer.encode(&continuation)?;
        if continuation.first() == Some(&prefix) {
            let rest = continuation.split_off(1);
            return Ok((continuation, rest));
        }
        return Ok((vec![prefix], continuation));
    }
    let whole = tokenizer.encode_document(&format!("{context}{continuation}"))?;
    let context_tokens = match contexts.get(context) {
        Some(tokens) => tokens.clone(),
        None => contexts.entry(context).or_insert(tokenizer.encode_document(context)?).clone(),
    };
    let continuation_tokens = whole.get(context_tokens.len()..).unwrap_or_default().to_vec();
    Ok((context_tokens, continuation_tokens))
}

/// Builds the trees of `docs`. With `share_prefixes`, a document's requests with the same
/// context share one tree; without, each request is a tree of its own (for comparison).
/// Contexts too long for the model lose tokens on the left, as in lm-evaluation-harness.
/// The documents are tokenised in parallel on the current thread pool and laid end to end
/// in their order, so the plan does not depend on the threads; an error is the first
/// failing document's.
pub fn plan(
    docs: &[Doc],
    tokenizer: &TextTokenizer,
    windows: Windows,
    max_position: usize,
    share_prefixes: bool,
) -> Result<Plan, TaskError> {
    let per_doc: Vec<Result<DocPlan, TaskError>> =
        docs.par_iter().map(|doc| plan_doc(doc, tokenizer, windows, max_position, share_prefixes)).collect();
    let mut plan = Plan::default();
    for doc in per_doc {
        let (trees, mut requests) = doc?;
        let offset = plan.trees.len();
        for request in &mut requests {
            request.scored.shift(offset);
        }
        plan.trees.extend(trees);
        plan.docs.push(requests);
    }
    Ok(plan)
}

/// A document's trees, and its requests with their places in them (tree indices from 0).
type DocPlan = (Vec<ScoreTree>, Vec<PlannedRequest>);

/// [`plan`] of one document.
fn plan_doc(
    doc: &Doc,
    tokenizer: &TextTokenizer,
    windows: Windows,
    max_position: usize,
    share_prefixes: bool,
) -> Result<DocPlan, TaskError> {
    let mut trees = Vec::new();
    let mut planned = Vec::with_capacity(doc.requests.len());
    if let Target::Rolling { .. } = doc.target {
        for request in &doc.requests {
            let start = trees.len();
            let tokens = match windows {
                Windows::Rolling { max_len } => {
                    // As lm-evaluation-harness's `loglikelihood_rolling`: the text with
                    // the tokenizer's defaults (a BOS first where its policy adds one,
                    // scored like any token), the first window after the prefix token.
                    let tokens = tokenizer
                        .encode_document(&request.continuation)
                        .map_err(|e| TaskError::Settings(e.to_string()))?;
                    let prefix = tokenizer.prefix_token().ok_or_else(|| {
                        TaskError::Settings(
                            "rolling perplexity needs a BOS or EOS token and the tokenizer has neither".into(),
                        )
                    })?;
                    trees.extend(rolling_windows(&tokens, prefix, max_len));
                    tokens
                }
                Windows::Llamacpp { ctx } => {
                    let tokens = tokenizer.encode_document(&request.continuation)?;
                    trees.extend(llamacpp_chunks(&tokens, ctx, tokenizer.add_bos())?);
                    tokens
                }
            };
            planned.push(PlannedRequest { scored: Scored::Prefixes(start..trees.len()), continuation: tokens });
        }
    } else {
        let mut tree_of_context: HashMap<(Vec<u32>, usize), usize> = HashMap::new();
        let mut contexts = HashMap::new();
        for (r, request) in doc.requests.iter().enumerate() {
            let (context, continuation) =
                encode_pair_sharing(tokenizer, &request.context, &request.continuation, &mut contexts)?;
            if continuation.is_empty() || continuation.len() > max_position {
                return Err(TaskError::Settings(format!(
                    "document {}: continuation {:?} is {} tokens; it must be 1 to {max_position}",
                    doc.id,
                    request.continuation,
                    continuation.len()
                )));
            }
            let own = if share_prefixes { 0 } else { r };
            let tree = *tree_of_context.entry((context.clone(), own)).or_insert_with(|| {
                trees.push(ScoreTree { prefix_targets_from: context.len(), prefix: context, branches: vec![] });
                trees.len() - 1
            });
            trees[tree].branches.push(continuation.clone());
            let branch = trees[tree].branches.len() - 1;
            planned.push(PlannedRequest { scored: Scored::Branch { tree, branch }, continuation });
        }
        for tree in tree_of_context.into_values() {
            truncate_left(&mut trees[tree], max_position);
        }
    }
    Ok((trees, planned))
}

/// Drops prefix tokens on the left until the longest branch fits the model's positions.
fn truncate_left(tree: &mut ScoreTree, max_position: usize) {
    let longest = tree.branches.iter().map(Vec::len).max().unwrap_or(0);
    let excess = (tree.prefix.len() + longest).saturating_sub(max_position);
    if excess > 0 {
        tree.prefix.drain(..excess.min(tree.prefix.len() - 1));
        tree.prefix_targets_from = tree.prefix.len();
    }
}

/// The scores of one document's requests.
pub fn request_scores(planned: &[PlannedRequest], trees: &[TreeScores]) -> Vec<RequestScore> {
    planned
        .iter()
        .map(|p| {
            let tokens: Vec<_> = match &p.scored {
                Scored::Branch { tree, branch } => trees[*tree].branches[*branch].clone(),
                Scored::Prefixes(range) => trees[range.clone()].iter().flat_map(|t| t.prefix.iter().copied()).collect(),
            };
            RequestScore {
                logprob: tokens.iter().map(|t| t.logprob as f64).sum(),
                greedy: tokens.iter().all(|t| t.greedy),
                token_logprobs: tokens.iter().map(|t| t.logprob).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(prefix: usize, branches: &[usize]) -> ScoreTree {
        ScoreTree {
            prefix: vec![1; prefix],
            prefix_targets_from: prefix,
            branches: branches.iter().map(|&n| vec![2; n]).collect(),
        }
    }

    #[test]
    fn long_contexts_lose_tokens_on_the_left() {
        let mut t = tree(10, &[3, 5]);
        truncate_left(&mut t, 12);
        assert_eq!(t.prefix.len(), 7);
        assert_eq!(t.prefix_targets_from, 7);
        let mut short = tree(4, &[2]);
        truncate_left(&mut short, 12);
        assert_eq!(short.prefix.len(), 4);
    }

    #[test]
    fn contexts_start_with_bos_when_the_tokenizer_adds_one() {
        use crate::tokenizer::testing::{word_level, HELLO, WORLD};
        let dir = tempfile::tempdir().unwrap();
        let bos = word_level(dir.path(), Some(serde_json::json!({"add_bos_token": true, "bos_token": "<bos>"})));
        assert_eq!(encode_pair(&bos, "hello ", "world").unwrap(), (vec![0, HELLO], vec![WORLD]));
        // An empty context is the prefix token alone; the continuation has no BOS.
        assert_eq!(encode_pair(&bos, "", "hello world").unwrap(), (vec![0], vec![HELLO, WORLD]));
        let no_bos = word_level(dir.path(), Some(serde_json::json!({"add_bos_token": false, "bos_token": "<bos>"})));
        assert_eq!(encode_pair(&no_bos, "hello ", "world").unwrap(), (vec![HELLO], vec![WORLD]));
        // A continuation that starts with the prefix token gives it up as the context.
        assert_eq!(encode_pair(&no_bos, "", "<bos> world").unwrap(), (vec![0], vec![WORLD]));
    }

    #[test]
    fn documents_planned_in_parallel_point_at_their_own_trees() {
        use crate::tasks::{Doc, Request};
        use crate::tokenizer::testing::{word_level, HELLO, WORLD};
        let dir = tempfile::tempdir().unwrap();
        let tok = word_level(dir.path(), Some(serde_json::json!({"add_bos_token": false, "bos_token": "<bos>"})));
        let request =
            |context: &str, continuation: &str| Request { context: context.into(), continuation: continuation.into() };
        let choice = Target::Choice { gold: 0, choices: vec![] };
        // Documents of each kind in turn: two choices on one context (one tree), a rolling
        // text of two windows, two contexts (two trees).
        let docs: Vec<Doc> = (0..60)
            .map(|id| {
                let (requests, target) = match id % 3 {
                    0 => (vec![request("hello", " world"), request("hello", " hello world")], choice.clone()),
                    1 => (vec![request("", "hello world hello world")], Target::Rolling { words: 4, bytes: 23 }),
                    _ => (vec![request("world", " hello"), request("hello hello", " world")], choice.clone()),
                };
                Doc { id, requests, target, record: serde_json::Value::Null }
            })
            .collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| plan(&docs, &tok, Windows::Rolling { max_len: 2 }, 16, true).unwrap())
        };
        let plan = on(4);
        assert_eq!(plan.trees.len(), 20 * (1 + 2 + 2));
        for (doc, planned) in docs.iter().zip(&plan.docs) {
            for (request, p) in doc.requests.iter().zip(planned) {
                match &p.scored {
                    Scored::Branch { tree, branch } => {
                        let context = tok.encode_document(&request.context).unwrap();
                        assert_eq!(plan.trees[*tree].prefix, context, "document {}", doc.id);
                        assert_eq!(plan.trees[*tree].branches[*branch], p.continuation, "document {}", doc.id);
                    }
                    Scored::Prefixes(range) => {
                        let windows = &plan.trees[range.clone()];
                        let targets: Vec<u32> =
                            windows.iter().flat_map(|w| w.prefix[w.prefix_targets_from..].to_vec()).collect();
                        assert_eq!(targets, [HELLO, WORLD, HELLO, WORLD], "document {}", doc.id);
                    }
                }
            }
        }
        assert_eq!(format!("{:?}", on(1)), format!("{plan:?}"));
    }

    #[test]
    fn rolling_texts_start_with_bos_when_the_tokenizer_adds_one() {
        use crate::tasks::{Doc, Request};
        use crate::tokenizer::testing::{word_level, HELLO, WORLD};
        let dir = tempfile::tempdir().unwrap();
        let mut tok = word_level(dir.path(), Some(serde_json::json!({"add_bos_token": true, "bos_token": "<bos>"})));
        let request = Request { context: String::new(), continuation: "hello world".into() };
        let target = Target::Rolling { words: 2, bytes: 11 };
        let docs = [Doc { id: 0, requests: vec![request], target, record: serde_json::Value::Null }];
        let rolling = Windows::Rolling { max_len: 8 };
        // As lm-evaluation-harness: the prefix token, then the text's own BOS, scored.
        let plan_with = |tok: &TextTokenizer| plan(&docs, tok, rolling, 8, true).unwrap();
        assert_eq!(plan_with(&tok).trees[0].prefix, vec![0, 0, HELLO, WORLD]);
        tok.set_add_bos(false).unwrap();
        assert_eq!(plan_with(&tok).trees[0].prefix, vec![0, HELLO, WORLD]);
    }
}
