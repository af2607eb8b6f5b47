//! The model side of the sampler/model contract.

use crate::{Conditioning, Prediction, Result};
use burn::tensor::{backend::Backend, Tensor};

/// A diffusion model: maps a noisy sample, its timestep(s) and conditioning to an output in
/// the model's own [`Prediction`] parameterisation.
///
/// `D` is the sample rank: 4 for images `[B, C, H, W]`, 5 for videos `[B, C, F, H, W]`.
/// `timesteps` has one entry per sample, in the scheduler's timestep units (e.g. 0–999 for
/// discrete-time models, σ-derived values for EDM, `t·1000` for flow matching).
pub trait Denoiser<B: Backend, const D: usize> {
    /// What the output means.
    fn prediction(&self) -> Prediction;
    /// Runs the model.
    fn forward(
        &self,
        sample: Tensor<B, D>,
        timesteps: Tensor<B, 1>,
        conditioning: &Conditioning<B>,
    ) -> Result<Tensor<B, D>>;
}
