//! Classifier-free guidance as a [`Denoiser`] wrapper: any sampling loop guides any model.
//!
//! `ε̂ = ε_u + s·(ε_c − ε_u)`, with the unconditional and conditional branches batched into
//! one forward. Guidance rescale φ (Lin et al. 2023, diffusers' `guidance_rescale`) then
//! pulls the guided prediction's per-sample standard deviation back towards the
//! conditional one: `φ·ε̂·σ(ε_c)/σ(ε̂) + (1 − φ)·ε̂`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use ember_core::{Conditioning, Denoiser, Error, Prediction, Result};

/// A guided view of a conditional model.
pub struct ClassifierFreeGuidance<'a, B: Backend, const D: usize> {
    model: &'a dyn Denoiser<B, D>,
    /// Guidance scale `s`; 1 gives the conditional prediction alone (one forward).
    pub scale: f64,
    /// Guidance rescale φ in `[0, 1]`; 0 disables it.
    pub rescale: f64,
    /// The unconditional (or negative) conditioning, batch-aligned with the conditional one.
    pub unconditional: Conditioning<B>,
}

impl<'a, B: Backend, const D: usize> ClassifierFreeGuidance<'a, B, D> {
    /// Guides `model` with scale `scale` against `unconditional` (the null class, empty-text
    /// states, or a negative prompt's states).
    pub fn new(
        model: &'a dyn Denoiser<B, D>,
        scale: f64,
        unconditional: Conditioning<B>,
    ) -> Result<Self> {
        if !scale.is_finite() {
            return Err(Error::argument("guidance_scale", "must be finite"));
        }
        Ok(Self {
            model,
            scale,
            rescale: 0.0,
            unconditional,
        })
    }

    /// Sets guidance rescale φ.
    pub fn with_rescale(mut self, rescale: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&rescale) {
            return Err(Error::argument(
                "guidance_rescale",
                format!("must be in [0, 1], got {rescale}"),
            ));
        }
        self.rescale = rescale;
        Ok(self)
    }
}

fn cat_opt<B: Backend, const N: usize, K>(
    a: &Option<Tensor<B, N, K>>,
    b: &Option<Tensor<B, N, K>>,
    what: &str,
) -> Result<Option<Tensor<B, N, K>>>
where
    K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>,
{
    match (a, b) {
        (None, None) => Ok(None),
        (Some(a), Some(b)) => {
            let (da, db) = (a.dims(), b.dims());
            if da[1..] != db[1..] {
                return Err(Error::Shape {
                    what: format!("unconditional {what}"),
                    expected: format!("{:?}", db),
                    got: da.to_vec(),
                });
            }
            Ok(Some(Tensor::cat(vec![a.clone(), b.clone()], 0)))
        }
        _ => Err(Error::argument(
            what,
            "must be given for both the conditional and the unconditional branch, or for neither",
        )),
    }
}

/// Stacks two conditionings along the batch (unconditional first, as diffusers does).
pub fn concat_conditioning<B: Backend>(
    uncond: &Conditioning<B>,
    cond: &Conditioning<B>,
) -> Result<Conditioning<B>> {
    if uncond.down_block_additional_residuals.len() != cond.down_block_additional_residuals.len() {
        return Err(Error::argument(
            "down_block_additional_residuals",
            "differ in count between the two branches",
        ));
    }
    let residuals = uncond
        .down_block_additional_residuals
        .iter()
        .zip(&cond.down_block_additional_residuals)
        .map(|(a, b)| Tensor::cat(vec![a.clone(), b.clone()], 0))
        .collect();
    Ok(Conditioning {
        class_labels: cat_opt(&uncond.class_labels, &cond.class_labels, "class_labels")?,
        class_embeds: cat_opt(&uncond.class_embeds, &cond.class_embeds, "class_embeds")?,
        encoder_hidden_states: cat_opt(
            &uncond.encoder_hidden_states,
            &cond.encoder_hidden_states,
            "encoder_hidden_states",
        )?,
        encoder_attention_mask: cat_opt(
            &uncond.encoder_attention_mask,
            &cond.encoder_attention_mask,
            "encoder_attention_mask",
        )?,
        text_embeds: cat_opt(&uncond.text_embeds, &cond.text_embeds, "text_embeds")?,
        time_ids: cat_opt(&uncond.time_ids, &cond.time_ids, "time_ids")?,
        timestep_cond: cat_opt(&uncond.timestep_cond, &cond.timestep_cond, "timestep_cond")?,
        down_block_additional_residuals: residuals,
        mid_block_additional_residual: cat_opt(
            &uncond.mid_block_additional_residual,
            &cond.mid_block_additional_residual,
            "mid_block_additional_residual",
        )?,
        concat_latents: cat_opt(
            &uncond.concat_latents,
            &cond.concat_latents,
            "concat_latents",
        )?,
    })
}

/// Per-sample standard deviation over all non-batch dimensions, shaped `[B, 1, …]`.
fn per_sample_std<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    let flat = x.clone().reshape([b, n]);
    let mean = flat.clone().mean_dim(1);
    // Unbiased, as torch.std.
    let var = (flat - mean).powi_scalar(2).sum_dim(1) / ((n.max(2) - 1) as f64);
    let mut shape = [1usize; D];
    shape[0] = b;
    var.sqrt().reshape(shape)
}

/// Applies guidance rescale φ to a guided prediction given the conditional one.
pub fn rescale_guidance<B: Backend, const D: usize>(
    guided: Tensor<B, D>,
    conditional: &Tensor<B, D>,
    rescale: f64,
) -> Tensor<B, D> {
    if rescale == 0.0 {
        return guided;
    }
    let ratio = per_sample_std(conditional) / per_sample_std(&guided);
    let rescaled = guided.clone() * ratio;
    rescaled * rescale + guided * (1.0 - rescale)
}

impl<B: Backend, const D: usize> Denoiser<B, D> for ClassifierFreeGuidance<'_, B, D> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn forward(
        &self,
        sample: Tensor<B, D>,
        timesteps: Tensor<B, 1>,
        conditioning: &Conditioning<B>,
    ) -> Result<Tensor<B, D>> {
        if self.scale == 1.0 && self.rescale == 0.0 {
            return self.model.forward(sample, timesteps, conditioning);
        }
        let b = sample.dims()[0];
        let both = concat_conditioning(&self.unconditional, conditioning)?;
        let x = Tensor::cat(vec![sample.clone(), sample], 0);
        let t = Tensor::cat(vec![timesteps.clone(), timesteps], 0);
        let out = self.model.forward(x, t, &both)?;
        let mut parts = out.split(b, 0).into_iter();
        let (uncond, cond) = match (parts.next(), parts.next()) {
            (Some(u), Some(c)) => (u, c),
            _ => {
                return Err(Error::State(
                    "the model returned the wrong batch size under guidance".into(),
                ))
            }
        };
        let guided = uncond.clone() + (cond.clone() - uncond) * self.scale;
        Ok(rescale_guidance(guided, &cond, self.rescale))
    }
}
