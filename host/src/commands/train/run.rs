//! One training run, step by step: [`Run::open`] (plan, executor, resume, run folder),
//! [`Run::header`] (what the run is, printed once), [`Run::epoch`] (training steps, the
//! evaluation, the checkpoint) and [`Run::finish`] (the final accuracy, the summary).

use std::path::PathBuf;
use std::time::Instant;

use hpff_core::exec::{Executor, Region, StepInput};
use hpff_core::method::Precision;
use hpff_core::plan::{Plan, TensorKind};
use hpff_core::rng::Rng;

use super::sink::{Console, Record, RunFolder, Sink, Sinks};
use super::{augment_of, data_shape, evaluate_over, score, Outcome, RunOptions, DATA_STREAM, INIT_STREAM};
use crate::checkpoint::{self, Meta, TensorFile};
use crate::config::{Config, NonFinite, Settings, Setup};
use crate::data::Data;
use crate::data::{self, Augment, Source};
use crate::device::{self, DynExecutor, ExecOptions, Snapshot};
use crate::dist::{self, Comm, Shard, Solo, StageLink};
use crate::error::{Error, Result};
use crate::metrics::{self, EpochMetrics, EvalResult, LossMeter};
use crate::pipeline::Pipeline;
use crate::resources::fmt_mib;

/// Trains with config `cfg` (completed with the defaults) on `data`, from scratch or from `resumed`.
///
/// Under mpirun every process calls this with the same arguments ([`crate::dist`]): each
/// trains on its shard of every global batch, with its module gradients averaged over
/// the processes; rank 0 alone prints and writes.
pub fn train_on(cfg: &Config, data: Data, resumed: Option<checkpoint::Loaded>, opts: &RunOptions) -> Result<Outcome> {
    let mut run = Trainer::open(cfg, data, resumed.as_ref(), opts)?;
    run.header(resumed.as_ref());
    let stop = opts.stop_after.unwrap_or(run.cfg.epochs).min(run.cfg.epochs);
    for epoch in run.meta.epoch + 1..=stop {
        run.epoch(epoch)?;
    }
    run.finish()
}

/// A run between [`Trainer::open`] and [`Trainer::finish`]: it trains epochs
/// ([`Trainer::epoch`], made of steps) and evaluates ([`Trainer::evaluate`]), and reports
/// everything to its [`Sinks`] (rank 0's only: the others have none).
pub struct Trainer {
    t0: Instant,
    cfg: Settings,
    setup: Setup,
    data: Data,
    aug: Option<Augment>,
    data_rng: Rng,
    comm: &'static dyn Comm,
    shard: Shard,
    /// This process's share of every batch.
    batch: usize,
    /// The step of the whole model; `plan` is this process's part of it.
    full: Plan,
    /// With `--pipeline` under mpirun: the stage (rank) each module trains on.
    pipe: Option<Pipeline>,
    plan: Plan,
    /// The plan of the epoch's last, partial batch (the reference's DataLoader keeps it).
    tail: Option<Plan>,
    exec: DynExecutor,
    meta: Meta,
    out: PathBuf,
    losses: Vec<f32>,
    grads: Vec<f32>,
    /// Where the output goes: on rank 0 the console (unless quiet) and the run folder.
    sinks: Sinks,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("epoch", &self.meta.epoch)
            .field("global_step", &self.meta.global_step)
            .field("executor", &self.exec.to_string())
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Plans the step, opens the executor, loads `resumed` or initialises the model, and
    /// (rank 0) takes and prepares the run folder.
    pub fn open(cfg: &Config, data: Data, resumed: Option<&checkpoint::Loaded>, opts: &RunOptions) -> Result<Trainer> {
        let t0 = Instant::now();
        let comm = dist::world();
        let lead = comm.rank() == 0;
        let cfg = cfg.settings();
        let pipelined = cfg.pipeline && comm.size() > 1;
        check_pipeline_flags(&cfg, pipelined)?;
        // A pipeline's stages all see every image of every batch; data-parallel ranks a shard.
        let shard = if pipelined { Shard::WHOLE } else { Shard { rank: comm.rank(), world: comm.size() } };
        let aug = augment_of(&cfg);
        let mut evals = vec![&data.eval];
        if let Some(t) = &data.test {
            evals.push(t);
        }
        let shape = data_shape(&data.train, aug.as_ref(), &evals)?;
        let setup: Setup = cfg.setup(shape)?;
        let batch = if pipelined { setup.batch } else { dist::local_batch(setup.batch, comm)? };
        if !batch.is_multiple_of(cfg.micro_batches) {
            return Err(Error::msg(format!("--micro-batches {} must divide --batch-size {batch}", cfg.micro_batches)));
        }
        // The executor's plan is a micro-batch's (the whole batch's without micro-batches).
        let per = batch / cfg.micro_batches;
        let full = setup.plan(per)?;
        let pipe =
            if pipelined { Some(Pipeline::for_job(&full, comm, &cfg.stages, cfg.balance, cfg.threads)?) } else { None };
        let part = |p: Plan| match &pipe {
            Some(pp) => pp.stage_plan(&p, comm.rank()),
            None => Ok(p),
        };
        let plan = part(full.clone())?;
        match opts.memory_limit {
            Some(limit) if pipe.is_some() => crate::budget::check_stage_fits(&plan, comm.rank(), limit)?,
            Some(limit) => crate::budget::check_fits(&setup, &plan, limit)?,
            None => {}
        }
        // A partial last batch runs as whole micro-batches and a smaller one. Parameter
        // offsets do not depend on the batch, so that one shares the arena.
        let tail_n = shard.len(data.train.len()) % batch % per;
        let tail = if tail_n > 0 { Some(part(setup.plan(tail_n)?)?) } else { None };
        let exec_opts = ExecOptions {
            threads: cfg.threads,
            tf32: cfg.tf32,
            comm: if pipelined { None } else { Some(comm) },
            sync_bn: cfg.sync_bn,
            link: pipelined.then_some(StageLink { comm }),
        };
        let mut exec: DynExecutor = device::open(cfg.device, &plan, exec_opts)?;
        let data_rng = Rng::new(cfg.seed).fork(DATA_STREAM);
        let mut meta = Meta {
            hpff_version: env!("CARGO_PKG_VERSION").into(),
            config: cfg.to_config(),
            shape,
            epoch: 0,
            global_step: 0,
            seed: cfg.seed,
            data_rng: data_rng.state(),
            metrics: Vec::new(),
            best_accuracy: None,
            test: None,
            elapsed_s: 0.0,
            tensors: TensorFile { file: String::new(), bytes: 0, sha256: String::new() },
        };
        // The whole model is initialised (or loaded) on every rank, drawing the generator in
        // the reference's order; a pipeline stage keeps its part.
        let model = match resumed {
            Some(l) => resume(l, &mut meta, &full)?,
            None => Snapshot::init(&full, &mut Rng::new(cfg.seed).fork(INIT_STREAM)),
        };
        match &pipe {
            Some(p) => p.restrict(&full, comm.rank(), &model)?.upload(&mut *exec)?,
            None => model.upload(&mut *exec)?,
        }
        drop(model);
        if comm.size() > 1 {
            dist::check_same(comm, "configuration, data or hpff binary", &run_digest(&meta, &data))?;
        }
        let out = cfg.out.clone();
        let mut sinks = Sinks::default();
        if lead {
            if !opts.quiet {
                sinks.0.push(Box::new(Console::default()));
            }
            sinks.0.push(Box::new(RunFolder::create(&out, &full, &meta)?));
        }
        let (losses, grads) = (vec![0f32; plan.loss_slots()], vec![0f32; plan.params]);
        Ok(Trainer {
            t0,
            cfg,
            setup,
            data,
            aug,
            data_rng,
            comm,
            shard,
            batch,
            full,
            pipe,
            plan,
            tail,
            exec,
            meta,
            out,
            losses,
            grads,
            sinks,
        })
    }

    fn say(&mut self, s: impl AsRef<str>) {
        self.sinks.line(s.as_ref());
    }

    /// What the run is: config, data, model, schedule, processes, streaming bounds.
    pub fn header(&mut self, resumed: Option<&checkpoint::Loaded>) {
        self.say(format!(
            "hpff {} — config (saved in {}):",
            env!("CARGO_PKG_VERSION"),
            self.out.join("config.toml").display()
        ));
        for l in self.meta.config.to_toml().lines() {
            self.say(format!("  {l}"));
        }
        let (shape, setup, data) = (&self.meta.shape, &self.setup, &self.data);
        let line = format!(
            "data: {} train / {} {} images, {}×{}×{}, {} classes; augmentation {}",
            data.train.len(),
            data.eval.len(),
            data.eval_name,
            shape.c,
            shape.image,
            shape.image,
            shape.classes,
            augmentation_line(&data.train, self.aug.as_ref()),
        );
        let model = format!(
            "model: {} {}; arena {} planned; executor: {}",
            setup.arch.name(),
            setup.method_line(),
            fmt_mib(Some(self.plan.memory().total() as u64)),
            self.exec,
        );
        let schedule = format!("schedule: {}", setup.schedule_line());
        for l in [line, model, schedule] {
            self.say(l);
        }
        let lines = match &self.pipe {
            Some(p) => {
                let mut lines = vec![format!(
                    "pipeline: {} stages (MPI), one per process; every stage reads every batch of {} itself; activations go up, {}",
                    p.stages.len(),
                    self.batch,
                    if self.setup.method.hpff && self.setup.method.levels != hpff_core::method::Levels::Independent {
                        "and at each stage boundary the cascade's input gradient comes down"
                    } else {
                        "nothing comes down"
                    }
                )];
                lines.extend(p.describe(&self.full).unwrap_or_default().into_iter().map(|l| format!("  {l}")));
                lines
            }
            None if self.comm.size() > 1 => vec![self.processes_line()],
            None if self.cfg.pipeline => {
                vec!["pipeline: one process, so one stage (--pipeline takes effect under mpirun)".to_string()]
            }
            None => vec![],
        };
        lines.into_iter().for_each(|l| self.say(l));
        if let Some(l) = resumed {
            self.say(format!(
                "resumed from {} after epoch {} (step {})",
                l.json_path.display(),
                l.meta.epoch,
                l.meta.global_step
            ));
        }
        if let Source::Stream(s) = &self.data.train {
            let o = data::StreamOptions::train(self.batch, s.workers);
            let line = format!(
                "stream: {} decoding threads, {} batches prepared ahead; memory bound (depth + 1) × batch × (3·S²·4 + 4) + threads × (F + 6·P + 12·H·S + 12·S²) + index = {} + {} × decode buffers + index {} (S = {}; F, P, H: the largest file's bytes, image's pixels and rows)",
                s.workers,
                o.depth,
                fmt_mib(Some(s.bound_for(&o, 0, 0, 0).batches as u64)),
                s.workers,
                fmt_mib(Some(s.index.bytes() as u64)),
                s.size,
            );
            self.say(line);
        }
    }

    fn processes_line(&self) -> String {
        let n = self.data.train.len();
        format!(
            "processes: {} (MPI); each takes {} of every batch of {} and {} of the epoch's {n} training images{}; gradients averaged over the processes before each module's update; BN statistics {}",
            self.comm.size(),
            self.batch,
            self.setup.batch,
            self.shard.len(n),
            match self.shard.padding(n) {
                0 => String::new(),
                p => format!(" (padded with {p} repeated image{} to equal shards)", if p == 1 { "" } else { "s" }),
            },
            if self.cfg.sync_bn { "over the whole batch (--sync-bn)" } else { "per process (--sync-bn: over the whole batch)" },
        )
    }

    /// Trains epoch `epoch`, evaluates when due, records it and (rank 0) commits a checkpoint.
    pub fn epoch(&mut self, epoch: u32) -> Result<()> {
        let te = Instant::now();
        let epochs = self.cfg.epochs;
        let (meter, skipped, steps) = self.train_epoch(epoch, te)?;
        if skipped == steps {
            return Err(Error::msg(format!(
                "every step of epoch {epoch} had a NaN or infinite loss or gradient and was skipped; lower --lr"
            )));
        }
        let train_s = te.elapsed().as_secs_f64();
        if self.pipe.is_none() {
            share_bn_state(&mut *self.exec, self.comm)?;
        }
        let ev = if epoch.is_multiple_of(self.cfg.eval_every) || epoch == epochs {
            Some(self.evaluate(false)?)
        } else {
            None
        };
        if let Some(e) = ev {
            if self.meta.best_accuracy.is_none_or(|b| e.accuracy > b) {
                self.meta.best_accuracy = Some(e.accuracy);
            }
        }
        let rec = EpochMetrics {
            epoch,
            lr: self.setup.lr(epoch, 0, steps),
            train_loss: meter.final_mean(),
            losses: meter.by_kind(),
            eval_split: ev.map(|_| self.data.eval_name.to_string()),
            eval_accuracy: ev.map(|e| e.accuracy),
            eval_loss: ev.map(|e| e.loss),
            train_images: meter.images(),
            steps,
            skipped_steps: skipped,
            images_per_s: meter.images() as f64 / train_s.max(1e-9),
            epoch_s: te.elapsed().as_secs_f64(),
            elapsed_s: self.meta.elapsed_s + self.t0.elapsed().as_secs_f64(),
            train_loss_curve: meter.curve(),
        };
        self.say(epoch_line(&rec, epochs));
        self.meta.metrics.push(rec);
        self.meta.epoch = epoch;
        let model = self.whole_model()?;
        if let Some(model) = model.filter(|_| !self.sinks.is_empty()) {
            let mut m = self.meta.clone();
            m.elapsed_s = self.meta.elapsed_s + self.t0.elapsed().as_secs_f64();
            self.sinks.epoch(&Record { plan: &self.full, model: &model, meta: &m, eval_name: self.data.eval_name })?;
        }
        Ok(())
    }

    /// The whole model's parameters, BN statistics and momentum: on rank 0 (gathered from
    /// every stage of a pipeline), and on every data-parallel rank; `None` elsewhere.
    fn whole_model(&mut self) -> Result<Option<Snapshot>> {
        let mine = Snapshot::download(&mut *self.exec)?;
        match &self.pipe {
            Some(p) => p.gather(&self.full, self.comm, &mine),
            None => Ok(Some(mine)),
        }
    }

    /// Accuracy and loss on the test split (`test`) or the evaluation split. A pipeline's
    /// stages all run the pass; the top one scores it.
    pub fn evaluate(&mut self, test: bool) -> Result<EvalResult> {
        let src = match (&self.data.test, test) {
            (Some(t), true) => t,
            _ => &self.data.eval,
        };
        let norm = &self.setup.normalize;
        let Some(p) = &self.pipe else {
            return evaluate_over(&mut *self.exec, &self.plan, src, norm, self.comm);
        };
        let top = self.comm.rank() + 1 == p.stages.len();
        let mut sums = score(&mut *self.exec, &self.plan, src, norm, Shard::WHOLE, top)?;
        self.comm.sum_f64(&mut sums);
        let [correct, loss, n] = sums;
        Ok(EvalResult { accuracy: correct / n.max(1.0), loss: loss / n.max(1.0), images: n as usize })
    }

    /// The training steps of epoch `epoch` (started at `te`): their losses, how many were
    /// skipped, and how many there were.
    fn train_epoch(&mut self, epoch: u32, te: Instant) -> Result<(LossMeter, usize, usize)> {
        let (on_nonfinite, epochs) = (self.cfg.on_nonfinite, self.cfg.epochs);
        let mut batches = self.data.train.train_epoch(
            self.batch,
            self.aug.as_ref(),
            &self.setup.normalize,
            &self.data_rng,
            epoch as u64,
            self.shard,
        );
        let steps = batches.len();
        self.sinks.epoch_begins(epoch, epochs, steps);
        let mut meter = LossMeter::new(&self.full).with_curve(steps);
        let mut skipped = 0usize;
        let mut i = 0;
        // A pipeline's stages record their own modules' losses; they are summed once the
        // epoch is done, since a collective each step would stop the stages overlapping.
        let (pipelined, slots) = (self.pipe.is_some(), self.plan.loss_slots());
        let step_comm: &dyn Comm = if pipelined { &Solo } else { self.comm };
        let mut records: Vec<(usize, Vec<f32>)> = Vec::new();
        let mut images = 0usize;
        while let Some(b) = batches.next() {
            let b = b.inspect_err(|_| self.sinks.steps_end())?;
            let lr = self.setup.lr(epoch, i, steps);
            match self.step(&b.x, &b.y, lr, &meter, step_comm)? {
                None if pipelined => records.push((b.n, self.losses[..slots].to_vec())),
                None => meter.add_at(&self.losses, b.n * self.comm.size(), i),
                Some(fault) if on_nonfinite == NonFinite::Skip => {
                    skipped += 1;
                    let step = self.meta.global_step + 1;
                    self.sinks.warn(&format!("step {step} (epoch {epoch}) undone and skipped: {fault}"));
                }
                Some(fault) => {
                    self.sinks.steps_end();
                    // f16 keeps values only up to 65504: a larger one becomes infinite.
                    let f16 = match self.plan.method.precision {
                        Precision::F16Mixed => " or --precision bf16-mixed (f16 overflows past 65504)",
                        _ => "",
                    };
                    return Err(Error::msg(format!(
                        "{fault} at step {} (epoch {epoch}, lr {lr}); training stopped, the last checkpoint (epoch {}) is kept; lower --lr{f16}, or --on-nonfinite skip to undo such steps",
                        self.meta.global_step + 1,
                        self.meta.epoch
                    )));
                }
            }
            self.meta.global_step += 1;
            images += b.n * if pipelined { 1 } else { self.comm.size() };
            let secs = te.elapsed().as_secs_f64().max(1e-9);
            let mut status = format!("{:.0} img/s", images as f64 / secs);
            if !pipelined {
                status.push_str(&format!("  loss {:.4}", meter.final_mean()));
            }
            if let Some(w) = batches.waited() {
                // Streaming: the share of the epoch spent waiting for decoded batches.
                status.push_str(&format!("  data wait {:.0}%", 100.0 * w.as_secs_f64() / secs));
            }
            self.sinks.step(i, &status);
            i += 1;
        }
        self.sinks.steps_end();
        if pipelined {
            let mut all: Vec<f32> = records.iter().flat_map(|(_, r)| r.iter().copied()).collect();
            self.comm.sum_f32(&mut all);
            for (i, ((n, _), r)) in records.iter().zip(all.chunks(slots)).enumerate() {
                meter.add_at(r, *n, i);
            }
        }
        if let Source::Stream(s) = &self.data.train {
            let bound = s.bound(&data::StreamOptions::train(self.batch, s.workers));
            self.say(format!("stream memory bound at the largest image so far: {bound}"));
        }
        Ok((meter, skipped, steps))
    }

    /// One training step on images `x` with labels `y` (see [`guarded_step`]): the whole
    /// batch at once, or micro-batch by micro-batch (pieces of the plan's batch, the last
    /// smaller in a partial batch), each loss weighted by its piece's share of the step.
    /// `self.losses` gets the step's losses.
    fn step(&mut self, x: &[f32], y: &[u32], lr: f32, meter: &LossMeter, comm: &dyn Comm) -> Result<Option<String>> {
        let (per, n) = (self.plan.batch, y.len());
        let img = self.plan.input().len / per;
        let sizes: Vec<usize> = (0..n.div_ceil(per)).map(|i| per.min(n - i * per)).collect();
        let (policy, sgd) = (self.cfg.on_nonfinite, self.setup.sgd);
        let plan_of = |size: usize| -> Result<&Plan> {
            match &self.tail {
                _ if size == per => Ok(&self.plan),
                Some(t) if t.batch == size => Ok(t),
                _ => Err(Error::msg("internal: no plan for a partial batch")),
            }
        };
        if let [size] = sizes[..] {
            let input = StepInput { x, labels: y, lr, sgd };
            let p = plan_of(size)?;
            return guarded_step(&mut *self.exec, p, &input, &mut self.losses, &mut self.grads, meter, policy, comm);
        }
        let mut total = vec![0f32; self.losses.len()];
        let mut rec = vec![0f32; self.losses.len()];
        let mut at = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let p = plan_of(size)?.micro_batch(i, sizes.len(), n);
            let input = StepInput { x: &x[at * img..(at + size) * img], labels: &y[at..at + size], lr, sgd };
            rec.fill(0.0);
            if let Some(fault) =
                guarded_step(&mut *self.exec, &p, &input, &mut rec, &mut self.grads, meter, policy, comm)?
            {
                return Ok(Some(fault));
            }
            let w = size as f32 / n as f32;
            let nf = self.plan.nonfinite_slot();
            total[..nf].iter_mut().zip(&rec[..nf]).for_each(|(t, r)| *t += r * w);
            total[nf] = total[nf].max(rec[nf]);
            at += size;
        }
        self.losses = total;
        Ok(None)
    }

    /// The final accuracy (when the schedule is done), the outputs and the summary.
    pub fn finish(mut self) -> Result<Outcome> {
        let epochs = self.cfg.epochs;
        let finished = self.meta.epoch >= epochs;
        let test = if finished { Some(self.final_eval()?) } else { None };
        let wall_s = self.t0.elapsed().as_secs_f64();
        let peak = metrics::peak_rss_bytes();
        let mem = self.plan.memory();
        self.meta.test = test;
        self.meta.elapsed_s += wall_s;
        let snapshot = Snapshot::download(&mut *self.exec)?;
        self.exec.download(Region::Grads, 0, &mut self.grads)?;
        let model = match &self.pipe {
            Some(p) => p.gather(&self.full, self.comm, &snapshot)?,
            None => Some(snapshot.clone()),
        };
        if let Some(model) = model.filter(|_| !self.sinks.is_empty()) {
            let summary = serde_json::json!({
                "finished": finished,
                "epochs": self.meta.epoch,
                "final_split": self.data.final_name,
                "test_accuracy": test.map(|t| t.accuracy),
                "test_loss": test.map(|t| t.loss),
                "test_images": test.map(|t| t.images),
                "best_eval_accuracy": self.meta.best_accuracy,
                "wall_s": wall_s,
                "arena_bytes": mem.total(),
                "device": self.exec.to_string(),
                "executor_extra_bytes": self.exec.held().extra,
                "peak_rss_bytes": peak,
            });
            let r = Record { plan: &self.full, model: &model, meta: &self.meta, eval_name: self.data.eval_name };
            self.sinks.finish(&r, &summary)?;
        }
        let mem_line = format!("arena {} planned, peak RSS {}", fmt_mib(Some(mem.total() as u64)), fmt_mib(peak));
        self.say(match test {
            Some(t) => format!(
                "done: {} accuracy {:.2}% (loss {:.4}, {} images); wall {wall_s:.1} s; {mem_line}; outputs in {}",
                self.data.final_name,
                100.0 * t.accuracy,
                t.loss,
                t.images,
                self.out.display()
            ),
            None => format!(
                "stopped after epoch {} of {epochs}; wall {wall_s:.1} s; {mem_line}; continue with --resume {}",
                self.meta.epoch,
                self.out.display()
            ),
        });
        Ok(Outcome {
            epochs_done: self.meta.epoch,
            finished,
            test,
            metrics: self.meta.metrics,
            wall_s,
            arena_bytes: mem.total(),
            peak_rss: peak,
            out: self.out,
            snapshot,
            grads: self.grads,
            plan: self.plan,
        })
    }

    /// The test split's result; without one, the last epoch's evaluation (already done).
    fn final_eval(&mut self) -> Result<EvalResult> {
        let data = &self.data;
        Ok(match (&data.test, self.meta.metrics.last()) {
            (None, Some(r)) if r.epoch == self.cfg.epochs && r.eval_accuracy.is_some() => EvalResult {
                accuracy: r.eval_accuracy.unwrap_or(0.0),
                loss: r.eval_loss.unwrap_or(0.0),
                images: data.eval.len(),
            },
            (test, _) => self.evaluate(test.is_some())?,
        })
    }
}

/// Refuses flags that contradict `--pipeline` (`pipelined`: it takes effect).
fn check_pipeline_flags(cfg: &Settings, pipelined: bool) -> Result<()> {
    if !cfg.stages.is_empty() && !cfg.pipeline {
        return Err(Error::msg("--stages sets the split of --pipeline; add --pipeline"));
    }
    if cfg.stages.len() > 1 && !pipelined {
        return Err(Error::msg(format!(
            "--stages lists {} stages, one per process: run under mpirun -np {}",
            cfg.stages.len(),
            cfg.stages.len()
        )));
    }
    if cfg.micro_batches == 0 {
        return Err(Error::msg("--micro-batches must be at least 1"));
    }
    if cfg.micro_batches > 1 && !cfg.pipeline {
        return Err(Error::msg(
            "--micro-batches cuts the steps of a pipeline; add --pipeline (and run it under mpirun)",
        ));
    }
    if pipelined && cfg.on_nonfinite == NonFinite::Skip {
        return Err(Error::msg(
            "--on-nonfinite skip would undo a step on one stage while the others keep it; with --pipeline a NaN or infinity stops the run",
        ));
    }
    Ok(())
}

/// The model in checkpoint `l` (to be uploaded) and its progress into `meta`, after
/// checking it belongs to this run's seed and data.
fn resume(l: &checkpoint::Loaded, meta: &mut Meta, plan: &Plan) -> Result<Snapshot> {
    if l.meta.seed != meta.seed {
        return Err(Error::msg(format!(
            "--seed {} differs from the checkpoint's {}; a resumed run keeps its seed",
            meta.seed, l.meta.seed
        )));
    }
    if l.meta.shape != meta.shape {
        return Err(Error::msg(format!(
            "the data's shape {:?} differs from the checkpoint's {:?}",
            meta.shape, l.meta.shape
        )));
    }
    let model = l.restore(plan, true)?;
    meta.epoch = l.meta.epoch;
    meta.global_step = l.meta.global_step;
    meta.metrics = l.meta.metrics.clone();
    meta.best_accuracy = l.meta.best_accuracy;
    meta.elapsed_s = l.meta.elapsed_s;
    Ok(model)
}

/// The header's description of the augmentation.
fn augmentation_line(train: &Source, aug: Option<&Augment>) -> String {
    match (train, aug) {
        (Source::Stream(s), Some(_)) => format!(
            "RandomResizedCrop({0}, scale=(0.08, 1), ratio=(3/4, 4/3)) + flip; evaluation resize {1} + centre crop {0}",
            s.size,
            data::transform::eval_resize(s.size)
        ),
        (Source::Stream(s), None) => {
            format!("off (resize {1} + centre crop {0})", s.size, data::transform::eval_resize(s.size))
        }
        (Source::Memory(_), a) => a.map_or("off".to_string(), |a| {
            format!("pad {}{} crop {} flip {}", a.pad, if a.reflect { " (reflect)" } else { "" }, a.crop, a.flip)
        }),
    }
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

/// One training step, checked: `None` if its losses and gradients are finite, else what
/// is not. Under [`NonFinite::Skip`] a faulty step is undone (parameters, momentum and BN
/// statistics restored from a copy taken before it).
pub(super) fn guarded_step<E: Executor + ?Sized>(
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
