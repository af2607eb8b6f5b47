//! diffusers model folders: `config.json` plus `diffusion_pytorch_model.safetensors` (or
//! sharded files listed in `diffusion_pytorch_model.safetensors.index.json`). Weights in
//! fp16 / bf16 / fp32 / fp64 are cast to the backend's float type on load; legacy attention
//! names (`query`, `key`, `value`, `proj_attn`) are renamed; every missing, unexpected or
//! mis-shaped tensor is reported by name.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ember_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of a single-file diffusers checkpoint.
pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
/// File name of the index of a sharded checkpoint.
pub const WEIGHTS_INDEX_NAME: &str = "diffusion_pytorch_model.safetensors.index.json";

/// A tensor read from a checkpoint, as f32 on the host.
#[derive(Debug, Clone)]
pub struct HostWeight {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// The dtype it was stored in (`F16`, `BF16`, `F32`, `F64`).
    pub stored_dtype: String,
}

/// What a load found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors loaded.
    pub loaded: usize,
    /// Keys renamed from legacy attention names, `(old, new)`.
    pub renamed: Vec<(String, String)>,
    /// Model parameters absent from the checkpoint.
    pub missing: Vec<String>,
    /// Checkpoint tensors the model has no parameter for.
    pub unexpected: Vec<String>,
    /// `(key, model shape, checkpoint shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Stored dtypes and how many tensors had each.
    pub dtypes: BTreeMap<String, usize>,
}

impl LoadReport {
    /// True when every parameter was loaded and nothing was left over.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One line naming the problems (at most a few names of each kind).
    pub fn problems(&self) -> String {
        fn names(v: &[String]) -> String {
            let shown: Vec<&str> = v.iter().take(4).map(String::as_str).collect();
            let more = if v.len() > 4 {
                format!(" and {} more", v.len() - 4)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing tensor(s): {}",
                self.missing.len(),
                names(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected tensor(s): {}",
                self.unexpected.len(),
                names(&self.unexpected)
            ));
        }
        if !self.mismatched.is_empty() {
            let v: Vec<String> = self
                .mismatched
                .iter()
                .map(|(k, want, got)| format!("{k} (model {want:?}, checkpoint {got:?})"))
                .collect();
            parts.push(format!(
                "{} tensor(s) of the wrong shape: {}",
                v.len(),
                names(&v)
            ));
        }
        parts.join("; ")
    }
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A checkpoint tensor not yet decoded: its bytes stay in the memory-mapped file until the
/// loader converts it, one tensor at a time, so loading SDXL never holds a second f32 copy
/// of the whole checkpoint on the host.
#[derive(Debug, Clone)]
pub struct LazyWeight {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Stored dtype (`F16`, `BF16`, `F32`, `F64`).
    pub stored_dtype: String,
    source: LazySource,
}

#[derive(Debug, Clone)]
enum LazySource {
    Host(Vec<f32>),
    Mapped {
        file: Arc<memmap2::Mmap>,
        start: usize,
        end: usize,
        dtype: Dtype,
    },
}

/// Decodes little-endian float bytes (F32, F16, BF16, F64) to f32; other dtypes give an
/// empty vector (callers validate the dtype first).
pub(crate) fn decode(data: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => Vec::new(),
    }
}

impl LazyWeight {
    /// Decodes the values to f32.
    pub fn into_values(self) -> Vec<f32> {
        match self.source {
            LazySource::Host(v) => v,
            LazySource::Mapped {
                file,
                start,
                end,
                dtype,
            } => {
                let values = decode(&file[start..end], dtype);
                // Drop the decoded range's pages from this process's resident set: otherwise
                // a checkpoint's mapped bytes and its decoded f32 parameters are resident at
                // once, and peak memory is the two together (6.5 GB instead of 3.4 GB for
                // an f32 SD 1.5 U-Net). The hint failing costs only memory.
                #[cfg(unix)]
                // SAFETY: the map is a read-only file mapping, so MADV_DONTNEED discards no
                // data: a later read of these pages faults them back in from the file with
                // the same bytes (the caveat about concurrent modification of the file is
                // the one already stated where the map is created).
                unsafe {
                    let _ = file.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    );
                }
                values
            }
        }
    }
}

impl From<HostWeight> for LazyWeight {
    fn from(w: HostWeight) -> Self {
        Self {
            shape: w.shape,
            stored_dtype: w.stored_dtype,
            source: LazySource::Host(w.values),
        }
    }
}

/// Maps one safetensors file and indexes its tensors without decoding them. Dtypes and
/// byte lengths are validated here, so a bad file fails before any tensor is loaded.
pub fn read_safetensors_lazy(path: &Path) -> Result<BTreeMap<String, LazyWeight>> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only; a checkpoint modified by another process while it is
    // being loaded can give wrong values but not undefined behaviour in safe code using it
    // as a byte slice.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let map = Arc::new(map);
    let st = SafeTensors::deserialize(&map[..])
        .map_err(|e| ckpt_err(path, format!("not a valid safetensors file ({e})")))?;
    let base = map.as_ptr() as usize;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = view.dtype();
        let size = match dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(ckpt_err(path, format!("tensor `{name}` has dtype {other:?}; model weights must be F16, BF16, F32 or F64")));
            }
        };
        let shape = view.shape().to_vec();
        let n: usize = shape.iter().product();
        let data = view.data();
        if data.len() != n * size {
            return Err(ckpt_err(
                path,
                format!(
                    "tensor `{name}` holds {} bytes for shape {shape:?} of {dtype:?}",
                    data.len()
                ),
            ));
        }
        let start = data.as_ptr() as usize - base;
        out.insert(
            name,
            LazyWeight {
                shape,
                stored_dtype: format!("{dtype:?}"),
                source: LazySource::Mapped {
                    file: map.clone(),
                    start,
                    end: start + data.len(),
                    dtype,
                },
            },
        );
    }
    Ok(out)
}

/// Decodes one safetensors file into host f32 tensors.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostWeight>> {
    Ok(read_safetensors_lazy(path)?
        .into_iter()
        .map(|(k, w)| {
            let shape = w.shape.clone();
            let stored_dtype = w.stored_dtype.clone();
            (
                k,
                HostWeight {
                    shape,
                    stored_dtype,
                    values: w.into_values(),
                },
            )
        })
        .collect())
}

/// The weight files of a model folder: the single file, or the shards its index lists.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_NAME);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_NAME);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ckpt_err(&index, format!("invalid JSON ({e})")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ckpt_err(&index, "has no `weight_map` object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(ckpt_err(&index, "lists no shard files"));
        }
        if let Some(f) = files.iter().find(|f| !dir.join(f).is_file()) {
            return Err(ckpt_err(
                &index,
                format!("lists shard `{f}`, which is not in the folder"),
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    for variant in ["fp16", "bf16"] {
        let p = dir.join(format!("diffusion_pytorch_model.{variant}.safetensors"));
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    Err(ckpt_err(
        dir,
        format!("no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in this folder"),
    ))
}

/// Reads every tensor of a model folder.
pub fn read_folder_weights(dir: &Path) -> Result<BTreeMap<String, HostWeight>> {
    Ok(read_folder_lazy(dir)?
        .into_iter()
        .map(|(k, w)| {
            let shape = w.shape.clone();
            let stored_dtype = w.stored_dtype.clone();
            (
                k,
                HostWeight {
                    shape,
                    stored_dtype,
                    values: w.into_values(),
                },
            )
        })
        .collect())
}

/// Indexes every tensor of a model folder without decoding (see [`LazyWeight`]).
pub fn read_folder_lazy(dir: &Path) -> Result<BTreeMap<String, LazyWeight>> {
    let mut all = BTreeMap::new();
    for file in weight_files(dir)? {
        for (k, v) in read_safetensors_lazy(&file)? {
            if all.insert(k.clone(), v).is_some() {
                return Err(ckpt_err(
                    &file,
                    format!("tensor `{k}` appears in more than one shard"),
                ));
            }
        }
    }
    Ok(all)
}

/// Translates a burn module path into the diffusers key: enum variants are transparent and
/// the feed-forward's `net_0` / `net_2` fields are `net.0` / `net.2`.
fn key_of(path: &[(String, bool)]) -> String {
    path.iter()
        .filter(|(_, is_variant)| !is_variant)
        .map(|(name, _)| match name.as_str() {
            "net_0" => "net.0",
            "net_2" => "net.2",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Collects `(key, shape)` of every parameter of a module.
struct KeyCollector {
    path: Vec<(String, bool)>,
    keys: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for KeyCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.starts_with("Enum:")));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.keys
            .push((key_of(&self.path), param.lazy_shape().to_vec()));
    }
}

/// Every parameter key of a module with its shape, in diffusers naming.
pub fn parameter_keys<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut c = KeyCollector {
        path: Vec::new(),
        keys: Vec::new(),
    };
    module.visit::<KeyCollector>(&mut c);
    c.keys
}

/// Collects parameter values for saving.
struct ValueCollector {
    path: Vec<(String, bool)>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: Backend> ModuleVisitor<B> for ValueCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.starts_with("Enum:")));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        self.tensors.push((key_of(&self.path), shape, values));
    }
}

/// Replaces parameters with checkpoint tensors.
struct Loader<'a, B: Backend> {
    path: Vec<(String, bool)>,
    weights: &'a mut BTreeMap<String, LazyWeight>,
    device: B::Device,
    report: LoadReport,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.starts_with("Enum:")));
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = key_of(&self.path);
        let want = param.lazy_shape().to_vec();
        let Some(w) = self.weights.remove(&key) else {
            self.report.missing.push(key);
            return param;
        };
        if w.shape != want {
            self.report.mismatched.push((key, want, w.shape));
            return param;
        }
        *self
            .report
            .dtypes
            .entry(w.stored_dtype.clone())
            .or_default() += 1;
        self.report.loaded += 1;
        let id = param.id;
        let data = TensorData::new(w.into_values(), want)
            .convert_dtype(<B::FloatElem as burn::tensor::Element>::dtype());
        let tensor = Tensor::<B, D>::from_data(data, &self.device);
        param.transform_for_load(tensor, id)
    }
}

/// Renames legacy attention keys (`….query.weight` → `….to_q.weight`, …) where the model
/// expects the new name and the checkpoint lacks it.
fn rename_legacy(
    weights: &mut BTreeMap<String, LazyWeight>,
    model_keys: &HashMap<String, Vec<usize>>,
) -> Vec<(String, String)> {
    const RENAMES: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let mut renamed = Vec::new();
    let keys: Vec<String> = weights.keys().cloned().collect();
    for old in keys {
        if model_keys.contains_key(&old) {
            continue;
        }
        for (from, to) in RENAMES {
            if let Some(pos) = old.rfind(from) {
                let new = format!("{}{}{}", &old[..pos], to, &old[pos + from.len()..]);
                if model_keys.contains_key(&new) && !weights.contains_key(&new) {
                    let w = weights.remove(&old).expect("key listed above");
                    weights.insert(new.clone(), w);
                    renamed.push((old.clone(), new));
                    break;
                }
            }
        }
    }
    renamed
}

/// Loads host tensors into a module, strictly: any missing, unexpected or mis-shaped tensor
/// is an error naming them. `origin` names the file or folder in errors.
pub fn load_weights<B: Backend, M: Module<B>, W: Into<LazyWeight>>(
    module: M,
    weights: BTreeMap<String, W>,
    origin: &Path,
    device: &B::Device,
) -> Result<(M, LoadReport)> {
    let mut weights: BTreeMap<String, LazyWeight> =
        weights.into_iter().map(|(k, w)| (k, w.into())).collect();
    let model_keys: HashMap<String, Vec<usize>> =
        parameter_keys::<B, M>(&module).into_iter().collect();
    let renamed = rename_legacy(&mut weights, &model_keys);
    let mut loader = Loader::<B> {
        path: Vec::new(),
        weights: &mut weights,
        device: device.clone(),
        report: LoadReport::default(),
    };
    let module = module.map(&mut loader);
    let mut report = loader.report;
    report.renamed = renamed;
    report.unexpected = weights.keys().cloned().collect();
    if !report.is_exact() {
        return Err(ckpt_err(origin, report.problems()));
    }
    Ok((module, report))
}

/// Writes a module's parameters as one f32 safetensors file with diffusers' key names.
/// The file is written to a temporary name and renamed, so it is never half-written.
pub fn save_safetensors<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<()> {
    let mut c = ValueCollector {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit::<ValueCollector>(&mut c);
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_f32_safetensors(path, c.tensors, Some(meta))
}

/// Serialises `(name, shape, values)` f32 tensors, sorted by name, to `path` atomically.
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, shape, v)| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    buffers.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| ckpt_err(path, format!("cannot encode `{k}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| ckpt_err(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}
