//! # ember-models
//!
//! Diffusion backbones in the exact module layout of diffusers, so checkpoints load as they
//! are: `UNet2DModel`, `UNet2DConditionModel`, DiT, the spatio-temporal U-Net for video, the
//! VAE, ControlNet. Each implements [`ember_core::Denoiser`] and loads from a diffusers model
//! folder (`config.json` + `diffusion_pytorch_model.safetensors`).
//!
//! This crate is filled by the U-Net issue; it holds only this overview for now.
