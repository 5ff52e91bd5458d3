//! ResNeXt's grouped convolution on the device: the core's forward, input gradient and
//! weight gradient of a grouped 3×3 (4 groups of 2 channels, as a ResNeXt-50 at base
//! width 8 has in its first stage) against sums written out here, one term at a time.
//! Runs before training in memory borrowed from the arena (zeroed again afterwards), so
//! it costs no RAM of its own. `no_std`, no allocator.

use hpff_core::ops::{conv2d_accumulate_weight_grad, conv2d_backward_input, conv2d_forward, Conv2d};
use hpff_core::rng::Rng;

/// The convolution checked: 8 → 8 channels in 4 groups, 6×6 maps, stride 1, padding 1.
pub const SHAPE: Conv2d = Conv2d { c_in: 8, c_out: 8, h: 6, w: 6, k: 3, stride: 1, pad: 1, groups: 4 };
/// Images.
pub const N: usize = 2;
/// Largest relative difference accepted (float32 sums of at most 72 terms).
pub const TOLERANCE: f32 = 1e-5;

const XS: usize = N * SHAPE.in_len();
const YS: usize = N * SHAPE.out_len();
const WS: usize = SHAPE.weight_len();
/// Floats of arena the check borrows: x, dy, w, then y, dx, dw from the core and the
/// same three written out, then the conv scratch.
pub const FLOATS: usize = 3 * (XS + YS + WS) + SHAPE.scratch_len();

/// The largest difference, relative to each tensor's largest magnitude (at least 1), of
/// the core's y, dx and dw from the written-out sums; `arena` holds at least [`FLOATS`]
/// floats and is zeroed again on return.
pub fn check(arena: &mut [f32]) -> f32 {
    arena[..FLOATS].fill(0.0);
    let (inputs, rest) = arena[..FLOATS].split_at_mut(XS + YS + WS);
    let (x, rest_in) = inputs.split_at_mut(XS);
    let (dy, w) = rest_in.split_at_mut(YS);
    let mut rng = Rng::new(26);
    for v in x.iter_mut().chain(dy.iter_mut()).chain(w.iter_mut()) {
        *v = rng.uniform() * 2.0 - 1.0;
    }
    let (core, rest) = rest.split_at_mut(XS + YS + WS);
    let (direct, scratch) = rest.split_at_mut(XS + YS + WS);
    let (y, core) = core.split_at_mut(YS);
    let (dx, dw) = core.split_at_mut(XS);
    conv2d_forward(&SHAPE, N, x, w, None, y, scratch);
    conv2d_backward_input(&SHAPE, N, dy, w, dx, scratch);
    conv2d_accumulate_weight_grad(&SHAPE, N, x, dy, dw, None, scratch);
    let (ry, direct) = direct.split_at_mut(YS);
    let (rdx, rdw) = direct.split_at_mut(XS);
    written_out(x, dy, w, ry, rdx, rdw);
    let worst = rel_diff(y, ry).max(rel_diff(dx, rdx)).max(rel_diff(dw, rdw));
    arena[..FLOATS].fill(0.0);
    worst
}

/// y, dx and dw of [`SHAPE`] by the definition: every (image, output, tap) term added
/// to all three where the tap lies inside the input; output channel `co` reads only the
/// input channels of its group. The outputs start at zero (the borrowed arena is).
fn written_out(x: &[f32], dy: &[f32], w: &[f32], y: &mut [f32], dx: &mut [f32], dw: &mut [f32]) {
    let s = SHAPE;
    let (cg_in, cg_out, hw) = (s.c_in / s.groups, s.c_out / s.groups, s.h * s.w);
    for n in 0..N {
        for co in 0..s.c_out {
            for p in 0..hw {
                let (oy, ox) = (p / s.w, p % s.w);
                let out = (n * s.c_out + co) * hw + p;
                for c in 0..cg_in {
                    let ci = co / cg_out * cg_in + c;
                    for t in 0..s.k * s.k {
                        let (iy, ix) = ((oy + t / s.k).wrapping_sub(s.pad), (ox + t % s.k).wrapping_sub(s.pad));
                        if iy >= s.h || ix >= s.w {
                            continue;
                        }
                        let (xi, wi) = ((n * s.c_in + ci) * hw + iy * s.w + ix, (co * cg_in + c) * s.k * s.k + t);
                        y[out] += w[wi] * x[xi];
                        dx[xi] += w[wi] * dy[out];
                        dw[wi] += x[xi] * dy[out];
                    }
                }
            }
        }
    }
}

/// max |a − b| / max(max |b|, 1).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (u, v)| m.max((u - v).abs())) / scale
}
