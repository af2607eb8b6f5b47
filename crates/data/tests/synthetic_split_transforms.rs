//! The synthetic mixture's samples against its exact moments, seeded splits, and transforms.

use ember_data::split::{shuffled_indices, train_validation_split};
use ember_data::synthetic::GaussianMixture2d;
use ember_data::transforms::{center_crop, horizontal_flip, random_crop, to_signed_unit};
use rand::SeedableRng;

fn mixture() -> GaussianMixture2d {
    GaussianMixture2d::new(
        vec![1.0, 3.0],
        vec![[-2.0, 0.5], [1.5, -1.0]],
        vec![[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]],
    )
    .unwrap()
}

#[test]
fn mixture_samples_match_its_exact_moments_and_weights() {
    let m = mixture();
    assert_eq!(m.weights, vec![0.25, 0.75]);
    let n = 200_000;
    let (points, labels) = m.sample(n, 7);
    assert_eq!((points.len(), labels.len()), (n, n));
    let frac1 = labels.iter().filter(|&&l| l == 1).count() as f64 / n as f64;
    // Binomial standard error sqrt(0.25·0.75/n) ≈ 1e-3; allow 5 of them.
    assert!((frac1 - 0.75).abs() < 5e-3, "component weight {frac1}");
    let mean = [0, 1].map(|d| points.iter().map(|p| p[d] as f64).sum::<f64>() / n as f64);
    let want = m.mean();
    let cov = m.covariance();
    for d in 0..2 {
        // Standard error of a mean: sqrt(var / n) < 5e-3 here; allow 5 of them.
        assert!(
            (mean[d] - want[d]).abs() < 2.5e-2,
            "mean[{d}] {} vs {}",
            mean[d],
            want[d]
        );
    }
    let mut c = [[0.0; 2]; 2];
    for p in &points {
        for i in 0..2 {
            for j in 0..2 {
                c[i][j] += (p[i] as f64 - mean[i]) * (p[j] as f64 - mean[j]) / n as f64;
            }
        }
    }
    for i in 0..2 {
        for j in 0..2 {
            // Relative to the total variance (~2.3): a 2 % band is > 5 standard errors.
            assert!(
                (c[i][j] - cov[i][j]).abs() < 0.05,
                "cov[{i}][{j}] {} vs {}",
                c[i][j],
                cov[i][j]
            );
        }
    }
    // Seeded: the same seed gives the same points, another seed different ones.
    assert_eq!(m.sample(10, 7), m.sample(10, 7));
    assert_ne!(m.sample(10, 7).0, m.sample(10, 8).0);
}

#[test]
fn bad_mixtures_are_errors() {
    let cov = [[1.0, 0.0], [0.0, 1.0]];
    for (w, m, c) in [
        (vec![], vec![], vec![]),
        (vec![1.0], vec![[0.0, 0.0]; 2], vec![cov]),
        (vec![-1.0], vec![[0.0, 0.0]], vec![cov]),
        (vec![f64::NAN], vec![[0.0, 0.0]], vec![cov]),
        (vec![1.0], vec![[0.0, 0.0]], vec![[[1.0, 2.0], [2.0, 1.0]]]),
        (vec![1.0], vec![[0.0, 0.0]], vec![[[1.0, 0.5], [0.0, 1.0]]]),
        (vec![1.0], vec![[f64::INFINITY, 0.0]], vec![cov]),
    ] {
        let err = GaussianMixture2d::new(w, m, c).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }
    let ring = GaussianMixture2d::ring(8, 2.0, 0.1).unwrap();
    assert_eq!(ring.means.len(), 8);
    assert!(ring.mean().iter().all(|v| v.abs() < 1e-12));
}

#[test]
fn splits_are_seeded_disjoint_and_complete() {
    let a = shuffled_indices(100, 3);
    assert_eq!(a, shuffled_indices(100, 3));
    assert_ne!(a, shuffled_indices(100, 4));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());

    let (train, val) = train_validation_split(1000, 0.1, 5).unwrap();
    assert_eq!((train.len(), val.len()), (900, 100));
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<_>>());
    assert_eq!(train_validation_split(10, 0.0, 1).unwrap().1.len(), 0);
    for bad in [1.0, -0.1, f64::NAN] {
        assert!(train_validation_split(10, bad, 1).is_err());
    }
}

#[test]
fn transforms_move_the_right_pixels() {
    // 2 channels of a 3×4 image, value = 100·c + 10·y + x.
    let (c, h, w) = (2, 3, 4);
    let img: Vec<f32> = (0..c * h * w)
        .map(|i| (100 * (i / (h * w)) + 10 * ((i / w) % h) + i % w) as f32)
        .collect();
    let mut flipped = img.clone();
    horizontal_flip(&mut flipped, w);
    assert_eq!(&flipped[..4], &[3.0, 2.0, 1.0, 0.0]);
    assert_eq!(&flipped[12..16], &[103.0, 102.0, 101.0, 100.0]);

    let centre = center_crop(&img, [c, h, w], [1, 2]).unwrap();
    assert_eq!(centre, vec![11.0, 12.0, 111.0, 112.0]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..20 {
        let crop = random_crop(&img, [c, h, w], [2, 2], &mut rng).unwrap();
        let (y, x) = (((crop[0] as usize) / 10) % 10, crop[0] as usize % 10);
        assert!(y <= 1 && x <= 2);
        assert_eq!(
            crop,
            vec![
                crop[0],
                crop[0] + 1.0,
                crop[0] + 10.0,
                crop[0] + 11.0,
                crop[0] + 100.0,
                crop[0] + 101.0,
                crop[0] + 110.0,
                crop[0] + 111.0,
            ]
        );
    }
    assert!(center_crop(&img, [c, h, w], [4, 2]).is_err());
    assert!(center_crop(&img, [c, h, w], [0, 2]).is_err());
    assert!(center_crop(&img[1..], [c, h, w], [1, 1]).is_err());

    let mut unit = vec![0.0, 0.5, 1.0];
    to_signed_unit(&mut unit);
    assert_eq!(unit, vec![-1.0, 0.0, 1.0]);
}
