//! STL-10 binary: `{train,test}_X.bin` holds 96×96×3 images, each channel stored
//! column-major, one image after another; `{train,test}_y.bin` holds one label byte per
//! image, 1..=10.

use std::path::Path;

use rayon::prelude::*;

use super::cifar::resolve_dir;
use super::dataset::Dataset;
use super::error::{read_file, DataError};
use super::Split;

const SIDE: usize = 96;
const IMAGE: usize = 3 * SIDE * SIDE;
const NAMES: [&str; 10] = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"];

/// STL-10 labelled split from `dir` or `dir/stl10_binary`.
pub fn load_stl10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let s = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    let (xf, yf) = (format!("{s}_X.bin"), format!("{s}_y.bin"));
    let dir = resolve_dir(dir, "stl10_binary", &xf);
    let hint = format!(
        "searched {} (and its stl10_binary subfolder); get \
         http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and extract it there",
        dir.display()
    );
    let (xp, yp) = (dir.join(xf), dir.join(yf));
    let x = read_file(&xp, &hint)?;
    let y = read_file(&yp, &hint)?;
    if x.is_empty() || x.len() % IMAGE != 0 {
        return Err(DataError::wrong_size(
            &xp,
            format!("{} bytes is not a positive whole number of {IMAGE}-byte 96×96×3 images", x.len()),
        ));
    }
    let n = x.len() / IMAGE;
    if y.len() != n {
        return Err(DataError::wrong_size(&yp, format!("{} labels but {} holds {n} images", y.len(), xp.display())));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &l) in y.iter().enumerate() {
        if !(1..=10).contains(&l) {
            return Err(DataError::label(&yp, i, l as i64, "1..=10"));
        }
        labels.push(l as u16 - 1);
    }
    let plane = SIDE * SIDE;
    let mut images = vec![0u8; x.len()];
    images.par_chunks_mut(IMAGE).zip(x.par_chunks(IMAGE)).for_each(|(dst, src)| {
        for ch in 0..3 {
            let (d, s) = (&mut dst[ch * plane..(ch + 1) * plane], &src[ch * plane..(ch + 1) * plane]);
            for row in 0..SIDE {
                for col in 0..SIDE {
                    d[row * SIDE + col] = s[col * SIDE + row];
                }
            }
        }
    });
    Ok(Dataset {
        images,
        labels,
        n,
        c: 3,
        h: SIDE,
        w: SIDE,
        classes: 10,
        class_names: NAMES.iter().map(|s| s.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pixel stored at column-major position (row r, col c, channel ch) of image k.
    fn px(k: usize, ch: usize, r: usize, c: usize) -> u8 {
        (k * 31 + ch * 7 + r * 3 + c * 5) as u8
    }

    fn x_bytes(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n {
            for ch in 0..3 {
                for c in 0..SIDE {
                    for r in 0..SIDE {
                        v.push(px(k, ch, r, c));
                    }
                }
            }
        }
        v
    }

    #[test]
    fn good_in_subfolder() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("stl10_binary");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("test_X.bin"), x_bytes(2)).unwrap();
        std::fs::write(sub.join("test_y.bin"), [10, 1]).unwrap();
        let t = load_stl10(d.path(), Split::Test).unwrap();
        assert_eq!((t.n, t.c, t.h, t.w), (2, 3, 96, 96));
        assert_eq!(t.labels, vec![9, 0]);
        assert_eq!(t.class_names[9], "truck");
        for (k, ch, r, c) in [(0, 0, 0, 1), (1, 2, 5, 90), (1, 1, 95, 0)] {
            assert_eq!(t.image(k)[ch * 9216 + r * 96 + c], px(k, ch, r, c));
        }
    }

    #[test]
    fn bad() {
        let d = tempfile::tempdir().unwrap();
        let e = load_stl10(d.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("train_X.bin: not found; searched") && e.contains("stl10_binary.tar.gz"), "{e}");
        let p = d.path();
        std::fs::write(p.join("train_X.bin"), &x_bytes(2)[..IMAGE + 1]).unwrap();
        std::fs::write(p.join("train_y.bin"), [1, 2]).unwrap();
        let e = load_stl10(p, Split::Train).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "train_X.bin: wrong size: 27649 bytes is not a positive whole number of 27648-byte 96×96×3 images"
            ),
            "{e}"
        );
        std::fs::write(p.join("train_X.bin"), x_bytes(2)).unwrap();
        std::fs::write(p.join("train_y.bin"), [1]).unwrap();
        let e = load_stl10(p, Split::Train).unwrap_err().to_string();
        assert!(e.contains("train_y.bin: wrong size: 1 labels but"), "{e}");
        std::fs::write(p.join("train_y.bin"), [1, 0]).unwrap();
        let e = load_stl10(p, Split::Train).unwrap_err().to_string();
        assert!(e.ends_with("train_y.bin: label 0 of item 1 is out of range (expected 1..=10)"), "{e}");
    }
}
