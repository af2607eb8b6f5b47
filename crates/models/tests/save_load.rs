//! Saving writes diffusers' layout back: load → save → load gives bit-identical tensors
//! and outputs, and the saved config is the one read.

use ember_core::backend::DefaultBackend as B;
use ember_core::Denoiser;
use ember_models::io::read_forward_inputs;
use ember_models::weights::read_folder_weights;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unet")
        .join(name)
}

#[test]
fn load_save_load_is_identical() {
    let device = Default::default();
    for case in [
        "c2d_sdxl_like_text_time",
        "u2d_ncsnpp_fourier_skip",
        "load_legacy_attention_keys",
        "load_sharded",
    ] {
        let src = fixture(case);
        let out =
            std::env::temp_dir().join(format!("ember-save-load-{}-{case}", std::process::id()));
        let (first, _) = ember_models::load_unet::<B>(&src, &device).unwrap();
        ember_models::save_unet(&first, &out).unwrap();
        let (second, report) = ember_models::load_unet::<B>(&out, &device).unwrap();
        assert!(
            report.is_exact() && report.renamed.is_empty(),
            "{case}: {}",
            report.problems()
        );

        // Every tensor is bit-identical, under diffusers' (new-style) names.
        let a = read_folder_weights(&out).unwrap();
        ember_models::save_unet(&second, &out).unwrap();
        let b = read_folder_weights(&out).unwrap();
        assert_eq!(a.len(), b.len());
        for (k, w) in &a {
            assert_eq!(w.values, b[k].values, "{case}: {k} changed");
            assert_eq!(w.shape, b[k].shape);
        }
        // The config round-trips.
        let c1: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let c2: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(c1, c2, "{case}: config changed");
        // And the outputs are identical.
        let inp = read_forward_inputs::<B>(&src.join("inputs.safetensors"), &device).unwrap();
        let y1 = first
            .forward(inp.sample.clone(), inp.timesteps.clone(), &inp.conditioning)
            .unwrap();
        let y2 = second
            .forward(inp.sample, inp.timesteps, &inp.conditioning)
            .unwrap();
        assert_eq!(
            y1.into_data().to_vec::<f32>().unwrap(),
            y2.into_data().to_vec::<f32>().unwrap(),
            "{case}"
        );
        std::fs::remove_dir_all(&out).ok();
    }
}
