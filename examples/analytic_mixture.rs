//! Sample a 2-D Gaussian mixture through its exact denoiser with many schedulers.
//!
//! Each scheduler is built at run time from a diffusers-style config (`_class_name` picks
//! the type), the closed-form model answers in that scheduler's timestep units and
//! parameterisation, and the samples' statistics are compared with the true mixture.
//!
//! `cargo run -p ember-examples --example analytic_mixture [-- STEPS SAMPLES]`

use anyhow::{Context, Result};
use ember_core::analytic::GaussianMixture;
use ember_core::{HostTensor, NoiseSource, SampleTensor, Scheduler};
use ember_examples::sample_stats;
use ember_schedulers::analytic::AnalyticDenoiser;
use serde_json::json;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(25);
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let mixture = GaussianMixture::demo_2d();
    let truth = (
        mixture.mean(),
        mixture.covariance(),
        mixture.weights().to_vec(),
    );
    println!("Gaussian mixture, {n} samples, {steps} steps per scheduler");
    println!(
        "truth: mean [{:+.3} {:+.3}]  var [{:.3} {:.3}]  weights {:?}\n",
        truth.0[0],
        truth.0[1],
        truth.1[0],
        truth.1[3],
        round3(&truth.2)
    );
    println!(
        "{:<56} {:>17} {:>15} {:>22} {:>8}",
        "scheduler", "mean", "var", "weights", "|Δw|max"
    );
    let configs = [
        // DDPM and DDIM clip x̂₀ to [-1, 1] by default (image data); this data is wider.
        json!({"_class_name": "DDPMScheduler", "clip_sample": false}),
        json!({"_class_name": "DDIMScheduler", "clip_sample": false, "timestep_spacing": "trailing"}),
        json!({"_class_name": "PNDMScheduler", "skip_prk_steps": true}),
        json!({"_class_name": "EulerDiscreteScheduler"}),
        json!({"_class_name": "EulerAncestralDiscreteScheduler"}),
        json!({"_class_name": "HeunDiscreteScheduler", "use_karras_sigmas": true}),
        json!({"_class_name": "LMSDiscreteScheduler"}),
        json!({"_class_name": "KDPM2DiscreteScheduler"}),
        json!({"_class_name": "DPMSolverMultistepScheduler"}),
        json!({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}),
        json!({"_class_name": "UniPCMultistepScheduler"}),
        json!({"_class_name": "DEISMultistepScheduler"}),
        json!({"_class_name": "FlowMatchEulerDiscreteScheduler"}),
        json!({"_class_name": "EDMEulerScheduler"}),
    ];
    for cfg in configs {
        let mut scheduler = ember_schedulers::from_config_json::<HostTensor>(&cfg)
            .with_context(|| format!("building {cfg}"))?;
        let model = AnalyticDenoiser::for_config(mixture.clone(), &scheduler.config_json())?;
        let x = run(scheduler.as_mut(), &model, steps, n, 7)?;
        let s = sample_stats(&x, &mixture);
        let dw = s
            .weights
            .iter()
            .zip(&truth.2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let label = label(&cfg);
        println!(
            "{:<56} [{:+.3} {:+.3}] [{:.3} {:.3}] {:>22} {:>8.3}",
            label,
            s.mean[0],
            s.mean[1],
            s.covariance[0],
            s.covariance[3],
            format!("{:?}", round3(&s.weights)),
            dw
        );
    }
    Ok(())
}

/// The standard sampling loop, as a pipeline runs it.
fn run(
    scheduler: &mut dyn Scheduler<HostTensor>,
    model: &AnalyticDenoiser,
    steps: usize,
    n: usize,
    seed: u64,
) -> Result<HostTensor> {
    let noise = NoiseSource::new(seed);
    let shape = [n, model.mixture.dim()];
    scheduler.set_timesteps(steps)?;
    let mut x = noise
        .initial_noise(&shape, 0)
        .scale(scheduler.init_noise_sigma());
    for (k, t) in scheduler.timesteps().to_vec().into_iter().enumerate() {
        let input = scheduler.scale_model_input(&x, t)?;
        let out = model.predict(&input, t)?;
        let step_noise = scheduler
            .is_stochastic()
            .then(|| noise.step_noise(&shape, 0, k as u64));
        x = scheduler
            .step(&out, t, &x, step_noise.as_ref())?
            .prev_sample;
    }
    Ok(x)
}

/// `ClassName key=value ...` for a config.
fn label(cfg: &serde_json::Value) -> String {
    let obj = cfg.as_object().cloned().unwrap_or_default();
    let mut out = obj
        .get("_class_name")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .replace("Scheduler", "");
    for (k, v) in obj.iter().filter(|(k, _)| *k != "_class_name") {
        out.push_str(&format!(" {k}={}", v.to_string().trim_matches('"')));
    }
    out
}

fn round3(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect()
}
