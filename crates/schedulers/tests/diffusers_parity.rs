//! Parity with Python diffusers 0.42.1 (Ember issue "Proof 1").
//!
//! Every `tests/fixtures/<case>.json` + `<case>.safetensors` pair was written by
//! `tools/reference/make_scheduler_fixtures.py` (cases in `tools/reference/scheduler_cases.py`,
//! run through `tools/reference/run.sh`). For each case this test builds the scheduler with
//! `from_config_json` from diffusers' full config, lays out the same timesteps, and compares
//! timesteps, sigmas, `init_noise_sigma` and `order`; then it replays the sampling loop from the
//! fixture's initial sample, feeding Ember's own `prev_sample` forward (never diffusers'), with
//! the fixture's model outputs and, for stochastic steps, the fixture's noise, and compares
//! `scale_model_input`, `prev_sample` and `pred_original_sample` at every step; finally
//! `add_noise` (diffusers' `scale_noise` for flow matching) and `get_velocity`.
//!
//! All cases run; failures are collected and printed as a table, and the test fails at the end
//! if any case failed. A case whose class Ember does not implement is a failure.
//!
//! Conventions the fixtures rely on:
//! - `step_kwargs`: options diffusers takes as `step()` arguments (DDIM/TCD `eta`, Euler/EDM
//!   `s_churn`, `s_tmin`, `s_tmax`, `s_noise`). Ember's `step` has no such arguments, so they
//!   are passed as config keys of the same name.
//! - `config_nonfinite`: config values JSON cannot hold (DPM-Solver's `lambda_min_clipped =
//!   -inf`) are written as `null` by the generator; the harness removes those keys so Ember's
//!   default (diffusers' default) applies.
//!
//! Rerun: `cargo test -p ember-schedulers --test diffusers_parity -- --nocapture`.
//! `EMBER_PARITY_FILTER=dpm` runs only the cases whose name contains `dpm` (the table says so);
//! `EMBER_PARITY_FIXTURES=dir` reads the fixtures from `dir` instead of `tests/fixtures`.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ember_core::burn::tensor::Tensor;
use ember_core::{HostTensor, SampleTensor, Scheduler, TimestepRequest};
use serde::Deserialize;
use serde_json::Value;

type B = ember_core::backend::DefaultBackend;
type T4 = Tensor<B, 4>;

/// The fixture directory must hold at least this many cases.
const MIN_CASES: usize = 40;

/// Tolerance: max-abs-err ≤ REL_TOL × max(1, max |reference|) per compared quantity.
///
/// diffusers computes in float32 and so do Ember's burn tensors; the schedule scalars differ in
/// their last float32 bits (Ember derives them in f64). One float32 ulp is 6e-8 relative, so a
/// few steps of rounding stay far below 1e-5 for values of magnitude ≤ 1; for larger values
/// (σ ≈ 14.6 at t = 999 of Stable Diffusion's schedule, initial samples of ~3σ, Euler's
/// σ ≈ 157 of the linear schedule) the same relative rounding is proportionally larger in
/// absolute terms, hence the scaling by the reference's magnitude.
const REL_TOL: f64 = 1e-5;

/// Per-case tolerance overrides: (case name, replacement for REL_TOL, reason). Every entry
/// needs a written reason.
const TOLERANCE_OVERRIDES: &[(&str, f64, &str)] = &[(
    "euler_zero_snr_vpred",
    5e-5,
    "zero-SNR rescaling sets the last alphas_cumprod to 2^-24, so sigma_max = 4096 and the \
     initial sample reaches ~1.3e4; step 0 cancels terms of that size down to ~44, where one \
     float32 ulp of the inputs (~1e-3) is 2e-5 of the result. diffusers' own float32 result \
     is 7.1e-4 away from the exact (f64) step, 1.6x the 1e-5 budget; Ember lands 2.2x; the \
     offset then carries through the later steps.",
)];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    num_inference_steps: Option<usize>,
    timesteps: Option<Vec<f64>>,
    sigmas: Option<Vec<f64>>,
    mu: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct StepMeta {
    index: usize,
    timestep: f64,
    noise: bool,
    pred_original_sample: bool,
}

#[derive(Debug, Deserialize)]
struct AddNoiseMeta {
    method: String,
    timesteps: Vec<f64>,
    /// Where in the schedule `timesteps` come from; the replay passes Ember's own schedule
    /// values at these indices, as a pipeline passes `scheduler.timesteps()[k]`.
    schedule_indices: Option<Vec<usize>>,
}

#[derive(Debug, Deserialize)]
struct VelocityMeta {
    timesteps: Vec<f64>,
    /// As for add_noise; `None` for training timesteps (integers), passed as they are.
    schedule_indices: Option<Vec<usize>>,
}

/// The timesteps to pass to add_noise / get_velocity: the fixture's values, or Ember's own
/// schedule values at the fixture's schedule indices.
fn call_timesteps(
    what: &str,
    values: &[f64],
    indices: Option<&[usize]>,
    schedule: &[f64],
) -> Result<Vec<f64>, String> {
    let Some(indices) = indices else {
        return Ok(values.to_vec());
    };
    if indices.len() != values.len() {
        return Err(format!(
            "{what}: {} schedule indices for {} timesteps",
            indices.len(),
            values.len()
        ));
    }
    indices
        .iter()
        .map(|&i| {
            schedule.get(i).copied().ok_or_else(|| {
                format!(
                    "{what}: schedule index {i} out of range (Ember has {} timesteps)",
                    schedule.len()
                )
            })
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Fixture {
    name: String,
    class_name: String,
    config: Value,
    #[serde(default)]
    config_nonfinite: BTreeMap<String, String>,
    request: Request,
    #[serde(default)]
    step_kwargs: serde_json::Map<String, Value>,
    begin_index: Option<usize>,
    shape: Vec<usize>,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    order: usize,
    steps: Vec<StepMeta>,
    add_noise: Option<AddNoiseMeta>,
    velocity: Option<VelocityMeta>,
}

/// The outcome of one case.
struct CaseReport {
    name: String,
    class_name: String,
    /// Number of quantities compared.
    compared: usize,
    /// The comparison closest to (or furthest past) its tolerance: (what, err, tol).
    worst: Option<(String, f64, f64)>,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl CaseReport {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            class_name: String::new(),
            compared: 0,
            worst: None,
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    /// Compares two value lists at max-abs-err ≤ rel_tol × max(1, max |want|).
    fn values(&mut self, what: &str, got: &[f64], want: &[f64], rel_tol: f64) {
        if got.len() != want.len() {
            self.fail(format!(
                "{what}: {} values, diffusers has {}",
                got.len(),
                want.len()
            ));
            return;
        }
        let max_ref = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let tol = rel_tol * max_ref.max(1.0);
        let mut err = 0.0f64;
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            // NaN or infinity in Ember's value is an infinite error, never a pass.
            err = if d.is_finite() {
                err.max(d)
            } else {
                f64::INFINITY
            };
        }
        self.compared += 1;
        let ratio = err / tol;
        if self.worst.as_ref().is_none_or(|(_, e, t)| ratio > e / t) {
            self.worst = Some((what.to_string(), err, tol));
        }
        // Written so that a NaN tolerance (a NaN in the reference) fails too.
        let within = err <= tol;
        if !within {
            self.fail(format!("{what}: max err {err:.3e} > tol {tol:.3e}"));
        }
    }

    fn tensor(&mut self, what: &str, got: &T4, want: &HostTensor, rel_tol: f64) {
        let got = got.to_host();
        if got.shape() != want.shape() {
            self.fail(format!(
                "{what}: shape {:?}, diffusers has {:?}",
                got.shape(),
                want.shape()
            ));
            return;
        }
        self.values(what, got.data(), want.data(), rel_tol);
    }
}

/// The float32 tensors of one fixture, as f64 host tensors.
struct Tensors {
    file: PathBuf,
    map: HashMap<String, HostTensor>,
}

impl Tensors {
    fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{}: not a safetensors file: {e}", path.display()))?;
        let mut map = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(format!(
                    "{}: tensor `{name}` is {:?}, expected F32",
                    path.display(),
                    view.dtype()
                ));
            }
            let data: Vec<f64> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect();
            let host = HostTensor::new(view.shape().to_vec(), data)
                .map_err(|e| format!("{}: tensor `{name}`: {e}", path.display()))?;
            map.insert(name, host);
        }
        Ok(Self {
            file: path.to_path_buf(),
            map,
        })
    }

    fn host(&self, name: &str) -> Result<&HostTensor, String> {
        self.map.get(name).ok_or_else(|| {
            format!(
                "{}: no tensor `{name}` (regenerate the fixture)",
                self.file.display()
            )
        })
    }

    /// The tensor on the default device of the backend under test.
    fn get(&self, name: &str) -> Result<T4, String> {
        let h = self.host(name)?;
        if h.shape().len() != 4 {
            return Err(format!(
                "{}: tensor `{name}` has shape {:?}, expected rank 4",
                self.file.display(),
                h.shape()
            ));
        }
        Ok(h.to_tensor::<B, 4>(&Default::default()))
    }
}

/// `tests/fixtures`, or the directory in `EMBER_PARITY_FIXTURES` (to try regenerated or
/// edited fixtures without touching the committed ones).
fn fixture_dir() -> PathBuf {
    match std::env::var_os("EMBER_PARITY_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures"),
    }
}

fn tolerance_for(name: &str) -> f64 {
    TOLERANCE_OVERRIDES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, tol, _)| *tol)
        .unwrap_or(REL_TOL)
}

fn build(config: &Value) -> Result<Box<dyn Scheduler<T4>>, String> {
    ember_schedulers::from_config_json::<T4>(config).map_err(|e| match e {
        // A class Ember does not implement (yet) is a failure, with a short message.
        ember_core::Error::UnknownName { kind, name, .. } if kind == "scheduler" => {
            format!("not implemented in Ember (unknown scheduler `{name}`)")
        }
        other => other.to_string(),
    })
}

/// Runs one case; `Err` only for a fixture that cannot be read (reported as a failure).
fn run_case(json_path: &Path, report: &mut CaseReport) -> Result<(), String> {
    let text = std::fs::read_to_string(json_path)
        .map_err(|e| format!("cannot read {}: {e}", json_path.display()))?;
    let fx: Fixture = serde_json::from_str(&text)
        .map_err(|e| format!("{}: bad fixture JSON: {e}", json_path.display()))?;
    report.class_name = fx.class_name.clone();
    let stem = json_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if fx.name != stem {
        return Err(format!(
            "{}: fixture name `{}` does not match the file name",
            json_path.display(),
            fx.name
        ));
    }
    let tensors = Tensors::load(&json_path.with_extension("safetensors"))?;
    let tol = tolerance_for(&fx.name);
    if tol != REL_TOL {
        report.notes.push(format!(
            "tolerance override {tol:e} (see TOLERANCE_OVERRIDES)"
        ));
    }

    // The config Ember receives: diffusers' full config, minus values JSON cannot hold, plus
    // diffusers' step() keyword arguments as config keys.
    let mut config = fx.config.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| format!("{}: `config` is not an object", json_path.display()))?;
    if obj.get("_class_name").and_then(Value::as_str) != Some(fx.class_name.as_str()) {
        return Err(format!(
            "{}: config `_class_name` differs from `class_name`",
            json_path.display()
        ));
    }
    for (key, value) in &fx.config_nonfinite {
        obj.remove(key);
        report
            .notes
            .push(format!("{key}={value} left to Ember's default"));
    }
    for (key, value) in &fx.step_kwargs {
        obj.insert(key.clone(), value.clone());
    }
    if !fx.step_kwargs.is_empty() {
        let keys: Vec<&str> = fx.step_kwargs.keys().map(String::as_str).collect();
        report
            .notes
            .push(format!("step kwargs as config: {}", keys.join(",")));
    }

    let request = TimestepRequest {
        num_inference_steps: fx.request.num_inference_steps,
        timesteps: fx.request.timesteps.clone(),
        sigmas: fx.request.sigmas.clone(),
        mu: fx.request.mu,
    };

    let mut sched = match build(&config) {
        Ok(s) => s,
        Err(e) => {
            report.fail(format!("build: {e}"));
            return Ok(());
        }
    };
    if let Err(e) = sched.set_timesteps_with(&request) {
        report.fail(format!("set_timesteps: {e}"));
        return Ok(());
    }

    // Schedule.
    let timesteps = sched.timesteps().to_vec();
    report.values("timesteps", &timesteps, &fx.timesteps, tol);
    if timesteps.len() == fx.timesteps.len() {
        let max_diff = timesteps
            .iter()
            .zip(&fx.timesteps)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if max_diff > 0.0 {
            report.notes.push(format!(
                "timesteps not bit-equal to diffusers' (max diff {max_diff:.2e})"
            ));
        }
    }
    match (sched.sigmas(), &fx.sigmas) {
        (Some(got), Some(want)) => report.values("sigmas", got, want, tol),
        (None, Some(_)) => report
            .notes
            .push("Ember exposes no sigmas; not compared".into()),
        (Some(_), None) => report
            .notes
            .push("diffusers has no sigmas; not compared".into()),
        (None, None) => {}
    }
    report.values(
        "init_noise_sigma",
        &[sched.init_noise_sigma()],
        &[fx.init_noise_sigma],
        tol,
    );
    if sched.order() != fx.order {
        report.fail(format!(
            "order: {}, diffusers has {}",
            sched.order(),
            fx.order
        ));
    }

    // Sampling loop, from the fixture's initial sample, on Ember's own samples.
    let start = fx.begin_index.unwrap_or(0);
    if let Some(k) = fx.begin_index {
        sched.set_begin_index(k);
    }
    if timesteps.len() != fx.timesteps.len() {
        report.fail(format!(
            "steps not replayed: {} timesteps, diffusers has {}",
            timesteps.len(),
            fx.timesteps.len()
        ));
    } else if start + fx.steps.len() != timesteps.len() {
        return Err(format!(
            "{}: {} steps from begin_index {start} but {} timesteps",
            json_path.display(),
            fx.steps.len(),
            timesteps.len()
        ));
    } else {
        let mut x = tensors.get("sample")?;
        let sample_shape = tensors.host("sample")?.shape();
        if sample_shape != fx.shape {
            return Err(format!(
                "{}: `sample` shape {sample_shape:?} != shape {:?}",
                json_path.display(),
                fx.shape
            ));
        }
        for (k, meta) in fx.steps.iter().enumerate() {
            if meta.index != k {
                return Err(format!(
                    "{}: step {k} has index {}",
                    json_path.display(),
                    meta.index
                ));
            }
            if meta.timestep != fx.timesteps[start + k] {
                return Err(format!(
                    "{}: step {k} timestep {} is not timesteps[{}] = {}",
                    json_path.display(),
                    meta.timestep,
                    start + k,
                    fx.timesteps[start + k]
                ));
            }
            let t = timesteps[start + k];
            let scaled = match sched.scale_model_input(&x, t) {
                Ok(s) => s,
                Err(e) => {
                    report.fail(format!("step {k} (t={t}): scale_model_input: {e}"));
                    break;
                }
            };
            report.tensor(
                &format!("scaled_input.{k}"),
                &scaled,
                tensors.host(&format!("scaled_input.{k}"))?,
                tol,
            );
            let model_output = tensors.get(&format!("model_output.{k}"))?;
            let noise = if meta.noise {
                Some(tensors.get(&format!("noise.{k}"))?)
            } else {
                None
            };
            let out = match sched.step(&model_output, t, &x, noise.as_ref()) {
                Ok(o) => o,
                Err(e) => {
                    report.fail(format!(
                        "step {k} (t={t}, diffusers t={}): {e}",
                        meta.timestep
                    ));
                    break;
                }
            };
            report.tensor(
                &format!("prev_sample.{k}"),
                &out.prev_sample,
                tensors.host(&format!("prev_sample.{k}"))?,
                tol,
            );
            if meta.pred_original_sample {
                let want = tensors.host(&format!("pred_original_sample.{k}"))?;
                match &out.pred_original_sample {
                    Some(p) => report.tensor(&format!("pred_original_sample.{k}"), p, want, tol),
                    None => report.fail(format!(
                        "step {k}: no pred_original_sample (diffusers returns one)"
                    )),
                }
            }
            x = out.prev_sample;
        }
    }

    // add_noise (scale_noise for flow matching) on a fresh scheduler after set_timesteps.
    if let Some(meta) = &fx.add_noise {
        let original = tensors.get("add_noise.original")?;
        let noise = tensors.get("add_noise.noise")?;
        let want = tensors.host("add_noise.result")?;
        let what = if meta.method == "add_noise" {
            "add_noise".to_string()
        } else {
            format!("add_noise({})", meta.method)
        };
        match build(&config).and_then(|mut s| {
            s.set_timesteps_with(&request).map_err(|e| e.to_string())?;
            let ts = call_timesteps(
                &what,
                &meta.timesteps,
                meta.schedule_indices.as_deref(),
                s.timesteps(),
            )?;
            s.add_noise(&original, &noise, &ts)
                .map_err(|e| format!("timesteps {ts:?}: {e}"))
        }) {
            Ok(got) => report.tensor(&what, &got, want, tol),
            Err(e) => report.fail(format!("{what}: {e}")),
        }
    }
    // get_velocity, where diffusers' class has it.
    if let Some(meta) = &fx.velocity {
        let sample = tensors.get("velocity.sample")?;
        let noise = tensors.get("velocity.noise")?;
        let want = tensors.host("velocity.result")?;
        match build(&config).and_then(|mut s| {
            s.set_timesteps_with(&request).map_err(|e| e.to_string())?;
            let ts = call_timesteps(
                "get_velocity",
                &meta.timesteps,
                meta.schedule_indices.as_deref(),
                s.timesteps(),
            )?;
            s.get_velocity(&sample, &noise, &ts)
                .map_err(|e| format!("timesteps {ts:?}: {e}"))
        }) {
            Ok(got) => report.tensor("get_velocity", &got, want, tol),
            Err(e) => report.fail(format!("get_velocity: {e}")),
        }
    }
    Ok(())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

#[test]
fn diffusers_parity() {
    let dir = fixture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_CASES,
        "{} holds {} fixture cases, expected at least {MIN_CASES}; regenerate them with \
         `tools/reference/run.sh make_scheduler_fixtures.py`",
        dir.display(),
        files.len()
    );
    // Orphans are reported, never skipped silently.
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") && !p.with_extension("json").exists() {
            orphans.push(p.display().to_string());
        }
    }
    for (name, _, reason) in TOLERANCE_OVERRIDES {
        assert!(
            !reason.trim().is_empty(),
            "tolerance override for `{name}` has no reason"
        );
    }

    let filter = std::env::var("EMBER_PARITY_FILTER")
        .ok()
        .filter(|f| !f.is_empty());
    let total = files.len();
    if let Some(f) = &filter {
        files.retain(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.contains(f.as_str()))
        });
    }

    let mut reports = Vec::new();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let mut report = CaseReport::new(&name);
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(path, &mut report)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report.fail(format!("fixture error: {e}")),
            Err(p) => report.fail(format!("panicked: {}", panic_message(p.as_ref()))),
        }
        reports.push(report);
    }

    // The table.
    let mut out = String::new();
    out.push_str(&format!(
        "\ndiffusers parity: {} cases from {}{}\n",
        reports.len(),
        dir.display(),
        filter
            .as_ref()
            .map(|f| format!(" (EMBER_PARITY_FILTER={f}: {} of {total})", reports.len()))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "{:<36} {:<32} {:<4} {:>5} {:>10} {:>10}  {}\n",
        "case", "class", "ok", "cmp", "max err", "tol", "worst / failures / notes"
    ));
    for r in &reports {
        let (what, err, tol) = r.worst.clone().unwrap_or(("-".into(), f64::NAN, f64::NAN));
        let status = if r.failures.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        let detail = if r.failures.is_empty() {
            let mut d = format!("worst: {what}");
            if !r.notes.is_empty() {
                d.push_str(&format!("; {}", r.notes.join("; ")));
            }
            d
        } else {
            let n = r.failures.len();
            let mut d = r
                .failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ");
            if n > 3 {
                d.push_str(&format!(" | (+{} more)", n - 3));
            }
            d
        };
        out.push_str(&format!(
            "{:<36} {:<32} {:<4} {:>5} {:>10.3e} {:>10.3e}  {}\n",
            truncate(&r.name, 36),
            truncate(&r.class_name, 32),
            status,
            r.compared,
            err,
            tol,
            truncate(&detail, 240)
        ));
    }
    let failed: Vec<&CaseReport> = reports.iter().filter(|r| !r.failures.is_empty()).collect();
    out.push_str(&format!(
        "{} passed, {} failed\n",
        reports.len() - failed.len(),
        failed.len()
    ));
    for o in &orphans {
        out.push_str(&format!("orphan fixture without JSON: {o}\n"));
    }
    // Every failure of every failing case, untruncated.
    for r in &failed {
        out.push_str(&format!("\n{} ({}):\n", r.name, r.class_name));
        for f in &r.failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    println!("{out}");

    if !failed.is_empty() || !orphans.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.name.as_str()).collect();
        panic!(
            "{} of {} diffusers parity cases failed: {}{}",
            failed.len(),
            reports.len(),
            names.join(", "),
            if orphans.is_empty() {
                String::new()
            } else {
                format!("; {} orphan fixture files", orphans.len())
            }
        );
    }
}

/// A `scheduler_config.json` exactly as diffusers 0.42.1 saves DPMSolverMultistepScheduler
/// (Python's json writes `-Infinity`) loads, and Ember writes the same token back.
#[test]
fn diffusers_saved_config_with_infinity_round_trips() {
    let dir = std::env::temp_dir().join(format!("ember-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.42.1",
            "algorithm_type": "dpmsolver++", "lambda_min_clipped": -Infinity,
            "solver_order": 2, "some_future_key": [1, 2]}"#,
    )
    .unwrap();
    let s = ember_schedulers::load_config_file::<ember_core::HostTensor>(&path).unwrap();
    assert_eq!(s.config_json()["lambda_min_clipped"], "-Infinity");
    ember_schedulers::save_config_file(s.as_ref(), &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"lambda_min_clipped\": -Infinity"), "{text}");
    assert!(
        text.contains("some_future_key"),
        "unknown keys survive a save: {text}"
    );
    let again = ember_schedulers::load_config_file::<ember_core::HostTensor>(&path).unwrap();
    assert_eq!(again.config_json(), s.config_json());
    std::fs::remove_dir_all(&dir).ok();
}
