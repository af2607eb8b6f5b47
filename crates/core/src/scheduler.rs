//! The sampler side of the sampler/model contract: diffusers' scheduler surface.
//!
//! A scheduler owns a noise schedule and a discretisation of the reverse process. The
//! sampling loop is the same for every scheduler:
//!
//! ```text
//! scheduler.set_timesteps(n)?;
//! x = noise * scheduler.init_noise_sigma();
//! for t in scheduler.timesteps() {
//!     let input = scheduler.scale_model_input(&x, t)?;
//!     let out = model(input, t);
//!     x = scheduler.step(&out, t, &x, noise_for_step)?.prev_sample;
//! }
//! ```
//!
//! Timesteps are real numbers (`f64`): flow matching and EDM run in continuous time.

use crate::{Prediction, Result, SampleTensor};

/// The result of one scheduler step.
#[derive(Debug, Clone)]
pub struct StepOutput<S> {
    /// The sample at the next (less noisy) timestep.
    pub prev_sample: S,
    /// The scheduler's current estimate of the clean sample x₀, where it forms one.
    pub pred_original_sample: Option<S>,
}

/// How to lay out the inference timesteps: a step count, or an explicit list of
/// timesteps or sigmas, optionally with the resolution-dependent shift `mu` of flow models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimestepRequest {
    /// Number of inference steps (diffusers' `num_inference_steps`).
    pub num_inference_steps: Option<usize>,
    /// Explicit timesteps, strictly decreasing (diffusers' `timesteps`).
    pub timesteps: Option<Vec<f64>>,
    /// Explicit sigmas, decreasing (diffusers' `sigmas`).
    pub sigmas: Option<Vec<f64>>,
    /// The dynamic-shifting parameter of flow-matching schedulers (diffusers' `mu`).
    pub mu: Option<f64>,
}

impl TimestepRequest {
    /// A plain step count.
    pub fn steps(n: usize) -> Self {
        Self {
            num_inference_steps: Some(n),
            ..Self::default()
        }
    }
    /// An explicit timestep list.
    pub fn timesteps(ts: Vec<f64>) -> Self {
        Self {
            timesteps: Some(ts),
            ..Self::default()
        }
    }
    /// An explicit sigma list.
    pub fn sigmas(sigmas: Vec<f64>) -> Self {
        Self {
            sigmas: Some(sigmas),
            ..Self::default()
        }
    }
    /// Sets `mu`.
    pub fn with_mu(mut self, mu: f64) -> Self {
        self.mu = Some(mu);
        self
    }
}

/// A diffusion scheduler over samples of type `S` (any-rank burn tensors or host arrays).
///
/// The trait is object safe, so `Box<dyn Scheduler<S>>` can be chosen at run time from a
/// `scheduler_config.json`; concrete types can equally be used generically.
pub trait Scheduler<S: SampleTensor>: Send {
    /// diffusers' class name, e.g. `"DDIMScheduler"`.
    fn class_name(&self) -> &'static str;
    /// The full configuration as diffusers' `scheduler_config.json` (with `_class_name`).
    fn config_json(&self) -> serde_json::Value;
    /// Number of training timesteps of the model this schedule belongs to.
    fn num_train_timesteps(&self) -> usize;
    /// The parameterisation of the model outputs this scheduler expects.
    fn prediction(&self) -> Prediction;
    /// How many model evaluations one "step" of the solver spans (diffusers' `order`).
    fn order(&self) -> usize;
    /// Whether [`Scheduler::step`] consumes fresh noise with the current configuration.
    fn is_stochastic(&self) -> bool;

    /// Lays out the inference timesteps; resets all step state.
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()>;
    /// Lays out `num_inference_steps` inference timesteps.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(num_inference_steps))
    }
    /// The timesteps to visit, in order (one per model evaluation).
    fn timesteps(&self) -> &[f64];
    /// The noise levels σ matching the timesteps (with the final one appended), where the
    /// scheduler works in σ; `None` for schedulers that only use ᾱ.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    /// The standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the sample before it is handed to the model (e.g. `x / √(σ²+1)`).
    fn scale_model_input(&mut self, sample: &S, timestep: f64) -> Result<S>;
    /// Advances the sample by one step given the model output at `timestep`. `noise` must be
    /// standard-normal noise of the sample's shape when [`Scheduler::is_stochastic`] is true.
    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        noise: Option<&S>,
    ) -> Result<StepOutput<S>>;
    /// Noises clean samples to the given training timesteps (one per sample, or one for all).
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S>;
    /// The v-prediction target `α ε − σ x₀` at the given timesteps.
    fn get_velocity(&self, sample: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        let _ = (sample, noise, timesteps);
        Err(crate::Error::State(format!(
            "{} does not define get_velocity",
            self.class_name()
        )))
    }
    /// Index of the next step, once stepping has started.
    fn step_index(&self) -> Option<usize>;
    /// Index the first step starts at (img2img); `None` means "from the timestep passed".
    fn begin_index(&self) -> Option<usize>;
    /// Sets the index of the first step (call before the first step, after set_timesteps).
    fn set_begin_index(&mut self, begin_index: usize);
}

/// Checks a model output for NaN / infinity, as every scheduler does before a step.
pub fn check_finite<S: SampleTensor>(what: &str, x: &S) -> Result<()> {
    if x.all_finite() {
        Ok(())
    } else {
        Err(crate::Error::NonFinite {
            what: what.to_string(),
        })
    }
}

/// Checks that two tensors have the same shape.
pub fn check_same_shape<S: SampleTensor>(what: &str, expected: &S, got: &S) -> Result<()> {
    let (e, g) = (expected.shape(), got.shape());
    if e == g {
        Ok(())
    } else {
        Err(crate::Error::Shape {
            what: what.to_string(),
            expected: format!("{e:?}"),
            got: g,
        })
    }
}
