//! Flex's 2-D convolution: im2col + one GEMM per sample (or one for the whole batch when the
//! feature map is small), straight on PyTorch's layouts.
//!
//! The weight `[C_out, C_in, KH, KW]` is already the row-major `[C_out, C_in·KH·KW]` left
//! operand, and the product `[C_out, OH·OW]` is already the NCHW output, so nothing is
//! re-laid out per call (burn-flex's conv converts to NHWC and re-packs the weight on every
//! call, which dominates small feature maps). 1×1 stride-1 convolutions skip im2col.

use burn::backend::flex::FlexTensor;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

/// Feature maps with fewer output pixels than this are convolved as one GEMM over the whole
/// batch: a GEMM only a few dozen columns wide leaves the micro-kernel mostly idle.
const MERGE_BATCH_BELOW_PIXELS: usize = 512;

/// The largest im2col matrix (f32 elements, 256 MiB) this kernel builds for one sample.
const MAX_COL_ELEMENTS: usize = 1 << 26;

/// Scratch buffers larger than this (64 MiB) are freed after use instead of being kept by
/// the thread for the next call.
const MAX_CACHED_SCRATCH: usize = 1 << 24;

/// The tensor as contiguous f32 (a copy only when it is not contiguous already), or `None`
/// for other dtypes.
fn f32_tensor(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

struct Geometry {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

/// A convolution this kernel covers: f32, ungrouped, consistent non-empty shapes; its
/// inputs made contiguous.
struct Problem {
    n: usize,
    cout: usize,
    g: Geometry,
    x: FlexTensor,
    weight: FlexTensor,
}

impl Problem {
    fn new(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        if options.groups != 1 {
            return None;
        }
        let xs = x.layout().shape();
        let ws = weight.layout().shape();
        if xs.num_dims() != 4 || ws.num_dims() != 4 {
            return None;
        }
        let (n, cin, h, w) = (xs[0], xs[1], xs[2], xs[3]);
        let (cout, kh, kw) = (ws[0], ws[2], ws[3]);
        if ws[1] != cin || [n, cin, h, w, cout, kh, kw].contains(&0) {
            return None;
        }
        let [sh, sw] = options.stride;
        let [ph, pw] = options.padding;
        let [dh, dw] = options.dilation;
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return None;
        }
        // Checked: absurd padding or dilation must not overflow into a bogus geometry.
        let span_h = dh.checked_mul(kh - 1)?.checked_add(1)?;
        let span_w = dw.checked_mul(kw - 1)?.checked_add(1)?;
        let padded_h = ph.checked_mul(2)?.checked_add(h)?;
        let padded_w = pw.checked_mul(2)?.checked_add(w)?;
        if padded_h < span_h || padded_w < span_w {
            return None;
        }
        let g = Geometry {
            cin,
            h,
            w,
            kh,
            kw,
            oh: (padded_h - span_h) / sh + 1,
            ow: (padded_w - span_w) / sw + 1,
            stride: [sh, sw],
            padding: [ph, pw],
            dilation: [dh, dw],
        };
        // One sample's im2col matrix must fit the budget; larger maps (a VAE decoder at
        // 512×512) use burn's tiled convolution instead.
        let col_len = (cin * kh * kw).checked_mul(g.oh.checked_mul(g.ow)?)?;
        if col_len > MAX_COL_ELEMENTS {
            return None;
        }
        let x = f32_tensor(x)?;
        let weight = f32_tensor(weight)?;
        let ok = x.as_slice::<f32>()?.len() == n * cin * h * w
            && weight.as_slice::<f32>()?.len() == cout * cin * kh * kw;
        ok.then_some(Self {
            n,
            cout,
            g,
            x,
            weight,
        })
    }

    fn pointwise(&self) -> bool {
        let g = &self.g;
        g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.padding == [0, 0]
    }
}

/// The convolution, or `None` when this kernel does not cover the case (other dtypes,
/// grouped convolutions, empty or inconsistent shapes); the caller then uses burn's.
pub(super) fn conv2d(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let p = Problem::new(x, weight, options)?;
    let bias = match bias {
        Some(b) => Some(f32_tensor(b)?),
        None => None,
    };
    let bv = match &bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let (n, cout) = (p.n, p.cout);
    let g = &p.g;
    let (cin, h, w) = (g.cin, g.h, g.w);
    let k = cin * g.kh * g.kw;
    let npix = g.oh * g.ow;
    if bv.is_some_and(|b| b.len() != cout) {
        return None;
    }
    let xv = p.x.as_slice::<f32>()?;
    let wv = p.weight.as_slice::<f32>()?;
    let pointwise = p.pointwise();
    let mut out = vec![0.0f32; n * cout * npix];
    if n > 1 && npix < MERGE_BATCH_BELOW_PIXELS {
        // col: [K, N·P], sample s in columns s·P..(s+1)·P; product: [C_out, N·P].
        let cols = n * npix;
        let mut col = scratch(0, k * cols);
        for s in 0..n {
            im2col(
                &xv[s * cin * h * w..(s + 1) * cin * h * w],
                &mut col,
                cols,
                s * npix,
                g,
                true,
            );
        }
        let mut product = vec![0.0f32; cout * cols];
        fill_bias(&mut product, cols, bv);
        gemm_rows(
            &mut product,
            wv,
            &col,
            (cout, cols, k),
            bv.is_some(),
            Parallelism::Rayon(0),
        );
        out.par_chunks_mut(cout * npix)
            .enumerate()
            .for_each(|(s, sample)| {
                for (c, row) in sample.chunks_mut(npix).enumerate() {
                    row.copy_from_slice(&product[c * cols + s * npix..c * cols + (s + 1) * npix]);
                }
            });
    } else {
        // One sample: im2col (skipped for 1×1) then `dst = bias + W·col`.
        let one_sample = |s: usize, dst: &mut [f32], parallel: bool| {
            let input = &xv[s * cin * h * w..(s + 1) * cin * h * w];
            let mut col = scratch(0, if pointwise { 0 } else { k * npix });
            let rhs: &[f32] = if pointwise {
                input
            } else {
                im2col(input, &mut col, npix, 0, g, parallel);
                &col
            };
            fill_bias(dst, npix, bv);
            let parallelism = if parallel {
                Parallelism::Rayon(0)
            } else {
                Parallelism::None
            };
            gemm_rows(dst, wv, rhs, (cout, npix, k), bv.is_some(), parallelism);
        };
        if per_sample_tasks(n, k * npix) {
            // One sample per task, each single-threaded: no thread synchronisation inside
            // the (small) per-sample GEMMs.
            out.par_chunks_mut(cout * npix)
                .enumerate()
                .for_each(|(s, dst)| one_sample(s, dst, false));
        } else {
            for (s, dst) in out.chunks_mut(cout * npix).enumerate() {
                one_sample(s, dst, true);
            }
        }
    }
    Some(FlexTensor::from_data(TensorData::new(
        out,
        [n, cout, g.oh, g.ow],
    )))
}

/// Scratch slots per thread: im2col columns, and their gradient in the backward pass.
const SCRATCH_SLOTS: usize = 2;

thread_local! {
    /// The buffers of the last convolution on this thread, kept for the next one: a fresh
    /// multi-megabyte allocation per call costs a page fault per 4 KiB.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; SCRATCH_SLOTS]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// A buffer of `len` elements from this thread's scratch `slot` (contents unspecified:
/// callers overwrite all of it); it goes back to the cache when dropped.
pub(super) fn scratch(slot: usize, len: usize) -> ScratchBuffer {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut()[slot]));
    buf.resize(len, 0.0);
    ScratchBuffer { buf, slot }
}

/// A scratch buffer that returns to the thread's cache when dropped.
pub(super) struct ScratchBuffer {
    buf: Vec<f32>,
    slot: usize,
}

impl std::ops::Deref for ScratchBuffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl std::ops::DerefMut for ScratchBuffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl Drop for ScratchBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| {
            let cached = &mut s.borrow_mut()[self.slot];
            if buf.capacity() > cached.capacity() && buf.capacity() <= MAX_CACHED_SCRATCH {
                *cached = buf;
            }
        });
    }
}

/// Sets each `row_len`-long row of `dst` to its channel's bias.
fn fill_bias(dst: &mut [f32], row_len: usize, bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        for (row, &b) in dst.chunks_mut(row_len).zip(bias) {
            row.fill(b);
        }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, all row-major and contiguous.
fn gemm_rows(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    gemm_strided(
        (m, n, k),
        (dst, n, 1),
        accumulate,
        (lhs, k, 1),
        (rhs, n, 1),
        parallelism,
    );
}

/// Whether a batch of `n` is split into one task per sample (each with a single-threaded
/// GEMM) rather than parallelising inside each sample's GEMM: when the samples divide
/// evenly over the threads, or there are many of them.
/// Only when every thread's own im2col buffers (`col_len` elements each, two in the
/// backward pass) fit in [`MAX_COL_ELEMENTS`] together.
fn per_sample_tasks(n: usize, col_len: usize) -> bool {
    let threads = rayon::current_num_threads().max(1);
    n > 1
        && (n.is_multiple_of(threads) || n >= 4 * threads)
        && col_len.saturating_mul(2 * threads) <= MAX_COL_ELEMENTS
}

/// Writes sample `x` (`[C_in, H, W]`) as im2col rows `(c, ky, kx)` into `col`, whose rows
/// are `row_stride` long, starting at column `col_offset`.
fn im2col(
    x: &[f32],
    col: &mut [f32],
    row_stride: usize,
    col_offset: usize,
    g: &Geometry,
    parallel: bool,
) {
    let taps = g.kh * g.kw;
    let npix = g.oh * g.ow;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let [dh, dw] = g.dilation;
    let channel = |(c, rows): (usize, &mut [f32])| {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let start = (ky * g.kw + kx) * row_stride + col_offset;
                let row = &mut rows[start..start + npix];
                let shift = (kx * dw) as isize - pw as isize;
                for (oy, out) in row.chunks_mut(g.ow).enumerate() {
                    let iy = (oy * sh + ky * dh) as isize - ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if sw == 1 {
                        // ix = ox + shift is inside the row for ox in lo..hi.
                        let lo = (-shift).clamp(0, g.ow as isize) as usize;
                        let hi = (g.w as isize - shift).clamp(lo as isize, g.ow as isize) as usize;
                        out[..lo].fill(0.0);
                        if hi > lo {
                            let from = (lo as isize + shift) as usize;
                            out[lo..hi].copy_from_slice(&src[from..from + (hi - lo)]);
                        }
                        out[hi..].fill(0.0);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * sw) as isize + shift;
                            *o = if ix >= 0 && ix < g.w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    };
    if parallel {
        col.par_chunks_mut(taps * row_stride)
            .take(g.cin)
            .enumerate()
            .for_each(channel);
    } else {
        col.chunks_mut(taps * row_stride)
            .take(g.cin)
            .enumerate()
            .for_each(channel);
    }
}

/// Gradients of [`conv2d`] with respect to `x`, the weight and (when `with_bias`) the bias,
/// or `None` when the forward kernel does not cover the case.
///
/// Per sample: `dW += dY·colᵀ`, `dcol = Wᵀ·dY` scattered back onto the input grid (col2im);
/// `db = Σ dY`. The weight is read in place as for the forward pass. Samples run as
/// separate tasks (each with its own partial `dW`, summed at the end) when the batch splits
/// evenly over the threads.
pub(super) fn conv2d_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    with_bias: bool,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<(FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let p = Problem::new(x, weight, options)?;
    let g = &p.g;
    let (n, cout, cin) = (p.n, p.cout, g.cin);
    let plane = cin * g.h * g.w;
    let k = cin * g.kh * g.kw;
    let npix = g.oh * g.ow;
    let grad = f32_tensor(grad)?;
    let dy = grad.as_slice::<f32>()?;
    if dy.len() != n * cout * npix {
        return None;
    }
    let xv = p.x.as_slice::<f32>()?;
    let wv = p.weight.as_slice::<f32>()?;
    let pointwise = p.pointwise();
    let mut dx = vec![0.0f32; n * plane];
    // One sample: dW (+)= dY·colᵀ, then dx = col2im(Wᵀ·dY).
    let sample = |s: usize, dxs: &mut [f32], dw: &mut [f32], accumulate: bool, par: bool| {
        let parallelism = if par {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        let input = &xv[s * plane..(s + 1) * plane];
        let dys = &dy[s * cout * npix..(s + 1) * cout * npix];
        let mut col = scratch(0, if pointwise { 0 } else { k * npix });
        let cols: &[f32] = if pointwise {
            input
        } else {
            im2col(input, &mut col, npix, 0, g, par);
            &col
        };
        // dW [C_out × K] (+)= dY [C_out × P] · colᵀ [P × K]
        gemm_strided(
            (cout, k, npix),
            (dw, k, 1),
            accumulate,
            (dys, npix, 1),
            (cols, 1, npix),
            parallelism,
        );
        // dcol [K × P] = Wᵀ [K × C_out] · dY [C_out × P]
        if pointwise {
            gemm_strided(
                (k, npix, cout),
                (dxs, npix, 1),
                false,
                (wv, 1, k),
                (dys, npix, 1),
                parallelism,
            );
        } else {
            let mut dcol = scratch(1, k * npix);
            gemm_strided(
                (k, npix, cout),
                (&mut dcol, npix, 1),
                false,
                (wv, 1, k),
                (dys, npix, 1),
                parallelism,
            );
            col2im(&dcol, dxs, g, par);
        }
    };
    let dw = if per_sample_tasks(n, k * npix) {
        dx.par_chunks_mut(plane)
            .enumerate()
            .fold(
                || (vec![0.0f32; cout * k], true),
                |(mut dw, first), (s, dxs)| {
                    sample(s, dxs, &mut dw, !first, false);
                    (dw, false)
                },
            )
            .map(|(dw, _)| dw)
            .reduce(
                || vec![0.0f32; cout * k],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        *x += y;
                    }
                    a
                },
            )
    } else {
        let mut dw = vec![0.0f32; cout * k];
        for (s, dxs) in dx.chunks_mut(plane).enumerate() {
            sample(s, dxs, &mut dw, s > 0, true);
        }
        dw
    };
    let db = with_bias.then(|| {
        let mut db = vec![0.0f64; cout];
        for sample in dy.chunks(cout * npix) {
            for (acc, row) in db.iter_mut().zip(sample.chunks(npix)) {
                *acc += row.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        let db: Vec<f32> = db.into_iter().map(|v| v as f32).collect();
        FlexTensor::from_data(TensorData::new(db, [cout]))
    });
    Some((
        FlexTensor::from_data(TensorData::new(dx, [n, cin, g.h, g.w])),
        FlexTensor::from_data(TensorData::new(dw, [cout, cin, g.kh, g.kw])),
        db,
    ))
}

/// `dst (+)= lhs · rhs` for `(m, n, k)`, each operand given as `(buffer, row stride,
/// column stride)` with non-negative strides; panics (a bug, not user input) when a
/// buffer is too small for its shape and strides.
fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (&mut [f32], usize, usize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    parallelism: Parallelism,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        rows.saturating_sub(1) * rs + cols.saturating_sub(1) * cs
    };
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(last(m, n, dst_rs, dst_cs) < dst.len());
    assert!(last(m, k, lhs_rs, lhs_cs) < lhs.len());
    assert!(last(k, n, rhs_rs, rhs_cs) < rhs.len());
    // SAFETY: every element addressed by the shapes and strides lies inside its buffer
    // (asserted above); `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Adds im2col rows `(c, ky, kx)` of `col` (`[K, P]`) back onto the input grid `dx`
/// (`[C_in, H, W]`): the adjoint of [`im2col`].
fn col2im(col: &[f32], dx: &mut [f32], g: &Geometry, parallel: bool) {
    let taps = g.kh * g.kw;
    let npix = g.oh * g.ow;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let [dh, dw] = g.dilation;
    let channel = |(plane, rows): (&mut [f32], &[f32])| {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &rows[(ky * g.kw + kx) * npix..(ky * g.kw + kx + 1) * npix];
                let shift = (kx * dw) as isize - pw as isize;
                for (oy, src) in row.chunks(g.ow).enumerate() {
                    let iy = (oy * sh + ky * dh) as isize - ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if sw == 1 {
                        let lo = (-shift).clamp(0, g.ow as isize) as usize;
                        let hi = (g.w as isize - shift).clamp(lo as isize, g.ow as isize) as usize;
                        if hi > lo {
                            let from = (lo as isize + shift) as usize;
                            let dst = &mut dst[from..from + (hi - lo)];
                            for (d, &v) in dst.iter_mut().zip(&src[lo..hi]) {
                                *d += v;
                            }
                        }
                    } else {
                        for (ox, &v) in src.iter().enumerate() {
                            let ix = (ox * sw) as isize + shift;
                            if ix >= 0 && ix < g.w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    };
    if parallel {
        dx.par_chunks_mut(g.h * g.w)
            .zip(col.par_chunks(taps * npix))
            .for_each(channel);
    } else {
        dx.chunks_mut(g.h * g.w)
            .zip(col.chunks(taps * npix))
            .for_each(channel);
    }
}
