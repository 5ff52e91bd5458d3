//! The memory property of local learning, read off the static plan.

use hpff_core::arch::Arch;
use hpff_core::method::{Base, Family, Method, Pff, Precision};
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
            // HPFF's peak is its two live frames in the cascade's backward, not the decoder,
            // so PFF cannot lower it there; it must not raise it either.
            assert!(hpff.activations <= hilo.activations);
            // Plain InfoPro's peak is its decoder on the last stage (the upsampled map and its
            // gradient): there PFF lowers the peak.
            let pff = plan(depth, Base::InfoPro, false, k, batch, 2).memory();
            assert!(pff.activations < infopro.activations, "{} vs {}", pff.activations, infopro.activations);
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

/// Every method the plan knows, as the memory test runs it: each local one plain, with
/// HPFF, and with HPFF recomputing its modules' forward values; each at every precision.
fn every_method() -> Vec<Method> {
    let mut v = vec![Method::reference(Base::E2e, false)];
    for base in [Base::Greedy, Base::Dgl, Base::InfoPro] {
        let recompute = Method { recompute: true, ..Method::reference(base, true) };
        v.extend([Method::reference(base, false), Method::reference(base, true), recompute]);
    }
    // The ImageNet recipe (ImageNet networks only): its aux nets, its HPFF with the
    // decoder's output cut into patches, and with true patch-input PFF.
    let hpff = Method::imagenet_reference(Base::InfoPro, true);
    v.extend([
        Method::imagenet_reference(Base::Dgl, false),
        Method::imagenet_reference(Base::InfoPro, false),
        hpff,
        Method { pff: Pff::Input, ..hpff },
        Method { pff: Pff::Input, recompute: true, ..hpff },
    ]);
    // The 16-bit precisions: the blocks' kept values take half the slots, computed in and
    // read back through f32 temporaries. Every method again at each.
    let all = v.clone();
    for precision in [Precision::Bf16Mixed, Precision::F16Mixed] {
        v.extend(all.iter().map(|m| Method { precision, ..*m }));
    }
    v
}

/// How a method is named in the messages: base, `+hpff`, `+recompute`, the ImageNet recipe.
fn label(m: &Method) -> String {
    let recipe = match (m.aux, m.pff) {
        (Family::Cifar, _) => "",
        (Family::ImageNet, Pff::Output) => " (imagenet aux, pff output)",
        (Family::ImageNet, Pff::Input) => " (imagenet aux, pff input)",
    };
    let (h, r) = (if m.hpff { "+hpff" } else { "" }, if m.recompute { "+recompute" } else { "" });
    let p = if m.precision == Precision::F32 { String::new() } else { format!(" {}", m.precision.name()) };
    format!("{:?}{h}{r}{recipe}{p}", m.base)
}

/// Planned = measured, on every executor and for every method. The executor is laid out
/// for a larger batch than the step it runs, so its arena reaches past the step plan's;
/// the whole work region is filled with a sentinel; after one training step and one eval
/// pass, the highest float of the activation stack that changed must be the planned peak
/// (no more, and not much less), and nothing may change outside the stack and the plan's
/// conv scratch — above the peak, past the scratch, or in the slack the larger layout adds.
fn touches_the_planned_peak(target: Target) {
    use hpff::device::Snapshot;
    use hpff_core::exec::{Region, StepInput};
    use hpff_core::optim::Sgd;
    use hpff_core::rng::Rng;
    let (batch, layout_batch) = (16, 24);
    let imagenet = Arch::resnet_imagenet(18, 3, 32, 10).unwrap().with_width(8).unwrap();
    let cifar = Arch::resnet(20, 3, 16, 10).unwrap();
    let pairs = every_method().into_iter().flat_map(|m| [(m, cifar), (m, imagenet)]);
    // The ImageNet aux nets need an ImageNet network.
    for (method, arch) in pairs.filter(|(m, a)| m.aux == Family::Cifar || a.family == Family::ImageNet) {
        let name = format!("{} {}", arch.name(), label(&method));
        let k = if method.base == Base::E2e { 1 } else { 4 };
        let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part.clone(), method, batch, CIFAR_MEAN, CIFAR_STD).unwrap();
        let layout = Plan::new(arch, part, method, layout_batch, CIFAR_MEAN, CIFAR_STD).unwrap();
        assert_eq!(plan.act_off(), layout.act_off());
        let mut ex = target.open(&layout);
        Snapshot::init(&plan, &mut Rng::new(1)).upload(&mut *ex).unwrap();
        let sentinel = f32::from_bits(0x7fc0_1234);
        let whole = layout.arena_len() - layout.act_off();
        assert!(whole > plan.arena_len() - plan.act_off(), "the layout must leave slack past the plan");
        let mut rng = Rng::new(2);
        let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        let scratch = plan.scratch();
        let scratch = (scratch.off - plan.act_off())..(scratch.end() - plan.act_off());
        let m = plan.memory();
        for (step, planned) in [("train", m.activations / 4), ("eval", m.eval_activations / 4)] {
            let mut work = vec![sentinel; whole];
            ex.upload(Region::Work, 0, &work).unwrap();
            if step == "train" {
                let mut losses = vec![0.0; plan.loss_slots()];
                let input = StepInput { x: &x, labels: &labels, lr: 0.1, sgd: Sgd::default() };
                ex.train_step(&plan, &input, &mut losses).unwrap();
            } else {
                let mut logits = vec![0.0; batch * 10];
                ex.eval_step(&plan, &x, &mut logits).unwrap();
            }
            ex.download(Region::Work, 0, &mut work).unwrap();
            let changed = |i: &usize| work[*i].to_bits() != sentinel.to_bits();
            let outside = (0..whole).filter(|i| !scratch.contains(i)).filter(changed);
            let used = outside.max().map_or(0, |i| i + 1);
            println!("{target:?} {name} {step}: planned {planned} floats, highest touched {used}");
            assert!(used <= planned, "{target:?} {name} {step}: wrote float {used}, past the planned peak {planned}");
            // Only a last buffer that is allocated but written later than read can stay clean.
            assert!(used as f64 >= 0.95 * planned as f64, "{name} {step}: plan overestimates: {used} of {planned}");
        }
    }
}

on_every_executor! {
    a_step_touches_exactly_the_planned_activation_peak => touches_the_planned_peak;
}

/// Issue 14's targets (ResNet-32/110 on CIFAR shapes): e2e and InfoPro below what PyTorch
/// saves for backward, infopro+HPFF K=16 within a third of e2e (recomputing), ResNet-110
/// K=55 within a quarter of e2e at batch 1024, and an eval pass in O(largest layer),
/// whatever the depth.
#[test]
fn planned_peaks_meet_the_memory_targets() {
    const MIB: usize = 1 << 20;
    let e32 = plan(32, Base::E2e, false, 1, 128, 1).memory();
    assert!(e32.activations <= 250 * MIB, "e2e ResNet-32: {:.1} MiB", mib(e32.activations));
    let i32 = plan(32, Base::InfoPro, false, 16, 128, 1).memory();
    assert!(i32.activations <= 80 * MIB, "infopro K=16 ResNet-32: {:.1} MiB", mib(i32.activations));
    // infopro+HPFF within a third of e2e when it recomputes its modules' forward values;
    // without, below PyTorch's ½ (a regression past 42 % fails).
    let h32 = plan(32, Base::InfoPro, true, 16, 128, 2).memory();
    assert!(h32.activations * 100 <= 42 * e32.activations, "infopro+HPFF K=16: {:.1} MiB", mib(h32.activations));
    let arch = Arch::resnet(32, 3, 32, 10).unwrap();
    let part = Partition::for_k(&arch, 16, TableKind::Reference).unwrap();
    let m = Method { recompute: true, ..Method::reference(Base::InfoPro, true) };
    let r32 = Plan::new(arch, part, m, 128, CIFAR_MEAN, CIFAR_STD).unwrap().memory();
    assert!(3 * r32.activations <= e32.activations, "recomputing infopro+HPFF K=16: {:.1} MiB", mib(r32.activations));
    let e110 = plan(110, Base::E2e, false, 1, 1024, 1).memory();
    let h110 = plan(110, Base::InfoPro, true, 55, 1024, 2).memory();
    assert!(4 * h110.activations <= e110.activations, "{} vs {}", h110.activations, e110.activations);
    // Eval: the input, the logits, two block outputs and two layer temporaries.
    let deep = plan(110, Base::E2e, false, 1, 128, 1).memory();
    assert_eq!(deep.eval_activations, e32.eval_activations);
    let (layer, input) = (128 * 16 * 32 * 32 * 4, 128 * 3 * 32 * 32 * 4);
    assert!(deep.eval_activations < input + 4 * layer + MIB, "eval {:.1} MiB", mib(deep.eval_activations));
}

/// bf16-mixed halves what the residual blocks keep; the f32 temporaries it computes in
/// (a layer or two) and what stays f32 (module outputs, aux nets, gradients) take the rest.
/// Measured on the plans (batch 128, CIFAR shapes): e2e ResNet-110 0.51×, ResNet-56 0.53×,
/// ResNet-32 0.56×; the local methods, whose peak is mostly f32 module outputs and aux
/// nets, save less but never pay. 16-mixed plans the same bytes.
#[test]
fn bf16_mixed_halves_what_the_blocks_keep() {
    let at = |p: &Plan, precision| {
        let m = Method { precision, ..p.method };
        Plan::new(p.arch, p.part.clone(), m, p.batch, p.mean, p.std).unwrap().memory().activations as f64
    };
    let bf16 = |p: Plan| {
        let b = at(&p, Precision::Bf16Mixed);
        assert_eq!(b, at(&p, Precision::F16Mixed), "16-mixed and bf16-mixed plan other sizes");
        b
    };
    for (depth, most) in [(110, 0.52), (56, 0.54), (32, 0.57)] {
        let p = plan(depth, Base::E2e, false, 1, 128, 1);
        let r = bf16(p.clone()) / p.memory().activations as f64;
        println!("e2e ResNet-{depth}: bf16-mixed activations {r:.3}× of f32");
        assert!(r <= most, "e2e ResNet-{depth}: {r:.3}× of f32");
    }
    for (base, hpff, k) in
        [(Base::InfoPro, true, 16), (Base::InfoPro, false, 16), (Base::Dgl, false, 4), (Base::Greedy, false, 8)]
    {
        let p = plan(32, base, hpff, k, 128, if hpff { 2 } else { 1 });
        let r = bf16(p.clone()) / p.memory().activations as f64;
        println!("{base:?} hpff={hpff} K={k} ResNet-32: bf16-mixed activations {r:.3}× of f32");
        assert!(r < 1.0, "{base:?} K={k}: {r:.3}× of f32");
    }
}

/// The overlays of the schedule never clobber a live value: simulated op by op, every
/// buffer an op reads (or updates) holds exactly one value, written earlier in the same
/// step (or the input batch, uploaded before it), and not overwritten since. Each float
/// carries the id of the write that produced it; an in-place update keeps the id.
fn reads_only_live_values(plan: &Plan, train: bool) -> usize {
    use hpff_core::plan::{Access, Op};
    const STALE: u32 = u32::MAX;
    let lo = plan.act_off();
    let peak = if train { plan.memory().activations } else { plan.memory().eval_activations } / 4;
    let mut owner = vec![STALE; peak];
    let input = plan.input();
    owner[input.off - lo..input.end() - lo].fill(0);
    let mut i = 0u32;
    let mut visit = |op: &Op| {
        i += 1;
        let mut writes = Vec::new();
        let mut bufs = Vec::new();
        op.for_each_buf(|_, _, b| bufs.push(b));
        for (k, a) in bufs.iter().enumerate() {
            for b in &bufs[k + 1..] {
                assert!(!a.overlaps(b), "op {i} {}: {a:?} overlaps {b:?}", op.name());
            }
        }
        op.for_each_buf(|field, access, b| {
            let r = b.off - lo..b.end() - lo;
            if matches!(access, Access::Read | Access::Update) && b.len > 0 {
                let first = owner[r.start];
                assert!(first != STALE, "op {i} {} reads {field} {b:?} before anything wrote it", op.name());
                if let Some(k) = owner[r.clone()].iter().position(|&o| o != first) {
                    panic!(
                        "op {i} {} reads {field} {b:?}, partly clobbered at float {} (written by op {}, not op {first})",
                        op.name(),
                        b.off + k,
                        owner[r.start + k]
                    );
                }
            }
            if access == Access::Write {
                writes.push(r);
            }
        });
        for r in writes {
            owner[r].fill(i);
        }
    };
    if train {
        plan.train_step(&mut visit);
    } else {
        plan.eval_step(&mut visit);
    }
    i as usize
}

#[test]
fn overlays_never_clobber_a_live_value() {
    let mut checked = 0;
    for method in every_method() {
        let cifar = [(8, 16, 3, 37), (14, 16, 5, 8), (20, 32, 4, 5), (32, 32, 16, 2), (164, 32, 4, 2)]
            .map(|(depth, image, k, batch)| (Arch::resnet(depth, 3, image, 10).unwrap(), k, batch));
        // The ImageNet stem (max pool, recomputed in backward) and four stages, Basic and
        // Bottleneck, at base width 8.
        let imagenet = [(18, 32, 4, 5), (50, 64, 8, 2)].map(|(depth, image, k, batch)| {
            (Arch::resnet_imagenet(depth, 3, image, 10).unwrap().with_width(8).unwrap(), k, batch)
        });
        for (arch, k, batch) in cifar.into_iter().chain(imagenet) {
            let (depth, image) = (arch.name(), arch.image);
            let Ok(part) = Partition::for_k(&arch, k, TableKind::Reference) else { continue };
            let Ok(p) = Plan::new(arch, part, method, batch, CIFAR_MEAN, CIFAR_STD) else { continue };
            eprintln!("checking {} {depth} {image}px K={k} batch {batch}", label(&method));
            assert!(reads_only_live_values(&p, true) > 0);
            assert!(reads_only_live_values(&p, false) > 0);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} plans checked");
}
