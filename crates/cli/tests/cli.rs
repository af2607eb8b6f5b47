//! The `ember` binary, run as a user runs it.

use ember_models::io::{read_tensors, HostTensorValue};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

#[test]
fn schedulers_lists_every_scheduler_with_defaults() {
    let out = ember(&["schedulers"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ember_schedulers::SCHEDULERS.iter().map(|s| s.class_name) {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("beta_schedule") && text.contains("\"linear\""),
        "{text}"
    );
}

#[test]
fn schedulers_json_is_a_loadable_config() {
    let out = ember(&["schedulers", "DPMSolverMultistepScheduler", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Written as diffusers writes it, so the file loads back unchanged.
    assert!(text.contains("\"lambda_min_clipped\": -Infinity"), "{text}");
    let v = ember_schedulers::config::parse_config_text(&text, "stdout").unwrap();
    let s = ember_schedulers::from_config_json::<ember_core::HostTensor>(&v).unwrap();
    assert_eq!(s.class_name(), "DPMSolverMultistepScheduler");
}

#[test]
fn unknown_scheduler_is_a_one_line_error() {
    let out = ember(&["schedulers", "NoSuchScheduler"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("NoSuchScheduler") && err.contains("DDIMScheduler"),
        "{err}"
    );
}

/// The U-Net parity fixtures of ember-models (diffusers folders with inputs and outputs).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/unet")
}

fn cases() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn meta(case: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(case).join("meta.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

fn float_values(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    match read_tensors(path).unwrap().remove(name) {
        Some(HostTensorValue::Float(w)) => (w.shape, w.values),
        other => panic!("{}: `{name}` is {other:?}", path.display()),
    }
}

/// Writes f32 tensors `(name, shape)` filled with 0.5 to a safetensors file.
fn write_inputs(path: &Path, tensors: &[(&str, &[usize])]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            0.5f32.to_le_bytes().repeat(n)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
                    .unwrap();
            (name.to_string(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Asserts a failed run that printed exactly one `error:` line mentioning every needle.
fn assert_one_line_error(out: &std::process::Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "panic: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    err
}

/// Runs `ember forward` on a fixture case (on `device`, or the default one) and returns the
/// max-abs error of its output against diffusers'.
fn forward_error(case: &str, device: Option<&str>, tmp: &Path) -> f32 {
    let dir = fixtures().join(case);
    let inputs = dir.join("inputs.safetensors");
    let out_path = tmp.join(format!(
        "{case}-{}.safetensors",
        device.unwrap_or("default")
    ));
    let mut args = vec![
        "forward",
        "--model",
        path_str(&dir),
        "--inputs",
        path_str(&inputs),
        "--out",
        path_str(&out_path),
    ];
    if let Some(device) = device {
        args.extend(["--device", device]);
    }
    let out = ember(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{case}: {stderr}");
    assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    let (shape, got) = float_values(&out_path, "sample");
    let (want_shape, want) = float_values(&dir.join("output.safetensors"), "sample");
    assert_eq!(shape, want_shape, "{case}: output shape");
    got.iter()
        .zip(&want)
        // NaN counts as an infinite error (f32::max would skip it).
        .map(|(a, b)| {
            let d = (a - b).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0f32, f32::max)
}

#[test]
fn forward_matches_diffusers_on_every_fixture() {
    let tmp = scratch("forward-fixtures");
    let mut failures = Vec::new();
    for case in cases() {
        let err = forward_error(&case, None, &tmp);
        println!("{case:50} max-abs-err {err:.2e}");
        if err > 1e-4 {
            failures.push(format!("{case}: {err:.3e}"));
        }
    }
    assert!(failures.is_empty(), "cases over 1e-4: {failures:?}");
}

/// `--device` with every backend compiled in (only flex in a default build; build with
/// `--features ndarray,wgpu` to run the others).
#[test]
fn forward_runs_on_every_compiled_backend() {
    let tmp = scratch("forward-backends");
    for device in ember_core::backend::available_backends() {
        for case in ["u2d_ddpm_like", "c2d_sd15_like"] {
            let err = forward_error(case, Some(device), &tmp);
            println!("{device:8} {case:30} max-abs-err {err:.2e}");
            assert!(err <= 1e-4, "{device} {case}: {err:.3e}");
        }
    }
}

#[test]
fn info_prints_class_and_exact_parameter_count() {
    for case in cases() {
        let dir = fixtures().join(&case);
        let meta = meta(&case);
        let class = meta["class"].as_str().unwrap();
        let params = meta["num_parameters"].as_u64().unwrap();

        let out = ember(&["info", path_str(&dir)]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with(class), "{case}: {text}");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("parameters"))
            .unwrap_or_else(|| panic!("{case}: no parameters row in {text}"));
        assert_eq!(
            row.split_whitespace().nth(1),
            Some(params.to_string().as_str()),
            "{case}: {row}"
        );
        assert!(text.contains("matches the config"), "{case}: {text}");

        let out = ember(&["info", path_str(&dir), "--json"]);
        assert!(out.status.success(), "{case}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
        assert_eq!(v["class"], class, "{case}");
        assert_eq!(v["num_parameters"].as_u64(), Some(params), "{case}");
        assert_eq!(v["checkpoint"]["matches_config"], true, "{case}: {v}");
        let dtype = match meta["weights_dtype"].as_str().unwrap() {
            "float32" => "F32",
            "float16" => "F16",
            "bfloat16" => "BF16",
            other => panic!("{case}: weights_dtype {other}"),
        };
        assert_eq!(
            v["dtypes"][dtype].as_u64(),
            v["num_tensors"].as_u64(),
            "{case}: {v}"
        );
        let files: Vec<&str> = v["weight_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        for f in meta["weight_files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            assert!(
                f.ends_with(".index.json") || files.contains(&f),
                "{case}: {f} not in {files:?}"
            );
        }
    }
}

#[test]
fn info_reports_a_checkpoint_that_does_not_match_its_config() {
    let dir = scratch("info-mismatch");
    // The config of one fixture with the weights of another.
    std::fs::copy(
        fixtures().join("c2d_sd15_like/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("load_fp16_weights/diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let out = ember(&["info", path_str(&dir)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("140540") && text.contains("FAILS to load") && text.contains("F16"),
        "{text}"
    );
    let out = ember(&["info", path_str(&dir), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checkpoint"]["matches_config"], false);
    assert!(
        v["checkpoint"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing") || e.contains("wrong shape")),
        "{v}"
    );
}

#[test]
fn info_on_a_missing_folder_is_a_one_line_error() {
    let out = ember(&["info", "/no/such/model"]);
    assert_one_line_error(&out, &["/no/such/model"]);
}

#[test]
fn forward_bad_arguments_are_one_line_errors() {
    let tmp = scratch("forward-errors");
    let model_dir = fixtures().join("c2d_sd15_like");
    let model = path_str(&model_dir);
    let good_inputs = model_dir.join("inputs.safetensors");
    let good = path_str(&good_inputs);
    let out_path = tmp.join("out.safetensors");
    let out_file = path_str(&out_path);

    // Missing model folder.
    let out = ember(&[
        "forward",
        "--model",
        "/no/such/model",
        "--inputs",
        good,
        "--out",
        out_file,
    ]);
    assert_one_line_error(&out, &["/no/such/model"]);

    // Missing inputs file.
    let missing = tmp.join("missing.safetensors");
    let out = ember(&[
        "forward",
        "--model",
        model,
        "--inputs",
        path_str(&missing),
        "--out",
        out_file,
    ]);
    assert_one_line_error(&out, &["missing.safetensors"]);

    // Inputs without `sample`.
    let no_sample = tmp.join("no_sample.safetensors");
    write_inputs(
        &no_sample,
        &[("timestep", &[2]), ("encoder_hidden_states", &[2, 7, 12])],
    );
    let out = ember(&[
        "forward",
        "--model",
        model,
        "--inputs",
        path_str(&no_sample),
        "--out",
        out_file,
    ]);
    assert_one_line_error(&out, &["sample"]);

    // An input name diffusers' forward does not take.
    let unknown = tmp.join("unknown.safetensors");
    write_inputs(
        &unknown,
        &[
            ("sample", &[2, 4, 16, 16]),
            ("timestep", &[2]),
            ("latents", &[2, 4, 16, 16]),
        ],
    );
    let out = ember(&[
        "forward",
        "--model",
        model,
        "--inputs",
        path_str(&unknown),
        "--out",
        out_file,
    ]);
    assert_one_line_error(&out, &["latents", "encoder_hidden_states"]);

    // An --out path inside a folder that does not exist.
    let unwritable = tmp.join("no/such/dir/out.safetensors");
    let out = ember(&[
        "forward",
        "--model",
        model,
        "--inputs",
        good,
        "--out",
        path_str(&unwritable),
    ]);
    assert_one_line_error(&out, &["no/such/dir"]);
    assert!(!unwritable.exists());

    // An unknown --device.
    let out = ember(&[
        "forward", "--model", model, "--inputs", good, "--out", out_file, "--device", "tpu",
    ]);
    assert_one_line_error(&out, &["tpu", "flex"]);

    // A missing required argument (clap's usage error, on one line too).
    let out = ember(&["forward", "--model", model, "--out", out_file]);
    assert_one_line_error(&out, &["--inputs"]);

    assert!(
        !out_path.exists(),
        "no run above should have written output"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn forward_on_a_backend_not_compiled_in_says_how_to_get_it() {
    let model_dir = fixtures().join("c2d_sd15_like");
    let inputs = model_dir.join("inputs.safetensors");
    let tmp = scratch("forward-no-cuda");
    let out_path = tmp.join("out.safetensors");
    let out = ember(&[
        "forward",
        "--model",
        path_str(&model_dir),
        "--inputs",
        path_str(&inputs),
        "--out",
        path_str(&out_path),
        "--device",
        "cuda",
    ]);
    assert_one_line_error(&out, &["cuda", "--features cuda"]);
}
