//! Noise-level (σ) utilities shared by the σ-space schedulers: Karras, exponential and
//! beta spacings, and the σ → timestep interpolation of k-diffusion / diffusers.

use crate::schedule::linspace_f64;

/// ρ of Karras et al. (2022), eq. 5: "7 is the value used in the paper".
pub const KARRAS_RHO: f64 = 7.0;

/// Karras et al. (2022) eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace_f64(0.0, 1.0, n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(rho))
        .collect()
}

/// σ evenly spaced in log σ from σ_max down to σ_min.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace_f64(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// "Beta sampling is all you need" (Lee et al. 2024): σ_i = σ_min + F⁻¹(1 − i/(n−1))·(σ_max − σ_min)
/// with F the CDF of Beta(alpha, beta).
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize, alpha: f64, beta: f64) -> Vec<f64> {
    linspace_f64(0.0, 1.0, n)
        .into_iter()
        .map(|r| sigma_min + beta_ppf(1.0 - r, alpha, beta) * (sigma_max - sigma_min))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose σ matches, by linear
/// interpolation in log σ between the two neighbouring training σs.
///
/// `log_sigmas` are the training log-σ in increasing-timestep order (increasing σ).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    // low_idx = last index with log_sigma >= log_sigmas[i] (argmax of the cumulative count),
    // clipped to n − 2; with no such index numpy's argmax gives 0.
    let count = log_sigmas
        .iter()
        .filter(|&&ls| log_sigma - ls >= 0.0)
        .count();
    let low_idx = if count == 0 {
        0
    } else {
        (count - 1).min(n - 2)
    };
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// numpy's `interp(x, xp, fp)` for increasing `xp` (values outside clamp to the ends).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    let (x0, x1) = (xp[j], xp[j + 1]);
    if x1 == x0 {
        return fp[j];
    }
    fp[j] + (x - x0) * (fp[j + 1] - fp[j]) / (x1 - x0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction
/// (modified Lentz), using the symmetry I_x(a,b) = 1 − I_{1−x}(b,a) where it converges faster.
pub fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The quantile function (inverse CDF) of Beta(a, b), by bisection to machine precision
/// (the CDF is monotone, so bisection cannot fail; 200 halvings exhaust f64).
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_cdf_known_values() {
        // Beta(1,1) is uniform; Beta(2,2) CDF = 3x² − 2x³.
        assert!((incomplete_beta(0.3, 1.0, 1.0) - 0.3).abs() < 1e-14);
        let x: f64 = 0.3;
        assert!((incomplete_beta(x, 2.0, 2.0) - (3.0 * x * x - 2.0 * x.powi(3))).abs() < 1e-14);
        // Symmetric distribution: median 0.5.
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-12);
        let q = beta_ppf(0.9, 0.6, 0.6);
        assert!((incomplete_beta(q, 0.6, 0.6) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn karras_endpoints() {
        let s = karras_sigmas(0.03, 14.6, 10, KARRAS_RHO);
        assert!((s[0] - 14.6).abs() < 1e-12 && (s[9] - 0.03).abs() < 1e-12);
    }

    #[test]
    fn sigma_to_t_inverts_training_sigmas() {
        let log_sigmas: Vec<f64> = (0..100).map(|i| (0.01 * (i as f64 + 1.0)).ln()).collect();
        assert!((sigma_to_t(0.5, &log_sigmas) - 49.0).abs() < 1e-9);
        assert_eq!(sigma_to_t(1e-5, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(10.0, &log_sigmas), 99.0);
    }
}
