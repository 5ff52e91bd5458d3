//! The memory property of local learning, read off the static plan.

use hpff_core::arch::Arch;
use hpff_core::method::{Base, Method};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::{Memory, Plan};
use hpff_tests::executors::Target;
use hpff_tests::on_every_executor;

const CIFAR_MEAN: [f32; 4] = [0.491, 0.482, 0.447, 0.0];
const CIFAR_STD: [f32; 4] = [0.247, 0.243, 0.262, 1.0];

fn plan(depth: usize, base: Base, hpff: bool, k: usize, batch: usize, patches: usize) -> Plan {
    let arch = Arch::resnet(depth, 3, 32, 10).unwrap();
    let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
    let mut m = Method::reference(base, hpff);
    m.patches = patches;
    Plan::new(arch, part, m, batch, CIFAR_MEAN, CIFAR_STD).unwrap()
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn show(label: &str, m: &Memory) {
    println!(
        "{label:<32} total {:>9.2} MiB  activations {:>9.2}  params {:>6.2}  decoder {:>7.2}",
        mib(m.total()),
        mib(m.activations),
        mib(m.params),
        mib(m.decoder)
    );
}

#[test]
fn local_learning_peaks_below_e2e_and_pff_cuts_the_decoder_by_n_squared() {
    for batch in [128, 1024] {
        for (depth, k) in [(32, 16), (110, 55)] {
            let e2e = plan(depth, Base::E2e, false, 1, batch, 1).memory();
            let infopro = plan(depth, Base::InfoPro, false, k, batch, 1).memory();
            let hpff = plan(depth, Base::InfoPro, true, k, batch, 2).memory();
            let hilo = plan(depth, Base::InfoPro, true, k, batch, 1).memory();
            println!("ResNet-{depth}, K = {k}, batch {batch}:");
            show("  e2e", &e2e);
            show("  infopro", &infopro);
            show("  infopro+hpff (2x2 patches)", &hpff);
            show("  infopro+hilo (no PFF)", &hilo);
            assert!(infopro.total() < e2e.total(), "infopro {} vs e2e {}", infopro.total(), e2e.total());
            assert!(hpff.total() < e2e.total(), "hpff {} vs e2e {}", hpff.total(), e2e.total());
            // PFF: the decoder's working set is one (image/2)² patch instead of the full image.
            let ratio = hilo.decoder as f64 / hpff.decoder as f64;
            assert!((3.95..=4.0).contains(&ratio), "decoder ratio {ratio}");
            assert!(hpff.activations < hilo.activations);
        }
    }
}

#[test]
fn e2e_activations_grow_with_depth_but_local_ones_follow_the_largest_module() {
    let e32 = plan(32, Base::E2e, false, 1, 128, 1).memory();
    let e110 = plan(110, Base::E2e, false, 1, 128, 1).memory();
    assert!(e110.activations > 3 * e32.activations);
    let l32 = plan(32, Base::InfoPro, true, 16, 128, 2).memory();
    let l110 = plan(110, Base::InfoPro, true, 55, 128, 2).memory();
    // One block per module in both: the per-module working set is the same size.
    assert_eq!(l32.activations, l110.activations);
}

#[test]
fn the_arena_scales_with_the_batch_and_parameters_do_not() {
    let a = plan(32, Base::InfoPro, true, 4, 64, 2);
    let b = plan(32, Base::InfoPro, true, 4, 128, 2);
    assert_eq!(a.params, b.params);
    assert_eq!(a.state_off(), b.state_off());
    assert!(b.memory().activations > a.memory().activations * 19 / 10);
}

/// The planned activation peak is what a step really touches, on every executor: fill
/// the whole work region (activation stack and the plan's conv scratch) with a sentinel,
/// run one step, and find the highest element of the stack that changed; nothing between
/// the training peak and the scratch may change.
fn touches_the_planned_peak(target: Target) {
    use hpff::device::Snapshot;
    use hpff_core::exec::{Region, StepInput};
    use hpff_core::optim::Sgd;
    use hpff_core::rng::Rng;
    for (base, hpff, k) in [(Base::E2e, false, 1), (Base::InfoPro, false, 4), (Base::InfoPro, true, 4)] {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part, Method::reference(base, hpff), 16, CIFAR_MEAN, CIFAR_STD).unwrap();
        let mut ex = target.open(&plan);
        Snapshot::init(&plan, &mut Rng::new(1)).upload(&mut *ex).unwrap();
        let sentinel = f32::from_bits(0x7fc0_1234);
        let mut work = vec![sentinel; plan.arena_len() - plan.act_off()];
        ex.upload(Region::Work, 0, &work).unwrap();
        let mut rng = Rng::new(2);
        let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
        let mut losses = vec![0.0; plan.loss_slots()];
        let input = StepInput { x: &x, labels: &labels, lr: 0.1, sgd: Sgd::default() };
        ex.train_step(&plan, &input, &mut losses).unwrap();
        ex.download(Region::Work, 0, &mut work).unwrap();
        let changed = |i: &usize| work[*i].to_bits() != sentinel.to_bits();
        let stack = plan.scratch().off - plan.act_off();
        let planned = plan.memory().activations / 4;
        let used = (0..stack).rev().find(changed).map_or(0, |i| i + 1);
        println!("{target:?} {base:?} hpff={hpff}: planned {planned} floats, highest touched {used}");
        assert!(
            used <= planned,
            "{target:?}: a step wrote float {used} of the stack, beyond the planned peak {planned}"
        );
        // Only a last buffer that is allocated but written later than read can stay clean.
        assert!(used as f64 >= 0.95 * planned as f64, "plan overestimates: {used} of {planned}");
    }
}

on_every_executor! {
    a_step_touches_exactly_the_planned_activation_peak => touches_the_planned_peak;
}
