//! k-diffusion-style samplers (Crowson's `k_diffusion.sampling`) as plain functions.
//!
//! # Formulation
//! Karras et al. (2022) write every diffusion model in the variance-exploding form
//! `x = x₀ + σ n` and drive it through a *denoiser* `D(x; σ) ≈ E[x₀ | x]`. The
//! probability-flow ODE is then (Karras et al. 2022, eq. 3 with σ(t) = t)
//!
//! ```text
//! dx/dσ = (x − D(x; σ)) / σ                                                    (K3)
//! ```
//!
//! and the DPM-Solver family (Lu et al. 2022a/b) integrates it exactly in its linear part
//! after the change of variable λ = −ln σ (`t` below, as in k-diffusion's code).
//!
//! # Conventions
//! - `model: FnMut(&S, f64) -> Result<S>` receives the (unscaled) sample and σ and returns
//!   the denoised estimate x̂₀ = D(x; σ). A variance-preserving ε-model is wrapped by
//!   scaling its input by `1/√(1+σ²)` and returning `x − σ ε̂` (see [`denoiser_from_eps`]).
//! - `sigmas` is strictly decreasing, non-negative and has at least two entries; it usually
//!   ends at 0 (the `get_sigmas_*` helpers append the 0), but need not (img2img, or
//!   stopping at σ_min). The sampler takes `sigmas.len() − 1` steps.
//! - Stochastic samplers take a noise supplier `&mut dyn FnMut(usize) -> S`: called with the
//!   step index `i`, it returns standard-normal noise of the sample's shape. In a pipeline
//!   use [`noise_from_source`], which maps step `i` to [`NoiseSource::step_noise`].
//! - Every denoiser output is checked for shape and NaN/∞ (→ [`Error::Shape`] /
//!   [`Error::NonFinite`]); bad arguments give [`Error::InvalidArgument`]. Nothing panics on
//!   user input.

use crate::schedule::linspace_f64;
use crate::sigmas::{exponential_sigmas, karras_sigmas};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, NoiseSource, Result, SampleTensor};

// ---------------------------------------------------------------------------------------
// Noise schedules
// ---------------------------------------------------------------------------------------

fn check_sigma_range(n: usize, sigma_min: f64, sigma_max: f64) -> Result<()> {
    if n == 0 {
        return Err(Error::argument("n", "need at least one noise level"));
    }
    if !(sigma_min.is_finite() && sigma_min > 0.0) {
        return Err(Error::argument(
            "sigma_min",
            format!("must be finite and > 0, got {sigma_min}"),
        ));
    }
    if !(sigma_max.is_finite() && sigma_max > sigma_min) {
        return Err(Error::argument(
            "sigma_max",
            format!("must be finite and > sigma_min = {sigma_min}, got {sigma_max}"),
        ));
    }
    Ok(())
}

fn append_zero(mut v: Vec<f64>) -> Vec<f64> {
    v.push(0.0);
    v
}

/// k-diffusion's `get_sigmas_karras`: Karras et al. (2022) eq. 5,
/// σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, with a final 0 appended
/// (`n + 1` values). Built on [`crate::sigmas::karras_sigmas`].
pub fn get_sigmas_karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_sigma_range(n, sigma_min, sigma_max)?;
    if !(rho.is_finite() && rho > 0.0) {
        return Err(Error::argument(
            "rho",
            format!("must be finite and > 0, got {rho}"),
        ));
    }
    Ok(append_zero(karras_sigmas(sigma_min, sigma_max, n, rho)))
}

/// k-diffusion's `get_sigmas_exponential`: σ evenly spaced in ln σ from σ_max to σ_min, then 0.
/// Built on [`crate::sigmas::exponential_sigmas`].
pub fn get_sigmas_exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_sigma_range(n, sigma_min, sigma_max)?;
    Ok(append_zero(exponential_sigmas(sigma_min, sigma_max, n)))
}

/// k-diffusion's `get_sigmas_polyexponential`: ln σ_i = r_i^ρ (ln σ_max − ln σ_min) + ln σ_min
/// with r_i = linspace(1, 0, n), then 0. ρ = 1 is the exponential schedule.
pub fn get_sigmas_polyexponential(
    n: usize,
    sigma_min: f64,
    sigma_max: f64,
    rho: f64,
) -> Result<Vec<f64>> {
    check_sigma_range(n, sigma_min, sigma_max)?;
    if !(rho.is_finite() && rho > 0.0) {
        return Err(Error::argument(
            "rho",
            format!("must be finite and > 0, got {rho}"),
        ));
    }
    let (lmin, lmax) = (sigma_min.ln(), sigma_max.ln());
    let s = linspace_f64(1.0, 0.0, n)
        .into_iter()
        .map(|r| (r.powf(rho) * (lmax - lmin) + lmin).exp());
    Ok(append_zero(s.collect()))
}

/// k-diffusion's `get_sigmas_vp`: the continuous VP-SDE (Song et al. 2021) seen as σ,
/// σ(t) = √(exp(½ β_d t² + β_min t) − 1) = √(1/ᾱ(t) − 1) at t = linspace(1, ε_s, n), then 0.
/// k-diffusion's defaults are β_d = β_max − β_min = 19.9, β_min = 0.1, ε_s = 1e-3.
pub fn get_sigmas_vp(n: usize, beta_d: f64, beta_min: f64, eps_s: f64) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::argument("n", "need at least one noise level"));
    }
    if !(beta_d.is_finite() && beta_min.is_finite() && beta_min >= 0.0 && beta_d + beta_min > 0.0) {
        return Err(Error::argument(
            "beta_d/beta_min",
            format!("need finite beta_min ≥ 0 and beta_min + beta_d > 0, got {beta_d}, {beta_min}"),
        ));
    }
    if !(eps_s > 0.0 && eps_s < 1.0) {
        return Err(Error::argument(
            "eps_s",
            format!("must lie in (0, 1), got {eps_s}"),
        ));
    }
    let s = linspace_f64(1.0, eps_s, n)
        .into_iter()
        .map(|t| (0.5 * beta_d * t * t + beta_min * t).exp_m1().sqrt());
    Ok(append_zero(s.collect()))
}

/// Checks a sampler's σ list: at least two entries, finite, non-negative, strictly decreasing.
pub fn validate_sigmas(sigmas: &[f64]) -> Result<()> {
    if sigmas.len() < 2 {
        return Err(Error::argument(
            "sigmas",
            format!(
                "need at least two noise levels (one step), got {}",
                sigmas.len()
            ),
        ));
    }
    if let Some((i, s)) = sigmas
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s >= 0.0))
    {
        return Err(Error::argument(
            "sigmas",
            format!("sigmas[{i}] = {s} is not finite and ≥ 0"),
        ));
    }
    if let Some(i) = (1..sigmas.len()).find(|&i| sigmas[i] >= sigmas[i - 1]) {
        return Err(Error::argument(
            "sigmas",
            format!(
                "must be strictly decreasing, but sigmas[{i}] = {} ≥ sigmas[{}] = {}",
                sigmas[i],
                i - 1,
                sigmas[i - 1]
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------

/// A noise supplier for the stochastic samplers drawing from a [`NoiseSource`]: step `i`
/// gets `source.step_noise(shape, first_index, i)` on the device of `like`, so results are
/// reproducible per sample whatever the batch size or backend.
pub fn noise_from_source<S: SampleTensor>(
    source: NoiseSource,
    first_index: u64,
    like: &S,
) -> impl FnMut(usize) -> S {
    let shape = like.shape();
    let like = like.clone();
    move |i| S::from_host_like(&source.step_noise(&shape, first_index, i as u64), &like)
}

/// Wraps a variance-preserving ε-prediction model `eps(x_in, σ)` as a k-diffusion denoiser:
/// the model sees `x / √(1 + σ²)` (the VP sample, as diffusers' `scale_model_input`) and
/// the denoiser returns D(x; σ) = x − σ ε̂. What `σ` means to the model (a timestep, σ
/// itself) is the closure's business.
pub fn denoiser_from_eps<S, F>(mut eps: F) -> impl FnMut(&S, f64) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    move |x: &S, sigma: f64| {
        let e = eps(&x.scale(1.0 / (1.0 + sigma * sigma).sqrt()), sigma)?;
        check_same_shape("eps model output", x, &e)?;
        Ok(S::lin_comb(&[(1.0, x), (-sigma, &e)]))
    }
}

/// Calls the denoiser and checks its output (shape, finiteness).
fn call<S, F>(model: &mut F, x: &S, sigma: f64) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    let d = model(x, sigma)?;
    check_same_shape("denoiser output", x, &d)?;
    check_finite("denoiser output", &d)?;
    Ok(d)
}

/// Draws the noise of step `i` and checks its shape.
fn draw<S: SampleTensor>(noise: &mut dyn FnMut(usize) -> S, i: usize, x: &S) -> Result<S> {
    let z = noise(i);
    check_same_shape("noise", x, &z)?;
    Ok(z)
}

fn check_start<S: SampleTensor>(x: &S, sigmas: &[f64]) -> Result<()> {
    validate_sigmas(sigmas)?;
    check_finite("initial sample", x)
}

fn check_eta_noise(eta: f64, s_noise: f64) -> Result<()> {
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(Error::argument(
            "eta",
            format!("must be finite and ≥ 0, got {eta}"),
        ));
    }
    if !s_noise.is_finite() {
        return Err(Error::argument(
            "s_noise",
            format!("must be finite, got {s_noise}"),
        ));
    }
    Ok(())
}

/// k-diffusion's `get_ancestral_step`: splits the move σ_from → σ_to into a deterministic
/// move down to σ_down and fresh noise of std σ_up, with σ_down² + σ_up² = σ_to² and
/// σ_up = min(σ_to, η·√(σ_to²(σ_from² − σ_to²)/σ_from²)) (η = 1 is DDPM's posterior std).
pub fn get_ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || sigma_from <= 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .max(0.0)
            .sqrt())
    .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).max(0.0).sqrt();
    (down, up)
}

/// Euler step of (K3) from σ to σ_next given the denoised estimate:
/// x + (σ_next − σ)·(x − D)/σ = (σ_next/σ)·x + (1 − σ_next/σ)·D.
fn euler_to<S: SampleTensor>(x: &S, denoised: &S, sigma: f64, sigma_next: f64) -> S {
    let r = sigma_next / sigma;
    S::lin_comb(&[(r, x), (1.0 - r, denoised)])
}

// ---------------------------------------------------------------------------------------
// Fixed-step samplers
// ---------------------------------------------------------------------------------------

/// Euler's method on the PF-ODE (K3): Karras et al. (2022) Algorithm 2 with Euler steps and
/// no churn, x_{i+1} = x_i + (σ_{i+1} − σ_i)·(x_i − D(x_i; σ_i))/σ_i. One evaluation per step.
pub fn sample_euler<S, F>(mut model: F, x: S, sigmas: &[f64]) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    let mut x = x;
    for w in sigmas.windows(2) {
        let denoised = call(&mut model, &x, w[0])?;
        x = euler_to(&x, &denoised, w[0], w[1]);
    }
    Ok(x)
}

/// Ancestral sampling with Euler steps: each step moves deterministically to σ_down along
/// (K3) and adds `s_noise · σ_up · z_i` (see [`get_ancestral_step`]); no noise is added on a
/// step that ends at σ = 0. η = 0 is [`sample_euler`]; η = 1 matches DDPM's ancestral sampler.
pub fn sample_euler_ancestral<S, F>(
    mut model: F,
    x: S,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    noise: &mut dyn FnMut(usize) -> S,
) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    check_eta_noise(eta, s_noise)?;
    let mut x = x;
    for (i, w) in sigmas.windows(2).enumerate() {
        let denoised = call(&mut model, &x, w[0])?;
        let (down, up) = get_ancestral_step(w[0], w[1], eta);
        x = euler_to(&x, &denoised, w[0], down);
        if w[1] > 0.0 && up > 0.0 {
            let z = draw(noise, i, &x)?;
            x = S::lin_comb(&[(1.0, &x), (s_noise * up, &z)]);
        }
    }
    Ok(x)
}

/// Heun's method on (K3): Karras et al. (2022) Algorithm 1 (Algorithm 2 without churn).
/// Predictor x̃ = Euler step; corrector x_{i+1} = x_i + (σ_{i+1} − σ_i)·½(d_i + d̃), with
/// d̃ = (x̃ − D(x̃; σ_{i+1}))/σ_{i+1}. The last step to σ = 0 is a plain Euler step.
/// Two evaluations per step (one on the last).
pub fn sample_heun<S, F>(mut model: F, x: S, sigmas: &[f64]) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    let mut x = x;
    for w in sigmas.windows(2) {
        let (s, sn) = (w[0], w[1]);
        let denoised = call(&mut model, &x, s)?;
        let x_euler = euler_to(&x, &denoised, s, sn);
        if sn == 0.0 {
            x = x_euler;
            continue;
        }
        let denoised_2 = call(&mut model, &x_euler, sn)?;
        // d = (x − D)/s, d₂ = (x̃ − D₂)/sn, x ← x + (sn − s)(d + d₂)/2.
        let dt = sn - s;
        let d = S::lin_comb(&[(1.0 / s, &x), (-1.0 / s, &denoised)]);
        let d2 = S::lin_comb(&[(1.0 / sn, &x_euler), (-1.0 / sn, &denoised_2)]);
        x = S::lin_comb(&[(1.0, &x), (0.5 * dt, &d), (0.5 * dt, &d2)]);
    }
    Ok(x)
}

/// k-diffusion's `sample_dpm_2`: a midpoint method on (K3) with the midpoint taken in ln σ
/// (inspired by DPM-Solver-2): σ_mid = √(σ_i σ_{i+1}), x̃ = x_i + (σ_mid − σ_i) d_i,
/// x_{i+1} = x_i + (σ_{i+1} − σ_i)·(x̃ − D(x̃; σ_mid))/σ_mid. Euler on the last step to 0.
pub fn sample_dpm_2<S, F>(mut model: F, x: S, sigmas: &[f64]) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    let mut x = x;
    for w in sigmas.windows(2) {
        x = dpm_2_step(&mut model, &x, w[0], w[1])?;
    }
    Ok(x)
}

fn dpm_2_step<S, F>(model: &mut F, x: &S, s: f64, s_to: f64) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    let denoised = call(model, x, s)?;
    if s_to == 0.0 {
        return Ok(euler_to(x, &denoised, s, s_to));
    }
    let mid = (0.5 * (s.ln() + s_to.ln())).exp();
    let x_mid = euler_to(x, &denoised, s, mid);
    let denoised_mid = call(model, &x_mid, mid)?;
    // x + (s_to − s)·(x_mid − D_mid)/mid.
    let c = (s_to - s) / mid;
    Ok(S::lin_comb(&[(1.0, x), (c, &x_mid), (-c, &denoised_mid)]))
}

/// k-diffusion's `sample_dpm_2_ancestral`: the [`sample_dpm_2`] step down to σ_down, then
/// `s_noise · σ_up · z_i` (see [`get_ancestral_step`]).
pub fn sample_dpm_2_ancestral<S, F>(
    mut model: F,
    x: S,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    noise: &mut dyn FnMut(usize) -> S,
) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    check_eta_noise(eta, s_noise)?;
    let mut x = x;
    for (i, w) in sigmas.windows(2).enumerate() {
        let (down, up) = get_ancestral_step(w[0], w[1], eta);
        x = dpm_2_step(&mut model, &x, w[0], down)?;
        if w[1] > 0.0 && up > 0.0 {
            let z = draw(noise, i, &x)?;
            x = S::lin_comb(&[(1.0, &x), (s_noise * up, &z)]);
        }
    }
    Ok(x)
}

/// DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) in k-diffusion's σ form. With
/// λ = −ln σ, h_i = λ_{i+1} − λ_i and r_i = h_{i−1}/h_i:
///
/// ```text
/// D_i' = (1 + 1/(2r_i))·D_i − 1/(2r_i)·D_{i−1}
/// x_{i+1} = (σ_{i+1}/σ_i)·x_i − (e^{−h_i} − 1)·D_i'
/// ```
///
/// The first step (no history) and the last step to σ = 0 use D_i' = D_i (first order).
/// One evaluation per step.
pub fn sample_dpmpp_2m<S, F>(mut model: F, x: S, sigmas: &[f64]) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    let mut x = x;
    let mut old: Option<S> = None;
    for i in 0..sigmas.len() - 1 {
        let (s, sn) = (sigmas[i], sigmas[i + 1]);
        let denoised = call(&mut model, &x, s)?;
        if sn == 0.0 {
            x = denoised;
            break;
        }
        let h = s.ln() - sn.ln();
        let c = -(-h).exp_m1();
        x = match &old {
            Some(prev) => {
                let r = (sigmas[i - 1].ln() - s.ln()) / h;
                let k = 1.0 / (2.0 * r);
                S::lin_comb(&[(sn / s, &x), (c * (1.0 + k), &denoised), (-c * k, prev)])
            }
            None => S::lin_comb(&[(sn / s, &x), (c, &denoised)]),
        };
        old = Some(denoised);
    }
    Ok(x)
}

/// Ancestral DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = ½, plus ancestral
/// noise; k-diffusion's `sample_dpmpp_2s_ancestral`, absent from diffusers). Each step goes
/// from σ_i to σ_down (see [`get_ancestral_step`]) with h = ln σ_i − ln σ_down,
/// σ_s = √(σ_i σ_down):
///
/// ```text
/// u    = (σ_s/σ_i)·x_i − (e^{−h/2} − 1)·D(x_i; σ_i)
/// x'   = (σ_down/σ_i)·x_i − (e^{−h} − 1)·D(u; σ_s)
/// x_{i+1} = x' + s_noise·σ_up·z_i
/// ```
///
/// A step with σ_down = 0 is a plain Euler step (= D(x_i; σ_i)). η = 0 gives the
/// deterministic single-step DPM-Solver++(2S). Two evaluations per step.
pub fn sample_dpmpp_2s_ancestral<S, F>(
    mut model: F,
    x: S,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    noise: &mut dyn FnMut(usize) -> S,
) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    check_eta_noise(eta, s_noise)?;
    let mut x = x;
    for (i, w) in sigmas.windows(2).enumerate() {
        let s = w[0];
        let denoised = call(&mut model, &x, s)?;
        let (down, up) = get_ancestral_step(s, w[1], eta);
        if down == 0.0 {
            x = euler_to(&x, &denoised, s, 0.0);
        } else {
            let h = s.ln() - down.ln();
            let mid = (0.5 * (s.ln() + down.ln())).exp();
            let u = S::lin_comb(&[(mid / s, &x), (-(-0.5 * h).exp_m1(), &denoised)]);
            let denoised_2 = call(&mut model, &u, mid)?;
            x = S::lin_comb(&[(down / s, &x), (-(-h).exp_m1(), &denoised_2)]);
        }
        if w[1] > 0.0 && up > 0.0 {
            let z = draw(noise, i, &x)?;
            x = S::lin_comb(&[(1.0, &x), (s_noise * up, &z)]);
        }
    }
    Ok(x)
}

/// DPM-Solver++(3M) SDE (k-diffusion's `sample_dpmpp_3m_sde`): a third-order multistep
/// solver of the SDE whose noise level is set by η (η = 0: the ODE). With h = ln σ_i − ln σ_{i+1},
/// h_η = (1 + η) h and φ₂ = (e^{−h_η} − 1)/h_η + 1, φ₃ = φ₂/h_η − ½:
///
/// ```text
/// x_{i+1} = e^{−h_η}·x_i + (1 − e^{−h_η})·D_i          (e^{−h_η} = (σ_{i+1}/σ_i)·e^{−ηh})
///         + φ₂·D¹ − φ₃·D²
///         + s_noise·σ_{i+1}·√(1 − e^{−2ηh})·z_i
/// ```
///
/// where D¹, D² are k-diffusion's first and second differences of the last three denoised
/// estimates, scaled by the step ratios (only D¹ on the second step, neither on the first:
/// the solver starts at first order). The last step
/// to σ = 0 returns D(x; σ_i). The Brownian-tree noise of k-diffusion is replaced by
/// independent per-step draws, which has the same law on a fixed σ grid.
pub fn sample_dpmpp_3m_sde<S, F>(
    mut model: F,
    x: S,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
    noise: &mut dyn FnMut(usize) -> S,
) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    check_start(&x, sigmas)?;
    check_eta_noise(eta, s_noise)?;
    let mut x = x;
    let (mut d_1, mut d_2): (Option<S>, Option<S>) = (None, None);
    let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
    for (i, w) in sigmas.windows(2).enumerate() {
        let (s, sn) = (w[0], w[1]);
        let denoised = call(&mut model, &x, s)?;
        if sn == 0.0 {
            x = denoised;
            break;
        }
        let h = s.ln() - sn.ln();
        let h_eta = h * (eta + 1.0);
        // e^{−h_η} = (σ_{i+1}/σ_i)·e^{−ηh}.
        let mut terms: Vec<(f64, &S)> = vec![((-h_eta).exp(), &x), (-(-h_eta).exp_m1(), &denoised)];
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match (&d_1, &d_2, h_1, h_2) {
            (Some(p1), Some(p2), Some(hh1), Some(hh2)) => {
                let (r0, r1) = (hh1 / h, hh2 / h);
                let phi_3 = phi_2 / h_eta - 0.5;
                // d1_0 = (D − D₁)/r0, d1_1 = (D₁ − D₂)/r1,
                // d1 = d1_0 + (d1_0 − d1_1)·r0/(r0 + r1), d2 = (d1_0 − d1_1)/(r0 + r1);
                // x += φ₂ d1 − φ₃ d2, expanded into coefficients of D, D₁, D₂.
                let a = r0 / (r0 + r1);
                let b = 1.0 / (r0 + r1);
                // d1_0 = (D − D₁)/r0 ; d1_1 = (D₁ − D₂)/r1
                let (c0, c1) = (1.0 / r0, 1.0 / r1);
                // d1 = (1 + a)·d1_0 − a·d1_1 ; d2 = b·d1_0 − b·d1_1
                let k0 = phi_2 * (1.0 + a) - phi_3 * b; // multiplies d1_0
                let k1 = -phi_2 * a + phi_3 * b; // multiplies d1_1
                terms.push((k0 * c0, &denoised));
                terms.push((-k0 * c0 + k1 * c1, p1));
                terms.push((-k1 * c1, p2));
            }
            (Some(p1), _, Some(hh1), _) => {
                let r = hh1 / h;
                // x += φ₂·(D − D₁)/r.
                let c = phi_2 / r;
                terms.push((c, &denoised));
                terms.push((-c, p1));
            }
            _ => {}
        }
        let mut x_new = S::lin_comb(&terms);
        if eta > 0.0 {
            let z = draw(noise, i, &x_new)?;
            let std = sn * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise;
            x_new = S::lin_comb(&[(1.0, &x_new), (std, &z)]);
        }
        x = x_new;
        d_2 = d_1.take();
        d_1 = Some(denoised);
        h_2 = h_1;
        h_1 = Some(h);
    }
    Ok(x)
}

// ---------------------------------------------------------------------------------------
// Adaptive DPM-Solver
// ---------------------------------------------------------------------------------------

/// Options of [`sample_dpm_adaptive`], with k-diffusion's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmAdaptiveOptions {
    /// 2: the DPM-Solver-12 pair (first-order estimate, second-order solution);
    /// 3: the DPM-Solver-23 pair. Default 3.
    pub order: usize,
    /// Relative tolerance of the embedded error estimate. Default 0.05.
    pub rtol: f64,
    /// Absolute tolerance (> 0). Default 0.0078 (one 8-bit level of a [−1, 1] image).
    pub atol: f64,
    /// Initial step in λ = −ln σ. Default 0.05.
    pub h_init: f64,
    /// PID controller: proportional coefficient. Default 0.
    pub pcoeff: f64,
    /// PID controller: integral coefficient. Default 1 (a plain I controller).
    pub icoeff: f64,
    /// PID controller: derivative coefficient. Default 0.
    pub dcoeff: f64,
    /// A step is accepted when the proposed step factor is at least this. Default 0.81.
    pub accept_safety: f64,
    /// Ancestral noise amount (0: the ODE). Default 0.
    pub eta: f64,
    /// Scale of the ancestral noise. Default 1.
    pub s_noise: f64,
    /// Give up with [`Error::State`] after this many step attempts. Default 10 000.
    pub max_attempts: usize,
}

impl Default for DpmAdaptiveOptions {
    fn default() -> Self {
        Self {
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            eta: 0.0,
            s_noise: 1.0,
            max_attempts: 10_000,
        }
    }
}

/// What [`sample_dpm_adaptive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DpmAdaptiveStats {
    /// Denoiser evaluations.
    pub nfe: usize,
    /// Step attempts (accepted + rejected).
    pub steps: usize,
    /// Accepted steps.
    pub n_accept: usize,
    /// Rejected steps.
    pub n_reject: usize,
}

/// k-diffusion's `PIDStepSizeController` (Söderlind's digital filters, with the arctan
/// limiter 1 + atan(f − 1)).
struct PidController {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl PidController {
    fn new(h: f64, o: &DpmAdaptiveOptions, order: f64) -> Self {
        Self {
            h,
            b1: (o.pcoeff + o.icoeff + o.dcoeff) / order,
            b2: -(o.pcoeff + 2.0 * o.dcoeff) / order,
            b3: o.dcoeff / order,
            accept_safety: o.accept_safety,
            errs: None,
        }
    }

    /// Scales h by the filtered inverse error; returns whether the step is accepted.
    fn propose_step(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv; 3]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b1) * errs[1].powf(self.b2) * errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// The ε-form DPM-Solver on the VE ODE in λ = −ln σ (α = 1), as k-diffusion's `DPMSolver`.
struct DpmSolver<'a, S, F> {
    model: &'a mut F,
    nfe: usize,
    _s: std::marker::PhantomData<S>,
}

impl<S, F> DpmSolver<'_, S, F>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    /// ε̂(x, λ) = (x − D(x; σ))/σ with σ = e^{−λ}.
    fn eps(&mut self, x: &S, lambda: f64) -> Result<S> {
        let sigma = (-lambda).exp();
        let d = call(self.model, x, sigma)?;
        self.nfe += 1;
        Ok(S::lin_comb(&[(1.0 / sigma, x), (-1.0 / sigma, &d)]))
    }

    /// DPM-Solver-1 (Lu et al. 2022a, eq. 3.7 with α = 1): x_t = x_s − σ_t (e^h − 1) ε_s.
    fn step_1(x: &S, eps: &S, t_next: f64, h: f64) -> S {
        S::lin_comb(&[(1.0, x), (-(-t_next).exp() * h.exp_m1(), eps)])
    }

    /// DPM-Solver-2 (Lu et al. 2022a, Algorithm 4 with α = 1), intermediate point at
    /// s₁ = s + r₁h: u₁ = x − σ_{s₁}(e^{r₁h} − 1) ε_s, then
    /// x_t = x − σ_t (e^h − 1) ε_s − σ_t/(2r₁)·(e^h − 1)·(ε(u₁, s₁) − ε_s).
    /// Returns the solution and ε(u₁, s₁).
    fn step_2(&mut self, x: &S, eps: &S, s: f64, t_next: f64, r1: f64) -> Result<(S, S)> {
        let h = t_next - s;
        let s1 = s + r1 * h;
        let u1 = S::lin_comb(&[(1.0, x), (-(-s1).exp() * (r1 * h).exp_m1(), eps)]);
        let eps_r1 = self.eps(&u1, s1)?;
        let st = (-t_next).exp();
        let e = h.exp_m1();
        let c = st / (2.0 * r1) * e;
        let x2 = S::lin_comb(&[(1.0, x), (-st * e + c, eps), (-c, &eps_r1)]);
        Ok((x2, eps_r1))
    }

    /// DPM-Solver-3 (Lu et al. 2022a, Algorithm 5 with α = 1, r₁ = ⅓, r₂ = ⅔), reusing
    /// ε(u₁, s₁) from the DPM-Solver-2 step with r₁ = ⅓:
    /// u₂ = x − σ_{s₂}(e^{r₂h} − 1) ε_s − σ_{s₂}(r₂/r₁)((e^{r₂h} − 1)/(r₂h) − 1)(ε₁ − ε_s),
    /// x_t = x − σ_t (e^h − 1) ε_s − σ_t/r₂ ((e^h − 1)/h − 1)(ε(u₂, s₂) − ε_s).
    fn step_3(&mut self, x: &S, eps: &S, eps_r1: &S, s: f64, t_next: f64) -> Result<S> {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let h = t_next - s;
        let s2 = s + r2 * h;
        let ss2 = (-s2).exp();
        let e2 = (r2 * h).exp_m1();
        let c2 = ss2 * (r2 / r1) * (e2 / (r2 * h) - 1.0);
        let u2 = S::lin_comb(&[(1.0, x), (-ss2 * e2 + c2, eps), (-c2, eps_r1)]);
        let eps_r2 = self.eps(&u2, s2)?;
        let st = (-t_next).exp();
        let e = h.exp_m1();
        let c = st / r2 * (e / h - 1.0);
        Ok(S::lin_comb(&[(1.0, x), (-st * e + c, eps), (-c, &eps_r2)]))
    }
}

/// Adaptive-step DPM-Solver (Lu et al. 2022a, §4 / Algorithm 6; k-diffusion's
/// `sample_dpm_adaptive`) from σ_max down to σ_min (> 0; the result still carries noise σ_min,
/// as in k-diffusion — finish with one denoiser call if x̂₀ is wanted).
///
/// Each attempt from λ_s to λ_t = min(λ_end, λ_s + h) computes a low- and a high-order
/// solution that share evaluations (order 2: DPM-Solver-1 / -2; order 3: DPM-Solver-2 with
/// r₁ = ⅓ / DPM-Solver-3), the scaled error
///
/// ```text
/// E = ‖(x_low − x_high) / max(atol, rtol·max(|x_low|, |x_prev|))‖₂ / √numel
/// ```
///
/// (x_prev: the previous accepted low-order solution, as in k-diffusion), and lets a PID
/// controller (Söderlind 2003; default a plain I controller, exponent 1/order) scale h. The
/// high-order solution is kept on acceptance (local extrapolation). With η > 0 each accepted
/// step moves to σ_down and adds `s_noise · σ_up · z_k`, k the accepted-step index.
///
/// Unlike k-diffusion, ε at the step start is cached across rejected attempts, so a rejection
/// costs `order − 1` evaluations; [`DpmAdaptiveStats::nfe`] counts actual evaluations.
/// The error norm is taken on the host (two reads per attempt).
pub fn sample_dpm_adaptive<S, F>(
    mut model: F,
    x: S,
    sigma_min: f64,
    sigma_max: f64,
    options: &DpmAdaptiveOptions,
    noise: &mut dyn FnMut(usize) -> S,
) -> Result<(S, DpmAdaptiveStats)>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    let o = options;
    check_sigma_range(1, sigma_min, sigma_max)?;
    check_finite("initial sample", &x)?;
    check_eta_noise(o.eta, o.s_noise)?;
    if o.order != 2 && o.order != 3 {
        return Err(Error::argument(
            "order",
            format!("must be 2 or 3, got {}", o.order),
        ));
    }
    if !(o.rtol.is_finite() && o.rtol >= 0.0) {
        return Err(Error::argument(
            "rtol",
            format!("must be finite and ≥ 0, got {}", o.rtol),
        ));
    }
    if !(o.atol.is_finite() && o.atol > 0.0) {
        return Err(Error::argument(
            "atol",
            format!("must be finite and > 0, got {}", o.atol),
        ));
    }
    if !(o.h_init.is_finite() && o.h_init != 0.0) {
        return Err(Error::argument(
            "h_init",
            format!("must be finite and ≠ 0, got {}", o.h_init),
        ));
    }
    for (name, v) in [
        ("pcoeff", o.pcoeff),
        ("icoeff", o.icoeff),
        ("dcoeff", o.dcoeff),
    ] {
        if !v.is_finite() {
            return Err(Error::argument(name, format!("must be finite, got {v}")));
        }
    }
    if !(o.accept_safety.is_finite() && o.accept_safety > 0.0) {
        return Err(Error::argument(
            "accept_safety",
            format!("must be finite and > 0, got {}", o.accept_safety),
        ));
    }

    let sigma = |l: f64| (-l).exp();
    let (t_start, t_end) = (-sigma_max.ln(), -sigma_min.ln());
    let pid_order = if o.eta > 0.0 { 1.5 } else { o.order as f64 };
    let mut pid = PidController::new(o.h_init.abs(), o, pid_order);
    let mut solver = DpmSolver {
        model: &mut model,
        nfe: 0,
        _s: std::marker::PhantomData,
    };
    let mut stats = DpmAdaptiveStats::default();
    let numel = x.numel().max(1) as f64;
    let mut x = x;
    let mut x_prev = x.to_host();
    let mut s = t_start;
    let mut eps_s: Option<S> = None;

    while s < t_end - 1e-5 {
        if stats.steps >= o.max_attempts {
            return Err(Error::State(format!(
                "sample_dpm_adaptive: no convergence after {} step attempts (at sigma = {}, h = {})",
                stats.steps,
                sigma(s),
                pid.h
            )));
        }
        let t = t_end.min(s + pid.h);
        let (t_, su) = if o.eta > 0.0 {
            let (sd, _) = get_ancestral_step(sigma(s), sigma(t), o.eta);
            let t_ = if sd > 0.0 { t_end.min(-sd.ln()) } else { t_end };
            (t_, (sigma(t).powi(2) - sigma(t_).powi(2)).max(0.0).sqrt())
        } else {
            (t, 0.0)
        };
        let eps = match &eps_s {
            Some(e) => e.clone(),
            None => {
                let e = solver.eps(&x, s)?;
                eps_s = Some(e.clone());
                e
            }
        };
        let (x_low, x_high) = if o.order == 2 {
            let low = DpmSolver::<S, F>::step_1(&x, &eps, t_, t_ - s);
            let (high, _) = solver.step_2(&x, &eps, s, t_, 0.5)?;
            (low, high)
        } else {
            let (low, eps_r1) = solver.step_2(&x, &eps, s, t_, 1.0 / 3.0)?;
            let high = solver.step_3(&x, &eps, &eps_r1, s, t_)?;
            (low, high)
        };
        let low_h = x_low.to_host();
        let diff_h = x_low.sub(&x_high).to_host();
        let mut acc = 0.0;
        for ((d, l), p) in diff_h.data().iter().zip(low_h.data()).zip(x_prev.data()) {
            let delta = o.atol.max(o.rtol * l.abs().max(p.abs()));
            acc += (d / delta).powi(2);
        }
        let error = (acc / numel).sqrt();
        if !error.is_finite() {
            return Err(Error::NonFinite {
                what: "dpm_adaptive error estimate".into(),
            });
        }
        stats.steps += 1;
        if pid.propose_step(error) {
            x_prev = low_h;
            x = if su > 0.0 {
                let z = draw(noise, stats.n_accept, &x_high)?;
                S::lin_comb(&[(1.0, &x_high), (su * o.s_noise, &z)])
            } else {
                x_high
            };
            s = t;
            eps_s = None;
            stats.n_accept += 1;
        } else {
            stats.n_reject += 1;
        }
    }
    stats.nfe = solver.nfe;
    Ok((x, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::HostTensor;

    /// Data N(μ, s²) per element; in the VE form x = x₀ + σ n the exact denoiser is
    /// D(x; σ) = μ + s²/(s² + σ²)·(x − μ), and the PF-ODE (K3) keeps (x − μ)/√(s² + σ²)
    /// constant, so its exact solution is x(σ) = μ + (x(σ₀) − μ)·√((s² + σ²)/(s² + σ₀²)).
    const MU: f64 = 0.7;
    const S: f64 = 0.5;
    const SIGMA_MAX: f64 = 80.0;
    const SIGMA_MIN: f64 = 0.002;

    fn denoiser(x: &HostTensor, sigma: f64) -> Result<HostTensor> {
        let k = S * S / (S * S + sigma * sigma);
        Ok(x.map(|v| MU + k * (v - MU)))
    }

    fn exact(x_t: &HostTensor, sigma_from: f64, sigma_to: f64) -> HostTensor {
        let k = ((S * S + sigma_to * sigma_to) / (S * S + sigma_from * sigma_from)).sqrt();
        x_t.map(|v| MU + (v - MU) * k)
    }

    fn prior(shape: &[usize], seed: u64) -> HostTensor {
        NoiseSource::new(seed)
            .initial_noise(shape, 0)
            .scale(SIGMA_MAX)
    }

    fn max_err(a: &HostTensor, b: &HostTensor) -> f64 {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn mean_std(x: &HostTensor) -> (f64, f64) {
        let n = x.data().len() as f64;
        let m = x.data().iter().sum::<f64>() / n;
        let v = x.data().iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
        (m, v.sqrt())
    }

    fn no_noise(_: usize) -> HostTensor {
        HostTensor::zeros(&[1])
    }

    type Det = fn(&[f64], HostTensor) -> Result<HostTensor>;

    fn deterministic() -> Vec<(&'static str, Det, f64)> {
        // (name, sampler, expected order of convergence)
        vec![
            ("euler", |s, x| sample_euler(denoiser, x, s), 1.0),
            ("heun", |s, x| sample_heun(denoiser, x, s), 2.0),
            ("dpm_2", |s, x| sample_dpm_2(denoiser, x, s), 2.0),
            ("dpmpp_2m", |s, x| sample_dpmpp_2m(denoiser, x, s), 2.0),
            (
                "dpmpp_2s_ancestral(eta=0)",
                |s, x| sample_dpmpp_2s_ancestral(denoiser, x, s, 0.0, 1.0, &mut no_noise),
                2.0,
            ),
            (
                "dpmpp_3m_sde(eta=0)",
                |s, x| sample_dpmpp_3m_sde(denoiser, x, s, 0.0, 1.0, &mut no_noise),
                2.0,
            ),
            (
                "euler_ancestral(eta=0)",
                |s, x| sample_euler_ancestral(denoiser, x, s, 0.0, 1.0, &mut no_noise),
                1.0,
            ),
            (
                "dpm_2_ancestral(eta=0)",
                |s, x| sample_dpm_2_ancestral(denoiser, x, s, 0.0, 1.0, &mut no_noise),
                2.0,
            ),
        ]
    }

    #[test]
    fn deterministic_samplers_converge_to_the_exact_pf_ode_map() {
        let x_t = prior(&[4, 16], 1);
        // Sampling to σ_min (no final jump to 0) measures the ODE error alone.
        let target = exact(&x_t, SIGMA_MAX, SIGMA_MIN);
        for (name, f, order) in deterministic() {
            let errs: Vec<f64> = [16usize, 64, 256]
                .iter()
                .map(|&n| {
                    let sig = karras_sigmas(SIGMA_MIN, SIGMA_MAX, n + 1, 7.0);
                    max_err(&f(&sig, x_t.clone()).unwrap(), &target)
                })
                .collect();
            let rate = (errs[1] / errs[2]).log2() / 2.0;
            eprintln!("{name}: errors {errs:?}, observed order {rate:.2}");
            assert!(errs[2] < errs[1] && errs[1] < errs[0], "{name}: {errs:?}");
            assert!(rate > order - 0.35, "{name}: order {rate} < {order}");
            // Absolute errors on |x_T| up to ~250.
            assert!(
                errs[2] < if order >= 2.0 { 1e-3 } else { 0.02 },
                "{name}: {errs:?}"
            );
        }
        // The third-order multistep beats the second-order one at equal cost.
        let sig = karras_sigmas(SIGMA_MIN, SIGMA_MAX, 65, 7.0);
        let e2 = max_err(
            &sample_dpmpp_2m(denoiser, x_t.clone(), &sig).unwrap(),
            &target,
        );
        let e3 = max_err(
            &sample_dpmpp_3m_sde(denoiser, x_t.clone(), &sig, 0.0, 1.0, &mut no_noise).unwrap(),
            &target,
        );
        assert!(e3 < 0.5 * e2, "3M {e3} vs 2M {e2}");
        // With the final σ = 0 the samplers land on x₀ = μ + (x_T − μ)·s/√(s² + σ_max²).
        let target0 = exact(&x_t, SIGMA_MAX, 0.0);
        let sig = get_sigmas_karras(64, SIGMA_MIN, SIGMA_MAX, 7.0).unwrap();
        for (name, f, order) in deterministic() {
            let e = max_err(&f(&sig, x_t.clone()).unwrap(), &target0);
            assert!(e < if order >= 2.0 { 1e-2 } else { 0.1 }, "{name}: {e}");
        }
    }

    #[test]
    fn ancestral_samplers_reach_the_data_distribution() {
        let x_t = prior(&[128, 128], 2);
        let src = NoiseSource::new(3);
        type Anc =
            fn(&[f64], HostTensor, &mut dyn FnMut(usize) -> HostTensor) -> Result<HostTensor>;
        let samplers: Vec<(&str, Anc)> = vec![
            ("euler_ancestral", |s, x, n| {
                sample_euler_ancestral(denoiser, x, s, 1.0, 1.0, n)
            }),
            ("dpm_2_ancestral", |s, x, n| {
                sample_dpm_2_ancestral(denoiser, x, s, 1.0, 1.0, n)
            }),
            ("dpmpp_2s_ancestral", |s, x, n| {
                sample_dpmpp_2s_ancestral(denoiser, x, s, 1.0, 1.0, n)
            }),
            ("dpmpp_3m_sde", |s, x, n| {
                sample_dpmpp_3m_sde(denoiser, x, s, 1.0, 1.0, n)
            }),
        ];
        let run = |f: Anc, sig: &[f64]| {
            let mut calls = 0usize;
            let mut nz = noise_from_source(src, 0, &x_t);
            let mut counting = |i: usize| {
                calls += 1;
                nz(i)
            };
            let out = f(sig, x_t.clone(), &mut counting).unwrap();
            let (m, s) = mean_std(&out);
            (m, s, calls)
        };
        for (name, f) in samplers {
            // The stochastic samplers carry an O(h^p) bias in the output law; with 400 steps
            // it is below the sampling error (16384 samples: ±0.004 on the mean and std).
            let sig = get_sigmas_karras(400, SIGMA_MIN, SIGMA_MAX, 7.0).unwrap();
            let (m, s, calls) = run(f, &sig);
            eprintln!("{name}: mean {m:.4} std {s:.4}, {calls} noise draws");
            assert!((m - MU).abs() < 0.02, "{name}: mean {m}");
            assert!((s - S).abs() < 0.02, "{name}: std {s}");
            assert_eq!(
                calls,
                sig.len() - 2,
                "{name}: one draw per step but the last"
            );
        }
        // With few steps, Euler ancestral's output variance follows its exact recursion:
        // x' − μ = (r + (1 − r)k)(x − μ) + σ_up z, r = σ_down/σ, k = s²/(s² + σ²).
        let sig = get_sigmas_karras(40, SIGMA_MIN, SIGMA_MAX, 7.0).unwrap();
        let mut v = SIGMA_MAX * SIGMA_MAX;
        for w in sig.windows(2) {
            let (down, up) = get_ancestral_step(w[0], w[1], 1.0);
            let (r, k) = (down / w[0], S * S / (S * S + w[0] * w[0]));
            v = (r + (1.0 - r) * k).powi(2) * v + if w[1] > 0.0 { up * up } else { 0.0 };
        }
        let (_, s, _) = run(
            |s, x, n| sample_euler_ancestral(denoiser, x, s, 1.0, 1.0, n),
            &sig,
        );
        eprintln!(
            "euler_ancestral, 40 steps: std {s:.4}, predicted {:.4}",
            v.sqrt()
        );
        assert!((s - v.sqrt()).abs() < 0.01 && v.sqrt() < 0.45);
    }

    #[test]
    fn dpm_adaptive_meets_tolerance_cheaper_than_fixed_steps() {
        let x_t = prior(&[4, 16], 4);
        let target = exact(&x_t, SIGMA_MAX, SIGMA_MIN);
        for order in [2usize, 3] {
            let opts = DpmAdaptiveOptions {
                order,
                rtol: 1e-3,
                atol: 1e-3,
                ..DpmAdaptiveOptions::default()
            };
            let (out, st) = sample_dpm_adaptive(
                denoiser,
                x_t.clone(),
                SIGMA_MIN,
                SIGMA_MAX,
                &opts,
                &mut no_noise,
            )
            .unwrap();
            let err = max_err(&out, &target);
            eprintln!("dpm_adaptive order {order}: error {err:.2e}, {st:?}");
            assert!(err < 2e-2, "order {order}: error {err}");
            assert_eq!(st.steps, st.n_accept + st.n_reject);
            assert!(st.nfe <= st.n_accept * order + st.n_reject * (order - 1) + st.n_accept);
            // The cheapest Heun schedule (Karras ρ = 7, to σ_min) that is as accurate.
            let mut n = 1;
            let heun_nfe = loop {
                let sig = karras_sigmas(SIGMA_MIN, SIGMA_MAX, n + 1, 7.0);
                let e = max_err(&sample_heun(denoiser, x_t.clone(), &sig).unwrap(), &target);
                if e <= err {
                    break 2 * n;
                }
                n += 1;
                assert!(n < 2000);
            };
            eprintln!("  fixed-step Heun needs {heun_nfe} evaluations for the same error");
            assert!(st.nfe < heun_nfe, "adaptive {} vs heun {heun_nfe}", st.nfe);
        }
        // Tighter tolerances → smaller error, more work.
        let run = |tol: f64| {
            let o = DpmAdaptiveOptions {
                rtol: tol,
                atol: tol,
                ..DpmAdaptiveOptions::default()
            };
            let (out, st) = sample_dpm_adaptive(
                denoiser,
                x_t.clone(),
                SIGMA_MIN,
                SIGMA_MAX,
                &o,
                &mut no_noise,
            )
            .unwrap();
            (max_err(&out, &target), st.nfe)
        };
        let (e1, n1) = run(1e-2);
        let (e2, n2) = run(1e-4);
        assert!(e2 < e1 && n2 > n1, "{e1} {n1} / {e2} {n2}");
    }

    #[test]
    fn dpm_adaptive_ancestral_reaches_the_noisy_marginal() {
        let x_t = prior(&[64, 64], 5);
        let opts = DpmAdaptiveOptions {
            eta: 1.0,
            ..DpmAdaptiveOptions::default()
        };
        let mut nz = noise_from_source(NoiseSource::new(6), 0, &x_t);
        let (out, st) =
            sample_dpm_adaptive(denoiser, x_t, 0.05, SIGMA_MAX, &opts, &mut nz).unwrap();
        let (m, s) = mean_std(&out);
        let want = (S * S + 0.05f64 * 0.05).sqrt();
        assert!(
            (m - MU).abs() < 0.03 && (s - want).abs() < 0.03,
            "{m} {s} {st:?}"
        );
    }

    #[test]
    fn sigma_helpers() {
        let k = get_sigmas_karras(5, 0.1, 10.0, 7.0).unwrap();
        assert_eq!(k.len(), 6);
        assert!((k[0] - 10.0).abs() < 1e-12 && (k[4] - 0.1).abs() < 1e-12 && k[5] == 0.0);
        let e = get_sigmas_exponential(3, 0.1, 10.0).unwrap();
        assert!((e[1] - 1.0).abs() < 1e-12 && e[3] == 0.0);
        // ρ = 1 polyexponential is the exponential schedule.
        let p = get_sigmas_polyexponential(3, 0.1, 10.0, 1.0).unwrap();
        assert!(
            max_err(
                &HostTensor::new(vec![4], p).unwrap(),
                &HostTensor::new(vec![4], e).unwrap()
            ) < 1e-12
        );
        let v = get_sigmas_vp(3, 19.9, 0.1, 1e-3).unwrap();
        let want = ((0.5f64 * 19.9 + 0.1).exp() - 1.0).sqrt();
        assert!((v[0] - want).abs() < 1e-9 * want && v[3] == 0.0);
        assert!(validate_sigmas(&k).is_ok() && validate_sigmas(&v).is_ok());
        assert!(get_sigmas_karras(0, 0.1, 10.0, 7.0).is_err());
        assert!(get_sigmas_karras(4, 0.0, 10.0, 7.0).is_err());
        assert!(get_sigmas_exponential(4, 10.0, 1.0).is_err());
        assert!(get_sigmas_vp(4, 19.9, 0.1, 0.0).is_err());
        let (d, u) = get_ancestral_step(2.0, 1.0, 1.0);
        assert!((d * d + u * u - 1.0).abs() < 1e-12 && (u - (0.75f64).sqrt()).abs() < 1e-12);
        assert_eq!(get_ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = prior(&[1, 4], 0);
        for bad in [
            vec![],
            vec![1.0],
            vec![1.0, 1.0, 0.0],
            vec![1.0, 2.0, 0.0],
            vec![1.0, -0.5],
        ] {
            let e = sample_euler(denoiser, x.clone(), &bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{bad:?}: {e}");
        }
        let sig = [1.0, 0.5, 0.0];
        assert!(sample_euler(denoiser, x.clone(), &[f64::NAN, 0.0]).is_err());
        let nan = |x: &HostTensor, _s: f64| Ok(x.map(|_| f64::NAN));
        assert!(matches!(
            sample_heun(nan, x.clone(), &sig),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            sample_dpmpp_2m(nan, x.clone(), &sig),
            Err(Error::NonFinite { .. })
        ));
        let opts = DpmAdaptiveOptions::default();
        assert!(matches!(
            sample_dpm_adaptive(nan, x.clone(), 0.1, 1.0, &opts, &mut no_noise),
            Err(Error::NonFinite { .. })
        ));
        let wrong = |_: &HostTensor, _s: f64| Ok(HostTensor::zeros(&[2, 2]));
        assert!(matches!(
            sample_dpm_2(wrong, x.clone(), &sig),
            Err(Error::Shape { .. })
        ));
        // Stochastic samplers check the noise they are handed.
        let r = sample_euler_ancestral(denoiser, x.clone(), &sig, 1.0, 1.0, &mut no_noise);
        assert!(matches!(r, Err(Error::Shape { .. })));
        assert!(
            sample_euler_ancestral(denoiser, x.clone(), &sig, -1.0, 1.0, &mut no_noise).is_err()
        );
        for o in [
            DpmAdaptiveOptions { order: 4, ..opts },
            DpmAdaptiveOptions { atol: 0.0, ..opts },
            DpmAdaptiveOptions {
                h_init: 0.0,
                ..opts
            },
        ] {
            assert!(sample_dpm_adaptive(denoiser, x.clone(), 0.1, 1.0, &o, &mut no_noise).is_err());
        }
        assert!(sample_dpm_adaptive(denoiser, x.clone(), 0.0, 1.0, &opts, &mut no_noise).is_err());
        assert!(sample_dpm_adaptive(denoiser, x.clone(), 2.0, 1.0, &opts, &mut no_noise).is_err());
        let tiny = DpmAdaptiveOptions {
            max_attempts: 2,
            ..opts
        };
        assert!(matches!(
            sample_dpm_adaptive(denoiser, x, 0.002, 80.0, &tiny, &mut no_noise),
            Err(Error::State(_))
        ));
    }

    #[cfg(feature = "flex")]
    #[test]
    fn burn_tensors_match_host_results() {
        use ember_core::backend::DefaultBackend;
        use ember_core::burn::tensor::Tensor;
        type T = Tensor<DefaultBackend, 4>;
        fn generic<S: SampleTensor>(x: &S, sigma: f64) -> Result<S> {
            let k = S * S / (S * S + sigma * sigma);
            Ok(x.scale(k).add_scalar(MU * (1.0 - k)))
        }
        let host = prior(&[2, 3, 4, 4], 12);
        let x: T = host.to_tensor(&Default::default());
        let sig = get_sigmas_karras(12, SIGMA_MIN, SIGMA_MAX, 7.0).unwrap();
        let a = sample_dpmpp_2m(generic::<T>, x.clone(), &sig)
            .unwrap()
            .to_host();
        let b = sample_dpmpp_2m(denoiser, host.clone(), &sig).unwrap();
        assert!(max_err(&a, &b) < 1e-3, "{}", max_err(&a, &b));
        let src = NoiseSource::new(1);
        let mut nt = noise_from_source(src, 0, &x);
        let mut nh = noise_from_source(src, 0, &host);
        let a =
            sample_dpmpp_2s_ancestral(generic::<T>, x.clone(), &sig, 1.0, 1.0, &mut nt).unwrap();
        let b = sample_dpmpp_2s_ancestral(denoiser, host.clone(), &sig, 1.0, 1.0, &mut nh).unwrap();
        assert!(max_err(&a.to_host(), &b) < 1e-3);
        let o = DpmAdaptiveOptions::default();
        let (a, sa) =
            sample_dpm_adaptive(generic::<T>, x, SIGMA_MIN, SIGMA_MAX, &o, &mut nt).unwrap();
        let (b, sb) =
            sample_dpm_adaptive(denoiser, host, SIGMA_MIN, SIGMA_MAX, &o, &mut nh).unwrap();
        assert!(max_err(&a.to_host(), &b) < 1e-2 && sa.n_accept.abs_diff(sb.n_accept) <= 1);
    }

    #[test]
    fn eps_wrapper_matches_the_denoiser() {
        // The exact ε of the VP model at σ: ε = (x − D)/σ with x the VE sample.
        let x = prior(&[2, 3], 9);
        let sigma = 3.0;
        let mut d = denoiser_from_eps(|x_in: &HostTensor, s: f64| {
            let x_ve = x_in.scale((1.0 + s * s).sqrt());
            Ok(x_ve.sub(&denoiser(&x_ve, s)?).scale(1.0 / s))
        });
        let got = d(&x, sigma).unwrap();
        assert!(max_err(&got, &denoiser(&x, sigma).unwrap()) < 1e-12);
    }
}
