//! How a stage fails: its weights, its backend, a batch that does not fit it, or scores
//! that overflowed.

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
    #[error("the model computed non-finite scores (NaN or infinity) for {count} of {total} tokens: its weights are finite, so its activations overflow; check that the model file is what it claims to be")]
    NonFiniteScores { count: usize, total: usize },
}
