//! The sampling loop: one function for every scheduler, every denoiser and every sample
//! rank, following diffusers' contract — initial noise × `init_noise_sigma`, then for each
//! timestep `scale_model_input` → model → `step` — with seeded per-sample noise and
//! per-step callbacks.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ember_core::{Conditioning, Denoiser, Error, NoiseSource, Result, Scheduler, TimestepRequest};

/// What one sampling run does.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Which timesteps / sigmas to use (usually `TimestepRequest::steps(n)`).
    pub request: TimestepRequest,
    /// Seed of every random draw (initial noise and stochastic steps).
    pub seed: u64,
    /// Index of the first sample of the batch in the seed's per-sample streams: sample `i`
    /// of the batch draws stream `first_index + i`, so a sample's noise does not depend on
    /// the batch it is drawn in.
    pub first_index: u64,
    /// Skip the first timesteps (img2img); `0` runs them all. In scheduler steps × order,
    /// as diffusers' `set_begin_index`.
    pub begin_index: usize,
}

impl SampleOptions {
    /// `steps` inference steps, seed `seed`, batch starting at stream 0.
    pub fn new(steps: usize, seed: u64) -> Self {
        Self {
            request: TimestepRequest::steps(steps),
            seed,
            first_index: 0,
            begin_index: 0,
        }
    }
}

/// What a callback sees after each step.
pub struct StepInfo<'a, B: Backend, const D: usize> {
    /// Step number, from 0.
    pub step: usize,
    /// Number of steps this run takes.
    pub total: usize,
    /// The timestep just taken.
    pub timestep: f64,
    /// The sample after the step.
    pub sample: &'a Tensor<B, D>,
    /// The scheduler's x₀ prediction, if it reports one (a preview of the result).
    pub pred_original_sample: Option<&'a Tensor<B, D>>,
}

/// A callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep sampling.
    Continue,
    /// Stop after this step and return the current sample.
    Stop,
}

/// Per-step hook: progress bars, previews, early stopping, or blending (inpainting).
pub trait StepHook<B: Backend, const D: usize> {
    /// Called after `scheduler.step`; may replace the sample (e.g. inpainting re-imposes
    /// the known region) and may stop the loop.
    fn after_step(
        &mut self,
        info: &StepInfo<'_, B, D>,
        scheduler: &dyn Scheduler<Tensor<B, D>>,
    ) -> Result<(Option<Tensor<B, D>>, Control)>;
}

/// Any `FnMut(&StepInfo) -> Control` is an observing hook.
impl<B: Backend, const D: usize, F> StepHook<B, D> for F
where
    F: FnMut(&StepInfo<'_, B, D>) -> Control,
{
    fn after_step(
        &mut self,
        info: &StepInfo<'_, B, D>,
        _: &dyn Scheduler<Tensor<B, D>>,
    ) -> Result<(Option<Tensor<B, D>>, Control)> {
        Ok((None, self(info)))
    }
}

/// A hook that does nothing.
pub fn no_hook<B: Backend, const D: usize>() -> impl StepHook<B, D> {
    |_: &StepInfo<'_, B, D>| Control::Continue
}

/// Seeded standard-normal noise of `shape` on `device`: sample `i` uses stream
/// `first_index + i` of `purpose` (0 = initial noise, 1 + k = step k), so results do not
/// depend on batch size or position.
pub fn seeded_noise<B: Backend, const D: usize>(
    noise: &NoiseSource,
    shape: [usize; D],
    first_index: u64,
    purpose: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let host = noise.batch_noise(&shape, first_index, purpose);
    let data: Vec<f32> = host.data().iter().map(|&v| v as f32).collect();
    Tensor::from_data(
        TensorData::new(data, shape)
            .convert_dtype(<B::FloatElem as burn::tensor::Element>::dtype()),
        device,
    )
}

/// Runs the scheduler's timesteps from `start` (the sample already at the first timestep's
/// noise level: for text-to-image, initial noise × `init_noise_sigma`).
///
/// Each step: `scale_model_input` → `denoiser.forward` (timestep repeated over the batch)
/// → `step`, with seeded noise for stochastic schedulers. `set_timesteps` must have been
/// called (and `set_begin_index`, for img2img).
pub fn denoise<B: Backend, const D: usize>(
    denoiser: &dyn Denoiser<B, D>,
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    conditioning: &Conditioning<B>,
    start: Tensor<B, D>,
    options: &SampleOptions,
    hook: &mut dyn StepHook<B, D>,
) -> Result<Tensor<B, D>> {
    let noise = NoiseSource::new(options.seed);
    let shape = start.dims();
    let device = start.device();
    let batch = shape[0];
    let timesteps: Vec<f64> =
        scheduler.timesteps()[options.begin_index.min(scheduler.timesteps().len())..].to_vec();
    let total = timesteps.len();
    let mut x = start;
    for (k, &t) in timesteps.iter().enumerate() {
        let input = scheduler.scale_model_input(&x, t)?;
        let t_batch = Tensor::<B, 1>::full([batch], t, &device);
        let out = denoiser.forward(input, t_batch, conditioning)?;
        let step_noise = scheduler.is_stochastic().then(|| {
            seeded_noise::<B, D>(
                &noise,
                shape,
                options.first_index,
                1 + (options.begin_index + k) as u64,
                &device,
            )
        });
        let step = scheduler.step(&out, t, &x, step_noise.as_ref())?;
        x = step.prev_sample;
        let info = StepInfo {
            step: k,
            total,
            timestep: t,
            sample: &x,
            pred_original_sample: step.pred_original_sample.as_ref(),
        };
        let (replacement, control) = hook.after_step(&info, &*scheduler)?;
        if let Some(r) = replacement {
            x = r;
        }
        if control == Control::Stop {
            break;
        }
    }
    Ok(x)
}

/// Text-to-image / unconditional / class-conditional sampling from seeded noise.
/// `shape` is the full batch shape (`[B, C, H, W]` or `[B, C, F, H, W]`).
pub fn sample<B: Backend, const D: usize>(
    denoiser: &dyn Denoiser<B, D>,
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    conditioning: &Conditioning<B>,
    shape: [usize; D],
    options: &SampleOptions,
    device: &B::Device,
    hook: &mut dyn StepHook<B, D>,
) -> Result<Tensor<B, D>> {
    let noise = NoiseSource::new(options.seed);
    let latents = seeded_noise::<B, D>(&noise, shape, options.first_index, 0, device);
    sample_from_noise(denoiser, scheduler, conditioning, latents, options, hook)
}

/// Sampling from given initial noise (`latents`, before the `init_noise_sigma` scaling, as
/// diffusers' `latents=` argument).
pub fn sample_from_noise<B: Backend, const D: usize>(
    denoiser: &dyn Denoiser<B, D>,
    scheduler: &mut dyn Scheduler<Tensor<B, D>>,
    conditioning: &Conditioning<B>,
    latents: Tensor<B, D>,
    options: &SampleOptions,
    hook: &mut dyn StepHook<B, D>,
) -> Result<Tensor<B, D>> {
    if options.request.num_inference_steps == Some(0) {
        return Err(Error::argument("steps", "must be at least 1"));
    }
    scheduler.set_timesteps_with(&options.request)?;
    let start = latents * scheduler.init_noise_sigma();
    let mut opts = options.clone();
    opts.begin_index = 0;
    denoise(denoiser, scheduler, conditioning, start, &opts, hook)
}
