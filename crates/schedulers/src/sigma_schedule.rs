//! Shared machinery of the σ-space ("k-diffusion family") schedulers: Euler, Euler
//! ancestral, Heun, LMS, KDPM2 and KDPM2 ancestral.
//!
//! These schedulers all see the forward process in its variance-exploding form
//! `x_σ = x₀ + σ ε` with `σ_t = √((1 − ᾱ_t)/ᾱ_t)`, and integrate the probability-flow ODE
//! `dx/dσ = (x − x₀(x, σ))/σ` (Karras et al. 2022, eq. 3 with s(t) = 1, σ(t) = t) over a
//! decreasing list of noise levels. This module builds that list from the config exactly as
//! diffusers does (`timestep_spacing`, interpolation of the training σs, Karras /
//! exponential / beta spacings, `σ → t` inversion), and holds the step bookkeeping that
//! every one of them shares (`step_index` / `begin_index`, `add_noise` by σ lookup).
//!
//! # Precision
//! diffusers stores `sigmas` (and most `timesteps`) as float32 tensors, and the training
//! `log_sigmas` it inverts σ against are float32 too. Values here are f64 numbers equal to
//! float32 values ([`f32r`]) computed operation for operation as diffusers does, so the
//! schedules agree with diffusers to the last float32 bit or two: torch's float32 `sqrt`
//! and numpy's / torch's float32 `log` are not always correctly rounded, Rust's are, which
//! moves some σ by one ulp and σ-derived fractional timesteps by up to ~2e-4. The solver
//! coefficients computed from the σs are f64.

use crate::schedule::{linspace_f64, BetaSchedule, TrainSchedule};
use crate::sigmas;
use ember_core::scheduler::check_same_shape;
use ember_core::{Error, Prediction, Result, SampleTensor};

// The shared spacing enum and numpy `arange` (re-exported under their old paths).
pub use crate::schedule::{np_arange, TimestepSpacing};

/// Which spacing of noise levels replaces the interpolated training σs
/// (diffusers' `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaSpacing {
    /// The training σ at each inference timestep (linear interpolation between the
    /// neighbouring integer timesteps).
    Interpolated,
    /// Karras et al. (2022) eq. 5 with ρ = 7 between the end σs.
    Karras,
    /// Evenly spaced in log σ.
    Exponential,
    /// Beta(0.6, 0.6) quantiles (Lee et al. 2024, "Beta Sampling is All You Need").
    Beta,
}

impl SigmaSpacing {
    /// Reads diffusers' three flags; at most one may be set.
    pub fn from_flags(karras: bool, exponential: bool, beta: bool) -> Result<Self> {
        match (karras, exponential, beta) {
            (false, false, false) => Ok(SigmaSpacing::Interpolated),
            (true, false, false) => Ok(SigmaSpacing::Karras),
            (false, true, false) => Ok(SigmaSpacing::Exponential),
            (false, false, true) => Ok(SigmaSpacing::Beta),
            _ => Err(Error::config(
                "use_karras_sigmas/use_exponential_sigmas/use_beta_sigmas",
                "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be true",
            )),
        }
    }

    /// The config key that selects this spacing (for error messages).
    pub fn flag_name(self) -> &'static str {
        match self {
            SigmaSpacing::Interpolated => "timestep_spacing",
            SigmaSpacing::Karras => "use_karras_sigmas",
            SigmaSpacing::Exponential => "use_exponential_sigmas",
            SigmaSpacing::Beta => "use_beta_sigmas",
        }
    }
}

/// The largest `num_train_timesteps` these schedulers accept. diffusers sets no limit;
/// real models use 1000 (a few 4000), and the constructors of Heun, LMS and KDPM2 lay out a
/// schedule with one step per training timestep, so absurd values are refused rather than
/// allocated.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The largest step count `set_timesteps` accepts (diffusers sets no limit; `linspace`
/// spacing may exceed `num_train_timesteps`, with fractional timesteps).
pub const MAX_INFERENCE_STEPS: usize = 100_000;

/// Checks `num_train_timesteps` (at least 1, at most [`MAX_TRAIN_TIMESTEPS`]).
pub fn check_num_train_timesteps(n: usize) -> Result<()> {
    crate::config::check_num_train_timesteps_at_most(n, MAX_TRAIN_TIMESTEPS)
}

// The float32 rounding helper is shared (re-exported under its old path).
pub use crate::schedule::f32r;

/// Checks `beta_schedule` against the names a diffusers class implements (the others raise
/// `NotImplementedError` there). `trained_betas`, when given, bypasses the named schedule.
pub fn check_beta_schedule(
    schedule: BetaSchedule,
    trained_betas: Option<&[f64]>,
    allowed: &[BetaSchedule],
    class_name: &str,
) -> Result<()> {
    if trained_betas.is_some() || allowed.contains(&schedule) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|b| b.name()).collect();
    Err(Error::config(
        "beta_schedule",
        format!("{class_name} implements only {}", names.join(", ")),
    ))
}

/// Checks the optional `sigma_min` / `sigma_max` overrides.
pub fn check_sigma_bounds(sigma_min: Option<f64>, sigma_max: Option<f64>) -> Result<()> {
    for (name, v) in [("sigma_min", sigma_min), ("sigma_max", sigma_max)] {
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    name,
                    format!("must be finite and positive, got {v}"),
                ));
            }
        }
    }
    if let (Some(lo), Some(hi)) = (sigma_min, sigma_max) {
        if lo >= hi {
            return Err(Error::config(
                "sigma_min",
                format!("must be below sigma_max ({lo} >= {hi})"),
            ));
        }
    }
    Ok(())
}

// The `prediction_type` check is shared by every scheduler family (re-exported here).
pub use crate::config::check_prediction;

/// The training noise levels a σ-space scheduler interpolates and inverts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSigmas {
    /// ᾱ_t (float32 values), t = 0 … T−1.
    pub alphas_cumprod: Vec<f64>,
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t), computed in float32 as diffusers does; increasing in t.
    pub sigmas: Vec<f64>,
    /// ln σ_t rounded to float32 (diffusers' `log_sigmas = np.log(float32 sigmas)`).
    pub log_sigmas: Vec<f64>,
    /// The same logarithms as float32, for diffusers' float32 `σ → t` paths.
    log_sigmas_f32: Vec<f32>,
}

impl TrainSigmas {
    /// Builds the table from ᾱ (float32 values held in f64).
    pub fn new(alphas_cumprod: Vec<f64>) -> Self {
        // σ in float32 as torch computes it. The logs use Rust's correctly rounded `ln`
        // rounded to float32 (see the module docs), not `vp_solver::log_sigmas_f32`'s
        // emulation of numpy's SIMD kernel: the two differ by an ulp on some σs, and switching
        // would move σ-derived timesteps of these schedulers, so they are deliberately kept apart.
        let sigmas = crate::schedule::train_sigmas_f32(&alphas_cumprod);
        let log_sigmas_f32: Vec<f32> = sigmas.iter().map(|&s| s.ln() as f32).collect();
        Self {
            alphas_cumprod,
            sigmas,
            log_sigmas: log_sigmas_f32.iter().map(|&l| f64::from(l)).collect(),
            log_sigmas_f32,
        }
    }

    /// Builds the table from a training schedule; `zero_snr_epsilon` replaces the final ᾱ
    /// (diffusers sets it to 2⁻²⁴ after `rescale_betas_zero_snr`, "close to 0 without being
    /// 0 so the first σ is not inf").
    pub fn from_schedule(schedule: &TrainSchedule, zero_snr_epsilon: bool) -> Self {
        Self::new(crate::schedule::alphas_cumprod_for_sigmas(
            schedule,
            zero_snr_epsilon,
        ))
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    /// True when there are no training timesteps (never, for a validated config).
    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// σ at a (possibly fractional) training timestep: `np.interp(t, arange(T), sigmas)`,
    /// in f64 as numpy computes it.
    pub fn interp(&self, t: f64) -> f64 {
        let n = self.sigmas.len();
        if n == 0 {
            return f64::NAN;
        }
        if t <= 0.0 {
            return self.sigmas[0];
        }
        if t >= (n - 1) as f64 {
            return self.sigmas[n - 1];
        }
        // Integer abscissae: the bracketing interval is [floor(t), floor(t) + 1].
        let j = t.floor() as usize;
        let (y0, y1) = (self.sigmas[j], self.sigmas[j + 1]);
        // numpy's interp: slope·(x − x_j) + y_j.
        (y1 - y0) * (t - j as f64) + y0
    }

    /// diffusers' `_sigma_to_t` for an f64 σ (numpy float64 scalar): interpolation in log σ
    /// against the float32 training log-σs, in f64. Same result as
    /// [`sigmas::sigma_to_t`], with a binary search (the training log-σs never decrease, as
    /// β ∈ [0, 1]) so that long schedules stay O(n log T).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let ls = &self.log_sigmas;
        let n = ls.len();
        if n < 2 {
            return 0.0;
        }
        let log_sigma = sigma.max(1e-10).ln();
        // low_idx = last index with log σ ≥ log_sigmas[i] (numpy's argmax of the cumulative
        // count), clipped to n − 2; 0 when there is none.
        let count = ls.partition_point(|&l| log_sigma - l >= 0.0);
        let low = if count == 0 {
            0
        } else {
            (count - 1).min(n - 2)
        };
        let (lo, hi) = (ls[low], ls[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// `_sigma_to_t` for a numpy float32 σ: log σ, the distances and the weight `w` are
    /// float32, and numpy promotes the final `(1 − w)·low + w·high` to f64.
    pub fn sigma_to_t_np_f32(&self, sigma: f64) -> f64 {
        let (low, w) = self.low_idx_and_weight_f32(sigma as f32);
        let one_minus_w = 1.0f32 - w;
        f64::from(one_minus_w) * low as f64 + f64::from(w) * (low + 1) as f64
    }

    /// `_sigma_to_t` for a torch float32 σ (KDPM2's interpolated σs): every operation in
    /// float32, the result a float32 value.
    pub fn sigma_to_t_torch_f32(&self, sigma: f64) -> f64 {
        let (low, w) = self.low_idx_and_weight_f32(sigma as f32);
        let t = (1.0f32 - w) * low as f32 + w * (low + 1) as f32;
        f64::from(t)
    }

    fn low_idx_and_weight_f32(&self, sigma: f32) -> (usize, f32) {
        let ls = &self.log_sigmas_f32;
        let n = ls.len();
        if n < 2 {
            return (0, 0.0);
        }
        // np.maximum(σ, 1e-10) keeps float32 (the Python float is a "weak" scalar); NaN
        // propagates through max and log like numpy's.
        let clamped = if sigma.is_nan() {
            sigma
        } else {
            sigma.max(1e-10f32)
        };
        let log_sigma = (f64::from(clamped).ln()) as f32;
        // low_idx = argmax(cumsum(dists >= 0)), clipped to n − 2 (see `sigma_to_t`).
        let count = ls.partition_point(|&l| log_sigma - l >= 0.0);
        let low = if count == 0 {
            0
        } else {
            (count - 1).min(n - 2)
        };
        let (lo, hi) = (ls[low], ls[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (low, w)
    }
}

/// The inference timesteps of diffusers' `set_timesteps` for a step count, as float32
/// values (largest first). Deliberately separate from the DDPM family's and the multistep
/// solvers' layouts, which diffusers defines differently (see
/// [`crate::ddpm_common::spaced_timesteps`]). Note that `trailing` follows numpy's `arange`, which for some
/// step counts (61 of 1000, say) yields one extra timestep (−1); diffusers keeps it and so
/// does Ember.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    let (t_max, n) = (num_train_timesteps, num_inference_steps);
    crate::schedule::check_inference_steps_at_most(n, MAX_INFERENCE_STEPS)?;
    if n > t_max {
        // `leading` would give step_ratio = 0 (every timestep equal), `trailing` repeated
        // timesteps, and `linspace` noise levels between the ones the model was trained on.
        // diffusers' DDPM/DDIM refuse this; Ember refuses it for every discrete schedule.
        return Err(Error::argument(
            "num_inference_steps",
            format!("{n} steps exceed num_train_timesteps = {t_max}"),
        ));
    }
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, T−1, n, dtype=float32)[::-1]: f64 maths, then a float32 cast.
            let mut v: Vec<f64> = linspace_f64(0.0, (t_max - 1) as f64, n)
                .into_iter()
                .map(f32r)
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            // (arange(n) · (T // n)).round()[::-1] + steps_offset, exact integers (added in
            // f64 so that an absurd offset cannot overflow).
            let ratio = t_max / n;
            (0..n)
                .rev()
                .map(|i| f32r((i * ratio) as f64 + steps_offset as f64))
                .collect()
        }
        TimestepSpacing::Trailing => {
            // arange(T, 0, −T/n).round() − 1, rounding half to even like numpy.
            let ratio = t_max as f64 / n as f64;
            np_arange(t_max as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| f32r(t.round_ties_even()) - 1.0)
                .collect()
        }
    };
    Ok(ts)
}

/// σs of the requested spacing between the end points of `in_sigmas` (or the
/// `sigma_min` / `sigma_max` overrides), diffusers' `_convert_to_karras` /
/// `_convert_to_exponential` / `_convert_to_beta`; `None` for [`SigmaSpacing::Interpolated`].
pub fn convert_sigmas(
    spacing: SigmaSpacing,
    in_sigmas: &[f64],
    num_inference_steps: usize,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
) -> Option<Vec<f64>> {
    let lo = sigma_min.or_else(|| in_sigmas.last().copied())?;
    let hi = sigma_max.or_else(|| in_sigmas.first().copied())?;
    let n = num_inference_steps;
    match spacing {
        SigmaSpacing::Interpolated => None,
        SigmaSpacing::Karras => Some(sigmas::karras_sigmas(lo, hi, n, sigmas::KARRAS_RHO)),
        SigmaSpacing::Exponential => Some(sigmas::exponential_sigmas(lo, hi, n)),
        SigmaSpacing::Beta => Some(sigmas::beta_sigmas(lo, hi, n, 0.6, 0.6)),
    }
}

/// The σ list and timesteps most σ-space schedulers build in `set_timesteps`: σ
/// interpolated at each timestep, then (for Karras / exponential / beta spacing) replaced
/// by the converted σs, with timesteps recomputed by inverting σ (f64 `_sigma_to_t`).
/// Returns `(timesteps, sigmas)` without the final σ; σs are not yet rounded to float32.
pub fn interpolated_schedule(
    train: &TrainSigmas,
    spacing: SigmaSpacing,
    timesteps: Vec<f64>,
    num_inference_steps: usize,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| train.interp(t)).collect();
    match convert_sigmas(spacing, &sigmas, num_inference_steps, sigma_min, sigma_max) {
        Some(converted) => {
            let ts = converted.iter().map(|&s| train.sigma_to_t(s)).collect();
            (ts, converted)
        }
        None => (timesteps, sigmas),
    }
}

/// Checks caller-supplied timesteps: non-empty, finite, strictly decreasing, inside the
/// training range. Unlike `ddpm_common::check_custom_timesteps` fractional timesteps are
/// allowed here (σ is interpolated), hence the separate check.
pub fn check_custom_timesteps(timesteps: &[f64], num_train_timesteps: usize) -> Result<()> {
    if timesteps.is_empty() {
        return Err(Error::argument("timesteps", "must not be empty"));
    }
    if timesteps.len() > MAX_INFERENCE_STEPS {
        return Err(Error::argument(
            "timesteps",
            format!("more than {MAX_INFERENCE_STEPS} values"),
        ));
    }
    let t_max = (num_train_timesteps - 1) as f64;
    if let Some(t) = timesteps
        .iter()
        .find(|t| !(t.is_finite() && (0.0..=t_max).contains(*t)))
    {
        return Err(Error::argument(
            "timesteps",
            format!("{t} is outside the training range [0, {t_max}]"),
        ));
    }
    if let Some(w) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
        return Err(Error::argument(
            "timesteps",
            format!(
                "must be strictly decreasing, but {} is followed by {}",
                w[0], w[1]
            ),
        ));
    }
    Ok(())
}

/// Checks caller-supplied σs (the full list, final σ included): at least two values,
/// finite, non-negative, strictly decreasing.
pub fn check_custom_sigmas(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(Error::argument(
            "sigmas",
            "needs at least two values (the last one is the final noise level)",
        ));
    }
    if sigmas.len() > MAX_INFERENCE_STEPS + 1 {
        return Err(Error::argument(
            "sigmas",
            format!("more than {MAX_INFERENCE_STEPS} steps"),
        ));
    }
    if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
        return Err(Error::argument(
            "sigmas",
            format!("{s} is not a finite non-negative σ"),
        ));
    }
    if let Some(w) = sigmas.windows(2).find(|w| w[1] >= w[0]) {
        return Err(Error::argument(
            "sigmas",
            format!(
                "must be strictly decreasing, but {} is followed by {}",
                w[0], w[1]
            ),
        ));
    }
    Ok(())
}

/// Refuses a `mu` (dynamic shifting belongs to flow-matching schedulers).
pub fn reject_mu(mu: Option<f64>, class_name: &str) -> Result<()> {
    match mu {
        Some(_) => Err(Error::argument(
            "mu",
            format!("{class_name} has no dynamic shifting"),
        )),
        None => Ok(()),
    }
}

/// The standard deviation of the initial noise: `max σ` for `linspace`/`trailing` spacing,
/// `√(max σ² + 1)` for `leading` (computed in float32 like diffusers' tensor maths).
pub fn init_noise_sigma(spacing: TimestepSpacing, sigmas: &[f64]) -> f64 {
    // torch's max propagates NaN; the σ lists here never hold one.
    let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
        TimestepSpacing::Leading => f64::from((max * max + 1.0).sqrt()),
    }
}

/// Relative tolerance of the fallback timestep match in [`index_for_timestep`].
pub const TIMESTEP_MATCH_TOLERANCE: f64 = 1e-5;

/// diffusers' `index_for_timestep`: the position of `timestep` in the schedule; when it
/// occurs more than once (Heun, KDPM2), the second occurrence, so that starting part-way
/// (img2img) does not skip a σ. Timesteps compare as float32, as the tensors do.
///
/// diffusers requires exact equality. Fractional timesteps obtained by inverting σ depend
/// on float32 `log`, whose last bit differs between libm, numpy and torch, so a timestep
/// taken from diffusers' own schedule may differ from Ember's in the last float32 place.
/// When nothing matches exactly, the nearest entry within
/// [`TIMESTEP_MATCH_TOLERANCE`]` · max(1, |t|)` is accepted (with the same second-occurrence
/// rule); anything farther is an error.
pub fn index_for_timestep(schedule: &[f64], timestep: f64) -> Result<usize> {
    use crate::schedule::second_or_first_match;
    let t = f32r(timestep);
    let exact = second_or_first_match(schedule, |s| f32r(s) == t);
    if let Some(i) = exact {
        return Ok(i);
    }
    let tol = TIMESTEP_MATCH_TOLERANCE * timestep.abs().max(1.0);
    let nearest = schedule
        .iter()
        .map(|&s| (s - timestep).abs())
        .filter(|d| *d <= tol)
        .fold(f64::INFINITY, f64::min);
    let close = if nearest.is_finite() {
        second_or_first_match(schedule, |s| (s - timestep).abs() == nearest)
    } else {
        None
    };
    close.ok_or_else(|| {
        Error::argument(
            "timestep",
            format!("{timestep} is not one of the scheduler's timesteps"),
        )
    })
}

/// The σ list, timesteps and step bookkeeping every σ-space scheduler holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SigmaSchedule {
    /// The timesteps to visit, one per model evaluation (diffusers' `timesteps`).
    pub timesteps: Vec<f64>,
    /// diffusers' `sigmas` (float32 values), one more than needed by the steps in most
    /// schedulers: the final noise level.
    pub sigmas: Vec<f64>,
    /// Index of the next step once stepping has started (diffusers' `_step_index`).
    pub step_index: Option<usize>,
    /// Index the first step starts at (diffusers' `_begin_index`).
    pub begin_index: Option<usize>,
    /// Whether `set_timesteps` has run. Before it, `timesteps`/`sigmas` hold the schedule
    /// diffusers' constructor builds (usable by `add_noise`, as in training), but stepping
    /// is refused.
    pub ready: bool,
}

impl SigmaSchedule {
    /// The schedule a constructor builds (stepping not yet allowed).
    pub fn initial(timesteps: Vec<f64>, sigmas: Vec<f64>) -> Self {
        Self {
            timesteps,
            sigmas,
            step_index: None,
            begin_index: None,
            ready: false,
        }
    }

    /// Installs the schedule of a `set_timesteps` call and resets the step indices.
    pub fn install(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) {
        *self = Self {
            timesteps,
            sigmas,
            step_index: None,
            begin_index: None,
            ready: true,
        };
    }

    /// The index of the step about to run at `timestep`, initialising it on the first call
    /// (from `begin_index` when set, else by looking `timestep` up) as diffusers'
    /// `_init_step_index` does. Errors before `set_timesteps` and past the last timestep.
    pub fn current_index(&mut self, timestep: f64, class_name: &str) -> Result<usize> {
        if !self.ready {
            return Err(Error::State(format!(
                "{class_name}: call set_timesteps before scale_model_input/step"
            )));
        }
        let index = match self.step_index {
            Some(i) => i,
            None => {
                let i = match self.begin_index {
                    Some(b) => b,
                    None => index_for_timestep(&self.timesteps, timestep)?,
                };
                self.step_index = Some(i);
                i
            }
        };
        if index >= self.timesteps.len() {
            return Err(Error::State(format!(
                "{class_name}: all {} timesteps have been stepped through (step index {index}); \
                 call set_timesteps again",
                self.timesteps.len()
            )));
        }
        Ok(index)
    }

    /// Advances the step index after a step.
    pub fn advance(&mut self) {
        self.step_index = Some(self.step_index.map_or(0, |i| i + 1));
    }

    /// Sets the index of the first step (img2img).
    pub fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    /// σ at `index`, with an error (not a panic) when the index is out of range.
    pub fn sigma(&self, index: usize) -> Result<f64> {
        sigma_at(&self.sigmas, index, "sigmas")
    }

    /// diffusers' `add_noise` for σ-space schedulers: `x₀ + σ ε` with σ looked up per
    /// timestep (training, `begin_index` unset), or taken at the current step (inpainting,
    /// after the first step) or at `begin_index` (img2img, before it).
    pub fn add_noise<S: SampleTensor>(
        &self,
        original: &S,
        noise: &S,
        timesteps: &[f64],
    ) -> Result<S> {
        check_same_shape("noise", original, noise)?;
        let batch = original.batch_size();
        if timesteps.is_empty() || !(timesteps.len() == 1 || timesteps.len() == batch) {
            return Err(Error::Shape {
                what: "add_noise timesteps".into(),
                expected: format!("1 or {batch} timesteps (one per sample)"),
                got: vec![timesteps.len()],
            });
        }
        let indices: Vec<usize> = match (self.begin_index, self.step_index) {
            (None, _) => timesteps
                .iter()
                .map(|&t| index_for_timestep(&self.timesteps, t))
                .collect::<Result<_>>()?,
            (Some(_), Some(step)) => vec![step; timesteps.len()],
            (Some(begin), None) => vec![begin; timesteps.len()],
        };
        let factors: Vec<f64> = indices
            .iter()
            .map(|&i| self.sigma(i))
            .collect::<Result<_>>()?;
        Ok(original.add(&noise.scale_per_sample(&factors)))
    }
}

/// `values[index]` or an error naming the table.
pub fn sigma_at(values: &[f64], index: usize, what: &str) -> Result<f64> {
    values.get(index).copied().ok_or_else(|| {
        Error::State(format!(
            "{what} index {index} is out of range ({} values)",
            values.len()
        ))
    })
}

/// Repeats every entry after the first twice and the last entry once more, diffusers'
/// `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])` for second-order schedulers.
pub fn interleave_tail(x: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * x.len());
    if let Some((first, rest)) = x.split_first() {
        out.push(*first);
        for &v in rest {
            out.push(v);
            out.push(v);
        }
        if let Some(&last) = x.last() {
            out.push(last);
        }
    }
    out
}

/// diffusers' `cat([x[:1], x[1:-1].repeat_interleave(2), x[-1:]])` (Heun's σ list): every
/// interior entry twice, the ends once.
pub fn double_interior(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    if n < 2 {
        return x.to_vec();
    }
    let mut out = Vec::with_capacity(2 * n);
    out.push(x[0]);
    for &v in &x[1..n - 1] {
        out.push(v);
        out.push(v);
    }
    out.push(x[n - 1]);
    out
}

/// diffusers' `cat([t[:1], t[1:].repeat_interleave(2)])` (Heun's timesteps): every entry
/// after the first twice.
pub fn double_tail(t: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * t.len());
    if let Some((first, rest)) = t.split_first() {
        out.push(*first);
        for &v in rest {
            out.push(v);
            out.push(v);
        }
    }
    out
}

/// KDPM2's interpolated σ, `exp(lerp(ln a, ln b, ½))`, the geometric mean of `a` and `b`,
/// in float32 with torch's `lerp` formula for weight ½ (`b − (b − a)·½`). As in diffusers,
/// a zero `b` with a positive `a` gives NaN (−∞ + ∞) and a zero `a` gives 0.
pub fn log_lerp_half_f32(a: f64, b: f64) -> f64 {
    let la = (a.ln()) as f32;
    let lb = (b.ln()) as f32;
    let l = lb - (lb - la) * 0.5f32;
    f32r(f64::from(l).exp())
}

/// The model-input scaling of σ-space schedulers: `x / √(σ² + 1)`, which brings
/// `x₀ + σ ε` (variance ≈ 1 + σ²) back to the unit-variance input a DDPM-trained model saw.
pub fn scale_input<S: SampleTensor>(sample: &S, sigma: f64) -> S {
    sample.scale(1.0 / (sigma * sigma + 1.0).sqrt())
}

/// x₀ from the model output at noise level σ, in the variance-exploding view
/// `x = x₀ + σ ε`:
/// - ε-prediction: `x₀ = x − σ ε`;
/// - v-prediction: with the model seeing `x/√(σ²+1)`, `x₀ = −σ/√(σ²+1)·v + x/(σ²+1)`;
/// - sample prediction: the output is x₀.
pub fn predict_x0<S: SampleTensor>(
    prediction: Prediction,
    model_output: &S,
    sample: &S,
    sigma: f64,
) -> Result<S> {
    match prediction {
        Prediction::Epsilon => Ok(S::lin_comb(&[(1.0, sample), (-sigma, model_output)])),
        Prediction::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            Ok(S::lin_comb(&[
                (-sigma / s2.sqrt(), model_output),
                (1.0 / s2, sample),
            ]))
        }
        Prediction::Sample => Ok(model_output.clone()),
        Prediction::FlowPrediction => Err(Error::config(
            "prediction_type",
            "flow_prediction is not defined for σ-space (variance-exploding) schedulers",
        )),
    }
}

/// The ODE derivative `d = (x − x₀)/σ` of Karras et al. (2022), eq. 3.
pub fn derivative<S: SampleTensor>(sample: &S, x0: &S, sigma: f64) -> S {
    S::lin_comb(&[(1.0 / sigma, sample), (-1.0 / sigma, x0)])
}

/// Returns the caller's noise for a stochastic step, checking it is there and has the
/// sample's shape.
pub fn require_noise<'a, S: SampleTensor>(
    noise: Option<&'a S>,
    sample: &S,
    class_name: &str,
) -> Result<&'a S> {
    let noise = noise.ok_or_else(|| {
        Error::argument(
            "noise",
            format!("{class_name} takes a stochastic step here and needs standard-normal noise"),
        )
    })?;
    check_same_shape("noise", sample, noise)?;
    Ok(noise)
}

/// Helpers shared by the unit tests of the σ-space schedulers.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::registry::from_config_json;
    use ember_core::{Error, HostTensor, SampleTensor, Scheduler, TimestepRequest};
    use serde_json::{json, Value};

    /// Builds a scheduler from JSON through the registry (as the parity harness does).
    pub fn build(cfg: Value) -> Box<dyn Scheduler<HostTensor>> {
        match from_config_json::<HostTensor>(&cfg) {
            Ok(s) => s,
            Err(e) => panic!("config {cfg} rejected: {e}"),
        }
    }

    /// The deterministic "noise" of the reference runs: cos(0.7 (k + 1) i), i = 0 … 7.
    pub fn fake_noise(k: usize) -> HostTensor {
        let d = (0..8)
            .map(|i| f64::from(((i * (k + 1)) as f64 * 0.7).cos() as f32))
            .collect();
        HostTensor::new(vec![2, 4], d).unwrap()
    }

    /// Runs the loop of the embedded diffusers comparisons: x = linspace(−1, 1, 8)
    /// · init_noise_sigma, model(x_in, t) = 0.3 x_in + 0.1 sin(t/100) (float32), noise index
    /// from `noise_index(step)`. Returns (final sample, x̂₀ of the first step).
    pub fn run(
        s: &mut dyn Scheduler<HostTensor>,
        noise_index: impl Fn(usize) -> usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let ins = s.init_noise_sigma();
        let x0: Vec<f64> = crate::schedule::linspace_f64(-1.0, 1.0, 8)
            .into_iter()
            .map(|v| f64::from((v * ins) as f32))
            .collect();
        let mut x = HostTensor::new(vec![2, 4], x0).unwrap();
        let mut first_x0 = None;
        for (j, t) in s.timesteps().to_vec().into_iter().enumerate() {
            let inp = s.scale_model_input(&x, t).unwrap();
            let out = inp.map(|v| f64::from((0.3 * v + 0.1 * (t / 100.0).sin()) as f32));
            let res = s
                .step(&out, t, &x, Some(&fake_noise(noise_index(j))))
                .unwrap();
            first_x0.get_or_insert(res.pred_original_sample.unwrap().into_data());
            x = res.prev_sample;
        }
        (x.into_data(), first_x0.unwrap_or_default())
    }

    /// Max-abs difference relative to the largest reference magnitude (at least 1).
    pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    fn ones() -> HostTensor {
        HostTensor::new(vec![2, 4], vec![1.0; 8]).unwrap()
    }

    /// The error cases every σ-space scheduler shares.
    pub fn common_errors(class: &str, has_sigma_flags: bool) {
        if has_sigma_flags {
            let cfg =
                json!({"_class_name": class, "use_karras_sigmas": true, "use_beta_sigmas": true});
            let e = from_config_json::<HostTensor>(&cfg)
                .err()
                .expect("two σ spacings must fail");
            assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
        }
        let cfg = json!({"_class_name": class, "prediction_type": "flow_prediction"});
        assert!(from_config_json::<HostTensor>(&cfg).is_err());
        let cfg = json!({"_class_name": class, "beta_schedule": "sigmoid"});
        assert!(from_config_json::<HostTensor>(&cfg).is_err());
        // Absurd sizes are refused, never allocated; absurd offsets do not overflow.
        let cfg = json!({"_class_name": class, "num_train_timesteps": 1_000_000_000_000u64});
        assert!(matches!(
            from_config_json::<HostTensor>(&cfg),
            Err(Error::InvalidConfig { .. })
        ));
        let cfg = json!({"_class_name": class, "num_train_timesteps": 0});
        assert!(matches!(
            from_config_json::<HostTensor>(&cfg),
            Err(Error::InvalidConfig { .. })
        ));
        let mut lead = build(
            json!({"_class_name": class, "timestep_spacing": "leading", "steps_offset": u64::MAX}),
        );
        lead.set_timesteps(3).unwrap();
        assert!(lead.set_timesteps(usize::MAX).is_err());
        assert!(lead.set_timesteps(1001).is_err());

        let x = ones();
        let mut s = build(json!({"_class_name": class}));
        // Before set_timesteps: the constructor schedule exists, stepping does not.
        assert!(!s.timesteps().is_empty());
        let t0 = s.timesteps()[0];
        assert!(matches!(s.step(&x, t0, &x, Some(&x)), Err(Error::State(_))));
        assert!(matches!(s.scale_model_input(&x, t0), Err(Error::State(_))));
        assert!(s.add_noise(&x, &x, &[t0]).is_ok());

        assert!(matches!(
            s.set_timesteps(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.set_timesteps_with(&TimestepRequest::steps(4).with_mu(0.5)),
            Err(Error::InvalidArgument { .. })
        ));
        let both = TimestepRequest {
            timesteps: Some(vec![900.0, 100.0]),
            ..TimestepRequest::steps(4)
        };
        assert!(matches!(
            s.set_timesteps_with(&both),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.set_timesteps_with(&TimestepRequest::default()),
            Err(Error::InvalidArgument { .. })
        ));

        s.set_timesteps(4).unwrap();
        let t0 = s.timesteps()[0];
        let nan = x.map(|v| if v > 0.0 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, t0, &x, Some(&x)),
            Err(Error::NonFinite { .. })
        ));
        let inf = x.map(|_| f64::INFINITY);
        assert!(matches!(
            s.step(&inf, t0, &x, Some(&x)),
            Err(Error::NonFinite { .. })
        ));
        let other = HostTensor::zeros(&[2, 3]);
        assert!(matches!(
            s.step(&other, t0, &x, Some(&x)),
            Err(Error::Shape { .. })
        ));
        assert_eq!(
            s.step_index(),
            None,
            "a failed step must not start the schedule"
        );
        let e = s
            .step(&x, 123.456, &x, Some(&x))
            .expect_err("unknown timestep");
        assert!(
            matches!(e, Error::InvalidArgument { ref argument, .. } if argument == "timestep"),
            "{e}"
        );
        assert!(matches!(
            s.add_noise(&x, &x, &[123.456]),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.add_noise(&x, &x, &[t0, t0, t0]),
            Err(Error::Shape { .. })
        ));

        // A full run, then one step too many.
        let ts = s.timesteps().to_vec();
        let mut y = x.clone();
        for &t in &ts {
            let inp = s.scale_model_input(&y, t).unwrap();
            y = s
                .step(&inp.scale(0.1), t, &y, Some(&x))
                .unwrap()
                .prev_sample;
        }
        assert!(y.all_finite());
        assert_eq!(s.step_index(), Some(ts.len()));
        assert!(matches!(
            s.step(&x, ts[0], &x, Some(&x)),
            Err(Error::State(_))
        ));

        // begin_index: stepping starts there whatever timestep is passed (diffusers).
        s.set_timesteps(4).unwrap();
        s.set_begin_index(2);
        let t2 = s.timesteps()[2];
        s.step(&x, t2, &x, Some(&x)).unwrap();
        assert_eq!(s.step_index(), Some(3));
        assert_eq!(s.begin_index(), Some(2));
        // Re-laying out the schedule resets both indices.
        s.set_timesteps(4).unwrap();
        assert_eq!((s.step_index(), s.begin_index()), (None, None));

        // Config round trip through JSON.
        let json = s.config_json();
        assert_eq!(json["_class_name"], class);
        let again = build(json.clone());
        assert_eq!(again.config_json(), json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_length_quirk() {
        // numpy: len(np.arange(1000, 0, -1000/61)) == 62 (last value ≈ −5.7e-13).
        let v = np_arange(1000.0, 0.0, -1000.0 / 61.0);
        assert_eq!(v.len(), 62);
        assert!(v[61].abs() < 1e-9);
        assert_eq!(np_arange(1000.0, 0.0, -100.0).len(), 10);
        let ts = spaced_timesteps(TimestepSpacing::Trailing, 1000, 61, 0).unwrap();
        assert_eq!(ts.len(), 62);
        assert_eq!(*ts.last().unwrap(), -1.0);
    }

    #[test]
    fn spacings() {
        let lin = spaced_timesteps(TimestepSpacing::Linspace, 1000, 4, 0).unwrap();
        assert_eq!(lin, vec![999.0, 666.0, 333.0, 0.0]);
        let lead = spaced_timesteps(TimestepSpacing::Leading, 1000, 4, 1).unwrap();
        assert_eq!(lead, vec![751.0, 501.0, 251.0, 1.0]);
        let trail = spaced_timesteps(TimestepSpacing::Trailing, 1000, 4, 0).unwrap();
        assert_eq!(trail, vec![999.0, 749.0, 499.0, 249.0]);
        assert!(spaced_timesteps(TimestepSpacing::Linspace, 1000, 0, 0).is_err());
        assert!(spaced_timesteps(TimestepSpacing::Leading, 10, 11, 0).is_err());
        assert!(spaced_timesteps(TimestepSpacing::Linspace, 10, 11, 0).is_err());
        assert!(spaced_timesteps(TimestepSpacing::Linspace, 10, 10, 0).is_ok());
    }

    #[test]
    fn lookup_prefers_second_occurrence() {
        let ts = [9.0, 5.0, 5.0, 1.0, 1.0];
        assert_eq!(index_for_timestep(&ts, 9.0).unwrap(), 0);
        assert_eq!(index_for_timestep(&ts, 5.0).unwrap(), 2);
        assert!(index_for_timestep(&ts, 4.0).is_err());
    }

    #[test]
    fn interleave() {
        assert_eq!(
            interleave_tail(&[3.0, 2.0, 0.0]),
            vec![3.0, 2.0, 2.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn custom_lists_checked() {
        assert!(check_custom_sigmas(&[3.0, 1.0, 0.0]).is_ok());
        assert!(check_custom_sigmas(&[3.0, 4.0, 0.0]).is_err());
        assert!(check_custom_sigmas(&[3.0]).is_err());
        assert!(check_custom_timesteps(&[900.0, 500.0, 10.0], 1000).is_ok());
        assert!(check_custom_timesteps(&[500.0, 900.0], 1000).is_err());
        assert!(check_custom_timesteps(&[1000.0], 1000).is_err());
    }
}
