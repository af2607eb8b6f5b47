//! diffusers' `EDMEulerScheduler` (`scheduling_edm_euler.py`): Euler steps on the
//! probability-flow ODE in the EDM formulation of Karras et al. (2022), "Elucidating the
//! Design Space of Diffusion-Based Generative Models" (Algorithm 2 with its "churn").
//!
//! EDM works directly in σ with `x = x₀ + σ ε` and a preconditioned network (table 1):
//!
//! ```text
//! c_skip = σ_d² / (σ² + σ_d²)      c_out = σ σ_d / √(σ² + σ_d²)   (−… for v-prediction)
//! c_in   = 1 / √(σ² + σ_d²)        c_noise = ¼ ln σ
//! D(x; σ) = c_skip x + c_out F(c_in x; c_noise)
//! ```
//!
//! The model sees `c_in·x` (`scale_model_input`) and the timesteps *are* the `c_noise`
//! values. The noise levels follow Karras' ρ-schedule (eq. 5) or, for CosXL, a schedule
//! uniform in log σ. One step from σ_i to σ_{i+1} (with churn γ, see [`EdmEulerConfig::s_churn`]):
//!
//! ```text
//! σ̂ = σ_i (1 + γ),  x̂ = x + √(σ̂² − σ_i²)·S_noise·z     (only when γ > 0)
//! x_next = x̂ + (σ_{i+1} − σ̂)·(x̂ − D(x̂; σ̂))/σ̂
//! ```
//!
//! where, as in diffusers, `D` uses the model output computed at σ_i.
//!
//! # Notes on diffusers' behaviour kept here
//! - `init_noise_sigma` is `√(σ_max² + 1)`.
//! - diffusers takes `s_churn`, `s_tmin`, `s_tmax`, `s_noise` as `step()` arguments; Ember
//!   keeps them as config keys (written only when they differ from diffusers' defaults).
//!
//! # Deliberate differences from diffusers
//! - Custom `sigmas` are noise levels, as everywhere in Ember: the full decreasing list with
//!   the final σ included (diffusers' `EulerDiscreteScheduler` convention). diffusers'
//!   `EDMEulerScheduler` feeds them to its σ formula as a *ramp* in [0, 1] instead (for the
//!   exponential schedule only their count matters), which contradicts its own docstring.
//! - `add_noise` before `set_timesteps` converts each timestep back to σ = e^{4t} (diffusers
//!   looks it up in its constructor schedule, which gives the same σ for its own timesteps).
//! - `step` and `scale_model_input` need `set_timesteps` first (diffusers steps through its
//!   constructor schedule of `num_train_timesteps + 1` σs).

use crate::config::SchedulerConfig;
use crate::sigma_schedule::{check_custom_sigmas, f32r, index_for_timestep};
use crate::vp_solver::FinalSigmasType;
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// diffusers' `sigma_schedule` of the EDM schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EdmSigmaSchedule {
    /// Karras et al. (2022) eq. 5: σ_i = (σ_max^{1/ρ} + rᵢ(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
    #[default]
    #[serde(rename = "karras")]
    Karras,
    /// σ uniform in log σ from σ_max to σ_min (k-diffusion's `get_sigmas_exponential`,
    /// used by CosXL).
    #[serde(rename = "exponential")]
    Exponential,
}

/// EDM's preconditioning (Karras et al. 2022, table 1) for data standard deviation σ_d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmPreconditioning {
    /// σ_d, the standard deviation of the data.
    pub sigma_data: f64,
    /// How the network output F is read: `epsilon` (c_out > 0) or `v_prediction` (c_out < 0).
    pub prediction: Prediction,
}

impl EdmPreconditioning {
    /// c_in = 1/√(σ² + σ_d²): scales the network input to unit variance.
    pub fn c_in(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }
    /// c_skip = σ_d²/(σ² + σ_d²).
    pub fn c_skip(&self, sigma: f64) -> f64 {
        let sd2 = self.sigma_data * self.sigma_data;
        sd2 / (sigma * sigma + sd2)
    }
    /// c_out = ±σ σ_d/√(σ² + σ_d²) (negative for v-prediction).
    pub fn c_out(&self, sigma: f64) -> Result<f64> {
        let mag =
            sigma * self.sigma_data / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt();
        match self.prediction {
            Prediction::Epsilon => Ok(mag),
            Prediction::VPrediction => Ok(-mag),
            p => Err(Error::config(
                "prediction_type",
                format!(
                    "EDM preconditioning supports epsilon and v_prediction, not `{}`",
                    p.name()
                ),
            )),
        }
    }
    /// The denoiser D(x; σ) = c_skip x + c_out F (diffusers' `precondition_outputs`).
    pub fn denoise<S: SampleTensor>(&self, sample: &S, model_output: &S, sigma: f64) -> Result<S> {
        Ok(S::lin_comb(&[
            (self.c_skip(sigma), sample),
            (self.c_out(sigma)?, model_output),
        ]))
    }
}

/// c_noise = ¼ ln σ, in float32 as diffusers computes its timesteps.
pub fn edm_c_noise(sigma: f64) -> f64 {
    let ln = f64::from(sigma as f32).ln() as f32;
    f64::from(0.25f32 * ln)
}

/// `torch.linspace(start, end, n, dtype=float64)`: torch's CPU kernel fills the first half
/// as `start + i·step` and the second half as `end − (n − 1 − i)·step`.
pub fn torch_linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n as f64 - 1.0);
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        start + step * i as f64
                    } else {
                        end - step * (n - 1 - i) as f64
                    }
                })
                .collect()
        }
    }
}

/// Exponential EDM σs as diffusers builds them: `torch.linspace(ln σ_min, ln σ_max, n)` in
/// float32, `exp` in float32, reversed.
pub fn edm_exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = crate::schedule::linspace_f32(sigma_min.ln(), sigma_max.ln(), n)
        .into_iter()
        .map(|l| f64::from(l.exp()))
        .collect();
    v.reverse();
    v
}

/// The most inference steps the EDM schedulers lay out. EDM's σ grid is continuous, so
/// diffusers accepts any count; this only keeps absurd requests from exhausting memory.
pub const MAX_EDM_STEPS: usize = 1_000_000;

/// Checks an EDM step count: at least 1, at most [`MAX_EDM_STEPS`].
pub fn check_step_count(n: usize) -> Result<()> {
    crate::schedule::check_inference_steps_at_most(n, MAX_EDM_STEPS)
}

/// Checks the shared EDM config values.
pub fn check_edm_config(sigma_min: f64, sigma_max: f64, sigma_data: f64, rho: f64) -> Result<()> {
    for (name, v) in [
        ("sigma_min", sigma_min),
        ("sigma_max", sigma_max),
        ("sigma_data", sigma_data),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::config(
                name,
                format!("must be finite and positive, got {v}"),
            ));
        }
    }
    if sigma_min >= sigma_max {
        return Err(Error::config(
            "sigma_min",
            format!("must be below sigma_max ({sigma_min} >= {sigma_max})"),
        ));
    }
    if !(rho.is_finite() && rho > 0.0) {
        return Err(Error::config(
            "rho",
            format!("must be finite and positive, got {rho}"),
        ));
    }
    Ok(())
}

/// Configuration of [`EdmEulerScheduler`]: diffusers' keys and defaults, plus the churn
/// parameters of `step()` as Ember-only keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdmEulerConfig {
    /// Smallest noise level σ_min (0.002 in the EDM paper).
    pub sigma_min: f64,
    /// Largest noise level σ_max (80 in the EDM paper).
    pub sigma_max: f64,
    /// Standard deviation of the data σ_d (0.5 in the EDM paper).
    pub sigma_data: f64,
    /// The σ spacing: `karras` or `exponential`.
    pub sigma_schedule: EdmSigmaSchedule,
    /// Number of training timesteps (the length of the constructor's schedule).
    pub num_train_timesteps: usize,
    /// The network's parameterisation: `epsilon` or `v_prediction`.
    pub prediction_type: Prediction,
    /// ρ of the Karras schedule.
    pub rho: f64,
    /// The σ the last step ends at.
    pub final_sigmas_type: FinalSigmasType,
    /// Ember extension (a `step()` argument in diffusers): Karras' S_churn, the total
    /// amount of noise re-injected; 0 keeps the sampler deterministic.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_churn: f64,
    /// Ember extension: churn only where σ ≥ `s_tmin`.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_tmin: f64,
    /// Ember extension: churn only where σ ≤ `s_tmax` (`None`: no limit, diffusers' `inf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_tmax: Option<f64>,
    /// Ember extension: Karras' S_noise, the scale of the churn noise.
    #[serde(skip_serializing_if = "is_one")]
    pub s_noise: f64,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for EdmEulerConfig {
    fn default() -> Self {
        Self {
            sigma_min: 0.002,
            sigma_max: 80.0,
            sigma_data: 0.5,
            sigma_schedule: EdmSigmaSchedule::Karras,
            num_train_timesteps: 1000,
            prediction_type: Prediction::Epsilon,
            rho: 7.0,
            final_sigmas_type: FinalSigmasType::Zero,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: None,
            s_noise: 1.0,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for EdmEulerConfig {
    const CLASS_NAME: &'static str = "EDMEulerScheduler";
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
                    "EDMEulerScheduler supports epsilon and v_prediction, not `{}`",
                    self.prediction_type.name()
                ),
            ));
        }
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return Err(Error::config("s_churn", "must be finite and non-negative"));
        }
        if !self.s_noise.is_finite() {
            return Err(Error::config("s_noise", "must be finite"));
        }
        if self.s_tmin.is_nan() || self.s_tmax.is_some_and(f64::is_nan) {
            return Err(Error::config("s_tmin/s_tmax", "must not be NaN"));
        }
        Ok(())
    }
}

/// diffusers' `EDMEulerScheduler`.
#[derive(Debug, Clone)]
pub struct EdmEulerScheduler {
    config: EdmEulerConfig,
    /// The c_noise timesteps, one per step.
    timesteps: Vec<f64>,
    /// σ per step, the final σ appended (float32 values).
    sigmas: Vec<f64>,
    ready: bool,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl EdmEulerScheduler {
    /// Builds the scheduler; stepping needs `set_timesteps` first.
    pub fn from_config(config: EdmEulerConfig) -> Result<Self> {
        config.validate()?;
        // diffusers' constructor: the schedule over arange(T + 1)/T.
        let n = config.num_train_timesteps;
        let ramp: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
        let mut s = Self {
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            ready: false,
            step_index: None,
            begin_index: None,
        };
        let (timesteps, sigmas) = s.schedule(&ramp);
        s.timesteps = timesteps;
        s.sigmas = sigmas;
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(EdmEulerConfig::default())
            .expect("the default EDMEulerScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &EdmEulerConfig {
        &self.config
    }

    fn precond(&self) -> EdmPreconditioning {
        EdmPreconditioning {
            sigma_data: self.config.sigma_data,
            prediction: self.config.prediction_type,
        }
    }

    /// σs for `ramp` (float32 values) with the final σ appended, and their c_noise
    /// timesteps.
    fn schedule(&self, ramp: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let c = &self.config;
        let mut sigmas: Vec<f64> = match c.sigma_schedule {
            EdmSigmaSchedule::Karras => {
                // float64 maths (`sigmas_dtype`), then a float32 cast.
                let (lo, hi) = (c.sigma_min.powf(1.0 / c.rho), c.sigma_max.powf(1.0 / c.rho));
                ramp.iter()
                    .map(|&r| f32r((hi + r * (lo - hi)).powf(c.rho)))
                    .collect()
            }
            EdmSigmaSchedule::Exponential => {
                edm_exponential_sigmas(c.sigma_min, c.sigma_max, ramp.len())
            }
        };
        let timesteps = sigmas.iter().map(|&s| edm_c_noise(s)).collect();
        let last = match c.final_sigmas_type {
            FinalSigmasType::SigmaMin => sigmas.last().copied().unwrap_or(0.0),
            FinalSigmasType::Zero => 0.0,
        };
        sigmas.push(last);
        (timesteps, sigmas)
    }

    /// Karras' γ at noise level `sigma` (0 outside `[s_tmin, s_tmax]`).
    fn gamma(&self, sigma: f64) -> f64 {
        let c = &self.config;
        let in_range = c.s_tmin <= sigma && sigma <= c.s_tmax.unwrap_or(f64::INFINITY);
        // diffusers divides by len(sigmas) − 1, the number of steps.
        let n = self.sigmas.len().saturating_sub(1).max(1) as f64;
        if in_range {
            (c.s_churn / n).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// The index of the step at `timestep`, initialising it on first use.
    fn current_index(&mut self, timestep: f64) -> Result<usize> {
        if !self.ready {
            return Err(Error::State(format!(
                "{}: call set_timesteps before scale_model_input/step",
                EdmEulerConfig::CLASS_NAME
            )));
        }
        let index = match (self.step_index, self.begin_index) {
            (Some(i), _) => i,
            (None, Some(b)) => b,
            (None, None) => index_for_timestep(&self.timesteps, timestep)?,
        };
        if index >= self.timesteps.len() {
            return Err(Error::State(format!(
                "{}: all {} timesteps have been stepped through; call set_timesteps again",
                EdmEulerConfig::CLASS_NAME,
                self.timesteps.len()
            )));
        }
        self.step_index = Some(index);
        Ok(index)
    }
}

impl Default for EdmEulerScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for EdmEulerScheduler {
    fn class_name(&self) -> &'static str {
        EdmEulerConfig::CLASS_NAME
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
        self.config.s_churn > 0.0
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let class = EdmEulerConfig::CLASS_NAME;
        if request.mu.is_some() {
            return Err(Error::argument(
                "mu",
                format!("{class} has no dynamic shifting"),
            ));
        }
        if request.timesteps.is_some() {
            return Err(Error::argument(
                "timesteps",
                format!("{class} takes a step count or sigmas, not timesteps"),
            ));
        }
        let (timesteps, sigmas) = match (&request.sigmas, request.num_inference_steps) {
            (Some(_), Some(_)) => {
                return Err(Error::argument(
                    "sigmas",
                    "pass only one of `num_inference_steps` and `sigmas`",
                ))
            }
            (None, None) => {
                return Err(Error::argument(
                    "num_inference_steps",
                    "pass a step count or sigmas",
                ))
            }
            (Some(custom), None) => {
                // Ember's convention for σ-space schedulers (diffusers' Euler): the full list,
                // final σ included, strictly decreasing; float32 like diffusers' tensors.
                check_custom_sigmas(custom)?;
                let sigmas: Vec<f64> = custom.iter().map(|&s| f32r(s)).collect();
                check_custom_sigmas(&sigmas)?;
                let ts = sigmas[..sigmas.len() - 1]
                    .iter()
                    .map(|&s| edm_c_noise(s))
                    .collect();
                (ts, sigmas)
            }
            (None, Some(0)) => {
                return Err(Error::argument("num_inference_steps", "must be at least 1"))
            }
            (None, Some(n)) => {
                check_step_count(n)?;
                self.schedule(&torch_linspace_f64(0.0, 1.0, n))
            }
        };
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.ready = true;
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
        let class = EdmEulerConfig::CLASS_NAME;
        if !self.ready {
            return Err(Error::State(format!(
                "{class}: call set_timesteps before step"
            )));
        }
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        let index = self.current_index(timestep)?;
        let sigma = self.sigmas[index];
        let gamma = self.gamma(sigma);
        let sigma_hat = sigma * (gamma + 1.0);
        let sample_hat = if gamma > 0.0 {
            let z = noise.ok_or_else(|| {
                Error::argument(
                    "noise",
                    format!("{class} with s_churn > 0 needs standard-normal noise at this step"),
                )
            })?;
            check_same_shape("noise", sample, z)?;
            let scale = self.config.s_noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            S::lin_comb(&[(1.0, sample), (scale, z)])
        } else {
            sample.clone()
        };
        let x0 = self
            .precond()
            .denoise(&sample_hat, model_output, sigma_hat)?;
        // Euler: x + (σ_next − σ̂)·(x̂ − x̂₀)/σ̂.
        let ratio = (self.sigmas[index + 1] - sigma_hat) / sigma_hat;
        let prev_sample = S::lin_comb(&[(1.0 + ratio, &sample_hat), (-ratio, &x0)]);
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
            index_for_timestep,
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

/// diffusers' `add_noise` of the EDM schedulers: `x₀ + σ ε`, σ looked up per timestep in
/// the inference schedule (`lookup`), or at the current step / `begin_index` once those are
/// set. Without a schedule (`None`, before `set_timesteps`), σ = e^{4t} inverts c_noise.
pub fn edm_add_noise<S: SampleTensor>(
    original: &S,
    noise: &S,
    timesteps: &[f64],
    schedule: Option<(&[f64], &[f64])>,
    begin_index: Option<usize>,
    step_index: Option<usize>,
    lookup: impl Fn(&[f64], f64) -> Result<usize>,
) -> Result<S> {
    check_same_shape("noise", original, noise)?;
    crate::dpm_solver::check_timestep_count(original, timesteps)?;
    let sigmas: Vec<f64> = match schedule {
        None => timesteps
            .iter()
            .map(|&t| {
                let s = (4.0 * t).exp();
                if s.is_finite() {
                    Ok(s)
                } else {
                    Err(Error::argument(
                        "timesteps",
                        format!("c_noise {t} gives σ = {s}"),
                    ))
                }
            })
            .collect::<Result<_>>()?,
        Some((ts, sig)) => {
            let indices: Vec<usize> = match (begin_index, step_index) {
                (None, _) => timesteps
                    .iter()
                    .map(|&t| lookup(ts, t))
                    .collect::<Result<_>>()?,
                (Some(_), Some(step)) => vec![step; timesteps.len()],
                (Some(begin), None) => vec![begin; timesteps.len()],
            };
            indices
                .iter()
                .map(|&i| {
                    sig.get(i).copied().ok_or_else(|| {
                        Error::State(format!(
                            "sigma index {i} is out of range ({} values)",
                            sig.len()
                        ))
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    Ok(original.add(&noise.scale_per_sample(&sigmas)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::HostTensor;
    use serde_json::json;

    fn sched(cfg: Value) -> Result<EdmEulerScheduler> {
        EdmEulerScheduler::from_config(crate::config::parse_config(&cfg)?)
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

    #[test]
    fn schedules_match_diffusers() {
        let mut s = EdmEulerScheduler::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        let ts = [
            1.0955066680908203,
            0.7159475088119507,
            0.23058997094631195,
            -0.4433530569076538,
            -1.553652048110962,
        ];
        assert!(close(&s.timesteps, &ts, 1e-7), "{:?}", s.timesteps);
        assert!(close(
            &s.sigmas[..3],
            &[80.0, 17.52783203125, 2.51521897315979],
            1e-7
        ));
        assert_eq!((s.sigmas[4], s.sigmas[5]), (0.0020000000949949026, 0.0));
        let mut s = sched(json!({"sigma_schedule": "exponential"})).unwrap();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        assert!(close(
            &s.sigmas[..3],
            &[80.0, 5.656854152679443, 0.3999999761581421],
            1e-7
        ));
        assert!((Scheduler::<HostTensor>::init_noise_sigma(&s) - 6401f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn run_matches_diffusers() {
        let mut s = EdmEulerScheduler::new();
        Scheduler::<HostTensor>::set_timesteps(&mut s, 6).unwrap();
        let ins = Scheduler::<HostTensor>::init_noise_sigma(&s);
        let mut xs = x(&[ins, -0.5 * ins, 0.25 * ins]);
        for t in Scheduler::<HostTensor>::timesteps(&s).to_vec() {
            let input = s.scale_model_input(&xs, t).unwrap();
            let out = input.scale(0.5).add_scalar(0.1);
            xs = s.step(&out, t, &xs, None).unwrap().prev_sample;
        }
        let want = [
            0.6966851353645325,
            -0.23375554382801056,
            0.23146472871303558,
        ];
        assert!(close(xs.data(), &want, 2e-5), "{xs:?}");
    }

    #[test]
    fn churn_needs_noise() {
        let mut s = sched(json!({"s_churn": 2.0})).unwrap();
        assert!(Scheduler::<HostTensor>::is_stochastic(&s));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        let t = s.timesteps[0];
        let e = s.step(&x(&[0.1]), t, &x(&[1.0]), None).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { argument, .. } if argument == "noise"),
            "{e}"
        );
        assert!(s.step(&x(&[0.1]), t, &x(&[1.0]), Some(&x(&[0.2]))).is_ok());
        // Churn keys are Ember extensions, written only when set.
        let json = Scheduler::<HostTensor>::config_json(&s);
        assert_eq!(json["s_churn"], json!(2.0));
        assert!(
            Scheduler::<HostTensor>::config_json(&EdmEulerScheduler::new())
                .get("s_churn")
                .is_none()
        );
    }

    #[test]
    fn error_cases() {
        let mut s = EdmEulerScheduler::new();
        assert!(matches!(
            s.step(&x(&[0.0]), 1.0, &x(&[0.0]), None),
            Err(Error::State(_))
        ));
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps(&mut s, 0),
            Err(Error::InvalidArgument { .. })
        ));
        // Custom σs must decrease (a diffusers-style ramp [0, 1] is refused).
        let r = TimestepRequest::sigmas(vec![0.0, 1.0]);
        assert!(matches!(
            Scheduler::<HostTensor>::set_timesteps_with(&mut s, &r),
            Err(Error::InvalidArgument { .. })
        ));
        let r = TimestepRequest::sigmas(vec![10.0, 1.0, 0.0]);
        Scheduler::<HostTensor>::set_timesteps_with(&mut s, &r).unwrap();
        assert_eq!(s.sigmas, [10.0, 1.0, 0.0]);
        assert_eq!(s.timesteps[1], 0.0);
        Scheduler::<HostTensor>::set_timesteps(&mut s, 3).unwrap();
        let t = s.timesteps[0];
        assert!(matches!(
            s.step(&x(&[f64::NAN]), t, &x(&[0.0]), None),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            s.step(&x(&[0.0]), 42.0, &x(&[0.0]), None),
            Err(Error::InvalidArgument { .. })
        ));
        let e = sched(json!({"prediction_type": "sample"})).err().unwrap();
        assert!(e.to_string().contains("prediction_type"), "{e}");
        let e = sched(json!({"sigma_schedule": "linear"})).err().unwrap();
        assert!(e.to_string().contains("unknown variant `linear`"), "{e}");
    }

    #[test]
    fn add_noise_uses_the_schedule() {
        let mut s = EdmEulerScheduler::new();
        let x0 = x(&[1.0]);
        let z = x(&[1.0]);
        // Before set_timesteps: σ = e^{4t}.
        let y = s.add_noise(&x0, &z, &[0.25 * 2f64.ln()]).unwrap();
        assert!((y.data()[0] - 3.0).abs() < 1e-12);
        Scheduler::<HostTensor>::set_timesteps(&mut s, 5).unwrap();
        let t = s.timesteps[1];
        let y = s.add_noise(&x0, &z, &[t]).unwrap();
        assert_eq!(y.data()[0], 1.0 + s.sigmas[1]);
    }
}
