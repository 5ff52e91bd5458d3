//! Training methods: which auxiliary nets each module gets and how their losses weigh.
//!
//! - `E2e`: one module, cross-entropy at the classifier.
//! - `Greedy` (greedy supervised learning): each non-last module trained by a `0c1f` classifier head.
//! - `Dgl`: each non-last module trained by the configured classifier head.
//! - `InfoPro`: λ1·decoder + λ2·classifier, λ interpolated linearly across modules.
//!
//! With `hpff` set, HiLo + PFF replace the plain local losses (see [`crate::plan`] for
//! the exact schedule): an independent level (module i alone, its own classifier head,
//! weight `wx`) and a cascade level (modules i−1 and i together, the decoder and a second
//! classifier on module i's output, weight `wy`), the decoder working on `patches × patches`
//! patches one at a time.
//!
//! The reference has two recipes, one per family of networks ([`Method::reference`],
//! [`Method::imagenet_reference`]). They differ in the auxiliary nets ([`Method::aux`]: the
//! CIFAR code's small heads and per-patch decoders, or `InfoProAux.py`'s ImageNet heads
//! with strided convs to 2048 features and decoders that upsample in stages), and in
//! HPFF: on ImageNet only the cascade level is trained, with fixed weights 5 (decoder) and
//! 0.75 (classifier), and PFF cuts the *output* of one whole-map decoder into patches
//! ([`Pff::Output`]) instead of decoding feature patches one at a time ([`Pff::Input`]).

pub use crate::arch::Family;
use crate::error::PlanError;
use crate::partition::Partition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Base {
    E2e,
    Greedy,
    Dgl,
    InfoPro,
}

/// HiLo's levels: both (the method), or one of them alone (ablations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Levels {
    Both,
    Independent,
    Cascade,
}

/// The local loss of auxiliary classifier heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LocalLoss {
    CrossEntropy,
    /// Supervised contrastive loss on L2-normalised features (temperature 0.07).
    Contrast,
}

/// An auxiliary classifier head `{convs}c{linears}f`: one of 0c1f, 0c2f, 1c1f, 1c2f, 1c3f, 2c2f.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AuxHead {
    pub convs: usize,
    pub linears: usize,
}

impl AuxHead {
    pub const GREEDY: AuxHead = AuxHead { convs: 0, linears: 1 };

    /// Parses `"2c2f"` and the other reference configurations.
    pub fn parse(s: &str) -> Result<AuxHead, PlanError> {
        let b = s.as_bytes();
        let ok = b.len() == 4 && b[1] == b'c' && b[3] == b'f';
        let h = AuxHead {
            convs: b.first().map_or(9, |c| c.wrapping_sub(b'0') as usize),
            linears: b.get(2).map_or(9, |c| c.wrapping_sub(b'0') as usize),
        };
        let known = matches!((h.convs, h.linears), (0, 1) | (0, 2) | (1, 1) | (1, 2) | (1, 3) | (2, 2));
        if ok && known {
            Ok(h)
        } else {
            Err(PlanError::UnknownAuxHead)
        }
    }
}

impl core::fmt::Display for AuxHead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}c{}f", self.convs, self.linears)
    }
}

/// Where patch feature fusion cuts the decoder's work into `patches × patches` pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Pff {
    /// Each patch of the module's output is decoded on its own, by its own decoder, into
    /// the matching patch of the image, one patch at a time: the decoder's memory drops by
    /// the number of patches (the CIFAR reference; an option on ImageNet).
    Input,
    /// One decoder runs on the whole map and its output is cut into patches, each scored
    /// against its patch of the image (the ImageNet reference): the loss is patch-wise,
    /// the memory is the whole decoder's.
    Output,
}

/// How the activations a training step keeps for backward are stored. Arithmetic,
/// parameters, gradients, momentum and BN statistics are `f32` at every precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Precision {
    /// Everything `f32`.
    F32,
    /// The residual blocks' saved conv outputs and inner block outputs kept as bf16
    /// (rounded to nearest even; the forward goes on from the rounded values, so the
    /// backward sees what the forward used). See [`crate::plan`] for what stays `f32`.
    Bf16Mixed,
    /// The same values kept as IEEE f16 (rounded to nearest even). Gradients stay `f32`,
    /// so they cannot underflow as autocast's f16 gradients can, and no loss scaling is
    /// needed; a kept value past f16's range (65504) becomes infinite and the step's
    /// non-finite check reports it.
    F16Mixed,
}

impl Precision {
    /// Lightning's name (`32`, `bf16-mixed`, `16-mixed`).
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "32",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::F16Mixed => "16-mixed",
        }
    }
}

/// A complete method configuration. [`Method::reference`] gives the reference's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Method {
    pub base: Base,
    pub hpff: bool,
    pub levels: Levels,
    /// Decoder patch grid n (n×n patches); 1 is InfoPro's full decoder.
    pub patches: usize,
    pub head: AuxHead,
    pub local_loss: LocalLoss,
    pub widen: usize,
    pub feature_dim: usize,
    /// λ1 (decoder weight) at the first and at the (K−1)-th module.
    pub lambda1: [f32; 2],
    /// λ2 (classifier weight) at the first and at the (K−1)-th module.
    pub lambda2: [f32; 2],
    pub wx: f32,
    pub wy: f32,
    /// HPFF only, a memory-for-time trade: a module keeps its forward values only until
    /// its cascade backward, and its forward is recomputed (same bits) when its parameter
    /// gradients are taken one step later, so one module's values are live instead of
    /// two. Costs one more forward per module and step (see [`crate::plan`]).
    pub recompute: bool,
    /// Which reference's auxiliary nets: the CIFAR code's or the ImageNet code's
    /// (`InfoProAux.py`; ImageNet networks only).
    pub aux: Family,
    pub pff: Pff,
    /// Storage of the values kept for backward.
    pub precision: Precision,
}

impl Method {
    /// The reference's defaults: head 2c2f, cross-entropy, widen 1, feature dim 128,
    /// λ1 5 → 0, λ2 0.5 → 0, wx 0.001, wy 0.999, 2×2 patches when `hpff`, else 1.
    pub fn reference(base: Base, hpff: bool) -> Method {
        Method {
            base,
            hpff,
            levels: Levels::Both,
            patches: if hpff { 2 } else { 1 },
            head: if base == Base::Greedy { AuxHead::GREEDY } else { AuxHead { convs: 2, linears: 2 } },
            local_loss: LocalLoss::CrossEntropy,
            widen: 1,
            feature_dim: 128,
            lambda1: [5.0, 0.0],
            lambda2: [0.5, 0.0],
            wx: 0.001,
            wy: 0.999,
            recompute: false,
            aux: Family::Cifar,
            pff: Pff::Input,
            precision: Precision::F32,
        }
    }

    /// The ImageNet reference's recipe (`Exp on Imagenet`): its auxiliary nets and, with
    /// `hpff`, its HPFF: the cascade level alone, decoder weight 5 and classifier weight
    /// 0.75 at every module, the whole-map decoder's output cut into 2×2 patches.
    pub fn imagenet_reference(base: Base, hpff: bool) -> Method {
        Method {
            levels: if hpff { Levels::Cascade } else { Levels::Both },
            lambda1: [5.0, 5.0],
            lambda2: [0.75, 0.75],
            aux: Family::ImageNet,
            pff: Pff::Output,
            ..Method::reference(base, hpff)
        }
    }

    /// The reference recipe for a family of networks.
    pub fn reference_for(family: Family, base: Base, hpff: bool) -> Method {
        match family {
            Family::Cifar => Method::reference(base, hpff),
            Family::ImageNet => Method::imagenet_reference(base, hpff),
        }
    }

    /// Whether module 0 runs on the independent path although only the cascade level is
    /// trained: the ImageNet reference's loop starts with that pass, which no loss reads
    /// but which updates module 0's BN running statistics (see [`crate::plan`]).
    pub fn module0_x_pass(&self) -> bool {
        self.hpff && self.aux == Family::ImageNet
    }

    /// Whether modules get a decoder (InfoPro-based methods only).
    pub fn uses_decoder(&self) -> bool {
        self.base == Base::InfoPro
    }

    /// (decoder weight, classifier weight) of the local loss at module `i`.
    pub fn local_weights(&self, part: &Partition, i: usize) -> (f32, f32) {
        match self.base {
            Base::InfoPro => {
                let r = part.ratio(i);
                (self.lambda1[0] * (1.0 - r) + self.lambda1[1] * r, self.lambda2[0] * (1.0 - r) + self.lambda2[1] * r)
            }
            _ => (0.0, 1.0),
        }
    }

    /// Checks the combination before a plan is built.
    pub fn validate(&self, part: &Partition) -> Result<(), PlanError> {
        if self.base == Base::E2e && self.hpff {
            return Err(PlanError::BadMethod("--hpff needs a local method (greedy, dgl or infopro), not e2e"));
        }
        if self.base != Base::E2e && self.hpff && part.modules() < 2 {
            return Err(PlanError::BadMethod("HPFF needs at least 2 modules"));
        }
        if !matches!(self.patches, 1 | 2 | 4) {
            return Err(PlanError::BadMethod("the patch grid must be 1, 2 or 4"));
        }
        if self.patches != 1 && !self.uses_decoder() && !self.hpff {
            return Err(PlanError::BadMethod(
                "--patches cuts InfoPro's decoder into patches; e2e, greedy and dgl have no decoder",
            ));
        }
        if self.widen == 0 || self.feature_dim == 0 {
            return Err(PlanError::BadMethod("widen and feature dim must be positive"));
        }
        if self.levels != Levels::Both && !self.hpff {
            return Err(PlanError::BadMethod("--levels applies to HPFF only"));
        }
        if self.recompute && !self.hpff {
            return Err(PlanError::BadMethod("--recompute applies to HPFF only"));
        }
        if self.base == Base::E2e && self.local_loss != LocalLoss::CrossEntropy {
            return Err(PlanError::BadMethod(
                "--local-loss trains the local methods' auxiliary classifiers; e2e has none (greedy, dgl or infopro)",
            ));
        }
        if self.pff == Pff::Output && self.aux != Family::ImageNet {
            return Err(PlanError::BadMethod("--pff output needs the ImageNet auxiliary nets (--aux-nets imagenet)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    #[test]
    fn heads_parse() {
        assert_eq!(AuxHead::parse("2c2f").unwrap(), AuxHead { convs: 2, linears: 2 });
        assert!(AuxHead::parse("3c2f").is_err());
        assert!(AuxHead::parse("2c").is_err());
        assert!(AuxHead::parse("").is_err());
    }

    #[test]
    fn lambdas_interpolate_with_the_label() {
        let a = Arch::resnet(32, 3, 32, 10).unwrap();
        let p = Partition::for_k(&a, 16, crate::partition::TableKind::Reference).unwrap();
        let m = Method::reference(Base::InfoPro, true);
        assert_eq!(m.local_weights(&p, 0), (5.0, 0.5));
        let (l1, l2) = m.local_weights(&p, 7);
        assert!((l1 - 2.5).abs() < 1e-6 && (l2 - 0.25).abs() < 1e-6);
        assert_eq!(Method::reference(Base::Dgl, false).local_weights(&p, 3), (0.0, 1.0));
    }
}
