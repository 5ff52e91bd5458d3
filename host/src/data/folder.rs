//! Image folders in the ImageNet layout: `root/<class>/*.{png,jpg,jpeg}`. Classes are
//! the sorted subfolder names, images within a class are taken in sorted file-name
//! order, and all images are decoded in parallel (rayon). Every image must have the
//! same size; the dataset is grayscale (c = 1) only if every image is, else RGB.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dataset::{sample_indices, validation_indices, Dataset};
use super::error::{one_line, DataError};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| DataError::io(dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = ent.path();
        // follow symlinks
        let is_dir = path.is_dir();
        v.push((name, path, is_dir));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

struct Decoded {
    w: usize,
    h: usize,
    gray: bool,
    /// HWC pixels, 1 (gray) or 3 (RGB) channels.
    px: Vec<u8>,
}

/// Decodes an image file (PNG or JPEG, recognised by content) with the `image` crate and
/// its default limits (at most 512 MiB allocated per image); errors name the file.
pub(crate) fn open_image(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    image::load_from_memory(&bytes)
        .map_err(|e| DataError::Undecodable { path: path.to_path_buf(), detail: one_line(&e.to_string()) })
}

fn decode(path: &Path) -> Result<Decoded, DataError> {
    let img = open_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let gray = !img.color().has_color();
    let px = if gray { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    Ok(Decoded { w, h, gray, px })
}

/// The files of an image folder, without their pixels: classes are the sorted subfolder
/// names, files within a class in sorted name order (the order [`load_folder`] loads them
/// in). Compact for a million images: the file names share one string, so the index
/// takes about (file-name length + 10) bytes per image ([`FolderIndex::bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderIndex {
    pub root: PathBuf,
    pub class_names: Vec<String>,
    names: String,
    /// End of file `k`'s name in `names` (its start is the previous end).
    ends: Vec<usize>,
    labels: Vec<u16>,
}

impl FolderIndex {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The path of image `k`: `root/<class>/<file>`.
    pub fn path(&self, k: usize) -> PathBuf {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        self.root.join(&self.class_names[self.labels[k] as usize]).join(&self.names[start..self.ends[k]])
    }

    pub fn label(&self, k: usize) -> u16 {
        self.labels[k]
    }

    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// Heap bytes the index holds.
    pub fn bytes(&self) -> usize {
        self.names.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.labels.capacity() * 2
            + self.class_names.iter().map(|c| c.capacity() + std::mem::size_of::<String>()).sum::<usize>()
    }

    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> FolderIndex {
        let mut out = FolderIndex {
            root: self.root.clone(),
            class_names: self.class_names.clone(),
            names: String::new(),
            ends: Vec::with_capacity(idx.len()),
            labels: Vec::with_capacity(idx.len()),
        };
        for &k in idx {
            let start = if k == 0 { 0 } else { self.ends[k - 1] };
            out.names.push_str(&self.names[start..self.ends[k]]);
            out.ends.push(out.names.len());
            out.labels.push(self.labels[k]);
        }
        out.names.shrink_to_fit();
        out
    }

    /// The same split as [`Dataset::split_off_validation`] (same images for the same seed).
    pub fn split_off_validation(&self, n_val: usize, seed: u64) -> (FolderIndex, FolderIndex) {
        let (train, val) = validation_indices(self.len(), n_val, seed);
        (self.subset(&train), self.subset(&val))
    }

    /// The same subset as [`Dataset::sample`].
    pub fn sample(self, n: usize, rng: hpff_core::rng::Rng) -> FolderIndex {
        match sample_indices(self.len(), n, rng) {
            Some(idx) => self.subset(&idx),
            None => self,
        }
    }
}

/// Lists `root/<class>/*.{png,jpg,jpeg}` (extensions in any case; hidden entries and
/// other files are ignored) without opening the images.
pub fn index_folder(root: &Path) -> Result<FolderIndex, DataError> {
    if !root.is_dir() {
        return Err(DataError::missing(root, "expected a folder of class subfolders (root/<class>/*.png|jpg|jpeg)"));
    }
    let mut ix = FolderIndex {
        root: root.to_path_buf(),
        class_names: Vec::new(),
        names: String::new(),
        ends: Vec::new(),
        labels: Vec::new(),
    };
    for (name, path, is_dir) in sorted_entries(root)? {
        if !is_dir {
            continue;
        }
        let label = u16::try_from(ix.class_names.len())
            .map_err(|_| DataError::format(root, "more than 65536 class folders"))?;
        let before = ix.len();
        for (file, p, d) in sorted_entries(&path)? {
            if !d && is_image(&p) {
                ix.names.push_str(&file);
                ix.ends.push(ix.names.len());
                ix.labels.push(label);
            }
        }
        if ix.len() == before {
            return Err(DataError::EmptyClass { path });
        }
        ix.class_names.push(name);
    }
    if ix.class_names.is_empty() {
        return Err(DataError::format(root, "no class subfolders (expected root/<class>/*.png|jpg|jpeg)"));
    }
    ix.names.shrink_to_fit();
    ix.ends.shrink_to_fit();
    ix.labels.shrink_to_fit();
    Ok(ix)
}

/// Loads `root/<class>/*.{png,jpg,jpeg}` (extensions in any case; hidden entries and
/// other files are ignored).
pub fn load_folder(root: &Path) -> Result<Dataset, DataError> {
    let ix = index_folder(root)?;
    let files: Vec<(PathBuf, u16)> = (0..ix.len()).map(|k| (ix.path(k), ix.label(k))).collect();
    let class_names = ix.class_names;
    let decoded: Vec<Result<Decoded, DataError>> = files.par_iter().map(|(p, _)| decode(p)).collect();
    let mut imgs = Vec::with_capacity(decoded.len());
    for d in decoded {
        imgs.push(d?);
    }
    let (w, h) = (imgs[0].w, imgs[0].h);
    for (d, (p, _)) in imgs.iter().zip(&files) {
        if (d.w, d.h) != (w, h) {
            return Err(DataError::wrong_size(
                p,
                format!(
                    "image is {}×{} (w×h) but {} is {w}×{h}; all images must have one size",
                    d.w,
                    d.h,
                    files[0].0.display()
                ),
            ));
        }
    }
    let c = if imgs.iter().all(|d| d.gray) { 1 } else { 3 };
    let len = c * h * w;
    let mut images = vec![0u8; imgs.len() * len];
    images.par_chunks_mut(len).zip(imgs.par_iter()).for_each(|(dst, d)| {
        let plane = h * w;
        if d.gray {
            for ch in 0..c {
                dst[ch * plane..(ch + 1) * plane].copy_from_slice(&d.px);
            }
        } else {
            for (i, p) in d.px.chunks_exact(3).enumerate() {
                dst[i] = p[0];
                dst[plane + i] = p[1];
                dst[2 * plane + i] = p[2];
            }
        }
    });
    let labels: Vec<u16> = files.iter().map(|f| f.1).collect();
    Ok(Dataset { images, n: labels.len(), labels, c, h, w, classes: class_names.len(), class_names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbImage};

    fn rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)))
    }

    #[test]
    fn png_rgb_and_gray_mixed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for c in ["b_cat", "a_dog"] {
            std::fs::create_dir(r.join(c)).unwrap();
        }
        rgb(3, 2, |x, y| [(10 * y + x) as u8, 100, 200]).save(r.join("a_dog/2.png")).unwrap();
        GrayImage::from_fn(3, 2, |x, y| image::Luma([(50 + 10 * y + x) as u8])).save(r.join("a_dog/1.PNG")).unwrap();
        rgb(3, 2, |_, _| [1, 2, 3]).save(r.join("b_cat/x.png")).unwrap();
        std::fs::write(r.join("b_cat/notes.txt"), "ignored").unwrap();
        std::fs::write(r.join("README"), "ignored").unwrap();
        let ds = load_folder(r).unwrap();
        assert_eq!((ds.n, ds.c, ds.h, ds.w, ds.classes), (3, 3, 2, 3, 2));
        assert_eq!(ds.class_names, vec!["a_dog", "b_cat"]);
        assert_eq!(ds.labels, vec![0, 0, 1]);
        // 1.PNG (gray) comes first, replicated into three channels
        assert_eq!(&ds.image(0)[..6], &[50, 51, 52, 60, 61, 62]);
        assert_eq!(&ds.image(0)[12..], &[50, 51, 52, 60, 61, 62]);
        assert_eq!(ds.image(1), &[0, 1, 2, 10, 11, 12, 100, 100, 100, 100, 100, 100, 200, 200, 200, 200, 200, 200]);
        assert_eq!(ds.image(2), &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn all_gray_gives_one_channel_and_jpeg_decodes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("only")).unwrap();
        GrayImage::from_fn(8, 8, |_, _| image::Luma([77])).save(r.join("only/a.png")).unwrap();
        GrayImage::from_fn(8, 8, |_, _| image::Luma([128])).save(r.join("only/b.jpg")).unwrap();
        let ds = load_folder(r).unwrap();
        assert_eq!((ds.n, ds.c, ds.h, ds.w), (2, 1, 8, 8));
        assert!(ds.image(0).iter().all(|&p| p == 77));
        // a flat JPEG decodes to (nearly) the same flat value
        assert!(ds.image(1).iter().all(|&p| p.abs_diff(128) <= 1), "{:?}", ds.image(1));
        let rgbj = r.join("only/c.jpeg");
        rgb(8, 8, |_, _| [200, 30, 30]).save(&rgbj).unwrap();
        let ds = load_folder(r).unwrap();
        assert_eq!(ds.c, 3);
        assert!(ds.image(2)[..64].iter().all(|&p| p.abs_diff(200) <= 3));
    }

    #[test]
    fn bad_folders() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let e = load_folder(&r.join("nope")).unwrap_err().to_string();
        assert!(
            e.ends_with("nope: not found; expected a folder of class subfolders (root/<class>/*.png|jpg|jpeg)"),
            "{e}"
        );
        let e = load_folder(r).unwrap_err().to_string();
        assert!(e.ends_with(": no class subfolders (expected root/<class>/*.png|jpg|jpeg)"), "{e}");
        std::fs::create_dir(r.join("a")).unwrap();
        std::fs::create_dir(r.join("b")).unwrap();
        rgb(4, 4, |_, _| [0; 3]).save(r.join("a/0.png")).unwrap();
        std::fs::write(r.join("b/readme.txt"), "x").unwrap();
        let e = load_folder(r).unwrap_err().to_string();
        assert!(e.ends_with("/b: empty class folder (no .png, .jpg or .jpeg files)"), "{e}");
        rgb(4, 5, |_, _| [0; 3]).save(r.join("b/0.png")).unwrap();
        let e = load_folder(r).unwrap_err().to_string();
        assert!(
            e.contains("b/0.png: wrong size: image is 4×5 (w×h) but")
                && e.ends_with("a/0.png is 4×4; all images must have one size"),
            "{e}"
        );
        std::fs::write(r.join("b/0.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
        let e = load_folder(r).unwrap_err().to_string();
        assert!(e.contains("b/0.png: undecodable image: "), "{e}");
        std::fs::write(r.join("b/0.png"), b"not an image at all").unwrap();
        let e = load_folder(r).unwrap_err().to_string();
        assert!(e.contains("b/0.png: undecodable image: ") && !e.contains('\n'), "{e}");
    }
}

#[cfg(test)]
mod bench {
    /// The 50,000-image CIFAR-10 JPEG folder of the shared benchmark data, if present:
    /// `cargo test -p hpff --release --lib cifar10_jpeg_folder -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cifar10_jpeg_folder_load_time() {
        let root = std::path::Path::new("/work/shared/data/cifar10-jpg/train");
        if !root.is_dir() {
            eprintln!("note: {} absent; skipping", root.display());
            return;
        }
        let t0 = std::time::Instant::now();
        let ds = super::load_folder(root).unwrap();
        eprintln!(
            "loaded {} images {}×{}×{} in {} classes in {:.2?} ({} threads)",
            ds.n,
            ds.c,
            ds.h,
            ds.w,
            ds.classes,
            t0.elapsed(),
            rayon::current_num_threads()
        );
        assert_eq!((ds.n, ds.c, ds.h, ds.w, ds.classes), (50000, 3, 32, 32, 10));
        assert_eq!(ds.class_counts(), vec![5000; 10]);
        use crate::data::{BatchOptions, Batches, DatasetKind};
        let k = DatasetKind::Cifar10;
        let opts = BatchOptions::train(1024, k.default_augment(), k.default_normalize());
        let t0 = std::time::Instant::now();
        let rng = hpff_core::rng::Rng::new(0);
        let n: usize = Batches::synchronous(std::sync::Arc::new(ds), &opts, &rng, 0).map(|b| b.n).sum();
        eprintln!("one augmented epoch of batches (1024) on one thread in {:.2?}", t0.elapsed());
        assert_eq!(n, 50000);
    }
}
