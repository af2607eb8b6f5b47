//! diffusers' `EulerDiscreteScheduler` (`scheduling_euler_discrete.py`): Euler's method on
//! the probability-flow ODE in σ, Algorithm 2 of Karras et al. (2022), "Elucidating the
//! Design Space of Diffusion-Based Generative Models", with its optional "churn".
//!
//! With `x = x₀ + σ ε`, the ODE is `dx/dσ = d(x, σ) = (x − x̂₀(x, σ))/σ` (eq. 3 with
//! s = 1, σ(t) = t). One step from σ_i to σ_{i+1}:
//!
//! ```text
//! γ     = min(S_churn / N, √2 − 1)   if S_tmin ≤ σ_i ≤ S_tmax, else 0
//! σ̂     = σ_i (1 + γ)
//! x̂     = x + √(σ̂² − σ_i²) · S_noise · z,   z ~ N(0, I)        (only when γ > 0)
//! x_next = x̂ + (σ_{i+1} − σ̂) · d(x̂, σ̂)
//! ```
//!
//! where N is diffusers' `len(sigmas) − 1`. diffusers takes `s_churn`, `s_tmin`, `s_tmax`
//! and `s_noise` as `step()` arguments; Ember keeps them in the config (Ember-only keys,
//! written only when they differ from diffusers' defaults), so a scheduler built from JSON
//! can use them. As in diffusers the model is evaluated at σ_i (the input scaling uses σ_i),
//! not σ̂.

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::schedule::{linspace_f32, BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_custom_sigmas, check_custom_timesteps, check_num_train_timesteps,
    check_prediction, check_sigma_bounds, convert_sigmas, derivative, f32r, index_for_timestep,
    init_noise_sigma, predict_x0, reject_mu, require_noise, scale_input, spaced_timesteps,
    SigmaSchedule, SigmaSpacing, TimestepSpacing, TrainSigmas,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' `interpolation_type`: how the inference σs are derived from the training σs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum InterpolationType {
    /// σ at each inference timestep, linearly interpolated between integer timesteps.
    #[default]
    #[serde(rename = "linear")]
    Linear,
    /// `n + 1` σs evenly spaced in log σ from the largest to the smallest training σ
    /// (diffusers then appends the final σ as well, so the last step ends at σ_min).
    #[serde(rename = "log_linear")]
    LogLinear,
}

/// diffusers' `timestep_type`: what the model is told the time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TimestepType {
    /// Training timesteps (fractional for interpolated schedules).
    #[default]
    #[serde(rename = "discrete")]
    Discrete,
    /// With `v_prediction`, EDM's `c_noise = ¼ ln σ` (Karras et al. 2022, table 1);
    /// otherwise the same as `discrete`.
    #[serde(rename = "continuous")]
    Continuous,
}

/// diffusers' `final_sigmas_type`: the noise level the last step ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FinalSigmasType {
    /// σ = 0: the last step returns the model's clean estimate.
    #[default]
    #[serde(rename = "zero")]
    Zero,
    /// The smallest training σ (σ at t = 0).
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// Configuration of [`EulerDiscreteScheduler`], diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteConfig {
    /// Number of training timesteps T.
    pub num_train_timesteps: usize,
    /// β at t = 0.
    pub beta_start: f64,
    /// β at t = T − 1.
    pub beta_end: f64,
    /// The β schedule (`linear`, `scaled_linear` or `squaredcos_cap_v2`).
    pub beta_schedule: BetaSchedule,
    /// Explicit βs, overriding the named schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// The model's parameterisation (`epsilon`, `sample` or `v_prediction`).
    pub prediction_type: Prediction,
    /// How inference σs are derived from the training σs.
    pub interpolation_type: InterpolationType,
    /// Use Karras et al.'s σ spacing (eq. 5, ρ = 7).
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// Use σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Use Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// Lower end of Karras/exponential/beta σs (default: the smallest interpolated σ).
    pub sigma_min: Option<f64>,
    /// Upper end of Karras/exponential/beta σs (default: the largest interpolated σ).
    pub sigma_max: Option<f64>,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Discrete training timesteps or EDM's continuous `¼ ln σ` (v-prediction only).
    pub timestep_type: TimestepType,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Rescale βs to zero terminal SNR (Lin et al. 2023); the last ᾱ becomes 2⁻²⁴.
    pub rescale_betas_zero_snr: bool,
    /// The σ the last step ends at.
    pub final_sigmas_type: FinalSigmasType,
    /// Ember extension (a `step()` argument in diffusers): Karras' S_churn, total added
    /// noise; 0 keeps the sampler deterministic.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_churn: f64,
    /// Ember extension: churn only applies where σ ≥ `s_tmin`.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_tmin: f64,
    /// Ember extension: churn only applies where σ ≤ `s_tmax` (`None`: no upper limit, as
    /// diffusers' default `inf`, which JSON cannot spell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_tmax: Option<f64>,
    /// Ember extension: Karras' S_noise, the scale of the churn noise.
    #[serde(skip_serializing_if = "is_one")]
    pub s_noise: f64,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for EulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: Prediction::Epsilon,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: TimestepType::Discrete,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmasType::Zero,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: None,
            s_noise: 1.0,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for EulerDiscreteConfig {
    const CLASS_NAME: &'static str = "EulerDiscreteScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_num_train_timesteps(self.num_train_timesteps)?;
        check_beta_schedule(
            self.beta_schedule,
            self.trained_betas.as_deref(),
            &[
                BetaSchedule::Linear,
                BetaSchedule::ScaledLinear,
                BetaSchedule::SquaredcosCapV2,
            ],
            Self::CLASS_NAME,
        )?;
        check_prediction(
            self.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
            Self::CLASS_NAME,
        )?;
        SigmaSpacing::from_flags(
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        )?;
        check_sigma_bounds(self.sigma_min, self.sigma_max)?;
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return Err(Error::config("s_churn", "must be finite and non-negative"));
        }
        if !self.s_noise.is_finite() {
            return Err(Error::config("s_noise", "must be finite"));
        }
        if self.s_tmin.is_nan() || self.s_tmax.is_some_and(f64::is_nan) {
            return Err(Error::config("s_tmin/s_tmax", "must not be NaN"));
        }
        Ok(())
    }
}

/// diffusers' `EulerDiscreteScheduler`: first-order Euler steps in σ (one model evaluation
/// per step), optionally with Karras churn.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerDiscreteConfig,
    spacing: SigmaSpacing,
    train: TrainSigmas,
    state: SigmaSchedule,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler; before `set_timesteps` it holds diffusers' constructor
    /// schedule (every training timestep), which `add_noise` can use.
    pub fn from_config(config: EulerDiscreteConfig) -> Result<Self> {
        config.validate()?;
        let spacing = SigmaSpacing::from_flags(
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        )?;
        let train = TrainSigmas::from_schedule(&schedule, config.rescale_betas_zero_snr);
        let mut sigmas: Vec<f64> = train.sigmas.iter().rev().copied().collect();
        let timesteps = if config.continuous_v() {
            sigmas.iter().map(|&s| edm_c_noise(s)).collect()
        } else {
            (0..config.num_train_timesteps)
                .rev()
                .map(|t| t as f64)
                .collect()
        };
        sigmas.push(0.0);
        Ok(Self {
            state: SigmaSchedule::initial(timesteps, sigmas),
            spacing,
            train,
            config,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(EulerDiscreteConfig::default())
            .expect("the default EulerDiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &EulerDiscreteConfig {
        &self.config
    }

    /// Karras' γ for a step at noise level `sigma` (0 outside `[s_tmin, s_tmax]`).
    fn gamma(&self, sigma: f64) -> f64 {
        let c = &self.config;
        let in_range = c.s_tmin <= sigma && sigma <= c.s_tmax.unwrap_or(f64::INFINITY);
        let n = self.state.sigmas.len().saturating_sub(1).max(1) as f64;
        if in_range {
            (c.s_churn / n).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// The σ list and timesteps for a request, as diffusers' `set_timesteps` builds them.
    fn build(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.config;
        let class = EulerDiscreteConfig::CLASS_NAME;
        reject_mu(request.mu, class)?;
        let (ts_req, sig_req) = (request.timesteps.as_deref(), request.sigmas.as_deref());
        match (request.num_inference_steps, ts_req, sig_req) {
            (_, Some(_), Some(_)) => {
                return Err(Error::argument(
                    "timesteps",
                    "pass only one of `timesteps` and `sigmas`",
                ))
            }
            (None, None, None) => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "pass one of `num_inference_steps`, `timesteps` or `sigmas`",
                ))
            }
            (Some(_), Some(_), None) | (Some(_), None, Some(_)) => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "pass only one of `num_inference_steps`, `timesteps` and `sigmas`",
                ))
            }
            _ => {}
        }
        if ts_req.is_some() {
            if self.spacing != SigmaSpacing::Interpolated {
                return Err(Error::argument(
                    "timesteps",
                    format!(
                        "custom timesteps cannot be combined with `{}`",
                        self.spacing.flag_name()
                    ),
                ));
            }
            if c.continuous_v() {
                return Err(Error::argument(
                    "timesteps",
                    "custom timesteps cannot be combined with continuous timesteps and v_prediction",
                ));
            }
        }

        let (sigmas, timesteps) = if let Some(custom) = sig_req {
            // User σs are taken as they are (final σ included), rounded to float32 like
            // diffusers' `np.array(sigmas).astype(np.float32)`; timesteps come from
            // inverting them against the training σs (float32 numpy scalars).
            check_custom_sigmas(custom)?;
            let sigmas: Vec<f64> = custom.iter().map(|&s| f32r(s)).collect();
            let ts = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| self.train.sigma_to_t_np_f32(s))
                .collect();
            (sigmas, ts)
        } else {
            let (n, mut ts) = match ts_req {
                Some(custom) => {
                    check_custom_timesteps(custom, c.num_train_timesteps)?;
                    (
                        custom.len(),
                        custom.iter().map(|&t| f32r(t)).collect::<Vec<f64>>(),
                    )
                }
                None => {
                    // The match above guarantees a step count here.
                    let n = request.num_inference_steps.unwrap_or(0);
                    let ts = spaced_timesteps(
                        c.timestep_spacing,
                        c.num_train_timesteps,
                        n,
                        c.steps_offset,
                    )?;
                    (n, ts)
                }
            };
            let mut sigmas: Vec<f64> = match c.interpolation_type {
                InterpolationType::Linear => ts.iter().map(|&t| self.train.interp(t)).collect(),
                InterpolationType::LogLinear => {
                    // torch.linspace(ln σ_max, ln σ_min, n + 1).exp(), all float32.
                    let (lo, hi) = (
                        self.train.log_sigmas[0],
                        self.train.log_sigmas[self.train.len() - 1],
                    );
                    linspace_f32(hi, lo, n + 1)
                        .into_iter()
                        .map(|l| f32r(f64::from(l).exp()))
                        .collect()
                }
            };
            if let Some(converted) =
                convert_sigmas(self.spacing, &sigmas, n, c.sigma_min, c.sigma_max)
            {
                ts = converted
                    .iter()
                    .map(|&s| self.train.sigma_to_t(s))
                    .collect();
                sigmas = converted;
            }
            sigmas.push(match c.final_sigmas_type {
                FinalSigmasType::Zero => 0.0,
                FinalSigmasType::SigmaMin => self.train.sigmas[0],
            });
            (sigmas.into_iter().map(f32r).collect(), ts)
        };

        let timesteps = if c.continuous_v() {
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| edm_c_noise(s))
                .collect()
        } else {
            timesteps.into_iter().map(f32r).collect()
        };
        Ok((timesteps, sigmas))
    }

    /// diffusers' `get_velocity` for this class: `√ᾱ ε − √(1 − ᾱ) x₀`. diffusers looks ᾱ up
    /// at the *position* of each timestep in the current schedule rather than at the
    /// timestep itself (`alphas_cumprod[index_for_timestep(t)]`); Ember reproduces that so
    /// the numbers match diffusers, but it is not the v-target of timestep t. Training code
    /// that wants the true target should compute it from ᾱ_t directly.
    fn velocity<S: SampleTensor>(&self, sample: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        check_same_shape("noise", sample, noise)?;
        let batch = sample.batch_size();
        if timesteps.is_empty() || !(timesteps.len() == 1 || timesteps.len() == batch) {
            return Err(Error::Shape {
                what: "get_velocity timesteps".into(),
                expected: format!("1 or {batch} timesteps (one per sample)"),
                got: vec![timesteps.len()],
            });
        }
        let mut sa = Vec::with_capacity(timesteps.len());
        let mut sb = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let i = index_for_timestep(&self.state.timesteps, t)?;
            let a = *self.train.alphas_cumprod.get(i).ok_or_else(|| {
                Error::argument(
                    "timesteps",
                    format!("schedule position {i} has no training ᾱ"),
                )
            })? as f32;
            // ᾱ ** 0.5 and (1 − ᾱ) ** 0.5 in float32, as diffusers' tensors.
            sa.push(f64::from(a.sqrt()));
            sb.push(f64::from((1.0 - a).sqrt()));
        }
        Ok(noise
            .scale_per_sample(&sa)
            .sub(&sample.scale_per_sample(&sb)))
    }
}

impl Default for EulerDiscreteScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl EulerDiscreteConfig {
    /// Whether timesteps are EDM's `¼ ln σ` (continuous timesteps with v-prediction).
    fn continuous_v(&self) -> bool {
        self.timestep_type == TimestepType::Continuous
            && self.prediction_type == Prediction::VPrediction
    }
}

/// EDM's noise conditioning `c_noise(σ) = ¼ ln σ` (Karras et al. 2022, table 1), in float32
/// as diffusers' `0.25 * sigma.log()`.
fn edm_c_noise(sigma: f64) -> f64 {
    f64::from((sigma.ln() as f32) * 0.25)
}

impl<S: SampleTensor> Scheduler<S> for EulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        EulerDiscreteConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        crate::config::config_to_json(&self.config)
    }
    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }
    fn prediction(&self) -> Prediction {
        self.config.prediction_type
    }
    fn order(&self) -> usize {
        1
    }
    fn is_stochastic(&self) -> bool {
        // Stochastic when some step's γ is positive.
        let steps = self.state.timesteps.len().min(self.state.sigmas.len());
        self.config.s_churn > 0.0
            && self.state.sigmas[..steps]
                .iter()
                .any(|&s| self.gamma(s) > 0.0)
    }
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let (timesteps, sigmas) = self.build(request)?;
        self.state.install(timesteps, sigmas);
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.state.timesteps
    }
    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.state.sigmas)
    }
    fn init_noise_sigma(&self) -> f64 {
        init_noise_sigma(self.config.timestep_spacing, &self.state.sigmas)
    }
    fn scale_model_input(&mut self, sample: &S, timestep: f64) -> Result<S> {
        let i = self
            .state
            .current_index(timestep, EulerDiscreteConfig::CLASS_NAME)?;
        Ok(scale_input(sample, self.state.sigma(i)?))
    }
    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        let i = self
            .state
            .current_index(timestep, EulerDiscreteConfig::CLASS_NAME)?;
        let sigma = self.state.sigma(i)?;
        let sigma_next = self.state.sigma(i + 1)?;
        let gamma = self.gamma(sigma);
        // σ̂ = σ (γ + 1), a float32 tensor product in diffusers.
        let sigma_hat = f64::from(sigma as f32 * (gamma + 1.0) as f32);
        let sample = if gamma > 0.0 {
            // x̂ = x + S_noise z √(σ̂² − σ²): raise the noise level from σ to σ̂.
            let z = require_noise(noise, sample, EulerDiscreteConfig::CLASS_NAME)?;
            let c = self.config.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            S::lin_comb(&[(1.0, sample), (c, z)])
        } else {
            sample.clone()
        };
        // diffusers uses σ̂ for ε-prediction but σ for v-prediction.
        let x0_sigma = match self.config.prediction_type {
            Prediction::VPrediction => sigma,
            _ => sigma_hat,
        };
        let x0 = predict_x0(self.config.prediction_type, model_output, &sample, x0_sigma)?;
        let d = derivative(&sample, &x0, sigma_hat);
        let dt = sigma_next - sigma_hat;
        let prev = S::lin_comb(&[(1.0, &sample), (dt, &d)]);
        self.state.advance();
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        self.state.add_noise(original, noise, timesteps)
    }
    fn get_velocity(&self, sample: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        self.velocity(sample, noise, timesteps)
    }
    fn step_index(&self) -> Option<usize> {
        self.state.step_index
    }
    fn begin_index(&self) -> Option<usize> {
        self.state.begin_index
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.state.set_begin_index(begin_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigma_schedule::test_support::{
        assert_close, build, common_errors, fake_noise, run,
    };
    use ember_core::HostTensor;
    use serde_json::json;

    const SD: [(&str, f64); 2] = [("beta_start", 0.00085), ("beta_end", 0.012)];

    fn sd(extra: Value) -> Value {
        let mut cfg =
            json!({"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear"});
        for (k, v) in SD {
            cfg[k] = json!(v);
        }
        for (k, v) in extra.as_object().unwrap() {
            cfg[k.as_str()] = v.clone();
        }
        cfg
    }

    #[test]
    fn shared_error_cases() {
        common_errors("EulerDiscreteScheduler", true);
    }

    #[test]
    fn custom_schedule_errors() {
        let mut s = build(sd(json!({})));
        let both = TimestepRequest {
            timesteps: Some(vec![900.0, 100.0]),
            sigmas: Some(vec![10.0, 1.0, 0.0]),
            ..TimestepRequest::default()
        };
        assert!(matches!(
            s.set_timesteps_with(&both),
            Err(Error::InvalidArgument { .. })
        ));
        for bad in [
            vec![10.0, 12.0, 0.0],
            vec![10.0, 10.0, 0.0],
            vec![5.0],
            vec![5.0, f64::NAN],
        ] {
            let e = s.set_timesteps_with(&TimestepRequest::sigmas(bad.clone()));
            assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
        for bad in [
            vec![100.0, 900.0],
            vec![500.0, 500.0],
            vec![],
            vec![1000.0],
            vec![-1.0],
        ] {
            let e = s.set_timesteps_with(&TimestepRequest::timesteps(bad.clone()));
            assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
        let mut k = build(sd(json!({"use_karras_sigmas": true})));
        let e = k.set_timesteps_with(&TimestepRequest::timesteps(vec![900.0, 100.0]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        let mut cv = build(sd(
            json!({"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        ));
        let e = cv.set_timesteps_with(&TimestepRequest::timesteps(vec![900.0, 100.0]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        let e = EulerDiscreteScheduler::from_config(EulerDiscreteConfig {
            sigma_min: Some(5.0),
            sigma_max: Some(1.0),
            ..Default::default()
        });
        assert!(matches!(e, Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn churn_needs_noise_only_where_gamma_is_positive() {
        let mut s = build(sd(json!({"s_churn": 1.0, "s_tmin": 0.5})));
        s.set_timesteps(6).unwrap();
        assert!(s.is_stochastic());
        let x = HostTensor::new(vec![2, 4], vec![1.0; 8]).unwrap();
        let t0 = s.timesteps()[0];
        let e = s
            .step(&x, t0, &x, None)
            .expect_err("churn step without noise");
        assert!(matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "noise"));
        // The last σ (≈0.18 after 6 steps with this schedule) lies below s_tmin: no noise.
        let mut s = build(sd(json!({"s_churn": 1.0, "s_tmin": 100.0})));
        s.set_timesteps(6).unwrap();
        assert!(!s.is_stochastic());
        let t0 = s.timesteps()[0];
        assert!(s.step(&x, t0, &x, None).is_ok());
        // Default configs neither churn nor write the Ember-only keys.
        let d = build(sd(json!({})));
        assert!(!d.is_stochastic());
        assert!(d.config_json().get("s_churn").is_none());
        assert!(d.config_json().get("s_tmax").is_none());
    }

    /// Numbers from diffusers 0.42.1 (`EulerDiscreteScheduler`, SD betas, Karras σs, 8 steps,
    /// the fake model/noise of `test_support::run`).
    #[test]
    fn matches_diffusers_karras() {
        let mut s = build(sd(json!({"use_karras_sigmas": true})));
        s.set_timesteps(8).unwrap();
        let ts = s.timesteps();
        assert_eq!(ts.len(), 8);
        assert_close(
            "timesteps",
            &ts[..5],
            &[
                999.0,
                889.54638671875,
                745.86767578125,
                549.0169067382812,
                298.657958984375,
            ],
            1e-7,
        );
        let sig = s.sigmas().unwrap();
        assert_eq!(sig.len(), 9);
        assert_close(
            "sigmas",
            &sig[..5],
            &[
                14.614646911621094,
                7.902944564819336,
                4.027746200561523,
                1.9103628396987915,
                0.8288717269897461,
            ],
            1e-7,
        );
        assert_eq!(s.init_noise_sigma(), 14.614646911621094);
        let (fin, x0) = run(s.as_mut(), |_| 0);
        assert_close(
            "x0",
            &x0[..3],
            &[-9.457715034484863, -6.531863689422607, -3.6060121059417725],
            2e-6,
        );
        assert_close(
            "final",
            &fin,
            &[
                -6.247060775756836,
                -4.471147060394287,
                -2.6952335834503174,
                -0.9193198084831238,
                0.856593668460846,
                2.63250732421875,
                4.408421516418457,
                6.1843342781066895,
            ],
            2e-6,
        );
    }

    /// diffusers 0.42.1 with `set_timesteps(sigmas=[14, 7.5, 3.1, 1, 0.2, 0])`.
    #[test]
    fn matches_diffusers_custom_sigmas() {
        let mut s = build(sd(json!({})));
        s.set_timesteps_with(&TimestepRequest::sigmas(vec![
            14.0, 7.5, 3.1, 1.0, 0.2, 0.0,
        ]))
        .unwrap();
        assert_close(
            "timesteps",
            s.timesteps(),
            &[
                991.8843994140625,
                879.380615234375,
                681.576904296875,
                353.8902282714844,
                40.345672607421875,
            ],
            2e-7,
        );
        assert_eq!(s.sigmas().unwrap()[2], f64::from(3.1f32));
        assert_eq!(s.init_noise_sigma(), 14.0);
        let (fin, _) = run(s.as_mut(), |_| 0);
        assert_close(
            "final",
            &fin,
            &[
                -6.337978363037109,
                -4.545773029327393,
                -2.753568649291992,
                -0.9613641500473022,
                0.8308402895927429,
                2.623044967651367,
                4.415248870849609,
                6.20745325088501,
            ],
            2e-6,
        );
    }

    #[test]
    fn schedule_options() {
        // Leading spacing: init_noise_sigma = √(σ_max² + 1) (diffusers: 8.450066566467285).
        let mut s = build(sd(
            json!({"timestep_spacing": "leading", "steps_offset": 1}),
        ));
        s.set_timesteps(10).unwrap();
        assert_eq!(s.timesteps()[0], 901.0);
        assert!((s.init_noise_sigma() - 8.450066566467285).abs() < 1e-6);
        // log_linear: n + 1 σs plus the final one; the last step ends at σ_min.
        let mut s = build(sd(json!({"interpolation_type": "log_linear"})));
        s.set_timesteps(6).unwrap();
        assert_eq!(s.sigmas().unwrap().len(), 8);
        assert_eq!(s.timesteps().len(), 6);
        // final_sigmas_type = sigma_min ends at σ(t = 0).
        let mut s = build(sd(json!({"final_sigmas_type": "sigma_min"})));
        s.set_timesteps(6).unwrap();
        assert!((s.sigmas().unwrap()[6] - 0.029167532).abs() < 1e-8);
        // Zero terminal SNR: σ_max = √((1 − 2⁻²⁴)/2⁻²⁴) ≈ 4096.
        let mut s = build(sd(
            json!({"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}),
        ));
        s.set_timesteps(6).unwrap();
        // (torch's float32 sqrt gives 4096.0; the correctly rounded value is 4095.99976.)
        assert!((s.sigmas().unwrap()[0] - 4096.0).abs() < 1e-3);
        // Continuous v-prediction timesteps are ¼ ln σ.
        let mut s = build(sd(
            json!({"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        ));
        s.set_timesteps(4).unwrap();
        let sig0 = s.sigmas().unwrap()[0];
        assert!((s.timesteps()[0] - 0.25 * sig0.ln()).abs() < 1e-6);
    }

    #[test]
    fn add_noise_and_velocity() {
        let mut s = build(sd(json!({})));
        s.set_timesteps(10).unwrap();
        let x0 = HostTensor::new(vec![2, 4], vec![0.5; 8]).unwrap();
        let z = fake_noise(0);
        let ts = s.timesteps().to_vec();
        let noisy = s.add_noise(&x0, &z, &[ts[0], ts[5]]).unwrap();
        let sig = s.sigmas().unwrap().to_vec();
        assert!((noisy.data()[0] - (0.5 + z.data()[0] * sig[0])).abs() < 1e-12);
        assert!((noisy.data()[7] - (0.5 + z.data()[7] * sig[5])).abs() < 1e-12);
        // img2img: with begin_index set, the σ at begin_index is used whatever the timestep.
        s.set_begin_index(3);
        let n3 = s.add_noise(&x0, &z, &[ts[0]]).unwrap();
        assert!((n3.data()[0] - (0.5 + z.data()[0] * sig[3])).abs() < 1e-12);
        // get_velocity indexes ᾱ by schedule position, as diffusers does.
        let v = s.get_velocity(&x0, &z, &[ts[1]]).unwrap();
        assert!(v.all_finite());
    }
}
