//! `LCMScheduler`: multistep sampling of latent consistency models (Luo et al. 2023,
//! "Latent Consistency Models") — a port of diffusers' `scheduling_lcm.py`.
//!
//! The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x̂₀(x_t, t) maps any point of
//! a trajectory to its origin; the boundary-condition scalings (Song et al. 2023,
//! "Consistency Models", with σ_data = 0.5 and t scaled by `timestep_scaling`) are
//!
//! ```text
//! c_skip(t) = σ_data² / ((s t)² + σ_data²),    c_out(t) = s t / √((s t)² + σ_data²).
//! ```
//!
//! Multistep sampling (LCM Algorithm 1) alternates denoising and re-noising:
//! x_{t'} = √ᾱ_{t'} f(x_t, t) + √(1 − ᾱ_{t'}) z, with no noise after the final step, so
//! every step but the last takes standard-normal noise from the caller.
//!
//! `pred_original_sample` of each step is f(x_t, t) (diffusers' `denoised`), which LCM
//! pipelines return as the final image.

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{
    self as common, ConsistencyTimestepOptions, StepIndex, TimestepSpacing, X0Clamp,
};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// σ_data of the consistency-model boundary condition ("Default: 0.5" in diffusers).
const SIGMA_DATA: f32 = 0.5;

/// The configuration of [`LcmScheduler`]: diffusers' `LCMScheduler` keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LcmConfig {
    /// Number of diffusion steps the model was trained with (T).
    pub num_train_timesteps: usize,
    /// First β of the named schedules.
    pub beta_start: f64,
    /// Last β of the named schedules.
    pub beta_end: f64,
    /// How β runs from `beta_start` to `beta_end` (linear, scaled_linear, squaredcos_cap_v2).
    pub beta_schedule: BetaSchedule,
    /// Explicit β values, overriding `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Length of the DDIM schedule the model was distilled on (the inference timesteps are
    /// a subset of it).
    pub original_inference_steps: usize,
    /// Clamp x̂₀ to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// Bound for `clip_sample`.
    pub clip_sample_range: f64,
    /// Use ᾱ = 1 after the last step (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Kept for config compatibility; LCM's schedule does not use it.
    pub steps_offset: usize,
    /// What the model predicts: `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: Prediction,
    /// Dynamic thresholding of x̂₀ (Imagen); takes precedence over `clip_sample`.
    pub thresholding: bool,
    /// The quantile of |x̂₀| used as threshold.
    pub dynamic_thresholding_ratio: f64,
    /// Upper bound of the dynamic threshold.
    pub sample_max_value: f64,
    /// Kept for config compatibility; LCM's schedule does not use it.
    pub timestep_spacing: TimestepSpacing,
    /// The factor s applied to t in c_skip / c_out.
    pub timestep_scaling: f64,
    /// Rescale β so that ᾱ_{T−1} = 0 (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for LcmConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            original_inference_steps: 50,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: Prediction::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for LcmConfig {
    const CLASS_NAME: &'static str = "LCMScheduler";
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
            &common::BASIC_BETA_SCHEDULES,
            self.trained_betas.is_some(),
            Self::CLASS_NAME,
        )?;
        common::check_clip_options(
            self.clip_sample_range,
            self.thresholding,
            self.dynamic_thresholding_ratio,
            self.sample_max_value,
        )?;
        if !self.timestep_scaling.is_finite() {
            return Err(Error::config("timestep_scaling", "must be finite"));
        }
        Ok(())
    }
}

/// diffusers' `LCMScheduler`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    config: LcmConfig,
    schedule: TrainSchedule,
    acp: Vec<f32>,
    /// ᾱ after the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    final_alpha_cumprod: f32,
    /// diffusers' `num_inference_steps` (for a custom list, its length before the strength cut).
    num_inference_steps: Option<usize>,
    custom_timesteps: bool,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f64>,
    index: StepIndex,
    clamp: X0Clamp,
}

impl LcmScheduler {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: LcmConfig) -> Result<Self> {
        config.validate()?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        )?;
        let acp = common::alphas_cumprod_f32(&schedule);
        let clamp = X0Clamp::from_options(
            config.thresholding,
            config.clip_sample,
            config.clip_sample_range,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        );
        Ok(Self {
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { acp[0] },
            acp,
            schedule,
            config,
            num_inference_steps: None,
            custom_timesteps: false,
            timesteps_int: Vec::new(),
            timesteps: Vec::new(),
            index: StepIndex::default(),
            clamp,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid.
        Self::from_config(LcmConfig::default()).expect("default LCM config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &LcmConfig {
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

    /// diffusers' `set_timesteps` with its LCM-specific arguments
    /// (`original_inference_steps`, `strength`).
    pub fn set_timesteps_with_options(
        &mut self,
        request: &TimestepRequest,
        options: ConsistencyTimestepOptions,
    ) -> Result<()> {
        let sched = common::consistency_timesteps(
            LcmConfig::CLASS_NAME,
            request,
            options,
            self.config.original_inference_steps,
            self.config.num_train_timesteps,
            false,
        )?;
        self.timesteps = common::to_f64(&sched.timesteps);
        self.timesteps_int = sched.timesteps;
        self.num_inference_steps = Some(sched.num_inference_steps);
        self.custom_timesteps = sched.custom;
        self.index.reset();
        Ok(())
    }

    /// diffusers' `get_scalings_for_boundary_condition_discrete`: (c_skip, c_out) at t, in
    /// float32 as diffusers computes them from the integer timestep tensor.
    pub fn boundary_scalings(&self, timestep: i64) -> (f32, f32) {
        let scaled = timestep as f32 * self.config.timestep_scaling as f32;
        let denom = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
        (SIGMA_DATA * SIGMA_DATA / denom, scaled / denom.sqrt())
    }
}

impl Default for LcmScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for LcmScheduler {
    fn class_name(&self) -> &'static str {
        LcmConfig::CLASS_NAME
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
    /// Every step but the final one re-noises, so LCM is stochastic unless it runs a single
    /// step.
    fn is_stochastic(&self) -> bool {
        self.num_inference_steps != Some(1)
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        self.set_timesteps_with_options(request, ConsistencyTimestepOptions::default())
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
        common::check_step_inputs(model_output, sample)?;
        let n = self
            .num_inference_steps
            .ok_or_else(|| Error::State("LCMScheduler: call set_timesteps before step".into()))?;
        let t = common::train_index("timestep", timestep, self.config.num_train_timesteps)? as i64;
        let mut index = self.index;
        let i = index.current(&self.timesteps, timestep)?;
        let is_final = i == n - 1;
        let noise = if is_final {
            None
        } else {
            Some(common::require_noise(
                noise,
                sample,
                "LCM re-noises after every step but the last",
            )?)
        };

        // 1. The next timestep of the schedule (the current one after the last).
        let prev_t = i
            .checked_add(1)
            .and_then(|j| self.timesteps_int.get(j))
            .copied()
            .unwrap_or(t);

        // 2. ᾱ_t, ᾱ_{t'} (float32, as diffusers).
        let alpha_prod_t = self.acp[t as usize];
        let alpha_prod_t_prev = common::alpha_at(&self.acp, prev_t, self.final_alpha_cumprod)?;

        // 3. Boundary-condition scalings and x̂₀, clipped or thresholded.
        let (c_skip, c_out) = self.boundary_scalings(t);
        let x0 = common::predict_x0(
            self.config.prediction_type,
            model_output,
            sample,
            alpha_prod_t,
        )?;
        let x0 = self.clamp.apply(x0);

        // 4. The consistency function f(x_t, t) = c_out x̂₀ + c_skip x_t.
        let denoised = S::lin_comb(&[(f64::from(c_out), &x0), (f64::from(c_skip), sample)]);

        // 5. Re-noise to t' (LCM Algorithm 1), except after the final step.
        let prev_sample = match noise {
            Some(z) => S::lin_comb(&[
                (f64::from(alpha_prod_t_prev.sqrt()), &denoised),
                (f64::from((1.0 - alpha_prod_t_prev).sqrt()), z),
            ]),
            None => denoised.clone(),
        };
        index.advance();
        self.index = index;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(denoised),
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

    fn sched(cfg: serde_json::Value) -> LcmScheduler {
        LcmScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    /// (config, request, options, expected timesteps, expected final prev_sample, denoised).
    type Case = (
        serde_json::Value,
        TimestepRequest,
        ConsistencyTimestepOptions,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
    );

    #[test]
    fn runs_match_diffusers() {
        for (cfg, req, opts, expected_ts, expected, expected_denoised) in cases() {
            let mut s = sched(cfg.clone());
            s.set_timesteps_with_options(&req, opts).unwrap();
            assert_eq!(
                Scheduler::<HostTensor>::timesteps(&s),
                expected_ts.as_slice(),
                "{cfg}"
            );
            let mut x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
            let z = host(&[1, 2, 2, 2], |i| (i as f64).cos());
            let mut d = x.clone();
            for t in expected_ts {
                let e = x.scale(0.5).add_scalar(0.1);
                let out = s.step(&e, t, &x, Some(&z)).unwrap();
                x = out.prev_sample;
                d = out.pred_original_sample.unwrap();
            }
            for (p, q) in x
                .data()
                .iter()
                .zip(expected)
                .chain(d.data().iter().zip(expected_denoised))
            {
                assert!((p - q).abs() < 1e-4 * q.abs().max(1.0), "{cfg}: {p} vs {q}");
            }
        }
    }

    fn cases() -> Vec<Case> {
        // diffusers 0.42.1 from x = linspace(-1, 1, 8), model output 0.5·x + 0.1, noise
        // cos(arange(8)) at every step.
        vec![
            (
                serde_json::json!({}),
                TimestepRequest::steps(4),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0, 759.0, 499.0, 259.0],
                vec![
                    -0.142759770154953,
                    -0.6497248411178589,
                    -2.1781508922576904,
                    -2.9198358058929443,
                    -1.7899056673049927,
                    0.5757611393928528,
                    2.40515398979187,
                    2.4193115234375,
                ],
                vec![
                    -0.142759770154953,
                    -0.6497248411178589,
                    -2.1781508922576904,
                    -2.9198358058929443,
                    -1.7899056673049927,
                    0.5757611393928528,
                    2.40515398979187,
                    2.4193115234375,
                ],
            ),
            (
                serde_json::json!({"prediction_type": "v_prediction", "clip_sample": true, "set_alpha_to_one": false}),
                TimestepRequest::steps(6),
                ConsistencyTimestepOptions {
                    original_inference_steps: Some(100),
                    strength: 1.0,
                },
                vec![999.0, 839.0, 669.0, 499.0, 339.0, 169.0],
                vec![
                    0.36942264437675476,
                    0.15320919454097748,
                    -0.29664257168769836,
                    -0.5665435791015625,
                    -0.40835073590278625,
                    0.03249156475067139,
                    0.35067230463027954,
                    0.2536548972129822,
                ],
                vec![
                    0.36942264437675476,
                    0.15320919454097748,
                    -0.29664257168769836,
                    -0.5665435791015625,
                    -0.40835073590278625,
                    0.03249156475067139,
                    0.35067230463027954,
                    0.2536548972129822,
                ],
            ),
            (
                serde_json::json!({"thresholding": true, "sample_max_value": 1.5, "prediction_type": "sample"}),
                TimestepRequest::steps(3),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 0.6,
                },
                vec![599.0, 399.0, 199.0],
                vec![
                    0.49868297576904297,
                    0.3295665681362152,
                    -0.04419048875570297,
                    -0.26033103466033936,
                    -0.10150978714227676,
                    0.30488038063049316,
                    0.6038329005241394,
                    0.5391188263893127,
                ],
                vec![
                    0.49868297576904297,
                    0.3295665681362152,
                    -0.04419048875570297,
                    -0.26033103466033936,
                    -0.10150978714227676,
                    0.30488038063049316,
                    0.6038329005241394,
                    0.5391188263893127,
                ],
            ),
            (
                serde_json::json!({}),
                TimestepRequest::timesteps(vec![999.0, 759.0, 499.0, 259.0]),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0, 759.0, 499.0, 259.0],
                vec![
                    -0.142759770154953,
                    -0.6497248411178589,
                    -2.1781508922576904,
                    -2.9198358058929443,
                    -1.7899056673049927,
                    0.5757611393928528,
                    2.40515398979187,
                    2.4193115234375,
                ],
                vec![
                    -0.142759770154953,
                    -0.6497248411178589,
                    -2.1781508922576904,
                    -2.9198358058929443,
                    -1.7899056673049927,
                    0.5757611393928528,
                    2.40515398979187,
                    2.4193115234375,
                ],
            ),
            (
                serde_json::json!({"timestep_scaling": 5.0}),
                TimestepRequest::timesteps(vec![999.0, 759.0, 499.0, 259.0, 19.0]),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 0.5,
                },
                vec![259.0, 19.0],
                vec![
                    -0.629069447517395,
                    -0.516978919506073,
                    -0.5328651070594788,
                    -0.4501821994781494,
                    -0.13300827145576477,
                    0.3389888107776642,
                    0.7437971830368042,
                    0.9211782217025757,
                ],
                vec![
                    -0.7691805958747864,
                    -0.5942747592926025,
                    -0.4817085564136505,
                    -0.32112765312194824,
                    -0.04632216691970825,
                    0.30390042066574097,
                    0.6213942170143127,
                    0.8281042575836182,
                ],
            ),
            (
                serde_json::json!({}),
                TimestepRequest::steps(1),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0],
                vec![
                    -8.802960395812988,
                    -6.705390453338623,
                    -4.6078200340271,
                    -2.510249614715576,
                    -0.4126800000667572,
                    1.6848902702331543,
                    3.7824606895446777,
                    5.880030632019043,
                ],
                vec![
                    -8.802960395812988,
                    -6.705390453338623,
                    -4.6078200340271,
                    -2.510249614715576,
                    -0.4126800000667572,
                    1.6848902702331543,
                    3.7824606895446777,
                    5.880030632019043,
                ],
            ),
        ]
    }

    #[test]
    fn errors() {
        let mut s = LcmScheduler::new();
        let x = host(&[1, 1, 2, 2], |i| i as f64 * 0.1);
        assert!(matches!(
            s.step(&x, 999.0, &x, Some(&x)),
            Err(Error::State(_))
        ));
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 0).is_err());
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 1001).is_err());
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 51).is_err());
        let r = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![499.0, 999.0]),
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        let nan = x.map(|v| if v > 0.15 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 999.0, &x, Some(&x)),
            Err(Error::NonFinite { .. })
        ));
        // multistep needs noise; a timestep off the schedule is an error
        assert!(matches!(
            s.step(&x, 999.0, &x, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(s.step(&x, 998.0, &x, Some(&x)).is_err());
        assert_eq!(Scheduler::<HostTensor>::step_index(&s), None);
        // single step: deterministic
        Scheduler::<HostTensor>::set_timesteps(&mut s, 1).unwrap();
        assert!(!Scheduler::<HostTensor>::is_stochastic(&s));
        assert!(s.step(&x, 999.0, &x, None).is_ok());
    }
}
