//! `config.json` of diffusers' `UNet2DModel` and `UNet2DConditionModel`, read with
//! diffusers' defaults and validated up front so that a bad field fails with its name
//! before any weight is allocated.

use ember_core::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The two diffusers classes [`crate::UNet2D`] implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UNetClass {
    /// `UNet2DModel`: pixel-space, optionally class-conditional.
    UNet2DModel,
    /// `UNet2DConditionModel`: text / cross-attention conditional (Stable Diffusion).
    UNet2DConditionModel,
}

impl UNetClass {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        match self {
            Self::UNet2DModel => "UNet2DModel",
            Self::UNet2DConditionModel => "UNet2DConditionModel",
        }
    }

    /// Parses a `_class_name`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "UNet2DModel" => Ok(Self::UNet2DModel),
            "UNet2DConditionModel" => Ok(Self::UNet2DConditionModel),
            _ => Err(Error::unknown(
                "model class",
                name,
                &["UNet2DModel", "UNet2DConditionModel"],
            )),
        }
    }
}

/// Down-block types diffusers ships for these U-Nets.
pub const DOWN_BLOCK_TYPES: [&str; 6] = [
    "DownBlock2D",
    "AttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "ResnetDownsampleBlock2D",
    "SkipDownBlock2D",
    "AttnSkipDownBlock2D",
];
/// Up-block types diffusers ships for these U-Nets.
pub const UP_BLOCK_TYPES: [&str; 6] = [
    "UpBlock2D",
    "AttnUpBlock2D",
    "CrossAttnUpBlock2D",
    "ResnetUpsampleBlock2D",
    "SkipUpBlock2D",
    "AttnSkipUpBlock2D",
];
/// Mid-block types.
pub const MID_BLOCK_TYPES: [&str; 2] = ["UNetMidBlock2D", "UNetMidBlock2DCrossAttn"];

/// How the timestep is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingType {
    /// Sinusoidal (`Timesteps`).
    Positional,
    /// Gaussian random Fourier features.
    Fourier,
    /// A learned table indexed by the integer timestep (UNet2DModel only).
    Learned,
}

/// How a ResNet block is conditioned on the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// Add a projected bias before `norm2`.
    Default,
    /// FiLM: `norm2(h)·(1 + scale) + shift`.
    ScaleShift,
}

/// How class labels are embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbedType {
    /// A table of `num_class_embeds` rows.
    Table,
    /// Labels are timesteps: sinusoidal projection then an MLP.
    Timestep,
    /// Float embeddings `[B, time_embed_dim]` added as they are.
    Identity,
    /// Float vectors through a `TimestepEmbedding` MLP.
    Projection,
    /// Float vectors through one linear layer.
    SimpleProjection,
}

/// A resolved U-Net configuration (both classes), plus the raw JSON it came from so a
/// save writes back exactly what was read.
#[derive(Debug, Clone)]
pub struct UNetConfig {
    pub class: UNetClass,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: TimeEmbeddingType,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// Per down block.
    pub layers_per_block: Vec<usize>,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub dropout: f64,
    pub act_fn: String,
    /// Per down block. UNet2DModel: channels per head (None: one head). UNet2DConditionModel:
    /// diffusers' historical misnomer, the number of heads of cross-attention blocks.
    pub attention_head_dim: Vec<Option<usize>>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: TimeScaleShift,
    pub add_attention: bool,
    pub class_embed_type: Option<ClassEmbedType>,
    pub num_class_embeds: Option<usize>,
    pub num_train_timesteps: Option<usize>,
    // UNet2DConditionModel fields.
    pub only_cross_attention: Vec<bool>,
    pub cross_attention_dim: Vec<usize>,
    /// Per down block, per layer.
    pub transformer_layers_per_block: Vec<Vec<usize>>,
    /// Per up block, per layer.
    pub reverse_transformer_layers_per_block: Vec<Vec<usize>>,
    pub encoder_hid_dim: Option<usize>,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub class_embeddings_concat: bool,
    /// The config as read (saved back verbatim).
    pub raw: Map<String, Value>,
}

/// Reads typed fields out of a JSON object, naming the field in every error and
/// remembering which keys were used so the rest can be reported.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    used: BTreeSet<String>,
}

fn type_err(field: &str, want: &str, got: &Value) -> Error {
    Error::config(field, format!("expected {want}, got {got}"))
}

impl<'a> Reader<'a> {
    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_string());
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn usize_opt(&mut self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_usize(key, v).map(Some),
        }
    }
    fn usize_or(&mut self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }
    fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| type_err(key, "a number", v)),
        }
    }
    fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| type_err(key, "true or false", v)),
        }
    }
    fn string_opt(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| type_err(key, "a string", v)),
        }
    }
    /// A string that may be explicitly `null` (returns `None`) or absent (`default`).
    fn nullable_string(&mut self, key: &str, default: Option<&str>) -> Result<Option<String>> {
        self.used.insert(key.to_string());
        match self.map.get(key) {
            None => Ok(default.map(str::to_string)),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| type_err(key, "a string or null", v)),
        }
    }
    fn strings_or(&mut self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| type_err(key, "a list of strings", v))
                })
                .collect(),
            Some(v) => Err(type_err(key, "a list of strings", v)),
        }
    }
    fn usizes_or(&mut self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(a)) => a.iter().map(|v| as_usize(key, v)).collect(),
            Some(v) => Err(type_err(key, "a list of integers", v)),
        }
    }
    /// An integer or a per-block list of them.
    fn per_block_usize(
        &mut self,
        key: &str,
        n: usize,
        default: Option<usize>,
    ) -> Result<Vec<Option<usize>>> {
        match self.get(key) {
            None => Ok(vec![default; n]),
            Some(Value::Array(a)) => {
                if a.len() != n {
                    return Err(Error::config(
                        key,
                        format!("has {} entries but there are {n} down blocks", a.len()),
                    ));
                }
                a.iter()
                    .map(|v| match v {
                        Value::Null => Ok(None),
                        v => as_usize(key, v).map(Some),
                    })
                    .collect()
            }
            Some(v) => Ok(vec![Some(as_usize(key, v)?); n]),
        }
    }
}

/// Why a cross-attention block type is rejected in a UNet2DModel config.
const NEEDS_CONDITION_MODEL: &str =
    "needs a UNet2DConditionModel (UNet2DModel has no cross-attention)";

/// Largest integer a config field may hold: far above any real size, and small enough
/// that products of sizes cannot overflow.
const MAX_CONFIG_INT: u64 = u32::MAX as u64;

fn as_usize(key: &str, v: &Value) -> Result<usize> {
    let x = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= MAX_CONFIG_INT as f64)
            .map(|f| f as u64)
    });
    match x {
        Some(x) if x <= MAX_CONFIG_INT => Ok(x as usize),
        _ => Err(type_err(
            key,
            &format!("a non-negative integer up to {MAX_CONFIG_INT}"),
            v,
        )),
    }
}

/// Nested transformer layer counts: an int, a list of ints (per block), or a list of lists
/// (per block, per layer).
fn transformer_layers(key: &str, v: Option<&Value>, layers: &[usize]) -> Result<Vec<Vec<usize>>> {
    let n = layers.len();
    match v {
        None | Some(Value::Null) => Ok(layers.iter().map(|&l| vec![1; l]).collect()),
        Some(Value::Array(a)) => {
            if a.len() != n {
                return Err(Error::config(
                    key,
                    format!("has {} entries but there are {n} blocks", a.len()),
                ));
            }
            a.iter()
                .zip(layers)
                .map(|(e, &l)| match e {
                    Value::Array(inner) => {
                        let v: Result<Vec<usize>> =
                            inner.iter().map(|x| as_usize(key, x)).collect();
                        let v = v?;
                        if v.len() != l {
                            return Err(Error::config(
                                key,
                                format!("a block lists {} layers but has {l}", v.len()),
                            ));
                        }
                        Ok(v)
                    }
                    e => Ok(vec![as_usize(key, e)?; l]),
                })
                .collect()
        }
        Some(v) => {
            let x = as_usize(key, v)?;
            Ok(layers.iter().map(|&l| vec![x; l]).collect())
        }
    }
}

/// Keys diffusers writes that carry no architecture information.
const IGNORED_KEYS: [&str; 3] = ["sample_size", "dual_cross_attention", "attention_type"];

impl UNetConfig {
    /// Parses a `config.json` text. `_class_name` picks the class (UNet2DConditionModel
    /// when absent and the config has `cross_attention_dim`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Parse {
            what: "U-Net config.json".into(),
            message: e.to_string(),
        })?;
        let map = value.as_object().ok_or_else(|| Error::Parse {
            what: "U-Net config.json".into(),
            message: "the top level is not a JSON object".into(),
        })?;
        Self::from_map(map.clone())
    }

    /// Parses a config object.
    pub fn from_map(map: Map<String, Value>) -> Result<Self> {
        let class = match map.get("_class_name").and_then(Value::as_str) {
            Some(name) => UNetClass::from_name(name)?,
            None if map.contains_key("cross_attention_dim") => UNetClass::UNet2DConditionModel,
            None => UNetClass::UNet2DModel,
        };
        let cond = class == UNetClass::UNet2DConditionModel;
        let mut r = Reader {
            map: &map,
            used: BTreeSet::new(),
        };
        let (def_down, def_up, def_boc, def_in, def_mid): (
            &[&str],
            &[&str],
            &[usize],
            usize,
            &str,
        ) = if cond {
            (
                &[
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                ],
                &[
                    "UpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                ],
                &[320, 640, 1280, 1280],
                4,
                "UNetMidBlock2DCrossAttn",
            )
        } else {
            (
                &[
                    "DownBlock2D",
                    "AttnDownBlock2D",
                    "AttnDownBlock2D",
                    "AttnDownBlock2D",
                ],
                &[
                    "AttnUpBlock2D",
                    "AttnUpBlock2D",
                    "AttnUpBlock2D",
                    "UpBlock2D",
                ],
                &[224, 448, 672, 896],
                3,
                "UNetMidBlock2D",
            )
        };
        let in_channels = r.usize_or("in_channels", def_in)?;
        let out_channels = r.usize_or("out_channels", def_in)?;
        for (k, v) in [("in_channels", in_channels), ("out_channels", out_channels)] {
            if v == 0 {
                return Err(Error::config(k, "must be positive"));
            }
        }
        let center_input_sample = r.bool_or("center_input_sample", false)?;
        let tet = r
            .string_opt("time_embedding_type")?
            .unwrap_or_else(|| "positional".into());
        let time_embedding_type = match tet.as_str() {
            "positional" => TimeEmbeddingType::Positional,
            "fourier" => TimeEmbeddingType::Fourier,
            "learned" if !cond => TimeEmbeddingType::Learned,
            _ => {
                let valid: &[&str] = if cond {
                    &["positional", "fourier"]
                } else {
                    &["positional", "fourier", "learned"]
                };
                return Err(Error::config(
                    "time_embedding_type",
                    format!(
                        "unknown value `{tet}`; valid values are: {}",
                        valid.join(", ")
                    ),
                ));
            }
        };
        let time_embedding_dim = r.usize_opt("time_embedding_dim")?;
        if time_embedding_dim == Some(0) {
            return Err(Error::config("time_embedding_dim", "must be positive"));
        }
        let freq_shift = r.f64_or("freq_shift", 0.0)?;
        let flip_sin_to_cos = r.bool_or("flip_sin_to_cos", true)?;
        let down_block_types = r.strings_or("down_block_types", def_down)?;
        let mid_block_type = r.nullable_string("mid_block_type", Some(def_mid))?;
        let up_block_types = r.strings_or("up_block_types", def_up)?;
        let block_out_channels = r.usizes_or("block_out_channels", def_boc)?;
        let n = down_block_types.len();
        if n == 0 {
            return Err(Error::config("down_block_types", "is empty"));
        }
        if up_block_types.len() != n {
            return Err(Error::config(
                "up_block_types",
                format!(
                    "has {} entries but down_block_types has {n}",
                    up_block_types.len()
                ),
            ));
        }
        if block_out_channels.len() != n {
            return Err(Error::config(
                "block_out_channels",
                format!(
                    "has {} entries but down_block_types has {n}",
                    block_out_channels.len()
                ),
            ));
        }
        if let Some(i) = block_out_channels.iter().position(|&c| c == 0) {
            return Err(Error::config(
                "block_out_channels",
                format!("entry {i} is 0"),
            ));
        }
        for t in &down_block_types {
            if !cond && t == "CrossAttnDownBlock2D" {
                return Err(Error::config(
                    "down_block_types",
                    format!("block type `{t}` {NEEDS_CONDITION_MODEL}"),
                ));
            }
            if !DOWN_BLOCK_TYPES.contains(&t.as_str()) {
                return Err(Error::config(
                    "down_block_types",
                    format!(
                        "unknown block type `{t}`; valid values are: {}",
                        DOWN_BLOCK_TYPES.join(", ")
                    ),
                ));
            }
        }
        for t in &up_block_types {
            if !cond && t == "CrossAttnUpBlock2D" {
                return Err(Error::config(
                    "up_block_types",
                    format!("block type `{t}` {NEEDS_CONDITION_MODEL}"),
                ));
            }
            if !UP_BLOCK_TYPES.contains(&t.as_str()) {
                return Err(Error::config(
                    "up_block_types",
                    format!(
                        "unknown block type `{t}`; valid values are: {}",
                        UP_BLOCK_TYPES.join(", ")
                    ),
                ));
            }
        }
        if let Some(m) = &mid_block_type {
            if !cond && m == "UNetMidBlock2DCrossAttn" {
                return Err(Error::config(
                    "mid_block_type",
                    format!("block type `{m}` {NEEDS_CONDITION_MODEL}"),
                ));
            }
            let allowed = if cond {
                MID_BLOCK_TYPES.contains(&m.as_str())
            } else {
                m == "UNetMidBlock2D"
            };
            if !allowed {
                return Err(Error::config(
                    "mid_block_type",
                    format!(
                        "unknown block type `{m}`; valid values are: {}, null",
                        MID_BLOCK_TYPES.join(", ")
                    ),
                ));
            }
        }
        let layers_per_block: Vec<usize> = r
            .per_block_usize("layers_per_block", n, Some(2))?
            .into_iter()
            .map(|x| x.unwrap_or(2))
            .collect();
        if layers_per_block.contains(&0) {
            return Err(Error::config("layers_per_block", "must be at least 1"));
        }
        let mid_block_scale_factor = r.f64_or("mid_block_scale_factor", 1.0)?;
        let downsample_padding = r.usize_or("downsample_padding", 1)?;
        if downsample_padding > 1 {
            // Any larger padding makes the downsampled size differ from the skip sizes.
            return Err(Error::config(
                "downsample_padding",
                format!("must be 0 or 1, got {downsample_padding}"),
            ));
        }
        let downsample_type = r
            .string_opt("downsample_type")?
            .unwrap_or_else(|| "conv".into());
        let upsample_type = r
            .string_opt("upsample_type")?
            .unwrap_or_else(|| "conv".into());
        if !["conv", "resnet"].contains(&downsample_type.as_str()) {
            return Err(Error::config(
                "downsample_type",
                format!("unknown value `{downsample_type}`; valid values are: conv, resnet"),
            ));
        }
        if !["conv", "resnet"].contains(&upsample_type.as_str()) {
            return Err(Error::config(
                "upsample_type",
                format!("unknown value `{upsample_type}`; valid values are: conv, resnet"),
            ));
        }
        let dropout = r.f64_or("dropout", 0.0)?;
        let act_fn = r.string_opt("act_fn")?.unwrap_or_else(|| "silu".into());
        ember_conditioning::Activation::from_name(&act_fn)
            .map_err(|e| Error::config("act_fn", e.to_string()))?;
        let attention_head_dim = if cond {
            r.per_block_usize("attention_head_dim", n, Some(8))?
        } else {
            // UNet2DModel takes a single value (or null).
            let v = match r.get("attention_head_dim") {
                None if !map.contains_key("attention_head_dim") => Some(8),
                None => None,
                Some(v) => Some(as_usize("attention_head_dim", v)?),
            };
            vec![v; n]
        };
        if attention_head_dim.contains(&Some(0)) {
            return Err(Error::config("attention_head_dim", "must be positive"));
        }
        if cond && r.get("num_attention_heads").is_some() {
            return Err(Error::config(
                "num_attention_heads",
                "must be null for UNet2DConditionModel (diffusers stores the head count in attention_head_dim)",
            ));
        }
        let norm_num_groups = match map.get("norm_num_groups") {
            None => Some(32),
            Some(Value::Null) => {
                r.used.insert("norm_num_groups".into());
                None
            }
            Some(v) => {
                r.used.insert("norm_num_groups".into());
                Some(as_usize("norm_num_groups", v)?)
            }
        };
        if norm_num_groups == Some(0) {
            return Err(Error::config("norm_num_groups", "must be positive"));
        }
        let attn_norm_num_groups = r.usize_opt("attn_norm_num_groups")?;
        if attn_norm_num_groups == Some(0) {
            return Err(Error::config("attn_norm_num_groups", "must be positive"));
        }
        let norm_eps = r.f64_or("norm_eps", 1e-5)?;
        let rtss = r
            .string_opt("resnet_time_scale_shift")?
            .unwrap_or_else(|| "default".into());
        let resnet_time_scale_shift = match rtss.as_str() {
            "default" => TimeScaleShift::Default,
            "scale_shift" => TimeScaleShift::ScaleShift,
            _ => {
                return Err(Error::config(
                    "resnet_time_scale_shift",
                    format!("unknown value `{rtss}`; valid values are: default, scale_shift"),
                ))
            }
        };
        let add_attention = r.bool_or("add_attention", true)?;
        let num_class_embeds = r.usize_opt("num_class_embeds")?;
        let class_embed_type = match r.string_opt("class_embed_type")? {
            None => num_class_embeds.map(|_| ClassEmbedType::Table),
            Some(s) => Some(match s.as_str() {
                "timestep" => ClassEmbedType::Timestep,
                "identity" => ClassEmbedType::Identity,
                "projection" if cond => ClassEmbedType::Projection,
                "simple_projection" if cond => ClassEmbedType::SimpleProjection,
                _ => {
                    let valid: &[&str] = if cond {
                        &[
                            "timestep",
                            "identity",
                            "projection",
                            "simple_projection",
                            "null",
                        ]
                    } else {
                        &["timestep", "identity", "null"]
                    };
                    return Err(Error::config(
                        "class_embed_type",
                        format!(
                            "unknown value `{s}`; valid values are: {}",
                            valid.join(", ")
                        ),
                    ));
                }
            }),
        };
        if num_class_embeds == Some(0) {
            return Err(Error::config("num_class_embeds", "must be positive"));
        }
        let num_train_timesteps = r.usize_opt("num_train_timesteps")?;
        if time_embedding_type == TimeEmbeddingType::Learned
            && num_train_timesteps.unwrap_or(0) == 0
        {
            return Err(Error::config(
                "num_train_timesteps",
                "is required (and positive) with time_embedding_type `learned`",
            ));
        }

        // UNet2DConditionModel-only fields (absent from UNet2DModel configs).
        let only_cross_attention = match r.get("only_cross_attention") {
            None => vec![false; n],
            Some(Value::Bool(b)) => vec![*b; n],
            Some(Value::Array(a)) if a.len() == n => a
                .iter()
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| type_err("only_cross_attention", "booleans", v))
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(type_err(
                    "only_cross_attention",
                    &format!("a boolean or a list of {n}"),
                    v,
                ))
            }
        };
        let cross_attention_dim: Vec<usize> = if cond {
            r.per_block_usize("cross_attention_dim", n, Some(1280))?
                .into_iter()
                .map(|x| match x {
                    None => Err(Error::config("cross_attention_dim", "must not be null")),
                    Some(0) => Err(Error::config("cross_attention_dim", "must be positive")),
                    Some(d) => Ok(d),
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let transformer_layers_per_block = transformer_layers(
            "transformer_layers_per_block",
            r.get("transformer_layers_per_block"),
            &layers_per_block,
        )?;
        let up_layers: Vec<usize> = layers_per_block.iter().rev().map(|l| l + 1).collect();
        let reverse_transformer_layers_per_block =
            match r.get("reverse_transformer_layers_per_block") {
                None => {
                    // diffusers reverses the per-block value; a per-layer list must be given
                    // explicitly for the up path.
                    let per_block: Vec<usize> = transformer_layers_per_block
                        .iter()
                        .rev()
                        .map(|v| v.first().copied().unwrap_or(1))
                        .collect();
                    let uniform = transformer_layers_per_block
                        .iter()
                        .all(|v| v.iter().all(|&x| Some(&x) == v.first()));
                    if !uniform {
                        return Err(Error::config(
                            "reverse_transformer_layers_per_block",
                            "is required when transformer_layers_per_block gives per-layer lists",
                        ));
                    }
                    per_block
                        .iter()
                        .zip(&up_layers)
                        .map(|(&t, &l)| vec![t; l])
                        .collect()
                }
                Some(v) => {
                    transformer_layers("reverse_transformer_layers_per_block", Some(v), &up_layers)?
                }
            };
        let encoder_hid_dim = r.usize_opt("encoder_hid_dim")?;
        if let Some(t) = r.string_opt("encoder_hid_dim_type")? {
            if t != "text_proj" {
                return Err(Error::config(
                    "encoder_hid_dim_type",
                    format!("unsupported value `{t}`; supported: text_proj"),
                ));
            }
            if encoder_hid_dim.is_none() {
                return Err(Error::config(
                    "encoder_hid_dim",
                    "is required with encoder_hid_dim_type",
                ));
            }
        }
        let use_linear_projection = r.bool_or("use_linear_projection", false)?;
        let upcast_attention = r.bool_or("upcast_attention", false)?;
        let addition_embed_type = r.string_opt("addition_embed_type")?;
        let addition_time_embed_dim = r.usize_opt("addition_time_embed_dim")?;
        let projection_class_embeddings_input_dim =
            r.usize_opt("projection_class_embeddings_input_dim")?;
        if let Some(a) = &addition_embed_type {
            if a != "text_time" {
                return Err(Error::config(
                    "addition_embed_type",
                    format!("unsupported value `{a}`; supported: text_time, null"),
                ));
            }
            if addition_time_embed_dim.is_none() || projection_class_embeddings_input_dim.is_none()
            {
                return Err(Error::config(
                    "addition_embed_type",
                    "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim",
                ));
            }
        }
        if matches!(
            class_embed_type,
            Some(ClassEmbedType::Projection | ClassEmbedType::SimpleProjection)
        ) && projection_class_embeddings_input_dim.is_none()
        {
            return Err(Error::config(
                "projection_class_embeddings_input_dim",
                "is required with class_embed_type projection / simple_projection",
            ));
        }
        let resnet_skip_time_act = r.bool_or("resnet_skip_time_act", false)?;
        let resnet_out_scale_factor = r.f64_or("resnet_out_scale_factor", 1.0)?;
        let time_embedding_act_fn = r.string_opt("time_embedding_act_fn")?;
        let timestep_post_act = r.string_opt("timestep_post_act")?;
        for (k, v) in [
            ("time_embedding_act_fn", &time_embedding_act_fn),
            ("timestep_post_act", &timestep_post_act),
        ] {
            if let Some(v) = v {
                ember_conditioning::Activation::from_name(v)
                    .map_err(|e| Error::config(k, e.to_string()))?;
            }
        }
        let time_cond_proj_dim = r.usize_opt("time_cond_proj_dim")?;
        let conv_in_kernel = r.usize_or("conv_in_kernel", 3)?;
        let conv_out_kernel = r.usize_or("conv_out_kernel", 3)?;
        for (k, v) in [
            ("conv_in_kernel", conv_in_kernel),
            ("conv_out_kernel", conv_out_kernel),
        ] {
            if v % 2 == 0 {
                return Err(Error::config(k, format!("must be odd, got {v}")));
            }
        }
        let class_embeddings_concat = r.bool_or("class_embeddings_concat", false)?;
        if class_embeddings_concat && class_embed_type.is_none() {
            return Err(Error::config(
                "class_embeddings_concat",
                "needs a class embedding (class_embed_type or num_class_embeds)",
            ));
        }
        for key in [
            "mid_block_only_cross_attention",
            "cross_attention_norm",
            "addition_embed_type_num_heads",
            "attention_type",
            "dual_cross_attention",
        ] {
            let v = r.get(key);
            let harmless = match (key, v) {
                (_, None) => true,
                ("attention_type", Some(Value::String(s))) => s == "default",
                ("dual_cross_attention", Some(Value::Bool(b))) => !b,
                ("mid_block_only_cross_attention", Some(Value::Bool(_))) => true,
                ("addition_embed_type_num_heads", Some(_)) => true,
                _ => false,
            };
            if !harmless {
                return Err(Error::config(
                    key,
                    format!("value {} is not supported", v.unwrap()),
                ));
            }
        }
        for key in IGNORED_KEYS {
            r.used.insert(key.into());
        }
        let unknown: Vec<&String> = map
            .keys()
            .filter(|k| !k.starts_with('_') && !r.used.contains(*k))
            .collect();
        if !unknown.is_empty() {
            log::warn!(
                "{} config: ignoring unknown keys {}",
                class.name(),
                unknown
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let config = Self {
            class,
            in_channels,
            out_channels,
            center_input_sample,
            time_embedding_type,
            time_embedding_dim,
            freq_shift,
            flip_sin_to_cos,
            down_block_types,
            mid_block_type,
            up_block_types,
            block_out_channels,
            layers_per_block,
            mid_block_scale_factor,
            downsample_padding,
            downsample_type,
            upsample_type,
            dropout,
            act_fn,
            attention_head_dim,
            norm_num_groups,
            attn_norm_num_groups,
            norm_eps,
            resnet_time_scale_shift,
            add_attention,
            class_embed_type,
            num_class_embeds,
            num_train_timesteps,
            only_cross_attention,
            cross_attention_dim,
            transformer_layers_per_block,
            reverse_transformer_layers_per_block,
            encoder_hid_dim,
            use_linear_projection,
            upcast_attention,
            addition_embed_type,
            addition_time_embed_dim,
            resnet_skip_time_act,
            resnet_out_scale_factor,
            time_embedding_act_fn,
            timestep_post_act,
            time_cond_proj_dim,
            conv_in_kernel,
            conv_out_kernel,
            projection_class_embeddings_input_dim,
            class_embeddings_concat,
            raw: map.clone(),
        };
        Ok(config)
    }

    /// diffusers' `sample_size` (the native height and width), if the config gives one.
    pub fn sample_size(&self) -> Option<[usize; 2]> {
        match self.raw.get("sample_size")? {
            Value::Array(a) if a.len() == 2 => {
                Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize])
            }
            v => v.as_u64().map(|n| [n as usize, n as usize]),
        }
    }

    /// Number of 2× downsamplings (all blocks but the last one downsample).
    pub fn num_downsamplers(&self) -> usize {
        self.down_block_types.len() - 1
    }

    /// The config as JSON text (the raw object, with `_class_name` set).
    pub fn to_json_string(&self) -> String {
        let mut map = self.raw.clone();
        map.insert(
            "_class_name".into(),
            Value::String(self.class.name().into()),
        );
        serde_json::to_string_pretty(&Value::Object(map)).unwrap_or_default()
    }
}
