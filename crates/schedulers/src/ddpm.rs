//! `DDPMScheduler`: ancestral sampling of Ho et al. (2020), "Denoising Diffusion
//! Probabilistic Models", with the strided-timestep generalisation and the variance options
//! of Nichol & Dhariwal (2021), "Improved DDPM" — a port of diffusers'
//! `scheduling_ddpm.py`.
//!
//! One step draws x_{t'} from the posterior q(x_{t'} | x_t, x̂₀) of the forward process, where
//! t' is the next (smaller) timestep of the schedule and x̂₀ the model's estimate of the clean
//! sample (DDPM eqs. 6–7 with α_t replaced by ᾱ_t/ᾱ_{t'} for strided schedules):
//!
//! ```text
//! μ̃ = √ᾱ_{t'} β_t/(1 − ᾱ_t) · x̂₀ + √α_t (1 − ᾱ_{t'})/(1 − ᾱ_t) · x_t,
//! β̃ = (1 − ᾱ_{t'})/(1 − ᾱ_t) · β_t,         α_t = ᾱ_t/ᾱ_{t'},  β_t = 1 − α_t,
//! x_{t'} = μ̃ + σ_t z,  z ~ N(0, I)  (no noise at t = 0).
//! ```

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{
    self as common, read_request, spaced_timesteps, StepIndex, StepsRequest, TimestepSpacing,
    X0Clamp,
};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{
    Error, HostTensor, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' `variance_type` of `DDPMScheduler`: the standard deviation σ_t of the noise
/// added at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VarianceType {
    /// σ_t² = β̃_t, the posterior variance (DDPM's lower bound on the reverse variance).
    #[default]
    #[serde(rename = "fixed_small")]
    FixedSmall,
    /// σ_t = exp(½ log β̃_t): the same value as `fixed_small`, computed through its log.
    #[serde(rename = "fixed_small_log")]
    FixedSmallLog,
    /// σ_t² = β_t (DDPM's upper bound on the reverse variance).
    #[serde(rename = "fixed_large")]
    FixedLarge,
    /// σ_t = exp(½ log β_t). (diffusers 0.42 takes √(log β_t) here, which is NaN for every
    /// β_t < 1; Ember uses the log-variance as the option's name and the "_log" sibling
    /// `fixed_small_log` intend, giving the same σ_t as `fixed_large`.)
    #[serde(rename = "fixed_large_log")]
    FixedLargeLog,
    /// The model predicts σ_t² directly in extra output channels.
    #[serde(rename = "learned")]
    Learned,
    /// The model predicts v ∈ [−1, 1] in extra channels and log σ_t² = f log β_t +
    /// (1 − f) log β̃_t with f = (v + 1)/2 (Improved DDPM, eq. 15).
    #[serde(rename = "learned_range")]
    LearnedRange,
}

impl VarianceType {
    /// Whether the model output carries the variance in a second set of channels.
    pub fn is_learned(self) -> bool {
        matches!(self, VarianceType::Learned | VarianceType::LearnedRange)
    }
}

/// The configuration of [`DdpmScheduler`]: diffusers' `DDPMScheduler` keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdpmConfig {
    /// Number of diffusion steps the model was trained with (T).
    pub num_train_timesteps: usize,
    /// First β of the named schedules.
    pub beta_start: f64,
    /// Last β of the named schedules.
    pub beta_end: f64,
    /// How β runs from `beta_start` to `beta_end` (DDPM implements linear, scaled_linear,
    /// squaredcos_cap_v2, sigmoid and laplace).
    pub beta_schedule: BetaSchedule,
    /// Explicit β values, overriding `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// The noise level of each ancestral step.
    pub variance_type: VarianceType,
    /// Clamp x̂₀ to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// What the model predicts: `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: Prediction,
    /// Dynamic thresholding of x̂₀ (Imagen); takes precedence over `clip_sample`.
    pub thresholding: bool,
    /// The quantile of |x̂₀| used as threshold.
    pub dynamic_thresholding_ratio: f64,
    /// Bound for `clip_sample`.
    pub clip_sample_range: f64,
    /// Upper bound of the dynamic threshold.
    pub sample_max_value: f64,
    /// Layout of the inference timesteps.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every timestep of the `leading` spacing.
    pub steps_offset: usize,
    /// Rescale β so that ᾱ_{T−1} = 0 (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            prediction_type: Prediction::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DdpmConfig {
    const CLASS_NAME: &'static str = "DDPMScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        common::check_prediction(
            self.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
            Self::CLASS_NAME,
        )?;
        common::check_beta_schedule(
            self.beta_schedule,
            &[
                BetaSchedule::Linear,
                BetaSchedule::ScaledLinear,
                BetaSchedule::SquaredcosCapV2,
                BetaSchedule::Sigmoid,
                BetaSchedule::Laplace,
            ],
            self.trained_betas.is_some(),
            Self::CLASS_NAME,
        )?;
        common::check_clip_options(
            self.clip_sample_range,
            self.thresholding,
            self.dynamic_thresholding_ratio,
            self.sample_max_value,
        )
    }
}

/// diffusers' `DDPMScheduler`: ancestral sampling from the DDPM posterior.
///
/// Stochastic: every step with t > 0 takes standard-normal noise from the caller.
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    config: DdpmConfig,
    schedule: TrainSchedule,
    /// ᾱ_t as float32, as diffusers computes with it.
    acp: Vec<f32>,
    /// The inference timesteps (integers), empty until `set_timesteps`.
    timesteps_int: Vec<i64>,
    timesteps: Vec<f64>,
    /// Whether the schedule came from a custom list.
    custom_timesteps: bool,
    index: StepIndex,
    clamp: X0Clamp,
}

impl DdpmScheduler {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: DdpmConfig) -> Result<Self> {
        config.validate()?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        )?;
        let clamp = X0Clamp::from_options(
            config.thresholding,
            config.clip_sample,
            config.clip_sample_range,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        );
        Ok(Self {
            acp: common::alphas_cumprod_f32(&schedule),
            schedule,
            config,
            timesteps_int: Vec::new(),
            timesteps: Vec::new(),
            custom_timesteps: false,
            index: StepIndex::default(),
            clamp,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid and builds a 1000-step linear schedule.
        Self::from_config(DdpmConfig::default()).expect("default DDPM config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The training schedule (β, α, ᾱ).
    pub fn schedule(&self) -> &TrainSchedule {
        &self.schedule
    }

    /// Whether the current schedule was given as a custom timestep list.
    pub fn custom_timesteps(&self) -> bool {
        self.custom_timesteps
    }

    /// diffusers' `previous_timestep`: the timestep after `t` in the schedule, −1 after the
    /// last one.
    fn previous_timestep(&self, t: i64) -> Result<i64> {
        let pos = self
            .timesteps_int
            .iter()
            .position(|&x| x == t)
            .ok_or_else(|| {
                Error::argument(
                    "timestep",
                    format!("{t} is not one of the scheduler's timesteps"),
                )
            })?;
        Ok(self.timesteps_int.get(pos + 1).copied().unwrap_or(-1))
    }

    /// Splits a learned-variance model output `[B, 2C, ...]` into the prediction `[B, C, ...]`
    /// and the variance channels (kept on the host: turning them into σ_t needs `sqrt`/`exp`,
    /// which [`SampleTensor`] does not offer; models with learned variance are small
    /// pixel-space models, where one read-back per step is cheap).
    fn split_learned<S: SampleTensor>(
        &self,
        model_output: &S,
        sample: &S,
    ) -> Result<(S, HostTensor)> {
        let (ms, ss) = (model_output.shape(), sample.shape());
        let ok = ms.len() == ss.len()
            && ms.len() >= 2
            && ms[1] == 2 * ss[1]
            && ms
                .iter()
                .zip(&ss)
                .enumerate()
                .all(|(i, (a, b))| i == 1 || a == b);
        if !ok {
            let mut expected = ss.clone();
            if expected.len() >= 2 {
                expected[1] *= 2;
            }
            return Err(Error::Shape {
                what: format!(
                    "model_output (variance_type `{}` needs the prediction and the variance stacked on dim 1)",
                    serde_json::to_value(self.config.variance_type)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
                expected: format!("{expected:?}"),
                got: ms,
            });
        }
        let host = model_output.to_host();
        let batch = ss[0];
        let half: usize = ss[1..].iter().product();
        let (mut pred, mut var) = (
            Vec::with_capacity(batch * half),
            Vec::with_capacity(batch * half),
        );
        for chunk in host.data().chunks(2 * half.max(1)).take(batch) {
            // Row-major [B, 2C, ...]: within one sample the first C channels come first.
            pred.extend_from_slice(&chunk[..half]);
            var.extend_from_slice(&chunk[half..]);
        }
        let pred = S::from_host_like(&HostTensor::new(ss.clone(), pred)?, sample);
        Ok((pred, HostTensor::new(ss, var)?))
    }
}

impl Default for DdpmScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DdpmScheduler {
    fn class_name(&self) -> &'static str {
        DdpmConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        config_to_json(&self.config)
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
        let t_train = self.config.num_train_timesteps;
        let ts = match read_request(DdpmConfig::CLASS_NAME, request, t_train, true, true)? {
            StepsRequest::Count(n) => {
                self.custom_timesteps = false;
                spaced_timesteps(
                    self.config.timestep_spacing,
                    t_train,
                    n,
                    self.config.steps_offset,
                )
            }
            StepsRequest::Custom(ts) => {
                self.custom_timesteps = true;
                ts
            }
        };
        if let Some(&t) = ts.iter().find(|&&t| t < 0 || t >= t_train as i64) {
            return Err(Error::argument(
                "num_inference_steps",
                format!(
                    "the layout gives timestep {t}, outside [0, {t_train}); check steps_offset"
                ),
            ));
        }
        self.timesteps = common::to_f64(&ts);
        self.timesteps_int = ts;
        self.index.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        ember_core::scheduler::check_finite("model_output", model_output)?;
        if self.timesteps_int.is_empty() {
            return Err(Error::State(
                "DDPMScheduler: call set_timesteps before step".into(),
            ));
        }
        let t = common::train_index("timestep", timestep, self.config.num_train_timesteps)? as i64;
        let prev_t = self.previous_timestep(t)?;
        let variance_type = self.config.variance_type;

        // 1. Split off the learned variance (diffusers: torch.split(model_output, C, dim=1)).
        let (model_output, predicted_variance) = if variance_type.is_learned() {
            let (m, v) = self.split_learned(model_output, sample)?;
            (m, Some(v))
        } else {
            ember_core::scheduler::check_same_shape("model_output", sample, model_output)?;
            (model_output.clone(), None)
        };
        let noise = if t > 0 {
            Some(common::require_noise(noise, sample, "t > 0")?)
        } else {
            None
        };
        self.index.current_lenient(&self.timesteps, timestep);

        // 2. ᾱ_t, ᾱ_{t'} and the effective α_t, β_t of the strided step (float32, as diffusers).
        let alpha_prod_t = self.acp[t as usize];
        let alpha_prod_t_prev = common::alpha_at(&self.acp, prev_t, 1.0)?;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // 3. x̂₀ (DDPM eq. 15 for ε-prediction), then clip or threshold it.
        let x0 = common::predict_x0(
            self.config.prediction_type,
            &model_output,
            sample,
            alpha_prod_t,
        )?;
        let x0 = self.clamp.apply(x0);

        // 4. Posterior mean μ̃_t(x_t, x̂₀) (DDPM eq. 7).
        let x0_coeff = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
        let xt_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut terms: Vec<(f64, &S)> =
            vec![(f64::from(x0_coeff), &x0), (f64::from(xt_coeff), sample)];

        // 5. Noise σ_t z for t > 0. β̃_t = (1 − ᾱ_{t'})/(1 − ᾱ_t) β_t, clamped away from 0
        //    before its log is taken (diffusers: clamp(min=1e-20)).
        let posterior_var =
            ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
        let prev_sample = match noise {
            None => S::lin_comb(&terms),
            Some(z) => match variance_type {
                VarianceType::FixedSmall => {
                    terms.push((f64::from(posterior_var.sqrt()), z));
                    S::lin_comb(&terms)
                }
                VarianceType::FixedSmallLog => {
                    terms.push((f64::from((0.5 * posterior_var.ln()).exp()), z));
                    S::lin_comb(&terms)
                }
                VarianceType::FixedLarge => {
                    terms.push((f64::from(current_beta_t.sqrt()), z));
                    S::lin_comb(&terms)
                }
                VarianceType::FixedLargeLog => {
                    terms.push((f64::from((0.5 * current_beta_t.ln()).exp()), z));
                    S::lin_comb(&terms)
                }
                VarianceType::Learned | VarianceType::LearnedRange => {
                    // The split above always yields the variance for learned types.
                    let v = predicted_variance
                        .as_ref()
                        .expect("learned variance was split off");
                    let (min_log, max_log) = (posterior_var.ln(), current_beta_t.ln());
                    let std = v.map(|pv| {
                        let pv = pv as f32;
                        let s = if variance_type == VarianceType::Learned {
                            // The model's σ_t² itself.
                            pv.sqrt()
                        } else {
                            // Improved DDPM eq. 15: interpolate log β̃_t … log β_t.
                            let frac = (pv + 1.0) / 2.0;
                            (0.5 * (frac * max_log + (1.0 - frac) * min_log)).exp()
                        };
                        f64::from(s)
                    });
                    let std = S::from_host_like(&std, sample);
                    S::lin_comb(&terms).add(&std.mul(z))
                }
            },
        };
        self.index.advance();
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        common::add_noise_vp(&self.acp, original, noise, timesteps)
    }
    fn get_velocity(&self, sample: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        common::velocity_vp(&self.acp, sample, noise, timesteps)
    }
    fn step_index(&self) -> Option<usize> {
        self.index.step_index()
    }
    fn begin_index(&self) -> Option<usize> {
        self.index.begin_index()
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.index.set_begin_index(begin_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::HostTensor;

    fn host(shape: &[usize], f: impl Fn(usize) -> f64) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(f).collect()).unwrap()
    }

    fn sched(cfg: serde_json::Value) -> DdpmScheduler {
        DdpmScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    #[test]
    fn timesteps_match_diffusers() {
        let mut s = DdpmScheduler::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        assert_eq!(
            Scheduler::<HostTensor>::timesteps(&s),
            &[900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0, 0.0]
        );
    }

    #[test]
    fn step_matches_diffusers() {
        // diffusers 0.42.1:
        //   s = DDPMScheduler(); s.set_timesteps(10)
        //   x = linspace(-1, 1, 8).reshape(1,2,2,2); e = 0.5*x + 0.1; z = cos(arange(8)).reshape(...)
        //   s.step(e, 900, x) with randn_tensor patched to return z
        let mut s = DdpmScheduler::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
        let e = x.scale(0.5).add_scalar(0.1);
        let z = host(&[1, 2, 2, 2], |i| (i as f64).cos());
        let out = s.step(&e, 900.0, &x, Some(&z)).unwrap();
        let expected_prev = [
            0.45063677430152893,
            0.15525445342063904,
            -0.5898786783218384,
            -0.9886087775230408,
            -0.5632632970809937,
            0.46992921829223633,
            1.2032493352890015,
            1.1373181343078613,
        ];
        for (a, b) in out.prev_sample.data().iter().zip(expected_prev) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn errors() {
        let mut s = DdpmScheduler::new();
        let x = host(&[1, 2, 2, 2], |i| i as f64 * 0.1);
        // step before set_timesteps
        assert!(matches!(
            s.step(&x, 900.0, &x, Some(&x)),
            Err(Error::State(_))
        ));
        // zero steps / too many steps
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 1001),
            Err(Error::InvalidArgument { .. })
        ));
        // non-decreasing custom timesteps
        let r = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![500.0, 600.0]),
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        // NaN in the model output
        let nan = x.map(|v| if v > 0.35 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 900.0, &x, Some(&x)),
            Err(Error::NonFinite { .. })
        ));
        // stochastic step without noise
        assert!(matches!(
            s.step(&x, 900.0, &x, None),
            Err(Error::InvalidArgument { .. })
        ));
        // timestep not in the schedule
        assert!(s.step(&x, 901.0, &x, Some(&x)).is_err());
        // learned variance needs 2C channels
        let mut l = sched(serde_json::json!({"variance_type": "learned_range"}));
        Scheduler::<HostTensor>::set_timesteps(&mut l, 10).unwrap();
        assert!(matches!(
            l.step(&x, 900.0, &x, Some(&x)),
            Err(Error::Shape { .. })
        ));
        let bad = host(&[1, 3, 2, 2], |_| 0.0);
        assert!(matches!(
            l.step(&bad, 900.0, &x, Some(&x)),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn custom_timesteps_and_final_step_is_deterministic() {
        let mut s = sched(serde_json::json!({"clip_sample": false}));
        Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![999.0, 500.0, 0.0]),
        )
        .unwrap();
        assert!(s.custom_timesteps());
        let x = host(&[2, 1, 2, 2], |i| i as f64 * 0.1);
        // t = 0 takes no noise.
        let out = s.step(&x.scale(0.3), 0.0, &x, None).unwrap();
        assert!(out.prev_sample.all_finite());
        assert_eq!(Scheduler::<HostTensor>::step_index(&s), Some(3));
    }

    #[test]
    fn learned_range_splits_channels() {
        let mut s = sched(serde_json::json!({"variance_type": "learned_range"}));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let x = host(&[2, 1, 2, 2], |i| -0.5 + i as f64 * 0.1);
        // Prediction channels = 0.1·x, variance channels = v; with v = 1 the std is √β_t
        // (fixed_large), with v = −1 it is √β̃_t (fixed_small).
        let make = |v: f64| {
            host(&[2, 2, 2, 2], |i| {
                let (b, c, k) = (i / 8, (i / 4) % 2, i % 4);
                if c == 0 {
                    0.1 * x.data()[b * 4 + k]
                } else {
                    v
                }
            })
        };
        let z = host(&[2, 1, 2, 2], |i| (i as f64).sin());
        let eps = x.scale(0.1);
        for (v, vt) in [(1.0, "fixed_large"), (-1.0, "fixed_small")] {
            let a = s.step(&make(v), 900.0, &x, Some(&z)).unwrap().prev_sample;
            let mut f = sched(serde_json::json!({ "variance_type": vt }));
            Scheduler::<HostTensor>::set_timesteps(&mut f, 10).unwrap();
            let b = f.step(&eps, 900.0, &x, Some(&z)).unwrap().prev_sample;
            for (p, q) in a.data().iter().zip(b.data()) {
                assert!((p - q).abs() < 1e-6, "{vt}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn add_noise_and_velocity() {
        let s = DdpmScheduler::new();
        let x = host(&[2, 1, 1, 2], |i| i as f64);
        let n = host(&[2, 1, 1, 2], |_| 1.0);
        let y = Scheduler::<HostTensor>::add_noise(&s, &x, &n, &[0.0, 999.0]).unwrap();
        let a0 = s.schedule().alphas_cumprod[0];
        assert!((y.data()[1] - (a0.sqrt() + (1.0 - a0).sqrt())).abs() < 1e-6);
        assert!(Scheduler::<HostTensor>::add_noise(&s, &x, &n, &[0.0, 1.0, 2.0]).is_err());
        assert!(Scheduler::<HostTensor>::add_noise(&s, &x, &n, &[1000.0]).is_err());
        let v = Scheduler::<HostTensor>::get_velocity(&s, &x, &n, &[10.0]).unwrap();
        let a = s.schedule().alphas_cumprod[10];
        assert!((v.data()[1] - (a.sqrt() - (1.0 - a).sqrt())).abs() < 1e-6);
    }
}
