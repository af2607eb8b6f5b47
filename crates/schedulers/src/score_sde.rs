//! Score-based generative modelling through SDEs (Song et al., ICLR 2021).
//!
//! # The SDEs
//! A forward SDE `dx = f(t)·x dt + g(t) dw` on t ∈ [0, 1] (eq. 5) with a linear drift has a
//! Gaussian transition `x_t | x₀ ~ N(α(t)·x₀, σ(t)²·I)`; [`Sde`] exposes f, g, α, σ and the
//! prior std. Two SDEs are provided:
//! - [`VpSde`] (eq. 11, the continuous DDPM): β(t) = β_min + t(β_max − β_min),
//!   f = −½β(t), g = √β(t), α(t) = exp(−½∫₀ᵗβ) = √ᾱ(t), σ(t) = √(1 − ᾱ(t)) (eq. 33);
//! - [`VeSde`] (eq. 9, the continuous SMLD/NCSN): σ(t) = σ_min(σ_max/σ_min)ᵗ, f = 0,
//!   g = σ(t)√(2 ln(σ_max/σ_min)), α = 1 (eq. 31).
//!
//! # Sampling
//! The reverse-time SDE (eq. 6) `dx = [f(t)x − g(t)²∇ₓlog p_t(x)] dt + g(t) dw̄` and the
//! probability-flow ODE (eq. 13) `dx/dt = f(t)x − ½g(t)²∇ₓlog p_t(x)` are integrated from
//! t = 1 down to a small t = ε over a time grid `ts` (strictly decreasing, in (0, 1]; see
//! [`time_grid`]).
//!
//! - `score: FnMut(&S, f64) -> Result<S>` returns the **score** s_θ(x, t) ≈ ∇ₓ log p_t(x).
//!   For an ε-prediction network use [`score_from_eps`] (s = −ε̂/σ(t)); Song et al.'s
//!   released NCSN++ models already return the score.
//! - `noise: &mut dyn FnMut(usize) -> S` supplies standard-normal noise of the sample's
//!   shape; it is called with a running draw counter 0, 1, 2, … (one per predictor step, one
//!   per corrector iteration, in the order they are used). In a pipeline pass
//!   [`crate::k_diffusion::noise_from_source`].
//! - The initial sample is prior noise: [`prior_sample`] scales standard-normal noise by the
//!   prior std.

use crate::schedule::{linspace_f64, BetaSchedule, TrainSchedule};
use ember_core::scheduler::{check_finite, check_same_shape};
use ember_core::{Error, Result, SampleTensor};

/// A linear-drift SDE `dx = f(t)·x dt + g(t) dw` on t ∈ [0, 1] with Gaussian marginals
/// `x_t | x₀ ~ N(α(t) x₀, σ(t)² I)`.
pub trait Sde {
    /// Checks the parameters (finite, ordered).
    fn validate(&self) -> Result<()>;
    /// f(t), the drift coefficient: f(x, t) = f(t)·x.
    fn drift_coeff(&self, t: f64) -> f64;
    /// g(t), the diffusion coefficient.
    fn diffusion(&self, t: f64) -> f64;
    /// α(t), the marginal mean coefficient: E[x_t | x₀] = α(t)·x₀.
    fn mean_coeff(&self, t: f64) -> f64;
    /// σ(t), the marginal standard deviation of x_t given x₀.
    fn marginal_std(&self, t: f64) -> f64;
    /// The standard deviation of the prior p₁ ≈ N(0, prior_std²·I).
    fn prior_std(&self) -> f64;
    /// The end time ε Song et al. sample to (1e-3 for VP, 1e-5 for VE).
    fn sampling_eps(&self) -> f64;

    /// The exact Gaussian transition from the earlier time `t_next` to the later `t`:
    /// `x_t = a·x_{t_next} + √g2·z`, with a = α(t)/α(t_next) and g2 = σ(t)² − a²σ(t_next)².
    /// This is the discretisation `x_{i+1} = x_i + f_i(x_i) + G_i z_i` (f_i(x) = (a − 1)x,
    /// G_i² = g2) that the reverse-diffusion predictor (eq. 46) inverts.
    fn transition(&self, t: f64, t_next: f64) -> (f64, f64) {
        let a = self.mean_coeff(t) / self.mean_coeff(t_next);
        let (st, sn) = (self.marginal_std(t), self.marginal_std(t_next));
        (a, (st * st - a * a * sn * sn).max(0.0))
    }
    /// The α_i of the Langevin corrector's step size (Algorithm 5 for VP: the discrete
    /// α_i = 1 − β_i of the step t → t_next; 1 for VE, Algorithm 4).
    fn langevin_alpha(&self, t: f64, t_next: f64) -> f64 {
        let _ = (t, t_next);
        1.0
    }
    /// log SNR(t) = 2·ln(α(t)/σ(t)).
    fn log_snr(&self, t: f64) -> f64 {
        2.0 * (self.mean_coeff(t).ln() - self.marginal_std(t).ln())
    }
}

fn check_t(t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::argument("t", format!("must lie in [0, 1], got {t}")))
    }
}

// ---------------------------------------------------------------------------------------
// VP SDE
// ---------------------------------------------------------------------------------------

/// The variance-preserving SDE (Song et al. 2021, eq. 11): `dx = −½β(t)x dt + √β(t) dw` with
/// β(t) = β_min + t(β_max − β_min), the continuous limit of DDPM's linear schedule with
/// β_i = β(i/N)/N (β_min/N = 1e-4, β_max/N = 0.02 for N = 1000).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpSde {
    /// β(0). Default 0.1.
    pub beta_min: f64,
    /// β(1). Default 20.
    pub beta_max: f64,
}

impl Default for VpSde {
    fn default() -> Self {
        Self {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl VpSde {
    /// A VP SDE; errors unless 0 ≤ β_min ≤ β_max, both finite, β_max > 0.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        let s = Self { beta_min, beta_max };
        s.validate()?;
        Ok(s)
    }

    /// β(t) = β_min + t(β_max − β_min).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// B(t) = ∫₀ᵗ β(s) ds = β_min t + ½(β_max − β_min)t².
    pub fn integrated_beta(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
    }

    /// The continuous ᾱ(t) = exp(−∫₀ᵗβ) = α(t)², the counterpart of DDPM's ᾱ_i at t = (i+1)/N
    /// (see [`VpSde::train_schedule`]).
    pub fn alpha_bar(&self, t: f64) -> f64 {
        (-self.integrated_beta(t)).exp()
    }

    /// The variance-exploding view σ_VE(t) = σ(t)/α(t) = √(e^{B(t)} − 1), k-diffusion's
    /// `get_sigmas_vp`.
    pub fn sigma(&self, t: f64) -> f64 {
        self.integrated_beta(t).exp_m1().sqrt()
    }

    /// The inverse of [`VpSde::sigma`]: the t with B(t) = ln(1 + σ²), i.e. the positive root
    /// t = 2L/(β_min + √(β_min² + 2(β_max − β_min)L)) with L = ln(1 + σ²).
    /// Errors when σ is negative, not finite, or beyond σ_VE(1).
    pub fn t_from_sigma(&self, sigma: f64) -> Result<f64> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(Error::argument(
                "sigma",
                format!("must be finite and ≥ 0, got {sigma}"),
            ));
        }
        let l = (sigma * sigma).ln_1p();
        let d = self.beta_max - self.beta_min;
        let root = (self.beta_min * self.beta_min + 2.0 * d * l).sqrt();
        let t = if l == 0.0 {
            0.0
        } else {
            2.0 * l / (self.beta_min + root)
        };
        if t > 1.0 + 1e-12 {
            return Err(Error::argument(
                "sigma",
                format!("{sigma} exceeds the VP SDE's σ(1) = {}", self.sigma(1.0)),
            ));
        }
        Ok(t.min(1.0))
    }

    /// Song et al.'s discretisation (their `VPSDE.discrete_betas`): N values
    /// β_i = linspace(β_min/N, β_max/N, N), DDPM's linear schedule.
    pub fn ddpm_betas(&self, n: usize) -> Vec<f64> {
        let nf = n as f64;
        linspace_f64(self.beta_min / nf, self.beta_max / nf, n)
    }

    /// The diffusers training schedule this SDE discretises: `TrainSchedule::new(n, β_min/n,
    /// β_max/n, linear)` (float32 as diffusers stores it). For n = 1000 and the default SDE
    /// this is DDPM's (1e-4, 0.02) schedule, whose ᾱ_i ≈ [`VpSde::alpha_bar`]((i + 1)/n).
    pub fn train_schedule(&self, n: usize) -> Result<TrainSchedule> {
        self.validate()?;
        let nf = n as f64;
        TrainSchedule::new(
            n,
            self.beta_min / nf,
            self.beta_max / nf,
            BetaSchedule::Linear,
            None,
            false,
        )
    }

    /// The exact discretisation β_i = 1 − ᾱ((i+1)/N)/ᾱ(i/N) (as `betas_for_alpha_bar`), whose
    /// cumulative product equals [`VpSde::alpha_bar`]((i + 1)/N) up to rounding.
    pub fn alpha_bar_betas(&self, n: usize) -> Vec<f64> {
        let nf = n as f64;
        (0..n)
            .map(|i| {
                let db =
                    self.integrated_beta((i + 1) as f64 / nf) - self.integrated_beta(i as f64 / nf);
                -(-db).exp_m1()
            })
            .collect()
    }
}

impl Sde for VpSde {
    fn validate(&self) -> Result<()> {
        let (a, b) = (self.beta_min, self.beta_max);
        if !(a.is_finite() && b.is_finite() && a >= 0.0 && b >= a && b > 0.0) {
            return Err(Error::argument(
                "beta_min/beta_max",
                format!("need finite 0 ≤ beta_min ≤ beta_max, beta_max > 0; got {a}, {b}"),
            ));
        }
        Ok(())
    }
    /// f(t) = −½β(t).
    fn drift_coeff(&self, t: f64) -> f64 {
        -0.5 * self.beta(t)
    }
    /// g(t) = √β(t).
    fn diffusion(&self, t: f64) -> f64 {
        self.beta(t).max(0.0).sqrt()
    }
    /// α(t) = exp(−¼t²(β_max − β_min) − ½tβ_min) (eq. 33).
    fn mean_coeff(&self, t: f64) -> f64 {
        (-0.5 * self.integrated_beta(t)).exp()
    }
    /// σ(t) = √(1 − e^{−B(t)}), computed with expm1 so it stays accurate near t = 0.
    fn marginal_std(&self, t: f64) -> f64 {
        (-(-self.integrated_beta(t)).exp_m1()).sqrt()
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
    fn sampling_eps(&self) -> f64 {
        1e-3
    }
    /// a = e^{−½(B(t) − B(t_next))}, g2 = 1 − a² (= the discrete β_i).
    fn transition(&self, t: f64, t_next: f64) -> (f64, f64) {
        let db = self.integrated_beta(t) - self.integrated_beta(t_next);
        ((-0.5 * db).exp(), -(-db).exp_m1())
    }
    /// α_i = 1 − β_i = ᾱ(t)/ᾱ(t_next).
    fn langevin_alpha(&self, t: f64, t_next: f64) -> f64 {
        (-(self.integrated_beta(t) - self.integrated_beta(t_next))).exp()
    }
    fn log_snr(&self, t: f64) -> f64 {
        -(self.integrated_beta(t).exp_m1().ln())
    }
}

// ---------------------------------------------------------------------------------------
// VE SDE
// ---------------------------------------------------------------------------------------

/// The variance-exploding SDE (Song et al. 2021, eq. 9 / 30): σ(t) = σ_min(σ_max/σ_min)ᵗ,
/// `dx = σ(t)√(2 ln(σ_max/σ_min)) dw`. As in the paper's code, the marginal std is σ(t)
/// itself (data are taken as already perturbed with σ_min).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VeSde {
    /// σ(0). Default 0.01.
    pub sigma_min: f64,
    /// σ(1), also the prior std. Default 50.
    pub sigma_max: f64,
}

impl Default for VeSde {
    fn default() -> Self {
        Self {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }
}

impl VeSde {
    /// A VE SDE; errors unless 0 < σ_min < σ_max, both finite.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        let s = Self {
            sigma_min,
            sigma_max,
        };
        s.validate()?;
        Ok(s)
    }

    /// σ(t) = σ_min(σ_max/σ_min)ᵗ.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }

    /// Song et al.'s SMLD noise levels (`VESDE.discrete_sigmas`):
    /// exp(linspace(ln σ_min, ln σ_max, N)), increasing.
    pub fn discrete_sigmas(&self, n: usize) -> Vec<f64> {
        linspace_f64(self.sigma_min.ln(), self.sigma_max.ln(), n)
            .into_iter()
            .map(f64::exp)
            .collect()
    }
}

impl Sde for VeSde {
    fn validate(&self) -> Result<()> {
        let (a, b) = (self.sigma_min, self.sigma_max);
        if !(a.is_finite() && b.is_finite() && a > 0.0 && b > a) {
            return Err(Error::argument(
                "sigma_min/sigma_max",
                format!("need finite 0 < sigma_min < sigma_max; got {a}, {b}"),
            ));
        }
        Ok(())
    }
    /// f = 0.
    fn drift_coeff(&self, _t: f64) -> f64 {
        0.0
    }
    /// g(t) = σ(t)√(2 ln(σ_max/σ_min)), so that g² = dσ²/dt.
    fn diffusion(&self, t: f64) -> f64 {
        self.sigma(t) * (2.0 * (self.sigma_max / self.sigma_min).ln()).sqrt()
    }
    /// α = 1.
    fn mean_coeff(&self, _t: f64) -> f64 {
        1.0
    }
    /// σ(t).
    fn marginal_std(&self, t: f64) -> f64 {
        self.sigma(t)
    }
    fn prior_std(&self) -> f64 {
        self.sigma_max
    }
    fn sampling_eps(&self) -> f64 {
        1e-5
    }
    /// a = 1, g2 = σ(t)² − σ(t_next)² (SMLD's reverse-diffusion step, eq. 47).
    fn transition(&self, t: f64, t_next: f64) -> (f64, f64) {
        let (st, sn) = (self.sigma(t), self.sigma(t_next));
        (1.0, (st * st - sn * sn).max(0.0))
    }
}

// ---------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------

/// The uniform time grid of Song et al.'s samplers: `num_steps + 1` times
/// linspace(1, ε, num_steps + 1) (`num_steps` predictor steps ending at ε).
pub fn time_grid(num_steps: usize, eps: f64) -> Result<Vec<f64>> {
    if num_steps == 0 {
        return Err(Error::argument("num_steps", "must be at least 1"));
    }
    if !(eps > 0.0 && eps < 1.0) {
        return Err(Error::argument(
            "eps",
            format!("must lie in (0, 1), got {eps}"),
        ));
    }
    Ok(linspace_f64(1.0, eps, num_steps + 1))
}

/// Checks a time grid: at least two entries, each in (0, 1] (t = 0 has σ = 0 for VP, where
/// the score is undefined), strictly decreasing.
pub fn validate_times(ts: &[f64]) -> Result<()> {
    if ts.len() < 2 {
        return Err(Error::argument(
            "ts",
            format!("need at least two times, got {}", ts.len()),
        ));
    }
    if let Some((i, t)) = ts
        .iter()
        .enumerate()
        .find(|(_, t)| !(**t > 0.0 && **t <= 1.0))
    {
        return Err(Error::argument(
            "ts",
            format!("ts[{i}] = {t} is outside (0, 1]"),
        ));
    }
    if let Some(i) = (1..ts.len()).find(|&i| ts[i] >= ts[i - 1]) {
        return Err(Error::argument(
            "ts",
            format!(
                "must be strictly decreasing, but ts[{i}] = {} ≥ ts[{}] = {}",
                ts[i],
                i - 1,
                ts[i - 1]
            ),
        ));
    }
    Ok(())
}

/// A sample of the prior N(0, prior_std²·I) from standard-normal noise `z`.
pub fn prior_sample<S: SampleTensor, D: Sde + ?Sized>(sde: &D, z: &S) -> S {
    z.scale(sde.prior_std())
}

/// Turns an ε-prediction model `eps(x_t, t)` into a score model:
/// ∇ₓ log p_t(x) ≈ −ε̂(x, t)/σ(t) (the transition x_t = α x₀ + σ ε has score −ε/σ).
/// Errors for t outside (0, 1].
pub fn score_from_eps<'a, S, D, F>(sde: &'a D, mut eps: F) -> impl FnMut(&S, f64) -> Result<S> + 'a
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S> + 'a,
{
    move |x: &S, t: f64| {
        check_t(t)?;
        let std = sde.marginal_std(t);
        if std <= 0.0 {
            return Err(Error::argument(
                "t",
                format!("σ({t}) = 0: the score is undefined"),
            ));
        }
        Ok(eps(x, t)?.scale(-1.0 / std))
    }
}

/// The predictor of a predictor–corrector sampler (Song et al. 2021, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    /// Euler–Maruyama on the reverse SDE (eq. 6): with Δt = t_{i+1} − t_i < 0,
    /// x̄ = x + [f(t)x − g(t)²s_θ(x, t)]Δt, x = x̄ + g(t)√(−Δt)·z.
    EulerMaruyama,
    /// Reverse diffusion (eq. 46): x̄ = x − f_i(x) + G_i²s_θ(x, t_i) = (2 − a)x + g2·s_θ,
    /// x = x̄ + G_i z, with (a, g2) = [`Sde::transition`]`(t_i, t_{i+1})`.
    ReverseDiffusion,
    /// Ancestral sampling (eq. 47 for VE, DDPM's for VP): x̄ = (x + g2·s_θ)/a, the exact
    /// (Tweedie) posterior mean of the transition, plus noise of the posterior std
    /// √(g2·σ(t_{i+1})²/σ(t_i)²).
    Ancestral,
    /// No predictor: only the corrector runs at each t_i (Song et al.'s "C" samplers).
    None,
}

/// The Langevin corrector (Song et al. 2021, Algorithms 4 and 5): at time t, `n_steps` times,
///
/// ```text
/// g = s_θ(x, t);  ε = 2α(r‖z‖/‖g‖)²;  x ← x + ε g + √(2ε) z
/// ```
///
/// with r = `snr` (the paper uses 0.16 for VE, 0.01 for VP with CIFAR-10) and
/// α = [`Sde::langevin_alpha`]. Norms are per sample (over all non-batch dimensions), as the
/// algorithms are written, and are computed on the host; a sample whose score is exactly
/// zero is not moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LangevinCorrector {
    /// The signal-to-noise ratio r of the step size.
    pub snr: f64,
    /// Corrector iterations per time step (M in the paper).
    pub n_steps: usize,
}

/// How to integrate the probability-flow ODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdeMethod {
    /// Explicit Euler: x_{i+1} = x_i + Δt·F(x_i, t_i). One evaluation per step.
    Euler,
    /// Heun's method (explicit trapezoid): x̃ = x_i + Δt·F(x_i, t_i),
    /// x_{i+1} = x_i + ½Δt·(F(x_i, t_i) + F(x̃, t_{i+1})). Two evaluations per step.
    Heun,
}

fn call_score<S, F>(score: &mut F, x: &S, t: f64) -> Result<S>
where
    S: SampleTensor,
    F: FnMut(&S, f64) -> Result<S>,
{
    let s = score(x, t)?;
    check_same_shape("score output", x, &s)?;
    check_finite("score output", &s)?;
    Ok(s)
}

/// Hands out the noise draws, counting them.
struct Draws<'a, S> {
    noise: &'a mut dyn FnMut(usize) -> S,
    next: usize,
}

impl<S: SampleTensor> Draws<'_, S> {
    fn draw(&mut self, like: &S) -> Result<S> {
        let z = (self.noise)(self.next);
        self.next += 1;
        check_same_shape("noise", like, &z)?;
        Ok(z)
    }
}

fn start_checks<S: SampleTensor, D: Sde + ?Sized>(sde: &D, x: &S, ts: &[f64]) -> Result<()> {
    sde.validate()?;
    validate_times(ts)?;
    check_finite("initial sample", x)
}

/// ‖x_b‖₂ for every sample b of the batch.
fn per_sample_norms<S: SampleTensor>(x: &S) -> Vec<f64> {
    let h = x.to_host();
    let per = h.sample_len().max(1);
    h.data()
        .chunks(per)
        .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect()
}

fn langevin<S, D, F>(
    sde: &D,
    score: &mut F,
    x: S,
    t: f64,
    t_next: f64,
    c: &LangevinCorrector,
    draws: &mut Draws<'_, S>,
) -> Result<S>
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S>,
{
    let alpha = sde.langevin_alpha(t, t_next);
    let mut x = x;
    for _ in 0..c.n_steps {
        let g = call_score(score, &x, t)?;
        let z = draws.draw(&x)?;
        // ε = 2α(r·mean‖z_b‖ / mean‖g_b‖)² (Algorithm 4/5, line 5) with the norms averaged
        // over the batch, as the authors' code does: per-sample norm ratios are noisy in low
        // dimensions (‖z_b‖ of a 2-D sample ranges over orders of magnitude) and make the
        // corrector diverge; in image dimensions the two agree (norms concentrate).
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (gn, zn) = (mean(per_sample_norms(&g)), mean(per_sample_norms(&z)));
        let eps = vec![if gn > 0.0 {
            2.0 * alpha * (c.snr * zn / gn).powi(2)
        } else {
            0.0
        }];
        let noise_scale: Vec<f64> = eps.iter().map(|e| (2.0 * e).sqrt()).collect();
        x = x
            .add(&g.scale_per_sample(&eps))
            .add(&z.scale_per_sample(&noise_scale));
    }
    Ok(x)
}

/// One predictor step t → t_next; returns (x, x̄) where x̄ is the noise-free mean.
#[allow(clippy::too_many_arguments)]
fn predict<S, D, F>(
    sde: &D,
    score: &mut F,
    p: Predictor,
    x: &S,
    t: f64,
    t_next: f64,
    add_noise: bool,
    draws: &mut Draws<'_, S>,
) -> Result<(S, S)>
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S>,
{
    let (mean, std) = match p {
        Predictor::None => return Ok((x.clone(), x.clone())),
        Predictor::EulerMaruyama => {
            let s = call_score(score, x, t)?;
            let dt = t_next - t;
            let (f, g) = (sde.drift_coeff(t), sde.diffusion(t));
            // x̄ = x + (f x − g² s)Δt.
            (
                S::lin_comb(&[(1.0 + f * dt, x), (-g * g * dt, &s)]),
                g * (-dt).sqrt(),
            )
        }
        Predictor::ReverseDiffusion => {
            let s = call_score(score, x, t)?;
            let (a, g2) = sde.transition(t, t_next);
            (S::lin_comb(&[(2.0 - a, x), (g2, &s)]), g2.sqrt())
        }
        Predictor::Ancestral => {
            let s = call_score(score, x, t)?;
            let (a, g2) = sde.transition(t, t_next);
            let r = sde.marginal_std(t_next) / sde.marginal_std(t);
            (
                S::lin_comb(&[(1.0 / a, x), (g2 / a, &s)]),
                (g2 * r * r).sqrt(),
            )
        }
    };
    if add_noise && std > 0.0 {
        let z = draws.draw(&mean)?;
        Ok((S::lin_comb(&[(1.0, &mean), (std, &z)]), mean))
    } else {
        Ok((mean.clone(), mean))
    }
}

/// The predictor–corrector sampler (Song et al. 2021, Algorithm 1 with the corrector of
/// Algorithms 4/5). For i = 0 … n−1: the corrector runs at t_i, then the predictor moves
/// t_i → t_{i+1} (the order of the official implementation; the paper's listing applies
/// the same operators predictor-first, which differs only at the two ends).
///
/// With `denoise` the last predictor step returns its mean x̄ without noise (the paper's
/// code does the same), so the result is the sample at t_n = ε. `corrector: None` is a
/// predictor-only sampler; `Predictor::None` with a corrector is corrector-only.
#[allow(clippy::too_many_arguments)]
pub fn sample_pc<S, D, F>(
    sde: &D,
    mut score: F,
    x: S,
    ts: &[f64],
    predictor: Predictor,
    corrector: Option<LangevinCorrector>,
    noise: &mut dyn FnMut(usize) -> S,
    denoise: bool,
) -> Result<S>
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S>,
{
    start_checks(sde, &x, ts)?;
    if let Some(c) = &corrector {
        if !(c.snr.is_finite() && c.snr > 0.0) {
            return Err(Error::argument(
                "snr",
                format!("must be finite and > 0, got {}", c.snr),
            ));
        }
    }
    let mut draws = Draws { noise, next: 0 };
    let mut x = x;
    let n = ts.len() - 1;
    for i in 0..n {
        let (t, t_next) = (ts[i], ts[i + 1]);
        if let Some(c) = &corrector {
            x = langevin(sde, &mut score, x, t, t_next, c, &mut draws)?;
        }
        let last = i + 1 == n;
        let (xn, mean) = predict(
            sde,
            &mut score,
            predictor,
            &x,
            t,
            t_next,
            !(last && denoise),
            &mut draws,
        )?;
        x = if last && denoise { mean } else { xn };
    }
    Ok(x)
}

/// The reverse-time SDE (eq. 6) integrated with Euler–Maruyama over `ts`: the
/// predictor-only [`sample_pc`] with [`Predictor::EulerMaruyama`]. One score evaluation and
/// one noise draw (index = step) per step; `denoise` drops the last step's noise.
pub fn sample_reverse_sde<S, D, F>(
    sde: &D,
    score: F,
    x: S,
    ts: &[f64],
    noise: &mut dyn FnMut(usize) -> S,
    denoise: bool,
) -> Result<S>
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S>,
{
    sample_pc(
        sde,
        score,
        x,
        ts,
        Predictor::EulerMaruyama,
        None,
        noise,
        denoise,
    )
}

/// The probability-flow ODE (eq. 13), F(x, t) = f(t)x − ½g(t)²s_θ(x, t), integrated over
/// `ts` with Euler or Heun steps. Deterministic: the same prior sample always maps to the
/// same data point.
pub fn sample_probability_flow<S, D, F>(
    sde: &D,
    mut score: F,
    x: S,
    ts: &[f64],
    method: OdeMethod,
) -> Result<S>
where
    S: SampleTensor,
    D: Sde + ?Sized,
    F: FnMut(&S, f64) -> Result<S>,
{
    start_checks(sde, &x, ts)?;
    let mut x = x;
    for w in ts.windows(2) {
        let (t, tn) = (w[0], w[1]);
        let dt = tn - t;
        let s = call_score(&mut score, &x, t)?;
        let (f, g) = (sde.drift_coeff(t), sde.diffusion(t));
        // x̃ = x + Δt(f x − ½g² s).
        let x_euler = S::lin_comb(&[(1.0 + f * dt, &x), (-0.5 * g * g * dt, &s)]);
        x = match method {
            OdeMethod::Euler => x_euler,
            OdeMethod::Heun => {
                let s2 = call_score(&mut score, &x_euler, tn)?;
                let (f2, g2) = (sde.drift_coeff(tn), sde.diffusion(tn));
                // x + ½Δt[(f x − ½g² s) + (f₂ x̃ − ½g₂² s₂)].
                S::lin_comb(&[
                    (1.0 + 0.5 * f * dt, &x),
                    (-0.25 * g * g * dt, &s),
                    (0.5 * f2 * dt, &x_euler),
                    (-0.25 * g2 * g2 * dt, &s2),
                ])
            }
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_diffusion::{get_sigmas_vp, noise_from_source};
    use ember_core::{HostTensor, NoiseSource};

    /// Data N(μ, s²) per element. Under the SDE, p_t = N(αμ, α²s² + σ²), so the score is
    /// −(x − αμ)/(α²s² + σ²), and the PF-ODE keeps (x − αμ)/√(α²s² + σ²) constant: its
    /// exact solution from t₀ to t is x_t = α_t μ + √v_t·(x_{t₀} − α_{t₀}μ)/√v_{t₀}.
    const MU: f64 = 0.7;
    const S: f64 = 0.5;

    fn var<D: Sde + ?Sized>(sde: &D, t: f64) -> f64 {
        let (a, s) = (sde.mean_coeff(t), sde.marginal_std(t));
        a * a * S * S + s * s
    }

    fn exact_score<D: Sde + ?Sized>(
        sde: &D,
    ) -> impl FnMut(&HostTensor, f64) -> Result<HostTensor> + '_ {
        move |x: &HostTensor, t: f64| {
            let (m, v) = (sde.mean_coeff(t) * MU, var(sde, t));
            Ok(x.map(|x| -(x - m) / v))
        }
    }

    fn exact_flow<D: Sde + ?Sized>(sde: &D, x: &HostTensor, t0: f64, t: f64) -> HostTensor {
        let k = (var(sde, t) / var(sde, t0)).sqrt();
        let (m0, m) = (sde.mean_coeff(t0) * MU, sde.mean_coeff(t) * MU);
        x.map(|x| m + k * (x - m0))
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
        (
            m,
            (x.data().iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt(),
        )
    }

    #[test]
    fn vp_marginals_closed_form() {
        let sde = VpSde::default();
        for &t in &[1e-4, 0.01, 0.3, 0.77, 1.0] {
            // α(t) against a numerical integral of β (Simpson, exact for a linear β).
            let n = 1000;
            let h = t / n as f64;
            let integral: f64 = (0..=n)
                .map(|k| {
                    let w = if k == 0 || k == n {
                        1.0
                    } else if k % 2 == 1 {
                        4.0
                    } else {
                        2.0
                    };
                    w * sde.beta(k as f64 * h)
                })
                .sum::<f64>()
                * h
                / 3.0;
            let a = sde.mean_coeff(t);
            assert!(
                (a - (-0.5 * integral).exp()).abs() < 1e-12 * a.max(1e-300),
                "t={t}"
            );
            assert!((a * a - sde.alpha_bar(t)).abs() < 1e-15);
            // Variance preserving: α² + σ² = 1, and σ stays accurate for tiny t.
            let s = sde.marginal_std(t);
            assert!((a * a + s * s - 1.0).abs() < 1e-14);
            // Moment ODE of the SDE: dσ²/dt = 2fσ² + g², dα/dt = fα (central differences).
            let d = 1e-6;
            let (t0, t1) = ((t - d).max(0.0), (t + d).min(1.0));
            let ds2 = (sde.marginal_std(t1).powi(2) - sde.marginal_std(t0).powi(2)) / (t1 - t0);
            let want = 2.0 * sde.drift_coeff(t) * s * s + sde.diffusion(t).powi(2);
            assert!(
                (ds2 - want).abs() < 1e-5 * want.abs().max(1.0),
                "t={t}: {ds2} vs {want}"
            );
            let da = (sde.mean_coeff(t1) - sde.mean_coeff(t0)) / (t1 - t0);
            assert!((da - sde.drift_coeff(t) * a).abs() < 1e-5, "t={t}");
            // log-SNR and the VE view.
            assert!((sde.log_snr(t) - 2.0 * (a / s).ln()).abs() < 1e-9);
            assert!((sde.sigma(t) - s / a).abs() < 1e-9 * (s / a));
            assert!((sde.t_from_sigma(sde.sigma(t)).unwrap() - t).abs() < 1e-12);
        }
        // Known values at t = 1: log α(1) = −¼·19.9 − ½·0.1 = −5.025.
        assert!((sde.mean_coeff(1.0).ln() + 5.025).abs() < 1e-12);
        assert_eq!(sde.prior_std(), 1.0);
        // VE: σ(t) endpoints, g² = dσ²/dt.
        let ve = VeSde::default();
        assert!((ve.marginal_std(0.0) - 0.01).abs() < 1e-15);
        assert!((ve.marginal_std(1.0) - 50.0).abs() < 1e-12);
        let t = 0.4;
        let ds2 = (ve.sigma(t + 1e-6).powi(2) - ve.sigma(t - 1e-6).powi(2)) / 2e-6;
        assert!((ds2 - ve.diffusion(t).powi(2)).abs() < 1e-6 * ds2);
        assert!((ve.discrete_sigmas(3)[1] - (0.01f64 * 50.0).sqrt()).abs() < 1e-14);
    }

    #[test]
    fn vp_connects_to_the_ddpm_schedule() {
        let sde = VpSde::default();
        let sched = sde.train_schedule(1000).unwrap();
        assert!((sched.betas[0] - 1e-4).abs() < 1e-10 && (sched.betas[999] - 0.02).abs() < 1e-9);
        for i in [0usize, 10, 100, 500, 999] {
            let cont = sde.alpha_bar((i + 1) as f64 / 1000.0).ln();
            let disc = sched.alphas_cumprod[i].ln();
            // ln(1 − β) ≈ −β − β²/2: the discrete chain differs from exp(−∫β) by ~Σβ²/2
            // (< 0.7 % of ln ᾱ) plus float32 rounding.
            assert!(
                (cont - disc).abs() < 0.008 * cont.abs() + 1e-4,
                "i={i}: {cont} vs {disc}"
            );
        }
        let song = sde.ddpm_betas(1000);
        // (The schedule holds torch's float32 linspace.)
        assert!(song
            .iter()
            .zip(&sched.betas)
            .all(|(a, b)| (a - b).abs() < 1e-6 * a));
        // The exact discretisation reproduces ᾱ(t) at the grid points.
        let mut acp = 1.0;
        for (i, b) in sde.alpha_bar_betas(50).iter().enumerate() {
            acp *= 1.0 - b;
            let want = sde.alpha_bar((i + 1) as f64 / 50.0);
            assert!((acp - want).abs() < 1e-12 * want.max(1e-3));
        }
        // k-diffusion's get_sigmas_vp is this SDE's σ_VE on linspace(1, ε, n).
        let ks = get_sigmas_vp(5, 19.9, 0.1, 1e-3).unwrap();
        for (k, t) in ks.iter().zip(linspace_f64(1.0, 1e-3, 5)) {
            assert!((k - sde.sigma(t)).abs() < 1e-12 * k);
        }
    }

    #[test]
    fn probability_flow_ode_maps_prior_to_the_exact_point() {
        let z = NoiseSource::new(1).initial_noise(&[4, 8], 0);
        let vp = VpSde::default();
        let ve = VeSde::default();
        let check = |sde: &dyn Fn(usize, OdeMethod) -> (HostTensor, HostTensor), name: &str| {
            let errs: Vec<f64> = [100usize, 200, 400]
                .iter()
                .map(|&n| {
                    let (out, want) = sde(n, OdeMethod::Heun);
                    max_err(&out, &want)
                })
                .collect();
            let order = (errs[1] / errs[2]).log2();
            eprintln!("{name} Heun errors {errs:?} (order {order:.2})");
            assert!(errs[2] < 1e-3 && order > 1.7, "{name}: {errs:?}");
            let (e1, e2) = {
                let (a, w) = sde(200, OdeMethod::Euler);
                let (b, w2) = sde(400, OdeMethod::Euler);
                (max_err(&a, &w), max_err(&b, &w2))
            };
            eprintln!("{name} Euler errors {e1:.3e} {e2:.3e}");
            assert!(
                e2 < e1 && (e1 / e2).log2() > 0.8 && e2 < 0.1,
                "{name}: {e1} {e2}"
            );
        };
        let run_vp = |n: usize, m: OdeMethod| {
            let ts = time_grid(n, vp.sampling_eps()).unwrap();
            let x1 = prior_sample(&vp, &z);
            let out = sample_probability_flow(&vp, exact_score(&vp), x1.clone(), &ts, m).unwrap();
            (out, exact_flow(&vp, &x1, 1.0, ts[n]))
        };
        check(&run_vp, "VP");
        let run_ve = |n: usize, m: OdeMethod| {
            let ts = time_grid(n, ve.sampling_eps()).unwrap();
            let x1 = prior_sample(&ve, &z);
            let out = sample_probability_flow(&ve, exact_score(&ve), x1.clone(), &ts, m).unwrap();
            (out, exact_flow(&ve, &x1, 1.0, ts[n]))
        };
        check(&run_ve, "VE");
        // At ε the data-space point is ≈ μ + s·(x₁ − α₁μ)/√v₁.
        let (out, _) = run_vp(400, OdeMethod::Heun);
        let x1 = prior_sample(&vp, &z);
        let data = x1.map(|x| MU + S * (x - vp.mean_coeff(1.0) * MU) / var(&vp, 1.0).sqrt());
        assert!(max_err(&out, &data) < 0.01);
    }

    #[test]
    fn sde_samplers_reach_the_data_distribution() {
        let z = NoiseSource::new(2).initial_noise(&[128, 128], 0);
        let src = NoiseSource::new(3);
        let vp = VpSde::default();
        let ve = VeSde::default();
        type Case<'a> = (
            &'a str,
            &'a dyn Sde,
            Predictor,
            Option<LangevinCorrector>,
            usize,
        );
        let cases: Vec<Case> = vec![
            ("VP EM", &vp, Predictor::EulerMaruyama, None, 1000),
            (
                "VP reverse diffusion",
                &vp,
                Predictor::ReverseDiffusion,
                None,
                1000,
            ),
            ("VP ancestral", &vp, Predictor::Ancestral, None, 1000),
            (
                "VP PC",
                &vp,
                Predictor::ReverseDiffusion,
                Some(LangevinCorrector {
                    snr: 0.16,
                    n_steps: 1,
                }),
                500,
            ),
            ("VE EM", &ve, Predictor::EulerMaruyama, None, 1000),
            (
                "VE reverse diffusion",
                &ve,
                Predictor::ReverseDiffusion,
                None,
                1000,
            ),
            (
                "VE PC",
                &ve,
                Predictor::ReverseDiffusion,
                Some(LangevinCorrector {
                    snr: 0.16,
                    n_steps: 1,
                }),
                500,
            ),
            (
                "VE corrector only",
                &ve,
                Predictor::None,
                Some(LangevinCorrector {
                    snr: 0.16,
                    n_steps: 2,
                }),
                1000,
            ),
        ];
        for (name, sde, p, c, n) in cases {
            let ts = time_grid(n, sde.sampling_eps()).unwrap();
            let score = |x: &HostTensor, t: f64| {
                let (m, v) = (sde.mean_coeff(t) * MU, {
                    let (a, s) = (sde.mean_coeff(t), sde.marginal_std(t));
                    a * a * S * S + s * s
                });
                Ok(x.map(|x| -(x - m) / v))
            };
            let mut draws = 0usize;
            let mut nz = noise_from_source(src, 0, &z);
            let mut counting = |k: usize| {
                assert_eq!(k, draws, "draw indices run 0, 1, 2, …");
                draws += 1;
                nz(k)
            };
            let x1 = prior_sample(sde, &z);
            let out = sample_pc(sde, score, x1, &ts, p, c, &mut counting, true).unwrap();
            let (m, s) = mean_std(&out);
            let t = ts[n];
            let (want_m, want_s) = (sde.mean_coeff(t) * MU, var(sde, t).sqrt());
            eprintln!("{name}: mean {m:.4} (want {want_m:.4}) std {s:.4} (want {want_s:.4})");
            assert!((m - want_m).abs() < 0.03, "{name}: mean {m}");
            assert!((s - want_s).abs() < 0.03, "{name}: std {s}");
            let per_step = usize::from(p != Predictor::None) + c.map_or(0, |c| c.n_steps);
            let dropped = usize::from(p != Predictor::None);
            assert_eq!(draws, n * per_step - dropped, "{name}");
        }
        // sample_reverse_sde is the EM predictor alone.
        let ts = time_grid(50, 1e-3).unwrap();
        let mut n1 = noise_from_source(src, 0, &z);
        let mut n2 = noise_from_source(src, 0, &z);
        let a = sample_reverse_sde(&vp, exact_score(&vp), z.clone(), &ts, &mut n1, true).unwrap();
        let b = sample_pc(
            &vp,
            exact_score(&vp),
            z.clone(),
            &ts,
            Predictor::EulerMaruyama,
            None,
            &mut n2,
            true,
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn burn_tensors_match_host_results() {
        use ember_core::backend::DefaultBackend;
        use ember_core::burn::tensor::Tensor;
        type T = Tensor<DefaultBackend, 4>;
        let ve = VeSde::default();
        let score = |x: &T, t: f64| -> Result<T> {
            let v = var(&ve, t);
            Ok(x.add_scalar(-MU).scale(-1.0 / v))
        };
        let z = NoiseSource::new(8).initial_noise(&[3, 2, 4, 4], 0);
        let zt: T = z.to_tensor(&Default::default());
        let ts = time_grid(20, 1e-5).unwrap();
        let c = Some(LangevinCorrector {
            snr: 0.16,
            n_steps: 1,
        });
        let src = NoiseSource::new(9);
        let mut nt = noise_from_source(src, 0, &zt);
        let mut nh = noise_from_source(src, 0, &z);
        let p = Predictor::ReverseDiffusion;
        let a = sample_pc(&ve, score, prior_sample(&ve, &zt), &ts, p, c, &mut nt, true).unwrap();
        let b = sample_pc(
            &ve,
            exact_score(&ve),
            prior_sample(&ve, &z),
            &ts,
            p,
            c,
            &mut nh,
            true,
        )
        .unwrap();
        assert!(
            max_err(&a.to_host(), &b) < 1e-3,
            "{}",
            max_err(&a.to_host(), &b)
        );
    }

    #[test]
    fn eps_convention_and_bad_input() {
        let vp = VpSde::default();
        let x = NoiseSource::new(4).initial_noise(&[2, 3], 0);
        // ε̂ = −σ·score, so score_from_eps recovers the score.
        let t = 0.4;
        let mut exact = exact_score(&vp);
        let want = exact(&x, t).unwrap();
        let std = vp.marginal_std(t);
        let mut from_eps = score_from_eps(&vp, |x: &HostTensor, t: f64| {
            Ok(exact_score(&vp)(x, t)?.scale(-std))
        });
        assert!(max_err(&from_eps(&x, t).unwrap(), &want) < 1e-12);
        assert!(from_eps(&x, 1.5).is_err());

        let mut no_noise = |_k: usize| HostTensor::zeros(&[2, 3]);
        for bad in [
            vec![],
            vec![1.0],
            vec![1.0, 1.0],
            vec![0.5, 0.8],
            vec![1.5, 0.5],
            vec![1.0, 0.0],
            vec![1.0, -0.1],
        ] {
            let r =
                sample_probability_flow(&vp, exact_score(&vp), x.clone(), &bad, OdeMethod::Euler);
            assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
        assert!(
            time_grid(0, 1e-3).is_err()
                && time_grid(10, 0.0).is_err()
                && time_grid(10, 1.0).is_err()
        );
        let ts = time_grid(4, 1e-3).unwrap();
        let nan = |x: &HostTensor, _t: f64| Ok(x.map(|_| f64::NAN));
        let r = sample_probability_flow(&vp, nan, x.clone(), &ts, OdeMethod::Heun);
        assert!(matches!(r, Err(Error::NonFinite { .. })));
        let r = sample_reverse_sde(&vp, nan, x.clone(), &ts, &mut no_noise, true);
        assert!(matches!(r, Err(Error::NonFinite { .. })));
        let wrong = |_x: &HostTensor, _t: f64| Ok(HostTensor::zeros(&[1]));
        let r = sample_probability_flow(&vp, wrong, x.clone(), &ts, OdeMethod::Euler);
        assert!(matches!(r, Err(Error::Shape { .. })));
        let mut bad_noise = |_k: usize| HostTensor::zeros(&[5]);
        let r = sample_reverse_sde(&vp, exact_score(&vp), x.clone(), &ts, &mut bad_noise, true);
        assert!(matches!(r, Err(Error::Shape { .. })));
        let c = Some(LangevinCorrector {
            snr: -1.0,
            n_steps: 1,
        });
        let r = sample_pc(
            &vp,
            exact_score(&vp),
            x.clone(),
            &ts,
            Predictor::None,
            c,
            &mut no_noise,
            true,
        );
        assert!(r.is_err());
        assert!(VpSde::new(1.0, 0.5).is_err() && VpSde::new(f64::NAN, 1.0).is_err());
        assert!(VeSde::new(0.0, 1.0).is_err() && VeSde::new(2.0, 1.0).is_err());
        let bad_sde = VeSde {
            sigma_min: 5.0,
            sigma_max: 1.0,
        };
        assert!(sample_probability_flow(
            &bad_sde,
            exact_score(&ve_ok()),
            x.clone(),
            &ts,
            OdeMethod::Euler
        )
        .is_err());
        assert!(vp.t_from_sigma(-1.0).is_err() && vp.t_from_sigma(1e6).is_err());
        assert_eq!(vp.t_from_sigma(0.0).unwrap(), 0.0);
    }

    fn ve_ok() -> VeSde {
        VeSde::default()
    }
}
