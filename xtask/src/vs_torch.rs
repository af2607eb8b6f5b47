//! `cargo xtask bench --vs-torch [--threads N] [--rounds R] [--only CASE,...] [--warmup W]
//! [--runs N]`: Ember against PyTorch + diffusers, case by case, on the same configuration,
//! weights, inputs and thread count.
//!
//! 1. Builds Ember's side once (`cargo bench -p ember-models --bench vs_torch --no-run`) and
//!    takes the binary's path from cargo's JSON messages, so cargo is never inside a timing.
//! 2. Per case, prepares `target/bench-vs-torch/<case>/` with the Python side
//!    (`tools/reference/bench_vs_torch.py --prepare`: weights, inputs, diffusers' outputs)
//!    unless its `prepared.json` is already there.
//! 3. Runs R rounds of alternating processes, Ember then PyTorch, one process per case and
//!    side (so peak RSS is per case), Ember with `RAYON_NUM_THREADS=N`, Python with
//!    `--threads N` plus `OMP_NUM_THREADS` / `MKL_NUM_THREADS=N`. Each process checks its
//!    numerics first, warms up, then times; every timed iteration of every round is kept.
//! 4. Prints a table (median over all timed iterations per side, their ratio, the highest
//!    peak RSS over the rounds per side, and Ember's parity error) and writes it to
//!    `target/bench-vs-torch/results.json` and `results.md`.
//!
//! A side that fails (parity check, crash) marks its case failed; the other cases still
//! run, and the command exits with an error naming the failed cases.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One benchmark case: its name (shared by both sides) and default iteration counts.
struct Case {
    /// Case name, as `--case` of both sides.
    name: &'static str,
    /// Untimed iterations per process (the parity check counts as one or two of them).
    warmup: usize,
    /// Timed iterations per process.
    runs: usize,
    /// What it measures, for the table's notes.
    what: &'static str,
}

/// The cases, in the order they run.
const CASES: [Case; 5] = [
    Case {
        name: "ddpm_cifar10_b1",
        warmup: 3,
        runs: 10,
        what: "DDPM-CIFAR10 UNet2DModel forward, batch 1",
    },
    Case {
        name: "ddpm_cifar10_b8",
        warmup: 2,
        runs: 5,
        what: "DDPM-CIFAR10 UNet2DModel forward, batch 8",
    },
    Case {
        name: "mnist_train_b64",
        warmup: 3,
        runs: 5,
        what: "MNIST class-conditional UNet2DModel training step (fwd + bwd + AdamW), batch 64",
    },
    Case {
        name: "sd15_unet_b1",
        warmup: 1,
        runs: 3,
        what: "SD 1.5 UNet2DConditionModel forward, 1x4x64x64, 77 text tokens",
    },
    Case {
        name: "attention_4096",
        warmup: 3,
        runs: 10,
        what: "Attention(320, 8 heads x 40) alone, 4096 tokens",
    },
];

/// Command-line options of `bench --vs-torch`.
struct Options {
    threads: usize,
    rounds: usize,
    only: Option<Vec<String>>,
    warmup: Option<usize>,
    runs: Option<usize>,
}

fn case_names() -> String {
    CASES.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

fn parse_count(flag: &str, value: Option<&String>, min: usize) -> Result<usize> {
    let Some(v) = value else {
        bail!("{flag} needs a value");
    };
    match v.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => bail!("{flag} takes an integer >= {min}, got `{v}`"),
    }
}

impl Options {
    /// Parses the arguments after `bench` (`--vs-torch` among them).
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            threads: 2,
            rounds: 3,
            only: None,
            warmup: None,
            runs: None,
        };
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            let value = args.get(i + 1);
            match flag {
                "--vs-torch" => {
                    i += 1;
                    continue;
                }
                "--threads" => o.threads = parse_count(flag, value, 1)?,
                "--rounds" => o.rounds = parse_count(flag, value, 1)?,
                "--warmup" => o.warmup = Some(parse_count(flag, value, 0)?),
                "--runs" => o.runs = Some(parse_count(flag, value, 1)?),
                "--only" => {
                    let Some(v) = value else {
                        bail!("--only needs a comma-separated list of cases ({})", case_names());
                    };
                    let names: Vec<String> = v
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    if let Some(bad) = names.iter().find(|n| !CASES.iter().any(|c| c.name == *n)) {
                        bail!("unknown case `{bad}`; valid cases are: {}", case_names());
                    }
                    if names.is_empty() {
                        bail!("--only needs at least one case ({})", case_names());
                    }
                    o.only = Some(names);
                }
                other => bail!(
                    "unknown option `{other}` for `bench --vs-torch`; valid options are: --threads N, --rounds R, --only CASE,..., --warmup W, --runs N"
                ),
            }
            i += 2;
        }
        Ok(o)
    }
}

/// What one side produced for one case over all rounds.
#[derive(Default)]
struct SideResult {
    /// Every timed iteration of every round, in milliseconds.
    times: Vec<f64>,
    /// The per-round medians reported by the processes.
    round_medians: Vec<f64>,
    /// Peak RSS per round, MB.
    peak_rss: Vec<f64>,
    /// The last JSON line the side printed (parity fields, versions).
    last: Option<Value>,
    /// Why the side failed, if it did.
    failure: Option<String>,
}

impl SideResult {
    fn median(&self) -> Option<f64> {
        median(&self.times)
    }
    fn peak(&self) -> Option<f64> {
        self.peak_rss.iter().copied().reduce(f64::max)
    }
    fn to_json(&self) -> Value {
        let mut sorted = self.times.clone();
        sorted.sort_by(f64::total_cmp);
        json!({
            "median_ms": self.median(),
            "min_ms": sorted.first(),
            "max_ms": sorted.last(),
            "timed_iterations": self.times.len(),
            "round_medians_ms": self.round_medians,
            "peak_rss_mb": self.peak(),
            "peak_rss_mb_per_round": self.peak_rss,
            "times_ms": self.times,
            "last_report": self.last,
            "failure": self.failure,
        })
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    })
}

/// Runs one benchmark process; returns its JSON report line, or why it failed.
fn run_side(mut cmd: Command, side: &str, case: &str) -> std::result::Result<Value, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| format!("{side} side could not start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("case").and_then(Value::as_str) == Some(case));
    match (out.status.success(), report) {
        (true, Some(v)) => Ok(v),
        (true, None) => Err(format!("{side} side printed no report line for `{case}`")),
        (false, Some(v)) if v.get("check_ok") == Some(&Value::Bool(false)) => {
            let num = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .map_or("?".into(), |x| format!("{x:.2e}"))
            };
            Err(format!(
                "{side} side failed its parity check ({}): max-abs-err {}, relative {} > tolerance {}",
                v.get("check").and_then(Value::as_str).unwrap_or("?"),
                num("max_abs_err"),
                num("rel_err"),
                num("tolerance")
            ))
        }
        (false, _) => Err(format!("{side} side exited with {}", out.status)),
    }
}

fn record(side: &mut SideResult, report: std::result::Result<Value, String>) -> Option<f64> {
    match report {
        Ok(v) => {
            let times: Vec<f64> = v
                .get("times_ms")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let m = median(&times);
            side.times.extend(&times);
            if let Some(m) = m {
                side.round_medians.push(m);
            }
            if let Some(rss) = v.get("peak_rss_mb").and_then(Value::as_f64) {
                side.peak_rss.push(rss);
            }
            side.last = Some(v);
            m
        }
        Err(e) => {
            side.failure = Some(e);
            None
        }
    }
}

/// Builds the `vs_torch` bench binary and returns its path.
fn build_bench(root: &Path) -> Result<PathBuf> {
    eprintln!("[vs-torch] building crates/models/benches/vs_torch.rs (bench profile)");
    let out = Command::new(env!("CARGO"))
        .args([
            "bench",
            "-p",
            "ember-models",
            "--bench",
            "vs_torch",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo to build the vs_torch bench")?;
    if !out.status.success() {
        bail!(
            "building the vs_torch bench failed ({}); see the compiler output above",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("reason").and_then(Value::as_str) == Some("compiler-artifact"))
        .filter(|v| v.pointer("/target/name").and_then(Value::as_str) == Some("vs_torch"))
        .find_map(|v| {
            v.get("executable")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        })
        .context("cargo built the vs_torch bench but reported no executable for it")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    })
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// Ember's parity column: max-abs-err and relative error against diffusers.
fn parity(side: &SideResult) -> String {
    let Some(v) = &side.last else {
        return "-".into();
    };
    let abs = v.get("max_abs_err").and_then(Value::as_f64);
    let rel = v.get("rel_err").and_then(Value::as_f64);
    match (v.get("case").and_then(Value::as_str), abs, rel) {
        (Some("mnist_train_b64"), Some(a), Some(r)) => {
            let r1 = v.get("loss1_rel_err").and_then(Value::as_f64);
            format!(
                "loss {a:.1e} abs / {r:.1e} rel; after 1 AdamW step {} rel",
                r1.map_or("-".into(), |x| format!("{x:.1e}"))
            )
        }
        (_, Some(a), Some(r)) => format!("{a:.1e} abs / {r:.1e} rel"),
        _ => "-".into(),
    }
}

/// Runs `bench --vs-torch` with the arguments after `bench`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let runner = root.join("tools/reference/run.sh");
    if !runner.is_file() {
        bail!("{} is missing", runner.display());
    }
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| {
            opts.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == c.name))
        })
        .collect();
    let out_root = root.join("target/bench-vs-torch");
    std::fs::create_dir_all(&out_root)
        .with_context(|| format!("creating {}", out_root.display()))?;
    let exe = build_bench(root)?;
    let threads = opts.threads.to_string();

    let python = |case: &str, dir: &Path| {
        let mut cmd = Command::new(&runner);
        cmd.arg("bench_vs_torch.py")
            .args(["--case", case, "--dir"])
            .arg(dir)
            .args(["--threads", &threads])
            .env("OMP_NUM_THREADS", &threads)
            .env("MKL_NUM_THREADS", &threads)
            .current_dir(root);
        cmd
    };

    let mut rows = Vec::new();
    for case in &cases {
        let dir = out_root.join(case.name);
        if dir.join("prepared.json").is_file() {
            eprintln!("[vs-torch] {}: reusing {}", case.name, dir.display());
        } else {
            eprintln!(
                "[vs-torch] {}: preparing weights and inputs in {}",
                case.name,
                dir.display()
            );
            let mut cmd = python(case.name, &dir);
            cmd.arg("--prepare");
            let status = cmd
                .status()
                .with_context(|| format!("starting {}", runner.display()))?;
            if !status.success() {
                bail!(
                    "preparing case {} failed ({status}); see the Python output above",
                    case.name
                );
            }
        }
        let warmup = opts.warmup.unwrap_or(case.warmup).to_string();
        let runs = opts.runs.unwrap_or(case.runs).to_string();
        let (mut ember, mut torch) = (SideResult::default(), SideResult::default());
        for round in 1..=opts.rounds {
            let mut cmd = Command::new(&exe);
            cmd.args(["--case", case.name, "--dir"])
                .arg(&dir)
                .args(["--warmup", &warmup, "--runs", &runs])
                .env("RAYON_NUM_THREADS", &threads)
                .current_dir(root);
            let m = record(&mut ember, run_side(cmd, "Ember", case.name));
            if let Some(e) = &ember.failure {
                eprintln!("[vs-torch] {} round {round}: {e}", case.name);
                break;
            }
            eprintln!(
                "[vs-torch] {} round {round}/{}: Ember median {} ms",
                case.name,
                opts.rounds,
                fmt_ms(m)
            );
            let mut cmd = python(case.name, &dir);
            cmd.args(["--warmup", &warmup, "--runs", &runs]);
            let m = record(&mut torch, run_side(cmd, "PyTorch", case.name));
            if let Some(e) = &torch.failure {
                eprintln!("[vs-torch] {} round {round}: {e}", case.name);
                break;
            }
            eprintln!(
                "[vs-torch] {} round {round}/{}: PyTorch median {} ms",
                case.name,
                opts.rounds,
                fmt_ms(m)
            );
        }
        rows.push((case, ember, torch));
    }

    // Table.
    let header = [
        "case",
        "Ember median ms",
        "PyTorch median ms",
        "Ember / PyTorch",
        "Ember peak RSS MB",
        "PyTorch peak RSS MB",
        "RSS Ember / PyTorch",
        "Ember vs diffusers (parity)",
    ];
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut failures = Vec::new();
    for (case, ember, torch) in &rows {
        let failure = ember.failure.as_ref().or(torch.failure.as_ref());
        if let Some(f) = failure {
            failures.push(format!("{}: {f}", case.name));
        }
        table.push(vec![
            case.name.to_string(),
            fmt_ms(ember.median()),
            fmt_ms(torch.median()),
            fmt_ratio(ember.median(), torch.median()),
            fmt_ms(ember.peak()),
            fmt_ms(torch.peak()),
            fmt_ratio(ember.peak(), torch.peak()),
            match failure {
                Some(f) => format!("FAILED: {f}"),
                None => parity(ember),
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 || i == cells.len() - 1 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let summary = format!(
        "{} thread(s) per side, {} round(s) of alternating processes (Ember, PyTorch); medians over all timed iterations of all rounds; peak RSS is the highest over the rounds",
        opts.threads, opts.rounds
    );
    println!();
    println!("{}", line(header.to_vec()));
    for r in &table {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    println!("{summary}");

    // Markdown.
    let mut md = String::new();
    md.push_str(&format!("| {} |\n", header.join(" | ")));
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &table {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    md.push('\n');
    md.push_str(&format!(
        "{summary}. Machine: {} ({} logical CPUs). Timed iterations per process (warm-up / timed): {}.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows.iter()
            .map(|(c, _, _)| format!(
                "{} {}/{}",
                c.name,
                opts.warmup.unwrap_or(c.warmup),
                opts.runs.unwrap_or(c.runs)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let versions = rows
        .iter()
        .find_map(|(_, _, t)| t.last.as_ref().and_then(|v| v.get("versions")).cloned());

    // JSON.
    let results = json!({
        "command": format!("cargo xtask bench {}", args.join(" ")),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "threads": opts.threads,
        "rounds": opts.rounds,
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "pytorch_versions": versions,
        "cases": rows.iter().map(|(case, ember, torch)| json!({
            "case": case.name,
            "what": case.what,
            "warmup": opts.warmup.unwrap_or(case.warmup),
            "runs_per_round": opts.runs.unwrap_or(case.runs),
            "ratio_median": match (ember.median(), torch.median()) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            "ratio_peak_rss": match (ember.peak(), torch.peak()) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            "ember": ember.to_json(),
            "pytorch": torch.to_json(),
        })).collect::<Vec<_>>(),
    });
    let json_path = out_root.join("results.json");
    let md_path = out_root.join("results.md");
    let text = serde_json::to_string_pretty(&results).context("serialising the results")?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("wrote {} and {}", json_path.display(), md_path.display());
    std::io::stdout().flush().ok();

    if !failures.is_empty() {
        bail!("{} case(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}
