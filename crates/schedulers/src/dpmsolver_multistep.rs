//! diffusers' `DPMSolverMultistepScheduler` (`scheduling_dpmsolver_multistep.py`):
//! DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b), ODE and SDE variants,
//! as linear multistep methods of order 1–3 in the half log-SNR λ.
//!
//! Each step evaluates the model once at the current timestep, converts its output to the
//! quantity the solver integrates (x̂₀ for `dpmsolver++`/`sde-dpmsolver++`, ε̂ for
//! `dpmsolver`/`sde-dpmsolver`), and combines it with the one or two previous converted
//! outputs into the update of [`crate::dpm_solver`]. The order ramps up over the first
//! steps (`lower_order_nums`) and, with `lower_order_final`, back down over the last two
//! steps of short (< 15 step) schedules; the last step is always first order when the
//! schedule ends at σ = 0.
//!
//! The noise schedule is the DDPM one: training σ_t = √((1 − ᾱ_t)/ᾱ_t), α_t = 1/√(σ² + 1),
//! σ_t^{VP} = σ α_t (or the rectified-flow pair α = 1 − σ with `use_flow_sigmas`).
//! `set_timesteps` reproduces diffusers' layouts exactly: `timestep_spacing` on a range cut
//! short by `lambda_min_clipped`, Karras / exponential / beta / uniform-λ (`use_lu_lambdas`)
//! σ spacings with σ → t inversion, flow σs with `flow_shift` (or `exp(mu)` with
//! `use_dynamic_shifting`), custom integer timesteps, and the final σ.
//!
//! # Deliberate differences from diffusers
//! - `sde-dpmsolver` with `solver_order = 3` is rejected by `validate()` (diffusers has no
//!   third-order SDE-DPM-Solver formula and fails with `UnboundLocalError` at the third step).
//! - `flow_prediction` with `dpmsolver`/`sde-dpmsolver`, and `final_sigmas_type = "zero"`
//!   with those algorithms, are rejected when the config is read (diffusers raises at the
//!   first step / in the constructor).
//! - Custom timesteps must be strictly decreasing and inside the training range, and cannot
//!   be combined with `use_flow_sigmas` (diffusers crashes there).
//! - A learned-variance output keeps the sample's channel count of mean channels
//!   (diffusers hard-codes 3), for every `prediction_type`.
//! - `add_noise` before `set_timesteps` uses the training σ at each timestep (diffusers
//!   looks the timestep up in its reversed constructor list, which picks the σ of `T−1−t`).
//! - `pred_original_sample` is returned (diffusers' output has only `prev_sample`).

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::dpm_solver::{
    check_solver_order, check_thresholding, convert_vp_output, data_from_converted, dpm_add_noise,
    first_order_update, multistep_order, multistep_update_with, neg_inf_on_null,
    split_learned_variance, step_noise, vp_inference_schedule, AlgorithmType, Node,
    NoiseLevelSource, OutputHistory, SolverType, Thresholding, VarianceType, VpLayout,
};
use crate::flow_sigmas::TimeShiftType;
use crate::schedule::{linspace_f64, BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_custom_timesteps, np_arange, SigmaSpacing, TrainSigmas,
};
use crate::vp_solver::{
    alpha_sigma, multistep_index_for_timestep, FinalSigmasType, TimestepSpacing,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of [`DpmSolverMultistepScheduler`]: diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverMultistepConfig {
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
    /// Solver order (1, 2 or 3); 2 is recommended for guided sampling.
    pub solver_order: usize,
    /// The model's parameterisation.
    pub prediction_type: Prediction,
    /// Apply Imagen's dynamic thresholding to x̂₀ (pixel-space models only).
    #[serde(deserialize_with = "default_on_null")]
    pub thresholding: bool,
    /// The quantile of |x̂₀| used as threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold.
    pub sample_max_value: f64,
    /// Which solver: `dpmsolver`, `dpmsolver++`, `sde-dpmsolver` or `sde-dpmsolver++`.
    pub algorithm_type: AlgorithmType,
    /// Second-order discretisation: `midpoint` or `heun`.
    pub solver_type: SolverType,
    /// Lower the order over the last steps of schedules shorter than 15 steps.
    #[serde(deserialize_with = "default_on_null")]
    pub lower_order_final: bool,
    /// Use a first-order (Euler) final step.
    #[serde(deserialize_with = "default_on_null")]
    pub euler_at_final: bool,
    /// Karras et al.'s σ spacing (eq. 5, ρ = 7).
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// Steps uniform in log σ (the log-SNR spacing of the DPM-Solver paper).
    #[serde(deserialize_with = "default_on_null")]
    pub use_lu_lambdas: bool,
    /// Rectified-flow σs `1 − i/T` shifted by `flow_shift` (α = 1 − σ, σ_t = σ).
    #[serde(deserialize_with = "default_on_null")]
    pub use_flow_sigmas: bool,
    /// The shift s of `s σ / (1 + (s − 1) σ)` for flow σs.
    pub flow_shift: f64,
    /// The σ the last step ends at.
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose λ is below this are not used (`-inf`: all are; written `-Infinity`).
    #[serde(with = "neg_inf_on_null")]
    pub lambda_min_clipped: f64,
    /// Ember-only, default false (diffusers' numbers). diffusers' third-order multistep
    /// update halves its second-derivative term, which makes DPM++ 3M second order; true
    /// uses the exact third-order weight (see `dpm_solver::multistep_update_with`). Written
    /// to the config only when true.
    #[serde(
        deserialize_with = "default_on_null",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub exact_third_order: bool,
    /// `learned`/`learned_range` for models that also output their variance (its channels
    /// are dropped); DDPM's fixed kinds are accepted and ignored.
    pub variance_type: Option<VarianceType>,
    /// How inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// Offset added to `leading` timesteps.
    pub steps_offset: usize,
    /// Rescale βs to zero terminal SNR (Lin et al. 2023); the last ᾱ becomes 2⁻²⁴.
    #[serde(deserialize_with = "default_on_null")]
    pub rescale_betas_zero_snr: bool,
    /// Accept `mu` in `set_timesteps` (flow_shift becomes e^μ).
    #[serde(deserialize_with = "default_on_null")]
    pub use_dynamic_shifting: bool,
    /// The form of the dynamic shift; only `exponential` can be used with `mu` here.
    pub time_shift_type: TimeShiftType,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DpmSolverMultistepConfig {
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
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            exact_third_order: false,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DpmSolverMultistepConfig {
    const CLASS_NAME: &'static str = "DPMSolverMultistepScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        if self.num_train_timesteps == 0 {
            return Err(Error::config("num_train_timesteps", "must be at least 1"));
        }
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
        check_solver_order(self.solver_order)?;
        SigmaSpacing::from_flags(
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        )?;
        check_thresholding(
            self.thresholding,
            self.dynamic_thresholding_ratio,
            self.sample_max_value,
        )?;
        let alg = self.algorithm_type;
        if !alg.predicts_data() && self.final_sigmas_type == FinalSigmasType::Zero {
            return Err(Error::config(
                "final_sigmas_type",
                format!(
                    "`zero` is not supported for algorithm_type `{}`; use `sigma_min`",
                    alg.name()
                ),
            ));
        }
        if !alg.predicts_data() && self.prediction_type == Prediction::FlowPrediction {
            return Err(Error::config(
                "prediction_type",
                format!(
                    "flow_prediction needs algorithm_type dpmsolver++ or sde-dpmsolver++, not `{}`",
                    alg.name()
                ),
            ));
        }
        if alg == AlgorithmType::SdeDpmSolver && self.solver_order == 3 {
            return Err(Error::config(
                "solver_order",
                "sde-dpmsolver has no third-order update (diffusers fails at the third step); \
                 use solver_order 1 or 2, or sde-dpmsolver++",
            ));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(Error::config(
                "flow_shift",
                format!("must be finite and positive, got {}", self.flow_shift),
            ));
        }
        if self.lambda_min_clipped.is_nan() {
            return Err(Error::config("lambda_min_clipped", "must not be NaN"));
        }
        Ok(())
    }
}

/// diffusers' `DPMSolverMultistepScheduler`, generic over the sample type because it keeps
/// the last `solver_order` converted model outputs.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler<S> {
    config: DpmSolverMultistepConfig,
    train: TrainSigmas,
    /// Half log-SNR λ_t of every training timestep, in float32 as diffusers' `lambda_t`.
    train_lambdas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The schedule σs (variance-exploding, or flow σ), the final σ appended.
    sigmas: Vec<f64>,
    /// `None` until `set_timesteps`.
    num_inference_steps: Option<usize>,
    history: OutputHistory<S>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> DpmSolverMultistepScheduler<S> {
    /// Builds the scheduler. Before `set_timesteps` it holds diffusers' constructor
    /// schedule (every training timestep, highest first), usable by `add_noise`.
    pub fn from_config(config: DpmSolverMultistepConfig) -> Result<Self> {
        config.validate()?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            config.rescale_betas_zero_snr,
        )?;
        // diffusers sets ᾱ_{T−1} = 2⁻²⁴ after the zero-SNR rescale so σ_{T−1} stays finite.
        let train = TrainSigmas::from_schedule(&schedule, config.rescale_betas_zero_snr);
        let train_lambdas = train
            .alphas_cumprod
            .iter()
            .map(|&a| {
                // torch float32: λ = log(√ᾱ) − log(√(1 − ᾱ)).
                let a = a as f32;
                let (alpha, sigma) = (a.sqrt(), (1.0f32 - a).sqrt());
                (f64::from(alpha).ln() as f32) - (f64::from(sigma).ln() as f32)
            })
            .collect();
        let n = config.num_train_timesteps;
        Ok(Self {
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            sigmas: train.sigmas.clone(),
            history: OutputHistory::new(config.solver_order),
            train,
            train_lambdas,
            config,
            num_inference_steps: None,
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(DpmSolverMultistepConfig::default())
            .expect("the default DPMSolverMultistepScheduler config is valid")
    }

    /// The configuration (`flow_shift` reflects the last `mu`, as in diffusers).
    pub fn config(&self) -> &DpmSolverMultistepConfig {
        &self.config
    }

    /// The VP node (α_t, σ_t, λ_t) of schedule σ `sigma`.
    fn node(&self, sigma: f64) -> Node {
        let (a, s) = alpha_sigma(sigma, self.config.use_flow_sigmas);
        Node::new(a, s)
    }

    /// diffusers' `last_timestep = T − searchsorted(flip(λ), lambda_min_clipped)`: the
    /// timesteps whose λ falls below the clip are cut from the top of the range.
    fn last_timestep(&self) -> usize {
        let clip = self.config.lambda_min_clipped;
        // flip(λ) is increasing; searchsorted (left) counts the entries below the clip
        // (compared in float32, as torch does against a float32 tensor).
        let below = self
            .train_lambdas
            .iter()
            .rev()
            .filter(|&&l| f64::from(l) < f64::from(clip as f32))
            .count();
        self.config.num_train_timesteps - below
    }

    /// The `timestep_spacing` layout over `[0, last_timestep)`.
    fn spaced(&self, n: usize, last_timestep: usize) -> Vec<f64> {
        let c = &self.config;
        match c.timestep_spacing {
            TimestepSpacing::Linspace => {
                // np.linspace(0, last − 1, n + 1).round()[::-1][:-1]
                let mut v: Vec<f64> = linspace_f64(0.0, last_timestep as f64 - 1.0, n + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .collect();
                v.reverse();
                v.truncate(n);
                v
            }
            TimestepSpacing::Leading => {
                // (arange(0, n + 1) · (last // (n + 1))).round()[::-1][:-1] + steps_offset
                let ratio = last_timestep / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + c.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                // np.arange(last, 0, −T/n).round() − 1 (note: T, not last, sets the ratio).
                let ratio = c.num_train_timesteps as f64 / n as f64;
                np_arange(last_timestep as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| t.round_ties_even() - 1.0)
                    .collect()
            }
        }
    }

    /// The σ layout the config selects, in diffusers' order of precedence.
    fn layout(&self) -> VpLayout {
        let c = &self.config;
        if c.use_karras_sigmas {
            VpLayout::Karras
        } else if c.use_lu_lambdas {
            VpLayout::Lu
        } else if c.use_exponential_sigmas {
            VpLayout::Exponential
        } else if c.use_beta_sigmas {
            VpLayout::Beta
        } else if c.use_flow_sigmas {
            VpLayout::Flow(c.flow_shift)
        } else {
            VpLayout::Interpolated
        }
    }

    /// The timesteps and σs (final σ included) of a request, as diffusers' `set_timesteps`.
    fn build(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.config;
        if request.sigmas.is_some() {
            return Err(Error::argument(
                "sigmas",
                "DPMSolverMultistepScheduler does not take custom sigmas; pass timesteps or a step count",
            ));
        }
        let layout = self.layout();
        match (request.num_inference_steps, request.timesteps.as_deref()) {
            (None, None) => Err(Error::argument(
                "num_inference_steps",
                "pass exactly one of `num_inference_steps` or `timesteps`",
            )),
            (Some(_), Some(_)) => Err(Error::argument(
                "timesteps",
                "pass only one of `num_inference_steps` and `timesteps`",
            )),
            (None, Some(custom)) => {
                if let Some(flag) = layout.flag_name() {
                    return Err(Error::argument(
                        "timesteps",
                        format!("custom timesteps cannot be combined with `{flag}`"),
                    ));
                }
                // np.array(timesteps).astype(np.int64) truncates.
                let ts: Vec<f64> = custom.iter().map(|t| t.trunc()).collect();
                check_custom_timesteps(&ts, c.num_train_timesteps)?;
                let n = ts.len();
                Ok(vp_inference_schedule(
                    &self.train,
                    layout,
                    n,
                    ts,
                    true,
                    c.final_sigmas_type,
                ))
            }
            (Some(n), None) => {
                if n == 0 {
                    return Err(Error::argument("num_inference_steps", "must be at least 1"));
                }
                if n > c.num_train_timesteps {
                    // More steps than training timesteps repeat timesteps (zero-length solver
                    // steps, or all-zero `leading` timesteps); diffusers runs on, Ember refuses.
                    return Err(Error::argument(
                        "num_inference_steps",
                        format!(
                            "{n} exceeds num_train_timesteps = {}",
                            c.num_train_timesteps
                        ),
                    ));
                }
                let last = self.last_timestep();
                if last == 0 {
                    return Err(Error::config(
                        "lambda_min_clipped",
                        "clips every training timestep; lower it",
                    ));
                }
                let spaced = self.spaced(n, last);
                // Karras / Lu inversions are rounded except on the cosine schedule.
                let round = c.beta_schedule != BetaSchedule::SquaredcosCapV2;
                Ok(vp_inference_schedule(
                    &self.train,
                    layout,
                    n,
                    spaced,
                    round,
                    c.final_sigmas_type,
                ))
            }
        }
    }

    /// Which update order this step uses (diffusers' `step` logic).
    fn step_order(&self, index: usize) -> usize {
        let c = &self.config;
        multistep_order(
            c.solver_order,
            self.lower_order_nums,
            index,
            self.timesteps.len(),
            c.lower_order_final,
            c.euler_at_final,
            c.final_sigmas_type == FinalSigmasType::Zero,
        )
    }

    fn schedule_sigma(&self, index: usize) -> Result<f64> {
        self.sigmas.get(index).copied().ok_or_else(|| {
            Error::State(format!(
                "sigma index {index} is out of range ({} values)",
                self.sigmas.len()
            ))
        })
    }
}

impl<S: SampleTensor> Default for DpmSolverMultistepScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DpmSolverMultistepScheduler<S> {
    fn class_name(&self) -> &'static str {
        DpmSolverMultistepConfig::CLASS_NAME
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
        self.config.algorithm_type.is_sde()
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        if let Some(mu) = request.mu {
            if !self.config.use_dynamic_shifting {
                return Err(Error::argument(
                    "mu",
                    "needs use_dynamic_shifting = true in the config",
                ));
            }
            if self.config.time_shift_type != TimeShiftType::Exponential {
                return Err(Error::argument(
                    "mu",
                    "DPMSolverMultistepScheduler implements only time_shift_type `exponential`",
                ));
            }
            if !mu.is_finite() {
                return Err(Error::argument("mu", format!("must be finite, got {mu}")));
            }
            // diffusers writes exp(μ) into its config's flow_shift, where it stays.
            self.config.flow_shift = mu.exp();
        }
        let (timesteps, sigmas) = self.build(request)?;
        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.history = OutputHistory::new(self.config.solver_order);
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
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        let class = DpmSolverMultistepConfig::CLASS_NAME;
        if self.num_inference_steps.is_none() {
            return Err(Error::State(format!(
                "{class}: call set_timesteps before step"
            )));
        }
        check_finite("model_output", model_output)?;
        let model_output = match self.config.variance_type {
            Some(v) if v.is_learned() => split_learned_variance(model_output, sample)?,
            _ => {
                check_same_shape("model_output", sample, model_output)?;
                model_output.clone()
            }
        };
        let index = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => multistep_index_for_timestep(&self.timesteps, timestep),
        };
        if index >= self.timesteps.len() {
            return Err(Error::State(format!(
                "{class}: all {} timesteps have been stepped through; call set_timesteps again",
                self.timesteps.len()
            )));
        }
        let alg = self.config.algorithm_type;
        let noise = step_noise(alg, noise, sample, class)?;
        let order = self.step_order(index);
        let nodes: Vec<Node> = (0..=order)
            .map(|k| {
                // [t = index + 1, s0 = index, s1 = index − 1, s2 = index − 2]
                let i = (index + 1).checked_sub(k).ok_or_else(|| {
                    Error::State(format!("{class}: order {order} step at index {index}"))
                })?;
                Ok(self.node(self.schedule_sigma(i)?))
            })
            .collect::<Result<_>>()?;
        let c = &self.config;
        let thresholding = c.thresholding.then_some(Thresholding {
            ratio: c.dynamic_thresholding_ratio,
            max_value: c.sample_max_value,
        });
        let converted = convert_vp_output(
            alg,
            c.prediction_type,
            &model_output,
            sample,
            self.schedule_sigma(index)?,
            c.use_flow_sigmas,
            thresholding,
        )?;
        let pred_original = data_from_converted(alg, &converted, sample, nodes[1]);
        let solver_type = c.solver_type;
        let solver_order = c.solver_order;
        self.history.push(converted);
        let prev_sample = if order == 1 {
            let m = self.history.newest_n(1)?;
            first_order_update(alg, nodes[0], nodes[1], sample, m[0], noise)
        } else {
            let outputs = self.history.newest_n(order)?;
            let d2_scale = if c.exact_third_order { 2.0 } else { 1.0 };
            multistep_update_with(alg, solver_type, &nodes, &outputs, sample, noise, d2_scale)?
        };
        if self.lower_order_nums < solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(pred_original),
        })
    }

    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        let source = if self.num_inference_steps.is_none() {
            NoiseLevelSource::Training(&self.train, self.config.num_train_timesteps)
        } else {
            NoiseLevelSource::Inference {
                timesteps: &self.timesteps,
                sigmas: &self.sigmas,
                begin_index: self.begin_index,
                step_index: self.step_index,
            }
        };
        dpm_add_noise(
            original,
            noise,
            timesteps,
            source,
            self.config.use_flow_sigmas,
        )
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
    use ember_core::HostTensor;
    use serde_json::json;

    type Sched = DpmSolverMultistepScheduler<HostTensor>;

    fn sched(cfg: Value) -> Result<Sched> {
        Sched::from_config(crate::config::parse_config(&cfg)?)
    }

    fn sd(extra: Value) -> Value {
        let mut cfg =
            json!({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    }

    fn timesteps_for(cfg: Value, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut s = sched(cfg).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, n).unwrap();
        (s.timesteps.clone(), s.sigmas.clone())
    }

    fn x(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(p, q)| (p - q).abs() <= tol * q.abs().max(1.0))
    }

    /// Runs the loop with model output `0.5·x + 0.1` (values from diffusers 0.42.1).
    fn toy_run(s: &mut Sched, n: usize, x0: &[f64]) -> Vec<f64> {
        Scheduler::<HostTensor>::set_timesteps(s, n).unwrap();
        let mut x = x(x0);
        for t in s.timesteps().to_vec() {
            let out = x.scale(0.5).add_scalar(0.1);
            let z = x.zeros_like();
            let noise = s.is_stochastic().then_some(&z);
            x = s.step(&out, t, &x, noise).unwrap().prev_sample;
        }
        x.into_data()
    }

    #[test]
    fn timesteps_match_diffusers() {
        // Printed by diffusers 0.42.1.
        let (ts, sig) = timesteps_for(sd(json!({"use_karras_sigmas": true})), 8);
        assert_eq!(ts, [999.0, 890.0, 746.0, 549.0, 299.0, 90.0, 12.0, 0.0]);
        assert!(close(
            &sig[..3],
            &[14.614646911621094, 7.902944564819336, 4.027746200561523],
            1e-7
        ));
        assert_eq!(sig[8], 0.0);
        let (ts, sig) = timesteps_for(sd(json!({"use_lu_lambdas": true})), 8);
        assert_eq!(ts, [999.0, 835.0, 622.0, 359.0, 133.0, 31.0, 5.0, 0.0]);
        assert!(close(
            &sig[..3],
            &[14.614646911621094, 6.0129828453063965, 2.4739537239074707],
            1e-7
        ));
        let (ts, _) = timesteps_for(json!({"use_exponential_sigmas": true}), 8);
        assert_eq!(ts, [999.0, 851.0, 672.0, 439.0, 177.0, 44.0, 7.0, 0.0]);
        let (ts, sig) = timesteps_for(
            json!({"use_flow_sigmas": true, "flow_shift": 3.0, "prediction_type": "flow_prediction"}),
            6,
        );
        assert_eq!(ts, [999.0, 937.0, 856.0, 749.0, 599.0, 374.0]);
        assert!(close(
            &sig[..3],
            &[0.9996664524078369, 0.9371482133865356, 0.8567752838134766],
            1e-7
        ));
        let (ts, sig) = timesteps_for(
            json!({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}),
            6,
        );
        assert_eq!(ts, [995.0, 829.0, 663.0, 498.0, 332.0, 166.0]);
        assert!(close(
            &sig[..2],
            &[160.41366577148438, 3.6857516765594482],
            1e-7
        ));
        let (ts, _) = timesteps_for(
            sd(json!({"timestep_spacing": "leading", "steps_offset": 1})),
            5,
        );
        assert_eq!(ts, [831.0, 665.0, 499.0, 333.0, 167.0]);
        // numpy's arange gives 62 trailing timesteps for 61 steps, the last one −1.
        let (ts, sig) = timesteps_for(json!({"timestep_spacing": "trailing"}), 61);
        assert_eq!(ts.len(), 62);
        assert_eq!((ts[0], ts[1], ts[60], ts[61]), (999.0, 983.0, 15.0, -1.0));
        assert_eq!(sig[61], 0.010001329705119133);
    }

    #[test]
    fn dpmpp_2m_run_matches_diffusers() {
        let mut s = sched(sd(json!({}))).unwrap();
        let got = toy_run(&mut s, 6, &[1.0, -0.5, 0.25]);
        let want = [2.301980495452881, -1.9043235778808594, 0.19882887601852417];
        assert!(close(&got, &want, 2e-5), "{got:?}");
    }

    #[test]
    fn sde_third_order_with_zero_noise_matches_diffusers() {
        let mut s = sched(sd(
            json!({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        ))
        .unwrap();
        let got = toy_run(&mut s, 6, &[1.0, -0.5, 0.25]);
        let want = [
            0.05675796791911125,
            -0.6745842099189758,
            -0.30891329050064087,
        ];
        assert!(close(&got, &want, 2e-5), "{got:?}");
    }

    #[test]
    fn add_noise_matches_diffusers() {
        let mut s = sched(sd(json!({}))).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let x0 = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let z = HostTensor::new(vec![2, 2], vec![0.5, -0.5, 1.0, 0.0]).unwrap();
        let ts = [s.timesteps[2], s.timesteps[5]];
        let got = s.add_noise(&x0, &z, &ts).unwrap();
        let want = [
            0.6834731101989746,
            -0.10489317774772644,
            2.427706480026245,
            2.1026933193206787,
        ];
        assert!(close(got.data(), &want, 1e-6), "{got:?}");
    }

    #[test]
    fn learned_variance_channels_are_dropped() {
        let run = |variance: bool| {
            let cfg = if variance {
                json!({"variance_type": "learned_range"})
            } else {
                json!({})
            };
            let mut s = sched(cfg).unwrap();
            Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
            let mut x = HostTensor::new(vec![1, 2, 2], vec![0.3, -1.2, 0.8, 0.1]).unwrap();
            for t in s.timesteps().to_vec() {
                let mean = x.scale(0.4);
                let out = if variance {
                    let mut d = mean.data().to_vec();
                    d.extend([9.0; 4]);
                    HostTensor::new(vec![1, 4, 2], d).unwrap()
                } else {
                    mean
                };
                x = s.step(&out, t, &x, None).unwrap().prev_sample;
            }
            x.into_data()
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn config_round_trips_and_accepts_deis_names() {
        let s = sched(json!({"lambda_min_clipped": -5.1, "use_karras_sigmas": true})).unwrap();
        let json = Scheduler::<HostTensor>::config_json(&s);
        let back = sched(json.clone()).unwrap();
        assert_eq!(Scheduler::<HostTensor>::config_json(&back), json);
        // −∞ is written as diffusers writes it (`-Infinity`) and read back.
        let s = Sched::new();
        let json = Scheduler::<HostTensor>::config_json(&s);
        assert_eq!(json["lambda_min_clipped"], "-Infinity");
        assert_eq!(
            sched(json).unwrap().config.lambda_min_clipped,
            f64::NEG_INFINITY
        );
        // A DEIS / UniPC config swaps in as diffusers' constructor maps it.
        let s = sched(json!({"algorithm_type": "deis", "solver_type": "logrho"})).unwrap();
        assert_eq!(s.config.algorithm_type, AlgorithmType::DpmSolverPlusPlus);
        assert_eq!(s.config.solver_type, SolverType::Midpoint);
        let s = sched(json!({"solver_type": "bh2", "clip_sample": false})).unwrap();
        assert_eq!(s.config.solver_type, SolverType::Midpoint);
        assert!(s.config.extra.contains_key("clip_sample"));
        // diffusers' canonical swap: a DDPM config (fixed variance) into DPM-Solver++.
        let ddpm = json!({"_class_name": "DDPMScheduler", "variance_type": "fixed_small",
                          "clip_sample": true, "beta_schedule": "squaredcos_cap_v2"});
        let s = crate::registry::from_class_name::<HostTensor>(
            "DPMSolverMultistepScheduler",
            Some(&ddpm),
        )
        .unwrap();
        assert_eq!(s.class_name(), "DPMSolverMultistepScheduler");
        assert_eq!(s.config_json()["variance_type"], json!("fixed_small"));
    }

    #[test]
    fn zero_steps_is_an_error() {
        let mut s = Sched::new();
        let e = Scheduler::<HostTensor>::set_timesteps(&mut s, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn solver_order_outside_1_to_3_is_an_error() {
        for order in [0, 4] {
            let e = sched(json!({ "solver_order": order })).err().unwrap();
            assert!(
                matches!(&e, Error::InvalidConfig { field, .. } if field == "solver_order"),
                "{e}"
            );
        }
        let e = sched(json!({"algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}))
            .err()
            .unwrap();
        assert!(e.to_string().contains("third-order"), "{e}");
    }

    #[test]
    fn unknown_algorithm_type_lists_valid_values() {
        let e = sched(json!({"algorithm_type": "dpm-solver-4"}))
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(matches!(e, Error::Parse { .. }), "{msg}");
        assert!(msg.contains("unknown variant `dpm-solver-4`"), "{msg}");
        for valid in [
            "dpmsolver",
            "dpmsolver++",
            "sde-dpmsolver",
            "sde-dpmsolver++",
        ] {
            assert!(msg.contains(&format!("`{valid}`")), "{msg}");
        }
    }

    #[test]
    fn invalid_combinations_are_config_errors() {
        let e = sched(json!({"algorithm_type": "dpmsolver"})).err().unwrap();
        assert!(e.to_string().contains("final_sigmas_type"), "{e}");
        let e = sched(json!({"use_karras_sigmas": true, "use_beta_sigmas": true}))
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
        let e = sched(
            json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
                             "prediction_type": "flow_prediction"}),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("flow_prediction"), "{e}");
        let e = sched(json!({"beta_schedule": "sigmoid"})).err().unwrap();
        assert!(e.to_string().contains("beta_schedule"), "{e}");
    }

    #[test]
    fn nan_model_output_is_an_error() {
        let mut s = Sched::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        let t = s.timesteps[0];
        let e = s
            .step(&x(&[f64::NAN, 0.0]), t, &x(&[0.0, 0.0]), None)
            .unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e}");
        // The failed step left no trace.
        assert_eq!(s.step_index, None);
    }

    #[test]
    fn step_before_set_timesteps_is_an_error() {
        let mut s = Sched::new();
        let e = s.step(&x(&[0.0]), 999.0, &x(&[0.0]), None).unwrap_err();
        assert!(matches!(e, Error::State(_)), "{e}");
    }

    #[test]
    fn sde_without_noise_is_an_error() {
        let mut s = sched(json!({"algorithm_type": "sde-dpmsolver++"})).unwrap();
        assert!(Scheduler::<HostTensor>::is_stochastic(&s));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        let t = s.timesteps[0];
        let e = s.step(&x(&[0.1]), t, &x(&[1.0]), None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { argument, .. } if argument == "noise"),
            "{e}"
        );
        assert_eq!(s.step_index, None);
        let wrong = HostTensor::new(vec![1, 2], vec![0.0, 0.0]).unwrap();
        assert!(matches!(
            s.step(&x(&[0.1]), t, &x(&[1.0]), Some(&wrong)),
            Err(Error::Shape { .. })
        ));
        assert!(s.step(&x(&[0.1]), t, &x(&[1.0]), Some(&x(&[0.3]))).is_ok());
    }

    #[test]
    fn bad_timestep_requests_are_errors() {
        let mut s = Sched::new();
        let bad = |s: &mut Sched, r: TimestepRequest| {
            Scheduler::<HostTensor>::set_timesteps_with(s, &r).unwrap_err()
        };
        assert!(matches!(
            bad(&mut s, TimestepRequest::timesteps(vec![500.0, 600.0])),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            bad(&mut s, TimestepRequest::timesteps(vec![1000.0, 10.0])),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            bad(&mut s, TimestepRequest::sigmas(vec![1.0, 0.0])),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            bad(&mut s, TimestepRequest::steps(5).with_mu(0.5)),
            Error::InvalidArgument { .. }
        ));
        let mut k = sched(json!({"use_karras_sigmas": true})).unwrap();
        assert!(matches!(
            bad(&mut k, TimestepRequest::timesteps(vec![900.0, 10.0])),
            Error::InvalidArgument { .. }
        ));
        // Custom timesteps are truncated to integers and interpolate the training σs.
        Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::timesteps(vec![999.7, 500.0, 10.0]),
        )
        .unwrap();
        assert_eq!(s.timesteps, [999.0, 500.0, 10.0]);
        assert_eq!(s.sigmas[0], s.train.sigmas[999]);
    }

    #[test]
    fn too_many_steps_is_an_error() {
        let mut s = Sched::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 2).unwrap();
        let mut xs = x(&[1.0]);
        for t in s.timesteps().to_vec() {
            xs = s.step(&x(&[0.0]), t, &xs, None).unwrap().prev_sample;
        }
        assert!(matches!(
            s.step(&x(&[0.0]), 0.0, &xs, None),
            Err(Error::State(_))
        ));
    }

    #[test]
    fn dynamic_shift_sets_flow_shift() {
        let mut s = sched(
            json!({"use_flow_sigmas": true, "use_dynamic_shifting": true,
                                 "prediction_type": "flow_prediction"}),
        )
        .unwrap();
        Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::steps(5).with_mu(0.7),
        )
        .unwrap();
        assert!((s.config.flow_shift - 0.7f64.exp()).abs() < 1e-15);
        // diffusers 0.42.1: [999, 889, 750, 572, 334].
        assert_eq!(s.timesteps, [999.0, 889.0, 750.0, 572.0, 334.0]);
    }
}
