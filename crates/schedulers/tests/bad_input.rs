//! Bad input reaches every scheduler as a one-line error, never a panic: unknown class
//! names and option values (listing the valid ones), unknown keys (a warning, kept on
//! save), zero steps, too many steps, non-monotone custom timesteps, NaN / Inf model
//! outputs, stepping before `set_timesteps`.

use ember_core::{HostTensor, SampleTensor, Scheduler, TimestepRequest};
use ember_schedulers::{from_class_name, from_config_json, SCHEDULERS};
use serde_json::json;
use std::sync::Mutex;

/// Captures `log` warnings so the unknown-key warning can be asserted.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        self.0.lock().unwrap().push(r.args().to_string());
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn names() -> Vec<&'static str> {
    SCHEDULERS.iter().map(|s| s.class_name).collect()
}

fn build(name: &str) -> Box<dyn Scheduler<HostTensor>> {
    from_class_name::<HostTensor>(name, None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn unknown_class_name_lists_valid_ones() {
    let err = from_config_json::<HostTensor>(&json!({"_class_name": "DDIMSchedulerr"}))
        .err()
        .expect("unknown class must fail")
        .to_string();
    assert!(err.contains("DDIMSchedulerr"), "{err}");
    for n in names() {
        assert!(err.contains(n), "{err} should list {n}");
    }
    assert!(!err.contains('\n'), "one line: {err}");
    let missing = from_config_json::<HostTensor>(&json!({"beta_start": 0.1}))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("_class_name"), "{missing}");
}

#[test]
fn unknown_option_values_list_valid_ones() {
    for (name, key, bad, expect) in [
        (
            "DDIMScheduler",
            "beta_schedule",
            "cosine",
            "squaredcos_cap_v2",
        ),
        (
            "EulerDiscreteScheduler",
            "prediction_type",
            "eps",
            "v_prediction",
        ),
        ("DDIMScheduler", "timestep_spacing", "uniform", "trailing"),
        (
            "DPMSolverMultistepScheduler",
            "algorithm_type",
            "dpm++",
            "sde-dpmsolver++",
        ),
        ("UniPCMultistepScheduler", "solver_type", "bh3", "bh2"),
    ] {
        let err = from_config_json::<HostTensor>(&json!({"_class_name": name, key: bad}))
            .err()
            .unwrap_or_else(|| panic!("{name}.{key}={bad} must fail"))
            .to_string();
        assert!(
            err.contains(bad) && err.contains(expect),
            "{name}.{key}: {err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn unknown_keys_warn_and_survive() {
    let _ = log::set_logger(&CAPTURE).map(|()| log::set_max_level(log::LevelFilter::Warn));
    for name in names() {
        let s = from_config_json::<HostTensor>(&json!({"_class_name": name, "my_new_knob": 3}))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.config_json()["my_new_knob"],
            3,
            "{name} keeps unknown keys"
        );
    }
    let seen = CAPTURE.0.lock().unwrap().clone();
    assert!(
        seen.iter().filter(|m| m.contains("my_new_knob")).count() >= names().len(),
        "one warning per scheduler: {seen:?}"
    );
}

#[test]
fn zero_steps_and_too_many_steps_are_errors() {
    for name in names() {
        let mut s = build(name);
        let e = s
            .set_timesteps(0)
            .err()
            .unwrap_or_else(|| panic!("{name}: zero steps accepted"));
        assert!(!e.to_string().contains('\n'));
        // Discrete-time schedules cannot place more steps than they were trained with.
        let continuous = name.starts_with("FlowMatch") || name.starts_with("EDM");
        if !continuous {
            let mut s =
                from_class_name::<HostTensor>(name, Some(&json!({"num_train_timesteps": 50})))
                    .unwrap();
            assert!(
                s.set_timesteps(51).is_err(),
                "{name}: 51 steps of 50 accepted"
            );
        }
    }
}

#[test]
fn non_monotone_custom_timesteps_are_errors() {
    for name in names() {
        let mut s = build(name);
        // Schedulers that take no custom timesteps must refuse them too.
        let r = s.set_timesteps_with(&TimestepRequest::timesteps(vec![500.0, 700.0, 100.0]));
        assert!(r.is_err(), "{name}: increasing custom timesteps accepted");
        let r = s.set_timesteps_with(&TimestepRequest::sigmas(vec![1.0, 2.0, 0.5]));
        assert!(r.is_err(), "{name}: increasing custom sigmas accepted");
    }
}

#[test]
fn non_finite_model_output_and_early_step_are_errors() {
    let x = HostTensor::new(vec![1, 2, 2, 2], (0..8).map(|i| i as f64 * 0.1).collect()).unwrap();
    for name in names() {
        let mut s = build(name);
        let early = s.step(&x, 999.0, &x, Some(&x));
        assert!(early.is_err(), "{name}: step before set_timesteps accepted");
        s.set_timesteps(10).unwrap();
        let t = s.timesteps()[0];
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = x.clone();
            out.data_mut()[3] = bad;
            let noise = x.zeros_like();
            let e = s
                .step(&out, t, &x, Some(&noise))
                .err()
                .unwrap_or_else(|| panic!("{name}: model output with {bad} accepted"));
            assert!(e.to_string().contains("NaN or infinite"), "{name}: {e}");
        }
    }
}
