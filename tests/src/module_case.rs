//! The small network of the module finite-difference checks (`module_fd.rs`), shared
//! with the GPU's lockstep test (`cuda.rs`): ResNet-8 on 8×8 images with 3 classes, cut
//! after stage 1 and stage 2 into three modules, batch 6, a `1c2f` head of width 16 and
//! loss weights that make every term count.

use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::method::{AuxHead, Base, LocalLoss, Method};
use hpff_core::partition::Partition;
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;

#[derive(Debug)]
pub struct Case {
    pub plan: Plan,
    pub x: Vec<f32>,
    pub labels: Vec<u32>,
    pub model: Snapshot,
}

/// The case for `base` (+HPFF) with local loss `loss`, its model and batch drawn from seed 7.
pub fn case(base: Base, hpff: bool, loss: LocalLoss) -> Case {
    let arch = Arch::resnet(8, 3, 8, 3).unwrap();
    let part = Partition::from_splits(&arch, [(1, 0), (2, 0)]).unwrap();
    let mut m = Method::reference(base, hpff);
    m.head = AuxHead::parse("1c2f").unwrap();
    m.feature_dim = 16;
    m.local_loss = loss;
    m.lambda1 = [5.0, 2.0];
    m.lambda2 = [0.5, 1.0];
    m.wx = 0.3;
    m.wy = 0.7;
    let batch = 6;
    let plan = Plan::new(arch, part, m, batch, [0.5, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 1.0]).unwrap();
    let mut rng = Rng::new(7);
    let model = Snapshot::init(&plan, &mut rng);
    // Pixels in (0, 1) after de-normalisation, so BCE targets are valid.
    let x = (0..plan.input().len).map(|_| (rng.uniform() - 0.5) * 3.6).collect();
    let labels = vec![0, 1, 2, 0, 1, 2];
    Case { plan, x, labels, model }
}
