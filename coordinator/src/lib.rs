//! The evalmesh coordinator: command line, tokenizer, tasks and metrics, engines and
//! results. It never computes model math itself; the worker crate does.

pub mod calibrate;
pub mod cli;
pub mod distributed;
pub mod engine;
pub mod evaluate;
pub mod generation;
pub mod journal;
pub mod lm_eval;
pub mod model;
pub mod pingpong;
pub mod prediction;
pub mod progress;
pub mod results;
pub mod signals;
pub mod tasks;
pub mod tokenizer;
