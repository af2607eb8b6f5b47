//! `DDIMInverseScheduler`: deterministic DDIM run backwards, from a clean sample towards
//! noise (DDIM inversion, used by image-editing pipelines such as Pix2Pix-Zero and DiffEdit)
//! — a port of diffusers' `scheduling_ddim_inverse.py`.
//!
//! The timesteps increase. At timestep t the step goes from the previous grid point
//! s = t − T/n (where the sample currently is) up to t, with DDIM eq. 12 at η = 0:
//!
//! ```text
//! x̂₀ = (x_s − √(1 − ᾱ_s) ε̂)/√ᾱ_s,      x_t = √ᾱ_t x̂₀ + √(1 − ᾱ_t) ε̂.
//! ```
//!
//! The model is evaluated at t (not s), as diffusers does.

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{
    self as common, read_request, spaced_timesteps, StepIndex, StepsRequest, TimestepSpacing,
};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The configuration of [`DdimInverseScheduler`]: diffusers' `DDIMInverseScheduler` keys
/// and defaults. (diffusers' deprecated `set_alpha_to_zero` key, when present, overrides
/// `set_alpha_to_one` as it does there.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimInverseConfig {
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
    /// Clamp x̂₀ to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// Use ᾱ = 1 before the first step (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Added to every timestep of the `leading` spacing.
    pub steps_offset: usize,
    /// What the model predicts: `epsilon`, `sample` or `v_prediction`.
    pub prediction_type: Prediction,
    /// Bound for `clip_sample`.
    pub clip_sample_range: f64,
    /// Layout of the inference timesteps (`leading` or `trailing`; diffusers rejects
    /// `linspace` in `set_timesteps`).
    pub timestep_spacing: TimestepSpacing,
    /// Rescale β so that ᾱ_{T−1} = 0 (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DdimInverseConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: Prediction::Epsilon,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DdimInverseConfig {
    const CLASS_NAME: &'static str = "DDIMInverseScheduler";
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
        if let Some(v) = self.extra.get("set_alpha_to_zero") {
            if !v.is_boolean() && !v.is_null() {
                return Err(Error::config(
                    "set_alpha_to_zero",
                    format!("must be a boolean, got {v}"),
                ));
            }
        }
        common::check_clip_options(self.clip_sample_range, false, 0.0, 1.0)
    }
}

/// diffusers' `DDIMInverseScheduler`: deterministic DDIM inversion.
#[derive(Debug, Clone)]
pub struct DdimInverseScheduler {
    config: DdimInverseConfig,
    schedule: TrainSchedule,
    acp: Vec<f32>,
    /// ᾱ before the first step: 1 with `set_alpha_to_one`, else ᾱ_0.
    initial_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    timesteps: Vec<f64>,
    index: StepIndex,
}

impl DdimInverseScheduler {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: DdimInverseConfig) -> Result<Self> {
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
        // diffusers: `set_alpha_to_one = kwargs["set_alpha_to_zero"]` when the deprecated key is given.
        let alpha_to_one = config
            .extra
            .get("set_alpha_to_zero")
            .and_then(Value::as_bool)
            .unwrap_or(config.set_alpha_to_one);
        Ok(Self {
            initial_alpha_cumprod: if alpha_to_one { 1.0 } else { acp[0] },
            acp,
            schedule,
            config,
            num_inference_steps: None,
            timesteps: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid.
        Self::from_config(DdimInverseConfig::default())
            .expect("default DDIM-inverse config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &DdimInverseConfig {
        &self.config
    }

    /// The training schedule (β, α, ᾱ).
    pub fn schedule(&self) -> &TrainSchedule {
        &self.schedule
    }
}

impl Default for DdimInverseScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DdimInverseScheduler {
    fn class_name(&self) -> &'static str {
        DdimInverseConfig::CLASS_NAME
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
        false
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let t_train = self.config.num_train_timesteps;
        let StepsRequest::Count(n) =
            read_request(DdimInverseConfig::CLASS_NAME, request, t_train, false, true)?
        else {
            // read_request rejects custom lists when they are not allowed.
            return Err(Error::argument(
                "timesteps",
                "DDIMInverseScheduler does not accept custom timesteps",
            ));
        };
        if self.config.timestep_spacing == TimestepSpacing::Linspace {
            return Err(Error::config(
                "timestep_spacing",
                "DDIMInverseScheduler supports `leading` and `trailing`, not `linspace`",
            ));
        }
        // The forward DDIM layout, in increasing order.
        let mut ts = spaced_timesteps(
            self.config.timestep_spacing,
            t_train,
            n,
            self.config.steps_offset,
        );
        ts.reverse();
        if let Some(&t) = ts.iter().find(|&&t| t < 0 || t >= t_train as i64) {
            return Err(Error::argument(
                "num_inference_steps",
                format!(
                    "the layout gives timestep {t}, outside [0, {t_train}); check steps_offset"
                ),
            ));
        }
        self.num_inference_steps = Some(n);
        self.timesteps = common::to_f64(&ts);
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
        _noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        common::check_step_inputs(model_output, sample)?;
        let n = self.num_inference_steps.ok_or_else(|| {
            Error::State("DDIMInverseScheduler: call set_timesteps before step".into())
        })?;
        let t_train = self.config.num_train_timesteps;
        // The target of the step is `timestep`; the sample sits at s = t − T // n.
        let target = common::train_index("timestep", timestep, t_train)?;
        let current = (target as i64 - (t_train / n) as i64).min(t_train as i64 - 1);
        self.index.current_lenient(&self.timesteps, timestep);

        let alpha_prod_t = common::alpha_at(&self.acp, current, self.initial_alpha_cumprod)?;
        let alpha_prod_t_next = self.acp[target];

        let prediction = self.config.prediction_type;
        let x0 = common::predict_x0(prediction, model_output, sample, alpha_prod_t)?;
        let eps = common::predict_eps(prediction, model_output, sample, alpha_prod_t)?;
        let x0 = if self.config.clip_sample {
            x0.clamp(
                -self.config.clip_sample_range,
                self.config.clip_sample_range,
            )
        } else {
            x0
        };
        let prev_sample = S::lin_comb(&[
            (f64::from(alpha_prod_t_next.sqrt()), &x0),
            (f64::from((1.0 - alpha_prod_t_next).sqrt()), &eps),
        ]);
        self.index.advance();
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    /// diffusers' `DDIMInverseScheduler` has no `add_noise`; neither has Ember's.
    fn add_noise(&self, _original: &S, _noise: &S, _timesteps: &[f64]) -> Result<S> {
        Err(Error::State(
            "DDIMInverseScheduler does not define add_noise (it inverts samples; use DDIMScheduler to noise them)"
                .into(),
        ))
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

    fn sched(cfg: serde_json::Value) -> DdimInverseScheduler {
        DdimInverseScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    #[test]
    fn inversion_matches_diffusers() {
        for (cfg, expected_ts, expected) in cases() {
            let mut s = sched(cfg);
            Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
            assert_eq!(
                Scheduler::<HostTensor>::timesteps(&s),
                expected_ts.as_slice()
            );
            let mut x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
            for t in expected_ts {
                let e = x.scale(0.5).add_scalar(0.1);
                x = s.step(&e, t, &x, None).unwrap().prev_sample;
            }
            for (p, q) in x.data().iter().zip(expected) {
                assert!((p - q).abs() < 1e-4 * q.abs().max(1.0), "{p} vs {q}");
            }
        }
    }

    fn cases() -> Vec<(serde_json::Value, Vec<f64>, Vec<f64>)> {
        // diffusers 0.42.1, 6 steps from x = linspace(-1, 1, 8), model output 0.5·x + 0.1.
        vec![
            (
                serde_json::json!({}),
                vec![0.0, 166.0, 332.0, 498.0, 664.0, 830.0],
                vec![
                    -0.08876543492078781,
                    -0.04003025218844414,
                    0.03012326918542385,
                    0.11991871893405914,
                    0.21912279725074768,
                    0.3183268904685974,
                    0.39904576539993286,
                    0.4583856165409088,
                ],
            ),
            (
                serde_json::json!({"timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": false, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
                vec![166.0, 332.0, 499.0, 666.0, 832.0, 999.0],
                vec![
                    -1.4513471126556396,
                    -0.9846726059913635,
                    -0.5179978013038635,
                    -0.051322996616363525,
                    0.41535162925720215,
                    0.8820263743400574,
                    1.3487014770507812,
                    1.8153759241104126,
                ],
            ),
            (
                serde_json::json!({"set_alpha_to_one": false, "prediction_type": "sample", "steps_offset": 1, "clip_sample_range": 2.0}),
                vec![1.0, 167.0, 333.0, 499.0, 665.0, 831.0],
                vec![
                    -18.73543930053711,
                    -14.659278869628906,
                    -10.583110809326172,
                    -6.506947994232178,
                    -1.2847607135772705,
                    4.716860294342041,
                    8.793025016784668,
                    12.869185447692871,
                ],
            ),
        ]
    }

    #[test]
    fn errors() {
        let mut s = DdimInverseScheduler::new();
        let x = host(&[1, 1, 2, 2], |i| i as f64 * 0.1);
        assert!(matches!(s.step(&x, 100.0, &x, None), Err(Error::State(_))));
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 0).is_err());
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 1001).is_err());
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let nan = x.map(|v| if v > 0.15 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 100.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        assert!(Scheduler::<HostTensor>::add_noise(&s, &x, &x, &[1.0]).is_err());
        let mut l = sched(serde_json::json!({"timestep_spacing": "linspace"}));
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut l, 10).is_err());
    }
}
