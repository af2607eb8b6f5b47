//! # ember-pipelines
//!
//! Sampling loops that stitch any [`ember_core::Denoiser`] to any [`ember_core::Scheduler`]
//! on any burn backend, following diffusers' contract (initial noise × `init_noise_sigma`,
//! `scale_model_input` → model → `step`), for 4-D images and 5-D videos with one loop.
//!
//! - [`sampling`]: [`sample`] / [`sample_from_noise`] / [`denoise`], seeded per-sample noise
//!   (a sample's result does not depend on its batch), per-step hooks (progress, x₀ previews,
//!   early stop).
//! - [`guidance`]: classifier-free guidance (scale, negative / null conditioning, rescale φ)
//!   as a `Denoiser` wrapper.
//! - [`edit`]: SDEdit img2img and mask inpainting.
//! - [`folder`]: diffusers pipeline folders (`model_index.json` + `unet/` + `scheduler/`).
//!
//! ```
//! use ember_core::backend::DefaultBackend as B;
//! use ember_core::burn::tensor::Tensor;
//! use ember_core::{Conditioning, Denoiser, Prediction, Result};
//! use ember_pipelines::{no_hook, sample, SampleOptions};
//! use serde_json::json;
//!
//! /// A custom model: predicts x₀ = 0 for every input (written outside Ember's crates).
//! struct Origin;
//! impl Denoiser<B, 4> for Origin {
//!     fn prediction(&self) -> Prediction { Prediction::Sample }
//!     fn forward(&self, x: Tensor<B, 4>, _t: Tensor<B, 1>, _c: &Conditioning<B>) -> Result<Tensor<B, 4>> {
//!         Ok(x.zeros_like())
//!     }
//! }
//!
//! let mut scheduler = ember_schedulers::from_config_json::<Tensor<B, 4>>(&json!({
//!     "_class_name": "DDIMScheduler", "prediction_type": "sample", "clip_sample": false
//! })).unwrap();
//! let device = Default::default();
//! let x = sample(&Origin, scheduler.as_mut(), &Conditioning::none(), [2, 1, 4, 4],
//!                &SampleOptions::new(10, 42), &device, &mut no_hook()).unwrap();
//! // Deterministic DDIM with a perfect x₀ oracle lands exactly on x₀.
//! let max: f32 = x.abs().max().into_scalar();
//! assert!(max < 1e-6);
//! ```

pub mod edit;
pub mod folder;
pub mod guidance;
pub mod sampling;

pub use edit::{img2img, inpaint};
pub use folder::{load_pipeline, PipelineFolder, SchedulerChoice};
pub use guidance::ClassifierFreeGuidance;
pub use sampling::{
    denoise, no_hook, sample, sample_from_noise, seeded_noise, Control, SampleOptions, StepHook,
    StepInfo,
};
