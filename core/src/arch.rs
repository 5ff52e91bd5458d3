//! CIFAR-style ResNets: the backbone a plan trains.
//!
//! ResNet-n with BasicBlocks has n = 6m + 2 (m blocks per stage); with Bottleneck
//! blocks n = 9m + 2 (ResNet-164: m = 18). Stage widths are 16, 32, 64 (times 4 at a
//! bottleneck's output); stages 2 and 3 start with a stride-2 block whose shortcut is
//! a 1×1 conv + BN. Input channels, image size and class count are free.
//!
//! The base width (stem channels, 16 in the papers) is a parameter too:
//! [`Arch::with_width`] gives stage widths `w, 2w, 4w` (4 or 8 for a microcontroller's
//! RAM). The default, [`DEFAULT_WIDTH`] = 16, is the reference network exactly.

use crate::error::PlanError;

/// Which residual block the network is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

/// Stage widths (planes) of the CIFAR ResNets at the default width; a stage's output has
/// `planes × expansion` channels. At base width `w` they are `w, 2w, 4w`.
pub const STAGE_PLANES: [usize; 3] = [16, 32, 64];
/// Channels of the stem at the default width (the base width).
pub const STEM_CHANNELS: usize = 16;
/// The reference networks' base width: [`Arch::resnet`] builds this one.
pub const DEFAULT_WIDTH: usize = 16;
/// Largest supported base width (stage 3 then has 4096 planes).
pub const MAX_WIDTH: usize = 1024;
/// Largest supported blocks-per-stage (ResNet-1202 has 200).
pub const MAX_BLOCKS_PER_STAGE: usize = 200;

/// A backbone: block kind, blocks per stage, input and output sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Arch {
    pub depth: usize,
    pub kind: BlockKind,
    pub blocks_per_stage: usize,
    pub in_channels: usize,
    pub image: usize,
    pub classes: usize,
    /// Base width: stem channels, and stage `s` has `width << s` planes
    /// ([`DEFAULT_WIDTH`] = 16 unless [`Arch::with_width`] changed it).
    pub width: usize,
}

/// Shapes of one residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub kind: BlockKind,
    pub c_in: usize,
    pub planes: usize,
    pub c_out: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub stride: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub downsample: bool,
}

const fn conv_out(x: usize, stride: usize) -> usize {
    // 3×3 pad 1 or 1×1 pad 0: both give floor((x - 1) / stride) + 1.
    (x - 1) / stride + 1
}

impl Arch {
    /// ResNet-`depth` (20, 32, 44, 56, 110, 1202 Basic; 164, 1001 Bottleneck; any 6m+2 / 9m+2).
    pub fn resnet(depth: usize, in_channels: usize, image: usize, classes: usize) -> Result<Arch, PlanError> {
        let (kind, m) = if depth == 164 || depth == 1001 {
            (BlockKind::Bottleneck, (depth - 2) / 9)
        } else if depth >= 8 && (depth - 2) % 6 == 0 {
            (BlockKind::Basic, (depth - 2) / 6)
        } else {
            return Err(PlanError::UnknownDepth(depth));
        };
        if m > MAX_BLOCKS_PER_STAGE {
            return Err(PlanError::UnknownDepth(depth));
        }
        if in_channels == 0 || classes < 2 {
            return Err(PlanError::BadShape("input channels must be ≥ 1 and classes ≥ 2"));
        }
        if image < 4 {
            return Err(PlanError::BadShape("image size must be at least 4 pixels"));
        }
        Ok(Arch { depth, kind, blocks_per_stage: m, in_channels, image, classes, width: DEFAULT_WIDTH })
    }

    /// The same network with base width `width` (stem channels; stages `w, 2w, 4w`), e.g.
    /// 4 or 8 for a microcontroller. The auxiliary classifiers' convs scale with it
    /// (2w, 4w, 4w instead of 32, 64, 64); the decoders' hidden width does not.
    pub fn with_width(self, width: usize) -> Result<Arch, PlanError> {
        if width == 0 || width > MAX_WIDTH {
            return Err(PlanError::BadShape("base width must be between 1 and 1024"));
        }
        Ok(Arch { width, ..self })
    }

    /// Stem channels (the base width).
    pub const fn stem_channels(&self) -> usize {
        self.width
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
        3 * self.blocks_per_stage
    }

    /// Output channels of stage `s` (0-based).
    pub const fn stage_channels(&self, s: usize) -> usize {
        self.stage_planes(s) * self.expansion()
    }

    /// Spatial size after stage `s` (0-based).
    pub const fn stage_size(&self, s: usize) -> usize {
        let mut x = self.image;
        let mut i = 1;
        while i <= s {
            x = conv_out(x, 2);
            i += 1;
        }
        x
    }

    /// Features entering the classifier.
    pub const fn features(&self) -> usize {
        self.stage_channels(2)
    }

    /// (stage, block-in-stage) of global block `g`.
    pub const fn locate(&self, g: usize) -> (usize, usize) {
        (g / self.blocks_per_stage, g % self.blocks_per_stage)
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
        BlockShape {
            kind: self.kind,
            c_in,
            planes: self.stage_planes(s),
            c_out,
            h_in,
            w_in: h_in,
            stride,
            h_out,
            w_out: h_out,
            downsample: stride != 1 || c_in != c_out,
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
        assert_eq!((r.kind, r.blocks_per_stage), (BlockKind::Bottleneck, 18));
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
}
