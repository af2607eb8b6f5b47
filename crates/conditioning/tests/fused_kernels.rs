//! The fused kernels against the unfused compositions they replace, forward and gradient,
//! property-tested over shapes, group counts, FiLM, activations and sequence lengths.
//!
//! Bound: relative error ≤ 1e-5, measured as `max|fused − reference| / max|reference|` per
//! tensor. Both sides compute in f32; the fused kernels reorder the sums (lane accumulators
//! folded into f64, closed-form gradients instead of the chain of elementwise ops), so they
//! agree with the composition to a few f32 ulps of the tensor's scale, not bit for bit.
//!
//! Group-norm cases have at least 4 elements per group: with 1 or 2 elements the normalised
//! output is 0 or ±1 whatever the input, so the input gradient is pure rounding noise on
//! both sides and a relative comparison means nothing.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use ember_conditioning::kernels::{
    attention, group_norm, reference, EmberBackend, GroupNormOptions, NormActivation,
};
use proptest::prelude::*;

const TOLERANCE: f32 = 1e-5;

/// Deterministic non-zero values in about ±`amp` around `offset`.
fn values(len: usize, seed: u64, amp: f32, offset: f32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let t = (i as f64 + 1.0) * 0.618_033_988_7 + seed as f64 * 0.414_213_562_3;
            let v = (t * 12.9898).sin() * 43_758.545_3;
            let frac = (v - v.floor()) as f32; // [0, 1)
            let centred = 2.0 * frac - 1.0;
            offset + amp * if centred.abs() < 1e-3 { 0.5 } else { centred }
        })
        .collect()
}

fn tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    amp: f32,
    offset: f32,
) -> Tensor<B, D> {
    let len = shape.iter().product();
    Tensor::from_data(
        TensorData::new(values(len, seed, amp, offset), shape),
        &Default::default(),
    )
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

fn assert_close(name: &str, got: Vec<f32>, want: Vec<f32>) -> Result<(), TestCaseError> {
    let e = relative_error(&got, &want);
    prop_assert!(
        e <= TOLERANCE,
        "{name}: relative error {e:.2e} > {TOLERANCE:.0e}"
    );
    Ok(())
}

#[derive(Clone, Debug)]
struct NormCase {
    n: usize,
    groups: usize,
    per_group: usize,
    spatial: [usize; 2],
    film: bool,
    silu: bool,
    eps: f64,
    seed: u64,
}

fn norm_case() -> impl Strategy<Value = NormCase> {
    (
        1usize..4,
        1usize..5,
        1usize..5,
        (1usize..13, 1usize..13),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![1e-5, 1e-6, 1e-3]),
        0u64..1000,
    )
        .prop_filter(
            "at least 4 elements per group",
            |(_, _, per_group, (h, w), ..)| per_group * h * w >= 4,
        )
        .prop_map(
            |(n, groups, per_group, (h, w), film, silu, eps, seed)| NormCase {
                n,
                groups,
                per_group,
                spatial: [h, w],
                film,
                silu,
                eps,
                seed,
            },
        )
}

impl NormCase {
    fn channels(&self) -> usize {
        self.groups * self.per_group
    }
    fn options(&self) -> GroupNormOptions {
        GroupNormOptions {
            num_groups: self.groups,
            eps: self.eps,
            activation: if self.silu {
                NormActivation::Silu
            } else {
                NormActivation::None
            },
        }
    }
    fn shape(&self) -> [usize; 4] {
        [self.n, self.channels(), self.spatial[0], self.spatial[1]]
    }
    /// x (offset so the mean matters), γ, β, FiLM scale and shift, and the output weights.
    #[allow(clippy::type_complexity)]
    fn inputs<B: Backend>(
        &self,
    ) -> (
        Tensor<B, 4>,
        Tensor<B, 1>,
        Tensor<B, 1>,
        Option<(Tensor<B, 2>, Tensor<B, 2>)>,
        Tensor<B, 4>,
    ) {
        let c = self.channels();
        let s = self.seed;
        let film = self.film.then(|| {
            (
                tensor([self.n, c], s + 4, 0.5, 0.0),
                tensor([self.n, c], s + 5, 0.5, 0.0),
            )
        });
        (
            tensor(self.shape(), s, 2.0, 0.7),
            tensor([c], s + 1, 0.5, 1.0),
            tensor([c], s + 2, 0.5, 0.8),
            film,
            tensor(self.shape(), s + 3, 1.0, 0.0),
        )
    }
}

/// The composition on burn's own ops, reshaped like the fused entry point.
fn unfused_norm<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    film: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    options: GroupNormOptions,
) -> Tensor<B, 4> {
    let dims = x.dims();
    let x = x.reshape([dims[0], dims[1], dims[2] * dims[3]]);
    let out = reference::group_norm_forward::<B>(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        film.map(|(s, t)| (s.into_primitive().tensor(), t.into_primitive().tensor())),
        options,
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(out)).reshape(dims)
}

/// Forward outputs and the gradients of `Σ y·w` for x, γ, β, scale, shift, via `norm`.
fn norm_grads<B: AutodiffBackend>(
    case: &NormCase,
    norm: impl Fn(
        Tensor<B, 4>,
        Tensor<B, 1>,
        Tensor<B, 1>,
        Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> Tensor<B, 4>,
) -> Vec<(&'static str, Vec<f32>)> {
    let (x, gamma, beta, film, w) = case.inputs::<B>();
    let x = x.require_grad();
    let gamma = gamma.require_grad();
    let beta = beta.require_grad();
    let film = film.map(|(s, t)| (s.require_grad(), t.require_grad()));
    let y = norm(x.clone(), gamma.clone(), beta.clone(), film.clone());
    // Loss Σ y²/2 + Σ y·w: the γ, β, scale and shift gradients are sums over N·S elements;
    // with a sign-free upstream gradient alone they cancel down to f32 rounding noise
    // (Σ x̂ = 0 per group), and no f32 implementation agrees with another there. The y²
    // term (an MSE, as in training) keeps them well conditioned.
    let grads = (y.clone() * y.clone() * 0.5 + y.clone() * w)
        .sum()
        .backward();
    let mut out = vec![
        ("y", host(y.inner())),
        ("dx", host(x.grad(&grads).unwrap())),
        ("dgamma", host(gamma.grad(&grads).unwrap())),
        ("dbeta", host(beta.grad(&grads).unwrap())),
    ];
    if let Some((s, t)) = film {
        out.push(("dscale", host(s.grad(&grads).unwrap())));
        out.push(("dshift", host(t.grad(&grads).unwrap())));
    }
    out
}

fn check_norm_backend<B: AutodiffBackend + EmberBackend>(
    case: &NormCase,
) -> Result<(), TestCaseError> {
    let opts = case.options();
    let fused = norm_grads::<B>(case, |x, g, b, f| group_norm(x, g, b, f, opts));
    let unfused = norm_grads::<B>(case, |x, g, b, f| unfused_norm(x, g, b, f, opts));
    for ((name, got), (_, want)) in fused.into_iter().zip(unfused) {
        assert_close(name, got, want)?;
    }
    Ok(())
}

/// The generic closed-form backward (the fallback every backend without a kernel uses)
/// against burn's autodiff of the composition.
fn check_generic_norm_backward(case: &NormCase) -> Result<(), TestCaseError> {
    type B = Flex;
    let opts = case.options();
    let (x, gamma, beta, film, w) = case.inputs::<B>();
    let [n, c, h, wd] = case.shape();
    // The upstream gradient of norm_grads' loss Σ y²/2 + Σ y·w is y + w.
    let y = unfused_norm(x.clone(), gamma.clone(), beta.clone(), film.clone(), opts);
    let w = y + w;
    let g = reference::group_norm_backward::<B>(
        x.reshape([n, c, h * wd]).into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        film.map(|(s, t)| (s.into_primitive().tensor(), t.into_primitive().tensor())),
        w.reshape([n, c, h * wd]).into_primitive().tensor(),
        opts,
    );
    let want = norm_grads::<Autodiff<Flex>>(case, |x, g, b, f| unfused_norm(x, g, b, f, opts));
    let mut got = vec![
        host(Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(g.x))),
        host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            g.gamma,
        ))),
        host(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            g.beta,
        ))),
    ];
    if let Some((s, t)) = g.film {
        got.push(host(Tensor::<B, 2>::from_primitive(
            TensorPrimitive::Float(s),
        )));
        got.push(host(Tensor::<B, 2>::from_primitive(
            TensorPrimitive::Float(t),
        )));
    }
    for (got, (name, want)) in got.into_iter().zip(want.into_iter().skip(1)) {
        assert_close(name, got, want)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fused_group_norm_matches_composition_on_flex(case in norm_case()) {
        check_norm_backend::<Autodiff<Flex>>(&case)?;
    }

    #[test]
    fn generic_group_norm_backward_matches_autodiff(case in norm_case()) {
        check_generic_norm_backward(&case)?;
    }
}

#[cfg(feature = "ndarray")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn fused_group_norm_matches_composition_on_ndarray(case in norm_case()) {
        check_norm_backend::<Autodiff<burn::backend::NdArray>>(&case)?;
    }
}

#[test]
fn fused_group_norm_handles_large_groups_and_offsets() {
    // One group of 64×64×10 elements with a mean far from zero: the lane/f64 statistics
    // must not lose the variance to cancellation.
    let case = NormCase {
        n: 1,
        groups: 2,
        per_group: 10,
        spatial: [64, 64],
        film: true,
        silu: true,
        eps: 1e-6,
        seed: 7,
    };
    check_norm_backend::<Autodiff<Flex>>(&case).unwrap();
    let (x, g, b, f, _) = case.inputs::<Flex>();
    let x = x + 100.0;
    let fused = host(group_norm(
        x.clone(),
        g.clone(),
        b.clone(),
        f.clone(),
        case.options(),
    ));
    let unfused = host(unfused_norm(x, g, b, f, case.options()));
    let e = relative_error(&fused, &unfused);
    assert!(e <= 1e-4, "offset input: {e:.2e}");
}

#[derive(Clone, Debug)]
struct AttnCase {
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    dim: usize,
    bias: bool,
    block: usize,
    seed: u64,
}

fn attn_case() -> impl Strategy<Value = AttnCase> {
    (
        1usize..3,
        1usize..4,
        1usize..70,
        1usize..70,
        1usize..17,
        any::<bool>(),
        prop::sample::select(vec![1usize, 37, 500, 1 << 22]),
        0u64..1000,
    )
        .prop_map(
            |(batch, heads, queries, keys, dim, bias, block, seed)| AttnCase {
                batch,
                heads,
                queries,
                keys,
                dim,
                bias,
                block,
                seed,
            },
        )
}

impl AttnCase {
    #[allow(clippy::type_complexity)]
    fn inputs<B: Backend>(
        &self,
    ) -> (
        Tensor<B, 4>,
        Tensor<B, 4>,
        Tensor<B, 4>,
        Option<Tensor<B, 4>>,
        Tensor<B, 4>,
    ) {
        let s = self.seed;
        let q = [self.batch, self.heads, self.queries, self.dim];
        let kv = [self.batch, self.heads, self.keys, self.dim];
        let bias = self.bias.then(|| {
            tensor::<B, 4>([self.batch, 1, 1, self.keys], s + 4, 2.0, 0.0).expand([
                self.batch,
                self.heads,
                self.queries,
                self.keys,
            ])
        });
        (
            tensor(q, s, 1.5, 0.0),
            tensor(kv, s + 1, 1.5, 0.0),
            tensor(kv, s + 2, 1.0, 0.0),
            bias,
            tensor(q, s + 3, 1.0, 0.0),
        )
    }
    fn scale(&self) -> f64 {
        1.0 / (self.dim as f64).sqrt()
    }
}

fn attn_grads<B: AutodiffBackend>(
    case: &AttnCase,
    attend: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 4>>) -> Tensor<B, 4>,
) -> Vec<(&'static str, Vec<f32>)> {
    let (q, k, v, bias, w) = case.inputs::<B>();
    let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
    let y = attend(q.clone(), k.clone(), v.clone(), bias);
    let grads = (y.clone() * y.clone() * 0.5 + y.clone() * w)
        .sum()
        .backward();
    vec![
        ("out", host(y.inner())),
        ("dq", host(q.grad(&grads).unwrap())),
        ("dk", host(k.grad(&grads).unwrap())),
        ("dv", host(v.grad(&grads).unwrap())),
    ]
}

fn unfused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    burn_attention(
        q,
        k,
        v,
        None,
        bias,
        AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fused_attention_matches_composition(case in attn_case()) {
        let scale = case.scale();
        let fused = attn_grads::<Autodiff<Flex>>(&case, |q, k, v, b| attention(q, k, v, b, scale));
        let unfused = attn_grads::<Autodiff<Flex>>(&case, |q, k, v, b| unfused_attention(q, k, v, b, scale));
        for ((name, got), (_, want)) in fused.into_iter().zip(unfused) {
            assert_close(name, got, want)?;
        }
    }

    #[test]
    fn blocked_attention_backward_matches_autodiff(case in attn_case()) {
        // The generic blocked backward with small blocks (down to one query row), so every
        // block boundary and the final partial block are exercised.
        let scale = case.scale();
        let want = attn_grads::<Autodiff<Flex>>(&case, |q, k, v, b| unfused_attention(q, k, v, b, scale));
        let (q, k, v, bias, w) = case.inputs::<Flex>();
        // The upstream gradient of attn_grads' loss Σ y²/2 + Σ y·w is y + w.
        let w = unfused_attention(q.clone(), k.clone(), v.clone(), bias.clone(), scale) + w;
        let g = reference::attention_backward_in_blocks::<Flex>(
            q.into_primitive().tensor(),
            k.into_primitive().tensor(),
            v.into_primitive().tensor(),
            bias.map(|b| b.into_primitive().tensor()),
            w.into_primitive().tensor(),
            scale,
            case.block,
        );
        let got = [g.query, g.key, g.value].map(|t| host(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(t))));
        for (got, (name, want)) in got.into_iter().zip(want.into_iter().skip(1)) {
            assert_close(name, got, want)?;
        }
    }
}

/// `[B, H, L, D]` heads as a view of token-first `[B, L, H·D]` memory (how the attention
/// layer splits heads).
fn token_first_heads([b, l, h, d]: [usize; 4], seed: u64) -> Tensor<Flex, 4> {
    tensor::<Flex, 3>([b, l, h * d], seed, 1.0, 0.0)
        .reshape([b, l, h, d])
        .swap_dims(1, 2)
}

/// Head splits as views of token-first `[B, L, H·D]` and channel-first `[B, H·D, L]`
/// memory (what the attention layers pass), against burn's op on the same values.
#[test]
fn fused_attention_reads_strided_views() {
    type B = Flex;
    let (b, h, l, s, d) = (2, 3, 37, 29, 8);
    let unfused = |q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>| {
        host(unfused_attention(q, k, v, None, 0.3))
    };
    // Token-first.
    let q = token_first_heads([b, l, h, d], 1);
    let k = token_first_heads([b, s, h, d], 2);
    let v = token_first_heads([b, s, h, d], 3);
    let want = unfused(q.clone(), k.clone(), v.clone());
    let got = attention(q, k, v, None, 0.3);
    // The output comes back in the query's (token-first) memory order; merging heads is a view.
    let merged = got.clone().swap_dims(1, 2).reshape([b, l, h * d]);
    assert_eq!(merged.dims(), [b, l, h * d]);
    let e = relative_error(&host(got), &want);
    assert!(e <= TOLERANCE, "token-first: {e:.2e}");
    // Channel-first.
    let q = tensor::<B, 3>([b, h * d, l], 4, 1.0, 0.0)
        .reshape([b, h, d, l])
        .swap_dims(2, 3);
    let k = tensor::<B, 3>([b, h * d, s], 5, 1.0, 0.0)
        .reshape([b, h, d, s])
        .swap_dims(2, 3);
    let v = tensor::<B, 3>([b, h * d, s], 6, 1.0, 0.0)
        .reshape([b, h, d, s])
        .swap_dims(2, 3);
    let want = unfused(q.clone(), k.clone(), v.clone());
    let e = relative_error(&host(attention(q, k, v, None, 0.3)), &want);
    assert!(e <= TOLERANCE, "channel-first: {e:.2e}");
}

#[derive(Clone, Debug)]
struct ConvCase {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    bias: bool,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..4, 1usize..9, 1usize..9),
        (1usize..12, 1usize..12),
        (prop::sample::select(vec![1usize, 3]), 1usize..4),
        (
            (1usize..3, 1usize..3),
            (0usize..3, 0usize..3),
            (1usize..3, 1usize..3),
        ),
        any::<bool>(),
        0u64..1000,
    )
        .prop_map(
            |((n, cin, cout), (h, w), (kh, kw), (stride, padding, dilation), bias, seed)| {
                ConvCase {
                    n,
                    cin,
                    cout,
                    h,
                    w,
                    kernel: [kh, kw],
                    stride: [stride.0, stride.1],
                    padding: [padding.0, padding.1],
                    dilation: [dilation.0, dilation.1],
                    bias,
                    seed,
                }
            },
        )
        .prop_filter("the kernel fits the padded input", |c| {
            c.h + 2 * c.padding[0] > c.dilation[0] * (c.kernel[0] - 1)
                && c.w + 2 * c.padding[1] > c.dilation[1] * (c.kernel[1] - 1)
        })
}

fn conv_grads<B: AutodiffBackend>(
    case: &ConvCase,
    conv: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>) -> Tensor<B, 4>,
) -> Vec<(&'static str, Vec<f32>)> {
    let s = case.seed;
    let x = tensor::<B, 4>([case.n, case.cin, case.h, case.w], s, 1.0, 0.2).require_grad();
    let wgt = tensor::<B, 4>(
        [case.cout, case.cin, case.kernel[0], case.kernel[1]],
        s + 1,
        0.5,
        0.0,
    )
    .require_grad();
    // A positive bias and positive output weights keep Σ dY (the bias gradient) away from
    // cancellation, where f32 sums in different orders cannot agree to 1e-5.
    let bias = case
        .bias
        .then(|| tensor::<B, 1>([case.cout], s + 2, 0.5, 2.0).require_grad());
    let y = conv(x.clone(), wgt.clone(), bias.clone());
    let w = tensor::<B, 4>(y.dims(), s + 3, 0.5, 1.0);
    // Σ y²/2 + Σ y·w, as for the norm: keeps the weight reductions well conditioned.
    let grads = (y.clone() * y.clone() * 0.5 + y.clone() * w)
        .sum()
        .backward();
    let mut out = vec![
        ("y", host(y.inner())),
        ("dx", host(x.grad(&grads).unwrap())),
        ("dweight", host(wgt.grad(&grads).unwrap())),
    ];
    if let Some(b) = bias {
        out.push(("dbias", host(b.grad(&grads).unwrap())));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Flex's im2col convolution (per-sample, whole-batch and 1×1 paths) against burn's
    /// conv2d, forward and gradient.
    #[test]
    fn fused_conv2d_matches_burn_conv2d(case in conv_case()) {
        use burn::tensor::ops::ConvOptions;
        let options = ConvOptions::new(case.stride, case.padding, case.dilation, 1);
        let fused = conv_grads::<Autodiff<Flex>>(&case, |x, w, b| {
            ember_conditioning::kernels::conv2d(x, w, b, options.clone())
        });
        let unfused = conv_grads::<Autodiff<Flex>>(&case, |x, w, b| {
            burn::tensor::module::conv2d(x, w, b, options.clone())
        });
        for ((name, got), (_, want)) in fused.into_iter().zip(unfused) {
            assert_close(name, got, want)?;
        }
    }
}

/// Long sequences: several query blocks per head on Flex, against burn's op.
#[test]
fn fused_attention_long_sequences() {
    for (b, h, l, s, d) in [(1, 2, 600, 700, 16), (1, 8, 1030, 1030, 40)] {
        let q = token_first_heads([b, l, h, d], 1);
        let k = token_first_heads([b, s, h, d], 2);
        let v = token_first_heads([b, s, h, d], 3);
        let scale = 1.0 / (d as f64).sqrt();
        let want = host(unfused_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            scale,
        ));
        let e = relative_error(&host(attention(q, k, v, None, scale)), &want);
        assert!(e <= TOLERANCE, "[{b}, {h}, {l}, {s}, {d}]: {e:.2e}");
    }
}

/// Feature maps of at least 512 pixels take the per-sample paths (one task per sample when
/// the batch splits evenly over the threads, otherwise threaded GEMMs one sample at a time);
/// the property test's small maps take the whole-batch path.
#[test]
fn fused_conv2d_large_maps_match_burn_conv2d() {
    use burn::tensor::ops::ConvOptions;
    for (n, stride, kernel) in [(4, 1, 3), (3, 1, 3), (1, 2, 3), (2, 1, 1), (3, 1, 1)] {
        let case = ConvCase {
            n,
            cin: 3,
            cout: 5,
            h: 26,
            w: 24,
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [kernel / 2, kernel / 2],
            dilation: [1, 1],
            bias: true,
            seed: 11,
        };
        let options = ConvOptions::new(case.stride, case.padding, case.dilation, 1);
        let fused = conv_grads::<Autodiff<Flex>>(&case, |x, w, b| {
            ember_conditioning::kernels::conv2d(x, w, b, options.clone())
        });
        let unfused = conv_grads::<Autodiff<Flex>>(&case, |x, w, b| {
            burn::tensor::module::conv2d(x, w, b, options.clone())
        });
        for ((name, got), (_, want)) in fused.into_iter().zip(unfused) {
            let e = relative_error(&got, &want);
            assert!(e <= TOLERANCE, "{case:?} {name}: {e:.2e}");
        }
    }
}

/// A NaN in the input must reach the output (the AVX2 `exp` must not clamp it away), and an
/// empty query sequence must not panic in the blocked backward.
#[test]
fn fused_attention_propagates_nan_and_handles_empty_queries() {
    type B = Flex;
    let (b, h, l, s, d) = (1, 2, 9, 16, 8);
    let mut qv = values(b * h * l * d, 1, 1.0, 0.0);
    qv[3] = f32::NAN;
    let q = Tensor::<B, 4>::from_data(TensorData::new(qv, [b, h, l, d]), &Default::default());
    let k = tensor::<B, 4>([b, h, s, d], 2, 1.0, 0.0);
    let v = tensor::<B, 4>([b, h, s, d], 3, 1.0, 0.0);
    let out = host(attention(q, k.clone(), v.clone(), None, 0.35));
    assert!(out[..d].iter().all(|x| x.is_nan()), "row 0 must be NaN");
    assert!(
        out[d..].iter().all(|x| x.is_finite()),
        "other rows must be finite"
    );

    let q = Tensor::<B, 4>::zeros([b, h, 0, d], &Default::default());
    let g = reference::attention_backward::<B>(
        q.clone().into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        None,
        q.into_primitive().tensor(),
        0.35,
    );
    let dq = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(g.query));
    assert_eq!(dq.dims(), [b, h, 0, d]);
}
