//! # ember-conditioning
//!
//! The conditioning building blocks every backbone shares, written once:
//!
//! - [`nn`]: PyTorch-layout layers (`Linear`, `Conv2d`, `GroupNorm`, `LayerNorm`,
//!   `Embedding`, activations) whose field names are diffusers' state-dict names.
//! - [`embeddings`]: sinusoidal and Gaussian-Fourier timestep embeddings, the
//!   `TimestepEmbedding` MLP, and class-label tables with a null class for
//!   classifier-free guidance.
//! - [`attention`]: multi-head self- and cross-attention on burn's fused attention op.
//! - [`film`]: FiLM / AdaGN scale-shift modulation.
//! - [`kernels`]: fused group norm (+SiLU, +FiLM) and attention as a burn backend
//!   extension, [`EmberBackend`], with backward passes and generic fallbacks.
//!
//! ```
//! use ember_conditioning::embeddings::SinusoidalTimesteps;
//! use ember_core::backend::DefaultBackend as B;
//! use ember_core::burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let t = Tensor::<B, 1>::from_floats([0.0, 500.0], &device);
//! let proj = SinusoidalTimesteps { dim: 8, flip_sin_to_cos: true, freq_shift: 0.0 };
//! let emb = proj.forward(t);
//! assert_eq!(emb.dims(), [2, 8]);
//! // At t = 0 the cosine half (first, since flipped) is 1 and the sine half is 0.
//! let row: Vec<f32> = emb.slice([0..1, 0..8]).into_data().to_vec().unwrap();
//! assert_eq!(&row[..4], &[1.0; 4]);
//! assert_eq!(&row[4..], &[0.0; 4]);
//! ```

pub mod attention;
pub mod embeddings;
pub mod film;
pub mod kernels;
pub mod nn;

pub use attention::{Attention, AttentionConfig};
pub use embeddings::{
    sinusoidal_embedding, GaussianFourierProjection, LabelEmbedding, SinusoidalTimesteps,
    TimestepEmbedding,
};
pub use kernels::EmberBackend;
pub use nn::{Activation, Conv2d, Embedding, GroupNorm, LayerNorm, Linear};
