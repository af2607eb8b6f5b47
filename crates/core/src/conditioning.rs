//! The bundle of conditioning signals a pipeline hands to a model.

use burn::tensor::{backend::Backend, Int, Tensor};

/// Everything a model may be conditioned on. A model reads what it uses, ignores the rest,
/// and returns a clear error when something it needs is missing.
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// Class labels `[B]` (diffusers' `class_labels`).
    pub class_labels: Option<Tensor<B, 1, Int>>,
    /// Float class conditioning `[B, dim]` for models whose class embedding is a projection
    /// (diffusers' `class_embed_type` `projection`, `simple_projection` or `identity`,
    /// which take `class_labels` as a float tensor).
    pub class_embeds: Option<Tensor<B, 2>>,
    /// Text-encoder hidden states `[B, L, D]` (`encoder_hidden_states`).
    pub encoder_hidden_states: Option<Tensor<B, 3>>,
    /// Attention mask over the encoder states `[B, L]`, 1 = keep (`encoder_attention_mask`).
    pub encoder_attention_mask: Option<Tensor<B, 2>>,
    /// SDXL pooled text embeddings `[B, D]` (`added_cond_kwargs["text_embeds"]`).
    pub text_embeds: Option<Tensor<B, 2>>,
    /// SDXL micro-conditioning `[B, 6]` (`added_cond_kwargs["time_ids"]`).
    pub time_ids: Option<Tensor<B, 2>>,
    /// Guidance / LCM condition embedding input `[B, D]` (`timestep_cond`).
    pub timestep_cond: Option<Tensor<B, 2>>,
    /// ControlNet residuals added to the down-block skip connections, in order.
    pub down_block_additional_residuals: Vec<Tensor<B, 4>>,
    /// ControlNet residual added to the mid-block output.
    pub mid_block_additional_residual: Option<Tensor<B, 4>>,
    /// Image latents concatenated to the sample on the channel axis (inpainting, depth).
    pub concat_latents: Option<Tensor<B, 4>>,
}

impl<B: Backend> Default for Conditioning<B> {
    fn default() -> Self {
        Self {
            class_labels: None,
            class_embeds: None,
            encoder_hidden_states: None,
            encoder_attention_mask: None,
            text_embeds: None,
            time_ids: None,
            timestep_cond: None,
            down_block_additional_residuals: Vec::new(),
            mid_block_additional_residual: None,
            concat_latents: None,
        }
    }
}

impl<B: Backend> Conditioning<B> {
    /// No conditioning at all (an unconditional model).
    pub fn none() -> Self {
        Self::default()
    }
    /// Conditioning on class labels only.
    pub fn with_class_labels(labels: Tensor<B, 1, Int>) -> Self {
        Self {
            class_labels: Some(labels),
            ..Self::default()
        }
    }
    /// Conditioning on text-encoder states only.
    pub fn with_encoder_hidden_states(states: Tensor<B, 3>) -> Self {
        Self {
            encoder_hidden_states: Some(states),
            ..Self::default()
        }
    }
}
