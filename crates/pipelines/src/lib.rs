//! # ember-pipelines
//!
//! Sampling loops that stitch any [`ember_core::Denoiser`] to any [`ember_core::Scheduler`]
//! on any burn backend: text-to-image, class-conditional, img2img and inpainting, for 4-D
//! images and 5-D videos with one loop, following diffusers' contract (initial noise ×
//! `init_noise_sigma`, `scale_model_input` → model → `step`).
//!
//! This crate is filled by the pipeline issue; it holds only this overview for now. Until
//! then, `examples/analytic_mixture.rs` shows the loop over a closed-form model.
