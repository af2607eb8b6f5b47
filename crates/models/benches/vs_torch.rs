//! Ember's side of `cargo xtask bench --vs-torch`: one case per process, on the same
//! configuration, weights and inputs as PyTorch + diffusers
//! (`tools/reference/bench_vs_torch.py`, which writes them with `--prepare`).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench -p ember-models --bench vs_torch -- \
//!     --case NAME --dir $PWD/target/bench-vs-torch/NAME [--warmup W] [--runs N]
//! ```
//!
//! `--dir` should be absolute: cargo runs benches from the crate folder (xtask runs the built
//! binary directly, from the workspace root, with absolute paths).
//!
//! Cases (see `docs/benchmarks.md`):
//! - `ddpm_cifar10_b1`, `ddpm_cifar10_b8`, `sd15_unet_b1`: U-Net forward on the Flex backend;
//!   loads the folder with [`ember_models::load_unet`] and `inputs.safetensors` with
//!   [`ember_models::io::read_forward_inputs`], checks the output against diffusers'
//!   `output.safetensors` (max-abs-err ≤ 1e-3 × max |diffusers output|).
//! - `mnist_train_b64`: one training step on `Autodiff<Flex>`: forward with class labels, MSE
//!   against `target.safetensors`, backward, burn's AdamW (lr 1e-4, weight decay 0.01,
//!   betas 0.9 / 0.999, epsilon 1e-8, as `torch.optim.AdamW`). Checks the first step's loss
//!   against diffusers' (relative error ≤ 1e-4) and reports the second step's (after one
//!   update; relative error ≤ 1e-3).
//! - `attention_4096`: [`ember_conditioning::attention::Attention`] built as diffusers'
//!   `Attention(query_dim, heads, dim_head)` from `attention.json`, weights loaded from
//!   `weights.safetensors`, run on `hidden_states` of `io.safetensors`; output checked against
//!   diffusers' (max-abs-err ≤ 1e-4 × max |output|).
//!
//! The check runs first and counts as warm-up (one forward, or two training steps); then the
//! remaining `--warmup` iterations, then `--runs` timed ones, each ending with a scalar
//! read-back (`sum()` of the output, or the step's loss after the optimizer update).
//!
//! Output: one JSON line on stdout with `case`, `side` (`"ember"`), `median_ms`, `min_ms`,
//! `max_ms`, `runs`, `warmup`, `threads`, `peak_rss_mb` (VmHWM of `/proc/self/status`: the
//! process's peak resident set, weights and loading included), `check`, `max_abs_err`,
//! `rel_err`, `tolerance`, `check_ok` and `times_ms`. When the check fails the line has no
//! timings, a message goes to stderr and the process exits with status 1.

use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use ember_conditioning::attention::{Attention, AttentionConfig};
use ember_core::backend::DefaultBackend as B;
use ember_core::Denoiser;
use ember_models::io::{read_forward_inputs, read_tensors, HostTensorValue};
use ember_models::weights::{load_weights, read_safetensors_lazy};
use ember_models::{load_unet, UNet2D};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The training case's backend.
type AB = Autodiff<B>;

/// Learning rate of the training step (as the Python side).
const LR: f64 = 1e-4;
/// AdamW weight decay of the training step (as the Python side).
const WEIGHT_DECAY: f32 = 0.01;

const USAGE: &str = "usage: vs_torch --case NAME --dir DIR [--warmup W] [--runs N]\n\
    cases: ddpm_cifar10_b1, ddpm_cifar10_b8, sd15_unet_b1, mnist_train_b64, attention_4096";

/// Prints `vs_torch: <message>` and exits with status 2 (bad arguments or unreadable files).
fn die(message: impl std::fmt::Display) -> ! {
    eprintln!("vs_torch: {message}");
    std::process::exit(2)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn count_arg(args: &[String], name: &str, default: usize) -> usize {
    match arg(args, name) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| die(format!("{name} takes a non-negative integer, got `{v}`"))),
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What one case measured.
struct Outcome {
    check: &'static str,
    max_abs_err: f64,
    rel_err: f64,
    tolerance: f64,
    /// Case-specific fields added to the JSON line.
    extra: Map<String, Value>,
    /// Timed milliseconds; empty when the check failed.
    times: Vec<f64>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.rel_err <= self.tolerance
    }
}

fn tensors(path: &Path) -> BTreeMap<String, HostTensorValue> {
    read_tensors(path).unwrap_or_else(|e| die(format!("{}: {e}", path.display())))
}

/// A float tensor of a safetensors file as `(shape, values)`.
fn host_float(
    map: &BTreeMap<String, HostTensorValue>,
    name: &str,
    path: &Path,
) -> (Vec<usize>, Vec<f32>) {
    match map.get(name) {
        Some(HostTensorValue::Float(w)) => (w.shape.clone(), w.values.clone()),
        Some(HostTensorValue::Int { .. }) => die(format!(
            "{}: `{name}` is an integer tensor, expected float",
            path.display()
        )),
        None => die(format!("{}: no tensor `{name}`", path.display())),
    }
}

fn device_tensor<Bk: Backend, const D: usize>(
    (shape, values): (Vec<usize>, Vec<f32>),
    what: &str,
    device: &Bk::Device,
) -> Tensor<Bk, D> {
    if shape.len() != D {
        die(format!(
            "{what}: expected a {D}-D tensor, got shape {shape:?}"
        ));
    }
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_else(|e| die(format!("reading a tensor back: {e:?}")))
}

/// `(max |got − reference|, max |reference|)`.
fn compare(got: &[f32], reference: &[f32]) -> (f64, f64) {
    if got.len() != reference.len() {
        die(format!(
            "output has {} values, the reference {}",
            got.len(),
            reference.len()
        ));
    }
    let err = got
        .iter()
        .zip(reference)
        .map(|(a, r)| f64::from((a - r).abs()))
        .fold(0.0, f64::max);
    let scale = reference
        .iter()
        .map(|r| f64::from(r.abs()))
        .fold(0.0, f64::max);
    (err, scale)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        die(format!(
            "{}: {e} (run the Python --prepare)",
            path.display()
        ))
    });
    serde_json::from_str(&text).unwrap_or_else(|e| die(format!("{}: {e}", path.display())))
}

fn json_f64(v: &Value, key: &str, path: &Path) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| die(format!("{}: no number `{key}`", path.display())))
}

/// Milliseconds rounded to the microsecond, for the report.
fn ms3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Runs `f` `n` times, returning the milliseconds of each call.
fn timed(n: usize, mut f: impl FnMut() -> f32) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// A forward's outcome: its first output against diffusers' (`tolerance` relative to the
/// reference's largest magnitude), then, if that passes, `warmup − 1` untimed and `runs`
/// timed calls, each ending with a scalar read-back.
fn check_then_time<const D: usize>(
    run: impl Fn() -> Tensor<B, D>,
    reference: &[f32],
    tolerance: f64,
    warmup: usize,
    runs: usize,
) -> Outcome {
    let (err, scale) = compare(&host(run()), reference);
    let mut outcome = Outcome {
        check: "output vs diffusers' output",
        max_abs_err: err,
        rel_err: err / scale,
        tolerance,
        extra: Map::new(),
        times: Vec::new(),
    };
    outcome
        .extra
        .insert("max_abs_reference".into(), json!(scale));
    if !outcome.ok() {
        return outcome;
    }
    for _ in 1..warmup {
        std::hint::black_box(run().sum().into_scalar().elem::<f32>());
    }
    outcome.times = timed(runs, || run().sum().into_scalar().elem::<f32>());
    outcome
}

/// Forward of a diffusers U-Net folder (`ddpm_cifar10_*`, `sd15_unet_b1`).
fn unet_forward(dir: &Path, warmup: usize, runs: usize) -> Outcome {
    let device = Default::default();
    let (unet, _) = load_unet::<B>(dir, &device)
        .unwrap_or_else(|e| die(format!("loading {}: {e}", dir.display())));
    let inputs_path = dir.join("inputs.safetensors");
    let inputs = read_forward_inputs::<B>(&inputs_path, &device)
        .unwrap_or_else(|e| die(format!("{}: {e}", inputs_path.display())));
    let out_path = dir.join("output.safetensors");
    let (_, reference) = host_float(&tensors(&out_path), "output", &out_path);
    let run = || {
        unet.forward(
            inputs.sample.clone(),
            inputs.timesteps.clone(),
            &inputs.conditioning,
        )
        .unwrap_or_else(|e| die(format!("forward: {e}")))
    };
    check_then_time(run, &reference, 1e-3, warmup, runs)
}

/// One training step: forward, MSE, backward, AdamW update; returns the model and the loss
/// (read back after the update).
fn train_step<O: Optimizer<UNet2D<AB>, AB>>(
    model: UNet2D<AB>,
    optim: &mut O,
    inputs: &ember_models::io::ForwardInputs<AB>,
    target: &Tensor<AB, 4>,
) -> (UNet2D<AB>, f32) {
    let pred = model
        .forward(
            inputs.sample.clone(),
            inputs.timesteps.clone(),
            &inputs.conditioning,
        )
        .unwrap_or_else(|e| die(format!("forward: {e}")));
    let loss = (pred - target.clone()).square().mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(LR, model, grads);
    (model, loss.into_scalar().elem::<f32>())
}

/// `mnist_train_b64`: training steps on `Autodiff<Flex>`.
fn train(dir: &Path, warmup: usize, runs: usize) -> Outcome {
    let device = Default::default();
    let (mut model, _) = load_unet::<AB>(dir, &device)
        .unwrap_or_else(|e| die(format!("loading {}: {e}", dir.display())));
    let inputs_path = dir.join("inputs.safetensors");
    let inputs = read_forward_inputs::<AB>(&inputs_path, &device)
        .unwrap_or_else(|e| die(format!("{}: {e}", inputs_path.display())));
    let target_path = dir.join("target.safetensors");
    let target: Tensor<AB, 4> = device_tensor(
        host_float(&tensors(&target_path), "target", &target_path),
        "target",
        &device,
    );
    let ref_path = dir.join("reference.json");
    let reference = read_json(&ref_path);
    let (ref0, ref1) = (
        json_f64(&reference, "loss0", &ref_path),
        json_f64(&reference, "loss1", &ref_path),
    );
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(WEIGHT_DECAY)
        .init::<AB, UNet2D<AB>>();

    let (m, loss0) = train_step(model, &mut optim, &inputs, &target);
    let (m, loss1) = train_step(m, &mut optim, &inputs, &target);
    model = m;
    let err0 = (f64::from(loss0) - ref0).abs();
    let rel1 = (f64::from(loss1) - ref1).abs() / ref1.abs();
    eprintln!(
        "vs_torch: mnist_train_b64: loss0 {loss0:.8} (diffusers {ref0:.8}), loss1 {loss1:.8} (diffusers {ref1:.8})"
    );
    let mut outcome = Outcome {
        check: "first-step loss vs diffusers'",
        max_abs_err: err0,
        rel_err: err0 / ref0.abs(),
        tolerance: 1e-4,
        extra: Map::new(),
        times: Vec::new(),
    };
    for (k, v) in [
        ("loss0", f64::from(loss0)),
        ("loss0_reference", ref0),
        ("loss1", f64::from(loss1)),
        ("loss1_reference", ref1),
        ("loss1_rel_err", rel1),
    ] {
        outcome.extra.insert(k.into(), json!(v));
    }
    if !outcome.ok() || rel1 > 1e-3 {
        if outcome.ok() {
            // Report the second step as the failing check.
            outcome.check = "second-step loss (after one AdamW update) vs diffusers'";
            outcome.max_abs_err = (f64::from(loss1) - ref1).abs();
            outcome.rel_err = rel1;
            outcome.tolerance = 1e-3;
        }
        return outcome;
    }
    for _ in 2..warmup {
        let (m, loss) = train_step(model, &mut optim, &inputs, &target);
        model = m;
        std::hint::black_box(loss);
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let (m, loss) = train_step(model, &mut optim, &inputs, &target);
        std::hint::black_box(loss);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        model = m;
    }
    outcome.times = times;
    outcome
}

/// `attention_4096`: diffusers' `Attention(query_dim, heads, dim_head)` alone.
fn attention(dir: &Path, warmup: usize, runs: usize) -> Outcome {
    let device = Default::default();
    let cfg_path = dir.join("attention.json");
    let cfg = read_json(&cfg_path);
    let dim = |k: &str| json_f64(&cfg, k, &cfg_path) as usize;
    let config = AttentionConfig::tokens(dim("query_dim"), None, dim("heads"), dim("dim_head"));
    let layer = Attention::<B>::new(&config, &device)
        .unwrap_or_else(|e| die(format!("building the attention layer: {e}")));
    let weights_path = dir.join("weights.safetensors");
    let weights = read_safetensors_lazy(&weights_path)
        .unwrap_or_else(|e| die(format!("{}: {e}", weights_path.display())));
    let (layer, _) = load_weights(layer, weights, &weights_path, &device)
        .unwrap_or_else(|e| die(format!("loading {}: {e}", weights_path.display())));
    let io_path = dir.join("io.safetensors");
    let io = tensors(&io_path);
    let hidden: Tensor<B, 3> = device_tensor(
        host_float(&io, "hidden_states", &io_path),
        "hidden_states",
        &device,
    );
    let (_, reference) = host_float(&io, "output", &io_path);
    let run = || layer.forward_tokens(hidden.clone(), None, None);
    check_then_time(run, &reference, 1e-4, warmup, runs)
}

fn main() {
    // `cargo bench` appends `--bench`; it and any other unknown flag are ignored.
    let args: Vec<String> = std::env::args().collect();
    let (Some(case), Some(dir)) = (arg(&args, "--case"), arg(&args, "--dir")) else {
        die(USAGE)
    };
    let dir = PathBuf::from(dir);
    if !dir.join("prepared.json").is_file() {
        die(format!(
            "{} is not prepared: run `tools/reference/run.sh bench_vs_torch.py --case {case} --dir {} --prepare` first",
            dir.display(),
            dir.display()
        ));
    }
    let warmup = count_arg(&args, "--warmup", 3);
    let runs = count_arg(&args, "--runs", 10);
    if runs == 0 {
        die("--runs must be at least 1");
    }
    let outcome = match case.as_str() {
        "ddpm_cifar10_b1" | "ddpm_cifar10_b8" | "sd15_unet_b1" => unet_forward(&dir, warmup, runs),
        "mnist_train_b64" => train(&dir, warmup, runs),
        "attention_4096" => attention(&dir, warmup, runs),
        other => die(format!("unknown case `{other}`\n{USAGE}")),
    };
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    let threads = match threads.as_deref().map(str::parse::<u64>) {
        Some(Ok(n)) => json!(n),
        _ => json!(threads.unwrap_or_else(|| "all cores".into())),
    };
    let mut line = Map::new();
    line.insert("case".into(), json!(case));
    line.insert("side".into(), json!("ember"));
    let mut sorted = outcome.times.clone();
    sorted.sort_by(f64::total_cmp);
    if !sorted.is_empty() {
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        line.insert("median_ms".into(), json!(ms3(median)));
        line.insert("min_ms".into(), json!(ms3(sorted[0])));
        line.insert("max_ms".into(), json!(ms3(sorted[n - 1])));
    }
    line.insert("runs".into(), json!(outcome.times.len()));
    line.insert("warmup".into(), json!(warmup));
    line.insert("threads".into(), threads);
    line.insert(
        "peak_rss_mb".into(),
        json!((peak_rss_mb() * 10.0).round() / 10.0),
    );
    line.insert("check".into(), json!(outcome.check));
    line.insert("max_abs_err".into(), json!(outcome.max_abs_err));
    line.insert("rel_err".into(), json!(outcome.rel_err));
    line.insert("tolerance".into(), json!(outcome.tolerance));
    line.insert("check_ok".into(), json!(outcome.ok()));
    line.extend(outcome.extra.clone());
    let times: Vec<f64> = outcome.times.iter().copied().map(ms3).collect();
    line.insert("times_ms".into(), json!(times));
    println!("{}", Value::Object(line));
    if !outcome.ok() {
        eprintln!(
            "vs_torch: {case}: PARITY CHECK FAILED ({}): max-abs-err {:.3e}, relative {:.3e} > tolerance {:.0e}; not timed",
            outcome.check, outcome.max_abs_err, outcome.rel_err, outcome.tolerance
        );
        std::process::exit(1);
    }
}
