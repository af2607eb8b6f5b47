//! # ember-train
//!
//! (overview written at the end of the training issue)

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod ema;
pub mod eval;
pub mod model;
pub mod preview;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, RunOptions, TrainSummary};
