//! [`UNet2D`]: diffusers' `UNet2DModel` and `UNet2DConditionModel` in one module tree whose
//! parameter paths are diffusers' state-dict keys.

use crate::blocks::*;
use crate::config::{ClassEmbedType, TimeEmbeddingType, TimeScaleShift, UNetClass, UNetConfig};
use burn::module::Module;
use burn::tensor::{ElementConversion, Int, Tensor};
use ember_conditioning::attention::{Attention, AttentionConfig};
use ember_conditioning::embeddings::{
    sinusoidal_embedding, GaussianFourierProjection, LabelEmbedding, TimestepEmbedding,
};
use ember_conditioning::nn::{check_indices, Activation, Conv2d, GroupNorm, Linear};
use ember_conditioning::EmberBackend;
use ember_core::{Conditioning, Denoiser, Error, Prediction, Result};
use std::sync::Arc;

/// The learned part of the timestep projection (`time_proj.weight`), if any.
#[derive(Module, Debug)]
pub enum TimeProjection<B: EmberBackend> {
    /// Gaussian Fourier features.
    Fourier(GaussianFourierProjection<B>),
    /// A table indexed by the integer timestep.
    Learned(LabelEmbedding<B>),
}

/// `class_embedding`: a table, an MLP or a linear layer.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ClassEmbedding<B: EmberBackend> {
    Table(LabelEmbedding<B>),
    Mlp(TimestepEmbedding<B>),
    Linear(Linear<B>),
}

/// A U-Net in diffusers' exact module layout. One type implements both `UNet2DModel` and
/// `UNet2DConditionModel`; [`UNetConfig::class`] says which.
#[derive(Module, Debug)]
pub struct UNet2D<B: EmberBackend> {
    pub conv_in: Conv2d<B>,
    pub time_proj: Option<TimeProjection<B>>,
    pub time_embedding: TimestepEmbedding<B>,
    pub class_embedding: Option<ClassEmbedding<B>>,
    pub encoder_hid_proj: Option<Linear<B>>,
    pub add_embedding: Option<TimestepEmbedding<B>>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: Option<MidBlock<B>>,
    pub up_blocks: Vec<UpBlock<B>>,
    pub conv_norm_out: Option<GroupNorm<B>>,
    pub conv_out: Conv2d<B>,
    #[module(skip)]
    pub config: Arc<UNetConfig>,
    #[module(skip)]
    pub prediction: Prediction,
}

fn default_groups(c: usize) -> usize {
    (c / 4).clamp(1, 32)
}

struct Builder<'a> {
    cfg: &'a UNetConfig,
    act: Activation,
    temb: usize,
    groups: Option<usize>,
}

impl Builder<'_> {
    fn resnet_groups(&self, c: usize) -> usize {
        self.groups.unwrap_or_else(|| default_groups(c))
    }

    fn resnet(&self, cin: usize, cout: usize) -> ResnetSpec {
        let g = self.resnet_groups(cin);
        ResnetSpec {
            in_channels: cin,
            out_channels: cout,
            temb_channels: Some(self.temb),
            groups: g,
            groups_out: g,
            eps: self.cfg.norm_eps,
            act: self.act,
            time_norm: self.cfg.resnet_time_scale_shift,
            resample: Resample::None,
            output_scale_factor: 1.0,
            skip_time_act: false,
            use_in_shortcut: None,
            dropout: self.cfg.dropout,
        }
    }

    fn spatial_attention<B: EmberBackend>(
        &self,
        c: usize,
        dim_head: Option<usize>,
        groups: Option<usize>,
        rescale: f64,
        device: &B::Device,
    ) -> Result<AttentionLayer<B>> {
        let dim_head = dim_head.unwrap_or(c);
        if !c.is_multiple_of(dim_head) {
            return Err(Error::config(
                "attention_head_dim",
                format!("{dim_head} does not divide {c} channels"),
            ));
        }
        Ok(AttentionLayer::Spatial(Attention::new(
            &AttentionConfig {
                query_dim: c,
                cross_attention_dim: None,
                heads: c / dim_head,
                dim_head,
                qkv_bias: true,
                norm_num_groups: groups,
                norm_eps: self.cfg.norm_eps,
                residual_connection: true,
                rescale_output_factor: rescale,
            },
            device,
        )?))
    }

    fn transformer<B: EmberBackend>(
        &self,
        c: usize,
        heads: Option<usize>,
        layers: usize,
        cross: usize,
        only_cross: bool,
        device: &B::Device,
    ) -> Result<AttentionLayer<B>> {
        let heads = heads.unwrap_or(c);
        Ok(AttentionLayer::Transformer(Transformer2D::new(
            &TransformerSpec {
                channels: c,
                heads,
                layers,
                cross_attention_dim: Some(cross),
                norm_num_groups: self.resnet_groups(c),
                use_linear_projection: self.cfg.use_linear_projection,
                only_cross_attention: only_cross,
                dropout: self.cfg.dropout,
            },
            "attention_head_dim",
            device,
        )?))
    }

    fn down_block<B: EmberBackend>(
        &self,
        i: usize,
        cin: usize,
        device: &B::Device,
    ) -> Result<DownBlock<B>> {
        let cfg = self.cfg;
        let name = &cfg.down_block_types[i];
        let kind = BlockKind::from_block_type(name).ok_or_else(|| {
            Error::config("down_block_types", format!("unknown block type `{name}`"))
        })?;
        let cout = cfg.block_out_channels[i];
        let layers = cfg.layers_per_block[i];
        let add_down = i + 1 < cfg.block_out_channels.len();
        let field = "norm_num_groups";
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        let mut downsamplers = Vec::new();
        let (mut resnet_down, mut skip_conv) = (None, None);
        let sqrt2 = std::f64::consts::SQRT_2;
        for j in 0..layers {
            let c_in = if j == 0 { cin } else { cout };
            let mut spec = self.resnet(c_in, cout);
            match kind {
                BlockKind::Resnet => {
                    spec.skip_time_act = cfg.resnet_skip_time_act;
                    spec.output_scale_factor = cfg.resnet_out_scale_factor;
                }
                BlockKind::Skip | BlockKind::AttnSkip => {
                    spec.groups = default_groups(c_in);
                    spec.groups_out = default_groups(cout);
                    spec.output_scale_factor = sqrt2;
                }
                _ => {}
            }
            resnets.push(ResnetBlock2D::new(&spec, field, device)?);
            match kind {
                BlockKind::Attn => attentions.push(self.spatial_attention(
                    cout,
                    cfg.attention_head_dim[i],
                    Some(self.resnet_groups(cout)),
                    1.0,
                    device,
                )?),
                BlockKind::AttnSkip => attentions.push(self.spatial_attention(
                    cout,
                    cfg.attention_head_dim[i],
                    Some(32),
                    sqrt2,
                    device,
                )?),
                BlockKind::CrossAttn => attentions.push(self.transformer(
                    cout,
                    cfg.attention_head_dim[i],
                    cfg.transformer_layers_per_block[i][j],
                    cfg.cross_attention_dim[i],
                    cfg.only_cross_attention[i],
                    device,
                )?),
                _ => {}
            }
        }
        if add_down {
            match kind {
                BlockKind::Plain | BlockKind::CrossAttn => downsamplers.push(Downsampler::Conv(
                    Downsample2D::new(cout, cout, cfg.downsample_padding, device),
                )),
                BlockKind::Attn if cfg.downsample_type == "conv" => {
                    downsamplers.push(Downsampler::Conv(Downsample2D::new(
                        cout,
                        cout,
                        cfg.downsample_padding,
                        device,
                    )))
                }
                BlockKind::Attn | BlockKind::Resnet => {
                    let mut spec = self.resnet(cout, cout);
                    spec.resample = Resample::DownAvg;
                    if kind == BlockKind::Resnet {
                        spec.skip_time_act = cfg.resnet_skip_time_act;
                        spec.output_scale_factor = cfg.resnet_out_scale_factor;
                    }
                    downsamplers.push(Downsampler::Resnet(ResnetBlock2D::new(
                        &spec, field, device,
                    )?));
                }
                BlockKind::Skip | BlockKind::AttnSkip => {
                    let mut spec = self.resnet(cout, cout);
                    spec.groups = default_groups(cout);
                    spec.groups_out = default_groups(cout);
                    spec.output_scale_factor = sqrt2;
                    spec.use_in_shortcut = Some(true);
                    spec.resample = Resample::DownFir;
                    resnet_down = Some(ResnetBlock2D::new(&spec, field, device)?);
                    skip_conv = Some(Conv2d::new(3, cout, 1, 1, 0, device));
                }
            }
        }
        Ok(DownBlock {
            resnets,
            attentions,
            downsamplers,
            resnet_down,
            skip_conv,
            kind,
        })
    }

    fn up_block<B: EmberBackend>(
        &self,
        i: usize,
        prev: usize,
        device: &B::Device,
    ) -> Result<UpBlock<B>> {
        let cfg = self.cfg;
        let n = cfg.block_out_channels.len();
        let name = &cfg.up_block_types[i];
        let kind = BlockKind::from_block_type(name).ok_or_else(|| {
            Error::config("up_block_types", format!("unknown block type `{name}`"))
        })?;
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let cout = rev[i];
        let cin = rev[(i + 1).min(n - 1)];
        let layers = cfg.layers_per_block[n - 1 - i] + 1;
        let add_up = i + 1 < n;
        let down_i = n - 1 - i;
        let field = "norm_num_groups";
        let sqrt2 = std::f64::consts::SQRT_2;
        let (mut resnets, mut attentions, mut upsamplers) = (Vec::new(), Vec::new(), Vec::new());
        let (mut resnet_up, mut skip_conv, mut skip_norm) = (None, None, None);
        for j in 0..layers {
            let res_skip = if j == layers - 1 { cin } else { cout };
            let r_in = if j == 0 { prev } else { cout };
            let mut spec = self.resnet(r_in + res_skip, cout);
            match kind {
                BlockKind::Resnet => {
                    spec.skip_time_act = cfg.resnet_skip_time_act;
                    spec.output_scale_factor = cfg.resnet_out_scale_factor;
                }
                BlockKind::Skip => {
                    spec.groups = default_groups(r_in + res_skip);
                    spec.groups_out = default_groups(cout);
                    spec.output_scale_factor = sqrt2;
                }
                BlockKind::AttnSkip => {
                    // diffusers writes `min(resnet_in_channels + res_skip_channels // 4, 32)`
                    // here; the precedence slip is part of the checkpoint format.
                    spec.groups = (r_in + res_skip / 4).min(32);
                    spec.groups_out = default_groups(cout);
                    spec.output_scale_factor = sqrt2;
                }
                _ => {}
            }
            resnets.push(ResnetBlock2D::new(&spec, field, device)?);
            match kind {
                BlockKind::Attn => attentions.push(self.spatial_attention(
                    cout,
                    cfg.attention_head_dim[down_i],
                    Some(self.resnet_groups(cout)),
                    1.0,
                    device,
                )?),
                BlockKind::CrossAttn => attentions.push(self.transformer(
                    cout,
                    cfg.attention_head_dim[down_i],
                    cfg.reverse_transformer_layers_per_block[i][j],
                    cfg.cross_attention_dim[down_i],
                    cfg.only_cross_attention[down_i],
                    device,
                )?),
                _ => {}
            }
        }
        if kind == BlockKind::AttnSkip {
            attentions.push(self.spatial_attention(
                cout,
                cfg.attention_head_dim[down_i],
                Some(32),
                sqrt2,
                device,
            )?);
        }
        if add_up {
            match kind {
                BlockKind::Plain | BlockKind::CrossAttn => {
                    upsamplers.push(Upsampler::Conv(Upsample2D::new(cout, cout, device)))
                }
                BlockKind::Attn if cfg.upsample_type == "conv" => {
                    upsamplers.push(Upsampler::Conv(Upsample2D::new(cout, cout, device)))
                }
                BlockKind::Attn | BlockKind::Resnet => {
                    let mut spec = self.resnet(cout, cout);
                    spec.resample = Resample::UpNearest;
                    if kind == BlockKind::Resnet {
                        spec.skip_time_act = cfg.resnet_skip_time_act;
                        spec.output_scale_factor = cfg.resnet_out_scale_factor;
                    }
                    upsamplers.push(Upsampler::Resnet(ResnetBlock2D::new(&spec, field, device)?));
                }
                BlockKind::Skip | BlockKind::AttnSkip => {
                    let mut spec = self.resnet(cout, cout);
                    spec.groups = default_groups(cout);
                    spec.groups_out = default_groups(cout);
                    spec.output_scale_factor = sqrt2;
                    spec.use_in_shortcut = Some(true);
                    spec.resample = Resample::UpFir;
                    resnet_up = Some(ResnetBlock2D::new(&spec, field, device)?);
                    skip_conv = Some(Conv2d::new(cout, 3, 3, 1, 1, device));
                    skip_norm = Some(GroupNorm::new(
                        default_groups(cout),
                        cout,
                        cfg.norm_eps,
                        field,
                        device,
                    )?);
                }
            }
        }
        Ok(UpBlock {
            resnets,
            attentions,
            upsamplers,
            resnet_up,
            skip_conv,
            skip_norm,
            kind,
        })
    }

    fn mid_block<B: EmberBackend>(&self, device: &B::Device) -> Result<Option<MidBlock<B>>> {
        let cfg = self.cfg;
        let Some(kind) = &cfg.mid_block_type else {
            return Ok(None);
        };
        let c = *cfg.block_out_channels.last().expect("validated non-empty");
        let mut spec = self.resnet(c, c);
        spec.output_scale_factor = cfg.mid_block_scale_factor;
        let resnet = |device| ResnetBlock2D::new(&spec, "norm_num_groups", device);
        let mut resnets = vec![resnet(device)?];
        let mut attentions = Vec::new();
        let last = cfg.block_out_channels.len() - 1;
        match (cfg.class, kind.as_str()) {
            (UNetClass::UNet2DModel, _) => {
                if cfg.add_attention {
                    if let Some(g) = cfg.attn_norm_num_groups.filter(|&g| !c.is_multiple_of(g)) {
                        return Err(Error::config(
                            "attn_norm_num_groups",
                            format!("{g} groups do not divide {c} channels"),
                        ));
                    }
                    let groups = cfg
                        .attn_norm_num_groups
                        .or(match cfg.resnet_time_scale_shift {
                            TimeScaleShift::Default => Some(self.resnet_groups(c)),
                            TimeScaleShift::ScaleShift => None,
                        });
                    attentions.push(self.spatial_attention(
                        c,
                        cfg.attention_head_dim[last],
                        groups,
                        cfg.mid_block_scale_factor,
                        device,
                    )?);
                }
                resnets.push(resnet(device)?);
            }
            (_, "UNetMidBlock2DCrossAttn") => {
                attentions.push(self.transformer(
                    c,
                    cfg.attention_head_dim[last],
                    cfg.transformer_layers_per_block[last][0],
                    cfg.cross_attention_dim[last],
                    false,
                    device,
                )?);
                resnets.push(resnet(device)?);
            }
            // UNet2DConditionModel's "UNetMidBlock2D": a single ResNet block.
            _ => {}
        }
        Ok(Some(MidBlock {
            attentions,
            resnets,
        }))
    }
}

impl<B: EmberBackend> UNet2D<B> {
    /// Builds a model with PyTorch-default random initialisation (drawn lazily, so a model
    /// about to receive a checkpoint never draws them).
    pub fn new(config: UNetConfig, device: &B::Device) -> Result<Self> {
        let cfg = &config;
        let cond = cfg.class == UNetClass::UNet2DConditionModel;
        let boc0 = cfg.block_out_channels[0];
        let act = Activation::from_name(&cfg.act_fn)?;
        let uses_skip = cfg
            .down_block_types
            .iter()
            .chain(&cfg.up_block_types)
            .any(|t| t.contains("Skip"));
        if uses_skip && (cfg.in_channels != 3 || cfg.out_channels != 3) {
            return Err(Error::config(
                "in_channels",
                "Skip blocks carry an RGB skip image: in_channels and out_channels must be 3",
            ));
        }
        let (time_embed_dim, t_in) = match (cfg.time_embedding_type, cond) {
            (TimeEmbeddingType::Fourier, false) => {
                (cfg.time_embedding_dim.unwrap_or(boc0 * 4), 2 * boc0)
            }
            (TimeEmbeddingType::Fourier, true) => {
                let d = cfg.time_embedding_dim.unwrap_or(boc0 * 2);
                if !d.is_multiple_of(2) {
                    return Err(Error::config(
                        "time_embedding_dim",
                        format!("must be even with fourier embeddings, got {d}"),
                    ));
                }
                (d, d)
            }
            _ => (cfg.time_embedding_dim.unwrap_or(boc0 * 4), boc0),
        };
        let time_proj = match (cfg.time_embedding_type, cond) {
            (TimeEmbeddingType::Positional, _) => None,
            (TimeEmbeddingType::Fourier, false) => Some(TimeProjection::Fourier(
                GaussianFourierProjection::new(boc0, 16.0, true, false, device),
            )),
            (TimeEmbeddingType::Fourier, true) => {
                Some(TimeProjection::Fourier(GaussianFourierProjection::new(
                    time_embed_dim / 2,
                    1.0,
                    false,
                    cfg.flip_sin_to_cos,
                    device,
                )))
            }
            (TimeEmbeddingType::Learned, _) => Some(TimeProjection::Learned(LabelEmbedding::new(
                cfg.num_train_timesteps.unwrap_or(1000),
                boc0,
                false,
                device,
            ))),
        };
        let opt_act =
            |name: &Option<String>| name.as_deref().map(Activation::from_name).transpose();
        let (te_act, te_post) = if cond {
            (act, opt_act(&cfg.timestep_post_act)?)
        } else {
            (Activation::Silu, None)
        };
        let time_embedding = TimestepEmbedding::new(
            t_in,
            time_embed_dim,
            None,
            te_act,
            te_post,
            if cond { cfg.time_cond_proj_dim } else { None },
            device,
        );
        let class_embedding = match cfg.class_embed_type {
            None => None,
            Some(ClassEmbedType::Table) => {
                let n = cfg
                    .num_class_embeds
                    .ok_or_else(|| Error::config("num_class_embeds", "is required"))?;
                Some(ClassEmbedding::Table(LabelEmbedding::new(
                    n,
                    time_embed_dim,
                    false,
                    device,
                )))
            }
            Some(ClassEmbedType::Timestep) => Some(ClassEmbedding::Mlp(TimestepEmbedding::new(
                t_in,
                time_embed_dim,
                None,
                if cond { act } else { Activation::Silu },
                None,
                None,
                device,
            ))),
            Some(ClassEmbedType::Identity) => None,
            Some(ClassEmbedType::Projection) => Some(ClassEmbedding::Mlp(TimestepEmbedding::new(
                cfg.projection_class_embeddings_input_dim.unwrap_or(0),
                time_embed_dim,
                None,
                Activation::Silu,
                None,
                None,
                device,
            ))),
            Some(ClassEmbedType::SimpleProjection) => Some(ClassEmbedding::Linear(Linear::new(
                cfg.projection_class_embeddings_input_dim.unwrap_or(0),
                time_embed_dim,
                true,
                device,
            ))),
        };
        let encoder_hid_proj = match cfg.encoder_hid_dim {
            Some(d) if cond => {
                let c0 = cfg.cross_attention_dim[0];
                if cfg.cross_attention_dim.iter().any(|&c| c != c0) {
                    return Err(Error::config(
                        "cross_attention_dim",
                        "must be a single value with encoder_hid_dim",
                    ));
                }
                Some(Linear::new(d, c0, true, device))
            }
            _ => None,
        };
        let add_embedding = match &cfg.addition_embed_type {
            Some(_) if cond => Some(TimestepEmbedding::new(
                cfg.projection_class_embeddings_input_dim.unwrap_or(0),
                time_embed_dim,
                None,
                Activation::Silu,
                None,
                None,
                device,
            )),
            _ => None,
        };
        let blocks_temb = if cfg.class_embeddings_concat {
            2 * time_embed_dim
        } else {
            time_embed_dim
        };
        let builder = Builder {
            cfg,
            act,
            temb: blocks_temb,
            groups: cfg.norm_num_groups,
        };
        let conv_in_k = if cond { cfg.conv_in_kernel } else { 3 };
        let conv_out_k = if cond { cfg.conv_out_kernel } else { 3 };
        let conv_in = Conv2d::new(
            cfg.in_channels,
            boc0,
            conv_in_k,
            1,
            (conv_in_k - 1) / 2,
            device,
        );
        let mut down_blocks = Vec::new();
        let mut prev = boc0;
        for i in 0..cfg.down_block_types.len() {
            down_blocks.push(builder.down_block(i, prev, device)?);
            prev = cfg.block_out_channels[i];
        }
        let mid_block = builder.mid_block(device)?;
        let mut up_blocks = Vec::new();
        let mut prev = *cfg.block_out_channels.last().unwrap();
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        for (i, &out) in rev.iter().enumerate() {
            up_blocks.push(builder.up_block(i, prev, device)?);
            prev = out;
        }
        let conv_norm_out = match (cond, cfg.norm_num_groups) {
            (true, None) => None,
            (_, g) => Some(GroupNorm::new(
                g.unwrap_or_else(|| default_groups(boc0)),
                boc0,
                cfg.norm_eps,
                "norm_num_groups",
                device,
            )?),
        };
        let conv_out = Conv2d::new(
            boc0,
            cfg.out_channels,
            conv_out_k,
            1,
            (conv_out_k - 1) / 2,
            device,
        );
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            class_embedding,
            encoder_hid_proj,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config: Arc::new(config),
            prediction: Prediction::Epsilon,
        })
    }

    /// Sets what the model's output means (from the scheduler config's `prediction_type`).
    pub fn with_prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Whether the model has cross-attention and so needs `encoder_hidden_states`.
    pub fn needs_encoder_hidden_states(&self) -> bool {
        self.down_blocks
            .iter()
            .any(|b| b.kind == BlockKind::CrossAttn)
            || self.config.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn")
    }

    fn time_proj_forward(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 2>> {
        let cfg = &self.config;
        let boc0 = cfg.block_out_channels[0];
        Ok(match &self.time_proj {
            None => {
                sinusoidal_embedding(t, boc0, cfg.flip_sin_to_cos, cfg.freq_shift, 1.0, 10_000.0)
            }
            Some(TimeProjection::Fourier(f)) => f.forward(t),
            Some(TimeProjection::Learned(table)) => {
                // A NaN would round to some valid row and go unnoticed.
                let finite: bool = t.clone().is_finite().all().into_scalar().elem();
                if !finite {
                    return Err(Error::NonFinite {
                        what: "timestep".into(),
                    });
                }
                let ids: Tensor<B, 1, Int> = t.round().int();
                check_indices(&ids, table.num_embeddings(), "timestep")?;
                table.forward(ids)?
            }
        })
    }

    /// diffusers' forward. `timesteps` holds one value per sample (or one for all).
    pub fn forward_unet(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        cond: &Conditioning<B>,
    ) -> Result<Tensor<B, 4>> {
        let cfg = &self.config;
        let [b, c, h, w] = sample.dims();
        if c != cfg.in_channels {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: format!(
                    "[B, {}, H, W] (in_channels = {})",
                    cfg.in_channels, cfg.in_channels
                ),
                got: vec![b, c, h, w],
            });
        }
        if b == 0 || h == 0 || w == 0 {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: "[B, C, H, W] with B, H and W at least 1".into(),
                got: vec![b, c, h, w],
            });
        }
        let factor = 1usize << cfg.num_downsamplers();
        let cond_model = cfg.class == UNetClass::UNet2DConditionModel;
        // UNet2DConditionModel resizes its upsamplers to the skip tensors when the size is
        // not a multiple of the downsampling factor (as diffusers does); UNet2DModel cannot.
        let upsample_to_skip = cond_model && (h % factor != 0 || w % factor != 0);
        if !cond_model && (h % factor != 0 || w % factor != 0) {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: format!(
                    "height and width multiples of {factor} ({} downsampling stages)",
                    cfg.num_downsamplers()
                ),
                got: vec![b, c, h, w],
            });
        }
        let tn = timesteps.dims()[0];
        let timesteps = match tn {
            n if n == b => timesteps,
            1 => timesteps.expand([b]),
            _ => {
                return Err(Error::Shape {
                    what: "timestep".into(),
                    expected: format!("[{b}] (one per sample) or [1]"),
                    got: vec![tn],
                })
            }
        };
        let mut sample = sample;
        if cfg.center_input_sample {
            sample = sample * 2.0 - 1.0;
        }
        // Time embedding.
        let t_emb = self.time_proj_forward(timesteps.clone())?;
        let timestep_cond = match (&self.time_embedding.cond_proj, &cond.timestep_cond) {
            (Some(p), Some(tc)) => {
                let [tb, td] = tc.dims();
                if tb != b || td != p.in_features() {
                    return Err(Error::Shape {
                        what: "timestep_cond".into(),
                        expected: format!("[{b}, {}]", p.in_features()),
                        got: vec![tb, td],
                    });
                }
                Some(tc.clone())
            }
            _ => None,
        };
        let mut emb = self.time_embedding.forward(t_emb, timestep_cond);
        // Class embedding.
        let class_emb = self.class_embed(cond, b)?;
        if let Some(ce) = class_emb {
            emb = if cfg.class_embeddings_concat {
                Tensor::cat(vec![emb, ce], 1)
            } else {
                emb + ce
            };
        }
        // SDXL micro-conditioning.
        if let Some(add) = &self.add_embedding {
            let (Some(text), Some(ids)) = (&cond.text_embeds, &cond.time_ids) else {
                return Err(Error::argument(
                    "text_embeds",
                    "addition_embed_type text_time needs text_embeds and time_ids",
                ));
            };
            let [tb, _] = text.dims();
            let [ib, k] = ids.dims();
            if tb != b || ib != b {
                return Err(Error::Shape {
                    what: "text_embeds / time_ids".into(),
                    expected: format!("batch {b}"),
                    got: vec![tb, ib],
                });
            }
            let dim = cfg.addition_time_embed_dim.unwrap_or(0);
            let time_embeds = sinusoidal_embedding(
                ids.clone().reshape([b * k]),
                dim,
                cfg.flip_sin_to_cos,
                cfg.freq_shift,
                1.0,
                10_000.0,
            )
            .reshape([b, k * dim]);
            let add_in = Tensor::cat(vec![text.clone(), time_embeds], 1);
            let got = add_in.dims()[1];
            if got != add.linear_1.in_features() {
                return Err(Error::Shape {
                    what: "text_embeds + time_ids".into(),
                    expected: format!(
                        "{} features (projection_class_embeddings_input_dim)",
                        add.linear_1.in_features()
                    ),
                    got: vec![b, got],
                });
            }
            emb = emb + add.forward(add_in, None);
        }
        if cond_model {
            if let Some(a) = &cfg.time_embedding_act_fn {
                emb = Activation::from_name(a)?.forward(emb);
            }
        }
        // Context.
        let context = self.context(cond, b)?;
        let context_bias = match (&cond.encoder_attention_mask, &context) {
            (Some(m), Some(ctx)) => {
                let [mb, ms] = m.dims();
                let s = ctx.dims()[1];
                if mb != b || ms != s {
                    return Err(Error::Shape {
                        what: "encoder_attention_mask".into(),
                        expected: format!("[{b}, {s}]"),
                        got: vec![mb, ms],
                    });
                }
                Some(((m.clone().neg() + 1.0) * -10000.0).unsqueeze_dim::<3>(1))
            }
            _ => None,
        };
        let ctx = BlockContext {
            temb: Some(&emb),
            context: context.as_ref(),
            context_bias: context_bias.as_ref(),
        };

        let mut skip = if cond_model {
            None
        } else {
            Some(sample.clone())
        };
        let mut h = self.conv_in.forward(sample);
        let mut states = vec![h.clone()];
        for block in &self.down_blocks {
            let out = block.forward(
                h,
                &ctx,
                if block.kind.is_skip() {
                    skip.clone()
                } else {
                    None
                },
            );
            h = out.hidden;
            states.extend(out.states);
            if block.kind.is_skip() {
                skip = out.skip;
            }
        }
        let controlnet = !cond.down_block_additional_residuals.is_empty();
        if controlnet || cond.mid_block_additional_residual.is_some() {
            if !cond_model {
                return Err(Error::argument(
                    if controlnet {
                        "down_block_additional_residuals"
                    } else {
                        "mid_block_additional_residual"
                    },
                    "ControlNet residuals need a UNet2DConditionModel",
                ));
            }
            let Some(_) = &cond.mid_block_additional_residual else {
                return Err(Error::argument(
                    "mid_block_additional_residual",
                    "is required with down_block_additional_residuals (T2I-Adapter residuals are not supported)",
                ));
            };
            if cond.down_block_additional_residuals.len() != states.len() {
                return Err(Error::argument(
                    "down_block_additional_residuals",
                    format!(
                        "expected {} tensors, got {}",
                        states.len(),
                        cond.down_block_additional_residuals.len()
                    ),
                ));
            }
            for (k, (s, r)) in states
                .iter_mut()
                .zip(&cond.down_block_additional_residuals)
                .enumerate()
            {
                if s.dims() != r.dims() {
                    return Err(Error::Shape {
                        what: format!("down_block_additional_residuals.{k}"),
                        expected: format!("{:?}", s.dims()),
                        got: r.dims().to_vec(),
                    });
                }
                *s = s.clone() + r.clone();
            }
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(h, &ctx);
        }
        if let Some(r) = &cond.mid_block_additional_residual {
            if r.dims() != h.dims() {
                return Err(Error::Shape {
                    what: "mid_block_additional_residual".into(),
                    expected: format!("{:?}", h.dims()),
                    got: r.dims().to_vec(),
                });
            }
            h = h + r.clone();
        }
        let mut skip_up: Option<Tensor<B, 4>> = None;
        for block in &self.up_blocks {
            let (out, s) = block.forward(h, &mut states, &ctx, skip_up.take(), upsample_to_skip);
            h = out;
            skip_up = s;
        }
        if let Some(norm) = &self.conv_norm_out {
            let act = if cond_model {
                Activation::from_name(&cfg.act_fn)?
            } else {
                Activation::Silu
            };
            h = norm_act(norm, h, None, act);
        }
        h = self.conv_out.forward(h);
        if let Some(s) = skip_up {
            h = h + s;
        }
        if !cond_model && cfg.time_embedding_type == TimeEmbeddingType::Fourier {
            h = h / timesteps.reshape([b, 1, 1, 1]);
        }
        Ok(h)
    }

    fn class_embed(&self, cond: &Conditioning<B>, b: usize) -> Result<Option<Tensor<B, 2>>> {
        let cfg = &self.config;
        let Some(kind) = cfg.class_embed_type else {
            if cfg.class == UNetClass::UNet2DModel
                && (cond.class_labels.is_some() || cond.class_embeds.is_some())
            {
                return Err(Error::argument("class_labels", "this model has no class embedding (class_embed_type and num_class_embeds are null)"));
            }
            return Ok(None);
        };
        let check_b = |n: usize| {
            if n != b {
                Err(Error::Shape {
                    what: "class_labels".into(),
                    expected: format!("batch {b}"),
                    got: vec![n],
                })
            } else {
                Ok(())
            }
        };
        Ok(Some(match (kind, &self.class_embedding) {
            (ClassEmbedType::Table, Some(ClassEmbedding::Table(t))) => {
                let labels = cond.class_labels.clone().ok_or_else(|| {
                    let message = if cond.class_embeds.is_some() {
                        "must be integer label indices for this model (got floats)"
                    } else {
                        "are required by this class-conditional model"
                    };
                    Error::argument("class_labels", message)
                })?;
                check_b(labels.dims()[0])?;
                check_indices(&labels, t.num_embeddings(), "class_labels")?;
                t.forward(labels)?
            }
            (ClassEmbedType::Timestep, Some(ClassEmbedding::Mlp(mlp))) => {
                let labels = match (&cond.class_labels, &cond.class_embeds) {
                    (Some(l), _) => l.clone().float(),
                    (None, Some(e)) if e.dims()[1] == 1 => e.clone().reshape([e.dims()[0]]),
                    _ => {
                        return Err(Error::argument(
                            "class_labels",
                            "are required by this class-conditional model",
                        ))
                    }
                };
                check_b(labels.dims()[0])?;
                mlp.forward(self.time_proj_forward(labels)?, None)
            }
            (_, other) => {
                let e = cond.class_embeds.clone().ok_or_else(|| {
                    Error::argument(
                        "class_labels",
                        "must be a float tensor [B, dim] for this model's projection / identity class embedding",
                    )
                })?;
                let [eb, ed] = e.dims();
                check_b(eb)?;
                let want = match other {
                    Some(ClassEmbedding::Mlp(m)) => m.linear_1.in_features(),
                    Some(ClassEmbedding::Linear(l)) => l.in_features(),
                    _ => self.time_embedding.linear_2.out_features(),
                };
                if ed != want {
                    return Err(Error::Shape {
                        what: "class_labels".into(),
                        expected: format!("[{b}, {want}]"),
                        got: vec![eb, ed],
                    });
                }
                match other {
                    Some(ClassEmbedding::Mlp(m)) => m.forward(e, None),
                    Some(ClassEmbedding::Linear(l)) => l.forward(e),
                    _ => e,
                }
            }
        }))
    }

    /// Context widths of the cross-attention layers (`cross_attention_dim` of the blocks
    /// that have cross-attention), deduplicated.
    fn cross_attention_dims(&self) -> Vec<usize> {
        let cfg = &self.config;
        let n = cfg.down_block_types.len();
        let mut dims: Vec<usize> = (0..n)
            .filter(|&i| {
                cfg.down_block_types[i] == "CrossAttnDownBlock2D"
                    || cfg.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D"
            })
            .map(|i| cfg.cross_attention_dim[i])
            .collect();
        if cfg.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn") {
            dims.push(cfg.cross_attention_dim[n - 1]);
        }
        dims.sort_unstable();
        dims.dedup();
        dims
    }

    fn context(&self, cond: &Conditioning<B>, b: usize) -> Result<Option<Tensor<B, 3>>> {
        if !self.needs_encoder_hidden_states() {
            return Ok(None);
        }
        let ehs = cond.encoder_hidden_states.clone().ok_or_else(|| {
            Error::argument(
                "encoder_hidden_states",
                "are required by this cross-attention model",
            )
        })?;
        let [eb, s, d] = ehs.dims();
        // Every cross-attention layer reads the same states, so each must expect width `d`.
        let want_in = match &self.encoder_hid_proj {
            Some(p) => vec![p.in_features()],
            None => self.cross_attention_dims(),
        };
        if eb != b || s == 0 || want_in.iter().any(|&w| w != d) {
            let want = want_in
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(" / ");
            return Err(Error::Shape {
                what: "encoder_hidden_states".into(),
                expected: format!("[{b}, S, {want}]"),
                got: vec![eb, s, d],
            });
        }
        Ok(Some(match &self.encoder_hid_proj {
            Some(p) => p.forward(ehs),
            None => ehs,
        }))
    }
}

impl<B: EmberBackend> Denoiser<B, 4> for UNet2D<B> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        conditioning: &Conditioning<B>,
    ) -> Result<Tensor<B, 4>> {
        self.forward_unet(sample, timesteps, conditioning)
    }
}
