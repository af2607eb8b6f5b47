//! diffusers' `LMSDiscreteScheduler` (`scheduling_lms_discrete.py`): the linear multistep
//! (Adams–Bashforth) method of k-diffusion's `sample_lms`, in σ.
//!
//! The ODE `dx/dσ = d(x, σ) = (x − x̂₀)/σ` is integrated from σ_i to σ_{i+1} by replacing d
//! with the polynomial through the last `r` derivatives d_i, d_{i−1}, …, d_{i−r+1}
//! (r = min(i + 1, order)) at σ_i, σ_{i−1}, …:
//!
//! ```text
//! x_{i+1} = x_i + Σ_{j<r} c_j d_{i−j},   c_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ,
//! ℓ_j(τ)  = Π_{k<r, k≠j} (τ − σ_{i−k}) / (σ_{i−j} − σ_{i−k})     (Lagrange basis)
//! ```
//!
//! diffusers evaluates `c_j` with `scipy.integrate.quad`; ℓ_j is a polynomial of degree
//! r − 1, so Ember integrates it exactly (expanded in powers of τ − σ_i), which agrees with
//! quad's 21-point Gauss–Kronrod rule to rounding.
//!
//! diffusers' multistep order is a `step()` argument (`order=4`); Ember keeps it in the
//! config as the Ember-only key `order` (written only when it is not 4).

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::schedule::{BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_num_train_timesteps, check_prediction, derivative, f32r,
    init_noise_sigma, interpolated_schedule, predict_x0, reject_mu, scale_input, spaced_timesteps,
    SigmaSchedule, SigmaSpacing, TimestepSpacing, TrainSigmas,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;

/// diffusers' default multistep order (`step(order=4)`).
pub const DEFAULT_LMS_ORDER: usize = 4;

/// The largest multistep order accepted. Adams–Bashforth methods beyond a handful of steps
/// are unstable anyway, and the exact coefficient integral costs O(order²) per coefficient.
pub const MAX_LMS_ORDER: usize = 16;

/// Configuration of [`LmsDiscreteScheduler`], diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LmsDiscreteConfig {
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
    /// Use Karras et al.'s σ spacing (eq. 5, ρ = 7).
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// Use σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Use Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// The model's parameterisation (`epsilon`, `sample` or `v_prediction`).
    pub prediction_type: Prediction,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Ember extension, JSON key `order` like diffusers' `step(order=...)` argument (the
    /// project's convention for step arguments; `lms_order` is accepted too): the number of
    /// past derivatives the multistep formula uses, at least 1. Not to be confused with
    /// [`Scheduler::order`], diffusers' class attribute, which is 1 (one model evaluation
    /// per step).
    #[serde(
        rename = "order",
        alias = "lms_order",
        skip_serializing_if = "is_default_order"
    )]
    pub lms_order: usize,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_default_order(order: &usize) -> bool {
    *order == DEFAULT_LMS_ORDER
}

impl Default for LmsDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            prediction_type: Prediction::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            lms_order: DEFAULT_LMS_ORDER,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for LmsDiscreteConfig {
    const CLASS_NAME: &'static str = "LMSDiscreteScheduler";
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
        if !(1..=MAX_LMS_ORDER).contains(&self.lms_order) {
            return Err(Error::config(
                "order",
                format!(
                    "must be between 1 and {MAX_LMS_ORDER}, got {}",
                    self.lms_order
                ),
            ));
        }
        Ok(())
    }
}

/// diffusers' `get_lms_coefficient(order, t, current_order)`: the integral over
/// `[sigmas[t], sigmas[t + 1]]` of the Lagrange basis polynomial of node `t − current_order`
/// among the nodes `sigmas[t], sigmas[t − 1], …, sigmas[t − order + 1]`, computed exactly.
///
/// Errors when a node is missing (`t + 1 < order` or `t + 1` out of range) or two nodes
/// coincide (the basis is undefined).
pub fn lms_coefficient(
    sigmas: &[f64],
    order: usize,
    t: usize,
    current_order: usize,
) -> Result<f64> {
    if order == 0 || current_order >= order || t + 1 < order || t + 1 >= sigmas.len() {
        return Err(Error::State(format!(
            "LMS coefficient of order {order} for node {current_order} at step {t} needs σs that \
             the schedule ({} values) does not have",
            sigmas.len()
        )));
    }
    let origin = sigmas[t];
    let node_j = sigmas[t - current_order];
    // Polynomial in u = τ − σ_t, coefficients in increasing powers.
    let mut poly = vec![1.0f64];
    for k in 0..order {
        if k == current_order {
            continue;
        }
        let node_k = sigmas[t - k];
        let denom = node_j - node_k;
        if denom == 0.0 {
            return Err(Error::State(format!(
                "LMS coefficients are undefined: σ[{}] = σ[{}] = {node_k}",
                t - current_order,
                t - k
            )));
        }
        // Multiply by (u − (σ_k − σ_t)) / denom.
        let shift = node_k - origin;
        let mut next = vec![0.0f64; poly.len() + 1];
        for (m, &c) in poly.iter().enumerate() {
            next[m + 1] += c / denom;
            next[m] -= c * shift / denom;
        }
        poly = next;
    }
    // ∫₀^h Σ c_m u^m du = Σ c_m h^{m+1}/(m+1), h = σ_{t+1} − σ_t.
    let h = sigmas[t + 1] - origin;
    let mut h_pow = h;
    let mut integral = 0.0;
    for (m, &c) in poly.iter().enumerate() {
        integral += c * h_pow / (m + 1) as f64;
        h_pow *= h;
    }
    Ok(integral)
}

/// diffusers' `LMSDiscreteScheduler`: linear multistep in σ (one model evaluation per step,
/// up to `lms_order` past derivatives).
#[derive(Debug, Clone)]
pub struct LmsDiscreteScheduler<S> {
    config: LmsDiscreteConfig,
    spacing: SigmaSpacing,
    train: TrainSigmas,
    state: SigmaSchedule,
    /// The most recent derivatives, oldest first (at most `lms_order`).
    derivatives: VecDeque<S>,
}

impl<S: SampleTensor> LmsDiscreteScheduler<S> {
    /// Builds the scheduler. Like diffusers' constructor, it lays out a schedule with one
    /// step per training timestep, which `add_noise` can use before `set_timesteps`.
    pub fn from_config(config: LmsDiscreteConfig) -> Result<Self> {
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
            derivatives: VecDeque::new(),
        };
        let (timesteps, sigmas) = s.build(s.config.num_train_timesteps)?;
        s.state = SigmaSchedule::initial(timesteps, sigmas);
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(LmsDiscreteConfig::default())
            .expect("the default LMSDiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &LmsDiscreteConfig {
        &self.config
    }

    /// Sets the multistep order (diffusers' `step(order=...)`), 1 to [`MAX_LMS_ORDER`].
    pub fn set_lms_order(&mut self, order: usize) -> Result<()> {
        if !(1..=MAX_LMS_ORDER).contains(&order) {
            return Err(Error::argument(
                "lms_order",
                format!("must be between 1 and {MAX_LMS_ORDER}, got {order}"),
            ));
        }
        self.config.lms_order = order;
        Ok(())
    }

    /// The timesteps and σs of diffusers' `set_timesteps(n)`.
    fn build(&self, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.config;
        let timesteps =
            spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)?;
        // LMS's config has no sigma_min / sigma_max: Karras & co. span the interpolated ends.
        let (timesteps, mut sigmas) =
            interpolated_schedule(&self.train, self.spacing, timesteps, n, None, None);
        sigmas.push(0.0);
        Ok((
            timesteps.into_iter().map(f32r).collect(),
            sigmas.into_iter().map(f32r).collect(),
        ))
    }
}

impl<S: SampleTensor> Default for LmsDiscreteScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for LmsDiscreteScheduler<S> {
    fn class_name(&self) -> &'static str {
        LmsDiscreteConfig::CLASS_NAME
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
        // diffusers' class attribute: one model evaluation per step.
        1
    }
    fn is_stochastic(&self) -> bool {
        false
    }
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let class = LmsDiscreteConfig::CLASS_NAME;
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
        let (timesteps, sigmas) = self.build(n)?;
        self.state.install(timesteps, sigmas);
        self.derivatives.clear();
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
            .current_index(timestep, LmsDiscreteConfig::CLASS_NAME)?;
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
            .current_index(timestep, LmsDiscreteConfig::CLASS_NAME)?;
        let sigma = self.state.sigma(i)?;
        let x0 = predict_x0(self.config.prediction_type, model_output, sample, sigma)?;
        let max_order = self.config.lms_order;
        // Coefficients first, so a failure leaves the history untouched.
        let order = (i + 1).min(max_order);
        let coeffs = (0..order)
            .map(|j| lms_coefficient(&self.state.sigmas, order, i, j))
            .collect::<Result<Vec<f64>>>()?;
        self.derivatives.push_back(derivative(sample, &x0, sigma));
        if self.derivatives.len() > max_order {
            self.derivatives.pop_front();
        }
        // Σ c_j d_{i−j}: newest derivative with c₀. When stepping starts part-way (img2img)
        // there are fewer derivatives than coefficients; diffusers' `zip` then uses only the
        // first ones, and so does this.
        let mut terms: Vec<(f64, &S)> = vec![(1.0, sample)];
        terms.extend(coeffs.iter().copied().zip(self.derivatives.iter().rev()));
        let prev = S::lin_comb(&terms);
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
    use serde_json::json;

    #[test]
    fn shared_error_cases() {
        common_errors("LMSDiscreteScheduler", true);
    }

    /// Composite Simpson's rule, the numerical check of the exact integral.
    fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
        let n = 2000;
        let h = (b - a) / n as f64;
        let mut s = f(a) + f(b);
        for i in 1..n {
            s += f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0
    }

    #[test]
    fn coefficients_integrate_the_lagrange_basis() {
        let sigmas = [14.6, 9.0, 5.5, 3.1, 1.7, 0.9, 0.0];
        for order in 1..=5 {
            let t = 4;
            let mut sum = 0.0;
            for j in 0..order {
                let c = lms_coefficient(&sigmas, order, t, j).unwrap();
                let basis = |tau: f64| {
                    (0..order)
                        .filter(|&k| k != j)
                        .map(|k| (tau - sigmas[t - k]) / (sigmas[t - j] - sigmas[t - k]))
                        .product::<f64>()
                };
                let q = simpson(basis, sigmas[t], sigmas[t + 1]);
                assert!((c - q).abs() < 1e-10, "order {order} j {j}: {c} vs {q}");
                sum += c;
            }
            // The basis sums to 1, so the coefficients sum to σ_{t+1} − σ_t.
            assert!((sum - (sigmas[t + 1] - sigmas[t])).abs() < 1e-12);
        }
        assert!(lms_coefficient(&sigmas, 3, 1, 0).is_err());
        assert!(lms_coefficient(&[2.0, 2.0, 1.0], 2, 1, 0).is_err());
        assert!(lms_coefficient(&sigmas, 2, 6, 0).is_err());
    }

    #[test]
    fn order_option() {
        let e = crate::registry::from_config_json::<ember_core::HostTensor>(
            &json!({"_class_name": "LMSDiscreteScheduler", "lms_order": 0}),
        );
        assert!(e.is_err());
        let d = build(json!({"_class_name": "LMSDiscreteScheduler"}));
        assert!(d.config_json().get("order").is_none());
        let o = build(json!({"_class_name": "LMSDiscreteScheduler", "lms_order": 2}));
        assert_eq!(o.config_json()["order"], 2);
        let o = build(json!({"_class_name": "LMSDiscreteScheduler", "order": 3}));
        assert_eq!(o.config_json()["order"], 3);
        let mut s: LmsDiscreteScheduler<ember_core::HostTensor> = LmsDiscreteScheduler::new();
        assert!(s.set_lms_order(0).is_err());
        assert!(s.set_lms_order(MAX_LMS_ORDER + 1).is_err());
        s.set_lms_order(3).unwrap();
        assert_eq!(s.config().lms_order, 3);
        let e = Scheduler::<ember_core::HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![900.0, 100.0]),
        );
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
    }

    /// diffusers 0.42.1: SD betas, trailing spacing, v-prediction, 7 steps, `step(order=2)`.
    #[test]
    fn matches_diffusers() {
        let mut s = build(json!({
            "_class_name": "LMSDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
            "timestep_spacing": "trailing", "order": 2
        }));
        s.set_timesteps(7).unwrap();
        assert_eq!(&s.timesteps()[..5], &[999.0, 856.0, 713.0, 570.0, 428.0]);
        assert_close(
            "sigmas",
            &s.sigmas().unwrap()[..5],
            &[
                14.614646911621094,
                6.668572902679443,
                3.5138795375823975,
                2.054476737976074,
                1.276235818862915,
            ],
            1e-7,
        );
        let (fin, _) = run(s.as_mut(), |_| 0);
        assert_close(
            "final",
            &fin,
            &[
                -0.6377492547035217,
                -0.47043633460998535,
                -0.3031233251094818,
                -0.13581043481826782,
                0.031502559781074524,
                0.1988154947757721,
                0.36612850427627563,
                0.533441424369812,
            ],
            2e-6,
        );
    }
}
