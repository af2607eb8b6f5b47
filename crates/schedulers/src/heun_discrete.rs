//! diffusers' `HeunDiscreteScheduler` (`scheduling_heun_discrete.py`): Heun's second-order
//! method on the probability-flow ODE, Algorithm 1 of Karras et al. (2022) with γ = 0.
//!
//! A step from σ_i to σ_{i+1} costs two model evaluations:
//!
//! ```text
//! d_i    = (x_i − x̂₀(x_i, σ_i))/σ_i
//! x̃      = x_i + (σ_{i+1} − σ_i) d_i                       (Euler predictor)
//! d'     = (x̃ − x̂₀(x̃, σ_{i+1}))/σ_{i+1}
//! x_{i+1} = x_i + (σ_{i+1} − σ_i) (d_i + d')/2              (trapezoidal corrector)
//! ```
//!
//! diffusers drives this through one `step` per evaluation: the timesteps are
//! `t₀, t₁, t₁, t₂, t₂, …, t_{n−1}, t_{n−1}`, and the scheduler alternates between the
//! predictor ("first order" state) and the corrector. The final step, to σ = 0, is a plain
//! Euler step (the corrector would divide by σ = 0), so n σs take 2n − 1 evaluations.

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::schedule::{BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_custom_timesteps, check_num_train_timesteps, check_prediction,
    derivative, double_interior, double_tail, f32r, init_noise_sigma, interpolated_schedule,
    predict_x0, reject_mu, scale_input, spaced_timesteps, SigmaSchedule, SigmaSpacing,
    TimestepSpacing, TrainSigmas,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of [`HeunDiscreteScheduler`], diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeunDiscreteConfig {
    /// Number of training timesteps T.
    pub num_train_timesteps: usize,
    /// β at t = 0.
    pub beta_start: f64,
    /// β at t = T − 1.
    pub beta_end: f64,
    /// The β schedule (`linear`, `scaled_linear`, `squaredcos_cap_v2` or `exp`).
    pub beta_schedule: BetaSchedule,
    /// Explicit βs, overriding the named schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// The model's parameterisation (`epsilon`, `sample` or `v_prediction`).
    pub prediction_type: Prediction,
    /// Use Karras et al.'s σ spacing (eq. 5, ρ = 7).
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// Use σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Use Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// Clamp x̂₀ to `[−clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// The clamp range of `clip_sample`.
    pub clip_sample_range: f64,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for HeunDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: Prediction::Epsilon,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for HeunDiscreteConfig {
    const CLASS_NAME: &'static str = "HeunDiscreteScheduler";
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
                BetaSchedule::Exp,
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
        if self.clip_sample && !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0)
        {
            return Err(Error::config(
                "clip_sample_range",
                "must be finite and positive",
            ));
        }
        Ok(())
    }
}

/// The predictor's results the corrector needs.
#[derive(Debug, Clone)]
struct Predictor<S> {
    /// d_i, the derivative at the start of the step.
    derivative: S,
    /// σ_{i+1} − σ_i.
    dt: f64,
    /// x_i, the sample at the start of the step.
    sample: S,
}

/// diffusers' `HeunDiscreteScheduler`: second order, two model evaluations per σ step
/// (order 2, timesteps repeated).
#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler<S> {
    config: HeunDiscreteConfig,
    spacing: SigmaSpacing,
    train: TrainSigmas,
    state: SigmaSchedule,
    /// `Some` between a predictor and its corrector (diffusers' `dt is not None`).
    predictor: Option<Predictor<S>>,
}

impl<S: SampleTensor> HeunDiscreteScheduler<S> {
    /// Builds the scheduler. Like diffusers' constructor, it lays out a schedule with one
    /// step per training timestep, which `add_noise` can use before `set_timesteps`.
    pub fn from_config(config: HeunDiscreteConfig) -> Result<Self> {
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
            false,
        )?;
        let train = TrainSigmas::from_schedule(&schedule, false);
        let mut s = Self {
            state: SigmaSchedule::initial(Vec::new(), Vec::new()),
            spacing,
            train,
            config,
            predictor: None,
        };
        let (timesteps, sigmas) = s.build(&TimestepRequest::steps(s.config.num_train_timesteps))?;
        s.state = SigmaSchedule::initial(timesteps, sigmas);
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(HeunDiscreteConfig::default())
            .expect("the default HeunDiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &HeunDiscreteConfig {
        &self.config
    }

    /// Whether the next step is a predictor (diffusers' `state_in_first_order`).
    pub fn state_in_first_order(&self) -> bool {
        self.predictor.is_none()
    }

    /// The (repeated) timesteps and σs of diffusers' `set_timesteps`.
    fn build(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.config;
        let class = HeunDiscreteConfig::CLASS_NAME;
        reject_mu(request.mu, class)?;
        if request.sigmas.is_some() {
            return Err(Error::argument(
                "sigmas",
                format!("{class} does not accept custom sigmas"),
            ));
        }
        let (n, timesteps) = match (request.num_inference_steps, request.timesteps.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(Error::argument(
                    "timesteps",
                    "pass only one of `num_inference_steps` and `timesteps`",
                ))
            }
            (None, None) => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "pass one of `num_inference_steps` and `timesteps`",
                ))
            }
            (Some(n), None) => (
                n,
                spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)?,
            ),
            (None, Some(custom)) => {
                if self.spacing != SigmaSpacing::Interpolated {
                    return Err(Error::argument(
                        "timesteps",
                        format!(
                            "custom timesteps cannot be combined with `{}`",
                            self.spacing.flag_name()
                        ),
                    ));
                }
                check_custom_timesteps(custom, c.num_train_timesteps)?;
                (custom.len(), custom.iter().map(|&t| f32r(t)).collect())
            }
        };
        // Heun's config has no sigma_min / sigma_max: Karras & co. span the interpolated ends.
        let (timesteps, mut sigmas) =
            interpolated_schedule(&self.train, self.spacing, timesteps, n, None, None);
        sigmas.push(0.0);
        let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
        let timesteps: Vec<f64> = timesteps.into_iter().map(f32r).collect();
        Ok((double_tail(&timesteps), double_interior(&sigmas)))
    }
}

impl<S: SampleTensor> Default for HeunDiscreteScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for HeunDiscreteScheduler<S> {
    fn class_name(&self) -> &'static str {
        HeunDiscreteConfig::CLASS_NAME
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
        2
    }
    fn is_stochastic(&self) -> bool {
        false
    }
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let (timesteps, sigmas) = self.build(request)?;
        self.state.install(timesteps, sigmas);
        self.predictor = None;
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
        // In both states the model sees the sample at sigmas[step_index] (σ_i for the
        // predictor, σ_{i+1} for the corrector, thanks to the repeated σs).
        let i = self
            .state
            .current_index(timestep, HeunDiscreteConfig::CLASS_NAME)?;
        Ok(scale_input(sample, self.state.sigma(i)?))
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
        let i = self
            .state
            .current_index(timestep, HeunDiscreteConfig::CLASS_NAME)?;
        let first_order = self.predictor.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.state.sigma(i)?, self.state.sigma(i + 1)?)
        } else {
            // The corrector evaluates at the predictor's end point σ_{i+1}.
            (self.state.sigma(i.wrapping_sub(1))?, self.state.sigma(i)?)
        };
        // γ = 0: σ̂ = σ.
        let sigma_input = if first_order { sigma } else { sigma_next };
        let mut x0 = predict_x0(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_input,
        )?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r);
        }
        let prev = match self.predictor.take() {
            None => {
                // Predictor: Euler step, remembered for the corrector.
                let d = derivative(sample, &x0, sigma);
                let dt = sigma_next - sigma;
                let prev = S::lin_comb(&[(1.0, sample), (dt, &d)]);
                self.predictor = Some(Predictor {
                    derivative: d,
                    dt,
                    sample: sample.clone(),
                });
                prev
            }
            Some(p) => {
                // Corrector: average the two slopes, restart from x_i.
                let d = derivative(sample, &x0, sigma_next);
                let avg = S::lin_comb(&[(0.5, &p.derivative), (0.5, &d)]);
                S::lin_comb(&[(1.0, &p.sample), (p.dt, &avg)])
            }
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
        common_errors("HeunDiscreteScheduler", true);
    }

    #[test]
    fn custom_timesteps() {
        let mut s = build(json!({"_class_name": "HeunDiscreteScheduler"}));
        for bad in [
            vec![100.0, 900.0],
            vec![500.0, 500.0],
            vec![],
            vec![1200.0, 3.0],
        ] {
            let e = s.set_timesteps_with(&TimestepRequest::timesteps(bad.clone()));
            assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
        let e = s.set_timesteps_with(&TimestepRequest::sigmas(vec![10.0, 1.0, 0.0]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        s.set_timesteps_with(&TimestepRequest::timesteps(vec![999.0, 700.0, 300.0, 50.0]))
            .unwrap();
        assert_eq!(
            s.timesteps(),
            &[999.0, 700.0, 700.0, 300.0, 300.0, 50.0, 50.0]
        );
        assert_eq!(s.sigmas().unwrap().len(), 8);
        let mut k =
            build(json!({"_class_name": "HeunDiscreteScheduler", "use_karras_sigmas": true}));
        let e = k.set_timesteps_with(&TimestepRequest::timesteps(vec![900.0, 100.0]));
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        // `exp` is a Heun-only beta schedule among these classes.
        build(json!({"_class_name": "HeunDiscreteScheduler", "beta_schedule": "exp"}));
    }

    #[test]
    fn alternates_predictor_and_corrector() {
        let mut s: HeunDiscreteScheduler<HostTensor> = HeunDiscreteScheduler::new();
        s.set_timesteps(3).unwrap();
        let x = HostTensor::new(vec![1, 2], vec![1.0, -1.0]).unwrap();
        let ts = s.timesteps().to_vec();
        assert_eq!(ts.len(), 5);
        for (j, &t) in ts.iter().enumerate() {
            assert_eq!(s.state_in_first_order(), j % 2 == 0, "step {j}");
            s.step(&x.scale(0.1), t, &x, None).unwrap();
        }
        // The last step is a lone Euler predictor, as in diffusers.
        assert!(!s.state_in_first_order());
    }

    /// diffusers 0.42.1: SD betas, Karras σs, v-prediction, 5 steps.
    #[test]
    fn matches_diffusers() {
        let mut s = build(json!({
            "_class_name": "HeunDiscreteScheduler", "beta_schedule": "scaled_linear",
            "use_karras_sigmas": true, "prediction_type": "v_prediction"
        }));
        s.set_timesteps(5).unwrap();
        assert_eq!(s.timesteps().len(), 9);
        assert_close(
            "timesteps",
            &s.timesteps()[..5],
            &[
                999.0,
                785.9539794921875,
                785.9539794921875,
                427.4897766113281,
                427.4897766113281,
            ],
            1e-7,
        );
        assert_eq!(s.sigmas().unwrap().len(), 10);
        assert_close(
            "sigmas",
            &s.sigmas().unwrap()[..5],
            &[
                14.614646911621094,
                4.796544075012207,
                4.796544075012207,
                1.2741053104400635,
                1.2741053104400635,
            ],
            1e-7,
        );
        let (fin, x0) = run(s.as_mut(), |_| 0);
        assert_close(
            "x0",
            &x0[..3],
            &[0.2839317321777344, 0.21807564795017242, 0.15221954882144928],
            2e-6,
        );
        assert_close(
            "final",
            &fin,
            &[
                -0.8854966759681702,
                -0.6231569647789001,
                -0.3608172833919525,
                -0.09847752749919891,
                0.16386206448078156,
                0.4262016713619232,
                0.6885411739349365,
                0.9508809447288513,
            ],
            2e-6,
        );
    }
}
