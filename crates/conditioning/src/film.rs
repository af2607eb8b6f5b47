//! FiLM / AdaGN: feature-wise modulation `x·(1 + scale) + shift` by a per-channel scale
//! and shift projected from an embedding (diffusers' `resnet_time_scale_shift =
//! "scale_shift"`).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Splits a `[B, 2C]` projection into `(scale, shift)` halves shaped `[B, C, 1, …]` for a
/// rank-`D` feature map.
pub fn split_scale_shift<B: Backend, const D: usize>(
    projection: Tensor<B, 2>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let [b, two_c] = projection.dims();
    let c = two_c / 2;
    let mut shape = [1usize; D];
    shape[0] = b;
    shape[1] = c;
    let scale = projection.clone().slice([0..b, 0..c]).reshape(shape);
    let shift = projection.slice([0..b, c..two_c]).reshape(shape);
    (scale, shift)
}

/// `x·(1 + scale) + shift`, broadcasting `[B, C, 1, …]` modulation over `x`.
pub fn modulate<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    scale: Tensor<B, D>,
    shift: Tensor<B, D>,
) -> Tensor<B, D> {
    x * (scale + 1.0) + shift
}

/// Adds a per-channel `[B, C]` bias to a rank-`D` feature map (diffusers' default time
/// conditioning of a ResNet block).
pub fn add_channel_bias<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    bias: Tensor<B, 2>,
) -> Tensor<B, D> {
    let [b, c] = bias.dims();
    let mut shape = [1usize; D];
    shape[0] = b;
    shape[1] = c;
    x + bias.reshape(shape)
}
