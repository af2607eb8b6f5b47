//! End-to-end sampling parity with diffusers 0.42.1: a tiny UNet2DModel pipeline folder
//! written by diffusers (`tests/fixtures/ddpm_tiny`), 17 deterministic scheduler
//! configurations, the same initial noise (`latents.safetensors`), 10 steps each;
//! diffusers' own loop (`tools/reference/make_pipeline_fixtures.py`) against
//! `ember_pipelines::sample_from_noise`.
//!
//! Tolerance per case (from `cases.json`): max(2e-4, 10 × diffusers' own float32-vs-float64
//! spread). The untrained model does not remove the noise, so unclipped samplers end near
//! |x| ≈ 300–800, where float32 itself differs by ~1e-4.

use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::{Tensor, TensorData};
use ember_core::Conditioning;
use ember_models::io::{read_tensors, HostTensorValue};
use ember_pipelines::{load_pipeline, no_hook, sample_from_noise, SampleOptions, SchedulerChoice};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn float(path: PathBuf, name: &str) -> (Vec<usize>, Vec<f32>) {
    match &read_tensors(&path).unwrap()[name] {
        HostTensorValue::Float(w) => (w.shape.clone(), w.values.clone()),
        _ => panic!("{name} is not float"),
    }
}

#[test]
fn every_scheduler_matches_diffusers_end_to_end() {
    let device = Default::default();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let (shape, latents) = float(fixtures().join("latents.safetensors"), "latents");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let detail: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("cases/{name}.json"))).unwrap(),
        )
        .unwrap();
        let mut config = detail["scheduler_config"].clone();
        // Non-finite values were written as null; they are the classes' defaults (−∞).
        if let Some(nonfinite) = detail["scheduler_config_nonfinite"].as_object() {
            for key in nonfinite.keys() {
                config.as_object_mut().unwrap().remove(key);
            }
        }
        let config_path =
            std::env::temp_dir().join(format!("ember-parity-{}-{name}.json", std::process::id()));
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let mut pipe = load_pipeline::<B>(
            &fixtures().join("ddpm_tiny"),
            &SchedulerChoice::ConfigFile(config_path.clone()),
            &device,
        )
        .unwrap();
        std::fs::remove_file(&config_path).ok();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(latents.clone(), [shape[0], shape[1], shape[2], shape[3]]),
            &device,
        );
        let out = sample_from_noise(
            &pipe.unet,
            pipe.scheduler.as_mut(),
            &Conditioning::none(),
            x,
            &SampleOptions::new(steps, 0),
            &mut no_hook(),
        )
        .unwrap();
        let got: Vec<f32> = out.into_data().convert::<f32>().into_vec().unwrap();
        let (_, want) = float(
            fixtures().join(format!("cases/{name}.safetensors")),
            "sample",
        );
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(
                0.0,
                |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
            );
        let tol = case["tolerance"].as_f64().unwrap();
        println!(
            "{name:18} max-abs-err {err:.2e}  tolerance {tol:.1e}  (max |x| {:.1})",
            case["max_abs_output"].as_f64().unwrap()
        );
        if err > tol {
            failures.push(format!("{name}: {err:.3e} > {tol:.1e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
