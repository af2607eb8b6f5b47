//! The element-wise vocabulary schedulers speak, over burn tensors of any rank and over
//! an f64 host array.
//!
//! A scheduler step is a short linear combination of the current sample, the model output
//! and (for stochastic samplers) fresh noise, with scalar coefficients computed on the host
//! in f64. [`SampleTensor`] names exactly those operations, so one scheduler implementation
//! serves image (`[B, C, H, W]`) and video (`[B, C, F, H, W]`) tensors on every backend, and
//! also [`HostTensor`], which keeps analytic tests and 2-D toy problems in full f64.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A batch of samples with the element-wise operations diffusion samplers need.
///
/// Dimension 0 is always the batch dimension. Every operation returns a new value; for burn
/// tensors the clones involved are reference-count bumps, not copies.
pub trait SampleTensor: Clone + Send + Sync + 'static {
    /// The full shape, batch dimension first.
    fn shape(&self) -> Vec<usize>;
    /// `self * c`.
    fn scale(&self, c: f64) -> Self;
    /// `self + c`.
    fn add_scalar(&self, c: f64) -> Self;
    /// `self + other` (same shape).
    fn add(&self, other: &Self) -> Self;
    /// `self - other` (same shape).
    fn sub(&self, other: &Self) -> Self;
    /// `self * other`, element-wise (same shape).
    fn mul(&self, other: &Self) -> Self;
    /// Clamps every element into `[lo, hi]`.
    fn clamp(&self, lo: f64, hi: f64) -> Self;
    /// Multiplies sample `i` of the batch by `factors[i]`; `factors` has one entry per
    /// sample, or a single entry that applies to all.
    fn scale_per_sample(&self, factors: &[f64]) -> Self;
    /// A tensor of zeros with the same shape (and device).
    fn zeros_like(&self) -> Self;
    /// Copies the values to the host as f64.
    fn to_host(&self) -> HostTensor;
    /// Builds a value of this type (on the same device as `like`) from host values.
    fn from_host_like(host: &HostTensor, like: &Self) -> Self;
    /// `true` when no element is NaN or infinite.
    fn all_finite(&self) -> bool;

    /// `Σ cᵢ xᵢ` over the given terms. Panics only on an empty list, which is a bug in
    /// the caller, never user input.
    fn lin_comb(terms: &[(f64, &Self)]) -> Self {
        let (c0, x0) = terms[0];
        terms[1..]
            .iter()
            .fold(x0.scale(c0), |acc, (c, x)| acc.add(&x.scale(*c)))
    }
    /// Number of samples in the batch (dimension 0).
    fn batch_size(&self) -> usize {
        self.shape().first().copied().unwrap_or(1)
    }
    /// Number of elements.
    fn numel(&self) -> usize {
        self.shape().iter().product()
    }
}

/// An f64 array on the host, batch dimension first, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl HostTensor {
    /// Wraps `data` with `shape`; errors when the element count does not match.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> crate::Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(crate::Error::Shape {
                what: "host tensor data".into(),
                expected: format!("{numel} elements for shape {shape:?}"),
                got: vec![data.len()],
            });
        }
        Ok(Self { shape, data })
    }
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
    /// The values, row-major.
    pub fn data(&self) -> &[f64] {
        &self.data
    }
    /// Mutable access to the values.
    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }
    /// Consumes the tensor, returning its values.
    pub fn into_data(self) -> Vec<f64> {
        self.data
    }
    /// Elements per sample (product of all but the batch dimension).
    pub fn sample_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    /// Maps every element.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }
    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        assert_eq!(self.shape, other.shape, "HostTensor shapes differ");
        Self {
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }
    /// Converts to a burn tensor of rank `D` on `device`.
    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let data = TensorData::new(self.data.clone(), self.shape.clone());
        Tensor::from_data(data.convert_dtype(B::FloatElem::dtype()), device)
    }
    /// Copies a burn tensor to the host.
    pub fn from_tensor<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .to_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default();
        Self { shape, data }
    }
}

use burn::tensor::{Element, ElementConversion};

impl SampleTensor for HostTensor {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn scale(&self, c: f64) -> Self {
        self.map(|v| v * c)
    }
    fn add_scalar(&self, c: f64) -> Self {
        self.map(|v| v + c)
    }
    fn add(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a + b)
    }
    fn sub(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a - b)
    }
    fn mul(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a * b)
    }
    fn clamp(&self, lo: f64, hi: f64) -> Self {
        self.map(|v| v.clamp(lo, hi))
    }
    fn scale_per_sample(&self, factors: &[f64]) -> Self {
        let per = self.sample_len().max(1);
        let mut out = self.clone();
        for (i, v) in out.data.iter_mut().enumerate() {
            let f = if factors.len() == 1 {
                factors[0]
            } else {
                factors[i / per]
            };
            *v *= f;
        }
        out
    }
    fn zeros_like(&self) -> Self {
        Self::zeros(&self.shape)
    }
    fn to_host(&self) -> HostTensor {
        self.clone()
    }
    fn from_host_like(host: &HostTensor, _like: &Self) -> Self {
        host.clone()
    }
    fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
    fn lin_comb(terms: &[(f64, &Self)]) -> Self {
        // One pass, no temporaries: this is the hot path of analytic tests.
        let mut out = terms[0].1.scale(terms[0].0);
        for (c, x) in &terms[1..] {
            assert_eq!(out.shape, x.shape, "HostTensor shapes differ");
            for (o, v) in out.data.iter_mut().zip(&x.data) {
                *o += c * v;
            }
        }
        out
    }
}

impl<B: Backend, const D: usize> SampleTensor for Tensor<B, D> {
    fn shape(&self) -> Vec<usize> {
        self.dims().to_vec()
    }
    fn scale(&self, c: f64) -> Self {
        self.clone().mul_scalar(c)
    }
    fn add_scalar(&self, c: f64) -> Self {
        self.clone().add_scalar(c)
    }
    fn add(&self, other: &Self) -> Self {
        self.clone() + other.clone()
    }
    fn sub(&self, other: &Self) -> Self {
        self.clone() - other.clone()
    }
    fn mul(&self, other: &Self) -> Self {
        self.clone() * other.clone()
    }
    fn clamp(&self, lo: f64, hi: f64) -> Self {
        self.clone().clamp(lo, hi)
    }
    fn scale_per_sample(&self, factors: &[f64]) -> Self {
        if factors.len() == 1 {
            return self.clone().mul_scalar(factors[0]);
        }
        let mut shape = [1usize; D];
        shape[0] = factors.len();
        let data = TensorData::new(factors.to_vec(), shape).convert_dtype(B::FloatElem::dtype());
        let f: Tensor<B, D> = Tensor::from_data(data, &self.device());
        self.clone() * f
    }
    fn zeros_like(&self) -> Self {
        self.zeros_like()
    }
    fn to_host(&self) -> HostTensor {
        HostTensor::from_tensor(self)
    }
    fn from_host_like(host: &HostTensor, like: &Self) -> Self {
        host.to_tensor::<B, D>(&like.device())
    }
    fn all_finite(&self) -> bool {
        // One reduction and one scalar read-back: cheap next to a model forward.
        self.clone()
            .is_finite()
            .bool_not()
            .any()
            .int()
            .into_scalar()
            .elem::<i64>()
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lin_comb_and_per_sample() {
        let a = HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = HostTensor::new(vec![2, 2], vec![1.0, 1.0, 1.0, 1.0]).unwrap();
        let c = HostTensor::lin_comb(&[(2.0, &a), (-1.0, &b)]);
        assert_eq!(c.data(), &[1.0, 3.0, 5.0, 7.0]);
        let d = a.scale_per_sample(&[1.0, 10.0]);
        assert_eq!(d.data(), &[1.0, 2.0, 30.0, 40.0]);
        assert!(HostTensor::new(vec![3], vec![1.0]).is_err());
    }

    #[cfg(any(feature = "flex", feature = "ndarray"))]
    #[test]
    fn burn_tensor_ops_match_host() {
        type B = crate::backend::DefaultBackend;
        let device = Default::default();
        let h = HostTensor::new(vec![2, 1, 3], vec![1.0, -2.0, 3.0, 4.0, 5.0, -6.0]).unwrap();
        let t: Tensor<B, 3> = h.to_tensor(&device);
        let got = SampleTensor::scale_per_sample(&t, &[2.0, -1.0]).to_host();
        assert_eq!(got, h.scale_per_sample(&[2.0, -1.0]));
        let lc = <Tensor<B, 3> as SampleTensor>::lin_comb(&[(0.5, &t), (2.0, &t)]).to_host();
        assert_eq!(lc, h.scale(2.5));
        assert_eq!(
            SampleTensor::clamp(&t, -1.0, 1.0).to_host(),
            h.clamp(-1.0, 1.0)
        );
        assert!(SampleTensor::all_finite(&t));
        let mut bad = h.clone();
        bad.data_mut()[4] = f64::NAN;
        assert!(!SampleTensor::all_finite(&bad.to_tensor::<B, 3>(&device)));
        bad.data_mut()[4] = f64::INFINITY;
        assert!(!SampleTensor::all_finite(&bad.to_tensor::<B, 3>(&device)));
    }
}
