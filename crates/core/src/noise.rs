//! Seeded, per-sample Gaussian noise.
//!
//! Noise is generated on the host from a ChaCha8 stream keyed by `(seed, purpose)` and the
//! sample's index in the batch, then uploaded. So sample `i` receives the same noise whether
//! it is generated alone or inside a batch of any size, and every backend starts from the
//! same numbers. `purpose` separates independent draws: 0 is the initial latent, and each
//! stochastic scheduler step `k` uses `1 + k`.

use crate::sample::HostTensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A reproducible source of standard-normal noise for batches of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseSource {
    seed: u64,
}

impl NoiseSource {
    /// A source keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The seed this source was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Standard-normal values for one sample of `len` elements, for the given draw purpose.
    pub fn sample_noise(&self, sample_index: u64, purpose: u64, len: usize) -> Vec<f64> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&purpose.to_le_bytes());
        key[16..24].copy_from_slice(b"ember-nz");
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(sample_index);
        (0..len).map(|_| StandardNormal.sample(&mut rng)).collect()
    }

    /// Noise of `shape` (batch first) whose sample `b` is sample number `first_index + b`.
    pub fn batch_noise(&self, shape: &[usize], first_index: u64, purpose: u64) -> HostTensor {
        let batch = shape.first().copied().unwrap_or(1);
        let per: usize = shape.iter().skip(1).product();
        let mut data = Vec::with_capacity(batch * per);
        for b in 0..batch {
            data.extend(self.sample_noise(first_index + b as u64, purpose, per));
        }
        HostTensor::new(shape.to_vec(), data).expect("shape and data agree by construction")
    }

    /// The initial latent noise (purpose 0) for a batch starting at sample `first_index`.
    pub fn initial_noise(&self, shape: &[usize], first_index: u64) -> HostTensor {
        self.batch_noise(shape, first_index, 0)
    }

    /// The noise for stochastic scheduler step `step` (purpose `1 + step`).
    pub fn step_noise(&self, shape: &[usize], first_index: u64, step: u64) -> HostTensor {
        self.batch_noise(shape, first_index, 1 + step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_of_batch_and_purpose_separated() {
        let n = NoiseSource::new(7);
        let big = n.batch_noise(&[4, 3, 2], 0, 0);
        let one = n.batch_noise(&[1, 3, 2], 2, 0);
        assert_eq!(&big.data()[12..18], one.data());
        let other = n.batch_noise(&[1, 3, 2], 2, 1);
        assert_ne!(one.data(), other.data());
        let mean: f64 = n.sample_noise(0, 0, 100_000).iter().sum::<f64>() / 1e5;
        assert!(mean.abs() < 0.02);
    }
}
