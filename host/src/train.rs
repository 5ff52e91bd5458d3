//! The local-training loop: data, plan, arena, epochs, evaluation, checkpoints,
//! metrics and the plot.
//!
//! Determinism: parameters are initialised from `Rng::new(seed).fork(INIT_STREAM)`;
//! epoch `e`'s data order and augmentation come from `Rng::new(seed).fork(DATA_STREAM)`
//! forked again by `e` (see [`crate::data::Batches`]); the validation split is drawn
//! from the seed. Everything that changes during training (parameters, BN statistics,
//! momentum) is in the checkpoint, so a resumed run continues bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hpff_core::exec::{Executor, Region, StepInput};
use hpff_core::plan::{Plan, TensorKind};
use hpff_core::rng::Rng;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{self, Meta, TensorFile};
use crate::config::{Config, NonFinite, Settings, Setup, Shape};
use crate::data::{self, Augment, Dataset, Normalize, Source, Split};
use crate::device::{self, DynExecutor, ExecOptions, Snapshot};
use crate::dist::{self, Comm, Shard};
use crate::error::{io_err, Error, Result};
use crate::metrics::{self, EpochMetrics, EvalResult, LossMeter};
use crate::plot;
use crate::resources::fmt_mib;

/// Stream of the parameter initialisation.
pub const INIT_STREAM: u64 = 1;
/// Stream of data order and augmentation.
pub const DATA_STREAM: u64 = 2;
/// RNG stream of the `--limit-train`/`--limit-test` subsets (`hpff eval` uses it too).
pub const LIMIT_STREAM: u64 = 3;

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
trait Cut: Sized {
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

impl Cut for data::FolderIndex {
    fn count(&self) -> usize {
        self.len()
    }
    fn split_off_validation(&self, n: usize, seed: u64) -> (Self, Self) {
        data::FolderIndex::split_off_validation(self, n, seed)
    }
    fn sample(self, n: usize, rng: Rng) -> Self {
        data::FolderIndex::sample(self, n, rng)
    }
}

/// Loads the splits `cfg` (completed) asks for: decoded into memory, or indexed for
/// streaming with `--stream SIZE`.
pub fn load_data(cfg: &Settings) -> Result<Data> {
    let kind = cfg.dataset.kind();
    let dir = cfg.data_dir.as_deref();
    match cfg.stream {
        None => cut_splits(cfg, data::load(kind, dir, Split::Train)?, data::load(kind, dir, Split::Test), |d| {
            Source::Memory(Arc::new(d))
        }),
        Some(size) => {
            let dir = match (kind, dir) {
                (data::DatasetKind::Folder, Some(d)) => d,
                _ => return Err(Error::msg("--stream reads an image folder: give --dataset folder --data-dir DIR")),
            };
            if size == 0 {
                return Err(Error::msg("--stream SIZE must be at least 1"));
            }
            let workers = cfg.threads;
            cut_splits(cfg, data::index(dir, Split::Train)?, data::index(dir, Split::Test), |ix| {
                Source::Stream(data::StreamSet::imagenet(ix, size, workers))
            })
        }
    }
}

/// The training, evaluation and test splits of `train` and `test` (`--val-split`,
/// `--limit-*`), wrapped by `wrap`.
fn cut_splits<T: Cut>(
    cfg: &Settings,
    train: T,
    test: std::result::Result<T, data::DataError>,
    wrap: impl Fn(T) -> Source,
) -> Result<Data> {
    let val_split = cfg.val_split;
    let test = match test {
        Ok(t) => Some(t),
        Err(data::DataError::Missing { .. }) if val_split > 0 => {
            eprintln!("note: no test split found; the final accuracy is measured on the validation split");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let seed = cfg.seed;
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
                train: wrap(limit(tr, cfg.limit_train)),
                eval: wrap(limit(val, cfg.limit_test)),
                eval_name: "val",
                final_name: if test.is_some() { "test" } else { "val" },
                test: test.map(|t| wrap(limit(t, cfg.limit_test))),
            }
        }
        _ => Data {
            train: wrap(limit(train, cfg.limit_train)),
            eval: wrap(limit(test.ok_or_else(|| Error::msg("internal: test split missing"))?, cfg.limit_test)),
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

/// The training augmentation `cfg` asks for.
pub fn augment_of(cfg: &Settings) -> Option<Augment> {
    if !cfg.augment {
        return None;
    }
    cfg.dataset.kind().default_augment()
}

/// The network's input shape for training on `train` (after augmentation, or the
/// streamed size) and evaluating on `evals`; errors if they disagree or the images are
/// not square.
pub fn data_shape(train: &Source, aug: Option<&Augment>, evals: &[&Source]) -> Result<Shape> {
    let dims = |s: &Source, aug: Option<&Augment>| match s {
        Source::Memory(d) => data::batch_image_shape(d, aug),
        Source::Stream(st) => (3, st.size, st.size),
    };
    let (c, h, w) = dims(train, aug);
    if h != w {
        return Err(Error::msg(format!("images are {h}×{w}; hpff's ResNets need square images")));
    }
    let names = train.class_names();
    for e in evals {
        let (ec, eh, ew) = dims(e, None);
        if (ec, eh, ew) != (c, h, w) {
            return Err(Error::msg(format!("test images are {ec}×{eh}×{ew} but training images are {c}×{h}×{w}")));
        }
        let enames = e.class_names();
        if enames.len() != names.len() {
            return Err(Error::msg(format!(
                "the test split has {} classes, the training split {}",
                enames.len(),
                names.len()
            )));
        }
        // Same count is not enough: label i must mean the same class in both splits.
        if let Some(i) = (0..names.len()).find(|&i| enames.get(i) != names.get(i)) {
            return Err(Error::msg(format!(
                "class {i} is {:?} in the training split but {:?} in the test split; the two splits must have the same class folders",
                names[i], enames[i]
            )));
        }
    }
    Ok(Shape { c, image: h, classes: names.len() })
}

/// Accuracy and mean cross-entropy of the network in `exec` on `ds`. The last batch
/// is padded with zeros (eval BN uses running statistics, so padding does not change
/// the real samples' outputs) and only real samples count.
pub fn evaluate<E: Executor + ?Sized>(
    exec: &mut E,
    plan: &Plan,
    ds: &Arc<Dataset>,
    norm: &Normalize,
) -> Result<EvalResult>
where
    Error: From<E::Error>,
{
    evaluate_source(exec, plan, &Source::Memory(ds.clone()), norm)
}

/// [`evaluate`] on a [`Source`] (in memory or streamed).
pub fn evaluate_source<E: Executor + ?Sized>(
    exec: &mut E,
    plan: &Plan,
    src: &Source,
    norm: &Normalize,
) -> Result<EvalResult>
where
    Error: From<E::Error>,
{
    evaluate_over(exec, plan, src, norm, &dist::Solo)
}

/// [`evaluate_source`] split over `comm`'s processes: each evaluates its [`Shard`] of the
/// images (every image once over all), and the counts and loss sums are added up, so
/// every process returns the whole split's result.
pub fn evaluate_over<E: Executor + ?Sized>(
    exec: &mut E,
    plan: &Plan,
    src: &Source,
    norm: &Normalize,
    comm: &dyn Comm,
) -> Result<EvalResult>
where
    Error: From<E::Error>,
{
    let shard = Shard { rank: comm.rank(), world: comm.size() };
    let b = plan.batch;
    let classes = plan.arch.classes;
    let (mut correct, mut loss, mut n) = (0usize, 0f64, 0usize);
    let mut x = vec![0f32; plan.input().len];
    let mut logits = vec![0f32; plan.logits().len];
    for batch in src.eval_epoch(b, norm, shard) {
        let batch = batch?;
        x[..batch.x.len()].copy_from_slice(&batch.x);
        x[batch.x.len()..].fill(0.0);
        exec.eval_step(plan, &x, &mut logits)?;
        for (i, &y) in batch.y.iter().enumerate() {
            let row = &logits[i * classes..(i + 1) * classes];
            let (arg, max) = row.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |(a, m), (j, &v)| {
                    if v > m {
                        (j, v)
                    } else {
                        (a, m)
                    }
                },
            );
            let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
            loss += lse - row[y as usize] as f64;
            correct += usize::from(arg == y as usize);
        }
        n += batch.n;
    }
    let mut sums = [correct as f64, loss, n as f64];
    comm.sum_f64(&mut sums);
    let [correct, loss, n] = sums;
    Ok(EvalResult { accuracy: correct / n.max(1.0), loss: loss / n.max(1.0), images: n as usize })
}

/// What a run does besides its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from this checkpoint (folder, JSON or tensor file).
    pub resume: Option<PathBuf>,
    /// Stop once this epoch is complete (the schedule still spans the configured epochs).
    pub stop_after: Option<u32>,
    /// No progress bar and no per-epoch lines.
    pub quiet: bool,
    /// Refuse a plan whose activation peak exceeds this many bytes.
    pub memory_limit: Option<usize>,
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub epochs_done: u32,
    pub finished: bool,
    /// Test result at the end (when the run finished).
    pub test: Option<EvalResult>,
    pub metrics: Vec<EpochMetrics>,
    pub wall_s: f64,
    pub arena_bytes: usize,
    pub peak_rss: Option<u64>,
    pub out: PathBuf,
    /// The final parameters, BN statistics and momentum.
    pub snapshot: Snapshot,
    /// The gradients of the last step.
    pub grads: Vec<f32>,
    pub plan: Plan,
}

/// Loads the data and trains; see [`train_on`].
pub fn train(cli: &Config, opts: &RunOptions) -> Result<Outcome> {
    let resumed = match &opts.resume {
        Some(p) => Some(checkpoint::load(p)?),
        None => None,
    };
    let cfg = match &resumed {
        Some(l) => {
            let mut c = l.meta.config.merge(cli);
            if cli.out.is_none() {
                c.out = Some(l.json_path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf));
            }
            c
        }
        None => cli.clone(),
    };
    // Say what is missing before spending time on the data.
    if let device::Device::Cuda(n) = cfg.settings().device {
        device::cuda_device(n)?;
    }
    let data = load_data(&cfg.settings())?;
    train_on(&cfg, data, resumed, opts)
}

fn say(opts: &RunOptions, s: impl AsRef<str>) {
    if !opts.quiet {
        println!("{}", s.as_ref());
    }
}

/// Trains with config `cfg` (completed with the defaults) on `data`, from scratch or from `resumed`.
///
/// Under mpirun every process calls this with the same arguments ([`crate::dist`]): each
/// trains on its shard of every global batch, with its module gradients averaged over
/// the processes; rank 0 alone prints and writes.
pub fn train_on(cfg: &Config, data: Data, resumed: Option<checkpoint::Loaded>, opts: &RunOptions) -> Result<Outcome> {
    let t0 = Instant::now();
    let comm = dist::world();
    let lead = comm.rank() == 0;
    let opts = &RunOptions { quiet: opts.quiet || !lead, ..opts.clone() };
    let shard = Shard { rank: comm.rank(), world: comm.size() };
    let cfg = cfg.settings();
    let aug = augment_of(&cfg);
    let mut evals = vec![&data.eval];
    if let Some(t) = &data.test {
        evals.push(t);
    }
    let shape = data_shape(&data.train, aug.as_ref(), &evals)?;
    let setup: Setup = cfg.setup(shape)?;
    let out = cfg.out.clone();
    let batch = dist::local_batch(setup.batch, comm)?;
    let plan = setup.plan(batch)?;
    if let Some(limit) = opts.memory_limit {
        crate::budget::check_fits(&setup, &plan, limit)?;
    }
    let tail_n = shard.len(data.train.len()) % batch;
    // The last partial batch (the reference's DataLoader keeps it) runs on a plan of
    // its own size; parameter offsets do not depend on the batch, so the arena is shared.
    let tail = if tail_n > 0 { Some(setup.plan(tail_n)?) } else { None };
    let seed = cfg.seed;
    let epochs = cfg.epochs;
    let eval_every = cfg.eval_every;
    let device = cfg.device;
    let exec_opts = ExecOptions { threads: cfg.threads, tf32: cfg.tf32, comm: Some(comm), sync_bn: cfg.sync_bn };
    let mut exec: DynExecutor = device::open(device, &plan, exec_opts)?;
    let data_rng = Rng::new(seed).fork(DATA_STREAM);
    let mut meta = Meta {
        hpff_version: env!("CARGO_PKG_VERSION").into(),
        config: cfg.to_config(),
        shape,
        epoch: 0,
        global_step: 0,
        seed,
        data_rng: data_rng.state(),
        metrics: Vec::new(),
        best_accuracy: None,
        test: None,
        elapsed_s: 0.0,
        tensors: TensorFile { file: String::new(), bytes: 0, sha256: String::new() },
    };
    match &resumed {
        Some(l) => {
            if l.meta.seed != seed {
                return Err(Error::msg(format!(
                    "--seed {seed} differs from the checkpoint's {}; a resumed run keeps its seed",
                    l.meta.seed
                )));
            }
            if l.meta.shape != shape {
                return Err(Error::msg(format!(
                    "the data's shape {:?} differs from the checkpoint's {:?}",
                    shape, l.meta.shape
                )));
            }
            l.restore(&plan, true)?.upload(&mut *exec)?;
            meta.epoch = l.meta.epoch;
            meta.global_step = l.meta.global_step;
            meta.metrics = l.meta.metrics.clone();
            meta.best_accuracy = l.meta.best_accuracy;
            meta.elapsed_s = l.meta.elapsed_s;
        }
        None => Snapshot::init(&plan, &mut Rng::new(seed).fork(INIT_STREAM)).upload(&mut *exec)?,
    }
    if comm.size() > 1 {
        dist::check_same(comm, "configuration, data or hpff binary", &run_digest(&meta, &data))?;
    }
    let cfg_path = out.join("config.toml");
    // Held until this function returns: the run folder belongs to this run.
    let _lock = if lead { Some(prepare_out(&out, &plan, &cfg_path, &meta)?) } else { None };

    let mem = plan.memory();
    say(opts, format!("hpff {} — config (saved in {}):", env!("CARGO_PKG_VERSION"), cfg_path.display()));
    if !opts.quiet {
        for l in meta.config.to_toml().lines() {
            println!("  {l}");
        }
    }
    say(
        opts,
        format!(
            "data: {} train / {} {} images, {}×{}×{}, {} classes; augmentation {}",
            data.train.len(),
            data.eval.len(),
            data.eval_name,
            shape.c,
            shape.image,
            shape.image,
            shape.classes,
            match (&data.train, aug.as_ref()) {
                (Source::Stream(s), Some(_)) => format!(
                    "RandomResizedCrop({0}, scale=(0.08, 1), ratio=(3/4, 4/3)) + flip; evaluation resize {1} + centre crop {0}",
                    s.size,
                    data::transform::eval_resize(s.size)
                ),
                (Source::Stream(s), None) =>
                    format!("off (resize {1} + centre crop {0})", s.size, data::transform::eval_resize(s.size)),
                (Source::Memory(_), a) => a.map_or("off".to_string(), |a| format!(
                    "pad {}{} crop {} flip {}",
                    a.pad,
                    if a.reflect { " (reflect)" } else { "" },
                    a.crop,
                    a.flip
                )),
            }
        ),
    );
    say(
        opts,
        format!(
            "model: {} {}; arena {} planned; executor: {exec}",
            setup.arch.name(),
            setup.method_line(),
            fmt_mib(Some(mem.total() as u64)),
        ),
    );
    say(opts, format!("schedule: {}", setup.schedule_line()));
    if comm.size() > 1 {
        let n = data.train.len();
        say(
            opts,
            format!(
                "processes: {} (MPI); each takes {batch} of every batch of {} and {} of the epoch's {n} training images{}; gradients averaged over the processes before each module's update; BN statistics {}",
                comm.size(),
                setup.batch,
                shard.len(n),
                match shard.padding(n) {
                    0 => String::new(),
                    p => format!(" (padded with {p} repeated image{} to equal shards)", if p == 1 { "" } else { "s" }),
                },
                if cfg.sync_bn { "over the whole batch (--sync-bn)" } else { "per process (--sync-bn: over the whole batch)" },
            ),
        );
    }
    if let Some(l) = &resumed {
        say(
            opts,
            format!(
                "resumed from {} after epoch {} (step {})",
                l.json_path.display(),
                l.meta.epoch,
                l.meta.global_step
            ),
        );
    }

    let stop = opts.stop_after.unwrap_or(epochs).min(epochs);
    if let Source::Stream(s) = &data.train {
        let o = data::StreamOptions::train(batch, s.workers);
        say(
            opts,
            format!(
                "stream: {} decoding threads, {} batches prepared ahead; memory bound (depth + 1) × batch × (3·S²·4 + 4) + threads × (F + 6·P + 12·H·S + 12·S²) + index = {} + {} × decode buffers + index {} (S = {}; F, P, H: the largest file's bytes, image's pixels and rows)",
                s.workers,
                o.depth,
                fmt_mib(Some(s.bound_for(&o, 0, 0, 0).batches as u64)),
                s.workers,
                fmt_mib(Some(s.index.bytes() as u64)),
                s.size,
            ),
        );
    }
    let mut losses = vec![0f32; plan.loss_slots()];
    let mut grads = vec![0f32; plan.params];
    let on_nonfinite = cfg.on_nonfinite;
    let start_epoch = meta.epoch;
    for epoch in start_epoch + 1..=stop {
        let te = Instant::now();
        let mut batches = data.train.train_epoch(batch, aug.as_ref(), &setup.normalize, &data_rng, epoch as u64, shard);
        let steps = batches.len();
        let pb = progress(opts.quiet, steps as u64, epoch, epochs);
        let mut meter = LossMeter::new(&plan).with_curve(steps);
        let mut skipped = 0usize;
        let lr0 = setup.lr(epoch, 0, steps);
        let mut i = 0;
        while let Some(b) = batches.next() {
            let b = b.inspect_err(|_| pb.finish_and_clear())?;
            let lr = setup.lr(epoch, i, steps);
            let p = if b.n == batch {
                &plan
            } else {
                tail.as_ref()
                    .filter(|t| t.batch == b.n)
                    .ok_or_else(|| Error::msg("internal: no plan for a partial batch"))?
            };
            let input = StepInput { x: &b.x, labels: &b.y, lr, sgd: setup.sgd };
            match guarded_step(&mut *exec, p, &input, &mut losses, &mut grads, &meter, on_nonfinite, comm)? {
                None => meter.add_at(&losses, b.n * comm.size(), i),
                Some(fault) if on_nonfinite == NonFinite::Skip => {
                    skipped += 1;
                    if !opts.quiet {
                        pb.suspend(|| {
                            eprintln!(
                                "warning: step {} (epoch {epoch}) undone and skipped: {fault}",
                                meta.global_step + 1
                            )
                        });
                    }
                }
                Some(fault) => {
                    pb.finish_and_clear();
                    return Err(Error::msg(format!(
                        "{fault} at step {} (epoch {epoch}, lr {lr}); training stopped, the last checkpoint (epoch {}) is kept; lower --lr, or --on-nonfinite skip to undo such steps",
                        meta.global_step + 1,
                        meta.epoch
                    )));
                }
            }
            meta.global_step += 1;
            let f = meter.final_mean();
            pb.inc(1);
            let mut status =
                format!("{:.0} img/s  loss {:.4}", meter.images() as f64 / te.elapsed().as_secs_f64().max(1e-9), f);
            if let Some(w) = batches.waited() {
                // Streaming: the share of the epoch spent waiting for decoded batches.
                status.push_str(&format!(
                    "  data wait {:.0}%",
                    100.0 * w.as_secs_f64() / te.elapsed().as_secs_f64().max(1e-9)
                ));
            }
            // A log file gets no progress bar: a plain line every tenth of the epoch instead.
            if !opts.quiet && pb.is_hidden() && (i + 1) % steps.div_ceil(10).max(1) == 0 && i + 1 < steps {
                eprintln!("epoch {epoch}/{epochs}  step {}/{steps}  {status}", i + 1);
            }
            pb.set_message(status);
            i += 1;
        }
        pb.finish_and_clear();
        if let Source::Stream(s) = &data.train {
            say(
                opts,
                format!(
                    "stream memory bound at the largest image so far: {}",
                    s.bound(&data::StreamOptions::train(batch, s.workers))
                ),
            );
        }
        if skipped == steps {
            return Err(Error::msg(format!(
                "every step of epoch {epoch} had a NaN or infinite loss or gradient and was skipped; lower --lr"
            )));
        }
        let train_s = te.elapsed().as_secs_f64();
        share_bn_state(&mut *exec, comm)?;
        let ev = if epoch % eval_every == 0 || epoch == epochs {
            Some(evaluate_over(&mut *exec, &plan, &data.eval, &setup.normalize, comm)?)
        } else {
            None
        };
        if let Some(e) = ev {
            if meta.best_accuracy.is_none_or(|b| e.accuracy > b) {
                meta.best_accuracy = Some(e.accuracy);
            }
        }
        let epoch_s = te.elapsed().as_secs_f64();
        let rec = EpochMetrics {
            epoch,
            lr: lr0,
            train_loss: meter.final_mean(),
            losses: meter.by_kind(),
            eval_split: ev.map(|_| data.eval_name.to_string()),
            eval_accuracy: ev.map(|e| e.accuracy),
            eval_loss: ev.map(|e| e.loss),
            train_images: meter.images(),
            steps,
            skipped_steps: skipped,
            images_per_s: meter.images() as f64 / train_s.max(1e-9),
            epoch_s,
            elapsed_s: meta.elapsed_s + t0.elapsed().as_secs_f64(),
            train_loss_curve: meter.curve(),
        };
        say(opts, epoch_line(&rec, epochs));
        meta.metrics.push(rec);
        meta.epoch = epoch;
        if lead {
            let mut m = meta.clone();
            m.elapsed_s = meta.elapsed_s + t0.elapsed().as_secs_f64();
            write_outputs(&out, &plan, &Snapshot::download(&mut *exec)?, &mut m, data.eval_name)?;
        }
    }

    let finished = meta.epoch >= epochs;
    let mut test = None;
    if finished {
        test = Some(match (&data.test, meta.metrics.last()) {
            (None, Some(r)) if r.epoch == epochs && r.eval_accuracy.is_some() => EvalResult {
                accuracy: r.eval_accuracy.unwrap_or(0.0),
                loss: r.eval_loss.unwrap_or(0.0),
                images: data.eval.len(),
            },
            (Some(t), _) => evaluate_over(&mut *exec, &plan, t, &setup.normalize, comm)?,
            (None, _) => evaluate_over(&mut *exec, &plan, &data.eval, &setup.normalize, comm)?,
        });
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let peak = metrics::peak_rss_bytes();
    meta.test = test;
    meta.elapsed_s += wall_s;
    let snapshot = Snapshot::download(&mut *exec)?;
    exec.download(Region::Grads, 0, &mut grads)?;
    if lead {
        write_outputs(&out, &plan, &snapshot, &mut meta, data.eval_name)?;
    }
    let summary = serde_json::json!({
        "finished": finished,
        "epochs": meta.epoch,
        "final_split": data.final_name,
        "test_accuracy": test.map(|t| t.accuracy),
        "test_loss": test.map(|t| t.loss),
        "test_images": test.map(|t| t.images),
        "best_eval_accuracy": meta.best_accuracy,
        "wall_s": wall_s,
        "arena_bytes": mem.total(),
        "device": exec.to_string(),
        "executor_extra_bytes": exec.held().extra,
        "peak_rss_bytes": peak,
    });
    if lead {
        let sp = out.join("summary.json");
        crate::files::write_atomic(&sp, &serde_json::to_vec_pretty(&summary).expect("json"))?;
    }
    let mem_line = format!("arena {} planned, peak RSS {}", fmt_mib(Some(mem.total() as u64)), fmt_mib(peak));
    match test {
        Some(t) => say(
            opts,
            format!(
                "done: {} accuracy {:.2}% (loss {:.4}, {} images); wall {:.1} s; {mem_line}; outputs in {}",
                data.final_name,
                100.0 * t.accuracy,
                t.loss,
                t.images,
                wall_s,
                out.display()
            ),
        ),
        None => say(
            opts,
            format!(
                "stopped after epoch {} of {epochs}; wall {:.1} s; {mem_line}; continue with --resume {}",
                meta.epoch,
                wall_s,
                out.display()
            ),
        ),
    }
    Ok(Outcome {
        epochs_done: meta.epoch,
        finished,
        test,
        metrics: meta.metrics,
        wall_s,
        arena_bytes: mem.total(),
        peak_rss: peak,
        out,
        snapshot,
        grads,
        plan,
    })
}

/// Creates the output folder, takes its lock (one run at a time), checks it has room for
/// checkpoints, and writes `config.toml`.
fn prepare_out(out: &Path, plan: &Plan, cfg_path: &Path, meta: &Meta) -> Result<crate::files::RunLock> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, "create the output folder", e))?;
    let lock = crate::files::lock_run(out)?;
    // Room for two checkpoints (the committed one stays until the next is in place):
    // known now, so said now rather than after the first epoch's work.
    let ckpt = checkpoint::bytes_bound(plan);
    if let Some(free) = crate::files::free_bytes(out).filter(|&f| f < 2 * ckpt) {
        return Err(Error::msg(format!(
            "{}: {} free, but checkpoints need {} (two while one replaces the other); free space or choose another --out",
            out.display(),
            fmt_mib(Some(free)),
            fmt_mib(Some(2 * ckpt))
        )));
    }
    crate::files::write_atomic(cfg_path, meta.config.to_toml().as_bytes())?;
    Ok(lock)
}

/// What every process of a job must share: the configuration, the data's sizes, classes
/// and labels, and the hpff binary itself.
fn run_digest(meta: &Meta, data: &Data) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(meta.config.to_toml());
    h.update(format!("{:?}", meta.shape));
    for s in [Some(&data.train), Some(&data.eval), data.test.as_ref()].into_iter().flatten() {
        h.update(s.len().to_le_bytes());
        h.update(s.class_names().join("\n"));
        if let Source::Memory(d) = s {
            h.update(d.labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>());
        }
    }
    if let Ok(bin) = std::env::current_exe().and_then(std::fs::read) {
        h.update(bin);
    }
    h.finalize().into()
}

/// Rank 0's BN running statistics on every process (as DDP broadcasts its buffers), so
/// that evaluation and checkpoints see one model; a no-op alone.
fn share_bn_state(exec: &mut dyn Executor<Error = Error>, comm: &dyn Comm) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut state = vec![0f32; exec.layout().state];
    exec.download(Region::BnState, 0, &mut state)?;
    comm.broadcast_f32(&mut state);
    exec.upload(Region::BnState, 0, &state)
}

/// The checkpoint first (its commit is the point a run can resume from), then the
/// metrics and plot derived from the same records; each file is replaced atomically, so
/// after a crash `metrics.jsonl` never holds an epoch the checkpoint lacks (and a
/// resumed run rewrites it from the checkpoint's records).
fn write_outputs(out: &Path, plan: &Plan, model: &Snapshot, meta: &mut Meta, eval_name: &str) -> Result<()> {
    checkpoint::save(out, plan, model, meta)?;
    metrics::write_jsonl(&out.join("metrics.jsonl"), &meta.metrics)?;
    plot::save(&out.join("curves.png"), &meta.metrics, eval_name)
}

/// One training step, checked: `None` if its losses and gradients are finite, else what
/// is not. Under [`NonFinite::Skip`] a faulty step is undone (parameters, momentum and BN
/// statistics restored from a copy taken before it).
fn guarded_step<E: Executor + ?Sized>(
    exec: &mut E,
    plan: &Plan,
    input: &StepInput,
    losses: &mut [f32],
    grads: &mut [f32],
    meter: &LossMeter,
    policy: NonFinite,
    comm: &dyn Comm,
) -> Result<Option<String>>
where
    Error: From<E::Error>,
{
    let before = if policy == NonFinite::Skip { Some(Snapshot::download(exec)?) } else { None };
    exec.train_step(plan, input, losses)?;
    // The job's mean losses (and non-finite flag), so every process decides alike.
    dist::average(comm, &mut losses[..plan.loss_slots()]);
    let fault = match meter.nonfinite(losses) {
        // Modules are numbered from 0, as `hpff plan` lists them.
        Some((module, kind, v)) => Some(format!("the {} loss of module {module} is {v}", kind.name())),
        // The step's own flag (`Op::CheckGrads`): the gradients come back only to name one.
        None if losses[plan.nonfinite_slot()] != 0.0 => {
            exec.download(Region::Grads, 0, grads)?;
            Some(nonfinite_grad(plan, grads))
        }
        None => None,
    };
    if let (Some(_), Some(s)) = (&fault, before) {
        s.upload(exec)?;
    }
    Ok(fault)
}

/// Which gradient is NaN or infinite (named by its tensor).
fn nonfinite_grad(plan: &Plan, grads: &[f32]) -> String {
    let Some(i) = grads.iter().position(|g| !g.is_finite()) else {
        return "a gradient is NaN or infinite".into();
    };
    let mut name = None;
    plan.for_each_tensor(|t| {
        if t.kind == TensorKind::Param && (t.off..t.off + t.len).contains(&i) {
            name = Some(t.name.to_string());
        }
    });
    format!("the gradient of {} is {}", name.as_deref().unwrap_or("a parameter"), grads[i])
}

fn progress(quiet: bool, steps: u64, epoch: u32, epochs: u32) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    if let Ok(s) = ProgressStyle::with_template("{prefix} [{bar:30}] step {pos}/{len} {msg} ({elapsed}, eta {eta})") {
        pb.set_style(s.progress_chars("=> "));
    }
    pb.set_prefix(format!("epoch {epoch}/{epochs}"));
    pb
}

fn epoch_line(r: &EpochMetrics, epochs: u32) -> String {
    let mut s = format!("epoch {}/{epochs}  lr {:.4}  train loss {:.4}", r.epoch, r.lr, r.train_loss);
    for (k, v) in &r.losses {
        let vals: Vec<String> = v.iter().flatten().map(|x| format!("{x:.3}")).collect();
        s.push_str(&format!("  {k} [{}]", vals.join(" ")));
    }
    if let (Some(split), Some(a), Some(l)) = (&r.eval_split, r.eval_accuracy, r.eval_loss) {
        s.push_str(&format!("  {split} acc {:.2}% loss {:.4}", 100.0 * a, l));
    }
    s.push_str(&format!("  {:.0} img/s  {:.1} s (total {:.1} s)", r.images_per_s, r.epoch_s, r.elapsed_s));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatasetName, MethodName};

    fn toy(n: usize, seed: u64) -> Dataset {
        let mut r = Rng::new(seed);
        let (c, h, w) = (1, 16, 16);
        let labels: Vec<u16> = (0..n).map(|_| r.below(4) as u16).collect();
        // Class-dependent brightness so there is something to learn.
        let images = labels
            .iter()
            .flat_map(|&l| {
                let base = 40 * l as u64;
                (0..c * h * w).map(|_| (base + r.below(90)) as u8).collect::<Vec<_>>()
            })
            .collect();
        Dataset { images, labels, n, c, h, w, classes: 4, class_names: (0..4).map(|i| i.to_string()).collect() }
    }

    fn data() -> Data {
        Data {
            train: Arc::new(toy(40, 1)).into(),
            eval: Arc::new(toy(12, 2)).into(),
            eval_name: "test",
            test: None,
            final_name: "test",
        }
    }

    fn cfg(out: &Path, method: MethodName, hpff: bool) -> Config {
        Config {
            dataset: Some(DatasetName::Cifar10), // reflect-pad + crop 32 → use no augment below
            augment: Some(true),
            arch: Some("resnet8".into()),
            method: Some(method),
            hpff: Some(hpff),
            k: Some(3),
            epochs: Some(2),
            batch_size: Some(16),
            lr: Some(0.05),
            threads: Some(2),
            out: Some(out.to_path_buf()),
            ..Config::default()
        }
    }

    #[test]
    fn resume_is_bit_identical_to_a_straight_run() {
        for (method, hpff) in [(MethodName::Infopro, true), (MethodName::E2e, false)] {
            let d1 = tempfile::tempdir().unwrap();
            let d2 = tempfile::tempdir().unwrap();
            let quiet = RunOptions { quiet: true, ..RunOptions::default() };
            // Folder-style augmentation: crop to the images' own size, with flips.
            let mut c1 = cfg(d1.path(), method, hpff);
            c1.dataset = Some(DatasetName::Folder);
            let straight = train_on(&c1, data(), None, &quiet).unwrap();
            assert!(straight.finished);
            let mut c2 = c1.clone();
            c2.out = Some(d2.path().to_path_buf());
            let first = train_on(&c2, data(), None, &RunOptions { stop_after: Some(1), ..quiet.clone() }).unwrap();
            assert!(!first.finished && first.test.is_none());
            let l = checkpoint::load(d2.path()).unwrap();
            assert_eq!(l.meta.epoch, 1);
            let resumed = train_on(&l.meta.config.clone(), data(), Some(l), &quiet).unwrap();
            let (a, b) = (&straight, &resumed);
            let pairs = [
                (&a.snapshot.params, &b.snapshot.params),
                (&a.snapshot.state, &b.snapshot.state),
                (&a.snapshot.momentum, &b.snapshot.momentum),
                (&a.grads, &b.grads),
            ];
            let diff: usize = pairs
                .iter()
                .map(|(x, y)| x.iter().zip(y.iter()).filter(|(x, y)| x.to_bits() != y.to_bits()).count())
                .sum();
            assert_eq!(diff, 0, "{method:?}: {diff} floats differ after resume");
            assert_eq!(straight.test, resumed.test);
            assert_eq!(resumed.metrics.len(), 2);
            for (x, y) in straight.metrics.iter().zip(&resumed.metrics) {
                assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits());
                assert_eq!(x.losses, y.losses);
                assert_eq!(x.eval_accuracy, y.eval_accuracy);
            }
            // The outputs are there.
            for f in ["metrics.jsonl", "checkpoint.json", "curves.png", "config.toml", "summary.json"] {
                assert!(d2.path().join(f).exists(), "{f}");
            }
            let lines = std::fs::read_to_string(d2.path().join("metrics.jsonl")).unwrap();
            assert_eq!(lines.lines().count(), 2);
        }
    }

    /// Delegates to the CPU executor, then spoils what `fault` says.
    #[derive(Debug)]
    struct Faulty {
        inner: crate::cpu::CpuExecutor,
        /// NaN into this loss slot, or into this gradient index.
        loss_slot: Option<usize>,
        grad_at: Option<usize>,
    }

    impl std::fmt::Display for Faulty {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "faulty {}", self.inner)
        }
    }

    impl Executor for Faulty {
        type Error = Error;
        fn layout(&self) -> &Plan {
            self.inner.layout()
        }
        fn held(&self) -> hpff_core::exec::Held {
            self.inner.held()
        }
        fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<()> {
            Ok(self.inner.upload(r, offset, src)?)
        }
        fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<()> {
            Ok(self.inner.download(r, offset, dst)?)
        }
        fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<()> {
            self.inner.train_step(plan, input, losses)?;
            if let Some(s) = self.loss_slot {
                losses[s] = f32::NAN;
            }
            if let Some(i) = self.grad_at {
                self.inner.upload(Region::Grads, i, &[f32::INFINITY])?;
                // What the step's own check (`Op::CheckGrads`) reports for such a gradient.
                losses[plan.nonfinite_slot()] = 1.0;
            }
            Ok(())
        }
        fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<()> {
            Ok(self.inner.eval_step(plan, x, logits)?)
        }
    }

    #[test]
    fn nonfinite_steps_are_named_and_undone_when_skipping() {
        let c = cfg(Path::new("unused"), MethodName::Infopro, true);
        let setup = c.setup(Shape { c: 1, image: 16, classes: 4 }).unwrap();
        let plan = setup.plan(8).unwrap();
        let mut exec = Faulty { inner: crate::cpu::CpuExecutor::new(&plan, 2), loss_slot: None, grad_at: None };
        Snapshot::init(&plan, &mut Rng::new(1)).upload(&mut exec).unwrap();
        let ds = toy(8, 3);
        let x: Vec<f32> = ds.images.iter().map(|&p| p as f32 / 255.0).collect();
        let labels: Vec<u32> = ds.labels.iter().map(|&l| l as u32).collect();
        let input = StepInput { x: &x, labels: &labels, lr: 0.05, sgd: setup.sgd };
        let meter = LossMeter::new(&plan);
        let (mut losses, mut grads) = (vec![0f32; plan.loss_slots()], vec![0f32; plan.params]);
        let mut step = |exec: &mut Faulty, policy| {
            let before = Snapshot::download(exec).unwrap();
            let fault =
                guarded_step(exec, &plan, &input, &mut losses, &mut grads, &meter, policy, &dist::Solo).unwrap();
            (fault, before == Snapshot::download(exec).unwrap())
        };
        // A good step counts and changes the model.
        assert_eq!(step(&mut exec, NonFinite::Skip), (None, false));
        // A NaN loss of module 1 (the second), named by module and kind, and undone.
        let kinds = hpff_core::plan::LossKind::ALL;
        let slot = *metrics::used_slots(&plan).iter().find(|&&s| s / kinds.len() == 1).unwrap();
        exec.loss_slot = Some(slot);
        let (fault, unchanged) = step(&mut exec, NonFinite::Skip);
        let want = format!("the {} loss of module 1 is NaN", kinds[slot % kinds.len()].name());
        assert_eq!(fault, Some(want));
        assert!(unchanged, "a skipped step must leave parameters, momentum and BN statistics as they were");
        // Under stop the step is reported (and training stops; the model is not rolled back).
        let (fault, unchanged) = step(&mut exec, NonFinite::Stop);
        assert!(fault.is_some() && !unchanged);
        // An infinite gradient names its tensor.
        exec.loss_slot = None;
        let mut conv1 = None;
        plan.for_each_tensor(|t| {
            if t.name.to_string() == "conv1.weight" {
                conv1 = Some(t.off + 3);
            }
        });
        exec.grad_at = conv1;
        let (fault, unchanged) = step(&mut exec, NonFinite::Skip);
        assert_eq!(fault.as_deref(), Some("the gradient of conv1.weight is inf"));
        assert!(unchanged);
    }

    fn o_plan(c: &Config) -> Plan {
        c.setup(Shape { c: 1, image: 16, classes: 4 }).unwrap().plan(16).unwrap()
    }

    #[test]
    fn a_diverging_run_stops_with_the_step_and_keeps_its_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path(), MethodName::E2e, false);
        c.dataset = Some(DatasetName::Folder);
        let quiet = RunOptions { quiet: true, ..RunOptions::default() };
        train_on(&c, data(), None, &RunOptions { stop_after: Some(1), ..quiet.clone() }).unwrap();
        let good = checkpoint::load(d.path()).unwrap();
        c.lr = Some(1e30);
        let e = train_on(&c, data(), Some(checkpoint::load(d.path()).unwrap()), &quiet).unwrap_err().to_string();
        assert!(
            e.contains(" at step ")
                && e.contains("(epoch 2, lr ")
                && e.contains("the last checkpoint (epoch 1) is kept"),
            "{e}"
        );
        assert!(e.starts_with("the ce loss of module 0 is ") || e.starts_with("the gradient of "), "{e}");
        let after = checkpoint::load(d.path()).unwrap();
        assert_eq!(after.meta, good.meta);
        assert_eq!(after.restore(&o_plan(&c), true).unwrap(), good.restore(&o_plan(&c), true).unwrap());
        // Skipping instead: the faulty steps are undone and counted, the run goes on.
        c.on_nonfinite = Some(NonFinite::Skip);
        let o = train_on(&c, data(), Some(checkpoint::load(d.path()).unwrap()), &quiet).unwrap();
        let r = &o.metrics[1];
        assert!(r.skipped_steps >= 1 && r.skipped_steps < r.steps, "{} of {}", r.skipped_steps, r.steps);
    }

    #[test]
    fn every_method_is_reproducible_across_runs_and_thread_counts() {
        let methods = [
            (MethodName::E2e, false),
            (MethodName::Greedy, false),
            (MethodName::Greedy, true),
            (MethodName::Dgl, false),
            (MethodName::Dgl, true),
            (MethodName::Infopro, false),
            (MethodName::Infopro, true),
        ];
        let quiet = RunOptions { quiet: true, ..RunOptions::default() };
        for (method, hpff) in methods {
            let runs: Vec<Outcome> = [1, 3, 1]
                .into_iter()
                .map(|threads| {
                    let d = tempfile::tempdir().unwrap();
                    let mut c = cfg(d.path(), method, hpff);
                    c.dataset = Some(DatasetName::Folder);
                    c.epochs = Some(1);
                    c.threads = Some(threads);
                    train_on(&c, data(), None, &quiet).unwrap()
                })
                .collect();
            let bits = |o: &Outcome| -> Vec<u32> {
                let s = &o.snapshot;
                s.params.iter().chain(&s.state).chain(&s.momentum).chain(&o.grads).map(|v| v.to_bits()).collect()
            };
            for (i, r) in runs.iter().enumerate().skip(1) {
                let what = format!("{method:?} hpff={hpff}, run {i}");
                assert!(bits(r) == bits(&runs[0]), "{what}: parameters differ");
                assert_eq!(r.test, runs[0].test, "{what}");
                let (a, b) = (&r.metrics[0], &runs[0].metrics[0]);
                assert_eq!(
                    (a.train_loss.to_bits(), &a.losses, a.eval_accuracy),
                    (b.train_loss.to_bits(), &b.losses, b.eval_accuracy),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn partial_batches_and_eval_padding() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path(), MethodName::Dgl, false);
        c.dataset = Some(DatasetName::Folder);
        c.epochs = Some(1);
        c.batch_size = Some(64); // larger than the 40 training images
        let o = train_on(&c, data(), None, &RunOptions { quiet: true, ..RunOptions::default() }).unwrap();
        assert_eq!(o.metrics[0].steps, 1);
        assert_eq!(o.test.unwrap().images, 12);
        // Eval with padding equals eval at the exact batch size.
        let mut exec = crate::cpu::CpuExecutor::new(&o.plan, 1);
        o.snapshot.upload(&mut exec).unwrap();
        let ds = Arc::new(toy(12, 2));
        let norm = DatasetName::Folder.kind().default_normalize();
        let padded = evaluate(&mut exec, &o.plan, &ds, &norm).unwrap();
        let setup = c.setup(Shape { c: 1, image: 16, classes: 4 }).unwrap();
        let exact = setup.plan(12).unwrap();
        let got = evaluate(&mut exec, &exact, &ds, &norm).unwrap();
        assert_eq!(padded, got);
    }
}
