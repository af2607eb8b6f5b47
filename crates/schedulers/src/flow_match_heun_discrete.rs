//! diffusers' `FlowMatchHeunDiscreteScheduler`: Heun's second-order method on the
//! rectified-flow ODE dx/dσ = v (Karras et al. 2022, Algorithm 1 with s(t) = 1, σ(t) = t,
//! applied to flow matching's `x_σ = (1 − σ) x₀ + σ ε`).
//!
//! Every step but the last costs two model evaluations, so the timestep list repeats each
//! inner timestep (`[t₀, t₁, t₁, t₂, t₂, …]`) and the σ list likewise: the first visit of a
//! σ pair takes an Euler step and stores its slope d₁; the second visit evaluates the slope
//! d₂ at the Euler point and redoes the step from the stored sample with (d₁ + d₂)/2:
//!
//! ```text
//! x̃ = x + (σ' − σ) d₁,   x' = x + (σ' − σ) (d₁ + d₂)/2.
//! ```
//!
//! The last step (to σ = 0) is a plain Euler step, as in diffusers.
//!
//! diffusers' `step` also takes `s_churn`/`s_tmin`/`s_tmax`/`s_noise` arguments; with the
//! default `s_churn = 0` they add nothing, and Ember implements that deterministic sampler.

use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::SchedulerConfig;
use crate::flow_match_euler_discrete::flow_noise_sigmas;
use crate::flow_sigmas::{flow_index_for_timestep, shift_sigma, train_flow_sigmas, Precision};
use crate::schedule::linspace_f64;
use crate::vp_solver::{check_decreasing, check_step_count, check_train_timesteps, to_f32};

/// Configuration of [`FlowMatchHeunDiscreteScheduler`], with diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchHeunDiscreteConfig {
    /// Number of training timesteps T (timesteps are σ·T).
    pub num_train_timesteps: usize,
    /// The constant shift s of SD3 eq. 23: σ' = s σ / (1 + (s − 1) σ).
    pub shift: f64,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for FlowMatchHeunDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for FlowMatchHeunDiscreteConfig {
    const CLASS_NAME: &'static str = "FlowMatchHeunDiscreteScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_train_timesteps(self.num_train_timesteps)?;
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(Error::config(
                "shift",
                format!("must be a positive number, got {}", self.shift),
            ));
        }
        Ok(())
    }
}

/// Heun sampler for flow-matching models (diffusers' `FlowMatchHeunDiscreteScheduler`),
/// generic over the sample type because the second half-step needs the first one's state.
pub struct FlowMatchHeunDiscreteScheduler<S> {
    config: FlowMatchHeunDiscreteConfig,
    sigma_max: f64,
    sigma_min: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    /// The first slope d₁, while a Heun step is half done.
    prev_derivative: Option<S>,
    /// The step size σ' − σ of the half-done step.
    dt: Option<f64>,
    /// The sample the half-done step started from.
    sample: Option<S>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> FlowMatchHeunDiscreteScheduler<S> {
    /// Builds the scheduler from a validated configuration.
    pub fn from_config(config: FlowMatchHeunDiscreteConfig) -> Result<Self> {
        config.validate()?;
        let (sigmas, timesteps) = train_flow_sigmas(config.num_train_timesteps, config.shift, true);
        // T ≥ 1 entries (validated above).
        let (sigma_max, sigma_min) = (sigmas[0], sigmas[sigmas.len() - 1]);
        Ok(Self {
            config,
            sigma_max,
            sigma_min,
            timesteps,
            sigmas,
            num_inference_steps: None,
            prev_derivative: None,
            dt: None,
            sample: None,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid, so this cannot fail.
        Self::from_config(FlowMatchHeunDiscreteConfig::default()).expect("default config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &FlowMatchHeunDiscreteConfig {
        &self.config
    }

    /// Whether the next `step` is the first (Euler) half of a Heun step.
    pub fn state_in_first_order(&self) -> bool {
        self.dt.is_none()
    }
}

impl<S: SampleTensor> Default for FlowMatchHeunDiscreteScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for FlowMatchHeunDiscreteScheduler<S> {
    fn class_name(&self) -> &'static str {
        FlowMatchHeunDiscreteConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        crate::config::config_to_json(&self.config)
    }
    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }
    fn prediction(&self) -> Prediction {
        Prediction::FlowPrediction
    }
    fn order(&self) -> usize {
        2
    }
    fn is_stochastic(&self) -> bool {
        false
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        if request.sigmas.is_some() || request.timesteps.is_some() || request.mu.is_some() {
            return Err(Error::argument(
                "num_inference_steps",
                "FlowMatchHeunDiscreteScheduler takes only a step count (no sigmas, timesteps or mu)",
            ));
        }
        let n = request
            .num_inference_steps
            .ok_or_else(|| Error::argument("num_inference_steps", "a step count is required"))?;
        check_step_count(n)?;
        let t_train = self.config.num_train_timesteps as f64;
        // σ grid: linspace(σ_max·T, σ_min·T, n)/T in f64, shifted, stored as float32.
        let sigmas: Vec<f64> = linspace_f64(self.sigma_max * t_train, self.sigma_min * t_train, n)
            .into_iter()
            .map(|t| to_f32(shift_sigma(self.config.shift, t / t_train, Precision::F64)))
            .collect();
        check_decreasing(&sigmas, "num_inference_steps", "the σ schedule")?;
        let ts: Vec<f64> = sigmas.iter().map(|&s| to_f32(s * t_train)).collect();
        // [t₀, t₁, t₁, …, t_{n−1}, t_{n−1}] and [σ₀, σ₁, σ₁, …, σ_{n−1}, σ_{n−1}, 0].
        let mut timesteps = vec![ts[0]];
        let mut full_sigmas = vec![sigmas[0]];
        for k in 1..n {
            timesteps.extend([ts[k], ts[k]]);
            full_sigmas.extend([sigmas[k], sigmas[k]]);
        }
        full_sigmas.push(0.0);
        self.num_inference_steps = Some(n);
        self.timesteps = timesteps;
        self.sigmas = full_sigmas;
        self.prev_derivative = None;
        self.dt = None;
        self.sample = None;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &S, _timestep: f64) -> Result<S> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        _noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        if self.num_inference_steps.is_none() {
            return Err(Error::State(
                "FlowMatchHeunDiscreteScheduler: call set_timesteps before step".into(),
            ));
        }
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => {
                flow_index_for_timestep(&self.timesteps, timestep).ok_or_else(|| {
                    Error::argument(
                        "timestep",
                        format!("{timestep} is not one of the scheduler's timesteps"),
                    )
                })?
            }
        };
        if i >= self.timesteps.len() {
            return Err(Error::State(format!(
                "FlowMatchHeunDiscreteScheduler: step index {i} is past the last of {} steps",
                self.timesteps.len()
            )));
        }
        self.step_index = Some(i);
        let prev_sample = match (self.dt, self.prev_derivative.take(), self.sample.take()) {
            (Some(dt), Some(d1), Some(start)) if i >= 1 => {
                // Second half: slope at the Euler point (σ' = σ_i), averaged with d₁.
                let sigma_next = self.sigmas[i];
                let denoised = S::lin_comb(&[(1.0, sample), (-sigma_next, model_output)]);
                let d2 = sample.sub(&denoised).scale(1.0 / sigma_next);
                let derivative = S::lin_comb(&[(0.5, &d1), (0.5, &d2)]);
                self.dt = None;
                S::lin_comb(&[(1.0, &start), (dt, &derivative)])
            }
            _ => {
                // First half (or a plain Euler step): x̂₀ = x − σ v, d₁ = (x − x̂₀)/σ.
                let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
                let denoised = S::lin_comb(&[(1.0, sample), (-sigma, model_output)]);
                let derivative = sample.sub(&denoised).scale(1.0 / sigma);
                let dt = sigma_next - sigma;
                let prev = S::lin_comb(&[(1.0, sample), (dt, &derivative)]);
                self.prev_derivative = Some(derivative);
                self.dt = Some(dt);
                self.sample = Some(sample.clone());
                prev
            }
        };
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    /// diffusers' `scale_noise`: x_σ = σ ε + (1 − σ) x₀.
    ///
    /// diffusers' Heun version reads σ at its current step index, initialising the index
    /// from the timestep when stepping has not started; Ember reads the same σ without
    /// changing the step index (it is initialised the same way by the first `step`).
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        check_same_shape("noise", original, noise)?;
        let sigmas = flow_noise_sigmas(
            &self.timesteps,
            &self.sigmas,
            self.step_index,
            self.begin_index.or(self.step_index),
            original.batch_size(),
            timesteps,
        )?;
        let keep: Vec<f64> = sigmas.iter().map(|s| 1.0 - s).collect();
        Ok(noise
            .scale_per_sample(&sigmas)
            .add(&original.scale_per_sample(&keep)))
    }

    fn step_index(&self) -> Option<usize> {
        self.step_index
    }
    fn begin_index(&self) -> Option<usize> {
        self.begin_index
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use ember_core::HostTensor;
    use serde_json::json;

    type Host = FlowMatchHeunDiscreteScheduler<HostTensor>;

    fn sched(cfg: Value) -> Host {
        Host::from_config(parse_config(&cfg).unwrap()).unwrap()
    }

    fn host(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn matches_diffusers_toy_run() {
        // diffusers 0.42.1: FlowMatchHeunDiscreteScheduler(shift=3.0), 6 steps, toy model
        // 0.3 x + 0.5 r in float32 tensors.
        let mut s = sched(json!({"shift": 3.0}));
        s.set_timesteps(6).unwrap();
        let ts = s.timesteps().to_vec();
        assert_eq!(
            ts,
            [
                1000.0,
                923.342529296875,
                923.342529296875,
                818.92333984375,
                818.92333984375,
                668.32666015625,
                668.32666015625,
                432.2250671386719,
                432.2250671386719,
                8.928571701049805,
                8.928571701049805
            ]
        );
        assert_eq!(s.sigmas().unwrap().len(), 12);
        let r = host(&[0.2, -0.4]);
        let mut x = host(&[0.7, -1.2]);
        for t in ts {
            let v = HostTensor::lin_comb(&[(0.3, &x), (0.5, &r)]);
            x = s.step(&v, t, &x, None).unwrap().prev_sample;
        }
        for (g, w) in x
            .data()
            .iter()
            .zip([0.4325294494628906, -0.7168272137641907])
        {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn straight_paths_are_exact() {
        let mut s = sched(json!({"shift": 2.0}));
        s.set_timesteps(5).unwrap();
        let x0 = host(&[0.5, -1.0]);
        let eps = host(&[1.0, 0.3]);
        let v = eps.sub(&x0);
        let mut x = s.add_noise(&x0, &eps, &[s.timesteps()[0]]).unwrap();
        for t in s.timesteps().to_vec() {
            x = s.step(&v, t, &x, None).unwrap().prev_sample;
        }
        for (g, w) in x.data().iter().zip(x0.data()) {
            assert!((g - w).abs() < 1e-12);
        }
        assert!(
            !s.state_in_first_order(),
            "the last Euler step leaves dt set, as in diffusers"
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut s = sched(json!({}));
        let x = host(&[0.1, 0.2]);
        assert!(matches!(s.step(&x, 1000.0, &x, None), Err(Error::State(_))));
        assert!(matches!(
            s.set_timesteps(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(s
            .set_timesteps_with(&TimestepRequest::sigmas(vec![1.0, 0.5]))
            .is_err());
        assert!(s
            .set_timesteps_with(&TimestepRequest::steps(3).with_mu(1.0))
            .is_err());
        s.set_timesteps(3).unwrap();
        let nan = host(&[f64::NAN, 0.0]);
        assert!(matches!(
            s.step(&nan, 1000.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        assert!(parse_config::<FlowMatchHeunDiscreteConfig>(&json!({"shift": -1.0})).is_err());
    }
}
