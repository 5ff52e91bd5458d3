//! `hpff plan`: the static memory plan, bytes by kind and per module, before anything runs.

use hpff_core::plan::{Memory, Plan};
use serde_json::json;

use super::ops::{listing, render};
use crate::budget::fitting_plan;
use crate::config::{Settings, Setup, Shape};
use crate::error::Result;

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

/// `hpff plan`; with `ops`, the schedule op by op after the summary; with `limit`
/// (bytes of activations), the configuration [`fitting_plan`] chooses instead of the one asked for.
pub fn plan(cfg: &Settings, shape: Shape, as_json: bool, ops: bool, limit: Option<usize>) -> Result<()> {
    let setup = cfg.setup(shape)?;
    let (plan, why) = match limit {
        Some(l) => {
            let (p, why) = fitting_plan(&setup, l)?;
            (p, Some(why))
        }
        None => (setup.plan(setup.batch)?, None),
    };
    let setup = Setup { part: plan.part.clone(), method: plan.method, batch: plan.batch, ..setup };
    let m = plan.memory();
    let arena = plan.arena_len() * 4;
    let mods = modules(&plan);
    if as_json {
        let mut v = describe(&setup, &plan);
        v["memory_bytes"] = memory_json(&m, arena);
        v["per_module"] = serde_json::to_value(&mods).expect("json");
        if let (Some(l), Some(why)) = (limit, &why) {
            v["memory_limit"] = json!({ "bytes": l, "choice": why });
        }
        if ops {
            v["ops"] = json!({ "train": listing(&plan, true), "eval": listing(&plan, false) });
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
    if ops {
        print!("{}", render("training step", &listing(&plan, true)));
        print!("{}", render("eval pass", &listing(&plan, false)));
    }
    Ok(())
}
