//! Parameter-holding layers laid out exactly like PyTorch's, so that a diffusers state-dict
//! key such as `down_blocks.0.resnets.1.conv1.weight` maps onto a field path one to one and
//! no tensor is transposed on load or save.
//!
//! Parameters are created lazily: a model built only to receive a checkpoint never spends
//! time drawing random weights it is about to overwrite.

use crate::kernels::{conv2d, group_norm, EmberBackend, GroupNormOptions, NormActivation};
use burn::module::{Module, Param, ParamId};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Int, Shape, Tensor};
use ember_core::{Error, Result};

/// A parameter of `shape` whose value `init` draws on first use (never, if a checkpoint
/// replaces it first).
fn lazy_param<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
    init: impl Fn([usize; D], &B::Device) -> Tensor<B, D> + Send + Sync + 'static,
) -> Param<Tensor<B, D>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let t = init(shape, device);
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        },
        device.clone(),
        true,
        Shape::new(shape),
    )
}

/// A parameter drawn from `U(-bound, bound)` on first use (PyTorch's default for Linear and
/// Conv weights and biases is `bound = 1/sqrt(fan_in)`).
pub fn uniform_param<B: Backend, const D: usize>(
    shape: [usize; D],
    bound: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    lazy_param(shape, device, move |s, d| {
        Tensor::random(s, Distribution::Uniform(-bound, bound), d)
    })
}

/// A parameter filled with `value` on first use (norm scales and offsets).
pub fn constant_param<B: Backend, const D: usize>(
    shape: [usize; D],
    value: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    lazy_param(shape, device, move |s, d| Tensor::full(s, value, d))
}

/// A parameter drawn from `N(0, std²)` on first use (embedding tables).
pub fn normal_param<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    lazy_param(shape, device, move |s, d| {
        Tensor::random(s, Distribution::Normal(0.0, std), d)
    })
}

/// `y = x Wᵀ + b` over the last dimension, with `weight` stored `[out, in]` as in PyTorch.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// A layer with PyTorch's default initialisation.
    pub fn new(in_features: usize, out_features: usize, bias: bool, device: &B::Device) -> Self {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        Self {
            weight: uniform_param([out_features, in_features], bound, device),
            bias: bias.then(|| uniform_param([out_features], bound, device)),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.lazy_shape()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.lazy_shape()[0]
    }

    /// Applies the layer to `[..., in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let in_f = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let w = self.weight.val();
        let out_f = w.dims()[0];
        let mut y = x.reshape([rows, in_f]).matmul(w.transpose());
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze_dim(0);
        }
        let mut out = dims;
        out[D - 1] = out_f;
        y.reshape(out)
    }

    /// Applies the layer along the channel axis of a channel-first `[B, in, N]` tensor,
    /// giving `[B, out, N]` (`W·X + b`), which spares the transposes a feature map would
    /// otherwise need to become `[B, N, in]` tokens.
    ///
    /// Computed as a 1×1 convolution, whose kernel writes the bias and the product in one
    /// pass (a broadcast `[1, out, 1]` bias add is a strided copy on Flex).
    pub fn forward_channels_first(&self, x: Tensor<B, 3>) -> Tensor<B, 3>
    where
        B: EmberBackend,
    {
        let [b, _, n] = x.dims();
        let [out_f, in_f] = self.weight.dims();
        let y = conv2d(
            x.reshape([b, in_f, n, 1]),
            self.weight.val().reshape([out_f, in_f, 1, 1]),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        y.reshape([b, out_f, n])
    }
}

/// 2-D convolution with PyTorch's `[out, in / groups, kh, kw]` weight layout.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out_channels, in_channels / groups, kernel, kernel]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out_channels]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stride in both directions.
    #[module(skip)]
    pub stride: usize,
    /// Zero padding on every side.
    #[module(skip)]
    pub padding: usize,
}

impl<B: Backend> Conv2d<B> {
    /// A square-kernel convolution with PyTorch's default initialisation.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        device: &B::Device,
    ) -> Self {
        let fan_in = (in_channels * kernel * kernel).max(1) as f64;
        let bound = 1.0 / fan_in.sqrt();
        Self {
            weight: uniform_param([out_channels, in_channels, kernel, kernel], bound, device),
            bias: Some(uniform_param([out_channels], bound, device)),
            stride,
            padding,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.weight.lazy_shape()[1]
    }
}

impl<B: EmberBackend> Conv2d<B> {
    /// Applies the convolution to `[B, C, H, W]` (through [`crate::kernels::conv2d`]).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new(
                [self.stride, self.stride],
                [self.padding, self.padding],
                [1, 1],
                1,
            ),
        )
    }
}

/// Group normalisation over `[B, C, ...]` with per-channel affine parameters.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// Per-channel scale, `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Per-channel offset, `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Number of groups; divides the channel count.
    #[module(skip)]
    pub num_groups: usize,
    /// Added to the variance.
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    /// A norm with unit scale and zero offset. Fails when `num_groups` does not divide
    /// `channels`, naming `field` in the error.
    pub fn new(
        num_groups: usize,
        channels: usize,
        eps: f64,
        field: &str,
        device: &B::Device,
    ) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(Error::config(
                field,
                format!("{num_groups} groups do not divide {channels} channels"),
            ));
        }
        Ok(Self {
            weight: constant_param([channels], 1.0, device),
            bias: constant_param([channels], 0.0, device),
            num_groups,
            eps,
        })
    }
}

impl<B: EmberBackend> GroupNorm<B> {
    /// Normalises `[B, C, ...]` (rank 3 to 5).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_fused(x, None, NormActivation::None)
    }

    /// `act((norm(x))·(1 + scale) + shift)` as one fused kernel (see [`crate::kernels`]),
    /// with `film = (scale, shift)`, each `[B, C]`.
    pub fn forward_fused<const D: usize>(
        &self,
        x: Tensor<B, D>,
        film: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
        activation: NormActivation,
    ) -> Tensor<B, D> {
        let options = GroupNormOptions {
            num_groups: self.num_groups,
            eps: self.eps,
            activation,
        };
        group_norm(x, self.weight.val(), self.bias.val(), film, options)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale, `[dim]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Offset, `[dim]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Added to the variance.
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// A norm with unit scale and zero offset.
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: constant_param([dim], 1.0, device),
            bias: constant_param([dim], 0.0, device),
            eps,
        }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = centered / (var + self.eps).sqrt();
        let mut affine_shape = [1usize; D];
        affine_shape[D - 1] = self.weight.lazy_shape()[0];
        normed * self.weight.val().reshape(affine_shape) + self.bias.val().reshape(affine_shape)
    }
}

/// A lookup table `[num_embeddings, dim]`, as `torch.nn.Embedding`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[num_embeddings, dim]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// A table initialised `N(0, 1)` like PyTorch.
    pub fn new(num_embeddings: usize, dim: usize, device: &B::Device) -> Self {
        Self {
            weight: normal_param([num_embeddings, dim], 1.0, device),
        }
    }

    /// Number of rows.
    pub fn num_embeddings(&self) -> usize {
        self.weight.lazy_shape()[0]
    }

    /// Looks up `[B]` indices, giving `[B, dim]`. Indices must be checked by the caller
    /// (see [`check_indices`]); an index out of range is a backend error, not a clear one.
    pub fn forward(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.weight.val().select(0, ids)
    }
}

/// Checks host-side that every index lies in `0..n`, naming `what` in the error.
pub fn check_indices<B: Backend>(ids: &Tensor<B, 1, Int>, n: usize, what: &str) -> Result<()> {
    let values = ids
        .to_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| Error::argument(what, format!("{e:?}")))?;
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v as usize >= n) {
        return Err(Error::argument(
            what,
            format!("index {bad} is out of range 0..{n}"),
        ));
    }
    Ok(())
}

/// The activations diffusers configs name (`act_fn`, `time_embedding_act_fn`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(x)` (`"silu"` or `"swish"`).
    Silu,
    /// `x·tanh(softplus(x))`.
    Mish,
    /// Exact (erf) GELU.
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Names accepted by [`Activation::from_name`].
    pub const NAMES: [&'static str; 5] = ["silu", "swish", "mish", "gelu", "relu"];

    /// Parses a diffusers activation name (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "silu" | "swish" => Ok(Self::Silu),
            "mish" => Ok(Self::Mish),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            _ => Err(Error::unknown("activation", name, &Self::NAMES)),
        }
    }

    /// Applies the activation.
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Silu => activation::silu(x),
            Self::Mish => activation::mish(x),
            Self::Gelu => activation::gelu(x),
            Self::Relu => activation::relu(x),
        }
    }
}
