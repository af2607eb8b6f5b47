//! Forward-pass inputs and outputs as safetensors files whose tensor names are diffusers'
//! forward argument names, the exchange format of `ember forward` and the parity fixtures.

use crate::weights::{decode, write_f32_safetensors, HostWeight};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_core::{Conditioning, Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor read from an inputs file.
#[derive(Debug, Clone)]
pub enum HostTensorValue {
    /// Any float dtype, as f32.
    Float(HostWeight),
    /// Any integer dtype, as i64.
    Int { shape: Vec<usize>, values: Vec<i64> },
}

/// Names accepted in an inputs file (besides `down_block_additional_residuals.N`).
pub const INPUT_NAMES: [&str; 10] = [
    "sample",
    "timestep",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "class_labels",
    "text_embeds",
    "time_ids",
    "timestep_cond",
    "mid_block_additional_residual",
    "down_block_additional_residuals.N",
];

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Parse {
        what: format!("tensor file {}", path.display()),
        message: message.into(),
    }
}

/// Reads every tensor of a safetensors file (floats as f32, integers as i64).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, HostTensorValue>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let shape = view.shape().to_vec();
        let int = |values: Vec<i64>| HostTensorValue::Int {
            shape: shape.clone(),
            values,
        };
        let float = |values: Vec<f32>, dt: &str| {
            HostTensorValue::Float(HostWeight {
                shape: shape.clone(),
                values,
                stored_dtype: dt.into(),
            })
        };
        let v = match view.dtype() {
            dt @ (Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) => {
                float(decode(d, dt), &format!("{dt:?}"))
            }
            Dtype::I64 => int(d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()),
            Dtype::I32 => int(d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect()),
            other => {
                return Err(bad(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        out.insert(name, v);
    }
    Ok(out)
}

/// The inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct ForwardInputs<B: Backend> {
    pub sample: Tensor<B, 4>,
    pub timesteps: Tensor<B, 1>,
    pub conditioning: Conditioning<B>,
}

fn float_tensor<B: Backend, const D: usize>(
    name: &str,
    v: &HostTensorValue,
    path: &Path,
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    let (shape, values) = match v {
        HostTensorValue::Float(w) => (w.shape.clone(), w.values.clone()),
        HostTensorValue::Int { shape, values } => {
            (shape.clone(), values.iter().map(|&x| x as f32).collect())
        }
    };
    if shape.len() != D {
        return Err(Error::Shape {
            what: name.into(),
            expected: format!("a {D}-D tensor ({})", path.display()),
            got: shape,
        });
    }
    let data = TensorData::new(values, shape)
        .convert_dtype(<B::FloatElem as burn::tensor::Element>::dtype());
    Ok(Tensor::from_data(data, device))
}

/// Reads a forward-inputs file. `timestep` may be a scalar or 1-D; `class_labels` integer
/// (label indices) or float (`[B, dim]` projection inputs, or `[B]` timestep-style labels).
pub fn read_forward_inputs<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<ForwardInputs<B>> {
    let tensors = read_tensors(path)?;
    let mut cond = Conditioning::<B>::default();
    let mut residuals: HashMap<usize, Tensor<B, 4>> = HashMap::new();
    let mut sample = None;
    let mut timesteps = None;
    for (name, v) in &tensors {
        match name.as_str() {
            "sample" => sample = Some(float_tensor::<B, 4>(name, v, path, device)?),
            "timestep" | "timesteps" => {
                let t = match v {
                    HostTensorValue::Float(w) if w.shape.is_empty() => {
                        HostTensorValue::Float(HostWeight {
                            shape: vec![1],
                            ..w.clone()
                        })
                    }
                    HostTensorValue::Int { shape, values } if shape.is_empty() => {
                        HostTensorValue::Int {
                            shape: vec![1],
                            values: values.clone(),
                        }
                    }
                    other => other.clone(),
                };
                timesteps = Some(float_tensor::<B, 1>(name, &t, path, device)?);
            }
            "encoder_hidden_states" => {
                cond.encoder_hidden_states = Some(float_tensor(name, v, path, device)?)
            }
            "encoder_attention_mask" => {
                cond.encoder_attention_mask = Some(float_tensor(name, v, path, device)?)
            }
            "text_embeds" => cond.text_embeds = Some(float_tensor(name, v, path, device)?),
            "time_ids" => cond.time_ids = Some(float_tensor(name, v, path, device)?),
            "timestep_cond" => cond.timestep_cond = Some(float_tensor(name, v, path, device)?),
            "mid_block_additional_residual" => {
                cond.mid_block_additional_residual = Some(float_tensor(name, v, path, device)?)
            }
            "class_labels" => match v {
                HostTensorValue::Int { shape, values } => {
                    if shape.len() != 1 {
                        return Err(Error::Shape {
                            what: "class_labels".into(),
                            expected: "[B] integer labels".into(),
                            got: shape.clone(),
                        });
                    }
                    cond.class_labels = Some(Tensor::<B, 1, Int>::from_data(
                        TensorData::new(values.clone(), shape.clone()),
                        device,
                    ));
                }
                HostTensorValue::Float(w) => {
                    cond.class_embeds = Some(match w.shape.len() {
                        1 => float_tensor::<B, 1>(name, v, path, device)?.unsqueeze_dim(1),
                        _ => float_tensor::<B, 2>(name, v, path, device)?,
                    });
                }
            },
            other => {
                let idx = other
                    .strip_prefix("down_block_additional_residuals.")
                    .and_then(|i| i.parse::<usize>().ok());
                match idx {
                    Some(i) => {
                        residuals.insert(i, float_tensor(name, v, path, device)?);
                    }
                    None => return Err(Error::unknown("forward input", other, &INPUT_NAMES)),
                }
            }
        }
    }
    for i in 0..residuals.len() {
        match residuals.remove(&i) {
            Some(t) => cond.down_block_additional_residuals.push(t),
            None => {
                return Err(Error::argument(
                    "down_block_additional_residuals",
                    format!("index {i} is missing (indices must run 0..N)"),
                ))
            }
        }
    }
    let sample = sample.ok_or_else(|| {
        Error::argument(
            "sample",
            format!("{} has no `sample` tensor", path.display()),
        )
    })?;
    let timesteps = timesteps.ok_or_else(|| {
        Error::argument(
            "timestep",
            format!("{} has no `timestep` tensor", path.display()),
        )
    })?;
    Ok(ForwardInputs {
        sample,
        timesteps,
        conditioning: cond,
    })
}

/// Writes f32 tensors to a safetensors file (atomically).
pub fn write_tensors<B: Backend>(path: &Path, tensors: &[(&str, Tensor<B, 4>)]) -> Result<()> {
    let host = tensors
        .iter()
        .map(|(name, t)| {
            let values = t
                .clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default();
            (name.to_string(), t.dims().to_vec(), values)
        })
        .collect();
    write_f32_safetensors(path, host, None)
}
