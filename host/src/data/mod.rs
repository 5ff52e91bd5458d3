//! Datasets: loaders for the formats users bring (IDX, CIFAR-10/100 binary, SVHN
//! `.mat`, STL-10 binary, image folders), Fashion-MNIST discovery, seeded
//! augmentation and normalization, and background-prepared batches.
//!
//! Every loader returns [`DataError`], whose message is one line naming the file and
//! what is wrong with it; none panics on bad input.

mod augment;
mod batches;
mod cifar;
mod dataset;
mod error;
mod fashion_mnist;
mod folder;
mod idx;
mod splits;
mod stl10;
mod stream;
mod svhn_mat;
pub mod transform;

use std::path::{Path, PathBuf};

pub use augment::{batch_image_shape, fill_batch, Augment, Normalize};
pub use batches::{Batch, BatchOptions, Batches};
pub use cifar::{load_cifar10, load_cifar100};
pub use dataset::Dataset;
pub use error::DataError;
pub use fashion_mnist::{default_cache_dir, fashion_mnist_dir, fashion_mnist_dir_from, load_fashion_mnist};
pub use folder::{index_folder, load_folder, FolderIndex};
pub use idx::{load_idx_pair, load_idx_pair_classes};
pub use splits::{cut_splits, limit_subset, Cut, Data, SplitRules, LIMIT_STREAM};
pub use stl10::load_stl10;
pub use stream::{Bound, Epoch, Source, StreamBatches, StreamOptions, StreamSet};
pub use svhn_mat::{load_svhn, load_svhn_mat};

/// Training or test part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Split {
    Train,
    Test,
}

/// The datasets `hpff` knows how to find, load, augment and normalize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DatasetKind {
    FashionMnist,
    Cifar10,
    Cifar100,
    Svhn,
    Stl10,
    /// `root/<class>/*.{png,jpg,jpeg}`.
    Folder,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Svhn,
        DatasetKind::Stl10,
        DatasetKind::Folder,
    ];

    /// The name used on the command line and for the cache subfolder.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::Folder => "folder",
        }
    }

    /// Number of classes (`None` for an image folder: as many as it has subfolders).
    pub fn class_count(self) -> Option<usize> {
        match self {
            DatasetKind::Cifar100 => Some(100),
            DatasetKind::Folder => None,
            _ => Some(10),
        }
    }

    /// The reference's training augmentation: CIFAR reflect-pad 4 + crop 32 + flip;
    /// SVHN zero-pad 2 + crop 32; STL-10 zero-pad 4 + crop 96 + flip; Fashion-MNIST
    /// none; image folders like CIFAR (crop to the images' own size).
    pub fn default_augment(self) -> Option<Augment> {
        let a = |pad, reflect, crop, flip| Some(Augment { pad, reflect, crop, flip });
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => a(4, true, 32, true),
            DatasetKind::Svhn => a(2, false, 32, false),
            DatasetKind::Stl10 => a(4, false, 96, true),
            DatasetKind::FashionMnist => None,
            DatasetKind::Folder => a(4, true, 0, true),
        }
    }

    /// The reference's normalization (CIFAR: its per-channel means and stds; SVHN,
    /// STL-10 and image folders: 0.5 / 0.5; Fashion-MNIST: 0.2860 / 0.3530).
    pub fn default_normalize(self) -> Normalize {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => Normalize {
                mean: [125.3f32, 123.0, 113.9].iter().map(|v| v / 255.0).collect(),
                std: [63.0f32, 62.1, 66.7].iter().map(|v| v / 255.0).collect(),
            },
            DatasetKind::FashionMnist => Normalize::uniform(0.2860, 0.3530),
            DatasetKind::Svhn | DatasetKind::Stl10 | DatasetKind::Folder => Normalize::uniform(0.5, 0.5),
        }
    }

    /// Where data of this kind is looked for when no folder is given:
    /// `default_cache_dir()/<name>` (Fashion-MNIST: see [`fashion_mnist_dir`]).
    pub fn default_dir(self) -> PathBuf {
        default_cache_dir().join(self.name())
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let k = s.to_ascii_lowercase().replace(['_', '-'], "");
        DatasetKind::ALL.into_iter().find(|d| d.name().replace('-', "") == k).ok_or_else(|| {
            let names: Vec<_> = DatasetKind::ALL.iter().map(|d| d.name()).collect();
            format!("unknown dataset {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// Loads `split` of a dataset of `kind` from `dir` (or its default place).
///
/// For [`DatasetKind::Folder`], `dir` is required; if it has a `train`, `test` or `val`
/// subfolder it is taken as a root holding the splits (the test split is `test`, else
/// `val`), otherwise `dir` itself holds the class folders of the training split and the
/// test split is [`DataError::Missing`]: measuring "test" accuracy on training images
/// would be a silently wrong number, so the caller must hold out a validation split.
pub fn load(kind: DatasetKind, dir: Option<&Path>, split: Split) -> Result<Dataset, DataError> {
    let owned;
    let dir = match (kind, dir) {
        (_, Some(d)) => d,
        (DatasetKind::FashionMnist, None) => {
            owned = fashion_mnist_dir(&default_cache_dir())?;
            &owned
        }
        (DatasetKind::Folder, None) => {
            return Err(DataError::missing(
                Path::new("<none>"),
                "an image-folder dataset needs its folder (root/<class>/*.png|jpg|jpeg)",
            ))
        }
        (k, None) => {
            owned = k.default_dir();
            &owned
        }
    };
    match kind {
        DatasetKind::FashionMnist => load_fashion_mnist(dir, split),
        DatasetKind::Cifar10 => load_cifar10(dir, split),
        DatasetKind::Cifar100 => load_cifar100(dir, split),
        DatasetKind::Svhn => load_svhn(dir, split),
        DatasetKind::Stl10 => load_stl10(dir, split),
        DatasetKind::Folder => load_folder(&folder_split(dir, split)?),
    }
}

/// Indexes `split` of an image folder for streaming (the same layout rules as [`load`]
/// for [`DatasetKind::Folder`]).
pub fn index(dir: &Path, split: Split) -> Result<FolderIndex, DataError> {
    index_folder(&folder_split(dir, split)?)
}

fn folder_split(dir: &Path, split: Split) -> Result<PathBuf, DataError> {
    let has = |s: &str| dir.join(s).is_dir();
    if !(has("train") || has("test") || has("val")) {
        return match split {
            Split::Train => Ok(dir.to_path_buf()),
            Split::Test => Err(DataError::missing(
                &dir.join("test"),
                format!(
                    "{} holds class folders but no test/ or val/ split; hold out validation images with --val-split N, or arrange root/train/<class> and root/test/<class>",
                    dir.display()
                ),
            )),
        };
    }
    let want: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["test", "val"],
    };
    want.iter().find(|s| has(s)).map(|s| dir.join(s)).ok_or_else(|| {
        DataError::missing(
            &dir.join(want[0]),
            format!("{} has split subfolders but none named {}", dir.display(), want.join(" or ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_have_the_reference_defaults() {
        for k in DatasetKind::ALL {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!("FashionMNIST".parse::<DatasetKind>().unwrap(), DatasetKind::FashionMnist);
        assert_eq!("CIFAR-10".parse::<DatasetKind>().unwrap(), DatasetKind::Cifar10);
        assert!("imagenet".parse::<DatasetKind>().unwrap_err().contains("expected one of fashion-mnist"));
        let c = DatasetKind::Cifar10.default_normalize();
        assert_eq!(c.mean[0], 125.3 / 255.0);
        assert_eq!(c.std[2], 66.7 / 255.0);
        assert_eq!(DatasetKind::Stl10.default_augment().unwrap().crop, 96);
        assert!(!DatasetKind::Svhn.default_augment().unwrap().flip);
        assert!(DatasetKind::FashionMnist.default_augment().is_none());
        assert_eq!(DatasetKind::Cifar100.class_count(), Some(100));
        assert_eq!(DatasetKind::Folder.class_count(), None);
    }

    #[test]
    fn folder_splits_and_missing_dirs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for s in ["train/a", "val/a"] {
            std::fs::create_dir_all(r.join(s)).unwrap();
            image::RgbImage::new(2, 2).save(r.join(s).join("0.png")).unwrap();
        }
        assert_eq!(load(DatasetKind::Folder, Some(r), Split::Train).unwrap().n, 1);
        assert_eq!(load(DatasetKind::Folder, Some(r), Split::Test).unwrap().n, 1);
        assert_eq!(load(DatasetKind::Folder, Some(&r.join("train")), Split::Train).unwrap().class_names, vec!["a"]);
        // Class folders without splits: no test split, rather than testing on training images.
        let e = load(DatasetKind::Folder, Some(&r.join("train")), Split::Test).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
        assert!(
            e.to_string().contains(
                "holds class folders but no test/ or val/ split; hold out validation images with --val-split N"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(r.join("val")).unwrap();
        let e = load(DatasetKind::Folder, Some(r), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test: not found;") && e.contains("none named test or val"), "{e}");
        assert!(load(DatasetKind::Folder, None, Split::Train).is_err());
        let e = load(DatasetKind::Cifar10, Some(&r.join("none")), Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin: not found"), "{e}");
    }
}
