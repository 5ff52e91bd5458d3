//! `--precision bf16-mixed` and `16-mixed`: the blocks' kept values in bf16 or f16. A step
//! agrees with the f32 step at a tolerance set by the format's rounding (and is not that
//! step: the rounding is really there; f16's finer steps land closer than bf16's), every
//! executor agrees with the reference executor's step, and reruns keep their bits.

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

/// The 16-bit precisions.
const HALVES: [Precision; 2] = [Precision::Bf16Mixed, Precision::F16Mixed];

/// Half a step of the format's significand, relative: 2^-9 for bf16 (8 bits), 2^-12 for f16 (11).
fn half_step(p: Precision) -> f32 {
    match p {
        Precision::Bf16Mixed => 1.0 / 512.0,
        Precision::F16Mixed => 1.0 / 4096.0,
        Precision::F32 => unreachable!("the 16-bit precisions only"),
    }
}

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

/// How far the f32 gradients of `plan` move when every input value moves by half a step
/// of the plan's 16-bit format ([`half_step`], up or down at random): the scale its
/// rounding of these small random batches is judged on. At initialisation, with batches of 64 random images,
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
    let h = half_step(plan.method.precision);
    let moved: Vec<f32> = x.iter().map(|v| v * (1.0 + if rng.uniform() < 0.5 { -h } else { h })).collect();
    let (_, g0, _) = step_on(Target::Reference, &f32_plan, &x);
    let (_, g, _) = step_on(Target::Reference, &f32_plan, &moved);
    l2_rel(&g, &g0)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The 16-bit steps against the same executor's f32 step: gradients within three times
/// [`sensitivity`] (a step that read a wrong or stale buffer would be off by the
/// gradients' own size), losses within 1e-3; not equal (the rounding is there); and f16's
/// gradients closer than bf16's. (What it saves is `memory.rs`'s: these nets are too
/// shallow to save much.)
fn half_tracks_f32(target: Target) {
    let [bf16, f16] = HALVES.map(cases);
    for (((name, full), (_, b)), (_, h)) in cases(Precision::F32).into_iter().zip(bf16).zip(f16) {
        let (l0, g0, _) = one_step(target, &full);
        let mut err = [0.0; 2];
        for (e, plan) in err.iter_mut().zip([b, h]) {
            let (l, g, _) = one_step(target, &plan);
            let (el, eg, s) = (rel_err(&l, &l0), l2_rel(&g, &g0), sensitivity(&plan));
            let p = plan.method.precision.name();
            println!("{target:?} {name} {p}: losses {el:.1e}, grads {eg:.1e} (l2; sensitivity {s:.1e})");
            assert!(
                el < 1e-3 && eg < 3.0 * s,
                "{target:?} {name} {p}: losses {el:.2e}, grads {eg:.2e} against {s:.2e}"
            );
            assert_ne!(bits(&g), bits(&g0), "{target:?} {name}: {p} gave the f32 gradients: nothing was rounded");
            *e = eg;
        }
        assert!(
            err[1] < err[0],
            "{target:?} {name}: f16's gradients ({:.2e}) no closer than bf16's ({:.2e})",
            err[1],
            err[0]
        );
    }
}

/// Every executor's 16-bit step against the reference executor's. Both round the same
/// values, but the values come from f32 arithmetic in another order, so a value near a
/// rounding boundary may go the other way, and everything downstream of it moves by a
/// 16-bit step: the bound is [`half_tracks_f32`]'s, not the f32 executors' 1e-4.
fn half_agrees_with_the_reference(target: Target) {
    for (name, plan) in HALVES.into_iter().flat_map(cases) {
        let (l0, g0, _) = one_step(Target::Reference, &plan);
        let (l, g, _) = one_step(target, &plan);
        let (el, eg, s) = (rel_err(&l, &l0), l2_rel(&g, &g0), sensitivity(&plan));
        println!("{target:?} {name}: losses {el:.1e}, grads {eg:.1e} (l2; sensitivity {s:.1e})");
        assert!(el < 1e-3 && eg < 3.0 * s, "{target:?} {name}: losses {el:.2e}, grads {eg:.2e} against {s:.2e}");
    }
}

/// Reruns (and, on the CPU, other thread counts) give the same bits at both 16-bit precisions.
fn half_same_bits(target: Target) {
    let peers = target.bitwise_peers();
    for (name, plan) in HALVES.into_iter().flat_map(cases) {
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
    half_precision_tracks_the_f32_step => half_tracks_f32;
    half_precision_agrees_with_the_reference_executor => half_agrees_with_the_reference;
    half_precision_reruns_keep_their_bits => half_same_bits;
}
