"""Writes diffusers reference fixtures for Ember's U-Net parity tests.

    tools/reference/run.sh make_unet_fixtures.py [--only NAME_SUBSTRING] [--out DIR]
        [--fullsize-out DIR] [--fullsize-weights DIR [--fullsize-models ddpm_cifar10,sd15,sdxl]]
        [--skip-tiny] [--skip-manifests]

1. Tiny parity cases (default out = crates/models/tests/fixtures/unet), one folder per case of
   CASES plus `cases.json` (the case names, in order):
     config.json + diffusion_pytorch_model.safetensors   exactly as `model.save_pretrained(dir)`
                                   writes them (sharded files + `.index.json` for the sharded case;
                                   fp16 / bf16 tensors for the dtype cases; old attention key names
                                   for the legacy case)
     inputs.safetensors            forward arguments, named after diffusers' forward arguments:
                                   sample, timestep, encoder_hidden_states, class_labels,
                                   timestep_cond, encoder_attention_mask, text_embeds / time_ids
                                   (these two go into `added_cond_kwargs`),
                                   down_block_additional_residuals.<k>, mid_block_additional_residual.
                                   Floating inputs are float32; integer ones (class labels for
                                   embedding tables, the timestep of a "learned" time embedding)
                                   are int64.
     output.safetensors            `sample`: diffusers' forward output computed in float64
                                   (`model.double()`, floating inputs cast to float64), stored as
                                   float32. diffusers computes the sinusoidal time embeddings in
                                   float32 even then (get_timestep_embedding calls `.float()`).
     meta.json                     class, description, covers, max_abs_output,
                                   fp32_vs_fp64_max_abs (the same forward in float32), input
                                   shapes/dtypes, seed, stored weight dtype.
   Weights: every parameter is re-initialised after construction (diffusers zero-initialises some,
   e.g. conv_out, proj_out), from torch.Generator().manual_seed(case seed):
     GroupNorm / LayerNorm weight          1 + 0.1 N(0,1)
     tensors with >= 2 dims                N(0,1) / sqrt(numel / shape[0])
     Gaussian Fourier features (time_proj.weight)   N(0,1)
     every other 1-D parameter (biases)    0.1 N(0,1)
   then any |x| < 1e-3 becomes +-1e-3, so no weight is exactly zero. Eval mode (dropout off).
   Each case is checked by loading the folder back with `<Class>.from_pretrained(dir,
   torch_dtype=torch.float32)` (no missing / unexpected keys) and comparing its float32 output.

2. Full-size key manifests (default out = crates/models/tests/fixtures/fullsize): for
   ddpm_cifar10 (google/ddpm-cifar10-32), sd15 (runwayml/stable-diffusion-v1-5 unet) and sdxl
   (stabilityai/stable-diffusion-xl-base-1.0 unet), `config.json` (model.save_config) and
   `keys.json` ({state_dict key: shape}, sorted), built on the meta device (no memory). The
   configs are written from knowledge of the published config.json files (the hub is not
   reachable from here); save_config fills in every other argument with its default.

3. `--fullsize-weights DIR`: also writes random-weight folders via save_pretrained into
   DIR/<name>/ (float32 for ddpm_cifar10, float16 for sd15 and sdxl), same initialisation rule
   as above, plus inputs.safetensors / output.safetensors / meta.json for ddpm_cifar10 (batch 1,
   output computed in float64). Not committed (use e.g. target/reference-fullsize).
"""

import argparse
import copy
import json
import math
import re
import shutil
import sys
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file, save_file
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_OUT = ROOT / "crates" / "models" / "tests" / "fixtures" / "unet"
DEFAULT_FULLSIZE_OUT = ROOT / "crates" / "models" / "tests" / "fixtures" / "fullsize"
EXPECTED_DIFFUSERS = "0.42.1"
SQRT2 = math.sqrt(2.0)
CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
TS = [10.0, 637.0]  # default timesteps, one per batch sample

# ---------------------------------------------------------------------------------------------
# Tiny cases. Input spec keys (all optional except sample/timestep):
#   sample: shape; timestep: values; timestep_dtype: "float32" (default) | "int64"
#   encoder_hidden_states: (seq, dim); class_labels: ("int", [..]) | ("float", dim)
#   timestep_cond: dim; text_embeds: dim; time_ids: [[..6..], [..6..]]
#   encoder_attention_mask: [[1/0 per token], ...]; controlnet: True
#   save: {"dtype": "float16"|"bfloat16", "max_shard_size": str, "legacy_attention_keys": True}
# ---------------------------------------------------------------------------------------------

CASES = [
    dict(
        name="u2d_ddpm_like",
        cls="UNet2DModel",
        seed=101,
        description="DDPM-CIFAR10-style UNet2DModel: DownBlock2D + AttnDownBlock2D (final, no "
        "downsample), UNetMidBlock2D with attention, AttnUpBlock2D + UpBlock2D, 2 layers per block.",
        covers=[
            "UNet2DModel", "time_embedding_type=positional", "flip_sin_to_cos=False", "freq_shift=1",
            "DownBlock2D", "AttnDownBlock2D(final, no downsampler)", "AttnUpBlock2D(conv upsampler)",
            "UpBlock2D", "UNetMidBlock2D(attention with group_norm)", "attention_head_dim=None (1 head)",
            "norm_eps=1e-6", "norm_num_groups=4", "downsample_padding=0 (asymmetric pad)",
            "dropout=0.1 (eval)", "resnet_time_scale_shift=default", "layers_per_block=2",
        ],
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=None, norm_num_groups=4, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
            downsample_padding=0, dropout=0.1,
        ),
        inputs=dict(sample=(2, 3, 16, 16), timestep=TS),
    ),
    dict(
        name="u2d_scale_shift_class_embeds_resnet_updown",
        cls="UNet2DModel",
        seed=102,
        description="UNet2DModel with scale_shift resnets, a class embedding table, attention blocks "
        "with resnet down/upsamplers and a sqrt(2) mid-block scale factor.",
        covers=[
            "UNet2DModel", "time_embedding_type=positional", "flip_sin_to_cos=True", "freq_shift=0",
            "resnet_time_scale_shift=scale_shift", "UNetMidBlock2D(attention without group_norm: "
            "attn_norm_num_groups=None and scale_shift)", "class_embed_type=None+num_class_embeds (int64 labels)",
            "AttnDownBlock2D(downsample_type=resnet)", "AttnUpBlock2D(upsample_type=resnet)",
            "attention_head_dim=4 (1 head at width 4, 2 at width 8)", "norm_num_groups=2", "mid_block_scale_factor=sqrt(2)",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=4, norm_num_groups=2, resnet_time_scale_shift="scale_shift", num_class_embeds=5,
            downsample_type="resnet", upsample_type="resnet", mid_block_scale_factor=SQRT2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=[999.0, 42.0], class_labels=("int", [1, 4])),
    ),
    dict(
        name="u2d_ncsnpp_fourier_skip",
        cls="UNet2DModel",
        seed=103,
        description="NCSN++-style UNet2DModel (score_sde_ve): Gaussian Fourier time embedding (log(t), "
        "output divided by t), skip blocks with FIR resampling, centred input, sqrt(2) mid scale. "
        "Skip blocks hard-code their group counts (min(C/4, 32); 32 for the attention norm) and the "
        "skip path has 3 channels, so in/out channels are 3 and widths are 32.",
        covers=[
            "UNet2DModel", "time_embedding_type=fourier", "time_embedding_dim=32", "SkipDownBlock2D",
            "AttnSkipDownBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D", "FirDownsample2D/FirUpsample2D",
            "ResnetBlock2D(kernel=fir, use_in_shortcut)", "center_input_sample=True",
            "mid_block_scale_factor=sqrt(2)", "norm_num_groups=8", "attention_head_dim=8",
        ],
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
            down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
            up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), time_embedding_type="fourier",
            time_embedding_dim=32, attention_head_dim=8, norm_num_groups=8, mid_block_scale_factor=SQRT2,
            center_input_sample=True,
        ),
        inputs=dict(sample=(2, 3, 16, 16), timestep=[0.8, 6.5]),
    ),
    dict(
        name="u2d_learned_time_timestep_class_resnet_blocks",
        cls="UNet2DModel",
        seed=104,
        description="UNet2DModel with a learned (nn.Embedding) time embedding, class_embed_type=timestep "
        "(class labels go through the same time_proj, i.e. the embedding table), ResnetDownsample/"
        "ResnetUpsample blocks, no mid block, GELU resnets. The timestep is int64 here: nn.Embedding needs "
        "integer indices.",
        covers=[
            "UNet2DModel", "time_embedding_type=learned (int64 timestep)", "num_train_timesteps=1000",
            "class_embed_type=timestep (int64 labels via time_proj)", "ResnetDownsampleBlock2D",
            "ResnetUpsampleBlock2D", "mid_block_type=None", "act_fn=gelu", "norm_eps=1e-4",
        ],
        config=dict(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"), mid_block_type=None,
            time_embedding_type="learned", num_train_timesteps=1000, class_embed_type="timestep",
            act_fn="gelu", norm_num_groups=2, norm_eps=1e-4,
        ),
        inputs=dict(sample=(2, 4, 8, 8), timestep=[10, 637], timestep_dtype="int64", class_labels=("int", [3, 999])),
    ),
    dict(
        name="u2d_identity_class_no_attention_mish",
        cls="UNet2DModel",
        seed=105,
        description="UNet2DModel with class_embed_type=identity (float class embedding of width "
        "time_embed_dim added to the time embedding), add_attention=False in the mid block, "
        "AttnDownBlock2D with a conv downsampler, Mish resnets and a custom time_embedding_dim.",
        covers=[
            "UNet2DModel", "class_embed_type=identity (float32 [B, time_embed_dim])", "add_attention=False",
            "AttnDownBlock2D(downsample_type=conv, downsample_padding=1)", "UpBlock2D(conv upsampler)",
            "AttnUpBlock2D(final, no upsampler)", "act_fn=mish", "flip_sin_to_cos=False", "freq_shift=0",
            "time_embedding_dim=24", "attention_head_dim=2",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            class_embed_type="identity", add_attention=False, act_fn="mish", flip_sin_to_cos=False,
            freq_shift=0, time_embedding_dim=24, attention_head_dim=2, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=[250.5, 3.0], class_labels=("float", 24)),
    ),
    # ----------------------------------------------------------------- UNet2DConditionModel
    dict(
        name="c2d_sd15_like",
        cls="UNet2DConditionModel",
        seed=201,
        description="Stable-Diffusion-1.5-shaped UNet2DConditionModel (3 levels, CrossAttn down/up "
        "blocks, UNetMidBlock2DCrossAttn, conv proj_in/proj_out).",
        covers=[
            "UNet2DConditionModel", "CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn",
            "UpBlock2D", "CrossAttnUpBlock2D", "use_linear_projection=False", "attention_head_dim=2 (int; "
            "diffusers uses it as the number of heads)", "layers_per_block=2", "flip_sin_to_cos=True",
            "freq_shift=0",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2, cross_attention_dim=12, norm_num_groups=4,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(7, 12)),
    ),
    dict(
        name="c2d_sdxl_like_text_time",
        cls="UNet2DConditionModel",
        seed=202,
        description="SDXL-shaped UNet2DConditionModel: DownBlock2D first, linear proj_in/proj_out, "
        "per-block transformer depth and head counts, micro-conditioning (text_embeds + time_ids).",
        covers=[
            "UNet2DConditionModel", "addition_embed_type=text_time", "addition_time_embed_dim=4",
            "projection_class_embeddings_input_dim=12+6*4", "added_cond_kwargs text_embeds/time_ids",
            "use_linear_projection=True", "transformer_layers_per_block=[1, 2] (per-block list)",
            "UNetMidBlock2DCrossAttn with transformer_layers_per_block=2", "attention_head_dim=[1, 2] (per-block list)",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2], attention_head_dim=[1, 2], use_linear_projection=True,
            cross_attention_dim=12, addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=12 + 6 * 4, norm_num_groups=2,
        ),
        inputs=dict(
            sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(6, 12), text_embeds=12,
            time_ids=[[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [96.0, 80.0, 8.0, 4.0, 64.0, 48.0]],
        ),
    ),
    dict(
        name="c2d_only_cross_upcast_mask",
        cls="UNet2DConditionModel",
        seed=203,
        description="only_cross_attention=True (attn1 attends to encoder_hidden_states too), "
        "upcast_attention=True, 2 transformer layers per block, and an encoder_attention_mask with "
        "zeros. diffusers applies encoder_attention_mask to attn2 only: attn1 (cross in this mode) "
        "gets attention_mask, which is None here. The mid block ignores only_cross_attention.",
        covers=[
            "UNet2DConditionModel", "only_cross_attention=True (bool)", "upcast_attention=True",
            "transformer_layers_per_block=2 (int)", "encoder_attention_mask (float 1/0, with zeros)",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            only_cross_attention=True, upcast_attention=True, transformer_layers_per_block=2,
            attention_head_dim=2, cross_attention_dim=16, norm_num_groups=2,
        ),
        inputs=dict(
            sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(6, 16),
            encoder_attention_mask=[[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0]],
        ),
    ),
    dict(
        name="c2d_only_cross_list_per_block_dims",
        cls="UNet2DConditionModel",
        seed=204,
        description="Per-block lists: only_cross_attention=[False, True, False] (reversed for the up "
        "blocks), cross_attention_dim=[20, 12, 12] (the 20 belongs to a DownBlock2D and the reversed "
        "list gives it to the final UpBlock2D, so it is unused; the mid block takes the last entry), "
        "layers_per_block=[1, 2, 1].",
        covers=[
            "UNet2DConditionModel", "only_cross_attention=[False, True, False] (per-block list)",
            "cross_attention_dim=[20, 12, 12] (per-block list)", "layers_per_block=[1, 2, 1] (per-block list)",
            "DownBlock2D first", "CrossAttnUpBlock2D with and without only_cross_attention",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8, 8), layers_per_block=[1, 2, 1],
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            only_cross_attention=[False, True, False], cross_attention_dim=[20, 12, 12],
            attention_head_dim=2, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12)),
    ),
    dict(
        name="c2d_class_timestep_scale_shift_cond",
        cls="UNet2DConditionModel",
        seed=205,
        description="class_embed_type=timestep (labels through time_proj then a TimestepEmbedding with "
        "act_fn), scale_shift resnets, flip_sin_to_cos=False + freq_shift=1, a timestep_cond "
        "projection (time_cond_proj_dim), no mid block.",
        covers=[
            "UNet2DConditionModel", "class_embed_type=timestep (int64 labels)", "resnet_time_scale_shift=scale_shift",
            "flip_sin_to_cos=False", "freq_shift=1", "time_cond_proj_dim=6 (timestep_cond)", "mid_block_type=None",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            class_embed_type="timestep", resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False, freq_shift=1,
            time_cond_proj_dim=6, mid_block_type=None, attention_head_dim=2, cross_attention_dim=12,
            norm_num_groups=2,
        ),
        inputs=dict(
            sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12), class_labels=("int", [5, 300]),
            timestep_cond=6,
        ),
    ),
    dict(
        name="c2d_class_identity_mish_plain_mid",
        cls="UNet2DConditionModel",
        seed=206,
        description="class_embed_type=identity (float [B, time_embed_dim]), Mish everywhere act_fn reaches "
        "(time embedding, resnets, conv_act), mid_block_type=UNetMidBlock2D, which in "
        "UNet2DConditionModel is a single resnet without attention (get_mid_block: num_layers=0).",
        covers=[
            "UNet2DConditionModel", "class_embed_type=identity (float32 [B, 16])", "act_fn=mish",
            "mid_block_type=UNetMidBlock2D (one resnet, no attention)",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            class_embed_type="identity", act_fn="mish", mid_block_type="UNetMidBlock2D", attention_head_dim=2,
            cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12), class_labels=("float", 16)),
    ),
    dict(
        name="c2d_class_projection_text_proj",
        cls="UNet2DConditionModel",
        seed=207,
        description="class_embed_type=projection (TimestepEmbedding on raw float class vectors, SiLU "
        "whatever act_fn is), encoder_hid_dim_type=text_proj (encoder_hidden_states of width "
        "encoder_hid_dim projected to cross_attention_dim first).",
        covers=[
            "UNet2DConditionModel", "class_embed_type=projection (float32 [B, 10])",
            "projection_class_embeddings_input_dim=10", "encoder_hid_dim=20", "encoder_hid_dim_type=text_proj",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            class_embed_type="projection", projection_class_embeddings_input_dim=10, encoder_hid_dim=20,
            encoder_hid_dim_type="text_proj", attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 20), class_labels=("float", 10)),
    ),
    dict(
        name="c2d_class_simple_projection_mask",
        cls="UNet2DConditionModel",
        seed=208,
        description="class_embed_type=simple_projection (one nn.Linear on float class vectors), linear "
        "projections, and an encoder_attention_mask on ordinary (self + cross) attention.",
        covers=[
            "UNet2DConditionModel", "class_embed_type=simple_projection (float32 [B, 6])",
            "projection_class_embeddings_input_dim=6", "encoder_attention_mask (cross attention, with zeros)",
            "use_linear_projection=True",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            class_embed_type="simple_projection", projection_class_embeddings_input_dim=6,
            use_linear_projection=True, attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(
            sample=(2, 4, 8, 8), timestep=TS, encoder_hidden_states=(7, 12), class_labels=("float", 6),
            encoder_attention_mask=[[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]],
        ),
    ),
    dict(
        name="c2d_num_class_embeds_controlnet",
        cls="UNet2DConditionModel",
        seed=209,
        description="A class embedding table (num_class_embeds, int64 labels) plus ControlNet residuals: "
        "one per down-path skip tensor (conv_in output, each resnet/attention output, each "
        "downsampler output), added before the up path, and one added to the mid-block output.",
        covers=[
            "UNet2DConditionModel", "class_embed_type=None+num_class_embeds (int64 labels)",
            "down_block_additional_residuals (ControlNet)", "mid_block_additional_residual (ControlNet)",
        ],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            num_class_embeds=4, attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(
            sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12), class_labels=("int", [0, 3]),
            controlnet=True,
        ),
    ),
    dict(
        name="c2d_extras_fourier_concat_odd_size",
        cls="UNet2DConditionModel",
        seed=210,
        description="Less common UNet2DConditionModel options in one case: fourier time embedding (the "
        "conditional model's variant: no log, flip_sin_to_cos honoured, time_proj.weight), "
        "class_embeddings_concat (time and class embeddings concatenated, blocks get 2x temb), "
        "time_embedding_act_fn, timestep_post_act, conv_in_kernel=1, conv_out_kernel=5, "
        "mid_block_scale_factor=1.5, and a 9x14 sample (not a multiple of 2**num_upsamplers: "
        "diffusers forwards upsample_size so the upsampler interpolates to the skip tensor's size).",
        covers=[
            "UNet2DConditionModel", "time_embedding_type=fourier (conditional variant)",
            "class_embeddings_concat=True", "time_embedding_act_fn=silu", "timestep_post_act=mish",
            "conv_in_kernel=1", "conv_out_kernel=5", "mid_block_scale_factor=1.5", "odd sample size (upsample_size)",
        ],
        config=dict(
            sample_size=None, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            time_embedding_type="fourier", time_embedding_dim=16, num_class_embeds=3, class_embeddings_concat=True,
            time_embedding_act_fn="silu", timestep_post_act="mish", conv_in_kernel=1, conv_out_kernel=5,
            mid_block_scale_factor=1.5, attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 9, 14), timestep=[0.25, 0.8], encoder_hidden_states=(5, 12), class_labels=("int", [2, 0])),
    ),
    # ----------------------------------------------------------------- loading variants
    dict(
        name="load_fp16_weights",
        cls="UNet2DConditionModel",
        seed=301,
        description="Weights saved as float16 (model.half().save_pretrained). The reference output is "
        "computed from the fp16-rounded weights cast to float64.",
        covers=["UNet2DConditionModel", "float16 safetensors"],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12)),
        save=dict(dtype="float16"),
    ),
    dict(
        name="load_bf16_weights",
        cls="UNet2DModel",
        seed=302,
        description="Weights saved as bfloat16 (model.to(bfloat16).save_pretrained). The reference "
        "output is computed from the bf16-rounded weights cast to float64.",
        covers=["UNet2DModel", "bfloat16 safetensors"],
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 3, 16, 16), timestep=TS),
        save=dict(dtype="bfloat16"),
    ),
    dict(
        name="load_sharded",
        cls="UNet2DConditionModel",
        seed=303,
        description="A sharded checkpoint: save_pretrained(max_shard_size='20KB') writes several "
        "diffusion_pytorch_model-0000k-of-0000n.safetensors files plus "
        "diffusion_pytorch_model.safetensors.index.json (weight_map: key -> file).",
        covers=["UNet2DConditionModel", "sharded safetensors + index.json"],
        config=dict(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2, cross_attention_dim=12, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 4, 16, 16), timestep=TS, encoder_hidden_states=(5, 12)),
        save=dict(max_shard_size="20KB"),
    ),
    dict(
        name="load_legacy_attention_keys",
        cls="UNet2DModel",
        seed=304,
        description="A UNet2DModel checkpoint with the pre-0.14 attention key names in every "
        "_from_deprecated_attn_block Attention (down/up/mid attentions): query/key/value/proj_attn "
        "instead of to_q/to_k/to_v/to_out.0; group_norm keeps its name. diffusers renames them on "
        "load (ModelMixin._fix_state_dict_keys_on_load, non-sharded checkpoints only).",
        covers=["UNet2DModel", "legacy attention keys (query/key/value/proj_attn)"],
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=4, norm_num_groups=2,
        ),
        inputs=dict(sample=(2, 3, 16, 16), timestep=TS),
        save=dict(legacy_attention_keys=True),
    ),
]

# Configurations diffusers refuses (checked on every full run; a port may refuse them too).
REJECTED = [
    dict(
        name="UNet2DConditionModel num_attention_heads",
        reason="diffusers raises: num_attention_heads cannot be set (naming issue #2011); "
        "attention_head_dim is used as the head count instead",
        cls="UNet2DConditionModel",
        config=dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                    cross_attention_dim=12, num_attention_heads=[2, 2]),
    ),
    dict(
        name="UNet2DConditionModel time_embedding_type=learned",
        reason="only fourier and positional exist in UNet2DConditionModel",
        cls="UNet2DConditionModel",
        config=dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                    cross_attention_dim=12, time_embedding_type="learned"),
    ),
    dict(
        name="UNet2DConditionModel class_embed_type=projection without projection_class_embeddings_input_dim",
        reason="projection needs its input width",
        cls="UNet2DConditionModel",
        config=dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                    cross_attention_dim=12, class_embed_type="projection"),
    ),
    dict(
        name="UNet2DModel resnet_time_scale_shift=spatial",
        reason="ResnetBlock2D refuses spatial (only ResnetBlockCondNorm2D, VAE decoders, has it)",
        cls="UNet2DModel",
        config=dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                    resnet_time_scale_shift="spatial"),
    ),
    dict(
        name="UNet2DModel act_fn=tanh",
        reason="get_activation knows swish/silu/mish/gelu/relu only",
        cls="UNet2DModel",
        config=dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, act_fn="tanh"),
    ),
]

# ---------------------------------------------------------------------------------------------
# Full-size configurations (the published config.json values; save_config adds the defaults).
# ---------------------------------------------------------------------------------------------

FULLSIZE = {
    "ddpm_cifar10": dict(
        cls="UNet2DModel",
        source="google/ddpm-cifar10-32",
        weights_dtype="float32",
        config=dict(
            sample_size=32, in_channels=3, out_channels=3, center_input_sample=False,
            time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
            down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[128, 256, 256, 256], layers_per_block=2, mid_block_scale_factor=1,
            downsample_padding=0, dropout=0.1, act_fn="silu", attention_head_dim=None, norm_num_groups=32,
            norm_eps=1e-6, resnet_time_scale_shift="default",
        ),
    ),
    "sd15": dict(
        cls="UNet2DConditionModel",
        source="runwayml/stable-diffusion-v1-5 (unet)",
        weights_dtype="float16",
        config=dict(
            sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
            freq_shift=0, act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
            cross_attention_dim=768,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            downsample_padding=1, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
        ),
    ),
    "sdxl": dict(
        cls="UNet2DConditionModel",
        source="stabilityai/stable-diffusion-xl-base-1.0 (unet)",
        weights_dtype="float16",
        config=dict(
            sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
            freq_shift=0, act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64,
            addition_time_embed_dim=256, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
            class_embed_type=None, class_embeddings_concat=False, conv_in_kernel=3, conv_out_kernel=3,
            cross_attention_dim=2048, cross_attention_norm=None,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            downsample_padding=1, dual_cross_attention=False, encoder_hid_dim=None, encoder_hid_dim_type=None,
            layers_per_block=2, mid_block_only_cross_attention=None, mid_block_scale_factor=1,
            mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-5, norm_num_groups=32, num_attention_heads=None,
            num_class_embeds=None, only_cross_attention=False, projection_class_embeddings_input_dim=2816,
            resnet_out_scale_factor=1.0, resnet_skip_time_act=False, resnet_time_scale_shift="default",
            time_cond_proj_dim=None, time_embedding_act_fn=None, time_embedding_dim=None,
            time_embedding_type="positional", timestep_post_act=None, transformer_layers_per_block=[1, 2, 10],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], upcast_attention=None,
            use_linear_projection=True,
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def norm_weight_names(model):
    names = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)) and getattr(mod, "weight", None) is not None:
            names.add(f"{mname}.weight" if mname else "weight")
    return names


def init_value(name, shape, norm_names, gen):
    """The re-initialisation rule of the module docstring, as a float32 tensor."""
    v = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    if name in norm_names:
        v = 1.0 + 0.1 * v
    elif len(shape) >= 2:
        numel = math.prod(shape)
        v = v / math.sqrt(numel // shape[0])
    elif name == "time_proj.weight":  # Gaussian Fourier features
        pass
    else:
        v = 0.1 * v
    # no exact (or near) zeros: |x| < 1e-3 -> +-1e-3 (0 -> +1e-3)
    small = v.abs() < 1e-3
    return torch.where(small, torch.copysign(torch.full_like(v, 1e-3), v), v)


@torch.no_grad()
def reinit_(model, seed):
    """Re-initialises every parameter in place (any dtype, any device but meta)."""
    gen = torch.Generator().manual_seed(seed)
    norm_names = norm_weight_names(model)
    for name, p in model.named_parameters():
        p.copy_(init_value(name, p.shape, norm_names, gen).to(p.dtype))
    for name, b in model.named_buffers():
        raise RuntimeError(f"unexpected buffer {name}: the initialisation rule does not cover buffers")


def build(cls_name, config, seed):
    torch.manual_seed(seed)
    model = CLASSES[cls_name](**copy.deepcopy(config))
    model.eval()
    reinit_(model, seed)
    return model


# ---------------------------------------------------------------------------------------------
# Inputs and forward
# ---------------------------------------------------------------------------------------------

def controlnet_shapes(model):
    """Hooks recording the shapes of the down-path skip tensors and of the mid-block output."""
    conv_in, down, mid = [], [], []

    def on_conv_in(m, a, o):
        conv_in.append(tuple(o.shape))

    def on_down(m, a, o):
        down.append([tuple(t.shape) for t in o[1]])

    def on_mid(m, a, o):
        mid.append(tuple(o.shape))

    hooks = [model.conv_in.register_forward_hook(on_conv_in)]
    hooks += [blk.register_forward_hook(on_down) for blk in model.down_blocks]
    if model.mid_block is not None:
        hooks.append(model.mid_block.register_forward_hook(on_mid))
    return hooks, conv_in, down, mid


def make_inputs(case, model):
    spec = case["inputs"]
    gen = torch.Generator().manual_seed(case["seed"] + 7)
    B = spec["sample"][0]
    inp = {"sample": torch.randn(spec["sample"], generator=gen)}
    if spec.get("timestep_dtype", "float32") == "int64":
        inp["timestep"] = torch.tensor(spec["timestep"], dtype=torch.int64)
    else:
        inp["timestep"] = torch.tensor(spec["timestep"], dtype=torch.float32)
    assert inp["timestep"].shape == (B,)
    if "encoder_hidden_states" in spec:
        seq, dim = spec["encoder_hidden_states"]
        inp["encoder_hidden_states"] = torch.randn((B, seq, dim), generator=gen)
    if "class_labels" in spec:
        kind, val = spec["class_labels"]
        if kind == "int":
            inp["class_labels"] = torch.tensor(val, dtype=torch.int64)
        else:
            inp["class_labels"] = torch.randn((B, val), generator=gen)
    if "timestep_cond" in spec:
        inp["timestep_cond"] = torch.randn((B, spec["timestep_cond"]), generator=gen)
    if "text_embeds" in spec:
        inp["text_embeds"] = torch.randn((B, spec["text_embeds"]), generator=gen)
    if "time_ids" in spec:
        inp["time_ids"] = torch.tensor(spec["time_ids"], dtype=torch.float32)
    if "encoder_attention_mask" in spec:
        inp["encoder_attention_mask"] = torch.tensor(spec["encoder_attention_mask"], dtype=torch.float32)
    if spec.get("controlnet"):
        hooks, conv_in, down, mid = controlnet_shapes(model)
        try:
            with torch.no_grad():
                forward(case["cls"], model, inp, torch.float32)
        finally:
            for h in hooks:
                h.remove()
        res_shapes = conv_in + [s for blk in down for s in blk]
        for k, s in enumerate(res_shapes):
            inp[f"down_block_additional_residuals.{k}"] = 0.5 * torch.randn(s, generator=gen)
        inp["mid_block_additional_residual"] = 0.5 * torch.randn(mid[0], generator=gen)
    return inp


def forward(cls_name, model, inp, dtype):
    def c(t):
        return t.to(dtype) if t.is_floating_point() else t

    with torch.no_grad():
        if cls_name == "UNet2DModel":
            kw = {}
            if "class_labels" in inp:
                kw["class_labels"] = c(inp["class_labels"])
            return model(c(inp["sample"]), c(inp["timestep"]), return_dict=False, **kw)[0]
        kw = {}
        for name in ("class_labels", "timestep_cond", "encoder_attention_mask", "mid_block_additional_residual"):
            if name in inp:
                kw[name] = c(inp[name])
        added = {k: c(inp[k]) for k in ("text_embeds", "time_ids") if k in inp}
        if added:
            kw["added_cond_kwargs"] = added
        res = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in inp.items()
                     if k.startswith("down_block_additional_residuals."))
        if res:
            assert [i for i, _ in res] == list(range(len(res)))
            kw["down_block_additional_residuals"] = tuple(c(v) for _, v in res)
        return model(c(inp["sample"]), c(inp["timestep"]), c(inp["encoder_hidden_states"]),
                     return_dict=False, **kw)[0]


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

LEGACY_RENAMES = [("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")]


def deprecated_attention_paths(model):
    return [name for name, mod in model.named_modules() if getattr(mod, "_from_deprecated_attn_block", False)]


def rewrite_legacy_keys(model, folder):
    path = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    paths = deprecated_attention_paths(model)
    if not paths:
        raise RuntimeError("legacy-key case has no deprecated attention blocks")
    out, renamed = {}, 0
    for k, v in sd.items():
        nk = k
        for p in paths:
            if k.startswith(p + "."):
                rest = k[len(p) + 1:]
                for new, old in LEGACY_RENAMES:
                    if rest.startswith(new):
                        nk = f"{p}.{old}{rest[len(new):]}"
                        renamed += 1
                        break
        out[nk] = v
    assert len(out) == len(sd)
    save_file(out, str(path), metadata={"format": "pt"})
    return renamed


def save_case_model(case, model, folder):
    save = case.get("save", {})
    kwargs = {}
    if "max_shard_size" in save:
        kwargs["max_shard_size"] = save["max_shard_size"]
    model.save_pretrained(str(folder), **kwargs)
    info = {}
    if save.get("legacy_attention_keys"):
        info["legacy_keys_renamed"] = rewrite_legacy_keys(model, folder)
    files = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
    info["weight_files"] = files
    if "max_shard_size" in save and len([f for f in files if f.endswith(".safetensors")]) < 2:
        raise RuntimeError(f"max_shard_size={save['max_shard_size']} gave fewer than 2 shards: {files}")
    return info


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

def dumps_compact(obj):
    """json.dumps(indent=1) with short lists of numbers (shapes) kept on one line."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    return re.sub(r"\[\s*([-\d.e+, \n]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def describe(t):
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def run_case(case, out_dir):
    cls_name = case["cls"]
    model = build(cls_name, case["config"], case["seed"])
    save = case.get("save", {})
    weights_dtype = save.get("dtype", "float32")
    if weights_dtype != "float32":
        model = model.to(getattr(torch, weights_dtype))  # round once; the reference uses these values

    inp = make_inputs(case, copy.deepcopy(model).float())

    folder = out_dir / case["name"]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_info = save_case_model(case, model, folder)

    m64 = copy.deepcopy(model).double().eval()
    m32 = copy.deepcopy(model).float().eval()
    out64 = forward(cls_name, m64, inp, torch.float64)
    out32 = forward(cls_name, m32, inp, torch.float32)
    if not torch.isfinite(out64).all():
        raise FloatingPointError("non-finite output")
    spread = float((out64 - out32.double()).abs().max())
    max_abs = float(out64.abs().max())
    want = (inp["sample"].shape[0], case["config"]["out_channels"], *inp["sample"].shape[2:])
    if tuple(out64.shape) != want:
        raise RuntimeError(f"output shape {tuple(out64.shape)}, expected {want}")

    # Load the folder back the ordinary way and compare.
    cls = CLASSES[cls_name]
    loaded, info = cls.from_pretrained(str(folder), torch_dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"from_pretrained loading info: {problems}")
    loaded.eval()
    if any(p.dtype != torch.float32 for p in loaded.parameters()):
        raise RuntimeError("from_pretrained(torch_dtype=float32) left non-float32 parameters")
    out_loaded = forward(cls_name, loaded, inp, torch.float32)
    load_vs_mem = float((out_loaded - out32).abs().max())
    load_vs_ref = float((out_loaded.double() - out64).abs().max())
    if load_vs_mem > 1e-5 * max(1.0, max_abs) or load_vs_ref > 10 * spread + 1e-5:
        raise RuntimeError(f"reloaded model differs: vs in-memory fp32 {load_vs_mem:.3g}, "
                           f"vs fp64 reference {load_vs_ref:.3g} (fp32 spread {spread:.3g})")
    if save.get("legacy_attention_keys"):
        names = load_file(str(folder / "diffusion_pytorch_model.safetensors")).keys()
        if any(".to_q." in k or ".to_out.0." in k for k in names if "attentions" in k):
            raise RuntimeError("legacy file still has new attention key names")
        if not any(k.endswith(".query.weight") for k in names):
            raise RuntimeError("legacy file has no query.weight keys")

    tensors = {k: v.contiguous() for k, v in inp.items()}
    save_file(tensors, str(folder / "inputs.safetensors"), metadata={"source": f"diffusers {diffusers.__version__}, case {case['name']}"})
    save_file({"sample": out64.float().contiguous()}, str(folder / "output.safetensors"),
              metadata={"source": f"diffusers {diffusers.__version__}, case {case['name']}, computed in float64"})
    meta = {
        "class": cls_name,
        "description": case["description"],
        "covers": case["covers"],
        "max_abs_output": max_abs,
        "fp32_vs_fp64_max_abs": spread,
        "reload_fp32_vs_fp64_max_abs": load_vs_ref,
        "weights_dtype": weights_dtype,
        "weight_files": save_info["weight_files"],
        "seed": case["seed"],
        "inputs": {k: describe(v) for k, v in inp.items()},
        "added_cond_kwargs": [k for k in ("text_embeds", "time_ids") if k in inp],
        "output": describe(out64.float()),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
    }
    if "legacy_keys_renamed" in save_info:
        meta["legacy_keys_renamed"] = save_info["legacy_keys_renamed"]
    (folder / "meta.json").write_text(dumps_compact(meta) + "\n")
    size = sum(p.stat().st_size for p in folder.iterdir())
    return meta, size


def check_rejected(entry):
    try:
        CLASSES[entry["cls"]](**entry["config"])
    except Exception as e:  # noqa: BLE001 - any failure in diffusers is what we expect here
        return f"{type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------------
# Full size
# ---------------------------------------------------------------------------------------------

def write_keys_json(path, state_dict):
    items = sorted((k, list(v.shape)) for k, v in state_dict.items())
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(s)}" for k, s in items)
    path.write_text("{\n" + body + "\n}\n")
    return len(items)


def write_manifest(name, spec, out_root):
    cls = CLASSES[spec["cls"]]
    with torch.device("meta"):
        model = cls(**copy.deepcopy(spec["config"]))
    folder = out_root / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    n = write_keys_json(folder / "keys.json", model.state_dict())
    nparams = sum(p.numel() for p in model.parameters())
    print(f"manifest {name:14s} {spec['cls']:22s} {n:5d} keys {nparams / 1e6:8.2f} M parameters -> {folder}")


@torch.no_grad()
def write_fullsize_weights(name, spec, out_root, seed=12345):
    cls = CLASSES[spec["cls"]]
    dtype = getattr(torch, spec["weights_dtype"])
    with torch.device("meta"):
        model = cls(**copy.deepcopy(spec["config"]))
    model = model.to(dtype=dtype).to_empty(device="cpu").eval()
    reinit_(model, seed)
    folder = out_root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"weights  {name:14s} {spec['weights_dtype']:8s} {size / 2**20:9.1f} MiB -> {folder}")
    if name == "ddpm_cifar10":
        gen = torch.Generator().manual_seed(seed + 7)
        inp = {"sample": torch.randn((1, 3, 32, 32), generator=gen), "timestep": torch.tensor([637.0])}
        out64 = forward(spec["cls"], copy.deepcopy(model).double(), inp, torch.float64)
        out32 = forward(spec["cls"], model.float(), inp, torch.float32)
        save_file(inp, str(folder / "inputs.safetensors"))
        save_file({"sample": out64.float().contiguous()}, str(folder / "output.safetensors"))
        meta = {
            "class": spec["cls"], "source": spec["source"], "seed": seed,
            "max_abs_output": float(out64.abs().max()),
            "fp32_vs_fp64_max_abs": float((out64 - out32.double()).abs().max()),
            "inputs": {k: describe(v) for k, v in inp.items()},
        }
        (folder / "meta.json").write_text(dumps_compact(meta) + "\n")
        print(f"         {name}: max|out| {meta['max_abs_output']:.3f}, fp32 spread {meta['fp32_vs_fp64_max_abs']:.2e}")
    del model


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default=None, help="only tiny cases whose name contains this")
    ap.add_argument("--fullsize-out", type=Path, default=DEFAULT_FULLSIZE_OUT)
    ap.add_argument("--fullsize-weights", type=Path, default=None,
                    help="also write random-weight full-size folders here (e.g. target/reference-fullsize)")
    ap.add_argument("--fullsize-models", default=",".join(FULLSIZE),
                    help="comma-separated subset of full-size models for --fullsize-weights")
    ap.add_argument("--skip-tiny", action="store_true", help="do not write the tiny cases")
    ap.add_argument("--skip-manifests", action="store_true", help="do not write the full-size manifests")
    args = ap.parse_args()

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        sys.exit(f"diffusers {diffusers.__version__} installed, fixtures are pinned to {EXPECTED_DIFFUSERS}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers.utils.logging.set_verbosity_error()

    failed = []
    if not args.skip_tiny:
        names = [c["name"] for c in CASES]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            sys.exit(f"duplicate case names: {sorted(dupes)}")
        cases = [c for c in CASES if not args.only or args.only in c["name"]]
        args.out.mkdir(parents=True, exist_ok=True)
        total = 0
        for c in cases:
            try:
                meta, size = run_case(c, args.out)
            except Exception as e:  # report every broken case, then fail
                failed.append((c["name"], f"{type(e).__name__}: {e}"))
                print(f"FAIL {c['name']}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            total += size
            print(f"ok   {c['name']:46s} {meta['class']:21s} params={meta['num_parameters']:7d} "
                  f"max|out|={meta['max_abs_output']:7.3f} fp32-spread={meta['fp32_vs_fp64_max_abs']:.1e} "
                  f"{size / 1024:6.1f} KiB")
        if not args.only:
            (args.out / "cases.json").write_text(json.dumps(names, indent=1) + "\n")
            for entry in REJECTED:
                err = check_rejected(entry)
                if err is None:
                    failed.append((entry["name"], "listed in REJECTED but diffusers now accepts it"))
                else:
                    print(f"rejected {entry['name']}: {entry['reason']} (diffusers: {err.splitlines()[0][:100]})")
            stale = sorted(p.name for p in args.out.iterdir() if p.is_dir() and p.name not in names)
            for s in stale:
                print(f"stale fixture folder (no such case), delete it: {s}", file=sys.stderr)
            if stale:
                failed.append(("stale", ", ".join(stale)))
        print(f"{len(cases) - len(failed)} cases written to {args.out}, {total / 1024:.0f} KiB")

    if not args.skip_manifests:
        for name, spec in FULLSIZE.items():
            write_manifest(name, spec, args.fullsize_out)

    if args.fullsize_weights is not None:
        torch.set_num_threads(2)
        wanted = [m for m in args.fullsize_models.split(",") if m]
        unknown = set(wanted) - set(FULLSIZE)
        if unknown:
            sys.exit(f"unknown full-size models: {sorted(unknown)}")
        for name in wanted:
            write_fullsize_weights(name, FULLSIZE[name], args.fullsize_weights)

    if failed:
        sys.exit("failed: " + "; ".join(f"{n}: {e}" for n, e in failed))


if __name__ == "__main__":
    main()
