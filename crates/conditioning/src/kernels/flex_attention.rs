//! Flex's attention: per (batch, head, block of queries) one GEMM for the scores, a row
//! softmax, and one GEMM for the output, on rayon's threads.
//!
//! Memory is `O(block·S)` per task, never the full `L×S` score matrix. Query, key, value and
//! bias are read through their strides (head splits and transposes are free views), and the
//! output is laid out in the query's memory order, so a caller that builds `[B, H, L, D]`
//! as a view of `[B, L, H·D]` (token layout) or of `[B, H·D, L]` (channel-first layout) gets
//! the output back in that layout and merges heads without a copy.

use super::flex::{exp_f32, has_avx2_fma};
use super::flex_conv::scratch;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// Score elements one task may hold (4 MiB of f32).
const SCORES_PER_TASK: usize = 1 << 20;
/// At most this many query rows per task (bounds the per-row normalisers on the stack).
const MAX_ROWS: usize = 1024;

/// A rank-4 f32 tensor read through its strides.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 4],
    dims: [usize; 4],
}

impl<'a> View<'a> {
    fn new(t: &'a FlexTensor) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let layout = t.layout();
        if layout.num_dims() != 4 || layout.strides().iter().any(|&s| s < 0) {
            return None;
        }
        let shape = layout.shape();
        let dims = [shape[0], shape[1], shape[2], shape[3]];
        let s = layout.strides();
        let strides = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
        let data = t.storage::<f32>();
        let offset = layout.start_offset();
        // Every element must lie inside the buffer (the GEMMs read through raw pointers).
        let last = offset
            + dims
                .iter()
                .zip(&strides)
                .map(|(&d, &st)| d.saturating_sub(1) * st)
                .sum::<usize>();
        (dims.iter().all(|&d| d > 0) && last < data.len()).then_some(Self {
            data,
            offset,
            strides,
            dims,
        })
    }

    fn at(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        self.offset
            + b * self.strides[0]
            + h * self.strides[1]
            + i * self.strides[2]
            + j * self.strides[3]
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct (batch, head, query-block) region of the output
// buffer, which outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element at `offset`; a method (not field access) so closures capture the
    /// whole `Sync` wrapper rather than the raw pointer field.
    ///
    /// # Safety
    /// `offset` must lie inside the output buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// `softmax(scale·QKᵀ + bias)·V`, or `None` when this kernel does not cover the inputs
/// (other dtypes, negative strides, inconsistent or empty shapes).
pub(super) fn attention(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    bias: Option<&FlexTensor>,
    scale: f64,
) -> Option<FlexTensor> {
    let q = View::new(query)?;
    let k = View::new(key)?;
    let v = View::new(value)?;
    let bias = match bias {
        Some(b) => Some(View::new(b)?),
        None => None,
    };
    let [b, h, l, d] = q.dims;
    let s = k.dims[2];
    let dv = v.dims[3];
    if k.dims != [b, h, s, d] || v.dims != [b, h, s, dv] {
        return None;
    }
    if bias.as_ref().is_some_and(|m| m.dims != [b, h, l, s]) {
        return None;
    }
    // The output takes the query's memory order (largest stride first, ties in order).
    let mut order = [0usize, 1, 2, 3];
    order.sort_by(|&x, &y| q.strides[y].cmp(&q.strides[x]));
    let out_dims = [b, h, l, dv];
    let mut out_strides = [0usize; 4];
    let mut stride = 1;
    for &axis in order.iter().rev() {
        out_strides[axis] = stride;
        stride *= out_dims[axis];
    }
    let mut out = vec![0.0f32; b * h * l * dv];
    let rows = (SCORES_PER_TASK / s).clamp(1, l.min(MAX_ROWS));
    let blocks = l.div_ceil(rows);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let scale = scale as f32;
    (0..b * h * blocks).into_par_iter().for_each(|task| {
        let (bh, block) = (task / blocks, task % blocks);
        let (bi, hi) = (bh / h, bh % h);
        let r0 = block * rows;
        let m = rows.min(l - r0);
        // Overwritten by the first GEMM (it does not read its destination).
        let mut scores = scratch(0, m * s);
        // SAFETY: `View::new` checked that every element of q, k, v lies inside its buffer;
        // `scores` is m×s; the output region (bi, hi, r0..r0+m, ..) is inside `out` and
        // written by this task only.
        unsafe {
            gemm::gemm(
                m,
                s,
                d,
                scores.as_mut_ptr(),
                1,
                s as isize,
                false,
                q.data.as_ptr().add(q.at(bi, hi, r0, 0)),
                q.strides[3] as isize,
                q.strides[2] as isize,
                k.data.as_ptr().add(k.at(bi, hi, 0, 0)),
                k.strides[2] as isize,
                k.strides[3] as isize,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let block_bias = bias.as_ref().map(|m| (m, bi, hi, r0));
        // Unnormalised: exp(x − max) per row; the 1/Σ is applied to the m×Dv output rows
        // instead of the m×S probabilities.
        let mut inv_sums = [0.0f32; MAX_ROWS];
        softmax_block(&mut scores, s, block_bias, &mut inv_sums[..m]);
        let dst = out_strides[0] * bi + out_strides[1] * hi + out_strides[2] * r0;
        unsafe {
            gemm::gemm(
                m,
                dv,
                s,
                out_ptr.at(dst),
                out_strides[3] as isize,
                out_strides[2] as isize,
                false,
                scores.as_ptr(),
                1,
                s as isize,
                v.data.as_ptr().add(v.at(bi, hi, 0, 0)),
                v.strides[3] as isize,
                v.strides[2] as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (i, &inv) in inv_sums[..m].iter().enumerate() {
            for e in 0..dv {
                // SAFETY: (bi, hi, r0 + i, e) is inside this task's output region.
                unsafe { *out_ptr.at(dst + i * out_strides[2] + e * out_strides[3]) *= inv };
            }
        }
    });
    // `out` is contiguous in memory order; the logical [B, H, L, Dv] tensor is a permutation.
    let memory_dims: Vec<usize> = order.iter().map(|&a| out_dims[a]).collect();
    let mut axes = [0usize; 4];
    for (pos, &axis) in order.iter().enumerate() {
        axes[axis] = pos;
    }
    Some(FlexTensor::from_data(TensorData::new(out, memory_dims)).permute(&axes))
}

/// Adds the bias (if any) to a block of score rows and turns each row into its softmax.
fn softmax_block(
    scores: &mut [f32],
    s: usize,
    bias: Option<(&View<'_>, usize, usize, usize)>,
    inv_sums: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { softmax_block_avx2(scores, s, bias, inv_sums) };
        return;
    }
    softmax_block_impl::<false>(scores, s, bias, inv_sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_block_avx2(
    scores: &mut [f32],
    s: usize,
    bias: Option<(&View<'_>, usize, usize, usize)>,
    inv_sums: &mut [f32],
) {
    softmax_block_impl::<true>(scores, s, bias, inv_sums)
}

#[inline(always)]
fn softmax_block_impl<const FMA: bool>(
    scores: &mut [f32],
    s: usize,
    bias: Option<(&View<'_>, usize, usize, usize)>,
    inv_sums: &mut [f32],
) {
    debug_assert!(!FMA || has_avx2_fma());
    for (i, (row, inv)) in scores.chunks_mut(s).zip(inv_sums.iter_mut()).enumerate() {
        if let Some((m, bi, hi, r0)) = bias {
            for (j, x) in row.iter_mut().enumerate() {
                *x += m.data[m.at(bi, hi, r0 + i, j)];
            }
        }
        *inv = if FMA {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: FMA is true only on the path that checked AVX2 and FMA.
            unsafe {
                super::simd::exp_row(row)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("the AVX2 path exists only on x86-64")
        } else {
            exp_row::<FMA>(row)
        };
    }
}

/// Replaces `row` by `exp(row − max)` and returns `1 / Σ`.
#[inline(always)]
fn exp_row<const FMA: bool>(row: &mut [f32]) -> f32 {
    // Lane-array max and sum so the loops vectorise (a scalar fold would not).
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = l.max(x);
        }
    }
    max = lanes.iter().fold(max, |m, &x| m.max(x));
    let max = if max.is_finite() { max } else { 0.0 };
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (acc, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_f32::<FMA>(*x - max);
            *acc += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_f32::<FMA>(*x - max);
        sum += *x;
    }
    1.0 / sum
}
