//! Forward parity with diffusers 0.42.1 on the tiny reference configurations written by
//! `tools/reference/make_unet_fixtures.py` (every parameter re-initialised non-zero; the
//! reference output computed in float64).
//!
//! Tolerance: max-abs-err ≤ 1e-4 (the bound). Ember runs in float32; the fixtures
//! record diffusers' own float32-vs-float64 spread, which is ≤ ~1e-5 for these sizes.

use ember_core::backend::DefaultBackend as B;
use ember_core::Denoiser;
use ember_models::io::{read_forward_inputs, read_tensors, HostTensorValue};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet")
}

fn cases() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs one case and returns the max-abs error.
fn run_case(name: &str) -> (f64, f64) {
    let dir = fixtures().join(name);
    let device = Default::default();
    let (unet, report) =
        ember_models::load_unet::<B>(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.is_exact(), "{name}: {}", report.problems());
    let inputs = read_forward_inputs::<B>(&dir.join("inputs.safetensors"), &device).unwrap();
    let out = unet
        .forward(inputs.sample, inputs.timesteps, &inputs.conditioning)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: Vec<f32> = out.into_data().convert::<f32>().into_vec().unwrap();
    let expected = match &read_tensors(&dir.join("output.safetensors")).unwrap()["sample"] {
        HostTensorValue::Float(w) => w.values.clone(),
        _ => panic!("output is not float"),
    };
    assert_eq!(got.len(), expected.len(), "{name}: output size");
    let err = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        // NaN counts as an infinite error (f64::max would skip it).
        .fold(
            0.0,
            |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        );
    let scale = expected.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
    (err, scale)
}

#[test]
fn every_tiny_config_matches_diffusers() {
    let mut failures = Vec::new();
    for name in cases() {
        let (err, scale) = run_case(&name);
        println!("{name:55} max-abs-err {err:.2e} (max |ref| {scale:.2})");
        if err > 1e-4 {
            failures.push(format!("{name}: {err:.3e}"));
        }
    }
    assert!(failures.is_empty(), "cases over 1e-4: {failures:?}");
}
