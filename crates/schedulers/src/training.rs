//! Training-side helpers: SNR of a [`TrainSchedule`], Min-SNR-γ loss weights, timestep
//! samplers and the regression target of every [`Prediction`] type.
//!
//! # Notation
//! A noised sample is `x_t = α_t x₀ + σ_t ε` with ε ~ N(0, I):
//! - discrete VP schedules (DDPM family): α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), SNR = ᾱ/(1 − ᾱ)
//!   (diffusers' `compute_snr`);
//! - rectified flow (SD3, Flux): t ∈ [0, 1], α = 1 − t, σ = t, SNR = ((1 − t)/t)².
//!
//! Per-sample coefficients are slices with one entry per sample of the batch, or a single
//! entry for all samples (as [`ember_core::SampleTensor::scale_per_sample`]).

use crate::schedule::TrainSchedule;
use ember_core::scheduler::check_same_shape;
use ember_core::{Error, Prediction, Result, SampleTensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Signal-to-noise ratio
// ---------------------------------------------------------------------------------------

/// SNR = ᾱ/(1 − ᾱ) = (α/σ)² for a VP schedule's ᾱ (∞ at ᾱ = 1, 0 at ᾱ = 0).
pub fn snr_from_alpha_bar(alpha_bar: f64) -> f64 {
    alpha_bar / (1.0 - alpha_bar)
}

/// log SNR = ln ᾱ − ln(1 − ᾱ), accurate at both ends (−∞ for a zero-terminal-SNR step).
pub fn log_snr_from_alpha_bar(alpha_bar: f64) -> f64 {
    alpha_bar.ln() - (-alpha_bar).ln_1p()
}

/// The SNR of rectified-flow time t ∈ [0, 1]: ((1 − t)/t)². Errors outside [0, 1].
pub fn flow_snr(t: f64) -> Result<f64> {
    check_unit("t", t)?;
    Ok(((1.0 - t) / t).powi(2))
}

fn check_unit(name: &str, t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::argument(
            name,
            format!("must lie in [0, 1], got {t}"),
        ))
    }
}

/// SNR views of a discrete training schedule (diffusers' `compute_snr`, in f64).
pub trait TrainScheduleExt {
    /// SNR(t) = ᾱ_t/(1 − ᾱ_t); errors for t ≥ the number of training timesteps.
    fn snr(&self, t: usize) -> Result<f64>;
    /// ln SNR(t).
    fn log_snr(&self, t: usize) -> Result<f64>;
    /// SNR at every training timestep.
    fn snrs(&self) -> Vec<f64>;
    /// ln SNR at every training timestep (decreasing).
    fn log_snrs(&self) -> Vec<f64>;
    /// (α_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t)) for each timestep.
    fn alphas_sigmas(&self, timesteps: &[usize]) -> Result<(Vec<f64>, Vec<f64>)>;
    /// Min-SNR-γ weights (see [`min_snr_weight`]) for each timestep.
    fn min_snr_weights(
        &self,
        timesteps: &[usize],
        gamma: f64,
        prediction: Prediction,
    ) -> Result<Vec<f64>>;
}

/// ᾱ_t, or an error for a timestep past the schedule.
fn alpha_bar_at(s: &TrainSchedule, t: usize) -> Result<f64> {
    s.alphas_cumprod.get(t).copied().ok_or_else(|| {
        Error::argument(
            "timestep",
            format!(
                "{t} is outside [0, {}) (num_train_timesteps)",
                s.alphas_cumprod.len()
            ),
        )
    })
}

impl TrainScheduleExt for TrainSchedule {
    fn snr(&self, t: usize) -> Result<f64> {
        Ok(snr_from_alpha_bar(alpha_bar_at(self, t)?))
    }
    fn log_snr(&self, t: usize) -> Result<f64> {
        Ok(log_snr_from_alpha_bar(alpha_bar_at(self, t)?))
    }
    fn snrs(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| snr_from_alpha_bar(a))
            .collect()
    }
    fn log_snrs(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| log_snr_from_alpha_bar(a))
            .collect()
    }
    fn alphas_sigmas(&self, timesteps: &[usize]) -> Result<(Vec<f64>, Vec<f64>)> {
        let mut al = Vec::with_capacity(timesteps.len());
        let mut si = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let ab = alpha_bar_at(self, t)?;
            al.push(ab.sqrt());
            si.push((1.0 - ab).sqrt());
        }
        Ok((al, si))
    }
    fn min_snr_weights(
        &self,
        timesteps: &[usize],
        gamma: f64,
        prediction: Prediction,
    ) -> Result<Vec<f64>> {
        timesteps
            .iter()
            .map(|&t| min_snr_weight(self.snr(t)?, gamma, prediction))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Min-SNR-γ
// ---------------------------------------------------------------------------------------

/// The Min-SNR-γ loss weight (Hang et al. 2023) for a model trained on `prediction`'s target.
///
/// Min-SNR-γ weights the x₀-space error by min(SNR, γ). Each model's own MSE relates to it by
/// the factor between its target error and the x₀ error:
/// - `Epsilon`: ‖ε̂ − ε‖² = SNR·‖x̂₀ − x₀‖² ⇒ w = min(SNR, γ)/SNR (→ 1 as SNR → 0);
/// - `Sample`: w = min(SNR, γ);
/// - `VPrediction`: ‖v̂ − v‖² = (SNR + 1)·‖x̂₀ − x₀‖² (VP) ⇒ w = min(SNR, γ)/(SNR + 1);
/// - `FlowPrediction` (Ember's choice, the same principle): with x̂₀ = x_t − t·v̂,
///   ‖x̂₀ − x₀‖² = t²‖v̂ − v‖² and t = 1/(1 + √SNR), so w = min(SNR, γ)/(1 + √SNR)²
///   (→ 0 at both ends, peaking near SNR = γ).
///
/// γ = 5 is the paper's recommendation. Errors for γ ≤ 0 / NaN or a negative / NaN SNR.
pub fn min_snr_weight(snr: f64, gamma: f64, prediction: Prediction) -> Result<f64> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(Error::argument(
            "gamma",
            format!("must be finite and > 0, got {gamma}"),
        ));
    }
    if snr.is_nan() || snr < 0.0 {
        return Err(Error::argument("snr", format!("must be ≥ 0, got {snr}")));
    }
    let m = snr.min(gamma);
    Ok(match prediction {
        Prediction::Epsilon => {
            if snr == 0.0 {
                1.0
            } else {
                m / snr
            }
        }
        Prediction::Sample => m,
        Prediction::VPrediction => {
            if snr.is_infinite() {
                0.0
            } else {
                m / (snr + 1.0)
            }
        }
        Prediction::FlowPrediction => {
            if snr.is_infinite() {
                0.0
            } else {
                m / (1.0 + snr.sqrt()).powi(2)
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Timestep samplers
// ---------------------------------------------------------------------------------------

/// A density for training timesteps in continuous time u ∈ (0, 1) (diffusers'
/// `compute_density_for_timestep_sampling`, SD3 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "weighting_scheme")]
pub enum TimestepDensity {
    /// u ~ U[0, 1).
    #[serde(rename = "uniform")]
    Uniform,
    /// Logit-normal: u = sigmoid(m + s·z), z ~ N(0, 1) (SD3 eq. 19; SD3 uses m = 0, s = 1).
    #[serde(rename = "logit_normal")]
    LogitNormal {
        /// m, the mean in logit space.
        logit_mean: f64,
        /// s, the std in logit space (> 0).
        logit_std: f64,
    },
    /// Mode sampling with heavy tails: u = 1 − v − s(cos²(πv/2) − 1 + v), v ~ U[0, 1)
    /// (SD3 eq. 20; a density for s ∈ [−1, 2/(π − 2)], SD3 uses 1.29).
    #[serde(rename = "mode")]
    Mode {
        /// s.
        mode_scale: f64,
    },
}

impl TimestepDensity {
    fn validate(&self) -> Result<()> {
        match *self {
            TimestepDensity::Uniform => Ok(()),
            TimestepDensity::LogitNormal {
                logit_mean,
                logit_std,
            } => {
                if !logit_mean.is_finite() {
                    return Err(Error::argument(
                        "logit_mean",
                        format!("must be finite, got {logit_mean}"),
                    ));
                }
                if !(logit_std.is_finite() && logit_std > 0.0) {
                    return Err(Error::argument(
                        "logit_std",
                        format!("must be finite and > 0, got {logit_std}"),
                    ));
                }
                Ok(())
            }
            TimestepDensity::Mode { mode_scale } => {
                let hi = 2.0 / (std::f64::consts::PI - 2.0);
                if !(-1.0..=hi).contains(&mode_scale) {
                    return Err(Error::argument(
                        "mode_scale",
                        format!(
                            "must lie in [-1, {hi:.4}] for u to stay in [0, 1], got {mode_scale}"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Seeded timestep sampler (ChaCha8): the same seed gives the same timesteps on every platform.
#[derive(Debug, Clone)]
pub struct TimestepSampler {
    rng: ChaCha8Rng,
}

impl TimestepSampler {
    /// A sampler keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `batch` training timesteps uniform on {0, …, T − 1} (DDPM training, Ho et al. 2020
    /// Algorithm 1). Errors for T = 0.
    pub fn uniform_discrete(
        &mut self,
        num_train_timesteps: usize,
        batch: usize,
    ) -> Result<Vec<usize>> {
        if num_train_timesteps == 0 {
            return Err(Error::argument("num_train_timesteps", "must be at least 1"));
        }
        Ok((0..batch)
            .map(|_| self.rng.random_range(0..num_train_timesteps))
            .collect())
    }

    /// `batch` draws of u ~ U[0, 1).
    pub fn uniform(&mut self, batch: usize) -> Vec<f64> {
        (0..batch).map(|_| self.rng.random::<f64>()).collect()
    }

    /// `batch` logit-normal times u = sigmoid(m + s·z) ∈ (0, 1) (SD3 eq. 19).
    pub fn logit_normal(
        &mut self,
        batch: usize,
        logit_mean: f64,
        logit_std: f64,
    ) -> Result<Vec<f64>> {
        TimestepDensity::LogitNormal {
            logit_mean,
            logit_std,
        }
        .validate()?;
        Ok((0..batch)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut self.rng);
                sigmoid(logit_mean + logit_std * z)
            })
            .collect())
    }

    /// `batch` times from any [`TimestepDensity`].
    pub fn sample(&mut self, density: &TimestepDensity, batch: usize) -> Result<Vec<f64>> {
        density.validate()?;
        Ok(match *density {
            TimestepDensity::Uniform => self.uniform(batch),
            TimestepDensity::LogitNormal {
                logit_mean,
                logit_std,
            } => self.logit_normal(batch, logit_mean, logit_std)?,
            TimestepDensity::Mode { mode_scale } => (0..batch)
                .map(|_| {
                    let v: f64 = self.rng.random();
                    let c = (std::f64::consts::FRAC_PI_2 * v).cos();
                    (1.0 - v - mode_scale * (c * c - 1.0 + v)).clamp(0.0, 1.0)
                })
                .collect(),
        })
    }
}

/// diffusers' mapping of continuous u ∈ [0, 1] to a training index: ⌊u·T⌋, clamped to T − 1.
/// Errors for u outside [0, 1] or T = 0.
pub fn continuous_to_index(u: &[f64], num_train_timesteps: usize) -> Result<Vec<usize>> {
    if num_train_timesteps == 0 {
        return Err(Error::argument("num_train_timesteps", "must be at least 1"));
    }
    u.iter()
        .map(|&u| {
            check_unit("u", u)?;
            Ok(((u * num_train_timesteps as f64) as usize).min(num_train_timesteps - 1))
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

// ---------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------

/// (α, σ) = (1 − t, t) for rectified-flow times; errors for t outside [0, 1].
pub fn flow_alphas_sigmas(ts: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
    for &t in ts {
        check_unit("t", t)?;
    }
    Ok((ts.iter().map(|t| 1.0 - t).collect(), ts.to_vec()))
}

/// Brings α and σ to one common length: 1 (shared) or the batch size.
fn broadcast(alpha: &[f64], sigma: &[f64], batch: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    for (name, v) in [("alpha", alpha), ("sigma", sigma)] {
        if v.len() != 1 && v.len() != batch {
            return Err(Error::argument(
                name,
                format!("needs 1 or {batch} (batch size) values, got {}", v.len()),
            ));
        }
        if let Some(x) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::argument(name, format!("must be finite, got {x}")));
        }
    }
    if alpha.len() == sigma.len() {
        return Ok((alpha.to_vec(), sigma.to_vec()));
    }
    let ex = |v: &[f64]| {
        if v.len() == 1 {
            vec![v[0]; batch]
        } else {
            v.to_vec()
        }
    };
    Ok((ex(alpha), ex(sigma)))
}

fn per<S: SampleTensor>(x: &S, f: &[f64]) -> S {
    if f.len() == 1 {
        x.scale(f[0])
    } else {
        x.scale_per_sample(f)
    }
}

/// The noised sample x_t = α x₀ + σ ε (per-sample α, σ).
pub fn noisy_sample<S: SampleTensor>(x0: &S, eps: &S, alpha: &[f64], sigma: &[f64]) -> Result<S> {
    check_same_shape("noise", x0, eps)?;
    let (a, s) = broadcast(alpha, sigma, x0.batch_size())?;
    Ok(per(x0, &a).add(&per(eps, &s)))
}

/// The regression target of a model with output type `prediction`, given the clean sample
/// x₀, the noise ε and the sample's (α, σ):
/// `Epsilon` → ε; `Sample` → x₀; `VPrediction` → v = α ε − σ x₀ (Salimans & Ho 2022);
/// `FlowPrediction` → ε − x₀ (rectified flow; independent of α, σ).
pub fn training_target<S: SampleTensor>(
    prediction: Prediction,
    x0: &S,
    eps: &S,
    alpha: &[f64],
    sigma: &[f64],
) -> Result<S> {
    check_same_shape("noise", x0, eps)?;
    let (a, s) = broadcast(alpha, sigma, x0.batch_size())?;
    Ok(match prediction {
        Prediction::Epsilon => eps.clone(),
        Prediction::Sample => x0.clone(),
        Prediction::VPrediction => {
            let ms: Vec<f64> = s.iter().map(|v| -v).collect();
            per(eps, &a).add(&per(x0, &ms))
        }
        Prediction::FlowPrediction => eps.sub(x0),
    })
}

/// Inverts a model output: given x_t = α x₀ + σ ε and an output in `prediction`'s
/// parameterisation, returns (x̂₀, ε̂):
/// - `Epsilon`: x̂₀ = (x_t − σ ε̂)/α;
/// - `Sample`: ε̂ = (x_t − α x̂₀)/σ;
/// - `VPrediction`: x̂₀ = (α x_t − σ v̂)/(α² + σ²), ε̂ = (σ x_t + α v̂)/(α² + σ²);
/// - `FlowPrediction`: with v̂ = ε̂ − x̂₀, x̂₀ = (x_t − σ v̂)/(α + σ), ε̂ = (x_t + α v̂)/(α + σ)
///   (x̂₀ = x_t − t v̂ for α = 1 − t, σ = t).
///
/// Errors where the division is undefined (α = 0 for ε, σ = 0 for x₀, …).
pub fn x0_eps_from_output<S: SampleTensor>(
    prediction: Prediction,
    output: &S,
    x_t: &S,
    alpha: &[f64],
    sigma: &[f64],
) -> Result<(S, S)> {
    check_same_shape("model output", x_t, output)?;
    let (a, s) = broadcast(alpha, sigma, x_t.batch_size())?;
    let nonzero = |name: &str, v: &[f64]| -> Result<()> {
        if v.contains(&0.0) {
            return Err(Error::argument(
                name,
                format!("is 0, so {} cannot be inverted", prediction.name()),
            ));
        }
        Ok(())
    };
    let map2 = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        a.iter().zip(&s).map(|(&a, &s)| f(a, s)).collect()
    };
    Ok(match prediction {
        Prediction::Epsilon => {
            nonzero("alpha", &a)?;
            let ia = map2(&|a, _| 1.0 / a);
            let c = map2(&|a, s| -s / a);
            (per(x_t, &ia).add(&per(output, &c)), output.clone())
        }
        Prediction::Sample => {
            nonzero("sigma", &s)?;
            let is = map2(&|_, s| 1.0 / s);
            let c = map2(&|a, s| -a / s);
            (output.clone(), per(x_t, &is).add(&per(output, &c)))
        }
        Prediction::VPrediction => {
            let d = map2(&|a, s| a * a + s * s);
            nonzero("alpha² + sigma²", &d)?;
            let x0 = per(x_t, &map2(&|a, s| a / (a * a + s * s)))
                .add(&per(output, &map2(&|a, s| -s / (a * a + s * s))));
            let eps = per(x_t, &map2(&|a, s| s / (a * a + s * s)))
                .add(&per(output, &map2(&|a, s| a / (a * a + s * s))));
            (x0, eps)
        }
        Prediction::FlowPrediction => {
            let d = map2(&|a, s| a + s);
            nonzero("alpha + sigma", &d)?;
            let x0 = per(x_t, &map2(&|a, s| 1.0 / (a + s)))
                .add(&per(output, &map2(&|a, s| -s / (a + s))));
            let eps = per(x_t, &map2(&|a, s| 1.0 / (a + s)))
                .add(&per(output, &map2(&|a, s| a / (a + s))));
            (x0, eps)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;
    use ember_core::{HostTensor, NoiseSource};

    fn sd_schedule(zero_snr: bool) -> TrainSchedule {
        TrainSchedule::new(
            1000,
            0.00085,
            0.012,
            BetaSchedule::ScaledLinear,
            None,
            zero_snr,
        )
        .unwrap()
    }

    fn max_err(a: &HostTensor, b: &HostTensor) -> f64 {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn snr_of_a_schedule() {
        let s = sd_schedule(false);
        for t in [0usize, 1, 500, 999] {
            let ab = s.alphas_cumprod[t];
            // diffusers' compute_snr: (√ᾱ / √(1 − ᾱ))².
            let want = (ab.sqrt() / (1.0 - ab).sqrt()).powi(2);
            assert!((s.snr(t).unwrap() - want).abs() < 1e-12 * want);
            assert!((s.log_snr(t).unwrap() - want.ln()).abs() < 1e-12);
        }
        let ls = s.log_snrs();
        assert!(
            ls.windows(2).all(|w| w[1] < w[0]),
            "log SNR decreases with t"
        );
        assert_eq!(s.snrs().len(), 1000);
        assert!(s.snr(1000).is_err());
        let (a, sg) = s.alphas_sigmas(&[0, 999]).unwrap();
        assert!((a[1] * a[1] + sg[1] * sg[1] - 1.0).abs() < 1e-12);
        // Zero terminal SNR: SNR = 0, log SNR = −∞, and the ε weight stays finite (1).
        let z = sd_schedule(true);
        assert_eq!(z.snr(999).unwrap(), 0.0);
        assert_eq!(z.log_snr(999).unwrap(), f64::NEG_INFINITY);
        let w = z.min_snr_weights(&[999], 5.0, Prediction::Epsilon).unwrap();
        assert_eq!(w, vec![1.0]);
        assert_eq!(flow_snr(0.5).unwrap(), 1.0);
        assert!(flow_snr(1.5).is_err() && flow_snr(-0.1).is_err());
    }

    #[test]
    fn min_snr_weights_at_known_snrs() {
        let g = 5.0;
        let cases = [
            (Prediction::Epsilon, [1.0, 1.0, 5.0 / 9.0]),
            (Prediction::Sample, [1.0, 4.0, 5.0]),
            (Prediction::VPrediction, [0.5, 0.8, 0.5]),
            (Prediction::FlowPrediction, [0.25, 4.0 / 9.0, 5.0 / 16.0]),
        ];
        for (p, want) in cases {
            for (snr, w) in [1.0, 4.0, 9.0].iter().zip(want) {
                let got = min_snr_weight(*snr, g, p).unwrap();
                assert!((got - w).abs() < 1e-15, "{p:?} at SNR {snr}: {got} vs {w}");
            }
        }
        assert_eq!(
            min_snr_weight(f64::INFINITY, g, Prediction::Epsilon).unwrap(),
            0.0
        );
        assert_eq!(
            min_snr_weight(f64::INFINITY, g, Prediction::Sample).unwrap(),
            5.0
        );
        assert_eq!(
            min_snr_weight(f64::INFINITY, g, Prediction::VPrediction).unwrap(),
            0.0
        );
        assert_eq!(
            min_snr_weight(0.0, g, Prediction::VPrediction).unwrap(),
            0.0
        );
        assert!(min_snr_weight(1.0, 0.0, Prediction::Epsilon).is_err());
        assert!(min_snr_weight(f64::NAN, 5.0, Prediction::Epsilon).is_err());
        assert!(min_snr_weight(-1.0, 5.0, Prediction::Epsilon).is_err());
    }

    #[test]
    fn min_snr_weights_are_one_x0_space_loss() {
        // For every parameterisation, w·‖output error‖² = min(SNR, γ)·‖x̂₀ error‖².
        let n = NoiseSource::new(11);
        let x0 = n.initial_noise(&[1, 16], 0);
        let eps = n.initial_noise(&[1, 16], 1);
        let err = n.initial_noise(&[1, 16], 2).scale(0.1);
        let sq = |x: &HostTensor| x.data().iter().map(|v| v * v).sum::<f64>();
        let vp = sd_schedule(false);
        for p in [
            Prediction::Epsilon,
            Prediction::Sample,
            Prediction::VPrediction,
            Prediction::FlowPrediction,
        ] {
            for k in [50usize, 300, 700, 950] {
                let (a, s, snr) = if p == Prediction::FlowPrediction {
                    let t = k as f64 / 1000.0;
                    (1.0 - t, t, flow_snr(t).unwrap())
                } else {
                    let (a, s) = vp.alphas_sigmas(&[k]).unwrap();
                    (a[0], s[0], vp.snr(k).unwrap())
                };
                let x_t = noisy_sample(&x0, &eps, &[a], &[s]).unwrap();
                let out = training_target(p, &x0, &eps, &[a], &[s]).unwrap().add(&err);
                let (x0_hat, _) = x0_eps_from_output(p, &out, &x_t, &[a], &[s]).unwrap();
                let lhs = min_snr_weight(snr, 5.0, p).unwrap() * sq(&err);
                let rhs = snr.min(5.0) * sq(&x0_hat.sub(&x0));
                assert!(
                    (lhs - rhs).abs() < 1e-9 * rhs.max(1e-12),
                    "{p:?} t={k}: {lhs} vs {rhs}"
                );
            }
        }
    }

    #[test]
    fn timestep_samplers() {
        let mut s = TimestepSampler::new(0);
        let ts = s.uniform_discrete(1000, 20_000).unwrap();
        assert!(ts.iter().all(|&t| t < 1000));
        let mean = ts.iter().sum::<usize>() as f64 / ts.len() as f64;
        assert!((mean - 499.5).abs() < 6.0, "{mean}");
        assert!(s.uniform_discrete(0, 3).is_err());
        // Same seed, same draws.
        assert_eq!(
            TimestepSampler::new(7).logit_normal(5, 0.0, 1.0).unwrap(),
            TimestepSampler::new(7).logit_normal(5, 0.0, 1.0).unwrap()
        );
        for (m, sd) in [(0.0, 1.0), (0.5, 0.7)] {
            let u = s.logit_normal(100_000, m, sd).unwrap();
            assert!(u.iter().all(|&u| u > 0.0 && u < 1.0));
            let l: Vec<f64> = u.iter().map(|u| (u / (1.0 - u)).ln()).collect();
            let lm = l.iter().sum::<f64>() / l.len() as f64;
            let ls = (l.iter().map(|v| (v - lm).powi(2)).sum::<f64>() / l.len() as f64).sqrt();
            assert!(
                (lm - m).abs() < 0.01 && (ls - sd).abs() < 0.01,
                "logit mean {lm} std {ls}"
            );
            if m == 0.0 {
                // Symmetric about ½; E[sigmoid(z)²] − ¼ for z ~ N(0,1) gives std ≈ 0.2083.
                let um = u.iter().sum::<f64>() / u.len() as f64;
                let us = (u.iter().map(|v| (v - um).powi(2)).sum::<f64>() / u.len() as f64).sqrt();
                assert!(
                    (um - 0.5).abs() < 0.003 && (us - 0.2083).abs() < 0.003,
                    "{um} {us}"
                );
            }
        }
        assert!(s.logit_normal(3, 0.0, 0.0).is_err() && s.logit_normal(3, f64::NAN, 1.0).is_err());
        let mode = s
            .sample(&TimestepDensity::Mode { mode_scale: 1.29 }, 10_000)
            .unwrap();
        assert!(mode.iter().all(|&u| (0.0..=1.0).contains(&u)));
        assert!(s
            .sample(&TimestepDensity::Mode { mode_scale: 3.0 }, 1)
            .is_err());
        // Mode with s = 0 is uniform.
        let m0 = s
            .sample(&TimestepDensity::Mode { mode_scale: 0.0 }, 20_000)
            .unwrap();
        assert!((m0.iter().sum::<f64>() / 20_000.0 - 0.5).abs() < 0.01);
        assert_eq!(
            continuous_to_index(&[0.0, 0.5, 1.0], 1000).unwrap(),
            vec![0, 500, 999]
        );
        assert!(continuous_to_index(&[1.2], 1000).is_err());
        let d: TimestepDensity =
            serde_json::from_value(serde_json::json!({"weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0}))
                .unwrap();
        assert_eq!(
            d,
            TimestepDensity::LogitNormal {
                logit_mean: 0.0,
                logit_std: 1.0
            }
        );
    }

    #[cfg(feature = "flex")]
    #[test]
    fn burn_tensors_match_host_results() {
        use ember_core::backend::DefaultBackend;
        use ember_core::burn::tensor::Tensor;
        type T = Tensor<DefaultBackend, 4>;
        let n = NoiseSource::new(3);
        let (x0, eps) = (
            n.initial_noise(&[2, 3, 2, 2], 0),
            n.initial_noise(&[2, 3, 2, 2], 1),
        );
        let (x0t, epst): (T, T) = (
            x0.to_tensor(&Default::default()),
            eps.to_tensor(&Default::default()),
        );
        let (a, s) = sd_schedule(false).alphas_sigmas(&[100, 800]).unwrap();
        let vt = training_target(Prediction::VPrediction, &x0t, &epst, &a, &s).unwrap();
        let vh = training_target(Prediction::VPrediction, &x0, &eps, &a, &s).unwrap();
        assert!(max_err(&vt.to_host(), &vh) < 1e-5);
        let xt = noisy_sample(&x0t, &epst, &a, &s).unwrap();
        let (x0r, _) = x0_eps_from_output(Prediction::VPrediction, &vt, &xt, &a, &s).unwrap();
        assert!(max_err(&x0r.to_host(), &x0) < 1e-5);
    }

    #[test]
    fn targets_round_trip() {
        let n = NoiseSource::new(5);
        let x0 = n.initial_noise(&[3, 2, 4], 0);
        let eps = n.initial_noise(&[3, 2, 4], 1);
        let vp = sd_schedule(false);
        let (a, s) = vp.alphas_sigmas(&[10, 500, 990]).unwrap();
        let (fa, fs) = flow_alphas_sigmas(&[0.1, 0.5, 0.97]).unwrap();
        for p in [
            Prediction::Epsilon,
            Prediction::Sample,
            Prediction::VPrediction,
            Prediction::FlowPrediction,
        ] {
            let (a, s) = if p == Prediction::FlowPrediction {
                (&fa, &fs)
            } else {
                (&a, &s)
            };
            let x_t = noisy_sample(&x0, &eps, a, s).unwrap();
            let target = training_target(p, &x0, &eps, a, s).unwrap();
            let (x0r, epsr) = x0_eps_from_output(p, &target, &x_t, a, s).unwrap();
            assert!(
                max_err(&x0r, &x0) < 1e-12 && max_err(&epsr, &eps) < 1e-12,
                "{p:?}"
            );
        }
        // The v target is α ε − σ x₀ sample by sample.
        let v = training_target(Prediction::VPrediction, &x0, &eps, &a, &s).unwrap();
        let i = 8 + 3; // sample 1, element 3
        let want = a[1] * eps.data()[i] - s[1] * x0.data()[i];
        assert!((v.data()[i] - want).abs() < 1e-15);
        // Flow target is ε − x₀; a single shared (α, σ) broadcasts.
        let f = training_target(Prediction::FlowPrediction, &x0, &eps, &[0.3], &[0.7]).unwrap();
        assert!(max_err(&f, &eps.sub(&x0)) < 1e-15);
        let xt = noisy_sample(&x0, &eps, &[0.3], &s).unwrap();
        assert!((xt.data()[i] - (0.3 * x0.data()[i] + s[1] * eps.data()[i])).abs() < 1e-15);
        // Bad input.
        assert!(noisy_sample(&x0, &eps, &[0.1, 0.2], &[0.3]).is_err());
        assert!(training_target(Prediction::VPrediction, &x0, &eps, &[f64::NAN], &[0.3]).is_err());
        assert!(x0_eps_from_output(Prediction::Epsilon, &eps, &x0, &[0.0], &[1.0]).is_err());
        assert!(x0_eps_from_output(Prediction::Sample, &eps, &x0, &[1.0], &[0.0]).is_err());
        assert!(noisy_sample(&x0, &HostTensor::zeros(&[3]), &[1.0], &[0.0]).is_err());
        assert!(flow_alphas_sigmas(&[1.01]).is_err());
    }
}
