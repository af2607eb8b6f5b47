//! The unfused compositions of burn tensor ops that the fused kernels replace.
//!
//! These are [`EmberBackend`](super::EmberBackend)'s generic defaults, and the ground truth
//! of the property tests: run on `Autodiff<B>` they give the gradients burn derives by
//! itself, which the fused backward passes must reproduce.

use super::{
    float, prim, AttentionGrads, Conv2dGrads, GroupNormGrads, GroupNormOptions, NormActivation,
};
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions, FloatTensor};
use burn::tensor::Tensor;

/// Group norm, affine, optional FiLM and optional SiLU as separate burn ops; `x` is
/// `[N, C, S]`.
pub fn group_norm_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    film: Option<(FloatTensor<B>, FloatTensor<B>)>,
    options: GroupNormOptions,
) -> FloatTensor<B> {
    let x: Tensor<B, 3> = float(x);
    let [n, c, s] = x.dims();
    let groups = options.num_groups;
    let grouped = x.reshape([n, groups, (c / groups) * s]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped - mean;
    let var = centered.clone().square().mean_dim(2);
    let xhat = (centered / (var + options.eps).sqrt()).reshape([n, c, s]);
    let mut y =
        xhat * float::<B, 1>(gamma).reshape([1, c, 1]) + float::<B, 1>(beta).reshape([1, c, 1]);
    if let Some((scale, shift)) = film {
        y = y * (float::<B, 2>(scale).reshape([n, c, 1]) + 1.0)
            + float::<B, 2>(shift).reshape([n, c, 1]);
    }
    prim(match options.activation {
        NormActivation::None => y,
        NormActivation::Silu => silu(y),
    })
}

/// The gradients of [`group_norm_forward`] in closed form, from burn tensor ops.
///
/// With `x̂ = (x − μ)·r`, `y₀ = γ·x̂ + β`, `y₁ = (1 + s)·y₀ + t`, `y = act(y₁)`:
/// `dy₁ = dy·act′(y₁)`, `dt = Σ dy₁`, `ds = Σ dy₁·y₀`, `dy₀ = (1 + s)·dy₁`,
/// `dβ = Σ dy₀`, `dγ = Σ dy₀·x̂`, and with `g = γ·dy₀`,
/// `dx = r·(g − mean_group(g) − x̂·mean_group(g·x̂))`.
pub fn group_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    film: Option<(FloatTensor<B>, FloatTensor<B>)>,
    grad: FloatTensor<B>,
    options: GroupNormOptions,
) -> GroupNormGrads<B> {
    let x: Tensor<B, 3> = float(x);
    let [n, c, s] = x.dims();
    let groups = options.num_groups;
    let group_len = (c / groups) * s;
    let grouped = x.reshape([n, groups, group_len]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped - mean;
    let var = centered.clone().square().mean_dim(2);
    let rstd = (var + options.eps).sqrt().recip();
    let xhat = (centered * rstd.clone()).reshape([n, c, s]);
    let gamma = float::<B, 1>(gamma).reshape([1, c, 1]);
    let beta = float::<B, 1>(beta).reshape([1, c, 1]);
    let y0 = xhat.clone() * gamma.clone() + beta;
    let film = film.map(|(scale, shift)| {
        (
            float::<B, 2>(scale).reshape([n, c, 1]) + 1.0,
            float::<B, 2>(shift).reshape([n, c, 1]),
        )
    });
    let dy: Tensor<B, 3> = float(grad);
    let dy1 = match options.activation {
        NormActivation::None => dy,
        NormActivation::Silu => {
            let y1 = match &film {
                Some((factor, shift)) => y0.clone() * factor.clone() + shift.clone(),
                None => y0.clone(),
            };
            let sig = sigmoid(y1.clone());
            // d/dy [y·σ(y)] = σ(y)·(1 + y·(1 − σ(y)))
            dy * sig.clone() * ((sig.neg() + 1.0) * y1 + 1.0)
        }
    };
    let (dy0, film_grads) = match film {
        Some((factor, _)) => {
            let dscale = (dy1.clone() * y0).sum_dim(2).reshape([n, c]);
            let dshift = dy1.clone().sum_dim(2).reshape([n, c]);
            (dy1 * factor, Some((prim(dscale), prim(dshift))))
        }
        None => (dy1, None),
    };
    let dbeta = dy0.clone().sum_dim(2).sum_dim(0).reshape([c]);
    let dgamma = (dy0.clone() * xhat.clone())
        .sum_dim(2)
        .sum_dim(0)
        .reshape([c]);
    let g = (dy0 * gamma).reshape([n, groups, group_len]);
    let xhat = xhat.reshape([n, groups, group_len]);
    let mean_g = g.clone().mean_dim(2);
    let mean_gx = (g.clone() * xhat.clone()).mean_dim(2);
    let dx = ((g - mean_g - xhat * mean_gx) * rstd).reshape([n, c, s]);
    GroupNormGrads {
        x: prim(dx),
        gamma: prim(dgamma),
        beta: prim(dbeta),
        film: film_grads,
    }
}

/// burn's attention op with an additive bias.
pub fn attention_forward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    scale: f64,
) -> FloatTensor<B> {
    prim(attention::<B>(
        float(query),
        float(key),
        float(value),
        None,
        bias.map(float),
        AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        },
    ))
}

/// How many score elements one block of the attention backward may hold (16 MiB of f32):
/// large enough for full-width matmuls, small enough that a 4,096-token gradient does not
/// allocate the 64 MiB-per-head score matrix at once.
pub const SCORE_BLOCK_ELEMENTS: usize = 1 << 22;

/// The attention gradient with the softmax recomputed one block of queries at a time:
/// per block `P = softmax(scale·Q Kᵀ + bias)`, `dV += Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = scale·dS K`, `dK += scale·dSᵀ Q`.
pub fn attention_backward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    scale: f64,
) -> AttentionGrads<B> {
    attention_backward_in_blocks::<B>(query, key, value, bias, grad, scale, SCORE_BLOCK_ELEMENTS)
}

/// [`attention_backward`] with at most `score_block_elements` score elements per block of
/// queries (at least one query row per block).
pub fn attention_backward_in_blocks<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    scale: f64,
    score_block_elements: usize,
) -> AttentionGrads<B> {
    let q: Tensor<B, 4> = float(query);
    let k: Tensor<B, 4> = float(key);
    let v: Tensor<B, 4> = float(value);
    let d_out: Tensor<B, 4> = float(grad);
    let bias: Option<Tensor<B, 4>> = bias.map(float);
    let [b, h, l, d] = q.dims();
    let s = k.dims()[2];
    let dv_dim = v.dims()[3];
    let rows = (score_block_elements / (b * h * s).max(1)).clamp(1, l.max(1));
    let k_t = k.clone().swap_dims(2, 3);
    let v_t = v.clone().swap_dims(2, 3);
    let mut dk = k.zeros_like();
    let mut dv = v.zeros_like();
    let mut dq_blocks = Vec::with_capacity(l.div_ceil(rows));
    for start in (0..l).step_by(rows) {
        let end = (start + rows).min(l);
        let q_blk = q.clone().slice([0..b, 0..h, start..end, 0..d]);
        let d_out_blk = d_out.clone().slice([0..b, 0..h, start..end, 0..dv_dim]);
        let mut scores = q_blk.clone().matmul(k_t.clone()) * scale;
        if let Some(bias) = &bias {
            scores = scores + bias.clone().slice([0..b, 0..h, start..end, 0..s]);
        }
        let p = softmax(scores, 3);
        dv = dv + p.clone().swap_dims(2, 3).matmul(d_out_blk.clone());
        let dp = d_out_blk.matmul(v_t.clone());
        let row = (p.clone() * dp.clone()).sum_dim(3);
        let ds = p * (dp - row);
        dq_blocks.push(ds.clone().matmul(k.clone()) * scale);
        dk = dk + ds.swap_dims(2, 3).matmul(q_blk) * scale;
    }
    let dq = match dq_blocks.len() {
        0 => q.zeros_like(),
        1 => dq_blocks.pop().unwrap_or_else(|| q.zeros_like()),
        _ => Tensor::cat(dq_blocks, 2),
    };
    AttentionGrads {
        query: prim(dq),
        key: prim(dk),
        value: prim(dv),
    }
}

/// The convolution gradients from the backend's own conv2d backward ops.
pub fn conv2d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> Conv2dGrads<B> {
    let bias = bias.map(|b| B::conv2d_bias_backward(x.clone(), b, grad.clone()));
    Conv2dGrads {
        x: B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone()),
        weight: B::conv2d_weight_backward(x, weight, grad, options),
        bias,
    }
}
