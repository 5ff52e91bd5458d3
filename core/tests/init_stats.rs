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

/// `zero_init_residual` zeroes γ of each branch's last BN (bn2 of a BasicBlock, bn3 of a
/// Bottleneck), never a shortcut's, an inner one's or the stem's, as torchvision does.
#[test]
fn zero_init_residual_zeroes_each_branch_s_last_bn() {
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::partition::Partition;
    use hpff_core::plan::{Init, Plan};
    for (depth, last) in [(18, "bn2"), (50, "bn3")] {
        let a = Arch::resnet_imagenet(depth, 3, 32, 10).unwrap().with_width(8).unwrap();
        for arch in [a, a.with_zero_init_residual()] {
            let part = Partition::even(&arch, 1).unwrap();
            let plan = Plan::new(arch, part, Method::reference(Base::E2e, false), 2, [0.0; 4], [1.0; 4]).unwrap();
            let (mut zeroed, mut branches) = (0, 0);
            plan.for_each_tensor(|t| {
                let name = t.name.to_string();
                if !name.ends_with(".weight")
                    || !(name.contains(".bn") || name.contains("downsample.1") || name == "bn1.weight")
                {
                    return;
                }
                let is_last = name.starts_with("layer") && name.contains(&format!(".{last}."));
                let want = if is_last && arch.zero_init_residual { Init::Zeros } else { Init::Ones };
                assert_eq!(t.init, want, "{name}");
                branches += usize::from(is_last);
                zeroed += usize::from(t.init == Init::Zeros);
            });
            assert_eq!(branches, arch.blocks());
            assert_eq!(zeroed, if arch.zero_init_residual { arch.blocks() } else { 0 });
        }
    }
}
