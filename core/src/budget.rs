//! Choosing a configuration from a memory budget (`hpff plan --memory-limit`).
//!
//! The budget bounds a training step's activation peak ([`crate::plan::Memory::activations`]):
//! parameters, gradients, momentum and BN state do not depend on the choices made here.
//! The method (base, HPFF or not, heads) stays the one asked for; the search varies the
//! module count K, the split points, HPFF's patch grid and the batch size, and keeps the
//! first candidate that fits in this order of preference, which follows the evidence
//! of the HPFF and InfoPro papers:
//! 1. **fewest modules**: accuracy falls as K grows (greedy local learning loses most
//!    at large K; InfoPro and HPFF narrow but do not close the gap);
//! 2. **the largest batch**, the one asked for, then halving: the reference
//!    hyper-parameters (learning rate, epochs) were tuned at the batch asked for;
//! 3. **split points**: the reference's table for this K, then InfoPro's balanced-memory
//!    table (ResNet-110), then an even split, then a split of this search's own that
//!    balances the bytes each module keeps for backward;
//! 4. **patch grid** (HPFF only): the one asked for, then the others from coarse to
//!    fine (the paper's ablation has 2×2 best, finer grids cost a little accuracy);
//! 5. **recomputation** (HPFF only): off, then on ([`Method::recompute`]: the same results
//!    for one more forward per module, so it is chosen only where it buys a larger batch
//!    or fewer modules).
//!
//! When nothing fits, the answer is the smallest activation peak any candidate needs.

use crate::arch::Arch;
use crate::error::PlanError;
use crate::method::{Base, Method};
use crate::partition::{Partition, TableKind, MAX_MODULES};
use crate::plan::Plan;

/// Where a candidate's split points come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splits {
    /// The reference's table for K (the reference uses an even split where it has none).
    Reference,
    /// InfoPro's balanced-memory table for ResNet-110 on CIFAR-10.
    Balanced,
    Even,
    /// This search's own: modules holding about equal bytes for backward.
    Searched,
}

impl Splits {
    pub const ALL: [Splits; 4] = [Splits::Reference, Splits::Balanced, Splits::Even, Splits::Searched];

    pub const fn name(self) -> &'static str {
        match self {
            Splits::Reference => "reference table",
            Splits::Balanced => "InfoPro balanced-memory table",
            Splits::Even => "even",
            Splits::Searched => "searched (balanced saved bytes)",
        }
    }

    /// The partition of `arch` into `k` modules, if this source has one.
    pub fn partition(self, arch: &Arch, k: usize) -> Option<Partition> {
        match self {
            Splits::Reference => Partition::for_k(arch, k, TableKind::Reference).ok(),
            Splits::Balanced => Partition::for_k(arch, k, TableKind::BalancedCifar10).ok(),
            Splits::Even => Partition::even(arch, k).ok(),
            Splits::Searched => searched(arch, k),
        }
    }
}

/// What [`choose`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// The preferred plan whose activation peak fits, and where its split points come from.
    Fits { plan: Plan, splits: Splits },
    /// Nothing fits; the smallest activation peak (bytes) of any candidate, and that plan.
    TooSmall { smallest: usize, plan: Plan },
}

/// The preferred configuration of `method` on `arch` whose training activation peak is at
/// most `limit` bytes, with the batch at most `batch` (module docs: the rule).
pub fn choose(
    arch: Arch,
    method: Method,
    batch: usize,
    mean: [f32; 4],
    std: [f32; 4],
    limit: usize,
) -> Result<Choice, PlanError> {
    if batch == 0 {
        return Err(PlanError::ZeroBatch);
    }
    let ks = if method.base == Base::E2e { 1..=1 } else { 2..=arch.blocks().min(MAX_MODULES) };
    let mut smallest: Option<(usize, Plan)> = None;
    let mut first_error = None;
    for k in ks {
        // The best candidate at this K: largest batch, then the order of `Splits::ALL` and the grids.
        let mut best: Option<(usize, Plan, Splits)> = None;
        for splits in Splits::ALL {
            let Some(part) = splits.partition(&arch, k) else { continue };
            if splits != Splits::Reference && Splits::Reference.partition(&arch, k).as_ref() == Some(&part) {
                continue;
            }
            for (patches, recompute) in grids(&method).flat_map(|p| recomputes(&method).map(move |r| (p, r))) {
                let m = Method { patches, recompute, ..method };
                let build = |b: usize| Plan::new(arch, part.clone(), m, b, mean, std);
                // The activation peak grows with the batch: the largest fitting one of the
                // halving ladder batch, batch/2, …, 1 is found by bisection over the ladder.
                let ladder = (0..usize::BITS).map(|i| batch >> i).take_while(|&b| b > 0);
                let rungs = ladder.count();
                let (mut lo, mut hi) = (0, rungs);
                let mut fit: Option<(usize, Plan)> = None;
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    let b = batch >> mid;
                    match build(b) {
                        Ok(plan) => {
                            let need = plan.memory().activations;
                            if smallest.as_ref().is_none_or(|(s, _)| need < *s) {
                                smallest = Some((need, plan.clone()));
                            }
                            if need <= limit {
                                fit = Some((b, plan));
                                hi = mid;
                            } else {
                                lo = mid + 1;
                            }
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                            break;
                        }
                    }
                }
                if let Some((b, plan)) = fit {
                    if best.as_ref().is_none_or(|(bb, _, _)| b > *bb) {
                        best = Some((b, plan, splits));
                    }
                }
            }
        }
        if let Some((_, plan, splits)) = best {
            return Ok(Choice::Fits { plan, splits });
        }
    }
    match (smallest, first_error) {
        (Some((smallest, plan)), _) => Ok(Choice::TooSmall { smallest, plan }),
        (None, Some(e)) => Err(e),
        (None, None) => Err(PlanError::BadPartition("no partition of this network to search")),
    }
}

/// HPFF's patch grids in order of preference: the one asked for, then coarse to fine.
fn grids(method: &Method) -> impl Iterator<Item = usize> + '_ {
    let others = [1, 2, 4].into_iter().filter(move |&n| n != method.patches);
    core::iter::once(method.patches).chain(others.filter(move |_| method.hpff))
}

/// Whether HPFF recomputes forward values, in order of preference: as asked, then on.
fn recomputes(method: &Method) -> impl Iterator<Item = bool> + '_ {
    core::iter::once(method.recompute).chain((method.hpff && !method.recompute).then_some(true))
}

/// Floats block `g` keeps for backward (its conv outputs and its output), batch 1: what the
/// searched split balances.
fn kept(arch: &Arch, g: usize) -> usize {
    let s = arch.block(g);
    let out = s.c_out * s.h_out * s.w_out;
    let convs = match s.kind {
        crate::arch::BlockKind::Basic => 2,
        crate::arch::BlockKind::Bottleneck => 3,
    };
    out * (convs + 1)
}

/// `k` modules with the largest module's kept bytes as small as a greedy cut can make it:
/// bisection on that bound, each bound packed greedily from the first block.
fn searched(arch: &Arch, k: usize) -> Option<Partition> {
    let n = arch.blocks();
    if k == 0 || k > n || k > MAX_MODULES {
        return None;
    }
    let cost = |g: usize| kept(arch, g);
    // Modules needed when none may keep more than `cap`.
    let modules = |cap: usize| {
        let (mut count, mut sum) = (1, 0);
        for g in 0..n {
            if sum + cost(g) > cap && sum > 0 {
                count += 1;
                sum = 0;
            }
            sum += cost(g);
        }
        count
    };
    let (mut lo, mut hi) = ((0..n).map(cost).max().unwrap_or(0), (0..n).map(cost).sum::<usize>());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if modules(mid) <= k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    // Cut at the bound, then split the largest modules further until there are exactly k.
    let mut ends: heapless::Vec<usize, MAX_MODULES> = heapless::Vec::new();
    let mut sum = 0;
    for g in 0..n {
        if sum + cost(g) > lo && sum > 0 {
            ends.push(g - 1).ok()?;
            sum = 0;
        }
        sum += cost(g);
    }
    ends.push(n - 1).ok()?;
    while ends.len() < k {
        // Split the first module with more than one block in two.
        let mut start = 0;
        let j = (0..ends.len()).find(|&j| {
            let s = start;
            start = ends[j] + 1;
            ends[j] > s
        })?;
        let s = if j == 0 { 0 } else { ends[j - 1] + 1 };
        ends.insert(j, s + (ends[j] - s) / 2).ok()?;
    }
    let mut p = Partition::from_splits(
        arch,
        ends.iter().map(|&g| {
            let (s, b) = arch.locate(g);
            (s + 1, b)
        }),
    )
    .ok()?;
    p.k_label = k;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEAN: [f32; 4] = [0.5; 4];
    const STD: [f32; 4] = [0.25, 0.25, 0.25, 1.0];
    const MIB: usize = 1 << 20;

    fn resnet(depth: usize) -> Arch {
        Arch::resnet(depth, 3, 32, 10).unwrap()
    }

    #[test]
    fn a_generous_budget_keeps_the_fewest_modules_and_the_whole_batch() {
        let m = Method::reference(Base::InfoPro, true);
        let Choice::Fits { plan, splits } = choose(resnet(32), m, 128, MEAN, STD, 10_000 * MIB).unwrap() else {
            panic!("10 GB fits")
        };
        assert_eq!((plan.modules(), plan.batch, splits, plan.method.patches), (2, 128, Splits::Reference, 2));
    }

    #[test]
    fn the_choice_fits_and_one_module_fewer_would_not() {
        let arch = resnet(110);
        let m = Method::reference(Base::InfoPro, true);
        let limit = 64 * MIB;
        let Choice::Fits { plan, .. } = choose(arch, m, 1024, MEAN, STD, limit).unwrap() else {
            panic!("ResNet-110 must fit in 64 MiB")
        };
        assert!(plan.memory().activations <= limit);
        let k = plan.modules();
        for splits in Splits::ALL {
            let Some(part) = splits.partition(&arch, plan.part.k_label - 1) else { continue };
            for patches in [1, 2, 4] {
                let fewer = Plan::new(arch, part.clone(), Method { patches, ..m }, 1, MEAN, STD);
                if let Ok(fewer) = fewer {
                    assert!(fewer.modules() >= k || fewer.memory().activations > limit, "{splits:?} {patches}");
                }
            }
        }
    }

    #[test]
    fn too_small_a_budget_says_what_the_smallest_plan_needs() {
        let m = Method::reference(Base::E2e, false);
        let Choice::TooSmall { smallest, plan } = choose(resnet(32), m, 128, MEAN, STD, 1000).unwrap() else {
            panic!("1000 bytes cannot fit")
        };
        assert_eq!(plan.batch, 1);
        assert_eq!(smallest, plan.memory().activations);
        assert!(smallest > 1000);
    }

    #[test]
    fn the_searched_split_has_k_modules_and_cuts_the_early_stages_finer() {
        let arch = resnet(110);
        for k in [2, 4, 16, 54] {
            let p = searched(&arch, k).unwrap();
            assert_eq!(p.modules(), k);
        }
        let p = searched(&arch, 4).unwrap();
        // Stage 1 blocks keep twice the floats of stage 2 ones: module 0 holds fewer blocks.
        assert!(p.blocks_of(0).len() < p.blocks_of(3).len(), "{:?} {:?}", p.blocks_of(0), p.blocks_of(3));
    }
}
