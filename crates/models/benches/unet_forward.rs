//! UNet2DModel forward time on the CPU (Flex), Ember's side of the DDPM-CIFAR10 forward
//! benchmark in `docs/benchmarks.md`; diffusers' side is `tools/reference/bench_unet_forward.py`.
//!
//! ```text
//! tools/reference/run.sh bench_unet_forward.py --save target/reference-fullsize/bench_ddpm_cifar10
//! RAYON_NUM_THREADS=2 cargo bench -p ember-models --bench unet_forward -- \
//!     --model target/reference-fullsize/bench_ddpm_cifar10 [--batch 1,8] [--runs 10] [--warmup 3]
//! ```
//!
//! The model folder and `io_b<B>.safetensors` (inputs and diffusers' output) come from the
//! reference script's `--save`, so both sides run identical weights and inputs; the output is
//! checked against diffusers' (max-abs-err printed) before timing. Each timed forward ends
//! with a scalar read-back, as on the Python side. One JSON line per batch size, same fields
//! as the reference script; `peak_rss_mb` is the process's peak resident set so far, and
//! `allocations_per_forward` / `allocated_mb_per_forward` count the heap allocations of one
//! forward (a counting global allocator).

use ember_core::backend::DefaultBackend as B;
use ember_core::burn::tensor::{Tensor, TensorData};
use ember_core::{Conditioning, Denoiser};
use ember_models::io::{read_tensors, HostTensorValue};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts heap allocations (calls and bytes), to report what one forward allocates.
struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
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

fn float(t: &HostTensorValue) -> (Vec<usize>, Vec<f32>) {
    match t {
        HostTensorValue::Float(w) => (w.shape.clone(), w.values.clone()),
        HostTensorValue::Int { .. } => panic!("expected a float tensor"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = arg(&args, "--model").map(PathBuf::from) else {
        eprintln!("usage: cargo bench -p ember-models --bench unet_forward -- --model DIR [--batch 1,8] [--runs 10] [--warmup 3]");
        return;
    };
    let batches: Vec<usize> = arg(&args, "--batch")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .map(|b| b.parse().expect("--batch takes integers"))
        .collect();
    let runs: usize = arg(&args, "--runs").map_or(10, |r| r.parse().expect("--runs"));
    let warmup: usize = arg(&args, "--warmup").map_or(3, |r| r.parse().expect("--warmup"));
    let device = Default::default();
    let (unet, _) = ember_models::load_unet::<B>(&model, &device).expect("load model");
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    for b in batches {
        let io = read_tensors(&model.join(format!("io_b{b}.safetensors"))).expect("io file");
        let (shape, x) = float(&io["sample"]);
        let (_, t) = float(&io["timestep"]);
        let (_, reference) = float(&io["output"]);
        let sample = Tensor::<B, 4>::from_data(TensorData::new(x, shape), &device);
        let timesteps = Tensor::<B, 1>::from_data(TensorData::new(t, [b]), &device);
        let cond = Conditioning::none();
        let y = unet
            .forward(sample.clone(), timesteps.clone(), &cond)
            .unwrap();
        let got: Vec<f32> = y.into_data().convert::<f32>().into_vec().unwrap();
        let err = got
            .iter()
            .zip(&reference)
            .map(|(a, r)| (a - r).abs())
            .fold(0.0f32, f32::max);
        for _ in 1..warmup {
            let _ = unet
                .forward(sample.clone(), timesteps.clone(), &cond)
                .unwrap()
                .sum()
                .into_scalar();
        }
        let (calls, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            ALLOCATED_BYTES.load(Ordering::Relaxed),
        );
        let _ = unet
            .forward(sample.clone(), timesteps.clone(), &cond)
            .unwrap()
            .sum()
            .into_scalar();
        let alloc_calls = ALLOCATIONS.load(Ordering::Relaxed) - calls;
        let alloc_mb = (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) as f64 / 1e6;
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let s = unet
                .forward(sample.clone(), timesteps.clone(), &cond)
                .unwrap()
                .sum()
                .into_scalar();
            ms.push(start.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(s);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let median = if runs % 2 == 1 {
            ms[runs / 2]
        } else {
            0.5 * (ms[runs / 2 - 1] + ms[runs / 2])
        };
        println!(
            "{{\"model\": \"ddpm_cifar10\", \"side\": \"ember-flex\", \"batch\": {b}, \"median_ms\": {median:.2}, \"min_ms\": {:.2}, \"max_ms\": {:.2}, \"threads\": \"{threads}\", \"runs\": {runs}, \"peak_rss_mb\": {:.1}, \"max_abs_err_vs_diffusers\": {err:.2e}, \"allocations_per_forward\": {alloc_calls}, \"allocated_mb_per_forward\": {alloc_mb:.1}}}",
            ms[0],
            ms[runs - 1],
            peak_rss_mb()
        );
    }
}
