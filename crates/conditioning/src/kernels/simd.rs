//! Hand-vectorised AVX2 + FMA loops for the two places where the kernels evaluate `exp`
//! per element (softmax rows, SiLU). Written with intrinsics because LLVM splits the
//! polynomial `exp` into scalar pieces and blends when left to auto-vectorise it, which ran
//! the attention softmax at a third of this speed. Callers check `has_avx2_fma()` first.

use super::flex::exp_f32;
use std::arch::x86_64::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const MAGIC: f32 = 12_582_912.0;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// Eight `exp`s: the same range reduction and polynomial as [`exp_f32`].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    // `x` second: max/min return their second operand when either is NaN, so a NaN input
    // stays NaN (as in `exp_f32` and burn's ops) instead of being clamped to a number.
    let x = _mm256_min_ps(
        _mm256_set1_ps(88.0),
        _mm256_max_ps(_mm256_set1_ps(-87.0), x),
    );
    let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(MAGIC));
    let n = _mm256_sub_ps(shifted, _mm256_set1_ps(MAGIC));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_add_ps(
        _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
        _mm256_set1_ps(1.0),
    );
    let e = _mm256_sub_epi32(
        _mm256_castps_si256(shifted),
        _mm256_castps_si256(_mm256_set1_ps(MAGIC)),
    );
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_max_ps(lo, hi);
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Replaces `row` by `exp(row − max(row))` and returns `1 / Σ`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_row(row: &mut [f32]) -> f32 {
    let full = row.len() / 8 * 8;
    let ptr = row.as_mut_ptr();
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= row.len().
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(ptr.add(i)) });
    }
    let mut max = hmax(vmax);
    for &x in &row[full..] {
        max = max.max(x);
    }
    let max = if max.is_finite() { max } else { 0.0 };
    let vm = _mm256_set1_ps(max);
    let mut vsum = _mm256_setzero_ps();
    for i in (0..full).step_by(8) {
        // SAFETY: as above.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), vm));
            _mm256_storeu_ps(ptr.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    let mut sum = hsum(vsum);
    for x in &mut row[full..] {
        *x = exp_f32::<true>(*x - max);
        sum += *x;
    }
    1.0 / sum
}

/// `out = silu(a·(x − mean) + b)` elementwise.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `out` is at least as long as `xs`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn affine_silu(xs: &[f32], out: &mut [f32], mean: f32, a: f32, b: f32) {
    let n = xs.len().min(out.len());
    let full = n / 8 * 8;
    let (va, vb, vmean) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_set1_ps(mean));
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= both lengths.
        unsafe {
            let x = _mm256_loadu_ps(xs.as_ptr().add(i));
            let y = _mm256_fmadd_ps(va, _mm256_sub_ps(x, vmean), vb);
            let e = exp8(_mm256_xor_ps(y, sign));
            let o = _mm256_div_ps(y, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), o);
        }
    }
    for i in full..n {
        let y = a * (xs[i] - mean) + b;
        out[i] = y / (1.0 + exp_f32::<true>(-y));
    }
}

/// Constants of one channel of the group-norm backward (see `flex::backward_group_impl`).
pub(super) struct NormBackwardChannel {
    pub mean: f32,
    pub rstd: f32,
    pub gamma: f32,
    pub beta: f32,
    /// `1 + scale` (1 without FiLM).
    pub factor: f32,
    /// FiLM shift (0 without FiLM).
    pub shift: f32,
    pub silu: bool,
}

/// For one block of one channel: writes `dx = (1 + scale)·γ·dy₁` and returns the f32 sums
/// `[Σ dy₁, Σ dy₁·y₀, Σ dy₁·x̂]`, where `x̂ = (x − μ)·r`, `y₀ = γ·x̂ + β`,
/// `y₁ = (1 + scale)·y₀ + shift` and `dy₁ = dy·silu′(y₁)` (or `dy` without SiLU).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `dy` and `dx` are at least as long as `xs`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn norm_backward_block(
    xs: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    c: &NormBackwardChannel,
) -> [f32; 3] {
    let n = xs.len().min(dy.len()).min(dx.len());
    let full = n / 8 * 8;
    let (vmean, vrstd) = (_mm256_set1_ps(c.mean), _mm256_set1_ps(c.rstd));
    let (vgamma, vbeta) = (_mm256_set1_ps(c.gamma), _mm256_set1_ps(c.beta));
    let (vfactor, vshift) = (_mm256_set1_ps(c.factor), _mm256_set1_ps(c.shift));
    let vscale_g = _mm256_set1_ps(c.factor * c.gamma);
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let (mut a0, mut a1, mut a2) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= every length.
        unsafe {
            let x = _mm256_loadu_ps(xs.as_ptr().add(i));
            let g = _mm256_loadu_ps(dy.as_ptr().add(i));
            let xhat = _mm256_mul_ps(_mm256_sub_ps(x, vmean), vrstd);
            let y0 = _mm256_fmadd_ps(vgamma, xhat, vbeta);
            let dy1 = if c.silu {
                let y1 = _mm256_fmadd_ps(vfactor, y0, vshift);
                let sg = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(y1, sign))));
                // σ(y)·(1 + y·(1 − σ(y)))
                let d = _mm256_fmadd_ps(y1, _mm256_sub_ps(one, sg), one);
                _mm256_mul_ps(g, _mm256_mul_ps(sg, d))
            } else {
                g
            };
            a0 = _mm256_add_ps(a0, dy1);
            a1 = _mm256_fmadd_ps(dy1, y0, a1);
            a2 = _mm256_fmadd_ps(dy1, xhat, a2);
            _mm256_storeu_ps(dx.as_mut_ptr().add(i), _mm256_mul_ps(vscale_g, dy1));
        }
    }
    let mut sums = [hsum(a0), hsum(a1), hsum(a2)];
    for i in full..n {
        let xhat = (xs[i] - c.mean) * c.rstd;
        let y0 = c.gamma * xhat + c.beta;
        let dy1 = if c.silu {
            let y1 = c.factor * y0 + c.shift;
            let sg = 1.0 / (1.0 + exp_f32::<true>(-y1));
            dy[i] * sg * (1.0 + y1 * (1.0 - sg))
        } else {
            dy[i]
        };
        sums[0] += dy1;
        sums[1] += dy1 * y0;
        sums[2] += dy1 * xhat;
        dx[i] = c.factor * c.gamma * dy1;
    }
    sums
}
