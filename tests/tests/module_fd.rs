//! Finite-difference checks of whole local modules: the gradient the executor leaves in
//! the arena must be the derivative of exactly the losses that reach the module through
//! non-detached paths (its own local losses, and for HPFF the cascade loss of the next
//! module, where it is the lower half of the pair).
//!
//! Directional derivatives along random sparse ±1 directions (24 coordinates drawn from the
//! module's parameters), central differences with steps 1e-3, 3e-4 and 1e-4 (best of the
//! three), f32 forward passes. Tolerance: 3% of the size of the derivative (ReLU kinks and
//! f32 loss resolution bound the difference quotient), where the size is the larger of the
//! quotient and the sum of the absolute terms `|g_i v_i|` of the analytic derivative: along
//! a direction whose terms cancel, 3% of the small sum would ask more of an f32 quotient
//! than it can give (on the GPU, terms summing 0.34 in size cancelled to -1.77e-2, and the
//! quotients of all three steps were 3.9% and more from it: 2e-3 of the terms' size).

use hpff::device::{DynExecutor, Snapshot};
use hpff_core::exec::{Region, StepInput};
use hpff_core::method::{Base, Levels, LocalLoss};
use hpff_core::optim::Sgd;
use hpff_core::plan::{LossKind, Plan, TensorKind};
use hpff_core::rng::Rng;
use hpff_tests::executors::Target;
use hpff_tests::module_case::{case, Case};
use hpff_tests::on_every_executor;

/// Step sizes tried; a direction passes when any of them agrees (a ReLU or BN kink inside
/// the step biases a large step, f32 rounding a small one).
const EPS: [f32; 3] = [1e-3, 3e-4, 1e-4];
/// Coordinates per direction: few enough that the step stays inside one linear piece of
/// the ReLUs for almost every sample.
const COORDS: usize = 24;
const TOL: f64 = 3e-2;

/// Loads `model` with `params` into `ex`, runs one step with lr = 0 (parameters
/// unchanged) and returns the loss record.
fn losses(c: &Case, ex: &mut DynExecutor, model: &Snapshot) -> Vec<f32> {
    let mut l = vec![0.0; c.plan.loss_slots()];
    let sgd = Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: true };
    model.upload(&mut **ex).unwrap();
    ex.train_step(&c.plan, &StepInput { x: &c.x, labels: &c.labels, lr: 0.0, sgd }, &mut l).unwrap();
    l
}

/// Checks the module's gradient against the weighted sum of `terms` (slot, weight).
fn check(target: Target, c: &Case, in_module: impl Fn(&str) -> bool, terms: &[(usize, f32)]) {
    let mut ex = target.open(&c.plan);
    let mut objective = |m: &Snapshot| -> f64 {
        let l = losses(c, &mut ex, m);
        terms.iter().map(|&(s, w)| w as f64 * l[s] as f64).sum()
    };
    objective(&c.model);
    let mut grads = vec![0.0; c.plan.params];
    ex.download(Region::Grads, 0, &mut grads).unwrap();
    let mut objective = |m: &Snapshot| -> f64 {
        let l = losses(c, &mut ex, m);
        terms.iter().map(|&(s, w)| w as f64 * l[s] as f64).sum()
    };
    let mut mask = vec![false; c.plan.params];
    c.plan.for_each_tensor(|t| {
        if t.kind == TensorKind::Param && in_module(&t.name.to_string()) {
            mask[t.off..t.off + t.len].iter_mut().for_each(|m| *m = true);
        }
    });
    assert!(mask.iter().any(|&m| m), "no parameters selected");
    let mut rng = Rng::new(99);
    for trial in 0..4 {
        let idx: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
        let mut v = vec![0.0f32; mask.len()];
        for _ in 0..COORDS {
            let i = idx[rng.below(idx.len() as u64) as usize];
            v[i] = if rng.coin() { 1.0 } else { -1.0 };
        }
        let analytic: f64 = grads.iter().zip(&v).map(|(&g, &d)| g as f64 * d as f64).sum();
        // The size of the terms the derivative sums: where they cancel, the sum is small
        // and an error relative to it would hold the quotient to more than f32 can give.
        let magnitude: f64 = grads.iter().zip(&v).map(|(&g, &d)| (g as f64 * d as f64).abs()).sum();
        let mut shifted = |step: f32| {
            let mut a = c.model.clone();
            a.params.iter_mut().zip(&v).for_each(|(p, &d)| *p += step * d);
            objective(&a)
        };
        // (difference / allowed difference, finite difference, step) of the best step.
        let mut best = (f64::INFINITY, 0.0, 0.0);
        for eps in EPS {
            let (up, down) = (shifted(eps), shifted(-eps));
            let fd = (up - down) / (2.0 * eps as f64);
            let allowed = TOL * magnitude.max(fd.abs()).max(1e-3);
            let score = (analytic - fd).abs() / allowed;
            if score < best.0 {
                best = (score, fd, eps as f64);
            }
        }
        let (score, fd, eps) = best;
        println!(
            "{target:?} trial {trial}: analytic {analytic:.6e}, finite difference {fd:.6e} (step {eps:.0e}), {score:.2} of the allowed difference"
        );
        assert!(score < 1.0, "{target:?} trial {trial}: analytic {analytic} vs finite difference {fd}");
    }
}

fn e2e_whole_network(target: Target) {
    let c = case(Base::E2e, false, LocalLoss::CrossEntropy);
    check(target, &c, |_| true, &[(LossKind::Ce.slot(0), 1.0)]);
}

fn infopro_middle_module_with_its_decoder_and_head(target: Target) {
    let c = case(Base::InfoPro, false, LocalLoss::CrossEntropy);
    let (l1, l2) = c.plan.method.local_weights(&c.plan.part, 1);
    let terms = [(LossKind::Decoder.slot(1), l1), (LossKind::Classifier.slot(1), l2)];
    check(target, &c, |n| n.starts_with("layer2.") || n.contains("_2_0."), &terms);
}

fn infopro_first_module_with_the_stem(target: Target) {
    let c = case(Base::InfoPro, false, LocalLoss::CrossEntropy);
    let (l1, l2) = c.plan.method.local_weights(&c.plan.part, 0);
    let terms = [(LossKind::Decoder.slot(0), l1), (LossKind::Classifier.slot(0), l2)];
    check(
        target,
        &c,
        |n| n.starts_with("conv1") || n.starts_with("bn1") || n.starts_with("layer1.") || n.contains("_1_0."),
        &terms,
    );
}

fn infopro_contrastive_middle_module(target: Target) {
    let c = case(Base::InfoPro, false, LocalLoss::Contrast);
    let (l1, l2) = c.plan.method.local_weights(&c.plan.part, 1);
    let terms = [(LossKind::Decoder.slot(1), l1), (LossKind::Classifier.slot(1), l2)];
    check(target, &c, |n| n.starts_with("layer2.") || n.contains("_2_0."), &terms);
}

fn hpff_middle_module_gets_independent_cascade_and_next_cascade(target: Target) {
    let c = case(Base::InfoPro, true, LocalLoss::CrossEntropy);
    let m = c.plan.method;
    let (l1, l2) = m.local_weights(&c.plan.part, 1);
    let terms = [
        (LossKind::Independent.slot(1), m.wx),
        (LossKind::CascadeDecoder.slot(1), m.wy * l1),
        (LossKind::CascadeClassifier.slot(1), m.wy * l2),
        // Module 1 is the lower half of the last module's cascade path.
        (LossKind::LastY.slot(2), m.wy),
    ];
    check(target, &c, |n| n.starts_with("layer2.") || n.contains("_2_0."), &terms);
}

fn hpff_first_module_is_trained_only_through_the_cascade(target: Target) {
    let c = case(Base::InfoPro, true, LocalLoss::CrossEntropy);
    let m = c.plan.method;
    let (l1, l2) = m.local_weights(&c.plan.part, 1);
    let terms = [(LossKind::CascadeDecoder.slot(1), m.wy * l1), (LossKind::CascadeClassifier.slot(1), m.wy * l2)];
    check(target, &c, |n| n.starts_with("conv1") || n.starts_with("bn1") || n.starts_with("layer1."), &terms);
}

/// HiLo's cascade level alone: the middle module gets its cascade loss (weight 1) and the
/// next module's cascade loss through the lower half of the pair, nothing else.
fn hpff_cascade_level_alone(target: Target) {
    let mut c = case(Base::InfoPro, true, LocalLoss::CrossEntropy);
    c = relevel(c, Levels::Cascade);
    let m = c.plan.method;
    let (l1, l2) = m.local_weights(&c.plan.part, 1);
    let terms = [
        (LossKind::CascadeDecoder.slot(1), l1),
        (LossKind::CascadeClassifier.slot(1), l2),
        (LossKind::LastY.slot(2), 1.0),
    ];
    check(target, &c, |n| n.starts_with("layer2.") || n.contains("_2_0."), &terms);
}

/// HiLo's independent level alone is a plain local method: DGL with the same heads (the
/// parameter layouts coincide, only the aux nets' names differ), bit for bit.
fn hpff_independent_level_alone_is_dgl(target: Target) {
    let b = case(Base::Dgl, false, LocalLoss::CrossEntropy);
    // Same images: `case` draws them after the parameters, whose count differs before relevel.
    let a = Case { x: b.x.clone(), ..relevel(case(Base::Dgl, true, LocalLoss::CrossEntropy), Levels::Independent) };
    assert_eq!((a.plan.params, a.plan.state), (b.plan.params, b.plan.state));
    let (mut ea, mut eb) = (target.open(&a.plan), target.open(&b.plan));
    let la = losses(&a, &mut ea, &b.model);
    let lb = losses(&b, &mut eb, &b.model);
    let m = a.plan.modules();
    for j in 0..m - 1 {
        assert_eq!(la[LossKind::Independent.slot(j)], lb[LossKind::Classifier.slot(j)], "module {j}");
    }
    assert_eq!(la[LossKind::LastX.slot(m - 1)], lb[LossKind::Ce.slot(m - 1)]);
    let (ma, mb) = (Snapshot::download(&mut *ea).unwrap(), Snapshot::download(&mut *eb).unwrap());
    let (mut ga, mut gb) = (vec![0.0; a.plan.params], vec![0.0; b.plan.params]);
    ea.download(Region::Grads, 0, &mut ga).unwrap();
    eb.download(Region::Grads, 0, &mut gb).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(ma == mb && bits(&ga) == bits(&gb), "parameters, statistics or gradients differ");
}

fn relevel(c: Case, levels: Levels) -> Case {
    let mut m = c.plan.method;
    m.levels = levels;
    let plan = Plan::new(c.plan.arch, c.plan.part.clone(), m, c.plan.batch, c.plan.mean, c.plan.std).unwrap();
    let model = Snapshot::init(&plan, &mut Rng::new(7));
    Case { plan, model, ..c }
}

on_every_executor! {
    e2e_whole_network => e2e_whole_network;
    infopro_middle_module_with_its_decoder_and_head => infopro_middle_module_with_its_decoder_and_head;
    infopro_first_module_with_the_stem => infopro_first_module_with_the_stem;
    infopro_contrastive_middle_module => infopro_contrastive_middle_module;
    hpff_middle_module_gets_independent_cascade_and_next_cascade => hpff_middle_module_gets_independent_cascade_and_next_cascade;
    hpff_first_module_is_trained_only_through_the_cascade => hpff_first_module_is_trained_only_through_the_cascade;
    hpff_cascade_level_alone => hpff_cascade_level_alone;
    hpff_independent_level_alone_is_dgl => hpff_independent_level_alone_is_dgl;
}
