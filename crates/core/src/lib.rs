//! # ember-core
//!
//! The shared vocabulary of Ember. Every other crate speaks in these types, which is
//! what lets any scheduler drive any model on any burn backend:
//!
//! - [`SampleTensor`]: the handful of element-wise operations a scheduler needs, implemented
//!   for burn's `Tensor<B, D>` of any rank (images `[B, C, H, W]`, videos `[B, C, F, H, W]`)
//!   and for [`HostTensor`], an f64 host array used for analytic work and toy data.
//! - [`Denoiser`]: a model mapping `(sample, timestep, conditioning)` to its output in its
//!   own [`Prediction`] parameterisation.
//! - [`Conditioning`]: everything a pipeline may hand a model (labels, text states, ...).
//! - [`NoiseSource`]: seeded per-sample Gaussian noise, identical whatever the batch size
//!   or backend.
//! - [`Error`]: the typed error every library crate returns.
//!
//! ```
//! use ember_core::{HostTensor, NoiseSource, SampleTensor};
//!
//! // Sample 1 of a batch of 3 gets exactly the noise it gets alone in a batch of 1.
//! let noise = NoiseSource::new(42);
//! let batch = noise.initial_noise(&[3, 2, 4, 4], 0);
//! let alone = noise.initial_noise(&[1, 2, 4, 4], 1);
//! assert_eq!(&batch.data()[32..64], alone.data());
//! let doubled = batch.scale(2.0);
//! assert_eq!(doubled.shape(), vec![3, 2, 4, 4]);
//! ```

pub mod analytic;
pub mod backend;
pub mod conditioning;
pub mod denoiser;
pub mod error;
pub mod noise;
pub mod prediction;
pub mod sample;
pub mod scheduler;

pub use conditioning::Conditioning;
pub use denoiser::Denoiser;
pub use error::{Error, Result};
pub use noise::NoiseSource;
pub use prediction::Prediction;
pub use sample::{HostTensor, SampleTensor};
pub use scheduler::{Scheduler, StepOutput, TimestepRequest};

/// Re-export of the burn version Ember is built on, so downstream crates agree on it.
pub use burn;
