//! The executor's own device buffers, sized once from the layout plan.
//!
//! Walks every op of the layout's training and eval steps. A step may run a plan of the
//! same layout with a smaller batch (the last batch of an epoch); everything here grows
//! with the batch or not at all, so the layout's sizes cover it.

use crate::gemm::WORKSPACE_BYTES;
use hpff_core::ops::Conv2d;
use hpff_core::plan::{op, Op, Plan};

/// Cap of the convolution workspace, in floats (256 MiB).
pub(crate) const CONV_WS_CAP: usize = 64 << 20;
/// Most partial sums per channel of a per-channel reduction (BN statistics, bias grads).
pub(crate) const CHAN_PARTS: usize = 64;
/// Most partial sums of a flat reduction (BCE).
pub(crate) const FLAT_PARTS: usize = 1024;
/// Values each block of a partial reduction should get at least.
pub(crate) const PER_PART: usize = 8192;

/// Floats one image of a convolution needs in the workspace: its column matrix
/// (`c_in·k·k × hw_out`) and its GEMM output or transposed gradient (`c_out × hw_out`).
pub(crate) fn conv_ws_per_image(s: &Conv2d) -> usize {
    (s.c_in * s.k * s.k + s.c_out) * s.h_out() * s.w_out()
}

/// Parts of a per-channel reduction over `total` values of a channel.
pub(crate) fn chan_parts(total: usize) -> usize {
    total.div_ceil(PER_PART).clamp(1, CHAN_PARTS)
}

/// Parts of a flat reduction over `total` values.
pub(crate) fn flat_parts(total: usize) -> usize {
    total.div_ceil(PER_PART).clamp(1, FLAT_PARTS)
}

/// Sizes of the executor's buffers besides the arena (in elements of their type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Extras {
    /// Convolution workspace (f32): column matrices and GEMM outputs of a chunk of images.
    pub conv_ws: usize,
    /// Partial sums (f64): BN statistics, bias gradients, BCE, SupCon row terms.
    pub partials: usize,
    /// Loss record (f32), `plan.loss_slots()`.
    pub loss: usize,
    /// Labels (u32), one per sample of the batch.
    pub labels: usize,
    /// Step scalars (f32): lr, momentum, weight decay, Nesterov.
    pub step: usize,
    /// cuBLAS workspace, bytes.
    pub blas_bytes: usize,
}

impl Extras {
    /// The sizes for executor layout `plan`.
    ///
    /// Convolution chunking rule: the workspace holds `max_conv(per-image floats) × batch`
    /// floats, capped at 256 MiB (but never below one image); each convolution then
    /// works on chunks of `G = min(batch, workspace / its per-image floats)` images.
    pub fn of(plan: &Plan) -> Extras {
        let mut conv_per_image = 0usize;
        let mut max_c = 0usize;
        let mut flat = 1usize;
        let mut visit = |op: &Op| match *op {
            Op::Conv(op::Conv { shape, .. }) | Op::ConvBackward(op::ConvBackward { shape, .. }) => {
                conv_per_image = conv_per_image.max(conv_ws_per_image(&shape));
                max_c = max_c.max(shape.c_out);
            }
            Op::BnTrain(op::BnTrain { shape, .. })
            | Op::BnEval(op::BnEval { shape, .. })
            | Op::BnApply(op::BnApply { shape, .. })
            | Op::BnBackward(op::BnBackward { shape, .. }) => max_c = max_c.max(shape.c),
            Op::Bce(op::Bce { probs, .. }) => flat = flat.max(flat_parts(probs.len)),
            _ => {}
        };
        plan.train_step(&mut visit);
        plan.eval_step(&mut visit);
        let conv_ws = (conv_per_image * plan.batch).min(CONV_WS_CAP.max(conv_per_image));
        // BN backward keeps two sums per channel; SupCon one term per sample.
        let partials = (2 * max_c * CHAN_PARTS).max(flat).max(plan.batch).max(1);
        Extras {
            conv_ws,
            partials,
            loss: plan.loss_slots().max(1),
            labels: plan.batch,
            step: 4,
            blas_bytes: WORKSPACE_BYTES,
        }
    }

    /// Bytes of all of them.
    pub fn bytes(&self) -> usize {
        4 * self.conv_ws + 8 * self.partials + 4 * self.loss + 4 * self.labels + 4 * self.step + self.blas_bytes
    }
}
