//! diffusers' `DEISMultistepScheduler`: the Diffusion Exponential Integrator Sampler of
//! Zhang & Chen (2023), "Fast Sampling of Diffusion Models with Exponential Integrator"
//! (<https://arxiv.org/abs/2204.13902>), in its multistep "ρAB-DEIS" form.
//!
//! # The method
//! With ρ = σ_t/α_t (the variance-exploding noise level) and the noise prediction ε̂, the
//! probability-flow ODE of a VP model becomes d(x/α)/dρ = ε̂ (paper §4, eq. 14), so
//!
//! ```text
//! x_t/α_t = x_s/α_s + ∫_{ρ_s}^{ρ_t} ε̂(ρ) dρ.
//! ```
//!
//! DEIS interpolates ε̂ through the last p outputs with Lagrange polynomials in ln ρ and
//! integrates each basis polynomial exactly (the `ind_fn` antiderivatives below); order 1 is
//! DDIM: x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε̂ with h = λ_t − λ_s.
//!
//! As diffusers, the model output is first converted to x̂₀ (optionally thresholded) and
//! back to ε̂, and the last step lands on the smallest σ of the schedule (not on 0).
//!
//! # Deliberate differences from diffusers
//! - `add_noise` before `set_timesteps` uses σ_t of each training timestep (see
//!   [`VpTrainTable::initial_schedule`]).
//! - A first `step` at the schedule's first timestep starts at index 0 even when Karras
//!   rounding repeats that timestep (see [`crate::vp_solver::first_step_index`]); diffusers
//!   starts at 1 there and fails on the last step.

use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::SchedulerConfig;
use crate::flow_sigmas::{shift_sigma, Precision, TimeShiftType};
use crate::schedule::{linspace_f64, BetaSchedule};
use crate::sigmas::{beta_sigmas, exponential_sigmas, interp, karras_sigmas, KARRAS_RHO};
use crate::vp_solver::{
    alpha_sigma, check_beta_schedule, check_decreasing, check_step_count, check_train_timesteps,
    dynamic_threshold, first_step_index, lambda, log_sigmas_f32, noise_levels, sigma_to_t_np,
    spaced_timesteps, to_f32, TimestepSpacing, VpTrainTable,
};

/// DEIS's `algorithm_type`. diffusers maps `dpmsolver` / `dpmsolver++` to `deis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DeisAlgorithmType {
    /// The exponential integrator in ε̂ (the only one diffusers implements).
    #[default]
    #[serde(rename = "deis", alias = "dpmsolver", alias = "dpmsolver++")]
    Deis,
}

/// DEIS's `solver_type`. diffusers maps `midpoint`/`heun`/`bh1`/`bh2` to `logrho`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DeisSolverType {
    /// Lagrange interpolation in log ρ.
    #[default]
    #[serde(
        rename = "logrho",
        alias = "midpoint",
        alias = "heun",
        alias = "bh1",
        alias = "bh2"
    )]
    Logrho,
}

/// Configuration of [`DEISMultistepScheduler`], with diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DEISMultistepConfig {
    /// Number of training timesteps T.
    pub num_train_timesteps: usize,
    /// First β of the training schedule.
    pub beta_start: f64,
    /// Last β of the training schedule.
    pub beta_end: f64,
    /// The β schedule (`linear`, `scaled_linear` or `squaredcos_cap_v2`).
    pub beta_schedule: BetaSchedule,
    /// Explicit βs, overriding the named schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// The order of the multistep method (1–3).
    pub solver_order: usize,
    /// What the model predicts.
    pub prediction_type: Prediction,
    /// Apply Imagen's dynamic thresholding to x̂₀.
    pub thresholding: bool,
    /// The quantile of |x̂₀| used by dynamic thresholding.
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold s dynamic thresholding may use.
    pub sample_max_value: f64,
    /// The algorithm (only `deis`).
    pub algorithm_type: DeisAlgorithmType,
    /// The interpolation (only `logrho`).
    pub solver_type: DeisSolverType,
    /// Use lower orders in the last steps when there are fewer than 15 steps.
    pub lower_order_final: bool,
    /// Respace the σs à la Karras et al. (2022).
    pub use_karras_sigmas: bool,
    /// Respace the σs evenly in log σ.
    pub use_exponential_sigmas: bool,
    /// Respace the σs by Beta(0.6, 0.6) quantiles.
    pub use_beta_sigmas: bool,
    /// Use a flow-matching schedule (α_t = 1 − σ, σ_t = σ).
    pub use_flow_sigmas: bool,
    /// The constant shift of the flow schedule (replaced by e^μ when μ is given).
    pub flow_shift: f64,
    /// How the inference timesteps are laid out on the training grid.
    pub timestep_spacing: TimestepSpacing,
    /// Added to the `leading` timesteps.
    pub steps_offset: i64,
    /// Accept μ in `set_timesteps` (sets `flow_shift = e^μ`).
    pub use_dynamic_shifting: bool,
    /// The form of the μ shift (only `exponential` is accepted with μ).
    pub time_shift_type: TimeShiftType,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DEISMultistepConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            solver_order: 2,
            prediction_type: Prediction::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: DeisAlgorithmType::Deis,
            solver_type: DeisSolverType::Logrho,
            lower_order_final: true,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DEISMultistepConfig {
    const CLASS_NAME: &'static str = "DEISMultistepScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_train_timesteps(self.num_train_timesteps)?;
        if !(1..=3).contains(&self.solver_order) {
            return Err(Error::config(
                "solver_order",
                format!("DEIS supports orders 1 to 3, got {}", self.solver_order),
            ));
        }
        check_beta_schedule(
            self.beta_schedule,
            self.trained_betas.as_deref(),
            Self::CLASS_NAME,
        )?;
        crate::flow_match_euler_discrete::check_one_respacing(
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        )?;
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(Error::config("flow_shift", "must be a positive number"));
        }
        if self.thresholding
            && !(self.dynamic_thresholding_ratio > 0.0 && self.dynamic_thresholding_ratio <= 1.0)
        {
            return Err(Error::config(
                "dynamic_thresholding_ratio",
                "must be in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// ∫ ℓ(τ) dτ for the linear Lagrange basis ℓ(τ) = (ln τ − ln c)/(ln b − ln c), evaluated at t.
fn ind_fn2(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// ∫ ℓ(τ) dτ for the quadratic basis ℓ(τ) = (ln τ − ln c)(ln τ − ln d)/((ln b − ln c)(ln b − ln d)).
fn ind_fn3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    numerator / ((lb - lc) * (lb - ld))
}

/// DEIS multistep sampler (diffusers' `DEISMultistepScheduler`), generic over the sample
/// type because it keeps the last model outputs.
pub struct DEISMultistepScheduler<S> {
    config: DEISMultistepConfig,
    train: VpTrainTable,
    timesteps: Vec<f64>,
    /// σ per timestep plus the final one (a copy of the smallest).
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    /// The last `solver_order` ε̂, oldest first.
    model_outputs: Vec<Option<S>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> DEISMultistepScheduler<S> {
    /// Builds the scheduler from a validated configuration.
    pub fn from_config(config: DEISMultistepConfig) -> Result<Self> {
        config.validate()?;
        let train = VpTrainTable::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            false,
        )?;
        let (timesteps, sigmas) = train.initial_schedule();
        Ok(Self {
            model_outputs: vec![None; config.solver_order],
            config,
            train,
            timesteps,
            sigmas,
            num_inference_steps: None,
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid, so this cannot fail.
        Self::from_config(DEISMultistepConfig::default()).expect("default config is valid")
    }

    /// The configuration (`flow_shift` reflects the last μ passed to `set_timesteps`).
    pub fn config(&self) -> &DEISMultistepConfig {
        &self.config
    }

    fn lay_out(&mut self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(Error::argument(
                "timesteps",
                "DEISMultistepScheduler takes only a step count (and μ)",
            ));
        }
        let n = request
            .num_inference_steps
            .ok_or_else(|| Error::argument("num_inference_steps", "a step count is required"))?;
        check_step_count(n)?;
        if let Some(mu) = request.mu {
            // diffusers asserts dynamic exponential shifting and then *stores* e^μ as the
            // config's flow_shift, which later calls without μ keep using.
            if !(self.config.use_dynamic_shifting
                && self.config.time_shift_type == TimeShiftType::Exponential)
            {
                return Err(Error::argument(
                    "mu",
                    "needs use_dynamic_shifting = true and time_shift_type = \"exponential\"",
                ));
            }
            let shift = mu.exp();
            if !(shift.is_finite() && shift > 0.0) {
                return Err(Error::argument(
                    "mu",
                    format!("e^μ must be a positive number, got {shift}"),
                ));
            }
            self.config.flow_shift = shift;
        }
        let cfg = &self.config;
        let t_train = cfg.num_train_timesteps;
        let spaced: Vec<f64> = spaced_timesteps(cfg.timestep_spacing, t_train, n, cfg.steps_offset)
            .into_iter()
            .map(|t| t as f64)
            .collect();
        let train = &self.train.sigmas;
        let log_sigmas = log_sigmas_f32(train);
        // Respacings run between the training table's ends (σ at t = 0 and t = T − 1).
        let (lo, hi) = (train[0], train[train.len() - 1]);
        let (timesteps, mut sigmas, last) = if cfg.use_karras_sigmas {
            let s = karras_sigmas(lo, hi, n, KARRAS_RHO);
            let ts = s
                .iter()
                .map(|&v| sigma_to_t_np(v, &log_sigmas).round_ties_even())
                .collect();
            let last = s[n - 1];
            (ts, s, last)
        } else if cfg.use_exponential_sigmas || cfg.use_beta_sigmas {
            let s = if cfg.use_exponential_sigmas {
                exponential_sigmas(lo, hi, n)
            } else {
                beta_sigmas(lo, hi, n, 0.6, 0.6)
            };
            // `astype(int64)` truncates the fractional timesteps.
            let ts = s
                .iter()
                .map(|&v| sigma_to_t_np(v, &log_sigmas).trunc())
                .collect();
            let last = s[n - 1];
            (ts, s, last)
        } else if cfg.use_flow_sigmas {
            // σ = shift(1 − α) on α = linspace(1, 1/T, n + 1), reversed, without the final 0.
            let alphas = linspace_f64(1.0, 1.0 / t_train as f64, n + 1);
            let mut s: Vec<f64> = alphas
                .iter()
                .rev()
                .map(|&a| shift_sigma(cfg.flow_shift, 1.0 - a, Precision::F64))
                .collect();
            s.truncate(n);
            let ts = s.iter().map(|&v| (v * t_train as f64).trunc()).collect();
            let last = s[n - 1];
            (ts, s, last)
        } else {
            let idx: Vec<f64> = (0..t_train).map(|t| t as f64).collect();
            let s: Vec<f64> = spaced.iter().map(|&t| interp(t, &idx, train)).collect();
            (spaced.clone(), s, train[0])
        };
        for v in sigmas.iter_mut() {
            *v = to_f32(*v);
        }
        check_decreasing(
            &sigmas,
            "num_inference_steps",
            &format!("the σ schedule for {n} steps"),
        )?;
        if sigmas
            .iter()
            .any(|&s| s <= 0.0 || (cfg.use_flow_sigmas && s >= 1.0))
        {
            return Err(Error::argument(
                "num_inference_steps",
                "every σ of the schedule must be in (0, ∞), or (0, 1) for flow sigmas",
            ));
        }
        sigmas.push(to_f32(last));
        Ok((timesteps, sigmas))
    }

    /// diffusers' `convert_model_output`: x̂₀ from the model output (thresholded if asked),
    /// then ε̂ = (x − α_t x̂₀)/σ_t, the quantity DEIS integrates.
    fn convert(&self, model_output: &S, sample: &S, i: usize) -> S {
        let cfg = &self.config;
        let sigma = self.sigmas[i];
        let (alpha_t, sigma_t) = alpha_sigma(sigma, cfg.use_flow_sigmas);
        let x0 = match cfg.prediction_type {
            Prediction::Epsilon => {
                S::lin_comb(&[(1.0 / alpha_t, sample), (-sigma_t / alpha_t, model_output)])
            }
            Prediction::Sample => model_output.clone(),
            Prediction::VPrediction => S::lin_comb(&[(alpha_t, sample), (-sigma_t, model_output)]),
            Prediction::FlowPrediction => S::lin_comb(&[(1.0, sample), (-sigma, model_output)]),
        };
        let x0 = if cfg.thresholding {
            dynamic_threshold(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        } else {
            x0
        };
        S::lin_comb(&[(1.0 / sigma_t, sample), (-alpha_t / sigma_t, &x0)])
    }

    /// The stored ε̂ k steps back (0 = newest).
    fn stored(&self, k: usize) -> Result<&S> {
        let len = self.model_outputs.len();
        self.model_outputs
            .get(len.wrapping_sub(1 + k))
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                Error::State(format!(
                    "DEIS: model output {k} steps back is not available"
                ))
            })
    }

    /// (α, ρ = σ_t/α_t) at σ index `i`.
    fn alpha_rho(&self, i: usize) -> Result<(f64, f64)> {
        let sigma = self
            .sigmas
            .get(i)
            .copied()
            .ok_or_else(|| Error::State(format!("DEIS: σ index {i} outside the schedule")))?;
        let (a, s) = alpha_sigma(sigma, self.config.use_flow_sigmas);
        Ok((a, s / a))
    }

    /// One DEIS update of `order` from σ index `i` to `i + 1`.
    fn update(&self, sample: &S, i: usize, order: usize) -> Result<S> {
        let flow = self.config.use_flow_sigmas;
        let m0 = self.stored(0)?;
        match order {
            1 => {
                // DDIM: x_t = (α_t/α_s) x − σ_t (e^h − 1) ε̂.
                let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1], flow);
                let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i], flow);
                let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
                Ok(S::lin_comb(&[
                    (alpha_t / alpha_s, sample),
                    (-sigma_t * h.exp_m1(), m0),
                ]))
            }
            2 => {
                let (alpha_t, rho_t) = self.alpha_rho(i + 1)?;
                let (alpha_s0, rho_s0) = self.alpha_rho(i)?;
                let (_, rho_s1) = self.alpha_rho(
                    i.checked_sub(1)
                        .ok_or_else(|| Error::State("DEIS: no history".into()))?,
                )?;
                let coef1 = ind_fn2(rho_t, rho_s0, rho_s1) - ind_fn2(rho_s0, rho_s0, rho_s1);
                let coef2 = ind_fn2(rho_t, rho_s1, rho_s0) - ind_fn2(rho_s0, rho_s1, rho_s0);
                // x_t = α_t (x/α_s0 + c₁ ε̂₀ + c₂ ε̂₁)
                Ok(S::lin_comb(&[
                    (alpha_t / alpha_s0, sample),
                    (alpha_t * coef1, m0),
                    (alpha_t * coef2, self.stored(1)?),
                ]))
            }
            _ => {
                let (alpha_t, rho_t) = self.alpha_rho(i + 1)?;
                let (alpha_s0, rho_s0) = self.alpha_rho(i)?;
                let back = |k: usize| {
                    i.checked_sub(k)
                        .ok_or_else(|| Error::State("DEIS: no history".into()))
                };
                let (_, rho_s1) = self.alpha_rho(back(1)?)?;
                let (_, rho_s2) = self.alpha_rho(back(2)?)?;
                let coef1 = ind_fn3(rho_t, rho_s0, rho_s1, rho_s2)
                    - ind_fn3(rho_s0, rho_s0, rho_s1, rho_s2);
                let coef2 = ind_fn3(rho_t, rho_s1, rho_s2, rho_s0)
                    - ind_fn3(rho_s0, rho_s1, rho_s2, rho_s0);
                let coef3 = ind_fn3(rho_t, rho_s2, rho_s0, rho_s1)
                    - ind_fn3(rho_s0, rho_s2, rho_s0, rho_s1);
                Ok(S::lin_comb(&[
                    (alpha_t / alpha_s0, sample),
                    (alpha_t * coef1, m0),
                    (alpha_t * coef2, self.stored(1)?),
                    (alpha_t * coef3, self.stored(2)?),
                ]))
            }
        }
    }
}

impl<S: SampleTensor> Default for DEISMultistepScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DEISMultistepScheduler<S> {
    fn class_name(&self) -> &'static str {
        DEISMultistepConfig::CLASS_NAME
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
        false
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let (timesteps, sigmas) = self.lay_out(request)?;
        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
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
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        let Some(n) = self.num_inference_steps else {
            return Err(Error::State(
                "DEISMultistepScheduler: call set_timesteps before step".into(),
            ));
        };
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => first_step_index(&self.timesteps, timestep),
        };
        if i >= n {
            return Err(Error::State(format!(
                "DEISMultistepScheduler: step index {i} is past the last of {n} steps"
            )));
        }
        self.step_index = Some(i);
        let order = self.config.solver_order;
        // Lower orders for the last two steps of short schedules (< 15 steps).
        let short = self.config.lower_order_final && n < 15;
        let lower_order_final = short && i == n - 1;
        let lower_order_second = short && i + 2 == n;

        let converted = self.convert(model_output, sample, i);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));

        let this_order = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let prev_sample = self.update(sample, i, this_order)?;
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    /// x_t = α_t x₀ + σ_t ε at the σ of each timestep (diffusers' `add_noise`).
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        check_same_shape("noise", original, noise)?;
        let (alphas, sigmas) = noise_levels(
            &self.timesteps,
            &self.sigmas,
            self.step_index,
            self.begin_index,
            original.batch_size(),
            timesteps,
            self.config.use_flow_sigmas,
        )?;
        Ok(original
            .scale_per_sample(&alphas)
            .add(&noise.scale_per_sample(&sigmas)))
    }

    fn step_index(&self) -> Option<usize> {
        self.step_index
    }
    fn begin_index(&self) -> Option<usize> {
        self.begin_index
    }
    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::registry::from_config_json;
    use ember_core::HostTensor;
    use serde_json::json;

    type Host = DEISMultistepScheduler<HostTensor>;

    fn sched(cfg: Value) -> Result<Host> {
        Host::from_config(parse_config(&cfg)?)
    }

    fn host(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    fn assert_rel(got: &[f64], want: &[f64], tol: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    fn run_toy(s: &mut Host, n: usize) -> HostTensor {
        s.set_timesteps(n).unwrap();
        let r = host(&[0.2, -0.4]);
        let mut x = host(&[0.7, -1.2]);
        for t in s.timesteps().to_vec() {
            let out = HostTensor::lin_comb(&[(0.3, &x), (0.5, &r)]);
            x = s.step(&out, t, &x, None).unwrap().prev_sample;
        }
        x
    }

    #[test]
    fn matches_diffusers_toy_runs() {
        // diffusers 0.42.1, float32 tensors; the residual is float32 noise.
        let mut s = sched(json!({"solver_order": 3})).unwrap();
        assert_rel(
            run_toy(&mut s, 12).data(),
            &[16.984750747680664, -27.88410186767578],
            3e-6,
        );
        let mut s = sched(json!({"use_flow_sigmas": true, "prediction_type": "flow_prediction", "flow_shift": 3.0}))
            .unwrap();
        let x = run_toy(&mut s, 10);
        assert_eq!(
            s.timesteps(),
            &[999.0, 963.0, 922.0, 874.0, 817.0, 749.0, 666.0, 562.0, 428.0, 249.0]
        );
        assert_rel(x.data(), &[0.49118438363075256, -0.8227829933166504], 2e-5);
    }

    #[test]
    fn point_mass_follows_the_exact_path() {
        // With data at x*, ε̂ = (x − α x*)/σ is constant along the exact ODE path, which every
        // order integrates exactly: x_final = α_N x* + σ_N ε.
        let target = host(&[0.25, -0.5]);
        for order in 1..=3 {
            let mut s = sched(json!({"solver_order": order})).unwrap();
            s.set_timesteps(9).unwrap();
            let mut x = host(&[1.0, -2.0]);
            let (a0, s0) = alpha_sigma(s.sigmas[0], false);
            let eps = HostTensor::lin_comb(&[(1.0 / s0, &x), (-a0 / s0, &target)]);
            for t in s.timesteps().to_vec() {
                let i = s.step_index().unwrap_or(0);
                let (a, sg) = alpha_sigma(s.sigmas[i], false);
                let e = HostTensor::lin_comb(&[(1.0 / sg, &x), (-a / sg, &target)]);
                x = s.step(&e, t, &x, None).unwrap().prev_sample;
            }
            let (an, sn) = alpha_sigma(*s.sigmas.last().unwrap(), false);
            let want = HostTensor::lin_comb(&[(an, &target), (sn, &eps)]);
            assert_rel(x.data(), want.data(), 1e-9);
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        for order in [0, 4] {
            assert!(matches!(
                sched(json!({"solver_order": order})),
                Err(Error::InvalidConfig { .. })
            ));
        }
        let e = from_config_json::<HostTensor>(
            &json!({"_class_name": "DEISMultistepScheduler", "solver_type": "x"}),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        // diffusers' aliases are accepted and written back as deis/logrho.
        let s = from_config_json::<HostTensor>(
            &json!({"_class_name": "DEISMultistepScheduler", "algorithm_type": "dpmsolver++", "solver_type": "bh2"}),
        )
        .unwrap();
        assert_eq!(s.config_json()["algorithm_type"], json!("deis"));
        assert_eq!(s.config_json()["solver_type"], json!("logrho"));

        let mut s = sched(json!({})).unwrap();
        let x = host(&[0.1, 0.2]);
        assert!(matches!(s.step(&x, 999.0, &x, None), Err(Error::State(_))));
        assert!(matches!(
            s.set_timesteps(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(s
            .set_timesteps_with(&TimestepRequest::sigmas(vec![0.9, 0.5]))
            .is_err());
        // μ needs dynamic shifting.
        assert!(s
            .set_timesteps_with(&TimestepRequest::steps(4).with_mu(0.5))
            .is_err());
        s.set_timesteps(3).unwrap();
        let nan = host(&[0.0, f64::INFINITY]);
        assert!(matches!(
            s.step(&nan, 999.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        // More steps than the training grid can hold give repeated timesteps.
        assert!(matches!(
            s.set_timesteps(1500),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn mu_becomes_the_flow_shift() {
        let mut s = sched(json!({"use_flow_sigmas": true, "use_dynamic_shifting": true})).unwrap();
        s.set_timesteps_with(&TimestepRequest::steps(5).with_mu(0.7))
            .unwrap();
        assert!((s.config().flow_shift - 0.7f64.exp()).abs() < 1e-15);
        // As in diffusers, later calls without μ keep e^μ.
        let first = s.timesteps().to_vec();
        s.set_timesteps(5).unwrap();
        assert_eq!(s.timesteps(), &first[..]);
    }
}
