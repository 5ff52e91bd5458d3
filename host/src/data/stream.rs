//! Streaming an image folder too large for memory (ImageNet's 1.28 M JPEGs): the folder
//! is indexed (paths and labels only, [`FolderIndex`]), and each epoch's images are read,
//! decoded and transformed by a pool of worker threads a bounded number of batches ahead
//! of the training step.
//!
//! **Order and randomness.** Epoch `e` draws its generator as the in-memory path does,
//! `rng.fork(e)`, shuffles the index order with it (when shuffling), and gives the image
//! at position `p` of the epoch its own generator `epoch_rng.fork(p)` for the crop box and
//! the flip ([`super::transform::train_transform`]). No draw depends on which worker takes
//! which image, so the batches are bit-identical for any number of workers.
//!
//! **Memory bound** (see [`StreamSet::bound`]). Workers claim images in epoch order and only
//! from the `depth` batches after the one the consumer holds, so at most `depth + 1`
//! batches exist at once, whatever the data set's size:
//!
//! ```text
//!   (depth + 1) × batch × (3·S²·4 + 4)                    batches: f32 pixels, u32 labels
//! + workers × (F + 6·P + 12·H·S + 12·S²)                  per-worker decode buffers
//! + index                                                 ≈ (file-name length + 10) B per image
//! ```
//!
//! with `S` the output side, and `F`, `P`, `H` the largest file's bytes, image's pixels and
//! image's height: the file as read, the decoded RGB image (3·P) and as much again for
//! the decoder's own planes, the transform's horizontal pass (f32, `H × S × 3`) and one
//! transformed image. At S = 224, batch 256, depth 2 the batches take 3 × 154.1 MB =
//! 462.4 MB (441 MiB); a 500×375 JPEG of 110 kB needs 2.8 MB (2.7 MiB) per worker; the
//! index of ImageNet's 1,281,167 training images (20-byte names) 38 MB.
//!
//! **Bad files.** An unreadable or undecodable image stops the epoch with the one-line
//! error naming the file (torchvision's `ImageFolder` raises too); nothing is skipped
//! silently.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hpff_core::rng::Rng;

use crate::dist::Shard;

use super::augment::{Augment, Normalize};
use super::batches::{Batch, BatchOptions, Batches};
use super::dataset::Dataset;
use super::error::DataError;
use super::folder::{open_image, FolderIndex};
use super::transform::{eval_transform, train_transform, Norm, Rgb, Scratch, IMAGENET};

/// Batches prepared ahead of the one the consumer holds, by default.
pub const DEFAULT_DEPTH: usize = 2;

/// An indexed image folder streamed through the ImageNet transforms at `size × size`.
#[derive(Clone, Debug)]
pub struct StreamSet {
    pub index: Arc<FolderIndex>,
    /// Output side `S` (224 for ImageNet).
    pub size: usize,
    pub norm: Norm,
    /// Decoding threads.
    pub workers: usize,
    /// The largest file bytes, image pixels and image height seen so far (for the bound).
    seen: Arc<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    file: AtomicUsize,
    pixels: AtomicUsize,
    height: AtomicUsize,
}

/// How one epoch is streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    /// `RandomResizedCrop` + flip (training) or resize + centre crop (evaluation).
    pub train: bool,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// Batches prepared ahead of the one the consumer holds (at least 1).
    pub depth: usize,
    /// The positions of the epoch this process takes (training pads to equal shards).
    pub shard: Shard,
}

impl StreamOptions {
    /// Training: shuffled, random crops, last partial batch kept.
    pub fn train(batch_size: usize, workers: usize) -> Self {
        StreamOptions {
            batch_size,
            shuffle: true,
            drop_last: false,
            train: true,
            workers,
            depth: DEFAULT_DEPTH,
            shard: Shard::WHOLE,
        }
    }

    /// Evaluation: in order, centre crops, every image once.
    pub fn eval(batch_size: usize, workers: usize) -> Self {
        StreamOptions { shuffle: false, train: false, ..Self::train(batch_size, workers) }
    }
}

/// The parts of the memory bound, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub batches: usize,
    pub per_worker: usize,
    pub workers: usize,
    pub index: usize,
}

impl Bound {
    pub fn total(&self) -> usize {
        self.batches + self.workers * self.per_worker + self.index
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{:.1} MiB = batches {:.1} MiB + {} workers × {:.1} MiB decode buffers + index {:.1} MiB",
            mib(self.total()),
            mib(self.batches),
            self.workers,
            mib(self.per_worker),
            mib(self.index)
        )
    }
}

impl StreamSet {
    /// `index` through the transforms at `size`, normalized with `norm`, decoded by
    /// `workers` threads (0: one per core).
    pub fn new(index: FolderIndex, size: usize, norm: Norm, workers: usize) -> StreamSet {
        let workers = if workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { workers };
        StreamSet { index: Arc::new(index), size, norm, workers, seen: Arc::default() }
    }

    /// [`StreamSet::new`] with torchvision's ImageNet mean and std.
    pub fn imagenet(index: FolderIndex, size: usize, workers: usize) -> StreamSet {
        StreamSet::new(index, size, IMAGENET, workers)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The memory bound of streaming with `opts` (module docs) for images of at most
    /// `file` bytes, `pixels` pixels and `height` rows.
    pub fn bound_for(&self, opts: &StreamOptions, file: usize, pixels: usize, height: usize) -> Bound {
        let s = self.size;
        Bound {
            batches: (opts.depth.max(1) + 1) * opts.batch_size * (3 * s * s * 4 + 4),
            per_worker: file + 6 * pixels + 12 * height * s + 12 * s * s,
            workers: opts.workers.max(1),
            index: self.index.bytes(),
        }
    }

    /// [`StreamSet::bound_for`] the largest image streamed so far.
    pub fn bound(&self, opts: &StreamOptions) -> Bound {
        let s = &self.seen;
        self.bound_for(
            opts,
            s.file.load(Ordering::Relaxed),
            s.pixels.load(Ordering::Relaxed),
            s.height.load(Ordering::Relaxed),
        )
    }

    /// Epoch `epoch` of batches, prepared by `opts.workers` threads.
    pub fn batches(&self, opts: &StreamOptions, rng: &Rng, epoch: u64) -> StreamBatches {
        StreamBatches::new(self.clone(), opts, rng, epoch)
    }

    /// Reads, decodes and transforms image `k` with `rng` into `dst` (3 × S × S).
    fn load_one(
        &self,
        k: usize,
        train: bool,
        rng: &mut Rng,
        scratch: &mut Scratch,
        dst: &mut [f32],
    ) -> Result<(), DataError> {
        let path = self.index.path(k);
        let file = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
        let img = open_image(&path)?.into_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        self.seen.file.fetch_max(file, Ordering::Relaxed);
        self.seen.pixels.fetch_max(w * h, Ordering::Relaxed);
        self.seen.height.fetch_max(h, Ordering::Relaxed);
        let img = Rgb { px: img.as_raw(), h, w };
        if train {
            train_transform(img, self.size, &self.norm, rng, scratch, dst);
        } else {
            eval_transform(img, self.size, &self.norm, scratch, dst);
        }
        Ok(())
    }
}

/// A batch being filled.
struct Slot {
    x: Vec<f32>,
    y: Vec<u32>,
    left: usize,
}

struct State {
    /// Next position of the epoch order to hand to a worker.
    next: usize,
    /// Batches in flight; `slots[0]` is batch `front`.
    slots: std::collections::VecDeque<Slot>,
    front: usize,
    /// The most batches in flight at once (for the bounded-queue test).
    peak: usize,
    error: Option<DataError>,
    stop: bool,
    /// A worker panicked (the consumer re-raises it rather than wait forever).
    panicked: bool,
}

struct Shared {
    set: StreamSet,
    opts: StreamOptions,
    /// This process's (position in the epoch, image) pairs.
    items: Vec<(u64, usize)>,
    rng: Rng,
    len: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn batch_len(&self, b: usize) -> usize {
        let bs = self.opts.batch_size;
        bs.min(self.items.len() - b * bs)
    }

    /// A worker ([`Shared::work_inner`]); a panic stops the epoch and reaches the consumer.
    fn work(&self) {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.work_inner())) {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.panicked = true;
            st.stop = true;
            drop(st);
            self.cv.notify_all();
            std::panic::resume_unwind(p);
        }
    }

    /// Claims the next image within `depth` batches of the consumer's, transforms it into
    /// its own buffer and copies it into its batch, until the epoch is done or stopped.
    fn work_inner(&self) {
        let img_len = 3 * self.set.size * self.set.size;
        let mut buf = vec![0f32; img_len];
        let mut scratch = Scratch::default();
        let bs = self.opts.batch_size;
        loop {
            let p = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if st.stop || st.next >= self.len * bs || st.next >= self.items.len() {
                        return;
                    }
                    let b = st.next / bs;
                    if b < st.front + self.opts.depth.max(1) {
                        while st.front + st.slots.len() <= b {
                            let n = self.batch_len(st.front + st.slots.len());
                            st.slots.push_back(Slot { x: vec![0.0; n * img_len], y: vec![0; n], left: n });
                            st.peak = st.peak.max(st.slots.len());
                        }
                        st.next += 1;
                        break st.next - 1;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let (pos, k) = self.items[p];
            let mut rng = self.rng.fork(pos);
            let r = self.set.load_one(k, self.opts.train, &mut rng, &mut scratch, &mut buf);
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(()) => {
                    let (b, i) = (p / bs, p % bs);
                    let front = st.front;
                    if let Some(slot) = st.slots.get_mut(b - front) {
                        slot.x[i * img_len..(i + 1) * img_len].copy_from_slice(&buf);
                        slot.y[i] = self.set.index.label(k) as u32;
                        slot.left -= 1;
                        if slot.left == 0 {
                            self.cv.notify_all();
                        }
                    }
                }
                Err(e) => {
                    if st.error.is_none() {
                        st.error = Some(e);
                    }
                    st.stop = true;
                    self.cv.notify_all();
                    return;
                }
            }
        }
    }
}

/// One epoch of streamed batches: an iterator of `Result<Batch, DataError>`; the first
/// error ends the epoch.
pub struct StreamBatches {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    given: usize,
    failed: bool,
    waited: Duration,
}

impl std::fmt::Debug for StreamBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBatches")
            .field("len", &self.shared.len)
            .field("given", &self.given)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl StreamBatches {
    fn new(set: StreamSet, opts: &StreamOptions, rng: &Rng, epoch: u64) -> StreamBatches {
        let mut erng = rng.fork(epoch);
        let mut order: Vec<usize> = (0..set.len()).collect();
        if opts.shuffle {
            erng.shuffle(&mut order);
        }
        let items = opts.shard.take(&order, opts.shuffle);
        let opts = StreamOptions { batch_size: opts.batch_size.max(1), ..opts.clone() };
        let bs = opts.batch_size;
        let len = if opts.drop_last { items.len() / bs } else { items.len().div_ceil(bs) };
        let shared = Arc::new(Shared {
            set,
            opts,
            items,
            rng: erng,
            len,
            state: Mutex::new(State {
                next: 0,
                slots: std::collections::VecDeque::new(),
                front: 0,
                peak: 0,
                error: None,
                stop: false,
                panicked: false,
            }),
            cv: Condvar::new(),
        });
        let n = if len == 0 { 0 } else { shared.opts.workers.max(1) };
        let workers = (0..n)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("hpff-decode-{i}"))
                    .spawn(move || s.work())
                    .expect("cannot spawn a decoding thread")
            })
            .collect();
        StreamBatches { shared, workers, given: 0, failed: false, waited: Duration::ZERO }
    }

    /// Number of batches in the epoch.
    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }

    /// The most batches that were being prepared or waiting at once (besides the one
    /// the consumer holds): at most `depth`.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).peak
    }

    /// Time the consumer spent waiting for batches so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    fn stop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.stop = true;
            st.slots.clear();
        }
        self.shared.cv.notify_all();
        for h in self.workers.drain(..) {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

impl Iterator for StreamBatches {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.given >= self.shared.len {
            self.stop();
            return None;
        }
        let t = Instant::now();
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = loop {
            if let Some(e) = st.error.take() {
                break Err(e);
            }
            if st.panicked {
                drop(st);
                self.failed = true;
                self.stop(); // re-raises the worker's panic
                return None;
            }
            if st.slots.front().is_some_and(|s| s.left == 0) {
                let s = st.slots.pop_front().expect("checked");
                st.front += 1;
                break Ok(Batch { n: s.y.len(), x: s.x, y: s.y });
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        drop(st);
        self.shared.cv.notify_all(); // a slot is free
        self.waited += t.elapsed();
        match r {
            Ok(b) => {
                self.given += 1;
                Some(Ok(b))
            }
            Err(e) => {
                self.failed = true;
                self.stop();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed { 0 } else { self.shared.len - self.given };
        (left, Some(left))
    }
}

impl Drop for StreamBatches {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.stop = true;
        }
        self.shared.cv.notify_all();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Where a split's images come from: decoded into memory (small data sets), or streamed.
#[derive(Clone, Debug)]
pub enum Source {
    Memory(Arc<Dataset>),
    Stream(StreamSet),
}

impl From<Arc<Dataset>> for Source {
    fn from(d: Arc<Dataset>) -> Source {
        Source::Memory(d)
    }
}

impl Source {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(d) => d.n,
            Source::Stream(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn class_names(&self) -> &[String] {
        match self {
            Source::Memory(d) => &d.class_names,
            Source::Stream(s) => &s.index.class_names,
        }
    }

    /// The options a streamed epoch runs with: `train` picks the random crops (else the
    /// evaluation transform), shuffled when `shuffle`.
    fn stream_options(s: &StreamSet, batch: usize, train: bool, shuffle: bool, shard: Shard) -> StreamOptions {
        StreamOptions { train, shuffle, shard, ..StreamOptions::train(batch, s.workers) }
    }

    /// Training epoch `epoch` (`shard`'s part of it): shuffled; augmented with `aug` (in
    /// memory) or random resized crops (streamed; `aug` none: the evaluation transform).
    pub fn train_epoch(
        &self,
        batch: usize,
        aug: Option<&Augment>,
        norm: &Normalize,
        rng: &Rng,
        epoch: u64,
        shard: Shard,
    ) -> Epoch {
        match self {
            Source::Memory(d) => Epoch::Memory(Batches::new(
                d.clone(),
                &BatchOptions { shard, ..BatchOptions::train(batch, aug.cloned(), norm.clone()) },
                rng,
                epoch,
            )),
            Source::Stream(s) => {
                Epoch::Stream(s.batches(&Self::stream_options(s, batch, aug.is_some(), true, shard), rng, epoch))
            }
        }
    }

    /// Every image of `shard` once, in order, without augmentation.
    pub fn eval_epoch(&self, batch: usize, norm: &Normalize, shard: Shard) -> Epoch {
        match self {
            Source::Memory(d) => Epoch::Memory(Batches::new(
                d.clone(),
                &BatchOptions { shard, ..BatchOptions::eval(batch, norm.clone()) },
                &Rng::new(0),
                0,
            )),
            Source::Stream(s) => {
                Epoch::Stream(s.batches(&Self::stream_options(s, batch, false, false, shard), &Rng::new(0), 0))
            }
        }
    }
}

/// One epoch of batches of a [`Source`].
#[derive(Debug)]
pub enum Epoch {
    Memory(Batches),
    Stream(StreamBatches),
}

impl Epoch {
    /// Number of batches.
    pub fn len(&self) -> usize {
        match self {
            Epoch::Memory(b) => b.len(),
            Epoch::Stream(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Time spent waiting for streamed batches (none in memory).
    pub fn waited(&self) -> Option<Duration> {
        match self {
            Epoch::Memory(_) => None,
            Epoch::Stream(b) => Some(b.waited()),
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Epoch::Memory(b) => b.next().map(Ok),
            Epoch::Stream(b) => b.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{index, Split};
    use image::{Rgb, RgbImage};
    use std::path::Path;

    /// `root/{train,val}/<class>/` with JPEGs and PNGs of varied sizes.
    fn folder(root: &Path, per_class: usize) {
        for (split, n) in [("train", per_class), ("val", 2)] {
            for (c, class) in ["n01_cat", "n02_dog", "n03_owl"].iter().enumerate() {
                let d = root.join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for k in 0..n {
                    let (w, h) = (20 + (k * 13 + c * 7) % 60, 16 + (k * 29 + c * 5) % 70);
                    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
                        Rgb([(x * 4) as u8, (y * 3 + 40 * c as u32) as u8, ((x + y) * 2 + k as u32) as u8])
                    });
                    let ext = if k % 3 == 0 { "png" } else { "JPEG" };
                    let p = d.join(format!("{k:03}.{ext}"));
                    if ext == "png" {
                        img.save(&p).unwrap();
                    } else {
                        image::DynamicImage::ImageRgb8(img).save_with_format(&p, image::ImageFormat::Jpeg).unwrap();
                    }
                }
            }
        }
    }

    fn set(root: &Path, split: Split, size: usize, workers: usize) -> StreamSet {
        StreamSet::imagenet(index(root, split).unwrap(), size, workers)
    }

    fn bits(v: &[Batch]) -> Vec<u32> {
        v.iter().flat_map(|b| b.x.iter().map(|f| f.to_bits()).chain(b.y.iter().copied())).collect()
    }

    #[test]
    fn batches_are_the_same_for_any_number_of_workers() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path(), 9);
        let rng = Rng::new(7);
        let run = |workers: usize, depth: usize, epoch: u64| -> Vec<Batch> {
            let s = set(d.path(), Split::Train, 12, workers);
            let o = StreamOptions { depth, ..StreamOptions::train(5, workers) };
            s.batches(&o, &rng, epoch).map(|b| b.unwrap()).collect()
        };
        let one = run(1, 1, 1);
        assert_eq!(one.iter().map(|b| b.n).collect::<Vec<_>>(), vec![5, 5, 5, 5, 5, 2]);
        for (workers, depth) in [(2, 1), (3, 2), (8, 3)] {
            assert!(bits(&run(workers, depth, 1)) == bits(&one), "{workers} workers, depth {depth}");
        }
        assert!(bits(&run(2, 2, 2)) != bits(&one), "another epoch, other crops and order");
        // Every image once per epoch, with its label.
        let mut labels: Vec<u32> = one.iter().flat_map(|b| b.y.clone()).collect();
        labels.sort_unstable();
        assert_eq!(labels, [vec![0; 9], vec![1; 9], vec![2; 9]].concat());
        // Evaluation: in order, centre crops, deterministic.
        let s = set(d.path(), Split::Test, 12, 3);
        let ev: Vec<Batch> = s.batches(&StreamOptions::eval(4, 3), &Rng::new(0), 0).map(|b| b.unwrap()).collect();
        assert_eq!(ev.iter().flat_map(|b| b.y.clone()).collect::<Vec<_>>(), vec![0, 0, 1, 1, 2, 2]);
        let ev1: Vec<Batch> = s.batches(&StreamOptions::eval(4, 1), &Rng::new(9), 5).map(|b| b.unwrap()).collect();
        assert!(bits(&ev) == bits(&ev1));
    }

    #[test]
    fn the_queue_is_bounded_by_depth() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path(), 10);
        let s = set(d.path(), Split::Train, 8, 4);
        for depth in [1, 2, 3] {
            let o = StreamOptions { depth, ..StreamOptions::train(2, 4) };
            let mut it = s.batches(&o, &Rng::new(1), 1);
            let mut n = 0;
            for b in it.by_ref() {
                b.unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5)); // a slow consumer: workers catch up and wait
            }
            assert_eq!(n, 15);
            let peak = it.peak_in_flight();
            assert!(peak >= 1 && peak <= depth, "depth {depth}: {peak} batches in flight");
        }
        // The bound's arithmetic at ImageNet's size: 3 batches of 256 at 224² (+ labels).
        let b = s.bound_for(&StreamOptions { batch_size: 256, ..StreamOptions::train(256, 8) }, 0, 0, 0);
        let s224 = StreamSet { size: 224, ..s.clone() };
        let b224 = s224.bound_for(&StreamOptions::train(256, 8), 150_000, 500 * 375, 375);
        assert_eq!(b224.batches, 3 * 256 * (3 * 224 * 224 * 4 + 4));
        assert_eq!(b224.per_worker, 150_000 + 6 * 500 * 375 + 12 * 375 * 224 + 12 * 224 * 224);
        assert_eq!(b224.total(), b224.batches + 8 * b224.per_worker + b224.index);
        assert!(b.batches < b224.batches);
        // Dropping an epoch early stops its workers.
        let mut it = s.batches(&StreamOptions::train(2, 4), &Rng::new(1), 2);
        assert!(it.next().is_some());
        drop(it);
    }

    #[test]
    fn a_corrupt_image_is_a_one_line_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path(), 4);
        let bad = d.path().join("train/n02_dog/002.JPEG");
        std::fs::write(&bad, b"\xff\xd8\xff\xe0 not really a jpeg\n\nat all").unwrap();
        for workers in [1, 3] {
            let s = set(d.path(), Split::Train, 8, workers);
            let got: Vec<_> = s.batches(&StreamOptions::train(2, workers), &Rng::new(3), 1).collect();
            let errs: Vec<String> = got.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(got.last().unwrap().is_err(), "the epoch ends at the error");
            let e = &errs[0];
            assert!(e.starts_with(&format!("{}: undecodable image: ", bad.display())) && !e.contains('\n'), "{e}");
        }
        // A file that vanished after indexing cannot be read: named too.
        let s = set(d.path(), Split::Train, 8, 2);
        std::fs::remove_file(&bad).unwrap();
        let std::result::Result::Err(e) =
            s.batches(&StreamOptions::eval(4, 2), &Rng::new(0), 0).collect::<Result<Vec<_>, _>>()
        else {
            panic!("a vanished file must fail")
        };
        assert!(e.to_string().starts_with(&format!("{}: cannot read: ", bad.display())), "{e}");
    }

    #[test]
    fn empty_class_and_missing_val_are_named() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path(), 2);
        std::fs::remove_dir_all(d.path().join("val")).unwrap();
        let e = index(d.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test: not found;") && e.contains("none named test or val"), "{e}");
        std::fs::create_dir(d.path().join("train/n04_empty")).unwrap();
        std::fs::write(d.path().join("train/n04_empty/readme.txt"), "x").unwrap();
        let e = index(d.path(), Split::Train).unwrap_err().to_string();
        assert!(e.ends_with("n04_empty: empty class folder (no .png, .jpg or .jpeg files)"), "{e}");
    }

    #[test]
    fn the_index_cuts_like_the_in_memory_loader() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path(), 5);
        let root = d.path().join("train");
        let ix = crate::data::index_folder(&root).unwrap();
        assert_eq!(ix.len(), 15);
        assert_eq!(ix.path(6), root.join("n02_dog/001.JPEG"));
        assert_eq!(ix.class_names, vec!["n01_cat", "n02_dog", "n03_owl"]);
        // The same images as Dataset's split and sample for the same seed (tagged by index).
        let ds = Dataset {
            images: (0..15).map(|i| i as u8).collect(),
            labels: ix.labels().to_vec(),
            n: 15,
            c: 1,
            h: 1,
            w: 1,
            classes: 3,
            class_names: ix.class_names.clone(),
        };
        let paths = |i: &FolderIndex| (0..i.len()).map(|k| i.path(k)).collect::<Vec<_>>();
        let by_tag = |d: &Dataset| d.images.iter().map(|&t| ix.path(t as usize)).collect::<Vec<_>>();
        let (t, v) = ix.split_off_validation(4, 9);
        let (dt, dv) = ds.split_off_validation(4, 9);
        assert_eq!((paths(&t), paths(&v)), (by_tag(&dt), by_tag(&dv)));
        assert_eq!(t.labels(), &dt.labels[..]);
        let s = ix.clone().sample(6, Rng::new(2));
        assert_eq!(paths(&s), by_tag(&ds.clone().sample(6, Rng::new(2))));
        assert!(ix.bytes() < 15 * 64 + 512, "{}", ix.bytes());
    }
}
