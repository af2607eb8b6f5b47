//! Folders of PNG images, labelled and captioned the way HuggingFace `datasets`'
//! `imagefolder` builder reads them.
//!
//! [`load`] finds the images and their labels in one of three layouts:
//!
//! - **`metadata.jsonl`** in the folder: one JSON object per line,
//!   `{"file_name": "x.png", "label": 3}`, `{"file_name": "x.png", "text": "a caption"}` or
//!   both. `file_name` is relative to the folder (`/`-separated, sub-folders allowed);
//!   `label` must be an integer in `0..=255` (or null), `text` a string (or null); other
//!   fields are ignored. Every `.png` under the folder is loaded, sub-folders included;
//!   images no line names get no label and no caption. Labels are all or nothing: when some
//!   images have one, an image without one is an error. `num_classes` is the largest label
//!   plus one.
//! - **Class folders**, without `metadata.jsonl`: `dir/<class>/…/*.png`. Class names sorted
//!   (byte order) give the labels 0, 1, …, recorded in [`ImageFolder::class_names`]. A class
//!   folder without images, or an image beside the class folders, is an error.
//! - **A flat folder** of `*.png`, without either: unlabelled.
//!
//! Images come in sorted file-name order (class by class for class folders; depth first,
//! names in byte order, otherwise). Names starting with `.` are skipped, and so are files
//! not ending in `.png` (any case). Every problem is a one-line [`Error::Data`] naming the
//! file (and the line, for `metadata.jsonl`); nothing is returned until every image has
//! been read.
//!
//! ```no_run
//! use ember_data::image_folder::{load, ImageFolderOptions};
//!
//! let options = ImageFolderOptions { channels: Some(3), resize: Some((32, 32)) };
//! let folder = load(std::path::Path::new("data/flowers"), &options)?;
//! println!("{} images, labelled: {}", folder.images.len(), folder.labelled);
//! # Ok::<(), ember_core::Error>(())
//! ```

use crate::{transforms, LabeledImages};
use ember_core::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Name of the metadata file [`load`] looks for.
pub const METADATA_FILE: &str = "metadata.jsonl";

/// Deepest folder nesting [`load`] descends into (a guard against symbolic-link loops).
const MAX_DEPTH: usize = 32;

/// ITU-R BT.601 luma weights, as Pillow's `convert("L")` and torchvision's `Grayscale` use.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// How [`load`] converts the images it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFolderOptions {
    /// Channels to convert every image to: `Some(1)` luma (BT.601 weights, as Pillow's
    /// `convert("L")`), `Some(3)` RGB (grey replicated); alpha is dropped, not composited.
    /// `None` keeps what the files hold (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), which must
    /// then be the same for every image.
    pub channels: Option<usize>,
    /// `(height, width)` to resize every image to with [`transforms::resize`] (bilinear,
    /// antialiased; the aspect ratio is not kept). `None` keeps the files' size, which must
    /// then be the same for every image.
    pub resize: Option<(usize, usize)>,
}

/// An image folder in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// The images, `[N, C, H, W]` in `[0, 1]` (8- and 16-bit files alike), in load order.
    /// When the folder has no labels, every label is 0 and `num_classes` is 1, so the set
    /// trains as one unconditional class; check [`ImageFolder::labelled`].
    pub images: LabeledImages,
    /// Whether `images.labels` came from class folders or `metadata.jsonl`.
    pub labelled: bool,
    /// One entry per image: its `text` from `metadata.jsonl`, if any.
    pub captions: Vec<Option<String>>,
    /// Class-folder names, indexed by label; empty unless labels came from class folders.
    pub class_names: Vec<String>,
    /// One entry per image: its path relative to the folder, `/`-separated.
    pub files: Vec<String>,
}

/// One `metadata.jsonl` entry.
#[derive(Default)]
struct Entry {
    label: Option<u8>,
    text: Option<String>,
}

/// Reads the PNG images under `dir` with their labels and captions (see the
/// [module docs](self) for the layouts), converting them as `options` says.
///
/// Fails with a one-line error naming the file when the folder cannot be read or holds no
/// PNG image; an image is unreadable or not a valid PNG; images differ in size (without
/// `resize`) or channel count (without `channels`); a `metadata.jsonl` line is not a JSON
/// object, lacks `file_name`, names a file that is missing or named twice, or has a label
/// that is not an integer in `0..=255` or a `text` that is not a string; labels cover only
/// some images; or a class folder is empty. Invalid options (`channels` other than 1 or 3,
/// a zero `resize` side) are [`Error::InvalidArgument`].
pub fn load(dir: &Path, options: &ImageFolderOptions) -> Result<ImageFolder> {
    if let Some(c) = options.channels {
        if c != 1 && c != 3 {
            return Err(Error::argument(
                "channels",
                format!("{c} is not 1 (luma) or 3 (RGB)"),
            ));
        }
    }
    if let Some((h, w)) = options.resize {
        if h == 0 || w == 0 {
            return Err(Error::argument(
                "resize",
                format!("{h}×{w} has a zero side"),
            ));
        }
    }
    let metadata_path = dir.join(METADATA_FILE);
    let (files, labels, captions, class_names) = if metadata_path.is_file() {
        let mut files = Vec::new();
        collect_pngs(dir, "", 0, &mut files)?;
        let (labels, captions) = read_metadata(dir, &metadata_path, &files)?;
        (files, labels, captions, Vec::new())
    } else {
        let (files, labels, class_names) = list_plain_or_classes(dir)?;
        let n = files.len();
        (files, labels, vec![None; n], class_names)
    };
    if files.is_empty() {
        return Err(Error::data(
            dir,
            "holds no .png images (only PNG is read; convert other formats first)",
        ));
    }

    let mut pixels = Vec::new();
    let mut layout: Option<(usize, usize, usize, &str)> = None;
    for rel in &files {
        let path = dir.join(rel);
        let (c, h, w, data) = decode(&path, options)?;
        if let Some((c0, h0, w0, first)) = layout {
            if (h, w) != (h0, w0) {
                return Err(Error::data(
                    &path,
                    format!(
                        "is {h}×{w} but {first} is {h0}×{w0}; set `resize` to load mixed sizes"
                    ),
                ));
            }
            if c != c0 {
                return Err(Error::data(
                    &path,
                    format!(
                        "has {c} channels but {first} has {c0}; set `channels` to load mixed ones"
                    ),
                ));
            }
        } else {
            layout = Some((c, h, w, rel));
        }
        pixels.extend(data);
    }
    let (channels, height, width, _) = layout.unwrap_or((0, 0, 0, ""));
    let labelled = labels.is_some();
    let (labels, num_classes) = match labels {
        Some((labels, num_classes)) => (labels, num_classes),
        None => (vec![0; files.len()], 1),
    };
    Ok(ImageFolder {
        images: LabeledImages {
            channels,
            height,
            width,
            pixels,
            labels,
            num_classes,
        },
        labelled,
        captions,
        class_names,
        files,
    })
}

/// Labels and the class count, when there are labels.
type Labels = Option<(Vec<u8>, usize)>;

/// The sorted entries of `dir` whose names do not start with `.`: (name, path, is a folder).
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::data(dir, e.to_string()))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::data(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symbolic links, so linked folders and files count.
        let is_dir = std::fs::metadata(&path)
            .map_err(|e| Error::data(&path, e.to_string()))?
            .is_dir();
        entries.push((name, path, is_dir));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn is_png(name: &str) -> bool {
    name.len() > 4 && name[name.len() - 4..].eq_ignore_ascii_case(".png")
}

/// Appends the `/`-separated paths (prefixed by `prefix`) of every `.png` under `dir`,
/// depth first in name order.
fn collect_pngs(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::data(
            dir,
            format!("is nested more than {MAX_DEPTH} folders deep (a symbolic-link loop?)"),
        ));
    }
    for (name, path, is_dir) in sorted_entries(dir)? {
        let rel = format!("{prefix}{name}");
        if is_dir {
            collect_pngs(&path, &format!("{rel}/"), depth + 1, out)?;
        } else if is_png(&name) {
            out.push(rel);
        }
    }
    Ok(())
}

/// The images of a folder without `metadata.jsonl`: from class folders when it has
/// sub-folders (with labels and class names), else its own `.png` files, unlabelled.
fn list_plain_or_classes(dir: &Path) -> Result<(Vec<String>, Labels, Vec<String>)> {
    let entries = sorted_entries(dir)?;
    if !entries.iter().any(|(_, _, is_dir)| *is_dir) {
        let files = entries
            .into_iter()
            .filter(|(name, _, _)| is_png(name))
            .map(|(name, _, _)| name)
            .collect();
        return Ok((files, None, Vec::new()));
    }
    if let Some((_, path, _)) = entries.iter().find(|(n, _, d)| !d && is_png(n)) {
        return Err(Error::data(
            path,
            "is beside class folders; move it into one (or add metadata.jsonl)",
        ));
    }
    let classes: Vec<_> = entries.into_iter().filter(|(_, _, d)| *d).collect();
    if classes.len() > 256 {
        return Err(Error::data(
            dir,
            format!(
                "has {} class folders; labels are bytes, so at most 256",
                classes.len()
            ),
        ));
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    let mut class_names = Vec::new();
    for (label, (name, path, _)) in classes.into_iter().enumerate() {
        let before = files.len();
        collect_pngs(&path, &format!("{name}/"), 1, &mut files)?;
        if files.len() == before {
            return Err(Error::data(&path, "is a class folder without .png images"));
        }
        labels.resize(files.len(), label as u8);
        class_names.push(name);
    }
    let num_classes = class_names.len();
    Ok((files, Some((labels, num_classes)), class_names))
}

/// Labels and captions for `files` from `metadata.jsonl`.
fn read_metadata(
    dir: &Path,
    path: &Path,
    files: &[String],
) -> Result<(Labels, Vec<Option<String>>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::data(path, e.to_string()))?;
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let mut entries: Vec<Option<Entry>> = (0..files.len()).map(|_| None).collect();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| Error::data(path, format!("line {}: {message}", i + 1));
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // serde's own "at line 1 column N" would contradict the file's line number.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            err(format!(
                "not valid JSON at column {} ({message})",
                e.column()
            ))
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| err("is not a JSON object".into()))?;
        let name = match object.get("file_name") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(other) => return Err(err(format!("file_name {other} is not a string"))),
            None => return Err(err("has no file_name".into())),
        };
        let name = name.trim_start_matches("./");
        let Some(&k) = index.get(name) else {
            let message = if dir.join(name).is_file() {
                format!("file_name `{name}` is not a .png image this loader reads")
            } else {
                format!("file_name `{name}` does not exist in the folder")
            };
            return Err(err(message));
        };
        if entries[k].is_some() {
            return Err(err(format!("file_name `{name}` is named twice")));
        }
        let label = match object.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(l) if l <= u8::MAX as u64 => Some(l as u8),
                _ => return Err(err(format!("label {v} is not an integer in 0..=255"))),
            },
        };
        let text = match object.get("text") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(err(format!("text {other} is not a string"))),
        };
        entries[k] = Some(Entry { label, text });
    }
    let labels: Vec<Option<u8>> = entries
        .iter()
        .map(|e| e.as_ref().and_then(|e| e.label))
        .collect();
    let labelled = labels.iter().filter(|l| l.is_some()).count();
    let labels = if labelled == 0 {
        None
    } else if let Some(k) = labels.iter().position(Option::is_none) {
        return Err(Error::data(
            path,
            format!(
                "gives labels to {labelled} of {} images but none to `{}`; label all or none",
                files.len(),
                files[k]
            ),
        ));
    } else {
        let labels: Vec<u8> = labels.into_iter().flatten().collect();
        let num_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        Some((labels, num_classes))
    };
    let captions = entries
        .into_iter()
        .map(|e| e.and_then(|e| e.text))
        .collect();
    Ok((labels, captions))
}

/// One image as `(channels, height, width, [C, H, W] values in [0, 1])`, converted and
/// resized as `options` says.
fn decode(path: &Path, options: &ImageFolderOptions) -> Result<(usize, usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::data(path, e.to_string()))?;
    let image =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).map_err(|e| {
            let message = e.to_string().replace('\n', " ");
            Error::data(path, format!("not a readable PNG ({message})"))
        })?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let native = image.color().channel_count() as usize;
    // Interleaved [H, W, native] values in [0, 1].
    let values: Vec<f32> = match native {
        1 => image.to_luma32f().into_raw(),
        2 => image.to_luma_alpha32f().into_raw(),
        3 => image.to_rgb32f().into_raw(),
        _ => image.to_rgba32f().into_raw(),
    };
    let channels = options.channels.unwrap_or(native);
    let mut planar = vec![0.0f32; channels * h * w];
    let plane = h * w;
    for (p, px) in values.chunks_exact(native).enumerate() {
        match (channels, native) {
            (1, 1 | 2) => planar[p] = px[0],
            (1, _) => planar[p] = LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2],
            (3, 1 | 2) => (0..3).for_each(|c| planar[c * plane + p] = px[0]),
            (3, _) => (0..3).for_each(|c| planar[c * plane + p] = px[c]),
            _ => (0..channels).for_each(|c| planar[c * plane + p] = px[c]),
        }
    }
    match options.resize {
        Some((new_h, new_w)) if (new_h, new_w) != (h, w) => {
            let resized = transforms::resize(&planar, channels, h, w, new_h, new_w)
                .map_err(|e| Error::data(path, e.to_string()))?;
            Ok((channels, new_h, new_w, resized))
        }
        _ => Ok((channels, h, w, planar)),
    }
}
