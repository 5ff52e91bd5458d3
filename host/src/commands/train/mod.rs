//! `hpff train`, the local-training loop: data, plan, arena, epochs, evaluation,
//! checkpoints, metrics and the plot. This file loads the splits (cut by
//! [`crate::data::cut_splits`]) and evaluates; `run.rs` holds one run, opened, trained
//! epoch by epoch and finished.
//!
//! Determinism: parameters are initialised from `Rng::new(seed).fork(INIT_STREAM)`;
//! epoch `e`'s data order and augmentation come from `Rng::new(seed).fork(DATA_STREAM)`
//! forked again by `e` (see [`crate::data::Batches`]); the validation split is drawn
//! from the seed. Everything that changes during training (parameters, BN statistics,
//! momentum) is in the checkpoint, so a resumed run continues bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hpff_core::exec::Executor;
use hpff_core::plan::Plan;

use crate::checkpoint;
use crate::config::{Config, Settings, Shape};
use crate::data::{self, cut_splits, Augment, Data, Dataset, Normalize, Source, Split, SplitRules};
use crate::device::{self, Snapshot};
use crate::dist::{self, Comm, Shard};
use crate::error::{Error, Result};
use crate::metrics::{EpochMetrics, EvalResult};

mod run;
mod sink;

pub use run::{train_on, Trainer};
pub use sink::{Console, Record, RunFolder, Sink, Sinks};

/// Stream of the parameter initialisation.
pub const INIT_STREAM: u64 = 1;
/// Stream of data order and augmentation.
pub const DATA_STREAM: u64 = 2;

/// Loads the splits `cfg` (completed) asks for: decoded into memory, or indexed for
/// streaming with `--stream SIZE`.
pub fn load_data(cfg: &Settings) -> Result<Data> {
    let kind = cfg.dataset.kind();
    let dir = cfg.data_dir.as_deref();
    let data = match cfg.stream {
        None => {
            cut_splits(&rules(cfg), data::load(kind, dir, Split::Train)?, data::load(kind, dir, Split::Test), |d| {
                Source::Memory(Arc::new(d))
            })
        }
        Some(size) => {
            let dir = match (kind, dir) {
                (data::DatasetKind::Folder, Some(d)) => d,
                _ => return Err(Error::msg("--stream reads an image folder: give --dataset folder --data-dir DIR")),
            };
            if size == 0 {
                return Err(Error::msg("--stream SIZE must be at least 1"));
            }
            let workers = cfg.threads;
            cut_splits(&rules(cfg), data::index(dir, Split::Train)?, data::index(dir, Split::Test), |ix| {
                Source::Stream(data::StreamSet::imagenet(ix, size, workers))
            })
        }
    }?;
    // Every process of a job reads the data; one says so.
    if data.final_name == "val" && data.test.is_none() && dist::world().rank() == 0 {
        eprintln!("note: no test split found; the final accuracy is measured on the validation split");
    }
    Ok(data)
}

/// The `--val-split` and `--limit-*` rules of `cfg`.
fn rules(cfg: &Settings) -> SplitRules {
    SplitRules { val_split: cfg.val_split, limit_train: cfg.limit_train, limit_test: cfg.limit_test, seed: cfg.seed }
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
    let mut sums = score(exec, plan, src, norm, shard, true)?;
    comm.sum_f64(&mut sums);
    let [correct, loss, n] = sums;
    Ok(EvalResult { accuracy: correct / n.max(1.0), loss: loss / n.max(1.0), images: n as usize })
}

/// Correct predictions, summed cross-entropy and images of an eval pass over `shard` of
/// `src`; with `counts` false (a pipeline stage below the top, which computes no logits)
/// the pass runs and counts nothing.
pub(crate) fn score<E: Executor + ?Sized>(
    exec: &mut E,
    plan: &Plan,
    src: &Source,
    norm: &Normalize,
    shard: Shard,
    counts: bool,
) -> Result<[f64; 3]>
where
    Error: From<E::Error>,
{
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
        if !counts {
            continue;
        }
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
    Ok([correct as f64, loss, n as f64])
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

#[cfg(test)]
mod tests {
    use hpff_core::exec::{Region, StepInput};
    use hpff_core::rng::Rng;

    use super::run::guarded_step;
    use super::*;
    use crate::config::NonFinite;
    use crate::config::{DatasetName, MethodName};
    use crate::metrics::{self, LossMeter};

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
