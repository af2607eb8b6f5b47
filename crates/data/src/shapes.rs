//! Coloured shapes: a seeded synthetic image set with known classes, small and quick to
//! learn, for checking class-conditional image models end to end.
//!
//! Each image is one filled [`Shape`] (circle, square or upward-pointing triangle) in one of
//! a few bright colours, at a random position and size, on a dark uniform background
//! ([`BACKGROUND`]). Edges are antialiased (each pixel is blended by how far its centre lies
//! inside the shape). The label is the shape's class, [`Shape::label`].
//!
//! ```
//! use ember_data::shapes::{ColouredShapes, Shape};
//!
//! let set = ColouredShapes::new(16)?.generate(8, 0);
//! assert_eq!((set.len(), set.channels, set.height, set.width), (8, 3, 16, 16));
//! assert_eq!(set.num_classes, Shape::ALL.len());
//! # Ok::<(), ember_core::Error>(())
//! ```

use crate::LabeledImages;
use ember_core::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The background colour, RGB in `[0, 1]`: a dark grey.
pub const BACKGROUND: [f32; 3] = [0.1, 0.1, 0.1];

/// The default palette, RGB in `[0, 1]`: red, green, blue, yellow, magenta, cyan.
pub const DEFAULT_COLOURS: [[f32; 3]; 6] = [
    [0.9, 0.15, 0.15],
    [0.2, 0.8, 0.25],
    [0.2, 0.4, 0.95],
    [0.95, 0.85, 0.2],
    [0.85, 0.25, 0.85],
    [0.2, 0.85, 0.85],
];

/// Smallest image side [`ColouredShapes::new`] accepts.
pub const MIN_SIZE: usize = 8;

/// A shape class. Its label (the index in [`Shape::ALL`]) is what
/// [`ColouredShapes::generate`] stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc; label 0.
    Circle,
    /// An axis-aligned square; label 1.
    Square,
    /// An equilateral triangle pointing up; label 2.
    Triangle,
}

impl Shape {
    /// Every shape, in label order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The class label: 0 circle, 1 square, 2 triangle.
    pub fn label(self) -> u8 {
        self as u8
    }

    /// The shape with this label, if there is one.
    pub fn from_label(label: u8) -> Option<Shape> {
        Shape::ALL.get(label as usize).copied()
    }

    /// The shape's name in lower case ("circle", "square", "triangle").
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Signed distance in pixels from `(x, y)` to the shape's outline (negative inside), for
    /// a shape centred at `(cx, cy)` whose bounding box has half-width `r`. The triangle's
    /// is the largest of its three edge distances: exact inside and along the edges, a
    /// slight underestimate beyond the corners, which only matters for antialiasing.
    fn distance(self, x: f32, y: f32, cx: f32, cy: f32, r: f32) -> f32 {
        let (dx, dy) = (x - cx, y - cy);
        match self {
            Shape::Circle => (dx * dx + dy * dy).sqrt() - r,
            Shape::Square => {
                let (qx, qy) = (dx.abs() - r, dy.abs() - r);
                let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
                outside + qx.max(qy).min(0.0)
            }
            Shape::Triangle => {
                // Side 2r, height r√3, centred in its bounding box; y grows downwards.
                let half_height = r * 3f32.sqrt() / 2.0;
                let base = dy - half_height;
                // The slanted edges' outward normals are (±√3/2, −1/2); the apex is at
                // (0, −half_height), which each edge passes through.
                let slant = 3f32.sqrt() / 2.0 * dx.abs() - 0.5 * (dy + half_height);
                base.max(slant)
            }
        }
    }
}

/// Generator of coloured-shape images of one size and palette.
#[derive(Debug, Clone, PartialEq)]
pub struct ColouredShapes {
    size: usize,
    colours: Vec<[f32; 3]>,
}

impl ColouredShapes {
    /// `size`×`size` RGB images with the [`DEFAULT_COLOURS`]; fails when `size` is below
    /// [`MIN_SIZE`].
    pub fn new(size: usize) -> Result<Self> {
        if size < MIN_SIZE {
            return Err(Error::argument(
                "size",
                format!("{size} is below the smallest shapes image side, {MIN_SIZE}"),
            ));
        }
        Ok(Self {
            size,
            colours: DEFAULT_COLOURS.to_vec(),
        })
    }

    /// The same generator with another palette (RGB in `[0, 1]`); fails when `colours` is
    /// empty, a value is outside `[0, 1]`, or a colour is within 0.2 of [`BACKGROUND`] in
    /// every channel (it would not stand out).
    pub fn with_colours(mut self, colours: Vec<[f32; 3]>) -> Result<Self> {
        if colours.is_empty() {
            return Err(Error::argument("colours", "the palette is empty"));
        }
        for c in &colours {
            if !c.iter().all(|v| (0.0..=1.0).contains(v)) {
                return Err(Error::argument(
                    "colours",
                    format!("{c:?} has a value outside [0, 1]"),
                ));
            }
            if c.iter().zip(BACKGROUND).all(|(v, b)| (v - b).abs() < 0.2) {
                return Err(Error::argument(
                    "colours",
                    format!("{c:?} is too close to the background {BACKGROUND:?}"),
                ));
            }
        }
        self.colours = colours;
        Ok(self)
    }

    /// Image side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The palette shapes are drawn in.
    pub fn colours(&self) -> &[[f32; 3]] {
        &self.colours
    }

    /// `n` images `[N, 3, size, size]` in `[0, 1]`, reproducible from `seed` (ChaCha8).
    /// Labels are shape classes ([`Shape::label`]: 0 circle, 1 square, 2 triangle; 3
    /// classes), drawn uniformly. Each shape's bounding box is 30–70 % of the side and lies
    /// wholly inside the image (one pixel of margin); its colour is drawn uniformly from the
    /// palette.
    pub fn generate(&self, n: usize, seed: u64) -> LabeledImages {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let side = self.size;
        let plane = side * side;
        let mut pixels = Vec::with_capacity(n * 3 * plane);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
            let colour = self.colours[rng.random_range(0..self.colours.len())];
            let s = side as f32;
            let r = rng.random_range(0.15 * s..=0.35 * s);
            let (lo, hi) = (r + 1.0, s - r - 1.0);
            let cx = rng.random_range(lo..=hi);
            let cy = rng.random_range(lo..=hi);
            let start = pixels.len();
            pixels.resize(start + 3 * plane, 0.0);
            let image = &mut pixels[start..];
            for y in 0..side {
                for x in 0..side {
                    let d = shape.distance(x as f32 + 0.5, y as f32 + 0.5, cx, cy, r);
                    let coverage = (0.5 - d).clamp(0.0, 1.0);
                    for ch in 0..3 {
                        image[ch * plane + y * side + x] =
                            BACKGROUND[ch] + coverage * (colour[ch] - BACKGROUND[ch]);
                    }
                }
            }
            labels.push(shape.label());
        }
        LabeledImages {
            channels: 3,
            height: side,
            width: side,
            pixels,
            labels,
            num_classes: Shape::ALL.len(),
        }
    }
}
