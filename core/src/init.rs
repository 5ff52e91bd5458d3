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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    const N: usize = 100_000;

    fn mean_std(w: &[f32]) -> (f64, f64) {
        let m = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / w.len() as f64;
        (m, libm::sqrt(var))
    }

    #[test]
    fn kaiming_statistics() {
        let mut w = vec![0.0f32; N];
        kaiming_normal_conv(&mut Rng::new(1), &mut w, 16, 3);
        let want = libm::sqrt(2.0 / 144.0);
        let (m, s) = mean_std(&w);
        // 5 standard errors of the mean; 2 % on the std (its standard error is ~0.22 %).
        assert!(m.abs() < 5.0 * want / libm::sqrt(N as f64), "mean {m}");
        assert!((s / want - 1.0).abs() < 0.02, "std {s} vs {want}");
    }

    #[test]
    fn uniform_statistics_and_bounds() {
        let mut w = vec![0.0f32; N];
        uniform_fan_in(&mut Rng::new(2), &mut w, 64 * 9);
        let bound = 1.0 / 24.0;
        assert!(w.iter().all(|&v| v.abs() <= bound as f32));
        let (m, s) = mean_std(&w);
        let want = bound / libm::sqrt(3.0);
        assert!(m.abs() < 5.0 * want / libm::sqrt(N as f64), "mean {m}");
        assert!((s / want - 1.0).abs() < 0.02, "std {s} vs {want}");
        // Both ends are reached (within 0.1 % of the bound).
        let max = w.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let min = w.iter().cloned().fold(f32::MAX, f32::min) as f64;
        assert!(max > 0.999 * bound && min < -0.999 * bound);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (mut a, mut b, mut c) = ([0.0f32; 64], [0.0f32; 64], [0.0f32; 64]);
        kaiming_normal_conv(&mut Rng::new(7), &mut a, 8, 3);
        kaiming_normal_conv(&mut Rng::new(7), &mut b, 8, 3);
        kaiming_normal_conv(&mut Rng::new(8), &mut c, 8, 3);
        assert_eq!(a, b);
        assert_ne!(a, c);
        uniform_fan_in(&mut Rng::new(7), &mut a, 10);
        uniform_fan_in(&mut Rng::new(7), &mut b, 10);
        assert_eq!(a, b);
    }

    #[test]
    fn fill_sets_all() {
        let mut w = [0.0f32; 5];
        fill(&mut w, 1.0);
        assert_eq!(w, [1.0; 5]);
    }
}
