//! The host twin: the firmware's steps on the host's reference executor.
//!
//! `hpff-firmware` prints the same lines as the firmware (less the RAM/flash lines);
//! `hpff-firmware --compare DEVICE.log [--rtol R] [--atol A]` runs the steps quietly and
//! checks every loss slot of every step the device printed against the host's value:
//! `|device − host| ≤ atol + rtol·|host|` (defaults 1e-5 and 1e-4). The report says how
//! many values are bit-identical and the largest differences.
//!
//! At a 16-bit [`task::PRECISION`] the twin runs the portable kernels (the device's: no
//! fused multiply-add): an FMA's other last bit can send a value to the other side of a
//! 16-bit rounding boundary, and everything after it then moves by a 16-bit step, far
//! past any f32 tolerance. With the same kernels the two agree bit for bit.

use hpff_core::method::Precision;
use hpff_core::ops::{limit_isa, Isa};
use hpff_firmware::report::{self, Line};
use hpff_firmware::sizes::ARENA_FLOATS;
use hpff_firmware::task::{self, Outcome};
use std::time::Instant;

struct Run {
    /// Every step's loss record.
    losses: Vec<Vec<f32>>,
    outcome: Outcome,
    /// Seconds of the training steps.
    secs: f64,
}

fn train(mut print: impl FnMut(&str)) -> Result<Run, String> {
    let plan = task::plan().map_err(|e| format!("plan: {e}"))?;
    if plan.arena_len() != ARENA_FLOATS {
        return Err(format!("the plan needs {} floats, the build-time constant says {ARENA_FLOATS}", plan.arena_len()));
    }
    report::header(&plan, |a| print(&a.to_string()));
    let mut arena = vec![0.0f32; ARENA_FLOATS];
    if !report::grouped(hpff_firmware::grouped::check(&mut arena), |a| print(&a.to_string())) {
        return Err("the grouped convolution differs from its definition".into());
    }
    let mut x = vec![0.0f32; task::INPUT_LEN];
    let mut y = vec![0u32; task::BATCH];
    let mut losses = vec![0.0f32; task::LOSS_SLOTS];
    let mut logits = vec![0.0f32; task::LOGITS_LEN];
    let mut all = Vec::new();
    let mut line = Line::default();
    let t = Instant::now();
    let mut secs = 0.0;
    let outcome = task::run(&plan, &mut arena, &mut x, &mut y, &mut losses, &mut logits, |step, l| {
        all.push(l.to_vec());
        report::step(&mut line, step, l).expect("a step line fits its buffer");
        print(line.as_str());
        if step == task::STEPS {
            secs = t.elapsed().as_secs_f64();
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(Run { losses: all, outcome, secs })
}

/// The device's step lines: step number → loss record.
fn parse_log(text: &str) -> Result<Vec<(usize, Vec<f32>)>, String> {
    let mut steps = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("step ") else { continue };
        let mut it = rest.split_whitespace();
        let step: usize = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad step line: {line}"))?;
        let bits = rest.split(" bits ").nth(1).ok_or_else(|| format!("step line without bits: {line}"))?;
        let vals = bits
            .trim()
            .split(',')
            .map(|h| u32::from_str_radix(h, 16).map(f32::from_bits).map_err(|_| format!("bad bits {h:?} in: {line}")))
            .collect::<Result<Vec<f32>, String>>()?;
        steps.push((step, vals));
    }
    Ok(steps)
}

fn compare(log: &str, rtol: f64, atol: f64) -> Result<bool, String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{log}: {e}"))?;
    let device = parse_log(&text)?;
    let host = train(|_| {})?;
    if device.len() != task::STEPS {
        println!("compare: the device log has {} step lines, expected {}", device.len(), task::STEPS);
        return Ok(false);
    }
    let main = task::main_slot();
    let (mut values, mut identical, mut worst_abs, mut worst_rel, mut fails) = (0usize, 0usize, 0f64, 0f64, 0usize);
    let mut main_worst = (0f64, 0usize);
    let mut first_diff = None;
    for (i, (step, d)) in device.iter().enumerate() {
        let h = &host.losses[i];
        if *step != i + 1 || d.len() != h.len() {
            println!(
                "compare: device line {i} is step {step} with {} slots, expected step {} with {}",
                d.len(),
                i + 1,
                h.len()
            );
            return Ok(false);
        }
        for (slot, (&dv, &hv)) in d.iter().zip(h).enumerate() {
            if hv == 0.0 && dv == 0.0 {
                continue; // an unused slot
            }
            values += 1;
            if dv.to_bits() == hv.to_bits() {
                identical += 1;
                continue;
            }
            first_diff.get_or_insert(step);
            let abs = (dv as f64 - hv as f64).abs();
            let rel = abs / (hv as f64).abs().max(f64::MIN_POSITIVE);
            worst_abs = worst_abs.max(abs);
            worst_rel = worst_rel.max(rel);
            if slot == main && abs > main_worst.0 {
                main_worst = (abs, *step);
            }
            if abs.is_nan() || abs > atol + rtol * (hv as f64).abs() {
                fails += 1;
                if fails <= 5 {
                    println!("compare: step {step} slot {slot}: device {dv:e}, host {hv:e} (|diff| {abs:.3e})");
                }
            }
        }
    }
    println!(
        "compare: {} steps, {values} loss values: {identical} bit-identical; largest |device - host| {worst_abs:.3e}, largest relative {worst_rel:.3e}{}",
        device.len(),
        first_diff.map(|s| format!(", first difference at step {s}")).unwrap_or_default()
    );
    println!(
        "compare: cascade CE at the classifier: largest |diff| {:.3e}{}; host final mean {:.6}, eval {}/{}",
        main_worst.0,
        if main_worst.1 > 0 { format!(" (step {})", main_worst.1) } else { String::new() },
        host.outcome.last_mean,
        host.outcome.correct,
        host.outcome.total
    );
    println!(
        "compare: host GEMM kernel {:?}, kernels {} (the device's: Portable, separate multiply and add; the twin runs those at a 16-bit precision, here {})",
        hpff_core::ops::sgemm_kernel(),
        hpff_core::ops::cpu_isa().name(),
        task::PRECISION.name()
    );
    println!(
        "compare: tolerance |device - host| <= {atol:e} + {rtol:e}·|host|: {}",
        if fails == 0 { "within" } else { "EXCEEDED" }
    );
    Ok(fails == 0)
}

pub fn main() -> i32 {
    if task::PRECISION != Precision::F32 {
        limit_isa(Some(Isa::Scalar));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let num = |name: &str, default: f64| -> Result<f64, String> {
        flag(name).map(|s| s.parse::<f64>().map_err(|_| format!("{name}: not a number: {s}"))).unwrap_or(Ok(default))
    };
    let result = match flag("--compare") {
        Some(log) => {
            num("--rtol", 1e-4).and_then(|r| num("--atol", 1e-5).map(|a| (r, a))).and_then(|(r, a)| compare(log, r, a))
        }
        None if args.is_empty() => train(|s| println!("{s}")).map(|run| {
            println!(
                "time: {} training steps in {:.3} s on the host = {:.1} steps/s",
                task::STEPS,
                run.secs,
                task::STEPS as f64 / run.secs
            );
            report::outcome(&run.outcome, |a| println!("{a}"));
            run.outcome.passed()
        }),
        None => Err("usage: hpff-firmware [--compare DEVICE.log [--rtol R] [--atol A]]".into()),
    };
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("hpff-firmware: {e}");
            2
        }
    }
}
