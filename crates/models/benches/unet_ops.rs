//! The U-Net's hot operations alone, on DDPM-CIFAR10 shapes at batch 8 — where Ember's
//! forward time goes (issue 5's starting point). PyTorch's side:
//! `tools/reference/run.sh bench_unet_ops.py --threads 2`.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench -p ember-models --bench unet_ops
//! ```
//! One JSON line per op: median of 20 timed runs after 3 warm-ups, each ending with a scalar
//! read-back (burn-flex is eager, so the op is complete when it returns anyway).

use ember_conditioning::attention::{Attention, AttentionConfig};
use ember_conditioning::kernels::NormActivation;
use ember_conditioning::nn::{Conv2d, GroupNorm};
use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::{Distribution, Tensor};
use std::time::Instant;

fn time(name: &str, flops: f64, mut f: impl FnMut() -> f32) {
    for _ in 0..3 {
        std::hint::black_box(f());
    }
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = 0.5 * (ms[9] + ms[10]);
    let gflops = if flops > 0.0 {
        format!(", \"gflops\": {:.1}", flops / median / 1e6)
    } else {
        String::new()
    };
    println!("{{\"op\": \"{name}\", \"side\": \"ember-flex\", \"median_ms\": {median:.3}, \"min_ms\": {:.3}{gflops}}}", ms[0]);
}

fn main() {
    let device = Default::default();
    let x = Tensor::<B, 4>::random([8, 128, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let conv = Conv2d::<B>::new(128, 128, 3, 1, 1, &device);
    let flops = 2.0 * 8.0 * 128.0 * 128.0 * 9.0 * 32.0 * 32.0;
    time("conv2d_3x3_8x128x32x32", flops, || {
        conv.forward(x.clone()).sum().into_scalar()
    });
    let norm = GroupNorm::<B>::new(32, 128, 1e-6, "bench", &device).unwrap();
    time("groupnorm_silu_8x128x32x32", 0.0, || {
        norm.forward_fused(x.clone(), None, NormActivation::Silu)
            .sum()
            .into_scalar()
    });
    let h = Tensor::<B, 4>::random([8, 256, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let attn = Attention::<B>::new(
        &AttentionConfig {
            query_dim: 256,
            cross_attention_dim: None,
            heads: 1,
            dim_head: 256,
            qkv_bias: true,
            norm_num_groups: Some(32),
            norm_eps: 1e-6,
            residual_connection: true,
            rescale_output_factor: 1.0,
        },
        &device,
    )
    .unwrap();
    time("spatial_attention_8x256x16x16", 0.0, || {
        attn.forward_spatial(h.clone()).sum().into_scalar()
    });
    let a = Tensor::<B, 2>::random([1024, 1024], Distribution::Normal(0.0, 1.0), &device);
    time("matmul_1024", 2.0 * 1024f64.powi(3), || {
        a.clone().matmul(a.clone()).sum().into_scalar()
    });
}
