//! The training loop.
//!
//! One optimizer step is `grad_accumulation` micro-batches, each split over the devices:
//! draw the micro-batch (burn [`Dataset`] + [`Batcher`]), its noise, timesteps and dropout
//! from the counter-based stream of its index, noise it with the scheduler's `add_noise`,
//! regress the scheduler's target, weight per sample, backpropagate; then clip the global
//! gradient norm, step AdamW at the scheduled learning rate and update the EMA.
//!
//! Because every random draw is a pure function of `(seed, micro-batch index)`, the state
//! a checkpoint needs is the weights, the optimizer's moments, the EMA and the step; a
//! resumed run draws exactly what the uninterrupted run would have.

use crate::checkpoint::{self, RngState, TrainState};
use crate::config::TrainConfig;
use crate::data::{self, RunData};
use crate::ema::Ema;
use crate::model::TrainableModel;
use crate::schedule::learning_rate;
use burn::backend::Autodiff;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ember_core::{Conditioning, Denoiser, Error, HostTensor, Prediction, Result, Scheduler};
use ember_data::batch::{Example, ExampleBatcher, Examples};
use ember_models::mlp::MLP_CLASS_NAME;
use ember_models::{EmberBackend, MlpDenoiser, UNet2D};
use ember_pipelines::guidance::ClassifierFreeGuidance;
use ember_pipelines::sampling::{no_hook, sample, SampleOptions};
use ember_schedulers::registry;
use ember_schedulers::training::{
    continuous_to_index, min_snr_weight, TimestepDensity, TimestepSampler,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run (as opposed to what to train, which is the [`TrainConfig`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Continue from the newest checkpoint in the output folder when there is one.
    pub resume: bool,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            resume: true,
            verbose: true,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps done in total (including those before a resume).
    pub steps: usize,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Mean training loss of the last (up to) 100 steps of this process.
    pub final_loss: f64,
    /// Seconds spent in training steps in this process (no checkpoints or sampling).
    pub train_seconds: f64,
    /// Steps per second over those seconds.
    pub steps_per_second: f64,
    /// The last validation loss, if any was computed.
    pub validation_loss: Option<f64>,
    /// The diffusers-format pipeline folder written at the end.
    pub pipeline_dir: PathBuf,
}

/// Name of the per-step log in the output folder (one JSON object per line).
pub const LOG_FILE: &str = "train_log.jsonl";
/// Name of the final pipeline folder inside the output folder.
pub const PIPELINE_DIR: &str = "pipeline";

/// Trains the model the config describes on `devices` (the first holds the optimizer;
/// several devices split each micro-batch between them, data-parallel).
pub fn train<B: EmberBackend>(
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<TrainSummary> {
    match config.model_class() {
        "UNet2DModel" => run::<B, UNet2D<Autodiff<B>>, 4>(config, options, devices),
        MLP_CLASS_NAME => run::<B, MlpDenoiser<Autodiff<B>>, 2>(config, options, devices),
        other => Err(Error::unknown(
            "model._class_name",
            other,
            &["UNet2DModel", MLP_CLASS_NAME],
        )),
    }
}

/// A 64-bit mixer (splitmix64's finaliser) to key independent streams.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STREAM_ORDER: u64 = 1;
const STREAM_DRAWS: u64 = 2;
const STREAM_TIMESTEPS: u64 = 3;
const STREAM_VALIDATION: u64 = 4;
const STREAM_INIT: u64 = 5;

/// Everything random about one micro-batch.
struct Draws {
    u: Vec<f64>,
    drop: Vec<bool>,
    flip: Vec<bool>,
    noise: Vec<f32>,
}

impl Draws {
    /// The draws of micro-batch `index` of `stream`: `n` examples of `per` values each.
    fn new(
        seed: u64,
        stream: u64,
        index: u64,
        n: usize,
        per: usize,
        objective: &Objective,
    ) -> Result<Self> {
        let key = mix(mix(seed, stream), index);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        let drop = (0..n)
            .map(|_| rng.random::<f64>() < objective.condition_dropout)
            .collect();
        let flip = (0..n).map(|_| rng.random::<f64>() < 0.5).collect();
        let noise = (0..n * per)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect::<Vec<f32>>();
        let u = TimestepSampler::new(mix(key, STREAM_TIMESTEPS)).sample(&objective.density, n)?;
        Ok(Self {
            u,
            drop,
            flip,
            noise,
        })
    }
}

fn timestep_density(config: &TrainConfig) -> TimestepDensity {
    match config.objective.timestep_sampling.as_str() {
        "logit_normal" => TimestepDensity::LogitNormal {
            logit_mean: config.objective.logit_mean,
            logit_std: config.objective.logit_std,
        },
        _ => TimestepDensity::Uniform,
    }
}

/// The per-run constants the loss needs.
struct Objective {
    prediction: Prediction,
    /// Training timesteps by index (`0..T` for discrete schedules, the scheduler's own for
    /// flow matching).
    train_timesteps: Vec<f64>,
    probe: Box<dyn Scheduler<HostTensor>>,
    min_snr_gamma: Option<f64>,
    condition_dropout: f64,
    null_class: Option<usize>,
    /// Whether the model takes class labels (an unconditional model ignores the data's).
    use_labels: bool,
    density: TimestepDensity,
    random_flip: bool,
}

impl Objective {
    fn timesteps(&self, u: &[f64]) -> Result<Vec<f64>> {
        Ok(continuous_to_index(u, self.train_timesteps.len())?
            .into_iter()
            .map(|i| self.train_timesteps[i])
            .collect())
    }

    /// Min-SNR-γ weights from the scheduler's own noising: α and σ are what `add_noise`
    /// does to a clean 1 and to a unit noise.
    fn weights(&self, timesteps: &[f64]) -> Result<Option<Vec<f32>>> {
        let Some(gamma) = self.min_snr_gamma else {
            return Ok(None);
        };
        let n = timesteps.len();
        let ones = HostTensor::new(vec![n, 1], vec![1.0; n])?;
        let zeros = HostTensor::zeros(&[n, 1]);
        let alpha = self.probe.add_noise(&ones, &zeros, timesteps)?;
        let sigma = self.probe.add_noise(&zeros, &ones, timesteps)?;
        alpha
            .data()
            .iter()
            .zip(sigma.data())
            .map(|(a, s)| {
                let snr = if *s == 0.0 {
                    f64::INFINITY
                } else {
                    (a / s).powi(2)
                };
                min_snr_weight(snr, gamma, self.prediction).map(|w| w as f32)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The weighted loss of one (shard of a) micro-batch, on any backend.
#[allow(clippy::too_many_arguments)]
fn batch_loss<B: Backend, M: Denoiser<B, D>, const D: usize>(
    model: &M,
    scheduler: &dyn Scheduler<Tensor<B, D>>,
    objective: &Objective,
    x0: Tensor<B, D>,
    labels: Option<Tensor<B, 1, Int>>,
    noise: Tensor<B, D>,
    timesteps: &[f64],
    weights: Option<Vec<f32>>,
) -> Result<Tensor<B, 1>> {
    let device = x0.device();
    let b = x0.dims()[0];
    let x_t = scheduler.add_noise(&x0, &noise, timesteps)?;
    let target = match objective.prediction {
        Prediction::Epsilon => noise,
        Prediction::Sample => x0,
        Prediction::VPrediction => scheduler.get_velocity(&x0, &noise, timesteps)?,
        Prediction::FlowPrediction => noise - x0,
    };
    let t = Tensor::<B, 1>::from_data(
        TensorData::new(timesteps.iter().map(|&t| t as f32).collect(), [b]),
        &device,
    );
    let conditioning = match labels {
        Some(l) => Conditioning::with_class_labels(l),
        None => Conditioning::none(),
    };
    let out = model.forward(x_t, t, &conditioning)?;
    let per_sample: Tensor<B, 2> = (out - target)
        .powi_scalar(2)
        .reshape([b as i32, -1])
        .mean_dim(1);
    let per_sample = match weights {
        Some(w) => per_sample * Tensor::<B, 2>::from_data(TensorData::new(w, [b, 1]), &device),
        None => per_sample,
    };
    Ok(per_sample.mean())
}

/// Global L2 norm of the gradients, and scaling them in place (`clip_grad_norm_`).
struct GradNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct GradScale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for GradScale<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
        param
    }
}

/// Clips the global gradient norm to `max_norm` (when given) and returns the norm before.
fn clip_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    grads: &mut GradientsParams,
    max_norm: Option<f64>,
) -> (M, f64) {
    let mut norm = GradNorm::<B> { grads, sum: None };
    model.visit(&mut norm);
    let total = norm
        .sum
        .map(|s| s.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0);
    match max_norm {
        // torch: grads × max_norm / (total + 1e-6) when that factor is below 1.
        Some(max) if total > max => {
            let mut scale = GradScale::<B> {
                grads,
                factor: max / (total + 1e-6),
                _b: std::marker::PhantomData,
            };
            (model.map(&mut scale), total)
        }
        _ => (model, total),
    }
}

use burn::tensor::ElementConversion;

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Checks the data against the model before anything runs.
fn check_data<B: EmberBackend, M: TrainableModel<B, D>, const D: usize>(
    model: &M,
    data: &RunData,
    config: &TrainConfig,
) -> Result<Option<usize>> {
    let shape = data.train.example_shape();
    let expected = model.example_shape();
    let fits = shape.len() == expected.len()
        && shape
            .iter()
            .zip(&expected)
            .all(|(s, e)| e.is_none_or(|e| e == *s));
    if !fits {
        return Err(Error::config(
            "model",
            format!(
                "the model takes examples of shape {expected:?} (None: any size) but the data's are {shape:?}"
            ),
        ));
    }
    let classes = data.train.num_classes();
    let dropout = config.objective.condition_dropout;
    match model.num_class_embeds() {
        None => {
            if dropout > 0.0 {
                return Err(Error::config(
                    "objective.condition_dropout",
                    "the model has no class embedding (num_class_embeds) to drop",
                ));
            }
            Ok(None)
        }
        Some(rows) => {
            if !data.train.is_labelled() {
                return Err(Error::config(
                    "model.num_class_embeds",
                    "a class-conditional model needs labelled data",
                ));
            }
            let needed = classes + usize::from(dropout > 0.0);
            if rows != needed {
                return Err(Error::config(
                    "model.num_class_embeds",
                    format!(
                        "must be {needed} ({classes} classes{}), got {rows}",
                        if dropout > 0.0 {
                            " + the null class"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok((dropout > 0.0).then_some(classes))
        }
    }
}

/// Index of the training examples for micro-batch `j` (epochs of seeded permutations;
/// the incomplete last batch of an epoch is dropped).
struct Order {
    seed: u64,
    n: usize,
    batch: usize,
    epoch: Option<(u64, Vec<usize>)>,
}

impl Order {
    fn indices(&mut self, j: u64) -> Vec<usize> {
        let per_epoch = (self.n / self.batch) as u64;
        let (epoch, within) = (j / per_epoch, (j % per_epoch) as usize);
        if self.epoch.as_ref().map(|e| e.0) != Some(epoch) {
            let perm = ember_data::split::shuffled_indices(
                self.n,
                mix(mix(self.seed, STREAM_ORDER), epoch),
            );
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().map(|e| &e.1).expect("set above");
        perm[within * self.batch..(within + 1) * self.batch].to_vec()
    }
}

fn run<B, M, const D: usize>(
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<TrainSummary>
where
    B: EmberBackend,
    M: TrainableModel<Autodiff<B>, D> + AutodiffModule<Autodiff<B>>,
    M::InnerModule: TrainableModel<B, D>,
{
    type AB<B> = Autodiff<B>;
    let device = devices
        .first()
        .ok_or_else(|| Error::argument("devices", "at least one device is needed"))?
        .clone();
    let out = config.output_dir.clone();
    let say = |msg: String| {
        if options.verbose {
            eprintln!("{msg}");
        }
    };

    // --- Everything that can fail on input, before any step. ---
    let scheduler = registry::from_config_json::<Tensor<AB<B>, D>>(&config.scheduler)?;
    let eval_scheduler = registry::from_config_json::<Tensor<B, D>>(&config.scheduler)?;
    let probe = registry::from_config_json::<HostTensor>(&config.scheduler)?;
    let prediction = scheduler.prediction();
    let t_count = scheduler.num_train_timesteps();
    let train_timesteps = if prediction == Prediction::FlowPrediction {
        let ts = scheduler.timesteps().to_vec();
        if ts.len() != t_count {
            return Err(Error::config(
                "scheduler",
                "flow matching trains on the scheduler's own training timesteps, which it does not list",
            ));
        }
        ts
    } else {
        (0..t_count).map(|i| i as f64).collect()
    };
    for name in &config.sampling.schedulers {
        registry::from_class_name::<HostTensor>(name, Some(&config.scheduler))?;
    }
    let data = data::load(&config.data, config.seed)?;
    let batch = config.train.batch_size;
    if data.train.len() < batch {
        return Err(Error::config(
            "train.batch_size",
            format!(
                "{batch} is more than the {} training examples",
                data.train.len()
            ),
        ));
    }
    if config.data.random_flip && D != 4 {
        return Err(Error::config(
            "data.random_flip",
            "only images can be flipped",
        ));
    }
    // Same initialisation for the same seed: burn draws initial weights from its backend
    // RNG, which is seeded here.
    B::seed(&device, mix(config.seed, STREAM_INIT));
    let fresh_model = M::from_config(&config.model, prediction, &device)?;
    let null_class = check_data::<AB<B>, M, D>(&fresh_model, &data, config)?;
    let objective = Objective {
        prediction,
        train_timesteps,
        probe,
        min_snr_gamma: (config.objective.loss_weighting == "min_snr")
            .then_some(config.objective.min_snr_gamma),
        condition_dropout: config.objective.condition_dropout,
        null_class,
        use_labels: fresh_model.num_class_embeds().is_some(),
        density: timestep_density(config),
        random_flip: config.data.random_flip,
    };
    let config_json = serde_json::to_value(config).map_err(|e| Error::Parse {
        what: "config".into(),
        message: e.to_string(),
    })?;
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    data::write_split(&data.split, &out)?;
    ember_models::weights::write_atomic(
        &out.join("train_config.json"),
        serde_json::to_string_pretty(&config_json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    checkpoint::remove_partial(&out)?;

    let p = &config.optimizer;
    let mut optim = AdamWConfig::new()
        .with_beta_1(p.betas[0] as f32)
        .with_beta_2(p.betas[1] as f32)
        .with_epsilon(p.epsilon as f32)
        .with_weight_decay(p.weight_decay as f32)
        .init::<AB<B>, M>();

    // --- Resume. ---
    let mut model = fresh_model;
    let mut ema = config.ema.enabled.then(|| Ema::new(model.valid()));
    let mut start = 0usize;
    let mut resumed_from = None;
    if options.resume {
        if let Some((step, dir)) = checkpoint::list(&out)?.pop() {
            let state = checkpoint::read_state(&dir)?;
            if state.config != config_json {
                return Err(Error::Checkpoint {
                    path: dir.display().to_string(),
                    message: "was written by a different config; use another output_dir or --fresh"
                        .into(),
                });
            }
            model = model
                .load_file(dir.join("model"), &recorder(), &device)
                .map_err(|e| ckpt_err(&dir, e))?;
            let record = Recorder::<AB<B>>::load(&recorder(), dir.join("optimizer"), &device)
                .map_err(|e| ckpt_err(&dir, e))?;
            optim = optim.load_record(record);
            if let Some(ema) = ema.as_mut() {
                ema.model = ema
                    .model
                    .clone()
                    .load_file(dir.join("ema"), &recorder(), &device)
                    .map_err(|e| ckpt_err(&dir, e))?;
                ema.optimization_step = state.ema_optimization_step;
            }
            start = step;
            resumed_from = Some(step);
            say(format!("resuming from {} (step {step})", dir.display()));
        }
    }
    let log_path = out.join(LOG_FILE);
    truncate_log(&log_path, start)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;

    let batcher = ExampleBatcher::<D>::new(&data.train)?;
    let per = data.train.example_len();
    let width = *data.train.example_shape().last().unwrap_or(&1);
    let accumulation = p.grad_accumulation;
    let total = config.train.steps;
    let mut order = Order {
        seed: config.seed,
        n: data.train.len(),
        batch,
        epoch: None,
    };
    let mut recent = std::collections::VecDeque::new();
    let mut train_seconds = 0.0;
    let mut validation_loss = None;
    say(format!(
        "training {} ({} parameters) on {} examples, steps {start}..{total}",
        config.model_class(),
        model.num_params(),
        data.train.len()
    ));

    for step in start..total {
        let started = Instant::now();
        let lr = learning_rate(p, step, total);
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut step_loss = 0.0;
        for a in 0..accumulation {
            let j = (step * accumulation + a) as u64;
            let indices = order.indices(j);
            let draws = Draws::new(config.seed, STREAM_DRAWS, j, batch, per, &objective)?;
            let timesteps = objective.timesteps(&draws.u)?;
            let weights = objective.weights(&timesteps)?;
            let shards = shard_ranges(batch, devices.len());
            for (shard, range) in shards.iter().enumerate() {
                let shard_device = &devices[shard];
                let replica = if shard == 0 {
                    model.clone()
                } else {
                    model.clone().fork(shard_device)
                };
                let items = micro_batch_items(
                    &data.train,
                    &indices[range.clone()],
                    &draws,
                    range.start,
                    &objective,
                    width,
                )?;
                let examples = batcher.try_batch::<AB<B>>(items, shard_device)?;
                let noise = Tensor::<AB<B>, D>::from_data(
                    TensorData::new(
                        draws.noise[range.start * per..range.end * per].to_vec(),
                        examples.samples.shape(),
                    ),
                    shard_device,
                );
                let loss = batch_loss(
                    &replica,
                    &*scheduler,
                    &objective,
                    examples.samples,
                    examples.labels,
                    noise,
                    &timesteps[range.clone()],
                    weights.as_ref().map(|w| w[range.clone()].to_vec()),
                )?;
                let share = range.len() as f64 / batch as f64 / accumulation as f64;
                let loss = loss.mul_scalar(share);
                step_loss += loss.clone().into_scalar().elem::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &replica);
                let grads = if shard == 0 {
                    grads
                } else {
                    grads.to_device(&device, &model)
                };
                accumulator.accumulate(&model, grads);
            }
        }
        let mut grads = accumulator.grads();
        let (m, grad_norm) = clip_gradients(model, &mut grads, p.grad_clip_norm);
        model = optim.step(lr, m, grads);
        if let Some(ema) = ema.as_mut() {
            ema.update::<B>(&model.valid(), &config.ema)?;
        }
        if !step_loss.is_finite() {
            return Err(Error::NonFinite {
                what: format!("training loss at step {}", step + 1),
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        train_seconds += seconds;
        recent.push_back(step_loss);
        if recent.len() > 100 {
            recent.pop_front();
        }
        let done = step + 1;
        writeln!(
            log,
            "{{\"step\":{done},\"loss\":{step_loss:e},\"lr\":{lr:e},\"grad_norm\":{grad_norm:e},\"seconds\":{seconds:.4}}}"
        )
        .and_then(|_| log.flush())
        .map_err(io(&log_path))?;
        if config.train.log_every > 0 && (done % config.train.log_every == 0 || done == total) {
            let done_here = (done - start) as f64;
            let rate = done_here / train_seconds.max(1e-9);
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            say(format!(
                "step {done:>6}/{total}  loss {step_loss:.5} (mean {mean:.5})  lr {lr:.2e}  |g| {grad_norm:.3}  {rate:.2} steps/s  eta {:.0} s",
                (total - done) as f64 / rate
            ));
        }
        let checkpoint_now =
            config.train.checkpoint_every > 0 && done % config.train.checkpoint_every == 0;
        if checkpoint_now || done == total {
            validation_loss = validate::<B, M::InnerModule, D>(
                ema.as_ref().map_or(&model.valid(), |e| &e.model),
                &*eval_scheduler,
                &objective,
                &data.validation,
                config,
                &device,
            )?;
            if let Some(v) = validation_loss {
                say(format!("step {done:>6}: validation loss {v:.5}"));
                writeln!(log, "{{\"step\":{done},\"validation_loss\":{v:e}}}")
                    .and_then(|_| log.flush())
                    .map_err(io(&log_path))?;
            }
            let staging = checkpoint::begin(&out, done)?;
            model
                .clone()
                .save_file(staging.join("model"), &recorder())
                .map_err(|e| ckpt_err(&staging, e))?;
            Recorder::<AB<B>>::record(
                &recorder(),
                optim.to_record(),
                staging.join("optimizer.mpk"),
            )
            .map_err(|e| ckpt_err(&staging, e))?;
            if let Some(ema) = &ema {
                ema.model
                    .clone()
                    .save_file(staging.join("ema"), &recorder())
                    .map_err(|e| ckpt_err(&staging, e))?;
            }
            let state = TrainState {
                step: done,
                rng: RngState {
                    seed: config.seed,
                    next_micro_batch: (done * accumulation) as u64,
                },
                ema_optimization_step: ema.as_ref().map_or(0, |e| e.optimization_step),
                config: config_json.clone(),
            };
            let dir = checkpoint::commit(&staging, &out, &state)?;
            checkpoint::prune(&out, config.train.keep_checkpoints)?;
            say(format!("step {done:>6}: checkpoint {}", dir.display()));
        }
        let sample_now = config.train.sample_every > 0 && done % config.train.sample_every == 0;
        if sample_now || done == total {
            let averaged = ema.as_ref().map_or(model.valid(), |e| e.model.clone());
            for path in write_samples::<B, M::InnerModule, D>(
                &averaged,
                &data.train,
                config,
                done,
                &device,
            )? {
                say(format!("step {done:>6}: samples {}", path.display()));
            }
        }
    }

    let final_model = ema.as_ref().map_or(model.valid(), |e| e.model.clone());
    let pipeline_dir =
        write_pipeline::<B, M::InnerModule, D>(&final_model, &*eval_scheduler, &out)?;
    say(format!("wrote {}", pipeline_dir.display()));
    let steps_here = total.saturating_sub(start);
    Ok(TrainSummary {
        steps: total,
        resumed_from,
        final_loss: if recent.is_empty() {
            f64::NAN
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        },
        train_seconds,
        steps_per_second: steps_here as f64 / train_seconds.max(1e-9),
        validation_loss,
        pipeline_dir,
    })
}

/// Contiguous, near-equal parts of a batch, one per device.
fn shard_ranges(batch: usize, devices: usize) -> Vec<std::ops::Range<usize>> {
    let parts = devices.clamp(1, batch);
    (0..parts)
        .map(|k| (k * batch / parts)..((k + 1) * batch / parts))
        .collect()
}

/// The examples at `indices` through burn's [`Dataset`], with their draw-dependent
/// augmentation and conditioning dropout.
fn micro_batch_items(
    set: &Examples,
    indices: &[usize],
    draws: &Draws,
    offset: usize,
    objective: &Objective,
    width: usize,
) -> Result<Vec<Example>> {
    indices
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let mut item = set.get(i).ok_or_else(|| {
                Error::argument("indices", format!("example {i} is out of range"))
            })?;
            if objective.random_flip && draws.flip[offset + k] {
                ember_data::transforms::horizontal_flip(&mut item.values, width);
            }
            if !objective.use_labels {
                item.label = None;
            } else if let (Some(null), true) = (objective.null_class, draws.drop[offset + k]) {
                item.label = Some(null);
            }
            Ok(item)
        })
        .collect()
}

/// Loss of the (EMA) model on up to `validation_examples` held-out examples, with draws
/// that are the same at every evaluation.
fn validate<B: EmberBackend, M: TrainableModel<B, D>, const D: usize>(
    model: &M,
    scheduler: &dyn Scheduler<Tensor<B, D>>,
    objective: &Objective,
    set: &Examples,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<Option<f64>> {
    let n = set.len().min(config.train.validation_examples);
    if n == 0 {
        return Ok(None);
    }
    let batcher = ExampleBatcher::<D>::new(set)?;
    let per = set.example_len();
    let mut sum = 0.0;
    for (k, start) in (0..n).step_by(config.train.batch_size).enumerate() {
        let end = (start + config.train.batch_size).min(n);
        let b = end - start;
        let draws = Draws::new(config.seed, STREAM_VALIDATION, k as u64, b, per, objective)?;
        let items = (start..end)
            .map(|i| {
                set.get(i)
                    .map(|mut item| {
                        if !objective.use_labels {
                            item.label = None;
                        }
                        item
                    })
                    .ok_or_else(|| Error::argument("validation", "index out of range"))
            })
            .collect::<Result<Vec<_>>>()?;
        let examples = batcher.try_batch::<B>(items, device)?;
        let noise = Tensor::<B, D>::from_data(
            TensorData::new(draws.noise, examples.samples.shape()),
            device,
        );
        let timesteps = objective.timesteps(&draws.u)?;
        let weights = objective.weights(&timesteps)?;
        let loss = batch_loss(
            model,
            scheduler,
            objective,
            examples.samples,
            examples.labels,
            noise,
            &timesteps,
            weights,
        )?;
        sum += loss.into_scalar().elem::<f64>() * b as f64;
    }
    Ok(Some(sum / n as f64))
}

/// Samples a grid per configured scheduler from `model`: one row per class
/// (`samples_per_class` each, guided) or `samples_per_class` unconditional samples.
/// Returns the files written (`samples/step-N-<Scheduler>.png`).
pub fn write_samples<B: EmberBackend, M: TrainableModel<B, D>, const D: usize>(
    model: &M,
    train: &Examples,
    config: &TrainConfig,
    step: usize,
    device: &B::Device,
) -> Result<Vec<PathBuf>> {
    let dir = config.output_dir.join("samples");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut written = Vec::new();
    let names = if config.sampling.schedulers.is_empty() {
        vec![config
            .scheduler
            .get("_class_name")
            .and_then(|v| v.as_str())
            .unwrap_or("DDPMScheduler")
            .to_string()]
    } else {
        config.sampling.schedulers.clone()
    };
    for name in names {
        let Generated {
            values: samples,
            shape,
            labels,
        } = generate(model, train, config, &name, device)?;
        let path = dir.join(format!("step-{step:08}-{name}.png"));
        model.write_preview(
            &samples,
            shape,
            labels.as_deref(),
            config.sampling.samples_per_class,
            &path,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Samples drawn by [`generate`].
#[derive(Debug, Clone)]
pub struct Generated<const D: usize> {
    /// The samples, row-major.
    pub values: Vec<f32>,
    /// Their shape.
    pub shape: [usize; D],
    /// The label each was asked for (class-conditional models).
    pub labels: Option<Vec<usize>>,
}

/// Draws `samples_per_class` samples per class (or in total) with the scheduler class
/// `scheduler_name`, guided at the configured scale.
pub fn generate<B: EmberBackend, M: TrainableModel<B, D>, const D: usize>(
    model: &M,
    train: &Examples,
    config: &TrainConfig,
    scheduler_name: &str,
    device: &B::Device,
) -> Result<Generated<D>> {
    let mut scheduler =
        registry::from_class_name::<Tensor<B, D>>(scheduler_name, Some(&config.scheduler))?;
    let spc = config.sampling.samples_per_class;
    let classes = model.num_class_embeds().map(|_| train.num_classes());
    let labels: Option<Vec<usize>> =
        classes.map(|k| (0..k).flat_map(|c| std::iter::repeat_n(c, spc)).collect());
    let n = labels.as_ref().map_or(spc, |l| l.len());
    let mut shape = [0usize; D];
    shape[0] = n;
    shape[1..].copy_from_slice(train.example_shape());
    let options = SampleOptions::new(config.sampling.steps, config.sampling.seed);
    let to_tensor = |v: &[usize]| {
        Tensor::<B, 1, Int>::from_data(
            TensorData::new(v.iter().map(|&l| l as i64).collect(), [v.len()]),
            device,
        )
    };
    let conditioning = match &labels {
        Some(l) => Conditioning::with_class_labels(to_tensor(l)),
        None => Conditioning::none(),
    };
    let scale = config.sampling.guidance_scale;
    let num_rows = model.num_class_embeds();
    // Class-conditional models sample through the guidance wrapper (a single unguided
    // pass at scale 1); unconditional ones directly.
    let guided;
    let denoiser: &dyn Denoiser<B, D> = match &labels {
        Some(l) => {
            let null = num_rows.map(|r| r - 1).unwrap_or(0);
            let uncond = Conditioning::with_class_labels(to_tensor(&vec![null; l.len()]));
            guided = ClassifierFreeGuidance::new(model, scale, uncond)?;
            &guided
        }
        None => model,
    };
    let x = sample(
        denoiser,
        &mut *scheduler,
        &conditioning,
        shape,
        &options,
        device,
        &mut no_hook(),
    )?;
    let values = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::State(format!("cannot read samples back: {e:?}")))?;
    Ok(Generated {
        values,
        shape,
        labels,
    })
}

/// Writes `OUT/pipeline/`: the model folder, `scheduler/scheduler_config.json` and
/// `model_index.json`, staged and renamed into place.
fn write_pipeline<B: EmberBackend, M: TrainableModel<B, D>, const D: usize>(
    model: &M,
    scheduler: &dyn Scheduler<Tensor<B, D>>,
    out: &Path,
) -> Result<PathBuf> {
    let target = out.join(PIPELINE_DIR);
    let staging = out.join(format!(".{PIPELINE_DIR}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    model.save_folder(&staging.join(model.component()))?;
    let sched_dir = staging.join("scheduler");
    std::fs::create_dir_all(&sched_dir).map_err(io(&sched_dir))?;
    registry::save_config_file(scheduler, &sched_dir.join("scheduler_config.json"))?;
    let (library, class) = model.library_class();
    let mut index = serde_json::Map::new();
    index.insert("_class_name".into(), model.pipeline_class().into());
    index.insert("_diffusers_version".into(), "0.42.1".into());
    index.insert(
        "scheduler".into(),
        serde_json::json!(["diffusers", scheduler.class_name()]),
    );
    index.insert(
        model.component().into(),
        serde_json::json!([library, class]),
    );
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(index)).unwrap_or_default();
    ember_models::weights::write_atomic(&staging.join("model_index.json"), text.as_bytes())?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    Ok(target)
}

/// Drops log lines past `step` (a resumed run rewrites them), atomically.
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    ember_models::weights::write_atomic(path, kept.as_bytes())
}
