//! Per-epoch metrics, the `metrics.jsonl` file, loss bookkeeping, FLOP counts of a
//! plan and the process's measured peak memory.

use std::collections::BTreeMap;
use std::path::Path;

use hpff_core::plan::{op, LossKind, Op, Plan, LOSS_KINDS};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Accuracy and mean cross-entropy of the network's classifier on a split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Fraction correct, 0..=1.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
}

/// One epoch of training, one line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u32,
    /// Learning rate of the epoch's first step.
    pub lr: f32,
    /// Mean over the epoch's images of the network's final cross-entropy (E2E and the
    /// last module's `ce`; HPFF's last module's cascade path `last_y`).
    pub train_loss: f64,
    /// Mean of every recorded loss, by [`LossKind::name`], one entry per module
    /// (`null` where a module has no loss of that kind).
    pub losses: BTreeMap<String, Vec<Option<f64>>>,
    /// `"test"` or `"val"` when this epoch was evaluated.
    pub eval_split: Option<String>,
    pub eval_accuracy: Option<f64>,
    pub eval_loss: Option<f64>,
    pub train_images: usize,
    pub steps: usize,
    /// Steps undone because a loss or gradient was NaN or infinite (`--on-nonfinite skip`).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Training images per second over the epoch (data loading included).
    pub images_per_s: f64,
    /// Seconds this epoch took (training and evaluation).
    pub epoch_s: f64,
    /// Seconds since the run (or its first part, across resumes) started.
    pub elapsed_s: f64,
    /// `train_loss` within the epoch: its mean over each of [`CURVE_POINTS`] equal runs of
    /// the epoch's steps (fewer when the epoch has fewer steps; `null` for a run whose
    /// steps were all skipped), so `curves.png` draws a curve even for one epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_loss_curve: Vec<Option<f64>>,
}

/// The loss slots a plan's training step writes.
pub fn used_slots(plan: &Plan) -> Vec<usize> {
    let mut used = vec![false; plan.loss_slots()];
    plan.train_step(|op| match *op {
        Op::CrossEntropy(op::CrossEntropy { slot, .. })
        | Op::Bce(op::Bce { slot, .. })
        | Op::SupCon(op::SupCon { slot, .. }) => {
            if let Some(u) = used.get_mut(slot) {
                *u = true;
            }
        }
        _ => {}
    });
    (0..used.len()).filter(|&s| used[s]).collect()
}

/// The slot reported as "the" training loss: the last module's `ce`, else its
/// cascade-path `last_y`, else `last_x`.
pub fn final_slot(plan: &Plan, used: &[usize]) -> Option<usize> {
    let last = plan.modules() - 1;
    [LossKind::Ce, LossKind::LastY, LossKind::LastX].into_iter().map(|k| k.slot(last)).find(|s| used.contains(s))
}

/// Running sums of the loss slots over an epoch, weighted by batch size.
#[derive(Clone, Debug)]
pub struct LossMeter {
    used: Vec<usize>,
    final_slot: Option<usize>,
    sums: Vec<f64>,
    images: usize,
    modules: usize,
    /// Steps of the epoch, and (final-loss sum, images) per run of them (see
    /// [`EpochMetrics::train_loss_curve`]).
    steps: usize,
    curve: Vec<(f64, usize)>,
}

/// Points per epoch of [`EpochMetrics::train_loss_curve`].
pub const CURVE_POINTS: usize = 20;

impl LossMeter {
    pub fn new(plan: &Plan) -> LossMeter {
        let used = used_slots(plan);
        LossMeter {
            final_slot: final_slot(plan, &used),
            used,
            sums: vec![0.0; plan.loss_slots()],
            images: 0,
            modules: plan.modules(),
            steps: 0,
            curve: Vec::new(),
        }
    }

    /// A meter that also keeps the final loss within an epoch of `steps` steps (see
    /// [`LossMeter::add_at`]).
    pub fn with_curve(mut self, steps: usize) -> LossMeter {
        self.steps = steps;
        self.curve = vec![(0.0, 0); CURVE_POINTS.min(steps)];
        self
    }

    /// [`LossMeter::add`] for step `step` of the epoch, counted in its run of steps.
    pub fn add_at(&mut self, losses: &[f32], n: usize, step: usize) {
        self.add(losses, n);
        if let (Some(f), false) = (self.final_slot, self.curve.is_empty()) {
            let k = self.curve.len();
            let c = &mut self.curve[(step * k / self.steps.max(1)).min(k - 1)];
            c.0 += losses[f] as f64 * n as f64;
            c.1 += n;
        }
    }

    /// The final loss's mean over each run of steps (`None` where no step was added).
    pub fn curve(&self) -> Vec<Option<f64>> {
        self.curve.iter().map(|&(s, n)| (n > 0).then(|| s / n as f64)).collect()
    }

    /// Adds one step's losses (each a mean over its `n` images).
    pub fn add(&mut self, losses: &[f32], n: usize) {
        for &s in &self.used {
            self.sums[s] += losses[s] as f64 * n as f64;
        }
        self.images += n;
    }

    /// The first used slot of `losses` that is NaN or infinite: (module, kind, value).
    pub fn nonfinite(&self, losses: &[f32]) -> Option<(usize, LossKind, f32)> {
        let s = *self.used.iter().find(|&&s| !losses[s].is_finite())?;
        let kind = LossKind::ALL[s % LOSS_KINDS];
        Some((s / LOSS_KINDS, kind, losses[s]))
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Running mean of the final loss.
    pub fn final_mean(&self) -> f64 {
        match self.final_slot {
            Some(s) if self.images > 0 => self.sums[s] / self.images as f64,
            _ => f64::NAN,
        }
    }

    /// Means of every used slot by kind name and module.
    pub fn by_kind(&self) -> BTreeMap<String, Vec<Option<f64>>> {
        let mut m = BTreeMap::new();
        for k in LossKind::ALL {
            let v: Vec<Option<f64>> = (0..self.modules)
                .map(|j| {
                    let s = k.slot(j);
                    self.used.contains(&s).then(|| self.sums[s] / self.images.max(1) as f64)
                })
                .collect();
            if v.iter().any(Option::is_some) {
                m.insert(k.name().to_string(), v);
            }
        }
        debug_assert!(self.sums.len() == self.modules * LOSS_KINDS + 1);
        m
    }
}

/// Writes all records, one JSON object a line, replacing `path` atomically and durably.
pub fn write_jsonl(path: &Path, records: &[EpochMetrics]) -> Result<()> {
    let mut s = Vec::new();
    for r in records {
        serde_json::to_writer(&mut s, r).expect("metrics serialize");
        s.push(b'\n');
    }
    crate::files::write_atomic(path, &s)
}

/// The process's peak resident set size in bytes (`VmHWM`), where the OS tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    crate::resources::proc_kib("/proc/self/status", "VmHWM:")
}

/// FLOPs of one training step and of one eval pass of `plan` (2 per multiply-add;
/// convolutions and linear layers only): only work that runs. A conv backward counts its
/// weight gradient when it computes one (HPFF's cascade-only passes do not) and its input
/// gradient when it has one, each as much as the forward.
pub fn plan_flops(plan: &Plan) -> (u64, u64) {
    fn count(op: &Op) -> u64 {
        match *op {
            Op::Conv(op::Conv { shape, x, .. }) => (shape.flops() * (x.len / shape.in_len().max(1))) as u64,
            Op::ConvBackward(op::ConvBackward { shape, x, dy, dx, .. }) => {
                let f = (shape.flops() * (dy.len / shape.out_len().max(1))) as u64;
                f * (u64::from(x.is_some()) + u64::from(dx.is_some()))
            }
            Op::Linear(op::Linear { shape, x, .. }) => {
                (2 * shape.in_f * shape.out_f * (x.len / shape.in_f.max(1))) as u64
            }
            Op::LinearBackward(op::LinearBackward { shape, x, dx, .. }) => {
                let f = (2 * shape.in_f * shape.out_f * (x.len / shape.in_f.max(1))) as u64;
                f * if dx.is_some() { 2 } else { 1 }
            }
            // Comparisons and adds, not multiply-adds: like BN and ReLU, left out of a count
            // that is held against the GEMM peak.
            Op::MaxPool(_) | Op::MaxPoolBackward(_) => 0,
            _ => 0,
        }
    }
    let (mut t, mut e) = (0u64, 0u64);
    plan.train_step(|op| t += count(op));
    plan.eval_step(|op| e += count(op));
    (t, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fmt_mib;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::{Partition, TableKind};

    fn plan(base: Base, hpff: bool) -> Plan {
        let a = Arch::resnet(8, 1, 8, 10).unwrap();
        let p = Partition::for_k(&a, 3, TableKind::Reference).unwrap();
        Plan::new(a, p, Method::reference(base, hpff), 4, [0.0; 4], [1.0; 4]).unwrap()
    }

    /// ResNet-8 on 8×8 single-channel images, batch 4, counted by hand: per image the
    /// stem 2·9·1·16·64, layer1 2 × 2·9·16·16·64, layer2 2·9·16·32·16 + 2·9·32·32·16 +
    /// 2·16·32·16 (shortcut), layer3 2·9·32·64·4 + 2·9·64·64·4 + 2·32·64·4, fc 2·64·10
    /// = 1,527,040; training is three times that but for the stem's input gradient, plus
    /// the stem conv twice more (its output is recomputed for the backward, and its conv
    /// output again for the BN's backward).
    #[test]
    fn the_curve_averages_equal_runs_of_steps() {
        let p = plan(Base::E2e, false);
        let slot = LossKind::Ce.slot(0);
        let mut m = LossMeter::new(&p).with_curve(41);
        let mut losses = vec![0.0f32; p.loss_slots()];
        for step in 0..41 {
            // Step 7 was skipped: its run averages the steps that were added.
            if step == 7 {
                continue;
            }
            losses[slot] = step as f32;
            m.add_at(&losses, 2, step);
        }
        let c = m.curve();
        assert_eq!(c.len(), CURVE_POINTS);
        // Step s falls in run s·20/41: runs of 2 or 3 steps, in order.
        assert_eq!(c[0], Some(1.0)); // steps 0, 1, 2
        assert_eq!(c[2], Some(5.5)); // steps 5, 6
        assert_eq!(c[3], Some(8.0)); // steps 7 (skipped) and 8
        assert_eq!(c[19], Some(39.5)); // steps 39, 40
        let short = LossMeter::new(&p).with_curve(3);
        assert_eq!(short.curve(), vec![None, None, None]);
    }

    #[test]
    fn flops_count_only_work_that_runs() {
        let (t, e) = plan_flops(&plan(Base::E2e, false));
        let per_image = 18_432 + 2 * 294_912 + 147_456 + 294_912 + 16_384 + 147_456 + 294_912 + 16_384 + 1_280;
        assert_eq!(e, 4 * per_image);
        assert_eq!(t, 3 * 4 * per_image - 4 * 18_432 + 2 * 4 * 18_432);
        // HPFF's cascade-only passes compute input gradients but no weight gradients.
        let h = plan(Base::InfoPro, true);
        let (mut cascade_only, mut all) = (0u64, 0u64);
        h.train_step(|op| {
            if let Op::ConvBackward(op::ConvBackward { shape: s, x, dy, .. }) = *op {
                let f = (s.flops() * (dy.len / s.out_len())) as u64;
                all += f;
                if x.is_none() {
                    cascade_only += f;
                }
            }
        });
        assert!(cascade_only > 0 && cascade_only < all);
    }

    #[test]
    fn slots_and_meter() {
        let p = plan(Base::E2e, false);
        assert_eq!(used_slots(&p), vec![LossKind::Ce.slot(0)]);
        let h = plan(Base::InfoPro, true);
        let used = used_slots(&h);
        assert_eq!(final_slot(&h, &used), Some(LossKind::LastY.slot(2)));
        let mut m = LossMeter::new(&h);
        let mut l = vec![0.0; h.loss_slots()];
        for &s in &used {
            l[s] = 2.0;
        }
        m.add(&l, 3);
        for &s in &used {
            l[s] = 1.0;
        }
        m.add(&l, 1);
        assert_eq!(m.final_mean(), 1.75);
        let k = m.by_kind();
        assert_eq!(k["last_y"], vec![None, None, Some(1.75)]);
        assert!(k.contains_key("cascade_decoder"));
        assert!(!k.contains_key("ce"));
        let (t, e) = plan_flops(&p);
        assert!(t > 2 * e && e > 0, "{t} {e}");
    }

    #[test]
    fn rss_and_formatting() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
        assert_eq!(fmt_mib(None), "n/a");
        assert_eq!(fmt_mib(Some(3 * 1024 * 1024 / 2)), "1.50 MiB");
    }
}
