//! What the trainer needs from a denoiser beyond [`Denoiser`]: building it from the
//! config's `[model]` table, the example shape it takes, its class table, and writing it as
//! a model folder.

use crate::preview;
use burn::module::Module;
use ember_core::{Denoiser, Error, Prediction, Result};
use ember_models::{EmberBackend, MlpConfig, MlpDenoiser, UNet2D, UNetConfig};
use std::path::Path;

/// A denoiser the trainer can build, check against the data, save and picture.
pub trait TrainableModel<B: EmberBackend, const D: usize>:
    Module<B> + Denoiser<B, D> + Sized
{
    /// Builds a randomly initialised model from its `config.json` value.
    fn from_config(
        config: &serde_json::Value,
        prediction: Prediction,
        device: &B::Device,
    ) -> Result<Self>;
    /// The example shape the model takes (no batch axis); `None` for an axis it accepts at
    /// any size.
    fn example_shape(&self) -> Vec<Option<usize>>;
    /// Rows of the class-label table, if class-conditional.
    fn num_class_embeds(&self) -> Option<usize>;
    /// Folder name of the model inside a pipeline folder (`unet` for U-Nets).
    fn component(&self) -> &'static str;
    /// `(library, class)` of the model in `model_index.json`.
    fn library_class(&self) -> (&'static str, &'static str);
    /// `_class_name` of the pipeline folder.
    fn pipeline_class(&self) -> &'static str;
    /// Writes the model folder (`config.json` + safetensors).
    fn save_folder(&self, dir: &Path) -> Result<()>;
    /// Writes a picture of samples `[B, ...example]` (row-major) to `path`.
    fn write_preview(
        &self,
        samples: &[f32],
        shape: [usize; D],
        labels: Option<&[usize]>,
        cols: usize,
        path: &Path,
    ) -> Result<()>;
}

fn json_text(config: &serde_json::Value) -> String {
    config.to_string()
}

impl<B: EmberBackend> TrainableModel<B, 4> for UNet2D<B> {
    fn from_config(
        config: &serde_json::Value,
        prediction: Prediction,
        device: &B::Device,
    ) -> Result<Self> {
        let config = UNetConfig::from_json_str(&json_text(config))?;
        Ok(UNet2D::new(config, device)?.with_prediction(prediction))
    }

    fn example_shape(&self) -> Vec<Option<usize>> {
        let c = self.config();
        let [h, w] = c
            .sample_size()
            .map_or([None, None], |[h, w]| [Some(h), Some(w)]);
        vec![Some(c.in_channels), h, w]
    }

    fn num_class_embeds(&self) -> Option<usize> {
        self.config().num_class_embeds
    }

    fn component(&self) -> &'static str {
        "unet"
    }

    fn library_class(&self) -> (&'static str, &'static str) {
        ("diffusers", "UNet2DModel")
    }

    fn pipeline_class(&self) -> &'static str {
        "DDPMPipeline"
    }

    fn save_folder(&self, dir: &Path) -> Result<()> {
        ember_models::save_unet(self, dir)
    }

    fn write_preview(
        &self,
        samples: &[f32],
        shape: [usize; 4],
        _labels: Option<&[usize]>,
        cols: usize,
        path: &Path,
    ) -> Result<()> {
        let img = preview::image_grid(samples, shape, cols)?;
        preview::write_png(path, &img, shape[1] != 3)
    }
}

impl<B: EmberBackend> TrainableModel<B, 2> for MlpDenoiser<B> {
    fn from_config(
        config: &serde_json::Value,
        prediction: Prediction,
        device: &B::Device,
    ) -> Result<Self> {
        let config = MlpConfig::from_json_str(&json_text(config))?;
        Ok(MlpDenoiser::new(config, device)?.with_prediction(prediction))
    }

    fn example_shape(&self) -> Vec<Option<usize>> {
        vec![Some(self.config().in_features)]
    }

    fn num_class_embeds(&self) -> Option<usize> {
        self.config().num_class_embeds
    }

    fn component(&self) -> &'static str {
        "model"
    }

    fn library_class(&self) -> (&'static str, &'static str) {
        ("ember", ember_models::mlp::MLP_CLASS_NAME)
    }

    fn pipeline_class(&self) -> &'static str {
        "EmberPointsPipeline"
    }

    fn save_folder(&self, dir: &Path) -> Result<()> {
        ember_models::save_mlp(self, dir)
    }

    fn write_preview(
        &self,
        samples: &[f32],
        shape: [usize; 2],
        labels: Option<&[usize]>,
        _cols: usize,
        path: &Path,
    ) -> Result<()> {
        if shape[1] != 2 {
            return Err(Error::argument(
                "samples",
                format!("a scatter plot needs 2-D points, got {} features", shape[1]),
            ));
        }
        let extent = samples.iter().fold(1.0f32, |m, v| m.max(v.abs())) * 1.1;
        let img = preview::scatter_plot(samples, labels, extent, 512);
        preview::write_png(path, &img, false)
    }
}
