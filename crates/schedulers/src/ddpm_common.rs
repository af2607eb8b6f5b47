//! Pieces shared by the discrete-time, ᾱ-parameterised schedulers of the DDPM family
//! (`DDPMScheduler`, `DDIMScheduler`, `DDIMInverseScheduler`, `PNDMScheduler`,
//! `LCMScheduler`, `TCDScheduler`): timestep spacings, the conversion of a model output to
//! (x̂₀, ε̂), clipping and dynamic thresholding of x̂₀, the forward process (`add_noise`,
//! `get_velocity`) and argument checks.
//!
//! # Notation
//! With ᾱ_t = Π_{s≤t}(1 − β_s), the forward process is x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
//! (Ho et al. 2020, eq. 4). diffusers calls ᾱ_t `alpha_prod_t` and 1 − ᾱ_t `beta_prod_t`.
//!
//! # Precision
//! diffusers computes the per-step scalar coefficients of these schedulers with float32
//! 0-d tensors (`self.alphas_cumprod[t]` is float32). For neighbouring timesteps the
//! quantity 1 − ᾱ_t/ᾱ_{t−1} (≈ β_t ≈ 1e-4) loses three to four significant digits in float32,
//! so an f64 evaluation differs from diffusers by up to ~1e-4 in a DDPM coefficient. f64 is
//! no more faithful to the trained model here (ᾱ itself is a rounded float32 cumulative
//! product), so these schedulers evaluate their step coefficients in `f32`, operation for
//! operation as diffusers does, and hand the results to the tensors as `f64`.

use ember_core::{Error, Prediction, Result, SampleTensor, TimestepRequest};

// `TimestepSpacing` and `np_arange` are shared by every scheduler family; they live in
// `crate::schedule` and are re-exported here under their old paths.
pub use crate::schedule::{np_arange, TimestepSpacing};

/// `numpy.linspace(start, stop, num, endpoint=False)`: `start + i·(stop − start)/num`.
pub fn np_linspace_no_endpoint(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    let step = (stop - start) / num as f64;
    (0..num).map(|i| i as f64 * step + start).collect()
}

/// The descending inference timesteps of `DDPMScheduler` / `DDIMScheduler`
/// (`set_timesteps(n)`), exactly as diffusers lays them out.
///
/// diffusers lays out the same [`TimestepSpacing`] differently per family, so this is one of
/// three deliberately separate layouts: here `linspace` has n points and `leading` uses the
/// ratio T // n; the multistep solvers ([`crate::vp_solver::spaced_timesteps`]) take n of
/// n + 1 points and T // (n + 1); the σ-space schedulers
/// ([`crate::sigma_schedule::spaced_timesteps`]) keep fractional float32 timesteps.
///
/// The caller has already checked `1 ≤ n ≤ num_train_timesteps`.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<i64> {
    let t_train = num_train_timesteps as i64;
    match spacing {
        TimestepSpacing::Linspace => crate::schedule::linspace_f64(0.0, (t_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            // Integer step ratio T // n: the schedule starts at 0 and may not reach T − 1.
            let ratio = t_train / n as i64;
            (0..n as i64)
                .rev()
                .map(|k| k * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // Fractional step ratio T / n counted down from T, then shifted by −1.
            let ratio = num_train_timesteps as f64 / n as f64;
            np_arange(num_train_timesteps as f64, 0.0, -ratio)
                .into_iter()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// What a `set_timesteps` request of a DDPM-family scheduler asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum StepsRequest {
    /// A number of inference steps (at least 1).
    Count(usize),
    /// Explicit integer timesteps, strictly decreasing, all in `[0, num_train_timesteps)`.
    Custom(Vec<i64>),
}

/// Reads a [`TimestepRequest`] for a scheduler that lays out integer training timesteps.
///
/// Rejects σ lists and `mu` (these schedulers have neither), both or neither of a count and
/// a list, a zero count, and custom timesteps that are not integers, not strictly
/// decreasing, negative, or not below `num_train_timesteps` (diffusers indexes ᾱ with them;
/// a negative index would silently wrap around in Python). Custom lists are only accepted
/// when `allow_custom`; counts above `num_train_timesteps` only when `!limit_count`.
pub fn read_request(
    class_name: &str,
    request: &TimestepRequest,
    num_train_timesteps: usize,
    allow_custom: bool,
    limit_count: bool,
) -> Result<StepsRequest> {
    if request.sigmas.is_some() {
        return Err(Error::argument(
            "sigmas",
            format!("{class_name} does not accept custom sigmas"),
        ));
    }
    if request.mu.is_some() {
        return Err(Error::argument(
            "mu",
            format!("{class_name} has no resolution-dependent shift; `mu` is for flow-matching schedulers"),
        ));
    }
    match (request.num_inference_steps, &request.timesteps) {
        (Some(_), Some(_)) => Err(Error::argument(
            "timesteps",
            "pass either `num_inference_steps` or custom `timesteps`, not both",
        )),
        (None, None) => Err(Error::argument(
            "num_inference_steps",
            "pass either `num_inference_steps` or custom `timesteps`",
        )),
        (Some(n), None) => {
            if n == 0 {
                return Err(Error::argument("num_inference_steps", "must be at least 1"));
            }
            if limit_count && n > num_train_timesteps {
                return Err(Error::argument(
                    "num_inference_steps",
                    format!(
                        "{n} cannot be larger than num_train_timesteps = {num_train_timesteps}: the \
                         model was trained on {num_train_timesteps} timesteps only"
                    ),
                ));
            }
            Ok(StepsRequest::Count(n))
        }
        (None, Some(ts)) => {
            if !allow_custom {
                return Err(Error::argument(
                    "timesteps",
                    format!("{class_name} does not accept custom timesteps; pass a step count"),
                ));
            }
            Ok(StepsRequest::Custom(check_custom_timesteps(
                ts,
                num_train_timesteps,
            )?))
        }
    }
}

/// Validates a custom timestep list (see [`read_request`]) and converts it to integers.
pub fn check_custom_timesteps(ts: &[f64], num_train_timesteps: usize) -> Result<Vec<i64>> {
    if ts.is_empty() {
        return Err(Error::argument(
            "timesteps",
            "the custom timestep list is empty",
        ));
    }
    for (i, &t) in ts.iter().enumerate() {
        if !t.is_finite() || t.fract() != 0.0 {
            return Err(Error::argument(
                "timesteps",
                format!("timesteps[{i}] = {t} is not an integer training timestep"),
            ));
        }
        if t < 0.0 {
            return Err(Error::argument(
                "timesteps",
                format!("timesteps[{i}] = {t} is negative"),
            ));
        }
        if i > 0 && t >= ts[i - 1] {
            return Err(Error::argument(
                "timesteps",
                format!(
                    "custom timesteps must be strictly decreasing, but timesteps[{i}] = {t} follows {}",
                    ts[i - 1]
                ),
            ));
        }
    }
    if ts[0] >= num_train_timesteps as f64 {
        return Err(Error::argument(
            "timesteps",
            format!(
                "must start below num_train_timesteps = {num_train_timesteps}, got {}",
                ts[0]
            ),
        ));
    }
    Ok(ts.iter().map(|&t| t as i64).collect())
}

/// Converts a timestep passed to `step` / `add_noise` to an index into ᾱ.
pub fn train_index(what: &str, t: f64, num_train_timesteps: usize) -> Result<usize> {
    if !t.is_finite() || t.fract() != 0.0 || t < 0.0 || t >= num_train_timesteps as f64 {
        return Err(Error::argument(
            what,
            format!("{t} is not an integer training timestep in [0, {num_train_timesteps})"),
        ));
    }
    Ok(t as usize)
}

/// ᾱ_t as the float32 value diffusers stores.
pub fn alphas_cumprod_f32(schedule: &crate::TrainSchedule) -> Vec<f32> {
    // The schedule holds float32 values in f64, so this cast is exact.
    schedule.alphas_cumprod.iter().map(|&a| a as f32).collect()
}

/// ᾱ at a signed timestep, with `fallback` for negative ones (diffusers'
/// `alphas_cumprod[t] if t >= 0 else final_alpha_cumprod`); an error past the end.
pub fn alpha_at(acp: &[f32], t: i64, fallback: f32) -> Result<f32> {
    if t < 0 {
        return Ok(fallback);
    }
    acp.get(t as usize).copied().ok_or_else(|| {
        Error::argument(
            "timestep",
            format!("{t} is past the last training timestep {}", acp.len() - 1),
        )
    })
}

// The `prediction_type` check is shared by every scheduler family (re-exported here).
pub use crate::config::check_prediction;

/// The beta schedules every DDPM-family scheduler of diffusers implements.
pub const BASIC_BETA_SCHEDULES: [crate::BetaSchedule; 3] = [
    crate::BetaSchedule::Linear,
    crate::BetaSchedule::ScaledLinear,
    crate::BetaSchedule::SquaredcosCapV2,
];

/// Checks `beta_schedule` against the ones diffusers implements for a class (ignored, as
/// in diffusers, when `trained_betas` are given).
pub fn check_beta_schedule(
    schedule: crate::BetaSchedule,
    supported: &[crate::BetaSchedule],
    has_trained_betas: bool,
    class_name: &str,
) -> Result<()> {
    if has_trained_betas || supported.contains(&schedule) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|s| s.name()).collect();
    let given = schedule.name();
    Err(Error::config(
        "beta_schedule",
        format!(
            "{class_name} implements {}, not `{given}`",
            names.join(", ")
        ),
    ))
}

/// Checks the x̂₀ clipping / thresholding options shared by DDPM, DDIM and LCM configs.
pub fn check_clip_options(
    clip_sample_range: f64,
    thresholding: bool,
    dynamic_thresholding_ratio: f64,
    sample_max_value: f64,
) -> Result<()> {
    if !clip_sample_range.is_finite() || clip_sample_range < 0.0 {
        return Err(Error::config(
            "clip_sample_range",
            format!("must be finite and ≥ 0, got {clip_sample_range}"),
        ));
    }
    if thresholding {
        if !(0.0..=1.0).contains(&dynamic_thresholding_ratio) {
            return Err(Error::config(
                "dynamic_thresholding_ratio",
                format!("is a quantile and must lie in [0, 1], got {dynamic_thresholding_ratio}"),
            ));
        }
        if sample_max_value.is_nan() || sample_max_value <= 0.0 {
            return Err(Error::config(
                "sample_max_value",
                format!("must be positive (it bounds the threshold s), got {sample_max_value}"),
            ));
        }
    }
    Ok(())
}

/// How x̂₀ is kept in range after it is predicted (diffusers: thresholding wins over clipping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Clamp {
    /// Leave x̂₀ as is.
    None,
    /// Clamp to `[-r, r]` (`clip_sample`, `clip_sample_range`).
    Clip(f64),
    /// Dynamic thresholding (Saharia et al. 2022, "Imagen", §2.3) with the quantile `ratio`
    /// of |x̂₀| and the upper bound `max_value` for the threshold s.
    Threshold {
        /// `dynamic_thresholding_ratio`.
        ratio: f64,
        /// `sample_max_value`.
        max_value: f64,
    },
}

impl X0Clamp {
    /// The clamp a config asks for.
    pub fn from_options(
        thresholding: bool,
        clip_sample: bool,
        clip_sample_range: f64,
        dynamic_thresholding_ratio: f64,
        sample_max_value: f64,
    ) -> Self {
        if thresholding {
            X0Clamp::Threshold {
                ratio: dynamic_thresholding_ratio,
                max_value: sample_max_value,
            }
        } else if clip_sample {
            X0Clamp::Clip(clip_sample_range)
        } else {
            X0Clamp::None
        }
    }

    /// Applies the clamp to x̂₀.
    pub fn apply<S: SampleTensor>(self, x0: S) -> S {
        match self {
            X0Clamp::None => x0,
            X0Clamp::Clip(r) => x0.clamp(-r, r),
            X0Clamp::Threshold { ratio, max_value } => threshold_sample(&x0, ratio, max_value),
        }
    }
}

/// Dynamic thresholding (Imagen, §2.3): per sample, s = quantile_ratio(|x̂₀|) clamped to
/// `[1, max_value]`, then x̂₀ ← clamp(x̂₀, −s, s)/s. "When clamped to min = 1, equivalent to
/// standard clipping to [−1, 1]".
///
/// The per-sample quantile needs a sort, which [`SampleTensor`] does not offer, so this runs
/// on the host (one read-back and one upload per step). Thresholding is only meant for
/// pixel-space models with small samples, where that cost is negligible.
///
/// The multistep solvers use [`crate::vp_solver::dynamic_threshold`] instead: the same
/// operation with an f64 quantile rank and a device-side clamp; see there why the two are
/// not merged yet.
pub fn threshold_sample<S: SampleTensor>(x0: &S, ratio: f64, max_value: f64) -> S {
    let mut host = x0.to_host();
    let per = host.sample_len().max(1);
    for chunk in host.data_mut().chunks_mut(per) {
        let s = quantile_abs_f32(chunk, ratio).max(1.0).min(max_value);
        for v in chunk.iter_mut() {
            *v = v.clamp(-s, s) / s;
        }
    }
    S::from_host_like(&host, x0)
}

/// `torch.quantile(|x|, q)` (linear interpolation) as PyTorch computes it for float32 input:
/// the rank q·(n − 1) is formed in float32 and the two neighbours are blended with
/// `torch.lerp`'s formula.
fn quantile_abs_f32(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().map(|v| v.abs()).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    if n == 0 {
        return 1.0;
    }
    let rank = (q as f32) * ((n - 1) as f32);
    let below = (rank.floor() as usize).min(n - 1);
    let above = (rank.ceil() as usize).min(n - 1);
    let w = f64::from(rank - rank.floor());
    let (lo, hi) = (sorted[below], sorted[above]);
    if w < 0.5 {
        lo + w * (hi - lo)
    } else {
        hi - (hi - lo) * (1.0 - w)
    }
}

/// √ᾱ_t and √(1 − ᾱ_t) in float32, as diffusers' `alpha_prod_t ** 0.5` and
/// `beta_prod_t ** 0.5`.
pub fn sqrt_alpha_beta(alpha_prod_t: f32) -> (f64, f64) {
    (
        f64::from(alpha_prod_t.sqrt()),
        f64::from((1.0 - alpha_prod_t).sqrt()),
    )
}

/// x̂₀ from a model output (DDIM eq. 12's "predicted x₀"), the same expressions diffusers
/// uses:
/// - ε: x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t;
/// - x₀: x̂₀ = output;
/// - v: x̂₀ = √ᾱ_t x_t − √(1−ᾱ_t) v̂ (Salimans & Ho 2022, with α = √ᾱ, σ = √(1−ᾱ)).
pub fn predict_x0<S: SampleTensor>(
    prediction: Prediction,
    model_output: &S,
    sample: &S,
    alpha_prod_t: f32,
) -> Result<S> {
    let (sa, sb) = sqrt_alpha_beta(alpha_prod_t);
    match prediction {
        Prediction::Epsilon => Ok(sample.sub(&model_output.scale(sb)).scale(1.0 / sa)),
        Prediction::Sample => Ok(model_output.clone()),
        Prediction::VPrediction => Ok(S::lin_comb(&[(sa, sample), (-sb, model_output)])),
        Prediction::FlowPrediction => Err(Error::config(
            "prediction_type",
            "flow_prediction needs a flow-matching scheduler, not a DDPM-family one",
        )),
    }
}

/// ε̂ from a model output, before any clipping of x̂₀:
/// - ε: ε̂ = output;
/// - x₀: ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t);
/// - v: ε̂ = √ᾱ_t v̂ + √(1−ᾱ_t) x_t.
pub fn predict_eps<S: SampleTensor>(
    prediction: Prediction,
    model_output: &S,
    sample: &S,
    alpha_prod_t: f32,
) -> Result<S> {
    let (sa, sb) = sqrt_alpha_beta(alpha_prod_t);
    match prediction {
        Prediction::Epsilon => Ok(model_output.clone()),
        Prediction::Sample => Ok(eps_from_x0(sample, model_output, alpha_prod_t)),
        Prediction::VPrediction => Ok(S::lin_comb(&[(sa, model_output), (sb, sample)])),
        Prediction::FlowPrediction => Err(Error::config(
            "prediction_type",
            "flow_prediction needs a flow-matching scheduler, not a DDPM-family one",
        )),
    }
}

/// ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t): the noise implied by an x̂₀ estimate (also used by
/// DDIM's `use_clipped_model_output`, which re-derives ε̂ from the clipped x̂₀ as GLIDE does).
pub fn eps_from_x0<S: SampleTensor>(sample: &S, x0: &S, alpha_prod_t: f32) -> S {
    let (sa, sb) = sqrt_alpha_beta(alpha_prod_t);
    sample.sub(&x0.scale(sa)).scale(1.0 / sb)
}

/// Checks a step's model output (finite, the sample's shape).
pub fn check_step_inputs<S: SampleTensor>(model_output: &S, sample: &S) -> Result<()> {
    ember_core::scheduler::check_finite("model_output", model_output)?;
    ember_core::scheduler::check_same_shape("model_output", sample, model_output)
}

/// The caller's noise for a stochastic step: present, finite and of the sample's shape.
pub fn require_noise<'a, S: SampleTensor>(
    noise: Option<&'a S>,
    sample: &S,
    why: &str,
) -> Result<&'a S> {
    let noise = noise.ok_or_else(|| {
        Error::argument(
            "noise",
            format!(
                "this step is stochastic ({why}); pass standard-normal noise of the sample's shape"
            ),
        )
    })?;
    ember_core::scheduler::check_same_shape("noise", sample, noise)?;
    Ok(noise)
}

/// Per-sample forward-process coefficients (√ᾱ_t, √(1 − ᾱ_t)) for `add_noise` /
/// `get_velocity`, in float32 as diffusers casts ᾱ to the sample's dtype. `timesteps` has one
/// entry per sample or a single one for all.
fn forward_coefficients<S: SampleTensor>(
    acp: &[f32],
    x: &S,
    timesteps: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let batch = x.batch_size();
    if timesteps.is_empty() || (timesteps.len() != 1 && timesteps.len() != batch) {
        return Err(Error::argument(
            "timesteps",
            format!(
                "expected 1 or {batch} (the batch size) timesteps, got {}",
                timesteps.len()
            ),
        ));
    }
    let mut sa = Vec::with_capacity(timesteps.len());
    let mut sb = Vec::with_capacity(timesteps.len());
    for &t in timesteps {
        let a = acp[train_index("timesteps", t, acp.len())?];
        sa.push(f64::from(a.sqrt()));
        sb.push(f64::from((1.0 - a).sqrt()));
    }
    Ok((sa, sb))
}

/// The forward process q(x_t | x₀): x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (diffusers' `add_noise`).
pub fn add_noise_vp<S: SampleTensor>(
    acp: &[f32],
    original: &S,
    noise: &S,
    timesteps: &[f64],
) -> Result<S> {
    ember_core::scheduler::check_same_shape("noise", original, noise)?;
    let (sa, sb) = forward_coefficients(acp, original, timesteps)?;
    Ok(original
        .scale_per_sample(&sa)
        .add(&noise.scale_per_sample(&sb)))
}

/// The v-prediction target v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (diffusers' `get_velocity`).
pub fn velocity_vp<S: SampleTensor>(
    acp: &[f32],
    sample: &S,
    noise: &S,
    timesteps: &[f64],
) -> Result<S> {
    ember_core::scheduler::check_same_shape("noise", sample, noise)?;
    let (sa, sb) = forward_coefficients(acp, sample, timesteps)?;
    Ok(noise
        .scale_per_sample(&sa)
        .sub(&sample.scale_per_sample(&sb)))
}

/// diffusers' `_step_index` / `_begin_index` bookkeeping.
///
/// LCM and TCD use it to find the next timestep. DDPM, DDIM, DDIM-inverse and PNDM locate
/// their step from the timestep value alone (as diffusers does); for them it only reports
/// progress and stores the img2img `begin_index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepIndex {
    step: Option<usize>,
    begin: Option<usize>,
}

impl StepIndex {
    /// Forgets both indices (diffusers' `set_timesteps` resets them).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
    /// The index of the next step, once stepping has started.
    pub fn step_index(&self) -> Option<usize> {
        self.step
    }
    /// The begin index set by the pipeline, if any.
    pub fn begin_index(&self) -> Option<usize> {
        self.begin
    }
    /// Sets the index the first step starts at.
    pub fn set_begin_index(&mut self, begin: usize) {
        self.begin = Some(begin);
    }
    /// The index of the current step, initialised on the first step as diffusers'
    /// `_init_step_index` does: `begin_index` if set, else the position of `timestep` in the
    /// schedule (the second occurrence when it appears twice, so a schedule entered midway
    /// does not skip a step). An error when the timestep is not in the schedule.
    pub fn current(&mut self, timesteps: &[f64], timestep: f64) -> Result<usize> {
        if let Some(i) = self.step {
            return Ok(i);
        }
        let i = match self.begin {
            Some(b) => b,
            None => index_for_timestep(timesteps, timestep).ok_or_else(|| {
                Error::argument(
                    "timestep",
                    format!("{timestep} is not one of the scheduler's timesteps"),
                )
            })?,
        };
        self.step = Some(i);
        Ok(i)
    }
    /// Like [`StepIndex::current`], for schedulers that do not need the index: a timestep
    /// outside the schedule starts the count at 0 instead of failing.
    pub fn current_lenient(&mut self, timesteps: &[f64], timestep: f64) -> usize {
        if let Some(i) = self.step {
            return i;
        }
        let i = self
            .begin
            .or_else(|| index_for_timestep(timesteps, timestep))
            .unwrap_or(0);
        self.step = Some(i);
        i
    }
    /// Moves to the next step (after a successful step).
    pub fn advance(&mut self) {
        self.step = Some(self.step.map_or(0, |i| i.saturating_add(1)));
    }
}

/// diffusers' `index_for_timestep`: the second match when there are several, else the first.
///
/// Timesteps here are integers, compared exactly.
pub fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Option<usize> {
    crate::schedule::second_or_first_match(timesteps, |t| t == timestep)
}

/// The extra arguments of `LCMScheduler.set_timesteps` / `TCDScheduler.set_timesteps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsistencyTimestepOptions {
    /// The length of the distillation schedule the inference timesteps are picked from;
    /// `None` uses the config's `original_inference_steps`. (For TCD, passing it explicitly
    /// switches to picking from all training timesteps, as in diffusers.)
    pub original_inference_steps: Option<usize>,
    /// img2img strength in (0, 1]: only the first `strength` fraction of the distillation
    /// schedule (or of a custom list, from its end) is used.
    pub strength: f64,
}

impl Default for ConsistencyTimestepOptions {
    fn default() -> Self {
        Self {
            original_inference_steps: None,
            strength: 1.0,
        }
    }
}

/// A consistency-model schedule: the timesteps, diffusers' `num_inference_steps` (for a
/// custom list: its length before the `strength` cut) and whether it was a custom list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistencySchedule {
    /// The timesteps to visit, decreasing.
    pub timesteps: Vec<i64>,
    /// diffusers' `num_inference_steps`; the step with index `num_inference_steps − 1` is
    /// the final, noise-free one.
    pub num_inference_steps: usize,
    /// Whether the timesteps came from a custom list.
    pub custom: bool,
}

/// The shared `set_timesteps` of LCM and TCD (Luo et al. 2023, "Latent Consistency Models";
/// Zheng et al. 2024, "Trajectory Consistency Distillation").
///
/// The distillation ("origin") schedule is `k·i − 1` for i = 1 … ⌊original_steps·strength⌋
/// with the skipping step k = T // original_steps (LCM's linearly spaced DDIM grid); for TCD
/// with an explicit `original_inference_steps` it is every training timestep below
/// ⌊T·strength⌋. n inference steps take the origin schedule's entries at indices
/// ⌊i·len/n⌋ (counted from its end). `explicit_original_is_dense` selects TCD's rule.
pub fn consistency_timesteps(
    class_name: &str,
    request: &TimestepRequest,
    opts: ConsistencyTimestepOptions,
    config_original_steps: usize,
    num_train_timesteps: usize,
    explicit_original_is_dense: bool,
) -> Result<ConsistencySchedule> {
    let t_train = num_train_timesteps;
    let strength = opts.strength;
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::argument(
            "strength",
            format!("must lie in (0, 1], got {strength}"),
        ));
    }
    let what = read_request(class_name, request, t_train, true, true)?;
    let original_steps = opts
        .original_inference_steps
        .unwrap_or(config_original_steps);
    let origin: Vec<i64> = if explicit_original_is_dense && opts.original_inference_steps.is_some()
    {
        (0..(t_train as f64 * strength) as i64).collect()
    } else {
        if original_steps == 0 || original_steps > t_train {
            return Err(Error::argument(
                "original_inference_steps",
                format!("must lie in [1, num_train_timesteps = {t_train}], got {original_steps}"),
            ));
        }
        let k = (t_train / original_steps) as i64;
        (1..=(original_steps as f64 * strength) as i64)
            .map(|i| i * k - 1)
            .collect()
    };
    match what {
        StepsRequest::Custom(ts) => {
            let n = ts.len();
            if strength == 1.0 && ts[0] != t_train as i64 - 1 {
                log::warn!(
                    "{class_name}: the custom schedule starts at {}, not num_train_timesteps − 1 = {}; \
                     results may be unexpected",
                    ts[0],
                    t_train - 1
                );
            }
            let off: Vec<i64> = ts[1..]
                .iter()
                .copied()
                .filter(|t| !origin.contains(t))
                .collect();
            if !off.is_empty() {
                log::warn!(
                    "{class_name}: custom timesteps {off:?} are not on the distillation schedule; \
                     results may be unexpected"
                );
            }
            let limit = original_steps;
            if n > limit {
                log::warn!(
                    "{class_name}: {n} custom timesteps exceed the {limit}-step distillation schedule; \
                     results may be unexpected"
                );
            }
            // img2img: keep the last ⌊n·strength⌋ entries (diffusers' `t_start * order` cut).
            let init = ((n as f64 * strength) as usize).min(n);
            let kept = ts[n - init..].to_vec();
            if kept.is_empty() {
                return Err(Error::argument(
                    "strength",
                    format!("strength {strength} keeps none of the {n} custom timesteps"),
                ));
            }
            Ok(ConsistencySchedule {
                timesteps: kept,
                num_inference_steps: n,
                custom: true,
            })
        }
        StepsRequest::Count(n) => {
            if origin.len() / n < 1 {
                return Err(Error::argument(
                    "num_inference_steps",
                    format!(
                        "{n} steps need a distillation schedule of at least {n} entries, but \
                         original_inference_steps × strength = {original_steps} × {strength} gives {}",
                        origin.len()
                    ),
                ));
            }
            if n > original_steps {
                return Err(Error::argument(
                    "num_inference_steps",
                    format!(
                        "{n} cannot be larger than original_inference_steps = {original_steps}: the \
                         schedule is a subset of the distillation schedule"
                    ),
                ));
            }
            let rev: Vec<i64> = origin.iter().rev().copied().collect();
            let timesteps = np_linspace_no_endpoint(0.0, rev.len() as f64, n)
                .into_iter()
                .map(|v| rev[(v.floor() as usize).min(rev.len() - 1)])
                .collect();
            Ok(ConsistencySchedule {
                timesteps,
                num_inference_steps: n,
                custom: false,
            })
        }
    }
}

/// Converts integer timesteps to the `f64` list `Scheduler::timesteps` returns.
pub fn to_f64(ts: &[i64]) -> Vec<f64> {
    ts.iter().map(|&t| t as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy() {
        // np.round(np.arange(1000, 0, -1000/7)) → [1000, 857, 714, 571, 429, 286, 143]
        let v: Vec<i64> = np_arange(1000.0, 0.0, -1000.0 / 7.0)
            .iter()
            .map(|x| x.round_ties_even() as i64)
            .collect();
        assert_eq!(v, vec![1000, 857, 714, 571, 429, 286, 143]);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        assert_eq!(np_arange(1000.0, 0.0, -1.0).len(), 1000);
    }

    #[test]
    fn spacings_match_diffusers() {
        // DDIMScheduler(...).set_timesteps(7) for each spacing (T = 1000, steps_offset = 1).
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Leading, 1000, 7, 1),
            vec![853, 711, 569, 427, 285, 143, 1]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 7, 0),
            vec![999, 856, 713, 570, 428, 285, 142]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Linspace, 1000, 7, 0),
            vec![999, 832, 666, 500, 333, 166, 0]
        );
    }

    #[test]
    fn quantile_matches_torch() {
        // torch.quantile(|x|, 0.995) and 0.6 for x = [0.5, -2, 3, 1.5, -0.25, 4, 2.5] (float32).
        let x = [0.5, -2.0, 3.0, 1.5, -0.25, 4.0, 2.5];
        assert!((quantile_abs_f32(&x, 0.995) - 3.970_000_028_610_229_5).abs() < 1e-6);
        assert!((quantile_abs_f32(&x, 0.6) - 2.300_000_190_734_863_3).abs() < 1e-6);
    }

    #[test]
    fn custom_timesteps_are_checked() {
        assert!(check_custom_timesteps(&[10.0, 10.0], 1000).is_err());
        assert!(check_custom_timesteps(&[10.0, 11.0], 1000).is_err());
        assert!(check_custom_timesteps(&[1000.0, 10.0], 1000).is_err());
        assert!(check_custom_timesteps(&[10.5, 1.0], 1000).is_err());
        assert!(check_custom_timesteps(&[10.0, -1.0], 1000).is_err());
        assert!(check_custom_timesteps(&[], 1000).is_err());
        assert_eq!(
            check_custom_timesteps(&[999.0, 500.0, 0.0], 1000).unwrap(),
            vec![999, 500, 0]
        );
    }

    #[test]
    fn registry_round_trip() {
        use ember_core::HostTensor;
        for class in [
            "DDPMScheduler",
            "DDIMScheduler",
            "DDIMInverseScheduler",
            "PNDMScheduler",
            "LCMScheduler",
            "TCDScheduler",
        ] {
            let mut s = crate::from_class_name::<HostTensor>(class, None).unwrap();
            assert_eq!(s.class_name(), class);
            let json = s.config_json();
            let again = crate::from_config_json::<HostTensor>(&json).unwrap();
            assert_eq!(again.config_json(), json, "{class}");
            s.set_timesteps(4).unwrap();
            assert!(!s.timesteps().is_empty());
            assert_eq!(s.init_noise_sigma(), 1.0);
            assert_eq!(s.order(), 1);
        }
        // Swapping keeps the shared keys (like diffusers' `from_config(old.config)`).
        let ddim = crate::from_config_json::<HostTensor>(&serde_json::json!({
            "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "eta": 0.5
        }))
        .unwrap();
        assert!(ddim.is_stochastic());
        let ddpm = crate::swap(ddim.as_ref(), "DDPMScheduler").unwrap();
        assert_eq!(ddpm.config_json()["beta_schedule"], "scaled_linear");
    }

    #[test]
    fn step_index_prefers_second_match() {
        let ts = [5.0, 3.0, 3.0, 1.0];
        assert_eq!(index_for_timestep(&ts, 3.0), Some(2));
        assert_eq!(index_for_timestep(&ts, 5.0), Some(0));
        assert_eq!(index_for_timestep(&ts, 4.0), None);
        let mut s = StepIndex::default();
        s.set_begin_index(1);
        assert_eq!(s.current(&ts, 1.0).unwrap(), 1);
        s.advance();
        assert_eq!(s.step_index(), Some(2));
    }
}
