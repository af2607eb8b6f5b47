//! CIFAR-10 binary batches (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`):
//! records of one label byte (0–9) followed by 3×32×32 pixel bytes, channel-major
//! (red plane, green plane, blue plane).

use crate::LabeledImages;
use ember_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Bytes of one record: label + 3·32·32 pixels.
const RECORD: usize = 1 + 3 * 32 * 32;

/// Which batches of a `cifar-10-batches-bin` folder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `data_batch_1.bin` … `data_batch_5.bin` (50,000 images).
    Train,
    /// `test_batch.bin` (10,000 images).
    Test,
}

/// Reads the given binary batch files, in order, as `[N, 3, 32, 32]` images in `[0, 1]`.
pub fn load_batches(paths: &[PathBuf]) -> Result<LabeledImages> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let err = |message: String| Error::data(path, message);
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(err(format!(
                "{} bytes are not a whole number of {RECORD}-byte CIFAR-10 records",
                bytes.len()
            )));
        }
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] > 9 {
                return Err(err(format!("record {i} has label {}, not 0–9", record[0])));
            }
            labels.push(record[0]);
            pixels.extend(record[1..].iter().map(|&p| p as f32 / 255.0));
        }
    }
    Ok(LabeledImages {
        channels: 3,
        height: 32,
        width: 32,
        pixels,
        labels,
        num_classes: 10,
    })
}

/// Reads a split of a `cifar-10-batches-bin` folder.
pub fn load_dir(dir: &Path, split: Split) -> Result<LabeledImages> {
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    load_batches(&names.iter().map(|n| dir.join(n)).collect::<Vec<_>>())
}
