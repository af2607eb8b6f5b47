//! # ember-models
//!
//! Diffusion backbones in diffusers' exact module layout, so a diffusers model folder loads
//! as it is and gives diffusers' numbers.
//!
//! - [`UNet2D`] implements `UNet2DModel` (DDPM, NCSN++ score models, class-conditional pixel models)
//!   and `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x, SDXL), with every block type
//!   diffusers ships for them. It implements [`ember_core::Denoiser`].
//! - [`config`] reads `config.json` with diffusers' defaults and field-named validation errors.
//! - [`weights`] does safetensors reading (single or sharded, fp16 / bf16 / fp32 / fp64),
//!   legacy key renames, strict loading with a report, atomic saving.
//! - [`load_unet`] / [`save_unet`] read and write whole model folders.
//!
//! ```
//! use ember_core::backend::DefaultBackend as B;
//! use ember_core::burn::tensor::Tensor;
//! use ember_core::{Conditioning, Denoiser};
//! use ember_models::{UNet2D, UNetConfig};
//!
//! let config = UNetConfig::from_json_str(r#"{
//!     "_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3,
//!     "block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1,
//!     "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
//!     "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 4
//! }"#).unwrap();
//! let device = Default::default();
//! let unet = UNet2D::<B>::new(config, &device).unwrap();
//! let x = Tensor::<B, 4>::zeros([1, 3, 8, 8], &device);
//! let t = Tensor::<B, 1>::from_floats([10.0], &device);
//! let eps = unet.forward(x, t, &Conditioning::none()).unwrap();
//! assert_eq!(eps.dims(), [1, 3, 8, 8]);
//! ```

pub mod blocks;
pub mod config;
pub mod io;
pub mod mlp;
pub mod unet;
pub mod weights;

pub use config::{UNetClass, UNetConfig};
pub use ember_conditioning::EmberBackend;
pub use mlp::{MlpConfig, MlpDenoiser};
pub use unet::UNet2D;
pub use weights::LoadReport;

use burn::module::Module;
use ember_core::{Error, Result};
use std::path::Path;

/// Name of a model folder's config file.
pub const CONFIG_NAME: &str = "config.json";

/// Reads a model folder's `config.json`.
pub fn load_unet_config(dir: &Path) -> Result<UNetConfig> {
    let path = dir.join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    UNetConfig::from_json_str(&text).map_err(|e| match e {
        Error::Parse { message, .. } => Error::Parse {
            what: path.display().to_string(),
            message,
        },
        other => other,
    })
}

/// Loads a diffusers U-Net folder (`config.json` + weights) onto `device`.
pub fn load_unet<B: EmberBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(UNet2D<B>, LoadReport)> {
    let config = load_unet_config(dir)?;
    let model = UNet2D::<B>::new(config, device)?;
    let weights = weights::read_folder_lazy(dir)?;
    weights::load_weights(model, weights, dir, device)
}

/// Writes a U-Net as a diffusers folder: `config.json` and an f32
/// `diffusion_pytorch_model.safetensors`.
pub fn save_unet<B: EmberBackend>(model: &UNet2D<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    weights::write_atomic(
        &dir.join(CONFIG_NAME),
        model.config().to_json_string().as_bytes(),
    )?;
    weights::save_safetensors::<B, UNet2D<B>>(model, &dir.join(weights::WEIGHTS_NAME))
}

/// Number of scalar parameters.
pub fn parameter_count<B: EmberBackend>(model: &UNet2D<B>) -> usize {
    model.num_params()
}

/// Writes an [`MlpDenoiser`] folder: `config.json` and `diffusion_pytorch_model.safetensors`.
pub fn save_mlp<B: EmberBackend>(model: &MlpDenoiser<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let json = serde_json::to_string_pretty(model.config()).map_err(|e| Error::Parse {
        what: "EmberMLPDenoiser config".into(),
        message: e.to_string(),
    })?;
    weights::write_atomic(&dir.join(CONFIG_NAME), json.as_bytes())?;
    weights::save_safetensors::<B, MlpDenoiser<B>>(model, &dir.join(weights::WEIGHTS_NAME))
}

/// Loads an [`MlpDenoiser`] folder written by [`save_mlp`].
pub fn load_mlp<B: EmberBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(MlpDenoiser<B>, LoadReport)> {
    let path = dir.join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let model = MlpDenoiser::<B>::new(MlpConfig::from_json_str(&text)?, device)?;
    let weights = weights::read_folder_lazy(dir)?;
    weights::load_weights(model, weights, dir, device)
}
