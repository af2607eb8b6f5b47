//! `cargo xtask <command>`: project automation.
//!
//! - `fixtures [ARGS]`: regenerate the diffusers reference fixtures (creates the pinned
//!   Python virtualenv in `tools/reference/.venv` on first use; needs PyPI access).
//! - `bench`: the scheduler per-step overhead benchmark, Ember (criterion) and then
//!   diffusers (reference script) on the same machine.
//! - `ci`: what CI runs (`.ci/run`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("fixtures") => {
            let mut cmd = Command::new(root.join("tools/reference/run.sh"));
            cmd.arg("make_scheduler_fixtures.py").args(&args[1..]);
            run(cmd)
        }
        Some("bench") => {
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args([
                "bench",
                "-p",
                "ember-schedulers",
                "--bench",
                "step_overhead",
            ]);
            run(cargo)?;
            let mut py = Command::new(root.join("tools/reference/run.sh"));
            py.arg("bench_scheduler_overhead.py");
            run(py)
        }
        Some("ci") => run(Command::new(root.join(".ci/run"))),
        Some(other) => bail!("unknown xtask `{other}`; valid values are: fixtures, bench, ci"),
        None => bail!("usage: cargo xtask <fixtures|bench|ci> [ARGS]"),
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn run(mut cmd: Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
