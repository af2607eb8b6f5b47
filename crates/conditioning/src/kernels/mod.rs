//! Fused kernels as a burn backend extension.
//!
//! A diffusion U-Net spends most of its time in three places: group normalisation (followed
//! by SiLU, often with a FiLM scale-shift in between), attention, and 3×3 convolutions.
//! burn assembles the first from a dozen separate element-wise and reduction ops and, under
//! autodiff, differentiates attention through the full `L×L` score matrix. [`EmberBackend`]
//! adds those ops to burn's [`Backend`] as single operations:
//!
//! - [`EmberBackend::fused_group_norm`]: `act((GN(x)·γ + β)·(1 + scale) + shift)` in one pass
//!   over the data, with [`EmberBackend::fused_group_norm_backward`] for training.
//! - [`EmberBackend::fused_attention`]: scaled dot-product attention, and
//!   [`EmberBackend::fused_attention_backward`], which recomputes the softmax one block of
//!   queries at a time so the gradient never holds the full score matrix.
//! - [`EmberBackend::fused_conv2d`]: 2-D convolution; on Flex an im2col + GEMM that reads
//!   PyTorch-layout weights in place (no per-call weight re-layout) and writes NCHW output
//!   directly.
//!
//! Every method has a default implementation written with burn's tensor ops (the generic
//! fallback), so any backend runs every model: implementing the trait for a backend is one
//! line, `impl EmberBackend for MyBackend {}`. Flex overrides all three with f32 kernels
//! (AVX2 + FMA where the CPU has them); [`burn::backend::Autodiff`] records each fused op as
//! one graph node whose backward calls the inner backend's fused backward.
//!
//! Design notes, test bounds and measurements: `docs/kernels.md`.
//!
//! The tensor-level entry points are [`group_norm`], [`attention`] and [`conv2d`]; the unfused
//! compositions they replace are in [`mod@reference`] (used by the property tests, and as the
//! fallback).
//!
//! ```
//! use ember_conditioning::kernels::{group_norm, GroupNormOptions, NormActivation};
//! use ember_core::backend::DefaultBackend as B;
//! use ember_core::burn::tensor::{Distribution, Tensor};
//!
//! let device = Default::default();
//! let x = Tensor::<B, 4>::random([2, 8, 4, 4], Distribution::Normal(0.0, 1.0), &device);
//! let gamma = Tensor::<B, 1>::ones([8], &device);
//! let beta = Tensor::<B, 1>::zeros([8], &device);
//! let opts = GroupNormOptions { num_groups: 4, eps: 1e-5, activation: NormActivation::Silu };
//! let y = group_norm(x, gamma, beta, None, opts);
//! assert_eq!(y.dims(), [2, 8, 4, 4]);
//! ```

mod autodiff;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod flex_attention;
#[cfg(feature = "flex")]
mod flex_conv;
pub mod reference;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod simd;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorPrimitive};

/// The activation fused after a group norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormActivation {
    /// No activation.
    None,
    /// `y·σ(y)`.
    Silu,
}

/// Shape-independent settings of a fused group norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormOptions {
    /// Number of channel groups; divides the channel count.
    pub num_groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// Applied last, after the affine and the FiLM modulation.
    pub activation: NormActivation,
}

/// Gradients of a fused group norm with respect to each of its inputs.
#[derive(Debug)]
pub struct GroupNormGrads<B: Backend> {
    /// `[N, C, S]`, like the input.
    pub x: FloatTensor<B>,
    /// `[C]`.
    pub gamma: FloatTensor<B>,
    /// `[C]`.
    pub beta: FloatTensor<B>,
    /// `(scale, shift)`, each `[N, C]`, when the norm had a FiLM modulation.
    pub film: Option<(FloatTensor<B>, FloatTensor<B>)>,
}

/// Gradients of attention with respect to query, key and value.
#[derive(Debug)]
pub struct AttentionGrads<B: Backend> {
    /// `[B, H, L, D]`.
    pub query: FloatTensor<B>,
    /// `[B, H, S, D]`.
    pub key: FloatTensor<B>,
    /// `[B, H, S, Dv]`.
    pub value: FloatTensor<B>,
}

/// Gradients of a 2-D convolution.
#[derive(Debug)]
pub struct Conv2dGrads<B: Backend> {
    /// `[N, C_in, H, W]`.
    pub x: FloatTensor<B>,
    /// `[C_out, C_in / groups, KH, KW]`.
    pub weight: FloatTensor<B>,
    /// `[C_out]`, when the convolution has a bias.
    pub bias: Option<FloatTensor<B>>,
}

/// A burn backend with Ember's fused operations.
///
/// All methods have generic defaults built from burn's tensor ops, so implementing the trait
/// for a new backend is `impl EmberBackend for MyBackend {}`; a backend overrides a method
/// where it has a faster kernel. Tensors are primitives, as in burn's own op traits.
pub trait EmberBackend: Backend {
    /// Group norm with fused affine, optional FiLM and optional activation:
    /// `act((GN(x)·γ + β)·(1 + scale) + shift)`.
    ///
    /// `x` is `[N, C, S]` (spatial dimensions flattened), `gamma` and `beta` are `[C]`,
    /// `film` is `(scale, shift)`, each `[N, C]`.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        film: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        options: GroupNormOptions,
    ) -> FloatTensor<Self> {
        reference::group_norm_forward::<Self>(x, gamma, beta, film, options)
    }

    /// Gradients of [`EmberBackend::fused_group_norm`] given the output gradient `grad`
    /// (`[N, C, S]`). The normalisation statistics are recomputed from `x` rather than
    /// stored, which costs one extra pass over `x` and saves two tensors per norm.
    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        film: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormGrads<Self> {
        reference::group_norm_backward::<Self>(x, gamma, beta, film, grad, options)
    }

    /// Scaled dot-product attention `softmax(scale·QKᵀ + bias)·V`.
    ///
    /// `query` is `[B, H, L, D]`, `key` `[B, H, S, D]`, `value` `[B, H, S, Dv]`, `bias`
    /// an additive score bias `[B, H, L, S]` (may be a broadcast view). The default is
    /// burn's attention op, which on Flex is already tiled (flash-style) for long sequences.
    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> FloatTensor<Self> {
        reference::attention_forward::<Self>(query, key, value, bias, scale)
    }

    /// Gradients of [`EmberBackend::fused_attention`] given the output gradient `grad`.
    /// The bias is a constant (it comes from masks) and gets no gradient. The default
    /// recomputes the softmax for blocks of queries, so its memory is `O(block·S)`, not
    /// `O(L·S)`.
    fn fused_attention_backward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> AttentionGrads<Self> {
        reference::attention_backward::<Self>(query, key, value, bias, grad, scale)
    }

    /// 2-D convolution (PyTorch layout: `x` `[N, C_in, H, W]`, `weight`
    /// `[C_out, C_in / groups, KH, KW]`, `bias` `[C_out]`). The default is burn's `conv2d`;
    /// Flex overrides it with an im2col + GEMM that reads the weight in place.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, bias, options)
    }

    /// Gradients of [`EmberBackend::fused_conv2d`]; the default is burn's conv2d backward ops.
    fn fused_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> Conv2dGrads<Self> {
        reference::conv2d_backward::<Self>(x, weight, bias, grad, options)
    }
}

#[cfg(feature = "ndarray")]
impl EmberBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl EmberBackend for burn::backend::Wgpu {}
#[cfg(feature = "cuda")]
impl EmberBackend for burn::backend::Cuda {}

/// Fused group norm on a rank-`D` feature map `[N, C, ...]` (rank 3 to 5):
/// `act((GN(x)·γ + β)·(1 + scale) + shift)` with `film = (scale, shift)`, each `[N, C]`.
///
/// Shapes are the caller's contract (the layers check them); the result has `x`'s shape.
pub fn group_norm<B: EmberBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    film: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    options: GroupNormOptions,
) -> Tensor<B, D> {
    let dims = x.dims();
    let spatial: usize = dims[2..].iter().product();
    let x = x.reshape([dims[0], dims[1], spatial]);
    let out = B::fused_group_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        film.map(|(s, t)| (s.into_primitive().tensor(), t.into_primitive().tensor())),
        options,
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(out)).reshape(dims)
}

/// 2-D convolution through [`EmberBackend::fused_conv2d`].
pub fn conv2d<B: EmberBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let out = B::fused_conv2d(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        options,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Scaled dot-product attention `softmax(scale·QKᵀ + bias)·V` on `[B, H, L, D]` queries and
/// `[B, H, S, D]` keys and values; `bias` is an additive `[B, H, L, S]` score bias.
///
/// Under autodiff the bias is a constant: it receives no gradient (it is meant for masks,
/// not for a learned bias).
pub fn attention<B: EmberBackend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let out = B::fused_attention(
        query.into_primitive().tensor(),
        key.into_primitive().tensor(),
        value.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
