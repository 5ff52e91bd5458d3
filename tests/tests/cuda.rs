//! What only a GPU can check: the device memory the CUDA executor really takes against
//! what it reports, graph replay against direct launches (bit for bit), and TF32 against
//! strict fp32. Without a device each test prints why it checked nothing and passes;
//! `HPFF_REQUIRE_CUDA=1` (set by `tools/device/gpu-check.sh`) makes that a failure.
//! The agreement with PyTorch and the other executors is in the tests written once for
//! every executor (`golden.rs`, `module_fd.rs`, `executors.rs`, `memory.rs`).
#![cfg(feature = "cuda")]

use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::exec::{Executor, Region, StepInput};
use hpff_core::method::{Base, LocalLoss, Method};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;
use hpff_kernels::emu::EmuExecutor;
use hpff_kernels::{ConvPath, CudaExecutor, CudaOptions};
use hpff_tests::executors::cuda_missing;
use hpff_tests::golden::{golden_cases, rel_err, Golden, GOLDEN_SGD};
use hpff_tests::module_case::case;

/// Whether a GPU is here; says why not (or fails under `HPFF_REQUIRE_CUDA=1`).
fn gpu() -> bool {
    match cuda_missing() {
        None => true,
        Some(why) if std::env::var("HPFF_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("HPFF_REQUIRE_CUDA=1 but the CUDA executor cannot run: {why}")
        }
        Some(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

fn resnet32_hpff(batch: usize) -> Plan {
    let arch = Arch::resnet(32, 3, 32, 10).unwrap();
    let part = Partition::for_k(&arch, 16, TableKind::Reference).unwrap();
    Plan::new(arch, part, Method::reference(Base::InfoPro, true), batch, [0.5; 4], [0.25; 4]).unwrap()
}

/// Allocation granularity slack: each of the executor's seven `cuMemAlloc`s rounds up to
/// the driver's 2 MiB pages.
const ROUNDING_SLACK: usize = 16 << 20;
/// Most device memory a cuBLAS handle may take for itself (64 MiB measured on an H200 with
/// cuBLAS 13): more would be a change worth knowing about. The same bound for cuDNN's.
const BLAS_HANDLE_BOUND: usize = 128 << 20;

/// The device memory an executor takes (cuMemGetInfo before and after building it, then
/// after steps that capture and replay a graph) is what it reports as held: the arena,
/// its buffers, and what the cuBLAS handle and the graphs took (measured when created),
/// up to the allocation granularity.
#[test]
fn held_memory_is_what_the_device_gives_up() {
    if !gpu() {
        return;
    }
    // A first executor creates the context, so the second's difference is its own.
    let small = Golden::load("e2e").plan;
    let first = CudaExecutor::new(0, &small, CudaOptions::default()).unwrap();
    let plan = resnet32_hpff(256);
    let before = first.device_memory_used().unwrap();
    let mut ex = CudaExecutor::new(0, &plan, CudaOptions::default()).unwrap();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for (stage, bytes) in ex.setup_memory() {
        println!("  device memory taken by {stage}: {:.1} MiB", mib(*bytes));
    }
    for lib in ["cuBLAS handle", "cuDNN handle"] {
        let handle = ex.setup_memory().iter().find(|s| s.0 == lib).map_or(0, |s| s.1);
        assert!(handle <= BLAS_HANDLE_BOUND, "the {lib} took {:.1} MiB", mib(handle));
    }
    let x = vec![0.0; plan.input().len];
    let labels = vec![0; plan.batch];
    let mut losses = vec![0.0; plan.loss_slots()];
    for when in ["built", "after direct launches", "after a graph capture", "after a graph replay"] {
        if when != "built" {
            let input = StepInput { x: &x, labels: &labels, lr: 0.0, sgd: GOLDEN_SGD };
            ex.train_step(&plan, &input, &mut losses).unwrap();
        }
        let taken = ex.device_memory_used().unwrap() - before;
        let held = ex.held();
        println!(
            "{ex} {when}: planned arena {:.1} MiB, held {:.1} MiB (arena {:.1} + extra {:.1}), device memory taken {:.1} MiB",
            mib(plan.memory().total()),
            mib(held.total()),
            mib(held.arena),
            mib(held.extra),
            mib(taken)
        );
        assert_eq!(held.arena, plan.memory().total());
        assert!(taken + ROUNDING_SLACK >= held.total(), "{when}: the device lost less than the executor holds");
        assert!(
            taken <= held.total() + ROUNDING_SLACK,
            "{when}: {:.1} MiB taken beyond what is held",
            mib(taken - held.total())
        );
    }
}

/// Four steps: the first runs direct launches, the second is captured, the others replay.
fn four_steps(opts: CudaOptions) -> (Snapshot, Vec<u32>, Vec<u32>, Option<String>) {
    let g = Golden::load("infopro_hpff_n2_ce");
    let mut ex = CudaExecutor::new(0, &g.plan, opts).unwrap();
    g.init().upload(&mut ex).unwrap();
    let mut losses = vec![0.0; g.plan.loss_slots()];
    let mut all = Vec::new();
    for t in 0..4 {
        let labels = g.labels(t % 3);
        let input = StepInput { lr: 0.05 * (t + 1) as f32, ..g.input(t % 3, &labels) };
        ex.train_step(&g.plan, &input, &mut losses).unwrap();
        all.extend(losses.iter().map(|l| l.to_bits()));
    }
    let mut grads = vec![0.0; g.plan.params];
    ex.download(Region::Grads, 0, &mut grads).unwrap();
    let fallback = ex.graph_fallback().map(str::to_string);
    (Snapshot::download(&mut ex).unwrap(), grads.iter().map(|x| x.to_bits()).collect(), all, fallback)
}

#[test]
fn graph_replay_equals_direct_launches() {
    if !gpu() {
        return;
    }
    let (m_graph, g_graph, l_graph, fallback) = four_steps(CudaOptions::default());
    assert_eq!(fallback, None, "graph capture failed");
    let (m_direct, g_direct, l_direct, _) = four_steps(CudaOptions { graphs: false, ..CudaOptions::default() });
    assert_eq!(l_graph, l_direct, "losses differ between graph replay and direct launches");
    assert!(g_graph == g_direct && m_graph == m_direct, "parameters or gradients differ");
}

/// TF32 against the fp32 fixture, bounded by the math. TF32 keeps 10 of fp32's 23 mantissa
/// bits (the tensor cores drop the rest: unit roundoff up to 2^-10). The e2e fixture's own
/// sensitivity to rounding, measured by the generator (`make_golden.py --check-f64`, fp32
/// against fp64 with unit roundoff 2^-24), is 2.1e-6 for the step-0 gradients and 5.3e-7
/// for the parameters after 3 steps: amplification factors of 35 and 9. TF32 should then be
/// about 35 × 2^-10 = 3.4e-2 and 9 × 2^-10 = 8.6e-3 from fp32 (measured on an H200: 3.3e-2
/// and 1.0e-2); the bounds allow 4 times that. TF32 must also be in use: strict fp32 is
/// 7e-7 from the fixture.
const TF32_GRAD_BOUND: f64 = 4.0 * 35.0 / 1024.0;
const TF32_STEP3_BOUND: f64 = 4.0 * 9.0 / 1024.0;

#[test]
fn tf32_stays_close_to_strict_fp32() {
    if !gpu() {
        return;
    }
    let g = Golden::load("e2e");
    let mut ex = CudaExecutor::new(0, &g.plan, CudaOptions { tf32: true, ..CudaOptions::default() }).unwrap();
    g.init().upload(&mut ex).unwrap();
    let mut losses = vec![0.0; g.plan.loss_slots()];
    let mut grad_err = 0.0;
    for t in 0..3 {
        let labels = g.labels(t);
        ex.train_step(&g.plan, &g.input(t, &labels), &mut losses).unwrap();
        if t == 0 {
            let mut grads = vec![0.0; g.plan.params];
            ex.download(Region::Grads, 0, &mut grads).unwrap();
            grad_err = rel_err(&grads, &g.grads());
        }
    }
    let m = Snapshot::download(&mut ex).unwrap();
    let step3_err = rel_err(&m.params, &g.model("step3").params);
    println!(
        "TF32 from PyTorch's fp32: step-0 gradients {grad_err:.1e} (bound {TF32_GRAD_BOUND:.1e}), parameters after 3 steps {step3_err:.1e} (bound {TF32_STEP3_BOUND:.1e})"
    );
    assert!(grad_err > 1e-5, "TF32 gradients {grad_err:.1e} from fp32: is TF32 in use?");
    assert!(grad_err < TF32_GRAD_BOUND && step3_err < TF32_STEP3_BOUND, "TF32 drifted beyond the bounds");
}

/// A larger step than the golden nets: the reference's CIFAR batch and network, on the
/// GPU against the CPU executor, one step from the same start.
#[test]
fn resnet32_hpff_batch_256_agrees_with_the_cpu_executor() {
    if !gpu() {
        return;
    }
    let plan = resnet32_hpff(256);
    let mut rng = Rng::new(5);
    let start = Snapshot::init(&plan, &mut rng);
    let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 3.0 - 1.5).collect();
    let labels: Vec<u32> = (0..plan.batch).map(|_| rng.below(10) as u32).collect();
    let input = StepInput { x: &x, labels: &labels, lr: 0.1, sgd: GOLDEN_SGD };
    let run = |mut ex: Box<dyn Executor<Error = hpff::error::Error>>| {
        start.upload(&mut *ex).unwrap();
        let mut losses = vec![0.0; plan.loss_slots()];
        ex.train_step(&plan, &input, &mut losses).unwrap();
        let mut grads = vec![0.0; plan.params];
        ex.download(Region::Grads, 0, &mut grads).unwrap();
        (losses, grads)
    };
    let (lc, gc) = run(hpff::device::boxed(hpff::cpu::CpuExecutor::new(&plan, 0)));
    for conv in [ConvPath::Cudnn, ConvPath::Im2col] {
        let opts = CudaOptions { conv: Some(conv), ..CudaOptions::default() };
        let ex = CudaExecutor::new(0, &plan, opts).unwrap();
        let name = ex.to_string();
        let (lg, gg) = run(hpff::device::boxed(ex));
        let (el, eg) = (rel_err(&lg, &lc), rel_err(&gg, &gc));
        println!(
            "ResNet-32 InfoPro+HPFF K=16, batch 256 on {name}: losses within {el:.1e}, gradients within {eg:.1e} of the CPU executor"
        );
        assert!(el < 1e-4 && eg < 1e-3, "GPU ({conv:?}) and CPU disagree: losses {el:.2e}, gradients {eg:.2e}");
    }
}

/// Largest difference of one launch from its emulated twin, relative to the largest value
/// it wrote: cuBLAS sums in another order than the core's GEMM (about 1e-6 here), kernels
/// contract other FMAs than the host compiler; a race or a wrong index is far above it.
const LOCKSTEP_TOL: f64 = 1e-4;
/// Buffers (arena and convolution workspace) above this are not run in lockstep: every
/// launch copies them both ways (the ImageNet fixtures, whose kernels the others cover).
const LOCKSTEP_MAX_BYTES: usize = 12 << 20;

/// Runs one training step of `plan` launch by launch on the GPU and in the emulator from the
/// same buffers, prints the launches furthest apart and returns the worst one.
fn lockstep(name: &str, plan: &Plan, model: &Snapshot, input: &StepInput) -> hpff_kernels::Divergence {
    let mut dev = CudaExecutor::new(0, plan, CudaOptions { graphs: false, ..CudaOptions::default() }).unwrap();
    let mut emu = EmuExecutor::new(plan);
    model.upload(&mut dev).unwrap();
    model.upload(&mut emu).unwrap();
    let mut all = dev.lockstep_train_step(&mut emu, plan, input, true).unwrap();
    all.sort_by(|a, b| b.rel.total_cmp(&a.rel));
    println!("{name}: {} launches; furthest from the emulator:", all.len());
    for d in all.iter().take(4) {
        println!(
            "  {:.1e} (abs {:.1e}, {} written) launch {} {} of op #{} {:.100}; at {}[{}]: device {} emulated {}",
            d.rel, d.abs, d.written, d.launch, d.what, d.op_index, d.op, d.at.0, d.at.1, d.at.2, d.at.3
        );
    }
    all.swap_remove(0)
}

/// Every launch and GEMM of every golden case's first step, and of the finite-difference
/// cases, computes on the GPU what its emulated twin computes from the same inputs: what
/// the emulator cannot see (the device's own cuBLAS paths, races between threads or
/// blocks, the CUDA compiler's code) is checked kernel by kernel here. For the
/// finite-difference cases, a step run as usual also gives the bits of the same step
/// synchronised after every launch.
#[test]
fn every_launch_agrees_with_its_emulated_twin() {
    if !gpu() {
        return;
    }
    let mut worst = Vec::new();
    for name in golden_cases() {
        let g = Golden::load(&name);
        let bytes = 4 * (g.plan.arena_len() + hpff_kernels::Extras::of(&g.plan).conv_ws);
        if bytes > LOCKSTEP_MAX_BYTES {
            println!("{name}: not run in lockstep ({} MB of buffers, each copied twice per launch)", bytes >> 20);
            continue;
        }
        let labels = g.labels(0);
        let d = lockstep(&name, &g.plan, &g.init(), &g.input(0, &labels));
        worst.push((name, d));
    }
    for (base, hpff, loss) in [
        (Base::InfoPro, false, LocalLoss::CrossEntropy),
        (Base::InfoPro, false, LocalLoss::Contrast),
        (Base::InfoPro, true, LocalLoss::CrossEntropy),
    ] {
        let c = case(base, hpff, loss);
        let input = StepInput { x: &c.x, labels: &c.labels, lr: 0.0, sgd: GOLDEN_SGD };
        let name = format!("module case {base:?} hpff={hpff} {loss:?}");
        let d = lockstep(&name, &c.plan, &c.model, &input);
        worst.push((name.clone(), d));
        assert_eq!(unsynchronised(&c.plan, &c.model, &input), synchronised(&c.plan, &c.model, &input), "{name}");
    }
    let bad: Vec<String> = worst
        .iter()
        .filter(|(_, d)| d.rel.is_nan() || d.rel >= LOCKSTEP_TOL)
        .map(|(n, d)| format!("{n}: {} of op #{} by {:.1e}", d.what, d.op_index, d.rel))
        .collect();
    assert!(bad.is_empty(), "launches that differ from the emulator: {}", bad.join("; "));
}

/// The gradient bits of one step as the executor runs it: launches queued back to back.
fn unsynchronised(plan: &Plan, model: &Snapshot, input: &StepInput) -> Vec<u32> {
    let mut ex = CudaExecutor::new(0, plan, CudaOptions { graphs: false, ..CudaOptions::default() }).unwrap();
    model.upload(&mut ex).unwrap();
    let mut losses = vec![0.0; plan.loss_slots()];
    ex.train_step(plan, input, &mut losses).unwrap();
    grad_bits(&mut ex, plan)
}

/// The gradient bits of the same step with the device waited for after every launch (a
/// lockstep run that keeps each side's own results): equal to the unsynchronised bits
/// when nothing in the step depends on timing (no race between launches, cuBLAS on the
/// executor's stream).
fn synchronised(plan: &Plan, model: &Snapshot, input: &StepInput) -> Vec<u32> {
    let mut ex = CudaExecutor::new(0, plan, CudaOptions { graphs: false, ..CudaOptions::default() }).unwrap();
    let mut emu = EmuExecutor::new(plan);
    model.upload(&mut ex).unwrap();
    model.upload(&mut emu).unwrap();
    ex.lockstep_train_step(&mut emu, plan, input, false).unwrap();
    grad_bits(&mut ex, plan)
}

fn grad_bits(ex: &mut CudaExecutor, plan: &Plan) -> Vec<u32> {
    let mut g = vec![0.0f32; plan.params];
    ex.download(Region::Grads, 0, &mut g).unwrap();
    g.iter().map(|v| v.to_bits()).collect()
}
