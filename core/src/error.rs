//! Why a network, partition, method or plan cannot be built. A leaf module: `arch`,
//! `partition`, `method` and `plan` all return it, and it depends on none of them.

use core::fmt;

/// Why a plan cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    UnknownDepth(usize),
    UnknownImageNetDepth(usize),
    BadShape(&'static str),
    BadPartition(&'static str),
    TooManyModules {
        k: usize,
        blocks: usize,
    },
    /// `stages` is the network's stage count, `blocks` the block count of `stage` (0 when
    /// the stage does not exist).
    NoSuchSplit {
        stage: usize,
        block: usize,
        stages: usize,
        blocks: usize,
    },
    UnknownAuxHead,
    BadMethod(&'static str),
    /// The patch grid is finer than the feature map it cuts, or does not divide the image.
    PatchGrid {
        patches: usize,
        map: usize,
        image: usize,
    },
    ZeroBatch,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlanError::UnknownDepth(d) => write!(
                f,
                "no CIFAR ResNet of depth {d}: use 6m+2 (20, 32, 44, 56, 110, …) or 164 / 1001 (bottleneck)"
            ),
            PlanError::UnknownImageNetDepth(d) => {
                write!(f, "no ImageNet ResNet of depth {d}: use 18, 34, 50, 101 or 152")
            }
            PlanError::BadShape(s) | PlanError::BadPartition(s) | PlanError::BadMethod(s) => f.write_str(s),
            PlanError::TooManyModules { k, blocks } => {
                write!(f, "K = {k} modules is more than the {blocks} blocks the network has")
            }
            PlanError::NoSuchSplit { stage, block, stages, blocks } => {
                if (1..=stages).contains(&stage) {
                    write!(f, "split point ({stage}, {block}) does not exist: stage {stage} has blocks 0..{blocks}")
                } else {
                    write!(f, "split point ({stage}, {block}) does not exist: stages are 1..={stages}")
                }
            }
            PlanError::UnknownAuxHead => f.write_str("unknown aux classifier: use 0c1f, 0c2f, 1c1f, 1c2f, 1c3f or 2c2f"),
            PlanError::PatchGrid { patches, map, image } => write!(
                f,
                "a {patches}×{patches} patch grid does not fit: a feature map is {map}×{map} and the image {image}×{image} (the image must divide by {patches}; ImageNet decoders on patches, --pff input, also need maps that divide by {patches} and images of at least 16·{patches} pixels)"
            ),
            PlanError::ZeroBatch => f.write_str("batch size must be at least 1"),
        }
    }
}

impl core::error::Error for PlanError {}
