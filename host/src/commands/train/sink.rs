//! Where a training run's output goes.
//!
//! A [`Trainer`](super::Trainer) reports to its sinks and never prints or writes itself.
//! Under mpirun only rank 0 has any: that is the one switch behind "one process writes".
//! [`Console`] draws the log lines and the progress bar (nothing with `--quiet`);
//! [`RunFolder`] owns the run folder (its lock, `config.toml`, checkpoints, metrics,
//! curves and the summary).

use std::path::{Path, PathBuf};

use hpff_core::plan::Plan;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{self, Meta};
use crate::device::Snapshot;
use crate::error::{io_err, Error, Result};
use crate::files::RunLock;
use crate::metrics;
use crate::plot;
use crate::resources::fmt_mib;

/// The model after an epoch (or at the end) and the run's records up to it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The whole model's plan (its layout).
    pub plan: &'a Plan,
    pub model: &'a Snapshot,
    pub meta: &'a Meta,
    /// The evaluation split's name, for the curves.
    pub eval_name: &'a str,
}

/// What a run reports; every method does nothing by default.
pub trait Sink {
    /// A line of the log.
    fn line(&mut self, _s: &str) {}
    /// Something went wrong and the run goes on (a step undone and skipped).
    fn warn(&mut self, _s: &str) {}
    /// Epoch `epoch` of `epochs` begins; it has `steps` steps.
    fn epoch_begins(&mut self, _epoch: u32, _epochs: u32, _steps: usize) {}
    /// Step `i` (from 0) of the epoch is done; `status`: throughput, loss, data wait.
    fn step(&mut self, _i: usize, _status: &str) {}
    /// The epoch's steps are done (or failed).
    fn steps_end(&mut self) {}
    /// An epoch is recorded.
    fn epoch(&mut self, _r: &Record) -> Result<()> {
        Ok(())
    }
    /// The run ends with `summary`.
    fn finish(&mut self, _r: &Record, _summary: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Every sink of a run, told in order.
#[derive(Default)]
pub struct Sinks(pub Vec<Box<dyn Sink>>);

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sinks({})", self.0.len())
    }
}

impl Sinks {
    /// Whether any sink keeps the model (so rank 0 needs it after each epoch).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Sink for Sinks {
    fn line(&mut self, s: &str) {
        self.0.iter_mut().for_each(|k| k.line(s));
    }
    fn warn(&mut self, s: &str) {
        self.0.iter_mut().for_each(|k| k.warn(s));
    }
    fn epoch_begins(&mut self, epoch: u32, epochs: u32, steps: usize) {
        self.0.iter_mut().for_each(|k| k.epoch_begins(epoch, epochs, steps));
    }
    fn step(&mut self, i: usize, status: &str) {
        self.0.iter_mut().for_each(|k| k.step(i, status));
    }
    fn steps_end(&mut self) {
        self.0.iter_mut().for_each(|k| k.steps_end());
    }
    fn epoch(&mut self, r: &Record) -> Result<()> {
        self.0.iter_mut().try_for_each(|k| k.epoch(r))
    }
    fn finish(&mut self, r: &Record, summary: &serde_json::Value) -> Result<()> {
        self.0.iter_mut().try_for_each(|k| k.finish(r, summary))
    }
}

/// The terminal: log lines on stdout, warnings and the progress bar on stderr. Without a
/// terminal (a log file) the bar is hidden and a plain line marks every tenth of an epoch.
#[derive(Debug, Default)]
pub struct Console {
    bar: Option<ProgressBar>,
    epoch: (u32, u32),
    steps: usize,
}

impl Sink for Console {
    fn line(&mut self, s: &str) {
        println!("{s}");
    }

    fn warn(&mut self, s: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| eprintln!("warning: {s}")),
            None => eprintln!("warning: {s}"),
        }
    }

    fn epoch_begins(&mut self, epoch: u32, epochs: u32, steps: usize) {
        let pb = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        if let Ok(s) = ProgressStyle::with_template("{prefix} [{bar:30}] step {pos}/{len} {msg} ({elapsed}, eta {eta})")
        {
            pb.set_style(s.progress_chars("=> "));
        }
        pb.set_prefix(format!("epoch {epoch}/{epochs}"));
        (self.bar, self.epoch, self.steps) = (Some(pb), (epoch, epochs), steps);
    }

    fn step(&mut self, i: usize, status: &str) {
        let Some(pb) = &self.bar else { return };
        let ((epoch, epochs), steps) = (self.epoch, self.steps);
        pb.inc(1);
        if pb.is_hidden() && (i + 1).is_multiple_of(steps.div_ceil(10).max(1)) && i + 1 < steps {
            eprintln!("epoch {epoch}/{epochs}  step {}/{steps}  {status}", i + 1);
        }
        pb.set_message(status.to_string());
    }

    fn steps_end(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

/// The run folder, held (locked) for the run: `config.toml` at the start; after each
/// epoch the checkpoint, then the metrics and curves derived from the same records (each
/// replaced atomically, the checkpoint first: its commit is the point a run resumes
/// from, so `metrics.jsonl` never holds an epoch the checkpoint lacks); `summary.json`
/// at the end.
#[derive(Debug)]
pub struct RunFolder {
    out: PathBuf,
    _lock: RunLock,
}

impl RunFolder {
    /// Creates the folder, takes its lock (one run at a time), checks it has room for
    /// checkpoints, and writes `config.toml`.
    pub fn create(out: &Path, plan: &Plan, meta: &Meta) -> Result<RunFolder> {
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
        crate::files::write_atomic(&out.join("config.toml"), meta.config.to_toml().as_bytes())?;
        Ok(RunFolder { out: out.to_path_buf(), _lock: lock })
    }
}

impl Sink for RunFolder {
    fn epoch(&mut self, r: &Record) -> Result<()> {
        checkpoint::save(&self.out, r.plan, r.model, &mut r.meta.clone())?;
        metrics::write_jsonl(&self.out.join("metrics.jsonl"), &r.meta.metrics)?;
        plot::save(&self.out.join("curves.png"), &r.meta.metrics, r.eval_name)
    }

    fn finish(&mut self, r: &Record, summary: &serde_json::Value) -> Result<()> {
        self.epoch(r)?;
        let path = self.out.join("summary.json");
        crate::files::write_atomic(&path, &serde_json::to_vec_pretty(summary).expect("json"))
    }
}
