//! Executors: what runs a [`Plan`].
//!
//! Every executor implements one interface, [`Executor`]: it **owns its arena** (a host
//! slice, or one device allocation laid out by the plan), moves named [`Region`]s of it
//! in and out explicitly (parameters, BN statistics, momentum: for initialisation,
//! checkpoints and tests), and runs [`Executor::train_step`] / [`Executor::eval_step`].
//! The training loop, the CLI and every correctness test are written once against this
//! trait. Three implement it: the single-threaded [`Reference`] here (no allocator: it
//! runs on a caller's static slice), the multi-threaded CPU executor of the `hpff`
//! crate, and the CUDA executor of `hpff-kernels`.
//!
//! Inside an executor, a step's ops run through one interpreter, [`dispatch`]: it
//! matches on the op (the only code that does, besides the plan's own bookkeeping),
//! recognises the runs of ops a backend may fuse ([`Run`]), and calls the executor's
//! [`Backend`] methods, one per op.
//!
//! What every executor shares lives here, once: the input checks of a step
//! ([`check_train`], [`check_eval`]), the region layout ([`region`]), and the
//! parameter initialisation ([`init_params`]). The per-op semantics (which buffer an op
//! reads and writes, where a parameter's gradient sits: [`Plan::grad_of`]) are the
//! plan's, documented on [`crate::plan::Op`]; the BN running-statistics update order is
//! [`crate::ops::batchnorm_update_running`].
//!
//! An executor is built for one plan (its *layout*); a step may run any plan with the same
//! parameter layout whose arena fits (the last, smaller batch of an epoch).

mod backend;
pub mod dispatch;
mod reference;
pub mod sizing;

pub use backend::{Backend, Epilogue, Run};
pub use dispatch::{run_op, run_unfused};
pub use reference::Reference;
pub use sizing::Sizing;

use crate::init;
use crate::optim::Sgd;
use crate::plan::{Buf, Init, Plan, TensorKind};
use crate::rng::Rng;
use core::fmt;

/// A named part of an executor's arena that crosses the host boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Region {
    /// Every trainable parameter, at the offsets [`Plan::for_each_tensor`] gives (module
    /// by module, [`Plan::module_params`]).
    Params,
    /// Their gradients after the last training step (same offsets as `Params`).
    Grads,
    /// SGD momentum buffers (same offsets as `Params`).
    Momentum,
    /// BN running means and variances.
    BnState,
    /// Everything after the state: the activation stack and conv scratch of the layout
    /// plan. Only tests look here (what a step touched).
    Work,
}

impl Region {
    pub const ALL: [Region; 5] = [Region::Params, Region::Grads, Region::Momentum, Region::BnState, Region::Work];

    pub const fn name(self) -> &'static str {
        match self {
            Region::Params => "params",
            Region::Grads => "grads",
            Region::Momentum => "momentum",
            Region::BnState => "bn_state",
            Region::Work => "work",
        }
    }
}

/// Where `r` lies in the arena of `layout` (offsets in floats).
pub fn region(layout: &Plan, r: Region) -> Buf {
    let p = layout.params;
    match r {
        Region::Params => Buf::f32(0, p),
        Region::Grads => Buf::f32(layout.grads_off(), p),
        Region::Momentum => Buf::f32(layout.momentum_off(), p),
        Region::BnState => Buf::f32(layout.state_off(), layout.state),
        Region::Work => Buf::f32(layout.act_off(), layout.arena_len() - layout.act_off()),
    }
}

/// `len` floats at `offset` inside region `r` of `layout`, as an arena slice.
pub fn region_span(layout: &Plan, r: Region, offset: usize, len: usize) -> Result<Buf, ExecError> {
    let whole = region(layout, r);
    match offset.checked_add(len) {
        Some(end) if end <= whole.len => Ok(Buf::f32(whole.off + offset, len)),
        _ => Err(ExecError::Region { region: r, end: offset.saturating_add(len), len: whole.len }),
    }
}

/// Why a step could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError {
    ArenaSize {
        need: usize,
        have: usize,
    },
    InputSize {
        need: usize,
        have: usize,
    },
    LossSlots {
        need: usize,
        have: usize,
    },
    Label {
        index: usize,
        label: u32,
        classes: usize,
    },
    /// A copy reaches past the end of a region.
    Region {
        region: Region,
        end: usize,
        len: usize,
    },
    /// A pipeline stage's plan (it sends to or receives from another stage) on an
    /// executor without a link to the other stages.
    NoLink,
    /// A step's plan has another parameter layout than the executor's.
    Layout {
        params: usize,
        state: usize,
        have_params: usize,
        have_state: usize,
    },
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExecError::ArenaSize { need, have } => {
                write!(f, "arena holds {have} floats, the plan needs {need}")
            }
            ExecError::InputSize { need, have } => {
                write!(f, "input has {have} values, the plan's batch needs {need}")
            }
            ExecError::LossSlots { need, have } => {
                write!(f, "loss record has {have} slots, the plan needs {need}")
            }
            ExecError::Label { index, label, classes } => {
                write!(f, "label {label} of sample {index} is out of range for {classes} classes")
            }
            ExecError::Region { region, end, len } => {
                write!(f, "copy to or from {} reaches float {end}, the region holds {len}", region.name())
            }
            ExecError::NoLink => f.write_str(
                "this plan is one stage of a pipeline: it runs on the CPU executor with a link to the other stages",
            ),
            ExecError::Layout { params, state, have_params, have_state } => write!(
                f,
                "the step's plan has {params} parameters and {state} BN statistics, the executor's {have_params} and {have_state}"
            ),
        }
    }
}

impl core::error::Error for ExecError {}

/// Everything one training step needs besides the arena.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// Normalised images, batch × C × H × W.
    pub x: &'a [f32],
    pub labels: &'a [u32],
    pub lr: f32,
    pub sgd: Sgd,
}

/// Bytes an executor holds for its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Held {
    /// The arena: exactly the plan's [`crate::plan::Memory::total`].
    pub arena: usize,
    /// The executor's own buffers beyond the plan (per-thread scratch, per-chunk partial
    /// sums, a GPU's GEMM workspace and loss record).
    pub extra: usize,
}

impl Held {
    pub const fn total(&self) -> usize {
        self.arena + self.extra
    }
}

/// Runs plans over an arena it owns. See the [module docs](self).
pub trait Executor: fmt::Display {
    /// Errors of the device besides [`ExecError`] (for host executors, `ExecError` itself).
    type Error: From<ExecError> + fmt::Display + fmt::Debug;

    /// The plan the arena is laid out for.
    fn layout(&self) -> &Plan;

    /// Bytes held now.
    fn held(&self) -> Held;

    /// Copies `src` into region `r` from float `offset` on.
    fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<(), Self::Error>;

    /// Copies region `r` from float `offset` on into `dst`.
    fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<(), Self::Error>;

    /// One training step of `plan` (forward, local losses, backward, SGD); `losses`
    /// receives each loss slot's unweighted value (see [`crate::plan::LossKind`]).
    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<(), Self::Error>;

    /// One evaluation pass of `plan` on `x`; the logits (batch × classes) into `logits`.
    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), Self::Error>;
}

/// Checks that `plan` can run on an executor laid out for `layout`.
pub fn check_layout(layout: &Plan, plan: &Plan) -> Result<(), ExecError> {
    if plan.params != layout.params || plan.state != layout.state {
        return Err(ExecError::Layout {
            params: plan.params,
            state: plan.state,
            have_params: layout.params,
            have_state: layout.state,
        });
    }
    if plan.arena_len() > layout.arena_len() {
        return Err(ExecError::ArenaSize { need: plan.arena_len(), have: layout.arena_len() });
    }
    Ok(())
}

/// Refuses a pipeline stage that talks to other stages (an executor without a link to
/// them calls this first).
pub fn check_unlinked(plan: &Plan) -> Result<(), ExecError> {
    let st = plan.stage;
    if st.first > 0 || st.end < plan.modules() {
        return Err(ExecError::NoLink);
    }
    Ok(())
}

/// Checks an eval pass's inputs (every executor calls this first).
pub fn check_eval(layout: &Plan, plan: &Plan, x: &[f32], logits: &[f32]) -> Result<(), ExecError> {
    check_layout(layout, plan)?;
    if x.len() != plan.input().len {
        return Err(ExecError::InputSize { need: plan.input().len, have: x.len() });
    }
    if logits.len() != plan.logits().len {
        return Err(ExecError::InputSize { need: plan.logits().len, have: logits.len() });
    }
    Ok(())
}

/// Checks a training step's inputs (every executor calls this first).
pub fn check_train(layout: &Plan, plan: &Plan, input: &StepInput, losses: &[f32]) -> Result<(), ExecError> {
    check_layout(layout, plan)?;
    if input.x.len() != plan.input().len {
        return Err(ExecError::InputSize { need: plan.input().len, have: input.x.len() });
    }
    if input.labels.len() != plan.batch {
        return Err(ExecError::InputSize { need: plan.batch, have: input.labels.len() });
    }
    let classes = plan.arch.classes;
    if let Some((index, &label)) = input.labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(ExecError::Label { index, label, classes });
    }
    if losses.len() < plan.loss_slots() {
        return Err(ExecError::LossSlots { need: plan.loss_slots(), have: losses.len() });
    }
    Ok(())
}

/// Initialises parameters (`params`, [`Region::Params`]) and BN running statistics
/// (`state`, [`Region::BnState`]) as the reference does, in checkpoint order.
pub fn init_params(plan: &Plan, params: &mut [f32], state: &mut [f32], rng: &mut Rng) {
    plan.for_each_tensor(|t| {
        let region = if t.kind == TensorKind::Param { &mut *params } else { &mut *state };
        let w = &mut region[t.off..t.off + t.len];
        match t.init {
            Init::KaimingConv { c_out, k } => init::kaiming_normal_conv(rng, w, c_out, k),
            Init::UniformFanIn(fan_in) => init::uniform_fan_in(rng, w, fan_in),
            Init::Ones => init::fill(w, 1.0),
            Init::Zeros => init::fill(w, 0.0),
        }
    });
}
