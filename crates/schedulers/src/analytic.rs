//! Exact "models" for any scheduler: the closed-form Gaussian-mixture denoiser
//! ([`ember_core::analytic::GaussianMixture`]) wrapped so that it answers in the timestep
//! units and the output parameterisation a given scheduler expects.
//!
//! Schedulers hand models timesteps in three families of units:
//! - discrete VP schedules (DDPM, DDIM, Euler, DPM-Solver, UniPC, ...): a training timestep
//!   `t ∈ [0, T)`, possibly fractional; the noise level is the training schedule's
//!   σ_t = √((1 − ᾱ_t)/ᾱ_t), interpolated linearly in log σ between integer steps (the
//!   inverse of diffusers' `_sigma_to_t`), and the model sees the VP-scaled sample;
//! - flow matching: `t = σ · T` with `x = (1 − σ) x₀ + σ ε`, and the model predicts ε − x₀;
//! - EDM: `t = ¼ ln σ` with `x = x₀ + σ ε`; the model's output F is preconditioned so that
//!   `D = c_skip x + c_out F`, with the input scaled by `c_in = 1/√(σ² + σ_data²)`.
//!
//! [`AnalyticDenoiser`] reads which family from the scheduler's own config.

use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::analytic::GaussianMixture;
use ember_core::{Error, HostTensor, Prediction, Result, SampleTensor};
use serde_json::Value;

/// How a scheduler's timesteps map to noise levels.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeScale {
    /// Discrete VP schedule: log σ_VE at every training timestep (increasing).
    Discrete {
        /// ln √((1 − ᾱ_t)/ᾱ_t) for t = 0..T.
        log_sigmas: Vec<f64>,
    },
    /// Rectified flow: σ = t / T.
    Flow {
        /// T (`num_train_timesteps`).
        num_train_timesteps: f64,
    },
    /// EDM: σ = exp(4 t).
    Edm {
        /// σ_data of the preconditioning.
        sigma_data: f64,
    },
}

impl TimeScale {
    /// Reads the time scale from a diffusers scheduler config (`_class_name` decides the
    /// family; the training schedule keys give ᾱ).
    pub fn from_config(cfg: &Value) -> Result<Self> {
        let class = cfg.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let get_f = |k: &str, d: f64| cfg.get(k).and_then(Value::as_f64).unwrap_or(d);
        if class.starts_with("FlowMatch") {
            return Ok(TimeScale::Flow {
                num_train_timesteps: get_f("num_train_timesteps", 1000.0),
            });
        }
        if class.starts_with("EDM") {
            return Ok(TimeScale::Edm {
                sigma_data: get_f("sigma_data", 0.5),
            });
        }
        let n = cfg
            .get("num_train_timesteps")
            .and_then(Value::as_u64)
            .unwrap_or(1000) as usize;
        let schedule: BetaSchedule = match cfg.get("beta_schedule") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::Parse {
                what: "beta_schedule".into(),
                message: e.to_string(),
            })?,
            None => BetaSchedule::Linear,
        };
        let trained: Option<Vec<f64>> = cfg
            .get("trained_betas")
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let zero_snr = cfg
            .get("rescale_betas_zero_snr")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let s = TrainSchedule::new(
            n,
            get_f("beta_start", 0.0001),
            get_f("beta_end", 0.02),
            schedule,
            trained.as_deref(),
            zero_snr,
        )?;
        // Zero-terminal-SNR schedules have ᾱ = 0 (σ = ∞) at the end; diffusers' σ-space
        // schedulers set that ᾱ to 2⁻²⁴, and so do we. Every other ᾱ is used as is (a cosine
        // schedule legitimately reaches ᾱ ≈ 2.4e-9).
        let floor = 2f64.powi(-24);
        let log_sigmas = s
            .alphas_cumprod
            .iter()
            .map(|&a| {
                let a = if a > 0.0 { a } else { floor };
                ((1.0 - a) / a).sqrt().ln()
            })
            .collect();
        Ok(TimeScale::Discrete { log_sigmas })
    }

    /// The VE noise level σ (x = x₀ + σ ε after dividing by α) at timestep `t`.
    pub fn sigma_ve(&self, t: f64) -> f64 {
        match self {
            TimeScale::Discrete { log_sigmas } => {
                let n = log_sigmas.len();
                let t = t.clamp(0.0, (n - 1) as f64);
                let lo = (t.floor() as usize).min(n - 1);
                let hi = (lo + 1).min(n - 1);
                let w = t - lo as f64;
                ((1.0 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
            }
            TimeScale::Flow {
                num_train_timesteps,
            } => {
                let s = (t / num_train_timesteps).clamp(0.0, 1.0);
                s / (1.0 - s).max(1e-12)
            }
            TimeScale::Edm { .. } => (4.0 * t).exp(),
        }
    }
}

/// The exact denoiser of a Gaussian mixture, answering like a trained model would for a
/// given scheduler: same timestep units, same input scaling, same output parameterisation.
#[derive(Debug, Clone)]
pub struct AnalyticDenoiser {
    /// The data distribution.
    pub mixture: GaussianMixture,
    /// How timesteps map to noise levels.
    pub time: TimeScale,
    /// The output parameterisation.
    pub prediction: Prediction,
}

impl AnalyticDenoiser {
    /// An exact model matching the scheduler described by `config` (a diffusers
    /// `scheduler_config.json` value).
    pub fn for_config(mixture: GaussianMixture, config: &Value) -> Result<Self> {
        let time = TimeScale::from_config(config)?;
        let prediction = match (&time, config.get("prediction_type").and_then(Value::as_str)) {
            (TimeScale::Flow { .. }, _) => Prediction::FlowPrediction,
            (_, Some(name)) => Prediction::from_name(name)?,
            (_, None) => Prediction::Epsilon,
        };
        Ok(Self {
            mixture,
            time,
            prediction,
        })
    }

    /// The model output for the (already `scale_model_input`-scaled) sample `x` at `t`.
    pub fn predict(&self, x: &HostTensor, t: f64) -> Result<HostTensor> {
        let s = self.time.sigma_ve(t);
        let g = &self.mixture;
        let out = match &self.time {
            TimeScale::Discrete { .. } => {
                // The model sees the VP sample x = α x₀ + σ_vp ε.
                let alpha = 1.0 / (1.0 + s * s).sqrt();
                let sigma = s * alpha;
                let x0 = g.posterior_mean(x, alpha, sigma);
                match self.prediction {
                    Prediction::Epsilon => x.sub(&x0.scale(alpha)).scale(1.0 / sigma),
                    Prediction::Sample => x0,
                    Prediction::VPrediction => {
                        let eps = x.sub(&x0.scale(alpha)).scale(1.0 / sigma);
                        HostTensor::lin_comb(&[(alpha, &eps), (-sigma, &x0)])
                    }
                    Prediction::FlowPrediction => {
                        return Err(Error::argument(
                            "prediction",
                            "flow prediction needs a flow-matching time scale",
                        ))
                    }
                }
            }
            TimeScale::Flow {
                num_train_timesteps,
            } => {
                let sigma = (t / num_train_timesteps).clamp(0.0, 1.0);
                let alpha = 1.0 - sigma;
                let x0 = g.posterior_mean(x, alpha, sigma.max(1e-12));
                let eps = x.sub(&x0.scale(alpha)).scale(1.0 / sigma.max(1e-12));
                eps.sub(&x0)
            }
            TimeScale::Edm { sigma_data } => {
                // Undo c_in, denoise in VE form, and express D through the preconditioning.
                let sd2 = sigma_data * sigma_data;
                let c_in = 1.0 / (s * s + sd2).sqrt();
                let x_ve = x.scale(1.0 / c_in);
                let d = g.posterior_mean(&x_ve, 1.0, s);
                let c_skip = sd2 / (s * s + sd2);
                let mut c_out = s * sigma_data / (s * s + sd2).sqrt();
                if self.prediction == Prediction::VPrediction {
                    c_out = -c_out;
                }
                d.sub(&x_ve.scale(c_skip)).scale(1.0 / c_out)
            }
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_time_scale_interpolates_log_sigma() {
        let cfg = serde_json::json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000});
        let ts = TimeScale::from_config(&cfg).unwrap();
        let (a, b, mid) = (ts.sigma_ve(10.0), ts.sigma_ve(11.0), ts.sigma_ve(10.5));
        assert!(((a * b).sqrt() - mid).abs() < 1e-12);
        let flow = TimeScale::from_config(
            &serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler"}),
        )
        .unwrap();
        assert!((flow.sigma_ve(500.0) - 1.0).abs() < 1e-12);
    }
}
