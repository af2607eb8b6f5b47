//! Training noise schedules: β, α = 1 − β and ᾱ = Πα, as diffusers builds them.
//!
//! # Precision
//! diffusers builds β in float32 (`torch.linspace(..., dtype=float32)`, or a float64
//! computation cast to float32), rounds α = 1 − β to float32 and takes a cumulative product
//! that PyTorch's CPU kernel accumulates in double but stores as float32. A trained model's
//! noise levels are those float32 values, so Ember reproduces them exactly: [`betas`] and
//! [`TrainSchedule`] hold f64 numbers that are the float32 values diffusers stores.
//! Everything computed from them afterwards (σ, log-SNR, solver coefficients) is f64.
//! Computing ᾱ fully in f64 instead moves σ at t = 999 by ~1e-6 relative, which is ~1e-5
//! absolute at σ ≈ 14.6: more than the 1e-5 parity budget, for no gain in fidelity.

use ember_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// diffusers' `beta_schedule` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BetaSchedule {
    /// β linear in t from `beta_start` to `beta_end` (DDPM).
    #[default]
    #[serde(rename = "linear")]
    Linear,
    /// √β linear in t (Stable Diffusion / latent diffusion).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// Glide / improved-DDPM cosine schedule, ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), β ≤ 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
    /// β = sigmoid(linspace(−6, 6)) rescaled to [beta_start, beta_end] (GeoDiff).
    #[serde(rename = "sigmoid")]
    Sigmoid,
    /// ᾱ(t) = exp(−12 t) through `betas_for_alpha_bar`.
    #[serde(rename = "exp")]
    Exp,
    /// Laplace log-SNR schedule through `betas_for_alpha_bar`.
    #[serde(rename = "laplace")]
    Laplace,
}

impl BetaSchedule {
    /// All diffusers names, for error messages and listings.
    pub const NAMES: [&'static str; 6] = [
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "sigmoid",
        "exp",
        "laplace",
    ];

    /// diffusers' name of this schedule (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Exp => "exp",
            BetaSchedule::Laplace => "laplace",
        }
    }
}

/// diffusers' `timestep_spacing`: how inference timesteps are laid out over the `T` training
/// timesteps (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
/// Flawed", Table 2). One enum for every scheduler; the exact layout of each spacing differs
/// between diffusers' scheduler families and is given by their own `spaced_timesteps`
/// ([`crate::ddpm_common::spaced_timesteps`], [`crate::vp_solver::spaced_timesteps`],
/// [`crate::sigma_schedule::spaced_timesteps`]).
///
/// The per-scheduler default also differs (`leading` for the DDPM family, `linspace` for the
/// others); every config sets its own. The enum's `Default` is `linspace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TimestepSpacing {
    /// Evenly spaced from `T − 1` down to 0, both ends included (rounded to integers by the
    /// DDPM family and the multistep solvers, kept fractional by the σ-space schedulers).
    #[default]
    #[serde(rename = "linspace")]
    Linspace,
    /// Integer multiples of a step ratio `T // n` (`T // (n + 1)` for the multistep solvers)
    /// counting up from 0, plus `steps_offset`: starts at 0, may stop short of `T − 1`
    /// (Stable Diffusion's original layout).
    #[serde(rename = "leading")]
    Leading,
    /// `round(arange(T, 0, −T/n)) − 1`: starts at the last training timestep `T − 1`, may stop
    /// short of 0.
    #[serde(rename = "trailing")]
    Trailing,
}

/// Checks a requested inference step count: at least 1, at most `max` (a guard against
/// absurd allocations; diffusers sets no limit). Shared by the σ-space and EDM schedulers;
/// the multistep solvers' [`crate::vp_solver::check_step_count`] words the limit differently
/// and keeps its own message.
pub fn check_inference_steps_at_most(n: usize, max: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::argument("num_inference_steps", "must be at least 1"));
    }
    if n > max {
        return Err(Error::argument(
            "num_inference_steps",
            format!("{n} exceeds the limit of {max} steps"),
        ));
    }
    Ok(())
}

/// `numpy.arange(start, stop, step)` for floating-point arguments, reproducing numpy's
/// length (`ceil((stop − start)/step)`) and fill rule: `a₀ = start`, `a₁ = start + step`,
/// and `aᵢ = start + i·(a₁ − a₀)` for i ≥ 2 (numpy's `DOUBLE_fill`), which is not always
/// bit-identical to `start + i·step`.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    if step == 0.0 || !step.is_finite() {
        return vec![];
    }
    let len = ((stop - start) / step).ceil();
    // NaN (0/0) and non-positive lengths give an empty range, as in numpy.
    if len.is_nan() || len <= 0.0 {
        return vec![];
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len);
    out.push(start);
    if len > 1 {
        out.push(start + step);
    }
    if len > 2 {
        let delta = out[1] - out[0];
        out.extend((2..len).map(|i| start + i as f64 * delta));
    }
    out
}

/// `torch.linspace(start, end, n, dtype=float32)` exactly as PyTorch's CPU kernel computes it:
/// the first half counts up from `start`, the second half down from `end`, in float32.
pub fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 0 {
        return vec![];
    }
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n as f32 - 1.0);
    let half = n / 2;
    (0..n)
        // PyTorch's kernel is compiled with FMA contraction: `start + step * i` and
        // `end - step * (n - 1 - i)` are each rounded once (fused multiply-add). Products of
        // a float32 and an index are exact in f64, so f64 `mul_add` then one rounding to f32
        // reproduces it (checked bit for bit against torch 2.x on linear/scaled_linear βs).
        .map(|i| {
            let (s, e, step) = (f64::from(s), f64::from(e), f64::from(step));
            if i < half {
                step.mul_add(i as f64, s) as f32
            } else {
                (-step).mul_add((n - i - 1) as f64, e) as f32
            }
        })
        .collect()
}

/// `numpy.linspace(start, end, n)` in f64 (numpy's formula: `start + i·step`, last = end).
pub fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n as f64 - 1.0);
            let mut v: Vec<f64> = (0..n).map(|i| start + step * i as f64).collect();
            v[n - 1] = end;
            v
        }
    }
}

/// Rounds to the nearest float32 value, returned as f64: what a diffusers float32 tensor
/// (or numpy float32 array) holds. Every scheduler uses this one rounding helper.
pub fn f32r(x: f64) -> f64 {
    f64::from(x as f32)
}

/// The training σ table `((1 − ᾱ)/ᾱ)^½`, computed in float32 as diffusers does (its
/// `alphas_cumprod` is a float32 tensor), returned as f64 holding those float32 values.
pub fn train_sigmas_f32(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|&a| {
            // torch: ((1 - acp) / acp) ** 0.5, every operation in float32.
            let a = a as f32;
            f64::from(((1.0f32 - a) / a).sqrt())
        })
        .collect()
}

/// ᾱ as the σ-table builders of diffusers' solvers and σ-space schedulers use it: with
/// `rescale_betas_zero_snr`, the final ᾱ (0 after the rescale) is replaced by 2⁻²⁴, "close to
/// 0 without being 0 so the first σ is not inf".
pub fn alphas_cumprod_for_sigmas(schedule: &TrainSchedule, zero_snr_epsilon: bool) -> Vec<f64> {
    let mut acp = schedule.alphas_cumprod.clone();
    if zero_snr_epsilon {
        if let Some(last) = acp.last_mut() {
            *last = 2f64.powi(-24);
        }
    }
    acp
}

/// The "second occurrence, else the first" rule of diffusers' `index_for_timestep`: the
/// position of the second entry of `schedule` for which `is_match` holds when there are
/// several (so that a schedule entered part-way, img2img, does not skip a step), else of the
/// only one; `None` when nothing matches.
///
/// Every scheduler family applies this rule, but each compares timesteps its own way
/// (exactly, as float32, or with a tolerance) and treats a miss its own way, as the
/// diffusers classes they follow do; those parts stay with the callers.
pub fn second_or_first_match(
    schedule: &[f64],
    mut is_match: impl FnMut(f64) -> bool,
) -> Option<usize> {
    let mut hits = schedule
        .iter()
        .enumerate()
        .filter(|(_, &t)| is_match(t))
        .map(|(i, _)| i);
    let first = hits.next()?;
    Some(hits.next().unwrap_or(first))
}

/// The transform of `betas_for_alpha_bar`: ᾱ as a function of t ∈ [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaBarTransform {
    /// cos²((t + 0.008)/1.008 · π/2).
    Cosine,
    /// exp(−12 t).
    Exp,
    /// Laplace schedule: λ = −½·sgn(½ − t)·ln(1 − 2|½ − t| + 10⁻⁶), SNR = e^λ,
    /// and (as diffusers writes it) ᾱ = √(SNR / (1 + SNR)).
    Laplace,
}

impl AlphaBarTransform {
    /// ᾱ(t).
    pub fn alpha_bar(self, t: f64) -> f64 {
        match self {
            AlphaBarTransform::Cosine => ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2),
            AlphaBarTransform::Exp => (t * -12.0).exp(),
            AlphaBarTransform::Laplace => {
                let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
                let snr = lmb.exp();
                (snr / (1.0 + snr)).sqrt()
            }
        }
    }
}

/// diffusers' `betas_for_alpha_bar`: β_i = min(1 − ᾱ((i+1)/n) / ᾱ(i/n), max_beta), in f64.
///
/// (Several Rust ports compute `i / n` in integer arithmetic, which makes every β but the
/// last 0; the index is converted to f64 first here.)
pub fn betas_for_alpha_bar(n: usize, max_beta: f64, transform: AlphaBarTransform) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - transform.alpha_bar(t2) / transform.alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// The β sequence (as float32 values, see the module docs) for a diffusers schedule.
pub fn betas(
    schedule: BetaSchedule,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Vec<f64> {
    let n = num_train_timesteps;
    let f32s: Vec<f32> = match schedule {
        BetaSchedule::Linear => linspace_f32(beta_start, beta_end, n),
        BetaSchedule::ScaledLinear => linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999, AlphaBarTransform::Cosine)
            .iter()
            .map(|&b| b as f32)
            .collect(),
        BetaSchedule::Exp => betas_for_alpha_bar(n, 0.999, AlphaBarTransform::Exp)
            .iter()
            .map(|&b| b as f32)
            .collect(),
        BetaSchedule::Laplace => betas_for_alpha_bar(n, 0.999, AlphaBarTransform::Laplace)
            .iter()
            .map(|&b| b as f32)
            .collect(),
        BetaSchedule::Sigmoid => {
            let (s, e) = (beta_start as f32, beta_end as f32);
            linspace_f32(-6.0, 6.0, n)
                .into_iter()
                .map(|x| {
                    let sig = 1.0 / (1.0 + (-x).exp());
                    sig * (e - s) + s
                })
                .collect()
        }
    };
    f32s.into_iter().map(f64::from).collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1), in float32 as
/// diffusers computes it: shifts and scales √ᾱ so the last step has ᾱ = 0 exactly.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let acp = cumprod_f32(&betas.iter().map(|&b| 1.0 - b as f32).collect::<Vec<f32>>());
    let mut sq: Vec<f32> = acp.iter().map(|&a| a.sqrt()).collect();
    let (first, last) = (sq[0], sq[sq.len() - 1]);
    for v in sq.iter_mut() {
        *v -= last;
        *v *= first / (first - last);
    }
    let acp2: Vec<f32> = sq.iter().map(|&v| v * v).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(f64::from(1.0 - acp2[0]));
    for i in 1..acp2.len() {
        out.push(f64::from(1.0 - acp2[i] / acp2[i - 1]));
    }
    out
}

/// PyTorch CPU `cumprod` on float32: accumulated in double, each output rounded to float32.
fn cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// The largest `num_train_timesteps` any schedule accepts (diffusers models use 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// The discrete training schedule every DDPM-family scheduler is built on.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSchedule {
    /// β_t.
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t = Π_{s ≤ t} α_s.
    pub alphas_cumprod: Vec<f64>,
}

impl TrainSchedule {
    /// Builds the schedule from diffusers' config fields.
    ///
    /// `trained_betas`, when given, overrides the named schedule (its length must equal
    /// `num_train_timesteps`).
    pub fn new(
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
        beta_schedule: BetaSchedule,
        trained_betas: Option<&[f64]>,
        rescale_betas_zero_snr: bool,
    ) -> Result<Self> {
        if num_train_timesteps == 0 {
            return Err(Error::config("num_train_timesteps", "must be at least 1"));
        }
        // A typo such as 1e18 would otherwise abort the process on allocation.
        if num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(Error::config(
                "num_train_timesteps",
                format!("{num_train_timesteps} exceeds the limit of {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        let mut betas = match trained_betas {
            Some(tb) if !tb.is_empty() => {
                if tb.len() != num_train_timesteps {
                    return Err(Error::config(
                        "trained_betas",
                        format!(
                            "has {} values but num_train_timesteps is {num_train_timesteps}",
                            tb.len()
                        ),
                    ));
                }
                tb.iter().map(|&b| f64::from(b as f32)).collect()
            }
            _ => {
                if !(beta_start.is_finite() && beta_end.is_finite()) {
                    return Err(Error::config("beta_start/beta_end", "must be finite"));
                }
                betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            }
        };
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, &b)| !(0.0..=1.0).contains(&b))
        {
            return Err(Error::config(
                "betas",
                format!("beta[{i}] = {b} is outside [0, 1]"),
            ));
        }
        if rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas32: Vec<f32> = betas.iter().map(|&b| 1.0 - b as f32).collect();
        let acp = cumprod_f32(&alphas32);
        Ok(Self {
            alphas: alphas32.iter().map(|&a| f64::from(a)).collect(),
            alphas_cumprod: acp.iter().map(|&a| f64::from(a)).collect(),
            betas,
        })
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep (the variance-exploding view).
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_schedule_names_match_serde() {
        // `name()` feeds the beta_schedule error messages that used serde's names before.
        for (i, name) in BetaSchedule::NAMES.iter().enumerate() {
            let b: BetaSchedule = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(b.name(), *name);
            assert_eq!(
                serde_json::to_value(b).unwrap(),
                serde_json::json!(BetaSchedule::NAMES[i])
            );
        }
    }

    #[test]
    fn cosine_betas_are_not_integer_divided() {
        let b = betas_for_alpha_bar(1000, 0.999, AlphaBarTransform::Cosine);
        assert!(b.iter().all(|&x| x > 0.0));
        assert!(b[0] < 1e-4 && b[999] == 0.999);
    }

    #[test]
    fn zero_snr_ends_at_zero() {
        let s = TrainSchedule::new(1000, 0.00085, 0.012, BetaSchedule::ScaledLinear, None, true)
            .unwrap();
        assert_eq!(*s.alphas_cumprod.last().unwrap(), 0.0);
    }

    #[test]
    fn trained_betas_length_checked() {
        let e = TrainSchedule::new(10, 0.1, 0.2, BetaSchedule::Linear, Some(&[0.1; 5]), false);
        assert!(e.unwrap_err().to_string().contains("trained_betas"));
    }
}
