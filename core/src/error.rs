//! Why a network, partition, method or plan cannot be built. A leaf module: `arch`,
//! `partition`, `method` and `plan` all return it, and it depends on none of them.

use core::fmt;

/// Why a plan cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    UnknownDepth(usize),
    BadShape(&'static str),
    BadPartition(&'static str),
    TooManyModules {
        k: usize,
        blocks: usize,
    },
    NoSuchSplit {
        stage: usize,
        block: usize,
        blocks_per_stage: usize,
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
            PlanError::BadShape(s) | PlanError::BadPartition(s) | PlanError::BadMethod(s) => f.write_str(s),
            PlanError::TooManyModules { k, blocks } => {
                write!(f, "K = {k} modules is more than the {blocks} blocks the network has")
            }
            PlanError::NoSuchSplit { stage, block, blocks_per_stage } => write!(
                f,
                "split point ({stage}, {block}) does not exist: stages are 1..=3 and blocks 0..{blocks_per_stage}"
            ),
            PlanError::UnknownAuxHead => f.write_str("unknown aux classifier: use 0c1f, 0c2f, 1c1f, 1c2f, 1c3f or 2c2f"),
            PlanError::PatchGrid { patches, map, image } => write!(
                f,
                "a {patches}×{patches} patch grid does not fit: feature maps are {map}×{map} and the image {image}×{image} must divide by {patches}"
            ),
            PlanError::ZeroBatch => f.write_str("batch size must be at least 1"),
        }
    }
}

impl core::error::Error for PlanError {}
