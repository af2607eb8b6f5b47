//! `ember info` and `ember forward`: diffusers U-Net folders.

use anyhow::{bail, Result};
use ember_core::backend::{available_backends, check_backend, DefaultBackend};
use ember_core::Denoiser;
use ember_models::config::{ClassEmbedType, TimeEmbeddingType};
use ember_models::io::{read_forward_inputs, write_tensors};
use ember_models::weights::{load_weights, read_folder_weights, weight_files};
use ember_models::EmberBackend;
use ember_models::{load_unet, load_unet_config, parameter_count, UNet2D, UNetClass, UNetConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The backends `--device` can name in some build.
const ALL_BACKENDS: [&str; 4] = ["flex", "ndarray", "wgpu", "cuda"];

/// The backend `--device` names (default: the first compiled in), with a clear error for
/// a known backend this build lacks.
pub(crate) fn backend_name(device: Option<&str>) -> Result<String> {
    let available = available_backends();
    let name = match device {
        Some(name) => name,
        None => match available.first() {
            Some(name) => *name,
            None => bail!("this build has no backend compiled in"),
        },
    };
    if ALL_BACKENDS.contains(&name) && !available.contains(&name) {
        bail!(
            "device `{name}` is not compiled into this build (rebuild ember with `--features {name}`); available: {}",
            available.join(", ")
        );
    }
    check_backend(name)?;
    Ok(name.to_string())
}

/// `ember forward`: one forward pass of the model in `model_dir` on the inputs in
/// `inputs`, writing `sample` to `out`, on the backend named by `device`.
pub fn forward(model_dir: &Path, inputs: &Path, out: &Path, device: Option<&str>) -> Result<()> {
    let name = backend_name(device)?;
    let name = name.as_str();
    if !model_dir.is_dir() {
        bail!("{}: no such model folder", model_dir.display());
    }
    // Fail before the (possibly long) load and forward pass if the output cannot be written.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    if out.is_dir() {
        bail!("cannot write {}: it is a directory", out.display());
    }
    match name {
        #[cfg(feature = "flex")]
        "flex" => {
            run::<ember_core::burn::backend::Flex>(Default::default(), model_dir, inputs, out)
        }
        #[cfg(feature = "ndarray")]
        "ndarray" => {
            run::<ember_core::burn::backend::NdArray>(Default::default(), model_dir, inputs, out)
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            run::<ember_core::burn::backend::Wgpu>(Default::default(), model_dir, inputs, out)
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            run::<ember_core::burn::backend::Cuda>(Default::default(), model_dir, inputs, out)
        }
        // check_backend accepted it, so it is one of the arms above.
        other => bail!("device `{other}` has no dispatch in this build"),
    }
}

/// Loads the model and the inputs on `device`, runs the forward pass and writes `sample`.
fn run<B: EmberBackend>(
    device: B::Device,
    model_dir: &Path,
    inputs: &Path,
    out: &Path,
) -> Result<()> {
    // The inputs first: a bad inputs file fails before the model is loaded.
    let inputs = read_forward_inputs::<B>(inputs, &device)?;
    let (unet, _report) =
        load_unet::<B>(model_dir, &device).map_err(|e| in_config(model_dir, e))?;
    let sample = unet.forward(inputs.sample, inputs.timesteps, &inputs.conditioning)?;
    let dims = sample.dims();
    write_tensors::<B>(out, &[("sample", sample)])?;
    println!("wrote sample {dims:?} to {}", out.display());
    Ok(())
}

/// Names the model's `config.json` in errors about its fields (I/O and parse errors name
/// their file already).
fn in_config(dir: &Path, e: ember_core::Error) -> anyhow::Error {
    match e {
        ember_core::Error::InvalidConfig { .. } | ember_core::Error::UnknownName { .. } => {
            let path = dir.join(ember_models::CONFIG_NAME);
            anyhow::Error::new(e).context(path.display().to_string())
        }
        other => other.into(),
    }
}

/// What `ember info` found about a model folder.
struct Info {
    config: UNetConfig,
    num_parameters: usize,
    /// `(file name, size in bytes)`.
    weight_files: Vec<(String, u64)>,
    /// Stored dtype → number of tensors, over every weight file.
    dtypes: BTreeMap<String, usize>,
    tensors: usize,
    /// `Ok((loaded, renamed))` when the checkpoint matches the config, else the error.
    check: std::result::Result<(usize, usize), String>,
}

/// `ember info`: prints a summary of the model folder `dir` (a table, or JSON).
pub fn info(dir: &Path, json: bool) -> Result<()> {
    if !dir.is_dir() {
        bail!("{}: no such model folder", dir.display());
    }
    let config = load_unet_config(dir).map_err(|e| in_config(dir, e))?;
    let device = Default::default();
    let model =
        UNet2D::<DefaultBackend>::new(config.clone(), &device).map_err(|e| in_config(dir, e))?;
    let num_parameters = parameter_count(&model);
    let mut info = Info {
        config,
        num_parameters,
        weight_files: Vec::new(),
        dtypes: BTreeMap::new(),
        tensors: 0,
        check: Err(String::new()),
    };
    info.check = (|| {
        let files = weight_files(dir)?;
        info.weight_files = files
            .iter()
            .map(|f| {
                let name = f.strip_prefix(dir).unwrap_or(f).display().to_string();
                (name, std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            })
            .collect();
        let weights = read_folder_weights(dir)?;
        info.tensors = weights.len();
        for w in weights.values() {
            *info.dtypes.entry(w.stored_dtype.clone()).or_default() += 1;
        }
        let (_, report) = load_weights(model, weights, dir, &device)?;
        Ok::<_, ember_core::Error>((report.loaded, report.renamed.len()))
    })()
    .map_err(|e| e.to_string());
    if json {
        println!("{}", serde_json::to_string_pretty(&info_json(dir, &info))?);
    } else {
        print_info(dir, &info);
    }
    Ok(())
}

fn time_embedding_name(t: TimeEmbeddingType) -> &'static str {
    match t {
        TimeEmbeddingType::Positional => "positional",
        TimeEmbeddingType::Fourier => "fourier",
        TimeEmbeddingType::Learned => "learned",
    }
}

/// diffusers' `class_embed_type` value (`None` for a table of `num_class_embeds`, which
/// diffusers selects with `class_embed_type: null`).
fn class_embed_name(t: ClassEmbedType) -> Option<&'static str> {
    match t {
        ClassEmbedType::Table => None,
        ClassEmbedType::Timestep => Some("timestep"),
        ClassEmbedType::Identity => Some("identity"),
        ClassEmbedType::Projection => Some("projection"),
        ClassEmbedType::SimpleProjection => Some("simple_projection"),
    }
}

fn class_embedding_text(c: &UNetConfig) -> String {
    match (c.class_embed_type, c.num_class_embeds) {
        (None, _) => "none".into(),
        (Some(ClassEmbedType::Table), n) => {
            format!("table of {} classes", n.unwrap_or_default())
        }
        (Some(t), _) => class_embed_name(t).unwrap_or_default().to_string(),
    }
}

/// Whether a block type has an attention layer.
fn has_attention(block_type: &str) -> bool {
    block_type.contains("Attn")
}

/// Heads of each down block's attention (`None` for blocks without attention), as
/// [`UNet2D`] builds them: UNet2DModel's `attention_head_dim` is channels per head (null:
/// one head); UNet2DConditionModel's is diffusers' misnomer for the head count.
fn attention_heads(c: &UNetConfig) -> Vec<Option<usize>> {
    c.down_block_types
        .iter()
        .zip(&c.block_out_channels)
        .zip(&c.attention_head_dim)
        .map(|((t, &ch), &hd)| {
            has_attention(t).then(|| match c.class {
                UNetClass::UNet2DModel => ch / hd.unwrap_or(ch).max(1),
                UNetClass::UNet2DConditionModel => hd.unwrap_or(ch),
            })
        })
        .collect()
}

fn info_json(dir: &Path, info: &Info) -> Value {
    let c = &info.config;
    let cond = c.class == UNetClass::UNet2DConditionModel;
    let (matches, loaded, renamed, error) = match &info.check {
        Ok((loaded, renamed)) => (true, Some(*loaded), Some(*renamed), None),
        Err(e) => (false, None, None, Some(e.clone())),
    };
    json!({
        "path": dir.display().to_string(),
        "class": c.class.name(),
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "block_out_channels": c.block_out_channels,
        "down_block_types": c.down_block_types,
        "mid_block_type": c.mid_block_type,
        "up_block_types": c.up_block_types,
        "layers_per_block": c.layers_per_block,
        "cross_attention_dim": cond.then_some(&c.cross_attention_dim),
        "attention_head_dim": c.attention_head_dim,
        "attention_heads": attention_heads(c),
        "time_embedding_type": time_embedding_name(c.time_embedding_type),
        "class_embed_type": c.class_embed_type.and_then(class_embed_name),
        "num_class_embeds": c.num_class_embeds,
        "addition_embed_type": c.addition_embed_type,
        "num_parameters": info.num_parameters,
        "weight_files": info.weight_files.iter()
            .map(|(name, bytes)| json!({ "name": name, "bytes": bytes }))
            .collect::<Vec<_>>(),
        "dtypes": info.dtypes,
        "num_tensors": info.tensors,
        "checkpoint": {
            "matches_config": matches,
            "loaded": loaded,
            "renamed_legacy_keys": renamed,
            "error": error,
        },
    })
}

/// A list, or its single value when every entry is the same.
fn list<T: std::fmt::Display + PartialEq>(v: &[T]) -> String {
    match v.first() {
        Some(first) if v.iter().all(|x| x == first) && v.len() > 1 => {
            format!("{first} (every block)")
        }
        _ => v
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// `n` with an SI suffix (`12.3M`).
fn human(n: usize) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", x / 1e6),
        _ => format!("{:.2}B", x / 1e9),
    }
}

fn print_info(dir: &Path, info: &Info) {
    let c = &info.config;
    let row = |k: &str, v: &str| println!("  {k:<22} {v}");
    println!("{} ({})", c.class.name(), dir.display());
    row(
        "in / out channels",
        &format!("{} / {}", c.in_channels, c.out_channels),
    );
    row("block_out_channels", &list(&c.block_out_channels));
    row("down blocks", &c.down_block_types.join(", "));
    row("mid block", c.mid_block_type.as_deref().unwrap_or("none"));
    row("up blocks", &c.up_block_types.join(", "));
    row("layers per block", &list(&c.layers_per_block));
    if c.class == UNetClass::UNet2DConditionModel {
        row("cross_attention_dim", &list(&c.cross_attention_dim));
    }
    let heads: Vec<String> = attention_heads(c)
        .iter()
        .map(|h| h.map_or("-".to_string(), |h| h.to_string()))
        .collect();
    row("attention heads", &heads.join(", "));
    row("time embedding", time_embedding_name(c.time_embedding_type));
    row("class embedding", &class_embedding_text(c));
    row(
        "addition embedding",
        c.addition_embed_type.as_deref().unwrap_or("none"),
    );
    row(
        "parameters",
        &format!("{} ({})", info.num_parameters, human(info.num_parameters)),
    );
    for (i, (name, bytes)) in info.weight_files.iter().enumerate() {
        row(
            if i == 0 { "weight files" } else { "" },
            &format!("{name} ({} bytes)", bytes),
        );
    }
    if !info.dtypes.is_empty() {
        let dtypes: Vec<String> = info
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} × {n}"))
            .collect();
        let total = if dtypes.len() > 1 {
            format!(" ({} tensors)", info.tensors)
        } else {
            String::new()
        };
        row("stored dtypes", &format!("{}{total}", dtypes.join(", ")));
    }
    match &info.check {
        Ok((loaded, 0)) => row(
            "checkpoint",
            &format!("matches the config ({loaded} tensors)"),
        ),
        Ok((loaded, renamed)) => row(
            "checkpoint",
            &format!("matches the config ({loaded} tensors, {renamed} renamed from legacy names)"),
        ),
        Err(e) => row("checkpoint", &format!("FAILS to load: {e}")),
    }
}
