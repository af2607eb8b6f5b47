//! diffusers' `DPMSolverSinglestepScheduler` (`scheduling_dpmsolver_singlestep.py`):
//! DPM-Solver / DPM-Solver++ as *singlestep* methods (Lu et al. 2022a, Algorithms 1–2;
//! Lu et al. 2022b, DPM-Solver++(2S)).
//!
//! A singlestep method of order k spends k model evaluations on one solver step: the
//! timesteps are grouped into blocks following an order list such as `[1, 2, 3, 1, 2, 3, …]`.
//! The first step of a block is a first-order step from the block's start `x_s`; the j-th
//! step of the block again starts from `x_s` (not from the previous intermediate point) and
//! uses the j model outputs of the block so far, reaching order j. Every call to `step`
//! returns the next intermediate point, so the sampling loop is the usual one.
//!
//! The order list (diffusers' `get_order_list`) depends on `solver_order`,
//! `lower_order_final` and the step count; the last step is first order when the schedule
//! ends at σ = 0. As in diffusers, `set_timesteps` switches `lower_order_final` on (and
//! keeps it on) when the step count is not a multiple of the order or the final σ is 0.
//!
//! # Deliberate differences from diffusers
//! - `sde-dpmsolver` is rejected (diffusers raises `NotImplementedError`), as are
//!   `flow_prediction` and `final_sigmas_type = "zero"` with `dpmsolver`.
//! - Thresholding with `dpmsolver` uses α_t, σ_t of the current σ (diffusers indexes its
//!   training tables with `None` there and fails).
//! - Custom timesteps must be strictly decreasing, inside the training range, and cannot be
//!   combined with `use_flow_sigmas` (diffusers silently replaces them with flow timesteps).
//! - Learned-variance outputs keep the sample's channel count of mean channels (diffusers
//!   hard-codes 3); `add_noise` before `set_timesteps` uses the training σ at each timestep;
//!   `pred_original_sample` is returned.

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::dpm_solver::{
    check_solver_order, check_thresholding, convert_vp_output, data_from_converted, dpm_add_noise,
    first_order_update, neg_inf_on_null, singlestep_update, split_learned_variance, step_noise,
    vp_inference_schedule, AlgorithmType, Node, NoiseLevelSource, OutputHistory, SolverType,
    Thresholding, VarianceType, VpLayout,
};
use crate::flow_sigmas::TimeShiftType;
use crate::schedule::{linspace_f64, BetaSchedule, TrainSchedule};
use crate::sigma_schedule::{
    check_beta_schedule, check_custom_timesteps, SigmaSpacing, TrainSigmas,
};
use crate::vp_solver::{alpha_sigma, multistep_index_for_timestep, FinalSigmasType};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' `algorithm_type` values of the singlestep solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SinglestepAlgorithmType {
    /// DPM-Solver on the noise prediction (deprecated in diffusers).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// DPM-Solver++ on the data prediction (`"deis"` is read as this, as in diffusers).
    #[default]
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// Stochastic DPM-Solver++.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

impl From<SinglestepAlgorithmType> for AlgorithmType {
    fn from(a: SinglestepAlgorithmType) -> Self {
        match a {
            SinglestepAlgorithmType::DpmSolver => AlgorithmType::DpmSolver,
            SinglestepAlgorithmType::DpmSolverPlusPlus => AlgorithmType::DpmSolverPlusPlus,
            SinglestepAlgorithmType::SdeDpmSolverPlusPlus => AlgorithmType::SdeDpmSolverPlusPlus,
        }
    }
}

/// Configuration of [`DpmSolverSinglestepScheduler`]: diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverSinglestepConfig {
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
    /// Solver order (1, 2 or 3).
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
    /// Which solver: `dpmsolver`, `dpmsolver++` or `sde-dpmsolver++`.
    pub algorithm_type: SinglestepAlgorithmType,
    /// Second/third-order discretisation: `midpoint` or `heun`.
    pub solver_type: SolverType,
    /// End with lower-order blocks (forced on by uneven step counts or a zero final σ).
    #[serde(deserialize_with = "default_on_null")]
    pub lower_order_final: bool,
    /// Karras et al.'s σ spacing (eq. 5, ρ = 7).
    #[serde(deserialize_with = "default_on_null")]
    pub use_karras_sigmas: bool,
    /// σs evenly spaced in log σ.
    #[serde(deserialize_with = "default_on_null")]
    pub use_exponential_sigmas: bool,
    /// Beta(0.6, 0.6)-quantile σs.
    #[serde(deserialize_with = "default_on_null")]
    pub use_beta_sigmas: bool,
    /// Rectified-flow σs shifted by `flow_shift` (α = 1 − σ, σ_t = σ).
    #[serde(deserialize_with = "default_on_null")]
    pub use_flow_sigmas: bool,
    /// The shift s of `s σ / (1 + (s − 1) σ)` for flow σs.
    pub flow_shift: f64,
    /// The σ the last step ends at.
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose λ is below this are not used (`-inf`: all are; written as `null`).
    #[serde(with = "neg_inf_on_null")]
    pub lambda_min_clipped: f64,
    /// `learned`/`learned_range` for models that also output their variance (its channels
    /// are dropped); DDPM's fixed kinds are accepted and ignored.
    pub variance_type: Option<VarianceType>,
    /// Accept `mu` in `set_timesteps` (flow_shift becomes e^μ).
    #[serde(deserialize_with = "default_on_null")]
    pub use_dynamic_shifting: bool,
    /// The form of the dynamic shift; only `exponential` can be used with `mu` here.
    pub time_shift_type: TimeShiftType,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for DpmSolverSinglestepConfig {
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
            algorithm_type: SinglestepAlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for DpmSolverSinglestepConfig {
    const CLASS_NAME: &'static str = "DPMSolverSinglestepScheduler";
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
        let alg = AlgorithmType::from(self.algorithm_type);
        if !alg.predicts_data() && self.final_sigmas_type == FinalSigmasType::Zero {
            return Err(Error::config(
                "final_sigmas_type",
                "`zero` is not supported for algorithm_type `dpmsolver`; use `sigma_min`",
            ));
        }
        if !alg.predicts_data() && self.prediction_type == Prediction::FlowPrediction {
            return Err(Error::config(
                "prediction_type",
                "flow_prediction needs algorithm_type dpmsolver++ or sde-dpmsolver++",
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

/// diffusers' `get_order_list`: the solver order of every step.
///
/// Without `lower_order_final` the steps form whole blocks `[1, …, k]`; with it, the
/// schedule ends in shorter blocks so every block is complete. A zero final σ makes the
/// last step first order.
pub fn order_list(
    steps: usize,
    order: usize,
    lower_order_final: bool,
    final_zero: bool,
) -> Vec<usize> {
    let block: Vec<usize> = (1..=order).collect();
    let repeat =
        |k: usize| -> Vec<usize> { block.iter().copied().cycle().take(k * order).collect() };
    let mut orders = if lower_order_final {
        match order {
            3 => match steps % 3 {
                0 => [repeat((steps / 3).saturating_sub(1)), vec![1, 2], vec![1]].concat(),
                1 => [repeat(steps / 3), vec![1]].concat(),
                _ => [repeat(steps / 3), vec![1, 2]].concat(),
            },
            2 => {
                if steps.is_multiple_of(2) {
                    [repeat((steps / 2).saturating_sub(1)), vec![1, 1]].concat()
                } else {
                    [repeat(steps / 2), vec![1]].concat()
                }
            }
            _ => vec![1; steps],
        }
    } else {
        repeat(steps / order.max(1))
    };
    if final_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

/// diffusers' `DPMSolverSinglestepScheduler`, generic over the sample type because it keeps
/// the block's model outputs and its starting sample.
#[derive(Debug, Clone)]
pub struct DpmSolverSinglestepScheduler<S> {
    config: DpmSolverSinglestepConfig,
    train: TrainSigmas,
    /// Half log-SNR λ_t of every training timestep, in float32 as diffusers' `lambda_t`.
    train_lambdas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The schedule σs, the final σ appended.
    sigmas: Vec<f64>,
    /// The solver order of every step.
    orders: Vec<usize>,
    /// `None` until `set_timesteps`.
    num_inference_steps: Option<usize>,
    history: OutputHistory<S>,
    /// The sample at the start of the current block (diffusers' `self.sample`).
    block_start: Option<S>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> DpmSolverSinglestepScheduler<S> {
    /// Builds the scheduler. Before `set_timesteps` it holds diffusers' constructor
    /// schedule (every training timestep, highest first), usable by `add_noise`.
    pub fn from_config(config: DpmSolverSinglestepConfig) -> Result<Self> {
        config.validate()?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            false,
        )?;
        let train = TrainSigmas::from_schedule(&schedule, false);
        let train_lambdas = train
            .alphas_cumprod
            .iter()
            .map(|&a| {
                // torch float32: λ = log(√ᾱ) − log(√(1 − ᾱ)).
                let a = a as f32;
                (f64::from(a.sqrt()).ln() as f32) - (f64::from((1.0f32 - a).sqrt()).ln() as f32)
            })
            .collect();
        let n = config.num_train_timesteps;
        Ok(Self {
            timesteps: (0..n).rev().map(|t| t as f64).collect(),
            sigmas: train.sigmas.clone(),
            orders: Vec::new(),
            history: OutputHistory::new(config.solver_order),
            train,
            train_lambdas,
            config,
            num_inference_steps: None,
            block_start: None,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(DpmSolverSinglestepConfig::default())
            .expect("the default DPMSolverSinglestepScheduler config is valid")
    }

    /// The configuration (`lower_order_final` and `flow_shift` reflect what
    /// `set_timesteps` changed, as in diffusers).
    pub fn config(&self) -> &DpmSolverSinglestepConfig {
        &self.config
    }

    /// The solver order of every step of the current schedule.
    pub fn orders(&self) -> &[usize] {
        &self.orders
    }

    fn algorithm(&self) -> AlgorithmType {
        self.config.algorithm_type.into()
    }

    fn node(&self, sigma: f64) -> Node {
        let (a, s) = alpha_sigma(sigma, self.config.use_flow_sigmas);
        Node::new(a, s)
    }

    fn layout(&self) -> VpLayout {
        let c = &self.config;
        if c.use_karras_sigmas {
            VpLayout::Karras
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

    /// Timesteps and σs of a request, as diffusers' `set_timesteps`.
    fn build(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = &self.config;
        if request.sigmas.is_some() {
            return Err(Error::argument(
                "sigmas",
                "DPMSolverSinglestepScheduler does not take custom sigmas; pass timesteps or a step count",
            ));
        }
        let layout = self.layout();
        match (request.num_inference_steps, request.timesteps.as_deref()) {
            (None, None) | (Some(_), Some(_)) => Err(Error::argument(
                "num_inference_steps",
                "pass exactly one of `num_inference_steps` or `timesteps`",
            )),
            (None, Some(custom)) => {
                if let Some(flag) = layout.flag_name() {
                    return Err(Error::argument(
                        "timesteps",
                        format!("custom timesteps cannot be combined with `{flag}`"),
                    ));
                }
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
                // clipped_idx = searchsorted(flip(λ), lambda_min_clipped), float32 compare.
                let clip = f64::from(c.lambda_min_clipped as f32);
                let clipped = self
                    .train_lambdas
                    .iter()
                    .filter(|&&l| f64::from(l) < clip)
                    .count();
                if clipped >= c.num_train_timesteps {
                    return Err(Error::config(
                        "lambda_min_clipped",
                        "clips every training timestep; lower it",
                    ));
                }
                // np.linspace(0, T − 1 − clipped_idx, n + 1).round()[::-1][:-1]
                let top = (c.num_train_timesteps - 1 - clipped) as f64;
                let mut ts: Vec<f64> = linspace_f64(0.0, top, n + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .collect();
                ts.reverse();
                ts.truncate(n);
                // The singlestep scheduler rounds Karras inversions on every schedule.
                Ok(vp_inference_schedule(
                    &self.train,
                    layout,
                    n,
                    ts,
                    true,
                    c.final_sigmas_type,
                ))
            }
        }
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

impl<S: SampleTensor> Default for DpmSolverSinglestepScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for DpmSolverSinglestepScheduler<S> {
    fn class_name(&self) -> &'static str {
        DpmSolverSinglestepConfig::CLASS_NAME
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
        self.algorithm().is_sde()
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
                    "DPMSolverSinglestepScheduler implements only time_shift_type `exponential`",
                ));
            }
            if !mu.is_finite() {
                return Err(Error::argument("mu", format!("must be finite, got {mu}")));
            }
            // diffusers writes exp(μ) into its config's flow_shift, where it stays.
            self.config.flow_shift = mu.exp();
        }
        let (timesteps, sigmas) = self.build(request)?;
        let n = timesteps.len();
        let c = &mut self.config;
        if !c.lower_order_final && n % c.solver_order != 0 {
            log::warn!(
                "DPMSolverSinglestepScheduler: {n} steps are not a multiple of solver_order {}; \
                 setting lower_order_final = true",
                c.solver_order
            );
            c.lower_order_final = true;
        }
        if !c.lower_order_final && c.final_sigmas_type == FinalSigmasType::Zero {
            log::warn!(
                "DPMSolverSinglestepScheduler: final_sigmas_type `zero` needs lower_order_final; \
                 setting lower_order_final = true"
            );
            c.lower_order_final = true;
        }
        self.orders = order_list(
            n,
            c.solver_order,
            c.lower_order_final,
            c.final_sigmas_type == FinalSigmasType::Zero,
        );
        self.num_inference_steps = Some(n);
        self.history = OutputHistory::new(c.solver_order);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.block_start = None;
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
        let class = DpmSolverSinglestepConfig::CLASS_NAME;
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
        let Some(&listed) = self.orders.get(index) else {
            return Err(Error::State(format!(
                "{class}: all {} timesteps have been stepped through; call set_timesteps again",
                self.timesteps.len()
            )));
        };
        let alg = self.algorithm();
        let noise = step_noise(alg, noise, sample, class)?;
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
        let solver_type = c.solver_type;
        let here = self.node(self.schedule_sigma(index)?);
        let pred_original = data_from_converted(alg, &converted, sample, here);
        // Nodes [t = index + 1, index, index − 1, index − 2] as far as the order needs.
        let node_at = |k: usize| -> Result<Node> {
            let i = (index + 1).checked_sub(k).ok_or_else(|| {
                Error::State(format!(
                    "{class}: schedule point {k} back from step {index}"
                ))
            })?;
            Ok(self.node(self.schedule_sigma(i)?))
        };
        // diffusers: `while model_outputs[-order] is None: order -= 1` after storing this
        // output, i.e. the order falls back while the block's history is short (a start
        // part-way through a block). Before the push, entry `order − 2` is that entry.
        let mut order = listed;
        while order > 1 && (self.history.newest(order - 2).is_none() || index + 1 < order) {
            order -= 1;
        }
        let nodes: Vec<Node> = (0..=order).map(node_at).collect::<Result<_>>()?;
        let start = if order == 1 {
            sample.clone()
        } else {
            self.block_start.clone().ok_or_else(|| {
                Error::State(format!("{class}: order-{order} step without a block start"))
            })?
        };
        self.history.push(converted);
        let prev_sample = if order == 1 {
            let m = self.history.newest_n(1)?;
            first_order_update(alg, nodes[0], nodes[1], &start, m[0], noise)
        } else {
            let outputs = self.history.newest_n(order)?;
            singlestep_update(alg, solver_type, &nodes, &outputs, &start, noise)?
        };
        if order == 1 {
            self.block_start = Some(start);
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

    type Sched = DpmSolverSinglestepScheduler<HostTensor>;

    fn sched(cfg: Value) -> Result<Sched> {
        Sched::from_config(crate::config::parse_config(&cfg)?)
    }

    fn x(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn order_lists_match_diffusers() {
        // diffusers 0.42.1 `order_list` after set_timesteps.
        let orders = |cfg: Value, n: usize| {
            let mut s = sched(cfg).unwrap();
            Scheduler::<HostTensor>::set_timesteps(&mut s, n).unwrap();
            (s.orders.clone(), s.config.lower_order_final)
        };
        assert_eq!(
            orders(json!({"solver_order": 3}), 8),
            (vec![1, 2, 3, 1, 2, 3, 1, 1], true)
        );
        assert_eq!(
            orders(
                json!({"solver_order": 3, "final_sigmas_type": "sigma_min"}),
                9
            ),
            (vec![1, 2, 3, 1, 2, 3, 1, 2, 3], false)
        );
        assert_eq!(
            orders(
                json!({"solver_order": 2, "final_sigmas_type": "sigma_min"}),
                8
            ),
            (vec![1, 2, 1, 2, 1, 2, 1, 2], false)
        );
        assert_eq!(
            orders(json!({"lower_order_final": true}), 8),
            (vec![1, 2, 1, 2, 1, 2, 1, 1], true)
        );
        // Uneven step counts switch lower_order_final on for good, as diffusers does.
        let mut s = sched(json!({"final_sigmas_type": "sigma_min"})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 7).unwrap();
        assert_eq!(s.orders, [1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(
            Scheduler::<HostTensor>::config_json(&s)["lower_order_final"],
            json!(true)
        );
        assert_eq!(order_list(3, 3, true, false), [1, 2, 1]);
        assert_eq!(order_list(1, 3, true, true), [1]);
    }

    #[test]
    fn clipped_timesteps_match_diffusers() {
        let mut s =
            sched(json!({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}))
                .unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
        assert_eq!(s.timesteps, [995.0, 829.0, 663.0, 498.0, 332.0, 166.0]);
        assert!((s.sigmas[0] - 160.41366577148438).abs() < 1e-4);
    }

    #[test]
    fn third_order_run_matches_diffusers() {
        let mut s = sched(json!({"solver_order": 3, "beta_schedule": "scaled_linear",
                                 "beta_start": 0.00085, "beta_end": 0.012}))
        .unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
        let mut xs = x(&[1.0, -0.5, 0.25]);
        for t in s.timesteps().to_vec() {
            let out = xs.scale(0.5).add_scalar(0.1);
            xs = s.step(&out, t, &xs, None).unwrap().prev_sample;
        }
        let want = [2.2983672618865967, -1.9031926393508911, 0.19758760929107666];
        for (g, w) in xs.data().iter().zip(want) {
            assert!((g - w).abs() < 2e-5 * w.abs().max(1.0), "{xs:?}");
        }
    }

    #[test]
    fn sde_dpmsolver_is_not_offered() {
        let e = sched(json!({"algorithm_type": "sde-dpmsolver"}))
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("unknown variant `sde-dpmsolver`"), "{msg}");
        assert!(msg.contains("`sde-dpmsolver++`"), "{msg}");
    }

    #[test]
    fn error_cases() {
        let e = sched(json!({"solver_order": 4})).err().unwrap();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "solver_order"),
            "{e}"
        );
        let mut s = Sched::new();
        assert!(matches!(
            s.step(&x(&[0.0]), 999.0, &x(&[0.0]), None),
            Err(Error::State(_))
        ));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 0),
            Err(Error::InvalidArgument { .. })
        ));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        let t = s.timesteps[0];
        assert!(matches!(
            s.step(&x(&[f64::INFINITY]), t, &x(&[0.0]), None),
            Err(Error::NonFinite { .. })
        ));
        let mut sde = sched(json!({"algorithm_type": "sde-dpmsolver++"})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut sde, 4).unwrap();
        let t = sde.timesteps[0];
        let e = sde.step(&x(&[0.1]), t, &x(&[1.0]), None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { argument, .. } if argument == "noise"),
            "{e}"
        );
        let mut k = sched(json!({"use_exponential_sigmas": true})).unwrap();
        let r = TimestepRequest::timesteps(vec![900.0, 100.0]);
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps_with(&mut k, &r),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn starting_mid_block_falls_back_to_first_order() {
        // img2img start on a second-order step of the list: the history is empty, so the
        // step is first order and starts a block, as in diffusers.
        let mut s = sched(json!({"solver_order": 2})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
        Scheduler::<HostTensor>::set_begin_index(&mut s, 1);
        let mut xs = x(&[0.5]);
        let ts = s.timesteps[1..].to_vec();
        for t in ts {
            xs = s.step(&xs.scale(0.3), t, &xs, None).unwrap().prev_sample;
        }
        assert!(xs.all_finite());
    }
}
