//! Image transforms on `[C, H, W]` row-major f32 buffers.

use ember_core::{Error, Result};
use rand::Rng;

/// Maps intensities from `[0, 1]` to `[-1, 1]` (`2x − 1`), the range diffusion models train on.
pub fn to_signed_unit(image: &mut [f32]) {
    for v in image {
        *v = 2.0 * *v - 1.0;
    }
}

/// Mirrors each row (left ↔ right).
pub fn horizontal_flip(image: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for row in image.chunks_mut(width) {
        row.reverse();
    }
}

/// The `[C, size_h, size_w]` window of a `[C, H, W]` image starting at `(top, left)`.
fn crop_at(
    image: &[f32],
    [c, h, w]: [usize; 3],
    [size_h, size_w]: [usize; 2],
    top: usize,
    left: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * size_h * size_w);
    for ch in 0..c {
        for y in top..top + size_h {
            let row = (ch * h + y) * w;
            out.extend_from_slice(&image[row + left..row + left + size_w]);
        }
    }
    out
}

fn check_crop(image: &[f32], shape: [usize; 3], size: [usize; 2]) -> Result<()> {
    let [c, h, w] = shape;
    if image.len() != c * h * w {
        return Err(Error::Shape {
            what: "image".into(),
            expected: format!("{c}×{h}×{w} = {} values", c * h * w),
            got: vec![image.len()],
        });
    }
    if size[0] == 0 || size[1] == 0 || size[0] > h || size[1] > w {
        return Err(Error::argument(
            "crop size",
            format!("{}×{} does not fit a {h}×{w} image", size[0], size[1]),
        ));
    }
    Ok(())
}

/// The centred `size` window of a `[C, H, W]` image (offsets rounded down, as torchvision's
/// `CenterCrop` rounds).
pub fn center_crop(image: &[f32], shape: [usize; 3], size: [usize; 2]) -> Result<Vec<f32>> {
    check_crop(image, shape, size)?;
    let top = ((shape[1] - size[0]) as f64 / 2.0).round() as usize;
    let left = ((shape[2] - size[1]) as f64 / 2.0).round() as usize;
    Ok(crop_at(image, shape, size, top, left))
}

/// A uniformly placed `size` window of a `[C, H, W]` image.
pub fn random_crop(
    image: &[f32],
    shape: [usize; 3],
    size: [usize; 2],
    rng: &mut impl Rng,
) -> Result<Vec<f32>> {
    check_crop(image, shape, size)?;
    let top = rng.random_range(0..=shape[1] - size[0]);
    let left = rng.random_range(0..=shape[2] - size[1]);
    Ok(crop_at(image, shape, size, top, left))
}

/// One output position of a 1-D resampling pass: the first input index it reads and the
/// normalised weights of the inputs from there on.
struct Taps {
    start: usize,
    weights: Vec<f64>,
}

/// The triangle-filter taps that resample `in_len` positions to `out_len` (both non-zero),
/// as Pillow's `Image.resize(..., BILINEAR)` computes them: pixel centres at `i + 0.5`, the
/// filter stretched by the downscale factor when shrinking (antialiasing), weights cut at
/// the borders and renormalised.
fn triangle_taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    // The triangle's support is 1; when shrinking it widens to cover `scale` inputs.
    let stretch = scale.max(1.0);
    (0..out_len)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = (center - stretch + 0.5).floor().max(0.0) as usize;
            let hi = ((center + stretch + 0.5).floor() as usize).min(in_len);
            let mut weights: Vec<f64> = (lo..hi)
                .map(|x| (1.0 - ((x as f64 + 0.5 - center) / stretch).abs()).max(0.0))
                .collect();
            // Drop zero weights at either end (they would turn an infinite input into NaN).
            let first = weights.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last = weights.iter().rposition(|&w| w > 0.0).map_or(0, |p| p + 1);
            weights.truncate(last);
            weights.drain(..first.min(weights.len()));
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps {
                start: lo + first,
                weights,
            }
        })
        .collect()
}

/// Resizes a `[C, H, W]` image to `[C, new_h, new_w]` with a bilinear (triangle) filter,
/// antialiased when shrinking: the filter's support grows with the downscale factor, as in
/// Pillow's `resize(..., Image.BILINEAR)` and torchvision's `Resize(antialias=True)`, so a
/// 2× reduction blends 4 inputs per output along each axis (weights ⅛, ⅜, ⅜, ⅛) rather than
/// skipping pixels. Upscaling is plain bilinear interpolation with half-pixel centres
/// (`align_corners=False`), edges clamped. The same size returns an exact copy. Width is
/// resampled first, then height; sums are taken in f64.
///
/// Fails with a one-line error when `image` does not hold `channels·h·w` values or any size
/// is zero.
pub fn resize(
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    new_h: usize,
    new_w: usize,
) -> Result<Vec<f32>> {
    if [channels, h, w, new_h, new_w].contains(&0) {
        return Err(Error::argument(
            "resize",
            format!("sizes must be non-zero (image {channels}×{h}×{w}, target {new_h}×{new_w})"),
        ));
    }
    let len = channels
        .checked_mul(h)
        .and_then(|n| n.checked_mul(w))
        .filter(|&n| n == image.len());
    if len.is_none() {
        return Err(Error::Shape {
            what: "image".into(),
            expected: format!("{channels}×{h}×{w} values"),
            got: vec![image.len()],
        });
    }
    if (h, w) == (new_h, new_w) {
        return Ok(image.to_vec());
    }
    // Width pass: [C, H, W] → [C, H, new_w].
    let mut rows: Vec<f64> = image.iter().map(|&v| v as f64).collect();
    if w != new_w {
        let taps = triangle_taps(w, new_w);
        let mut out = Vec::with_capacity(channels * h * new_w);
        for row in rows.chunks_exact(w) {
            for t in &taps {
                let src = &row[t.start..t.start + t.weights.len()];
                out.push(src.iter().zip(&t.weights).map(|(v, k)| v * k).sum());
            }
        }
        rows = out;
    }
    // Height pass: [C, H, new_w] → [C, new_h, new_w].
    if h != new_h {
        let taps = triangle_taps(h, new_h);
        let mut out = vec![0.0f64; channels * new_h * new_w];
        for (plane_in, plane_out) in rows
            .chunks_exact(h * new_w)
            .zip(out.chunks_exact_mut(new_h * new_w))
        {
            for (t, row_out) in taps.iter().zip(plane_out.chunks_exact_mut(new_w)) {
                for (k, &weight) in t.weights.iter().enumerate() {
                    let row_in = &plane_in[(t.start + k) * new_w..(t.start + k + 1) * new_w];
                    for (o, v) in row_out.iter_mut().zip(row_in) {
                        *o += weight * v;
                    }
                }
            }
        }
        rows = out;
    }
    Ok(rows.into_iter().map(|v| v as f32).collect())
}
