//! diffusers' `KDPM2AncestralDiscreteScheduler` (`scheduling_k_dpm_2_ancestral_discrete.py`):
//! k-diffusion's `sample_dpm_2_ancestral` with η = 1.
//!
//! Each σ step from σ_i to σ_{i+1} > 0 first splits σ_{i+1} into a deterministic part and
//! fresh noise, as the Euler-ancestral sampler does:
//!
//! ```text
//! σ_up   = √(σ_{i+1}² (σ_i² − σ_{i+1}²) / σ_i²),   σ_down = √(σ_{i+1}² − σ_up²)
//! ```
//!
//! and then takes a DPM-Solver-2 step from σ_i to σ_down with its midpoint at the geometric
//! mean `σ_mid = exp(½ (ln σ_i + ln σ_down))`, followed by the noise:
//!
//! ```text
//! x_mid   = x_i + (σ_mid − σ_i) d(x_i, σ_i)
//! x_{i+1} = x_i + (σ_down − σ_i) d(x_mid, σ_mid) + σ_up z,   z ~ N(0, I)
//! ```
//!
//! The last step (to σ = 0) is a plain Euler step. Each σ step costs two model evaluations
//! and draws noise once, in its second half.

use crate::config::SchedulerConfig;
use crate::k_dpm_2_discrete::{KDpm2DiscreteConfig, Kdpm2Base};
use crate::sigma_schedule::{
    derivative, init_noise_sigma, interleave_tail, log_lerp_half_f32, predict_x0, reject_mu,
    require_noise, scale_input, sigma_at, SigmaSchedule,
};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of [`KDpm2AncestralDiscreteScheduler`]: the same keys and defaults as
/// [`KDpm2DiscreteConfig`], under its own class name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct KDpm2AncestralDiscreteConfig(pub KDpm2DiscreteConfig);

impl SchedulerConfig for KDpm2AncestralDiscreteConfig {
    const CLASS_NAME: &'static str = "KDPM2AncestralDiscreteScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.0.extra
    }
    fn validate(&self) -> Result<()> {
        self.0.validate_common(Self::CLASS_NAME)
    }
}

/// The per-σ-step tables of the ancestral sampler, expanded like `sigmas`.
#[derive(Debug, Clone, Default)]
struct AncestralTables {
    /// Midpoint σs.
    interpol: Vec<f64>,
    /// Noise standard deviations σ_up.
    up: Vec<f64>,
    /// Deterministic targets σ_down.
    down: Vec<f64>,
}

/// diffusers' `KDPM2AncestralDiscreteScheduler`: ancestral DPM-Solver-2 (order 2, two model
/// evaluations and one noise draw per σ step).
#[derive(Debug, Clone)]
pub struct KDpm2AncestralDiscreteScheduler<S> {
    config: KDpm2AncestralDiscreteConfig,
    base: Kdpm2Base,
    state: SigmaSchedule,
    tables: AncestralTables,
    /// x_i, kept between the two halves of a step (diffusers' `sample`).
    stored_sample: Option<S>,
}

impl<S: SampleTensor> KDpm2AncestralDiscreteScheduler<S> {
    /// Builds the scheduler. Like diffusers' constructor, it lays out a schedule with one
    /// step per training timestep, which `add_noise` can use before `set_timesteps`.
    pub fn from_config(config: KDpm2AncestralDiscreteConfig) -> Result<Self> {
        config.validate()?;
        let base = Kdpm2Base::new(&config.0)?;
        let mut s = Self {
            state: SigmaSchedule::initial(Vec::new(), Vec::new()),
            tables: AncestralTables::default(),
            stored_sample: None,
            base,
            config,
        };
        let (timesteps, sigmas, tables) = s.build(s.config.0.num_train_timesteps)?;
        s.state = SigmaSchedule::initial(timesteps, sigmas);
        s.tables = tables;
        Ok(s)
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default configuration is valid by construction.
        Self::from_config(KDpm2AncestralDiscreteConfig::default())
            .expect("the default KDPM2AncestralDiscreteScheduler config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &KDpm2AncestralDiscreteConfig {
        &self.config
    }

    /// Whether the next step is the first half of a σ step (diffusers'
    /// `state_in_first_order`).
    pub fn state_in_first_order(&self) -> bool {
        self.stored_sample.is_none()
    }

    /// Interleaved timesteps, expanded σs and the expanded ancestral tables for `n` steps.
    fn build(&self, n: usize) -> Result<(Vec<f64>, Vec<f64>, AncestralTables)> {
        let (t, s) = self.base.grid(&self.config.0, n)?;
        let len = s.len();
        // Float32 as diffusers' tensor maths: σ_next = σ_{i+1} (0 after the last σ),
        // σ_up = √(σ_next² (σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²) (0 at the end).
        let mut up = Vec::with_capacity(len);
        let mut down = Vec::with_capacity(len);
        for i in 0..len {
            let sigma = s[i] as f32;
            let next = if i + 1 < len { s[i + 1] as f32 } else { 0.0 };
            let (s2, n2) = (sigma * sigma, next * next);
            // 0/0 at the final σ = 0 gives NaN, as in diffusers; that entry is never used.
            let u = (n2 * (s2 - n2) / s2).sqrt();
            let d = if i + 1 == len {
                0.0
            } else {
                (n2 - u * u).max(0.0).sqrt()
            };
            up.push(f64::from(u));
            down.push(f64::from(d));
        }
        // σ_mid = geometric mean of σ_i and σ_down,i; the last two are 0 (the final Euler
        // step and the unused end).
        let interpol: Vec<f64> = (0..len)
            .map(|i| {
                if i + 2 >= len {
                    0.0
                } else {
                    log_lerp_half_f32(s[i], down[i])
                }
            })
            .collect();
        let mut timesteps = Vec::with_capacity(2 * t.len());
        if let Some(&t0) = t.first() {
            timesteps.push(t0);
        }
        for i in 1..t.len() {
            // The midpoint of σ step i − 1 comes before t_i.
            timesteps.push(self.base.interpolated_timestep(interpol[i - 1]));
            timesteps.push(t[i]);
        }
        let tables = AncestralTables {
            interpol: interleave_tail(&interpol),
            up: interleave_tail(&up),
            down: interleave_tail(&down),
        };
        Ok((timesteps, interleave_tail(&s), tables))
    }
}

impl<S: SampleTensor> Default for KDpm2AncestralDiscreteScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for KDpm2AncestralDiscreteScheduler<S> {
    fn class_name(&self) -> &'static str {
        KDpm2AncestralDiscreteConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        crate::config::config_to_json(&self.config)
    }
    fn num_train_timesteps(&self) -> usize {
        self.config.0.num_train_timesteps
    }
    fn prediction(&self) -> Prediction {
        self.config.0.prediction_type
    }
    fn order(&self) -> usize {
        2
    }
    fn is_stochastic(&self) -> bool {
        true
    }
    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let class = KDpm2AncestralDiscreteConfig::CLASS_NAME;
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
        let (timesteps, sigmas, tables) = self.build(n)?;
        self.state.install(timesteps, sigmas);
        self.tables = tables;
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
        init_noise_sigma(self.config.0.timestep_spacing, &self.state.sigmas)
    }
    fn scale_model_input(&mut self, sample: &S, timestep: f64) -> Result<S> {
        let i = self
            .state
            .current_index(timestep, KDpm2AncestralDiscreteConfig::CLASS_NAME)?;
        let sigma = if self.state_in_first_order() {
            self.state.sigma(i)?
        } else {
            sigma_at(&self.tables.interpol, i.wrapping_sub(1), "sigmas_interpol")?
        };
        Ok(scale_input(sample, sigma))
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
        let class = KDpm2AncestralDiscreteConfig::CLASS_NAME;
        let i = self.state.current_index(timestep, class)?;
        let first_order = self.state_in_first_order();
        // Both halves of σ step k read the tables at expanded index 2k: the first half runs
        // at step index i = 2k, the second at i = 2k + 1.
        let k = if first_order { i } else { i.wrapping_sub(1) };
        let sigma = self.state.sigma(k)?;
        let sigma_mid = sigma_at(&self.tables.interpol, k, "sigmas_interpol")?;
        let x0_sigma = if first_order { sigma } else { sigma_mid };
        let x0 = predict_x0(
            self.config.0.prediction_type,
            model_output,
            sample,
            x0_sigma,
        )?;
        let prev = match self.stored_sample.take() {
            None => {
                // First half: Euler from σ_i to the midpoint, remembering x_i.
                let d = derivative(sample, &x0, sigma);
                self.stored_sample = Some(sample.clone());
                S::lin_comb(&[(1.0, sample), (sigma_mid - sigma, &d)])
            }
            Some(x_i) => {
                // Second half: from x_i to σ_down with the midpoint slope, then the noise.
                let sigma_up = sigma_at(&self.tables.up, k, "sigmas_up")?;
                let sigma_down = sigma_at(&self.tables.down, k, "sigmas_down")?;
                let d = derivative(sample, &x0, sigma_mid);
                let dt = sigma_down - sigma;
                if sigma_up > 0.0 {
                    let z = match require_noise(noise, sample, class) {
                        Ok(z) => z,
                        Err(e) => {
                            // Leave the state as it was so the caller can retry with noise.
                            self.stored_sample = Some(x_i);
                            return Err(e);
                        }
                    };
                    S::lin_comb(&[(1.0, &x_i), (dt, &d), (sigma_up, z)])
                } else {
                    S::lin_comb(&[(1.0, &x_i), (dt, &d)])
                }
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
    use crate::sigma_schedule::f32r;

    use crate::sigma_schedule::test_support::{
        assert_close, build, common_errors, fake_noise, run,
    };
    use ember_core::HostTensor;
    use serde_json::json;

    #[test]
    fn shared_error_cases() {
        common_errors("KDPM2AncestralDiscreteScheduler", true);
    }

    #[test]
    fn noise_is_drawn_once_per_sigma_step() {
        let cfg =
            json!({"_class_name": "KDPM2AncestralDiscreteScheduler", "prediction_type": "sample"});
        assert!(crate::registry::from_config_json::<HostTensor>(&cfg).is_err());
        let mut s = build(json!({"_class_name": "KDPM2AncestralDiscreteScheduler"}));
        s.set_timesteps(3).unwrap();
        assert!(s.is_stochastic());
        let x = HostTensor::new(vec![2, 4], vec![1.0; 8]).unwrap();
        let ts = s.timesteps().to_vec();
        assert_eq!(ts.len(), 5);
        // First half: deterministic.
        s.step(&x.scale(0.1), ts[0], &x, None).unwrap();
        // Second half: needs noise; a failed call leaves the state for a retry.
        let e = s
            .step(&x.scale(0.1), ts[1], &x, None)
            .expect_err("noise required");
        assert!(matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "noise"));
        assert_eq!(s.step_index(), Some(1));
        s.step(&x.scale(0.1), ts[1], &x, Some(&fake_noise(0)))
            .unwrap();
        s.step(&x.scale(0.1), ts[2], &x, None).unwrap();
        s.step(&x.scale(0.1), ts[3], &x, Some(&fake_noise(1)))
            .unwrap();
        // The final step to σ = 0 is a plain Euler step.
        s.step(&x.scale(0.1), ts[4], &x, None).unwrap();
    }

    /// diffusers 0.42.1: SD betas, Karras σs, v-prediction, 6 steps (noise drawn in the
    /// second half of each σ step).
    #[test]
    fn matches_diffusers() {
        let mut s = build(json!({
            "_class_name": "KDPM2AncestralDiscreteScheduler", "beta_schedule": "scaled_linear",
            "use_karras_sigmas": true, "prediction_type": "v_prediction"
        }));
        s.set_timesteps(6).unwrap();
        assert_eq!(s.timesteps().len(), 11);
        assert_close(
            "timesteps",
            &s.timesteps()[..5],
            &[999.0, 837.12060546875, 837.0, 593.5020751953125, 594.0],
            1e-6,
        );
        assert_close(
            "sigmas",
            &s.sigmas().unwrap()[..5],
            &[
                14.614646911621094,
                6.08215856552124,
                6.08215856552124,
                2.232161521911621,
                2.232161521911621,
            ],
            1e-7,
        );
        let (fin, x0) = run(s.as_mut(), |j| j.saturating_sub(1) / 2);
        assert_close(
            "x0",
            &x0[..3],
            &[0.2839317321777344, 0.21807564795017242, 0.15221954882144928],
            2e-6,
        );
        assert_close(
            "final",
            &fin,
            &[
                1.720402717590332,
                -0.1272943913936615,
                -0.9513970613479614,
                -0.3228311240673065,
                -0.04302205145359039,
                0.01768753118813038,
                -0.14709937572479248,
                -0.6503887176513672,
            ],
            2e-6,
        );
    }

    #[test]
    fn tables_are_float32_values() {
        let s: KDpm2AncestralDiscreteScheduler<ember_core::HostTensor> =
            KDpm2AncestralDiscreteScheduler::new();
        for &v in s
            .tables
            .up
            .iter()
            .chain(&s.tables.down)
            .filter(|v| v.is_finite())
        {
            assert_eq!(v, f32r(v));
        }
    }
}
