//! `hpff eval`, `hpff plan` and `hpff bench`: what they compute and how they print it.

use std::sync::Arc;
use std::time::Instant;

use hpff_core::exec::StepInput;
use hpff_core::plan::{Memory, Plan};
use hpff_core::rng::Rng;
use serde_json::json;

use crate::checkpoint;
use crate::cli::EvalArgs;
use crate::config::{Config, Setup, Shape};
use crate::data::{self, Split};
use crate::device::{self, DynExecutor, ExecOptions, Snapshot};
use crate::error::{Error, Result};
use crate::metrics::{self, fmt_mib};
use crate::train;

fn mib(b: usize) -> String {
    format!("{:.2}", b as f64 / (1024.0 * 1024.0))
}

/// One module of a plan: its blocks and where it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleInfo {
    pub index: usize,
    /// Global block indices, first and last (inclusive).
    pub blocks: [usize; 2],
    /// The reference's split point ending it, (stage 1..=3, block).
    pub split: [usize; 2],
    /// Output channels, height, width.
    pub out: [usize; 3],
    /// The reference's names of its auxiliary nets.
    pub aux: Vec<&'static str>,
}

/// The modules of `plan`.
pub fn modules(plan: &Plan) -> Vec<ModuleInfo> {
    (0..plan.modules())
        .map(|j| {
            let r = plan.part.blocks_of(j);
            let last = plan.arch.block(r.end - 1);
            let (s, b) = plan.part.split_point(&plan.arch, j);
            ModuleInfo {
                index: j,
                blocks: [r.start, r.end - 1],
                split: [s, b],
                out: [last.c_out, last.h_out, last.w_out],
                aux: plan.aux_nets(j).iter().map(|a| a.name(plan.method.hpff)).collect(),
            }
        })
        .collect()
}

fn memory_json(m: &Memory, arena_bytes: usize) -> serde_json::Value {
    json!({
        "params": m.params,
        "grads": m.grads,
        "momentum": m.momentum,
        "bn_state": m.bn_state,
        "activations": m.activations,
        "decoder": m.decoder,
        "scratch": m.scratch,
        "eval_activations": m.eval_activations,
        "total": m.total(),
        "arena": arena_bytes,
    })
}

fn describe(setup: &Setup, plan: &Plan) -> serde_json::Value {
    let c = &setup.config;
    json!({
        "arch": format!("resnet{}", setup.arch.depth),
        "method": c.method.map(|m| m.name()),
        "hpff": c.hpff,
        "k_label": plan.part.k_label,
        "modules": plan.modules(),
        "patches": plan.method.patches,
        "aux_classifier": plan.method.head.to_string(),
        "batch": plan.batch,
        "input": [setup.arch.in_channels, setup.arch.image, setup.arch.image],
        "classes": setup.arch.classes,
        "params": plan.params,
    })
}

/// `hpff plan`.
pub fn plan(cfg: &Config, shape: Shape, as_json: bool) -> Result<()> {
    let setup = cfg.setup(shape)?;
    let plan = setup.plan(setup.batch)?;
    let m = plan.memory();
    let arena = plan.arena_len() * 4;
    let mods = modules(&plan);
    if as_json {
        let mut v = describe(&setup, &plan);
        v["memory_bytes"] = memory_json(&m, arena);
        v["per_module"] = serde_json::to_value(&mods).expect("json");
        println!("{v}");
        return Ok(());
    }
    println!(
        "plan: resnet{} {}; batch {}; input {}×{}×{}, {} classes; {} parameters",
        setup.arch.depth,
        setup.method_line(),
        plan.batch,
        shape.c,
        shape.image,
        shape.image,
        shape.classes,
        plan.params
    );
    println!("{:<28}{:>14}{:>12}", "memory", "bytes", "MiB");
    let rows = [
        ("parameters", m.params),
        ("gradients", m.grads),
        ("momentum", m.momentum),
        ("BN running statistics", m.bn_state),
        ("activations (peak)", m.activations),
        ("  of which decoder", m.decoder),
        ("conv scratch", m.scratch),
        ("eval activations (peak)", m.eval_activations),
    ];
    for (name, b) in rows {
        println!("  {name:<26}{b:>14}{:>12}", mib(b));
    }
    println!("  {:<26}{:>14}{:>12}", "total (training step)", m.total(), mib(m.total()));
    println!("  {:<26}{:>14}{:>12}", "arena", arena, mib(arena));
    println!(
        "modules: K = {} as labelled, {} trained{}",
        plan.part.k_label,
        plan.modules(),
        if plan.part.k_label != plan.modules() { " (the reference's label differs from the true count)" } else { "" }
    );
    println!("  {:<4}{:<10}{:<10}{:<14}aux nets", "#", "blocks", "ends at", "output");
    for md in &mods {
        println!(
            "  {:<4}{:<10}{:<10}{:<14}{}",
            md.index,
            format!("{}..={}", md.blocks[0], md.blocks[1]),
            format!("({},{})", md.split[0], md.split[1]),
            format!("{}×{}×{}", md.out[0], md.out[1], md.out[2]),
            if md.aux.is_empty() { "-".to_string() } else { md.aux.join(", ") }
        );
    }
    Ok(())
}

/// The executor `cfg` (completed) asks for, laid out for `plan`.
fn open_executor(cfg: &Config, plan: &Plan) -> Result<DynExecutor> {
    let opts = ExecOptions { threads: cfg.threads.unwrap_or(0), tf32: cfg.tf32.unwrap_or(false) };
    device::open(cfg.device.unwrap_or_default(), plan, opts)
}

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

/// `hpff bench`: times training steps and eval passes on synthetic data.
pub fn bench(cfg: &Config, shape: Shape, steps: usize, warmup: usize, as_json: bool) -> Result<()> {
    if steps == 0 {
        return Err(Error::msg("--steps must be at least 1"));
    }
    let setup = cfg.setup(shape)?;
    let plan = setup.plan(setup.batch)?;
    let seed = cfg.seed.unwrap_or(0);
    let mut exec = open_executor(cfg, &plan)?;
    let mut rng = Rng::new(seed);
    Snapshot::init(&plan, &mut rng.fork(train::INIT_STREAM)).upload(&mut *exec)?;
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(shape.classes as u64) as u32).collect();
    let mut losses = vec![0f32; plan.loss_slots()];
    let input = StepInput { x: &x, labels: &labels, lr: setup.lr(1, 0, 1).min(0.01), sgd: setup.sgd };
    for _ in 0..warmup {
        exec.train_step(&plan, &input, &mut losses)?;
    }
    // Each step and pass is timed on its own (the CUDA executor's train_step and eval_step
    // return after copying the losses / logits back, so they are synchronous); the mean is
    // the whole loop's time over the steps.
    let mut train_steps = Vec::with_capacity(steps);
    let t = Instant::now();
    for _ in 0..steps {
        let ts = Instant::now();
        exec.train_step(&plan, &input, &mut losses)?;
        train_steps.push(ts.elapsed().as_secs_f64());
    }
    let train_s = t.elapsed().as_secs_f64() / steps as f64;
    let train_med = median(&train_steps);
    let mut logits = vec![0f32; plan.logits().len];
    for _ in 0..warmup {
        exec.eval_step(&plan, &x, &mut logits)?;
    }
    let mut eval_passes = Vec::with_capacity(steps);
    let t = Instant::now();
    for _ in 0..steps {
        let ts = Instant::now();
        exec.eval_step(&plan, &x, &mut logits)?;
        eval_passes.push(ts.elapsed().as_secs_f64());
    }
    let eval_s = t.elapsed().as_secs_f64() / steps as f64;
    let eval_med = median(&eval_passes);
    let (tf, ef) = metrics::plan_flops(&plan);
    let b = plan.batch as f64;
    let peak = metrics::peak_rss_bytes();
    let arena_b = plan.arena_len() * 4;
    let extra = exec.held().extra;
    let mut v = describe(&setup, &plan);
    let fields = json!({
        "device": exec.to_string(),
        "threads": match cfg.threads.unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        "tf32": cfg.tf32.unwrap_or(false),
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
    if as_json {
        println!("{v}");
    } else {
        println!(
            "bench: resnet{} {}; batch {}; {exec}; {steps} steps after {warmup} warm-up",
            setup.arch.depth,
            setup.method_line(),
            plan.batch,
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
        println!(
            "  memory: arena {} planned, executor extra {}, peak RSS {}",
            fmt_mib(Some(arena_b as u64)),
            fmt_mib(Some(extra as u64)),
            fmt_mib(peak)
        );
    }
    Ok(())
}

/// `hpff eval`.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let loaded = checkpoint::load(&a.checkpoint)?;
    let over = Config {
        dataset: a.dataset,
        data_dir: a.data_dir.clone(),
        batch_size: a.batch_size,
        threads: a.threads,
        device: a.device,
        tf32: a.tf32.then_some(true),
        limit_test: a.limit_test,
        ..Config::default()
    };
    let cfg = loaded.meta.config.merge(&over).complete();
    let kind = cfg.dataset.expect("completed").kind();
    let mut test = data::load(kind, cfg.data_dir.as_deref(), Split::Test)?;
    if let Some(n) = a.limit_test.filter(|&n| n > 0) {
        test = test.limit(n);
    }
    if test.n == 0 {
        return Err(Error::msg("the test split has no images"));
    }
    let want = loaded.meta.shape;
    if (test.c, test.h, test.w, test.classes) != (want.c, want.image, want.image, want.classes) {
        return Err(Error::msg(format!(
            "the checkpoint's network takes {}×{}×{} images of {} classes; this test split has {}×{}×{} images of {} classes",
            want.c, want.image, want.image, want.classes, test.c, test.h, test.w, test.classes
        )));
    }
    let setup = cfg.setup(want)?;
    let plan = setup.plan(setup.batch)?;
    let model = loaded.restore(&plan, false)?;
    let mut exec = open_executor(&cfg, &plan)?;
    model.upload(&mut *exec)?;
    let t = Instant::now();
    let r = train::evaluate(&mut *exec, &plan, &Arc::new(test), &setup.normalize)?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
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
