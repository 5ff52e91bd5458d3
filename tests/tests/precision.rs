//! `--precision bf16-mixed`: the blocks' kept values in bf16. A step agrees with the f32
//! step at a bf16 tolerance (and is not that step: the rounding is really there), every
//! executor agrees with the reference executor's bf16 step, and reruns keep their bits.

use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::exec::{Region, StepInput};
use hpff_core::method::{Base, Method, Precision};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;
use hpff_tests::executors::Target;
use hpff_tests::golden::{rel_err, GOLDEN_SGD};
use hpff_tests::on_every_executor;

/// The networks and methods of the checks: CIFAR ResNet-20 (basic blocks, downsampling
/// shortcuts) e2e and InfoPro + HPFF K = 4, DGL K = 2 on the ImageNet-style ResNet-18.
fn cases(precision: Precision) -> Vec<(String, Plan)> {
    let resnet8 = Arch::resnet(8, 3, 32, 10).unwrap();
    let resnet18 = Arch::resnet_imagenet(18, 3, 32, 10).unwrap().with_width(8).unwrap();
    let all = [(resnet8, Base::E2e, false, 1), (resnet8, Base::InfoPro, true, 3), (resnet18, Base::Dgl, false, 2)];
    all.into_iter()
        .map(|(arch, base, hpff, k)| {
            let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
            let method = Method { precision, ..Method::reference(base, hpff) };
            let name = format!("{} {base:?} hpff={hpff} {}", arch.name(), precision.name());
            (name, Plan::new(arch, part, method, 64, [0.5; 4], [0.25; 4]).unwrap())
        })
        .collect()
}

/// The seeded start, batch and labels of the checks.
fn inputs(plan: &Plan) -> (Snapshot, Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(11);
    let start = Snapshot::init(plan, &mut rng);
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(10) as u32).collect();
    (start, x, labels)
}

/// One step from the seeded start on input `x` (a second on this random batch would
/// amplify any difference, see `executors.rs`): its losses, gradients, and the model after it.
fn step_on(target: Target, plan: &Plan, x: &[f32]) -> (Vec<f32>, Vec<f32>, Snapshot) {
    let (start, _, labels) = inputs(plan);
    let mut ex = target.open(plan);
    start.upload(&mut *ex).unwrap();
    let mut losses = vec![0.0; plan.loss_slots()];
    let input = StepInput { x, labels: &labels, lr: 0.1, sgd: GOLDEN_SGD };
    ex.train_step(plan, &input, &mut losses).unwrap();
    let mut grads = vec![0.0; plan.params];
    ex.download(Region::Grads, 0, &mut grads).unwrap();
    (losses, grads, Snapshot::download(&mut *ex).unwrap())
}

fn one_step(target: Target, plan: &Plan) -> (Vec<f32>, Vec<f32>, Snapshot) {
    step_on(target, plan, &inputs(plan).1)
}

/// ‖a − b‖ / ‖b‖.
fn l2_rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// How far the f32 gradients of `plan` move when every input value moves by 2^-9 of
/// itself (half a bf16 step, up or down at random): the scale any 16-bit rounding of these
/// small random batches is judged on. At initialisation, with batches of 64 random images,
/// it is 3e-2 to 2e-1: BN over few values amplifies small changes, so one rounding that
/// goes the other way changes everything downstream of it by as much.
fn sensitivity(plan: &Plan) -> f64 {
    let f32_plan = Plan::new(
        plan.arch,
        plan.part.clone(),
        Method { precision: Precision::F32, ..plan.method },
        plan.batch,
        plan.mean,
        plan.std,
    )
    .unwrap();
    let x = inputs(&f32_plan).1;
    let mut rng = Rng::new(5);
    let moved: Vec<f32> = x.iter().map(|v| v * (1.0 + if rng.uniform() < 0.5 { -1.0 } else { 1.0 } / 512.0)).collect();
    let (_, g0, _) = step_on(Target::Reference, &f32_plan, &x);
    let (_, g, _) = step_on(Target::Reference, &f32_plan, &moved);
    l2_rel(&g, &g0)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The bf16 step against the same executor's f32 step: its gradients within three times
/// [`sensitivity`] (a step that read a wrong or stale buffer would be off by the
/// gradients' own size), its losses within 1e-3; not equal (the rounding is there). (What
/// it saves is `memory.rs`'s: these nets are too shallow to save much.)
fn bf16_tracks_f32(target: Target) {
    for ((name, plan), (_, full)) in cases(Precision::Bf16Mixed).into_iter().zip(cases(Precision::F32)) {
        let (l, g, _) = one_step(target, &plan);
        let (l0, g0, _) = one_step(target, &full);
        let (el, eg, s) = (rel_err(&l, &l0), l2_rel(&g, &g0), sensitivity(&plan));
        println!("{target:?} {name}: losses {el:.1e}, grads {eg:.1e} (l2; sensitivity {s:.1e})");
        assert!(el < 1e-3 && eg < 3.0 * s, "{target:?} {name}: losses {el:.2e}, grads {eg:.2e} against {s:.2e}");
        assert_ne!(bits(&g), bits(&g0), "{target:?} {name}: bf16-mixed gave the f32 gradients: nothing was rounded");
    }
}

/// Every executor's bf16 step against the reference executor's. Both round the same
/// values to bf16, but the values come from f32 arithmetic in another order, so a value
/// near a rounding boundary may go the other way, and everything downstream of it moves
/// by a bf16 step: the bound is [`bf16_tracks_f32`]'s, not the f32 executors' 1e-4.
fn bf16_agrees_with_the_reference(target: Target) {
    for (name, plan) in cases(Precision::Bf16Mixed) {
        let (l0, g0, _) = one_step(Target::Reference, &plan);
        let (l, g, _) = one_step(target, &plan);
        let (el, eg, s) = (rel_err(&l, &l0), l2_rel(&g, &g0), sensitivity(&plan));
        println!("{target:?} {name}: losses {el:.1e}, grads {eg:.1e} (l2; sensitivity {s:.1e})");
        assert!(el < 1e-3 && eg < 3.0 * s, "{target:?} {name}: losses {el:.2e}, grads {eg:.2e} against {s:.2e}");
    }
}

/// Reruns (and, on the CPU, other thread counts) give the same bits at bf16-mixed.
fn bf16_same_bits(target: Target) {
    let peers = target.bitwise_peers();
    for (name, plan) in cases(Precision::Bf16Mixed) {
        let (l0, g0, m0) = one_step(peers[0], &plan);
        for &p in &peers[1..] {
            let (l, g, m) = one_step(p, &plan);
            assert!(
                m == m0 && bits(&g) == bits(&g0) && bits(&l) == bits(&l0),
                "{name}: {p:?} differs from {:?}",
                peers[0]
            );
        }
    }
}

on_every_executor! {
    bf16_mixed_tracks_the_f32_step => bf16_tracks_f32;
    bf16_mixed_agrees_with_the_reference_executor => bf16_agrees_with_the_reference;
    bf16_mixed_reruns_keep_their_bits => bf16_same_bits;
}
