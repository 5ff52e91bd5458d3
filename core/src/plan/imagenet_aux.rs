//! The ImageNet reference's auxiliary nets (`Exp on Imagenet/networks/InfoProAux.py`):
//! their shapes, parameters and names. The schedule that runs them is in
//! `schedule/imagenet_decoder.rs` (decoders) and the shared head code (classifiers).
//!
//! **Classifier** (`AuxClassifier`): conv1×1 → a, conv3×3 stride 2 → b, conv3×3 stride 2
//! → c, conv1×1 → 2048, each without bias and followed by BN + ReLU, then global average
//! pooling and Linear(2048 → classes). The widths (a, b, c) depend on the channels of the
//! map it reads: (128, 256, 512) up to 512 channels, (256, 256, 512) at 1024 and
//! (512, 512, 1024) at 2048. The reference's 2048-channel head has BNs of the wrong width
//! (it would fail at its first step; no reference split puts a head there): here each BN
//! has its conv's width. The reference builds only Bottleneck nets' widths (256 to 2048);
//! a BasicBlock net's 64 to 512 channels get the first row.
//!
//! **Decoder** (`Decoder`): conv1×1 (C → 128) + BN + ReLU, then stages of bilinear
//! upsampling (`align_corners=True`) + conv + BN + ReLU, and last an upsampling to the
//! image size + conv3×3 (→ image channels) + sigmoid; every conv has a bias. The reference
//! picks one of four such nets by the map's size (56, 28, 14, 7 at 224²), i.e. by stage:
//!
//! | stage | convs after the 1×1 (kernel → channels @ side) |
//! |---|---|
//! | 1 | 3 → 16 @ H/2, 3 → 3 @ H |
//! | 2 | 3 → 32 @ H/4, 3 → 16 @ H/2, 3 → 3 @ H |
//! | 3 | 3 → 64 @ H/2, 3 → 32 @ H/4, 3 → 16 @ H/2, 3 → 3 @ H |
//! | 4 | 3 → 64 @ H/16, 1 → 32 @ H/8, 3 → 12 @ H/4, 3 → 6 @ H/2, 3 → 3 @ H |
//!
//! The reference writes the sides as numbers for 224² (112, 56, …); here they are
//! fractions of the image side, so the same nets run at any size (the golden tests use
//! 64²). The stage-3 net's way up to H/2, down to H/4 and up again is the reference's.
//! Its stage-4 net is unreachable there (it tests `features.size(4)` of a 4-d tensor);
//! here it runs as written.
//!
//! **Widths.** The classifier's widths scale with the network's base width (×w/64, times
//! `widen`), as the CIFAR heads do, so a narrow test network gets a narrow head; the
//! decoders' widths do not (as on CIFAR).
//!
//! **Names** are the reference's `state_dict` keys: `aux1{stage}_{block}.head.{i}` for the
//! cascade classifier, `decoder1{stage}_{block}.decoder{seq}.{i}` for the decoder
//! (`Sequential` indices: conv 4·l, BN 4·l + 1), `aux2…` for an independent-level head (the
//! reference creates `aux2`/`decoder2` but never trains them; they are not built here).
//! With patch-input PFF each patch has its own decoder, `decoder1{s}_{b}.decoders.{p}.decoder{seq}.{i}`.

use super::layout::{BnP, ConvP, Cursor, HeadP, LinearP, Prefix, MAX_HEAD_CONVS, NO_HEAD_CONV};
use super::{AuxNet, Plan};
use crate::arch::IMAGENET_WIDTH;
use crate::method::{LocalLoss, Pff};
use crate::ops::Conv2d;

/// Most layers of an ImageNet decoder (the stage-4 net's six convs).
pub const MAX_DECODER_LAYERS: usize = 6;

/// Layers of the decoder of a stage-`s` map: (kernel, output channels, the side it works
/// at as a right shift of the image side). The first layer works at the map's own side
/// (its shift is unused); channels 0 stand for the image's channels.
const DECODER_LAYERS: [&[(usize, usize, u32)]; 4] = [
    &[(1, 128, 0), (3, 16, 1), (3, 0, 0)],
    &[(1, 128, 0), (3, 32, 2), (3, 16, 1), (3, 0, 0)],
    &[(1, 128, 0), (3, 64, 1), (3, 32, 2), (3, 16, 1), (3, 0, 0)],
    &[(1, 128, 0), (3, 64, 4), (1, 32, 3), (3, 12, 2), (3, 6, 1), (3, 0, 0)],
];

/// An ImageNet decoder: `layers[l]` is conv `l` and the BN after it (unused for the last
/// layer, which a sigmoid follows). Every conv has stride 1, so layer `l` works at its
/// conv's input side, and an upsampling from layer `l − 1`'s side comes before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedDecoderP {
    /// Module output: channels and spatial side.
    pub c: usize,
    pub h: usize,
    /// Patch grid n.
    pub n: usize,
    pub pff: Pff,
    pub layers: [(ConvP, BnP); MAX_DECODER_LAYERS],
    pub n_layers: usize,
    /// Parameter and state floats between one patch's decoder and the next (patch-input PFF).
    pub param_stride: usize,
    pub state_stride: usize,
}

impl StagedDecoderP {
    /// The layers of patch `p`'s decoder (patch-input PFF; patch 0 is the only decoder otherwise).
    pub fn patch(&self, p: usize) -> [(ConvP, BnP); MAX_DECODER_LAYERS] {
        let (dp, ds) = (p * self.param_stride, p * self.state_stride);
        let mut l = self.layers;
        for (c, b) in l.iter_mut().take(self.n_layers) {
            c.w += dp;
            c.b = c.b.map(|o| o + dp);
            b.p += dp;
            b.state += ds;
        }
        l
    }

    /// Side of the decoder's input: the map, or one patch of it.
    pub fn in_side(&self) -> usize {
        self.layers[0].0.s.h
    }

    /// Side of the decoder's output: the image, or one patch of it.
    pub fn out_side(&self) -> usize {
        self.layers[self.n_layers - 1].0.s.h
    }
}

/// Widths of the classifier's four convs for a map of `c` channels at the reference's width.
const fn head_widths(c: usize) -> [usize; MAX_HEAD_CONVS] {
    if c <= 512 {
        [128, 256, 512, 2048]
    } else if c <= 1024 {
        [256, 256, 512, 2048]
    } else {
        [512, 512, 1024, 2048]
    }
}

impl Plan {
    /// The ImageNet classifier of module `j`.
    pub(crate) fn imagenet_head_params(&self, cur: &mut Cursor, j: usize, net: AuxNet) -> HeadP {
        let (c, h, _) = self.module_out(j);
        let (stage, block) = self.part.split_point(&self.arch, j);
        let m = &self.method;
        let w = self.arch.width;
        let scale = |x: usize| (x * w * m.widen / IMAGENET_WIDTH).max(1);
        let widths = head_widths(c * IMAGENET_WIDTH / w);
        let pre = |index| Prefix::ImageNetHead { net: net.imagenet_name(), stage, block, index };
        let mut convs = [NO_HEAD_CONV; MAX_HEAD_CONVS];
        let (mut ch, mut hh) = (c, h);
        for (i, (&width, (k, stride))) in widths.iter().zip([(1, 1), (3, 2), (3, 2), (1, 1)]).enumerate() {
            let s = Conv2d { c_in: ch, c_out: scale(width), h: hh, w: hh, k, stride, pad: k / 2, groups: 1 };
            let conv = cur.conv(pre(3 * i), s, false);
            let bn = cur.bn(pre(3 * i + 1), s.c_out, s.h_out() * s.w_out());
            convs[i] = (conv, bn);
            (ch, hh) = (s.c_out, s.h_out());
        }
        let out = match m.local_loss {
            LocalLoss::CrossEntropy => self.arch.classes,
            LocalLoss::Contrast => m.feature_dim,
        };
        // Sequential indices: 4 × (conv, BN, ReLU), pool, flatten, then the linear.
        let linear = cur.linear(pre(3 * MAX_HEAD_CONVS + 2), ch, out);
        let none = LinearP { s: crate::ops::Linear { in_f: 0, out_f: 0 }, w: 0, b: 0 };
        HeadP {
            convs,
            n_convs: MAX_HEAD_CONVS,
            linears: [linear, none, none],
            n_linears: 1,
            pool_c: ch,
            pool_hw: hh * hh,
            contrast: m.local_loss == LocalLoss::Contrast,
        }
    }

    /// The ImageNet decoder(s) of module `j`: one for the whole map, or one per patch
    /// with patch-input PFF.
    pub(crate) fn staged_decoder_params(&self, cur: &mut Cursor, j: usize, net: AuxNet) -> StagedDecoderP {
        let (c, h, s) = self.module_out(j);
        let (stage, block) = self.part.split_point(&self.arch, j);
        let (n, pff) = (self.method.patches, self.method.pff);
        // Patch-input PFF decodes patches of the map into patches of the image.
        let (copies, div) = match pff {
            Pff::Input => (n * n, n),
            Pff::Output => (1, 1),
        };
        let spec = DECODER_LAYERS[s.min(3)];
        let image = self.arch.image;
        let mut layers = [NO_HEAD_CONV; MAX_DECODER_LAYERS];
        let (p0, s0) = (cur.p, cur.s);
        let mut strides = (0, 0);
        for copy in 0..copies {
            let patch = (copies > 1).then_some(copy);
            let pre =
                |index| Prefix::ImageNetDecoder { net: net.imagenet_name(), stage, block, patch, seq: s + 1, index };
            let mut ch = c;
            for (l, &(k, co, shift)) in spec.iter().enumerate() {
                let side = if l == 0 { h / div } else { (image >> shift) / div };
                let last = l + 1 == spec.len();
                let c_out = if last { self.arch.in_channels } else { co };
                let conv = cur.conv(
                    pre(4 * l),
                    Conv2d { c_in: ch, c_out, h: side, w: side, k, stride: 1, pad: k / 2, groups: 1 },
                    true,
                );
                let bn = if last { NO_HEAD_CONV.1 } else { cur.bn(pre(4 * l + 1), c_out, side * side) };
                if copy == 0 {
                    layers[l] = (conv, bn);
                }
                ch = c_out;
            }
            if copy == 0 {
                strides = (cur.p - p0, cur.s - s0);
            }
        }
        StagedDecoderP { c, h, n, pff, layers, n_layers: spec.len(), param_stride: strides.0, state_stride: strides.1 }
    }

    /// The ImageNet decoder `net` of module `j`.
    pub(crate) fn staged_decoder(&self, j: usize, net: AuxNet) -> StagedDecoderP {
        let mut cur = self.aux_cursor_at(j, net);
        self.staged_decoder_params(&mut cur, j, net)
    }
}
