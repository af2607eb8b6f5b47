//! The `ember` command-line tool.
//!
//! ```text
//! ember schedulers            # every scheduler with its options and defaults
//! ember schedulers DDIMScheduler --json
//! ember info path/to/unet             # class, config summary, parameters, dtypes
//! ember forward --model path/to/unet --inputs in.safetensors --out out.safetensors
//! ember sample --model path/to/pipeline --steps 50 --seed 0 --batch 4 --out grid.png
//! ```
//!
//! Every error is one line on stderr, `error: ...`, with a non-zero exit status.

mod eval;
mod model;
mod sample;
mod train;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

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

// Parsed once per run; `sample`'s many options make it the largest variant, harmlessly.
#[allow(clippy::large_enum_variant)]
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
    /// Describe a diffusers U-Net folder.
    ///
    /// Prints the class, a config summary, the exact parameter count, the weight files and
    /// their stored dtypes, and whether the checkpoint matches the config.
    Info {
        /// The model folder (config.json plus diffusion_pytorch_model*.safetensors).
        dir: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one U-Net forward pass and write its output `sample`.
    ///
    /// The inputs file holds tensors named after diffusers' forward arguments: `sample`,
    /// `timestep` (one per sample, or one for all), `encoder_hidden_states`,
    /// `encoder_attention_mask`, `class_labels`, `text_embeds` / `time_ids`, `timestep_cond`,
    /// `down_block_additional_residuals.N` and `mid_block_additional_residual`.
    Forward {
        /// The model folder (config.json plus diffusion_pytorch_model*.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// safetensors file holding the forward inputs.
        #[arg(long)]
        inputs: PathBuf,
        /// safetensors file to write the output `sample` to.
        #[arg(long)]
        out: PathBuf,
        /// Backend to run on: flex, ndarray, wgpu or cuda (those compiled in; default: the
        /// first compiled in, flex in a default build).
        #[arg(long)]
        device: Option<String>,
    },
    /// Train a diffusion model from a TOML config (see configs/ and docs/training.md).
    ///
    /// Resumes from the newest checkpoint in the config's output_dir unless --fresh. Writes
    /// checkpoints, sample grids, train_log.jsonl, split.json and, at the end, a diffusers
    /// pipeline folder OUTPUT_DIR/pipeline.
    Train {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Override train.steps (the learning-rate schedule follows it).
        #[arg(long)]
        steps: Option<usize>,
        /// Override output_dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Start over: delete the output folder's checkpoints instead of resuming.
        #[arg(long)]
        fresh: bool,
        /// Backend: flex, ndarray, wgpu or cuda (those compiled in).
        #[arg(long)]
        device: Option<String>,
        /// Data-parallel devices of that backend, e.g. 0,1 (each micro-batch is split
        /// between them; the first holds the optimizer).
        #[arg(long)]
        devices: Option<String>,
    },
    /// Evaluate a class-conditional MNIST pipeline: the fraction of guided samples a digit
    /// classifier reads as the requested digit, and the Fréchet distance of their
    /// classifier features to the held-out digits.
    ///
    /// The classifier is trained on the split's training digits on first use and cached
    /// (default: digit_classifier.safetensors next to split.json).
    EvalMnist(eval::EvalArgs),
    /// Sample images from a diffusers pipeline folder (model_index.json, unet/, scheduler/).
    ///
    /// Writes a grid PNG of the batch; optionally the raw final tensor (`sample`, before the
    /// mapping to [0, 1]) and an animated GIF of every step. With --init-image it runs
    /// img2img (SDEdit), adding --mask it inpaints (white = generate, black = keep).
    Sample {
        /// The pipeline folder (model_index.json, unet/, scheduler/).
        #[arg(long)]
        model: PathBuf,
        /// Swap the folder's scheduler for this class (diffusers class name, see
        /// `ember schedulers`).
        #[arg(long, conflicts_with = "scheduler_config")]
        scheduler: Option<String>,
        /// Use this scheduler_config.json instead of the folder's.
        #[arg(long)]
        scheduler_config: Option<PathBuf>,
        /// Number of inference steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the initial noise and of stochastic steps.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Number of images.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Class label for the whole batch (class-conditional models).
        #[arg(long)]
        class_label: Option<i64>,
        /// Classifier-free guidance scale (1: no guidance); other values need --null-class.
        #[arg(long, default_value_t = 1.0)]
        guidance_scale: f64,
        /// Label of the unconditional branch under guidance.
        #[arg(long)]
        null_class: Option<i64>,
        /// PNG to start from (img2img / inpainting); must have the model's size.
        #[arg(long)]
        init_image: Option<PathBuf>,
        /// How much of the init image to replace, in [0, 1] (default 0.8; 1.0 with --mask).
        #[arg(long)]
        strength: Option<f64>,
        /// Inpainting mask (PNG luminance, white = generate, black = keep; or a
        /// .safetensors file with tensor `mask` in [0, 1]); needs --init-image.
        #[arg(long)]
        mask: Option<PathBuf>,
        /// safetensors file with tensor `latents` [B, C, H, W]: the initial noise, before
        /// the scheduler's init_noise_sigma scaling.
        #[arg(long)]
        init_noise: Option<PathBuf>,
        /// Grid PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// safetensors file to write the final tensor `sample` to (model space).
        #[arg(long)]
        save_tensor: Option<PathBuf>,
        /// Animated GIF with one frame (grid) per step.
        #[arg(long)]
        trajectory: Option<PathBuf>,
        /// Backend to run on: flex, ndarray, wgpu or cuda (those compiled in).
        #[arg(long)]
        device: Option<String>,
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
    // A panic is a bug, but the user still gets one `error:` line; the standard report
    // with its trace follows only when asked for with RUST_BACKTRACE.
    let standard_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info.payload_as_str().unwrap_or("unknown cause");
        eprintln!(
            "error: internal error{at}: {} (this is a bug; RUST_BACKTRACE=1 shows a trace)",
            one_line(msg)
        );
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| !v.is_empty() && v != "0") {
            standard_report(info);
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("{}", clap_error_line(&e));
            std::process::exit(e.exit_code());
        }
        Err(e) => e.exit(),
    };
    if let Err(e) = run(cli) {
        eprintln!("error: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line; a cause already quoted by its parent (as
/// `ember_core::Error::Io` quotes its I/O error) is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    one_line(&line)
}

/// Clap's usage error without the usage block, on one line.
fn clap_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .collect();
    let line = one_line(&body.join("\n"));
    if line.starts_with("error:") {
        format!("{line} (see --help)")
    } else {
        format!("error: {line} (see --help)")
    }
}

/// Joins the non-empty lines of `text` with single spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Schedulers { name, json } => schedulers(name.as_deref(), json),
        Command::EvalMnist(args) => eval::run(&args),
        Command::Train {
            config,
            steps,
            output_dir,
            fresh,
            device,
            devices,
        } => train::run(&train::TrainArgs {
            config,
            steps,
            output_dir,
            fresh,
            device,
            devices,
        }),
        Command::Info { dir, json } => model::info(&dir, json),
        Command::Forward {
            model,
            inputs,
            out,
            device,
        } => model::forward(&model, &inputs, &out, device.as_deref()),
        Command::Sample {
            model,
            scheduler,
            scheduler_config,
            steps,
            seed,
            batch,
            class_label,
            guidance_scale,
            null_class,
            init_image,
            strength,
            mask,
            init_noise,
            out,
            save_tensor,
            trajectory,
            device,
        } => sample::run(&sample::SampleArgs {
            model,
            scheduler,
            scheduler_config,
            steps,
            seed,
            batch,
            class_label,
            null_class,
            guidance_scale,
            init_image,
            strength,
            mask,
            init_noise,
            out,
            save_tensor,
            trajectory,
            device,
        }),
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
