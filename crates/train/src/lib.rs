//! # ember-train
//!
//! Training on burn-train: epsilon / v / x₀ / flow objectives built from a scheduler's
//! `add_noise` and `get_velocity`, min-SNR-γ weighting and timestep samplers (see
//! `ember_schedulers::training`), classifier-free-guidance dropout, EMA, checkpoints that
//! resume exactly, and diffusers-format output folders.
//!
//! This crate is filled by the training issue; it holds only this overview for now.
