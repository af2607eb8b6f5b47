//! The same model and the same seed under several schedulers, swapped at run time.
//!
//! A diffusers pipeline folder is loaded once per scheduler with
//! `SchedulerChoice::ClassName`, i.e. the new scheduler class is built from the folder's own
//! `scheduler_config.json` (diffusers' `NewScheduler.from_config(pipe.scheduler.config)`).
//! Every run starts from the same seeded noise. For each scheduler and step count the
//! example prints the number of model evaluations (counted by a wrapper around the model),
//! the wall time of the sampling loop, and the largest absolute difference of the result
//! from a 200-step DDIM reference run on the same noise, so you can watch the ODE solvers
//! converge towards the same image as the step count grows.
//!
//! To make the runs comparable, each swapped scheduler is rebuilt with two keys overridden:
//! `timestep_spacing: "trailing"`, so that every run starts at the last training timestep
//! (the folder's `leading` spacing starts lower the fewer steps are taken, e.g. at t = 900
//! for 10 steps, which changes the problem, not only its discretisation), and
//! `clip_sample: false`, because DDIM and Heun clamp x̂₀ to [-1, 1] under the folder's
//! `clip_sample: true` while the other solvers have no such option, so a clipped run is not
//! the limit they converge to. The reference is DDIM with the same overrides. DDIM and Euler
//! are the same first-order method on this ODE (Euler in σ with ε-prediction *is* DDIM), so
//! their rows agree; the higher-order solvers get closer with the same number of model
//! evaluations, until they reach the reference's own first-order error (a few units here).
//!
//! The last two rows use the folder's config as is. DDIM then clips x̂₀ at every step and
//! DDPM (the folder's own scheduler) is stochastic: both land on a different image, inside
//! [-1, 1], and do not approach the unclipped ODE reference.
//! Only schedulers that fit an ε-predicting DDPM model are used (no flow matching, no EDM).
//!
//! The built-in model is the tiny test pipeline `crates/pipelines/tests/fixtures/ddpm_tiny`
//! (a 3×16×16 `UNet2DModel` with random weights): its "images" are not pretty, and its
//! unclipped ODE drifts to values in the hundreds, but every scheduler still solves the same
//! ODE. Point the example at any other diffusers
//! `DDPMPipeline`-style folder (e.g. one you trained) to compare real samples.
//! Nothing is written to disk.
//!
//! `cargo run -p ember-examples --example schedulers_side_by_side [-- PIPELINE_DIR]`

use anyhow::{Context, Result};
use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::Tensor;
use ember_core::{Conditioning, Denoiser, Prediction, Scheduler};
use ember_pipelines::{
    load_pipeline, no_hook, sample_from_noise, seeded_noise, SampleOptions, SchedulerChoice,
};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

/// Counts the model evaluations of whatever it wraps.
struct Counting<'a, M> {
    inner: &'a M,
    calls: Cell<usize>,
}

impl<M: Denoiser<B, 4>> Denoiser<B, 4> for Counting<'_, M> {
    fn prediction(&self) -> Prediction {
        self.inner.prediction()
    }
    fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        conditioning: &Conditioning<B>,
    ) -> ember_core::Result<Tensor<B, 4>> {
        self.calls.set(self.calls.get() + 1);
        self.inner.forward(sample, timesteps, conditioning)
    }
}

/// How a run's scheduler is configured.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// The swapped scheduler exactly as `SchedulerChoice::ClassName` builds it.
    AsIs,
    /// The swapped scheduler with `timestep_spacing: "trailing"` and x̂₀ clipping off, so
    /// that every run solves the same ODE from the same noise level.
    SameOde,
}

/// Rebuilds `scheduler` with the [`Setup::SameOde`] overrides.
fn same_ode(scheduler: &dyn Scheduler<Tensor<B, 4>>) -> Result<Box<dyn Scheduler<Tensor<B, 4>>>> {
    let mut cfg = scheduler.config_json();
    cfg["timestep_spacing"] = "trailing".into();
    if cfg.get("clip_sample").is_some() {
        cfg["clip_sample"] = false.into();
    }
    Ok(ember_schedulers::from_config_json(&cfg)?)
}

/// One sampling run: the result, the number of model evaluations and the seconds it took.
fn run(
    dir: &std::path::Path,
    class_name: &str,
    setup: Setup,
    noise: &Tensor<B, 4>,
    steps: usize,
) -> Result<(Tensor<B, 4>, usize, f64)> {
    let device = Default::default();
    // The swap: the folder's scheduler_config.json, read as `class_name`.
    let pipe = load_pipeline::<B>(
        dir,
        &SchedulerChoice::ClassName(class_name.to_string()),
        &device,
    )
    .with_context(|| format!("loading {} with {class_name}", dir.display()))?;
    let mut scheduler = match setup {
        Setup::AsIs => pipe.scheduler,
        Setup::SameOde => same_ode(pipe.scheduler.as_ref())?,
    };
    let model = Counting {
        inner: &pipe.unet,
        calls: Cell::new(0),
    };
    let start = Instant::now();
    let x = sample_from_noise(
        &model,
        scheduler.as_mut(),
        &Conditioning::none(),
        noise.clone(),
        &SampleOptions::new(steps, SEED),
        &mut no_hook(),
    )?;
    // Read the result back so that the clock includes all the backend's work.
    let x = Tensor::<B, 4>::from_data(x.into_data(), &device);
    Ok((x, model.calls.get(), start.elapsed().as_secs_f64()))
}

fn max_abs_diff(a: &Tensor<B, 4>, b: &Tensor<B, 4>) -> f32 {
    (a.clone() - b.clone()).abs().max().into_scalar()
}

const SEED: u64 = 2024;
const STEPS: [usize; 3] = [10, 20, 50];

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../crates/pipelines/tests/fixtures/ddpm_tiny")
        });
    let device = Default::default();
    let probe = load_pipeline::<B>(&dir, &SchedulerChoice::Folder, &device)
        .with_context(|| format!("loading pipeline folder {}", dir.display()))?;
    let channels = probe.unet.config().in_channels;
    let size = ember_examples::unet_sample_size(&dir)?;
    let shape = [1, channels, size, size];
    println!(
        "{} from {} ({} scheduler in the folder), batch {:?}, seed {SEED}",
        probe.class_name,
        dir.display(),
        probe.scheduler.class_name(),
        shape
    );
    // The same initial noise for every run (sample i uses seed stream i).
    let noise = seeded_noise::<B, 4>(&ember_core::NoiseSource::new(SEED), shape, 0, 0, &device);

    // The reference: 200 DDIM steps of the same ODE.
    let (reference, ref_nfe, ref_secs) = run(&dir, "DDIMScheduler", Setup::SameOde, &noise, 200)?;
    let ref_max: f32 = reference.clone().abs().max().into_scalar();
    println!(
        "reference: DDIMScheduler, 200 steps (trailing, no clipping): {ref_nfe} model \
         evaluations, {ref_secs:.2} s, max|ref| = {ref_max:.3}\n"
    );

    let schedulers = [
        ("DDIMScheduler", "DDIM", Setup::SameOde),
        ("EulerDiscreteScheduler", "Euler", Setup::SameOde),
        (
            "HeunDiscreteScheduler",
            "Heun (2 evals/step)",
            Setup::SameOde,
        ),
        (
            "DPMSolverMultistepScheduler",
            "DPM-Solver++ 2M",
            Setup::SameOde,
        ),
        ("UniPCMultistepScheduler", "UniPC (bh2)", Setup::SameOde),
        ("DEISMultistepScheduler", "DEIS (order 2)", Setup::SameOde),
        ("PNDMScheduler", "PNDM (PRK warm-up + PLMS)", Setup::SameOde),
        ("DDIMScheduler", "DDIM, folder config as is", Setup::AsIs),
        (
            "DDPMScheduler",
            "DDPM, folder's own (stochastic)",
            Setup::AsIs,
        ),
    ];
    println!(
        "{:<34} {:>6} {:>6} {:>9} {:>14}",
        "scheduler", "steps", "NFE", "time", "max|x - ref|"
    );
    for (class_name, label, setup) in schedulers {
        for steps in STEPS {
            let (x, nfe, secs) = run(&dir, class_name, setup, &noise, steps)?;
            println!(
                "{:<34} {:>6} {:>6} {:>7.3} s {:>14.5}",
                label,
                steps,
                nfe,
                secs,
                max_abs_diff(&x, &reference)
            );
        }
    }
    Ok(())
}
