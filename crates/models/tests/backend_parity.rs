//! The same tiny conditional U-Net (the `c2d_sd15_like` diffusers fixture: cross-attention
//! transformer blocks, GEGLU, group norms, up/down sampling) gives the same output on every
//! backend compiled in, within 1e-4 of Flex and of diffusers.
//!
//! Run all backends: `cargo test -p ember-models --features ndarray,wgpu --test backend_parity`.
//! CI runs wgpu on Mesa's lavapipe (software Vulkan), installed by `.ci/run`.

use ember_core::Denoiser;
use ember_models::io::{read_forward_inputs, read_tensors, HostTensorValue};
use ember_models::EmberBackend;
use std::path::PathBuf;

fn case_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/c2d_sd15_like")
}

fn run<B: EmberBackend>(device: B::Device) -> Vec<f32> {
    let dir = case_dir();
    let (unet, _) = ember_models::load_unet::<B>(&dir, &device).unwrap();
    let inp = read_forward_inputs::<B>(&dir.join("inputs.safetensors"), &device).unwrap();
    let y = unet
        .forward(inp.sample, inp.timesteps, &inp.conditioning)
        .unwrap();
    y.into_data().convert::<f32>().into_vec().unwrap()
}

fn reference() -> Vec<f32> {
    match &read_tensors(&case_dir().join("output.safetensors")).unwrap()["sample"] {
        HostTensorValue::Float(w) => w.values.clone(),
        _ => unreachable!(),
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        // NaN counts as an infinite error (f32::max would skip it).
        .fold(
            0.0,
            |m: f32, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

#[allow(dead_code)]
fn check_against_flex(name: &str, other: Vec<f32>) {
    let flex = run::<ember_core::burn::backend::Flex>(Default::default());
    let to_flex = max_abs(&other, &flex);
    let to_ref = max_abs(&other, &reference());
    println!("{name}: max-abs vs flex {to_flex:.2e}, vs diffusers {to_ref:.2e}");
    assert!(to_flex <= 1e-4 && to_ref <= 1e-4);
}

#[test]
fn flex_matches_diffusers() {
    let flex = run::<ember_core::burn::backend::Flex>(Default::default());
    assert!(max_abs(&flex, &reference()) <= 1e-4);
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_matches_flex() {
    check_against_flex(
        "ndarray",
        run::<ember_core::burn::backend::NdArray>(Default::default()),
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_flex() {
    check_against_flex(
        "wgpu",
        run::<ember_core::burn::backend::Wgpu>(Default::default()),
    );
}
