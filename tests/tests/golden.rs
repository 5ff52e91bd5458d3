//! One and three SGD steps of every method against PyTorch, on every executor (fixtures
//! from `tools/golden/make_golden.py`: ResNet-8 on 16×16 images, batch 8, K = 3; a batch
//! of 37 — four 8-image chunks of the CPU executor and a partial one — a ResNet-14
//! cut into five modules, and an ImageNet-style ResNet-18 at base width 8 on 64×64
//! images, batch 4, end to end).
//!
//! The ImageNet recipe's HPFF (the ImageNet aux nets, cascade level only, the whole-map
//! decoder's output cut into quadrants, and true patch-input PFF) on ImageNet-style
//! ResNet-18 and ResNet-50 at base width 8, 64×64, batch 4, K = 4.
//!
//! Tolerance: every loss, gradient, parameter and BN running statistic within 1e-4 of
//! the fixture, relative to the tensor's largest magnitude floored at 1e-3 (see `rel_err`).
//! The ImageNet HPFF fixtures and the batch-37 one hold a float64 run and a tolerance per
//! tensor (8 × the float32 spread measured around it, at least 1e-4): these tiny nets are
//! ill-conditioned in float32 (see `tools/golden/README.md`).
//!
//! ResNeXt (grouped 3×3 convs): ResNeXt-50 at base width 8 with 4 groups of width 16
//! (per 64 planes), 64×64, batch 4, end to end and with the ImageNet recipe's HPFF at
//! K = 4, float64 truth as the ResNet-50 case.

use hpff::device::Snapshot;
use hpff_core::exec::Region;
use hpff_core::plan::TensorKind;
use hpff_core::rng::Rng;
use hpff_tests::executors::Target;
use hpff_tests::executors::Target as Exec;
use hpff_tests::golden::{golden_cases, rel_err, Golden};
use hpff_tests::on_every_executor;

const TOL: f64 = 1e-4;

fn run_case(case: &str, target: Target) {
    let g = Golden::load(case);
    let plan = &g.plan;
    let mut ex = target.open(plan);
    g.init().upload(&mut *ex).unwrap();
    let mut losses = vec![0.0; plan.loss_slots()];
    let mut worst = [0f64; 4]; // loss, grad, step1, step3
    for t in 0..3 {
        let labels = g.labels(t);
        ex.train_step(plan, &g.input(t, &labels), &mut losses).unwrap();
        for (key, slot) in g.loss_keys() {
            let want = g.get(&format!("loss.{t}.{key}"))[0];
            let e = rel_err(&[losses[slot]], &[want]);
            let tol = g.tol(&format!("loss.{t}.{key}"), TOL);
            assert!(e < tol, "{case} on {target:?}: loss {key} at step {t}: {} vs {want}", losses[slot]);
            worst[0] = worst[0].max(e);
        }
        let check = |prefix: &str, m: &Snapshot, grads: Option<&[f32]>, worst: &mut f64| {
            plan.for_each_tensor(|tn| {
                let key = format!("{prefix}.{}", tn.name);
                let got = match (tn.kind, grads) {
                    (TensorKind::State, Some(_)) => return,
                    (TensorKind::State, None) => &m.state[tn.off..tn.off + tn.len],
                    (TensorKind::Param, Some(g)) => &g[tn.off..tn.off + tn.len],
                    (TensorKind::Param, None) => &m.params[tn.off..tn.off + tn.len],
                };
                let e = rel_err(got, g.get(&key));
                let tol = g.tol(&key, TOL);
                assert!(e < tol, "{case} on {target:?}: {key} differs by {e:.2e} (relative; tolerance {tol:.1e})");
                *worst = worst.max(e);
            })
        };
        let m = Snapshot::download(&mut *ex).unwrap();
        match t {
            0 => {
                let mut grads = vec![0.0; plan.params];
                ex.download(Region::Grads, 0, &mut grads).unwrap();
                check("grad", &m, Some(&grads), &mut worst[1]);
                if g.tensors.contains_key("step1.conv1.weight") {
                    check("step1", &m, None, &mut worst[2]);
                }
            }
            2 if g.tensors.contains_key("step3.conv1.weight") => check("step3", &m, None, &mut worst[3]),
            _ => {}
        }
    }
    println!(
        "{case} on {target:?}: worst relative error: losses {:.1e}, step-1 grads {:.1e}, params+BN after 1 step {:.1e}, after 3 steps {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

on_every_executor! {
    e2e => |t| run_case("e2e", t);
    greedy => |t| run_case("greedy", t);
    dgl => |t| run_case("dgl", t);
    infopro_full_decoder => |t| run_case("infopro_n1_ce", t);
    infopro_patches => |t| run_case("infopro_n2_ce", t);
    infopro_contrast => |t| run_case("infopro_n2_contrast", t);
    infopro_hpff => |t| run_case("infopro_hpff_n2_ce", t);
    infopro_hpff_contrast => |t| run_case("infopro_hpff_n2_contrast", t);
    infopro_hilo_without_pff => |t| run_case("infopro_hpff_n1_ce", t);
    dgl_hpff => |t| run_case("dgl_hpff_n2_ce", t);
    infopro_hpff_five_modules => |t| run_case("infopro_hpff_k5_resnet14", t);
    infopro_hpff_batch_37 => |t| run_case("infopro_hpff_n2_ce_b37", t);
    imagenet_resnet18_e2e => |t| run_case("imagenet_resnet18_e2e", t);
    imagenet_resnet18_hpff => |t| run_case("imagenet_resnet18_hpff", t);
    imagenet_resnet18_hpff_pff_input => |t| run_case("imagenet_resnet18_hpff_pff_input", t);
    imagenet_resnet50_hpff => |t| run_case("imagenet_resnet50_hpff", t);
    resnext_e2e => |t| run_case("resnext_e2e", t);
    resnext_infopro_hpff => |t| run_case("resnext_infopro_hpff", t);
}

/// The CUDA executor's path without cuDNN (im2col kernels and GEMMs), emulated, on every
/// fixture: `cuda_emulated` above convolves as with cuDNN.
#[cfg(feature = "cuda")]
#[test]
fn im2col_convolutions_on_the_emulator() {
    for case in golden_cases() {
        run_case(&case, Exec::CudaEmulatedIm2col);
    }
}

/// How far an executor's own rounding may move a fixture's input in this check: the GPU's
/// launches differ from the emulator's by up to 2e-6 of their largest output (cuBLAS sums
/// in another order; `cuda.rs`, `every_launch_agrees_with_its_emulated_twin`), most values
/// by far less.
const ROUNDING_NOISE: f32 = 1e-6;

/// The step-0 gradients of the reference executor from the fixture's first input scaled
/// by `1 + noise·u`, u uniform in ±1 (seeded), one vector per parameter tensor.
fn grads_moved(g: &Golden, noise: f32, seed: u64) -> Vec<(String, Vec<f32>)> {
    let plan = &g.plan;
    let mut ex = Exec::Reference.open(plan);
    g.init().upload(&mut *ex).unwrap();
    let mut rng = Rng::new(seed);
    let labels = g.labels(0);
    let input = g.input(0, &labels);
    let x: Vec<f32> = input.x.iter().map(|&v| v * (1.0 + noise * (2.0 * rng.uniform() - 1.0))).collect();
    let mut losses = vec![0.0; plan.loss_slots()];
    ex.train_step(plan, &hpff_core::exec::StepInput { x: &x, ..input }, &mut losses).unwrap();
    let mut grads = vec![0.0; plan.params];
    ex.download(Region::Grads, 0, &mut grads).unwrap();
    let mut out = Vec::new();
    plan.for_each_tensor(|t| {
        if t.kind == TensorKind::Param {
            out.push((format!("grad.{}", t.name), grads[t.off..t.off + t.len].to_vec()));
        }
    });
    out
}

/// Every fixture's first step sits where a rounding-sized change of its input moves no
/// gradient by more than half its tolerance: executors that round differently (the GPU)
/// then meet the fixture by the math, not by landing on the same side of a ReLU kink as
/// PyTorch did. (The fixture `infopro_n2_contrast` once lay 1e-6 from a kink that moved its
/// stem's gradient by 6.3e-3: the GPU failed it while every launch matched its emulated
/// twin.) The float64 fixtures are known to be ill-conditioned and carry tolerances that the
/// generator measured from moved inputs, so they are not held to this. Later steps are not held to this: three SGD steps on these tiny nets cross kinks
/// at far smaller changes, and the fixtures' tolerances there rest on the executors' own
/// agreement.
#[test]
fn fixtures_are_well_conditioned() {
    let mut bad = Vec::new();
    for name in golden_cases() {
        let g = Golden::load(&name);
        if !g.tolerance.is_empty() {
            println!("{name}: a float64 fixture, its tolerances measured by the generator from moved inputs");
            continue;
        }
        let base = grads_moved(&g, 0.0, 0);
        let mut worst = (0f64, String::new());
        for seed in 1..=4 {
            for ((key, a), (_, b)) in grads_moved(&g, ROUNDING_NOISE, seed).iter().zip(&base) {
                let share = rel_err(a, b) / g.tol(key, TOL);
                if share > worst.0 {
                    worst = (share, key.clone());
                }
            }
        }
        println!(
            "{name}: a {ROUNDING_NOISE:.0e} change of the input moves {} by {:.2} of its tolerance",
            worst.1, worst.0
        );
        if worst.0 > 0.5 {
            bad.push(format!("{name} ({} by {:.2} of its tolerance)", worst.1, worst.0));
        }
    }
    assert!(bad.is_empty(), "fixtures next to a discontinuity: {}", bad.join(", "));
}
