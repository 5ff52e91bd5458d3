//! `hpff plan`: the static memory plan, bytes by kind and per module, before anything runs.

use hpff_core::method::{Method, Precision};
use hpff_core::plan::{op, Memory, Op, Plan};
use serde_json::json;

use super::ops::{listing, render};
use crate::budget::{check_stage_fits, fitting_plan};
use crate::config::{Settings, Setup, Shape};
use crate::cpu::CpuExecutor;
use crate::error::Result;
use crate::metrics::plan_flops;
use crate::pipeline::Pipeline;

fn mib(b: usize) -> String {
    format!("{:.2}", b as f64 / (1024.0 * 1024.0))
}

/// One module of a plan: its blocks and where it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleInfo {
    pub index: usize,
    /// Global block indices, first and last (inclusive).
    pub blocks: [usize; 2],
    /// The reference's split point ending it, (stage 1..=3, or 1..=4 on ImageNet, block).
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
                aux: plan.aux_nets(j).iter().map(|a| a.label(&plan.method)).collect(),
            }
        })
        .collect()
}

/// What an executor allocates beside the arena for a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutorBytes {
    /// `--device` value.
    pub device: &'static str,
    /// CPU worker threads (this process's default share of the cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    pub extra: usize,
    /// Arena + extra.
    pub total: usize,
    /// What the figure leaves out.
    pub note: &'static str,
}

/// The executors' own buffers for `plan`, beside its arena: the CPU executor's per-thread
/// conv scratch and per-chunk partial sums, the CUDA executor's workspaces.
pub fn executor_bytes(plan: &Plan) -> Vec<ExecutorBytes> {
    let arena = 4 * plan.arena_len();
    let threads = CpuExecutor::resolve_threads(0);
    let cpu = CpuExecutor::extra_bytes(plan, threads) as usize;
    let mut v = vec![ExecutorBytes {
        device: "cpu",
        threads: Some(threads),
        extra: cpu,
        total: arena + cpu,
        note: "conv scratch per thread, partial sums per 8-image chunk",
    }];
    v.extend(cuda_bytes(plan));
    v
}

#[cfg(feature = "cuda")]
fn cuda_bytes(plan: &Plan) -> Option<ExecutorBytes> {
    let extra = hpff_kernels::CudaExecutor::planned_extra_bytes(plan);
    Some(ExecutorBytes {
        device: "cuda",
        threads: None,
        extra,
        total: 4 * plan.arena_len() + extra,
        note: "conv and cuBLAS workspaces, partial sums; library handles and graphs are measured at run time",
    })
}

/// A build without the CUDA executor states none.
#[cfg(not(feature = "cuda"))]
fn cuda_bytes(_: &Plan) -> Option<ExecutorBytes> {
    None
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

/// Planned training activations of the same plan at precision 32, for a plan that keeps
/// values in 16 bits (`None` at 32): what `hpff plan` compares the 16-bit bound with.
fn activations_at_f32(plan: &Plan) -> Result<Option<usize>> {
    if plan.method.precision == Precision::F32 {
        return Ok(None);
    }
    let method = Method { precision: Precision::F32, ..plan.method };
    let full = Plan::new(plan.arch, plan.part.clone(), method, plan.batch, plan.mean, plan.std)?;
    Ok(Some(full.memory().activations))
}

pub(crate) fn describe(setup: &Setup, plan: &Plan) -> serde_json::Value {
    let c = &setup.settings;
    json!({
        "arch": setup.arch.name().as_str(),
        "method": c.method.name(),
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

/// One stage of a pipeline, as `hpff plan --pipeline` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageInfo {
    pub stage: usize,
    /// First and last module (inclusive).
    pub modules: [usize; 2],
    pub params: usize,
    /// Training FLOPs of one step.
    pub flops: u64,
    /// Bytes received and sent per training step (activations up, cascade gradients down);
    /// their buffers are part of the activation peak.
    pub recv_bytes: usize,
    pub send_bytes: usize,
    pub memory_bytes: serde_json::Value,
}

/// The stages of `plan` cut over `workers` processes (`by_hand`: modules per stage),
/// each checked against `limit` (bytes of activations).
pub fn stages(plan: &Plan, workers: usize, by_hand: &[usize], limit: Option<usize>) -> Result<Vec<StageInfo>> {
    let p = Pipeline::split(plan, workers, by_hand)?;
    (0..workers)
        .map(|s| {
            let st = p.stage_plan(plan, s)?;
            if let Some(l) = limit {
                check_stage_fits(&st, s, l)?;
            }
            let (mut recv, mut send) = (0, 0);
            st.train_step(|op| match *op {
                Op::Recv(op::Recv { buf, .. }) => recv += 4 * buf.len,
                Op::Send(op::Send { buf, .. }) => send += 4 * buf.len,
                _ => {}
            });
            let m = st.memory();
            Ok(StageInfo {
                stage: s,
                modules: [p.stages[s].start, p.stages[s].end - 1],
                params: st.params,
                flops: plan_flops(&st).0,
                recv_bytes: recv,
                send_bytes: send,
                memory_bytes: memory_json(&m, st.arena_len() * 4),
            })
        })
        .collect()
}

/// How `hpff plan --pipeline` cuts the model.
#[derive(Clone, Copy, Debug)]
pub struct Stages<'a> {
    /// Processes, one stage each.
    pub workers: usize,
    /// Modules per stage, bottom up (empty: balanced by FLOPs).
    pub by_hand: &'a [usize],
    /// Micro-batches per step (the stages are planned for one micro-batch).
    pub micro_batches: usize,
}

/// `hpff plan`; with `ops`, the schedule op by op after the summary; with `limit`
/// (bytes of activations), the configuration [`fitting_plan`] chooses instead of the one
/// asked for; with `pipeline` (W processes, `by_hand` modules per stage), each stage's
/// bound, `limit` then applying per stage.
pub fn plan(
    cfg: &Settings,
    shape: Shape,
    as_json: bool,
    ops: bool,
    limit: Option<usize>,
    pipeline: Option<Stages>,
) -> Result<()> {
    let setup = cfg.setup(shape)?;
    if let Some(st) = pipeline.filter(|s| s.micro_batches == 0 || !setup.batch.is_multiple_of(s.micro_batches)) {
        return Err(crate::error::Error::msg(format!(
            "--micro-batches {} must divide --batch-size {}",
            st.micro_batches, setup.batch
        )));
    }
    let (plan, why) = match limit {
        Some(l) if pipeline.is_none() => {
            let (p, why) = fitting_plan(&setup, l)?;
            (p, Some(why))
        }
        _ => (setup.plan(setup.batch)?, None),
    };
    let staged = match pipeline {
        Some(s) if s.micro_batches > 1 => {
            Some(stages(&setup.plan(setup.batch / s.micro_batches)?, s.workers, s.by_hand, limit)?)
        }
        Some(s) => Some(stages(&plan, s.workers, s.by_hand, limit)?),
        None => None,
    };
    let setup = Setup { part: plan.part.clone(), method: plan.method, batch: plan.batch, ..setup };
    let m = plan.memory();
    let arena = plan.arena_len() * 4;
    let mods = modules(&plan);
    if as_json {
        let mut v = describe(&setup, &plan);
        v["memory_bytes"] = memory_json(&m, arena);
        if let Some(full) = activations_at_f32(&plan)? {
            v["memory_bytes"]["activations_at_32"] = json!(full);
        }
        v["executor_bytes"] = serde_json::to_value(executor_bytes(&plan)).expect("json");
        v["per_module"] = serde_json::to_value(&mods).expect("json");
        if let (Some(l), Some(why)) = (limit, &why) {
            v["memory_limit"] = json!({ "bytes": l, "choice": why });
        }
        if ops {
            v["ops"] = json!({ "train": listing(&plan, true), "eval": listing(&plan, false) });
        }
        if let Some(st) = &staged {
            v["pipeline"] = serde_json::to_value(st).expect("json");
        }
        println!("{v}");
        return Ok(());
    }
    if let Some(why) = &why {
        println!("{why}");
    }
    println!(
        "plan: {} {}; batch {}; input {}×{}×{}, {} classes; {} parameters",
        setup.arch.name(),
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
    if let Some(full) = activations_at_f32(&plan)? {
        println!("  {:<26}{full:>14}{:>12}", "activations at 32", mib(full));
        println!(
            "  {}: the blocks' conv outputs and inner block outputs are kept in 16 bits ({:.2}× of 32); module outputs, aux nets' values, gradients and the f32 rooms they are computed in stay f32",
            plan.method.precision.name(),
            m.activations as f64 / full as f64
        );
    }
    println!("executor buffers beside the arena");
    for e in executor_bytes(&plan) {
        let name = match e.threads {
            Some(t) => format!("{} ({t} thread{})", e.device, if t == 1 { "" } else { "s" }),
            None => e.device.to_string(),
        };
        println!("  {name:<26}{:>14}{:>12}  total {} MiB; {}", e.extra, mib(e.extra), mib(e.total), e.note);
    }
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
    if let Some(st) = &staged {
        print_stages(st);
    }
    if ops {
        print!("{}", render("training step", &listing(&plan, true)));
        print!("{}", render("eval pass", &listing(&plan, false)));
    }
    Ok(())
}

fn print_stages(st: &[StageInfo]) {
    println!(
        "pipeline: {} stages, one per process (MiB per process; sent/received: per training step or micro-batch)",
        st.len()
    );
    println!(
        "  {:<7}{:<10}{:>10}{:>9}{:>9}{:>13}{:>9}{:>9}{:>10}{:>10}",
        "stage", "modules", "GFLOP", "params", "grads", "momentum+BN", "peak", "arena", "received", "sent"
    );
    for s in st {
        let m = &s.memory_bytes;
        let b = |k: &str| m[k].as_u64().unwrap_or(0) as usize;
        println!(
            "  {:<7}{:<10}{:>10.2}{:>9}{:>9}{:>13}{:>9}{:>9}{:>10}{:>10}",
            s.stage,
            format!("{}..={}", s.modules[0], s.modules[1]),
            s.flops as f64 / 1e9,
            mib(b("params")),
            mib(b("grads")),
            mib(b("momentum") + b("bn_state")),
            mib(b("activations")),
            mib(b("arena")),
            mib(s.recv_bytes),
            mib(s.send_bytes),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpff_core::arch::Arch;
    use hpff_core::exec::Executor;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::{Partition, TableKind};

    /// What `hpff plan` states for the CPU executor is what one holds once built.
    #[test]
    fn the_cpu_figure_is_what_the_executor_holds() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let part = Partition::for_k(&arch, 4, TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part, Method::reference(Base::InfoPro, true), 20, [0.5; 4], [0.25; 4]).unwrap();
        let stated = &executor_bytes(&plan)[0];
        let ex = CpuExecutor::new(&plan, stated.threads.unwrap());
        assert_eq!(stated.extra, ex.held().extra);
        assert_eq!(stated.total, ex.held().total());
    }
}
