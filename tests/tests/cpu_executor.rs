//! The multi-threaded CPU executor: bit-identical whatever the thread count, and as close
//! to PyTorch as the reference executor (the golden fixtures, same tolerance).

use hpff::cpu::CpuExecutor;
use hpff_core::arch::Arch;
use hpff_core::exec::{init_params, StepInput};
use hpff_core::method::{AuxHead, Base, LocalLoss, Method};
use hpff_core::optim::Sgd;
use hpff_core::partition::Partition;
use hpff_core::plan::Plan;
use hpff_core::plan::TensorKind;
use hpff_core::rng::Rng;
use hpff_tests::golden::{rel_err, Golden};

const SGD: Sgd = Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// Three golden steps on `threads` threads; returns the final arena and the last losses.
fn run(g: &Golden, threads: usize) -> (Vec<f32>, Vec<f32>) {
    let mut ex = CpuExecutor::new(threads);
    let mut arena = g.arena();
    let mut losses = vec![0.0; g.plan.loss_slots()];
    for t in 0..3 {
        let x = g.get(&format!("input.{t}"));
        let labels: Vec<u32> = g.get(&format!("target.{t}")).iter().map(|&v| v as u32).collect();
        ex.train_step(&g.plan, &mut arena, &StepInput { x, labels: &labels, lr: g.lr, sgd: SGD }, &mut losses).unwrap();
    }
    (arena, losses)
}

/// Two steps of InfoPro + HPFF on a batch of 37 (four full chunks and a partial one).
fn run_synthetic(threads: usize, local_loss: LocalLoss) -> (Vec<f32>, Vec<f32>) {
    let arch = Arch::resnet(8, 3, 16, 5).unwrap();
    let part = Partition::from_splits(&arch, [(1, 0), (2, 0)]).unwrap();
    let mut m = Method::reference(Base::InfoPro, true);
    m.local_loss = local_loss;
    m.head = AuxHead::parse("1c2f").unwrap();
    let batch = 37;
    let plan = Plan::new(arch, part, m, batch, [0.5; 4], [0.25; 4]).unwrap();
    let mut rng = Rng::new(3);
    let mut arena = vec![0.0; plan.arena_len()];
    init_params(&plan, &mut arena, &mut rng);
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(5) as u32).collect();
    let mut ex = CpuExecutor::new(threads);
    let mut losses = vec![0.0; plan.loss_slots()];
    for _ in 0..2 {
        ex.train_step(&plan, &mut arena, &StepInput { x: &x, labels: &labels, lr: 0.1, sgd: SGD }, &mut losses)
            .unwrap();
    }
    (arena, losses)
}

#[test]
fn thread_count_does_not_change_a_bit() {
    for local_loss in [LocalLoss::CrossEntropy, LocalLoss::Contrast] {
        let (a1, l1) = run_synthetic(1, local_loss);
        assert!(l1.iter().all(|l| l.is_finite()));
        for threads in [2, 3] {
            let (a, l) = run_synthetic(threads, local_loss);
            let same = a1.iter().zip(&a).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{local_loss:?}: arena differs at {threads} threads");
            assert_eq!(l1, l, "{local_loss:?}: losses differ at {threads} threads");
        }
    }
}

#[test]
fn matches_pytorch_after_three_steps() {
    for case in ["e2e", "dgl", "infopro_n1_ce", "infopro_n2_contrast", "infopro_hpff_n2_ce", "dgl_hpff_n2_ce"] {
        let g = Golden::load(case);
        let (arena, _) = run(&g, 2);
        let state = g.plan.state_off();
        let mut worst = 0f64;
        g.plan.for_each_tensor(|t| {
            let off = if t.kind == TensorKind::Param { t.off } else { state + t.off };
            let e = rel_err(&arena[off..off + t.len], g.get(&format!("step3.{}", t.name)));
            assert!(e < 1e-4, "{case}: step3.{} differs by {e:.2e}", t.name);
            worst = worst.max(e);
        });
        println!("{case}: CPU executor after 3 steps, worst relative error {worst:.1e}");
    }
}

#[test]
fn eval_matches_the_reference_executor() {
    let g = Golden::load("infopro_hpff_n2_ce");
    let x = g.get("input.0");
    let mut a = g.arena();
    let mut b = g.arena();
    let want = hpff_core::exec::eval_step(&g.plan, &mut a, x).unwrap().to_vec();
    let got = CpuExecutor::new(2).eval_step(&g.plan, &mut b, x).unwrap().to_vec();
    assert!(rel_err(&got, &want) < 1e-5);
}

#[test]
fn bad_inputs_are_errors() {
    let g = Golden::load("e2e");
    let mut arena = g.arena();
    let mut ex = CpuExecutor::new(1);
    let x = g.get("input.0");
    let mut losses = vec![0.0; g.plan.loss_slots()];
    let bad = vec![99u32; g.plan.batch];
    let e = ex.train_step(&g.plan, &mut arena, &StepInput { x, labels: &bad, lr: 0.1, sgd: SGD }, &mut losses);
    assert!(e.unwrap_err().to_string().contains("out of range"));
    let short = &x[..x.len() - 1];
    assert!(ex.eval_step(&g.plan, &mut arena, short).is_err());
}
