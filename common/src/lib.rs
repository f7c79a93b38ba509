//! Types shared by the evalmesh coordinator and its workers: the validated model
//! configuration, the scoring requests with their packed micro-batch layout, the steps of
//! generation, the plan
//! of stages, the control protocol, and the strategy logic: hardware profiles, the cost
//! model and the search over layouts.
//! Nothing here does I/O beyond parsing.

pub mod config;
pub mod cost;
pub mod decode;
pub mod hardware;
pub mod plan;
pub mod protocol;
pub mod request;
pub mod strategy;

pub use config::{ConfigError, HfConfig, ModelConfig, RopeStyle};
pub use plan::{group_slice, head_cost_in_layers, partition_layers, ParallelLayout, PlanError, StageSpec, Strategy};
pub use request::{MicroBatch, RequestError, ScoreTree, TokenScore, TreeLayout, TreeScores};
