//! `hpff eval`: test accuracy and loss of a checkpoint, on any executor.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::open_executor;
use crate::checkpoint;
use crate::commands::train;
use crate::config::Config;
use crate::data::{self, Split};
use crate::error::{Error, Result};

/// `--memory-limit` for an eval pass: its activations against `limit`, naming the largest
/// batch (halving) that fits when they do not.
fn check_eval_fits(plan: &hpff_core::plan::Plan, limit: usize) -> Result<()> {
    let need = |p: &hpff_core::plan::Plan| p.memory().eval_activations as u64;
    if need(plan) <= limit as u64 {
        return Ok(());
    }
    let hint = match crate::resources::largest_fitting_batch(plan, limit as u64, need) {
        Some(b) => format!("--batch-size {b} fits"),
        None => "not even batch 1 fits".to_string(),
    };
    Err(Error::msg(format!(
        "an eval pass at batch {} needs {:.1} MiB of activations, over the limit of {:.1} MiB; {hint}",
        plan.batch,
        need(plan) as f64 / (1024.0 * 1024.0),
        limit as f64 / (1024.0 * 1024.0)
    )))
}

/// `hpff eval`.
///
/// Evaluates the checkpoint at `checkpoint` (folder, JSON or tensor file) on its data set's
/// test split; `over` overrides the checkpoint's settings (data set, folder, batch size,
/// threads, device, precision, `limit_test`).
pub fn eval(checkpoint: &Path, over: &Config, as_json: bool, memory_limit: Option<usize>) -> Result<()> {
    let loaded = checkpoint::load(checkpoint)?;
    let cfg = loaded.meta.config.merge(over).settings();
    let kind = cfg.dataset.kind();
    let seed = cfg.seed;
    let (test, (c, h, w, classes)) = match cfg.stream {
        // A streamed run: its test split streamed through the evaluation transform.
        Some(size) => {
            let dir =
                cfg.data_dir.as_deref().filter(|_| kind == data::DatasetKind::Folder).ok_or_else(|| {
                    Error::msg("--stream reads an image folder: give --dataset folder --data-dir DIR")
                })?;
            let mut ix = data::index(dir, Split::Test)?;
            if let Some(n) = over.limit_test.filter(|&n| n > 0) {
                ix = ix.sample(n, hpff_core::rng::Rng::new(seed).fork(crate::data::LIMIT_STREAM));
            }
            let classes = ix.class_names.len();
            let threads = cfg.threads;
            (data::Source::Stream(data::StreamSet::imagenet(ix, size, threads)), (3, size, size, classes))
        }
        None => {
            let test = data::load(kind, cfg.data_dir.as_deref(), Split::Test)?;
            // The subset hpff train evaluated on with the same seed and limit.
            let test = crate::data::limit_subset(test, over.limit_test, seed);
            let shape = (test.c, test.h, test.w, test.classes);
            (data::Source::Memory(Arc::new(test)), shape)
        }
    };
    if test.is_empty() {
        return Err(Error::msg("the test split has no images"));
    }
    let want = loaded.meta.shape;
    if (c, h, w, classes) != (want.c, want.image, want.image, want.classes) {
        return Err(Error::msg(format!(
            "the checkpoint's network takes {}×{}×{} images of {} classes; this test split has {c}×{h}×{w} images of {classes} classes",
            want.c, want.image, want.image, want.classes
        )));
    }
    let setup = cfg.setup(want)?;
    let plan = setup.plan(setup.batch)?;
    if let Some(limit) = memory_limit {
        check_eval_fits(&plan, limit)?;
    }
    let model = loaded.restore(&plan, false)?;
    let mut exec = open_executor(&cfg, &plan, None)?;
    model.upload(&mut *exec)?;
    let t = Instant::now();
    // Under mpirun each process evaluates its share of the images; rank 0 reports.
    let comm = crate::dist::world();
    let r = train::evaluate_over(&mut *exec, &plan, &test, &setup.normalize, comm)?;
    let secs = t.elapsed().as_secs_f64();
    if comm.rank() != 0 {
        return Ok(());
    }
    if as_json {
        println!(
            "{}",
            json!({
                "checkpoint": loaded.json_path,
                "epoch": loaded.meta.epoch,
                "dataset": kind.name(),
                "test_accuracy": r.accuracy,
                "test_loss": r.loss,
                "test_images": r.images,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "test accuracy {:.2}% loss {:.4} on {} {} images ({} after epoch {}, {:.1} s)",
            100.0 * r.accuracy,
            r.loss,
            r.images,
            kind.name(),
            loaded.json_path.display(),
            loaded.meta.epoch,
            secs
        );
    }
    Ok(())
}
