//! `ember train`: runs `ember_train::train` on a TOML config, on the backend and devices
//! the flags name.

use anyhow::{bail, Context, Result};
use ember_models::EmberBackend;
use ember_train::{RunOptions, TrainConfig};
use std::path::{Path, PathBuf};

/// What `ember train` was asked for.
pub struct TrainArgs {
    pub config: PathBuf,
    pub steps: Option<usize>,
    pub output_dir: Option<PathBuf>,
    pub fresh: bool,
    pub device: Option<String>,
    pub devices: Option<String>,
}

/// Device indices from `--devices 0,1,2` (default: device 0).
fn device_indices(list: Option<&str>) -> Result<Vec<usize>> {
    let Some(list) = list else {
        return Ok(vec![0]);
    };
    let indices = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("--devices: `{s}` is not a device index (e.g. 0,1)"))
        })
        .collect::<Result<Vec<_>>>()?;
    if indices.is_empty() {
        bail!("--devices: give at least one device index");
    }
    Ok(indices)
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let mut config = TrainConfig::from_file(&args.config)?;
    if let Some(steps) = args.steps {
        config.train.steps = steps;
        config.validate()?;
    }
    if let Some(out) = &args.output_dir {
        config.output_dir = out.clone();
    }
    if args.fresh
        && config
            .output_dir
            .join(ember_train::checkpoint::CHECKPOINTS)
            .exists()
    {
        std::fs::remove_dir_all(config.output_dir.join(ember_train::checkpoint::CHECKPOINTS))
            .with_context(|| format!("cannot clear {}", config.output_dir.display()))?;
    }
    let options = RunOptions {
        resume: !args.fresh,
        verbose: true,
    };
    let name = crate::model::backend_name(args.device.as_deref())?;
    let indices = device_indices(args.devices.as_deref())?;
    match name.as_str() {
        #[cfg(feature = "flex")]
        // The CPU is one device; `--devices 0,0` runs two data-parallel replicas on it.
        "flex" => go::<ember_core::burn::backend::Flex>(
            &config,
            &options,
            indices.iter().map(|_| Default::default()).collect(),
        ),
        #[cfg(feature = "ndarray")]
        "ndarray" => go::<ember_core::burn::backend::NdArray>(
            &config,
            &options,
            indices.iter().map(|_| Default::default()).collect(),
        ),
        #[cfg(feature = "wgpu")]
        "wgpu" => go::<ember_core::burn::backend::Wgpu>(
            &config,
            &options,
            indices
                .iter()
                .map(|&i| ember_core::burn::backend::wgpu::WgpuDevice::DiscreteGpu(i))
                .collect(),
        ),
        #[cfg(feature = "cuda")]
        "cuda" => go::<ember_core::burn::backend::Cuda>(
            &config,
            &options,
            indices
                .iter()
                .map(|&i| ember_core::burn::backend::cuda::CudaDevice { index: i })
                .collect(),
        ),
        other => bail!("device `{other}` has no dispatch in this build"),
    }
}

fn go<B: EmberBackend>(
    config: &TrainConfig,
    options: &RunOptions,
    devices: Vec<B::Device>,
) -> Result<()> {
    let summary = ember_train::train::<B>(config, options, &devices)?;
    eprintln!(
        "done: {} steps ({:.2} steps/s over {:.1} s of training{}), final loss {:.5}{}; pipeline {}",
        summary.steps,
        summary.steps_per_second,
        summary.train_seconds,
        summary
            .resumed_from
            .map(|s| format!(", resumed from step {s}"))
            .unwrap_or_default(),
        summary.final_loss,
        summary
            .validation_loss
            .map(|v| format!(", validation loss {v:.5}"))
            .unwrap_or_default(),
        display(&summary.pipeline_dir)
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
