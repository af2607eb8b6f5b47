//! `ember train` end to end: SIGKILL mid-run and resume gives the same losses and the same
//! final weights as an uninterrupted run; the output folder loads back; bad configs fail
//! before any step with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tiny class-conditional U-Net on coloured shapes: fast enough for a test, and every
/// part of the loop in play (guidance dropout, min-SNR, accumulation, clipping, EMA).
const CONFIG: &str = r#"
output_dir = "OUT"
seed = 7

[data]
dataset = "shapes"
image_size = 16
num_examples = 96
validation_fraction = 0.25
random_flip = true

[model]
_class_name = "UNet2DModel"
sample_size = 16
in_channels = 3
out_channels = 3
block_out_channels = [8, 16]
down_block_types = ["DownBlock2D", "AttnDownBlock2D"]
up_block_types = ["AttnUpBlock2D", "UpBlock2D"]
layers_per_block = 1
norm_num_groups = 4
num_class_embeds = 4
attention_head_dim = 4

[scheduler]
_class_name = "DDPMScheduler"
num_train_timesteps = 1000
prediction_type = "epsilon"

[objective]
loss_weighting = "min_snr"
condition_dropout = 0.2

[optimizer]
learning_rate = 1e-3
warmup_steps = 3
schedule = "cosine"
grad_clip_norm = 1.0
grad_accumulation = 2

[ema]
decay = 0.99

[train]
steps = 16
batch_size = 8
checkpoint_every = 4
keep_checkpoints = 2
sample_every = 0
log_every = 4
validation_examples = 8

[sampling]
schedulers = ["DDIMScheduler"]
steps = 4
guidance_scale = 2.0
samples_per_class = 2
"#;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = text.replace(
        "\"OUT\"",
        &format!("{:?}", dir.join("out").display().to_string()),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

/// `(step, loss text)` of every training line of the log (the text is Rust's shortest
/// round-trip form, so equal text is equal bits).
fn losses(out: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let loss = v.get("loss")?;
            Some((v["step"].as_u64().unwrap(), loss.to_string()))
        })
        .collect()
}

#[test]
fn sigkill_and_resume_equals_an_uninterrupted_run() {
    // Uninterrupted.
    let a = temp_dir("straight");
    let config_a = write_config(&a, CONFIG);
    let run = ember(&["train", "--config", config_a.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let straight = losses(&a.join("out"));
    assert_eq!(straight.len(), 16);

    // Killed after its first checkpoint, then resumed.
    let b = temp_dir("killed");
    let config_b = write_config(&b, CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["train", "--config", config_b.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = b.join("out/checkpoints");
    let start = Instant::now();
    loop {
        let first = checkpoints.join("step-00000004");
        if first.join("state.json").exists() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill a little later, somewhere in the following steps (maybe mid-checkpoint).
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let killed = losses(&b.join("out"));
    assert!(killed.len() < 16, "the run finished before the kill");

    // Every checkpoint folder left behind is complete (staging folders are hidden).
    for entry in std::fs::read_dir(&checkpoints).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("step-") {
            for file in ["state.json", "model.mpk", "optimizer.mpk", "ema.mpk"] {
                assert!(path.join(file).is_file(), "{name} lacks {file}");
            }
        } else {
            assert!(name.starts_with(".partial-"), "unexpected {name}");
        }
    }

    let resumed = ember(&["train", "--config", config_b.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert_eq!(losses(&b.join("out")), straight, "resumed losses differ");
    for file in [
        "pipeline/unet/diffusion_pytorch_model.safetensors",
        "pipeline/model_index.json",
    ] {
        assert_eq!(
            std::fs::read(a.join("out").join(file)).unwrap(),
            std::fs::read(b.join("out").join(file)).unwrap(),
            "{file} differs"
        );
    }

    // The output is a pipeline folder `ember sample` reads, guided by the null class.
    let grid = b.join("grid.png");
    let sample = ember(&[
        "sample",
        "--model",
        b.join("out/pipeline").to_str().unwrap(),
        "--steps",
        "3",
        "--batch",
        "2",
        "--class-label",
        "1",
        "--guidance-scale",
        "2",
        "--null-class",
        "3",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(
        sample.status.success(),
        "{}",
        String::from_utf8_lossy(&sample.stderr)
    );
    assert!(grid.is_file());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// Every bad input fails with one `error:` line before the first training step.
#[test]
fn bad_configs_fail_before_training() {
    let dir = temp_dir("bad");
    let cases: Vec<(String, &str)> = vec![
        (
            CONFIG.replace("batch_size = 8", "batch_sise = 8"),
            "batch_sise",
        ),
        (
            CONFIG.replace("dataset = \"shapes\"", "dataset = \"shapez\""),
            "shapez",
        ),
        (
            CONFIG.replace("num_class_embeds = 4", "num_class_embeds = 3"),
            "num_class_embeds",
        ),
        (
            CONFIG.replace(
                "sample_size = 16\nin_channels = 3",
                "sample_size = 16\nin_channels = 1",
            ),
            "shape",
        ),
        (
            CONFIG.replace("learning_rate = 1e-3", "learning_rate = -1.0"),
            "learning_rate",
        ),
        (
            CONFIG.replace(
                "_class_name = \"DDPMScheduler\"",
                "_class_name = \"DDPMSchedular\"",
            ),
            "DDPMSchedular",
        ),
        (
            CONFIG.replace(
                "schedulers = [\"DDIMScheduler\"]",
                "schedulers = [\"DIMScheduler\"]",
            ),
            "DIMScheduler",
        ),
        (
            CONFIG.replace(
                "dataset = \"shapes\"",
                "dataset = \"mnist\"\npath = \"/nonexistent/mnist\"",
            ),
            "/nonexistent/mnist",
        ),
        (
            CONFIG.replace("num_examples = 96", "num_examples = 4"),
            "batch_size",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let sub = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let path = write_config(&sub, text);
        let out = ember(&["train", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} ({needle}) trained");
        assert!(stderr.contains(needle), "case {i}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "case {i}: {stderr}");
        assert!(
            !sub.join("out/train_log.jsonl").exists(),
            "case {i} started training"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An unconditional model trains on labelled data (the labels are not passed to it).
#[test]
fn unconditional_model_on_labelled_data() {
    let dir = temp_dir("uncond");
    let text = CONFIG
        .replace("num_class_embeds = 4\n", "")
        .replace("condition_dropout = 0.2", "condition_dropout = 0.0")
        .replace("guidance_scale = 2.0", "guidance_scale = 1.0")
        .replace("steps = 16", "steps = 2");
    let path = write_config(&dir, &text);
    let out = ember(&["train", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("out/pipeline/unet/config.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
