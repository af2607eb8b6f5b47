//! Multi-head attention in diffusers' `Attention` layout (`to_q`, `to_k`, `to_v`,
//! `to_out.0`, optional `group_norm`), computed with burn's fused attention op so that
//! every backend can supply its best kernel.
//!
//! One layer serves three uses: spatial self-attention over the pixels of a feature map
//! (U-Net attention blocks, with group norm and a residual), self-attention over tokens,
//! and cross-attention from tokens to a context such as text encoder states.

use crate::kernels::{attention, EmberBackend};
use crate::nn::{GroupNorm, Linear};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_core::Result;

/// Shape options of an [`Attention`] layer.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Channels of the queries (and of the output).
    pub query_dim: usize,
    /// Channels of the context for cross-attention; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Group norm groups applied to the input first (spatial attention blocks).
    pub norm_num_groups: Option<usize>,
    /// Epsilon of that group norm.
    pub norm_eps: f64,
    /// Add the input back to the output (spatial attention blocks).
    pub residual_connection: bool,
    /// Divide the output by this after the residual.
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// Self- or cross-attention over tokens with diffusers' transformer-block defaults.
    pub fn tokens(
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> Self {
        Self {
            query_dim,
            cross_attention_dim,
            heads,
            dim_head,
            qkv_bias: false,
            norm_num_groups: None,
            norm_eps: 1e-5,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }
}

/// Multi-head (cross-)attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Input group norm of spatial attention blocks.
    pub group_norm: Option<GroupNorm<B>>,
    /// Query projection.
    pub to_q: Linear<B>,
    /// Key projection.
    pub to_k: Linear<B>,
    /// Value projection.
    pub to_v: Linear<B>,
    /// Output projection (diffusers' `to_out.0`; `to_out.1` is a parameter-free dropout).
    pub to_out: Vec<Linear<B>>,
    /// Number of heads.
    #[module(skip)]
    pub heads: usize,
    /// Adds the input to the output.
    #[module(skip)]
    pub residual_connection: bool,
    /// Output divisor.
    #[module(skip)]
    pub rescale_output_factor: f64,
}

impl<B: Backend> Attention<B> {
    /// Builds the layer; fails when the group count does not divide `query_dim`.
    pub fn new(config: &AttentionConfig, device: &B::Device) -> Result<Self> {
        let inner = config.heads * config.dim_head;
        let kv_dim = config.cross_attention_dim.unwrap_or(config.query_dim);
        let group_norm = match config.norm_num_groups {
            Some(g) => Some(GroupNorm::new(
                g,
                config.query_dim,
                config.norm_eps,
                "attention norm_num_groups",
                device,
            )?),
            None => None,
        };
        Ok(Self {
            group_norm,
            to_q: Linear::new(config.query_dim, inner, config.qkv_bias, device),
            to_k: Linear::new(kv_dim, inner, config.qkv_bias, device),
            to_v: Linear::new(kv_dim, inner, config.qkv_bias, device),
            to_out: vec![Linear::new(inner, config.query_dim, true, device)],
            heads: config.heads,
            residual_connection: config.residual_connection,
            rescale_output_factor: config.rescale_output_factor,
        })
    }
}

impl<B: EmberBackend> Attention<B> {
    /// Attends `x` (`[B, L, C]`) to `context` (`[B, S, C_ctx]`, or `x` itself when `None`).
    /// `bias` is an additive score bias `[B, 1, S]` (diffusers turns a 0/1 attention mask
    /// into `(1 − mask)·(−10000)`).
    pub fn forward_tokens(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        bias: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let q = self.to_q.forward(x.clone());
        let ctx = context.unwrap_or(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        let inner = q.dims()[2];
        let s = k.dims()[1];
        let h = self.heads;
        let d = inner / h;
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, n, h, d]).swap_dims(1, 2);
        let attn_bias = bias.map(|m| m.unsqueeze_dim::<4>(1).expand([b, h, l, s]));
        let out = attention(
            split(q, l),
            split(k, s),
            split(v, s),
            attn_bias,
            1.0 / (d as f64).sqrt(),
        );
        let out = out.swap_dims(1, 2).reshape([b, l, inner]);
        self.to_out[0].forward(out)
    }

    /// Spatial self-attention over a `[B, C, H, W]` feature map, with the block's group
    /// norm, residual and output rescaling.
    ///
    /// Computed channel-first (`W·X` on `[B, C, H·W]`), so the head split and merge are views
    /// rather than transposed copies (see [`crate::kernels::attention`]).
    pub fn forward_spatial(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, height, width] = x.dims();
        let n = height * width;
        let residual = x.clone();
        let mut seq = x.reshape([b, c, n]);
        if let Some(norm) = &self.group_norm {
            seq = norm.forward(seq);
        }
        let q = self.to_q.forward_channels_first(seq.clone());
        let k = self.to_k.forward_channels_first(seq.clone());
        let v = self.to_v.forward_channels_first(seq);
        let inner = q.dims()[1];
        let h = self.heads;
        let d = inner / h;
        let split = |t: Tensor<B, 3>| t.reshape([b, h, d, n]).swap_dims(2, 3);
        let out = attention(split(q), split(k), split(v), None, 1.0 / (d as f64).sqrt());
        let out = out.swap_dims(2, 3).reshape([b, inner, n]);
        let mut out = self.to_out[0]
            .forward_channels_first(out)
            .reshape([b, c, height, width]);
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out / self.rescale_output_factor;
        }
        out
    }
}
