//! Host-side (f64) schedules of the loop: the learning rate and the EMA decay, each exactly
//! as diffusers computes them so a run here and one with diffusers step alike.

use crate::config::{EmaConfig, OptimizerConfig};

/// Learning rate of optimizer step `step` (from 0) of `total` (diffusers'
/// `get_{constant,cosine}_schedule_with_warmup`, whose `LambdaLR` gives step 0 the factor
/// `0/warmup`): linear warm-up `step / warmup`, then constant or
/// `½(1 + cos(π · (step − warmup) / (total − warmup)))`.
pub fn learning_rate(config: &OptimizerConfig, step: usize, total: usize) -> f64 {
    let base = config.learning_rate;
    let warmup = config.warmup_steps;
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    match config.schedule.as_str() {
        "cosine" => {
            let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
            base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
        _ => base,
    }
}

/// EMA decay used at optimizer step `optimization_step` (counted from 1, as diffusers'
/// `EMAModel.optimization_step` after its increment): 0 until `update_after_step` has
/// passed (the EMA copies the weights), then the warm-up curve, clamped to
/// `[min_decay, decay]`.
pub fn ema_decay(config: &EmaConfig, optimization_step: usize) -> f64 {
    let k = optimization_step as f64 - config.update_after_step as f64 - 1.0;
    if k <= 0.0 {
        return 0.0;
    }
    let current = if config.warmup {
        1.0 - (1.0 + k / config.inv_gamma).powf(-config.power)
    } else {
        (1.0 + k) / (10.0 + k)
    };
    current.min(config.decay).max(config.min_decay)
}
