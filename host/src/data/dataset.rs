//! An in-memory labelled image dataset: `n` images of `c × h × w` bytes (CHW, row-major).

use hpff_core::rng::Rng;

/// `n` images of `c × h × w` `u8` pixels stored one after another in CHW order, with
/// their labels in `0..classes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `n × c × h × w` bytes; image `i` is `images[i*c*h*w .. (i+1)*c*h*w]`.
    pub images: Vec<u8>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u16>,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
    /// `classes` names (numbers as text where a format carries none).
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Bytes per image, `c × h × w`.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The pixels of image `i` (CHW). Panics if `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// A new dataset of the images at `idx`, in that order (repeats allowed).
    /// Panics if an index is `>= n`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let len = self.image_len();
        let mut images = Vec::with_capacity(idx.len() * len);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { images, labels, n: idx.len(), ..self.empty_like() }
    }

    fn empty_like(&self) -> Dataset {
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            n: 0,
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Splits off a random held-out set of `n_val` images (at most `n`), chosen by
    /// `seed`; both parts keep the original order of their images.
    pub fn split_off_validation(&self, n_val: usize, seed: u64) -> (Dataset, Dataset) {
        let (train, val) = validation_indices(self.n, n_val, seed);
        (self.subset(&train), self.subset(&val))
    }

    /// A random subset of `n` images (all of them if there are fewer), drawn by `rng`,
    /// in their original order. Not the first `n`: files are often sorted by class, and a
    /// prefix of an image folder is one class. `hpff train` and `hpff eval` both draw
    /// their `--limit-*` subsets with this and the run's seed, so they measure the same images.
    pub fn sample(self, n: usize, rng: Rng) -> Dataset {
        match sample_indices(self.n, n, rng) {
            Some(idx) => self.subset(&idx),
            None => self,
        }
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// The (training, validation) indices of [`Dataset::split_off_validation`] among `n`
/// items: a random `n_val` (at most `n`) chosen by `seed`, each part in ascending order.
pub(crate) fn validation_indices(n: usize, n_val: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_val = n_val.min(n);
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut perm);
    let mut train = perm.split_off(n_val);
    perm.sort_unstable();
    train.sort_unstable();
    (train, perm)
}

/// The indices of [`Dataset::sample`]: `n` of `total` drawn by `rng`, ascending; `None`
/// when `n` covers them all.
pub(crate) fn sample_indices(total: usize, n: usize, mut rng: Rng) -> Option<Vec<usize>> {
    if n >= total {
        return None;
    }
    let mut idx: Vec<usize> = (0..total).collect();
    rng.shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    Some(idx)
}

/// `"0"`, `"1"`, … as class names for formats that carry none.
pub(crate) fn numbered_names(classes: usize) -> Vec<String> {
    (0..classes).map(|i| i.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn toy(n: usize) -> Dataset {
        // 1×1×2 images whose pixels encode the index.
        Dataset {
            images: (0..n).flat_map(|i| [i as u8, 100 + i as u8]).collect(),
            labels: (0..n).map(|i| (i % 3) as u16).collect(),
            n,
            c: 1,
            h: 1,
            w: 2,
            classes: 3,
            class_names: numbered_names(3),
        }
    }

    #[test]
    fn image_subset_limit() {
        let d = toy(5);
        assert_eq!(d.image(3), &[3, 103]);
        let s = d.subset(&[4, 0, 4]);
        assert_eq!(s.n, 3);
        assert_eq!(s.images, vec![4, 104, 0, 100, 4, 104]);
        assert_eq!(s.labels, vec![1, 0, 1]);
        let l = d.clone().sample(2, Rng::new(1));
        assert_eq!((l.n, l.images.len(), l.labels.len()), (2, 4, 2));
        assert_eq!(l, d.clone().sample(2, Rng::new(1)), "seeded");
        assert!(l.images.chunks(2).all(|p| p[1] == 100 + p[0]), "whole images, kept in order");
        assert!(l.images[0] < l.images[2]);
        assert_eq!(d.clone().sample(99, Rng::new(1)), d);
        // Not a prefix: over a few seeds some subset leaves out image 0.
        assert!((0..8).any(|s| d.clone().sample(2, Rng::new(s)).images[0] != 0));
        assert_eq!(d.class_counts(), vec![2, 2, 1]);
    }

    #[test]
    fn validation_split_is_seeded_disjoint_and_complete() {
        let d = toy(20);
        let (t, v) = d.split_off_validation(6, 7);
        assert_eq!((t.n, v.n), (14, 6));
        let mut all: Vec<u8> = t.images.iter().chain(&v.images).step_by(2).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<u8>>());
        // ordered within each part
        assert!(v.images.chunks(2).map(|p| p[0]).collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(d.split_off_validation(6, 7), (t.clone(), v.clone()));
        assert_ne!(d.split_off_validation(6, 8).1, v);
        let (t, v) = d.split_off_validation(100, 1);
        assert_eq!((t.n, v.n), (0, 20));
    }
}
