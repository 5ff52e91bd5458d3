//! The splits a run trains and evaluates on: `--val-split` cut from the training split,
//! `--limit-train` / `--limit-test` subsets, by the same seeded rules for images in
//! memory and for a streamed folder's index.

use hpff_core::rng::Rng;

use super::{DataError, Dataset, FolderIndex, Source};
use crate::error::{Error, Result};

/// RNG stream of the `--limit-train`/`--limit-test` subsets (`hpff eval` uses it too).
pub const LIMIT_STREAM: u64 = 3;

/// How the splits are cut: images set aside for validation (0: none, evaluate on the
/// test split), subset sizes (0: all), the seed of both draws.
#[derive(Clone, Copy, Debug)]
pub struct SplitRules {
    pub val_split: usize,
    pub limit_train: usize,
    pub limit_test: usize,
    pub seed: u64,
}

/// The splits a run uses.
#[derive(Debug, Clone)]
pub struct Data {
    pub train: Source,
    /// Evaluated every `eval_every` epochs: the validation split, else the test split.
    pub eval: Source,
    /// `"val"` or `"test"`.
    pub eval_name: &'static str,
    /// The test split, when `eval` is a validation split (evaluated at the end).
    pub test: Option<Source>,
    /// The split the final accuracy is measured on: `"test"`, or `"val"` when a validation
    /// split was asked for and the data set has no test split (an image folder with only `train/`).
    pub final_name: &'static str,
}

/// A split that `--val-split` and `--limit-*` can cut: an in-memory data set or a folder
/// index, cut by the same seeded rules.
pub trait Cut: Sized {
    fn count(&self) -> usize;
    fn split_off_validation(&self, n: usize, seed: u64) -> (Self, Self);
    fn sample(self, n: usize, rng: Rng) -> Self;
}

impl Cut for Dataset {
    fn count(&self) -> usize {
        self.n
    }
    fn split_off_validation(&self, n: usize, seed: u64) -> (Self, Self) {
        Dataset::split_off_validation(self, n, seed)
    }
    fn sample(self, n: usize, rng: Rng) -> Self {
        Dataset::sample(self, n, rng)
    }
}

impl Cut for FolderIndex {
    fn count(&self) -> usize {
        self.len()
    }
    fn split_off_validation(&self, n: usize, seed: u64) -> (Self, Self) {
        FolderIndex::split_off_validation(self, n, seed)
    }
    fn sample(self, n: usize, rng: Rng) -> Self {
        FolderIndex::sample(self, n, rng)
    }
}

/// The training, evaluation and test splits of `train` and `test` (`--val-split`,
/// `--limit-*`), wrapped by `wrap`.
pub fn cut_splits<T: Cut>(
    rules: &SplitRules,
    train: T,
    test: std::result::Result<T, DataError>,
    wrap: impl Fn(T) -> Source,
) -> Result<Data> {
    let val_split = rules.val_split;
    let test = match test {
        Ok(t) => Some(t),
        Err(DataError::Missing { .. }) if val_split > 0 => None,
        Err(e) => return Err(e.into()),
    };
    let seed = rules.seed;
    let limit = |d: T, n: usize| if n > 0 { d.sample(n, Rng::new(seed).fork(LIMIT_STREAM)) } else { d };
    let data = match val_split {
        v if v > 0 => {
            if v >= train.count() {
                return Err(Error::msg(format!(
                    "--val-split {v} leaves no training images (the training split has {})",
                    train.count()
                )));
            }
            let (tr, val) = train.split_off_validation(v, seed);
            Data {
                train: wrap(limit(tr, rules.limit_train)),
                eval: wrap(limit(val, rules.limit_test)),
                eval_name: "val",
                final_name: if test.is_some() { "test" } else { "val" },
                test: test.map(|t| wrap(limit(t, rules.limit_test))),
            }
        }
        _ => Data {
            train: wrap(limit(train, rules.limit_train)),
            eval: wrap(limit(test.ok_or_else(|| Error::msg("internal: test split missing"))?, rules.limit_test)),
            eval_name: "test",
            final_name: "test",
            test: None,
        },
    };
    if data.train.is_empty() || data.eval.is_empty() {
        return Err(Error::msg("the dataset has no images to train or evaluate on"));
    }
    Ok(data)
}

/// The `--limit-train`/`--limit-test` subset of `d` (0 or none: all of it), drawn from
/// `seed`: the one rule `hpff train` and `hpff eval` share.
pub fn limit_subset(d: Dataset, n: Option<usize>, seed: u64) -> Dataset {
    match n {
        Some(n) if n > 0 => d.sample(n, Rng::new(seed).fork(LIMIT_STREAM)),
        _ => d,
    }
}
