//! diffusers' `EDMDPMSolverMultistepScheduler` (`scheduling_edm_dpmsolver_multistep.py`):
//! multistep DPM-Solver++ (Lu et al. 2022b) on the EDM formulation of Karras et al. (2022).
//!
//! In EDM the model input is pre-scaled (`scale_model_input` multiplies by
//! c_in = 1/√(σ² + σ_d²)), so the solver sees `x = x₀ + σ ε`: α_t = 1, σ_t = σ and
//! λ_t = −ln σ. The network output is turned into x̂₀ with EDM's preconditioning
//! (c_skip, c_out; see [`crate::edm_euler::EdmPreconditioning`]), optionally thresholded,
//! and integrated with the DPM-Solver++ updates of [`crate::dpm_solver`] (shared with
//! `DPMSolverMultistepScheduler`). Timesteps are the c_noise values ¼ ln σ.
//!
//! The σs follow Karras' ρ-schedule or a schedule uniform in log σ; as in diffusers both
//! are computed from a float32 ramp, in float32.
//!
//! # Deliberate differences from diffusers
//! - `sde-dpmsolver++` with `solver_order = 3` takes the third-order SDE-DPM-Solver++
//!   update of `DPMSolverMultistepScheduler` (diffusers' EDM variant has no such branch and
//!   fails with `UnboundLocalError` at the third step).
//! - `prediction_type = "sample"` is rejected when the config is read (diffusers accepts it
//!   in the signature but raises at the first step).
//! - `pred_original_sample` (the preconditioned x̂₀) is returned; `add_noise` before
//!   `set_timesteps` converts each timestep back to σ = e^{4t}.

use crate::config::nullable::default_on_null;
use crate::config::SchedulerConfig;
use crate::dpm_solver::{
    check_solver_order, check_thresholding, first_order_update, multistep_order, multistep_update,
    step_noise, AlgorithmType, Node, OutputHistory, SolverType, Thresholding,
};
use crate::edm_euler::{
    check_edm_config, check_step_count, edm_add_noise, edm_c_noise, edm_exponential_sigmas,
    EdmPreconditioning, EdmSigmaSchedule,
};
use crate::schedule::linspace_f32;
use crate::sigma_schedule::f32r;
use crate::vp_solver::{multistep_index_for_timestep, FinalSigmasType};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' `algorithm_type` values of the EDM DPM-Solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EdmAlgorithmType {
    /// DPM-Solver++ (`"deis"` is read as this, as in diffusers).
    #[default]
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// Stochastic DPM-Solver++.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

impl From<EdmAlgorithmType> for AlgorithmType {
    fn from(a: EdmAlgorithmType) -> Self {
        match a {
            EdmAlgorithmType::DpmSolverPlusPlus => AlgorithmType::DpmSolverPlusPlus,
            EdmAlgorithmType::SdeDpmSolverPlusPlus => AlgorithmType::SdeDpmSolverPlusPlus,
        }
    }
}

/// Configuration of [`EdmDpmSolverMultistepScheduler`]: diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdmDpmSolverMultistepConfig {
    /// Smallest noise level σ_min.
    pub sigma_min: f64,
    /// Largest noise level σ_max.
    pub sigma_max: f64,
    /// Standard deviation of the data σ_d.
    pub sigma_data: f64,
    /// The σ spacing: `karras` or `exponential`.
    pub sigma_schedule: EdmSigmaSchedule,
    /// Number of training timesteps (the length of the constructor's schedule).
    pub num_train_timesteps: usize,
    /// The network's parameterisation: `epsilon` or `v_prediction`.
    pub prediction_type: Prediction,
    /// ρ of the Karras schedule.
    pub rho: f64,
    /// Solver order (1, 2 or 3).
    pub solver_order: usize,
    /// Apply Imagen's dynamic thresholding to x̂₀.
    #[serde(deserialize_with = "default_on_null")]
    pub thresholding: bool,
    /// The quantile of |x̂₀| used as threshold.
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold.
    pub sample_max_value: f64,
    /// `dpmsolver++` or `sde-dpmsolver++`.
    pub algorithm_type: EdmAlgorithmType,
    /// Second-order discretisation: `midpoint` or `heun`.
    pub solver_type: SolverType,
    /// Lower the order over the last steps of schedules shorter than 15 steps.
    #[serde(deserialize_with = "default_on_null")]
    pub lower_order_final: bool,
    /// Use a first-order (Euler) final step.
    #[serde(deserialize_with = "default_on_null")]
    pub euler_at_final: bool,
    /// The σ the last step ends at (`sigma_min` is the config's σ_min).
    pub final_sigmas_type: FinalSigmasType,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for EdmDpmSolverMultistepConfig {
    fn default() -> Self {
        Self {
            sigma_min: 0.002,
            sigma_max: 80.0,
            sigma_data: 0.5,
            sigma_schedule: EdmSigmaSchedule::Karras,
            num_train_timesteps: 1000,
            prediction_type: Prediction::Epsilon,
            rho: 7.0,
            solver_order: 2,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: EdmAlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            final_sigmas_type: FinalSigmasType::Zero,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for EdmDpmSolverMultistepConfig {
    const CLASS_NAME: &'static str = "EDMDPMSolverMultistepScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_edm_config(self.sigma_min, self.sigma_max, self.sigma_data, self.rho)?;
        if self.num_train_timesteps == 0 {
            return Err(Error::config("num_train_timesteps", "must be at least 1"));
        }
        if !matches!(
            self.prediction_type,
            Prediction::Epsilon | Prediction::VPrediction
        ) {
            return Err(Error::config(
                "prediction_type",
                format!(
                    "EDMDPMSolverMultistepScheduler supports epsilon and v_prediction, not `{}`",
                    self.prediction_type.name()
                ),
            ));
        }
        check_solver_order(self.solver_order)?;
        check_thresholding(
            self.thresholding,
            self.dynamic_thresholding_ratio,
            self.sample_max_value,
        )
    }
}

/// diffusers' `EDMDPMSolverMultistepScheduler`, generic over the sample type because it
/// keeps the last `solver_order` x̂₀ predictions.
#[derive(Debug, Clone)]
pub struct EdmDpmSolverMultistepScheduler<S> {
    config: EdmDpmSolverMultistepConfig,
    /// The c_noise timesteps, one per step.
    timesteps: Vec<f64>,
    /// σ per step, the final σ appended (float32 values).
    sigmas: Vec<f64>,
    ready: bool,
    history: OutputHistory<S>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl<S: SampleTensor> EdmDpmSolverMultistepScheduler<S> {
    /// Builds the scheduler; stepping needs `set_timesteps` first.
    pub fn from_config(config: EdmDpmSolverMultistepConfig) -> Result<Self> {
        config.validate()?;
        let mut s = Self {
            history: OutputHistory::new(config.solver_order),
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            ready: false,
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
        };
        // diffusers' constructor schedule: num_train_timesteps σs, final σ = 0.
        let mut sigmas = s.step_sigmas(s.config.num_train_timesteps);
        s.timesteps = sigmas.iter().map(|&x| edm_c_noise(x)).collect();
        sigmas.push(0.0);
        s.sigmas = sigmas;
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(EdmDpmSolverMultistepConfig::default())
            .expect("the default EDMDPMSolverMultistepScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &EdmDpmSolverMultistepConfig {
        &self.config
    }

    fn algorithm(&self) -> AlgorithmType {
        self.config.algorithm_type.into()
    }

    /// `n` σs from `torch.linspace(0, 1, n)` (float32), computed in float32 as diffusers does.
    fn step_sigmas(&self, n: usize) -> Vec<f64> {
        let c = &self.config;
        match c.sigma_schedule {
            EdmSigmaSchedule::Karras => {
                // (max_inv_rho + ramp·(min_inv_rho − max_inv_rho))^ρ with a float32 ramp:
                // the Python-float constants enter the float32 ops as float32.
                let lo = c.sigma_min.powf(1.0 / c.rho);
                let hi = c.sigma_max.powf(1.0 / c.rho);
                let (hi32, d32, rho32) = (hi as f32, (lo - hi) as f32, c.rho as f32);
                linspace_f32(0.0, 1.0, n)
                    .into_iter()
                    .map(|r| f64::from((hi32 + r * d32).powf(rho32)))
                    .collect()
            }
            EdmSigmaSchedule::Exponential => edm_exponential_sigmas(c.sigma_min, c.sigma_max, n),
        }
    }

    fn precond(&self) -> EdmPreconditioning {
        EdmPreconditioning {
            sigma_data: self.config.sigma_data,
            prediction: self.config.prediction_type,
        }
    }

    /// The EDM node of σ: α = 1, σ_t = σ, λ = −ln σ.
    fn node(sigma: f64) -> Node {
        Node::new(1.0, sigma)
    }

    fn current_index(&mut self, timestep: f64) -> Result<usize> {
        let class = EdmDpmSolverMultistepConfig::CLASS_NAME;
        if !self.ready {
            return Err(Error::State(format!(
                "{class}: call set_timesteps before scale_model_input/step"
            )));
        }
        let index = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => multistep_index_for_timestep(&self.timesteps, f32r(timestep)),
        };
        if index >= self.timesteps.len() {
            return Err(Error::State(format!(
                "{class}: all {} timesteps have been stepped through; call set_timesteps again",
                self.timesteps.len()
            )));
        }
        self.step_index = Some(index);
        Ok(index)
    }
}

impl<S: SampleTensor> Default for EdmDpmSolverMultistepScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for EdmDpmSolverMultistepScheduler<S> {
    fn class_name(&self) -> &'static str {
        EdmDpmSolverMultistepConfig::CLASS_NAME
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
        let class = EdmDpmSolverMultistepConfig::CLASS_NAME;
        if request.mu.is_some() || request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(Error::argument(
                "num_inference_steps",
                format!("{class} takes only a step count (no timesteps, sigmas or mu)"),
            ));
        }
        let n = request.num_inference_steps.unwrap_or(0);
        check_step_count(n)?;
        let mut sigmas = self.step_sigmas(n);
        self.timesteps = sigmas.iter().map(|&x| edm_c_noise(x)).collect();
        sigmas.push(match self.config.final_sigmas_type {
            FinalSigmasType::SigmaMin => f32r(self.config.sigma_min),
            FinalSigmasType::Zero => 0.0,
        });
        self.sigmas = sigmas;
        self.ready = true;
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
        (self.config.sigma_max * self.config.sigma_max + 1.0).sqrt()
    }
    fn scale_model_input(&mut self, sample: &S, timestep: f64) -> Result<S> {
        let index = self.current_index(timestep)?;
        Ok(sample.scale(self.precond().c_in(self.sigmas[index])))
    }

    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        let class = EdmDpmSolverMultistepConfig::CLASS_NAME;
        if !self.ready {
            return Err(Error::State(format!(
                "{class}: call set_timesteps before step"
            )));
        }
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        let index = self.current_index(timestep)?;
        let alg = self.algorithm();
        let noise = step_noise(alg, noise, sample, class)?;
        let c = &self.config;
        let order = multistep_order(
            c.solver_order,
            self.lower_order_nums,
            index,
            self.timesteps.len(),
            c.lower_order_final,
            c.euler_at_final,
            c.final_sigmas_type == FinalSigmasType::Zero,
        );
        // Nodes [t = index + 1, s0 = index, s1 = index − 1, s2 = index − 2].
        let nodes: Vec<Node> = (0..=order)
            .map(|k| {
                (index + 1)
                    .checked_sub(k)
                    .and_then(|i| self.sigmas.get(i))
                    .map(|&s| Self::node(s))
                    .ok_or_else(|| {
                        Error::State(format!("{class}: order {order} step at index {index}"))
                    })
            })
            .collect::<Result<_>>()?;
        let mut x0 = self
            .precond()
            .denoise(sample, model_output, self.sigmas[index])?;
        if c.thresholding {
            x0 = Thresholding {
                ratio: c.dynamic_thresholding_ratio,
                max_value: c.sample_max_value,
            }
            .apply(&x0);
        }
        let (solver_type, solver_order) = (c.solver_type, c.solver_order);
        self.history.push(x0.clone());
        let prev_sample = if order == 1 {
            first_order_update(alg, nodes[0], nodes[1], sample, &x0, noise)
        } else {
            let outputs = self.history.newest_n(order)?;
            multistep_update(alg, solver_type, &nodes, &outputs, sample, noise)?
        };
        if self.lower_order_nums < solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(index + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        edm_add_noise(
            original,
            noise,
            timesteps,
            self.ready
                .then_some((&self.timesteps[..], &self.sigmas[..])),
            self.begin_index,
            self.step_index,
            |schedule, t| Ok(multistep_index_for_timestep(schedule, f32r(t))),
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

    type Sched = EdmDpmSolverMultistepScheduler<HostTensor>;

    fn sched(cfg: Value) -> Result<Sched> {
        Sched::from_config(crate::config::parse_config(&cfg)?)
    }

    fn x(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn schedule_and_run_match_diffusers() {
        let mut s = Sched::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        // float32 Karras σs, as diffusers computes them from a float32 ramp.
        let want = [79.99998474121094, 17.527830123901367, 2.5152194499969482];
        assert_eq!(&s.sigmas[..3], &want);
        assert_eq!(s.sigmas[4], 0.0019999996293336153);
        assert!((s.timesteps[1] - 0.7159474492073059).abs() < 1e-7);

        Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
        let ins = s.init_noise_sigma();
        let mut xs = x(&[ins, -0.5 * ins, 0.25 * ins]);
        for t in s.timesteps().to_vec() {
            let input = s.scale_model_input(&xs, t).unwrap();
            let out = input.scale(0.5).add_scalar(0.1);
            xs = s.step(&out, t, &xs, None).unwrap().prev_sample;
        }
        let want = [1.0679302215576172, -0.3826863467693329, 0.34262192249298096];
        for (g, w) in xs.data().iter().zip(want) {
            assert!((g - w).abs() < 2e-5 * w.abs().max(1.0), "{xs:?}");
        }
    }

    #[test]
    fn sde_third_order_runs() {
        // diffusers fails here; Ember uses DPMSolverMultistep's third-order SDE update.
        let mut s = sched(json!({"algorithm_type": "sde-dpmsolver++", "solver_order": 3})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 8).unwrap();
        let mut xs = x(&[80.0]);
        let z = x(&[0.3]);
        for t in s.timesteps().to_vec() {
            let input = s.scale_model_input(&xs, t).unwrap();
            xs = s
                .step(&input.scale(0.2), t, &xs, Some(&z))
                .unwrap()
                .prev_sample;
        }
        assert!(xs.all_finite());
    }

    #[test]
    fn error_cases() {
        let e = sched(json!({"solver_order": 0})).err().unwrap();
        assert!(
            matches!(&e, Error::InvalidConfig { field, .. } if field == "solver_order"),
            "{e}"
        );
        let e = sched(json!({"algorithm_type": "dpmsolver"})).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("unknown variant `dpmsolver`") && msg.contains("`sde-dpmsolver++`"),
            "{msg}"
        );
        let e = sched(json!({"prediction_type": "sample"})).err().unwrap();
        assert!(e.to_string().contains("prediction_type"), "{e}");
        let mut s = Sched::new();
        assert!(matches!(
            s.step(&x(&[0.0]), 1.0, &x(&[0.0]), None),
            Err(Error::State(_))
        ));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 0),
            Err(Error::InvalidArgument { .. })
        ));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 3).unwrap();
        let t = s.timesteps[0];
        assert!(matches!(
            s.step(&x(&[f64::NAN]), t, &x(&[0.0]), None),
            Err(Error::NonFinite { .. })
        ));
        let mut sde = sched(json!({"algorithm_type": "sde-dpmsolver++"})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut sde, 3).unwrap();
        let t = sde.timesteps[0];
        let e = sde.step(&x(&[0.1]), t, &x(&[1.0]), None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { argument, .. } if argument == "noise"),
            "{e}"
        );
    }
}
