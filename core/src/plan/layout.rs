//! Where every parameter and BN running statistic lives, and what it is called.
//!
//! One walk over the network ([`Plan::for_each_tensor`]) defines the checkpoint order:
//! stem, blocks, classifier, then each module's auxiliary nets. Offsets of a given block
//! or head are recomputed from closed-form sizes, so the plan stores no tables. Names are
//! the PyTorch reference's `state_dict` keys, so checkpoints move to and from it. The
//! offsets handed out here are in that order; the arena holds the tensors module by
//! module, and [`super::placement`] moves each offset there.

use super::{AuxNet, Plan};
use crate::arch::{Arch, BlockKind, BlockShape, Family};
use crate::ops::{BatchNorm2d, Conv2d, Linear, MaxPool2d};
use core::fmt;

/// A conv layer's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvP {
    pub s: Conv2d,
    pub w: usize,
    pub b: Option<usize>,
}

/// A BN layer: γ at `p`, β at `p + c`; running mean at `state`, var at `state + c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnP {
    pub s: BatchNorm2d,
    pub p: usize,
    pub state: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearP {
    pub s: Linear,
    pub w: usize,
    pub b: usize,
}

/// How a tensor is initialised (the reference's init).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, sqrt(2 / (k·k·c_out))).
    KaimingConv {
        c_out: usize,
        k: usize,
    },
    /// U(±1/sqrt(fan_in)), PyTorch's default for linear layers and conv biases.
    UniformFanIn(usize),
    Ones,
    Zeros,
}

/// Where a module's tensors begin, as [`Plan::walk`] meets them: its part of the
/// backbone, or its auxiliary nets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Backbone,
    Aux,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Param,
    /// BN running statistics: saved and loaded, never trained.
    State,
}

/// The name of a tensor, printed as the reference's `state_dict` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// `conv1.weight`, `fc64.bias`, …
    Top(&'static str, &'static str),
    /// `layer{stage}.{block}.{layer}.{leaf}`
    Block { stage: usize, block: usize, layer: &'static str, leaf: &'static str },
    /// `{net}_{stage}_{block}.head.{index}.{leaf}`
    Head { net: &'static str, stage: usize, block: usize, index: usize, leaf: &'static str },
    /// `{net}_{stage}_{block}.decoders.{patch}.{index}.{leaf}`
    Decoder { net: &'static str, stage: usize, block: usize, patch: usize, index: usize, leaf: &'static str },
    /// The ImageNet reference's auxiliary classifiers, `{net}{stage}_{block}.head.{index}.{leaf}`
    /// (`aux13_0.head.0.weight`).
    ImageNetHead { net: &'static str, stage: usize, block: usize, index: usize, leaf: &'static str },
    /// The ImageNet reference's decoders, `{net}{stage}_{block}.decoder{seq}.{index}.{leaf}`
    /// (`decoder13_0.decoder3.0.weight`; `seq` is the stage of the map it decodes); with
    /// patch-input PFF, one per patch: `{net}{stage}_{block}.decoders.{patch}.decoder{seq}.…`.
    ImageNetDecoder {
        net: &'static str,
        stage: usize,
        block: usize,
        patch: Option<usize>,
        seq: usize,
        index: usize,
        leaf: &'static str,
    },
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Name::Top(a, b) => write!(f, "{a}.{b}"),
            Name::Block { stage, block, layer, leaf } => write!(f, "layer{stage}.{block}.{layer}.{leaf}"),
            Name::Head { net, stage, block, index, leaf } => write!(f, "{net}_{stage}_{block}.head.{index}.{leaf}"),
            Name::Decoder { net, stage, block, patch, index, leaf } => {
                write!(f, "{net}_{stage}_{block}.decoders.{patch}.{index}.{leaf}")
            }
            Name::ImageNetHead { net, stage, block, index, leaf } => {
                write!(f, "{net}{stage}_{block}.head.{index}.{leaf}")
            }
            Name::ImageNetDecoder { net, stage, block, patch, seq, index, leaf } => {
                write!(f, "{net}{stage}_{block}.")?;
                if let Some(p) = patch {
                    write!(f, "decoders.{p}.")?;
                }
                write!(f, "decoder{seq}.{index}.{leaf}")
            }
        }
    }
}

/// One tensor of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: Name,
    pub kind: TensorKind,
    pub off: usize,
    pub len: usize,
    /// PyTorch shape; unused trailing dims are 0.
    pub shape: [usize; 4],
    pub init: Init,
}

impl Tensor {
    pub fn rank(&self) -> usize {
        self.shape.iter().take_while(|&&d| d > 0).count()
    }
}

/// Hands out parameter and state offsets in walk order, reporting each tensor to a visitor.
pub(crate) struct Cursor<'v> {
    pub p: usize,
    pub s: usize,
    visit: Option<&'v mut dyn FnMut(Tensor)>,
}

/// How a layer is named: the caller supplies the prefix, the cursor the leaf.
#[derive(Clone, Copy)]
pub(crate) enum Prefix {
    Top(&'static str),
    Block { stage: usize, block: usize, layer: &'static str },
    Head { net: &'static str, stage: usize, block: usize, index: usize },
    Decoder { net: &'static str, stage: usize, block: usize, patch: usize, index: usize },
    ImageNetHead { net: &'static str, stage: usize, block: usize, index: usize },
    ImageNetDecoder { net: &'static str, stage: usize, block: usize, patch: Option<usize>, seq: usize, index: usize },
}

impl Prefix {
    fn with(self, leaf: &'static str) -> Name {
        match self {
            Prefix::Top(a) => Name::Top(a, leaf),
            Prefix::Block { stage, block, layer } => Name::Block { stage, block, layer, leaf },
            Prefix::Head { net, stage, block, index } => Name::Head { net, stage, block, index, leaf },
            Prefix::Decoder { net, stage, block, patch, index } => {
                Name::Decoder { net, stage, block, patch, index, leaf }
            }
            Prefix::ImageNetHead { net, stage, block, index } => Name::ImageNetHead { net, stage, block, index, leaf },
            Prefix::ImageNetDecoder { net, stage, block, patch, seq, index } => {
                Name::ImageNetDecoder { net, stage, block, patch, seq, index, leaf }
            }
        }
    }
}

impl<'v> Cursor<'v> {
    pub fn new(p: usize, s: usize, visit: Option<&'v mut dyn FnMut(Tensor)>) -> Self {
        Cursor { p, s, visit }
    }

    fn emit(&mut self, name: Name, kind: TensorKind, len: usize, shape: [usize; 4], init: Init) -> usize {
        let off = match kind {
            TensorKind::Param => &mut self.p,
            TensorKind::State => &mut self.s,
        };
        let at = *off;
        *off += len;
        if let Some(v) = self.visit.as_mut() {
            v(Tensor { name, kind, off: at, len, shape, init });
        }
        at
    }

    pub fn conv(&mut self, pre: Prefix, s: Conv2d, bias: bool) -> ConvP {
        let shape = [s.c_out, s.c_in / s.groups, s.k, s.k];
        let init = Init::KaimingConv { c_out: s.c_out, k: s.k };
        let w = self.emit(pre.with("weight"), TensorKind::Param, s.weight_len(), shape, init);
        let fan_in = s.c_in / s.groups * s.k * s.k;
        let b = bias.then(|| {
            self.emit(pre.with("bias"), TensorKind::Param, s.c_out, [s.c_out, 0, 0, 0], Init::UniformFanIn(fan_in))
        });
        ConvP { s, w, b }
    }

    pub fn bn(&mut self, pre: Prefix, c: usize, hw: usize) -> BnP {
        self.bn_init(pre, c, hw, Init::Ones)
    }

    /// A BN layer whose γ starts as `gamma` (β at 0).
    pub fn bn_init(&mut self, pre: Prefix, c: usize, hw: usize, gamma: Init) -> BnP {
        let shape = [c, 0, 0, 0];
        let p = self.emit(pre.with("weight"), TensorKind::Param, c, shape, gamma);
        self.emit(pre.with("bias"), TensorKind::Param, c, shape, Init::Zeros);
        let state = self.emit(pre.with("running_mean"), TensorKind::State, c, shape, Init::Zeros);
        self.emit(pre.with("running_var"), TensorKind::State, c, shape, Init::Ones);
        BnP { s: BatchNorm2d { c, hw }, p, state }
    }

    pub fn linear(&mut self, pre: Prefix, in_f: usize, out_f: usize) -> LinearP {
        let s = Linear { in_f, out_f };
        let w = self.emit(
            pre.with("weight"),
            TensorKind::Param,
            s.weight_len(),
            [out_f, in_f, 0, 0],
            Init::UniformFanIn(in_f),
        );
        let b = self.emit(pre.with("bias"), TensorKind::Param, out_f, [out_f, 0, 0, 0], Init::UniformFanIn(in_f));
        LinearP { s, w, b }
    }
}

/// The parameters of a residual block: convs and BNs in order (2 for Basic, 3 for Bottleneck).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockP {
    pub shape: BlockShape,
    pub convs: [ConvP; 3],
    pub bns: [BnP; 3],
    pub layers: usize,
    pub downsample: Option<(ConvP, BnP)>,
}

const CONV_NAMES: [&str; 3] = ["conv1", "conv2", "conv3"];
const BN_NAMES: [&str; 3] = ["bn1", "bn2", "bn3"];

pub(crate) fn block_params(cur: &mut Cursor, sh: BlockShape, stage: usize, block: usize) -> BlockP {
    let pre = |layer| Prefix::Block { stage: stage + 1, block, layer };
    let hw_in = sh.h_in * sh.w_in;
    let hw_out = sh.h_out * sh.w_out;
    let conv = |c_in, c_out, h, k, stride| Conv2d { c_in, c_out, h, w: h, k, stride, pad: k / 2, groups: 1 };
    let specs: [(Conv2d, usize); 3] = match sh.kind {
        BlockKind::Basic => [
            (conv(sh.c_in, sh.planes, sh.h_in, 3, sh.stride), hw_out),
            (conv(sh.planes, sh.c_out, sh.h_out, 3, 1), hw_out),
            (conv(0, 0, 1, 1, 1), 0),
        ],
        BlockKind::Bottleneck => [
            (conv(sh.c_in, sh.width, sh.h_in, 1, 1), hw_in),
            (Conv2d { groups: sh.groups, ..conv(sh.width, sh.width, sh.h_in, 3, sh.stride) }, hw_out),
            (conv(sh.width, sh.c_out, sh.h_out, 1, 1), hw_out),
        ],
    };
    let layers = if sh.kind == BlockKind::Basic { 2 } else { 3 };
    let mut convs = [ConvP { s: specs[2].0, w: 0, b: None }; 3];
    let mut bns = [BnP { s: BatchNorm2d { c: 0, hw: 0 }, p: 0, state: 0 }; 3];
    for l in 0..layers {
        convs[l] = cur.conv(pre(CONV_NAMES[l]), specs[l].0, false);
        let zero = sh.zero_init_last_bn && l + 1 == layers;
        let gamma = if zero { Init::Zeros } else { Init::Ones };
        bns[l] = cur.bn_init(pre(BN_NAMES[l]), specs[l].0.c_out, specs[l].1, gamma);
    }
    let downsample = sh.downsample.then(|| {
        let c = cur.conv(pre("downsample.0"), conv(sh.c_in, sh.c_out, sh.h_in, 1, sh.stride), false);
        let b = cur.bn(pre("downsample.1"), sh.c_out, hw_out);
        (c, b)
    });
    BlockP { shape: sh, convs, bns, layers, downsample }
}

/// Stem: conv3x3 (CIFAR) or conv7x7 stride 2 (ImageNet), in → base width, + BN (+ ReLU),
/// then on ImageNet a 3×3 stride-2 max pool (no parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StemP {
    pub conv: ConvP,
    pub bn: BnP,
    pub pool: Option<MaxPool2d>,
}

pub(crate) fn stem_params(cur: &mut Cursor, arch: &Arch) -> StemP {
    let s = arch.stem_conv();
    let conv = cur.conv(Prefix::Top("conv1"), s, false);
    let bn = cur.bn(Prefix::Top("bn1"), s.c_out, s.h_out() * s.w_out());
    StemP { conv, bn, pool: arch.stem_pool() }
}

/// The classifier's name: the CIFAR reference calls it `fc64`, torchvision's ResNets `fc`.
fn fc_prefix(arch: &Arch) -> Prefix {
    Prefix::Top(match arch.family {
        Family::Cifar => "fc64",
        Family::ImageNet => "fc",
    })
}

/// Most conv+BN+ReLU layers of an auxiliary classifier (the ImageNet reference's four).
pub const MAX_HEAD_CONVS: usize = 4;

/// An auxiliary classifier head: up to four conv+BN+ReLU, global pool, up to three linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadP {
    pub convs: [(ConvP, BnP); MAX_HEAD_CONVS],
    pub n_convs: usize,
    pub linears: [LinearP; 3],
    pub n_linears: usize,
    /// Channels and spatial size entering the pool.
    pub pool_c: usize,
    pub pool_hw: usize,
    /// Whether the head's output is a contrastive embedding.
    pub contrast: bool,
}

/// Decoder with PFF: `n × n` patch nets, each conv3x3(C → 12·widen)+BN+ReLU, conv3x3(→ image channels), sigmoid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderP {
    /// Module output: channels and spatial size.
    pub c: usize,
    pub h: usize,
    pub n: usize,
    /// Output (and target) patch side: image / n.
    pub out: usize,
    /// First patch net's parameters; patch p's are `stride · p` further on.
    pub first: (ConvP, BnP, ConvP),
    pub param_stride: usize,
    pub state_stride: usize,
}

impl DecoderP {
    /// The parameters of patch `p`.
    pub fn patch(&self, p: usize) -> (ConvP, BnP, ConvP) {
        let (mut a, mut b, mut c) = self.first;
        let (dp, ds) = (p * self.param_stride, p * self.state_stride);
        a.w += dp;
        a.b = a.b.map(|o| o + dp);
        b.p += dp;
        b.state += ds;
        c.w += dp;
        c.b = c.b.map(|o| o + dp);
        (a, b, c)
    }
}

/// An unused conv slot of a [`HeadP`].
pub(crate) const NO_HEAD_CONV: (ConvP, BnP) = (
    ConvP { s: Conv2d { c_in: 0, c_out: 0, h: 1, w: 1, k: 1, stride: 1, pad: 0, groups: 1 }, w: 0, b: None },
    BnP { s: BatchNorm2d { c: 0, hw: 0 }, p: 0, state: 0 },
);

impl Plan {
    /// Walks the whole model through `cur` in checkpoint order, telling `mark` where each
    /// module's part of the backbone (`Part::Backbone`, module `modules` = the classifier's
    /// end) and its auxiliary nets (`Part::Aux`, module `modules` = the end) begin.
    pub(crate) fn walk(&self, cur: &mut Cursor, mark: &mut dyn FnMut(Part, usize, &Cursor)) {
        let k = self.part.modules();
        stem_params(cur, &self.arch);
        for j in 0..k {
            let blocks = self.part.blocks_of(j);
            for g in blocks.clone() {
                if j > 0 && g == blocks.start {
                    mark(Part::Backbone, j, cur);
                }
                let (s, b) = self.arch.locate(g);
                block_params(cur, self.arch.block(g), s, b);
            }
        }
        cur.linear(fc_prefix(&self.arch), self.arch.features(), self.arch.classes);
        mark(Part::Backbone, k, cur);
        for j in 0..k {
            mark(Part::Aux, j, cur);
            for net in self.aux_nets(j) {
                self.aux_params(cur, j, net);
            }
        }
        mark(Part::Aux, k, cur);
    }

    pub(crate) fn stem(&self) -> StemP {
        stem_params(&mut Cursor::new(0, 0, None), &self.arch)
    }

    /// Parameters of global block `g`.
    pub(crate) fn block(&self, g: usize) -> BlockP {
        let mut cur = Cursor::new(0, 0, None);
        stem_params(&mut cur, &self.arch);
        let (stage, b) = self.arch.locate(g);
        // Blocks after the first of a stage all have the same size: skip them in one stride.
        for s in 0..=stage {
            let first = self.arch.stage_start(s);
            let bp = block_params(&mut cur, self.arch.block(first), s, 0);
            if s == stage && b == 0 {
                return bp;
            }
            let later = if s == stage { b - 1 } else { self.arch.stage_blocks[s] - 1 };
            if later > 0 {
                let mut probe = Cursor::new(0, 0, None);
                block_params(&mut probe, self.arch.block(first + 1), s, 1);
                cur.p += probe.p * later;
                cur.s += probe.s * later;
            }
            if s == stage {
                return block_params(&mut cur, self.arch.block(g), s, b);
            }
        }
        unreachable!("locate() returns a stage of the network")
    }

    pub(crate) fn fc(&self) -> LinearP {
        let mut cur = Cursor::new(0, 0, None);
        self.backbone_end(&mut cur);
        cur.linear(fc_prefix(&self.arch), self.arch.features(), self.arch.classes)
    }

    fn backbone_end(&self, cur: &mut Cursor) {
        let last = self.block(self.arch.blocks() - 1);
        let mut probe = Cursor::new(0, 0, None);
        let (s, b) = self.arch.locate(self.arch.blocks() - 1);
        block_params(&mut probe, last.shape, s, b);
        cur.p = last.convs[0].w + probe.p;
        cur.s = last.bns[0].state + probe.s;
    }

    /// A cursor positioned at the first auxiliary net of module `j`.
    fn aux_cursor(&self, j: usize) -> Cursor<'static> {
        let mut cur = Cursor::new(0, 0, None);
        self.backbone_end(&mut cur);
        cur.linear(fc_prefix(&self.arch), self.arch.features(), self.arch.classes);
        for jj in 0..j {
            for net in self.aux_nets(jj) {
                self.aux_params(&mut cur, jj, net);
            }
        }
        cur
    }

    /// A cursor positioned at auxiliary net `net` of module `j`.
    pub(crate) fn aux_cursor_at(&self, j: usize, net: AuxNet) -> Cursor<'static> {
        let mut cur = self.aux_cursor(j);
        for n in self.aux_nets(j) {
            if n == net {
                return cur;
            }
            self.aux_params(&mut cur, j, n);
        }
        unreachable!("module {j} has no auxiliary net {net:?}")
    }

    /// The head of auxiliary net `net` of module `j`.
    pub(crate) fn head(&self, j: usize, net: AuxNet) -> HeadP {
        self.head_params(&mut self.aux_cursor_at(j, net), j, net)
    }

    /// The CIFAR decoder `net` of module `j`.
    pub(crate) fn decoder(&self, j: usize, net: AuxNet) -> DecoderP {
        self.decoder_params(&mut self.aux_cursor_at(j, net), j, net)
    }

    fn aux_params(&self, cur: &mut Cursor, j: usize, net: AuxNet) {
        match (net.is_decoder(), self.method.aux) {
            (true, Family::Cifar) => _ = self.decoder_params(cur, j, net),
            (true, Family::ImageNet) => _ = self.staged_decoder_params(cur, j, net),
            (false, _) => _ = self.head_params(cur, j, net),
        }
    }

    /// Output channels and spatial size of module `j`.
    pub(crate) fn module_out(&self, j: usize) -> (usize, usize, usize) {
        let last = self.part.blocks_of(j).end - 1;
        let sh = self.arch.block(last);
        (sh.c_out, sh.h_out, self.arch.locate(last).0)
    }

    fn head_params(&self, cur: &mut Cursor, j: usize, net: AuxNet) -> HeadP {
        let (c, h, stage) = self.module_out(j);
        let (sp, sb) = self.part.split_point(&self.arch, j);
        let m = &self.method;
        let greedy = self.method.base == crate::method::Base::Greedy;
        if m.aux == Family::ImageNet && !greedy {
            return self.imagenet_head_params(cur, j, net);
        }
        let head = if greedy { crate::method::AuxHead::GREEDY } else { m.head };
        let pre = |index| Prefix::Head { net: net.name(self.method.hpff), stage: sp, block: sb, index };
        // The reference keys its head widths on the input width 16/32/64, i.e. on the stage:
        // 32, 64, 64 at the default base width 16; they scale with the base width. An
        // ImageNet network's fourth stage gets the third's head (with the CIFAR aux nets;
        // the reference's ImageNet heads are in `imagenet_aux.rs`).
        let width = [2, 4, 4, 4][stage] * self.arch.width * m.widen;
        let stride = [2, 2, 1, 1][stage];
        let mut convs = [NO_HEAD_CONV; MAX_HEAD_CONVS];
        let (mut ch, mut hh) = (c, h);
        for i in 0..head.convs {
            let st = if i == 0 { stride } else { 1 };
            let s = Conv2d { c_in: ch, c_out: width, h: hh, w: hh, k: 3, stride: st, pad: 1, groups: 1 };
            let conv = cur.conv(pre(3 * i), s, false);
            let bn = cur.bn(pre(3 * i + 1), width, s.h_out() * s.w_out());
            convs[i] = (conv, bn);
            ch = width;
            hh = s.h_out();
        }
        let out = match m.local_loss {
            crate::method::LocalLoss::CrossEntropy => self.arch.classes,
            crate::method::LocalLoss::Contrast => m.feature_dim,
        };
        let hidden = m.feature_dim * m.widen;
        let mut linears = [LinearP { s: Linear { in_f: 0, out_f: 0 }, w: 0, b: 0 }; 3];
        let first = 3 * head.convs + 2;
        for i in 0..head.linears {
            let in_f = if i == 0 { ch } else { hidden };
            let out_f = if i + 1 == head.linears { out } else { hidden };
            linears[i] = cur.linear(pre(first + 2 * i), in_f, out_f);
        }
        HeadP {
            convs,
            n_convs: head.convs,
            linears,
            n_linears: head.linears,
            pool_c: ch,
            pool_hw: hh * hh,
            contrast: m.local_loss == crate::method::LocalLoss::Contrast,
        }
    }

    fn decoder_params(&self, cur: &mut Cursor, j: usize, net: AuxNet) -> DecoderP {
        let (c, h, _) = self.module_out(j);
        let (sp, sb) = self.part.split_point(&self.arch, j);
        let n = self.method.patches;
        let out = self.arch.image / n;
        let mid = 12 * self.method.widen;
        let mut first = None;
        let (p0, s0) = (cur.p, cur.s);
        let mut strides = (0, 0);
        for patch in 0..n * n {
            let pre = |index| Prefix::Decoder { net: net.name(self.method.hpff), stage: sp, block: sb, patch, index };
            let c1 = Conv2d { c_in: c, c_out: mid, h: out, w: out, k: 3, stride: 1, pad: 1, groups: 1 };
            let c2 =
                Conv2d { c_in: mid, c_out: self.arch.in_channels, h: out, w: out, k: 3, stride: 1, pad: 1, groups: 1 };
            let a = cur.conv(pre(0), c1, true);
            let b = cur.bn(pre(1), mid, out * out);
            let d = cur.conv(pre(3), c2, true);
            if patch == 0 {
                first = Some((a, b, d));
                strides = (cur.p - p0, cur.s - s0);
            }
        }
        DecoderP {
            c,
            h,
            n,
            out,
            first: first.expect("a decoder has at least one patch"),
            param_stride: strides.0,
            state_stride: strides.1,
        }
    }
}
