//! `hpff bench`: training-step and eval throughput on synthetic data, on any executor.

use std::time::Instant;

use hpff_core::exec::StepInput;
use hpff_core::rng::Rng;
use serde_json::json;

use super::open_executor;
use super::plan::describe;
use crate::config::{Settings, Shape};
use crate::device::Snapshot;
use crate::error::{Error, Result};
use crate::metrics;
use crate::resources::fmt_mib;
use crate::train;

/// The median of per-step times (the mean of the middle two for an even count).
fn median(times: &[f64]) -> f64 {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Runs `f` `warmup` times untimed, then `steps` times each timed on its own (the CUDA
/// executor's steps return after copying the losses or logits back, so they are
/// synchronous); returns the mean (the whole loop's time over the steps) and the median.
fn timed(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut each = Vec::with_capacity(steps);
    let t = Instant::now();
    for _ in 0..steps {
        let ts = Instant::now();
        f()?;
        each.push(ts.elapsed().as_secs_f64());
    }
    Ok((t.elapsed().as_secs_f64() / steps as f64, median(&each)))
}

/// `hpff bench`: times training steps and eval passes on synthetic data.
pub fn bench(
    cfg: &Settings,
    shape: Shape,
    steps: usize,
    warmup: usize,
    as_json: bool,
    memory_limit: Option<usize>,
) -> Result<()> {
    if steps == 0 {
        return Err(Error::msg("--steps must be at least 1"));
    }
    let setup = cfg.setup(shape)?;
    // Under mpirun the batch is the job's, each process stepping its share of it.
    let comm = crate::dist::world();
    let plan = setup.plan(crate::dist::local_batch(setup.batch, comm)?)?;
    if let Some(limit) = memory_limit {
        crate::budget::check_fits(&setup, &plan, limit)?;
    }
    let seed = cfg.seed;
    let mut exec = open_executor(cfg, &plan)?;
    let mut rng = Rng::new(seed);
    Snapshot::init(&plan, &mut rng.fork(train::INIT_STREAM)).upload(&mut *exec)?;
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(shape.classes as u64) as u32).collect();
    let mut losses = vec![0f32; plan.loss_slots()];
    let input = StepInput { x: &x, labels: &labels, lr: setup.lr(1, 0, 1).min(0.01), sgd: setup.sgd };
    let (train_s, train_med) = timed(warmup, steps, || exec.train_step(&plan, &input, &mut losses))?;
    let mut logits = vec![0f32; plan.logits().len];
    let (eval_s, eval_med) = timed(warmup, steps, || exec.eval_step(&plan, &x, &mut logits))?;
    let reduce_s = comm.reduce_time().as_secs_f64() / (warmup + steps) as f64;
    let (tf, ef) = metrics::plan_flops(&plan);
    let procs = comm.size();
    let (tf, ef) = (tf * procs as u64, ef * procs as u64);
    let b = setup.batch as f64;
    let peak = metrics::peak_rss_bytes();
    let arena_b = plan.arena_len() * 4;
    let extra = exec.held().extra;
    let mut v = describe(&setup, &plan);
    let fields = json!({
        "device": exec.to_string(),
        "threads": crate::cpu::CpuExecutor::resolve_threads(cfg.threads),
        "tf32": cfg.tf32,
        // The host CPU's kernel path (the CPU executor's; HPFF_CPU_ISA caps it).
        "isa": hpff_core::ops::cpu_isa().name(),
        "processes": procs,
        "allreduce_s_per_step": reduce_s,
        "allreduce_share": reduce_s / train_s,
        "steps": steps,
        "warmup": warmup,
        "train_step_s": train_s,
        "train_images_per_s": b / train_s,
        "train_step_median_s": train_med,
        "train_images_per_s_median": b / train_med,
        "train_flops_per_step": tf,
        "train_gflops_per_s": tf as f64 / train_s / 1e9,
        "eval_pass_s": eval_s,
        "eval_images_per_s": b / eval_s,
        "eval_pass_median_s": eval_med,
        "eval_images_per_s_median": b / eval_med,
        "eval_flops_per_pass": ef,
        "eval_gflops_per_s": ef as f64 / eval_s / 1e9,
        "arena_bytes": arena_b,
        "planned_total_bytes": plan.memory().total(),
        "executor_extra_bytes": extra,
        "peak_rss_bytes": peak,
    });
    if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    if comm.rank() != 0 {
        return Ok(());
    }
    if as_json {
        println!("{v}");
    } else {
        println!(
            "bench: {} {}; batch {}; {exec}; {steps} steps after {warmup} warm-up",
            setup.arch.name(),
            setup.method_line(),
            match procs {
                1 => plan.batch.to_string(),
                n => format!("{} ({n} processes × {})", setup.batch, plan.batch),
            },
        );
        println!(
            "  train: {:.1} images/s, {:.3} s/step (median {:.3} s, {:.1} images/s), {:.2} GFLOP/s ({:.2} GFLOP/step)",
            b / train_s,
            train_s,
            train_med,
            b / train_med,
            tf as f64 / train_s / 1e9,
            tf as f64 / 1e9
        );
        println!(
            "  eval:  {:.1} images/s, {:.3} s/pass (median {:.3} s, {:.1} images/s), {:.2} GFLOP/s ({:.2} GFLOP/pass)",
            b / eval_s,
            eval_s,
            eval_med,
            b / eval_med,
            ef as f64 / eval_s / 1e9,
            ef as f64 / 1e9
        );
        if procs > 1 {
            println!(
                "  {procs} processes: gradient all-reduce {:.4} s/step ({:.1}% of the step)",
                reduce_s,
                100.0 * reduce_s / train_s
            );
        }
        println!(
            "  memory: arena {} planned, executor extra {}, peak RSS {}",
            fmt_mib(Some(arena_b as u64)),
            fmt_mib(Some(extra as u64)),
            fmt_mib(peak)
        );
    }
    Ok(())
}
