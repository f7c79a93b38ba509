//! Types shared by the evalmesh coordinator and its workers: the validated model
//! configuration and the scoring requests with their packed micro-batch layout.
//! Nothing here does I/O beyond parsing.

pub mod config;
pub mod request;

pub use config::{ConfigError, HfConfig, ModelConfig, RopeStyle};
pub use request::{MicroBatch, RequestError, ScoreTree, TokenScore, TreeLayout, TreeScores};
