//! IDX files (MNIST, Fashion-MNIST), plain or gzip-compressed: an image file with magic
//! `0x00000803` (u8, 3 dimensions `n × h × w`) and a label file with magic `0x00000801`
//! (u8, 1 dimension `n`), all sizes big-endian.

use std::path::Path;

use super::dataset::{numbered_names, Dataset};
use super::error::{read_maybe_gz, DataError};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_magic(path: &Path, bytes: &[u8], expected: u32, what: &str) -> Result<(), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::truncated(path, format!("{} bytes, shorter than the 4-byte IDX magic", bytes.len())));
    }
    let found = be32(bytes, 0);
    if found != expected {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: format!("0x{found:08x}"),
            expected: format!("0x{expected:08x}, an IDX {what} file"),
        });
    }
    Ok(())
}

fn check_len(path: &Path, len: usize, want: usize, what: &str) -> Result<(), DataError> {
    if len < want {
        Err(DataError::truncated(path, format!("{len} bytes, but the header promises {what} in {want} bytes")))
    } else if len > want {
        Err(DataError::wrong_size(
            path,
            format!("{len} bytes, {} more than the header's {what} ({want} bytes)", len - want),
        ))
    } else {
        Ok(())
    }
}

/// Loads an IDX image/label pair with labels in `0..10` (MNIST, Fashion-MNIST).
pub fn load_idx_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
    load_idx_pair_classes(images_path, labels_path, 10)
}

/// Loads an IDX image/label pair whose labels must lie in `0..classes`.
pub fn load_idx_pair_classes(images_path: &Path, labels_path: &Path, classes: usize) -> Result<Dataset, DataError> {
    let hint = "IDX files (e.g. train-images-idx3-ubyte.gz) are expected here";
    let img = read_maybe_gz(images_path, hint)?;
    check_magic(images_path, &img, IMAGES_MAGIC, "image (u8, 3-D)")?;
    if img.len() < 16 {
        return Err(DataError::truncated(images_path, format!("{} bytes, shorter than the 16-byte header", img.len())));
    }
    let (n, h, w) = (be32(&img, 4) as usize, be32(&img, 8) as usize, be32(&img, 12) as usize);
    if h == 0 || w == 0 {
        return Err(DataError::format(images_path, format!("image size {h}×{w} is empty")));
    }
    let body = n
        .checked_mul(h)
        .and_then(|x| x.checked_mul(w))
        .and_then(|x| x.checked_add(16))
        .ok_or_else(|| DataError::format(images_path, format!("dimensions {n}×{h}×{w} overflow")))?;
    check_len(images_path, img.len(), body, &format!("{n} images of {h}×{w}"))?;

    let lab = read_maybe_gz(labels_path, hint)?;
    check_magic(labels_path, &lab, LABELS_MAGIC, "label (u8, 1-D)")?;
    if lab.len() < 8 {
        return Err(DataError::truncated(labels_path, format!("{} bytes, shorter than the 8-byte header", lab.len())));
    }
    let nl = be32(&lab, 4) as usize;
    check_len(labels_path, lab.len(), nl + 8, &format!("{nl} labels"))?;
    if nl != n {
        return Err(DataError::wrong_size(
            labels_path,
            format!("{nl} labels but {} holds {n} images", images_path.display()),
        ));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &l) in lab[8..].iter().enumerate() {
        if l as usize >= classes {
            return Err(DataError::label(labels_path, i, l as i64, format!("0..={}", classes - 1)));
        }
        labels.push(l as u16);
    }
    let mut images = img;
    images.drain(..16);
    Ok(Dataset { images, labels, n, c: 1, h, w, classes, class_names: numbered_names(classes) })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn idx_images(n: u32, h: u32, w: u32, px: &[u8]) -> Vec<u8> {
        let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, h, w] {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(px);
        v
    }
    pub(crate) fn idx_labels(l: &[u8]) -> Vec<u8> {
        let mut v = LABELS_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&(l.len() as u32).to_be_bytes());
        v.extend_from_slice(l);
        v
    }
    pub(crate) fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn load(img: &[u8], lab: &[u8]) -> Result<Dataset, DataError> {
        let d = tempfile::tempdir().unwrap();
        let (pi, pl) = (d.path().join("img"), d.path().join("lab"));
        std::fs::write(&pi, img).unwrap();
        std::fs::write(&pl, lab).unwrap();
        load_idx_pair(&pi, &pl)
    }

    #[test]
    fn good_plain_and_gz() {
        let px: Vec<u8> = (0..12).collect();
        let (img, lab) = (idx_images(2, 2, 3, &px), idx_labels(&[7, 9]));
        for (i, l) in [(img.clone(), lab.clone()), (gz(&img), gz(&lab)), (gz(&img), lab.clone())] {
            let d = load(&i, &l).unwrap();
            assert_eq!((d.n, d.c, d.h, d.w, d.classes), (2, 1, 2, 3, 10));
            assert_eq!(d.image(1), &[6, 7, 8, 9, 10, 11]);
            assert_eq!(d.labels, vec![7, 9]);
        }
    }

    #[test]
    fn bad_files() {
        let px: Vec<u8> = (0..12).collect();
        let img = idx_images(2, 2, 3, &px);
        let lab = idx_labels(&[7, 9]);
        let err = |i: &[u8], l: &[u8]| load(i, l).unwrap_err().to_string();

        let e = err(&lab, &lab);
        assert!(
            e.ends_with("img: bad magic number 0x00000801 (expected 0x00000803, an IDX image (u8, 3-D) file)"),
            "{e}"
        );
        let e = err(&img, &img);
        assert!(e.contains("lab: bad magic number 0x00000803"), "{e}");
        let e = err(&img[..20], &lab);
        assert!(e.ends_with("img: truncated: 20 bytes, but the header promises 2 images of 2×3 in 28 bytes"), "{e}");
        let e = err(&img[..10], &lab);
        assert!(e.contains("img: truncated: 10 bytes, shorter than the 16-byte header"), "{e}");
        let e = err(&img[..2], &lab);
        assert!(e.contains("img: truncated"), "{e}");
        let mut long = img.clone();
        long.push(0);
        let e = err(&long, &lab);
        assert!(e.ends_with("img: wrong size: 29 bytes, 1 more than the header's 2 images of 2×3 (28 bytes)"), "{e}");
        let e = err(&img, &idx_labels(&[1, 2, 3]));
        assert!(e.contains("lab: wrong size: 3 labels but ") && e.ends_with("img holds 2 images"), "{e}");
        let e = err(&img, &idx_labels(&[1, 10]));
        assert!(e.ends_with("lab: label 10 of item 1 is out of range (expected 0..=9)"), "{e}");
        let e = err(&img, &lab[..9]);
        assert!(e.contains("lab: truncated"), "{e}");
        let e = err(&idx_images(u32::MAX, u32::MAX, u32::MAX, &[]), &lab);
        assert!(e.contains("img: "), "{e}");
        let e = load_idx_pair(Path::new("/nonexistent/i"), Path::new("/nonexistent/l")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/i: not found"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::tests::{idx_images, idx_labels};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Corrupted IDX headers and bodies give errors, never panics.
        #[test]
        fn corrupt_idx_never_panics(cut in 0usize..40, at in 0usize..40, v in any::<u8>(), which in any::<bool>()) {
            let mut img = idx_images(2, 2, 3, &[1; 12]);
            let mut lab = idx_labels(&[1, 2]);
            let f = if which { &mut img } else { &mut lab };
            if at < f.len() {
                f[at] = v;
            }
            f.truncate(cut);
            let d = tempfile::tempdir().unwrap();
            let (pi, pl) = (d.path().join("i"), d.path().join("l"));
            std::fs::write(&pi, &img).unwrap();
            std::fs::write(&pl, &lab).unwrap();
            let _ = load_idx_pair(&pi, &pl);
        }
    }
}
