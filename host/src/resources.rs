//! Resource bounds checked before anything large is allocated: the memory an executor
//! will take against what the machine has, and sizes so large that no arithmetic on
//! them should even be attempted.

use hpff_core::plan::Plan;

use crate::error::{Error, Result};

/// `12.34 MiB` or `n/a`.
pub fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".to_string(), |b| format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0)))
}

/// Most worker threads `--threads` accepts: far above any CPU's cores, far below the
/// point where spawning them stalls the machine.
pub const MAX_THREADS: usize = 1024;

/// Bytes the OS says it can still give (`MemAvailable`), where it says.
pub fn available_bytes() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// A `key: N kB` line of a Linux `/proc` file, in bytes.
pub fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The largest batch, halving from `layout`'s, whose plan needs at most `limit` by `need`.
pub fn largest_fitting_batch(layout: &Plan, limit: u64, need: impl Fn(&Plan) -> u64) -> Option<usize> {
    let mut b = layout.batch / 2;
    while b > 0 {
        let p = Plan::new(layout.arch, layout.part.clone(), layout.method, b, layout.mean, layout.std).ok();
        if p.is_some_and(|p| need(&p) <= limit) {
            return Some(b);
        }
        b /= 2;
    }
    None
}

/// Refuses a layout whose executor would need more than `limit` bytes (`need(plan)`),
/// naming the largest batch (halving from the layout's) that would fit.
pub fn check_fits(layout: &Plan, limit: u64, what: &str, need: impl Fn(&Plan) -> u64) -> Result<()> {
    let want = need(layout);
    if want <= limit {
        return Ok(());
    }
    let hint = match largest_fitting_batch(layout, limit, &need) {
        Some(b) => format!("--batch-size {b} would fit; more modules (--k) or patches also lower the peak"),
        None => "not even batch 1 fits; try a narrower or shallower network".to_string(),
    };
    Err(Error::msg(format!(
        "batch {} needs {} but {what} is {}: {hint}",
        layout.batch,
        fmt_mib(Some(want)),
        fmt_mib(Some(limit))
    )))
}

/// Refuses shapes whose sizes would overflow before a plan is even built: a generous
/// upper bound on any buffer (every op's output at the widest layer, with im2col's 9×)
/// must stay far inside 64-bit arithmetic.
pub fn check_plannable(batch: usize, image: usize, widest_channels: usize) -> Result<()> {
    const OPS_BOUND: u128 = 1 << 14;
    let bound = OPS_BOUND * batch as u128 * (image as u128).pow(2) * widest_channels as u128 * 9;
    if bound > (1u128 << 60) {
        return Err(Error::msg(format!(
            "batch {batch} of {image}×{image} images through {widest_channels} channels is beyond any machine's memory; use a smaller batch or image"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::{Partition, TableKind};

    #[test]
    fn too_large_plans_name_a_batch_that_fits() {
        let a = Arch::resnet(8, 3, 16, 10).unwrap();
        let p = Partition::for_k(&a, 2, TableKind::Reference).unwrap();
        let plan = Plan::new(a, p, Method::reference(Base::InfoPro, true), 64, [0.0; 4], [1.0; 4]).unwrap();
        let need = |p: &Plan| p.arena_len() as u64 * 4;
        let at =
            |b: usize| need(&Plan::new(plan.arch, plan.part.clone(), plan.method, b, plan.mean, plan.std).unwrap());
        assert!(check_fits(&plan, need(&plan), "the limit", need).is_ok());
        // Room for batch 16 but not 32: says 16.
        let e = check_fits(&plan, at(16) + 1, "the limit", need).unwrap_err().to_string();
        assert!(e.starts_with("batch 64 needs ") && e.contains("--batch-size 16 would fit"), "{e}");
        let e = check_fits(&plan, 100, "available memory", need).unwrap_err().to_string();
        assert!(e.contains("but available memory is 0.00 MiB: not even batch 1 fits"), "{e}");
    }

    #[test]
    fn absurd_shapes_are_refused_before_planning() {
        assert!(check_plannable(1024, 224, 2048).is_ok());
        let e = check_plannable(1024, 1_000_000_000, 64).unwrap_err().to_string();
        assert!(e.contains("beyond any machine's memory"), "{e}");
        assert!(check_plannable(usize::MAX, usize::MAX, usize::MAX).is_err());
    }
}
