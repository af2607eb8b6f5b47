//! Seeds, guidance, img2img, inpainting, memory and bad input of the sampling loop.

use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::{Int, Tensor, TensorData};
use ember_core::{Conditioning, Denoiser, Prediction, Result, Scheduler};
use ember_pipelines::guidance::rescale_guidance;
use ember_pipelines::{
    img2img, inpaint, no_hook, sample, ClassifierFreeGuidance, Control, SampleOptions, StepInfo,
};
use serde_json::json;
use std::path::PathBuf;

fn tiny_unet() -> ember_models::UNet2D<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/unet/u2d_ddpm_like");
    ember_models::load_unet::<B>(&dir, &Default::default())
        .unwrap()
        .0
}

fn scheduler(json: serde_json::Value) -> Box<dyn Scheduler<Tensor<B, 4>>> {
    ember_schedulers::from_config_json::<Tensor<B, 4>>(&json).unwrap()
}

fn values(x: Tensor<B, 4>) -> Vec<f32> {
    x.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn a_sample_does_not_depend_on_its_batch_and_seeds_repeat_bit_for_bit() {
    let unet = tiny_unet();
    let device = Default::default();
    let shape = |b| [b, 3, 8, 8];
    // DDPM is stochastic: this covers the initial noise and every step's noise.
    let run = |b: usize, first: u64| {
        let mut s = scheduler(json!({"_class_name": "DDPMScheduler"}));
        let mut opts = SampleOptions::new(6, 1234);
        opts.first_index = first;
        values(
            sample(
                &unet,
                s.as_mut(),
                &Conditioning::none(),
                shape(b),
                &opts,
                &device,
                &mut no_hook(),
            )
            .unwrap(),
        )
    };
    let batch = run(3, 0);
    let again = run(3, 0);
    assert_eq!(batch, again, "same seed, same backend: bit-identical");
    let per = 3 * 8 * 8;
    for i in 0..3u64 {
        let alone = run(1, i);
        let slice = &batch[i as usize * per..(i as usize + 1) * per];
        let err = alone
            .iter()
            .zip(slice)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Identical noise; only the batched kernels' summation order may differ.
        assert!(err <= 1e-5, "sample {i}: {err}");
    }
}

/// A class-conditional toy: output = x + label.
struct AddLabel;
impl Denoiser<B, 4> for AddLabel {
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn forward(
        &self,
        x: Tensor<B, 4>,
        _t: Tensor<B, 1>,
        c: &Conditioning<B>,
    ) -> Result<Tensor<B, 4>> {
        let labels = c.class_labels.clone().unwrap().float();
        let b = labels.dims()[0];
        Ok(x + labels.reshape([b, 1, 1, 1]))
    }
}

fn labels(v: &[i64]) -> Conditioning<B> {
    Conditioning::with_class_labels(Tensor::<B, 1, Int>::from_data(
        TensorData::new(v.to_vec(), [v.len()]),
        &Default::default(),
    ))
}

#[test]
fn guidance_scale_one_is_the_conditional_prediction_and_matches_hand_values() {
    let device = Default::default();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..16).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            [2, 2, 2, 2],
        ),
        &device,
    );
    let t = Tensor::<B, 1>::from_floats([5.0, 5.0], &device);
    let cond = labels(&[3, 1]);
    let null = labels(&[0, 0]);
    // Scale 1: exactly the conditional prediction.
    let g1 = ClassifierFreeGuidance::new(&AddLabel, 1.0, null.clone()).unwrap();
    assert_eq!(
        values(g1.forward(x.clone(), t.clone(), &cond).unwrap()),
        values(AddLabel.forward(x.clone(), t.clone(), &cond).unwrap())
    );
    // Scale 4: u + 4(c − u) = x + 4·label.
    let g4 = ClassifierFreeGuidance::new(&AddLabel, 4.0, null.clone()).unwrap();
    let got = values(g4.forward(x.clone(), t.clone(), &cond).unwrap());
    let xs = values(x.clone());
    for (i, g) in got.iter().enumerate() {
        let label = if i < 8 { 3.0 } else { 1.0 };
        assert!((g - (xs[i] + 4.0 * label)).abs() < 1e-5);
    }
    // Negative conditioning: the unconditional branch is the negative label (2 and 2):
    // u + 2(c − u) = x + 2 + 2(label − 2).
    let neg = ClassifierFreeGuidance::new(&AddLabel, 2.0, labels(&[2, 2])).unwrap();
    let got = values(neg.forward(x.clone(), t.clone(), &cond).unwrap());
    for (i, g) in got.iter().enumerate() {
        let label = if i < 8 { 3.0 } else { 1.0 };
        assert!((g - (xs[i] + 2.0 + 2.0 * (label - 2.0))).abs() < 1e-5);
    }
    // Rescale φ = 0.7 against a hand computation in f64 (torch.std: unbiased).
    let guided = Tensor::<B, 4>::from_data(
        TensorData::new(
            vec![1.0f32, 3.0, -2.0, 0.5, 4.0, 4.5, 5.0, 7.0],
            [2, 1, 2, 2],
        ),
        &device,
    );
    let conditional = Tensor::<B, 4>::from_data(
        TensorData::new(
            vec![0.5f32, 1.0, -1.0, 0.0, 2.0, 1.0, 3.0, 2.5],
            [2, 1, 2, 2],
        ),
        &device,
    );
    let got = values(rescale_guidance(guided.clone(), &conditional, 0.7));
    let (g, c) = (values(guided), values(conditional));
    let std = |v: &[f32]| {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    for s in 0..2 {
        let (gs, cs) = (&g[s * 4..s * 4 + 4], &c[s * 4..s * 4 + 4]);
        let ratio = std(cs) / std(gs);
        for k in 0..4 {
            let want = 0.7 * gs[k] as f64 * ratio + 0.3 * gs[k] as f64;
            assert!(
                (got[s * 4 + k] as f64 - want).abs() < 1e-5,
                "rescale {s},{k}"
            );
        }
    }
}

#[test]
fn img2img_at_strength_zero_returns_the_input() {
    let unet = tiny_unet();
    let device = Default::default();
    let image = Tensor::<B, 4>::random(
        [1, 3, 8, 8],
        ember_core::burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let mut s = scheduler(json!({"_class_name": "DDIMScheduler"}));
    let out = img2img(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        image.clone(),
        0.0,
        &SampleOptions::new(10, 1),
        &mut no_hook(),
    )
    .unwrap();
    assert_eq!(values(out), values(image.clone()));
    // Strength 0.5 of 10 steps runs the last 5.
    let mut s = scheduler(json!({"_class_name": "DDIMScheduler"}));
    let mut steps = 0;
    let mut count = |_: &StepInfo<'_, B, 4>| {
        steps += 1;
        Control::Continue
    };
    img2img(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        image,
        0.5,
        &SampleOptions::new(10, 1),
        &mut count,
    )
    .unwrap();
    assert_eq!(steps, 5);
}

#[test]
fn inpainting_keeps_the_known_region() {
    let unet = tiny_unet();
    let device = Default::default();
    let image = Tensor::<B, 4>::random(
        [1, 3, 8, 8],
        ember_core::burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    // Generate the left half, keep the right half.
    let mask_values: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
    let mask =
        Tensor::<B, 4>::from_data(TensorData::new(mask_values.clone(), [1, 1, 8, 8]), &device);
    for class in [
        "DDIMScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
    ] {
        let mut s = scheduler(json!({"_class_name": class}));
        let out = values(
            inpaint(
                &unet,
                s.as_mut(),
                &Conditioning::none(),
                image.clone(),
                mask.clone(),
                1.0,
                &SampleOptions::new(8, 3),
                &mut no_hook(),
            )
            .unwrap(),
        );
        let img = values(image.clone());
        for c in 0..3 {
            for (p, &m) in mask_values.iter().enumerate() {
                let i = c * 64 + p;
                if m == 0.0 {
                    assert!(
                        (out[i] - img[i]).abs() <= 1e-6,
                        "{class}: kept pixel changed"
                    );
                }
            }
        }
        // The generated half is not the image.
        let diff: f32 = (0..64)
            .filter(|p| mask_values[*p] == 1.0)
            .map(|p| (out[p] - img[p]).abs())
            .sum();
        assert!(diff > 1e-2, "{class}: nothing was generated");
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory stays flat over a 1,000-step run: resident set size (`/proc/self/status` VmRSS)
/// read in the step hook after step 100 (warm) and after step 1,000 must not grow by more
/// than 8 MiB (one step's tensors are ~0.1 MiB, so a per-step leak would show as ≥ 90 MiB).
#[test]
#[cfg(target_os = "linux")]
fn memory_is_flat_over_a_thousand_steps() {
    let unet = tiny_unet();
    let device = Default::default();
    let mut s = scheduler(json!({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}));
    let mut at_100 = 0u64;
    let mut at_end = 0u64;
    let mut hook = |info: &StepInfo<'_, B, 4>| {
        if info.step == 99 {
            at_100 = rss_kb();
        }
        if info.step + 1 == info.total {
            at_end = rss_kb();
        }
        Control::Continue
    };
    let opts = SampleOptions::new(1000, 9);
    sample(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        [1, 3, 8, 8],
        &opts,
        &device,
        &mut hook,
    )
    .unwrap();
    println!(
        "RSS after step 100: {} KiB, after step 1000: {} KiB",
        at_100, at_end
    );
    assert!(at_100 > 0);
    assert!(
        at_end <= at_100 + 8 * 1024,
        "RSS grew from {at_100} KiB to {at_end} KiB"
    );
}

#[test]
fn zero_steps_and_bad_masks_are_errors() {
    let unet = tiny_unet();
    let device = Default::default();
    let mut s = scheduler(json!({"_class_name": "DDIMScheduler"}));
    let e = sample(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        [1, 3, 8, 8],
        &SampleOptions::new(0, 1),
        &device,
        &mut no_hook(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("steps"), "{e}");
    let image = Tensor::<B, 4>::zeros([1, 3, 8, 8], &device);
    let bad_mask = Tensor::<B, 4>::full([1, 1, 8, 8], 2.0, &device);
    let e = inpaint(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        image.clone(),
        bad_mask,
        1.0,
        &SampleOptions::new(4, 1),
        &mut no_hook(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
    let wrong_size = Tensor::<B, 4>::zeros([1, 1, 4, 4], &device);
    let e = inpaint(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        image.clone(),
        wrong_size,
        1.0,
        &SampleOptions::new(4, 1),
        &mut no_hook(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("mask") && !e.to_string().contains('\n'),
        "{e}"
    );
    let e = img2img(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        image,
        1.5,
        &SampleOptions::new(4, 1),
        &mut no_hook(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("strength"), "{e}");
}

/// A 5-D (video) x₀ oracle: predicts the clip `target` for any input.
struct VideoOracle(Tensor<B, 5>);
impl Denoiser<B, 5> for VideoOracle {
    fn prediction(&self) -> Prediction {
        Prediction::Sample
    }
    fn forward(
        &self,
        x: Tensor<B, 5>,
        _t: Tensor<B, 1>,
        _c: &Conditioning<B>,
    ) -> Result<Tensor<B, 5>> {
        Ok(self.0.clone().expand(x.dims()))
    }
}

#[test]
fn the_same_loop_samples_five_dimensional_videos() {
    let device = Default::default();
    let target = Tensor::<B, 5>::random(
        [1, 2, 3, 4, 4],
        ember_core::burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let mut s = ember_schedulers::from_config_json::<Tensor<B, 5>>(&json!({
        "_class_name": "DDIMScheduler", "prediction_type": "sample", "clip_sample": false
    }))
    .unwrap();
    let out = sample(
        &VideoOracle(target.clone()),
        s.as_mut(),
        &Conditioning::none(),
        [1, 2, 3, 4, 4],
        &SampleOptions::new(10, 5),
        &device,
        &mut no_hook(),
    )
    .unwrap();
    let err: f32 = (out - target).abs().max().into_scalar();
    assert!(err < 1e-5, "{err}");
}

#[test]
fn hooks_see_x0_previews_and_can_stop_early() {
    let unet = tiny_unet();
    let device = Default::default();
    let mut s = scheduler(json!({"_class_name": "DDIMScheduler"}));
    let mut seen = Vec::new();
    let mut hook = |info: &StepInfo<'_, B, 4>| {
        // DDIM reports its x₀ prediction at every step: a preview of the final image.
        assert_eq!(
            info.pred_original_sample.map(|p| p.dims()),
            Some([1, 3, 8, 8])
        );
        seen.push(info.timestep);
        if info.step == 3 {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let out = sample(
        &unet,
        s.as_mut(),
        &Conditioning::none(),
        [1, 3, 8, 8],
        &SampleOptions::new(10, 2),
        &device,
        &mut hook,
    )
    .unwrap();
    assert_eq!(seen.len(), 4, "stopped after the 4th step");
    assert_eq!(seen, s.timesteps()[..4].to_vec());
    assert_eq!(out.dims(), [1, 3, 8, 8]);
}
