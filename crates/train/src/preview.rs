//! Pictures of samples: a grid of images, or a scatter plot of 2-D points.

use ember_core::{Error, Result};
use image::{ImageBuffer, Luma, Rgb, RgbImage};
use std::path::Path;

/// A `[B, C, H, W]` batch in model space (`[-1, 1]`) as one grid of 8-bit RGB pixels with
/// `cols` columns (`round((x / 2 + 0.5).clamp(0, 1) · 255)`, as diffusers' pipelines).
/// One-channel images become grey; three channels are RGB; other channel counts use the
/// first channel.
pub fn image_grid(values: &[f32], shape: [usize; 4], cols: usize) -> Result<RgbImage> {
    let [b, c, h, w] = shape;
    if values.len() != b * c * h * w || c == 0 {
        return Err(Error::Shape {
            what: "grid values".into(),
            expected: format!("{} values for {shape:?}", b * c * h * w),
            got: vec![values.len()],
        });
    }
    let cols = cols.clamp(1, b.max(1));
    let rows = b.div_ceil(cols);
    let mut img = RgbImage::new((cols * w) as u32, (rows * h) as u32);
    let px = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
    for i in 0..b {
        let (gx, gy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| px(values[((i * c + ch) * h + y) * w + x]);
                let rgb = if c == 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                img.put_pixel((gx + x) as u32, (gy + y) as u32, Rgb(rgb));
            }
        }
    }
    Ok(img)
}

/// Near-square column count for `b` images.
pub fn square_columns(b: usize) -> usize {
    (b as f64).sqrt().ceil().max(1.0) as usize
}

/// Writes `img` as a PNG: grey when `grey` (every pixel has R = G = B), else RGB.
pub fn write_png(path: &Path, img: &RgbImage, grey: bool) -> Result<()> {
    let io = |e: image::ImageError| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    if grey {
        let (w, h) = img.dimensions();
        let g: ImageBuffer<Luma<u8>, Vec<u8>> =
            ImageBuffer::from_fn(w, h, |x, y| Luma([img.get_pixel(x, y).0[0]]));
        g.save_with_format(path, image::ImageFormat::Png)
            .map_err(io)
    } else {
        img.save_with_format(path, image::ImageFormat::Png)
            .map_err(io)
    }
}

/// A `size`×`size` scatter plot of 2-D points (`[N, 2]` row-major), coloured by `labels`
/// when given, over the square `[-extent, extent]²`; points outside are clamped to the
/// border.
pub fn scatter_plot(
    points: &[f32],
    labels: Option<&[usize]>,
    extent: f32,
    size: usize,
) -> RgbImage {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 57, 70],
        [69, 123, 157],
        [42, 157, 143],
        [233, 196, 106],
        [244, 162, 97],
        [131, 56, 236],
        [58, 134, 255],
        [255, 0, 110],
    ];
    let mut img = RgbImage::from_pixel(size as u32, size as u32, Rgb([250, 250, 250]));
    let to_px = |v: f32| {
        let u = ((v / extent) * 0.5 + 0.5).clamp(0.0, 1.0);
        ((u * (size - 1) as f32).round() as i64).clamp(0, size as i64 - 1)
    };
    for (i, p) in points.chunks_exact(2).enumerate() {
        let colour = labels.map_or([20, 20, 20], |l| PALETTE[l[i] % PALETTE.len()]);
        let (x, y) = (to_px(p[0]), to_px(-p[1]));
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (px, py) = (x + dx, y + dy);
                if (0..size as i64).contains(&px) && (0..size as i64).contains(&py) {
                    img.put_pixel(px as u32, py as u32, Rgb(colour));
                }
            }
        }
    }
    img
}
