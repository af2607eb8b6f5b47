//! Shared pieces of the multistep exponential-integrator solvers on a variance-preserving
//! (VP) schedule: UniPC and DEIS (and anything else written in diffusers' DPM-Solver style).
//!
//! These solvers work with the data-to-noise ratio σ = √((1 − ᾱ)/ᾱ) of the training schedule
//! and, at every inference step, with the VP pair
//!
//! ```text
//! α_t = 1 / √(σ² + 1),   σ_t = σ · α_t,   λ_t = ln α_t − ln σ_t   (half log-SNR)
//! ```
//!
//! (or, for flow-matching schedules, `α_t = 1 − σ`, `σ_t = σ`). This module holds the layout
//! of inference timesteps (`timestep_spacing`), the float32 training σ table exactly as
//! diffusers builds it, the VP conversions, numpy's `_sigma_to_t`, the "dynamic thresholding"
//! of Imagen, and the timestep → step-index lookup diffusers' multistep solvers use.

use ember_core::{Error, Result, SampleTensor};
use serde::{Deserialize, Serialize};

use crate::schedule::{linspace_f64, np_arange};

// The shared spacing enum (re-exported under its old path).
pub use crate::schedule::TimestepSpacing;

/// diffusers' `final_sigmas_type`: the σ the last step lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FinalSigmasType {
    /// σ = 0: the last step returns a clean sample.
    #[default]
    #[serde(rename = "zero")]
    Zero,
    /// The smallest σ of the schedule (the training σ at t = 0, or the last converted σ).
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// The inference timesteps of diffusers' multistep solvers for `spacing`, as the int64
/// values diffusers stores (highest first). Deliberately separate from the DDPM family's and
/// the σ-space schedulers' layouts, which diffusers defines differently (see
/// [`crate::ddpm_common::spaced_timesteps`]).
///
/// Reproduces numpy's arithmetic, including `np.arange` with a float step (whose length is
/// `ceil((stop − start)/step)` and whose elements are `start + i·Δ` with Δ re-derived from the
/// first two elements), and round-half-to-even.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: i64,
) -> Vec<i64> {
    let t_train = num_train_timesteps as f64;
    let n = num_inference_steps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = linspace_f64(0.0, t_train - 1.0, n + 1)
                .into_iter()
                .map(|x| x.round_ties_even() as i64)
                .collect();
            v.reverse();
            v.truncate(n);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (num_train_timesteps / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|k| k * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let step = -(t_train / n as f64);
            np_arange(t_train, 0.0, step)
                .into_iter()
                .map(|x| x.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// The most inference steps a schedule may have (a guard against absurd requests that
/// would exhaust memory; diffusion samplers use tens to hundreds).
pub const MAX_INFERENCE_STEPS: usize = 100_000;

/// The most training timesteps a config may declare (diffusers' models use 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// Checks a requested step count: at least 1, at most [`MAX_INFERENCE_STEPS`].
///
/// (The same check as [`crate::schedule::check_inference_steps_at_most`], kept separate only
/// because its error message is worded differently and messages are part of the behaviour.)
pub fn check_step_count(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::argument("num_inference_steps", "must be at least 1"));
    }
    if n > MAX_INFERENCE_STEPS {
        return Err(Error::argument(
            "num_inference_steps",
            format!("{n} is more than the {MAX_INFERENCE_STEPS} steps Ember allows"),
        ));
    }
    Ok(())
}

/// Checks `num_train_timesteps`: at least 1, at most [`MAX_TRAIN_TIMESTEPS`].
pub fn check_train_timesteps(n: usize) -> Result<()> {
    crate::config::check_num_train_timesteps_at_most(n, MAX_TRAIN_TIMESTEPS)
}

// The float32 σ table and the float32 rounding are shared (re-exported under their old
// paths; `to_f32` is `crate::schedule::f32r`).
pub use crate::schedule::{f32r as to_f32, train_sigmas_f32};

/// `np.log` of a float32 σ table, as float32 values (numpy keeps float32 arrays in float32
/// and evaluates the logarithm with its own SIMD kernel, see [`np_log_f32`]).
pub fn log_sigmas_f32(sigmas: &[f64]) -> Vec<f64> {
    sigmas
        .iter()
        .map(|&s| f64::from(np_log_f32(s as f32)))
        .collect()
}

/// numpy's float32 `log` as its x86-64 AVX2/FMA kernel (`simd_log_FLOAT`, used by numpy
/// builds whose CPU dispatch selects X86_V3) computes it, bit for bit.
///
/// That kernel is not correctly rounded (up to ~3.8 ulp): x = m·2^e with m ∈ [½, 1), m
/// doubled (and e decremented) when m ≤ √½, then ln(1 + y), y = m − 1, as a ratio of two
/// degree-5 minimax polynomials evaluated with fused multiply-adds, plus e·ln 2. It matters
/// because diffusers truncates `_sigma_to_t(σ, np.log(σs))` to an integer timestep, so a
/// one-ulp difference in a table log can move a timestep by one (e.g. 999 → 998 at σ_max).
/// Other numpy builds (AVX-512 with SVML, ARM) may differ from this by an ulp.
// The coefficients are numpy's decimal literals verbatim (clippy: more digits than f32 holds).
#[allow(clippy::excessive_precision)]
pub fn np_log_f32(x: f32) -> f32 {
    // Minimax coefficients of numpy's kernel (npy_simd_data.h), as float32.
    const P: [f32; 6] = [
        0.0,
        9.999999999999998702752e-01,
        2.112677543073053063722e+00,
        1.480000633576506585156e+00,
        3.808837741388407920751e-01,
        2.589979117907922693523e-02,
    ];
    const Q: [f32; 6] = [
        1.0,
        2.612677543073109236779e+00,
        2.453006071784736363091e+00,
        9.864942958519418960339e-01,
        1.546476374983906719538e-01,
        5.875095403124574342950e-03,
    ];
    // Fused multiply-add in float32: a·b is exact in f64, so the f64 sum rounded to f32
    // reproduces `_mm256_fmadd_ps` (up to a double rounding that did not occur in a
    // bit-for-bit comparison with numpy on 20 000 random inputs and the σ tables).
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        f64::from(a).mul_add(f64::from(b), f64::from(c)) as f32
    }
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x < 0.0 {
        return f32::NAN;
    }
    if x < f32::MIN_POSITIVE {
        // Subnormals: numpy rescales them by 2¹⁰⁰ first; σ tables never contain them.
        return (f64::from(x).ln()) as f32;
    }
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 126) as f32;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000);
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m += m;
        e -= 1.0;
    }
    let y = m - 1.0;
    let mut num = fma(P[5], y, P[4]);
    let mut den = fma(Q[5], y, Q[4]);
    for k in (0..4).rev() {
        num = fma(num, y, P[k]);
        den = fma(den, y, Q[k]);
    }
    fma(e, std::f32::consts::LN_2, num / den)
}

/// diffusers' `_sigma_to_t`, reproducing numpy's arithmetic for any ordering of
/// `log_sigmas`: the low index is the *last* index whose log σ is ≤ ln σ (0 when there is
/// none), clipped to `len − 2`, and t interpolates linearly in log σ between it and the next.
pub fn sigma_to_t_np(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&ls| log_sigma - ls >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_sigma_to_alpha_sigma_t`: the pair (α_t, σ_t) for a schedule σ.
///
/// VP: α_t = 1/√(σ² + 1), σ_t = σ α_t (so α_t² + σ_t² = 1 and σ_t/α_t = σ).
/// Flow matching (`x_t = (1 − σ) x₀ + σ ε`): α_t = 1 − σ, σ_t = σ.
pub fn alpha_sigma(sigma: f64, flow: bool) -> (f64, f64) {
    if flow {
        (1.0 - sigma, sigma)
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

/// λ_t = ln α_t − ln σ_t, the half log-SNR the exponential integrators step in
/// (+∞ at σ_t = 0).
pub fn lambda(alpha_t: f64, sigma_t: f64) -> f64 {
    alpha_t.ln() - sigma_t.ln()
}

/// The step index diffusers' multistep solvers start from for `timestep`
/// (`index_for_timestep`): the position of `timestep` in `schedule`; the second position when
/// it occurs more than once (so an img2img start does not skip a σ); the last index when
/// it does not occur at all. Values are compared as float32, as torch does.
pub fn multistep_index_for_timestep(schedule: &[f64], timestep: f64) -> usize {
    // diffusers compares in float32 (a Python float meets a float32 or int64 tensor).
    let t32 = timestep as f32;
    crate::schedule::second_or_first_match(schedule, |t| t as f32 == t32)
        .unwrap_or(schedule.len().saturating_sub(1))
}

/// The step index a multistep solver's *first* `step` starts from: as
/// [`multistep_index_for_timestep`], except that the schedule's own first timestep maps to 0
/// even when it is repeated.
///
/// Karras spacing on some schedules rounds the first two σs to the same integer timestep
/// (e.g. `[999, 999, 998, …]` for `squaredcos_cap_v2`); diffusers' second-occurrence rule then
/// starts at index 1 and fails on the last step (an `AssertionError` in UniPC, an
/// `IndexError` in DEIS). Starting at 0 there only changes runs diffusers cannot complete.
pub fn first_step_index(schedule: &[f64], timestep: f64) -> usize {
    match schedule.first() {
        Some(&t0) if t0 as f32 == timestep as f32 => 0,
        _ => multistep_index_for_timestep(schedule, timestep),
    }
}

/// Imagen's dynamic thresholding (Saharia et al. 2022, §2.3; diffusers' `_threshold_sample`):
/// per sample, s = the `ratio`-quantile of |x₀| clamped to `[1, max_value]`, then
/// x₀ ← clamp(x₀, −s, s)/s.
///
/// The quantile is read back to the host (linear interpolation between order statistics, as
/// `torch.quantile`); the clamp and division stay on the sample's device, written as
/// `clamp(x₀/s, −1, 1)`, which equals `clamp(x₀, −s, s)/s` because division by s > 0 is monotone.
///
/// Not yet merged with [`crate::ddpm_common::threshold_sample`], which does the same thing
/// but forms the quantile rank in float32 with `torch.lerp`'s blend (bit-faithful to
/// `torch.quantile` on float32) and clamps on the host. Merging either way changes results in
/// the last bits (and moves this step's clamp off the device), so it is left for a
/// deliberate, separately tested change.
pub fn dynamic_threshold<S: SampleTensor>(x0: &S, ratio: f64, max_value: f64) -> S {
    let host = x0.to_host();
    let per = host.sample_len().max(1);
    let factors: Vec<f64> = host
        .data()
        .chunks(per)
        .map(|chunk| {
            let mut abs: Vec<f64> = chunk.iter().map(|v| v.abs()).collect();
            abs.sort_by(f64::total_cmp);
            let rank = ratio * (abs.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let q = abs[lo] + (rank - lo as f64) * (abs[hi] - abs[lo]);
            // torch.clamp(s, min=1, max=max_value): min applied first, then max.
            1.0 / q.max(1.0).min(max_value)
        })
        .collect();
    x0.scale_per_sample(&factors).clamp(-1.0, 1.0)
}

/// Checks that the first `n` entries of a σ schedule are finite and strictly decreasing.
/// `what` names the source in the error ("custom sigmas", "the schedule", ...).
pub fn check_decreasing(values: &[f64], argument: &str, what: &str) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::argument(
            argument,
            format!("{what} has a non-finite value at {i}"),
        ));
    }
    if let Some(i) = values.windows(2).position(|w| w[1] >= w[0]) {
        return Err(Error::argument(
            argument,
            format!(
                "{what} must be strictly decreasing, but entry {} ({}) follows {}",
                i + 1,
                values[i + 1],
                values[i]
            ),
        ));
    }
    Ok(())
}

/// Solves the small dense system `A x = b` (row-major `A`, n ≤ 3 in practice) by Gaussian
/// elimination with partial pivoting, in f64. `None` when `A` is singular.
pub fn solve_dense(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// The beta schedules diffusers' multistep solvers implement (others raise
/// `NotImplementedError` there); `trained_betas` overrides the schedule.
///
/// (Kept apart from `ddpm_common::check_beta_schedule` and `sigma_schedule::check_beta_schedule`:
/// the three word their errors differently and disagree on whether an empty `trained_betas`
/// list bypasses the check; both are observable behaviour.)
pub fn check_beta_schedule(
    schedule: crate::BetaSchedule,
    trained_betas: Option<&[f64]>,
    class_name: &str,
) -> Result<()> {
    use crate::BetaSchedule::{Linear, ScaledLinear, SquaredcosCapV2};
    if trained_betas.is_some_and(|b| !b.is_empty())
        || matches!(schedule, Linear | ScaledLinear | SquaredcosCapV2)
    {
        return Ok(());
    }
    Err(Error::config(
        "beta_schedule",
        format!("{class_name} implements only linear, scaled_linear and squaredcos_cap_v2"),
    ))
}

/// The training-side tables of a VP multistep solver.
#[derive(Debug, Clone, PartialEq)]
pub struct VpTrainTable {
    /// ᾱ_t as diffusers stores it (float32 values; the last one replaced by 2⁻²⁴ under
    /// `rescale_betas_zero_snr`, "so the first σ is not infinite").
    pub alphas_cumprod: Vec<f64>,
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) in float32, in training order (t = 0 first).
    pub sigmas: Vec<f64>,
}

impl VpTrainTable {
    /// Builds the tables from diffusers' config fields.
    pub fn new(
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
        beta_schedule: crate::BetaSchedule,
        trained_betas: Option<&[f64]>,
        rescale_betas_zero_snr: bool,
    ) -> Result<Self> {
        let schedule = crate::TrainSchedule::new(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
        )?;
        let alphas_cumprod =
            crate::schedule::alphas_cumprod_for_sigmas(&schedule, rescale_betas_zero_snr);
        let sigmas = train_sigmas_f32(&alphas_cumprod);
        Ok(Self {
            alphas_cumprod,
            sigmas,
        })
    }

    /// The (timesteps, σ) pair a solver exposes before `set_timesteps`: every training
    /// timestep, highest first, with its σ.
    ///
    /// (diffusers pairs the reversed timesteps with the σ table in training order there,
    /// so its `add_noise` before `set_timesteps` reads σ_{T−1−t} instead of σ_t; Ember
    /// pairs each timestep with its own σ.)
    pub fn initial_schedule(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.sigmas.len();
        (
            (0..n).rev().map(|t| t as f64).collect(),
            self.sigmas.iter().rev().copied().collect(),
        )
    }
}

/// The per-sample (α_t, σ_t) of a multistep solver's `add_noise`: the current step's σ once
/// stepping has started, the begin index's σ when one is set, else the σ of each timestep
/// (looked up with [`multistep_index_for_timestep`]).
pub fn noise_levels(
    schedule: &[f64],
    sigmas: &[f64],
    step_index: Option<usize>,
    begin_index: Option<usize>,
    batch: usize,
    timesteps: &[f64],
    flow: bool,
) -> Result<(Vec<f64>, Vec<f64>)> {
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
            .map(|&t| multistep_index_for_timestep(schedule, t))
            .collect(),
        (Some(_), Some(i)) | (Some(i), None) => vec![i; timesteps.len()],
    };
    let mut alphas = Vec::with_capacity(indices.len());
    let mut sigmas_t = Vec::with_capacity(indices.len());
    for i in indices {
        let sigma = sigmas.get(i).copied().ok_or_else(|| {
            Error::State(format!(
                "step index {i} is outside the schedule of {} σs",
                sigmas.len()
            ))
        })?;
        let (a, s) = alpha_sigma(sigma, flow);
        alphas.push(a);
        sigmas_t.push(s);
    }
    Ok((alphas, sigmas_t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::HostTensor;

    #[test]
    fn spacings_match_diffusers() {
        // Values printed by diffusers 0.42.1 (UniPCMultistepScheduler.set_timesteps).
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Linspace, 1000, 6, 0),
            vec![999, 832, 666, 500, 333, 166]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Leading, 1000, 6, 1),
            vec![853, 711, 569, 427, 285, 143]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 6, 0),
            vec![999, 832, 666, 499, 332, 166]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 7, 0).len(),
            7
        );
    }

    #[test]
    fn numpy_float32_log() {
        // np.log(np.float32 array) on numpy 2.4 (X86_V3), bit patterns.
        for (x, want) in [
            (157.40727f32, 5.0588365f32),
            (0.01000133, -4.605037),
            (1.0, 0.0),
        ] {
            assert_eq!(np_log_f32(x), want, "log({x})");
        }
        assert_eq!(np_log_f32(0.5), -std::f32::consts::LN_2);
        assert_eq!(np_log_f32(0.0), f32::NEG_INFINITY);
        assert!(np_log_f32(-1.0).is_nan());
    }

    #[test]
    fn solve_small_systems() {
        let x = solve_dense(vec![vec![1.0, 1.0], vec![1.0, -1.0]], vec![3.0, 1.0]).unwrap();
        assert!((x[0] - 2.0).abs() < 1e-15 && (x[1] - 1.0).abs() < 1e-15);
        assert!(solve_dense(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_none());
    }

    #[test]
    fn threshold_clamps_per_sample() {
        let x = HostTensor::new(vec![2, 2], vec![0.5, -0.5, 4.0, -2.0]).unwrap();
        let y = dynamic_threshold(&x, 1.0, 3.0);
        // Sample 0: s = max(0.5, 1) = 1 → unchanged. Sample 1: s = min(4, 3) = 3.
        assert_eq!(y.data()[..2], [0.5, -0.5]);
        assert!((y.data()[2] - 1.0).abs() < 1e-15 && (y.data()[3] + 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn index_lookup_rules() {
        let ts = [999.0, 800.0, 800.0, 100.0];
        assert_eq!(multistep_index_for_timestep(&ts, 999.0), 0);
        assert_eq!(multistep_index_for_timestep(&ts, 800.0), 2);
        assert_eq!(multistep_index_for_timestep(&ts, 5.0), 3);
    }
}
