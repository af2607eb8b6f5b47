//! Bad configs, checkpoints and inputs: each gives a one-line `ember_core::Error` that names
//! the field, key or tensor at fault, never a panic.
//!
//! Every case starts from a real diffusers fixture folder (copied to a temporary folder
//! before it is corrupted) or from the fixture's own config / inputs, so that exactly one
//! thing is wrong at a time.

use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::{Int, Tensor, TensorData};
use ember_core::{Conditioning, Denoiser, Error};
use ember_models::io::{read_forward_inputs, ForwardInputs};
use ember_models::{load_unet, UNet2D, UNetConfig};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(case)
}

fn device() -> ember_core::burn::tensor::Device<B> {
    Default::default()
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("ember_bad_input_{}_{n}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Copies a fixture folder into a fresh temporary folder.
fn copy_fixture(case: &str) -> TempDir {
    let tmp = temp_dir(case);
    for entry in std::fs::read_dir(fixture(case)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    tmp
}

/// One tensor of a safetensors file, owned.
struct RawTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_raw(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| RawTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_raw(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Rewrites a safetensors file through `edit`.
fn edit_safetensors(path: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let mut tensors = read_raw(path);
    edit(&mut tensors);
    write_raw(path, &tensors);
}

fn f32_tensor(name: &str, shape: &[usize], value: f32) -> RawTensor {
    let n: usize = shape.iter().product();
    RawTensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: (0..n).flat_map(|_| value.to_le_bytes()).collect(),
    }
}

/// Asserts the error's message is one line and contains every `needle`; returns it.
#[track_caller]
fn check(err: Error, needles: &[&str]) -> String {
    let msg = err.to_string();
    println!("{msg}");
    assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
    assert!(!msg.trim().is_empty(), "empty error message");
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error does not name `{needle}`: {msg}"
        );
    }
    msg
}

#[track_caller]
fn expect_err<T>(r: ember_core::Result<T>, what: &str) -> Error {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e,
    }
}

/// A fixture's config.json as a JSON object.
fn fixture_config(case: &str) -> Value {
    let text = std::fs::read_to_string(fixture(case).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Parses a (modified) config and, if it parses, builds the model: the first error.
fn config_then_model(config: &Value) -> Error {
    let text = serde_json::to_string(config).unwrap();
    match UNetConfig::from_json_str(&text) {
        Err(e) => e,
        Ok(cfg) => expect_err(UNet2D::<B>::new(cfg, &device()), "UNet2D::new"),
    }
}

/// Loads a model folder and expects an error.
#[track_caller]
fn load_err(dir: &Path) -> Error {
    expect_err(load_unet::<B>(dir, &device()), "load_unet")
}

fn load_fixture(case: &str) -> UNet2D<B> {
    load_unet::<B>(&fixture(case), &device())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .0
}

fn fixture_inputs(case: &str) -> ForwardInputs<B> {
    read_forward_inputs::<B>(&fixture(case).join("inputs.safetensors"), &device())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn zeros4(shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::zeros(shape, &device())
}

fn labels(values: &[i64]) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device())
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

#[test]
fn config_unknown_down_block_type() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["down_block_types"][1] = json!("FancyDownBlock2D");
    check(
        config_then_model(&c),
        &["down_block_types", "FancyDownBlock2D"],
    );
}

#[test]
fn config_cross_attention_down_block_in_unet2dmodel() {
    // CrossAttnDownBlock2D exists, but not in UNet2DModel.
    let mut c = fixture_config("u2d_ddpm_like");
    c["down_block_types"][1] = json!("CrossAttnDownBlock2D");
    check(
        config_then_model(&c),
        &[
            "down_block_types",
            "CrossAttnDownBlock2D",
            "UNet2DConditionModel",
        ],
    );
    let mut c = fixture_config("u2d_ddpm_like");
    c["up_block_types"][0] = json!("CrossAttnUpBlock2D");
    check(
        config_then_model(&c),
        &[
            "up_block_types",
            "CrossAttnUpBlock2D",
            "UNet2DConditionModel",
        ],
    );
    let mut c = fixture_config("u2d_ddpm_like");
    c["mid_block_type"] = json!("UNetMidBlock2DCrossAttn");
    check(
        config_then_model(&c),
        &[
            "mid_block_type",
            "UNetMidBlock2DCrossAttn",
            "UNet2DConditionModel",
        ],
    );
}

#[test]
fn config_unknown_up_block_type() {
    let mut c = fixture_config("c2d_sd15_like");
    c["up_block_types"][2] = json!("CrossAttnUpBlock3D");
    check(
        config_then_model(&c),
        &["up_block_types", "CrossAttnUpBlock3D"],
    );
}

#[test]
fn config_unknown_mid_block_type() {
    let mut c = fixture_config("c2d_sd15_like");
    c["mid_block_type"] = json!("UNetMidBlock2DSimpleCrossAttn");
    check(
        config_then_model(&c),
        &["mid_block_type", "UNetMidBlock2DSimpleCrossAttn"],
    );
}

#[test]
fn config_block_type_not_a_string() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["down_block_types"][0] = json!(7);
    check(config_then_model(&c), &["down_block_types"]);
}

#[test]
fn config_down_up_length_mismatch() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["up_block_types"] = json!(["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]);
    check(config_then_model(&c), &["up_block_types", "3", "2"]);
}

#[test]
fn config_block_out_channels_length_mismatch() {
    let mut c = fixture_config("c2d_sd15_like");
    c["block_out_channels"] = json!([8, 16]);
    check(config_then_model(&c), &["block_out_channels", "2", "3"]);
}

#[test]
fn config_empty_down_block_types() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["down_block_types"] = json!([]);
    c["up_block_types"] = json!([]);
    c["block_out_channels"] = json!([]);
    check(config_then_model(&c), &["down_block_types"]);
}

#[test]
fn config_attention_head_dim_list_wrong_length() {
    let mut c = fixture_config("c2d_sd15_like");
    c["attention_head_dim"] = json!([2, 2]);
    check(config_then_model(&c), &["attention_head_dim", "2", "3"]);
}

#[test]
fn config_layers_per_block_list_wrong_length() {
    let mut c = fixture_config("c2d_sd15_like");
    c["layers_per_block"] = json!([2, 2, 2, 2]);
    check(config_then_model(&c), &["layers_per_block"]);
}

#[test]
fn config_cross_attention_dim_list_wrong_length() {
    let mut c = fixture_config("c2d_sd15_like");
    c["cross_attention_dim"] = json!([12, 12]);
    check(config_then_model(&c), &["cross_attention_dim"]);
}

#[test]
fn config_only_cross_attention_list_wrong_length() {
    let mut c = fixture_config("c2d_sd15_like");
    c["only_cross_attention"] = json!([false, true]);
    check(config_then_model(&c), &["only_cross_attention"]);
}

#[test]
fn config_transformer_layers_per_block_wrong_length() {
    let mut c = fixture_config("c2d_sd15_like");
    c["transformer_layers_per_block"] = json!([1, 1]);
    check(config_then_model(&c), &["transformer_layers_per_block"]);
}

#[test]
fn config_wrong_json_type() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["in_channels"] = json!("four");
    check(config_then_model(&c), &["in_channels", "four"]);
}

#[test]
fn config_negative_and_fractional_integers() {
    for bad in [json!(-4), json!(2.5)] {
        let mut c = fixture_config("c2d_sd15_like");
        c["out_channels"] = bad;
        check(config_then_model(&c), &["out_channels"]);
    }
}

#[test]
fn config_wrong_json_type_for_list_and_bool() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["block_out_channels"] = json!(8);
    check(config_then_model(&c), &["block_out_channels"]);
    let mut c = fixture_config("u2d_ddpm_like");
    c["center_input_sample"] = json!("yes");
    check(config_then_model(&c), &["center_input_sample"]);
}

#[test]
fn config_norm_num_groups_does_not_divide_channels() {
    // block_out_channels [8, 16]: 3 groups divide neither.
    let mut c = fixture_config("u2d_ddpm_like");
    c["norm_num_groups"] = json!(3);
    check(config_then_model(&c), &["norm_num_groups", "3"]);
    let mut c = fixture_config("c2d_sd15_like");
    c["norm_num_groups"] = json!(5);
    check(config_then_model(&c), &["norm_num_groups", "5"]);
}

#[test]
fn config_norm_num_groups_from_folder() {
    // The same through load_unet: the config error comes before any weight is read.
    let tmp = copy_fixture("u2d_ddpm_like");
    let mut c = fixture_config("u2d_ddpm_like");
    c["norm_num_groups"] = json!(3);
    std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
    check(load_err(tmp.path()), &["norm_num_groups"]);
}

#[test]
fn config_attention_head_dim_does_not_divide_channels() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["attention_head_dim"] = json!(5);
    check(config_then_model(&c), &["attention_head_dim", "5"]);
}

#[test]
fn config_unknown_class_name() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["_class_name"] = json!("UNet3DConditionModel");
    check(config_then_model(&c), &["UNet3DConditionModel"]);
}

#[test]
fn config_not_json() {
    let tmp = copy_fixture("u2d_ddpm_like");
    std::fs::write(
        tmp.path().join("config.json"),
        "{ \"_class_name\": \"UNet2DModel\",\n  in_channels = 3 }\n",
    )
    .unwrap();
    check(load_err(tmp.path()), &["config.json"]);
    // Also from a string: a parse error, one line.
    check(
        expect_err(UNetConfig::from_json_str("not json at all"), "parse"),
        &["parse"],
    );
    // Valid JSON that is not an object.
    check(
        expect_err(UNetConfig::from_json_str("[1, 2, 3]"), "array config"),
        &[],
    );
}

#[test]
fn config_missing_file() {
    let tmp = copy_fixture("u2d_ddpm_like");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    check(load_err(tmp.path()), &["config.json"]);
}

#[test]
fn config_layers_per_block_zero() {
    for bad in [json!(0), json!([2, 0])] {
        let mut c = fixture_config("u2d_ddpm_like");
        c["layers_per_block"] = bad;
        check(config_then_model(&c), &["layers_per_block"]);
    }
}

#[test]
fn config_zero_sizes() {
    for (case, field) in [
        ("u2d_ddpm_like", "in_channels"),
        ("u2d_ddpm_like", "out_channels"),
        ("u2d_ddpm_like", "time_embedding_dim"),
        ("u2d_ddpm_like", "attn_norm_num_groups"),
        ("u2d_ddpm_like", "norm_num_groups"),
        ("u2d_ddpm_like", "num_class_embeds"),
        ("c2d_sd15_like", "time_embedding_dim"),
        ("c2d_sd15_like", "cross_attention_dim"),
        ("c2d_sd15_like", "attention_head_dim"),
    ] {
        let mut c = fixture_config(case);
        c[field] = json!(0);
        check(config_then_model(&c), &[field]);
    }
    let mut c = fixture_config("c2d_sd15_like");
    c["block_out_channels"] = json!([8, 0, 16]);
    check(config_then_model(&c), &["block_out_channels"]);
}

#[test]
fn config_integer_too_large() {
    // Would overflow size arithmetic (a panic) if accepted.
    for bad in [json!(1e30), json!(1u64 << 40)] {
        let mut c = fixture_config("u2d_ddpm_like");
        c["in_channels"] = bad;
        check(config_then_model(&c), &["in_channels"]);
    }
}

#[test]
fn config_downsample_padding_too_large() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["downsample_padding"] = json!(2);
    check(config_then_model(&c), &["downsample_padding", "2"]);
}

#[test]
fn config_attn_norm_num_groups_does_not_divide_channels() {
    let mut c = fixture_config("u2d_ddpm_like");
    c["attn_norm_num_groups"] = json!(3);
    check(config_then_model(&c), &["attn_norm_num_groups", "3", "16"]);
}

#[test]
fn config_class_embeddings_concat_without_class_embedding() {
    let mut c = fixture_config("c2d_sd15_like");
    c["class_embeddings_concat"] = json!(true);
    check(config_then_model(&c), &["class_embeddings_concat"]);
}

#[test]
fn config_unknown_enum_values() {
    for (case, field, value) in [
        ("u2d_ddpm_like", "act_fn", "relu6"),
        ("u2d_ddpm_like", "time_embedding_type", "rotary"),
        ("u2d_ddpm_like", "resnet_time_scale_shift", "film"),
        ("u2d_ddpm_like", "downsample_type", "pool"),
        ("u2d_ddpm_like", "class_embed_type", "projection"),
        ("c2d_sd15_like", "addition_embed_type", "image"),
        ("c2d_sd15_like", "encoder_hid_dim_type", "image_proj"),
    ] {
        let mut c = fixture_config(case);
        c[field] = json!(value);
        check(config_then_model(&c), &[field, value]);
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

#[test]
fn checkpoint_missing_key() {
    let tmp = copy_fixture("u2d_ddpm_like");
    edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
        let before = t.len();
        t.retain(|x| x.name != "down_blocks.1.attentions.0.to_q.weight");
        assert_eq!(t.len(), before - 1, "fixture lacks the key");
    });
    check(
        load_err(tmp.path()),
        &["missing", "down_blocks.1.attentions.0.to_q.weight"],
    );
}

#[test]
fn checkpoint_extra_key() {
    let tmp = copy_fixture("c2d_sd15_like");
    edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
        t.push(f32_tensor(
            "down_blocks.7.resnets.0.conv1.weight",
            &[2, 2],
            0.5,
        ));
    });
    check(
        load_err(tmp.path()),
        &["unexpected", "down_blocks.7.resnets.0.conv1.weight"],
    );
}

#[test]
fn checkpoint_wrong_shape() {
    let tmp = copy_fixture("u2d_ddpm_like");
    edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
        let w = t.iter_mut().find(|x| x.name == "conv_in.weight").unwrap();
        assert_eq!(w.shape, vec![8, 3, 3, 3]);
        // Same number of values, different shape.
        w.shape = vec![8, 9, 3, 1];
    });
    let msg = check(load_err(tmp.path()), &["conv_in.weight", "shape"]);
    assert!(
        msg.contains("[8, 3, 3, 3]") && msg.contains("[8, 9, 3, 1]"),
        "{msg}"
    );
}

#[test]
fn checkpoint_wrong_dtype_int64() {
    let tmp = copy_fixture("u2d_ddpm_like");
    edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
        let w = t.iter_mut().find(|x| x.name == "conv_out.bias").unwrap();
        let n: usize = w.shape.iter().product();
        w.dtype = Dtype::I64;
        w.data = (0..n as i64).flat_map(|i| i.to_le_bytes()).collect();
    });
    check(load_err(tmp.path()), &["conv_out.bias", "I64"]);
}

#[test]
fn checkpoint_wrong_dtype_bool_and_u8() {
    for dtype in [Dtype::BOOL, Dtype::U8] {
        let tmp = copy_fixture("u2d_ddpm_like");
        edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
            let w = t.iter_mut().find(|x| x.name == "conv_out.bias").unwrap();
            let n: usize = w.shape.iter().product();
            w.dtype = dtype;
            w.data = vec![1u8; n];
        });
        check(load_err(tmp.path()), &["conv_out.bias"]);
    }
}

#[test]
fn checkpoint_f16_weight_is_cast_not_rejected() {
    let tmp = copy_fixture("u2d_ddpm_like");
    edit_safetensors(&tmp.path().join(WEIGHTS), |t| {
        let w = t.iter_mut().find(|x| x.name == "conv_out.bias").unwrap();
        w.dtype = Dtype::F16;
        w.data = w
            .data
            .chunks_exact(4)
            .flat_map(|c| {
                half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
            })
            .collect();
    });
    let (_, report) = load_unet::<B>(tmp.path(), &device()).unwrap();
    assert!(report.is_exact());
    assert_eq!(report.dtypes.get("F16"), Some(&1), "{:?}", report.dtypes);
}

#[test]
fn checkpoint_truncated_file() {
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join(WEIGHTS);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    check(load_err(tmp.path()), &[WEIGHTS, "safetensors"]);
}

#[test]
fn checkpoint_truncated_to_a_few_bytes() {
    for len in [0usize, 5, 12] {
        let tmp = copy_fixture("u2d_ddpm_like");
        let path = tmp.path().join(WEIGHTS);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..len]).unwrap();
        check(load_err(tmp.path()), &[WEIGHTS]);
    }
}

#[test]
fn checkpoint_corrupt_header() {
    // Garbage from the first byte.
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join(WEIGHTS);
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, b) in bytes.iter_mut().take(64).enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    check(load_err(tmp.path()), &[WEIGHTS, "safetensors"]);

    // A valid header length followed by garbage where the JSON should be.
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join(WEIGHTS);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(8).take(40) {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    check(load_err(tmp.path()), &[WEIGHTS, "safetensors"]);

    // A header claiming far more bytes than the file holds.
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join(WEIGHTS);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    check(load_err(tmp.path()), &[WEIGHTS, "safetensors"]);
}

#[test]
fn checkpoint_folder_without_weights() {
    let tmp = copy_fixture("u2d_ddpm_like");
    std::fs::remove_file(tmp.path().join(WEIGHTS)).unwrap();
    check(load_err(tmp.path()), &[WEIGHTS]);
}

#[test]
fn checkpoint_folder_does_not_exist() {
    let tmp = temp_dir("nonexistent");
    let missing = tmp.path().join("no_such_model");
    check(load_err(&missing), &["no_such_model"]);
}

#[test]
fn checkpoint_sharded_index_points_to_missing_shard() {
    let tmp = copy_fixture("load_sharded");
    let shard = "diffusion_pytorch_model-00002-of-00003.safetensors";
    std::fs::remove_file(tmp.path().join(shard)).unwrap();
    check(
        load_err(tmp.path()),
        &["diffusion_pytorch_model.safetensors.index.json", shard],
    );
}

#[test]
fn checkpoint_sharded_index_is_not_json_or_has_no_weight_map() {
    let index = "diffusion_pytorch_model.safetensors.index.json";
    let tmp = copy_fixture("load_sharded");
    std::fs::write(tmp.path().join(index), "{ weight_map: ").unwrap();
    check(load_err(tmp.path()), &[index]);

    let tmp = copy_fixture("load_sharded");
    std::fs::write(tmp.path().join(index), r#"{"metadata": {}}"#).unwrap();
    check(load_err(tmp.path()), &[index, "weight_map"]);
}

#[test]
fn checkpoint_sharded_duplicate_tensor() {
    // The same tensor in two shards.
    let tmp = copy_fixture("load_sharded");
    let a = tmp
        .path()
        .join("diffusion_pytorch_model-00001-of-00003.safetensors");
    let b = tmp
        .path()
        .join("diffusion_pytorch_model-00003-of-00003.safetensors");
    let conv_in = read_raw(&a)
        .into_iter()
        .find(|t| t.name == "conv_in.bias")
        .unwrap();
    edit_safetensors(&b, |t| t.push(conv_in));
    check(load_err(tmp.path()), &["conv_in.bias"]);
}

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

#[test]
fn input_sample_wrong_rank_in_inputs_file() {
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join("inputs.safetensors");
    edit_safetensors(&path, |t| {
        let s = t.iter_mut().find(|x| x.name == "sample").unwrap();
        assert_eq!(s.shape, vec![2, 3, 16, 16]);
        s.shape = vec![6, 16, 16];
    });
    let e = expect_err(read_forward_inputs::<B>(&path, &device()), "inputs");
    check(e, &["sample", "[6, 16, 16]"]);
}

#[test]
fn input_other_tensors_wrong_rank_in_inputs_file() {
    // encoder_hidden_states 2-D instead of 3-D; timestep 2-D instead of 0-/1-D.
    for (name, shape) in [
        ("encoder_hidden_states", vec![14, 12]),
        ("timestep", vec![2, 1]),
    ] {
        let tmp = copy_fixture("c2d_sd15_like");
        let path = tmp.path().join("inputs.safetensors");
        edit_safetensors(&path, |t| {
            t.iter_mut().find(|x| x.name == name).unwrap().shape = shape.clone();
        });
        let e = expect_err(read_forward_inputs::<B>(&path, &device()), name);
        check(e, &[name]);
    }
}

#[test]
fn input_file_missing_sample_or_unknown_name() {
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join("inputs.safetensors");
    edit_safetensors(&path, |t| t.retain(|x| x.name != "sample"));
    let e = expect_err(read_forward_inputs::<B>(&path, &device()), "no sample");
    check(e, &["sample"]);

    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join("inputs.safetensors");
    edit_safetensors(&path, |t| t.push(f32_tensor("latent_sample", &[1], 0.0)));
    let e = expect_err(read_forward_inputs::<B>(&path, &device()), "unknown");
    check(e, &["latent_sample"]);
}

#[test]
fn input_file_corrupt() {
    let tmp = copy_fixture("u2d_ddpm_like");
    let path = tmp.path().join("inputs.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_err(read_forward_inputs::<B>(&path, &device()), "truncated");
    check(e, &["inputs.safetensors"]);
}

#[test]
fn input_wrong_channel_count() {
    let unet = load_fixture("u2d_ddpm_like");
    let t = Tensor::<B, 1>::from_floats([10.0], &device());
    let e = expect_err(
        unet.forward(zeros4([1, 4, 16, 16]), t, &Conditioning::none()),
        "channels",
    );
    check(e, &["sample", "in_channels", "3", "[1, 4, 16, 16]"]);
}

#[test]
fn input_spatial_size_not_multiple_of_downsampling_unet2dmodel() {
    // u2d_ddpm_like downsamples once: H and W must be even.
    let unet = load_fixture("u2d_ddpm_like");
    for shape in [[1, 3, 15, 16], [1, 3, 16, 9]] {
        let t = Tensor::<B, 1>::from_floats([10.0], &device());
        let e = expect_err(
            unet.forward(zeros4(shape), t, &Conditioning::none()),
            "spatial",
        );
        check(e, &["sample", "multiples of 2"]);
    }
}

#[test]
fn input_zero_spatial_size() {
    let unet = load_fixture("u2d_ddpm_like");
    let t = Tensor::<B, 1>::from_floats([10.0], &device());
    let e = expect_err(
        unet.forward(zeros4([1, 3, 0, 16]), t, &Conditioning::none()),
        "zero size",
    );
    check(e, &["sample"]);
}

#[test]
fn input_odd_spatial_size_works_for_unet2dconditionmodel() {
    // diffusers' UNet2DConditionModel sizes its upsamplers to the skips; so does Ember.
    let unet = load_fixture("c2d_sd15_like");
    let inputs = fixture_inputs("c2d_sd15_like");
    let t = Tensor::<B, 1>::from_floats([10.0, 500.0], &device());
    for shape in [[2, 4, 10, 14], [2, 4, 9, 7]] {
        let out = unet
            .forward(zeros4(shape), t.clone(), &inputs.conditioning)
            .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert_eq!(out.dims(), shape);
    }
}

#[test]
fn input_timestep_wrong_length() {
    let unet = load_fixture("u2d_ddpm_like");
    let inputs = fixture_inputs("u2d_ddpm_like");
    assert_eq!(inputs.sample.dims()[0], 2);
    for n in [0usize, 3] {
        let t = Tensor::<B, 1>::zeros([n], &device());
        let e = expect_err(
            unet.forward(inputs.sample.clone(), t, &Conditioning::none()),
            "timestep",
        );
        check(e, &["timestep", &format!("[{n}]")]);
    }
}

#[test]
fn input_missing_encoder_hidden_states() {
    let unet = load_fixture("c2d_sd15_like");
    let inputs = fixture_inputs("c2d_sd15_like");
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &Conditioning::none()),
        "no context",
    );
    check(e, &["encoder_hidden_states"]);
}

#[test]
fn input_encoder_hidden_states_wrong_width() {
    let unet = load_fixture("c2d_sd15_like");
    let inputs = fixture_inputs("c2d_sd15_like");
    let mut cond = inputs.conditioning.clone();
    cond.encoder_hidden_states = Some(Tensor::zeros([2, 7, 10], &device()));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "width",
    );
    check(e, &["encoder_hidden_states", "12", "[2, 7, 10]"]);
}

#[test]
fn input_encoder_hidden_states_wrong_batch() {
    let unet = load_fixture("c2d_sd15_like");
    let inputs = fixture_inputs("c2d_sd15_like");
    let mut cond = inputs.conditioning.clone();
    cond.encoder_hidden_states = Some(Tensor::zeros([3, 7, 12], &device()));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "batch",
    );
    check(e, &["encoder_hidden_states", "[3, 7, 12]"]);
}

#[test]
fn input_class_label_out_of_range() {
    let unet = load_fixture("c2d_num_class_embeds_controlnet");
    let inputs = fixture_inputs("c2d_num_class_embeds_controlnet");
    assert_eq!(unet.config().num_class_embeds, Some(4));
    for bad in [4i64, -1] {
        let mut cond = inputs.conditioning.clone();
        cond.class_labels = Some(labels(&[0, bad]));
        let e = expect_err(
            unet.forward(inputs.sample.clone(), inputs.timesteps.clone(), &cond),
            "label",
        );
        check(e, &["class_labels", &bad.to_string(), "0..4"]);
    }
}

#[test]
fn input_class_labels_missing_or_wrong_batch() {
    let unet = load_fixture("c2d_num_class_embeds_controlnet");
    let inputs = fixture_inputs("c2d_num_class_embeds_controlnet");
    let mut cond = inputs.conditioning.clone();
    cond.class_labels = None;
    let e = expect_err(
        unet.forward(inputs.sample.clone(), inputs.timesteps.clone(), &cond),
        "no labels",
    );
    check(e, &["class_labels"]);
    let mut cond = inputs.conditioning.clone();
    cond.class_labels = Some(labels(&[0, 1, 2]));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "label batch",
    );
    check(e, &["class_labels"]);
}

#[test]
fn input_class_labels_for_model_without_class_embedding() {
    let unet = load_fixture("u2d_ddpm_like");
    let inputs = fixture_inputs("u2d_ddpm_like");
    let mut cond = Conditioning::none();
    cond.class_labels = Some(labels(&[0, 1]));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "class labels",
    );
    check(e, &["class_labels", "no class embedding"]);
}

#[test]
fn input_class_embeds_wrong_width() {
    let unet = load_fixture("c2d_class_simple_projection_mask");
    let inputs = fixture_inputs("c2d_class_simple_projection_mask");
    let mut cond = inputs.conditioning.clone();
    cond.class_embeds = Some(Tensor::zeros([2, 5], &device()));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "class embeds",
    );
    check(e, &["class_labels", "[2, 5]"]);
}

#[test]
fn input_controlnet_wrong_number_of_down_residuals() {
    let unet = load_fixture("c2d_num_class_embeds_controlnet");
    let inputs = fixture_inputs("c2d_num_class_embeds_controlnet");
    assert_eq!(inputs.conditioning.down_block_additional_residuals.len(), 4);
    let mut cond = inputs.conditioning.clone();
    cond.down_block_additional_residuals.pop();
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "residual count",
    );
    check(
        e,
        &["down_block_additional_residuals", "expected 4", "got 3"],
    );
}

#[test]
fn input_controlnet_residual_wrong_shape() {
    let unet = load_fixture("c2d_num_class_embeds_controlnet");
    let inputs = fixture_inputs("c2d_num_class_embeds_controlnet");
    let mut cond = inputs.conditioning.clone();
    cond.down_block_additional_residuals[2] = zeros4([2, 4, 4, 4]);
    let e = expect_err(
        unet.forward(inputs.sample.clone(), inputs.timesteps.clone(), &cond),
        "residual shape",
    );
    check(
        e,
        &[
            "down_block_additional_residuals.2",
            "[2, 4, 8, 8]",
            "[2, 4, 4, 4]",
        ],
    );
    let mut cond = inputs.conditioning.clone();
    cond.mid_block_additional_residual = Some(zeros4([2, 4, 8, 8]));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "mid residual shape",
    );
    check(e, &["mid_block_additional_residual", "[2, 4, 8, 8]"]);
}

#[test]
fn input_controlnet_down_residuals_without_mid() {
    let unet = load_fixture("c2d_num_class_embeds_controlnet");
    let inputs = fixture_inputs("c2d_num_class_embeds_controlnet");
    let mut cond = inputs.conditioning.clone();
    cond.mid_block_additional_residual = None;
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "no mid residual",
    );
    check(e, &["mid_block_additional_residual"]);
}

#[test]
fn input_encoder_attention_mask_wrong_length() {
    let unet = load_fixture("c2d_class_simple_projection_mask");
    let inputs = fixture_inputs("c2d_class_simple_projection_mask");
    let mut cond = inputs.conditioning.clone();
    assert_eq!(cond.encoder_attention_mask.as_ref().unwrap().dims(), [2, 7]);
    cond.encoder_attention_mask = Some(Tensor::ones([2, 5], &device()));
    let e = expect_err(unet.forward(inputs.sample, inputs.timesteps, &cond), "mask");
    check(e, &["encoder_attention_mask", "[2, 7]", "[2, 5]"]);
}

#[test]
fn input_empty_batch() {
    let unet = load_fixture("u2d_ddpm_like");
    let t = Tensor::<B, 1>::zeros([0], &device());
    let e = expect_err(
        unet.forward(zeros4([0, 3, 16, 16]), t, &Conditioning::none()),
        "empty batch",
    );
    check(e, &["sample", "[0, 3, 16, 16]"]);
}

#[test]
fn input_learned_timestep_out_of_range() {
    // time_embedding_type "learned": the timestep indexes a table of num_train_timesteps rows.
    let case = "u2d_learned_time_timestep_class_resnet_blocks";
    let unet = load_fixture(case);
    let inputs = fixture_inputs(case);
    let n = unet.config().num_train_timesteps.unwrap();
    let b = inputs.sample.dims()[0];
    for bad in [n as f32, -3.0] {
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![bad; b], [b]), &device());
        let e = expect_err(
            unet.forward(inputs.sample.clone(), t, &inputs.conditioning),
            "learned timestep",
        );
        let msg = check(e, &["timestep", &format!("0..{n}")]);
        assert!(!msg.contains("class_labels"), "{msg}");
    }
}

#[test]
fn input_controlnet_residuals_for_unet2dmodel() {
    let unet = load_fixture("u2d_ddpm_like");
    let inputs = fixture_inputs("u2d_ddpm_like");
    let mut cond = Conditioning::none();
    cond.mid_block_additional_residual = Some(zeros4([2, 16, 8, 8]));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "residual on UNet2DModel",
    );
    check(
        e,
        &["mid_block_additional_residual", "UNet2DConditionModel"],
    );
}

#[test]
fn input_sdxl_added_conditions() {
    let case = "c2d_sdxl_like_text_time";
    let unet = load_fixture(case);
    let inputs = fixture_inputs(case);
    let b = inputs.sample.dims()[0];
    let mut cond = inputs.conditioning.clone();
    cond.time_ids = None;
    let e = expect_err(
        unet.forward(inputs.sample.clone(), inputs.timesteps.clone(), &cond),
        "no time_ids",
    );
    check(e, &["time_ids"]);
    let mut cond = inputs.conditioning.clone();
    cond.time_ids = Some(Tensor::zeros([b, 5], &device()));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "time_ids width",
    );
    check(e, &["time_ids", "projection_class_embeddings_input_dim"]);
}

#[test]
fn input_timestep_cond_wrong_width() {
    let case = "c2d_class_timestep_scale_shift_cond";
    let unet = load_fixture(case);
    let inputs = fixture_inputs(case);
    let b = inputs.sample.dims()[0];
    let mut cond = inputs.conditioning.clone();
    cond.timestep_cond = Some(Tensor::zeros([b, 1], &device()));
    let e = expect_err(
        unet.forward(inputs.sample, inputs.timesteps, &cond),
        "timestep_cond",
    );
    check(e, &["timestep_cond", &format!("[{b}, 1]")]);
}
