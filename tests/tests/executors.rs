//! Properties every executor has: the same steps give the same bits (the CPU executor at
//! any thread count, the others run twice), eval agrees with the reference executor, and
//! bad inputs are errors, not panics.

use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::exec::{Executor, Reference, Region, StepInput};
use hpff_core::method::{AuxHead, Base, LocalLoss, Method};
use hpff_core::partition::Partition;
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;
use hpff_tests::executors::Target;
use hpff_tests::golden::{rel_err, Golden, GOLDEN_SGD};
use hpff_tests::on_every_executor;

/// Two steps of InfoPro + HPFF on a batch of 37 (four full CPU chunks and a partial one),
/// its modules' forward values kept or `recompute`d; returns parameters, BN statistics,
/// momentum, gradients and the last losses.
fn run_synthetic(target: Target, local_loss: LocalLoss, recompute: bool) -> (Snapshot, Vec<f32>, Vec<f32>) {
    let arch = Arch::resnet(8, 3, 16, 5).unwrap();
    let part = Partition::from_splits(&arch, [(1, 0), (2, 0)]).unwrap();
    let mut m = Method::reference(Base::InfoPro, true);
    m.local_loss = local_loss;
    m.head = AuxHead::parse("1c2f").unwrap();
    m.recompute = recompute;
    let batch = 37;
    let plan = Plan::new(arch, part, m, batch, [0.5; 4], [0.25; 4]).unwrap();
    let mut rng = Rng::new(3);
    let mut ex = target.open(&plan);
    Snapshot::init(&plan, &mut rng).upload(&mut *ex).unwrap();
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(5) as u32).collect();
    let mut losses = vec![0.0; plan.loss_slots()];
    for _ in 0..2 {
        ex.train_step(&plan, &StepInput { x: &x, labels: &labels, lr: 0.1, sgd: GOLDEN_SGD }, &mut losses).unwrap();
    }
    let mut grads = vec![0.0; plan.params];
    ex.download(Region::Grads, 0, &mut grads).unwrap();
    (Snapshot::download(&mut *ex).unwrap(), grads, losses)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn same_bits(target: Target) {
    for local_loss in [LocalLoss::CrossEntropy, LocalLoss::Contrast] {
        let peers = target.bitwise_peers();
        let (m0, g0, l0) = run_synthetic(peers[0], local_loss, false);
        assert!(l0.iter().all(|l| l.is_finite()));
        for &p in &peers[1..] {
            let (m, g, l) = run_synthetic(p, local_loss, false);
            assert!(m == m0 && bits(&g) == bits(&g0), "{local_loss:?}: {p:?} differs from {:?}", peers[0]);
            assert_eq!(bits(&l), bits(&l0), "{local_loss:?}: losses differ on {p:?}");
        }
    }
}

/// Recomputing the modules' forward values (HPFF's memory-for-time trade) gives the same
/// bits as keeping them: same parameters, BN running statistics, gradients and losses.
fn recompute_same_bits(target: Target) {
    let (m0, g0, l0) = run_synthetic(target, LocalLoss::CrossEntropy, false);
    let (m, g, l) = run_synthetic(target, LocalLoss::CrossEntropy, true);
    assert!(m == m0, "{target:?}: parameters or BN statistics differ when recomputing");
    assert_eq!(bits(&g), bits(&g0), "{target:?}: gradients differ when recomputing");
    assert_eq!(bits(&l), bits(&l0), "{target:?}: losses differ when recomputing");
}

/// Eval logits against the reference executor's, after the same three golden steps.
fn eval_agrees(target: Target) {
    let g = Golden::load("infopro_hpff_n2_ce");
    let mut want_ex = Reference::new(&g.plan, vec![0.0; g.plan.arena_len()]).unwrap();
    let mut ex = target.open(&g.plan);
    g.init().upload(&mut want_ex).unwrap();
    g.init().upload(&mut *ex).unwrap();
    let x = g.get("input.0");
    let (mut want, mut got) = (vec![0.0; g.plan.logits().len], vec![0.0; g.plan.logits().len]);
    want_ex.eval_step(&g.plan, x, &mut want).unwrap();
    ex.eval_step(&g.plan, x, &mut got).unwrap();
    let e = rel_err(&got, &want);
    println!("{target:?}: eval logits within {e:.1e} of the reference executor");
    assert!(e < 1e-5, "{target:?}: eval logits differ by {e:.2e}");
}

fn bad_inputs_are_errors(target: Target) {
    let g = Golden::load("e2e");
    let mut ex = target.open(&g.plan);
    let x = g.get("input.0");
    let mut losses = vec![0.0; g.plan.loss_slots()];
    let bad = vec![99u32; g.plan.batch];
    let e = ex.train_step(&g.plan, &StepInput { x, labels: &bad, lr: 0.1, sgd: GOLDEN_SGD }, &mut losses);
    assert!(e.unwrap_err().to_string().contains("out of range"));
    let mut logits = vec![0.0; g.plan.logits().len];
    assert!(ex.eval_step(&g.plan, &x[..x.len() - 1], &mut logits).is_err());
    assert!(ex.upload(Region::Params, g.plan.params, &[1.0]).is_err());
    // A plan of another model cannot run on this executor's arena.
    let other = Golden::load("dgl").plan;
    let mut l2 = vec![0.0; other.loss_slots()];
    let e = ex.train_step(&other, &g.input(0, &g.labels(0)), &mut l2).unwrap_err().to_string();
    assert!(e.contains("parameters"), "{e}");
}

/// One step of deeper nets than the golden ones (several blocks per stage, K = 4 and the
/// whole network; the CIFAR ResNet-20 and the ImageNet-style ResNet-18 at base width 16 on
/// 32×32 images, whose last stage has 1×1 maps) against the reference executor. One step
/// only: two SGD steps on this random batch amplify a 1e-6 change of the input into 10% of
/// the gradients. No bottleneck ImageNet net: ResNet-50 at init (no zero-init of the last
/// BNs; base width 16, 64×64, batch 20) is so ill-conditioned that PyTorch's own float32
/// and float64 gradients differ by 28% (relative), so two correct executors cannot be held
/// to 1e-4; the golden and memory tests cover the ImageNet stem, and bottlenecks are the
/// CIFAR ResNet-164's.
fn deeper_nets_agree_with_the_reference(target: Target) {
    let resnet20 = Arch::resnet(20, 3, 16, 10).unwrap();
    let resnet18 = Arch::resnet_imagenet(18, 3, 32, 10).unwrap().with_width(16).unwrap();
    let cases = [
        (resnet20, Base::E2e, false, 1),
        (resnet20, Base::InfoPro, true, 4),
        (resnet18, Base::E2e, false, 1),
        (resnet18, Base::InfoPro, true, 4),
    ];
    for (arch, base, hpff, k) in cases {
        let part = Partition::for_k(&arch, k, hpff_core::partition::TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part, Method::reference(base, hpff), 20, [0.5; 4], [0.25; 4]).unwrap();
        let mut rng = Rng::new(11);
        let start = Snapshot::init(&plan, &mut rng);
        let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
        let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(10) as u32).collect();
        let input = StepInput { x: &x, labels: &labels, lr: 0.1, sgd: GOLDEN_SGD };
        let step = |t: Target| {
            let mut ex = t.open(&plan);
            start.upload(&mut *ex).unwrap();
            let mut losses = vec![0.0; plan.loss_slots()];
            ex.train_step(&plan, &input, &mut losses).unwrap();
            let mut grads = vec![0.0; plan.params];
            ex.download(Region::Grads, 0, &mut grads).unwrap();
            (losses, grads, Snapshot::download(&mut *ex).unwrap())
        };
        let (l0, g0, m0) = step(Target::Reference);
        let (l, g, m) = step(target);
        let e = [rel_err(&l, &l0), rel_err(&g, &g0), rel_err(&m.params, &m0.params), rel_err(&m.state, &m0.state)];
        println!(
            "{target:?} {} {base:?} hpff={hpff}: losses {:.1e}, grads {:.1e}, params {:.1e}, BN {:.1e}",
            arch.name(),
            e[0],
            e[1],
            e[2],
            e[3]
        );
        assert!(e[0] < 1e-5 && e[1] < 1e-4 && e[2] < 1e-5 && e[3] < 1e-5, "{target:?}: {e:?}");
    }
}

/// The step's own check of its gradients (`Op::CheckGrads`, the loss record's last slot):
/// 0 after a normal step; 1 when one parameter is infinite (its gradient is then NaN or
/// infinite), whichever module holds it.
fn nonfinite_gradients_raise_the_flag(target: Target) {
    let arch = Arch::resnet(8, 3, 16, 5).unwrap();
    let part = Partition::from_splits(&arch, [(1, 0), (2, 0)]).unwrap();
    let plan = Plan::new(arch, part, Method::reference(Base::InfoPro, true), 4, [0.5; 4], [0.25; 4]).unwrap();
    let mut rng = Rng::new(9);
    let start = Snapshot::init(&plan, &mut rng);
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(5) as u32).collect();
    let flag = |poison: Option<usize>| {
        let mut ex = target.open(&plan);
        let mut s = start.clone();
        if let Some(i) = poison {
            s.params[i] = f32::INFINITY;
        }
        s.upload(&mut *ex).unwrap();
        let mut losses = vec![0.0; plan.loss_slots()];
        ex.train_step(&plan, &StepInput { x: &x, labels: &labels, lr: 0.1, sgd: GOLDEN_SGD }, &mut losses).unwrap();
        losses[plan.nonfinite_slot()]
    };
    assert_eq!(flag(None), 0.0, "a finite step is flagged");
    for j in 0..plan.modules() {
        let module = plan.module_params(j);
        assert_eq!(flag(Some(module.off)), 1.0, "an infinite weight in module {j} is not flagged");
    }
}

on_every_executor! {
    nonfinite_gradients => nonfinite_gradients_raise_the_flag;
    deeper_nets => deeper_nets_agree_with_the_reference;
    same_steps_same_bits => same_bits;
    recompute_gives_the_same_bits => recompute_same_bits;
    eval_matches_the_reference_executor => eval_agrees;
    bad_input => bad_inputs_are_errors;
}
