//! diffusers' `UniPCMultistepScheduler`: the unified predictor–corrector of Zhao et al.
//! (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
//! Models" (<https://arxiv.org/abs/2302.04867>).
//!
//! # The method
//! In the half log-SNR λ = ln(α_t/σ_t) the diffusion ODE has the exact solution, written
//! with the data prediction x̂₀ ("predict_x0"; DPM-Solver++, Lu et al. 2022, eq. 9)
//!
//! ```text
//! x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂₀(λ) dλ.
//! ```
//!
//! UniPC approximates x̂₀ along λ by a polynomial through the last p model outputs and
//! writes the step with h = λ_t − λ_s0, h_φ₁ = e^{−h} − 1 and a free function B(h)
//! (`bh1`: B(h) = −h; `bh2`: B(h) = e^{−h} − 1; paper §3.3):
//!
//! ```text
//! UniP-p (predictor, paper Alg. 2):
//!   x_t = (σ_t/σ_s0) x_s0 − α_t h_φ₁ m₀ − α_t B(h) Σ_{k=1}^{p−1} ρᵖ_k D_k/r_k
//! UniC-p (corrector, paper Alg. 1), once m_t = x̂₀(x_t) is known:
//!   x_tᶜ = (σ_t/σ_s0) x_s0 − α_t h_φ₁ m₀ − α_t B(h) (Σ_{k=1}^{p−1} ρᶜ_k D_k/r_k + ρᶜ_p (m_t − m₀))
//! ```
//!
//! with r_k = (λ_{s_k} − λ_s0)/h, D_k = m_k − m₀, and the ρ solving the order conditions
//! R ρ = b, R_{ik} = r_k^{i−1}, b_i = h_φ_{i+1}(h)·i!/B(h) (paper eq. 8). The noise-prediction
//! variant (`predict_x0 = false`) swaps the roles of α and σ and uses +h. As in diffusers,
//! the order-2 predictor uses ρᵖ = ½ and the order-1 corrector ρᶜ = ½ instead of a solve.
//!
//! # Precision
//! The coefficients are computed in f64 from diffusers' float32 σ table; diffusers computes
//! them with float32 scalars. Run in float64 both agree to ~1e-14; in float32 the step
//! results differ by ~1e-7–1e-6 relative, and up to ~2e-5 where diffusers' own float32
//! rounding is that large (very small first steps, e.g. beta sigmas with order 3).
//!
//! # Step structure (as diffusers)
//! Each `step` first *corrects* the sample the previous step predicted, using the new model
//! output (unless that step index is in `disable_corrector`), then *predicts* the next sample
//! with UniP. The corrector needs the previous step's input sample and order, which the
//! scheduler keeps in its state; the small ρ systems (order ≤ 3) are solved on the host in f64.
//!
//! # Deliberate differences from diffusers
//! - When the step lands on σ = 0 (the default `final_sigmas_type = "zero"`), diffusers
//!   evaluates 0·∞ in the `bh1` and `predict_x0 = false` variants (and in any order > 1) and
//!   returns NaN/∞. Ember takes the first-order update there and evaluates its limit
//!   (x̂₀ for data prediction, (x − σ_s ε̂)/α_s for noise prediction), which is what the
//!   `bh2` data-prediction default already returns.
//! - `solver_p` (an external predictor) is not supported; `solver_order` is limited to 1–3.
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
use crate::flow_sigmas::{shift_sigma, stretch_to_terminal, time_shift, Precision, TimeShiftType};
use crate::schedule::{linspace_f64, BetaSchedule};
use crate::sigmas::{beta_sigmas, exponential_sigmas, interp, karras_sigmas, KARRAS_RHO};
use crate::vp_solver::{
    alpha_sigma, check_beta_schedule, check_decreasing, check_step_count, check_train_timesteps,
    dynamic_threshold, first_step_index, lambda, log_sigmas_f32, noise_levels, sigma_to_t_np,
    solve_dense, spaced_timesteps, to_f32, FinalSigmasType, TimestepSpacing, VpTrainTable,
};

/// UniPC's `solver_type`: the choice of B(h) (paper §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum UniPCSolverType {
    /// B(h) = h (in the sign convention of the chosen prediction); recommended for
    /// unconditional sampling with < 10 steps.
    #[serde(rename = "bh1")]
    Bh1,
    /// B(h) = e^h − 1. diffusers maps DPM-Solver's `midpoint`/`heun`/`logrho` here.
    #[default]
    #[serde(rename = "bh2", alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

/// Configuration of [`UniPCMultistepScheduler`], with diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniPCMultistepConfig {
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
    /// The order p of UniP (1–3); UniC raises the accuracy to p + 1.
    pub solver_order: usize,
    /// What the model predicts.
    pub prediction_type: Prediction,
    /// Apply Imagen's dynamic thresholding to x̂₀ (data prediction only).
    pub thresholding: bool,
    /// The quantile of |x̂₀| used by dynamic thresholding.
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold s dynamic thresholding may use.
    pub sample_max_value: f64,
    /// Solve in data prediction x̂₀ (UniPC-x₀, default) instead of noise prediction ε̂.
    pub predict_x0: bool,
    /// The B(h) variant.
    pub solver_type: UniPCSolverType,
    /// Lower the order in the last steps (order ≤ number of remaining steps).
    pub lower_order_final: bool,
    /// Step indices whose corrector is skipped (the corrector of step i + 1 corrects step i).
    pub disable_corrector: Vec<i64>,
    /// diffusers' external predictor; only `null` is supported.
    pub solver_p: Option<Value>,
    /// Respace the σs à la Karras et al. (2022).
    pub use_karras_sigmas: bool,
    /// Respace the σs evenly in log σ.
    pub use_exponential_sigmas: bool,
    /// Respace the σs by Beta(0.6, 0.6) quantiles.
    pub use_beta_sigmas: bool,
    /// Use a flow-matching schedule (α_t = 1 − σ, σ_t = σ) for flow models.
    pub use_flow_sigmas: bool,
    /// The constant shift of the flow schedule.
    pub flow_shift: f64,
    /// How the inference timesteps are laid out on the training grid.
    pub timestep_spacing: TimestepSpacing,
    /// Added to the `leading` timesteps.
    pub steps_offset: i64,
    /// The σ of the last step: 0 or the smallest σ of the schedule.
    pub final_sigmas_type: FinalSigmasType,
    /// Rescale the βs to zero terminal SNR (Lin et al. 2023, Alg. 1).
    pub rescale_betas_zero_snr: bool,
    /// Shift the flow schedule with the μ passed to `set_timesteps`.
    pub use_dynamic_shifting: bool,
    /// The form of the μ shift.
    pub time_shift_type: TimeShiftType,
    /// Overrides the smallest σ of the Karras/exponential/beta respacings.
    pub sigma_min: Option<f64>,
    /// Overrides the largest σ of the Karras/exponential/beta respacings.
    pub sigma_max: Option<f64>,
    /// Stretch the flow schedule to end at this σ (needs `use_flow_sigmas`).
    pub shift_terminal: Option<f64>,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for UniPCMultistepConfig {
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
            predict_x0: true,
            solver_type: UniPCSolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for UniPCMultistepConfig {
    const CLASS_NAME: &'static str = "UniPCMultistepScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_train_timesteps(self.num_train_timesteps)?;
        if !(1..=3).contains(&self.solver_order) {
            return Err(Error::config(
                "solver_order",
                format!(
                    "Ember's UniPC supports orders 1 to 3, got {}",
                    self.solver_order
                ),
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
        if self.shift_terminal.is_some() && !self.use_flow_sigmas {
            return Err(Error::config(
                "shift_terminal",
                "is only supported with use_flow_sigmas = true",
            ));
        }
        if let Some(t) = self.shift_terminal.filter(|&t| t != 0.0) {
            if !(t.is_finite() && t < 1.0) {
                return Err(Error::config(
                    "shift_terminal",
                    format!("must be below 1, got {t}"),
                ));
            }
        }
        if !self.predict_x0 && self.prediction_type == Prediction::FlowPrediction {
            return Err(Error::config(
                "prediction_type",
                "flow_prediction needs predict_x0 = true (diffusers raises on it too)",
            ));
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::config(
                "solver_p",
                "an external predictor is not supported; use null",
            ));
        }
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
        for (name, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(Error::config(name, "must be a positive number"));
            }
        }
        Ok(())
    }
}

/// The coefficients of one UniP or UniC update, computed on the host in f64.
struct UniCoefficients {
    /// Multiplier of the sample at s0.
    c_x: f64,
    /// Multiplier of the newest stored model output m₀.
    c_m0: f64,
    /// Multiplier of each D_k = m_k − m₀ (k = 1..p−1).
    c_d: Vec<f64>,
    /// Multiplier of D_t = m_t − m₀ (corrector only).
    c_dt: f64,
}

/// UniPC multistep sampler (diffusers' `UniPCMultistepScheduler`), generic over the
/// sample type because the corrector needs the previous step's sample and outputs.
pub struct UniPCMultistepScheduler<S> {
    config: UniPCMultistepConfig,
    train: VpTrainTable,
    timesteps: Vec<f64>,
    /// σ per timestep plus the final one.
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    /// The last `solver_order` converted model outputs, oldest first.
    model_outputs: Vec<Option<S>>,
    lower_order_nums: usize,
    /// The sample the last predictor started from (the corrector's x_s0).
    last_sample: Option<S>,
    /// The order of the last predictor (the next corrector's order).
    this_order: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> UniPCMultistepScheduler<S> {
    /// Builds the scheduler from a validated configuration.
    pub fn from_config(config: UniPCMultistepConfig) -> Result<Self> {
        config.validate()?;
        let train = VpTrainTable::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
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
            last_sample: None,
            this_order: 1,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid, so this cannot fail.
        Self::from_config(UniPCMultistepConfig::default()).expect("default config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &UniPCMultistepConfig {
        &self.config
    }

    /// Lays out (timesteps, σs with the final σ appended) as diffusers' `set_timesteps`.
    fn lay_out(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let cfg = &self.config;
        let t_train = cfg.num_train_timesteps;
        if cfg.use_dynamic_shifting && request.mu.is_none() {
            return Err(Error::argument(
                "mu",
                "must be given when `use_dynamic_shifting` is enabled",
            ));
        }
        if request.timesteps.is_some() {
            return Err(Error::argument(
                "timesteps",
                "UniPCMultistepScheduler takes no custom timesteps (custom sigmas need use_flow_sigmas)",
            ));
        }
        let custom = request.sigmas.as_deref();
        if custom.is_some() && !cfg.use_flow_sigmas {
            return Err(Error::argument(
                "sigmas",
                "custom sigmas are only supported with use_flow_sigmas = true",
            ));
        }
        let n = match (custom, request.num_inference_steps) {
            (Some(s), Some(n)) if s.len() != n => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "must equal the number of custom sigmas",
                ))
            }
            (Some(s), _) => s.len(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "give a step count or sigmas",
                ))
            }
        };
        check_step_count(n)?;
        if let Some(s) = custom {
            check_decreasing(s, "sigmas", "the custom sigmas")?;
            if s.iter().any(|v| *v <= 0.0) {
                return Err(Error::argument(
                    "sigmas",
                    "custom sigmas must be positive (the final σ is appended)",
                ));
            }
        }
        let spaced: Vec<f64> = spaced_timesteps(cfg.timestep_spacing, t_train, n, cfg.steps_offset)
            .into_iter()
            .map(|t| t as f64)
            .collect();
        let final_sigma = |sigmas: &[f64], sigma_min: f64| match cfg.final_sigmas_type {
            FinalSigmasType::SigmaMin => sigmas.last().copied().unwrap_or(sigma_min),
            FinalSigmasType::Zero => 0.0,
        };
        // The σ table the respacings start from: the custom σs, or the float32 training σs.
        let base: Vec<f64> = custom
            .map(<[f64]>::to_vec)
            .unwrap_or_else(|| self.train.sigmas.clone());
        let log_base: Vec<f64> = match custom {
            Some(c) => c.iter().map(|s| s.ln()).collect(),
            None => log_sigmas_f32(&self.train.sigmas),
        };
        // diffusers flips the table (training order → decreasing σ) and respaces between
        // its ends, unless `sigma_min`/`sigma_max` override them.
        let ends = || {
            let lo = cfg.sigma_min.unwrap_or(base[0]);
            let hi = cfg.sigma_max.unwrap_or(base[base.len() - 1]);
            (lo, hi)
        };
        let (timesteps, mut sigmas, last) = if cfg.use_karras_sigmas {
            let (lo, hi) = ends();
            let mut s = karras_sigmas(lo, hi, n, KARRAS_RHO);
            let ts: Vec<f64> = if cfg.use_flow_sigmas {
                // VE σ → flow σ: σ/(1 + σ); timesteps σ·T, truncated to int64.
                s = s.iter().map(|&v| v / (v + 1.0)).collect();
                s.iter().map(|&v| (v * t_train as f64).trunc()).collect()
            } else {
                s.iter()
                    .map(|&v| sigma_to_t_np(v, &log_base).round_ties_even())
                    .collect()
            };
            let last = final_sigma(&s, 0.0);
            (ts, s, last)
        } else if cfg.use_exponential_sigmas || cfg.use_beta_sigmas {
            let (lo, hi) = ends();
            let s = if cfg.use_exponential_sigmas {
                exponential_sigmas(lo, hi, n)
            } else {
                beta_sigmas(lo, hi, n, 0.6, 0.6)
            };
            // `astype(int64)` truncates the fractional timesteps.
            let ts = s
                .iter()
                .map(|&v| sigma_to_t_np(v, &log_base).trunc())
                .collect();
            let last = final_sigma(&s, 0.0);
            (ts, s, last)
        } else if cfg.use_flow_sigmas {
            let mut s: Vec<f64> = match custom {
                Some(c) => c.to_vec(),
                None => {
                    let mut g = linspace_f64(1.0, 1.0 / t_train as f64, n + 1);
                    g.truncate(n);
                    g
                }
            };
            for v in s.iter_mut() {
                *v = match request.mu.filter(|_| cfg.use_dynamic_shifting) {
                    Some(mu) => time_shift(cfg.time_shift_type, mu, *v, Precision::F64),
                    None => shift_sigma(cfg.flow_shift, *v, Precision::F64),
                };
            }
            if let Some(terminal) = cfg.shift_terminal.filter(|&t| t != 0.0) {
                stretch_to_terminal(&mut s, terminal, Precision::F64);
            }
            // σ = 1 would make α_t = 0 and ln α_t = −∞ in the first updates.
            const EPS: f64 = 1e-6;
            if (s[0] - 1.0).abs() < EPS {
                s[0] -= EPS;
            }
            let ts = s.iter().map(|&v| (v * t_train as f64).trunc()).collect();
            let last = final_sigma(&s, 0.0);
            (ts, s, last)
        } else {
            let idx: Vec<f64> = (0..t_train).map(|t| t as f64).collect();
            let s: Vec<f64> = spaced
                .iter()
                .map(|&t| interp(t, &idx, &self.train.sigmas))
                .collect();
            let last = match cfg.final_sigmas_type {
                FinalSigmasType::SigmaMin => self.train.sigmas[0],
                FinalSigmasType::Zero => 0.0,
            };
            (spaced.clone(), s, last)
        };
        for v in sigmas.iter_mut() {
            *v = to_f32(*v);
        }
        let argument = if custom.is_some() {
            "sigmas"
        } else {
            "num_inference_steps"
        };
        check_decreasing(&sigmas, argument, &format!("the σ schedule for {n} steps"))?;
        if sigmas
            .iter()
            .any(|&s| s <= 0.0 || (cfg.use_flow_sigmas && s >= 1.0))
        {
            return Err(Error::argument(
                argument,
                "every σ of the schedule must be in (0, ∞), or (0, 1) for flow sigmas",
            ));
        }
        sigmas.push(to_f32(last));
        Ok((timesteps, sigmas))
    }

    /// diffusers' `convert_model_output`: x̂₀ (data prediction) or ε̂ (noise prediction) at
    /// step `i` from the raw model output.
    fn convert(&self, model_output: &S, sample: &S, i: usize) -> S {
        let cfg = &self.config;
        let sigma = self.sigmas[i];
        let (alpha_t, sigma_t) = alpha_sigma(sigma, cfg.use_flow_sigmas);
        if cfg.predict_x0 {
            let x0 = match cfg.prediction_type {
                // x̂₀ = (x − σ_t ε̂)/α_t
                Prediction::Epsilon => {
                    S::lin_comb(&[(1.0 / alpha_t, sample), (-sigma_t / alpha_t, model_output)])
                }
                Prediction::Sample => model_output.clone(),
                // x̂₀ = α_t x − σ_t v
                Prediction::VPrediction => {
                    S::lin_comb(&[(alpha_t, sample), (-sigma_t, model_output)])
                }
                // x̂₀ = x − σ v (v = ε − x₀)
                Prediction::FlowPrediction => S::lin_comb(&[(1.0, sample), (-sigma, model_output)]),
            };
            if cfg.thresholding {
                dynamic_threshold(&x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            } else {
                x0
            }
        } else {
            match cfg.prediction_type {
                Prediction::Epsilon => model_output.clone(),
                // ε̂ = (x − α_t x̂₀)/σ_t
                Prediction::Sample => {
                    S::lin_comb(&[(1.0 / sigma_t, sample), (-alpha_t / sigma_t, model_output)])
                }
                // ε̂ = α_t v + σ_t x
                Prediction::VPrediction => {
                    S::lin_comb(&[(alpha_t, model_output), (sigma_t, sample)])
                }
                // Rejected by validate(): flow prediction needs predict_x0. Treat v as is.
                Prediction::FlowPrediction => model_output.clone(),
            }
        }
    }

    /// The stored model output k steps back (0 = newest).
    fn stored(&self, k: usize) -> Result<&S> {
        let len = self.model_outputs.len();
        self.model_outputs
            .get(len.wrapping_sub(1 + k))
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                Error::State(format!(
                    "UniPC: model output {k} steps back is not available"
                ))
            })
    }

    fn lambda_at(&self, i: usize) -> Result<f64> {
        let sigma = self
            .sigmas
            .get(i)
            .copied()
            .ok_or_else(|| Error::State(format!("UniPC: σ index {i} outside the schedule")))?;
        let (a, s) = alpha_sigma(sigma, self.config.use_flow_sigmas);
        Ok(lambda(a, s))
    }

    /// The UniP (predictor, `corrector = false`) or UniC coefficients for a step from σ
    /// index `s0` to `t` of order `order`, where the history points s_k = s0 − k.
    fn coefficients(
        &self,
        t: usize,
        s0: usize,
        order: usize,
        corrector: bool,
    ) -> Result<UniCoefficients> {
        let cfg = &self.config;
        let flow = cfg.use_flow_sigmas;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t], flow);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0], flow);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        // Landing on σ_t = 0 (λ_t = +∞): only the first-order update has a finite limit.
        if h == f64::INFINITY {
            let (c_x, c_m0) = if cfg.predict_x0 {
                // σ_t/σ_s0 = 0 and −α_t(e^{−h} − 1) = α_t: x_t = α_t x̂₀.
                (sigma_t / sigma_s0, alpha_t)
            } else {
                // σ_t(e^h − 1) = α_t σ_s0/α_s0 − σ_t, finite: x_t = (α_t/α_s0)(x − σ_s0 ε̂).
                (
                    alpha_t / alpha_s0,
                    -(alpha_t * sigma_s0 / alpha_s0 - sigma_t),
                )
            };
            return Ok(UniCoefficients {
                c_x,
                c_m0,
                c_d: vec![],
                c_dt: 0.0,
            });
        }
        // r_k = (λ_{s_k} − λ_s0)/h for the older points, and r = 1 for the new one.
        let mut rks = Vec::with_capacity(order);
        for k in 1..order {
            let sk = s0
                .checked_sub(k)
                .ok_or_else(|| Error::State("UniPC: history shorter than the order".into()))?;
            rks.push((self.lambda_at(sk)? - lambda_s0) / h);
        }
        rks.push(1.0);
        // hh = −h for data prediction (the integral runs over e^{−λ}), +h for noise prediction.
        let hh = if cfg.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1(); // h φ₁(h) = e^h − 1
        let b_h = match cfg.solver_type {
            UniPCSolverType::Bh1 => hh,
            UniPCSolverType::Bh2 => hh.exp_m1(),
        };
        // b_i = h φ_{i+1}(h) · i! / B(h), with h φ_{k+1} = h φ_k / h − 1/k! (paper eq. 8).
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        // R_{ik} = r_k^{i}, i = 0..order.
        let r_matrix = |size: usize| -> Vec<Vec<f64>> {
            (0..size)
                .map(|i| rks[..size].iter().map(|r| r.powi(i as i32)).collect())
                .collect()
        };
        let singular =
            || Error::State("UniPC: singular order-condition system (repeated σ?)".into());
        let rhos: Vec<f64> = if corrector {
            if order == 1 {
                vec![0.5]
            } else {
                solve_dense(r_matrix(order), b.clone()).ok_or_else(singular)?
            }
        } else {
            match order {
                1 => vec![],
                2 => vec![0.5],
                _ => solve_dense(r_matrix(order - 1), b[..order - 1].to_vec())
                    .ok_or_else(singular)?,
            }
        };
        // x_t = (σ_t/σ_s0) x − α_t hφ₁ m₀ − α_t B(h) [Σ ρ_k D_k / r_k (+ ρ_p D_t)]   (x₀ form)
        // x_t = (α_t/α_s0) x − σ_t hφ₁ m₀ − σ_t B(h) [ ... ]                       (ε form)
        let (c_x, scale) = if cfg.predict_x0 {
            (sigma_t / sigma_s0, alpha_t)
        } else {
            (alpha_t / alpha_s0, sigma_t)
        };
        let c_m0 = -scale * h_phi_1;
        let c_d: Vec<f64> = (0..order - 1)
            .map(|k| -scale * b_h * rhos[k] / rks[k])
            .collect();
        let c_dt = if corrector {
            -scale * b_h * rhos[order - 1]
        } else {
            0.0
        };
        Ok(UniCoefficients {
            c_x,
            c_m0,
            c_d,
            c_dt,
        })
    }

    /// Applies coefficients to (x, m₀, D_k, D_t).
    fn combine(&self, co: &UniCoefficients, x: &S, m0: &S, model_t: Option<&S>) -> Result<S> {
        let mut diffs = Vec::with_capacity(co.c_d.len() + 1);
        for k in 0..co.c_d.len() {
            diffs.push(self.stored(k + 1)?.sub(m0));
        }
        if let Some(mt) = model_t {
            diffs.push(mt.sub(m0));
        }
        let mut terms: Vec<(f64, &S)> = vec![(co.c_x, x), (co.c_m0, m0)];
        for (c, d) in co.c_d.iter().zip(&diffs) {
            terms.push((*c, d));
        }
        if model_t.is_some() {
            // The last difference is D_t = m_t − m₀.
            terms.push((co.c_dt, &diffs[diffs.len() - 1]));
        }
        Ok(S::lin_comb(&terms))
    }
}

impl<S: SampleTensor> Default for UniPCMultistepScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for UniPCMultistepScheduler<S> {
    fn class_name(&self) -> &'static str {
        UniPCMultistepConfig::CLASS_NAME
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
        self.last_sample = None;
        self.this_order = 1;
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
                "UniPCMultistepScheduler: call set_timesteps before step".into(),
            ));
        };
        let i = match (self.step_index, self.begin_index) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => first_step_index(&self.timesteps, timestep),
        };
        if i >= n {
            return Err(Error::State(format!(
                "UniPCMultistepScheduler: step index {i} is past the last of {n} steps"
            )));
        }
        self.step_index = Some(i);
        let order = self.config.solver_order;
        let converted = self.convert(model_output, sample, i);

        // UniC: correct the sample the previous step predicted, with the new output m_t.
        let use_corrector = i > 0
            && !self.config.disable_corrector.contains(&(i as i64 - 1))
            && self.last_sample.is_some();
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => {
                let co = self.coefficients(i, i - 1, self.this_order, true)?;
                self.combine(&co, last, self.stored(0)?, Some(&converted))?
            }
            _ => sample.clone(),
        };

        // Push m_t into the history (oldest dropped).
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));

        // UniP: predict the next sample with order ≤ the available history.
        let mut this_order = if self.config.lower_order_final {
            order.min(n - i)
        } else {
            order
        };
        this_order = this_order.min(self.lower_order_nums + 1);
        if self.sigmas[i + 1] == 0.0 {
            // See the module docs: only the first-order update is finite at σ = 0.
            this_order = 1;
        }
        self.this_order = this_order;
        let co = self.coefficients(i + 1, i, this_order, false)?;
        let prev_sample = self.combine(&co, &sample, self.stored(0)?, None)?;
        self.last_sample = Some(sample);

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

    type Host = UniPCMultistepScheduler<HostTensor>;

    fn sched(cfg: Value) -> Result<Host> {
        Host::from_config(parse_config(&cfg)?)
    }

    fn host(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    /// Runs the sampler with the toy model `0.3 x + 0.5 r` used by the diffusers reference.
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

    fn assert_rel(got: &[f64], want: &[f64], tol: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn matches_diffusers_toy_runs() {
        // diffusers 0.42.1, float32 tensors (tools/reference venv); the residual is float32 noise.
        let mut s = sched(json!({})).unwrap();
        let x = run_toy(&mut s, 10);
        assert_eq!(
            s.timesteps(),
            &[999.0, 899.0, 799.0, 699.0, 599.0, 500.0, 400.0, 300.0, 200.0, 100.0]
        );
        assert_rel(x.data(), &[16.173542022705078, -26.5524959564209], 2e-6);

        let mut s = sched(
            json!({"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
        )
        .unwrap();
        assert_rel(
            run_toy(&mut s, 12).data(),
            &[15.717379570007324, -25.804954528808594],
            2e-6,
        );

        let mut s = sched(
            json!({"predict_x0": false, "solver_order": 3, "final_sigmas_type": "sigma_min",
                                 "prediction_type": "v_prediction"}),
        )
        .unwrap();
        assert_rel(
            run_toy(&mut s, 9).data(),
            &[0.2903941869735718, -0.46375900506973267],
            2e-6,
        );

        let mut s = sched(json!({"use_flow_sigmas": true, "prediction_type": "flow_prediction", "flow_shift": 3.0}))
            .unwrap();
        let x = run_toy(&mut s, 10);
        assert_eq!(
            s.timesteps(),
            &[999.0, 964.0, 923.0, 875.0, 818.0, 750.0, 667.0, 563.0, 429.0, 251.0]
        );
        assert_rel(x.data(), &[0.4302889406681061, -0.712780237197876], 2e-6);
    }

    #[test]
    fn point_mass_is_recovered_exactly() {
        // For data concentrated at x*, the exact noise prediction is ε̂ = (x − α_t x*)/σ_t and
        // x̂₀ = x* at every step, so every order and variant must land on x* at σ = 0 —
        // including bh1 and noise prediction, where diffusers returns NaN on the last step.
        let target = host(&[0.25, -0.5, 1.5]);
        for predict_x0 in [true, false] {
            for solver_type in ["bh1", "bh2"] {
                for order in 1..=3 {
                    let mut s = sched(json!({"predict_x0": predict_x0, "solver_type": solver_type,
                                             "solver_order": order, "lower_order_final": false}))
                    .unwrap();
                    s.set_timesteps(8).unwrap();
                    let mut x = host(&[1.0, -2.0, 0.5]);
                    for t in s.timesteps().to_vec() {
                        let i = s.step_index().unwrap_or(0);
                        let (a, sg) = alpha_sigma(s.sigmas[i], false);
                        let eps = HostTensor::lin_comb(&[(1.0 / sg, &x), (-a / sg, &target)]);
                        x = s.step(&eps, t, &x, None).unwrap().prev_sample;
                    }
                    assert_rel(x.data(), target.data(), 1e-9);
                }
            }
        }
    }

    #[test]
    fn solver_order_outside_1_to_3_is_rejected() {
        for order in [0, 4] {
            let e = sched(json!({"solver_order": order})).err().unwrap();
            assert!(
                matches!(e, Error::InvalidConfig { ref field, .. } if field == "solver_order"),
                "{e}"
            );
        }
    }

    #[test]
    fn solver_type_names() {
        let e = from_config_json::<HostTensor>(
            &json!({"_class_name": "UniPCMultistepScheduler", "solver_type": "bh3"}),
        )
        .err()
        .unwrap();
        assert!(
            matches!(e, Error::Parse { .. }) && e.to_string().contains("unknown variant"),
            "{e}"
        );
        // diffusers rewrites DPM-Solver's names to bh2.
        let s = from_config_json::<HostTensor>(
            &json!({"_class_name": "UniPCMultistepScheduler", "solver_type": "midpoint"}),
        )
        .unwrap();
        assert_eq!(s.config_json()["solver_type"], json!("bh2"));
        assert_eq!(s.config_json()["solver_p"], Value::Null);
    }

    #[test]
    fn bad_calls_are_errors() {
        let mut s = sched(json!({})).unwrap();
        let x = host(&[0.1, 0.2]);
        assert!(matches!(s.step(&x, 999.0, &x, None), Err(Error::State(_))));
        assert!(matches!(
            s.set_timesteps(0),
            Err(Error::InvalidArgument { .. })
        ));
        // Custom sigmas need use_flow_sigmas; custom timesteps are not supported.
        assert!(s
            .set_timesteps_with(&TimestepRequest::sigmas(vec![0.9, 0.5]))
            .is_err());
        assert!(s
            .set_timesteps_with(&TimestepRequest::timesteps(vec![900.0, 500.0]))
            .is_err());
        s.set_timesteps(5).unwrap();
        let nan = host(&[f64::NAN, 0.0]);
        assert!(matches!(
            s.step(&nan, 999.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        let wrong_shape = host(&[0.1, 0.2, 0.3]);
        assert!(matches!(
            s.step(&wrong_shape, 999.0, &x, None),
            Err(Error::Shape { .. })
        ));

        let mut f =
            sched(json!({"use_flow_sigmas": true, "prediction_type": "flow_prediction"})).unwrap();
        let e = f
            .set_timesteps_with(&TimestepRequest::sigmas(vec![0.9, 0.5, 0.7]))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        f.set_timesteps_with(&TimestepRequest::sigmas(vec![1.0, 0.7, 0.4]))
            .unwrap();
        assert_eq!(f.timesteps(), &[999.0, 700.0, 400.0]);

        let mut d = sched(json!({"use_flow_sigmas": true, "use_dynamic_shifting": true})).unwrap();
        let e = d.set_timesteps(4).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "mu"),
            "{e}"
        );
        d.set_timesteps_with(&TimestepRequest::steps(4).with_mu(0.5))
            .unwrap();
    }

    #[test]
    fn invalid_combinations_are_config_errors() {
        assert!(sched(json!({"predict_x0": false, "prediction_type": "flow_prediction"})).is_err());
        assert!(sched(json!({"shift_terminal": 0.1})).is_err());
        assert!(sched(json!({"use_karras_sigmas": true, "use_beta_sigmas": true})).is_err());
        assert!(sched(json!({"beta_schedule": "sigmoid"})).is_err());
        assert!(sched(json!({"solver_p": {"_class_name": "DDIMScheduler"}})).is_err());
    }

    #[test]
    fn repeated_first_timestep_runs_to_the_end() {
        // Karras σs on the cosine schedule round to [999, 999, 998, 993, 837, 0] (diffusers
        // 0.42.1), which diffusers cannot run to completion.
        let mut s = sched(json!({"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": true}))
            .unwrap();
        s.set_timesteps(6).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 999.0, 998.0, 993.0, 837.0, 0.0]);
        let mut x = host(&[0.3, -0.2]);
        for t in s.timesteps().to_vec() {
            x = s.step(&x.scale(0.1), t, &x, None).unwrap().prev_sample;
        }
        assert!(x.all_finite());
    }

    #[test]
    fn corrector_can_be_disabled_per_step() {
        // Disabling every corrector turns UniPC into its predictor alone: the result changes.
        let mut a = sched(json!({})).unwrap();
        let mut b = sched(json!({"disable_corrector": [0, 1, 2, 3, 4, 5]})).unwrap();
        assert_ne!(run_toy(&mut a, 7).data(), run_toy(&mut b, 7).data());
    }

    #[test]
    fn add_noise_uses_the_vp_pair() {
        let mut s = sched(json!({})).unwrap();
        s.set_timesteps(4).unwrap();
        let x0 = HostTensor::new(vec![2, 1], vec![1.0, 2.0]).unwrap();
        let eps = HostTensor::new(vec![2, 1], vec![0.5, -0.5]).unwrap();
        let t = s.timesteps()[1];
        let y = s.add_noise(&x0, &eps, &[t, t]).unwrap();
        let (a, sg) = alpha_sigma(s.sigmas[1], false);
        assert_rel(y.data(), &[a + 0.5 * sg, 2.0 * a - 0.5 * sg], 1e-12);
        // Before set_timesteps every training timestep has its own σ.
        let fresh = sched(json!({})).unwrap();
        let y = fresh.add_noise(&x0, &eps, &[0.0]).unwrap();
        let acp0 = fresh.train.alphas_cumprod[0];
        assert_rel(
            y.data(),
            &[
                acp0.sqrt() + 0.5 * (1.0 - acp0).sqrt(),
                2.0 * acp0.sqrt() - 0.5 * (1.0 - acp0).sqrt(),
            ],
            1e-6,
        );
    }
}
