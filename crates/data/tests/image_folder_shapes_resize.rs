//! Image folders (metadata.jsonl, class folders, flat) on small PNGs written here, their
//! one-line errors, antialiased resizing against Pillow's values, and coloured shapes.

use ember_data::image_folder::{load, ImageFolderOptions};
use ember_data::shapes::{ColouredShapes, Shape, BACKGROUND};
use ember_data::transforms::resize;
use std::path::{Path, PathBuf};

/// A scratch folder under the system temp dir, removed when dropped (also on a failed test).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ember-data-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A grey PNG whose pixel `(x, y)` is `f(x, y)`.
    fn gray_png(&self, rel: &str, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
        let path = self.write(rel, b"");
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
            .save(&path)
            .unwrap();
    }

    /// An RGB PNG of one colour.
    fn rgb_png(&self, rel: &str, w: u32, h: u32, rgb: [u8; 3]) {
        let path = self.write(rel, b"");
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(&path)
            .unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error's message, checked to be one line.
fn one_line(e: ember_core::Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    s
}

const KEEP: ImageFolderOptions = ImageFolderOptions {
    channels: None,
    resize: None,
};

#[test]
fn metadata_gives_labels_and_captions_in_file_name_order() {
    let dir = Scratch::new("meta");
    dir.gray_png("b.png", 3, 2, |x, y| (10 * x + 100 * y) as u8);
    dir.gray_png("a.png", 3, 2, |_, _| 255);
    dir.gray_png("sub/c.png", 3, 2, |_, _| 0);
    dir.write("notes.txt", b"not an image");
    dir.write(
        "metadata.jsonl",
        br#"{"file_name": "b.png", "label": 4, "text": "a gradient"}

{"file_name": "sub/c.png", "label": 0, "extra": [1, 2]}
{"file_name": "./a.png", "label": 2, "text": null}
"#,
    );
    let folder = load(dir.path(), &KEEP).unwrap();
    assert_eq!(folder.files, ["a.png", "b.png", "sub/c.png"]);
    assert!(folder.labelled);
    let set = &folder.images;
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (3, 1, 2, 3)
    );
    assert_eq!(set.labels, [2, 4, 0]);
    assert_eq!(set.num_classes, 5);
    assert_eq!(folder.captions, [None, Some("a gradient".into()), None]);
    assert!(folder.class_names.is_empty());
    assert_eq!(set.image(0), [1.0; 6]);
    assert_eq!(set.image(1)[4], 110.0 / 255.0);
    assert_eq!(set.image(2), [0.0; 6]);
}

#[test]
fn captions_only_metadata_is_unlabelled() {
    let dir = Scratch::new("captions");
    dir.rgb_png("x.png", 2, 2, [255, 0, 0]);
    dir.rgb_png("y.png", 2, 2, [0, 0, 255]);
    dir.write(
        "metadata.jsonl",
        b"{\"file_name\": \"y.png\", \"text\": \"blue\"}\n",
    );
    let folder = load(dir.path(), &KEEP).unwrap();
    assert!(!folder.labelled);
    assert_eq!(folder.images.labels, [0, 0]);
    assert_eq!(folder.images.num_classes, 1);
    assert_eq!(folder.captions, [None, Some("blue".into())]);
    assert_eq!(folder.images.channels, 3);
    assert_eq!(
        folder.images.image(1),
        [0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1.]
    );
}

#[test]
fn class_folders_give_sorted_class_labels() {
    let dir = Scratch::new("classes");
    dir.gray_png("dog/2.png", 2, 2, |_, _| 20);
    dir.gray_png("cat/1.png", 2, 2, |_, _| 10);
    dir.gray_png("cat/0.png", 2, 2, |_, _| 0);
    dir.gray_png("cat/nested/3.png", 2, 2, |_, _| 30);
    dir.write(".hidden/4.png", b"ignored");
    let folder = load(dir.path(), &KEEP).unwrap();
    assert_eq!(folder.class_names, ["cat", "dog"]);
    assert_eq!(
        folder.files,
        ["cat/0.png", "cat/1.png", "cat/nested/3.png", "dog/2.png"]
    );
    assert!(folder.labelled);
    assert_eq!(folder.images.labels, [0, 0, 0, 1]);
    assert_eq!(folder.images.num_classes, 2);
    assert_eq!(folder.images.class_counts(), [3, 1]);
    assert_eq!(folder.captions, [None, None, None, None]);
    assert_eq!(folder.images.image(3)[0], 20.0 / 255.0);
}

#[test]
fn flat_folder_is_unlabelled_and_options_convert() {
    let dir = Scratch::new("flat");
    dir.rgb_png("0.png", 4, 4, [255, 0, 0]);
    dir.gray_png("1.png", 2, 6, |_, _| 51);
    let folder = load(dir.path(), &KEEP);
    assert!(one_line(folder.unwrap_err()).contains("1.png"));

    let options = ImageFolderOptions {
        channels: Some(1),
        resize: Some((3, 3)),
    };
    let folder = load(dir.path(), &options).unwrap();
    assert!(!folder.labelled && folder.class_names.is_empty());
    let set = &folder.images;
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (2, 1, 3, 3)
    );
    // BT.601 luma of pure red, and a constant grey stays constant through resizing.
    for v in set.image(0) {
        assert!((v - 0.299).abs() < 1e-6, "{v}");
    }
    for v in set.image(1) {
        assert!((v - 0.2).abs() < 1e-6, "{v}");
    }

    let rgb = ImageFolderOptions {
        channels: Some(3),
        resize: Some((4, 4)),
    };
    let set = load(dir.path(), &rgb).unwrap().images;
    assert_eq!(set.channels, 3);
    assert_eq!(&set.image(0)[..16], [1.0; 16]);
    assert_eq!(&set.image(0)[16..], [0.0; 32]);
    assert!(set.image(1).iter().all(|v| (v - 0.2).abs() < 1e-6));
}

#[test]
fn mixed_sizes_and_channels_are_one_line_errors_naming_the_file() {
    let dir = Scratch::new("mixed");
    dir.gray_png("a.png", 4, 4, |_, _| 0);
    dir.gray_png("b.png", 4, 5, |_, _| 0);
    let e = one_line(load(dir.path(), &KEEP).unwrap_err());
    assert!(
        e.contains("b.png") && e.contains("5×4") && e.contains("resize"),
        "{e}"
    );

    let dir = Scratch::new("mixed-channels");
    dir.gray_png("a.png", 4, 4, |_, _| 0);
    dir.rgb_png("b.png", 4, 4, [1, 2, 3]);
    let e = one_line(load(dir.path(), &KEEP).unwrap_err());
    assert!(e.contains("b.png") && e.contains("channels"), "{e}");
}

#[test]
fn corrupt_and_missing_images_are_one_line_errors() {
    let dir = Scratch::new("corrupt");
    dir.gray_png("a.png", 2, 2, |_, _| 0);
    dir.write("b.png", b"\x89PNG\r\n\x1a\nthis is not really a PNG");
    let e = one_line(load(dir.path(), &KEEP).unwrap_err());
    assert!(e.contains("b.png") && e.contains("PNG"), "{e}");

    let empty = Scratch::new("empty");
    empty.write("readme.txt", b"no images");
    let e = one_line(load(empty.path(), &KEEP).unwrap_err());
    assert!(e.contains("no .png"), "{e}");

    let missing = empty.path().join("nowhere");
    let e = one_line(load(&missing, &KEEP).unwrap_err());
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn class_folder_layout_errors() {
    let dir = Scratch::new("class-errors");
    dir.gray_png("cat/0.png", 2, 2, |_, _| 0);
    dir.gray_png("loose.png", 2, 2, |_, _| 0);
    let e = one_line(load(dir.path(), &KEEP).unwrap_err());
    assert!(
        e.contains("loose.png") && e.contains("class folders"),
        "{e}"
    );

    let dir = Scratch::new("class-empty");
    dir.gray_png("cat/0.png", 2, 2, |_, _| 0);
    dir.write("dog/readme.txt", b"");
    let e = one_line(load(dir.path(), &KEEP).unwrap_err());
    assert!(e.contains("dog") && e.contains("without .png"), "{e}");
}

#[test]
fn bad_metadata_is_a_one_line_error_naming_the_line() {
    let dir = Scratch::new("bad-meta");
    dir.gray_png("a.png", 2, 2, |_, _| 0);
    dir.gray_png("b.png", 2, 2, |_, _| 0);
    dir.write("c.jpg", b"");
    let check = |metadata: &str, wanted: &[&str]| {
        dir.write("metadata.jsonl", metadata.as_bytes());
        let e = one_line(load(dir.path(), &KEEP).unwrap_err());
        assert!(e.contains("metadata.jsonl"), "{e}");
        for w in wanted {
            assert!(e.contains(w), "`{w}` not in: {e}");
        }
    };
    let a = r#"{"file_name": "a.png", "label": 0}"#;
    check(
        &format!("{a}\n{{\"file_name\": \"b.png\", \"label\": 1"),
        &["line 2", "JSON"],
    );
    check(&format!("{a}\n[1, 2]"), &["line 2", "object"]);
    check(r#"{"label": 1}"#, &["line 1", "file_name"]);
    check(r#"{"file_name": 7}"#, &["line 1", "not a string"]);
    check(
        &format!("{a}\n{{\"file_name\": \"zz.png\"}}"),
        &["line 2", "zz.png", "does not exist"],
    );
    check(r#"{"file_name": "c.jpg"}"#, &["c.jpg", "not a .png"]);
    check(&format!("{a}\n{a}"), &["line 2", "twice"]);
    check(r#"{"file_name": "a.png", "label": -1}"#, &["label -1"]);
    check(r#"{"file_name": "a.png", "label": 1.5}"#, &["label 1.5"]);
    check(
        r#"{"file_name": "a.png", "label": "cat"}"#,
        &["label \"cat\""],
    );
    check(r#"{"file_name": "a.png", "label": 256}"#, &["label 256"]);
    check(r#"{"file_name": "a.png", "text": 3}"#, &["text 3"]);
    check(a, &["b.png", "label all or none"]);
}

#[test]
fn invalid_options_are_rejected() {
    let dir = Scratch::new("options");
    dir.gray_png("a.png", 2, 2, |_, _| 0);
    let bad_channels = ImageFolderOptions {
        channels: Some(2),
        resize: None,
    };
    assert!(one_line(load(dir.path(), &bad_channels).unwrap_err()).contains("channels"));
    let bad_size = ImageFolderOptions {
        channels: None,
        resize: Some((0, 4)),
    };
    assert!(one_line(load(dir.path(), &bad_size).unwrap_err()).contains("resize"));
}

/// Pillow 13's `Image.resize(..., BILINEAR)` of the mode-`F` image whose pixel `(x, y)` is
/// `((7x + 3y) mod 11) / 10`.
fn pillow_input(h: usize, w: usize) -> Vec<f32> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| ((7 * x + 3 * y) % 11) as f32 / 10.0))
        .collect()
}

/// `(h, w, new_h, new_w)`.
type Sizes = (usize, usize, usize, usize);

#[test]
fn resize_matches_pillow_bilinear() {
    let cases: [(Sizes, &[f32]); 4] = [
        (
            (5, 6, 3, 2),
            &[0.5321429, 0.5732143, 0.5430555, 0.475, 0.4732143, 0.3767857],
        ),
        ((1, 8, 1, 3), &[0.4263158, 0.6166667, 0.5947368]),
        ((2, 2, 1, 1), &[0.5]),
        (
            (3, 4, 7, 5),
            &[
                0.0, 0.49, 0.5, 0.51, 1.0, 0.0428571, 0.5328571, 0.5428572, 0.5057143, 0.8857143,
                0.1714286, 0.6614286, 0.6714286, 0.4928572, 0.5428572, 0.3, 0.79, 0.8, 0.48, 0.2,
                0.4285714, 0.5885714, 0.6928571, 0.6085714, 0.3285714, 0.5571429, 0.3871429,
                0.5857143, 0.7371429, 0.4571429, 0.6, 0.32, 0.55, 0.78, 0.5,
            ],
        ),
    ];
    for ((h, w, nh, nw), want) in cases {
        let got = resize(&pillow_input(h, w), 1, h, w, nh, nw).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{h}×{w} → {nh}×{nw}: {got:?}");
        }
    }
}

#[test]
fn resize_known_values() {
    // Same size: an exact copy.
    let image: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.37).collect();
    assert_eq!(resize(&image, 2, 3, 4, 3, 4).unwrap(), image);

    // A constant image stays constant, up or down, per channel.
    let constant: Vec<f32> = [0.25f32, 0.75]
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, 5 * 7))
        .collect();
    for (nh, nw) in [(3, 4), (11, 13), (1, 1), (5, 2)] {
        let out = resize(&constant, 2, 5, 7, nh, nw).unwrap();
        assert_eq!(out.len(), 2 * nh * nw);
        let (first, second) = out.split_at(nh * nw);
        assert!(first.iter().all(|v| (v - 0.25).abs() < 1e-6), "{out:?}");
        assert!(second.iter().all(|v| (v - 0.75).abs() < 1e-6), "{out:?}");
    }

    // 2× downscale of a 2×2 checker: the average.
    assert_eq!(resize(&[0.0, 1.0, 1.0, 0.0], 1, 2, 2, 1, 1).unwrap(), [0.5]);
    // A fine checker shrunk 2×: the interior is its mean (weights ⅛ ⅜ ⅜ ⅛ per axis).
    let checker: Vec<f32> = (0..8 * 8).map(|i| ((i / 8 + i % 8) % 2) as f32).collect();
    let out = resize(&checker, 1, 8, 8, 4, 4).unwrap();
    for y in 1..3 {
        for x in 1..3 {
            assert!((out[y * 4 + x] - 0.5).abs() < 1e-6, "{out:?}");
        }
    }

    // Upscaling a linear ramp 2× is linear in the interior (half-pixel centres: output x
    // samples input x/2 − 1/4) and clamps at the edges.
    let ramp = [0.0, 1.0, 2.0, 3.0];
    let out = resize(&ramp, 1, 1, 4, 1, 8).unwrap();
    assert_eq!(out[0], 0.0);
    assert_eq!(out[7], 3.0);
    for (x, v) in out.iter().enumerate().take(7).skip(1) {
        assert!((v - (x as f32 / 2.0 - 0.25)).abs() < 1e-6, "{out:?}");
    }
    // And along the height too.
    let out = resize(&ramp, 1, 4, 1, 8, 1).unwrap();
    assert!((out[3] - 1.25).abs() < 1e-6, "{out:?}");
}

#[test]
fn resize_errors_are_one_line() {
    let e = one_line(resize(&[0.0; 5], 1, 2, 3, 4, 4).unwrap_err());
    assert!(e.contains("1×2×3") && e.contains('5'), "{e}");
    for (c, h, w, nh, nw) in [
        (0, 1, 1, 1, 1),
        (1, 0, 0, 2, 2),
        (1, 1, 1, 0, 3),
        (1, 1, 1, 3, 0),
    ] {
        let e = one_line(resize(&vec![0.0; c * h * w], c, h, w, nh, nw).unwrap_err());
        assert!(e.contains("non-zero"), "{e}");
    }
}

#[test]
fn shapes_are_deterministic_and_labelled_by_shape() {
    let gen = ColouredShapes::new(16).unwrap();
    let a = gen.generate(60, 3);
    assert_eq!(a, gen.generate(60, 3));
    assert_ne!(a.pixels, gen.generate(60, 4).pixels);
    assert_eq!((a.len(), a.channels, a.height, a.width), (60, 3, 16, 16));
    assert_eq!(a.num_classes, 3);
    assert!(a.labels.iter().all(|&l| l < 3));
    // Every class turns up in 60 draws.
    assert!(
        a.class_counts().iter().all(|&c| c > 0),
        "{:?}",
        a.class_counts()
    );
    assert!(a.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(Shape::from_label(2), Some(Shape::Triangle));
    assert_eq!(Shape::ALL.map(Shape::label), [0, 1, 2]);
    assert_eq!(Shape::Circle.name(), "circle");
    assert!(gen.generate(0, 0).is_empty());
}

#[test]
fn every_shape_image_has_shape_and_background_pixels() {
    for size in [8, 32] {
        let set = ColouredShapes::new(size).unwrap().generate(90, 11);
        let plane = size * size;
        for i in 0..set.len() {
            let image = set.image(i);
            let is_background = |p: usize| (0..3).all(|c| image[c * plane + p] == BACKGROUND[c]);
            let lit = (0..plane).filter(|&p| !is_background(p)).count();
            // The smallest bounding box is 30 % of the side; the shape fills over a third of it.
            let min_lit = (0.3 * size as f32).powi(2) / 3.0;
            assert!(
                lit as f32 >= min_lit,
                "size {size} image {i}: {lit} shape pixels"
            );
            // Every shape stays one pixel clear of the border.
            assert!(is_background(0), "size {size} image {i} touches the corner");
            assert!(lit < plane, "size {size} image {i} has no background");
        }
    }
}

#[test]
fn shapes_options_are_validated() {
    assert!(one_line(ColouredShapes::new(4).unwrap_err()).contains("size"));
    let gen = ColouredShapes::new(16).unwrap();
    assert!(gen.clone().with_colours(vec![]).is_err());
    assert!(gen.clone().with_colours(vec![[1.5, 0.0, 0.0]]).is_err());
    assert!(gen.clone().with_colours(vec![BACKGROUND]).is_err());
    let red = gen.with_colours(vec![[1.0, 0.0, 0.0]]).unwrap();
    assert_eq!(red.colours(), [[1.0, 0.0, 0.0]]);
    let set = red.generate(5, 0);
    // At 16 pixels every shape fully covers some pixel: pure red there.
    for i in 0..5 {
        let red = &set.image(i)[..256];
        assert!(red.iter().any(|&v| v > 0.999), "image {i}");
    }
}
