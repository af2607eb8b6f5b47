//! `TCDScheduler`: strategic stochastic sampling of trajectory consistency distillation
//! (Zheng et al. 2024, "Trajectory Consistency Distillation") — a port of diffusers'
//! `scheduling_tcd.py`.
//!
//! From t, with t' the next timestep of the schedule and s = ⌊(1 − γ) t'⌋ (γ = diffusers'
//! `eta`; TCD eq. 11), the model's (x̂₀, ε̂) give the DDIM jump to s,
//!
//! ```text
//! x̂_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂,
//! ```
//!
//! which is then re-noised forward to t': x_{t'} = √(ᾱ_{t'}/ᾱ_s) x̂_s + √(1 − ᾱ_{t'}/ᾱ_s) z.
//! γ = 0 is deterministic (s = t'), γ = 1 jumps to x̂₀ and re-noises fully (LCM-like). No
//! noise is added after the final step.
//!
//! `pred_original_sample` of each step is the model's x̂₀; diffusers' output instead carries
//! x̂_s as `pred_noised_sample`.

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{self as common, ConsistencyTimestepOptions, StepIndex, TimestepSpacing};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' default `eta` (γ) of `TCDScheduler.step`.
pub const DEFAULT_TCD_ETA: f64 = 0.3;

/// The configuration of [`TcdScheduler`]: diffusers' `TCDScheduler` keys and defaults, plus
/// the `eta` (γ) argument of diffusers' `step()`, which Ember keeps in the config.
///
/// diffusers' `TCDScheduler` accepts, but never uses, `clip_sample`, `clip_sample_range`,
/// `thresholding`, `dynamic_thresholding_ratio`, `sample_max_value`, `timestep_scaling`,
/// `steps_offset` and `timestep_spacing`; they are kept for the round trip only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcdConfig {
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
    /// Length of the schedule the model was distilled on.
    pub original_inference_steps: usize,
    /// Unused by TCD (kept for compatibility).
    pub clip_sample: bool,
    /// Unused by TCD (kept for compatibility).
    pub clip_sample_range: f64,
    /// Use ᾱ = 1 after the last step (else ᾱ_0); TCD's schedule always ends at t' = 0, so
    /// this has no effect, as in diffusers.
    pub set_alpha_to_one: bool,
    /// Unused by TCD (kept for compatibility).
    pub steps_offset: usize,
    /// What the model predicts: `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: Prediction,
    /// Unused by TCD (kept for compatibility).
    pub thresholding: bool,
    /// Unused by TCD (kept for compatibility).
    pub dynamic_thresholding_ratio: f64,
    /// Unused by TCD (kept for compatibility).
    pub sample_max_value: f64,
    /// Unused by TCD (kept for compatibility).
    pub timestep_spacing: TimestepSpacing,
    /// Unused by TCD (kept for compatibility).
    pub timestep_scaling: f64,
    /// Rescale β so that ᾱ_{T−1} = 0 (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Ember extension (diffusers passes it to `step()`): γ ∈ [0, 1], the stochasticity of
    /// each step; 0.3 when absent. Written to the config only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for TcdConfig {
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
            eta: None,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for TcdConfig {
    const CLASS_NAME: &'static str = "TCDScheduler";
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
        let eta = self.eta.unwrap_or(DEFAULT_TCD_ETA);
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::config(
                "eta",
                format!("γ must lie in [0, 1], got {eta}"),
            ));
        }
        Ok(())
    }
}

/// diffusers' `TCDScheduler`.
#[derive(Debug, Clone)]
pub struct TcdScheduler {
    config: TcdConfig,
    schedule: TrainSchedule,
    acp: Vec<f32>,
    /// ᾱ after the last step: 1 with `set_alpha_to_one`, else ᾱ_0 (never reached, see
    /// [`TcdConfig::set_alpha_to_one`]).
    final_alpha_cumprod: f32,
    /// diffusers' `num_inference_steps` (for a custom list, its length before the strength cut).
    num_inference_steps: Option<usize>,
    custom_timesteps: bool,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f64>,
    index: StepIndex,
}

impl TcdScheduler {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: TcdConfig) -> Result<Self> {
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
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid.
        Self::from_config(TcdConfig::default()).expect("default TCD config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &TcdConfig {
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

    /// γ (diffusers' `eta`) of the following steps.
    pub fn eta(&self) -> f64 {
        self.config.eta.unwrap_or(DEFAULT_TCD_ETA)
    }

    /// Sets γ ∈ [0, 1] (diffusers' `step(eta=...)`).
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::argument(
                "eta",
                format!("γ must lie in [0, 1], got {eta}"),
            ));
        }
        self.config.eta = Some(eta);
        Ok(())
    }

    /// Builder form of [`TcdScheduler::set_eta`].
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        self.set_eta(eta)?;
        Ok(self)
    }

    /// diffusers' `set_timesteps` with its TCD-specific arguments
    /// (`original_inference_steps`, `strength`).
    pub fn set_timesteps_with_options(
        &mut self,
        request: &TimestepRequest,
        options: ConsistencyTimestepOptions,
    ) -> Result<()> {
        let sched = common::consistency_timesteps(
            TcdConfig::CLASS_NAME,
            request,
            options,
            self.config.original_inference_steps,
            self.config.num_train_timesteps,
            true,
        )?;
        self.timesteps = common::to_f64(&sched.timesteps);
        self.timesteps_int = sched.timesteps;
        self.num_inference_steps = Some(sched.num_inference_steps);
        self.custom_timesteps = sched.custom;
        self.index.reset();
        Ok(())
    }
}

impl Default for TcdScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for TcdScheduler {
    fn class_name(&self) -> &'static str {
        TcdConfig::CLASS_NAME
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
    /// Stochastic when γ > 0 and more than one step is run.
    fn is_stochastic(&self) -> bool {
        self.eta() > 0.0 && self.num_inference_steps != Some(1)
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
            .ok_or_else(|| Error::State("TCDScheduler: call set_timesteps before step".into()))?;
        let t = common::train_index("timestep", timestep, self.config.num_train_timesteps)? as i64;
        let eta = self.eta();
        let mut index = self.index;
        let i = index.current(&self.timesteps, timestep)?;
        let stochastic = eta > 0.0 && i != n - 1;
        let noise = if stochastic {
            Some(common::require_noise(
                noise,
                sample,
                "TCD with γ > 0 re-noises after every step but the last",
            )?)
        } else {
            None
        };

        // 1. t' (0 after the last step) and s = ⌊(1 − γ) t'⌋, in float32 as torch computes
        //    `floor((1 - eta) * prev_timestep)` (an f64 product can land on the other side of
        //    an integer).
        let prev_t = i
            .checked_add(1)
            .and_then(|j| self.timesteps_int.get(j))
            .copied()
            .unwrap_or(0);
        let s = (((1.0 - eta) as f32) * prev_t as f32).floor() as i64;

        // 2. ᾱ_t, ᾱ_{t'}, ᾱ_s (float32, as diffusers).
        let alpha_prod_t = self.acp[t as usize];
        let alpha_prod_t_prev = common::alpha_at(&self.acp, prev_t, self.final_alpha_cumprod)?;
        let alpha_prod_s = common::alpha_at(&self.acp, s, self.final_alpha_cumprod)?;

        // 3. x̂₀, ε̂ and the DDIM jump to s.
        let prediction = self.config.prediction_type;
        let x0 = common::predict_x0(prediction, model_output, sample, alpha_prod_t)?;
        let eps = common::predict_eps(prediction, model_output, sample, alpha_prod_t)?;
        let pred_noised_sample = S::lin_comb(&[
            (f64::from(alpha_prod_s.sqrt()), &x0),
            (f64::from((1.0 - alpha_prod_s).sqrt()), &eps),
        ]);

        // 4. Forward re-noising from s to t' (skipped after the final step or with γ = 0).
        let prev_sample = match noise {
            Some(z) => {
                let ratio = alpha_prod_t_prev / alpha_prod_s;
                S::lin_comb(&[
                    (f64::from(ratio.sqrt()), &pred_noised_sample),
                    (f64::from((1.0 - ratio).sqrt()), z),
                ])
            }
            None => pred_noised_sample,
        };
        index.advance();
        self.index = index;
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

    fn sched(cfg: serde_json::Value) -> TcdScheduler {
        TcdScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    /// (config, request, options, expected timesteps, final prev_sample, final pred_noised_sample).
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
        for (cfg, req, opts, expected_ts, expected, _noised) in cases() {
            let mut s = sched(cfg.clone());
            s.set_timesteps_with_options(&req, opts).unwrap();
            assert_eq!(
                Scheduler::<HostTensor>::timesteps(&s),
                expected_ts.as_slice(),
                "{cfg}"
            );
            let mut x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
            let z = host(&[1, 2, 2, 2], |i| (i as f64).cos());
            for t in expected_ts {
                let e = x.scale(0.5).add_scalar(0.1);
                x = s.step(&e, t, &x, Some(&z)).unwrap().prev_sample;
            }
            for (p, q) in x.data().iter().zip(expected) {
                assert!((p - q).abs() < 1e-4 * q.abs().max(1.0), "{cfg}: {p} vs {q}");
            }
        }
    }

    fn cases() -> Vec<Case> {
        // diffusers 0.42.1 from x = linspace(-1, 1, 8), model output 0.5·x + 0.1, noise
        // cos(arange(8)) at every step, `eta` passed to every step.
        vec![
            (
                serde_json::json!({"eta": 0.3}),
                TimestepRequest::steps(4),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0, 759.0, 499.0, 259.0],
                vec![
                    -1.1249194145202637,
                    -1.4028855562210083,
                    -2.7987780570983887,
                    -3.3336308002471924,
                    -1.8201168775558472,
                    1.045835018157959,
                    3.324868679046631,
                    3.617238759994507,
                ],
                vec![
                    -1.1249194145202637,
                    -1.4028855562210083,
                    -2.7987780570983887,
                    -3.3336308002471924,
                    -1.8201168775558472,
                    1.045835018157959,
                    3.324868679046631,
                    3.617238759994507,
                ],
            ),
            (
                serde_json::json!({"prediction_type": "v_prediction", "eta": 0.0}),
                TimestepRequest::steps(6),
                ConsistencyTimestepOptions {
                    original_inference_steps: Some(100),
                    strength: 1.0,
                },
                vec![999.0, 833.0, 666.0, 499.0, 333.0, 166.0],
                vec![
                    -0.44959884881973267,
                    -0.34906327724456787,
                    -0.2485276758670807,
                    -0.1479921042919159,
                    -0.0474565289914608,
                    0.05307906121015549,
                    0.15361468493938446,
                    0.25415027141571045,
                ],
                vec![
                    -0.44959884881973267,
                    -0.34906327724456787,
                    -0.2485276758670807,
                    -0.1479921042919159,
                    -0.0474565289914608,
                    0.05307906121015549,
                    0.15361468493938446,
                    0.25415027141571045,
                ],
            ),
            (
                serde_json::json!({"prediction_type": "sample", "eta": 0.7}),
                TimestepRequest::steps(3),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 0.6,
                },
                vec![599.0, 399.0, 199.0],
                vec![
                    0.44272246956825256,
                    0.2761088013648987,
                    -0.12689392268657684,
                    -0.34782716631889343,
                    -0.13562630116939545,
                    0.36255183815956116,
                    0.7366242408752441,
                    0.6906101107597351,
                ],
                vec![
                    0.44272246956825256,
                    0.2761088013648987,
                    -0.12689392268657684,
                    -0.34782716631889343,
                    -0.13562630116939545,
                    0.36255183815956116,
                    0.7366242408752441,
                    0.6906101107597351,
                ],
            ),
            (
                serde_json::json!({"eta": 1.0}),
                TimestepRequest::timesteps(vec![999.0, 759.0, 499.0, 259.0]),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0, 759.0, 499.0, 259.0],
                vec![
                    -0.15340593457221985,
                    -0.6709808111190796,
                    -2.239771842956543,
                    -2.9989047050476074,
                    -1.831902027130127,
                    0.6068346500396729,
                    2.493675708770752,
                    2.512403964996338,
                ],
                vec![
                    -0.15340593457221985,
                    -0.6709808111190796,
                    -2.239771842956543,
                    -2.9989047050476074,
                    -1.831902027130127,
                    0.6068346500396729,
                    2.493675708770752,
                    2.512403964996338,
                ],
            ),
            (
                serde_json::json!({"eta": 0.5}),
                TimestepRequest::timesteps(vec![999.0, 759.0, 499.0, 259.0, 19.0]),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 0.5,
                },
                vec![259.0, 19.0],
                vec![
                    -0.8489906787872314,
                    -0.6422841548919678,
                    -0.4810178577899933,
                    -0.2847529947757721,
                    -0.005228225141763687,
                    0.32926908135414124,
                    0.6399099230766296,
                    0.8697989583015442,
                ],
                vec![
                    -0.8489906787872314,
                    -0.6422841548919678,
                    -0.4810178577899933,
                    -0.2847529947757721,
                    -0.005228225141763687,
                    0.32926908135414124,
                    0.6399099230766296,
                    0.8697989583015442,
                ],
            ),
            (
                serde_json::json!({"eta": 0.3}),
                TimestepRequest::steps(1),
                ConsistencyTimestepOptions {
                    original_inference_steps: None,
                    strength: 1.0,
                },
                vec![999.0],
                vec![
                    -8.810880661010742,
                    -6.710036754608154,
                    -4.609193325042725,
                    -2.5083494186401367,
                    -0.4075065553188324,
                    1.693337082862854,
                    3.7941808700561523,
                    5.895024299621582,
                ],
                vec![
                    -8.810880661010742,
                    -6.710036754608154,
                    -4.609193325042725,
                    -2.5083494186401367,
                    -0.4075065553188324,
                    1.693337082862854,
                    3.7941808700561523,
                    5.895024299621582,
                ],
            ),
            (
                serde_json::json!({"eta": 0.45}),
                TimestepRequest::steps(7),
                ConsistencyTimestepOptions {
                    original_inference_steps: Some(30),
                    strength: 0.8,
                },
                vec![799.0, 685.0, 571.0, 457.0, 342.0, 228.0, 114.0],
                vec![
                    1.687412142753601,
                    0.6407727003097534,
                    -1.727003812789917,
                    -3.07722544670105,
                    -2.0067384243011475,
                    0.6620261669158936,
                    2.6371848583221436,
                    2.264554738998413,
                ],
                vec![
                    1.687412142753601,
                    0.6407727003097534,
                    -1.727003812789917,
                    -3.07722544670105,
                    -2.0067384243011475,
                    0.6620261669158936,
                    2.6371848583221436,
                    2.264554738998413,
                ],
            ),
        ]
    }

    #[test]
    fn errors() {
        let mut s = TcdScheduler::new();
        let x = host(&[1, 1, 2, 2], |i| i as f64 * 0.1);
        assert!(matches!(
            s.step(&x, 999.0, &x, Some(&x)),
            Err(Error::State(_))
        ));
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 0).is_err());
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 1001).is_err());
        let r = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![499.0, 499.0]),
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        let nan = x.map(|v| if v > 0.15 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 999.0, &x, Some(&x)),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            s.step(&x, 999.0, &x, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(s.set_eta(1.5).is_err());
        s.set_eta(0.0).unwrap();
        assert!(!Scheduler::<HostTensor>::is_stochastic(&s));
        assert!(s.step(&x, 999.0, &x, None).is_ok());
        assert!(
            crate::config::parse_config::<TcdConfig>(&serde_json::json!({"eta": 2.0})).is_err()
        );
    }
}
