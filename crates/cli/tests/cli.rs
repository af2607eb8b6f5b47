//! The `ember` binary, run as a user runs it.

use std::process::Command;

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

#[test]
fn schedulers_lists_every_scheduler_with_defaults() {
    let out = ember(&["schedulers"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ember_schedulers::SCHEDULERS.iter().map(|s| s.class_name) {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("beta_schedule") && text.contains("\"linear\""),
        "{text}"
    );
}

#[test]
fn schedulers_json_is_a_loadable_config() {
    let out = ember(&["schedulers", "DPMSolverMultistepScheduler", "--json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Written as diffusers writes it, so the file loads back unchanged.
    assert!(text.contains("\"lambda_min_clipped\": -Infinity"), "{text}");
    let v = ember_schedulers::config::parse_config_text(&text, "stdout").unwrap();
    let s = ember_schedulers::from_config_json::<ember_core::HostTensor>(&v).unwrap();
    assert_eq!(s.class_name(), "DPMSolverMultistepScheduler");
}

#[test]
fn unknown_scheduler_is_a_one_line_error() {
    let out = ember(&["schedulers", "NoSuchScheduler"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("NoSuchScheduler") && err.contains("DDIMScheduler"),
        "{err}"
    );
}
