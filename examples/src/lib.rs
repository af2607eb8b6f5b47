//! # ember-examples
//!
//! Runnable programs that show how Ember's pieces combine. Run one with
//! `cargo run -p ember-examples --example NAME`:
//!
//! - `analytic_mixture`: samples a 2-D Gaussian mixture through its exact denoiser with a
//!   dozen schedulers chosen at run time by diffusers class name, and compares the samples'
//!   moments and component weights with the true distribution.
//! - `schedulers_side_by_side`: one diffusers pipeline folder (the built-in tiny UNet by
//!   default), one seed, many schedulers swapped by class name; model evaluations, wall
//!   time and convergence towards a 200-step DDIM reference.
//! - `custom_scheduler`: a deterministic DDIM written in the example, implementing
//!   `ember_core::Scheduler`, driving the built-in UNet and matching `DDIMScheduler`.
//! - `custom_model`: the exact denoiser of a Gaussian data distribution written in the
//!   example, implementing `ember_core::Denoiser`, sampled with several built-in schedulers.
//!
//! This library part only holds the helpers the examples share.

use ember_core::analytic::GaussianMixture;
use ember_core::HostTensor;

/// Moments of a set of 2-D points and their share of each mixture component.
#[derive(Debug, Clone)]
pub struct SampleStats {
    /// Mean per coordinate.
    pub mean: Vec<f64>,
    /// Covariance, row-major.
    pub covariance: Vec<f64>,
    /// Fraction of points closest (most likely) to each component.
    pub weights: Vec<f64>,
}

/// Computes [`SampleStats`] for `[N, dim]` points against `mixture`'s components.
pub fn sample_stats(points: &HostTensor, mixture: &GaussianMixture) -> SampleStats {
    let dim = mixture.dim();
    let rows: Vec<&[f64]> = points.data().chunks(dim).collect();
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = (0..dim)
        .map(|d| rows.iter().map(|r| r[d]).sum::<f64>() / n)
        .collect();
    let mut covariance = vec![0.0; dim * dim];
    for r in &rows {
        for i in 0..dim {
            for j in 0..dim {
                covariance[i * dim + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / n;
            }
        }
    }
    let mut weights = vec![0.0; mixture.weights().len()];
    for k in mixture.classify(points) {
        weights[k] += 1.0 / n;
    }
    SampleStats {
        mean,
        covariance,
        weights,
    }
}

/// The image side length of a pipeline folder's UNet: `sample_size` of `unet/config.json`
/// (diffusers' pipelines sample at that size; the model itself accepts any multiple of its
/// downsampling factor).
pub fn unet_sample_size(pipeline_dir: &std::path::Path) -> anyhow::Result<usize> {
    let path = pipeline_dir.join("unet").join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let size = match json.get("sample_size") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        // [height, width]: use the height (the examples sample squares).
        Some(serde_json::Value::Array(v)) => v.first().and_then(serde_json::Value::as_u64),
        _ => None,
    };
    size.map(|s| s as usize)
        .ok_or_else(|| anyhow::anyhow!("{} has no integer `sample_size`", path.display()))
}
