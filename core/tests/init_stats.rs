//! Statistics and determinism of the reference initialisers.

use hpff_core::init::*;
use hpff_core::rng::Rng;

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
