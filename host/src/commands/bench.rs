//! `hpff bench`: training-step and eval throughput on synthetic data, on any executor.

use std::time::Instant;

use hpff_core::exec::StepInput;
use hpff_core::rng::Rng;
use serde_json::json;

use super::open_executor;
use super::plan::describe;
use crate::commands::train;
use crate::config::{Settings, Shape};
use crate::device::Snapshot;
use crate::dist::{Comm, StageLink};
use crate::error::{Error, Result};
use crate::metrics;
use crate::pipeline::Pipeline;
use crate::resources::fmt_mib;

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

/// Runs `f` `warmup` times, then `steps` times each timed on its own (the CUDA
/// executor's steps return after copying the losses or logits back, so they are
/// synchronous); returns the mean (the whole loop's time over the steps), the median, and
/// the time of the very first call (warm-up; a pipeline's fill, first touches of memory).
fn timed(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    let mut first = None;
    for _ in 0..warmup {
        let t = Instant::now();
        f()?;
        first.get_or_insert(t.elapsed().as_secs_f64());
    }
    let mut each = Vec::with_capacity(steps);
    let t = Instant::now();
    for _ in 0..steps {
        let ts = Instant::now();
        f()?;
        each.push(ts.elapsed().as_secs_f64());
    }
    Ok((t.elapsed().as_secs_f64() / steps as f64, median(&each), first.unwrap_or(each[0])))
}

/// Every stage's [train step s, its median, time waiting on its neighbours per step, eval
/// pass s, its median, first step s], in stage order (on every rank).
fn stage_times(p: &Pipeline, comm: &dyn Comm, mine: [f64; 6]) -> Vec<[f64; 6]> {
    let bytes: Vec<u8> = mine.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = comm.gather_bytes(&bytes);
    let f = |b: &[u8]| f64::from_le_bytes(b.try_into().expect("8 bytes"));
    let rows: Vec<[f64; 6]> = all.chunks(48).map(|r| std::array::from_fn(|i| f(&r[8 * i..8 * i + 8]))).collect();
    debug_assert_eq!(rows.len(), p.stages.len());
    rows
}

fn stage_json(p: &Pipeline, t: &[[f64; 6]]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = p
        .stages
        .iter()
        .zip(t)
        .map(|(r, [step, med, wait, ..])| {
            // Waiting for a neighbour is the stage's idle time: its share of the bubble.
            json!({ "modules": [r.start, r.end - 1], "train_step_s": step, "train_step_median_s": med,
                    "wait_s_per_step": wait, "wait_share": wait / step })
        })
        .collect();
    json!(rows)
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
    if cfg.micro_batches != 1 {
        return Err(Error::msg("hpff bench times whole steps; --micro-batches applies to hpff train and hpff plan"));
    }
    let setup = cfg.setup(shape)?;
    // Under mpirun the batch is the job's, each process stepping its share of it, or, with
    // --pipeline, each process stepping every batch through its stage of the modules.
    let comm = crate::dist::world();
    let pipelined = cfg.pipeline && comm.size() > 1;
    let full = setup.plan(if pipelined { setup.batch } else { crate::dist::local_batch(setup.batch, comm)? })?;
    let pipe =
        if pipelined { Some(Pipeline::for_job(&full, comm, &cfg.stages, cfg.balance, cfg.threads)?) } else { None };
    let plan = match &pipe {
        Some(p) => p.stage_plan(&full, comm.rank())?,
        None => full.clone(),
    };
    match memory_limit {
        Some(limit) if pipelined => crate::budget::check_stage_fits(&plan, comm.rank(), limit)?,
        Some(limit) => crate::budget::check_fits(&setup, &plan, limit)?,
        None => {}
    }
    let seed = cfg.seed;
    let mut exec = open_executor(cfg, &plan, pipelined.then_some(StageLink { comm }))?;
    let mut rng = Rng::new(seed);
    let model = Snapshot::init(&full, &mut rng.fork(train::INIT_STREAM));
    match &pipe {
        Some(p) => p.restrict(&full, comm.rank(), &model)?.upload(&mut *exec)?,
        None => model.upload(&mut *exec)?,
    }
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(shape.classes as u64) as u32).collect();
    let mut losses = vec![0f32; plan.loss_slots()];
    let input = StepInput { x: &x, labels: &labels, lr: setup.lr(1, 0, 1).min(0.01), sgd: setup.sgd };
    let (train_s, train_med, first_s) = timed(warmup, steps, || exec.train_step(&plan, &input, &mut losses))?;
    let wait_s = comm.link_time().as_secs_f64() / (warmup + steps) as f64;
    let mut logits = vec![0f32; plan.logits().len];
    let (eval_s, eval_med, _) = timed(warmup, steps, || exec.eval_step(&plan, &x, &mut logits))?;
    let reduce_s = comm.reduce_time().as_secs_f64() / (warmup + steps) as f64;
    let (started, hidden) = comm.background_sums();
    let procs = comm.size();
    let ((tf, ef), stages) = match &pipe {
        Some(p) => {
            let mine = [train_s, train_med, wait_s, eval_s, eval_med, first_s];
            (metrics::plan_flops(&full), Some(stage_times(p, comm, mine)))
        }
        None => {
            let (tf, ef) = metrics::plan_flops(&plan);
            ((tf * procs as u64, ef * procs as u64), None)
        }
    };
    // A pipeline delivers a step each time its top stage finishes one.
    let [train_s, train_med, _, eval_s, eval_med, first_s] = match &stages {
        Some(t) => *t.last().expect("two or more stages"),
        None => [train_s, train_med, 0.0, eval_s, eval_med, first_s],
    };
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
        "precision": setup.method.precision.name(),
        "processes": procs,
        "allreduce_s_per_step": reduce_s,
        "allreduce_share": reduce_s / train_s,
        // Of the modules' gradient sums, the share that finished while later modules
        // computed (the rest were waited for at the step's end).
        "allreduce_overlapped": (started > 0).then(|| hidden as f64 / started as f64),
        "pipeline": stages.as_ref().zip(pipe.as_ref()).map(|(t, p)| stage_json(p, t)),
        "module_step_s": pipe.as_ref().map(|p| &p.module_secs),
        "predicted_speedup": pipe.as_ref().and_then(Pipeline::predicted_speedup),
        // The first step (untimed warm-up): a pipeline's fill and first touches of memory.
        "first_step_s": first_s,
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
                n if pipelined => format!("{} ({n} pipeline stages)", setup.batch),
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
        if let (Some(t), Some(p)) = (&stages, &pipe) {
            for (s, (r, [step, _, wait, ..])) in p.stages.iter().zip(t).enumerate() {
                println!(
                    "  stage {s}: modules {}..={}, {:.3} s/step, {:.3} s of it idle, waiting for its neighbours ({:.1}%)",
                    r.start,
                    r.end - 1,
                    step,
                    wait,
                    100.0 * wait / step
                );
            }
            println!(
                "  first step {first_s:.3} s (the pipeline's fill; not in the figures above){}",
                match p.predicted_speedup() {
                    Some(x) => format!("; the measured module times predict {x:.2}× one process for this split"),
                    None => String::new(),
                }
            );
        } else if procs > 1 {
            println!(
                "  {procs} processes: gradient all-reduce {:.4} s/step ({:.1}% of the step, waiting included); {} of {} module sums finished while later modules computed",
                reduce_s,
                100.0 * reduce_s / train_s,
                hidden,
                started
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
