//! `--memory-limit`: sizes on the command line, `hpff plan --memory-limit` (the search of
//! [`hpff_core::budget`]) and the check `hpff train --memory-limit` makes before it allocates.

use hpff_core::budget::{choose, Choice};
use hpff_core::method::Precision;
use hpff_core::plan::Plan;

use crate::config::Setup;
use crate::error::{Error, Result};

const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Bytes from `64MiB`, `1GiB`, `1.5 GiB`, `500MB` or plain `67108864` (binary units are
/// powers of 1024, decimal ones of 1000; case does not matter).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim().to_ascii_lowercase());
    let bad = || Error::msg(format!("--memory-limit {s:?}: expected a size such as 64MiB, 1GiB, 500MB or 67108864"));
    let scale = if unit.is_empty() { 1 } else { UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?.1 };
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(scale).ok_or_else(bad)?
    } else {
        let x: f64 = num.parse().map_err(|_| bad())?;
        (x * scale as f64).round() as u64
    };
    if bytes == 0 {
        return Err(bad());
    }
    usize::try_from(bytes).map_err(|_| bad())
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// One line naming a plan's configuration.
fn configuration(plan: &Plan) -> String {
    let splits: Vec<String> = (0..plan.modules().saturating_sub(1))
        .map(|j| {
            let (s, b) = plan.part.split_point(&plan.arch, j);
            format!("{s},{b}")
        })
        .collect();
    let splits = if splits.is_empty() { String::new() } else { format!(" --splits \"{}\"", splits.join(";")) };
    let patches = if plan.method.hpff { format!(" --patches {}", plan.method.patches) } else { String::new() };
    let recompute = if plan.method.recompute { " --recompute" } else { "" };
    let precision = match plan.method.precision {
        Precision::F32 => String::new(),
        p => format!(" --precision {}", p.name()),
    };
    format!("--batch-size {}{splits}{patches}{recompute}{precision}", plan.batch)
}

/// The plan `hpff plan --memory-limit` settles on for `setup`, with a line saying why; an
/// error naming what the smallest plan needs when nothing fits.
pub fn fitting_plan(setup: &Setup, limit: usize) -> Result<(Plan, String)> {
    match choose(setup.arch, setup.method, setup.batch, setup.mean, setup.std, limit)? {
        Choice::Fits { plan, splits } => {
            let why = format!(
                "memory limit {}: K = {} ({} modules, split points: {}), batch {}{} fits with {} of activations; flags: {}",
                mib(limit),
                plan.part.k_label,
                plan.modules(),
                splits.name(),
                plan.batch,
                match (plan.method.hpff, plan.method.recompute) {
                    (true, false) => format!(", {0}×{0} patches", plan.method.patches),
                    (true, true) => format!(", {0}×{0} patches, recomputing forward values", plan.method.patches),
                    _ => String::new(),
                },
                mib(plan.memory().activations),
                configuration(&plan)
            );
            Ok((plan, why))
        }
        Choice::TooSmall { smallest, plan } => Err(Error::msg(format!(
            "nothing fits in {} of activations: the smallest plan (K = {}, batch {}) needs {} ({smallest} bytes)",
            mib(limit),
            plan.part.k_label,
            plan.batch,
            mib(smallest)
        ))),
    }
}

/// `hpff train --memory-limit`: refuses a plan whose activation peak exceeds `limit`,
/// naming the configuration the search would take instead.
pub fn check_fits(setup: &Setup, plan: &Plan, limit: usize) -> Result<()> {
    let need = plan.memory().activations;
    if need <= limit {
        return Ok(());
    }
    let instead = match fitting_plan(setup, limit) {
        Ok((p, _)) => format!("this fits: {}", configuration(&p)),
        Err(e) => e.to_string(),
    };
    Err(Error::msg(format!("the plan needs {} of activations, over the limit of {}; {instead}", mib(need), mib(limit))))
}

/// Refuses pipeline stage `s` (its plan `stage`) when its activation peak is over `limit`.
pub fn check_stage_fits(stage: &Plan, s: usize, limit: usize) -> Result<()> {
    let need = stage.memory().activations;
    if need <= limit {
        return Ok(());
    }
    let m = stage.stage.modules();
    Err(Error::msg(format!(
        "pipeline stage {s} (modules {}..={}) needs {} of activations, over the limit of {}; move modules to other stages with --stages, or use more processes",
        m.start,
        m.end - 1,
        mib(need),
        mib(limit)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5 gib").unwrap(), 3 << 29);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("67108864").unwrap(), 67_108_864);
        for bad in ["", "MiB", "64XB", "-1", "0", "1e9", "64 Mi B"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
