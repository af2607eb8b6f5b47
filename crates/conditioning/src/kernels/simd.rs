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
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
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
