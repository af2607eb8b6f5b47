//! A residual MLP denoiser for low-dimensional data (2-D toy distributions and the like),
//! where a U-Net has nothing to convolve.
//!
//! `x [B, F]` → input projection → `num_blocks` residual blocks
//! `h + W₂·SiLU(W₁·SiLU(h) + e)` where `e` is the timestep embedding (sinusoidal → MLP,
//! plus a class embedding when the model is class-conditional) → SiLU → output projection.
//! diffusers has no such model, so its folder uses Ember's own `_class_name`
//! (`EmberMLPDenoiser`) next to the usual `config.json` + safetensors layout.

use crate::EmberBackend;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;
use ember_conditioning::embeddings::{sinusoidal_embedding, LabelEmbedding, TimestepEmbedding};
use ember_conditioning::nn::{Activation, Linear};
use ember_core::{Conditioning, Denoiser, Error, Prediction, Result};
use serde::{Deserialize, Serialize};

/// The `_class_name` of [`MlpDenoiser`] folders.
pub const MLP_CLASS_NAME: &str = "EmberMLPDenoiser";

/// Configuration of an [`MlpDenoiser`] (its `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Always [`MLP_CLASS_NAME`].
    #[serde(rename = "_class_name", default = "mlp_class_name")]
    pub class_name: String,
    /// Features per sample (2 for points in the plane).
    pub in_features: usize,
    /// Width of the hidden layers.
    #[serde(default = "default_hidden")]
    pub hidden_features: usize,
    /// Residual blocks.
    #[serde(default = "default_blocks")]
    pub num_blocks: usize,
    /// Channels of the sinusoidal timestep features.
    #[serde(default = "default_time_channels")]
    pub time_channels: usize,
    /// Class labels (the null class for guidance included), if class-conditional.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

fn mlp_class_name() -> String {
    MLP_CLASS_NAME.to_string()
}
fn default_hidden() -> usize {
    128
}
fn default_blocks() -> usize {
    3
}
fn default_time_channels() -> usize {
    64
}

impl MlpConfig {
    /// Parses and validates a `config.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json).map_err(|e| Error::Parse {
            what: "EmberMLPDenoiser config".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.class_name != MLP_CLASS_NAME {
            return Err(Error::config(
                "_class_name",
                format!("must be {MLP_CLASS_NAME}, got {}", self.class_name),
            ));
        }
        for (name, v) in [
            ("in_features", self.in_features),
            ("hidden_features", self.hidden_features),
            ("time_channels", self.time_channels),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        if self.time_channels % 2 == 1 {
            return Err(Error::config(
                "time_channels",
                format!("must be even, got {}", self.time_channels),
            ));
        }
        if self.num_class_embeds == Some(0) {
            return Err(Error::config("num_class_embeds", "must be at least 1"));
        }
        Ok(())
    }
}

/// One residual block: `h + W₂·SiLU(W₁·SiLU(h) + e)`.
#[derive(Module, Debug)]
pub struct MlpBlock<B: EmberBackend> {
    /// First layer.
    pub linear_1: Linear<B>,
    /// Second layer.
    pub linear_2: Linear<B>,
}

/// The residual MLP denoiser (see the module docs).
#[derive(Module, Debug)]
pub struct MlpDenoiser<B: EmberBackend> {
    /// Timestep MLP `time_channels → hidden → hidden`.
    pub time_embedding: TimestepEmbedding<B>,
    /// Class table (diffusers' `class_embedding`), if class-conditional.
    pub class_embedding: Option<LabelEmbedding<B>>,
    /// `in_features → hidden`.
    pub input: Linear<B>,
    /// The residual blocks.
    pub blocks: Vec<MlpBlock<B>>,
    /// `hidden → in_features`.
    pub output: Linear<B>,
    #[module(skip)]
    config: MlpConfig,
    #[module(skip)]
    prediction: Prediction,
}

impl<B: EmberBackend> MlpDenoiser<B> {
    /// A randomly initialised model (PyTorch's default initialisation).
    pub fn new(config: MlpConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let h = config.hidden_features;
        let block = || MlpBlock {
            linear_1: Linear::new(h, h, true, device),
            linear_2: Linear::new(h, h, true, device),
        };
        Ok(Self {
            time_embedding: TimestepEmbedding::new(
                config.time_channels,
                h,
                None,
                Activation::Silu,
                None,
                None,
                device,
            ),
            class_embedding: config
                .num_class_embeds
                .map(|n| LabelEmbedding::new(n, h, false, device)),
            input: Linear::new(config.in_features, h, true, device),
            blocks: (0..config.num_blocks).map(|_| block()).collect(),
            output: Linear::new(h, config.in_features, true, device),
            config,
            prediction: Prediction::Epsilon,
        })
    }

    /// Sets what the output means (from the scheduler's `prediction_type`).
    pub fn with_prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }
}

impl<B: EmberBackend> Denoiser<B, 2> for MlpDenoiser<B> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn forward(
        &self,
        sample: Tensor<B, 2>,
        timesteps: Tensor<B, 1>,
        conditioning: &Conditioning<B>,
    ) -> Result<Tensor<B, 2>> {
        let [b, f] = sample.dims();
        if f != self.config.in_features {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: format!("[B, {}]", self.config.in_features),
                got: vec![b, f],
            });
        }
        let t = match timesteps.dims()[0] {
            n if n == b => timesteps,
            1 => timesteps.expand([b]),
            n => {
                return Err(Error::Shape {
                    what: "timesteps".into(),
                    expected: format!("[{b}] or [1]"),
                    got: vec![n],
                })
            }
        };
        let t_features = sinusoidal_embedding(t, self.config.time_channels, true, 0.0, 1.0, 1e4);
        let mut emb = self.time_embedding.forward(t_features, None);
        match (&self.class_embedding, &conditioning.class_labels) {
            (Some(table), Some(labels)) => emb = emb + table.forward(labels.clone())?,
            (Some(_), None) => {
                return Err(Error::argument(
                    "class_labels",
                    "this model is class-conditional and needs class labels",
                ))
            }
            _ => {}
        }
        let mut h = self.input.forward(sample);
        for block in &self.blocks {
            let inner = block.linear_1.forward(silu(h.clone())) + emb.clone();
            h = h + block.linear_2.forward(silu(inner));
        }
        Ok(self.output.forward(silu(h)))
    }
}
