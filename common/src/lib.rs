//! Types shared by the evalmesh coordinator and its workers: the validated model
//! configuration, the scoring requests with their packed micro-batch layout, the plan
//! of stages and the control protocol.
//! Nothing here does I/O beyond parsing.

pub mod config;
pub mod plan;
pub mod protocol;
pub mod request;

pub use config::{ConfigError, HfConfig, ModelConfig, RopeStyle};
pub use plan::{group_slice, partition_layers, ParallelLayout, PlanError, StageSpec, Strategy};
pub use request::{MicroBatch, RequestError, ScoreTree, TokenScore, TreeLayout, TreeScores};
