//! Image-conditioned sampling for any pixel-space (or latent) model: SDEdit img2img and
//! mask inpainting, both on top of [`crate::sampling::denoise`].

use crate::sampling::{denoise, seeded_noise, Control, SampleOptions, StepHook, StepInfo};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_core::{Conditioning, Denoiser, Error, NoiseSource, Result, Scheduler};

/// diffusers' `get_timesteps` for img2img: with `strength` ∈ [0, 1] of `n` steps, the
/// run skips the first `n − ⌊n·strength⌋` steps. Returns the begin index (× order).
pub fn img2img_begin_index(
    num_inference_steps: usize,
    order: usize,
    strength: f64,
) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::argument(
            "strength",
            format!("must be in [0, 1], got {strength}"),
        ));
    }
    let init = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    Ok(num_inference_steps.saturating_sub(init) * order)
}

fn check_image<B: Backend, const D: usize>(
    what: &str,
    image: &Tensor<B, D>,
    shape: [usize; D],
) -> Result<()> {
    if image.dims() != shape {
        return Err(Error::Shape {
            what: what.into(),
            expected: format!("{shape:?}"),
            got: image.dims().to_vec(),
        });
    }
    Ok(())
}

/// Prepares a partially noised start: sets the timesteps, the begin index for `strength`,
/// and noises `image` to the first remaining timestep. Returns `None` when no step is left
/// (strength 0).
fn noised_start<B: Backend, const D: usize>(
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    image: &Tensor<B, D>,
    noise: &Tensor<B, D>,
    strength: f64,
    options: &SampleOptions,
) -> Result<Option<(Tensor<B, D>, usize)>> {
    scheduler.set_timesteps_with(&options.request)?;
    let order = scheduler.order().max(1);
    let n = options
        .request
        .num_inference_steps
        .unwrap_or(scheduler.timesteps().len() / order);
    let begin = img2img_begin_index(n, order, strength)?;
    if begin >= scheduler.timesteps().len() {
        return Ok(None);
    }
    scheduler.set_begin_index(begin);
    let t0 = scheduler.timesteps()[begin];
    let b = image.dims()[0];
    let start = scheduler.add_noise(image, noise, &vec![t0; b])?;
    Ok(Some((start, begin)))
}

/// SDEdit img2img: noise `image` (model space, e.g. [−1, 1]) to the level `strength`
/// selects, then denoise from there. Strength 0 returns `image` unchanged.
pub fn img2img<B: Backend, const D: usize>(
    denoiser: &dyn Denoiser<B, D>,
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    conditioning: &Conditioning<B>,
    image: Tensor<B, D>,
    strength: f64,
    options: &SampleOptions,
    hook: &mut dyn StepHook<B, D>,
) -> Result<Tensor<B, D>> {
    if options.request.num_inference_steps == Some(0) {
        return Err(Error::argument("steps", "must be at least 1"));
    }
    let shape = image.dims();
    let noise = seeded_noise::<B, D>(
        &NoiseSource::new(options.seed),
        shape,
        options.first_index,
        0,
        &image.device(),
    );
    match noised_start(scheduler, &image, &noise, strength, options)? {
        None => Ok(image),
        Some((start, begin)) => {
            let mut opts = options.clone();
            opts.begin_index = begin;
            denoise(denoiser, scheduler, conditioning, start, &opts, hook)
        }
    }
}

/// Re-imposes the known region after every step: `x ← m·x + (1 − m)·noised(image, t_next)`,
/// and `image` itself after the last step.
struct InpaintHook<'a, B: Backend, const D: usize> {
    image: &'a Tensor<B, D>,
    keep: Tensor<B, D>,
    generate: Tensor<B, D>,
    noise: &'a Tensor<B, D>,
    timesteps: Vec<f64>,
    inner: &'a mut dyn StepHook<B, D>,
}

impl<B: Backend, const D: usize> StepHook<B, D> for InpaintHook<'_, B, D> {
    fn after_step(
        &mut self,
        info: &StepInfo<'_, B, D>,
        scheduler: &dyn Scheduler<Tensor<B, D>>,
    ) -> Result<(Option<Tensor<B, D>>, Control)> {
        let b = self.image.dims()[0];
        let known = match self.timesteps.get(info.step + 1) {
            Some(&t_next) => scheduler.add_noise(self.image, self.noise, &vec![t_next; b])?,
            None => self.image.clone(),
        };
        let blended = info.sample.clone() * self.generate.clone() + known * self.keep.clone();
        let view = StepInfo {
            sample: &blended,
            ..*info
        };
        let (replacement, control) = self.inner.after_step(&view, scheduler)?;
        Ok((Some(replacement.unwrap_or(blended)), control))
    }
}

/// Mask inpainting: `mask` is 1 where new content is generated and 0 where `image` is
/// kept (diffusers' convention; values in between blend), broadcastable over channels
/// (`[B, 1, …]`) or full-shaped. `strength` < 1 starts from a noised `image` as img2img.
#[allow(clippy::too_many_arguments)]
pub fn inpaint<B: Backend, const D: usize>(
    denoiser: &dyn Denoiser<B, D>,
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    conditioning: &Conditioning<B>,
    image: Tensor<B, D>,
    mask: Tensor<B, D>,
    strength: f64,
    options: &SampleOptions,
    hook: &mut dyn StepHook<B, D>,
) -> Result<Tensor<B, D>> {
    if options.request.num_inference_steps == Some(0) {
        return Err(Error::argument("steps", "must be at least 1"));
    }
    let shape = image.dims();
    let mut mask_shape = shape;
    mask_shape[1] = 1;
    let md = mask.dims();
    if md != shape && md != mask_shape {
        return Err(Error::Shape {
            what: "mask".into(),
            expected: format!("{mask_shape:?} or {shape:?}"),
            got: md.to_vec(),
        });
    }
    let lo: f64 = mask.clone().min().into_scalar().elem();
    let hi: f64 = mask.clone().max().into_scalar().elem();
    if !(lo >= 0.0 && hi <= 1.0) {
        return Err(Error::argument(
            "mask",
            format!("values must lie in [0, 1], found [{lo}, {hi}]"),
        ));
    }
    let generate = mask.expand(shape);
    let keep = generate.clone().neg() + 1.0;
    check_image("image", &image, shape)?;
    let device = image.device();
    let noise = seeded_noise::<B, D>(
        &NoiseSource::new(options.seed),
        shape,
        options.first_index,
        0,
        &device,
    );
    let (start, begin) = if strength >= 1.0 {
        scheduler.set_timesteps_with(&options.request)?;
        (noise.clone() * scheduler.init_noise_sigma(), 0)
    } else {
        match noised_start(scheduler, &image, &noise, strength, options)? {
            None => return Ok(image),
            Some(s) => s,
        }
    };
    let timesteps = scheduler.timesteps()[begin..].to_vec();
    let mut opts = options.clone();
    opts.begin_index = begin;
    let mut blend = InpaintHook {
        image: &image,
        keep,
        generate,
        noise: &noise,
        timesteps,
        inner: hook,
    };
    denoise(denoiser, scheduler, conditioning, start, &opts, &mut blend)
}

use burn::tensor::ElementConversion;
