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
use hpff_core::method::{Base, Method};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;
use hpff_kernels::{CudaExecutor, CudaOptions};
use hpff_tests::executors::cuda_missing;
use hpff_tests::golden::{rel_err, Golden, GOLDEN_SGD};

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

/// The device memory an executor takes (cuMemGetInfo before and after building it)
/// is its arena plus the extra buffers it reports, up to the per-executor module and
/// cuBLAS-handle state it does not count.
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
    let ex = CudaExecutor::new(0, &plan, CudaOptions::default()).unwrap();
    let after = ex.device_memory_used().unwrap();
    let held = ex.held();
    let taken = after - before;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "{ex}: planned arena {:.1} MiB, held {:.1} MiB (arena {:.1} + extra {:.1}), device memory taken {:.1} MiB",
        mib(plan.memory().total()),
        mib(held.total()),
        mib(held.arena),
        mib(held.extra),
        mib(taken)
    );
    assert_eq!(held.arena, plan.memory().total());
    assert!(taken >= held.total(), "the device lost less than the executor holds");
    assert!(taken - held.total() <= 64 << 20, "{:.1} MiB taken beyond what is held", mib(taken - held.total()));
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

#[test]
fn tf32_stays_close_to_strict_fp32() {
    if !gpu() {
        return;
    }
    let g = Golden::load("e2e");
    let mut ex = CudaExecutor::new(0, &g.plan, CudaOptions { tf32: true, ..CudaOptions::default() }).unwrap();
    g.init().upload(&mut ex).unwrap();
    let mut losses = vec![0.0; g.plan.loss_slots()];
    for t in 0..3 {
        let labels = g.labels(t);
        ex.train_step(&g.plan, &g.input(t, &labels), &mut losses).unwrap();
    }
    let m = Snapshot::download(&mut ex).unwrap();
    let want = g.model("step3");
    let e = rel_err(&m.params, &want.params);
    println!("TF32: parameters after 3 steps within {e:.1e} of PyTorch's fp32 (relative to the largest)");
    assert!(e < 1e-2, "TF32 drifted {e:.2e} from fp32");
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
    let (lg, gg) = run(hpff::device::boxed(CudaExecutor::new(0, &plan, CudaOptions::default()).unwrap()));
    let (el, eg) = (rel_err(&lg, &lc), rel_err(&gg, &gc));
    println!(
        "ResNet-32 InfoPro+HPFF K=16, batch 256: losses within {el:.1e}, gradients within {eg:.1e} of the CPU executor"
    );
    assert!(el < 1e-4 && eg < 1e-3, "GPU and CPU disagree: losses {el:.2e}, gradients {eg:.2e}");
}
