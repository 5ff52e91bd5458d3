//! Pipeline stages: a plan that trains a contiguous range of modules.
//!
//! Modules are gradient-isolated, so a range of them can train on a worker of its own
//! ([`Plan::stage`]): the stage's schedule runs only its modules' forward, local losses,
//! backward and updates, receives its first module's input from the stage below
//! ([`Op::Recv`]) and sends its last module's output to the stage above ([`Op::Send`]).
//! Under HPFF the cascade level trains module i−1 with module i, so where that pair
//! straddles two stages the cascade's input gradient crosses back: the upper stage sends
//! it, the lower one receives it and adds it to its last module's accumulated output
//! gradient in the sequential order before that module's update.
//!
//! A step may also run as micro-batches ([`Plan::micro_batch`]): the first zeroes the
//! gradients, each adds its share (its losses weighted by its share of the batch), and
//! only the last updates. BatchNorm then normalises each micro-batch by its own
//! statistics, so this is not the step of the whole batch.
//!
//! A stage holds only its own parameters, gradients, momentum and BN statistics: one
//! contiguous span of the whole model's layout each (the arena lays the model out module
//! by module, [`Plan::module_params`]), at offset 0 of the stage's regions; the schedule
//! relocates every offset it emits.
//!
//! [`Op::Recv`]: super::Op::Recv
//! [`Op::Send`]: super::Op::Send

use super::placement::Placement;
use super::{Buf, Plan, PlanError};
use core::ops::Range;

/// Which modules a plan trains and where their tensors lie in the whole model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The first module, and one past the last.
    pub first: usize,
    pub end: usize,
    /// The stage's parameters in the whole model's parameter region (at offset 0 of the
    /// stage's own region).
    pub params: Buf,
    /// The same for the BN running statistics.
    pub state: Buf,
    /// Floats of parameters and of BN statistics of the whole model.
    pub model_params: usize,
    pub model_state: usize,
}

impl Stage {
    /// Every module of a model with `params` parameters and `state` statistics.
    pub(crate) const fn whole(modules: usize, params: usize, state: usize) -> Stage {
        Stage {
            first: 0,
            end: modules,
            params: Buf::f32(0, params),
            state: Buf::f32(0, state),
            model_params: params,
            model_state: state,
        }
    }

    /// Whether the stage holds the whole model (offsets need no relocation).
    pub const fn is_whole(&self) -> bool {
        self.params.len == self.model_params && self.state.len == self.model_state
    }

    /// The stage's offset of the model's parameter offset `off`, if the stage holds it.
    pub fn param(&self, off: usize) -> Option<usize> {
        local(&self.params, off)
    }

    /// The stage's offset of the model's BN-statistics offset `off`, if the stage holds it.
    pub fn state_of(&self, off: usize) -> Option<usize> {
        local(&self.state, off)
    }

    /// The modules of the stage.
    pub const fn modules(&self) -> Range<usize> {
        self.first..self.end
    }
}

/// Where a training step's plan sits in a step cut into micro-batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Micro {
    /// It begins the step: zeroes the gradients and the loss record.
    pub first: bool,
    /// It ends the step: checks the gradients and updates.
    pub last: bool,
    /// Its share of the step's images: every loss's gradient is weighted by it.
    pub share: f32,
}

impl Micro {
    /// A step of one batch.
    pub const WHOLE: Micro = Micro { first: true, last: true, share: 1.0 };
}

fn local(span: &Buf, off: usize) -> Option<usize> {
    (off >= span.off && off < span.end()).then(|| off - span.off)
}

/// Spans `first` and `last` joined (modules are laid out in order).
fn join(first: Buf, last: Buf) -> Buf {
    Buf::f32(first.off, last.end() - first.off)
}

impl Plan {
    /// The plan of one pipeline stage: modules `modules` of this whole-model plan, with
    /// their own arena (parameters, gradients, momentum and BN statistics of those
    /// modules only, and the activation peak of their schedule, the received input and
    /// the cascade gradient included). See the [module docs](self).
    pub fn stage(&self, modules: Range<usize>) -> Result<Plan, PlanError> {
        if !self.stage.is_whole() {
            return Err(PlanError::BadPartition("a stage is cut from the whole model's plan"));
        }
        let k = self.modules();
        if modules.start >= modules.end || modules.end > k {
            return Err(PlanError::BadPartition("a stage needs one or more of the plan's modules"));
        }
        let (first, last) = (modules.start, modules.end - 1);
        let place = Placement::of(self);
        let params = join(place.module_params(first), place.module_params(last));
        let state = join(place.module_state(first), place.module_state(last));
        let mut plan = self.clone();
        plan.stage = Stage { first, end: modules.end, params, state, ..self.stage };
        plan.params = params.len;
        plan.state = state.len;
        plan.measure();
        Ok(plan)
    }

    /// Whether this plan trains every module (not a pipeline stage).
    pub const fn is_whole(&self) -> bool {
        self.stage.is_whole()
    }

    /// This plan as micro-batch `index` of `count` that cut a step of `step_batch` images
    /// (this plan's batch is the micro-batch's): the first zeroes the gradients, each adds
    /// its gradients weighted by its share of the step, the last updates.
    pub fn micro_batch(&self, index: usize, count: usize, step_batch: usize) -> Plan {
        let share = self.batch as f32 / step_batch as f32;
        Plan { micro: Micro { first: index == 0, last: index + 1 == count, share }, ..self.clone() }
    }
}
