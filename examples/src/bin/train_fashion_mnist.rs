//! The training loop without the CLI: Fashion-MNIST, ResNet-8, InfoPro + HPFF with K = 3,
//! the multi-threaded CPU executor. A starting point for custom experiments.
//!
//! Run: `cargo run --release -p hpff-examples --bin train_fashion_mnist -- [train images]`
//! (needs the Debian package `dataset-fashion-mnist`, or downloads into the cache).

use hpff::cpu::CpuExecutor;
use hpff::data::{self, BatchOptions, Batches, DatasetKind, Split};
use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::exec::{Executor, StepInput};
use hpff_core::method::{Base, Method};
use hpff_core::optim::Sgd;
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::{LossKind, Plan};
use hpff_core::rng::Rng;
use std::sync::Arc;

const BATCH: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit: usize = std::env::args().nth(1).map_or(Ok(12_800), |s| s.parse())?;
    let dir = data::fashion_mnist_dir(&data::default_cache_dir())?;
    let train = Arc::new(data::load_fashion_mnist(&dir, Split::Train)?.sample(limit, Rng::new(1)));
    let test = Arc::new(data::load_fashion_mnist(&dir, Split::Test)?.sample(2_000, Rng::new(2)));
    let norm = DatasetKind::FashionMnist.default_normalize();
    let mean = [norm.mean[0], 0.0, 0.0, 0.0];
    let std = [norm.std[0], 1.0, 1.0, 1.0];

    // The plan: sizes and the memory bound before anything runs.
    let arch = Arch::resnet(8, 1, 28, 10)?;
    let part = Partition::for_k(&arch, 3, TableKind::Reference)?;
    let plan = Plan::new(arch, part.clone(), Method::reference(Base::InfoPro, true), BATCH, mean, std)?;
    println!("{} modules, training arena {:.1} MiB", plan.modules(), plan.memory().total() as f64 / 1048576.0);
    // The executor owns the arena (any `Executor` works the same: `hpff::device::open`
    // picks one by name, e.g. the CUDA executor).
    let mut exec = CpuExecutor::new(&plan, 0);
    Snapshot::init(&plan, &mut Rng::new(0)).upload(&mut exec)?;

    // Train one epoch on full batches (the last partial batch is dropped for brevity).
    let mut losses = vec![0.0; plan.loss_slots()];
    let rng = Rng::new(1);
    let opts = BatchOptions { drop_last: true, ..BatchOptions::train(BATCH, None, norm.clone()) };
    let steps = Batches::new(train.clone(), &opts, &rng, 0).len();
    for (i, b) in Batches::new(train, &opts, &rng, 0).enumerate() {
        let lr = 0.05 * (1.0 + (std::f32::consts::PI * i as f32 / steps as f32).cos());
        exec.train_step(&plan, &StepInput { x: &b.x, labels: &b.y, lr, sgd: Sgd::default() }, &mut losses)?;
        if i % 20 == 0 {
            println!("step {i:>4}/{steps}: cross-entropy {:.4}", losses[LossKind::LastY.slot(plan.modules() - 1)]);
        }
    }

    // Evaluate with the running BN statistics (a plan for the tail batch shares the parameters).
    let (mut correct, mut seen) = (0, 0);
    for b in Batches::new(test, &BatchOptions::eval(BATCH, norm), &rng, 0) {
        let eval_plan = Plan::new(arch, part.clone(), plan.method, b.n, mean, std)?;
        let mut logits = vec![0.0; eval_plan.logits().len];
        exec.eval_step(&eval_plan, &b.x, &mut logits)?;
        for (row, &y) in logits.chunks_exact(10).zip(&b.y) {
            let arg = (0..10).fold(0, |m, k| if row[k] > row[m] { k } else { m });
            correct += usize::from(arg as u32 == y);
        }
        seen += b.n;
    }
    println!("test accuracy on {seen} images: {:.2}%", 100.0 * correct as f64 / seen as f64);
    Ok(())
}
