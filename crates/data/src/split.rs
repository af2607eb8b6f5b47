//! Seeded shuffling and train / validation splits over dataset indices.

use ember_core::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `0..n` in an order fixed by `seed` (Fisher–Yates with ChaCha8).
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        idx.swap(i, j);
    }
    idx
}

/// Splits `0..n` into disjoint (train, validation) index lists, the validation part being
/// `round(n · validation_fraction)` indices, both drawn from one seeded shuffle. Fails when
/// the fraction is not in `[0, 1)`.
pub fn train_validation_split(
    n: usize,
    validation_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(Error::argument(
            "validation_fraction",
            format!("{validation_fraction} is not in [0, 1)"),
        ));
    }
    let mut idx = shuffled_indices(n, seed);
    let n_val = ((n as f64) * validation_fraction).round() as usize;
    let val = idx.split_off(n - n_val.min(n));
    Ok((idx, val))
}
