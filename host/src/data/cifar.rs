//! CIFAR-10 and CIFAR-100 in their binary versions: records of label byte(s) followed
//! by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32×32 row-major).

use std::path::{Path, PathBuf};

use super::dataset::{numbered_names, Dataset};
use super::error::{read_file, DataError};
use super::Split;

const PIXELS: usize = 3 * 32 * 32;

const CIFAR10_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const CIFAR10_FILES_TRAIN: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

/// `dir` itself if it holds `probe`, else `dir/sub` if that does, else `dir`.
pub(crate) fn resolve_dir(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    if !dir.join(probe).exists() && dir.join(sub).join(probe).exists() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

/// Parses records of `label_bytes` label bytes + 3072 pixels; the label used is the
/// last label byte (CIFAR-100's fine label), which must be `< classes`.
fn parse_records(
    path: &Path,
    bytes: &[u8],
    label_bytes: usize,
    classes: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<(), DataError> {
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::wrong_size(path, "empty file, no records"));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(DataError::wrong_size(
            path,
            format!(
                "{} bytes is not a whole number of {rec}-byte records ({} records and {} bytes over)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
        ));
    }
    images.reserve(bytes.len() / rec * PIXELS);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        if label_bytes == 2 && r[0] >= 20 {
            return Err(DataError::label(path, i, r[0] as i64, "coarse label 0..=19"));
        }
        let l = r[label_bytes - 1];
        if l as usize >= classes {
            return Err(DataError::label(path, i, l as i64, format!("0..={}", classes - 1)));
        }
        labels.push(l as u16);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

fn load_files(
    dir: &Path,
    files: &[&str],
    label_bytes: usize,
    classes: usize,
    class_names: Vec<String>,
    hint: &str,
) -> Result<Dataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let p = dir.join(f);
        let bytes = read_file(&p, hint)?;
        parse_records(&p, &bytes, label_bytes, classes, &mut images, &mut labels)?;
    }
    Ok(Dataset { n: labels.len(), images, labels, c: 3, h: 32, w: 32, classes, class_names })
}

/// CIFAR-10 binary: `data_batch_1..5.bin` (train) or `test_batch.bin` (test) in `dir`
/// or in `dir/cifar-10-batches-bin`.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let files: &[&str] = match split {
        Split::Train => &CIFAR10_FILES_TRAIN,
        Split::Test => &["test_batch.bin"],
    };
    let dir = resolve_dir(dir, "cifar-10-batches-bin", files[0]);
    let hint = format!(
        "searched {} (and its cifar-10-batches-bin subfolder); get the binary version from \
         https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extract it there",
        dir.display()
    );
    let names = CIFAR10_NAMES.iter().map(|s| s.to_string()).collect();
    load_files(&dir, files, 1, 10, names, &hint)
}

/// CIFAR-100 binary: `train.bin` or `test.bin` in `dir` or `dir/cifar-100-binary`,
/// with the fine (100-class) labels. Class names come from `fine_label_names.txt` when
/// it is there.
pub fn load_cifar100(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let file = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    };
    let dir = resolve_dir(dir, "cifar-100-binary", file);
    let hint = format!(
        "searched {} (and its cifar-100-binary subfolder); get the binary version from \
         https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz and extract it there",
        dir.display()
    );
    let names = std::fs::read_to_string(dir.join("fine_label_names.txt"))
        .ok()
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>())
        .filter(|v| v.len() == 100)
        .unwrap_or_else(|| numbered_names(100));
    load_files(&dir, &[file], 2, 100, names, &hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        r.extend((0..PIXELS).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_good_and_subfolder() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        for (k, f) in CIFAR10_FILES_TRAIN.iter().enumerate() {
            let mut b = record(&[k as u8], k as u8);
            b.extend(record(&[9], 50));
            std::fs::write(sub.join(f), b).unwrap();
        }
        std::fs::write(sub.join("test_batch.bin"), record(&[3], 1)).unwrap();
        for dir in [d.path(), sub.as_path()] {
            let t = load_cifar10(dir, Split::Train).unwrap();
            assert_eq!((t.n, t.c, t.h, t.w, t.classes), (10, 3, 32, 32, 10));
            assert_eq!(t.labels, vec![0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
            // image 2 = first record of batch 2: pixel i = i*7 + 1; green plane starts at 1024
            assert_eq!(t.image(2)[0], 1);
            assert_eq!(t.image(2)[1024 + 5], ((1029u32 * 7 + 1) % 256) as u8);
            assert_eq!(t.class_names[9], "truck");
            let e = load_cifar10(dir, Split::Test).unwrap();
            assert_eq!((e.n, e.labels[0]), (1, 3));
        }
    }

    #[test]
    fn cifar10_bad() {
        let d = tempfile::tempdir().unwrap();
        let e = load_cifar10(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin: not found; searched") && e.contains("cifar-10-binary.tar.gz"), "{e}");
        let p = d.path().join("test_batch.bin");
        let mut b = record(&[3], 0);
        b.extend(record(&[10], 0));
        std::fs::write(&p, &b).unwrap();
        let e = load_cifar10(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.ends_with("test_batch.bin: label 10 of item 1 is out of range (expected 0..=9)"), "{e}");
        std::fs::write(&p, &b[..3073 + 100]).unwrap();
        let e = load_cifar10(d.path(), Split::Test).unwrap_err().to_string();
        assert!(
            e.ends_with("test_batch.bin: wrong size: 3173 bytes is not a whole number of 3073-byte records (1 records and 100 bytes over)"),
            "{e}"
        );
        std::fs::write(&p, b"").unwrap();
        let e = load_cifar10(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.ends_with("test_batch.bin: wrong size: empty file, no records"), "{e}");
    }

    #[test]
    fn cifar100_good_and_bad() {
        let d = tempfile::tempdir().unwrap();
        let mut b = record(&[4, 99], 0);
        b.extend(record(&[19, 0], 1));
        std::fs::write(d.path().join("train.bin"), &b).unwrap();
        let t = load_cifar100(d.path(), Split::Train).unwrap();
        assert_eq!((t.n, t.classes, t.labels.clone()), (2, 100, vec![99, 0]));
        assert_eq!(t.image(1)[1], 8);
        assert_eq!(t.class_names[42], "42");
        let mut bad = record(&[4, 100], 0);
        std::fs::write(d.path().join("test.bin"), &bad).unwrap();
        let e = load_cifar100(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.ends_with("test.bin: label 100 of item 0 is out of range (expected 0..=99)"), "{e}");
        bad[0] = 20;
        bad[1] = 0;
        std::fs::write(d.path().join("test.bin"), &bad).unwrap();
        let e = load_cifar100(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.ends_with("label 20 of item 0 is out of range (expected coarse label 0..=19)"), "{e}");
    }
}
