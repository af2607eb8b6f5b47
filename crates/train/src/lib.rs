//! # ember-train
//!
//! Trains Ember denoisers (diffusers' `UNet2DModel` family, or the residual MLP for
//! low-dimensional data) on any burn backend from one TOML config, and writes a diffusers
//! pipeline folder. See `docs/training.md`.
//!
//! - [`config`]: the TOML config, read strictly (a misspelt key is an error naming it).
//! - [`trainer`]: the loop — objectives ε / v / x₀ / flow built from the scheduler's
//!   `add_noise` / `get_velocity`, uniform or min-SNR-γ weights, uniform or logit-normal
//!   timesteps, guidance dropout to the null class, gradient accumulation and global-norm
//!   clipping, AdamW with warm-up and cosine decay, [`ema`], data-parallel devices, sample
//!   grids, validation loss.
//! - [`checkpoint`]: checkpoint folders that are complete or absent; with the counter-based
//!   RNG they make a resumed run draw exactly what the uninterrupted run drew.
//! - [`data`]: the config's dataset as burn `Dataset`s, split with the run's seed.
//! - [`eval`]: the digit classifier and the Fréchet distance of the MNIST evaluation.
//!
//! ```no_run
//! use ember_core::backend::DefaultBackend as B;
//! use ember_train::{train, RunOptions, TrainConfig};
//!
//! let config = TrainConfig::from_file(std::path::Path::new("configs/mixture2d.toml"))?;
//! let summary = train::<B>(&config, &RunOptions::default(), &[Default::default()])?;
//! println!("{} steps, final loss {:.4}, pipeline in {}", summary.steps,
//!          summary.final_loss, summary.pipeline_dir.display());
//! # Ok::<(), ember_core::Error>(())
//! ```

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
