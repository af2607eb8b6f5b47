//! diffusers' `EulerAncestralDiscreteScheduler` (`scheduling_euler_ancestral_discrete.py`):
//! k-diffusion's `sample_euler_ancestral` with η = 1.
//!
//! An ancestral step from σ_i to σ_{i+1} splits the move into a deterministic Euler step
//! down to σ_down and fresh noise of standard deviation σ_up, chosen so that the marginal
//! noise level is σ_{i+1} (σ_down² + σ_up² = σ_{i+1}²) and the step is the DDPM posterior
//! sample:
//!
//! ```text
//! σ_up   = √(σ_{i+1}² (σ_i² − σ_{i+1}²) / σ_i²)
//! σ_down = √(σ_{i+1}² − σ_up²)
//! x_next = x + (σ_down − σ_i) · (x − x̂₀)/σ_i + σ_up · z,   z ~ N(0, I)
//! ```
//!
//! Every step but the last (σ_{i+1} = 0 gives σ_up = 0) needs one noise draw.

use crate::config::SchedulerConfig;
use crate::schedule::{BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_num_train_timesteps, check_prediction, derivative, f32r,
    init_noise_sigma, predict_x0, reject_mu, require_noise, scale_input, spaced_timesteps,
    SigmaSchedule, TimestepSpacing, TrainSigmas,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of [`EulerAncestralDiscreteScheduler`], diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerAncestralDiscreteConfig {
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
    /// The model's parameterisation (`epsilon` or `v_prediction`; diffusers has not
    /// implemented `sample` for this class).
    pub prediction_type: Prediction,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Rescale βs to zero terminal SNR (Lin et al. 2023); the last ᾱ becomes 2⁻²⁴.
    pub rescale_betas_zero_snr: bool,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for EulerAncestralDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: Prediction::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for EulerAncestralDiscreteConfig {
    const CLASS_NAME: &'static str = "EulerAncestralDiscreteScheduler";
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
            &[Prediction::Epsilon, Prediction::VPrediction],
            Self::CLASS_NAME,
        )
    }
}

/// diffusers' `EulerAncestralDiscreteScheduler`: Euler steps to σ_down plus fresh noise
/// σ_up (one model evaluation and one noise draw per step).
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    config: EulerAncestralDiscreteConfig,
    train: TrainSigmas,
    state: SigmaSchedule,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler; before `set_timesteps` it holds diffusers' constructor
    /// schedule (every training timestep), which `add_noise` can use.
    pub fn from_config(config: EulerAncestralDiscreteConfig) -> Result<Self> {
        config.validate()?;
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
        sigmas.push(0.0);
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            state: SigmaSchedule::initial(timesteps, sigmas),
            train,
            config,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(EulerAncestralDiscreteConfig::default())
            .expect("the default EulerAncestralDiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &EulerAncestralDiscreteConfig {
        &self.config
    }

    /// (σ_up, σ_down) for a step from `sigma_from` to `sigma_to`.
    fn ancestral(sigma_from: f64, sigma_to: f64) -> (f64, f64) {
        let (f2, t2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let up = (t2 * (f2 - t2) / f2).max(0.0).sqrt();
        let down = (t2 - up * up).max(0.0).sqrt();
        (up, down)
    }
}

impl Default for EulerAncestralDiscreteScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for EulerAncestralDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        EulerAncestralDiscreteConfig::CLASS_NAME
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
        true
    }
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let class = EulerAncestralDiscreteConfig::CLASS_NAME;
        reject_mu(request.mu, class)?;
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(Error::argument(
                "timesteps",
                format!("{class} takes a step count only, not custom timesteps or sigmas"),
            ));
        }
        let n = request
            .num_inference_steps
            .ok_or_else(|| Error::argument("num_inference_steps", "a step count is required"))?;
        let c = &self.config;
        let timesteps =
            spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)?;
        // σ at each timestep (np.interp), then the final σ = 0, stored as float32.
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| f32r(self.train.interp(t)))
            .collect();
        sigmas.push(0.0);
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
            .current_index(timestep, EulerAncestralDiscreteConfig::CLASS_NAME)?;
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
        let class = EulerAncestralDiscreteConfig::CLASS_NAME;
        let i = self.state.current_index(timestep, class)?;
        let sigma = self.state.sigma(i)?;
        let sigma_to = self.state.sigma(i + 1)?;
        let x0 = predict_x0(self.config.prediction_type, model_output, sample, sigma)?;
        let (sigma_up, sigma_down) = Self::ancestral(sigma, sigma_to);
        let d = derivative(sample, &x0, sigma);
        let dt = sigma_down - sigma;
        let prev = if sigma_up > 0.0 {
            let z = require_noise(noise, sample, class)?;
            S::lin_comb(&[(1.0, sample), (dt, &d), (sigma_up, z)])
        } else {
            // The last step (σ_{i+1} = 0) adds no noise; none is needed.
            S::lin_comb(&[(1.0, sample), (dt, &d)])
        };
        self.state.advance();
        Ok(StepOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        self.state.add_noise(original, noise, timesteps)
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
    use crate::sigma_schedule::test_support::{assert_close, build, common_errors, run};
    use ember_core::HostTensor;
    use serde_json::json;

    #[test]
    fn shared_error_cases() {
        common_errors("EulerAncestralDiscreteScheduler", false);
    }

    #[test]
    fn specific_errors() {
        let cfg =
            json!({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"});
        assert!(crate::registry::from_config_json::<HostTensor>(&cfg).is_err());
        let mut s = build(json!({"_class_name": "EulerAncestralDiscreteScheduler"}));
        let e = s.set_timesteps_with(&TimestepRequest::sigmas(vec![10.0, 1.0, 0.0]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        s.set_timesteps(4).unwrap();
        assert!(s.is_stochastic());
        let x = HostTensor::new(vec![2, 4], vec![1.0; 8]).unwrap();
        let t0 = s.timesteps()[0];
        let e = s
            .step(&x, t0, &x, None)
            .expect_err("ancestral step without noise");
        assert!(matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "noise"));
        assert_eq!(s.step_index(), Some(0));
        // The final step (to σ = 0) draws no noise.
        s.set_timesteps(1).unwrap();
        let t0 = s.timesteps()[0];
        assert!(s.step(&x, t0, &x, None).is_ok());
    }

    /// diffusers 0.42.1: SD betas, leading spacing + offset 1, v-prediction, 8 steps.
    #[test]
    fn matches_diffusers() {
        let mut s = build(json!({
            "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1,
            "prediction_type": "v_prediction"
        }));
        s.set_timesteps(8).unwrap();
        assert_eq!(&s.timesteps()[..5], &[876.0, 751.0, 626.0, 501.0, 376.0]);
        assert_close(
            "sigmas",
            &s.sigmas().unwrap()[..5],
            &[
                7.371846675872803,
                4.116698265075684,
                2.510922431945801,
                1.6236929893493652,
                1.0760315656661987,
            ],
            1e-7,
        );
        assert!((s.init_noise_sigma() - 7.439363479614258).abs() < 1e-6);
        let (fin, x0) = run(s.as_mut(), |j| j);
        assert_close(
            "x0",
            &x0[..3],
            &[
                0.10172861814498901,
                0.05519798398017883,
                0.008667360991239548,
            ],
            2e-6,
        );
        assert_close(
            "final",
            &fin,
            &[
                1.1498844623565674,
                -0.6843191385269165,
                -0.03437849134206772,
                0.01321110688149929,
                -0.09451363235712051,
                -0.08454345166683197,
                0.05744525417685509,
                0.06448516249656677,
            ],
            2e-6,
        );
    }
}
