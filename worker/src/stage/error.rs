//! How a stage fails: its weights, its backend, a batch that does not fit it, a KV cache
//! that cannot hold a sequence, or scores that overflowed.

use crate::backend::error::BackendError;
use crate::weights::WeightError;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stage {0}")]
    Spec(String),
    #[error("a sequence of {tokens} tokens does not fit the KV cache: its budget holds {budget_tokens} tokens, {free_tokens} of them free; raise --kv-cache-mb, or lower the task's max_gen_toks or the prompt's length")]
    KvBudget { tokens: usize, budget_tokens: usize, free_tokens: usize },
    #[error("the model computed non-finite scores (NaN or infinity) for {count} of {total} tokens: its weights are finite, so its activations overflow; check that the model file is what it claims to be")]
    NonFiniteScores { count: usize, total: usize },
}
