//! The on-device task, shared by the firmware, its host twin and the build script (which
//! includes this file to size the static arena): the network, the plan, the data the
//! device makes for itself, and the training loop. `no_std`, no allocator: everything
//! it touches is handed in as slices.
//!
//! Network: ResNet-8 at base width 4 (stages 4, 8, 16 channels), 8×8 single-channel
//! images, 4 classes; InfoPro + HPFF with K = 3 modules (one block each), 2×2 decoder
//! patches, a `1c2f` auxiliary classifier (its conv scales with the base width) with
//! feature dimension 16; batch 4; the blocks' kept values in bf16 ([`PRECISION`]). Fits
//! 256 KiB of RAM with the stack: the planned arena is 203,344 bytes (205,904 at 32; with
//! a `0c2f` head batch 6 would be about 212 KB, batch 8 about 240 KB).
//!
//! Data: a bright quadrant on a noisy background; the class is the quadrant (as in the
//! `static_arena` example). Chance is 25 %.

use hpff_core::arch::Arch;
use hpff_core::exec::{ExecError, Executor, Reference, StepInput};
use hpff_core::method::{AuxHead, Base, Method, Precision};
use hpff_core::optim::Sgd;
use hpff_core::partition::Partition;
use hpff_core::plan::{loss_record_len, LossKind, Plan, PlanError};
use hpff_core::rng::Rng;

pub const DEPTH: usize = 8;
/// Base width of the ResNet (16 in the papers).
pub const WIDTH: usize = 4;
pub const IMAGE: usize = 8;
pub const CHANNELS: usize = 1;
pub const CLASSES: usize = 4;
pub const BATCH: usize = 4;
/// Split points: modules {block 0}, {block 1}, {block 2}.
pub const SPLITS: [(usize, usize); 2] = [(1, 0), (2, 0)];
pub const MODULES: usize = SPLITS.len() + 1;
pub const STEPS: usize = 60;
pub const LR: f32 = 0.05;
/// Held-out batches for the final accuracy.
pub const EVAL_BATCHES: usize = 16;
pub const SEED: u64 = 1;
/// Loss record: every loss slot of every module.
pub const LOSS_SLOTS: usize = loss_record_len(MODULES);
pub const INPUT_LEN: usize = BATCH * CHANNELS * IMAGE * IMAGE;
pub const LOGITS_LEN: usize = BATCH * CLASSES;
/// Steps averaged at each end of training to say whether the loss fell.
pub const WINDOW: usize = 10;

/// How the blocks' kept values are stored: bf16, the 16-bit format whose range is f32's
/// (the build script also plans [`Precision::F32`], and the firmware prints the saving).
pub const PRECISION: Precision = Precision::Bf16Mixed;

/// The plan the firmware runs (and the build script sizes the arena from).
pub fn plan() -> Result<Plan, PlanError> {
    plan_at(PRECISION)
}

/// The firmware's network and method at `precision`.
pub fn plan_at(precision: Precision) -> Result<Plan, PlanError> {
    let arch = Arch::resnet(DEPTH, CHANNELS, IMAGE, CLASSES)?.with_width(WIDTH)?;
    let part = Partition::from_splits(&arch, SPLITS)?;
    let mut method = Method::reference(Base::InfoPro, true);
    method.head = AuxHead::parse("1c2f")?;
    method.feature_dim = 16;
    method.wx = 0.5;
    method.wy = 0.5;
    method.precision = precision;
    Plan::new(arch, part, method, BATCH, [0.5, 0.0, 0.0, 0.0], [0.25, 1.0, 1.0, 1.0])
}

/// The loss slot printed and checked: cross-entropy at the network's classifier on
/// HPFF's cascade path.
pub const fn main_slot() -> usize {
    LossKind::LastY.slot(MODULES - 1)
}

/// A batch of quadrant images: background noise, one bright quadrant, normalised.
pub fn make_batch(rng: &mut Rng, x: &mut [f32], y: &mut [u32]) {
    for (i, label) in y.iter_mut().enumerate() {
        let q = rng.below(CLASSES as u64) as u32;
        *label = q;
        let (qy, qx) = ((q / 2) as usize * IMAGE / 2, (q % 2) as usize * IMAGE / 2);
        for r in 0..IMAGE {
            for c in 0..IMAGE {
                let bright = (qy..qy + IMAGE / 2).contains(&r) && (qx..qx + IMAGE / 2).contains(&c);
                let v = if bright { 0.7 } else { 0.3 } + 0.3 * rng.uniform();
                x[i * IMAGE * IMAGE + r * IMAGE + c] = (v - 0.5) / 0.25;
            }
        }
    }
}

/// What a run ends with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Mean of [`main_slot`] over the first and the last [`WINDOW`] steps.
    pub first_mean: f32,
    pub last_mean: f32,
    pub correct: usize,
    pub total: usize,
}

impl Outcome {
    pub fn accuracy(&self) -> f32 {
        self.correct as f32 / self.total as f32
    }

    /// The checks CI makes: the loss fell and the accuracy beats chance with a margin
    /// (at least twice chance on the held-out images).
    pub fn passed(&self) -> bool {
        self.last_mean < self.first_mean && self.correct * CLASSES >= 2 * self.total
    }
}

/// Where things went wrong.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    Plan(PlanError),
    Exec(ExecError),
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        Failure::Plan(e)
    }
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Self {
        Failure::Exec(e)
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Plan(e) => write!(f, "plan: {e}"),
            Failure::Exec(e) => write!(f, "step: {e}"),
        }
    }
}

/// Plans, initialises, trains [`STEPS`] steps and evaluates, all in the caller's
/// buffers. `on_step(step, losses)` sees every step's loss record (1-based step).
pub fn run(
    plan: &Plan,
    arena: &mut [f32],
    x: &mut [f32],
    y: &mut [u32],
    losses: &mut [f32],
    logits: &mut [f32],
    mut on_step: impl FnMut(usize, &[f32]),
) -> Result<Outcome, Failure> {
    let mut rng = Rng::new(SEED);
    let mut exec = Reference::new(plan, arena)?;
    exec.init(&mut rng);
    let sgd = Sgd::default();
    let slot = main_slot();
    let (mut first, mut last) = (0.0f32, 0.0f32);
    for step in 0..STEPS {
        make_batch(&mut rng, x, y);
        losses.fill(0.0);
        exec.train_step(plan, &StepInput { x, labels: y, lr: LR, sgd }, losses)?;
        if step < WINDOW {
            first += losses[slot];
        }
        if step >= STEPS - WINDOW {
            last += losses[slot];
        }
        on_step(step + 1, losses);
    }
    // Held-out data: a stream of its own, so it does not depend on how long training ran.
    let mut eval_rng = Rng::new(SEED).fork(1);
    let mut correct = 0;
    for _ in 0..EVAL_BATCHES {
        make_batch(&mut eval_rng, x, y);
        exec.eval_step(plan, x, logits)?;
        for (row, &label) in logits.chunks_exact(CLASSES).zip(y.iter()) {
            let arg = (0..CLASSES).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            correct += usize::from(arg as u32 == label);
        }
    }
    let w = WINDOW as f32;
    Ok(Outcome { first_mean: first / w, last_mean: last / w, correct, total: EVAL_BATCHES * BATCH })
}
