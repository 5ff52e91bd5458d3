//! How much memory does a method need? Asks the static plan, before anything runs.
//!
//! Run: `cargo run --release -p hpff-examples --bin plan_memory`

use hpff_core::arch::Arch;
use hpff_core::method::{Base, Method};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::{Plan, PlanError};

fn main() -> Result<(), PlanError> {
    let arch = Arch::resnet(110, 3, 32, 10)?;
    let cifar = ([0.491, 0.482, 0.447, 0.0], [0.247, 0.243, 0.262, 1.0]);
    println!("ResNet-110 on 32×32, batch 1024: training arena by method");
    for (name, base, hpff, k) in [
        ("e2e", Base::E2e, false, 1),
        ("infopro K=55", Base::InfoPro, false, 55),
        ("infopro+hpff K=55", Base::InfoPro, true, 55),
    ] {
        let part = Partition::for_k(&arch, k, TableKind::Reference)?;
        let plan = Plan::new(arch, part, Method::reference(base, hpff), 1024, cifar.0, cifar.1)?;
        let m = plan.memory();
        println!(
            "  {name:<18} {} modules: {:>8.1} MiB (activations {:.1} MiB)",
            plan.modules(),
            m.total() as f64 / 1048576.0,
            m.activations as f64 / 1048576.0
        );
    }
    Ok(())
}
