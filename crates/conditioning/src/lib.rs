//! # ember-conditioning
//!
//! The conditioning building blocks every backbone shares: sinusoidal and Fourier timestep
//! embeddings, the timestep MLP, class-label embeddings with a null class for classifier-free
//! guidance, cross-attention, FiLM / AdaGN scale-shift modulation, the ControlNet residual
//! protocol, and guidance wrappers that are themselves [`ember_core::Denoiser`]s.
//!
//! This crate is filled by the U-Net and pipeline issues; it holds only this overview for now.
