//! diffusers pipeline folders (`model_index.json` + `unet/` + `scheduler/`, the layout of
//! `DDPMPipeline` / `DDIMPipeline` and of Ember's training output), loaded whole, with the
//! scheduler swappable by class name or by a `scheduler_config.json`.

use burn::tensor::Tensor;
use ember_core::{Error, Result, Scheduler};
use ember_models::EmberBackend;
use ember_models::UNet2D;
use serde_json::Value;
use std::path::Path;

/// A loaded pipeline folder.
pub struct PipelineFolder<B: EmberBackend> {
    /// `_class_name` of `model_index.json` (e.g. `DDPMPipeline`).
    pub class_name: String,
    /// The denoiser.
    pub unet: UNet2D<B>,
    /// The scheduler (already swapped, when asked).
    pub scheduler: Box<dyn Scheduler<Tensor<B, 4>>>,
}

/// How to choose the scheduler of a pipeline.
#[derive(Debug, Clone, Default)]
pub enum SchedulerChoice {
    /// The folder's own `scheduler/scheduler_config.json`.
    #[default]
    Folder,
    /// Another class, built from the folder's config (diffusers' `from_config` swap).
    ClassName(String),
    /// A `scheduler_config.json` file.
    ConfigFile(std::path::PathBuf),
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        what: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Loads `dir` (`model_index.json`, `unet/`, `scheduler/`) onto `device`.
pub fn load_pipeline<B: EmberBackend>(
    dir: &Path,
    choice: &SchedulerChoice,
    device: &B::Device,
) -> Result<PipelineFolder<B>> {
    let index = read_json(&dir.join("model_index.json"))?;
    let class_name = index
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Parse {
            what: dir.join("model_index.json").display().to_string(),
            message: "missing `_class_name`".into(),
        })?
        .to_string();
    for component in ["unet", "scheduler"] {
        if index.get(component).is_none() {
            return Err(Error::Parse {
                what: dir.join("model_index.json").display().to_string(),
                message: format!(
                    "no `{component}` component (Ember loads unet + scheduler pipelines)"
                ),
            });
        }
    }
    let (unet, _) = ember_models::load_unet::<B>(&dir.join("unet"), device)?;
    let folder_config = dir.join("scheduler").join("scheduler_config.json");
    let scheduler = match choice {
        SchedulerChoice::Folder => {
            ember_schedulers::load_config_file::<Tensor<B, 4>>(&folder_config)?
        }
        SchedulerChoice::ClassName(name) => {
            let base = ember_schedulers::load_config_file::<Tensor<B, 4>>(&folder_config)?;
            ember_schedulers::swap(base.as_ref(), name)?
        }
        SchedulerChoice::ConfigFile(path) => {
            ember_schedulers::load_config_file::<Tensor<B, 4>>(path)?
        }
    };
    let unet = unet.with_prediction(scheduler.prediction());
    Ok(PipelineFolder {
        class_name,
        unet,
        scheduler,
    })
}
