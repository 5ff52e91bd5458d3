//! Layer math: forward and backward of every op the networks use, on NCHW `f32`
//! tensors, allocation-free, each op working on whatever batch sub-range it is handed.
//!
//! Convolution and linear layers reduce to [`sgemm`], except the stride-1 "same" 3×3
//! convolutions on AVX2 and NEON, which run direct kernels (`conv_direct`, `conv_wgrad`) that read
//! the image without a column matrix, their forward and input gradient as Winograd
//! F(2×2, 3×3) (`conv_winograd`) on even-sized maps of 8 or more channels; the other ops are single passes
//! written as plain slice loops the compiler vectorizes. Reductions (BatchNorm
//! statistics, bias gradients, pooling) run in `f64` lanes inside a call, in a fixed
//! order, so results do not depend on how a caller chunks the batch beyond the
//! per-call partial sums it adds itself.

mod activation;
mod batchnorm;
mod bf16;
mod conv;
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
mod conv_direct;
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
mod conv_lanes;
mod conv_layout;
mod conv_shape;
mod conv_tail;
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
mod conv_wgrad;
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
mod conv_winograd;
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
mod conv_winograd_wgrad;
mod f16;
mod gemm;
mod half16;
mod isa;
mod linear;
mod maxpool;
mod pool;
mod resize;

pub use activation::{
    add_assign, denormalize, relu_backward_inplace, relu_forward, relu_inplace, sigmoid_backward, sigmoid_forward,
};
pub use batchnorm::{
    batchnorm_accumulate_backward_sums, batchnorm_accumulate_sq_dev, batchnorm_accumulate_sum,
    batchnorm_backward_input, batchnorm_batch_stats, batchnorm_eval_stats, batchnorm_finalize, batchnorm_forward,
    batchnorm_mean_from_sum, batchnorm_update_running, BatchNorm2d, BN_EPS, BN_MOMENTUM,
};
pub use bf16::{bf16_narrow, bf16_widen};
pub use conv::{conv2d_accumulate_weight_grad, conv2d_backward_input, conv2d_forward, conv2d_forward_bn};
pub use conv_shape::Conv2d;
pub use conv_tail::{BnTail, Images};
pub use f16::{f16_narrow, f16_widen};
pub use gemm::{sgemm, sgemm_kernel, sgemm_strided_batch, sgemm_using, GemmKernel};
pub use half16::{narrow, widen, Half};
pub use isa::{cpu_isa, detected_isa, limit_isa, Isa};
pub use linear::{linear_accumulate_weight_grad, linear_backward_input, linear_forward, Linear};
pub use maxpool::{maxpool_backward, maxpool_forward, MaxPool2d};
pub use pool::{global_avg_pool_backward, global_avg_pool_forward};
pub use resize::{bilinear_accumulate_backward, bilinear_forward, crop_accumulate_backward, crop_forward, Window};

/// Sums `x` into eight independent `f64` lanes: vectorizable without reassociating
/// (each lane is its own chain), and deterministic.
#[inline]
pub(crate) fn sum_lanes(x: &[f32], lanes: &mut [f64; 8]) {
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for l in 0..8 {
            lanes[l] += ch[l] as f64;
        }
    }
    for (l, &v) in it.remainder().iter().enumerate() {
        lanes[l] += v as f64;
    }
}

/// Folds the lanes in a fixed order.
#[inline]
pub(crate) fn fold_lanes(lanes: &[f64; 8]) -> f64 {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}
