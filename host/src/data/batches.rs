//! One epoch of shuffled, augmented, normalized batches, prepared on a background
//! thread a batch or two ahead of the consumer.
//!
//! The epoch's generator is `rng.fork(epoch)`: it first shuffles the index order (if
//! `shuffle`); the image at position `p` of that order then draws its augmentation from
//! its own generator, the shuffled one forked by `p`. So a batch's contents depend only on
//! the seed, the epoch and the positions it holds: the background thread gives the
//! batches of [`Batches::synchronous`] bit for bit, and a process that takes a
//! [`Shard`] of the positions (data parallelism) prepares each image as one process would.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use hpff_core::rng::Rng;

use super::augment::{batch_image_shape, fill_batch, Augment, Normalize};
use super::dataset::Dataset;
use crate::dist::Shard;

/// One batch: `n` images as NCHW `f32` in `x` and their labels in `y`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub n: usize,
}

/// How an epoch is cut into batches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    /// Leave out a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// `None` for evaluation.
    pub augment: Option<Augment>,
    pub normalize: Normalize,
    /// Batches queued ahead of the consumer beyond the one being prepared (0 or more).
    pub prefetch: usize,
    /// The positions of the epoch this process takes (training pads to equal shards).
    pub shard: Shard,
}

impl BatchOptions {
    /// Training batches: shuffled, augmented, last partial batch kept.
    pub fn train(batch_size: usize, augment: Option<Augment>, normalize: Normalize) -> Self {
        BatchOptions {
            batch_size,
            shuffle: true,
            drop_last: false,
            augment,
            normalize,
            prefetch: 1,
            shard: Shard::WHOLE,
        }
    }

    /// Evaluation batches: in order, no augmentation, every image once.
    pub fn eval(batch_size: usize, normalize: Normalize) -> Self {
        BatchOptions {
            batch_size,
            shuffle: false,
            drop_last: false,
            augment: None,
            normalize,
            prefetch: 1,
            shard: Shard::WHOLE,
        }
    }
}

/// The plan of one epoch: this process's (position, image) pairs and the generator
/// after shuffling.
struct Plan {
    ds: Arc<Dataset>,
    opts: BatchOptions,
    items: Vec<(u64, usize)>,
    rng: Rng,
    len: usize,
    image_len: usize,
    next: usize,
}

impl Plan {
    fn new(ds: Arc<Dataset>, opts: &BatchOptions, rng: &Rng, epoch: u64) -> Plan {
        let mut erng = rng.fork(epoch);
        let mut order: Vec<usize> = (0..ds.n).collect();
        if opts.shuffle {
            erng.shuffle(&mut order);
        }
        // Training (shuffled) pads to equal shards, so every rank runs the same steps;
        // evaluation counts every image once.
        let items = opts.shard.take(&order, opts.shuffle);
        let bs = opts.batch_size.max(1);
        let len = if opts.drop_last { items.len() / bs } else { items.len().div_ceil(bs) };
        let (c, h, w) = batch_image_shape(&ds, opts.augment.as_ref());
        Plan {
            ds,
            opts: BatchOptions { batch_size: bs, ..opts.clone() },
            items,
            rng: erng,
            len,
            image_len: c * h * w,
            next: 0,
        }
    }

    fn produce(&mut self) -> Option<Batch> {
        if self.next >= self.len {
            return None;
        }
        let bs = self.opts.batch_size;
        let items = &self.items[self.next * bs..((self.next + 1) * bs).min(self.items.len())];
        self.next += 1;
        let n = items.len();
        let idx: Vec<usize> = items.iter().map(|&(_, i)| i).collect();
        let mut x = vec![0f32; n * self.image_len];
        let mut y = vec![0u32; n];
        let rng = |k: usize| self.rng.fork(items[k].0);
        fill_batch(&self.ds, &idx, self.opts.augment.as_ref(), &self.opts.normalize, &rng, &mut x, &mut y);
        Some(Batch { x, y, n })
    }
}

enum Source {
    Sync(Box<Plan>),
    Background { rx: Option<Receiver<Batch>>, handle: Option<JoinHandle<()>> },
}

/// An iterator over one epoch of batches; see the module docs.
pub struct Batches {
    source: Source,
    len: usize,
    given: usize,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("len", &self.len)
            .field("given", &self.given)
            .field("background", &matches!(self.source, Source::Background { .. }))
            .finish()
    }
}

impl Batches {
    /// Epoch `epoch` of `ds`, prepared on a background thread.
    pub fn new(ds: Arc<Dataset>, opts: &BatchOptions, rng: &Rng, epoch: u64) -> Batches {
        let mut plan = Plan::new(ds, opts, rng, epoch);
        let len = plan.len;
        let (tx, rx) = sync_channel(opts.prefetch);
        let handle = std::thread::Builder::new()
            .name("hpff-batches".into())
            .spawn(move || {
                while let Some(b) = plan.produce() {
                    if tx.send(b).is_err() {
                        break; // consumer gone
                    }
                }
            })
            .expect("cannot spawn the batch thread");
        Batches { source: Source::Background { rx: Some(rx), handle: Some(handle) }, len, given: 0 }
    }

    /// The same batches as [`Batches::new`], produced on the calling thread.
    pub fn synchronous(ds: Arc<Dataset>, opts: &BatchOptions, rng: &Rng, epoch: u64) -> Batches {
        let plan = Plan::new(ds, opts, rng, epoch);
        Batches { len: plan.len, source: Source::Sync(Box::new(plan)), given: 0 }
    }

    /// Number of batches in the epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn join(&mut self) {
        if let Source::Background { rx, handle } = &mut self.source {
            rx.take(); // unblocks a producer waiting to send
            if let Some(h) = handle.take() {
                if let Err(p) = h.join() {
                    std::panic::resume_unwind(p);
                }
            }
        }
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let b = match &mut self.source {
            Source::Sync(plan) => plan.produce(),
            Source::Background { rx, .. } => rx.as_ref().and_then(|r| r.recv().ok()),
        };
        match b {
            Some(b) => {
                self.given += 1;
                Some(b)
            }
            None => {
                self.join(); // re-raises a panic of the producer
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.given;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Source::Background { rx, handle } = &mut self.source {
            rx.take();
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::numbered_names;

    fn ds(n: usize) -> Arc<Dataset> {
        let (c, h, w) = (3, 4, 4);
        Arc::new(Dataset {
            images: (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u16).collect(),
            n,
            c,
            h,
            w,
            classes: 10,
            class_names: numbered_names(10),
        })
    }

    fn opts(bs: usize, drop_last: bool) -> BatchOptions {
        BatchOptions {
            drop_last,
            ..BatchOptions::train(
                bs,
                Some(Augment { pad: 2, reflect: true, crop: 4, flip: true }),
                Normalize { mean: vec![0.1, 0.2, 0.3], std: vec![0.5, 0.6, 0.7] },
            )
        }
    }

    #[test]
    fn background_equals_synchronous_and_is_seeded() {
        let d = ds(23);
        let rng = Rng::new(5);
        for drop_last in [false, true] {
            let o = opts(5, drop_last);
            let bg = Batches::new(d.clone(), &o, &rng, 3);
            assert_eq!(bg.len(), if drop_last { 4 } else { 5 });
            let bg: Vec<Batch> = bg.collect();
            let sy: Vec<Batch> = Batches::synchronous(d.clone(), &o, &rng, 3).collect();
            assert_eq!(bg.len(), if drop_last { 4 } else { 5 });
            let bits = |v: &[Batch]| v.iter().flat_map(|b| b.x.iter().map(|f| f.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&bg), bits(&sy));
            assert_eq!(bg, sy);
            assert_eq!(bg.last().unwrap().n, if drop_last { 5 } else { 3 });
            let again: Vec<Batch> = Batches::new(d.clone(), &o, &Rng::new(5), 3).collect();
            assert_eq!(bits(&again), bits(&bg));
            let other: Vec<Batch> = Batches::new(d.clone(), &o, &rng, 4).collect();
            assert_ne!(other, bg);
        }
    }

    #[test]
    fn an_epoch_covers_every_image_once() {
        let d = ds(23);
        let o = BatchOptions { augment: None, ..opts(4, false) };
        let mut labels: Vec<u32> = Batches::new(d.clone(), &o, &Rng::new(1), 0).flat_map(|b| b.y).collect();
        assert_ne!(labels, d.labels.iter().map(|&l| l as u32).collect::<Vec<_>>());
        labels.sort_unstable();
        let mut want: Vec<u32> = d.labels.iter().map(|&l| l as u32).collect();
        want.sort_unstable();
        assert_eq!(labels, want);
        let ev: Vec<Batch> =
            Batches::new(d.clone(), &BatchOptions::eval(10, Normalize::uniform(0.0, 1.0)), &Rng::new(1), 0).collect();
        assert_eq!(ev.iter().map(|b| b.n).collect::<Vec<_>>(), vec![10, 10, 3]);
        assert_eq!(ev[0].x[0], d.images[0] as f32 / 255.0);
        assert_eq!(ev[2].y, vec![0, 1, 2]);
    }

    #[test]
    fn shards_hold_the_single_process_batches() {
        let d = ds(23);
        let rng = Rng::new(9);
        let one: Vec<Batch> = Batches::synchronous(d.clone(), &opts(6, false), &rng, 2).collect();
        let per_image = |b: &Batch, k: usize| (b.y[k], b.x[k * b.x.len() / b.n..(k + 1) * b.x.len() / b.n].to_vec());
        for world in [2, 3] {
            let shards: Vec<Vec<Batch>> = (0..world)
                .map(|rank| {
                    let o = BatchOptions { shard: Shard { rank, world }, ..opts(6 / world, false) };
                    Batches::new(d.clone(), &o, &rng, 2).collect()
                })
                .collect();
            // 23 images pad to 24: every rank runs the same 4 steps over 24 / world images.
            assert!(shards.iter().all(|s| s.len() == 4 && s.iter().map(|b| b.n).sum::<usize>() == 24 / world));
            for (k, whole) in one.iter().enumerate() {
                for (j, want) in (0..whole.n).map(|j| (j, per_image(whole, j))) {
                    // Position j of global batch k is rank j % world's image j / world.
                    let got = per_image(&shards[j % world][k], j / world);
                    assert_eq!(got, want, "world {world}, batch {k}, image {j}");
                }
            }
        }
    }

    #[test]
    fn dropping_early_stops_the_thread() {
        let d = ds(50);
        let mut b = Batches::new(d, &BatchOptions { prefetch: 0, ..opts(2, false) }, &Rng::new(0), 0);
        assert_eq!(b.len(), 25);
        assert!(b.next().is_some());
        assert_eq!(b.size_hint(), (24, Some(24)));
        drop(b); // must not hang
        let empty = Batches::new(ds(0), &opts(4, false), &Rng::new(0), 0);
        assert!(empty.is_empty());
        assert_eq!(empty.count(), 0);
    }
}
