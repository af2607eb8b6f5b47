//! Proof 1 of the training issue: a 2-D Gaussian mixture trains in seconds, and the
//! samples' moments and component weights match the data's.

use ember_core::backend::DefaultBackend as B;
use ember_train::{train, RunOptions, TrainConfig};

fn config(dir: &std::path::Path, steps: usize) -> TrainConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/mixture2d.toml"
    ))
    .unwrap();
    let mut c = TrainConfig::from_toml_str(&text, "mixture2d.toml").unwrap();
    c.output_dir = dir.to_path_buf();
    c.train.steps = steps;
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn mixture_samples_match_the_data() {
    let dir = temp_dir("mixture");
    let c = config(&dir, 3000);
    let summary = train::<B>(
        &c,
        &RunOptions {
            verbose: true,
            ..Default::default()
        },
        &[Default::default()],
    )
    .unwrap();
    eprintln!("{summary:?}");
    let device = Default::default();
    let (model, _) =
        ember_models::load_mlp::<B>(&summary.pipeline_dir.join("model"), &device).unwrap();
    let data = ember_train::data::load(&c.data, c.seed).unwrap();
    let mixture = ember_train::data::mixture(&c.data).unwrap();
    for name in ["DDIMScheduler", "DPMSolverMultistepScheduler"] {
        let generated =
            ember_train::trainer::generate::<B, _, 2>(&model, &data.train, &c, name, &device)
                .unwrap();
        let (samples, n) = (generated.values, generated.shape[0]);
        let pts: Vec<[f64; 2]> = samples
            .chunks_exact(2)
            .map(|p| [p[0] as f64, p[1] as f64])
            .collect();
        let mean = [0, 1].map(|k| pts.iter().map(|p| p[k]).sum::<f64>() / n as f64);
        let cov = [[0, 0], [0, 1], [1, 1]].map(|[a, b]| {
            pts.iter()
                .map(|p| (p[a] - mean[a]) * (p[b] - mean[b]))
                .sum::<f64>()
                / (n - 1) as f64
        });
        let m = mixture.mean();
        let s = mixture.covariance();
        let means: Vec<[f64; 2]> = (0..8)
            .map(|k| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / 8.0;
                [2.0 * a.cos(), 2.0 * a.sin()]
            })
            .collect();
        let mut counts = [0usize; 8];
        let mut spread = [0.0f64; 8];
        let mut near = 0usize;
        for p in &pts {
            let (k, d2) = means
                .iter()
                .enumerate()
                .map(|(k, c)| (k, (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)))
                .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
            counts[k] += 1;
            spread[k] += d2;
            if d2.sqrt() < 3.0 * 0.2 {
                near += 1;
            }
        }
        let stds: Vec<f64> = (0..8)
            .map(|k| (spread[k] / counts[k] as f64 / 2.0).sqrt())
            .collect();
        eprintln!(
            "{name}: mean {mean:?}, cov {cov:?} (data {s:?}), counts {counts:?}, per-component std {stds:?}, within 3 std {near}/{n}"
        );
        // Mean: the data's is 0; the sampling error alone is √(2.04/4000) ≈ 0.023 per axis.
        assert!(
            mean.iter().all(|v| v.abs() < 0.1),
            "{name}: mean {mean:?} vs {m:?}"
        );
        // Covariance 2.04·I: 7 % on the variances, 0.15 on the covariance.
        assert!(
            (cov[0] - s[0][0]).abs() < 0.15 && (cov[2] - s[1][1]).abs() < 0.15,
            "{name}: cov {cov:?}"
        );
        assert!(cov[1].abs() < 0.15, "{name}: cov {cov:?}");
        // Component weights 1/8 = 0.125 each: within 0.025 (sampling error 0.005).
        for (k, &c) in counts.iter().enumerate() {
            let w = c as f64 / n as f64;
            assert!(
                (w - 0.125).abs() < 0.025,
                "{name}: component {k} weight {w}"
            );
        }
        // Samples sit on the components: a 3000-step model is blurrier than the data
        // (σ 0.2), but every component's spread stays below 2σ and most samples within 3σ.
        assert!(
            stds.iter().all(|&v| v < 0.4),
            "{name}: per-component std {stds:?}"
        );
        assert!(near as f64 / n as f64 > 0.7, "{name}: {near}/{n} within 3σ");
    }
}
