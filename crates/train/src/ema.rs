//! Exponential moving average of a model's weights (diffusers' `EMAModel`), kept on the
//! non-autodiff backend and matched to the trained model parameter by parameter id.

use crate::config::EmaConfig;
use crate::schedule::ema_decay;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_core::{Error, Result};
use std::collections::HashMap;

/// The averaged copy of a model and the number of updates it has had.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    /// The averaged weights.
    pub model: M,
    /// Optimizer steps seen (diffusers' `optimization_step`).
    pub optimization_step: usize,
}

struct Collect<B: Backend> {
    values: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.values.insert(param.id, param.val().reshape([-1]));
    }
}

struct Blend<B: Backend> {
    values: HashMap<ParamId, Tensor<B, 1>>,
    decay: f64,
    missing: Vec<ParamId>,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let id = param.id;
        match self.values.remove(&id) {
            Some(current) => {
                let decay = self.decay;
                param.map(|avg| {
                    let current = current.reshape(avg.shape());
                    if decay == 0.0 {
                        current
                    } else {
                        avg.mul_scalar(decay) + current.mul_scalar(1.0 - decay)
                    }
                })
            }
            None => {
                self.missing.push(id);
                param
            }
        }
    }
}

impl<M> Ema<M> {
    /// Starts an average at `model` (a copy of the weights being trained).
    pub fn new(model: M) -> Self {
        Self {
            model,
            optimization_step: 0,
        }
    }

    /// One EMA step after an optimizer step: `avg ← d·avg + (1 − d)·current` with the
    /// decay of [`ema_decay`]. `current` must be the trained model's weights (same
    /// parameter ids); returns the decay used.
    pub fn update<B: Backend>(&mut self, current: &M, config: &EmaConfig) -> Result<f64>
    where
        M: Module<B>,
    {
        self.optimization_step += 1;
        let decay = ema_decay(config, self.optimization_step);
        let mut collect = Collect::<B> {
            values: HashMap::new(),
        };
        current.visit(&mut collect);
        let mut blend = Blend {
            values: collect.values,
            decay,
            missing: Vec::new(),
        };
        let model = self.model.clone().map(&mut blend);
        if !blend.missing.is_empty() || !blend.values.is_empty() {
            return Err(Error::State(format!(
                "EMA and trained model disagree on {} parameter(s)",
                blend.missing.len() + blend.values.len()
            )));
        }
        self.model = model;
        Ok(decay)
    }
}
