//! `DDIMScheduler`: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models" — a port
//! of diffusers' `scheduling_ddim.py`.
//!
//! DDIM eq. 12, from timestep t to the previous one t' = t − T/n:
//!
//! ```text
//! x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z,
//! σ_t = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})        (eq. 16)
//! ```
//!
//! η = 0 is the deterministic DDIM sampler, η = 1 the DDPM ancestral sampler.

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{
    self as common, read_request, spaced_timesteps, StepIndex, StepsRequest, TimestepSpacing,
    X0Clamp,
};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The configuration of [`DdimScheduler`]: diffusers' `DDIMScheduler` keys and defaults,
/// plus two step options of diffusers' `step()` that Ember keeps in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
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
    /// Use ᾱ = 1 after the last step (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// Added to every timestep of the `leading` spacing.
    pub steps_offset: usize,
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
    /// Rescale β so that ᾱ_{T−1} = 0 (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Ember extension (diffusers passes it to `step()`): the η of DDIM eq. 16; 0 (the
    /// default when absent) is deterministic, > 0 makes every step take noise. Written to
    /// the config only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// Ember extension (a `step()` argument in diffusers): re-derive ε̂ from the clipped x̂₀,
    /// as GLIDE does. Written to the config only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_clipped_model_output: Option<bool>,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DdimConfig {
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
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            eta: None,
            use_clipped_model_output: None,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DdimConfig {
    const CLASS_NAME: &'static str = "DDIMScheduler";
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
        check_eta(self.eta.unwrap_or(0.0))
    }
}

fn check_eta(eta: f64) -> Result<()> {
    if eta.is_finite() && eta >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            "eta",
            format!("must be finite and ≥ 0, got {eta}"),
        ))
    }
}

/// diffusers' `DDIMScheduler`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimConfig,
    schedule: TrainSchedule,
    acp: Vec<f32>,
    /// ᾱ used after the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    timesteps: Vec<f64>,
    index: StepIndex,
    clamp: X0Clamp,
}

impl DdimScheduler {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: DdimConfig) -> Result<Self> {
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
            timesteps: Vec::new(),
            index: StepIndex::default(),
            clamp,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid.
        Self::from_config(DdimConfig::default()).expect("default DDIM config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// The training schedule (β, α, ᾱ).
    pub fn schedule(&self) -> &TrainSchedule {
        &self.schedule
    }

    /// The η of every following step (diffusers' `step(eta=...)`).
    pub fn eta(&self) -> f64 {
        self.config.eta.unwrap_or(0.0)
    }

    /// Sets η (≥ 0): 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        check_eta(eta)
            .map_err(|_| Error::argument("eta", format!("must be finite and ≥ 0, got {eta}")))?;
        self.config.eta = Some(eta);
        Ok(())
    }

    /// Builder form of [`DdimScheduler::set_eta`].
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        self.set_eta(eta)?;
        Ok(self)
    }

    /// Sets diffusers' `use_clipped_model_output` step option.
    pub fn set_use_clipped_model_output(&mut self, on: bool) {
        self.config.use_clipped_model_output = Some(on);
    }
}

impl Default for DdimScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DdimScheduler {
    fn class_name(&self) -> &'static str {
        DdimConfig::CLASS_NAME
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
        self.eta() > 0.0
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let t_train = self.config.num_train_timesteps;
        let StepsRequest::Count(n) =
            read_request(DdimConfig::CLASS_NAME, request, t_train, false, true)?
        else {
            // read_request rejects custom lists when they are not allowed.
            return Err(Error::argument(
                "timesteps",
                "DDIMScheduler does not accept custom timesteps",
            ));
        };
        let ts = spaced_timesteps(
            self.config.timestep_spacing,
            t_train,
            n,
            self.config.steps_offset,
        );
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
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        common::check_step_inputs(model_output, sample)?;
        let n = self
            .num_inference_steps
            .ok_or_else(|| Error::State("DDIMScheduler: call set_timesteps before step".into()))?;
        let t_train = self.config.num_train_timesteps;
        let t = common::train_index("timestep", timestep, t_train)?;
        let eta = self.eta();
        let noise = if eta > 0.0 {
            Some(common::require_noise(noise, sample, "eta > 0")?)
        } else {
            None
        };
        self.index.current_lenient(&self.timesteps, timestep);

        // 1. The previous timestep t' = t − T // n (diffusers uses the integer ratio for every
        //    spacing).
        let prev_t = t as i64 - (t_train / n) as i64;

        // 2. ᾱ_t, ᾱ_{t'} (float32, as diffusers).
        let alpha_prod_t = self.acp[t];
        let alpha_prod_t_prev = common::alpha_at(&self.acp, prev_t, self.final_alpha_cumprod)?;
        let beta_prod_t = 1.0 - alpha_prod_t;

        // 3. x̂₀ ("predicted x₀" of eq. 12) and ε̂ from the model output, then clip x̂₀.
        let prediction = self.config.prediction_type;
        let x0 = common::predict_x0(prediction, model_output, sample, alpha_prod_t)?;
        let mut eps = common::predict_eps(prediction, model_output, sample, alpha_prod_t)?;
        let x0 = self.clamp.apply(x0);

        // 4. σ_t(η), eq. 16.
        let variance =
            ((1.0 - alpha_prod_t_prev) / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = (eta as f32) * variance.sqrt();
        if self.config.use_clipped_model_output.unwrap_or(false) {
            eps = common::eps_from_x0(sample, &x0, alpha_prod_t);
        }

        // 5. "Direction pointing to x_t" and x_{t'} (eq. 12).
        let dir_sq = 1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t;
        if dir_sq < 0.0 {
            return Err(Error::argument(
                "eta",
                format!("η = {eta} makes σ_t² exceed 1 − ᾱ_prev at timestep {t}; use η ≤ 1"),
            ));
        }
        let mut terms: Vec<(f64, &S)> = vec![
            (f64::from(alpha_prod_t_prev.sqrt()), &x0),
            (f64::from(dir_sq.sqrt()), &eps),
        ];
        if let Some(z) = noise {
            terms.push((f64::from(std_dev_t), z));
        }
        let prev_sample = S::lin_comb(&terms);
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

    fn sched(cfg: serde_json::Value) -> DdimScheduler {
        DdimScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    fn run(s: &mut DdimScheduler, steps: usize, noise: bool) -> HostTensor {
        Scheduler::<HostTensor>::set_timesteps(s, steps).unwrap();
        let mut x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
        let z = host(&[1, 2, 2, 2], |i| (i as f64).cos());
        for t in Scheduler::<HostTensor>::timesteps(s).to_vec() {
            let e = x.scale(0.5).add_scalar(0.1);
            x = s.step(&e, t, &x, noise.then_some(&z)).unwrap().prev_sample;
        }
        x
    }

    fn close(a: &HostTensor, b: &[f64], tol: f64) {
        for (p, q) in a.data().iter().zip(b) {
            assert!((p - q).abs() < tol, "{p} vs {q}\n{:?}", a.data());
        }
    }

    #[test]
    fn deterministic_run_matches_diffusers() {
        // diffusers 0.42.1: DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
        // beta_end=0.012, clip_sample=False, timestep_spacing="trailing",
        // prediction_type="v_prediction"), 7 steps, x₀ = linspace(-1, 1, 8), output 0.5·x + 0.1.
        let mut s = sched(serde_json::json!({
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "clip_sample": false, "timestep_spacing": "trailing", "prediction_type": "v_prediction"
        }));
        let x = run(&mut s, 7, false);
        close(&x, &EXPECTED_V_TRAILING, 1e-5);
    }

    #[test]
    fn stochastic_run_matches_diffusers() {
        // diffusers 0.42.1: DDIMScheduler() defaults (clip_sample=True), 5 steps, eta = 0.7,
        // variance_noise = cos(arange(8)) at every step.
        let mut s = DdimScheduler::new().with_eta(0.7).unwrap();
        assert!(Scheduler::<HostTensor>::is_stochastic(&s));
        let x = run(&mut s, 5, true);
        close(&x, &EXPECTED_ETA, 1e-5);
    }

    const EXPECTED_V_TRAILING: [f64; 8] = [
        -0.469643771648407,
        -0.36353710293769836,
        -0.25743043422698975,
        -0.15132372081279755,
        -0.04521707072854042,
        0.06088963523507118,
        0.1669963151216507,
        0.2731030285358429,
    ];
    const EXPECTED_ETA: [f64; 8] = [
        0.9955127239227295,
        0.16250747442245483,
        -1.0,
        -1.0,
        -1.0,
        0.8570471405982971,
        1.0,
        1.0,
    ];

    #[test]
    fn errors() {
        let mut s = DdimScheduler::new();
        let x = host(&[1, 1, 2, 2], |i| i as f64 * 0.1);
        assert!(matches!(s.step(&x, 900.0, &x, None), Err(Error::State(_))));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 1001),
            Err(Error::InvalidArgument { .. })
        ));
        let r = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![900.0, 100.0]),
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let nan = x.map(|v| if v > 0.15 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 900.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        let wrong = host(&[1, 2, 2, 2], |_| 0.0);
        assert!(matches!(
            s.step(&wrong, 900.0, &x, None),
            Err(Error::Shape { .. })
        ));
        s.set_eta(1.0).unwrap();
        assert!(matches!(
            s.step(&x, 900.0, &x, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(s.set_eta(-1.0).is_err());
        assert!(crate::config::parse_config::<DdimConfig>(
            &serde_json::json!({"beta_schedule": "sigmoid"})
        )
        .is_err());
        assert!(crate::config::parse_config::<DdimConfig>(
            &serde_json::json!({"prediction_type": "flow_prediction"})
        )
        .is_err());
    }

    #[test]
    fn eta_is_written_only_when_set() {
        let s = DdimScheduler::new();
        let j = Scheduler::<HostTensor>::config_json(&s);
        assert!(j.get("eta").is_none());
        assert_eq!(j["_class_name"], "DDIMScheduler");
        let s = s.with_eta(0.5).unwrap();
        assert_eq!(Scheduler::<HostTensor>::config_json(&s)["eta"], 0.5);
    }
}
