//! IDX files (the original MNIST / Fashion-MNIST format): big-endian, magic `0x0000_08NN`
//! for unsigned bytes with `NN` dimensions, then the dimensions, then the data. Files must
//! be decompressed first (`gunzip`).

use crate::LabeledImages;
use ember_core::{Error, Result};
use std::path::Path;

/// An unsigned-byte IDX file's dimensions and data.
fn read_u8_idx(path: &Path, dims_expected: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::data(path, e.to_string()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::data(
            path,
            "is gzip-compressed; decompress it first (gunzip)",
        ));
    }
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::data(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::data(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned bytes (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims != dims_expected {
        return Err(Error::data(
            path,
            format!("has {ndims} dimensions, expected {dims_expected}"),
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(Error::data(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::data(path, "dimensions overflow"))?;
    if bytes.len() - header != len {
        return Err(Error::data(
            path,
            format!(
                "header says {dims:?} ({len} bytes of data) but the file holds {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Loads an IDX image file (`[N, H, W]` bytes) and its label file (`[N]` bytes, each below
/// `num_classes`) as `[N, 1, H, W]` images in `[0, 1]`.
pub fn load_idx(images: &Path, labels: &Path, num_classes: usize) -> Result<LabeledImages> {
    let (dims, pixels) = read_u8_idx(images, 3)?;
    let (label_dims, labels_raw) = read_u8_idx(labels, 1)?;
    if label_dims[0] != dims[0] {
        return Err(Error::data(
            labels,
            format!(
                "{} labels for {} images in {}",
                label_dims[0],
                dims[0],
                images.display()
            ),
        ));
    }
    if let Some((i, l)) = labels_raw
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(Error::data(
            labels,
            format!("label {l} at index {i} is not below {num_classes}"),
        ));
    }
    Ok(LabeledImages {
        channels: 1,
        height: dims[1],
        width: dims[2],
        pixels: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: labels_raw,
        num_classes,
    })
}
