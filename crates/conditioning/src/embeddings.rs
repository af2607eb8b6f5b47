//! Timestep and label embeddings: the sinusoidal table of DDPM / diffusers' `Timesteps`,
//! the Gaussian-Fourier features of score-SDE models, the two-layer `TimestepEmbedding`
//! MLP, and class-label tables with an optional null class for classifier-free guidance.

use crate::nn::{check_indices, Activation, Linear};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_core::Result;

/// Sinusoidal embedding of `timesteps` (`[B]`) into `dim` channels, exactly as diffusers'
/// `get_timestep_embedding`: frequencies `exp(-ln(max_period)·i / (dim/2 − freq_shift))`,
/// `[sin, cos]` halves (swapped when `flip_sin_to_cos`), zero-padded when `dim` is odd.
///
/// The frequency table is built on the host with the float32 rounding PyTorch applies, so
/// the embedding matches diffusers' to the last float32 bit before the `sin`/`cos`.
pub fn sinusoidal_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    scale: f64,
    max_period: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = timesteps.device();
    let neg_log = -(max_period.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::<B, 2>::from_data(
        TensorData::new(freqs, [1, half]).convert_dtype(timesteps.dtype()),
        &device,
    );
    let mut args = timesteps.unsqueeze_dim::<2>(1) * freqs;
    if scale != 1.0 {
        args = args * scale;
    }
    let (first, second) = if flip_sin_to_cos {
        (args.clone().cos(), args.sin())
    } else {
        (args.clone().sin(), args.cos())
    };
    let emb = Tensor::cat(vec![first, second], 1);
    if dim % 2 == 1 {
        let b = emb.dims()[0];
        let pad = Tensor::<B, 2>::zeros([b, 1], &emb.device());
        Tensor::cat(vec![emb, pad], 1)
    } else {
        emb
    }
}

/// diffusers' `Timesteps`: a parameter-free sinusoidal projection.
#[derive(Debug, Clone, Copy)]
pub struct SinusoidalTimesteps {
    /// Output channels.
    pub dim: usize,
    /// Put `cos` before `sin`.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift`: 0 (diffusers' default U-Nets) or 1 (original DDPM).
    pub freq_shift: f64,
}

impl SinusoidalTimesteps {
    /// Embeds `[B]` timesteps into `[B, dim]`.
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        sinusoidal_embedding(
            timesteps,
            self.dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            1.0,
            10_000.0,
        )
    }
}

/// Random Fourier features `[sin(2π·w·t), cos(2π·w·t)]` of score-SDE (NCSN++) models, with
/// fixed random frequencies `weight` stored in the checkpoint.
#[derive(Module, Debug)]
pub struct GaussianFourierProjection<B: Backend> {
    /// Frequencies, `[embedding_size]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Embed `ln(t)` instead of `t` (UNet2DModel's `fourier` embedding does).
    #[module(skip)]
    pub log: bool,
    /// Put `cos` before `sin`.
    #[module(skip)]
    pub flip_sin_to_cos: bool,
}

impl<B: Backend> GaussianFourierProjection<B> {
    /// Frequencies drawn `N(0, scale²)`.
    pub fn new(
        embedding_size: usize,
        scale: f64,
        log: bool,
        flip_sin_to_cos: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: crate::nn::normal_param([embedding_size], scale, device),
            log,
            flip_sin_to_cos,
        }
    }

    /// Embeds `[B]` into `[B, 2·embedding_size]`.
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let t = if self.log { t.log() } else { t };
        let proj = t.unsqueeze_dim::<2>(1)
            * self.weight.val().unsqueeze_dim::<2>(0)
            * (2.0 * std::f64::consts::PI);
        if self.flip_sin_to_cos {
            Tensor::cat(vec![proj.clone().cos(), proj.sin()], 1)
        } else {
            Tensor::cat(vec![proj.clone().sin(), proj.cos()], 1)
        }
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(act(linear_1(x + cond_proj(c))))`, with an
/// optional activation after.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// First projection.
    pub linear_1: Linear<B>,
    /// Second projection.
    pub linear_2: Linear<B>,
    /// Projection of an extra condition added to the input (LCM's guidance embedding).
    pub cond_proj: Option<Linear<B>>,
    /// Activation between the two layers.
    #[module(skip)]
    pub act: Activation,
    /// Optional activation after `linear_2`.
    #[module(skip)]
    pub post_act: Option<Activation>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// An MLP `in_channels → dim → out_dim` (`out_dim` defaults to `dim`).
    pub fn new(
        in_channels: usize,
        dim: usize,
        out_dim: Option<usize>,
        act: Activation,
        post_act: Option<Activation>,
        cond_proj_dim: Option<usize>,
        device: &B::Device,
    ) -> Self {
        Self {
            linear_1: Linear::new(in_channels, dim, true, device),
            linear_2: Linear::new(dim, out_dim.unwrap_or(dim), true, device),
            cond_proj: cond_proj_dim.map(|c| Linear::new(c, in_channels, false, device)),
            act,
            post_act,
        }
    }

    /// Embeds `[B, in_channels]`; `condition` is used only when the layer has `cond_proj`.
    pub fn forward(&self, x: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
        let x = match (&self.cond_proj, condition) {
            (Some(proj), Some(c)) => x + proj.forward(c),
            _ => x,
        };
        let h = self
            .linear_2
            .forward(self.act.forward(self.linear_1.forward(x)));
        match self.post_act {
            Some(a) => a.forward(h),
            None => h,
        }
    }
}

/// Class-label embedding table. With `null_class`, the last row is the "no label" entry
/// that classifier-free guidance trains with and samples the unconditional branch from.
#[derive(Module, Debug)]
pub struct LabelEmbedding<B: Backend> {
    /// The table `[rows, dim]` (diffusers key `class_embedding.weight`).
    pub weight: Param<Tensor<B, 2>>,
    /// Index of the null class, if the table has one.
    #[module(skip)]
    pub null_class: Option<usize>,
}

impl<B: Backend> LabelEmbedding<B> {
    /// `num_classes` labels plus, with `with_null`, one extra null row.
    pub fn new(num_classes: usize, dim: usize, with_null: bool, device: &B::Device) -> Self {
        let rows = num_classes + usize::from(with_null);
        Self {
            weight: crate::nn::normal_param([rows, dim], 1.0, device),
            null_class: with_null.then_some(num_classes),
        }
    }

    /// Number of rows, null class included.
    pub fn num_embeddings(&self) -> usize {
        self.weight.lazy_shape()[0]
    }

    /// Embeds labels after checking they are in range.
    pub fn forward(&self, labels: Tensor<B, 1, Int>) -> Result<Tensor<B, 2>> {
        check_indices(&labels, self.num_embeddings(), "class_labels")?;
        Ok(self.weight.val().select(0, labels))
    }

    /// Replaces labels with the null class where `drop` is true (conditioning dropout).
    pub fn null_labels(
        &self,
        labels: Tensor<B, 1, Int>,
        drop: &[bool],
    ) -> Result<Tensor<B, 1, Int>> {
        let null = self.null_class.ok_or_else(|| {
            ember_core::Error::argument("class_labels", "this label embedding has no null class")
        })?;
        let mut values = labels
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| ember_core::Error::argument("class_labels", format!("{e:?}")))?;
        if values.len() != drop.len() {
            return Err(ember_core::Error::argument(
                "drop",
                format!("{} flags for {} labels", drop.len(), values.len()),
            ));
        }
        for (v, d) in values.iter_mut().zip(drop) {
            if *d {
                *v = null as i64;
            }
        }
        let n = values.len();
        Ok(Tensor::from_data(
            TensorData::new(values, [n]),
            &labels.device(),
        ))
    }
}
