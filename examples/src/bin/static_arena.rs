//! Linking the `no_std` core into a custom runtime: a static arena, no allocator.
//!
//! Everything between "plan" and "done" uses only `hpff_core` and a `static` buffer —
//! the same code runs on a microcontroller. To prove it, this program counts heap
//! allocations in that section with a counting global allocator and fails if any happen.
//!
//! Task: 8×8 single-channel images with one bright quadrant; the class is the quadrant.
//! ResNet-8, InfoPro + HPFF with K = 3 modules and 2×2 patches, batch 16.
//!
//! Run: `cargo run --release -p hpff-examples --bin static_arena`

use hpff_core::arch::Arch;
use hpff_core::exec::{Executor, Reference, StepInput};
use hpff_core::method::{AuxHead, Base, Method};
use hpff_core::optim::Sgd;
use hpff_core::partition::Partition;
use hpff_core::plan::{loss_record_len, LossKind, Plan};
use hpff_core::rng::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The budget a runtime would reserve: 4 Mi floats (16 MiB). The plan says if it fits.
const ARENA_FLOATS: usize = 4 << 20;
const BATCH: usize = 16;
const IMAGE: usize = 8;
const STEPS: usize = 60;

static mut ARENA: [f32; ARENA_FLOATS] = [0.0; ARENA_FLOATS];
static mut IMAGES: [f32; BATCH * IMAGE * IMAGE] = [0.0; BATCH * IMAGE * IMAGE];
static mut LABELS: [u32; BATCH] = [0; BATCH];
static mut LOSSES: [f32; loss_record_len(3)] = [0.0; loss_record_len(3)];
static mut LOGITS: [f32; BATCH * 4] = [0.0; BATCH * 4];

/// A batch of quadrant images: background noise, one bright quadrant, normalised.
fn make_batch(rng: &mut Rng, x: &mut [f32], y: &mut [u32]) {
    for (i, label) in y.iter_mut().enumerate() {
        let q = rng.below(4) as u32;
        *label = q;
        let (qy, qx) = ((q / 2) as usize * IMAGE / 2, (q % 2) as usize * IMAGE / 2);
        for r in 0..IMAGE {
            for c in 0..IMAGE {
                let bright = (qy..qy + IMAGE / 2).contains(&r) && (qx..qx + IMAGE / 2).contains(&c);
                let v = if bright { 0.8 } else { 0.2 } + 0.1 * rng.uniform();
                x[i * IMAGE * IMAGE + r * IMAGE + c] = (v - 0.5) / 0.25;
            }
        }
    }
}

/// Plans, trains and evaluates without touching the heap; returns (first loss, last loss, accuracy).
fn run() -> Result<(f32, f32, f32), &'static str> {
    let arch = Arch::resnet(8, 1, IMAGE, 4).map_err(|_| "arch")?;
    let part = Partition::from_splits(&arch, [(1, 0), (2, 0)]).map_err(|_| "partition")?;
    let mut method = Method::reference(Base::InfoPro, true);
    method.head = AuxHead::parse("0c2f").map_err(|_| "head")?;
    method.feature_dim = 32;
    method.wx = 0.5;
    method.wy = 0.5;
    let plan = Plan::new(arch, part, method, BATCH, [0.5, 0.0, 0.0, 0.0], [0.25, 1.0, 1.0, 1.0]).map_err(|_| "plan")?;
    if plan.arena_len() > ARENA_FLOATS {
        return Err("the plan does not fit the static arena");
    }
    // SAFETY: single-threaded program; these statics are only touched here.
    let (arena, x, y, losses) = unsafe {
        (
            &mut (&mut *core::ptr::addr_of_mut!(ARENA))[..plan.arena_len()],
            &mut *core::ptr::addr_of_mut!(IMAGES),
            &mut *core::ptr::addr_of_mut!(LABELS),
            &mut *core::ptr::addr_of_mut!(LOSSES),
        )
    };
    let mut rng = Rng::new(1);
    // The reference executor borrows the static arena: it owns it for as long as it lives.
    let mut exec = Reference::new(&plan, arena).map_err(|_| "arena")?;
    exec.init(&mut rng);
    let sgd = Sgd::default();
    let last = LossKind::LastY.slot(plan.modules() - 1);
    let (mut first, mut final_loss) = (0.0, 0.0);
    for step in 0..STEPS {
        make_batch(&mut rng, x, y);
        let input = StepInput { x, labels: y, lr: 0.05, sgd };
        exec.train_step(&plan, &input, losses).map_err(|_| "step")?;
        if step == 0 {
            first = losses[last];
        }
        final_loss = losses[last];
    }
    let mut correct = 0;
    make_batch(&mut rng, x, y);
    // SAFETY: single-threaded program; only touched here.
    let logits = unsafe { &mut (&mut *core::ptr::addr_of_mut!(LOGITS))[..plan.logits().len] };
    exec.eval_step(&plan, x, logits).map_err(|_| "eval")?;
    for (i, row) in logits.chunks_exact(4).enumerate() {
        let arg = (0..4).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        correct += usize::from(arg as u32 == y[i]);
    }
    Ok((first, final_loss, correct as f32 / BATCH as f32))
}

fn main() {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let result = run();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    match result {
        Ok((first, last, acc)) => {
            println!("cascade-path CE: step 1 {first:.4} -> step {STEPS} {last:.4}; eval accuracy {:.0}%", acc * 100.0);
            println!("heap allocations while planning, training and evaluating: {allocations}");
            if allocations != 0 || last >= first {
                eprintln!("static_arena: expected no allocations and a falling loss");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("static_arena: {e}");
            std::process::exit(1);
        }
    }
}
