//! The executor's own device buffers, sized once from the layout plan.
//!
//! The core's [`sizing::needs`] asks [`CudaSizing`] about every op of the layout's
//! training and eval steps. A step may run a plan of the same layout with a smaller batch
//! (the last batch of an epoch); everything here grows with the batch or not at all, so
//! the layout's sizes cover it.

use crate::gemm::WORKSPACE_BYTES;
use hpff_core::exec::{sizing, Sizing};
use hpff_core::ops::{BatchNorm2d, Conv2d};
use hpff_core::plan::{op, Plan};

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

/// What the CUDA backend's buffers are sized by, per op.
#[derive(Clone, Copy, Debug, Default)]
struct Need {
    /// A convolution's workspace floats per image ([`conv_ws_per_image`]).
    conv_per_image: usize,
    /// Channels of a per-channel reduction (convolution bias gradients, BN).
    channels: usize,
    /// Partial sums of a flat reduction ([`flat_parts`]).
    flat: usize,
}

struct CudaSizing;

impl Sizing for CudaSizing {
    type Need = Need;

    fn merge(a: Need, b: Need) -> Need {
        Need {
            conv_per_image: a.conv_per_image.max(b.conv_per_image),
            channels: a.channels.max(b.channels),
            flat: a.flat.max(b.flat),
        }
    }

    fn conv(&self, a: &op::Conv) -> Need {
        Need { conv_per_image: conv_ws_per_image(&a.shape), channels: a.shape.c_out, flat: 0 }
    }

    fn conv_backward(&self, a: &op::ConvBackward) -> Need {
        Need { conv_per_image: conv_ws_per_image(&a.shape), channels: a.shape.c_out, flat: 0 }
    }

    fn bn(&self, shape: &BatchNorm2d, _sums: bool) -> Need {
        Need { channels: shape.c, ..Need::default() }
    }

    fn bce(&self, a: &op::Bce) -> Need {
        Need { flat: flat_parts(a.probs.len), ..Need::default() }
    }
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
        let n = sizing::needs(plan, &CudaSizing);
        let conv_ws = (n.conv_per_image * plan.batch).min(CONV_WS_CAP.max(n.conv_per_image));
        // BN backward keeps two sums per channel; SupCon one term per sample.
        let partials = (2 * n.channels * CHAN_PARTS).max(n.flat).max(plan.batch).max(1);
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
