//! Training examples of any rank as a burn [`Dataset`], and the [`Batcher`] that stacks them.
//!
//! [`Examples`] holds every example in model space (images in `[-1, 1]`, points as they are)
//! with optional class labels. It is what the trainer draws batches from, and it plugs into
//! burn's `DataLoaderBuilder` like any other dataset.
//!
//! ```
//! use burn::data::dataloader::batcher::Batcher;
//! use burn::data::dataset::Dataset;
//! use ember_core::backend::DefaultBackend as B;
//! use ember_data::batch::{ExampleBatch, ExampleBatcher, Examples};
//!
//! let points = Examples::new(vec![2], vec![0.0, 1.0, 2.0, 3.0], Some(vec![0, 1]), 2)?;
//! let batcher = ExampleBatcher::<2>::new(&points)?;
//! let items = vec![points.get(1).unwrap(), points.get(0).unwrap()];
//! let batch: ExampleBatch<B, 2> = batcher.batch(items, &Default::default());
//! assert_eq!(batch.samples.dims(), [2, 2]);
//! # Ok::<(), ember_core::Error>(())
//! ```

use crate::LabeledImages;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_core::{Error, Result};

/// One training example: its values (row-major, the example's shape) and optional label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Values, `Examples::example_shape` row-major.
    pub values: Vec<f32>,
    /// Class label, when the set is labelled.
    pub label: Option<usize>,
}

/// A set of same-shaped examples in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    example_shape: Vec<usize>,
    values: Vec<f32>,
    labels: Option<Vec<usize>>,
    num_classes: usize,
}

impl Examples {
    /// Examples of shape `example_shape` (without the batch axis) packed in `values`, with
    /// optional labels below `num_classes`. Errors for an empty shape, a length that is not
    /// a whole number of examples, a label count that does not match, a label out of range
    /// or a non-finite value.
    pub fn new(
        example_shape: Vec<usize>,
        values: Vec<f32>,
        labels: Option<Vec<usize>>,
        num_classes: usize,
    ) -> Result<Self> {
        let per: usize = example_shape.iter().product();
        if example_shape.is_empty() || per == 0 {
            return Err(Error::argument(
                "example_shape",
                format!("must be non-empty with no zero axis, got {example_shape:?}"),
            ));
        }
        if !values.len().is_multiple_of(per) {
            return Err(Error::argument(
                "values",
                format!(
                    "{} values are not a whole number of {example_shape:?} examples",
                    values.len()
                ),
            ));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::argument(
                "values",
                format!("value {i} is {} (must be finite)", values[i]),
            ));
        }
        let n = values.len() / per;
        if let Some(labels) = &labels {
            if labels.len() != n {
                return Err(Error::argument(
                    "labels",
                    format!("{} labels for {n} examples", labels.len()),
                ));
            }
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
                return Err(Error::argument(
                    "labels",
                    format!("label {l} of example {i} is out of range 0..{num_classes}"),
                ));
            }
        }
        Ok(Self {
            example_shape,
            values,
            labels,
            num_classes,
        })
    }

    /// Images in `[0, 1]` mapped to the `[-1, 1]` range diffusion models train on, with
    /// their labels (`[C, H, W]` examples).
    pub fn from_images(images: &LabeledImages) -> Result<Self> {
        let values = images.pixels.iter().map(|&p| 2.0 * p - 1.0).collect();
        let labels = images.labels.iter().map(|&l| l as usize).collect();
        Self::new(
            vec![images.channels, images.height, images.width],
            values,
            Some(labels),
            images.num_classes,
        )
    }

    /// The subset at `indices` (in that order). Errors for an index out of range.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let per = self.example_len();
        let mut values = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            if i >= self.len() {
                return Err(Error::argument(
                    "indices",
                    format!("index {i} is out of range 0..{}", self.len()),
                ));
            }
            values.extend_from_slice(&self.values[i * per..(i + 1) * per]);
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| indices.iter().map(|&i| l[i]).collect());
        Self::new(self.example_shape.clone(), values, labels, self.num_classes)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.values.len() / self.example_len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Shape of one example (no batch axis).
    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    /// Values per example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Number of classes the labels come from (0 or 1 for unlabelled sets).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Whether the examples carry labels.
    pub fn is_labelled(&self) -> bool {
        self.labels.is_some()
    }

    /// All values, `[N, ...example_shape]` row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// All labels, when labelled.
    pub fn labels(&self) -> Option<&[usize]> {
        self.labels.as_deref()
    }
}

impl Dataset<Example> for Examples {
    fn get(&self, index: usize) -> Option<Example> {
        let per = self.example_len();
        let values = self.values.get(index * per..(index + 1) * per)?.to_vec();
        let label = self.labels.as_ref().map(|l| l[index]);
        Some(Example { values, label })
    }

    fn len(&self) -> usize {
        Examples::len(self)
    }
}

/// A batch: samples `[B, ...example_shape]` and labels `[B]` when the set is labelled.
#[derive(Debug, Clone)]
pub struct ExampleBatch<B: Backend, const D: usize> {
    /// The stacked examples.
    pub samples: Tensor<B, D>,
    /// Their labels.
    pub labels: Option<Tensor<B, 1, Int>>,
}

/// Stacks [`Example`]s of one shape into an [`ExampleBatch`] of rank `D` (example rank + 1).
#[derive(Debug, Clone)]
pub struct ExampleBatcher<const D: usize> {
    example_shape: Vec<usize>,
}

impl<const D: usize> ExampleBatcher<D> {
    /// A batcher for `examples`' shape; errors when `D` is not the example rank + 1.
    pub fn new(examples: &Examples) -> Result<Self> {
        if examples.example_shape.len() + 1 != D {
            return Err(Error::argument(
                "examples",
                format!(
                    "examples of shape {:?} make rank-{} batches, not rank {D}",
                    examples.example_shape,
                    examples.example_shape.len() + 1
                ),
            ));
        }
        Ok(Self {
            example_shape: examples.example_shape.clone(),
        })
    }

    /// Stacks `items`; errors (instead of the trait's infallible `batch`) on an item of the
    /// wrong length or a batch mixing labelled and unlabelled items.
    pub fn try_batch<B: Backend>(
        &self,
        items: Vec<Example>,
        device: &B::Device,
    ) -> Result<ExampleBatch<B, D>> {
        let per: usize = self.example_shape.iter().product();
        let n = items.len();
        let mut values = Vec::with_capacity(n * per);
        let mut labels = Vec::with_capacity(n);
        for (i, item) in items.into_iter().enumerate() {
            if item.values.len() != per {
                return Err(Error::argument(
                    "items",
                    format!(
                        "item {i} has {} values, expected {per} ({:?})",
                        item.values.len(),
                        self.example_shape
                    ),
                ));
            }
            values.extend(item.values);
            labels.push(item.label);
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&self.example_shape);
        let samples = Tensor::from_data(TensorData::new(values, shape), device);
        let labels = match labels.iter().filter(|l| l.is_some()).count() {
            0 => None,
            k if k == n => Some(Tensor::from_data(
                TensorData::new(
                    labels.into_iter().map(|l| l.unwrap_or(0) as i64).collect(),
                    [n],
                ),
                device,
            )),
            _ => {
                return Err(Error::argument(
                    "items",
                    "a batch mixes labelled and unlabelled examples",
                ))
            }
        };
        Ok(ExampleBatch { samples, labels })
    }
}

impl<B: Backend, const D: usize> Batcher<B, Example, ExampleBatch<B, D>> for ExampleBatcher<D> {
    /// Panics on malformed items, which cannot come from one [`Examples`] set (burn's trait
    /// has no error channel); use [`ExampleBatcher::try_batch`] for items from elsewhere.
    fn batch(&self, items: Vec<Example>, device: &B::Device) -> ExampleBatch<B, D> {
        match self.try_batch(items, device) {
            Ok(batch) => batch,
            Err(e) => panic!("{e}"),
        }
    }
}
