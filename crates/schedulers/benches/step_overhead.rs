//! Per-step scheduler overhead (Ember issue "Proof 4"; results in `docs/benchmarks.md`).
//!
//! For each scheduler of `step_overhead_configs.json` (the same file
//! `tools/reference/bench_scheduler_overhead.py` reads, so diffusers runs the same configs),
//! built with `ember_schedulers::from_config_json::<Tensor<DefaultBackend, 4>>`, one criterion
//! iteration is one full 50-step sampling loop on a 1×4×64×64 f32 sample:
//! `scale_model_input` + `step` with a fixed model output (no model). `set_timesteps(50)`,
//! which also resets the multistep history, runs before each loop outside the timer.
//!
//! Honesty rules:
//! - Nothing is cached across iterations: every loop starts again from the same initial
//!   sample and recomputes all 50 steps.
//! - Completion: burn's Flex backend executes every op eagerly inside the call (no lazy graph,
//!   no fusion, no queue), but so that the timer also means "done" on backends that execute
//!   lazily / asynchronously, every timed loop ends by reading a scalar back to the host
//!   (`sum().into_scalar()` of the final sample and of the last model input) before the
//!   timer stops. That read-back (one reduction over 16 Ki elements, twice per 50-step loop)
//!   is inside the timing, as a pipeline would pay it too.
//! - Threads: the numbers in docs/benchmarks.md were taken when burn-flex was built without
//!   its `simd` and `rayon` features (one thread, scalar kernels). `ember-core`'s `flex`
//!   feature now enables both; `RAYON_NUM_THREADS` caps the threads. The bench prints the
//!   process's thread count at the end.
//!
//! Output: criterion's usual lines (throughput in elements/s = steps/s, since one iteration
//! is 50 steps) plus explicit `PER-STEP` lines: the median over criterion's measurement
//! samples of (loop time / 50), in µs. Variants:
//! - `loop50/<Class>`: as above.
//! - `loop50_no_finite_check/<Class>`: the same loop on a newtype over the same tensor whose
//!   `SampleTensor::all_finite` returns `true` without looking, i.e. without the NaN/Inf check
//!   (`check_finite`) every step performs; the difference is the check's share.
//! - `ops/*`: single `SampleTensor` operations on the same 1×4×64×64 tensor (`all_finite`,
//!   `scale`, `add`, a 2-term `lin_comb`, the scalar read-back), the unit costs a step is
//!   built from.
//! - `finite_check/*`: `all_finite` next to cheaper ways of computing the same answer
//!   (diagnosis for docs/benchmarks.md; each is checked against NaN, +Inf and -Inf first).
//!
//! Before timing, one counting pass reports how many `SampleTensor` ops each step issues.
//!
//! Run: `cargo bench -p ember-schedulers --bench step_overhead`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember_core::backend::DefaultBackend;
use ember_core::burn::tensor::{ElementConversion, Tensor};
use ember_core::{HostTensor, SampleTensor, Scheduler};
use serde_json::Value;
use std::cell::RefCell;
use std::hint::black_box;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type T4 = Tensor<DefaultBackend, 4>;

const CONFIGS: &str = include_str!("step_overhead_configs.json");
const SAMPLE_SIZE: usize = 60;

struct Setup {
    steps: usize,
    shape: Vec<usize>,
    configs: Vec<Value>,
}

fn setup() -> Setup {
    let v: Value = serde_json::from_str(CONFIGS).expect("step_overhead_configs.json parses");
    Setup {
        steps: v["num_inference_steps"].as_u64().unwrap() as usize,
        shape: v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect(),
        configs: v["schedulers"].as_array().unwrap().clone(),
    }
}

/// The deterministic inputs both sides use (the Python script builds the same numbers):
/// sample `sin(0.37 i + 0.1)` (times `init_noise_sigma`), model output `cos(0.11 i)`, computed
/// in f64 and stored as f32. Not random, so the final values can be compared across sides.
fn inputs(shape: &[usize], init_noise_sigma: f64) -> (HostTensor, HostTensor) {
    let n: usize = shape.iter().product();
    let x = (0..n)
        .map(|i| (0.37 * i as f64 + 0.1).sin() * init_noise_sigma)
        .collect();
    let e = (0..n).map(|i| (0.11 * i as f64).cos()).collect();
    (
        HostTensor::new(shape.to_vec(), x).unwrap(),
        HostTensor::new(shape.to_vec(), e).unwrap(),
    )
}

// ---------------------------------------------------------------------------------------
// A newtype over the same burn tensor, to switch the NaN check off and to count ops.

trait Mode: Clone + Send + Sync + 'static {
    const CHECK_FINITE: bool;
    const COUNT: bool;
}
#[derive(Clone)]
struct NoCheck;
impl Mode for NoCheck {
    const CHECK_FINITE: bool = false;
    const COUNT: bool = false;
}
#[derive(Clone)]
struct Counting;
impl Mode for Counting {
    const CHECK_FINITE: bool = true;
    const COUNT: bool = true;
}

const OPS: [&str; 11] = [
    "scale",
    "add_scalar",
    "add",
    "sub",
    "mul",
    "clamp",
    "scale_per_sample",
    "zeros_like",
    "to_host",
    "from_host_like",
    "all_finite",
];
static COUNTS: [AtomicU64; 11] = [const { AtomicU64::new(0) }; 11];
static LIN_COMB: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct Probe<M: Mode>(T4, PhantomData<M>);

impl<M: Mode> Probe<M> {
    fn new(t: T4) -> Self {
        Self(t, PhantomData)
    }
    #[inline(always)]
    fn count(op: usize) {
        if M::COUNT {
            COUNTS[op].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<M: Mode> SampleTensor for Probe<M> {
    fn shape(&self) -> Vec<usize> {
        SampleTensor::shape(&self.0)
    }
    fn scale(&self, c: f64) -> Self {
        Self::count(0);
        Self::new(SampleTensor::scale(&self.0, c))
    }
    fn add_scalar(&self, c: f64) -> Self {
        Self::count(1);
        Self::new(SampleTensor::add_scalar(&self.0, c))
    }
    fn add(&self, o: &Self) -> Self {
        Self::count(2);
        Self::new(SampleTensor::add(&self.0, &o.0))
    }
    fn sub(&self, o: &Self) -> Self {
        Self::count(3);
        Self::new(SampleTensor::sub(&self.0, &o.0))
    }
    fn mul(&self, o: &Self) -> Self {
        Self::count(4);
        Self::new(SampleTensor::mul(&self.0, &o.0))
    }
    fn clamp(&self, lo: f64, hi: f64) -> Self {
        Self::count(5);
        Self::new(SampleTensor::clamp(&self.0, lo, hi))
    }
    fn scale_per_sample(&self, f: &[f64]) -> Self {
        Self::count(6);
        Self::new(self.0.scale_per_sample(f))
    }
    fn zeros_like(&self) -> Self {
        Self::count(7);
        Self::new(SampleTensor::zeros_like(&self.0))
    }
    fn to_host(&self) -> HostTensor {
        Self::count(8);
        self.0.to_host()
    }
    fn from_host_like(h: &HostTensor, like: &Self) -> Self {
        Self::count(9);
        Self::new(T4::from_host_like(h, &like.0))
    }
    fn all_finite(&self) -> bool {
        Self::count(10);
        if M::CHECK_FINITE {
            self.0.all_finite()
        } else {
            true
        }
    }
    fn lin_comb(terms: &[(f64, &Self)]) -> Self {
        // Delegates to the tensor's own `lin_comb`, so the op sequence is exactly the plain
        // tensor's (the inner scale/add calls are then not counted separately; the counting
        // pass reports lin_comb calls and their term counts on their own line).
        if M::COUNT {
            LIN_COMB.fetch_add(1, Ordering::Relaxed);
            LIN_COMB_TERMS.fetch_add(terms.len() as u64, Ordering::Relaxed);
        }
        let inner: Vec<(f64, &T4)> = terms.iter().map(|(c, x)| (*c, &x.0)).collect();
        Self::new(T4::lin_comb(&inner))
    }
}
static LIN_COMB_TERMS: AtomicU64 = AtomicU64::new(0);

/// Something the benchmark loop can run on: the plain tensor, or a probe around it.
trait Sample: SampleTensor {
    fn wrap(t: T4) -> Self;
    fn inner(&self) -> &T4;
}
impl Sample for T4 {
    fn wrap(t: T4) -> Self {
        t
    }
    fn inner(&self) -> &T4 {
        self
    }
}
impl<M: Mode> Sample for Probe<M> {
    fn wrap(t: T4) -> Self {
        Self::new(t)
    }
    fn inner(&self) -> &T4 {
        &self.0
    }
}

/// Reads one scalar back to the host: the sum of all elements. Forces completion.
fn read_back(t: &T4) -> f64 {
    t.clone().sum().into_scalar().elem::<f64>()
}

/// Scheduler, initial sample, model output, noise (for stochastic configs), timesteps.
struct Case<S: Sample> {
    sched: Box<dyn Scheduler<S>>,
    x0: S,
    eps: S,
    noise: Option<S>,
    ts: Vec<f64>,
}

fn build<S: Sample>(cfg: &Value, setup: &Setup) -> Result<Case<S>, String> {
    let mut sched = ember_schedulers::from_config_json::<S>(cfg).map_err(|e| e.to_string())?;
    sched
        .set_timesteps(setup.steps)
        .map_err(|e| e.to_string())?;
    let device = Default::default();
    let (x, e) = inputs(&setup.shape, sched.init_noise_sigma());
    let x0 = S::wrap(x.to_tensor::<DefaultBackend, 4>(&device));
    let eps = S::wrap(e.to_tensor::<DefaultBackend, 4>(&device));
    // None of the benchmarked configs is stochastic; if one were, it gets a fixed tensor.
    let noise = sched.is_stochastic().then(|| eps.clone());
    let ts = sched.timesteps().to_vec();
    Ok(Case {
        sched,
        x0,
        eps,
        noise,
        ts,
    })
}

/// One full sampling loop; returns the final sample and the last model input.
fn run_loop<S: Sample>(c: &mut Case<S>) -> (S, S) {
    let mut x = c.x0.clone(); // a reference-count bump; x0 itself is never modified
    let mut input = None;
    for &t in &c.ts {
        input = Some(c.sched.scale_model_input(&x, t).expect("scale_model_input"));
        x = c
            .sched
            .step(&c.eps, t, &x, c.noise.as_ref())
            .expect("step")
            .prev_sample;
    }
    (x, input.expect("at least one step"))
}

/// (variant, class, µs/step median, min, max).
type SummaryRow = (String, String, f64, f64, f64);
/// A named way of answering "are all elements finite?".
type FiniteCheck = (&'static str, fn(&T4) -> bool);

thread_local! {
    /// Per criterion sample: the mean time of one 50-step loop in that sample.
    static LOOP_TIMES: RefCell<Vec<Duration>> = const { RefCell::new(Vec::new()) };
    /// Summary rows: (variant, class, µs/step median, min, max).
    static SUMMARY: RefCell<Vec<SummaryRow>> = const { RefCell::new(Vec::new()) };
}

fn bench_loop<S: Sample>(crit: &mut Criterion, variant: &str, cfg: &Value, setup: &Setup) {
    let class = cfg["_class_name"].as_str().unwrap_or("?").to_string();
    let mut case = match build::<S>(cfg, setup) {
        Ok(c) => c,
        Err(e) => {
            println!("SKIP {variant}/{class}: {e}");
            SUMMARY.with(|s| {
                s.borrow_mut()
                    .push((variant.into(), class, f64::NAN, f64::NAN, f64::NAN))
            });
            return;
        }
    };
    let steps = case.ts.len();
    LOOP_TIMES.with(|l| l.borrow_mut().clear());
    let mut group = crit.benchmark_group(variant);
    group.throughput(Throughput::Elements(steps as u64)); // elements = scheduler steps
    group.bench_function(BenchmarkId::from_parameter(&class), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: lay out the timesteps again and reset the solver history.
                case.sched
                    .set_timesteps(setup.steps)
                    .expect("set_timesteps");
                let start = Instant::now();
                let (x, input) = run_loop(&mut case);
                // Read back before stopping the timer (see the module doc).
                black_box(read_back(x.inner()) + read_back(input.inner()));
                total += start.elapsed();
            }
            LOOP_TIMES.with(|l| l.borrow_mut().push(total / iters as u32));
            total
        })
    });
    group.finish();
    // Criterion calls the routine during warm-up too; its measurement samples come last.
    let mut per_step: Vec<f64> = LOOP_TIMES.with(|l| {
        let l = l.borrow();
        l[l.len().saturating_sub(SAMPLE_SIZE)..]
            .iter()
            .map(|d| d.as_secs_f64() * 1e6 / steps as f64)
            .collect()
    });
    if per_step.is_empty() {
        return; // filtered out on the command line
    }
    per_step.sort_by(f64::total_cmp);
    let med = per_step[per_step.len() / 2];
    let (lo, hi) = (per_step[0], per_step[per_step.len() - 1]);
    println!(
        "PER-STEP {variant}/{class}: median {med:.2} µs/step (min {lo:.2}, max {hi:.2}; {} samples of 50-step loops)",
        per_step.len()
    );
    SUMMARY.with(|s| s.borrow_mut().push((variant.into(), class, med, lo, hi)));
}

/// Runs each scheduler's loop once through the counting probe and prints ops per step.
fn report_op_counts(setup: &Setup) {
    println!("SampleTensor ops issued per step (scale_model_input + step), counted once:");
    for cfg in &setup.configs {
        let class = cfg["_class_name"].as_str().unwrap_or("?");
        let Ok(mut case) = build::<Probe<Counting>>(cfg, setup) else {
            println!("  {class}: not registered");
            continue;
        };
        for c in &COUNTS {
            c.store(0, Ordering::Relaxed);
        }
        LIN_COMB.store(0, Ordering::Relaxed);
        LIN_COMB_TERMS.store(0, Ordering::Relaxed);
        let (x, _) = run_loop(&mut case);
        let n = case.ts.len() as f64;
        let mut parts: Vec<String> = OPS
            .iter()
            .zip(&COUNTS)
            .filter(|(_, c)| c.load(Ordering::Relaxed) > 0)
            .map(|(name, c)| format!("{name} {:.2}", c.load(Ordering::Relaxed) as f64 / n))
            .collect();
        let lc = LIN_COMB.load(Ordering::Relaxed);
        if lc > 0 {
            parts.push(format!(
                "lin_comb {:.2} (avg {:.2} terms)",
                lc as f64 / n,
                LIN_COMB_TERMS.load(Ordering::Relaxed) as f64 / lc as f64
            ));
        }
        let host = x.0.to_host();
        let mean_abs = host.data().iter().map(|v| v.abs()).sum::<f64>() / host.data().len() as f64;
        println!(
            "  {class}: {}; timesteps {:?} .. {:?} ({} steps); final mean|x| = {mean_abs:.6}",
            parts.join(", "),
            &case.ts[..3.min(case.ts.len())],
            case.ts.last().unwrap(),
            case.ts.len()
        );
    }
}

fn bench_ops(crit: &mut Criterion, setup: &Setup) {
    let device = Default::default();
    let (x, e) = inputs(&setup.shape, 1.0);
    let x: T4 = x.to_tensor::<DefaultBackend, 4>(&device);
    let e: T4 = e.to_tensor::<DefaultBackend, 4>(&device);
    let mut g = crit.benchmark_group("ops");
    // Each op returns a fresh tensor (the inputs stay shared, so nothing runs in place);
    // Flex computes it inside the call, and dropping the result frees its buffer.
    g.bench_function("all_finite", |b| {
        b.iter(|| black_box(black_box(&x).all_finite()))
    });
    g.bench_function("scale", |b| {
        b.iter(|| black_box(SampleTensor::scale(black_box(&x), 0.9)))
    });
    g.bench_function("add", |b| {
        b.iter(|| black_box(SampleTensor::add(black_box(&x), &e)))
    });
    g.bench_function("lin_comb2", |b| {
        b.iter(|| black_box(T4::lin_comb(&[(0.9, black_box(&x)), (0.1, &e)])))
    });
    g.bench_function("read_back_sum", |b| {
        b.iter(|| black_box(read_back(black_box(&x))))
    });
    g.finish();

    // Diagnosis only: what `all_finite` costs next to other ways of asking the same question.
    // burn's `is_finite` is `!is_nan & !is_inf`; `all_finite` adds `bool_not`, `any`, `int` and
    // the read-back: seven passes over the elements, several allocating. Every candidate is
    // checked below to give the same answer on finite data and on data with NaN, +Inf, -Inf.
    let candidates: [FiniteCheck; 4] = [
        ("current_all_finite", |t| t.all_finite()),
        // finite·0 = 0, but Inf·0 = NaN·0 = NaN, so the sum is NaN exactly when an element
        // is not finite (no overflow possible: every term is 0 or NaN).
        ("zero_mul_sum", |t| {
            t.clone()
                .mul_scalar(0.0)
                .sum()
                .into_scalar()
                .elem::<f64>()
                .is_finite()
        }),
        // x - x is 0 for finite x and NaN for NaN/±Inf.
        ("self_sub_isnan_any", |t| {
            (t.clone() - t.clone())
                .is_nan()
                .any()
                .int()
                .into_scalar()
                .elem::<i64>()
                == 0
        }),
        // Copy to the host and scan there (a full device read-back on GPU backends).
        ("host_scan", |t| {
            t.to_data()
                .as_slice::<f32>()
                .map(|s| s.iter().all(|v| v.is_finite()))
                .unwrap_or(false)
        }),
    ];
    let n = x.dims().iter().product::<usize>();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut h = x.to_host();
        h.data_mut()[n / 2 + 7] = bad;
        let t: T4 = h.to_tensor::<DefaultBackend, 4>(&device);
        for (name, f) in &candidates {
            assert!(f(&x), "{name} on finite data");
            assert!(!f(&t), "{name} with {bad}");
        }
    }
    let mut g = crit.benchmark_group("finite_check");
    for (name, f) in candidates {
        g.bench_function(name, |b| b.iter(|| black_box(f(black_box(&x)))));
    }
    g.finish();
}

fn benches(crit: &mut Criterion) {
    let setup = setup();
    println!(
        "step_overhead: shape {:?}, {} steps, backend {} (f32); RAYON_NUM_THREADS={}",
        setup.shape,
        setup.steps,
        std::any::type_name::<DefaultBackend>(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    report_op_counts(&setup);
    for cfg in &setup.configs {
        bench_loop::<T4>(crit, "loop50", cfg, &setup);
    }
    for cfg in &setup.configs {
        bench_loop::<Probe<NoCheck>>(crit, "loop50_no_finite_check", cfg, &setup);
    }
    bench_ops(crit, &setup);

    println!(
        "\nSUMMARY (µs per step = median loop time / {} steps)",
        setup.steps
    );
    println!(
        "{:<26} {:>12} {:>22} {:>12}",
        "scheduler", "µs/step", "no finite check", "check share"
    );
    SUMMARY.with(|s| {
        let s = s.borrow();
        for (_, class, med, _, _) in s.iter().filter(|r| r.0 == "loop50") {
            let nc = s
                .iter()
                .find(|r| r.0 == "loop50_no_finite_check" && &r.1 == class)
                .map(|r| r.2)
                .unwrap_or(f64::NAN);
            println!(
                "{class:<26} {med:>12.2} {nc:>22.2} {:>11.1}%",
                100.0 * (med - nc) / med
            );
        }
    });
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .map(|l| l[8..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    println!("threads in this process after the run: {threads}");
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
}

criterion_group! { name = group; config = config(); targets = benches }
criterion_main!(group);
