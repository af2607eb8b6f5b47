//! `ember sample`, run as a user runs it, on the tiny diffusers DDPMPipeline folder of
//! ember-pipelines' fixtures.

use ember_models::io::{read_tensors, HostTensorValue};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tests/fixtures")
}

fn model() -> String {
    fixtures().join("ddpm_tiny").display().to_string()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-sample-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "ember failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    match &read_tensors(path).unwrap()[name] {
        HostTensorValue::Float(w) => (w.shape.clone(), w.values.clone()),
        _ => panic!("{name} is not float"),
    }
}

#[test]
fn every_parity_case_matches_diffusers_through_the_cli() {
    let dir = scratch("parity");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let detail: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("cases/{name}.json"))).unwrap(),
        )
        .unwrap();
        let mut config = detail["scheduler_config"].clone();
        if let Some(nonfinite) = detail["scheduler_config_nonfinite"].as_object() {
            for key in nonfinite.keys() {
                config.as_object_mut().unwrap().remove(key);
            }
        }
        let config_path = dir.join(format!("{name}_scheduler_config.json"));
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap().to_string();
        let saved = dir.join(format!("{name}.safetensors"));
        let png = dir.join(format!("{name}.png"));
        let out = ember(&[
            "sample",
            "--model",
            &model(),
            "--scheduler-config",
            &s(&config_path),
            "--steps",
            &steps,
            "--batch",
            "2",
            "--init-noise",
            &s(&fixtures().join("latents.safetensors")),
            "--save-tensor",
            &s(&saved),
            "--out",
            &s(&png),
        ]);
        ok(&out);
        let (shape, got) = tensor(&saved, "sample");
        let (want_shape, want) = tensor(
            &fixtures().join(format!("cases/{name}.safetensors")),
            "sample",
        );
        assert_eq!(shape, want_shape, "{name}");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(
                0.0,
                |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
            );
        let tol = case["tolerance"].as_f64().unwrap();
        println!("{name:18} max-abs-err {err:.2e}  tolerance {tol:.1e}");
        if err > tol {
            failures.push(format!("{name}: {err:.3e} > {tol:.1e}"));
        }
        assert!(png.is_file(), "{name}: no PNG");
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn scheduler_swap_by_name_writes_a_grid_png() {
    let dir = scratch("swap");
    let png = dir.join("grid.png");
    let out = ember(&[
        "sample",
        "--model",
        &model(),
        "--scheduler",
        "EulerDiscreteScheduler",
        "--steps",
        "5",
        "--batch",
        "3",
        "--out",
        &s(&png),
    ]);
    ok(&out);
    let img = image::open(&png).unwrap();
    // 3 samples of 16×16 → 2 columns × 2 rows.
    assert_eq!((img.width(), img.height()), (32, 32));
    assert_eq!(img.color(), image::ColorType::Rgb8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn same_seed_is_reproducible_and_trajectory_has_one_frame_per_step() {
    use image::AnimationDecoder;
    let dir = scratch("seed");
    let run = |tag: &str, seed: &str| {
        let png = dir.join(format!("{tag}.png"));
        let st = dir.join(format!("{tag}.safetensors"));
        let gif = dir.join(format!("{tag}.gif"));
        let out = ember(&[
            "sample",
            "--model",
            &model(),
            "--scheduler",
            "DDPMScheduler",
            "--steps",
            "6",
            "--seed",
            seed,
            "--batch",
            "2",
            "--out",
            &s(&png),
            "--save-tensor",
            &s(&st),
            "--trajectory",
            &s(&gif),
        ]);
        ok(&out);
        (
            std::fs::read(&png).unwrap(),
            std::fs::read(&st).unwrap(),
            gif,
        )
    };
    let (png_a, st_a, gif) = run("a", "7");
    let (png_b, st_b, _) = run("b", "7");
    let (png_c, _, _) = run("c", "8");
    assert_eq!(png_a, png_b);
    assert_eq!(st_a, st_b);
    assert_ne!(png_a, png_c, "another seed gives another image");
    let bytes = std::fs::read(&gif).unwrap();
    assert!(bytes.starts_with(b"GIF8"));
    let decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap();
    let frames = decoder.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 6);
    assert_eq!(frames[0].buffer().dimensions(), (32, 16));
    std::fs::remove_dir_all(&dir).ok();
}

/// A 16×16 RGB test picture.
fn picture(path: &Path) -> Vec<[u8; 3]> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, ((x + y) * 7) as u8])
    });
    img.save(path).unwrap();
    img.pixels().map(|p| p.0).collect()
}

fn model_space(v: u8) -> f32 {
    v as f32 / 255.0 * 2.0 - 1.0
}

#[test]
fn img2img_at_strength_zero_returns_the_init_image() {
    let dir = scratch("img2img");
    let init = dir.join("init.png");
    let pixels = picture(&init);
    let st = dir.join("out.safetensors");
    let out = ember(&[
        "sample",
        "--model",
        &model(),
        "--steps",
        "10",
        "--batch",
        "2",
        "--init-image",
        &s(&init),
        "--strength",
        "0",
        "--out",
        &s(&dir.join("out.png")),
        "--save-tensor",
        &s(&st),
    ]);
    ok(&out);
    let (shape, got) = tensor(&st, "sample");
    assert_eq!(shape, [2, 3, 16, 16]);
    for b in 0..2 {
        for c in 0..3 {
            for (i, p) in pixels.iter().enumerate() {
                assert_eq!(got[(b * 3 + c) * 256 + i], model_space(p[c]));
            }
        }
    }
    // And the PNG shows it again (the mapping round-trips 8-bit values).
    let png = image::open(dir.join("out.png")).unwrap().to_rgb8();
    assert_eq!(png.get_pixel(5, 3).0, pixels[3 * 16 + 5]);
    // A real img2img run changes it.
    let out = ember(&[
        "sample",
        "--model",
        &model(),
        "--steps",
        "10",
        "--init-image",
        &s(&init),
        "--strength",
        "0.5",
        "--out",
        &s(&dir.join("half.png")),
        "--save-tensor",
        &s(&st),
    ]);
    ok(&out);
    let (_, half) = tensor(&st, "sample");
    assert!(half.iter().zip(&got).any(|(a, b)| a != b));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inpainting_keeps_the_black_half_of_the_mask() {
    let dir = scratch("inpaint");
    let init = dir.join("init.png");
    let pixels = picture(&init);
    let mask = dir.join("mask.png");
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let st = dir.join("out.safetensors");
    let out = ember(&[
        "sample",
        "--model",
        &model(),
        "--steps",
        "8",
        "--batch",
        "2",
        "--init-image",
        &s(&init),
        "--mask",
        &s(&mask),
        "--out",
        &s(&dir.join("out.png")),
        "--save-tensor",
        &s(&st),
    ]);
    ok(&out);
    let (_, got) = tensor(&st, "sample");
    let mut generated_differs = false;
    for b in 0..2 {
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let i = y * 16 + x;
                    let v = got[(b * 3 + c) * 256 + i];
                    let want = model_space(pixels[i][c]);
                    if x >= 8 {
                        assert_eq!(v, want, "kept pixel ({x}, {y}) of sample {b}");
                    } else if v != want {
                        generated_differs = true;
                    }
                }
            }
        }
    }
    assert!(generated_differs, "the white half is generated");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs `ember sample` with `extra` and checks for a one-line error containing `needle`,
/// before any output is written.
fn bad(dir: &Path, extra: &[&str], needle: &str) {
    let png = dir.join("never.png");
    let model = model();
    let mut args = vec!["sample", "--steps", "3"];
    if !extra.contains(&"--model") {
        args.extend_from_slice(&["--model", &model]);
    }
    args.extend_from_slice(extra);
    let png_s = s(&png);
    if !extra.contains(&"--out") {
        args.extend_from_slice(&["--out", &png_s]);
    }
    let out = ember(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    assert!(err.starts_with("error: "), "{extra:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert!(err.contains(needle), "{extra:?}: `{needle}` not in {err}");
    assert!(!png.exists(), "{extra:?} wrote output");
}

#[test]
fn bad_input_is_a_one_line_error_before_any_work() {
    let dir = scratch("bad");
    let init = dir.join("init.png");
    picture(&init);
    let small = dir.join("small.png");
    image::RgbImage::new(8, 12).save(&small).unwrap();
    let gray = dir.join("gray.png");
    image::GrayImage::new(16, 16).save(&gray).unwrap();
    let small_mask = dir.join("small_mask.png");
    image::GrayImage::new(16, 8).save(&small_mask).unwrap();
    let mask_st = dir.join("mask.safetensors");
    write_f32(&mask_st, "mask", &[16, 16], &vec![2.0; 256]);
    let noise = s(&fixtures().join("latents.safetensors"));
    let (init, small, gray, small_mask, mask_st) =
        (s(&init), s(&small), s(&gray), s(&small_mask), s(&mask_st));
    let here = s(&dir.join("x.safetensors"));
    let dir_s = s(&dir);
    bad(&dir, &["--scheduler", "NoSuchScheduler"], "NoSuchScheduler");
    bad(&dir, &["--steps", "0"], "--steps");
    bad(&dir, &["--batch", "0"], "--batch");
    bad(&dir, &["--init-image", &small], "8x12");
    bad(&dir, &["--init-image", &gray], "channel");
    bad(
        &dir,
        &["--init-image", &init, "--strength", "1.5"],
        "--strength",
    );
    bad(
        &dir,
        &["--init-image", &init, "--mask", &small_mask],
        "16x8",
    );
    bad(&dir, &["--init-image", &init, "--mask", &mask_st], "[0, 1]");
    bad(&dir, &["--mask", &gray], "--init-image");
    bad(&dir, &["--init-noise", &noise], "[2, 3, 16, 16]");
    bad(
        &dir,
        &["--batch", "2", "--init-noise", &init],
        "--init-noise",
    );
    bad(&dir, &["--guidance-scale", "3"], "class");
    bad(&dir, &["--class-label", "1"], "class embedding");
    bad(&dir, &["--out", "/no/such/dir/grid.png"], "/no/such/dir");
    bad(
        &dir,
        &["--save-tensor", "/no/such/dir/x.safetensors"],
        "--save-tensor",
    );
    bad(&dir, &["--trajectory", &dir_s], "directory");
    bad(&dir, &["--scheduler-config", &here], "x.safetensors");
    bad(&dir, &["--model", "/no/such/model"], "/no/such/model");
    std::fs::remove_dir_all(&dir).ok();
}

fn write_f32(path: &Path, name: &str, shape: &[usize], values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    std::fs::write(path, safetensors::serialize([(name, view)], None).unwrap()).unwrap();
}

/// A class-conditional grayscale pipeline folder (random weights, 4 classes, 8×12 images).
fn class_pipeline(dir: &Path) -> PathBuf {
    use ember_core::backend::DefaultBackend as B;
    let root = dir.join("class_pipeline");
    let unet = root.join("unet");
    std::fs::create_dir_all(&unet).unwrap();
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    std::fs::copy(
        fixtures().join("ddpm_tiny/model_index.json"),
        root.join("model_index.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("ddpm_tiny/scheduler/scheduler_config.json"),
        root.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("ddpm_tiny/unet/config.json")).unwrap(),
    )
    .unwrap();
    config["in_channels"] = 1.into();
    config["out_channels"] = 1.into();
    config["num_class_embeds"] = 4.into();
    config["sample_size"] = serde_json::json!([8, 12]);
    std::fs::write(unet.join("config.json"), config.to_string()).unwrap();
    let config = ember_models::load_unet_config(&unet).unwrap();
    let model = ember_models::UNet2D::<B>::new(config, &Default::default()).unwrap();
    ember_models::save_unet(&model, &unet).unwrap();
    root
}

#[test]
fn class_conditional_sampling_with_guidance() {
    let dir = scratch("class");
    let model = s(&class_pipeline(&dir));
    let png = dir.join("grid.png");
    let st = dir.join("out.safetensors");
    let run = |extra: &[&str]| {
        let png_s = s(&png);
        let st_s = s(&st);
        let mut args = vec![
            "sample",
            "--model",
            &model,
            "--steps",
            "4",
            "--batch",
            "2",
            "--out",
            &png_s,
            "--save-tensor",
            &st_s,
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    ok(&run(&["--class-label", "2"]));
    let img = image::open(&png).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    // 2 samples of 8 (h) × 12 (w) side by side.
    assert_eq!((img.width(), img.height()), (24, 8));
    let (shape, plain) = tensor(&st, "sample");
    assert_eq!(shape, [2, 1, 8, 12]);
    ok(&run(&[
        "--class-label",
        "2",
        "--guidance-scale",
        "3",
        "--null-class",
        "0",
    ]));
    let (_, guided) = tensor(&st, "sample");
    assert!(guided.iter().all(|v| v.is_finite()));
    assert_ne!(plain, guided, "guidance changes the result");
    for (extra, needle) in [
        (&["--guidance-scale", "1"][..], "--class-label"),
        (&["--class-label", "4"][..], "out of range"),
        (
            &["--class-label", "1", "--guidance-scale", "2"][..],
            "--null-class",
        ),
        (
            &[
                "--class-label",
                "1",
                "--guidance-scale",
                "2",
                "--null-class=-1",
            ][..],
            "out of range",
        ),
    ] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{extra:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
