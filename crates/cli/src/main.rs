//! The `ember` command-line tool.
//!
//! ```text
//! ember schedulers            # every scheduler with its options and defaults
//! ember schedulers DDIMScheduler --json
//! ```

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Diffusion models on burn: schedulers, models, pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every scheduler with its options and their defaults.
    Schedulers {
        /// Show only this scheduler (diffusers class name).
        name: Option<String>,
        /// Print the default scheduler_config.json instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Prints `log` warnings (e.g. unknown config keys) to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Schedulers { name, json } => schedulers(name.as_deref(), json),
    }
}

fn schedulers(name: Option<&str>, json: bool) -> Result<()> {
    let all = &*ember_schedulers::SCHEDULERS;
    let selected: Vec<_> = match name {
        Some(n) => {
            let found: Vec<_> = all.iter().filter(|s| s.class_name == n).collect();
            if found.is_empty() {
                let valid: Vec<_> = all.iter().map(|s| s.class_name).collect();
                bail!(
                    "unknown scheduler `{n}`; valid values are: {}",
                    valid.join(", ")
                );
            }
            found
        }
        None => all.iter().collect(),
    };
    if json {
        let out: Vec<Value> = selected.iter().map(|s| (s.default_config)()).collect();
        let out = if out.len() == 1 {
            out[0].clone()
        } else {
            Value::Array(out)
        };
        // diffusers' text form: non-finite defaults (`lambda_min_clipped`) as `-Infinity`.
        println!("{}", ember_schedulers::config::config_to_text(&out));
        return Ok(());
    }
    println!(
        "{} schedulers (diffusers class names; options are scheduler_config.json keys)\n",
        selected.len()
    );
    for s in selected {
        println!("{}\n  {}", s.class_name, s.summary);
        if let Value::Object(cfg) = (s.default_config)() {
            for (k, v) in cfg.iter().filter(|(k, _)| !k.starts_with('_')) {
                println!("    {k:<32} {}", compact(v));
            }
        }
        println!();
    }
    Ok(())
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}
