//! Synthetic data with known answers: a 2-D Gaussian mixture whose exact moments and
//! component weights a trained model's samples can be checked against.

use ember_core::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A mixture of 2-D Gaussians.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture2d {
    /// Component probabilities (normalised to sum to 1).
    pub weights: Vec<f64>,
    /// Component means.
    pub means: Vec<[f64; 2]>,
    /// Component covariances (symmetric positive definite).
    pub covariances: Vec<[[f64; 2]; 2]>,
}

impl GaussianMixture2d {
    /// A mixture from unnormalised weights, means and covariances; fails with a one-line
    /// error when the lists differ in length, are empty, a weight is not a positive finite
    /// number, or a covariance is not symmetric positive definite.
    pub fn new(
        weights: Vec<f64>,
        means: Vec<[f64; 2]>,
        covariances: Vec<[[f64; 2]; 2]>,
    ) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || covariances.len() != k {
            return Err(Error::argument(
                "mixture",
                format!(
                    "needs the same non-zero number of weights, means and covariances (got {}, {}, {})",
                    k,
                    means.len(),
                    covariances.len()
                ),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(Error::argument(
                "mixture weights",
                format!("{w} is not a positive finite number"),
            ));
        }
        for (i, c) in covariances.iter().enumerate() {
            let symmetric = (c[0][1] - c[1][0]).abs() <= 1e-12 * (c[0][1].abs() + 1.0);
            let det = c[0][0] * c[1][1] - c[0][1] * c[1][0];
            if !(symmetric && c[0][0] > 0.0 && det > 0.0 && det.is_finite()) {
                return Err(Error::argument(
                    "mixture covariances",
                    format!("component {i}: {c:?} is not symmetric positive definite"),
                ));
            }
        }
        if let Some(m) = means.iter().find(|m| !m.iter().all(|v| v.is_finite())) {
            return Err(Error::argument(
                "mixture means",
                format!("{m:?} is not finite"),
            ));
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            weights: weights.iter().map(|w| w / total).collect(),
            means,
            covariances,
        })
    }

    /// `k` equally weighted isotropic components of standard deviation `std`, evenly spaced
    /// on a circle of radius `radius` (the usual toy target).
    pub fn ring(k: usize, radius: f64, std: f64) -> Result<Self> {
        let means = (0..k)
            .map(|i| {
                let a = 2.0 * std::f64::consts::PI * i as f64 / k.max(1) as f64;
                [radius * a.cos(), radius * a.sin()]
            })
            .collect();
        let var = std * std;
        Self::new(vec![1.0; k], means, vec![[[var, 0.0], [0.0, var]]; k])
    }

    /// `n` points and the component each was drawn from, reproducible from `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> (Vec<[f32; 2]>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let chol: Vec<[f64; 3]> = self
            .covariances
            .iter()
            .map(|c| {
                let l00 = c[0][0].sqrt();
                let l10 = c[1][0] / l00;
                [l00, l10, (c[1][1] - l10 * l10).sqrt()]
            })
            .collect();
        let mut points = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let mut k = 0;
            let mut acc = self.weights[0];
            while u >= acc && k + 1 < self.weights.len() {
                k += 1;
                acc += self.weights[k];
            }
            let (z0, z1): (f64, f64) = (rng.sample(StandardNormal), rng.sample(StandardNormal));
            let [l00, l10, l11] = chol[k];
            let m = self.means[k];
            points.push([
                (m[0] + l00 * z0) as f32,
                (m[1] + l10 * z0 + l11 * z1) as f32,
            ]);
            labels.push(k);
        }
        (points, labels)
    }

    /// The mixture's exact mean.
    pub fn mean(&self) -> [f64; 2] {
        let mut m = [0.0; 2];
        for (w, mu) in self.weights.iter().zip(&self.means) {
            m[0] += w * mu[0];
            m[1] += w * mu[1];
        }
        m
    }

    /// The mixture's exact covariance: `Σ wₖ (Σₖ + μₖμₖᵀ) − μμᵀ`.
    pub fn covariance(&self) -> [[f64; 2]; 2] {
        let m = self.mean();
        let mut c = [[0.0; 2]; 2];
        for ((w, mu), s) in self.weights.iter().zip(&self.means).zip(&self.covariances) {
            for i in 0..2 {
                for j in 0..2 {
                    c[i][j] += w * (s[i][j] + mu[i] * mu[j]);
                }
            }
        }
        for i in 0..2 {
            for j in 0..2 {
                c[i][j] -= m[i] * m[j];
            }
        }
        c
    }
}
