//! diffusers' `FlowMatchEulerDiscreteScheduler`: Euler's method on the rectified-flow ODE
//! (SD3, Flux, LTX-Video, Mochi, Wan...).
//!
//! The model predicts the velocity v = ε − x₀ of the straight path
//! `x_σ = (1 − σ) x₀ + σ ε`, so dx/dσ = v and one Euler step from σ to σ' is
//!
//! ```text
//! x_{σ'} = x_σ + (σ' − σ) · v                                   (deterministic)
//! x_{σ'} = (1 − σ') x̂₀ + σ' ε',   x̂₀ = x_σ − σ v,  ε' ~ N(0, I)   (stochastic_sampling)
//! ```
//!
//! The σ grid is `linspace(σ_max, σ_min)` of the training table, reshaped by a constant
//! shift, a resolution-dependent shift μ, a terminal stretch and optionally Karras /
//! exponential / beta spacing (see [`crate::flow_sigmas`]); timesteps are σ·T.

use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::SchedulerConfig;
use crate::flow_sigmas::{
    flow_index_for_timestep, shift_sigma, stretch_to_terminal, time_shift, train_flow_sigmas,
    Precision, TimeShiftType,
};
use crate::sigmas::{beta_sigmas, exponential_sigmas, karras_sigmas, KARRAS_RHO};
use crate::vp_solver::{check_decreasing, check_step_count, check_train_timesteps, to_f32};

/// Configuration of [`FlowMatchEulerDiscreteScheduler`], with diffusers' keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteConfig {
    /// Number of training timesteps T (timesteps are σ·T).
    pub num_train_timesteps: usize,
    /// The constant shift s of SD3 eq. 23 (ignored when `use_dynamic_shifting`).
    pub shift: f64,
    /// Shift with the resolution-dependent μ passed to `set_timesteps` instead of `shift`.
    pub use_dynamic_shifting: bool,
    /// μ at `base_image_seq_len` tokens (used by pipelines to compute μ, see [`Self::mu_for_seq_len`]).
    pub base_shift: Option<f64>,
    /// μ at `max_image_seq_len` tokens.
    pub max_shift: Option<f64>,
    /// The sequence length at which μ = `base_shift`.
    pub base_image_seq_len: usize,
    /// The sequence length at which μ = `max_shift`.
    pub max_image_seq_len: usize,
    /// Use 1 − σ as the schedule (Mochi), ending at σ = 1 instead of 0.
    pub invert_sigmas: bool,
    /// Stretch the shifted schedule so it ends at this σ (LTX-Video); `null`/0 disables it.
    pub shift_terminal: Option<f64>,
    /// Respace the σs à la Karras et al. (2022) between the schedule's ends.
    pub use_karras_sigmas: bool,
    /// Respace the σs evenly in log σ.
    pub use_exponential_sigmas: bool,
    /// Respace the σs by the Beta(0.6, 0.6) quantiles (Lee et al. 2024).
    pub use_beta_sigmas: bool,
    /// The form of the μ shift.
    pub time_shift_type: TimeShiftType,
    /// Re-noise x̂₀ to σ' with fresh noise at every step instead of the Euler update.
    pub stochastic_sampling: bool,
    /// Keys Ember does not use, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for FlowMatchEulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
            extra: Map::new(),
        }
    }
}

impl FlowMatchEulerDiscreteConfig {
    /// The dynamic-shift μ diffusers' pipelines compute for `image_seq_len` tokens
    /// (`calculate_shift`): linear in the sequence length, `base_shift` at
    /// `base_image_seq_len` and `max_shift` at `max_image_seq_len`. `None` when either
    /// shift is unset or the two lengths are equal.
    pub fn mu_for_seq_len(&self, image_seq_len: usize) -> Option<f64> {
        let (base, max) = (self.base_shift?, self.max_shift?);
        let (l0, l1) = (
            self.base_image_seq_len as f64,
            self.max_image_seq_len as f64,
        );
        if l1 == l0 {
            return None;
        }
        let m = (max - base) / (l1 - l0);
        let b = base - m * l0;
        Some(image_seq_len as f64 * m + b)
    }

    /// The terminal stretch target, when enabled (diffusers tests it for truthiness, so 0
    /// disables it as `null` does).
    pub(crate) fn terminal(&self) -> Option<f64> {
        self.shift_terminal.filter(|&t| t != 0.0)
    }
}

/// Checks the options shared by the σ respacings of every flow scheduler config.
pub(crate) fn check_one_respacing(karras: bool, exponential: bool, beta: bool) -> Result<()> {
    if [karras, exponential, beta].iter().filter(|&&b| b).count() > 1 {
        return Err(Error::config(
            "use_karras_sigmas/use_exponential_sigmas/use_beta_sigmas",
            "only one of them can be enabled",
        ));
    }
    Ok(())
}

impl SchedulerConfig for FlowMatchEulerDiscreteConfig {
    const CLASS_NAME: &'static str = "FlowMatchEulerDiscreteScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        check_train_timesteps(self.num_train_timesteps)?;
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(Error::config(
                "shift",
                format!("must be a positive number, got {}", self.shift),
            ));
        }
        if let Some(t) = self.terminal() {
            if !(t.is_finite() && t < 1.0) {
                return Err(Error::config(
                    "shift_terminal",
                    format!("must be below 1, got {t}"),
                ));
            }
        }
        check_one_respacing(
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        )
    }
}

/// Respaces a σ schedule (in decreasing order) between its ends as configured; the
/// result is float64, as diffusers' `_convert_to_*` return numpy float64 arrays.
pub(crate) fn respace(sigmas: Vec<f64>, karras: bool, exponential: bool, beta: bool) -> Vec<f64> {
    let n = sigmas.len();
    let (hi, lo) = match (sigmas.first(), sigmas.last()) {
        (Some(&hi), Some(&lo)) => (hi, lo),
        _ => return sigmas,
    };
    if karras {
        karras_sigmas(lo, hi, n, KARRAS_RHO)
    } else if exponential {
        exponential_sigmas(lo, hi, n)
    } else if beta {
        beta_sigmas(lo, hi, n, 0.6, 0.6)
    } else {
        sigmas
    }
}

/// Euler sampler for flow-matching models (diffusers' `FlowMatchEulerDiscreteScheduler`).
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteConfig,
    /// The constant shift in use (`set_shift` changes it without touching the config).
    shift: f64,
    /// σ_max / σ_min of the training table (the ends of the default inference grid).
    sigma_max: f64,
    sigma_min: f64,
    timesteps: Vec<f64>,
    /// One σ per timestep plus the terminal one (0, or 1 with `invert_sigmas`).
    sigmas: Vec<f64>,
    num_inference_steps: Option<usize>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl FlowMatchEulerDiscreteScheduler {
    /// Builds the scheduler from a validated configuration.
    pub fn from_config(config: FlowMatchEulerDiscreteConfig) -> Result<Self> {
        config.validate()?;
        // diffusers builds the training table in float32 and shifts it unless dynamic
        // shifting will shift it per call; σ_max/σ_min are read from that table.
        let (sigmas, timesteps) = train_flow_sigmas(
            config.num_train_timesteps,
            config.shift,
            !config.use_dynamic_shifting,
        );
        // train_flow_sigmas returns T ≥ 1 entries (validated above).
        let (sigma_max, sigma_min) = (sigmas[0], sigmas[sigmas.len() - 1]);
        Ok(Self {
            shift: config.shift,
            config,
            sigma_max,
            sigma_min,
            timesteps,
            sigmas,
            num_inference_steps: None,
            step_index: None,
            begin_index: None,
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid.
        Self::from_config(FlowMatchEulerDiscreteConfig::default()).expect("default config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &FlowMatchEulerDiscreteConfig {
        &self.config
    }

    /// The constant shift used by the next `set_timesteps`.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// Changes the constant shift used by later `set_timesteps` calls (diffusers' `set_shift`).
    pub fn set_shift(&mut self, shift: f64) -> Result<()> {
        if !(shift.is_finite() && shift > 0.0) {
            return Err(Error::argument(
                "shift",
                format!("must be a positive number, got {shift}"),
            ));
        }
        self.shift = shift;
        Ok(())
    }

    fn lay_out(&self, request: &TimestepRequest) -> Result<(Vec<f64>, Vec<f64>)> {
        let cfg = &self.config;
        let t_train = cfg.num_train_timesteps as f64;
        let mu = match (cfg.use_dynamic_shifting, request.mu) {
            (true, None) => {
                return Err(Error::argument(
                    "mu",
                    "must be given when `use_dynamic_shifting` is enabled",
                ))
            }
            (true, Some(mu)) => {
                if !mu.is_finite() || (cfg.time_shift_type == TimeShiftType::Linear && mu <= 0.0) {
                    return Err(Error::argument(
                        "mu",
                        format!("invalid value {mu} for this time shift"),
                    ));
                }
                Some(mu)
            }
            (false, _) => None,
        };
        let custom_sigmas = request.sigmas.as_deref();
        let custom_timesteps = request.timesteps.as_deref();
        if let (Some(s), Some(t)) = (custom_sigmas, custom_timesteps) {
            if s.len() != t.len() {
                return Err(Error::argument(
                    "sigmas",
                    "`sigmas` and `timesteps` must have the same length",
                ));
            }
        }
        let n = match request.num_inference_steps {
            Some(n) => {
                if custom_sigmas.is_some_and(|s| s.len() != n)
                    || custom_timesteps.is_some_and(|t| t.len() != n)
                {
                    return Err(Error::argument(
                        "num_inference_steps",
                        "custom `sigmas`/`timesteps` must have num_inference_steps entries",
                    ));
                }
                n
            }
            None => custom_sigmas
                .or(custom_timesteps)
                .map(<[f64]>::len)
                .ok_or_else(|| {
                    Error::argument(
                        "num_inference_steps",
                        "give a step count, sigmas or timesteps",
                    )
                })?,
        };
        check_step_count(n)?;
        // Custom lists run from high noise to low (Mochi's `invert_sigmas` lists too: they
        // are inverted afterwards).
        for (name, values) in [("sigmas", custom_sigmas), ("timesteps", custom_timesteps)] {
            if let Some(v) = values {
                check_decreasing(v, name, &format!("the custom {name}"))?;
            }
        }
        // Custom inputs are float32 numpy arrays in diffusers, and the σ formulas then run
        // in float32; the σ grid diffusers builds itself (np.linspace) is float64.
        let custom_ts: Option<Vec<f64>> =
            custom_timesteps.map(|t| t.iter().map(|&x| to_f32(x)).collect());
        let (mut sigmas, p) = match (custom_sigmas, &custom_ts) {
            (Some(s), _) => (
                s.iter().map(|&x| to_f32(x)).collect::<Vec<_>>(),
                Precision::F32,
            ),
            (None, Some(ts)) => (
                ts.iter().map(|&t| to_f32(t / t_train)).collect(),
                Precision::F32,
            ),
            (None, None) => {
                let grid = crate::schedule::linspace_f64(
                    self.sigma_max * t_train,
                    self.sigma_min * t_train,
                    n,
                );
                (
                    grid.into_iter().map(|t| t / t_train).collect(),
                    Precision::F64,
                )
            }
        };
        // Shift: resolution-dependent μ, or the constant s.
        for s in sigmas.iter_mut() {
            *s = match mu {
                Some(mu) => time_shift(cfg.time_shift_type, mu, *s, p),
                None => shift_sigma(self.shift, *s, p),
            };
        }
        if let Some(terminal) = cfg.terminal() {
            stretch_to_terminal(&mut sigmas, terminal, p);
        }
        let sigmas = respace(
            sigmas,
            cfg.use_karras_sigmas,
            cfg.use_exponential_sigmas,
            cfg.use_beta_sigmas,
        );
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(to_f32).collect();
        let what = if custom_sigmas.is_some() {
            "the custom sigmas"
        } else {
            "the σ schedule"
        };
        check_decreasing(&sigmas, "sigmas", what)?;
        // Timesteps: the custom ones as given (float32), else σ·T in float32.
        let mut timesteps = match custom_ts {
            Some(ts) if !cfg.invert_sigmas => ts,
            _ => sigmas.iter().map(|&s| to_f32(s * t_train)).collect(),
        };
        if cfg.invert_sigmas {
            // Mochi's convention: the model sees 1 − σ; the schedule runs up to σ = 1.
            for s in sigmas.iter_mut() {
                *s = to_f32(1.0 - *s);
            }
            timesteps = sigmas.iter().map(|&s| to_f32(s * t_train)).collect();
            sigmas.push(1.0);
        } else {
            sigmas.push(0.0);
        }
        Ok((timesteps, sigmas))
    }

    fn init_step_index(&mut self, timestep: f64) -> Result<usize> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        let i = match self.begin_index {
            Some(b) => b,
            None => flow_index_for_timestep(&self.timesteps, timestep).ok_or_else(|| {
                Error::argument(
                    "timestep",
                    format!("{timestep} is not one of the scheduler's timesteps"),
                )
            })?,
        };
        self.step_index = Some(i);
        Ok(i)
    }
}

impl Default for FlowMatchEulerDiscreteScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for FlowMatchEulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        FlowMatchEulerDiscreteConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        crate::config::config_to_json(&self.config)
    }
    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }
    fn prediction(&self) -> Prediction {
        Prediction::FlowPrediction
    }
    fn order(&self) -> usize {
        1
    }
    fn is_stochastic(&self) -> bool {
        self.config.stochastic_sampling
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let (timesteps, sigmas) = self.lay_out(request)?;
        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.sigmas = sigmas;
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
        // Flow models take x_σ as it is.
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        check_finite("model_output", model_output)?;
        check_same_shape("model_output", sample, model_output)?;
        if self.num_inference_steps.is_none() {
            return Err(Error::State(
                "FlowMatchEulerDiscreteScheduler: call set_timesteps before step".into(),
            ));
        }
        let i = self.init_step_index(timestep)?;
        // sigmas has one entry more than timesteps (the terminal σ).
        if i >= self.timesteps.len() {
            return Err(Error::State(format!(
                "FlowMatchEulerDiscreteScheduler: step index {i} is past the last of {} steps",
                self.timesteps.len()
            )));
        }
        let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
        let prev_sample = if self.config.stochastic_sampling {
            let noise = noise.ok_or_else(|| {
                Error::argument(
                    "noise",
                    "stochastic_sampling needs standard-normal noise for every step",
                )
            })?;
            check_same_shape("noise", sample, noise)?;
            // x̂₀ = x_σ − σ v, then re-noise to σ': x_{σ'} = (1 − σ') x̂₀ + σ' ε'.
            let x0 = S::lin_comb(&[(1.0, sample), (-sigma, model_output)]);
            S::lin_comb(&[(1.0 - sigma_next, &x0), (sigma_next, noise)])
        } else {
            // Euler: x_{σ'} = x_σ + (σ' − σ) v.
            S::lin_comb(&[(1.0, sample), (sigma_next - sigma, model_output)])
        };
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    /// diffusers' `scale_noise`: x_σ = σ ε + (1 − σ) x₀ at the σ of each timestep.
    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        check_same_shape("noise", original, noise)?;
        let sigmas = flow_noise_sigmas(
            &self.timesteps,
            &self.sigmas,
            self.step_index,
            self.begin_index,
            original.batch_size(),
            timesteps,
        )?;
        let keep: Vec<f64> = sigmas.iter().map(|s| 1.0 - s).collect();
        Ok(noise
            .scale_per_sample(&sigmas)
            .add(&original.scale_per_sample(&keep)))
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

/// The σ per sample used by the flow schedulers' `scale_noise`: the current step's σ once
/// stepping has started, the begin index's σ when one is set, else the σ of each timestep.
pub(crate) fn flow_noise_sigmas(
    schedule: &[f64],
    sigmas: &[f64],
    step_index: Option<usize>,
    begin_index: Option<usize>,
    batch: usize,
    timesteps: &[f64],
) -> Result<Vec<f64>> {
    if timesteps.is_empty() || (timesteps.len() != 1 && timesteps.len() != batch) {
        return Err(Error::argument(
            "timesteps",
            format!(
                "give one timestep or one per sample ({batch}), got {}",
                timesteps.len()
            ),
        ));
    }
    let indices: Vec<usize> = match (begin_index, step_index) {
        (None, _) => timesteps
            .iter()
            .map(|&t| {
                flow_index_for_timestep(schedule, t).ok_or_else(|| {
                    Error::argument(
                        "timesteps",
                        format!("{t} is not one of the scheduler's timesteps"),
                    )
                })
            })
            .collect::<Result<_>>()?,
        (Some(_), Some(i)) | (Some(i), None) => vec![i; timesteps.len()],
    };
    indices
        .into_iter()
        .map(|i| {
            sigmas.get(i).copied().ok_or_else(|| {
                Error::State(format!(
                    "step index {i} is outside the schedule of {} σs",
                    sigmas.len()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::from_config_json;
    use ember_core::HostTensor;
    use serde_json::json;

    fn sched(cfg: Value) -> FlowMatchEulerDiscreteScheduler {
        FlowMatchEulerDiscreteScheduler::from_config(crate::config::parse_config(&cfg).unwrap())
            .unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn default_schedule_matches_diffusers() {
        // diffusers 0.42.1: FlowMatchEulerDiscreteScheduler(shift=3.0), 10 steps, toy model
        // 0.3 x + 0.5 r in float32 tensors.
        let mut s = sched(json!({"shift": 3.0}));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 10).unwrap();
        let ts = Scheduler::<HostTensor>::timesteps(&s).to_vec();
        assert_eq!(
            ts,
            [
                1000.0,
                960.1293334960938,
                913.3489990234375,
                857.6923217773438,
                790.3682861328125,
                707.2785034179688,
                602.1505737304688,
                464.87603759765625,
                278.0487976074219,
                8.928571701049805
            ]
        );
        let r = HostTensor::new(vec![1, 2], vec![0.2, -0.4]).unwrap();
        let mut x = HostTensor::new(vec![1, 2], vec![0.7, -1.2]).unwrap();
        for t in ts {
            let v = HostTensor::lin_comb(&[(0.3, &x), (0.5, &r)]);
            x = s.step(&v, t, &x, None).unwrap().prev_sample;
        }
        close(x.data(), &[0.42661339044570923, -0.706140398979187], 1e-6);
    }

    #[test]
    fn dynamic_shifting_needs_mu() {
        let mut s = sched(json!({"use_dynamic_shifting": true}));
        let e = Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "mu"),
            "{e}"
        );
        Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::steps(4).with_mu(1.1),
        )
        .unwrap();
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut s = FlowMatchEulerDiscreteScheduler::new();
        let x = HostTensor::zeros(&[1, 2]);
        // Step before set_timesteps.
        assert!(matches!(s.step(&x, 1000.0, &x, None), Err(Error::State(_))));
        // Zero steps.
        assert!(Scheduler::<HostTensor>::set_timesteps(&mut s, 0).is_err());
        // Non-monotone custom sigmas.
        let e = Scheduler::<HostTensor>::set_timesteps_with(
            &mut s,
            &TimestepRequest::sigmas(vec![1.0, 0.5, 0.7]),
        );
        assert!(matches!(e, Err(Error::InvalidArgument { .. })));
        // Length mismatch with num_inference_steps.
        let mut r = TimestepRequest::sigmas(vec![1.0, 0.5]);
        r.num_inference_steps = Some(3);
        assert!(Scheduler::<HostTensor>::set_timesteps_with(&mut s, &r).is_err());
        // NaN in the model output.
        Scheduler::<HostTensor>::set_timesteps(&mut s, 3).unwrap();
        let t0 = Scheduler::<HostTensor>::timesteps(&s)[0];
        let nan = HostTensor::new(vec![1, 2], vec![f64::NAN, 0.0]).unwrap();
        assert!(matches!(
            s.step(&nan, t0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        // A timestep that is not in the schedule.
        assert!(s.step(&x, 123.4, &x, None).is_err());
    }

    #[test]
    fn euler_moves_along_straight_paths() {
        // With the exact velocity v = ε − x₀ the Euler steps land exactly on the path.
        let mut s = sched(json!({"shift": 3.0}));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 7).unwrap();
        let x0 = HostTensor::new(vec![1, 3], vec![0.5, -1.0, 2.0]).unwrap();
        let eps = HostTensor::new(vec![1, 3], vec![1.0, 0.3, -0.7]).unwrap();
        let v = eps.sub(&x0);
        let t0 = Scheduler::<HostTensor>::timesteps(&s)[0];
        let mut x = s.add_noise(&x0, &eps, &[t0]).unwrap();
        for t in Scheduler::<HostTensor>::timesteps(&s).to_vec() {
            x = s.step(&v, t, &x, None).unwrap().prev_sample;
        }
        close(x.data(), x0.data(), 1e-12);
    }

    #[test]
    fn stochastic_sampling_needs_noise() {
        let mut s = sched(json!({"stochastic_sampling": true}));
        assert!(Scheduler::<HostTensor>::is_stochastic(&s));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 2).unwrap();
        let x = HostTensor::zeros(&[1, 2]);
        let t0 = Scheduler::<HostTensor>::timesteps(&s)[0];
        assert!(matches!(
            s.step(&x, t0, &x, None),
            Err(Error::InvalidArgument { .. })
        ));
        let n = HostTensor::new(vec![1, 2], vec![1.0, -1.0]).unwrap();
        assert!(s.step(&x, t0, &x, Some(&n)).is_ok());
    }

    #[test]
    fn invert_sigmas_runs_up_to_one() {
        let mut s = sched(json!({"invert_sigmas": true}));
        Scheduler::<HostTensor>::set_timesteps(&mut s, 4).unwrap();
        let sig = Scheduler::<HostTensor>::sigmas(&s).unwrap();
        assert_eq!(sig[0], 0.0);
        assert_eq!(*sig.last().unwrap(), 1.0);
    }

    #[test]
    fn registered_and_config_round_trips() {
        let cfg = json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "foo": 1});
        let s = from_config_json::<HostTensor>(&cfg).unwrap();
        let back = s.config_json();
        assert_eq!(back["shift"], json!(3.0));
        assert_eq!(back["foo"], json!(1));
        assert_eq!(s.prediction(), Prediction::FlowPrediction);
        let bad =
            json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "time_shift_type": "cubic"});
        assert!(from_config_json::<HostTensor>(&bad).is_err());
    }
}
