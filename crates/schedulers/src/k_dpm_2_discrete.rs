//! diffusers' `KDPM2DiscreteScheduler` (`scheduling_k_dpm_2_discrete.py`): k-diffusion's
//! `sample_dpm_2`, the second-order DPM-Solver-2 step of Lu et al. (2022) in the form of
//! Karras et al. (2022), footnote to Algorithm 1: a midpoint method whose midpoint sits at
//! the geometric mean of the two σs.
//!
//! One step from σ_i to σ_{i+1} (σ_{i+1} > 0) costs two model evaluations:
//!
//! ```text
//! σ_mid  = exp(½ (ln σ_i + ln σ_{i+1}))                    (the "interpolated" σ)
//! d_i    = (x_i − x̂₀(x_i, σ_i))/σ_i
//! x_mid  = x_i + (σ_mid − σ_i) d_i                          (Euler to the midpoint)
//! d_mid  = (x_mid − x̂₀(x_mid, σ_mid))/σ_mid
//! x_{i+1} = x_i + (σ_{i+1} − σ_i) d_mid
//! ```
//!
//! The last step (to σ = 0) is a plain Euler step. diffusers interleaves the midpoint
//! timesteps with the main ones (`t₀, t_mid₁, t₁, t_mid₂, t₂, …`), so n σs take 2n − 1
//! evaluations, and the scheduler alternates between the two halves of a step.

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::schedule::{BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_num_train_timesteps, check_prediction, derivative, f32r,
    init_noise_sigma, interleave_tail, log_lerp_half_f32, predict_x0, reject_mu, scale_input,
    sigma_at, spaced_timesteps, SigmaSchedule, SigmaSpacing, TimestepSpacing, TrainSigmas,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of [`KDpm2DiscreteScheduler`], diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KDpm2DiscreteConfig {
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
    /// Use Karras et al.'s σ spacing (eq. 5, ρ = 7); timesteps are then rounded.
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// Use σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Use Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// The model's parameterisation (`epsilon` or `v_prediction`; diffusers has not
    /// implemented `sample` for this class).
    pub prediction_type: Prediction,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for KDpm2DiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            prediction_type: Prediction::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            extra: Map::new(),
        }
    }
}

impl KDpm2DiscreteConfig {
    /// Checks the keys KDPM2 and KDPM2-ancestral share.
    pub(crate) fn validate_common(&self, class_name: &str) -> Result<()> {
        check_num_train_timesteps(self.num_train_timesteps)?;
        check_beta_schedule(
            self.beta_schedule,
            self.trained_betas.as_deref(),
            &[
                BetaSchedule::Linear,
                BetaSchedule::ScaledLinear,
                BetaSchedule::SquaredcosCapV2,
            ],
            class_name,
        )?;
        check_prediction(
            self.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
            class_name,
        )?;
        SigmaSpacing::from_flags(
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        )?;
        Ok(())
    }
}

impl SchedulerConfig for KDpm2DiscreteConfig {
    const CLASS_NAME: &'static str = "KDPM2DiscreteScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        self.validate_common(Self::CLASS_NAME)
    }
}

/// The training side and main σ grid both KDPM2 schedulers start from.
#[derive(Debug, Clone)]
pub(crate) struct Kdpm2Base {
    /// The training σ table.
    pub train: TrainSigmas,
    /// The σ spacing chosen by the config flags.
    pub spacing: SigmaSpacing,
}

impl Kdpm2Base {
    /// Builds the training table from the shared config keys.
    pub fn new(c: &KDpm2DiscreteConfig) -> Result<Self> {
        let spacing = SigmaSpacing::from_flags(
            c.use_karras_sigmas,
            c.use_exponential_sigmas,
            c.use_beta_sigmas,
        )?;
        let schedule = TrainSchedule::new(
            c.num_train_timesteps,
            c.beta_start,
            c.beta_end,
            c.beta_schedule,
            c.trained_betas.as_deref(),
            false,
        )?;
        Ok(Self {
            train: TrainSigmas::from_schedule(&schedule, false),
            spacing,
        })
    }

    /// The main timesteps `t_0 … t_{n−1}` and float32 σs `σ_0 … σ_{n−1}, 0` of diffusers'
    /// `set_timesteps(n)`, before interleaving. Interpolated timesteps are float32 values;
    /// Karras timesteps are rounded (half to even) and, like exponential/beta ones, kept in
    /// f64, as diffusers' float64 tensor holds them.
    pub fn grid(&self, c: &KDpm2DiscreteConfig, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let timesteps =
            spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)?;
        let sigmas: Vec<f64> = timesteps.iter().map(|&t| self.train.interp(t)).collect();
        // The KDPM2 configs have no sigma_min / sigma_max: conversions span the ends.
        let converted = crate::sigma_schedule::convert_sigmas(self.spacing, &sigmas, n, None, None);
        let (timesteps, mut sigmas) = match converted {
            Some(conv) => {
                let ts = conv
                    .iter()
                    .map(|&s| {
                        let t = self.train.sigma_to_t(s);
                        if self.spacing == SigmaSpacing::Karras {
                            t.round_ties_even()
                        } else {
                            t
                        }
                    })
                    .collect();
                (ts, conv)
            }
            None => (timesteps, sigmas),
        };
        sigmas.push(0.0);
        Ok((timesteps, sigmas.into_iter().map(f32r).collect()))
    }

    /// The timestep of an interpolated σ (diffusers inverts the float32 tensor value with
    /// float32 arithmetic).
    pub fn interpolated_timestep(&self, sigma: f64) -> f64 {
        self.train.sigma_to_t_torch_f32(sigma)
    }
}

/// diffusers' `KDPM2DiscreteScheduler`: DPM-Solver-2 with a geometric-mean midpoint (order
/// 2, two model evaluations per σ step).
#[derive(Debug, Clone)]
pub struct KDpm2DiscreteScheduler<S> {
    config: KDpm2DiscreteConfig,
    base: Kdpm2Base,
    state: SigmaSchedule,
    /// diffusers' `sigmas_interpol`, expanded like `sigmas`.
    sigmas_interpol: Vec<f64>,
    /// x_i, kept between the two halves of a step (diffusers' `sample`).
    stored_sample: Option<S>,
}

impl<S: SampleTensor> KDpm2DiscreteScheduler<S> {
    /// Builds the scheduler. Like diffusers' constructor, it lays out a schedule with one
    /// step per training timestep, which `add_noise` can use before `set_timesteps`.
    pub fn from_config(config: KDpm2DiscreteConfig) -> Result<Self> {
        config.validate()?;
        let base = Kdpm2Base::new(&config)?;
        let mut s = Self {
            state: SigmaSchedule::initial(Vec::new(), Vec::new()),
            sigmas_interpol: Vec::new(),
            stored_sample: None,
            base,
            config,
        };
        let (timesteps, sigmas, interpol) = s.build(s.config.num_train_timesteps)?;
        s.state = SigmaSchedule::initial(timesteps, sigmas);
        s.sigmas_interpol = interpol;
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(KDpm2DiscreteConfig::default())
            .expect("the default KDPM2DiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &KDpm2DiscreteConfig {
        &self.config
    }

    /// Whether the next step is the first half of a σ step (diffusers'
    /// `state_in_first_order`).
    pub fn state_in_first_order(&self) -> bool {
        self.stored_sample.is_none()
    }

    /// The interpolated (midpoint) σs, expanded like [`Scheduler::sigmas`].
    pub fn sigmas_interpol(&self) -> &[f64] {
        &self.sigmas_interpol
    }

    /// Interleaved timesteps, expanded σs and expanded midpoint σs for `n` steps.
    fn build(&self, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let (t, s) = self.base.grid(&self.config, n)?;
        // σ_mid,i = √(σ_i σ_{i−1}) for i = 1 … n−1 (torch's `roll(1)` pairs σ_0 with the
        // final 0, giving an unused NaN; σ_mid,n = 0).
        let ip: Vec<f64> = (0..s.len())
            .map(|i| log_lerp_half_f32(s[i], s[(i + s.len() - 1) % s.len()]))
            .collect();
        let mut timesteps = Vec::with_capacity(2 * t.len());
        if let Some(&t0) = t.first() {
            timesteps.push(t0);
        }
        for i in 1..t.len() {
            timesteps.push(self.base.interpolated_timestep(ip[i]));
            timesteps.push(t[i]);
        }
        Ok((timesteps, interleave_tail(&s), interleave_tail(&ip)))
    }
}

impl<S: SampleTensor> Default for KDpm2DiscreteScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for KDpm2DiscreteScheduler<S> {
    fn class_name(&self) -> &'static str {
        KDpm2DiscreteConfig::CLASS_NAME
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
        let class = KDpm2DiscreteConfig::CLASS_NAME;
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
        let (timesteps, sigmas, interpol) = self.build(n)?;
        self.state.install(timesteps, sigmas);
        self.sigmas_interpol = interpol;
        self.stored_sample = None;
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
            .current_index(timestep, KDpm2DiscreteConfig::CLASS_NAME)?;
        let sigma = if self.state_in_first_order() {
            self.state.sigma(i)?
        } else {
            sigma_at(&self.sigmas_interpol, i, "sigmas_interpol")?
        };
        Ok(scale_input(sample, sigma))
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
            .current_index(timestep, KDpm2DiscreteConfig::CLASS_NAME)?;
        let first_order = self.state_in_first_order();
        let (sigma, sigma_mid, sigma_next) = if first_order {
            (
                self.state.sigma(i)?,
                sigma_at(&self.sigmas_interpol, i + 1, "sigmas_interpol")?,
                self.state.sigma(i + 1)?,
            )
        } else {
            (
                self.state.sigma(i.wrapping_sub(1))?,
                sigma_at(&self.sigmas_interpol, i, "sigmas_interpol")?,
                self.state.sigma(i)?,
            )
        };
        // γ = 0: σ̂ = σ. The second half evaluates the model at the midpoint.
        let sigma_input = if first_order { sigma } else { sigma_mid };
        let x0 = predict_x0(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_input,
        )?;
        let prev = match self.stored_sample.take() {
            None => {
                // First half: Euler from σ_i to the midpoint, remembering x_i.
                let d = derivative(sample, &x0, sigma);
                self.stored_sample = Some(sample.clone());
                S::lin_comb(&[(1.0, sample), (sigma_mid - sigma, &d)])
            }
            Some(x_i) => {
                // Second half: the full step from x_i with the midpoint slope.
                let d = derivative(sample, &x0, sigma_mid);
                S::lin_comb(&[(1.0, &x_i), (sigma_next - sigma, &d)])
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
        common_errors("KDPM2DiscreteScheduler", true);
    }

    #[test]
    fn specific_errors_and_layout() {
        let cfg = json!({"_class_name": "KDPM2DiscreteScheduler", "prediction_type": "sample"});
        assert!(crate::registry::from_config_json::<HostTensor>(&cfg).is_err());
        let mut s: KDpm2DiscreteScheduler<HostTensor> = KDpm2DiscreteScheduler::new();
        let e = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![9.0]),
        );
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        // n σ steps: 2n − 1 evaluations, 2n + 2 expanded σs.
        assert_eq!(Scheduler::<HostTensor>::timesteps(&s).len(), 7);
        assert_eq!(s.sigmas_interpol().len(), 10);
        // Karras timesteps are rounded to integers.
        let mut k =
            build(json!({"_class_name": "KDPM2DiscreteScheduler", "use_karras_sigmas": true}));
        k.set_timesteps(5).unwrap();
        assert!(k.timesteps().iter().step_by(2).all(|t| t.fract() == 0.0));
    }

    /// diffusers 0.42.1: default config, 6 steps.
    #[test]
    fn matches_diffusers() {
        let mut s = build(json!({"_class_name": "KDPM2DiscreteScheduler"}));
        s.set_timesteps(6).unwrap();
        assert_eq!(s.timesteps().len(), 11);
        assert_close(
            "timesteps",
            &s.timesteps()[..5],
            &[
                999.0,
                903.943603515625,
                799.2000122070312,
                704.1159057617188,
                599.4000244140625,
            ],
            1e-7,
        );
        assert_eq!(s.sigmas().unwrap().len(), 14);
        assert_close(
            "sigmas",
            &s.sigmas().unwrap()[..5],
            &[
                25.146116256713867,
                8.368282318115234,
                8.368282318115234,
                3.390031099319458,
                3.390031099319458,
            ],
            1e-7,
        );
        let (fin, x0) = run(s.as_mut(), |_| 0);
        assert_close(
            "x0",
            &x0[..3],
            &[-16.26140594482422, -11.230480194091797, -6.199553966522217],
            2e-6,
        );
        assert_close(
            "final",
            &fin,
            &[
                -7.6756792068481445,
                -5.595338344573975,
                -3.5149965286254883,
                -1.4346553087234497,
                0.645686149597168,
                2.726027727127075,
                4.806366920471191,
                6.8867106437683105,
            ],
            2e-6,
        );
    }
}
