//! IDX and CIFAR-10 readers on small files written here, and their one-line errors.

use ember_data::cifar10::{load_batches, load_dir, Split};
use ember_data::idx::load_idx;
use std::path::{Path, PathBuf};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

#[test]
fn idx_images_and_labels_load() {
    let dir = scratch_dir("idx");
    let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 10) as u8).collect();
    let images = write(&dir.join("img"), &idx_bytes(&[3, 2, 4], &pixels));
    let labels = write(&dir.join("lbl"), &idx_bytes(&[3], &[7, 0, 9]));
    let set = load_idx(&images, &labels, 10).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (3, 1, 2, 4)
    );
    assert_eq!(set.labels, vec![7, 0, 9]);
    assert_eq!(set.image(1)[0], 80.0 / 255.0);

    let err = |img: &[u8], lbl: &[u8], classes: usize| {
        let i = write(&dir.join("i2"), img);
        let l = write(&dir.join("l2"), lbl);
        let e = load_idx(&i, &l, classes).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let good_lbl = idx_bytes(&[3], &[1, 2, 3]);
    assert!(err(&[0x1f, 0x8b, 8, 0], &good_lbl, 10).contains("gunzip"));
    assert!(err(&[1, 2, 3, 4], &good_lbl, 10).contains("magic"));
    assert!(err(&idx_bytes(&[3, 2, 4], &pixels[1..]), &good_lbl, 10).contains("header says"));
    assert!(err(&idx_bytes(&[3, 8], &pixels), &good_lbl, 10).contains("dimensions"));
    assert!(err(
        &idx_bytes(&[3, 2, 4], &pixels),
        &idx_bytes(&[2], &[1, 2]),
        10
    )
    .contains("2 labels for 3 images"));
    assert!(err(&idx_bytes(&[3, 2, 4], &pixels), &good_lbl, 3).contains("label 3 at index 2"));
    let missing = load_idx(&dir.join("nope"), &labels, 10)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    // Red plane = fill, green = fill + 1, blue = fill + 2.
    for c in 0..3u8 {
        r.extend(std::iter::repeat_n(fill + c, 32 * 32));
    }
    r
}

#[test]
fn cifar_batches_load_channel_major() {
    let dir = scratch_dir("cifar");
    for i in 1..=5u8 {
        write(
            &dir.join(format!("data_batch_{i}.bin")),
            &[record(i, 10 * i), record(0, 0)].concat(),
        );
    }
    write(&dir.join("test_batch.bin"), &record(9, 200));
    let train = load_dir(&dir, Split::Train).unwrap();
    assert_eq!(
        (train.len(), train.channels, train.height, train.width),
        (10, 3, 32, 32)
    );
    assert_eq!(train.labels, vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
    let img = train.image(2); // data_batch_2, first record: fill 20
    assert_eq!(
        (img[0], img[1024], img[2048]),
        (20.0 / 255.0, 21.0 / 255.0, 22.0 / 255.0)
    );
    let test = load_dir(&dir, Split::Test).unwrap();
    assert_eq!((test.len(), test.label(0)), (1, 9));

    let bad = write(&dir.join("bad.bin"), &record(1, 0)[..100]);
    let e = load_batches(&[bad]).unwrap_err().to_string();
    assert!(e.contains("bad.bin") && e.contains("whole number"), "{e}");
    let bad = write(&dir.join("label.bin"), &record(12, 0));
    let e = load_batches(&[bad]).unwrap_err().to_string();
    assert!(e.contains("label 12"), "{e}");
    std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
    let e = load_dir(&dir, Split::Train).unwrap_err().to_string();
    assert!(e.contains("data_batch_4.bin"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
