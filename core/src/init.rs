//! Parameter initialisation as the reference network does it.

use crate::rng::Rng;

/// The reference conv init: `w ~ N(0, sqrt(2 / (k·k·c_out)))` (He et al., fan-out),
/// for a `c_out × c_in × k × k` weight of any length `w.len()`.
pub fn kaiming_normal_conv(rng: &mut Rng, w: &mut [f32], c_out: usize, k: usize) {
    debug_assert!(c_out > 0 && k > 0);
    let std = libm::sqrt(2.0 / (k * k * c_out) as f64);
    for v in w.iter_mut() {
        *v = (rng.normal() * std) as f32;
    }
}

/// PyTorch's default init for `Linear` weight and bias and for conv biases:
/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn uniform_fan_in(rng: &mut Rng, w: &mut [f32], fan_in: usize) {
    debug_assert!(fan_in > 0);
    let bound = (1.0 / libm::sqrt(fan_in as f64)) as f32;
    for v in w.iter_mut() {
        *v = rng.uniform_range(-bound, bound);
    }
}

/// Sets every element to `v` (BN weight 1, bias 0, ...).
pub fn fill(w: &mut [f32], v: f32) {
    w.fill(v);
}
