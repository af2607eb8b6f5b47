//! The DPM-Solver family's shared machinery: conversion of a model output to the data (x₀)
//! or noise (ε) prediction the solver integrates, dynamic thresholding, the split of a
//! learned-variance output, and the first-, second- and third-order exponential-integrator
//! updates in both their multistep (`DPMSolverMultistepScheduler`,
//! `EDMDPMSolverMultistepScheduler`) and singlestep (`DPMSolverSinglestepScheduler`) forms.
//!
//! # Notation
//! The forward process is `x_t = α_t x₀ + σ_t ε`, and the solvers step in the half log-SNR
//! `λ_t = ln α_t − ln σ_t`. From a point `s` to the next point `t` the step size is
//! `h = λ_t − λ_s > 0`.
//!
//! - DPM-Solver (Lu et al. 2022a, "DPM-Solver", eqs. 3.7–3.9) integrates the noise
//!   prediction ε̂: `x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε̂ + …`.
//! - DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", eqs. 5, 8, 9 and Algorithms 1–2)
//!   integrates the data prediction x̂₀: `x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂₀ + …`.
//! - The SDE variants (DPM-Solver++ paper, §5 / appendix) take the first- and second-order
//!   steps of the reverse SDE instead; each step consumes one standard-normal draw `z`.
//!
//! Higher orders replace the constant x̂₀ (or ε̂) over the step by its Taylor polynomial in
//! λ, with the derivatives estimated by finite differences of earlier model outputs:
//! `D0` is the value, `D1 ≈ h·x̂₀'` and `D2 ≈ h²·x̂₀''/2`, built from the ratios
//! `r_k = h_k / h` of the earlier step sizes to the current one (diffusers' names). The
//! integral of `e^{λ}·(D0 + D1·u + D2·u²)` over the step gives the φ-function coefficients
//! below (DPM-Solver++ eq. 9 and its third-order extension).
//!
//! Every update is `x_t = a·x_s + b0·D0 + b1·D1 + b2·D2 + c·z`; the scalar coefficients are
//! computed here on the host in f64 ([`Coefficients`]) and the D's are expanded into the
//! model outputs, so each step is one linear combination of tensors.
//!
//! # Precision
//! diffusers evaluates σ, α, λ and the coefficients as float32 0-d tensors; Ember computes
//! them in f64 from the same float32 σ values. Where diffusers forms `e^{−h} − 1` Ember uses
//! `expm1`, which is more accurate for small `h` and equal to rounding otherwise.

use ember_core::scheduler::check_same_shape;
use ember_core::{Error, HostTensor, Prediction, Result, SampleTensor};
use serde::{Deserialize, Serialize};

/// diffusers' `algorithm_type` of the DPM-Solver schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum AlgorithmType {
    /// DPM-Solver (Lu et al. 2022a): integrates the noise prediction (deprecated in diffusers).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// DPM-Solver++ (Lu et al. 2022b): integrates the data prediction. `"deis"` is read as
    /// this value, as diffusers' constructor does, so a DEIS config can be swapped in.
    #[default]
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// Stochastic DPM-Solver on the noise prediction (deprecated in diffusers).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    /// Stochastic DPM-Solver++ on the data prediction.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

impl AlgorithmType {
    /// diffusers' spelling.
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmType::DpmSolver => "dpmsolver",
            AlgorithmType::DpmSolverPlusPlus => "dpmsolver++",
            AlgorithmType::SdeDpmSolver => "sde-dpmsolver",
            AlgorithmType::SdeDpmSolverPlusPlus => "sde-dpmsolver++",
        }
    }
    /// Whether each step consumes fresh noise.
    pub fn is_sde(self) -> bool {
        matches!(
            self,
            AlgorithmType::SdeDpmSolver | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }
    /// Whether the solver integrates the data prediction x̂₀ (the "++" variants) rather
    /// than the noise prediction ε̂.
    pub fn predicts_data(self) -> bool {
        matches!(
            self,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }
}

/// diffusers' `solver_type`: how the second-order term is discretised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SolverType {
    /// The midpoint form of the DPM-Solver papers (`−½·(…)·D1`). UniPC's / DEIS's
    /// `"logrho"`, `"bh1"`, `"bh2"` are read as this value, as diffusers' constructor does.
    #[default]
    #[serde(rename = "midpoint", alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    /// The Heun form (the exact integral of a linear-in-λ model output).
    #[serde(rename = "heun")]
    Heun,
}

/// diffusers' `variance_type`. The DPM-Solvers only act on the learned kinds (they drop
/// the variance channels of the model output); the fixed kinds are DDPM's and are accepted,
/// and ignored, so a `DDPMScheduler` config can be swapped in as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VarianceType {
    /// DDPM's β̃_t (ignored here).
    #[serde(rename = "fixed_small")]
    FixedSmall,
    /// DDPM's β̃_t through its log (ignored here).
    #[serde(rename = "fixed_small_log")]
    FixedSmallLog,
    /// DDPM's β_t (ignored here).
    #[serde(rename = "fixed_large")]
    FixedLarge,
    /// DDPM's β_t through its log (ignored here).
    #[serde(rename = "fixed_large_log")]
    FixedLargeLog,
    /// The model outputs a variance (log-variance) after the mean channels.
    #[serde(rename = "learned")]
    Learned,
    /// The model outputs an interpolation weight between β_t and β̃_t after the mean channels.
    #[serde(rename = "learned_range")]
    LearnedRange,
}

impl VarianceType {
    /// Whether the model output carries variance channels after the mean channels.
    pub fn is_learned(self) -> bool {
        matches!(self, VarianceType::Learned | VarianceType::LearnedRange)
    }
}

/// One point of the noise schedule in the VP parameterisation: α, σ and λ = ln α − ln σ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Signal scale α_t.
    pub alpha: f64,
    /// Noise scale σ_t.
    pub sigma: f64,
    /// Half log-SNR λ_t = ln α_t − ln σ_t (+∞ at σ_t = 0).
    pub lambda: f64,
}

impl Node {
    /// The node with signal scale `alpha` and noise scale `sigma`.
    pub fn new(alpha: f64, sigma: f64) -> Self {
        Self {
            alpha,
            sigma,
            lambda: alpha.ln() - sigma.ln(),
        }
    }
}

/// Ratio `num/den` that is 0 when the numerator is 0 (the final σ = 0 step divides 0 by a
/// positive σ; this guard only keeps a 0·∞ from turning into NaN in degenerate schedules).
fn ratio(num: f64, den: f64) -> f64 {
    if num == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The scalar coefficients of one exponential-integrator step from `s` to `t`:
/// `x_t = sample·x_s + d0·D0 + d1·D1 + d2·D2 + noise·z`, where `d1` is `d1_midpoint` or
/// `d1_heun` depending on the discretisation, and `d2` exists for third order only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// Coefficient of the sample at `s`.
    pub sample: f64,
    /// Coefficient of D0 (the model output itself).
    pub d0: f64,
    /// Coefficient of D1 in the midpoint form (½·d0: the DPM-Solver papers' midpoint rule).
    pub d1_midpoint: f64,
    /// Coefficient of D1 in the Heun form (the exact integral of a linear model output),
    /// also the D1 coefficient of every third-order update.
    pub d1_heun: f64,
    /// Coefficient of D2 (third order); `None` where diffusers has no third-order formula.
    pub d2: Option<f64>,
    /// Coefficient of the noise `z` (0 for the ODE solvers).
    pub noise: f64,
}

/// The coefficients of diffusers' updates for `algorithm` from node `s` to node `t`, with
/// step `h = λ_t − λ_s`.
pub fn coefficients(algorithm: AlgorithmType, t: Node, s: Node) -> Coefficients {
    let h = t.lambda - s.lambda;
    let (at, st) = (t.alpha, t.sigma);
    match algorithm {
        AlgorithmType::DpmSolverPlusPlus => {
            // DPM-Solver++ (2M) eqs.: φ₁ = e^{−h} − 1.
            let phi1 = (-h).exp_m1();
            let d0 = -at * phi1;
            Coefficients {
                sample: ratio(st, s.sigma),
                d0,
                d1_midpoint: 0.5 * d0,
                d1_heun: at * (phi1 / h + 1.0),
                d2: Some(-at * ((phi1 + h) / (h * h) - 0.5)),
                noise: 0.0,
            }
        }
        AlgorithmType::DpmSolver => {
            // DPM-Solver eqs. 3.7–3.9: φ₁ = e^{h} − 1.
            let phi1 = h.exp_m1();
            let d0 = -st * phi1;
            Coefficients {
                sample: at / s.alpha,
                d0,
                d1_midpoint: 0.5 * d0,
                d1_heun: -st * (phi1 / h - 1.0),
                d2: Some(-st * ((phi1 - h) / (h * h) - 0.5)),
                noise: 0.0,
            }
        }
        AlgorithmType::SdeDpmSolverPlusPlus => {
            // SDE-DPM-Solver++: the deterministic part decays as e^{−2h}; ψ = 1 − e^{−2h}.
            let psi = -(-2.0 * h).exp_m1();
            let d0 = at * psi;
            Coefficients {
                sample: ratio(st, s.sigma) * (-h).exp(),
                d0,
                d1_midpoint: 0.5 * d0,
                d1_heun: at * (psi / (-2.0 * h) + 1.0),
                d2: Some(at * ((psi - 2.0 * h) / (4.0 * h * h) - 0.5)),
                noise: if st == 0.0 { 0.0 } else { st * psi.sqrt() },
            }
        }
        AlgorithmType::SdeDpmSolver => {
            // SDE-DPM-Solver on ε̂: twice the ODE's ε̂ term, noise variance σ_t²(e^{2h} − 1).
            let phi1 = h.exp_m1();
            let d0 = -2.0 * st * phi1;
            Coefficients {
                sample: at / s.alpha,
                d0,
                d1_midpoint: 0.5 * d0,
                d1_heun: -2.0 * st * (phi1 / h - 1.0),
                d2: None,
                noise: if st == 0.0 {
                    0.0
                } else {
                    st * (2.0 * h).exp_m1().sqrt()
                },
            }
        }
    }
}

/// Forms `a·x + Σ bᵢ mᵢ + c·z`, skipping zero coefficients (as a no-op for the ODE's noise
/// term, and to save tensor passes).
fn combine<S: SampleTensor>(
    a: f64,
    sample: &S,
    outputs: &[(f64, &S)],
    noise: Option<(f64, &S)>,
) -> S {
    let mut terms: Vec<(f64, &S)> = Vec::with_capacity(outputs.len() + 2);
    terms.push((a, sample));
    terms.extend(outputs.iter().copied().filter(|(c, _)| *c != 0.0));
    if let Some((c, z)) = noise {
        if c != 0.0 {
            terms.push((c, z));
        }
    }
    S::lin_comb(&terms)
}

/// Returns the noise an SDE step needs (checked against the sample's shape), or `None`
/// for the ODE variants.
pub fn step_noise<'a, S: SampleTensor>(
    algorithm: AlgorithmType,
    noise: Option<&'a S>,
    sample: &S,
    class_name: &str,
) -> Result<Option<&'a S>> {
    if !algorithm.is_sde() {
        return Ok(None);
    }
    let z = noise.ok_or_else(|| {
        Error::argument(
            "noise",
            format!(
                "{class_name} with algorithm_type `{}` needs standard-normal noise of the \
                 sample's shape at every step",
                algorithm.name()
            ),
        )
    })?;
    check_same_shape("noise", sample, z)?;
    Ok(Some(z))
}

/// First-order update from `s` to `t` (DDIM-equivalent; diffusers'
/// `dpm_solver_first_order_update`). `m` is x̂₀ for the "++" variants, ε̂ otherwise.
pub fn first_order_update<S: SampleTensor>(
    algorithm: AlgorithmType,
    t: Node,
    s: Node,
    sample: &S,
    m: &S,
    noise: Option<&S>,
) -> S {
    let c = coefficients(algorithm, t, s);
    combine(c.sample, sample, &[(c.d0, m)], noise.map(|z| (c.noise, z)))
}

/// Multistep update of order 2 or 3 (diffusers' `multistep_dpm_solver_second_order_update`
/// and `..._third_order_update`).
///
/// `nodes` are `[t, s0, s1]` (order 2) or `[t, s0, s1, s2]` (order 3): the target and the
/// points of the current and previous model outputs; `outputs` are the model outputs at
/// `s0, s1, (s2)`, newest first; `sample` lives at `s0`. With `h = λ_t − λ_s0`,
/// `h_k = λ_{s_k} − λ_{s_{k+1}}` and `r_k = h_k/h`:
/// - order 2: `D0 = m0`, `D1 = (m0 − m1)/r0`;
/// - order 3: `D1_0 = (m0 − m1)/r0`, `D1_1 = (m1 − m2)/r1`,
///   `D1 = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1)`, `D2 = (D1_0 − D1_1)/(r0 + r1)`.
pub fn multistep_update<S: SampleTensor>(
    algorithm: AlgorithmType,
    solver_type: SolverType,
    nodes: &[Node],
    outputs: &[&S],
    sample: &S,
    noise: Option<&S>,
) -> Result<S> {
    multistep_update_with(algorithm, solver_type, nodes, outputs, sample, noise, 1.0)
}

/// [`multistep_update`] with the third-order `D2` term scaled by `d2_scale`.
///
/// diffusers (like the DPM-Solver reference code) forms `D2 = (D1_0 − D1_1)/(r0 + r1)`,
/// which estimates `h²·x̂₀''/2`, but weights it with the coefficient of `h²·x̂₀''`: the
/// third-order term is halved and the method is second order (measured: 2.5 over 16–128
/// steps, tending to 2; see `tests/analytic_mixture.rs`). `d2_scale = 2` restores the
/// exact third-order weight (the singlestep solver already uses it); `1` is diffusers.
pub fn multistep_update_with<S: SampleTensor>(
    algorithm: AlgorithmType,
    solver_type: SolverType,
    nodes: &[Node],
    outputs: &[&S],
    sample: &S,
    noise: Option<&S>,
    d2_scale: f64,
) -> Result<S> {
    let order = outputs.len();
    if !(2..=3).contains(&order) || nodes.len() != order + 1 {
        return Err(Error::State(format!(
            "multistep update of order {order} with {} schedule points",
            nodes.len()
        )));
    }
    let (t, s0, s1) = (nodes[0], nodes[1], nodes[2]);
    let h = t.lambda - s0.lambda;
    if h == 0.0 {
        // A zero-length step (the final σ equal to the last step's σ, e.g. Karras σs with
        // final_sigmas_type = sigma_min) leaves the sample where it is; the finite
        // differences below would divide by h (diffusers returns NaN there).
        return Ok(sample.clone());
    }
    let c = coefficients(algorithm, t, s0);
    let r0 = (s0.lambda - s1.lambda) / h;
    // Each D is a linear form in (m0, m1, m2); `w` collects Σ coefficient·D per output.
    let mut w = [c.d0, 0.0, 0.0];
    if order == 2 {
        let d1 = match solver_type {
            SolverType::Midpoint => c.d1_midpoint,
            SolverType::Heun => c.d1_heun,
        };
        w[0] += d1 / r0;
        w[1] -= d1 / r0;
    } else {
        let s2 = nodes[3];
        let d2 = c.d2.ok_or_else(|| {
            Error::config(
                "solver_order",
                format!(
                    "algorithm_type `{}` has no third-order update",
                    algorithm.name()
                ),
            )
        })?;
        let r1 = (s1.lambda - s2.lambda) / h;
        let d1_0 = [1.0 / r0, -1.0 / r0, 0.0];
        let d1_1 = [0.0, 1.0 / r1, -1.0 / r1];
        for k in 0..3 {
            let diff = d1_0[k] - d1_1[k];
            let d1 = d1_0[k] + r0 / (r0 + r1) * diff;
            let d2k = d2_scale * diff / (r0 + r1);
            w[k] += c.d1_heun * d1 + d2 * d2k;
        }
    }
    let terms: Vec<(f64, &S)> = w.iter().copied().zip(outputs.iter().copied()).collect();
    Ok(combine(
        c.sample,
        sample,
        &terms,
        noise.map(|z| (c.noise, z)),
    ))
}

/// Singlestep update of order 2 or 3 (diffusers' `singlestep_dpm_solver_second_order_update`
/// and `..._third_order_update`): the whole step runs from the *oldest* point, where
/// `sample` lives.
///
/// `nodes` are `[t, s0, s1]` (order 2) or `[t, s0, s1, s2]` (order 3), `outputs` the model
/// outputs at `s0, s1, (s2)`, newest first. With `h = λ_t − λ_{oldest}` and `r_k` the
/// offsets of the intermediate points from the oldest in units of `h`:
/// - order 2: `D0 = m1`, `D1 = (m0 − m1)/r0`;
/// - order 3: `D0 = m2`, `D1_0 = (m1 − m2)/r1`, `D1_1 = (m0 − m2)/r0`,
///   `D1 = (r0·D1_0 − r1·D1_1)/(r0 − r1)`, `D2 = 2(D1_1 − D1_0)/(r0 − r1)`; the midpoint
///   form uses `D1_1` alone with the Heun coefficient (DPM-Solver-3, Algorithm 2 of the
///   DPM-Solver paper).
pub fn singlestep_update<S: SampleTensor>(
    algorithm: AlgorithmType,
    solver_type: SolverType,
    nodes: &[Node],
    outputs: &[&S],
    sample: &S,
    noise: Option<&S>,
) -> Result<S> {
    let order = outputs.len();
    if !(2..=3).contains(&order) || nodes.len() != order + 1 {
        return Err(Error::State(format!(
            "singlestep update of order {order} with {} schedule points",
            nodes.len()
        )));
    }
    let t = nodes[0];
    let oldest = nodes[order];
    let h = t.lambda - oldest.lambda;
    if h == 0.0 {
        // A zero-length step leaves the sample where it is (see `multistep_update`).
        return Ok(sample.clone());
    }
    let c = coefficients(algorithm, t, oldest);
    let mut w = [0.0; 3];
    if order == 2 {
        let r0 = (nodes[1].lambda - oldest.lambda) / h;
        let d1 = match solver_type {
            SolverType::Midpoint => c.d1_midpoint,
            SolverType::Heun => c.d1_heun,
        };
        // D0 = m1; D1 = (m0 − m1)/r0.
        w[1] += c.d0;
        w[0] += d1 / r0;
        w[1] -= d1 / r0;
    } else {
        let r0 = (nodes[1].lambda - oldest.lambda) / h;
        let r1 = (nodes[2].lambda - oldest.lambda) / h;
        // D0 = m2.
        w[2] += c.d0;
        let d1_0 = [0.0, 1.0 / r1, -1.0 / r1];
        let d1_1 = [1.0 / r0, 0.0, -1.0 / r0];
        match solver_type {
            SolverType::Midpoint => {
                for k in 0..3 {
                    w[k] += c.d1_heun * d1_1[k];
                }
            }
            SolverType::Heun => {
                let d2 = c.d2.ok_or_else(|| {
                    Error::config(
                        "solver_order",
                        format!(
                            "algorithm_type `{}` has no third-order update",
                            algorithm.name()
                        ),
                    )
                })?;
                for k in 0..3 {
                    let d1 = (r0 * d1_0[k] - r1 * d1_1[k]) / (r0 - r1);
                    let d2k = 2.0 * (d1_1[k] - d1_0[k]) / (r0 - r1);
                    w[k] += c.d1_heun * d1 + d2 * d2k;
                }
            }
        }
    }
    let terms: Vec<(f64, &S)> = w.iter().copied().zip(outputs.iter().copied()).collect();
    Ok(combine(
        c.sample,
        sample,
        &terms,
        noise.map(|z| (c.noise, z)),
    ))
}

/// The mean part of a learned-variance model output: its first `C` channels, where `C` is
/// the sample's channel count (dimension 1).
///
/// diffusers takes `model_output[:, :3]`, which is the same thing for the 3-channel
/// pixel-space models (DeepFloyd IF, ADM) these configs come from, and fails for any other
/// channel count; Ember generalises to `C`. `SampleTensor` has no slicing, so this goes
/// through the host.
pub fn split_learned_variance<S: SampleTensor>(model_output: &S, sample: &S) -> Result<S> {
    let (out_shape, shape) = (model_output.shape(), sample.shape());
    if out_shape == shape {
        return Ok(model_output.clone());
    }
    let compatible = out_shape.len() == shape.len()
        && shape.len() >= 2
        && out_shape[0] == shape[0]
        && out_shape[1] >= shape[1]
        && out_shape[2..] == shape[2..];
    if !compatible {
        return Err(Error::Shape {
            what: "model_output (learned variance)".into(),
            expected: format!(
                "the sample's shape {shape:?} with at least {} channels (mean, then variance)",
                shape.get(1).copied().unwrap_or(0)
            ),
            got: out_shape,
        });
    }
    let inner: usize = shape[2..].iter().product();
    let (per_out, per_in) = (out_shape[1] * inner, shape[1] * inner);
    if per_out == 0 {
        // An empty tensor: nothing to slice.
        return Ok(S::from_host_like(&HostTensor::zeros(&shape), sample));
    }
    let host = model_output.to_host();
    let data: Vec<f64> = host
        .data()
        .chunks(per_out)
        .flat_map(|chunk| chunk[..per_in].iter().copied())
        .collect();
    let mean = HostTensor::new(shape, data)?;
    Ok(S::from_host_like(&mean, sample))
}

/// Dynamic thresholding (Saharia et al. 2022, "Imagen", §2.3) with diffusers' config keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholding {
    /// The quantile of |x̂₀| taken per sample (`dynamic_thresholding_ratio`).
    pub ratio: f64,
    /// The largest threshold s (`sample_max_value`).
    pub max_value: f64,
}

impl Thresholding {
    /// Applies the threshold to an x̂₀ prediction.
    pub fn apply<S: SampleTensor>(&self, x0: &S) -> S {
        crate::vp_solver::dynamic_threshold(x0, self.ratio, self.max_value)
    }
}

/// Checks diffusers' `dynamic_thresholding_ratio` / `sample_max_value` when thresholding is on.
pub fn check_thresholding(enabled: bool, ratio: f64, max_value: f64) -> Result<()> {
    if !enabled {
        return Ok(());
    }
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::config(
            "dynamic_thresholding_ratio",
            format!("must be a quantile in [0, 1], got {ratio}"),
        ));
    }
    if !(max_value.is_finite() && max_value > 0.0) {
        return Err(Error::config(
            "sample_max_value",
            format!("must be finite and positive, got {max_value}"),
        ));
    }
    Ok(())
}

/// Checks `solver_order` ∈ {1, 2, 3}.
pub fn check_solver_order(order: usize) -> Result<()> {
    if (1..=3).contains(&order) {
        Ok(())
    } else {
        Err(Error::config(
            "solver_order",
            format!("must be 1, 2 or 3, got {order}"),
        ))
    }
}

/// The update order of step `index` of a multistep DPM-Solver (diffusers' `step`): first
/// order until one output is stored, then up to `solver_order` as the history fills. The
/// last step is first order with `euler_at_final`, with a zero final σ, or with
/// `lower_order_final` on a schedule shorter than 15 steps (which also caps the
/// second-to-last step at order 2).
pub fn multistep_order(
    solver_order: usize,
    lower_order_nums: usize,
    index: usize,
    num_steps: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
) -> usize {
    let short = lower_order_final && num_steps < 15;
    let final_step = index + 1 == num_steps && (euler_at_final || short || final_sigma_zero);
    let second_to_last = index + 2 == num_steps && short;
    if solver_order == 1 || lower_order_nums < 1 || final_step {
        1
    } else if solver_order == 2 || lower_order_nums < 2 || second_to_last {
        2
    } else {
        3
    }
}

/// The model output as the solver integrates it on a VP schedule (diffusers'
/// `convert_model_output`): x̂₀ for the "++" variants, ε̂ otherwise, at schedule σ `sigma`
/// (the variance-exploding σ, or the flow σ when `flow`).
///
/// With `(α_t, σ_t)` from [`crate::vp_solver::alpha_sigma`]:
/// - x̂₀: ε → `(x − σ_t ε)/α_t`; sample → the output; v → `α_t x − σ_t v`;
///   flow velocity `u = ε − x₀` → `x − σ u` (σ the schedule value itself);
/// - ε̂: ε → the output; sample → `(x − α_t x₀)/σ_t`; v → `α_t v + σ_t x`.
///
/// With `thresholding`, x̂₀ is thresholded; for the ε̂ variants diffusers goes through x̂₀
/// and back (`ε̂ = (x − α_t x̂₀)/σ_t`).
pub fn convert_vp_output<S: SampleTensor>(
    algorithm: AlgorithmType,
    prediction: Prediction,
    model_output: &S,
    sample: &S,
    sigma: f64,
    flow: bool,
    thresholding: Option<Thresholding>,
) -> Result<S> {
    let (alpha_t, sigma_t) = crate::vp_solver::alpha_sigma(sigma, flow);
    if algorithm.predicts_data() {
        let x0 = match prediction {
            Prediction::Epsilon => {
                S::lin_comb(&[(1.0 / alpha_t, sample), (-sigma_t / alpha_t, model_output)])
            }
            Prediction::Sample => model_output.clone(),
            Prediction::VPrediction => S::lin_comb(&[(alpha_t, sample), (-sigma_t, model_output)]),
            Prediction::FlowPrediction => S::lin_comb(&[(1.0, sample), (-sigma, model_output)]),
        };
        Ok(match thresholding {
            Some(th) => th.apply(&x0),
            None => x0,
        })
    } else {
        let eps = match prediction {
            Prediction::Epsilon => model_output.clone(),
            Prediction::Sample => {
                S::lin_comb(&[(1.0 / sigma_t, sample), (-alpha_t / sigma_t, model_output)])
            }
            Prediction::VPrediction => S::lin_comb(&[(alpha_t, model_output), (sigma_t, sample)]),
            Prediction::FlowPrediction => {
                return Err(Error::config(
                    "prediction_type",
                    format!(
                        "flow_prediction needs a data-prediction solver (dpmsolver++ or \
                         sde-dpmsolver++), not `{}`",
                        algorithm.name()
                    ),
                ))
            }
        };
        Ok(match thresholding {
            Some(th) => {
                let x0 = S::lin_comb(&[(1.0 / alpha_t, sample), (-sigma_t / alpha_t, &eps)]);
                let x0 = th.apply(&x0);
                S::lin_comb(&[(1.0 / sigma_t, sample), (-alpha_t / sigma_t, &x0)])
            }
            None => eps,
        })
    }
}

/// x̂₀ from a converted model output (for [`ember_core::StepOutput::pred_original_sample`]):
/// the output itself for the "++" variants, `(x − σ_t ε̂)/α_t` otherwise.
pub fn data_from_converted<S: SampleTensor>(
    algorithm: AlgorithmType,
    converted: &S,
    sample: &S,
    node: Node,
) -> S {
    if algorithm.predicts_data() {
        converted.clone()
    } else {
        S::lin_comb(&[
            (1.0 / node.alpha, sample),
            (-node.sigma / node.alpha, converted),
        ])
    }
}

/// The history of converted model outputs a multistep solver keeps (diffusers'
/// `model_outputs`): `order` slots, oldest first, `None` until filled.
#[derive(Debug, Clone)]
pub struct OutputHistory<S> {
    slots: Vec<Option<S>>,
}

impl<S: SampleTensor> OutputHistory<S> {
    /// An empty history with `order` slots.
    pub fn new(order: usize) -> Self {
        Self {
            slots: vec![None; order],
        }
    }
    /// Shifts the history by one and stores `x` as the newest entry.
    pub fn push(&mut self, x: S) {
        if self.slots.is_empty() {
            return;
        }
        self.slots.remove(0);
        self.slots.push(Some(x));
    }
    /// The `k`-th newest entry (`k = 0` is the newest), if filled.
    pub fn newest(&self, k: usize) -> Option<&S> {
        let n = self.slots.len();
        if k >= n {
            return None;
        }
        self.slots[n - 1 - k].as_ref()
    }
    /// The newest `count` entries, newest first; an error if any is missing (a bug in the
    /// order selection, never user input).
    pub fn newest_n(&self, count: usize) -> Result<Vec<&S>> {
        (0..count)
            .map(|k| {
                self.newest(k).ok_or_else(|| {
                    Error::State(format!("model output history has no entry {k} steps back"))
                })
            })
            .collect()
    }
}

/// Serde helper for `lambda_min_clipped`, whose diffusers default is −∞ (written by Python
/// as the bare token `-Infinity`): see [`crate::config::nonfinite_f64`].
pub use crate::config::nonfinite_f64 as neg_inf_on_null;

/// The σ spacing of a DPM-Solver on a DDPM schedule, in diffusers' order of precedence
/// (`use_karras_sigmas`, `use_lu_lambdas`, `use_exponential_sigmas`, `use_beta_sigmas`,
/// `use_flow_sigmas`, else interpolation of the training σs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VpLayout {
    /// The training σ at each (integer) timestep.
    Interpolated,
    /// Karras et al. (2022) eq. 5, ρ = 7, between the training end points.
    Karras,
    /// Uniform in λ (log σ) between the float32 training end points (DPM-Solver paper).
    Lu,
    /// Uniform in log σ between the training end points.
    Exponential,
    /// Beta(0.6, 0.6) quantiles between the training end points.
    Beta,
    /// Rectified-flow σ = 1 − linspace(1, 1/T, n + 1), shifted by the given factor.
    Flow(f64),
}

impl VpLayout {
    /// The config key selecting this layout (for error messages); `None` for interpolation.
    pub fn flag_name(self) -> Option<&'static str> {
        match self {
            VpLayout::Interpolated => None,
            VpLayout::Karras => Some("use_karras_sigmas"),
            VpLayout::Lu => Some("use_lu_lambdas"),
            VpLayout::Exponential => Some("use_exponential_sigmas"),
            VpLayout::Beta => Some("use_beta_sigmas"),
            VpLayout::Flow(_) => Some("use_flow_sigmas"),
        }
    }
}

/// diffusers' `set_timesteps` of the DDPM-schedule DPM-Solvers after the integer
/// `timesteps` are laid out: the σs of `layout` (n of them), the timesteps they imply, and
/// the final σ appended. Returns `(timesteps, sigmas)`; σs are float32 values.
///
/// Karras and Lu σs are inverted to timesteps with `_sigma_to_t` and rounded when
/// `round_inverted` (diffusers rounds them, except `DPMSolverMultistepScheduler` on the
/// cosine schedule); every other float timestep is truncated, as diffusers' int64 cast does.
pub fn vp_inference_schedule(
    train: &crate::sigma_schedule::TrainSigmas,
    layout: VpLayout,
    n: usize,
    timesteps: Vec<f64>,
    round_inverted: bool,
    final_sigma: crate::vp_solver::FinalSigmasType,
) -> (Vec<f64>, Vec<f64>) {
    use crate::schedule::linspace_f64;
    use crate::sigma_schedule::{convert_sigmas, f32r, SigmaSpacing};
    let invert = |sigmas: &[f64], round: bool| -> Vec<f64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = train.sigma_to_t(s);
                if round {
                    t.round_ties_even()
                } else {
                    t.trunc()
                }
            })
            .collect()
    };
    // diffusers' `np.flip(sigmas)`: the training σs from the largest down.
    let flipped: Vec<f64> = train.sigmas.iter().rev().copied().collect();
    let converted = |spacing| convert_sigmas(spacing, &flipped, n, None, None).unwrap_or_default();
    let (timesteps, sigmas) = match layout {
        VpLayout::Interpolated => {
            let sigmas = timesteps.iter().map(|&t| train.interp(t)).collect();
            (timesteps, sigmas)
        }
        VpLayout::Karras => {
            let sigmas = converted(SigmaSpacing::Karras);
            (invert(&sigmas, round_inverted), sigmas)
        }
        VpLayout::Lu => {
            // λ_max + ramp·(λ_min − λ_max), ramp = linspace(0, 1, n), from the float32
            // training log σs (diffusers' `_convert_to_lu` with ρ = 1), then σ = e^λ.
            let ls = &train.log_sigmas;
            let (lmin, lmax) = (ls[0], ls[ls.len() - 1]);
            let sigmas: Vec<f64> = linspace_f64(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lmax + r * (lmin - lmax)).exp())
                .collect();
            (invert(&sigmas, round_inverted), sigmas)
        }
        VpLayout::Exponential => {
            let sigmas = converted(SigmaSpacing::Exponential);
            (invert(&sigmas, false), sigmas)
        }
        VpLayout::Beta => {
            let sigmas = converted(SigmaSpacing::Beta);
            (invert(&sigmas, false), sigmas)
        }
        VpLayout::Flow(shift) => {
            // flip(shift·σ/(1 + (shift − 1)·σ))[:-1] with σ = 1 − linspace(1, 1/T, n + 1);
            // timesteps σ·T.
            let t_train = train.len() as f64;
            let mut sigmas: Vec<f64> = linspace_f64(1.0, 1.0 / t_train, n + 1)
                .into_iter()
                .map(|a| {
                    crate::flow_sigmas::shift_sigma(
                        shift,
                        1.0 - a,
                        crate::flow_sigmas::Precision::F64,
                    )
                })
                .collect();
            sigmas.reverse();
            sigmas.truncate(n);
            let ts = sigmas.iter().map(|&s| (s * t_train).trunc()).collect();
            (ts, sigmas)
        }
    };
    let last = match final_sigma {
        crate::vp_solver::FinalSigmasType::SigmaMin => train.sigmas[0],
        crate::vp_solver::FinalSigmasType::Zero => 0.0,
    };
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
    sigmas.push(f32r(last));
    (timesteps, sigmas)
}

/// Per-sample `(α, σ)` of a VP `add_noise`: `α x₀ + σ ε`.
pub fn vp_add_noise<S: SampleTensor>(
    original: &S,
    noise: &S,
    alpha_sigma: &[(f64, f64)],
) -> Result<S> {
    check_same_shape("noise", original, noise)?;
    let alphas: Vec<f64> = alpha_sigma.iter().map(|p| p.0).collect();
    let sigmas: Vec<f64> = alpha_sigma.iter().map(|p| p.1).collect();
    Ok(original
        .scale_per_sample(&alphas)
        .add(&noise.scale_per_sample(&sigmas)))
}

/// Where a DPM-Solver's `add_noise` finds the noise level of a timestep.
pub enum NoiseLevelSource<'a> {
    /// Before `set_timesteps` (training use): the training σ at each timestep.
    Training(&'a crate::sigma_schedule::TrainSigmas, usize),
    /// After `set_timesteps`: the inference schedule, looked up as diffusers does (by
    /// timestep, or at the begin / current step index for img2img).
    Inference {
        /// The inference timesteps.
        timesteps: &'a [f64],
        /// The inference σs.
        sigmas: &'a [f64],
        /// The pipeline's begin index.
        begin_index: Option<usize>,
        /// The current step index.
        step_index: Option<usize>,
    },
}

/// diffusers' `add_noise` of the DPM-Solvers (multistep and singlestep share it):
/// `α x₀ + σ ε` at the noise level of each timestep.
pub fn dpm_add_noise<S: SampleTensor>(
    original: &S,
    noise: &S,
    timesteps: &[f64],
    source: NoiseLevelSource<'_>,
    use_flow_sigmas: bool,
) -> Result<S> {
    check_timestep_count(original, timesteps)?;
    let sigmas: Vec<f64> = match source {
        NoiseLevelSource::Training(train, num_train_timesteps) => {
            let t_max = (num_train_timesteps - 1) as f64;
            timesteps
                .iter()
                .map(|&t| {
                    if t.is_finite() && (0.0..=t_max).contains(&t) {
                        Ok(train.interp(t))
                    } else {
                        Err(Error::argument(
                            "timesteps",
                            format!("{t} is outside the training range [0, {t_max}]"),
                        ))
                    }
                })
                .collect::<Result<_>>()?
        }
        NoiseLevelSource::Inference {
            timesteps: schedule,
            sigmas,
            begin_index,
            step_index,
        } => {
            let indices: Vec<usize> = match (begin_index, step_index) {
                (None, _) => timesteps
                    .iter()
                    .map(|&t| crate::vp_solver::multistep_index_for_timestep(schedule, t))
                    .collect(),
                (Some(_), Some(step)) => vec![step; timesteps.len()],
                (Some(begin), None) => vec![begin; timesteps.len()],
            };
            indices
                .iter()
                .map(|&i| {
                    sigmas.get(i).copied().ok_or_else(|| {
                        Error::State(format!(
                            "sigma index {i} is out of range ({} values)",
                            sigmas.len()
                        ))
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    let pairs: Vec<(f64, f64)> = sigmas
        .iter()
        .map(|&s| crate::vp_solver::alpha_sigma(s, use_flow_sigmas))
        .collect();
    vp_add_noise(original, noise, &pairs)
}

/// Checks an `add_noise` timestep list against the batch: one per sample, or one for all.
pub fn check_timestep_count<S: SampleTensor>(original: &S, timesteps: &[f64]) -> Result<()> {
    let batch = original.batch_size();
    if timesteps.is_empty() || !(timesteps.len() == 1 || timesteps.len() == batch) {
        return Err(Error::Shape {
            what: "add_noise timesteps".into(),
            expected: format!("1 or {batch} timesteps (one per sample)"),
            got: vec![timesteps.len()],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp(sigma_ve: f64) -> Node {
        let (a, s) = crate::vp_solver::alpha_sigma(sigma_ve, false);
        Node::new(a, s)
    }

    fn host(v: &[f64]) -> HostTensor {
        HostTensor::new(vec![1, v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn first_order_plus_plus_is_ddim() {
        // DDIM with η = 0: x_t = α_t x̂₀ + σ_t (x_s − α_s x̂₀)/σ_s.
        let (t, s) = (vp(0.5), vp(2.0));
        let (x, x0) = (host(&[1.3, -0.4]), host(&[0.2, 0.7]));
        let got = first_order_update(AlgorithmType::DpmSolverPlusPlus, t, s, &x, &x0, None);
        for i in 0..2 {
            let eps = (x.data()[i] - s.alpha * x0.data()[i]) / s.sigma;
            let want = t.alpha * x0.data()[i] + t.sigma * eps;
            assert!((got.data()[i] - want).abs() < 1e-14);
        }
        // The ε̂ form gives the same point for a consistent (x̂₀, ε̂) pair.
        let eps = host(&[
            (1.3 - s.alpha * 0.2) / s.sigma,
            (-0.4 - s.alpha * 0.7) / s.sigma,
        ]);
        let got2 = first_order_update(AlgorithmType::DpmSolver, t, s, &x, &eps, None);
        for i in 0..2 {
            assert!((got.data()[i] - got2.data()[i]).abs() < 1e-13);
        }
    }

    #[test]
    fn final_zero_sigma_returns_x0() {
        let t = Node::new(1.0, 0.0);
        let s = vp(0.3);
        let (x, x0) = (host(&[1.0]), host(&[0.25]));
        for alg in [
            AlgorithmType::DpmSolverPlusPlus,
            AlgorithmType::SdeDpmSolverPlusPlus,
        ] {
            let z = host(&[5.0]);
            let got = first_order_update(alg, t, s, &x, &x0, Some(&z));
            assert!((got.data()[0] - 0.25).abs() < 1e-15, "{alg:?}: {got:?}");
        }
    }

    #[test]
    fn higher_orders_are_exact_for_linear_outputs() {
        // If x̂₀(λ) is linear in λ, the Heun second-order and the third-order updates solve
        // the DPM-Solver++ ODE exactly; check against a fine first-order integration.
        let nodes: Vec<Node> = [6.0, 3.0, 1.5, 0.7].iter().map(|&s| vp(s)).collect();
        let x0_at = |n: &Node| host(&[0.3 + 0.1 * n.lambda]);
        let x = host(&[2.0]);
        let (t, s0, s1, s2) = (nodes[3], nodes[2], nodes[1], nodes[0]);
        let outs = [x0_at(&s0), x0_at(&s1), x0_at(&s2)];
        // Reference: many tiny first-order steps from s0 to t.
        let mut xr = x.clone();
        let n = 20000;
        for i in 0..n {
            let f = |k: usize| {
                let lam = s0.lambda + (t.lambda - s0.lambda) * k as f64 / n as f64;
                // α = sigmoid(2λ)^½ on a VP schedule.
                let a = (1.0 / (1.0 + (-2.0 * lam).exp())).sqrt();
                Node::new(a, (1.0 - a * a).sqrt())
            };
            let (a, b) = (f(i), f(i + 1));
            let xm = host(&[0.3 + 0.1 * 0.5 * (a.lambda + b.lambda)]);
            xr = first_order_update(AlgorithmType::DpmSolverPlusPlus, b, a, &xr, &xm, None);
        }
        let refs: Vec<&HostTensor> = outs.iter().collect();
        let heun = multistep_update(
            AlgorithmType::DpmSolverPlusPlus,
            SolverType::Heun,
            &[t, s0, s1],
            &refs[..2],
            &x,
            None,
        )
        .unwrap();
        let third = multistep_update(
            AlgorithmType::DpmSolverPlusPlus,
            SolverType::Midpoint,
            &[t, s0, s1, s2],
            &refs,
            &x,
            None,
        )
        .unwrap();
        assert!(
            (heun.data()[0] - xr.data()[0]).abs() < 1e-7,
            "{heun:?} vs {xr:?}"
        );
        assert!(
            (third.data()[0] - xr.data()[0]).abs() < 1e-7,
            "{third:?} vs {xr:?}"
        );
    }

    #[test]
    fn zero_length_steps_are_the_identity() {
        let n = vp(0.02);
        let x = host(&[1.5]);
        let (m0, m1, m2) = (host(&[0.1]), host(&[0.2]), host(&[0.3]));
        for alg in [AlgorithmType::DpmSolverPlusPlus, AlgorithmType::DpmSolver] {
            for st in [SolverType::Midpoint, SolverType::Heun] {
                let y = multistep_update(
                    alg,
                    st,
                    &[n, n, vp(0.5), vp(1.0)],
                    &[&m0, &m1, &m2],
                    &x,
                    None,
                )
                .unwrap();
                assert_eq!(y.data(), x.data());
                let y = singlestep_update(alg, st, &[n, n, n], &[&m0, &m1], &x, None).unwrap();
                assert_eq!(y.data(), x.data());
            }
            let y = first_order_update(alg, n, n, &x, &m0, None);
            assert!((y.data()[0] - 1.5).abs() < 1e-15);
        }
    }

    #[test]
    fn sde_dpmsolver_has_no_third_order() {
        let nodes: Vec<Node> = [0.7, 1.5, 3.0, 6.0].iter().map(|&s| vp(s)).collect();
        let x = host(&[1.0]);
        let z = host(&[0.0]);
        let e = multistep_update(
            AlgorithmType::SdeDpmSolver,
            SolverType::Midpoint,
            &nodes,
            &[&x, &x, &x],
            &x,
            Some(&z),
        )
        .unwrap_err();
        assert!(e.to_string().contains("third-order"));
    }

    #[test]
    fn learned_variance_split_takes_mean_channels() {
        let sample = HostTensor::new(vec![2, 1, 2], vec![0.0; 4]).unwrap();
        let out =
            HostTensor::new(vec![2, 2, 2], vec![1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 8.0, 8.0]).unwrap();
        let mean = split_learned_variance(&out, &sample).unwrap();
        assert_eq!(mean.data(), &[1.0, 2.0, 3.0, 4.0]);
        let bad = HostTensor::new(vec![2, 2, 3], vec![0.0; 12]).unwrap();
        assert!(matches!(
            split_learned_variance(&bad, &sample),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn lambda_min_clipped_reads_null_as_neg_inf() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(deserialize_with = "neg_inf_on_null::deserialize")]
            v: f64,
        }
        let c: C = serde_json::from_str(r#"{"v": null}"#).unwrap();
        assert_eq!(c.v, f64::NEG_INFINITY);
        let c: C = serde_json::from_str(r#"{"v": -5.1}"#).unwrap();
        assert_eq!(c.v, -5.1);
        let c: C = serde_json::from_str(r#"{"v": "-Infinity"}"#).unwrap();
        assert_eq!(c.v, f64::NEG_INFINITY);
    }
}
