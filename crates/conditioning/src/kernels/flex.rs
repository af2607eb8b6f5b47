//! Flex's fused group norm: f32 kernels that read the input once for the statistics and
//! once for the output (forward), or twice more for the gradient (backward), one rayon task
//! per (sample, group). Other dtypes and unusual layouts take the generic path.
//!
//! The element loops are written so LLVM vectorises them (lane-array accumulators, a
//! polynomial `exp` without library calls); on x86-64 with AVX2 they are compiled a second
//! time with AVX2 enabled and picked at run time.

use super::{
    reference, Conv2dGrads, EmberBackend, GroupNormGrads, GroupNormOptions, NormActivation,
};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

impl EmberBackend for Flex {
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        film: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        options: GroupNormOptions,
    ) -> FloatTensor<Self> {
        match Inputs::new(&x, &gamma, &beta, film.as_ref(), options) {
            Some(inputs) => inputs.forward(),
            None => reference::group_norm_forward::<Self>(x, gamma, beta, film, options),
        }
    }

    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        film: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormGrads<Self> {
        let fast = Inputs::new(&x, &gamma, &beta, film.as_ref(), options)
            .and_then(|inputs| f32_contiguous(&grad, inputs.x.shape).map(|g| (inputs, g)));
        match fast {
            Some((inputs, grad)) => inputs.backward(&grad),
            None => reference::group_norm_backward::<Self>(x, gamma, beta, film, grad, options),
        }
    }

    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> FloatTensor<Self> {
        match super::flex_attention::attention(&query, &key, &value, bias.as_ref(), scale) {
            Some(out) => out,
            None => reference::attention_forward::<Self>(query, key, value, bias, scale),
        }
    }

    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match super::flex_conv::conv2d(&x, &weight, bias.as_ref(), &options) {
            Some(out) => out,
            None => Self::conv2d(x, weight, bias, options),
        }
    }

    fn fused_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> Conv2dGrads<Self> {
        let fast = super::flex_conv::conv2d_backward(&x, &weight, bias.is_some(), &grad, &options);
        match fast {
            Some((x, weight, bias)) => Conv2dGrads { x, weight, bias },
            None => reference::conv2d_backward::<Self>(x, weight, bias, grad, options),
        }
    }
}

/// A contiguous f32 view of `t` with exactly `len` elements, or `None` (other dtypes).
struct F32 {
    tensor: FlexTensor,
    shape: [usize; 3],
}

impl F32 {
    fn slice(&self) -> &[f32] {
        self.tensor.as_slice::<f32>().unwrap_or(&[])
    }
}

fn f32_contiguous(t: &FlexTensor, shape: [usize; 3]) -> Option<F32> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let tensor = t.to_contiguous();
    let len = tensor.as_slice::<f32>()?.len();
    (len == shape.iter().product::<usize>()).then_some(F32 { tensor, shape })
}

struct Inputs {
    x: F32,
    gamma: F32,
    beta: F32,
    film: Option<(F32, F32)>,
    options: GroupNormOptions,
}

/// Per-group slices and constants, shared by the forward and backward kernels.
struct Group<'a> {
    x: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    /// `(1 + scale, shift)` for this sample's channels of the group.
    film: Option<(&'a [f32], &'a [f32])>,
    spatial: usize,
    eps: f64,
}

impl Group<'_> {
    fn film_at(&self, channel: usize) -> (f32, f32) {
        match self.film {
            Some((scale, shift)) => (1.0 + scale[channel], shift[channel]),
            None => (1.0, 0.0),
        }
    }
}

impl Inputs {
    fn new(
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: &FlexTensor,
        film: Option<&(FlexTensor, FlexTensor)>,
        options: GroupNormOptions,
    ) -> Option<Self> {
        let dims = x.layout().shape();
        if dims.num_dims() != 3 {
            return None;
        }
        let shape = [dims[0], dims[1], dims[2]];
        let [n, c, _] = shape;
        if options.num_groups == 0 || !c.is_multiple_of(options.num_groups) {
            return None;
        }
        let film = match film {
            Some((scale, shift)) => Some((
                f32_contiguous(scale, [n, c, 1])?,
                f32_contiguous(shift, [n, c, 1])?,
            )),
            None => None,
        };
        Some(Self {
            x: f32_contiguous(x, shape)?,
            gamma: f32_contiguous(gamma, [1, c, 1])?,
            beta: f32_contiguous(beta, [1, c, 1])?,
            film,
            options,
        })
    }

    fn group(&self, index: usize) -> Group<'_> {
        let [n, c, s] = self.x.shape;
        let groups = self.options.num_groups;
        let cpg = c / groups;
        let (sample, g) = (index / groups, index % groups);
        debug_assert!(sample < n);
        let channels = g * cpg..(g + 1) * cpg;
        let start = (sample * c + channels.start) * s;
        Group {
            x: &self.x.slice()[start..start + cpg * s],
            gamma: &self.gamma.slice()[channels.clone()],
            beta: &self.beta.slice()[channels.clone()],
            film: self.film.as_ref().map(|(scale, shift)| {
                let at = sample * c;
                (
                    &scale.slice()[at + channels.start..at + channels.end],
                    &shift.slice()[at + channels.start..at + channels.end],
                )
            }),
            spatial: s,
            eps: self.options.eps,
        }
    }

    fn forward(&self) -> FlexTensor {
        let [n, c, s] = self.x.shape;
        let group_len = (c / self.options.num_groups) * s;
        let silu = self.options.activation == NormActivation::Silu;
        let mut out = vec![0.0f32; n * c * s];
        if group_len > 0 {
            out.par_chunks_mut(group_len)
                .enumerate()
                .for_each(|(index, out)| forward_group(&self.group(index), out, silu));
        }
        FlexTensor::from_data(TensorData::new(out, [n, c, s]))
    }

    fn backward(&self, grad: &F32) -> GroupNormGrads<Flex> {
        let [n, c, s] = self.x.shape;
        let groups = self.options.num_groups;
        let cpg = c / groups;
        let group_len = cpg * s;
        let silu = self.options.activation == NormActivation::Silu;
        let mut dx = vec![0.0f32; n * c * s];
        // Per (sample, channel): Σ dy₁, Σ dy₁·y₀, Σ dy₁·x̂.
        let mut sums = vec![[0.0f64; 3]; n * c];
        if group_len > 0 {
            dx.par_chunks_mut(group_len)
                .zip(sums.par_chunks_mut(cpg))
                .enumerate()
                .for_each(|(index, (dx, sums))| {
                    let start = index * group_len;
                    let dy = &grad.slice()[start..start + group_len];
                    backward_group(&self.group(index), dy, dx, sums, silu);
                });
        }
        let mut dgamma = vec![0.0f64; c];
        let mut dbeta = vec![0.0f64; c];
        let mut dscale = vec![0.0f32; n * c];
        let mut dshift = vec![0.0f32; n * c];
        for sample in 0..n {
            for ch in 0..c {
                let i = sample * c + ch;
                let [dy1, dy1_y0, dy1_xhat] = sums[i];
                let factor = match &self.film {
                    Some((scale, _)) => 1.0 + scale.slice()[i] as f64,
                    None => 1.0,
                };
                dbeta[ch] += factor * dy1;
                dgamma[ch] += factor * dy1_xhat;
                dscale[i] = dy1_y0 as f32;
                dshift[i] = dy1 as f32;
            }
        }
        let to_tensor = |v: Vec<f64>| {
            let v: Vec<f32> = v.into_iter().map(|e| e as f32).collect();
            FlexTensor::from_data(TensorData::new(v, [c]))
        };
        GroupNormGrads {
            x: FlexTensor::from_data(TensorData::new(dx, [n, c, s])),
            gamma: to_tensor(dgamma),
            beta: to_tensor(dbeta),
            film: self.film.as_ref().map(|_| {
                (
                    FlexTensor::from_data(TensorData::new(dscale, [n, c])),
                    FlexTensor::from_data(TensorData::new(dshift, [n, c])),
                )
            }),
        }
    }
}

const LANES: usize = 8;
/// Elements summed in f32 lanes before folding into f64, which bounds the rounding error
/// of the group statistics independently of the group size.
const BLOCK: usize = 1024;

/// Whether this CPU has AVX2 and FMA, the instruction sets the kernels are compiled for a
/// second time (picked at run time; every x86-64 CPU with AVX2 since 2013 also has FMA).
#[inline]
pub(super) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a·b + c`, fused when `FMA` (only inside functions compiled with the `fma` feature:
/// elsewhere `mul_add` would be a library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` to about 2 ulp, with a Cephes-style polynomial and exponent bit-twiddling so the
/// loops that call it vectorise (no libm call, no float→int conversion).
#[inline(always)]
pub(super) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer and leaves it in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = madd::<FMA>(x, LOG2E, MAGIC);
    let n = shifted - MAGIC;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let p = madd::<FMA>(p * r, r, r) + 1.0;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    p * f32::from_bits(((exponent + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid_f32<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32::<FMA>(-x))
}

/// Mean and `1/√(var + eps)` of `x`, two passes (no cancellation from `E[x²] − E[x]²`).
#[inline(always)]
fn moments(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mut sum = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest: f32 = chunks.remainder().iter().sum();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a += v;
            }
        }
        sum += acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64;
    }
    let mean = (sum / n) as f32;
    let mut sq = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rest: f32 = chunks
            .remainder()
            .iter()
            .map(|&v| (v - mean) * (v - mean))
            .sum();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                let d = v - mean;
                *a += d * d;
            }
        }
        sq += acc.iter().map(|&a| a as f64).sum::<f64>() + rest as f64;
    }
    (mean, (1.0 / (sq / n + eps).sqrt()) as f32)
}

fn forward_group(group: &Group<'_>, out: &mut [f32], silu: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { forward_group_avx2(group, out, silu) };
        return;
    }
    forward_group_impl::<false>(group, out, silu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_group_avx2(group: &Group<'_>, out: &mut [f32], silu: bool) {
    forward_group_impl::<true>(group, out, silu)
}

#[inline(always)]
fn forward_group_impl<const FMA: bool>(group: &Group<'_>, out: &mut [f32], silu: bool) {
    // FMA = true runs AVX2 + FMA intrinsics: only the detected-CPU wrapper may ask for it.
    debug_assert!(!FMA || has_avx2_fma());
    let (mean, rstd) = moments(group.x, group.eps);
    let s = group.spatial;
    for (ch, (xs, os)) in group.x.chunks(s).zip(out.chunks_mut(s)).enumerate() {
        // y = (1 + scale)·(γ·(x − μ)·r + β) + shift = a·(x − μ) + b. Centring first (rather
        // than folding μ into b) avoids cancellation when r is large (near-constant groups).
        let (factor, shift) = group.film_at(ch);
        let a = factor * group.gamma[ch] * rstd;
        let b = factor * group.beta[ch] + shift;
        if silu && FMA {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: FMA is true only on the path that checked AVX2 and FMA.
            unsafe {
                super::simd::affine_silu(xs, os, mean, a, b)
            };
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("the AVX2 path exists only on x86-64");
        } else if silu {
            for (o, &x) in os.iter_mut().zip(xs) {
                let y = a * (x - mean) + b;
                *o = y / (1.0 + exp_f32::<FMA>(-y));
            }
        } else {
            for (o, &x) in os.iter_mut().zip(xs) {
                *o = a * (x - mean) + b;
            }
        }
    }
}

fn backward_group(
    group: &Group<'_>,
    dy: &[f32],
    dx: &mut [f32],
    sums: &mut [[f64; 3]],
    silu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { backward_group_avx2(group, dy, dx, sums, silu) };
        return;
    }
    backward_group_impl::<false>(group, dy, dx, sums, silu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_group_avx2(
    group: &Group<'_>,
    dy: &[f32],
    dx: &mut [f32],
    sums: &mut [[f64; 3]],
    silu: bool,
) {
    backward_group_impl::<true>(group, dy, dx, sums, silu)
}

/// Writes `dx` for one group and the per-channel sums `[Σ dy₁, Σ dy₁·y₀, Σ dy₁·x̂]`.
/// First pass: `dy₁` and `g = (1 + scale)·γ·dy₁` (stored in `dx`); second pass:
/// `dx = r·(g − mean(g) − x̂·mean(g·x̂))`.
#[inline(always)]
fn backward_group_impl<const FMA: bool>(
    group: &Group<'_>,
    dy: &[f32],
    dx: &mut [f32],
    sums: &mut [[f64; 3]],
    silu: bool,
) {
    debug_assert!(!FMA || has_avx2_fma());
    let (mean, rstd) = moments(group.x, group.eps);
    let s = group.spatial;
    let mut mean_g = 0.0f64;
    let mut mean_gx = 0.0f64;
    let channels = group.x.chunks(s).zip(dy.chunks(s)).zip(dx.chunks_mut(s));
    for (ch, ((xs, dys), dxs)) in channels.enumerate() {
        let (factor, shift) = group.film_at(ch);
        let (gamma, beta) = (group.gamma[ch], group.beta[ch]);
        let scale_g = factor * gamma;
        let mut total = [0.0f64; 3];
        for ((xb, dyb), dxb) in xs
            .chunks(BLOCK)
            .zip(dys.chunks(BLOCK))
            .zip(dxs.chunks_mut(BLOCK))
        {
            if FMA {
                #[cfg(target_arch = "x86_64")]
                {
                    let channel = super::simd::NormBackwardChannel {
                        mean,
                        rstd,
                        gamma,
                        beta,
                        factor,
                        shift,
                        silu,
                    };
                    // SAFETY: FMA is true only on the path that checked AVX2 and FMA.
                    let block = unsafe { super::simd::norm_backward_block(xb, dyb, dxb, &channel) };
                    for (t, &a) in total.iter_mut().zip(&block) {
                        *t += a as f64;
                    }
                    continue;
                }
            }
            let mut acc = [[0.0f32; LANES]; 3];
            let mut element = |x: f32, dy: f32, lane: usize, dx: &mut f32| {
                let xhat = (x - mean) * rstd;
                let y0 = gamma * xhat + beta;
                let dy1 = if silu {
                    let y1 = factor * y0 + shift;
                    let sg = sigmoid_f32::<FMA>(y1);
                    dy * sg * (1.0 + y1 * (1.0 - sg))
                } else {
                    dy
                };
                acc[0][lane] += dy1;
                acc[1][lane] += dy1 * y0;
                acc[2][lane] += dy1 * xhat;
                *dx = scale_g * dy1;
            };
            let full = xb.len() / LANES * LANES;
            for ((xc, dyc), dxc) in xb[..full]
                .chunks_exact(LANES)
                .zip(dyb[..full].chunks_exact(LANES))
                .zip(dxb[..full].chunks_exact_mut(LANES))
            {
                for lane in 0..LANES {
                    element(xc[lane], dyc[lane], lane, &mut dxc[lane]);
                }
            }
            for i in full..xb.len() {
                element(xb[i], dyb[i], 0, &mut dxb[i]);
            }
            for (t, a) in total.iter_mut().zip(&acc) {
                *t += a.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        mean_g += scale_g as f64 * total[0];
        mean_gx += scale_g as f64 * total[2];
        sums[ch] = total;
    }
    let n = group.x.len().max(1) as f64;
    let (mean_g, mean_gx) = ((mean_g / n) as f32, (mean_gx / n) as f32);
    for (xs, dxs) in group.x.chunks(s).zip(dx.chunks_mut(s)) {
        for (d, &x) in dxs.iter_mut().zip(xs) {
            let xhat = (x - mean) * rstd;
            *d = rstd * (*d - mean_g - xhat * mean_gx);
        }
    }
}
