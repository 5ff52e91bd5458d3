//! Module partitions: where the network is cut into gradient-isolated modules.
//!
//! A partition is a list of split points `(stage, block)` — 1-based stage, 0-based
//! block as in the reference tables (stages 1..=3 on CIFAR, 1..=4 on ImageNet) — each
//! the last block of a module; the last
//! split point is always the network's last block, and the stem belongs to
//! module 0. The reference labels some tables with a K that is not their module
//! count (ResNet-32 "16" has 15 modules, ResNet-110 "55" has 54); the label is
//! kept as `k_label` because the reference's λ interpolation divides by it, and
//! `modules()` is the true count.

use crate::arch::{Arch, Family};
use crate::error::PlanError;
use heapless::Vec;

/// Most modules a partition can have.
pub const MAX_MODULES: usize = 64;

type Table = &'static [(u8, u8)];

const RESNET32: &[(usize, Table)] = &[
    (1, &[(3, 4)]),
    (2, &[(2, 1), (3, 4)]),
    (3, &[(1, 4), (2, 4), (3, 4)]),
    (4, &[(1, 2), (2, 1), (3, 0), (3, 4)]),
    (8, &[(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2), (3, 4)]),
    (
        16,
        &[
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (2, 0),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4),
            (3, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
        ],
    ),
];

const RESNET110: &[(usize, Table)] = &[
    (1, &[(3, 17)]),
    (2, &[(2, 8), (3, 17)]),
    (3, &[(1, 17), (2, 17), (3, 17)]),
    (4, &[(1, 11), (2, 7), (3, 3), (3, 17)]),
    (8, &[(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10), (3, 17)]),
    (
        16,
        &[
            (1, 1),
            (1, 4),
            (1, 7),
            (1, 10),
            (1, 13),
            (1, 16),
            (2, 1),
            (2, 4),
            (2, 7),
            (2, 11),
            (2, 15),
            (3, 1),
            (3, 5),
            (3, 9),
            (3, 13),
            (3, 17),
        ],
    ),
    (
        32,
        &[
            (1, 1),
            (1, 2),
            (1, 4),
            (1, 5),
            (1, 7),
            (1, 9),
            (1, 11),
            (1, 13),
            (1, 14),
            (1, 16),
            (1, 17),
            (2, 1),
            (2, 2),
            (2, 4),
            (2, 5),
            (2, 7),
            (2, 9),
            (2, 11),
            (2, 13),
            (2, 14),
            (2, 16),
            (2, 17),
            (3, 1),
            (3, 3),
            (3, 4),
            (3, 6),
            (3, 7),
            (3, 9),
            (3, 11),
            (3, 13),
            (3, 15),
            (3, 17),
        ],
    ),
    (55, &ALL_110),
];

const ALL_110: [(u8, u8); 54] = {
    let mut t = [(0u8, 0u8); 54];
    let mut i = 0;
    while i < 54 {
        t[i] = ((i / 18 + 1) as u8, (i % 18) as u8);
        i += 1;
    }
    t
};

/// The reference's ImageNet tables (`Exp on Imagenet/networks/configs.py`). ResNet-101
/// and -152 share theirs (the reference's ResNeXt-101 32x8d uses the same one too);
/// every label is its true module count.
const IMAGENET_RESNET34: &[(usize, Table)] = &[(1, &[(4, 2)]), (4, &[(2, 0), (3, 0), (3, 5), (4, 2)])];
const IMAGENET_RESNET101_152: &[(usize, Table)] = &[
    (1, &[(4, 2)]),
    (4, &[(3, 0), (3, 9), (3, 17), (4, 2)]),
    (8, &[(2, 0), (3, 1), (3, 5), (3, 9), (3, 13), (3, 17), (3, 21), (4, 2)]),
];

/// InfoPro's balanced-memory tables (InfoPro* in the papers), ResNet-110 only.
const RESNET110_BALANCED_CIFAR10: &[(usize, Table)] = &[
    (1, &[(3, 17)]),
    (2, &[(1, 14), (3, 17)]),
    (3, &[(1, 9), (2, 2), (3, 17)]),
    (4, &[(1, 6), (1, 14), (2, 8), (3, 17)]),
];
const RESNET110_BALANCED_STL10: &[(usize, Table)] = &[
    (1, &[(3, 17)]),
    (2, &[(1, 14), (3, 17)]),
    (3, &[(1, 8), (2, 1), (3, 17)]),
    (4, &[(1, 6), (1, 14), (2, 8), (3, 17)]),
];

/// Which table to take split points from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// The reference's InfoPro tables where they exist, else an even split.
    Reference,
    /// InfoPro's balanced-memory tables (ResNet-110 on CIFAR-10 or STL-10).
    BalancedCifar10,
    BalancedStl10,
}

/// A partition of the blocks into modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Global index of each module's last block, strictly increasing, ending at the last block.
    ends: Vec<u16, MAX_MODULES>,
    /// The K the user asked for (the reference's label).
    pub k_label: usize,
}

impl Partition {
    /// The partition for `k` modules: the reference table when there is one, else an even split.
    pub fn for_k(arch: &Arch, k: usize, table: TableKind) -> Result<Partition, PlanError> {
        if k == 0 {
            return Err(PlanError::BadPartition("K must be at least 1"));
        }
        let tables: &[(usize, Table)] = match (table, arch.family, arch.depth) {
            (TableKind::Reference, Family::Cifar, 32) => RESNET32,
            (TableKind::Reference, Family::Cifar, 110) => RESNET110,
            (TableKind::Reference, Family::ImageNet, 34) => IMAGENET_RESNET34,
            (TableKind::Reference, Family::ImageNet, 101 | 152) => IMAGENET_RESNET101_152,
            (TableKind::BalancedCifar10, Family::Cifar, 110) => RESNET110_BALANCED_CIFAR10,
            (TableKind::BalancedStl10, Family::Cifar, 110) => RESNET110_BALANCED_STL10,
            (TableKind::Reference, ..) => &[],
            _ => return Err(PlanError::BadPartition("balanced-memory tables exist only for ResNet-110 with K ≤ 4")),
        };
        if let Some((_, t)) = tables.iter().find(|(kk, _)| *kk == k) {
            let mut p = Partition::from_splits(arch, t.iter().map(|&(s, b)| (s as usize, b as usize)))?;
            p.k_label = k;
            return Ok(p);
        }
        if table != TableKind::Reference {
            return Err(PlanError::BadPartition("no balanced-memory table for this K (have 1, 2, 3, 4)"));
        }
        Partition::even(arch, k)
    }

    /// `k` modules of as equal a block count as possible (earlier modules get the extra block).
    pub fn even(arch: &Arch, k: usize) -> Result<Partition, PlanError> {
        let n = arch.blocks();
        if k == 0 || k > n {
            return Err(PlanError::TooManyModules { k, blocks: n });
        }
        if k > MAX_MODULES {
            return Err(PlanError::TooManyModules { k, blocks: MAX_MODULES });
        }
        let mut ends = Vec::new();
        let (q, r) = (n / k, n % k);
        let mut end = 0;
        for j in 0..k {
            end += q + usize::from(j < r);
            let _ = ends.push((end - 1) as u16);
        }
        Ok(Partition { ends, k_label: k })
    }

    /// User-given split points `(stage 1..=stages, block)`; the last block is appended if missing.
    pub fn from_splits(arch: &Arch, splits: impl IntoIterator<Item = (usize, usize)>) -> Result<Partition, PlanError> {
        let mut ends: Vec<u16, MAX_MODULES> = Vec::new();
        let stages = arch.stages();
        for (s, b) in splits {
            let blocks = if (1..=stages).contains(&s) { arch.stage_blocks[s - 1] } else { 0 };
            if b >= blocks {
                return Err(PlanError::NoSuchSplit { stage: s, block: b, stages, blocks });
            }
            let g = (arch.stage_start(s - 1) + b) as u16;
            if ends.last().is_some_and(|&last| g <= last) {
                return Err(PlanError::BadPartition("split points must be strictly increasing"));
            }
            ends.push(g).map_err(|_| PlanError::TooManyModules { k: MAX_MODULES + 1, blocks: MAX_MODULES })?;
        }
        let last = (arch.blocks() - 1) as u16;
        if ends.last() != Some(&last) {
            ends.push(last).map_err(|_| PlanError::TooManyModules { k: MAX_MODULES + 1, blocks: MAX_MODULES })?;
        }
        let k_label = ends.len();
        Ok(Partition { ends, k_label })
    }

    /// True module count.
    pub fn modules(&self) -> usize {
        self.ends.len()
    }

    /// Global block range of module `j`.
    pub fn blocks_of(&self, j: usize) -> core::ops::Range<usize> {
        let start = if j == 0 { 0 } else { self.ends[j - 1] as usize + 1 };
        start..self.ends[j] as usize + 1
    }

    /// The reference's split point `(stage 1-based, block)` ending module `j`.
    pub fn split_point(&self, arch: &Arch, j: usize) -> (usize, usize) {
        let (s, b) = arch.locate(self.ends[j] as usize);
        (s + 1, b)
    }

    /// The reference's interpolation ratio for module `i`: i/(K−2) with K the label, 0 when K ≤ 2.
    pub fn ratio(&self, i: usize) -> f32 {
        if self.k_label > 2 {
            i as f32 / (self.k_label - 2) as f32
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_labels_are_kept_and_true_counts_reported() {
        let a = Arch::resnet(32, 3, 32, 10).unwrap();
        let p = Partition::for_k(&a, 16, TableKind::Reference).unwrap();
        assert_eq!((p.k_label, p.modules()), (16, 15));
        assert_eq!(p.blocks_of(0), 0..1);
        let b = Arch::resnet(110, 3, 32, 10).unwrap();
        let p = Partition::for_k(&b, 55, TableKind::Reference).unwrap();
        assert_eq!((p.k_label, p.modules()), (55, 54));
        let p = Partition::for_k(&a, 4, TableKind::Reference).unwrap();
        assert_eq!(p.blocks_of(1), 3..7);
        assert_eq!(p.split_point(&a, 2), (3, 0));
    }

    #[test]
    fn even_split_and_errors() {
        let a = Arch::resnet(20, 3, 32, 10).unwrap();
        let p = Partition::for_k(&a, 4, TableKind::Reference).unwrap();
        assert_eq!((0..4).map(|j| p.blocks_of(j).len()).sum::<usize>(), 9);
        assert_eq!(p.blocks_of(0), 0..3);
        assert!(matches!(Partition::even(&a, 10), Err(PlanError::TooManyModules { .. })));
        assert!(matches!(Partition::from_splits(&a, [(2, 3)]), Err(PlanError::NoSuchSplit { .. })));
        assert!(Partition::from_splits(&a, [(2, 1), (1, 1)]).is_err());
        let p = Partition::from_splits(&a, [(1, 2)]).unwrap();
        assert_eq!(p.modules(), 2);
    }

    /// The reference's ImageNet tables land on the blocks configs.py names, and ImageNet
    /// networks without a table (or a K without one) get an even split.
    #[test]
    fn imagenet_tables() {
        let a = Arch::resnet_imagenet(101, 3, 224, 1000).unwrap();
        let p = Partition::for_k(&a, 4, TableKind::Reference).unwrap();
        assert_eq!((p.k_label, p.modules()), (4, 4));
        // [3,0]: stem + layer1 (3) + layer2 (4) + layer3[0]; [4,2]: the network's last block.
        assert_eq!([p.blocks_of(0), p.blocks_of(1), p.blocks_of(3)], [0..8, 8..17, 25..33]);
        assert_eq!(p.split_point(&a, 2), (3, 17));
        let p = Partition::for_k(&a, 8, TableKind::Reference).unwrap();
        assert_eq!((p.modules(), p.blocks_of(0), p.split_point(&a, 6)), (8, 0..4, (3, 21)));
        let b = Arch::resnet_imagenet(152, 3, 224, 1000).unwrap();
        let p = Partition::for_k(&b, 8, TableKind::Reference).unwrap();
        // layer3 has 36 blocks here: the last module holds layer3[22..36] and layer4.
        assert_eq!((p.blocks_of(7), p.split_point(&b, 7)), (11 + 22..50, (4, 2)));
        let c = Arch::resnet_imagenet(34, 3, 224, 1000).unwrap();
        let p = Partition::for_k(&c, 4, TableKind::Reference).unwrap();
        assert_eq!([p.blocks_of(0), p.blocks_of(2), p.blocks_of(3)], [0..4, 8..13, 13..16]);
        let p = Partition::for_k(&c, 8, TableKind::Reference).unwrap();
        assert_eq!((p.modules(), p.blocks_of(0)), (8, 0..2));
        let r = Arch::resnet_imagenet(18, 3, 64, 10).unwrap();
        assert_eq!(Partition::for_k(&r, 8, TableKind::Reference).unwrap().blocks_of(7), 7..8);
        assert!(Partition::from_splits(&r, [(4, 1)]).is_ok());
        let text = |e: PlanError| {
            let mut s = heapless::String::<80>::new();
            core::fmt::write(&mut s, format_args!("{e}")).unwrap();
            s
        };
        let e = Partition::from_splits(&r, [(4, 2)]).unwrap_err();
        assert_eq!(text(e), "split point (4, 2) does not exist: stage 4 has blocks 0..2");
        let e = Partition::from_splits(&a, [(5, 0)]).unwrap_err();
        assert_eq!(text(e), "split point (5, 0) does not exist: stages are 1..=4");
    }
}
