//! What part of the model a worker runs: a [`StageSpec`] (contiguous layers, with or
//! without the embedding in front and the head behind).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::ModelConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    pub layers: Range<usize>,
    pub embedding: bool,
    pub head: bool,
}

impl StageSpec {
    /// The whole model in one stage.
    pub fn whole(config: &ModelConfig) -> Self {
        StageSpec { layers: 0..config.num_layers, embedding: true, head: true }
    }
}
