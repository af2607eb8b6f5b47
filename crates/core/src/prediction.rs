//! What a denoiser's output means.

use serde::{Deserialize, Serialize};

/// The parameterisation of a model's output (diffusers' `prediction_type`).
///
/// With `x_t = α x_0 + σ ε` (variance-preserving: α² + σ² = 1):
/// - `Epsilon`: the noise ε;
/// - `Sample`: the clean sample x₀;
/// - `VPrediction`: v = α ε − σ x₀ (Salimans & Ho, 2022);
/// - `FlowPrediction`: the flow velocity ε − x₀ for `x_t = (1 − t) x₀ + t ε`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Prediction {
    /// The model predicts the added noise.
    #[default]
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The model predicts the clean sample.
    #[serde(rename = "sample")]
    Sample,
    /// The model predicts v = α ε − σ x₀.
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The model predicts the flow-matching velocity ε − x₀.
    #[serde(rename = "flow_prediction")]
    FlowPrediction,
}

impl Prediction {
    /// Every variant with its diffusers name.
    pub const ALL: [(Prediction, &'static str); 4] = [
        (Prediction::Epsilon, "epsilon"),
        (Prediction::Sample, "sample"),
        (Prediction::VPrediction, "v_prediction"),
        (Prediction::FlowPrediction, "flow_prediction"),
    ];

    /// The diffusers name of this parameterisation.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("epsilon")
    }

    /// Parses a diffusers name, with an error listing the valid ones.
    pub fn from_name(name: &str) -> crate::Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(p, _)| *p)
            .ok_or_else(|| {
                crate::Error::unknown("prediction_type", name, &Self::ALL.map(|(_, n)| n))
            })
    }
}
