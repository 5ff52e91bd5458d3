//! What an executor allocates beside the arena, asked op by op.
//!
//! An executor's own buffers (conv workspaces, partial sums of reductions) depend on the
//! ops it will run. [`needs`] walks a plan's training and evaluation steps once and asks
//! the executor's [`Sizing`] what each op needs, merging the answers, so no executor walks
//! the op list itself and `hpff plan` can state the whole bound per executor before
//! anything is allocated. Like [`super::dispatch`], it is the one place that matches on
//! the op; a [`Sizing`] method exists for each family of ops that any executor sizes
//! something for, and defaults to needing nothing.

use crate::ops::BatchNorm2d;
use crate::plan::{op, Op, Plan};

/// A backend's needs beside the arena, one op at a time.
pub trait Sizing {
    /// What it sizes (counts of its own units); the needs of a whole step are the ops'
    /// needs merged by [`Sizing::merge`].
    type Need: Copy + Default;

    /// The need of two ops together (usually the larger of each field: buffers are
    /// reused from op to op).
    fn merge(a: Self::Need, b: Self::Need) -> Self::Need;

    fn conv(&self, _a: &op::Conv) -> Self::Need {
        Self::Need::default()
    }
    fn conv_backward(&self, _a: &op::ConvBackward) -> Self::Need {
        Self::Need::default()
    }
    /// Every BN op over `shape`; `sums`: it sums over the batch (a training BN's
    /// statistics, a BN backward's gradient sums), rather than applying given statistics.
    fn bn(&self, _shape: &BatchNorm2d, _sums: bool) -> Self::Need {
        Self::Need::default()
    }
    fn linear_backward(&self, _a: &op::LinearBackward) -> Self::Need {
        Self::Need::default()
    }
    fn bce(&self, _a: &op::Bce) -> Self::Need {
        Self::Need::default()
    }
}

/// What `sizing`'s backend needs to run `plan`'s training and evaluation steps (and
/// every plan of the same layout with a smaller batch: every need grows with the batch).
pub fn needs<S: Sizing>(plan: &Plan, sizing: &S) -> S::Need {
    let mut need = S::Need::default();
    let mut visit = |op: &Op| need = S::merge(need, of(sizing, op));
    plan.train_step(&mut visit);
    plan.eval_step(&mut visit);
    need
}

fn of<S: Sizing>(s: &S, op: &Op) -> S::Need {
    match op {
        Op::Conv(a) => s.conv(a),
        Op::ConvBackward(a) => s.conv_backward(a),
        Op::BnTrain(a) => s.bn(&a.shape, true),
        Op::BnEval(a) => s.bn(&a.shape, false),
        Op::BnApply(a) => s.bn(&a.shape, false),
        Op::BnBackward(a) => s.bn(&a.shape, true),
        Op::LinearBackward(a) => s.linear_backward(a),
        Op::Bce(a) => s.bce(a),
        _ => S::Need::default(),
    }
}
