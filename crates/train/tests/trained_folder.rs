//! Proof 4 of the training issue, without Python: a pipeline folder written by
//! `ember train` (24 steps of the tiny shapes config in `crates/cli/tests/train.rs`,
//! committed in `fixtures/trained_tiny`) loaded by diffusers gave
//! `fixtures/trained_tiny_forward/expected.safetensors` for `inputs.safetensors`
//! (`tools/reference/check_trained_folder.py --write-fixture`, diffusers 0.42.1). Ember,
//! loading the same folder as a pipeline, must give the same output.

use ember_core::backend::DefaultBackend as B;
use ember_core::Denoiser;
use ember_models::io::{read_forward_inputs, read_tensors, HostTensorValue};
use ember_pipelines::folder::{load_pipeline, SchedulerChoice};
use std::path::Path;

#[test]
fn trained_folder_matches_diffusers_forward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let device = Default::default();
    let pipeline = load_pipeline::<B>(
        &root.join("trained_tiny"),
        &SchedulerChoice::Folder,
        &device,
    )
    .unwrap();
    assert_eq!(pipeline.class_name, "DDPMPipeline");
    assert_eq!(pipeline.scheduler.class_name(), "DDPMScheduler");
    let inputs = read_forward_inputs::<B>(
        &root.join("trained_tiny_forward/inputs.safetensors"),
        &device,
    )
    .unwrap();
    let out = pipeline
        .unet
        .forward(inputs.sample, inputs.timesteps, &inputs.conditioning)
        .unwrap();
    let got = out.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let expected = match &read_tensors(&root.join("trained_tiny_forward/expected.safetensors"))
        .unwrap()["sample"]
    {
        HostTensorValue::Float(w) => w.values.clone(),
        _ => panic!("expected a float `sample`"),
    };
    assert_eq!(got.len(), expected.len());
    let max_ref = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(&expected)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // Same bound as the U-Net parity suite (f32, different summation orders): 1e-4 of the
    // output's scale. The script measured 7.2e-7 against max |ref| 1.35.
    assert!(
        max_diff <= 1e-4 * max_ref.max(1.0),
        "max |Δ| {max_diff} (max |ref| {max_ref})"
    );
}
