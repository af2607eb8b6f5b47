//! Samplers against an exactly known model ("Proof 3" of the Ember issue).
//!
//! The data is `GaussianMixture::demo_2d()`, whose posterior-mean denoiser E[x₀ | x] is known
//! in closed form, so
//! 1. deterministic solvers must converge to the exact probability-flow ODE solution, at the
//!    order theory gives them; the reference is a high-accuracy RK4 integration of
//!    dx/dσ = (x − D(x, σ))/σ from the same initial noise;
//! 2. stochastic samplers must reproduce the mixture itself (mean, covariance, component
//!    weights), within the sampling error of 4,096 samples plus the discretisation bias.
//!
//! All maths on `HostTensor` (f64).

use ember_core::analytic::GaussianMixture;
use ember_core::{HostTensor, NoiseSource, Prediction, SampleTensor, Scheduler};
use ember_schedulers::analytic::{AnalyticDenoiser, TimeScale};
use ember_schedulers::SCHEDULERS;
use serde_json::{json, Value};

type Sched = Box<dyn Scheduler<HostTensor>>;

fn registered(class: &str) -> bool {
    SCHEDULERS.iter().any(|i| i.class_name == class)
}

/// Stable Diffusion's training schedule: σ from 14.6 down to 0.029.
fn sd(mut extra: Value, class: &str) -> Value {
    let obj = extra.as_object_mut().unwrap();
    obj.insert("_class_name".into(), json!(class));
    obj.insert("beta_schedule".into(), json!("scaled_linear"));
    obj.insert("beta_start".into(), json!(0.00085));
    obj.insert("beta_end".into(), json!(0.012));
    extra
}

/// The exact model output, in the parameterisation `prediction`, for a VP-scaled input
/// `x_in = x_ve/√(1 + σ²)` at VE noise level σ: the library's `AnalyticDenoiser` on a
/// one-entry time table, so it answers at exactly σ whatever timestep it is told.
fn exact_output_at(
    mixture: &GaussianMixture,
    prediction: Prediction,
    x_in: &HostTensor,
    sigma: f64,
) -> HostTensor {
    let model = AnalyticDenoiser {
        mixture: mixture.clone(),
        time: TimeScale::Discrete {
            log_sigmas: vec![sigma.ln()],
        },
        prediction,
    };
    model
        .predict(x_in, 0.0)
        .expect("discrete time scale answers every prediction but flow")
}

fn dot(a: &HostTensor, b: &HostTensor) -> f64 {
    a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum()
}

/// The model output at evaluation `k` (timestep `t`) of scheduler `s`, for the noise level the
/// scheduler put into the sample, with the exact mixture denoiser.
///
/// A model conditioned on `t` alone would not always see that level: diffusers' multistep
/// solvers round Karras timesteps to integers, and σ-space schedulers store timesteps in
/// float32. Those are properties of the timestep ↔ σ map (tested in `properties.rs` and the
/// parity fixtures), not of the solvers, and their O(1)–O(1e-7) mismatch would not shrink with
/// the step size; so the solvers are fed the answer for their own σ:
/// - σ-space schedulers (x·1/√(σ² + 1) handed to the model) reveal σ through
///   `scale_model_input`; EDM (c_in = 1/√(σ² + σ_data²)) and flow matching answer through the
///   library's time scale, which is exact for them (σ = e^{4t}, σ = t/T);
/// - VP solvers with a σ table use `sigmas()[k]`;
/// - the ᾱ-only schedulers (DDPM, DDIM, LCM, TCD) evaluate at integer training timesteps,
///   where `AnalyticDenoiser::for_config` is exact.
fn model_output(
    s: &mut Sched,
    mixture: &GaussianMixture,
    by_config: &AnalyticDenoiser,
    x: &HostTensor,
    t: f64,
    k: usize,
) -> HostTensor {
    let x_in = s.scale_model_input(x, t).expect("scale_model_input");
    let c = dot(&x_in, x) / dot(x, x);
    let identity = (c - 1.0).abs() <= 1e-13;
    match by_config.time {
        TimeScale::Edm { .. } | TimeScale::Flow { .. } => {
            by_config.predict(&x_in, t).expect("predict")
        }
        TimeScale::Discrete { .. } if !identity => {
            let sigma = (1.0 / (c * c) - 1.0).max(0.0).sqrt();
            exact_output_at(mixture, s.prediction(), &x_in, sigma)
        }
        TimeScale::Discrete { .. } => match s.sigmas() {
            Some(sig) => {
                let sigma = sig[k];
                exact_output_at(mixture, s.prediction(), &x_in, sigma)
            }
            None => by_config.predict(&x_in, t).expect("predict"),
        },
    }
}

// ------------------------------------------------------------------------------------------
// 1. Convergence order of the deterministic solvers
// ------------------------------------------------------------------------------------------

/// dx/ds = x − D(x, eˢ) with s = ln σ: the VE probability-flow ODE dx/dσ = (x − D)/σ in
/// log σ, where it is smooth and non-stiff over the whole range.
fn pf_rhs(mixture: &GaussianMixture, x: &HostTensor, s: f64) -> HostTensor {
    x.sub(&mixture.posterior_mean(x, 1.0, s.exp()))
}

/// Classical RK4 for the PF-ODE from σ_from to σ_to in `steps` equal steps of ln σ.
fn pf_ode_rk4(
    mixture: &GaussianMixture,
    x: &HostTensor,
    sigma_from: f64,
    sigma_to: f64,
    steps: usize,
) -> HostTensor {
    let (s0, s1) = (sigma_from.ln(), sigma_to.ln());
    let h = (s1 - s0) / steps as f64;
    let mut x = x.clone();
    for i in 0..steps {
        let s = s0 + h * i as f64;
        let k1 = pf_rhs(mixture, &x, s);
        let k2 = pf_rhs(
            mixture,
            &HostTensor::lin_comb(&[(1.0, &x), (h / 2.0, &k1)]),
            s + h / 2.0,
        );
        let k3 = pf_rhs(
            mixture,
            &HostTensor::lin_comb(&[(1.0, &x), (h / 2.0, &k2)]),
            s + h / 2.0,
        );
        let k4 = pf_rhs(
            mixture,
            &HostTensor::lin_comb(&[(1.0, &x), (h, &k3)]),
            s + h,
        );
        x = HostTensor::lin_comb(&[
            (1.0, &x),
            (h / 6.0, &k1),
            (h / 3.0, &k2),
            (h / 3.0, &k3),
            (h / 6.0, &k4),
        ]);
    }
    x
}

fn rms(a: &HostTensor, b: &HostTensor) -> f64 {
    let n = a.data().len() as f64;
    (a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// Whether the scheduler's sample is x₀ + σ ε (σ-space) or (x₀ + σ ε)/√(1 + σ²) (VP).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    Ve,
    Vp,
}

/// One solver run: states in VE form at the start, after the warm-up, and at the end.
struct Run {
    start: HostTensor,
    sigma_start: f64,
    warm: HostTensor,
    sigma_warm: f64,
    end: HostTensor,
    sigma_end: f64,
}

/// Runs `n` steps' worth of schedule but stops before the last step, at σ_{n−1} = σ_min
/// (Karras σs end at σ_min for every n, so every n is compared at the same point); records
/// the state after the first `warmup` steps too.
///
/// Why not the end: the last step goes to σ = 0, where the ODE's right-hand side (x − D)/σ
/// is singular; every solver finishes with x̂₀ = D(x, σ_min), whose error does not shrink
/// with n (σ_min is fixed). Stopping at σ_min compares like with like. It also leaves out the
/// `lower_order_final` last step of the multistep solvers.
fn run_to_sigma_min(
    cfg: &Value,
    n: usize,
    frame: Frame,
    warmup: usize,
    mixture: &GaussianMixture,
) -> Run {
    let mut s = ember_schedulers::from_config_json::<HostTensor>(cfg)
        .unwrap_or_else(|e| panic!("{cfg}: {e}"));
    s.set_timesteps(n).unwrap();
    let sig = s.sigmas().expect("σ table").to_vec();
    let ts = s.timesteps().to_vec();
    // Evaluations before the last step: n − 1 for one evaluation per step; Heun's last step
    // is its single Euler evaluation, so 2n − 2 of its 2n − 1.
    let evals = ts.len() - 1;
    let noise = NoiseSource::new(2024).initial_noise(&[64, 2], 0);
    let mut x = noise.scale(s.init_noise_sigma());
    let to_ve = |x: &HostTensor, sigma: f64| match frame {
        Frame::Ve => x.clone(),
        Frame::Vp => x.scale((1.0 + sigma * sigma).sqrt()),
    };
    let start = to_ve(&x, sig[0]);
    let mut warm = start.clone();
    let by_config = AnalyticDenoiser::for_config(mixture.clone(), &s.config_json()).unwrap();
    for (k, &t) in ts.iter().enumerate().take(evals) {
        let out = model_output(&mut s, mixture, &by_config, &x, t, k);
        x = s.step(&out, t, &x, None).unwrap().prev_sample;
        if k + 1 == warmup {
            warm = to_ve(&x, sig[k + 1]);
        }
    }
    Run {
        start,
        sigma_start: sig[0],
        warm,
        sigma_warm: sig[warmup],
        end: to_ve(&x, sig[evals]),
        sigma_end: sig[evals],
    }
}

/// Least-squares slope of ln(error) against ln(steps), negated: the observed order.
fn fitted_order(steps: &[usize], errors: &[f64]) -> f64 {
    let xs: Vec<f64> = steps.iter().map(|&n| (n as f64).ln()).collect();
    let ys: Vec<f64> = errors.iter().map(|e| e.ln()).collect();
    let m = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / m, ys.iter().sum::<f64>() / m);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -sxy / sxx
}

struct OrderCase {
    label: &'static str,
    cfg: Value,
    frame: Frame,
    /// The order of the method's steps.
    theory: f64,
    /// Lower-order start-up steps (multistep solvers) whose error is checked separately.
    warmup: usize,
}

fn order_cases() -> Vec<OrderCase> {
    let karras = |class: &str, extra: Value| sd(extra, class);
    vec![
        // Euler's method: order 1.
        OrderCase {
            label: "Euler",
            cfg: karras("EulerDiscreteScheduler", json!({"use_karras_sigmas": true})),
            frame: Frame::Ve,
            theory: 1.0,
            warmup: 0,
        },
        // Heun's method (explicit trapezoid, Karras et al. 2022 Alg. 1): order 2.
        OrderCase {
            label: "Heun",
            cfg: karras("HeunDiscreteScheduler", json!({"use_karras_sigmas": true})),
            frame: Frame::Ve,
            theory: 2.0,
            warmup: 0,
        },
        // DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): order 2; its first-order first step
        // has local error O(h²), which does not lower that.
        OrderCase {
            label: "DPM++ 2M",
            cfg: karras(
                "DPMSolverMultistepScheduler",
                json!({"use_karras_sigmas": true, "solver_order": 2}),
            ),
            frame: Frame::Vp,
            theory: 2.0,
            warmup: 1,
        },
        // UniPC with solver_order 2, bh2, data prediction, corrector on: the predictor UniP-2
        // is order 2 and UniC raises the order of the corrected states to p + 1 = 3 (Zhao et
        // al. 2023, Thm 3.2; diffusers: "the effective order of accuracy is solver_order + 1
        // due to the UniC"). The state at σ_min is the *predicted* (not yet corrected) sample,
        // one UniP-2 step (local error O(h³)) from a corrected one: order 3. The first step's
        // order-1 prediction is corrected by UniC-1 at the next step (local O(h³)), so the
        // start-up does not lower the order. (No separate warm-up check: the corrector
        // rewrites the state after the fact.)
        OrderCase {
            label: "UniPC-2 (bh2, UniC)",
            cfg: karras(
                "UniPCMultistepScheduler",
                json!({"use_karras_sigmas": true, "solver_order": 2}),
            ),
            frame: Frame::Vp,
            theory: 3.0,
            warmup: 0,
        },
        // DPM-Solver++(3M): order 3 (started, as in diffusers, by a first- and a second-order
        // step; the start-up's error is reported separately and is two orders of magnitude
        // below the total here, so it does not decide the slope). diffusers' update halves
        // the x̂₀'' term (D2 estimates h²x̂₀''/2 but is weighted as h²x̂₀''), which this test
        // found: with diffusers' weights the method is second order (2.5 over 16–128 steps,
        // the h³ term still visible; diffusers itself measures 2.49). `exact_third_order`
        // restores order 3; the default keeps diffusers' numbers.
        OrderCase {
            label: "DPM++ 3M (exact)",
            cfg: karras(
                "DPMSolverMultistepScheduler",
                json!({"use_karras_sigmas": true, "solver_order": 3, "exact_third_order": true}),
            ),
            frame: Frame::Vp,
            theory: 3.0,
            warmup: 2,
        },
        OrderCase {
            label: "DPM++ 3M (diffusers)",
            cfg: karras(
                "DPMSolverMultistepScheduler",
                json!({"use_karras_sigmas": true, "solver_order": 3}),
            ),
            frame: Frame::Vp,
            theory: 2.5,
            warmup: 2,
        },
    ]
}

/// Step counts in the asymptotic regime, all ≥ 15 so that diffusers' `lower_order_final`
/// (which lowers the order of the last steps below 15 steps) never applies.
const ORDER_STEPS: [usize; 4] = [16, 32, 64, 128];

#[test]
fn deterministic_solvers_converge_to_the_pf_ode_at_their_order() {
    let mixture = GaussianMixture::demo_2d();
    let mut report = vec![];
    let mut failures = vec![];
    for case in order_cases() {
        let class = case.cfg["_class_name"].as_str().unwrap();
        assert!(
            registered(class),
            "{class} ({}) is not registered",
            case.label
        );
        let (mut full, mut after, mut warm) = (vec![], vec![], vec![]);
        for &n in &ORDER_STEPS {
            let run = run_to_sigma_min(&case.cfg, n, case.frame, case.warmup, &mixture);
            // Reference: RK4 in ln σ from the solver's own initial state. Its error is
            // O(h⁴) with h = ln(σ₀/σ_min)/M ≈ 0.003 at M = 2000; Richardson check: M and 2M
            // agree to far below the solver's error (asserted), so it is exact for this purpose.
            let reference = pf_ode_rk4(&mixture, &run.start, run.sigma_start, run.sigma_end, 2000);
            let finer = pf_ode_rk4(&mixture, &run.start, run.sigma_start, run.sigma_end, 4000);
            let err = rms(&run.end, &reference);
            assert!(
                rms(&reference, &finer) < 1e-3 * err,
                "{}: reference not converged",
                case.label
            );
            full.push(err);
            if case.warmup > 0 {
                // The same, from the solver's state after its start-up steps.
                let from_warm =
                    pf_ode_rk4(&mixture, &run.warm, run.sigma_warm, run.sigma_end, 2000);
                after.push(rms(&run.end, &from_warm));
                warm.push(rms(&from_warm, &reference));
            }
        }
        let order = fitted_order(&ORDER_STEPS, &full);
        report.push(format!(
            "{:<22} full run: errors {:?} -> order {:.2}",
            case.label,
            sci(&full),
            order
        ));
        // Convergence itself: the error falls at every doubling.
        if !full.windows(2).all(|w| w[1] < w[0]) {
            failures.push(format!("{}: error does not decrease: {full:?}", case.label));
        }
        // ±0.3: the least-squares slope over 16…128 steps; higher-order terms of the error
        // expansion bend the log-log line by less than that in this range.
        let mut expect = |what: &str, errors: &[f64], theory: f64| {
            let o = fitted_order(&ORDER_STEPS, errors);
            if (o - theory).abs() > 0.3 {
                failures.push(format!(
                    "{} {what}: measured order {o:.2}, theory {theory} (errors {errors:?})",
                    case.label
                ));
            }
        };
        expect("full run", &full, case.theory);
        if case.warmup > 0 {
            // Diagnostics: the error made after the lower-order start-up steps (reference
            // started from the solver's own state there), and the start-up's error carried
            // to σ_min by the exact flow.
            report.push(format!(
                "{:<22}   after start-up: {:?} -> order {:.2}; start-up error: {:?} -> order {:.2}",
                "",
                sci(&after),
                fitted_order(&ORDER_STEPS, &after),
                sci(&warm),
                fitted_order(&ORDER_STEPS, &warm)
            ));
        }
    }
    for line in report {
        println!("{line}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// k-diffusion's deterministic samplers (`k_diffusion.rs`) on Karras σs from σ_max = 14.6
/// to σ_min = 0.029 without the final 0 (they then stop at σ_min, like the schedulers above),
/// driven by the VE denoiser D(x; σ) directly.
#[test]
fn k_diffusion_ode_solvers_converge_at_their_order() {
    use ember_schedulers::k_diffusion as kd;
    let mixture = GaussianMixture::demo_2d();
    let (sigma_min, sigma_max) = (0.0292, 14.6);
    type Solver = fn(
        &mut dyn FnMut(&HostTensor, f64) -> ember_core::Result<HostTensor>,
        HostTensor,
        &[f64],
    ) -> ember_core::Result<HostTensor>;
    let solvers: [(&str, Solver, f64); 5] = [
        (
            "k-diffusion euler",
            |m, x, s| kd::sample_euler(m, x, s),
            1.0,
        ),
        ("k-diffusion heun", |m, x, s| kd::sample_heun(m, x, s), 2.0),
        (
            "k-diffusion dpm_2",
            |m, x, s| kd::sample_dpm_2(m, x, s),
            2.0,
        ),
        (
            "k-diffusion dpmpp_2m",
            |m, x, s| kd::sample_dpmpp_2m(m, x, s),
            2.0,
        ),
        // η = 0: the deterministic DPM-Solver++(2S).
        (
            "k-diffusion dpmpp_2s (η = 0)",
            |m, x, s| {
                kd::sample_dpmpp_2s_ancestral(m, x, s, 0.0, 1.0, &mut |_| {
                    unreachable!("η = 0 draws no noise")
                })
            },
            2.0,
        ),
    ];
    let x0 = NoiseSource::new(2024)
        .initial_noise(&[64, 2], 0)
        .scale(sigma_max);
    let reference = pf_ode_rk4(&mixture, &x0, sigma_max, sigma_min, 2000);
    assert!(
        rms(
            &reference,
            &pf_ode_rk4(&mixture, &x0, sigma_max, sigma_min, 4000)
        ) < 1e-10
    );
    let mut failures = vec![];
    for (label, solver, theory) in solvers {
        let errors: Vec<f64> = ORDER_STEPS
            .iter()
            .map(|&n| {
                let mut sig = kd::get_sigmas_karras(n, sigma_min, sigma_max, 7.0).unwrap();
                sig.pop();
                let mut model =
                    |x: &HostTensor, sigma: f64| Ok(mixture.posterior_mean(x, 1.0, sigma));
                rms(&solver(&mut model, x0.clone(), &sig).unwrap(), &reference)
            })
            .collect();
        let order = fitted_order(&ORDER_STEPS, &errors);
        println!(
            "{label:<30} errors {:?} -> order {order:.2} (theory {theory})",
            sci(&errors)
        );
        if (order - theory).abs() > 0.3 {
            failures.push(format!(
                "{label}: measured order {order:.2}, theory {theory}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn sci(v: &[f64]) -> Vec<String> {
    v.iter().map(|e| format!("{e:.2e}")).collect()
}

// ------------------------------------------------------------------------------------------
// 2. Stochastic samplers reproduce the mixture
// ------------------------------------------------------------------------------------------

const N: usize = 4096;

/// Sample statistics: mean (2), covariance (xx, xy, yy), and the fraction of samples whose
/// most likely component is k.
#[derive(Debug, Clone)]
struct Stats {
    mean: [f64; 2],
    cov: [f64; 3],
    weights: Vec<f64>,
}

impl Stats {
    fn of(x: &HostTensor, mixture: &GaussianMixture) -> Stats {
        let d = x.data();
        let n = (d.len() / 2) as f64;
        let mean = [
            d.iter().step_by(2).sum::<f64>() / n,
            d.iter().skip(1).step_by(2).sum::<f64>() / n,
        ];
        let mut cov = [0.0; 3];
        for p in d.chunks(2) {
            let (a, b) = (p[0] - mean[0], p[1] - mean[1]);
            cov[0] += a * a / n;
            cov[1] += a * b / n;
            cov[2] += b * b / n;
        }
        let mut weights = vec![0.0; mixture.weights().len()];
        for k in mixture.classify(x) {
            weights[k] += 1.0 / n;
        }
        Stats { mean, cov, weights }
    }
    fn values(&self) -> Vec<f64> {
        let mut v = vec![
            self.mean[0],
            self.mean[1],
            self.cov[0],
            self.cov[1],
            self.cov[2],
        ];
        v.extend(&self.weights);
        v
    }
}

const NAMES: [&str; 8] = [
    "mean x", "mean y", "cov xx", "cov xy", "cov yy", "weight 0", "weight 1", "weight 2",
];

/// The statistics of the true mixture and the per-sample standard deviation of each
/// statistic's estimator (so its standard error over m samples is sd/√m).
///
/// Mean and covariance are exact (closed form); the classification frequencies and all the
/// standard deviations come from 2¹⁸ exact draws (their own error, ~0.1 % of a weight, is
/// added to the tolerance below).
struct Truth {
    stats: Stats,
    sd: Vec<f64>,
    n_ref: f64,
}

fn truth(mixture: &GaussianMixture) -> Truth {
    use rand::SeedableRng;
    let n_ref = 1usize << 18;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let x = mixture.sample(n_ref, &mut rng);
    let (mu, c) = (mixture.mean(), mixture.covariance());
    let empirical = Stats::of(&x, mixture);
    let stats = Stats {
        mean: [mu[0], mu[1]],
        cov: [c[0], c[1], c[3]],
        weights: empirical.weights.clone(),
    };
    // sd of each estimator's summand: the coordinate, the centred products, the indicators.
    let d = x.data();
    let mut sums = vec![0.0; 5];
    for p in d.chunks(2) {
        let (a, b) = (p[0] - mu[0], p[1] - mu[1]);
        let terms = [a, b, a * a - c[0], a * b - c[1], b * b - c[3]];
        for (s, t) in sums.iter_mut().zip(terms) {
            *s += t * t;
        }
    }
    let mut sd: Vec<f64> = sums.iter().map(|s| (s / n_ref as f64).sqrt()).collect();
    sd.extend(stats.weights.iter().map(|p| (p * (1.0 - p)).sqrt()));
    Truth {
        stats,
        sd,
        n_ref: n_ref as f64,
    }
}

/// Checks sampled statistics against the truth. Tolerance per statistic:
///   5·√(sd²/N + sd²/N_ref) + bias
/// — five standard errors of a 4,096-sample estimate (two-sided false-alarm rate 6e-7 per
/// statistic, ~1e-5 over the whole test) combined with the reference's own Monte-Carlo error,
/// plus the discretisation bias allowed at the step count used (see `bias_allowance`).
fn check(
    label: &str,
    x: &HostTensor,
    mixture: &GaussianMixture,
    truth: &Truth,
    bias: f64,
) -> Vec<String> {
    assert!(x.all_finite(), "{label}: non-finite samples");
    let got = Stats::of(x, mixture).values();
    let want = truth.stats.values();
    let mut failures = vec![];
    let mut line = format!("{label:<44}");
    for i in 0..got.len() {
        let se = truth.sd[i] * (1.0 / N as f64 + 1.0 / truth.n_ref).sqrt();
        let tol = 5.0 * se + bias * truth.sd[i];
        let dev = got[i] - want[i];
        line.push_str(&format!(" {:+.1}σ", dev / se));
        if dev.abs() > tol {
            failures.push(format!(
                "{label}: {} = {:.4}, truth {:.4} (|Δ| = {:.4} > tol {:.4} = 5 SE {:.4} + bias)",
                NAMES[i],
                got[i],
                want[i],
                dev.abs(),
                tol,
                5.0 * se
            ));
        }
    }
    let worst = (0..got.len())
        .map(|i| ((got[i] - want[i]) / truth.sd[i]).abs())
        .fold(0.0, f64::max);
    println!("{line}   max |Δ|/sd {worst:.4}");
    failures
}

/// The discretisation bias allowed, as a fraction of each statistic's per-sample sd.
///
/// With the exact denoiser, an ancestral / SDE sampler's law differs from the data law by
/// O(1/n) (weak order 1). Measured during development with 2¹⁶ samples (standard error
/// 0.004 sd, included) at the step counts used here, the largest |Δ|/sd over the eight
/// statistics was: k-diffusion Euler ancestral (100 Karras steps, 80 → 0.002) 0.040,
/// DDPM = DDIM η = 1 (100) 0.034, Euler ancestral (100) 0.027, score-SDE VP/VE ancestral
/// (200) 0.019, KDPM2 ancestral (50) 0.018, Euler with churn (100) 0.014, all others
/// ≤ 0.013. 0.05 sd bounds them (one standard error of 4,096 samples is 0.016 sd).
const BIAS: f64 = 0.05;

/// The standard sampling loop, as a pipeline runs it.
fn sample_with(cfg: &Value, steps: usize, mixture: &GaussianMixture, seed: u64) -> HostTensor {
    let mut s = ember_schedulers::from_config_json::<HostTensor>(cfg)
        .unwrap_or_else(|e| panic!("{cfg}: {e}"));
    s.set_timesteps(steps)
        .unwrap_or_else(|e| panic!("{cfg}: {e}"));
    let by_config = AnalyticDenoiser::for_config(mixture.clone(), &s.config_json()).unwrap();
    let noise = NoiseSource::new(seed);
    let shape = [N, 2];
    let mut x = noise.initial_noise(&shape, 0).scale(s.init_noise_sigma());
    let stochastic = s.is_stochastic();
    for (k, t) in s.timesteps().to_vec().into_iter().enumerate() {
        let out = model_output(&mut s, mixture, &by_config, &x, t, k);
        let z = stochastic.then(|| noise.step_noise(&shape, 0, k as u64));
        x = s
            .step(&out, t, &x, z.as_ref())
            .unwrap_or_else(|e| panic!("{cfg} step {k}: {e}"))
            .prev_sample;
    }
    x
}

/// The stochastic samplers the issue names (class, config, steps). Step counts: enough for
/// the O(1/n) bias to stay below `BIAS` (2 model evaluations per step for KDPM2 ancestral).
fn named_stochastic() -> Vec<(&'static str, Value, usize)> {
    vec![
        // clip_sample (on by default, for images in [−1, 1]) would clip x̂₀ of this data
        // (means at ±1.5): off.
        (
            "DDPMScheduler",
            json!({"_class_name": "DDPMScheduler", "clip_sample": false}),
            100,
        ),
        // DDIM with η = 1 (diffusers' step kwarg, passed as a config key): DDPM's posterior.
        (
            "DDIMScheduler",
            json!({"_class_name": "DDIMScheduler", "eta": 1.0, "clip_sample": false}),
            100,
        ),
        (
            "EulerAncestralDiscreteScheduler",
            sd(json!({}), "EulerAncestralDiscreteScheduler"),
            100,
        ),
        (
            "KDPM2AncestralDiscreteScheduler",
            sd(json!({}), "KDPM2AncestralDiscreteScheduler"),
            50,
        ),
        (
            "DPMSolverMultistepScheduler",
            sd(
                json!({"algorithm_type": "sde-dpmsolver++"}),
                "DPMSolverMultistepScheduler",
            ),
            100,
        ),
        // Churn inside [s_tmin, s_tmax] = [0, ∞): γ = min(s_churn/(n − 1), √2 − 1).
        (
            "EulerDiscreteScheduler",
            sd(json!({"s_churn": 2.0}), "EulerDiscreteScheduler"),
            100,
        ),
    ]
}

#[test]
fn stochastic_samplers_reproduce_the_mixture() {
    let mixture = GaussianMixture::demo_2d();
    let truth = truth(&mixture);
    let mut failures = vec![];
    let mut covered = vec![];
    for (class, cfg, steps) in named_stochastic() {
        assert!(registered(class), "{class} is not registered");
        let mut s = ember_schedulers::from_config_json::<HostTensor>(&cfg).unwrap();
        s.set_timesteps(steps).unwrap();
        assert!(s.is_stochastic(), "{cfg} is not stochastic");
        let x = sample_with(&cfg, steps, &mixture, 1);
        failures.extend(check(
            &format!("{class} ({steps} steps)"),
            &x,
            &mixture,
            &truth,
            BIAS,
        ));
        covered.push(class);
    }
    // Every other registered class that is stochastic in its default configuration, except
    // the re-noising samplers (see renoising_samplers_follow_their_exact_law).
    for info in SCHEDULERS.iter() {
        if covered.contains(&info.class_name) || RENOISING.contains(&info.class_name) {
            continue;
        }
        let cfg = (info.default_config)();
        let Ok(mut s) = ember_schedulers::from_config_json::<HostTensor>(&cfg) else {
            continue;
        };
        if s.set_timesteps(50).is_err() || !s.is_stochastic() {
            continue;
        }
        let x = sample_with(&cfg, 50, &mixture, 2);
        failures.extend(check(
            &format!("{} (default, 50 steps)", info.class_name),
            &x,
            &mixture,
            &truth,
            BIAS,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// k-diffusion's ancestral / SDE samplers (`k_diffusion.rs`), driven by the VE denoiser
/// D(x; σ) = E[x₀ | x₀ + σ ε = x] on Karras σs from 80 to 0.002 (k-diffusion's defaults).
#[test]
fn k_diffusion_stochastic_samplers_reproduce_the_mixture() {
    use ember_schedulers::k_diffusion as kd;
    let mixture = GaussianMixture::demo_2d();
    let truth = truth(&mixture);
    let steps = 100;
    let sigmas = kd::get_sigmas_karras(steps, 0.002, 80.0, 7.0).unwrap();
    let shape = [N, 2];
    let model = |x: &HostTensor, sigma: f64| Ok(mixture.posterior_mean(x, 1.0, sigma));
    let x0 = NoiseSource::new(3)
        .initial_noise(&shape, 0)
        .scale(sigmas[0]);
    let mut failures = vec![];
    type Sampler = fn(
        &mut dyn FnMut(&HostTensor, f64) -> ember_core::Result<HostTensor>,
        HostTensor,
        &[f64],
        &mut dyn FnMut(usize) -> HostTensor,
    ) -> ember_core::Result<HostTensor>;
    let samplers: [(&str, Sampler); 4] = [
        ("k-diffusion euler_ancestral", |m, x, s, z| {
            kd::sample_euler_ancestral(m, x, s, 1.0, 1.0, z)
        }),
        ("k-diffusion dpm_2_ancestral", |m, x, s, z| {
            kd::sample_dpm_2_ancestral(m, x, s, 1.0, 1.0, z)
        }),
        ("k-diffusion dpmpp_2s_ancestral", |m, x, s, z| {
            kd::sample_dpmpp_2s_ancestral(m, x, s, 1.0, 1.0, z)
        }),
        ("k-diffusion dpmpp_3m_sde", |m, x, s, z| {
            kd::sample_dpmpp_3m_sde(m, x, s, 1.0, 1.0, z)
        }),
    ];
    for (label, sampler) in samplers {
        let mut m = model;
        let mut noise = kd::noise_from_source(NoiseSource::new(4), 0, &x0);
        let x = sampler(&mut m, x0.clone(), &sigmas, &mut noise)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        failures.extend(check(
            &format!("{label} ({steps} steps)"),
            &x,
            &mixture,
            &truth,
            BIAS,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Song et al.'s score-SDE samplers (`score_sde.rs`) with the exact score
/// ∇ log p_t(x) = (α(t) E[x₀ | x] − x)/σ(t)², for the VP and VE SDEs.
#[test]
fn score_sde_samplers_reproduce_the_mixture() {
    use ember_schedulers::score_sde::{self as sde, Sde};
    let mixture = GaussianMixture::demo_2d();
    let truth = truth(&mixture);
    let shape = [N, 2];
    let mut failures = vec![];
    let vp = sde::VpSde::default();
    let ve = sde::VeSde::default();
    let cases: Vec<(
        &str,
        &dyn Sde,
        sde::Predictor,
        Option<sde::LangevinCorrector>,
        usize,
    )> = vec![
        (
            "score-SDE VP reverse diffusion",
            &vp,
            sde::Predictor::ReverseDiffusion,
            None,
            200,
        ),
        (
            "score-SDE VP Euler-Maruyama",
            &vp,
            sde::Predictor::EulerMaruyama,
            None,
            200,
        ),
        (
            "score-SDE VP ancestral",
            &vp,
            sde::Predictor::Ancestral,
            None,
            200,
        ),
        (
            "score-SDE VE reverse diffusion",
            &ve,
            sde::Predictor::ReverseDiffusion,
            None,
            200,
        ),
        (
            "score-SDE VE ancestral",
            &ve,
            sde::Predictor::Ancestral,
            None,
            200,
        ),
    ];
    for (label, process, predictor, corrector, steps) in cases {
        let ts = sde::time_grid(steps, process.sampling_eps()).unwrap();
        let score = |x: &HostTensor, t: f64| {
            let (a, s) = (process.mean_coeff(t), process.marginal_std(t));
            let d = mixture.posterior_mean(x, a, s);
            Ok(d.scale(a).sub(x).scale(1.0 / (s * s)))
        };
        let z = NoiseSource::new(5).initial_noise(&shape, 0);
        let x = sde::prior_sample(process, &z);
        let mut noise =
            ember_schedulers::k_diffusion::noise_from_source(NoiseSource::new(6), 0, &x);
        let x = sde::sample_pc(
            process, score, x, &ts, predictor, corrector, &mut noise, true,
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        failures.extend(check(
            &format!("{label} ({steps} steps)"),
            &x,
            &mixture,
            &truth,
            BIAS,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Song et al.'s predictor-corrector samplers (reverse diffusion + one Langevin step, the
/// paper's snr 0.16 for VE and 0.01 for VP) with the exact score.
#[test]
fn score_sde_predictor_corrector_reproduces_the_mixture() {
    use ember_schedulers::score_sde::{self as sde, Sde};
    let mixture = GaussianMixture::demo_2d();
    let truth = truth(&mixture);
    let shape = [N, 2];
    let mut failures = vec![];
    let vp = sde::VpSde::default();
    let ve = sde::VeSde::default();
    let cases: Vec<(&str, &dyn Sde, f64)> = vec![
        ("score-SDE VP PC (Langevin snr 0.01)", &vp, 0.01),
        ("score-SDE VE PC (Langevin snr 0.16)", &ve, 0.16),
    ];
    for (label, process, snr) in cases {
        let steps = 200;
        let ts = sde::time_grid(steps, process.sampling_eps()).unwrap();
        let score = |x: &HostTensor, t: f64| {
            let (a, s) = (process.mean_coeff(t), process.marginal_std(t));
            Ok(mixture
                .posterior_mean(x, a, s)
                .scale(a)
                .sub(x)
                .scale(1.0 / (s * s)))
        };
        let x = sde::prior_sample(process, &NoiseSource::new(7).initial_noise(&shape, 0));
        let mut noise =
            ember_schedulers::k_diffusion::noise_from_source(NoiseSource::new(8), 0, &x);
        let corrector = Some(sde::LangevinCorrector { snr, n_steps: 1 });
        let x = sde::sample_pc(
            process,
            score,
            x,
            &ts,
            sde::Predictor::ReverseDiffusion,
            corrector,
            &mut noise,
            true,
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        failures.extend(check(
            &format!("{label} ({steps} steps)"),
            &x,
            &mixture,
            &truth,
            BIAS,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Samplers that *replace* the sample by its denoised estimate plus fresh noise at every
/// step, x' = a'·x̂₀(x) + b'·z: LCM (Luo et al. 2023, multistep consistency sampling) and
/// flow matching's `stochastic_sampling` (x' = (1 − σ')x̂₀ + σ'z). They are exact when x̂₀ is
/// a *sample* of p(x₀ | x) (a consistency model); with the posterior *mean* every step
/// discards the variance of x₀ given x, so they do not reproduce the data law (measured on the
/// mixture at 50–100 steps: component weights 0.62 / 0.23 / 0.15 instead of 0.5 / 0.3 / 0.2 and
/// 10–15 standard errors off in mean and covariance; diffusers' step is the same formula).
/// What they must do is follow their own law exactly, which for Gaussian data is a
/// closed-form recursion (below).
/// TCD with γ > 0 (Zheng et al. 2024) is the same in part: a DDIM jump from t to
/// s = ⌊(1 − γ) t'⌋ below the next timestep t', then forward noise back to t'. The jump is
/// not small as the steps shrink, so with a posterior mean it also loses variance (measured
/// at γ = 0.3, 50 steps, 2¹⁶ samples: 0.07 sd off, 16 standard errors in cov yy).
const RENOISING: [&str; 3] = [
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "TCDScheduler",
];

/// For data N(μ, s² I) every quantity is linear-Gaussian: with x ~ N(m, v I) at a level
/// where x = α x₀ + σ ε, the exact denoiser is D(x) = μ + g (x − α μ), g = α s²/(α² s² + σ²),
/// so D(x) ~ N(μ + g (m − α μ), g² v I), and one re-noising step is an affine map of (m, v).
/// The sampler's empirical mean and variance (4,096 samples × 2 coordinates) must match the
/// recursion within 5 standard errors (SE of the mean √(v/n), of the variance v √(2/n)); the
/// law is exact for the discrete sampler, so there is no discretisation term.
#[test]
fn renoising_samplers_follow_their_exact_law() {
    let (mu, s) = ([0.5, -0.3], 0.6);
    let gauss = GaussianMixture::new(vec![1.0], vec![mu.to_vec()], vec![s]).unwrap();
    // D(x) = μ + g (x − α μ): returns (mean of D, g).
    let affine_d = |m: f64, mu: f64, alpha: f64, sigma: f64| {
        let g = alpha * s * s / (alpha * alpha * s * s + sigma * sigma);
        (mu + g * (m - alpha * mu), g)
    };
    let mut failures = vec![];
    for class in RENOISING {
        assert!(registered(class), "{class} is not registered");
        let steps = if class == "FlowMatchEulerDiscreteScheduler" {
            30
        } else {
            8
        };
        let cfg = match class {
            "LCMScheduler" => json!({"_class_name": class, "clip_sample": false}),
            "TCDScheduler" => json!({"_class_name": class, "clip_sample": false, "eta": 0.3}),
            _ => json!({"_class_name": class, "stochastic_sampling": true, "shift": 3.0}),
        };
        let x = sample_with(&cfg, steps, &gauss, 9);
        let mut sch = ember_schedulers::from_config_json::<HostTensor>(&cfg).unwrap();
        sch.set_timesteps(steps).unwrap();
        let full = sch.config_json();
        let ts = sch.timesteps().to_vec();
        // The training schedule the sampler uses (its full config, defaults filled in).
        // (Flow matching has none: `None` there.)
        let tr = ember_schedulers::TrainSchedule::new(
            full["num_train_timesteps"].as_u64().unwrap_or(1000) as usize,
            full.get("beta_start")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            full.get("beta_end").and_then(Value::as_f64).unwrap_or(0.0),
            serde_json::from_value(
                full.get("beta_schedule")
                    .cloned()
                    .unwrap_or(json!("linear")),
            )
            .unwrap(),
            None,
            false,
        )
        .ok();
        // The law, per coordinate: (mean, variance), from x = init_noise_sigma · z.
        let mut law: Vec<(f64, f64)> = mu
            .iter()
            .map(|_| (0.0, sch.init_noise_sigma().powi(2)))
            .collect();
        for (k, &t) in ts.iter().enumerate() {
            let last = k + 1 == ts.len();
            for (d, (m, v)) in law.iter_mut().enumerate() {
                if class == "LCMScheduler" {
                    let tr = tr.as_ref().expect("LCM has a training schedule");
                    let acp = tr.alphas_cumprod[t as usize];
                    let (dm, g) = affine_d(*m, mu[d], acp.sqrt(), (1.0 - acp).sqrt());
                    // denoised = c_skip x + c_out D(x) (boundary condition, σ_data = 0.5,
                    // timestep_scaling 10, as in diffusers' LCM).
                    let ts10 = t * full["timestep_scaling"].as_f64().unwrap_or(10.0);
                    let c_skip = 0.25 / (ts10 * ts10 + 0.25);
                    let c_out = ts10 / (ts10 * ts10 + 0.25).sqrt();
                    let (em, ev) = (c_skip * *m + c_out * dm, (c_skip + c_out * g).powi(2) * *v);
                    if last {
                        (*m, *v) = (em, ev);
                    } else {
                        let next = tr.alphas_cumprod[ts[k + 1] as usize];
                        (*m, *v) = (next.sqrt() * em, next * ev + (1.0 - next));
                    }
                } else if class == "TCDScheduler" {
                    // x̂₀ = D(x), ε̂ = (x − α x̂₀)/σ; DDIM to s: α_s x̂₀ + σ_s ε̂; then (not after
                    // the last step) forward noise from s to t'.
                    let tr = tr.as_ref().expect("TCD has a training schedule");
                    let acp = tr.alphas_cumprod[t as usize];
                    let (a, sg) = (acp.sqrt(), (1.0 - acp).sqrt());
                    let (dm, g) = affine_d(*m, mu[d], a, sg);
                    let t_next = if last { 0.0 } else { ts[k + 1] };
                    let gamma = full["eta"].as_f64().unwrap();
                    let s_idx = (((1.0 - gamma) as f32) * t_next as f32).floor() as usize;
                    let acs = tr.alphas_cumprod[s_idx];
                    let (a_s, s_s) = (acs.sqrt(), (1.0 - acs).sqrt());
                    let (cx, cd) = (s_s / sg, a_s - s_s * a / sg);
                    let (pm, pv) = (cx * *m + cd * dm, (cx + cd * g).powi(2) * *v);
                    if last {
                        (*m, *v) = (pm, pv);
                    } else {
                        let r = tr.alphas_cumprod[t_next as usize] / acs;
                        (*m, *v) = (r.sqrt() * pm, r * pv + (1.0 - r));
                    }
                } else {
                    let sig = sch.sigmas().unwrap();
                    let (sg, sn) = (sig[k], sig[k + 1]);
                    let (dm, g) = affine_d(*m, mu[d], 1.0 - sg, sg);
                    (*m, *v) = ((1.0 - sn) * dm, (1.0 - sn).powi(2) * g * g * *v + sn * sn);
                }
            }
        }
        let n = N as f64;
        for (d, &(m, v)) in law.iter().enumerate() {
            let col: Vec<f64> = x.data().iter().skip(d).step_by(2).copied().collect();
            let em = col.iter().sum::<f64>() / n;
            let ev = col.iter().map(|c| (c - em).powi(2)).sum::<f64>() / n;
            let (se_m, se_v) = ((v / n).sqrt(), v * (2.0 / n).sqrt());
            println!("{class:<34} coord {d}: mean {em:+.4} (law {m:+.4}, {:+.1} SE), var {ev:.4} (law {v:.4}, {:+.1} SE)", (em - m) / se_m, (ev - v) / se_v);
            if (em - m).abs() > 5.0 * se_m || (ev - v).abs() > 5.0 * se_v {
                failures.push(format!(
                    "{class} coord {d}: mean {em:.4} vs {m:.4}, var {ev:.4} vs {v:.4}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
