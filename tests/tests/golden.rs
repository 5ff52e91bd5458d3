//! One and three SGD steps of every method against PyTorch (fixtures from
//! `tools/golden/make_golden.py`, ResNet-8 on 16×16 images, batch 8, K = 3).
//!
//! Tolerance: every loss, gradient, parameter and BN running statistic within 1e-4 of
//! the fixture, relative to the tensor's largest magnitude floored at 1e-3 (see `rel_err`).

use hpff_core::exec::{train_step, StepInput};
use hpff_core::optim::Sgd;
use hpff_core::plan::TensorKind;
use hpff_tests::golden::{rel_err, Golden};

const TOL: f64 = 1e-4;

fn run_case(case: &str) {
    let g = Golden::load(case);
    let plan = &g.plan;
    let mut arena = g.arena();
    let mut losses = vec![0.0; plan.loss_slots()];
    let sgd = Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: true };
    let mut worst = [0f64; 4]; // loss, grad, step1, step3
    let state = plan.state_off();
    for t in 0..3 {
        let x = g.get(&format!("input.{t}"));
        let labels: Vec<u32> = g.get(&format!("target.{t}")).iter().map(|&v| v as u32).collect();
        let input = StepInput { x, labels: &labels, lr: g.lr, sgd };
        train_step(plan, &mut arena, &input, &mut losses).unwrap();
        for (key, slot) in g.loss_keys() {
            let want = g.get(&format!("loss.{t}.{key}"))[0];
            let e = rel_err(&[losses[slot]], &[want]);
            assert!(e < TOL, "{case}: loss {key} at step {t}: {} vs {want}", losses[slot]);
            worst[0] = worst[0].max(e);
        }
        let check = |prefix: &str, grads: bool, worst: &mut f64| {
            plan.for_each_tensor(|tn| {
                let key = format!("{prefix}.{}", tn.name);
                let off = match (tn.kind, grads) {
                    (TensorKind::State, true) => return,
                    (TensorKind::State, false) => state + tn.off,
                    (TensorKind::Param, true) => plan.grads_off() + tn.off,
                    (TensorKind::Param, false) => tn.off,
                };
                let e = rel_err(&arena[off..off + tn.len], g.get(&key));
                assert!(e < TOL, "{case}: {key} differs by {e:.2e} (relative)");
                *worst = worst.max(e);
            })
        };
        match t {
            0 => {
                check("grad", true, &mut worst[1]);
                if g.tensors.contains_key("step1.conv1.weight") {
                    check("step1", false, &mut worst[2]);
                }
            }
            2 => check("step3", false, &mut worst[3]),
            _ => {}
        }
    }
    println!(
        "{case}: worst relative error: losses {:.1e}, step-1 grads {:.1e}, params+BN after 1 step {:.1e}, after 3 steps {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn e2e() {
    run_case("e2e");
}
#[test]
fn greedy() {
    run_case("greedy");
}
#[test]
fn dgl() {
    run_case("dgl");
}
#[test]
fn infopro_full_decoder() {
    run_case("infopro_n1_ce");
}
#[test]
fn infopro_patches() {
    run_case("infopro_n2_ce");
}
#[test]
fn infopro_contrast() {
    run_case("infopro_n2_contrast");
}
#[test]
fn infopro_hpff() {
    run_case("infopro_hpff_n2_ce");
}
#[test]
fn infopro_hpff_contrast() {
    run_case("infopro_hpff_n2_contrast");
}
#[test]
fn infopro_hilo_without_pff() {
    run_case("infopro_hpff_n1_ce");
}
#[test]
fn dgl_hpff() {
    run_case("dgl_hpff_n2_ce");
}
#[test]
fn infopro_hpff_five_modules() {
    run_case("infopro_hpff_k5_resnet14");
}
