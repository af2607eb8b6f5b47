//! `ember sample`: run a diffusers pipeline folder (unconditional or class-conditional
//! pixel-space U-Net + scheduler) and write a PNG grid, optionally the raw tensor and an
//! animated GIF of the trajectory; img2img and inpainting from PNG inputs.
//!
//! Every input is read and checked (shapes, sizes, labels, output folders) before the
//! weights are loaded and before any step runs.

use crate::model::backend_name;
use anyhow::{anyhow, bail, Context, Result};
use ember_core::burn::tensor::backend::Backend;
use ember_core::burn::tensor::{Element, Int, Tensor, TensorData};
use ember_core::Conditioning;
use ember_models::config::ClassEmbedType;
use ember_models::io::{read_tensors, write_tensors, HostTensorValue};
use ember_models::EmberBackend;
use ember_pipelines::{
    img2img, inpaint, load_pipeline, sample, sample_from_noise, ClassifierFreeGuidance, Control,
    SampleOptions, SchedulerChoice, StepInfo,
};
use ember_train::preview;
use image::{DynamicImage, RgbImage, RgbaImage};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Everything `ember sample` is asked to do.
#[derive(Debug, Clone)]
pub struct SampleArgs {
    pub model: PathBuf,
    pub scheduler: Option<String>,
    pub scheduler_config: Option<PathBuf>,
    pub steps: usize,
    pub seed: u64,
    pub batch: usize,
    pub class_label: Option<i64>,
    pub null_class: Option<i64>,
    pub guidance_scale: f64,
    pub init_image: Option<PathBuf>,
    pub strength: Option<f64>,
    pub mask: Option<PathBuf>,
    pub init_noise: Option<PathBuf>,
    pub out: PathBuf,
    pub save_tensor: Option<PathBuf>,
    pub trajectory: Option<PathBuf>,
    pub device: Option<String>,
}

/// The checked, host-side inputs of a run.
struct Prepared {
    /// `[B, C, H, W]`.
    shape: [usize; 4],
    choice: SchedulerChoice,
    /// `(label, null label)`; the null label only under guidance.
    labels: Option<(i64, Option<i64>)>,
    /// Init image in [−1, 1], repeated over the batch.
    image: Option<Vec<f32>>,
    /// Mask in [0, 1], `[B, 1, H, W]`.
    mask: Option<Vec<f32>>,
    strength: f64,
    /// Initial noise `[B, C, H, W]`.
    noise: Option<Vec<f32>>,
}

/// `ember sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let backend = backend_name(args.device.as_deref())?;
    let prepared = prepare(args)?;
    match backend.as_str() {
        #[cfg(feature = "flex")]
        "flex" => run_on::<ember_core::burn::backend::Flex>(Default::default(), args, prepared),
        #[cfg(feature = "ndarray")]
        "ndarray" => {
            run_on::<ember_core::burn::backend::NdArray>(Default::default(), args, prepared)
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => run_on::<ember_core::burn::backend::Wgpu>(Default::default(), args, prepared),
        #[cfg(feature = "cuda")]
        "cuda" => run_on::<ember_core::burn::backend::Cuda>(Default::default(), args, prepared),
        other => bail!("device `{other}` has no dispatch in this build"),
    }
}

/// Fails unless `path` can be written: its folder exists and accepts a new file, and it is
/// not itself a folder.
fn check_writable(path: &Path, what: &str) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {what} {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    if path.is_dir() {
        bail!("cannot write {what} {}: it is a directory", path.display());
    }
    let probe = parent.join(format!(".ember-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            std::fs::remove_file(&probe).ok();
        }
        Err(e) => bail!(
            "cannot write {what} {}: directory {} is not writable ({e})",
            path.display(),
            parent.display()
        ),
    }
    Ok(())
}

/// `(h, w)` from the U-Net config's `sample_size` (an integer or `[h, w]`).
fn sample_size(raw: &serde_json::Map<String, serde_json::Value>) -> Option<(usize, usize)> {
    let v = raw.get("sample_size")?;
    if let Some(n) = v.as_u64() {
        return Some((n as usize, n as usize));
    }
    let a = v.as_array()?;
    match a.as_slice() {
        [h, w] => Some((h.as_u64()? as usize, w.as_u64()? as usize)),
        _ => None,
    }
}

/// Checks every argument and reads every input file; no weights are loaded.
fn prepare(args: &SampleArgs) -> Result<Prepared> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !args.guidance_scale.is_finite() {
        bail!("--guidance-scale must be finite");
    }
    if let Some(s) = args.strength {
        if !(0.0..=1.0).contains(&s) {
            bail!("--strength must be in [0, 1], got {s}");
        }
        if args.init_image.is_none() {
            bail!("--strength needs --init-image");
        }
    }
    if args.mask.is_some() && args.init_image.is_none() {
        bail!("--mask needs --init-image (the image whose unmasked part is kept)");
    }
    if args.init_noise.is_some() && args.init_image.is_some() {
        bail!("--init-noise cannot be combined with --init-image (img2img and inpainting draw their noise from --seed)");
    }
    // The scheduler, by name or file.
    let choice = match (&args.scheduler, &args.scheduler_config) {
        (Some(_), Some(_)) => bail!("give either --scheduler or --scheduler-config, not both"),
        (Some(name), None) => {
            let all = &*ember_schedulers::SCHEDULERS;
            if !all.iter().any(|s| s.class_name == name) {
                let valid: Vec<_> = all.iter().map(|s| s.class_name).collect();
                bail!(
                    "unknown scheduler `{name}`; valid values are: {}",
                    valid.join(", ")
                );
            }
            SchedulerChoice::ClassName(name.clone())
        }
        (None, Some(path)) => {
            ember_schedulers::load_config_file::<ember_core::HostTensor>(path)?;
            SchedulerChoice::ConfigFile(path.clone())
        }
        (None, None) => SchedulerChoice::Folder,
    };
    // Outputs, before anything long.
    check_writable(&args.out, "--out")?;
    if let Some(p) = &args.save_tensor {
        check_writable(p, "--save-tensor")?;
    }
    if let Some(p) = &args.trajectory {
        check_writable(p, "--trajectory")?;
    }
    // The model's geometry and class embedding, from its config alone.
    if !args.model.is_dir() {
        bail!("{}: no such model folder", args.model.display());
    }
    let unet_dir = args.model.join("unet");
    if !args.model.join("model_index.json").is_file() {
        bail!(
            "{}: not a pipeline folder (no model_index.json)",
            args.model.display()
        );
    }
    let config = ember_models::load_unet_config(&unet_dir).map_err(|e| {
        anyhow::Error::new(e).context(
            unet_dir
                .join(ember_models::CONFIG_NAME)
                .display()
                .to_string(),
        )
    })?;
    let channels = config.in_channels;
    if channels != 1 && channels != 3 {
        bail!(
            "the model takes {channels} channels; `ember sample` writes images of 1 (grayscale) or 3 (RGB) channels"
        );
    }
    let (h, w) = sample_size(&config.raw).ok_or_else(|| {
        anyhow!(
            "{}: no usable `sample_size` (an integer or [h, w]) to size the images",
            unet_dir.join(ember_models::CONFIG_NAME).display()
        )
    })?;
    let b = args.batch;
    let shape = [b, channels, h, w];
    // Class labels and guidance.
    let class_table = match config.class_embed_type {
        None => None,
        Some(ClassEmbedType::Table) => Some(config.num_class_embeds),
        Some(_) => Some(None),
    };
    let check_label = |flag: &str, k: i64| -> Result<()> {
        match class_table {
            None => bail!(
                "{flag} given, but the model has no class embedding (num_class_embeds / class_embed_type are unset)"
            ),
            Some(Some(n)) if k < 0 || k as usize >= n => {
                bail!("{flag} {k} is out of range: the model has {n} classes (0..{})", n.saturating_sub(1))
            }
            _ => Ok(()),
        }
    };
    if let Some(k) = args.class_label {
        check_label("--class-label", k)?;
    }
    if let Some(k) = args.null_class {
        check_label("--null-class", k)?;
    }
    if class_table.is_some() && args.class_label.is_none() {
        bail!("the model is class-conditional: pass --class-label");
    }
    let guided = args.guidance_scale != 1.0;
    if guided {
        if class_table.is_none() {
            bail!(
                "--guidance-scale {} needs a class-conditional model; this one has no class embedding",
                args.guidance_scale
            );
        }
        if args.null_class.is_none() {
            bail!(
                "--guidance-scale {} needs --null-class (the label of the unconditional branch)",
                args.guidance_scale
            );
        }
    }
    let labels = args
        .class_label
        .map(|k| (k, if guided { args.null_class } else { None }));
    // Image inputs.
    let image = match &args.init_image {
        Some(p) => {
            let one = read_image(p, channels, h, w)?;
            Some(one.iter().copied().cycle().take(one.len() * b).collect())
        }
        None => None,
    };
    let mask = match &args.mask {
        Some(p) => {
            let one = read_mask(p, h, w)?;
            Some(one.iter().copied().cycle().take(one.len() * b).collect())
        }
        None => None,
    };
    let default_strength = if mask.is_some() { 1.0 } else { 0.8 };
    let noise = match &args.init_noise {
        Some(p) => Some(read_noise(p, shape)?),
        None => None,
    };
    Ok(Prepared {
        shape,
        choice,
        labels,
        image,
        mask,
        strength: args.strength.unwrap_or(default_strength),
        noise,
    })
}

fn decode(path: &Path, what: &str) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode {what} {}", path.display()))
}

/// The init image, `[C, H, W]` in [−1, 1] (`v / 255 · 2 − 1`).
fn read_image(path: &Path, channels: usize, h: usize, w: usize) -> Result<Vec<f32>> {
    let img = decode(path, "--init-image")?;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if (ih, iw) != (h, w) {
        bail!(
            "--init-image {} is {iw}x{ih} (width x height), the model samples {w}x{h}",
            path.display()
        );
    }
    let has_color = img.color().has_color();
    let got = if has_color { 3 } else { 1 };
    if got != channels {
        bail!(
            "--init-image {} has {got} colour channel{} ({:?}), the model takes {channels}",
            path.display(),
            if got == 1 { "" } else { "s" },
            img.color()
        );
    }
    let to_unit = |v: u8| v as f32 / 255.0 * 2.0 - 1.0;
    let mut out = vec![0f32; channels * h * w];
    if channels == 1 {
        let g = img.to_luma8();
        for (i, p) in g.pixels().enumerate() {
            out[i] = to_unit(p.0[0]);
        }
    } else {
        let rgb = img.to_rgb8();
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = to_unit(p.0[c]);
            }
        }
    }
    Ok(out)
}

/// The mask, `[1, H, W]` in [0, 1] (1 = generate): a PNG's luminance / 255, or tensor
/// `mask` of a `.safetensors` file (`[H, W]`, `[1, H, W]` or `[1, 1, H, W]`).
fn read_mask(path: &Path, h: usize, w: usize) -> Result<Vec<f32>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let tensors = read_tensors(path).with_context(|| format!("--mask {}", path.display()))?;
        let values = match tensors.get("mask") {
            Some(HostTensorValue::Float(t)) => {
                let dims: Vec<usize> = t.shape.iter().copied().filter(|&d| d != 1).collect();
                let want: Vec<usize> = [h, w].into_iter().filter(|&d| d != 1).collect();
                if dims != want || t.values.len() != h * w {
                    bail!(
                        "--mask {}: tensor `mask` has shape {:?}, expected [{h}, {w}] (or [1, {h}, {w}], [1, 1, {h}, {w}])",
                        path.display(),
                        t.shape
                    );
                }
                t.values.clone()
            }
            Some(_) => bail!(
                "--mask {}: tensor `mask` is not a float tensor",
                path.display()
            ),
            None => bail!("--mask {}: no tensor named `mask`", path.display()),
        };
        if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            bail!(
                "--mask {}: values must lie in [0, 1], found {v}",
                path.display()
            );
        }
        return Ok(values);
    }
    let img = decode(path, "--mask")?;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if (ih, iw) != (h, w) {
        bail!(
            "--mask {} is {iw}x{ih} (width x height), the model samples {w}x{h}",
            path.display()
        );
    }
    Ok(img
        .to_luma8()
        .pixels()
        .map(|p| p.0[0] as f32 / 255.0)
        .collect())
}

/// Tensor `latents` of `path`, which must have `shape`.
fn read_noise(path: &Path, shape: [usize; 4]) -> Result<Vec<f32>> {
    let tensors = read_tensors(path).with_context(|| format!("--init-noise {}", path.display()))?;
    match tensors.get("latents") {
        Some(HostTensorValue::Float(t)) => {
            if t.shape != shape {
                bail!(
                    "--init-noise {}: tensor `latents` has shape {:?}, expected {:?} (batch, channels, height, width)",
                    path.display(),
                    t.shape,
                    shape
                );
            }
            if t.values.iter().any(|v| !v.is_finite()) {
                bail!(
                    "--init-noise {}: tensor `latents` has non-finite values",
                    path.display()
                );
            }
            Ok(t.values.clone())
        }
        Some(_) => bail!(
            "--init-noise {}: tensor `latents` is not a float tensor",
            path.display()
        ),
        None => bail!("--init-noise {}: no tensor named `latents`", path.display()),
    }
}

fn float_tensor<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(values, shape).convert_dtype(<B::FloatElem as Element>::dtype()),
        device,
    )
}

fn labels<B: Backend>(k: i64, b: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(
        TensorData::new(vec![k; b], [b]).convert_dtype(<B::IntElem as Element>::dtype()),
        device,
    )
}

fn to_host<B: Backend>(x: &Tensor<B, 4>) -> Result<Vec<f32>> {
    x.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow!("cannot read the sample back: {e:?}"))
}

/// A `[B, C, H, W]` batch in model space as one near-square grid of 8-bit pixels
/// (`ember_train::preview`, which the training grids use too).
fn grid(values: &[f32], shape: [usize; 4]) -> Result<RgbImage> {
    Ok(preview::image_grid(
        values,
        shape,
        preview::square_columns(shape[0]),
    )?)
}

/// Writes the frames as a looping animated GIF.
fn write_gif(path: &Path, frames: Vec<RgbaImage>) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame};
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        let ms = if i + 1 == n { 1000 } else { 100 };
        enc.encode_frame(Frame::from_parts(
            f,
            0,
            0,
            Delay::from_numer_denom_ms(ms, 1),
        ))
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `[#####     ] 12/50 t=…` on a terminal's stderr.
fn draw_progress(step: usize, total: usize, t: f64) {
    let width = 30;
    let done = (step * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    eprint!(
        "\r[{}{}] {step}/{total} t={t:.1}  ",
        "#".repeat(done),
        " ".repeat(width - done)
    );
    std::io::stderr().flush().ok();
}

fn run_on<B: EmberBackend>(device: B::Device, args: &SampleArgs, p: Prepared) -> Result<()> {
    let mut pipe = load_pipeline::<B>(&args.model, &p.choice, &device)?;
    let shape = p.shape;
    let b = shape[0];
    let cond = match p.labels {
        Some((k, _)) => Conditioning::with_class_labels(labels::<B>(k, b, &device)),
        None => Conditioning::none(),
    };
    let guided;
    let denoiser: &dyn ember_core::Denoiser<B, 4> = match p.labels {
        Some((_, Some(null))) => {
            guided = ClassifierFreeGuidance::new(
                &pipe.unet,
                args.guidance_scale,
                Conditioning::with_class_labels(labels::<B>(null, b, &device)),
            )?;
            &guided
        }
        _ => &pipe.unet,
    };
    let options = SampleOptions::new(args.steps, args.seed);
    let progress = std::io::stderr().is_terminal();
    let keep_frames = args.trajectory.is_some();
    let mut frames: Vec<RgbaImage> = Vec::new();
    let mut frame_error: Option<anyhow::Error> = None;
    let mut hook = |info: &StepInfo<'_, B, 4>| {
        if progress {
            draw_progress(info.step + 1, info.total, info.timestep);
        }
        if keep_frames {
            match to_host(info.sample) {
                Ok(v) => match grid(&v, shape) {
                    Ok(img) => frames.push(DynamicImage::ImageRgb8(img).into_rgba8()),
                    Err(e) => {
                        frame_error = Some(e);
                        return Control::Stop;
                    }
                },
                Err(e) => {
                    frame_error = Some(e);
                    return Control::Stop;
                }
            }
        }
        Control::Continue
    };
    let scheduler = pipe.scheduler.as_mut();
    let out = match (p.image, p.mask, p.noise) {
        (Some(image), Some(mask), _) => inpaint(
            denoiser,
            scheduler,
            &cond,
            float_tensor::<B>(image, shape, &device),
            float_tensor::<B>(mask, [b, 1, shape[2], shape[3]], &device),
            p.strength,
            &options,
            &mut hook,
        )?,
        (Some(image), None, _) => img2img(
            denoiser,
            scheduler,
            &cond,
            float_tensor::<B>(image, shape, &device),
            p.strength,
            &options,
            &mut hook,
        )?,
        (None, _, Some(noise)) => sample_from_noise(
            denoiser,
            scheduler,
            &cond,
            float_tensor::<B>(noise, shape, &device),
            &options,
            &mut hook,
        )?,
        (None, _, None) => sample(
            denoiser, scheduler, &cond, shape, &options, &device, &mut hook,
        )?,
    };
    if progress {
        eprintln!();
    }
    if let Some(e) = frame_error {
        return Err(e);
    }
    let values = to_host(&out)?;
    if values.iter().any(|v| !v.is_finite()) {
        log::warn!("the sample has non-finite values");
    }
    let img = grid(&values, shape)?;
    preview::write_png(&args.out, &img, shape[1] != 3)?;
    println!(
        "wrote {} ({} sample{} of {}x{}, {}x{} grid)",
        args.out.display(),
        b,
        if b == 1 { "" } else { "s" },
        shape[3],
        shape[2],
        img.width(),
        img.height()
    );
    if let Some(path) = &args.save_tensor {
        write_tensors::<B>(path, &[("sample", out)])?;
        println!("wrote sample {:?} to {}", shape, path.display());
    }
    if let Some(path) = &args.trajectory {
        let n = frames.len();
        write_gif(path, frames)?;
        println!("wrote {n} frames to {}", path.display());
    }
    Ok(())
}
