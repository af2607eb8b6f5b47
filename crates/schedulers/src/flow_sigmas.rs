//! Noise levels of rectified-flow / flow-matching schedules (Lipman et al. 2023; Esser et al.
//! 2024, "Scaling Rectified Flow Transformers"), shared by the flow-matching schedulers and
//! the `use_flow_sigmas` options of the multistep solvers.
//!
//! With `x_σ = (1 − σ) x₀ + σ ε`, σ ∈ [0, 1] is both the noise level and (× T) the timestep
//! the model is conditioned on. Schedules are reshaped by
//!
//! - a constant shift s (SD3 eq. 23): σ' = s σ / (1 + (s − 1) σ);
//! - a resolution-dependent shift with parameter μ (Flux): exponential
//!   σ' = e^μ / (e^μ + (1/σ − 1)^τ), or linear σ' = μ / (μ + (1/σ − 1)^τ), with τ = 1;
//! - a terminal stretch (LTX-Video): 1 − σ is rescaled so the last σ equals `shift_terminal`.
//!
//! # Precision
//! diffusers runs these formulas in float64 when it builds the σ grid itself (`np.linspace`)
//! but in float32 when it starts from a float32 array (custom sigmas or timesteps passed to
//! `FlowMatchEulerDiscreteScheduler`, and the training table built with torch at construction).
//! [`Precision`] reproduces both: in float32 mode every intermediate result is rounded to
//! float32, which for +, −, ×, ÷ gives exactly the float32 operation's result.

use crate::schedule::f32r;
use serde::{Deserialize, Serialize};

/// diffusers' `time_shift_type`: the form of the resolution-dependent shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TimeShiftType {
    /// σ' = e^μ / (e^μ + (1/σ − 1)).
    #[default]
    #[serde(rename = "exponential")]
    Exponential,
    /// σ' = μ / (μ + (1/σ − 1)).
    #[serde(rename = "linear")]
    Linear,
}

/// The floating-point width diffusers evaluates a σ formula in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// numpy float64.
    F64,
    /// numpy / torch float32: every intermediate is rounded to float32.
    F32,
}

impl Precision {
    /// Rounds `x` to this precision.
    pub fn r(self, x: f64) -> f64 {
        match self {
            Precision::F64 => x,
            Precision::F32 => crate::schedule::f32r(x),
        }
    }
}

/// The constant shift of SD3 (eq. 23): σ' = s σ / (1 + (s − 1) σ). `s = 1` is the identity.
pub fn shift_sigma(shift: f64, sigma: f64, p: Precision) -> f64 {
    // `shift * sigmas / (1 + (shift - 1) * sigmas)`, evaluated left to right as numpy/torch do;
    // `shift - 1` is a Python float computed in f64 before it meets the array.
    let num = p.r(p.r(shift) * sigma);
    let den = p.r(1.0 + p.r(p.r(shift - 1.0) * sigma));
    p.r(num / den)
}

/// diffusers' `time_shift(mu, 1.0, t)`: the resolution-dependent shift with parameter μ.
pub fn time_shift(kind: TimeShiftType, mu: f64, sigma: f64, p: Precision) -> f64 {
    // (1/t − 1)^1.0: numpy's power with exponent 1.0 returns its base exactly.
    let odds = p.r(p.r(1.0 / sigma) - 1.0);
    let m = match kind {
        TimeShiftType::Exponential => p.r(mu.exp()),
        TimeShiftType::Linear => p.r(mu),
    };
    p.r(m / p.r(m + odds))
}

/// diffusers' `stretch_shift_to_terminal`: rescales 1 − σ so the last σ becomes `terminal`:
/// σ' = 1 − (1 − σ)/k with k = (1 − σ_last)/(1 − terminal).
pub fn stretch_to_terminal(sigmas: &mut [f64], terminal: f64, p: Precision) {
    let Some(&last) = sigmas.last() else { return };
    let scale = p.r(p.r(1.0 - last) / p.r(1.0 - terminal));
    for s in sigmas.iter_mut() {
        *s = p.r(1.0 - p.r(p.r(1.0 - *s) / scale));
    }
}

/// The training-time σ table of the flow-matching schedulers, as their constructors build it
/// in float32: σ_i = (T − i)/T for i = 0..T, shifted by `shift` when `apply_shift`.
/// Returns (σ, timesteps = σ·T), both as float32 values held in f64.
pub fn train_flow_sigmas(
    num_train_timesteps: usize,
    shift: f64,
    apply_shift: bool,
) -> (Vec<f64>, Vec<f64>) {
    let t = num_train_timesteps as f64;
    let sigmas: Vec<f64> = (0..num_train_timesteps)
        .map(|i| {
            let s = f32r((t - i as f64) / t);
            if apply_shift {
                shift_sigma(shift, s, Precision::F32)
            } else {
                s
            }
        })
        .collect();
    let timesteps = sigmas.iter().map(|&s| f32r(s * t)).collect();
    (sigmas, timesteps)
}

/// The step index the flow-matching schedulers start from for `timestep`: its position in
/// `schedule`, the second position when it occurs more than once (so an img2img start does
/// not skip a σ); `None` when it does not occur (diffusers raises an IndexError).
/// Values are compared as float32, as torch compares a Python float with a float32 tensor.
pub fn flow_index_for_timestep(schedule: &[f64], timestep: f64) -> Option<usize> {
    crate::schedule::second_or_first_match(schedule, |t| t as f32 == timestep as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_identity_and_endpoints() {
        for p in [Precision::F64, Precision::F32] {
            assert_eq!(shift_sigma(1.0, 0.375, p), 0.375);
            assert_eq!(shift_sigma(3.0, 1.0, p), 1.0);
            assert!(shift_sigma(3.0, 0.5, p) > 0.5);
        }
        // Exponential shift with μ = 0 is the identity; the linear one with μ = 1 too.
        assert!(
            (time_shift(TimeShiftType::Exponential, 0.0, 0.3, Precision::F64) - 0.3).abs() < 1e-15
        );
        assert!((time_shift(TimeShiftType::Linear, 1.0, 0.3, Precision::F64) - 0.3).abs() < 1e-15);
    }

    #[test]
    fn stretch_hits_terminal() {
        let mut s = vec![1.0, 0.6, 0.2];
        stretch_to_terminal(&mut s, 0.1, Precision::F64);
        assert!((s[0] - 1.0).abs() < 1e-15 && (s[2] - 0.1).abs() < 1e-15);
    }

    #[test]
    fn index_lookup() {
        assert_eq!(
            flow_index_for_timestep(&[1000.0, 500.0, 500.0], 500.0),
            Some(2)
        );
        assert_eq!(flow_index_for_timestep(&[1000.0, 500.0], 1000.0), Some(0));
        assert_eq!(flow_index_for_timestep(&[1000.0, 500.0], 7.0), None);
    }
}
