//! A diffusion "model" whose exact answer is known: the posterior-mean denoiser of a
//! Gaussian mixture.
//!
//! For data x₀ ~ Σₖ wₖ N(μₖ, sₖ² I) and a noisy sample x = α x₀ + σ ε, the optimal
//! denoiser E[x₀ | x] has a closed form: each component stays Gaussian under noising,
//! x | k ~ N(α μₖ, (α² sₖ² + σ²) I), so the posterior component weights are a softmax of
//! the component log-likelihoods, and within component k
//! E[x₀ | x, k] = μₖ + α sₖ² / (α² sₖ² + σ²) · (x − α μₖ).
//! This lets samplers be tested without a network: with the exact denoiser, a sampler's
//! output distribution must be the mixture itself, and deterministic solvers must converge
//! to the exact probability-flow ODE solution.

use crate::sample::{HostTensor, SampleTensor};
use crate::{Error, Result};
use rand::distr::weighted::WeightedIndex;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// An isotropic Gaussian mixture in `dim` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    stds: Vec<f64>,
}

impl GaussianMixture {
    /// A mixture with the given component weights (normalised here), means and standard
    /// deviations. Errors on mismatched lengths, non-positive weights or stds, or ragged means.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, stds: Vec<f64>) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || stds.len() != k {
            return Err(Error::argument(
                "mixture",
                format!(
                    "{k} weights, {} means and {} stds must agree and be non-empty",
                    means.len(),
                    stds.len()
                ),
            ));
        }
        let dim = means[0].len();
        if dim == 0 || means.iter().any(|m| m.len() != dim) {
            return Err(Error::argument(
                "means",
                "every mean must have the same, non-zero length",
            ));
        }
        if weights
            .iter()
            .chain(&stds)
            .any(|&v| !(v > 0.0 && v.is_finite()))
        {
            return Err(Error::argument(
                "weights/stds",
                "must be positive and finite",
            ));
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            weights: weights.iter().map(|w| w / total).collect(),
            means,
            stds,
        })
    }

    /// The 2-D, three-component mixture used across Ember's tests and demos.
    pub fn demo_2d() -> Self {
        Self::new(
            vec![0.5, 0.3, 0.2],
            vec![vec![-1.5, 0.5], vec![1.5, 1.0], vec![0.0, -1.5]],
            vec![0.3, 0.5, 0.4],
        )
        .expect("valid by construction")
    }

    /// Dimension of the data.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }
    /// Normalised component weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// Component means.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }
    /// Component standard deviations.
    pub fn stds(&self) -> &[f64] {
        &self.stds
    }

    /// Mean of the whole mixture.
    pub fn mean(&self) -> Vec<f64> {
        (0..self.dim())
            .map(|d| {
                self.weights
                    .iter()
                    .zip(&self.means)
                    .map(|(w, m)| w * m[d])
                    .sum()
            })
            .collect()
    }

    /// Covariance of the whole mixture (`dim × dim`, row-major).
    pub fn covariance(&self) -> Vec<f64> {
        let (dim, mu) = (self.dim(), self.mean());
        let mut cov = vec![0.0; dim * dim];
        for ((w, m), s) in self.weights.iter().zip(&self.means).zip(&self.stds) {
            for i in 0..dim {
                for j in 0..dim {
                    let within = if i == j { s * s } else { 0.0 };
                    cov[i * dim + j] += w * (within + (m[i] - mu[i]) * (m[j] - mu[j]));
                }
            }
        }
        cov
    }

    /// Draws `n` data samples as an `[n, dim]` host tensor.
    pub fn sample<R: Rng>(&self, n: usize, rng: &mut R) -> HostTensor {
        let dim = self.dim();
        let pick = WeightedIndex::new(&self.weights).expect("weights validated in new");
        let mut data = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let k = pick.sample(rng);
            for d in 0..dim {
                let z: f64 = StandardNormal.sample(rng);
                data.push(self.means[k][d] + self.stds[k] * z);
            }
        }
        HostTensor::new(vec![n, dim], data).expect("shape matches by construction")
    }

    /// The component each point is most likely to come from (for weight estimates).
    pub fn classify(&self, x: &HostTensor) -> Vec<usize> {
        let dim = self.dim();
        x.data()
            .chunks(dim)
            .map(|p| {
                let lp = self.log_likelihoods(p, 1.0, 0.0);
                lp.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    )
                    .0
            })
            .collect()
    }

    /// log(wₖ) + log N(x; α μₖ, (α² sₖ² + σ²) I) for every component.
    fn log_likelihoods(&self, x: &[f64], alpha: f64, sigma: f64) -> Vec<f64> {
        let dim = x.len() as f64;
        self.weights
            .iter()
            .zip(&self.means)
            .zip(&self.stds)
            .map(|((w, m), s)| {
                let var = alpha * alpha * s * s + sigma * sigma;
                let d2: f64 = x
                    .iter()
                    .zip(m)
                    .map(|(xi, mi)| (xi - alpha * mi).powi(2))
                    .sum();
                w.ln() - 0.5 * d2 / var - 0.5 * dim * (2.0 * std::f64::consts::PI * var).ln()
            })
            .collect()
    }

    /// E[x₀ | x] for x = α x₀ + σ ε, for a batch `x` of shape `[N, dim]` (or any shape whose
    /// trailing elements per sample number `dim`).
    pub fn posterior_mean(&self, x: &HostTensor, alpha: f64, sigma: f64) -> HostTensor {
        let dim = self.dim();
        let mut out = x.clone();
        for p in out.data_mut().chunks_mut(dim) {
            let lp = self.log_likelihoods(p, alpha, sigma);
            let max = lp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let r: Vec<f64> = lp.iter().map(|l| (l - max).exp()).collect();
            let z: f64 = r.iter().sum();
            let mut x0 = vec![0.0; dim];
            for (k, rk) in r.iter().enumerate() {
                let (m, s) = (&self.means[k], self.stds[k]);
                let gain = alpha * s * s / (alpha * alpha * s * s + sigma * sigma);
                for d in 0..dim {
                    x0[d] += rk / z * (m[d] + gain * (p[d] - alpha * m[d]));
                }
            }
            p.copy_from_slice(&x0);
        }
        out
    }

    /// The exact noise prediction ε̂ = (x − α E[x₀|x]) / σ.
    pub fn epsilon(&self, x: &HostTensor, alpha: f64, sigma: f64) -> HostTensor {
        let x0 = self.posterior_mean(x, alpha, sigma);
        x.sub(&x0.scale(alpha)).scale(1.0 / sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn posterior_mean_limits() {
        let g = GaussianMixture::demo_2d();
        let x = HostTensor::new(vec![1, 2], vec![0.3, -0.2]).unwrap();
        // No noise: the denoiser is the identity.
        let d = g.posterior_mean(&x, 1.0, 1e-9);
        assert!((d.data()[0] - 0.3).abs() < 1e-6 && (d.data()[1] + 0.2).abs() < 1e-6);
        // Pure noise: the denoiser returns the data mean.
        let d = g.posterior_mean(&x, 1e-9, 1.0);
        let m = g.mean();
        assert!((d.data()[0] - m[0]).abs() < 1e-6 && (d.data()[1] - m[1]).abs() < 1e-6);
    }

    #[test]
    fn samples_match_moments() {
        let g = GaussianMixture::demo_2d();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let x = g.sample(20_000, &mut rng);
        let m: f64 = x.data().chunks(2).map(|p| p[0]).sum::<f64>() / 20_000.0;
        assert!((m - g.mean()[0]).abs() < 0.03);
        assert!(GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![0.0]).is_err());
    }
}
