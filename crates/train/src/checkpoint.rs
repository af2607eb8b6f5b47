//! Checkpoint folders that are either complete or absent.
//!
//! A checkpoint is written into `checkpoints/.partial-step-N/`, every file is flushed to
//! disk, `state.json` goes last, and only then is the folder renamed to
//! `checkpoints/step-N/` (a rename is atomic on POSIX file systems). A process killed at
//! any moment leaves either the previous checkpoints or the new one, never half of one;
//! stale `.partial-*` folders are removed on the next start.

use ember_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the checkpoints folder inside the output folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The loop state file, written last.
pub const STATE_FILE: &str = "state.json";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The random streams' state. Every draw (data order, noise, timesteps, dropout,
    /// flips) comes from a counter-based stream keyed by `(seed, micro-batch index)`, so
    /// this pair is the whole RNG state.
    pub rng: RngState,
    /// EMA updates so far.
    pub ema_optimization_step: usize,
    /// The run's configuration, to refuse resuming a different run.
    pub config: serde_json::Value,
}

/// The counter-based RNG's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The run's seed.
    pub seed: u64,
    /// Index of the next micro-batch to draw.
    pub next_micro_batch: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `OUT/checkpoints/step-00000042`.
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(CHECKPOINTS).join(format!("step-{step:08}"))
}

/// Creates an empty staging folder for the checkpoint of `step` and returns it.
pub fn begin(output_dir: &Path, step: usize) -> Result<PathBuf> {
    let dir = output_dir
        .join(CHECKPOINTS)
        .join(format!(".partial-step-{step:08}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// Flushes every file of the staging folder, writes `state.json`, and renames the folder
/// to its final name (replacing an older checkpoint of the same step).
pub fn commit(staging: &Path, output_dir: &Path, state: &TrainState) -> Result<PathBuf> {
    for entry in std::fs::read_dir(staging).map_err(io(staging))? {
        let path = entry.map_err(io(staging))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    let state_path = staging.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Checkpoint {
        path: state_path.display().to_string(),
        message: e.to_string(),
    })?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&state_path).map_err(io(&state_path))?;
        f.write_all(text.as_bytes()).map_err(io(&state_path))?;
        f.sync_all().map_err(io(&state_path))?;
    }
    sync_dir(staging)?;
    let target = checkpoint_dir(output_dir, state.step);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    std::fs::rename(staging, &target).map_err(io(&target))?;
    sync_dir(&output_dir.join(CHECKPOINTS))?;
    Ok(target)
}

/// Complete checkpoints, oldest first, as `(step, folder)`.
pub fn list(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = output_dir.join(CHECKPOINTS);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io(&root))? {
        let path = entry.map_err(io(&root))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            if path.join(STATE_FILE).is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Removes staging folders left by a killed run.
pub fn remove_partial(output_dir: &Path) -> Result<()> {
    let root = output_dir.join(CHECKPOINTS);
    if !root.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&root).map_err(io(&root))? {
        let path = entry.map_err(io(&root))?.path();
        let partial = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".partial-"));
        if partial {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Deletes all but the newest `keep` checkpoints (at least one is always kept).
pub fn prune(output_dir: &Path, keep: usize) -> Result<()> {
    let all = list(output_dir)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, dir) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    Ok(())
}
