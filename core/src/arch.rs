//! The ResNets a plan trains: the CIFAR family and the ImageNet family.
//!
//! **CIFAR** (He et al.'s CIFAR networks, the reference's `Exp on CIFAR_SVHN_STL`):
//! stem conv3×3 stride 1 + BN + ReLU, three stages at widths 16, 32, 64 (times 4 at a
//! bottleneck's output), m blocks each. ResNet-n with BasicBlocks has n = 6m + 2; with
//! Bottleneck blocks n = 9m + 2 (ResNet-164: m = 18).
//!
//! **ImageNet** (torchvision's ResNets, the reference's `Exp on Imagenet`): stem conv7×7
//! stride 2 pad 3 + BN + ReLU + max-pool 3×3 stride 2 pad 1, four stages at widths 64,
//! 128, 256, 512; ResNet-18 [2, 2, 2, 2] and -34 [3, 4, 6, 3] with BasicBlocks, -50
//! [3, 4, 6, 3], -101 [3, 4, 23, 3] and -152 [3, 8, 36, 3] with Bottlenecks (stride on
//! the 3×3 conv, as torchvision does).
//!
//! In both, every stage after the first starts with a stride-2 block, and a block whose
//! stride or width changes has a 1×1 conv + BN shortcut. Input channels, image size and
//! class count are free; spatial sizes follow PyTorch's floor formula.
//!
//! The base width (stem channels: 16 for CIFAR, 64 for ImageNet) is a parameter too:
//! [`Arch::with_width`] gives stage widths `w, 2w, 4w (, 8w)` (4 or 8 for a
//! microcontroller's RAM).
//!
//! **ResNeXt** (Xie et al.; torchvision's `resnext50_32x4d`, `resnext101_32x8d`, the
//! reference's ImageNet ResNeXt-101): a Bottleneck network whose 3×3 conv has `groups`
//! channel groups of `width_per_group · planes / 64` channels each
//! ([`Arch::with_groups`]); a ResNet is the case `groups = 1`, `width_per_group = 64`.

use crate::error::PlanError;
use crate::ops::{Conv2d, MaxPool2d};

/// Which residual block the network is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

/// Which family of ResNets: decides the stem, the stage count and the default width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Family {
    /// 3×3 stem, three stages.
    Cifar,
    /// 7×7 stride-2 stem and a max pool, four stages.
    ImageNet,
}

/// Stage widths (planes) of the CIFAR ResNets at the default width; a stage's output has
/// `planes × expansion` channels. At base width `w` they are `w, 2w, 4w`.
pub const STAGE_PLANES: [usize; 3] = [16, 32, 64];
/// Channels of the stem at the default width (the base width).
pub const STEM_CHANNELS: usize = 16;
/// The CIFAR reference networks' base width: [`Arch::resnet`] builds this one.
pub const DEFAULT_WIDTH: usize = 16;
/// The ImageNet networks' base width (torchvision's `inplanes`).
pub const IMAGENET_WIDTH: usize = 64;
/// Largest supported base width.
pub const MAX_WIDTH: usize = 1024;
/// Largest supported blocks-per-stage (ResNet-1202 has 200).
pub const MAX_BLOCKS_PER_STAGE: usize = 200;
/// Most stages a network has (the ImageNet family's four).
pub const MAX_STAGES: usize = 4;
/// A ResNet's `width_per_group` (torchvision's `base_width`): the 3×3 has `planes` channels.
pub const RESNET_WIDTH_PER_GROUP: usize = 64;

/// The ImageNet depths and their blocks per stage.
const IMAGENET_DEPTHS: [(usize, BlockKind, [usize; 4]); 5] = [
    (18, BlockKind::Basic, [2, 2, 2, 2]),
    (34, BlockKind::Basic, [3, 4, 6, 3]),
    (50, BlockKind::Bottleneck, [3, 4, 6, 3]),
    (101, BlockKind::Bottleneck, [3, 4, 23, 3]),
    (152, BlockKind::Bottleneck, [3, 8, 36, 3]),
];

/// A backbone: family, block kind, blocks per stage, input and output sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Arch {
    pub depth: usize,
    pub family: Family,
    pub kind: BlockKind,
    /// Blocks of each stage; stages past [`Arch::stages`] have none.
    pub stage_blocks: [usize; MAX_STAGES],
    pub in_channels: usize,
    pub image: usize,
    pub classes: usize,
    /// Base width: stem channels, and stage `s` has `width << s` planes.
    pub width: usize,
    /// Initialise the last BN's γ of every residual branch to zero (torchvision's and the
    /// reference's `zero_init_residual`, off by default there too): each block starts as
    /// its shortcut.
    pub zero_init_residual: bool,
    /// Channel groups of every Bottleneck's 3×3 conv (1 for a ResNet).
    pub groups: usize,
    /// Channels per group at 64 planes (torchvision's `width_per_group`; 64 for a ResNet):
    /// a Bottleneck of `planes` has `planes · width_per_group / 64 · groups` middle channels.
    pub width_per_group: usize,
}

/// Shapes of one residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub kind: BlockKind,
    pub c_in: usize,
    pub planes: usize,
    /// Channels of a Bottleneck's 3×3 conv (`planes` for a ResNet; a Basic block's are `planes`).
    pub width: usize,
    /// Channel groups of that 3×3 conv.
    pub groups: usize,
    pub c_out: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub stride: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub downsample: bool,
    /// The branch's last BN starts with γ = 0 ([`Arch::zero_init_residual`]).
    pub zero_init_last_bn: bool,
}

const fn conv_out(x: usize, stride: usize) -> usize {
    // 3×3 pad 1 or 1×1 pad 0: both give floor((x - 1) / stride) + 1.
    (x - 1) / stride + 1
}

fn check_io(in_channels: usize, image: usize, classes: usize) -> Result<(), PlanError> {
    if in_channels == 0 || classes < 2 {
        return Err(PlanError::BadShape("input channels must be ≥ 1 and classes ≥ 2"));
    }
    if image < 4 {
        return Err(PlanError::BadShape("image size must be at least 4 pixels"));
    }
    Ok(())
}

impl Arch {
    /// CIFAR ResNet-`depth` (20, 32, 44, 56, 110, 1202 Basic; 164, 1001 Bottleneck; any 6m+2 / 9m+2).
    pub fn resnet(depth: usize, in_channels: usize, image: usize, classes: usize) -> Result<Arch, PlanError> {
        let (kind, m) = if depth == 164 || depth == 1001 {
            (BlockKind::Bottleneck, (depth - 2) / 9)
        } else if depth >= 8 && (depth - 2).is_multiple_of(6) {
            (BlockKind::Basic, (depth - 2) / 6)
        } else {
            return Err(PlanError::UnknownDepth(depth));
        };
        if m > MAX_BLOCKS_PER_STAGE {
            return Err(PlanError::UnknownDepth(depth));
        }
        check_io(in_channels, image, classes)?;
        Ok(Arch {
            depth,
            family: Family::Cifar,
            kind,
            stage_blocks: [m, m, m, 0],
            in_channels,
            image,
            classes,
            width: DEFAULT_WIDTH,
            zero_init_residual: false,
            groups: 1,
            width_per_group: RESNET_WIDTH_PER_GROUP,
        })
    }

    /// ImageNet ResNet-`depth` (18, 34, 50, 101, 152), at any image size.
    pub fn resnet_imagenet(depth: usize, in_channels: usize, image: usize, classes: usize) -> Result<Arch, PlanError> {
        let Some(&(_, kind, stage_blocks)) = IMAGENET_DEPTHS.iter().find(|d| d.0 == depth) else {
            return Err(PlanError::UnknownImageNetDepth(depth));
        };
        check_io(in_channels, image, classes)?;
        Ok(Arch {
            depth,
            family: Family::ImageNet,
            kind,
            stage_blocks,
            in_channels,
            image,
            classes,
            width: IMAGENET_WIDTH,
            zero_init_residual: false,
            groups: 1,
            width_per_group: RESNET_WIDTH_PER_GROUP,
        })
    }

    /// The same network with base width `width` (stem channels; stages `w, 2w, 4w (, 8w)`),
    /// e.g. 4 or 8 for a microcontroller. The auxiliary classifiers' convs scale with it
    /// (2w, 4w, 4w instead of 32, 64, 64); the decoders' hidden width does not.
    pub fn with_width(self, width: usize) -> Result<Arch, PlanError> {
        if width == 0 || width > MAX_WIDTH {
            return Err(PlanError::BadShape("base width must be between 1 and 1024"));
        }
        Ok(Arch { width, ..self })
    }

    /// The same network as a ResNeXt: every Bottleneck's 3×3 conv in `groups` groups, of
    /// `width_per_group` channels each at 64 planes (ResNeXt-50 32×4d: `(32, 4)`). An error
    /// for Basic blocks (as torchvision's) and where a stage's groups would be empty.
    pub fn with_groups(self, groups: usize, width_per_group: usize) -> Result<Arch, PlanError> {
        if (groups, width_per_group) == (1, RESNET_WIDTH_PER_GROUP) {
            return Ok(Arch { groups, width_per_group, ..self });
        }
        if self.kind == BlockKind::Basic {
            return Err(PlanError::BadShape("grouped 3×3 convs (ResNeXt) need Bottleneck blocks: depth 50, 101 or 152 (ImageNet), 164 or 1001 (CIFAR)"));
        }
        if groups == 0 || groups > MAX_WIDTH || width_per_group == 0 || width_per_group > MAX_WIDTH {
            return Err(PlanError::BadShape("groups and width per group must be between 1 and 1024"));
        }
        let a = Arch { groups, width_per_group, ..self };
        if a.bottleneck_width(0) == 0 {
            return Err(PlanError::BadShape(
                "width per group too small for the base width: the first stage's groups would have no channel (planes · width_per_group / 64 < 1)",
            ));
        }
        Ok(a)
    }

    /// Middle channels of a Bottleneck of stage `s`: `planes · width_per_group / 64 ·
    /// groups` (torchvision's `int(planes · base_width / 64) · groups`).
    pub const fn bottleneck_width(&self, s: usize) -> usize {
        self.stage_planes(s) * self.width_per_group / RESNET_WIDTH_PER_GROUP * self.groups
    }

    /// Whether the 3×3 convs are grouped (a ResNeXt).
    pub const fn grouped(&self) -> bool {
        self.groups != 1 || self.width_per_group != RESNET_WIDTH_PER_GROUP
    }

    /// The same network with every residual branch's last BN initialised to γ = 0.
    pub const fn with_zero_init_residual(self) -> Arch {
        Arch { zero_init_residual: true, ..self }
    }

    /// Number of stages (3 for CIFAR, 4 for ImageNet).
    pub const fn stages(&self) -> usize {
        match self.family {
            Family::Cifar => 3,
            Family::ImageNet => 4,
        }
    }

    /// The name `--arch` takes: `resnet32`, `resnet101-imagenet`,
    /// `resnext50-32x4d-imagenet`.
    pub fn name(&self) -> heapless::String<40> {
        let mut s = heapless::String::new();
        let suffix = if self.family == Family::ImageNet { "-imagenet" } else { "" };
        // 40 bytes hold "resnext", three numbers below 10^4 (the limits of depth, groups
        // and width per group), "-", "x", "d" and "-imagenet".
        let _ = if self.grouped() {
            let (d, g, w) = (self.depth, self.groups, self.width_per_group);
            core::fmt::write(&mut s, format_args!("resnext{d}-{g}x{w}d{suffix}"))
        } else {
            core::fmt::write(&mut s, format_args!("resnet{}{suffix}", self.depth))
        };
        s
    }

    /// Stem channels (the base width).
    pub const fn stem_channels(&self) -> usize {
        self.width
    }

    /// The stem's convolution: 3×3 stride 1 (CIFAR) or 7×7 stride 2 pad 3 (ImageNet).
    pub const fn stem_conv(&self) -> Conv2d {
        let (k, stride, pad) = match self.family {
            Family::Cifar => (3, 1, 1),
            Family::ImageNet => (7, 2, 3),
        };
        let (c_in, c_out, h, w) = (self.in_channels, self.stem_channels(), self.image, self.image);
        Conv2d { c_in, c_out, h, w, k, stride, pad, groups: 1 }
    }

    /// The ImageNet stem's max pool (3×3 stride 2 pad 1) over the stem conv's output.
    pub const fn stem_pool(&self) -> Option<MaxPool2d> {
        match self.family {
            Family::Cifar => None,
            Family::ImageNet => {
                let c = self.stem_conv();
                Some(MaxPool2d { c: c.c_out, h: c.h_out(), w: c.w_out(), k: 3, stride: 2, pad: 1 })
            }
        }
    }

    /// Spatial size of the stem's output (module 0's input).
    pub const fn stem_size(&self) -> usize {
        match self.stem_pool() {
            Some(p) => p.h_out(),
            None => self.stem_conv().h_out(),
        }
    }

    /// Planes of stage `s` (0-based): `width << s`.
    pub const fn stage_planes(&self, s: usize) -> usize {
        self.width << s
    }

    pub const fn expansion(&self) -> usize {
        match self.kind {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Total residual blocks (all stages).
    pub const fn blocks(&self) -> usize {
        let mut n = 0;
        let mut s = 0;
        while s < MAX_STAGES {
            n += self.stage_blocks[s];
            s += 1;
        }
        n
    }

    /// Output channels of stage `s` (0-based).
    pub const fn stage_channels(&self, s: usize) -> usize {
        self.stage_planes(s) * self.expansion()
    }

    /// Spatial size after stage `s` (0-based).
    pub const fn stage_size(&self, s: usize) -> usize {
        let mut x = self.stem_size();
        let mut i = 1;
        while i <= s {
            x = conv_out(x, 2);
            i += 1;
        }
        x
    }

    /// Features entering the classifier.
    pub const fn features(&self) -> usize {
        self.stage_channels(self.stages() - 1)
    }

    /// (stage, block-in-stage) of global block `g`.
    pub const fn locate(&self, g: usize) -> (usize, usize) {
        let (mut s, mut b) = (0, g);
        while s + 1 < self.stages() && b >= self.stage_blocks[s] {
            b -= self.stage_blocks[s];
            s += 1;
        }
        (s, b)
    }

    /// Global index of the first block of stage `s`.
    pub const fn stage_start(&self, s: usize) -> usize {
        let (mut g, mut i) = (0, 0);
        while i < s {
            g += self.stage_blocks[i];
            i += 1;
        }
        g
    }

    /// Shapes of global block `g`.
    pub const fn block(&self, g: usize) -> BlockShape {
        let (s, b) = self.locate(g);
        let c_out = self.stage_channels(s);
        let c_in = if b > 0 {
            c_out
        } else if s == 0 {
            self.stem_channels()
        } else {
            self.stage_channels(s - 1)
        };
        let stride = if b == 0 && s > 0 { 2 } else { 1 };
        let h_in = if b == 0 && s > 0 { self.stage_size(s - 1) } else { self.stage_size(s) };
        let h_out = conv_out(h_in, stride);
        let width = match self.kind {
            BlockKind::Basic => self.stage_planes(s),
            BlockKind::Bottleneck => self.bottleneck_width(s),
        };
        BlockShape {
            kind: self.kind,
            c_in,
            planes: self.stage_planes(s),
            width,
            groups: self.groups,
            c_out,
            h_in,
            w_in: h_in,
            stride,
            h_out,
            w_out: h_out,
            downsample: stride != 1 || c_in != c_out,
            zero_init_last_bn: self.zero_init_residual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet32_shapes() {
        let a = Arch::resnet(32, 3, 32, 10).unwrap();
        assert_eq!(a.blocks(), 15);
        let b = a.block(5); // first block of stage 2
        assert_eq!((b.c_in, b.c_out, b.h_in, b.h_out, b.stride, b.downsample), (16, 32, 32, 16, 2, true));
        assert!(!a.block(0).downsample);
        assert_eq!(a.block(14).h_out, 8);
        assert_eq!(a.features(), 64);
    }

    #[test]
    fn odd_images_and_bottleneck() {
        let a = Arch::resnet(20, 1, 28, 10).unwrap();
        assert_eq!((a.stage_size(1), a.stage_size(2)), (14, 7));
        let r = Arch::resnet(164, 3, 32, 10).unwrap();
        assert_eq!((r.kind, r.stage_blocks), (BlockKind::Bottleneck, [18, 18, 18, 0]));
        assert!(r.block(0).downsample); // 16 → 64 channels
        assert_eq!(r.features(), 256);
        assert!(Arch::resnet(33, 3, 32, 10).is_err());
    }

    #[test]
    fn width_multiplier() {
        let d = Arch::resnet(20, 3, 32, 10).unwrap();
        assert_eq!(d.width, DEFAULT_WIDTH);
        assert_eq!(d.with_width(DEFAULT_WIDTH).unwrap(), d);
        for s in 0..3 {
            assert_eq!(d.stage_planes(s), STAGE_PLANES[s]);
        }
        assert_eq!(d.stem_channels(), STEM_CHANNELS);
        let n = d.with_width(4).unwrap();
        assert_eq!((n.stem_channels(), n.stage_channels(1), n.features()), (4, 8, 16));
        let b = n.block(3); // first block of stage 2
        assert_eq!((b.c_in, b.planes, b.c_out, b.downsample), (4, 8, 8, true));
        assert!(!n.block(0).downsample);
        let r = Arch::resnet(164, 3, 32, 10).unwrap().with_width(8).unwrap();
        assert_eq!((r.block(0).c_in, r.block(0).c_out, r.features()), (8, 32, 128));
        assert!(d.with_width(0).is_err() && d.with_width(MAX_WIDTH + 1).is_err());
    }

    /// torchvision's ResNeXts: the 3×3's width and groups per stage, the names, and the
    /// ResNet as the case of one group of width 64.
    #[test]
    fn resnext_shapes() {
        let r50 = Arch::resnet_imagenet(50, 3, 224, 1000).unwrap();
        let x50 = r50.with_groups(32, 4).unwrap();
        assert_eq!(x50.name().as_str(), "resnext50-32x4d-imagenet");
        assert_eq!([0, 1, 2, 3].map(|s| x50.bottleneck_width(s)), [128, 256, 512, 1024]);
        let b = x50.block(x50.stage_start(1));
        assert_eq!((b.c_in, b.width, b.groups, b.c_out, b.stride), (256, 256, 32, 512, 2));
        let x101 = Arch::resnet_imagenet(101, 3, 224, 1000).unwrap().with_groups(32, 8).unwrap();
        assert_eq!(x101.name().as_str(), "resnext101-32x8d-imagenet");
        assert_eq!([0, 3].map(|s| x101.bottleneck_width(s)), [256, 2048]);
        assert_eq!(x101.features(), 2048);
        // A ResNet is one group of width 64: unchanged, and named as before.
        assert_eq!(r50.with_groups(1, 64).unwrap(), r50);
        assert_eq!(r50.block(0).width, 64);
        assert!(!r50.grouped() && x50.grouped());
        // Basic blocks cannot be grouped; nor can a width that leaves a group empty.
        assert!(Arch::resnet_imagenet(18, 3, 224, 1000).unwrap().with_groups(32, 4).is_err());
        assert!(r50.with_width(8).unwrap().with_groups(32, 4).is_err());
        assert!(r50.with_groups(0, 4).is_err() && r50.with_groups(32, 0).is_err());
        let c = Arch::resnet(164, 3, 32, 10).unwrap().with_groups(4, 16).unwrap();
        assert_eq!((c.name().as_str(), c.block(0).width), ("resnext164-4x16d", 16));
    }

    /// torchvision's shapes at 224² and at the 64² the tests use.
    #[test]
    fn imagenet_shapes() {
        let a = Arch::resnet_imagenet(101, 3, 224, 1000).unwrap();
        assert_eq!((a.stages(), a.blocks(), a.kind), (4, 33, BlockKind::Bottleneck));
        assert_eq!((a.stem_conv().h_out(), a.stem_size()), (112, 56));
        assert_eq!([a.stage_size(0), a.stage_size(1), a.stage_size(2), a.stage_size(3)], [56, 28, 14, 7]);
        assert_eq!(a.features(), 2048);
        let b = a.block(0); // 64 → 256 channels: a stride-1 shortcut
        assert_eq!((b.c_in, b.planes, b.c_out, b.stride, b.downsample), (64, 64, 256, 1, true));
        let b = a.block(a.stage_start(2)); // first of layer3
        assert_eq!((b.c_in, b.c_out, b.h_in, b.h_out, b.stride), (512, 1024, 28, 14, 2));
        assert_eq!(a.locate(3 + 4 + 22), (2, 22));
        assert_eq!(a.locate(32), (3, 2));
        let r = Arch::resnet_imagenet(18, 3, 64, 10).unwrap();
        assert_eq!((r.blocks(), r.stem_size(), r.stage_size(3), r.features()), (8, 16, 2, 512));
        assert!(!r.block(1).downsample && r.block(2).downsample);
        assert_eq!(r.name().as_str(), "resnet18-imagenet");
        assert_eq!(Arch::resnet_imagenet(152, 3, 224, 1000).unwrap().blocks(), 50);
        assert_eq!(Arch::resnet_imagenet(34, 3, 224, 1000).unwrap().features(), 512);
        assert!(matches!(Arch::resnet_imagenet(32, 3, 64, 10), Err(PlanError::UnknownImageNetDepth(32))));
        // An odd size: 7×7 s2 p3 on 75 → 38, pool → 19, then 10, 5, 3.
        let o = Arch::resnet_imagenet(18, 3, 75, 10).unwrap();
        assert_eq!([o.stem_conv().h_out(), o.stem_size(), o.stage_size(1), o.stage_size(3)], [38, 19, 10, 3]);
    }
}
