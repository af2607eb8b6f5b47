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
