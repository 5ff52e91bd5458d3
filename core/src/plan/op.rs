//! The ops of a schedule: what an executor runs, with every tensor an arena slice.
//!
//! Offsets are in 4-byte slots (one `f32` each, see [`Elem`]) from the arena's start. Parameter offsets `w`, `b`,
//! `p` point into the parameter region; the matching gradient is at the same offset
//! plus [`super::Plan::params`] and the momentum buffer at plus twice that. `state`
//! offsets point at BN running statistics (mean, then var). Every op works on the
//! plan's whole batch; buffers of one op never overlap.
//!
//! Each op's fields are a struct named after its [`Op`] variant (`Op::Conv(op::Conv { .. })`),
//! so an executor's method for that op takes exactly them ([`crate::exec::Backend`]).

use crate::ops::{self, BatchNorm2d, Conv2d, MaxPool2d, Window};

/// What a buffer's elements are.
///
/// The arena is counted in 4-byte slots (one `f32` each): every buffer starts on a slot,
/// and one of 2-byte elements would pack two to a slot ([`Buf::slots`]). The plan makes
/// every buffer `F32` but the values a bf16-mixed or 16-mixed step keeps for backward,
/// which only [`Op::Narrow`] writes and [`Op::Widen`] reads: every other op works on `F32`
/// buffers, and a backend's `f32` accessor refuses any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Elem {
    F32,
    /// bfloat16 bits (`u16`), two to a slot.
    Bf16,
    /// IEEE binary16 bits (`u16`), two to a slot.
    F16,
}

/// Bytes of an arena slot: the unit of every offset and region size of a plan.
pub const SLOT_BYTES: usize = 4;

impl Elem {
    pub const fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 | Elem::F16 => 2,
        }
    }

    /// The 16-bit format of a 16-bit element, `None` for `F32`.
    pub const fn half(self) -> Option<ops::Half> {
        match self {
            Elem::F32 => None,
            Elem::Bf16 => Some(ops::Half::Bf16),
            Elem::F16 => Some(ops::Half::F16),
        }
    }
}

/// A slice of the arena: `len` elements of type `elem` from slot `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Buf {
    pub off: usize,
    pub len: usize,
    pub elem: Elem,
}

impl Buf {
    /// `len` `f32`s from slot `off`.
    pub const fn f32(off: usize, len: usize) -> Buf {
        Buf { off, len, elem: Elem::F32 }
    }
    /// `len` bf16 values from slot `off`.
    pub const fn bf16(off: usize, len: usize) -> Buf {
        Buf { off, len, elem: Elem::Bf16 }
    }
    /// The arena slots it covers.
    pub const fn slots(&self) -> usize {
        (self.len * self.elem.bytes()).div_ceil(SLOT_BYTES)
    }
    /// The slot after its last.
    pub const fn end(&self) -> usize {
        self.off + self.slots()
    }
    /// Whether two buffers share any slot.
    pub const fn overlaps(&self, o: &Buf) -> bool {
        self.off < o.end() && o.off < self.end()
    }
}

/// Where a loss value is recorded: `module * LOSS_KINDS + kind`.
pub type LossSlot = usize;

/// One step of a schedule. Tensors on the activation stack are [`Buf`]s named as in the
/// math (`x` in, `y` out, `dx`/`dy` their gradients); `weight`, `bias` and a BN's `affine`
/// (γ then β) are float offsets into the parameter region, whose gradients sit at
/// [`super::Plan::grad_of`]; `state` is a BN's running mean then variance; `shape` is the
/// layer's geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Zero the gradient region and the loss record (first op of a training step).
    BeginStep,
    Zero(Zero),
    Restore(Restore),
    Conv(Conv),
    BnTrain(BnTrain),
    BnEval(BnEval),
    BnApply(BnApply),
    Relu(Relu),
    AddRelu(AddRelu),
    Sigmoid(Sigmoid),
    Pool(Pool),
    MaxPool(MaxPool),
    Linear(Linear),
    Resize(Resize),
    Crop(Crop),
    L2Normalize(L2Normalize),
    CrossEntropy(CrossEntropy),
    Bce(Bce),
    SupCon(SupCon),
    ConvBackward(ConvBackward),
    BnBackward(BnBackward),
    ReluBackward(ReluBackward),
    SigmoidBackward(SigmoidBackward),
    PoolBackward(PoolBackward),
    MaxPoolBackward(MaxPoolBackward),
    LinearBackward(LinearBackward),
    ResizeBackward(ResizeBackward),
    L2NormalizeBackward(L2NormalizeBackward),
    Add(Add),
    Narrow(Narrow),
    Widen(Widen),
    Sgd(Sgd),
    CheckGrads(CheckGrads),
    Send(Send),
    Recv(Recv),
}

/// Zero `buf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Zero {
    pub buf: Buf,
}

/// `y = x·std[c] + mean[c]`: the de-normalised image the decoders reconstruct.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restore {
    pub x: Buf,
    pub y: Buf,
    pub channels: usize,
    pub hw: usize,
    pub mean: [f32; 4],
    pub std: [f32; 4],
}

/// y = conv(x, weight) (+ bias), over every image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv {
    pub shape: Conv2d,
    pub weight: usize,
    pub bias: Option<usize>,
    pub x: Buf,
    pub y: Buf,
}

/// Training-mode BN: batch statistics into `stats` (4·c floats: mean, invstd, then the
/// raw sums), the running statistics updated `updates` times with them (once per pass the
/// reference would make through this layer on the same batch; 0 when the forward is
/// recomputed for a backward, see [`crate::method::Method::recompute`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnTrain {
    pub shape: BatchNorm2d,
    pub affine: usize,
    pub state: usize,
    pub x: Buf,
    pub y: Buf,
    pub stats: Buf,
    pub updates: u8,
}

/// Eval-mode BN with the running statistics (`stats` is scratch for mean, invstd).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnEval {
    pub shape: BatchNorm2d,
    pub affine: usize,
    pub state: usize,
    pub x: Buf,
    pub y: Buf,
    pub stats: Buf,
}

/// BN with the batch statistics a [`Op::BnTrain`] left in `stats` (same arithmetic, so the
/// same bits): recomputes in backward a BN output that the forward did not keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnApply {
    pub shape: BatchNorm2d,
    pub affine: usize,
    pub x: Buf,
    pub y: Buf,
    pub stats: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Relu {
    pub x: Buf,
}

/// y = relu(y + x): the end of a residual block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddRelu {
    pub y: Buf,
    pub x: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sigmoid {
    pub x: Buf,
    pub y: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pool {
    pub channels: usize,
    pub hw: usize,
    pub x: Buf,
    pub y: Buf,
}

/// The ImageNet stem's max pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxPool {
    pub shape: MaxPool2d,
    pub x: Buf,
    pub y: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    pub shape: ops::Linear,
    pub weight: usize,
    pub bias: usize,
    pub x: Buf,
    pub y: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resize {
    pub window: Window,
    pub x: Buf,
    pub y: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub window: Window,
    pub x: Buf,
    pub y: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L2Normalize {
    pub dim: usize,
    pub x: Buf,
    pub y: Buf,
}

/// Mean cross-entropy of `logits` against the labels; `dlogits` = scale·gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    pub classes: usize,
    pub logits: Buf,
    pub dlogits: Buf,
    pub scale: f32,
    pub slot: LossSlot,
}

/// Mean BCE of `probs` against `target`; `dprobs` = scale·gradient. Losses of one slot add up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bce {
    pub probs: Buf,
    pub target: Buf,
    pub dprobs: Buf,
    pub scale: f32,
    pub slot: LossSlot,
}

/// SupCon on normalised `features` (batch × dim); `dfeatures` = scale·gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupCon {
    pub dim: usize,
    pub features: Buf,
    pub dfeatures: Buf,
    pub scale: f32,
    pub slot: LossSlot,
    pub scratch: Buf,
}

/// Adds `weight` (and `bias`) gradients when the layer's input `x` is given (it is read
/// for nothing else, so an input-gradient-only pass does not keep it alive); writes dx
/// when asked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvBackward {
    pub shape: Conv2d,
    pub weight: usize,
    pub bias: Option<usize>,
    pub x: Option<Buf>,
    pub dy: Buf,
    pub dx: Option<Buf>,
}

/// Training-mode BN backward; adds γ/β gradients when `weights`; `sums` is 2·c scratch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnBackward {
    pub shape: BatchNorm2d,
    pub affine: usize,
    pub x: Buf,
    pub dy: Buf,
    pub dx: Buf,
    pub stats: Buf,
    pub sums: Buf,
    pub weights: bool,
}

/// `dy ← dy·[y > 0]` in place (y is the ReLU's output).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReluBackward {
    pub y: Buf,
    pub dy: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SigmoidBackward {
    pub y: Buf,
    pub dy: Buf,
    pub dx: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolBackward {
    pub channels: usize,
    pub hw: usize,
    pub dy: Buf,
    pub dx: Buf,
}

/// Overwrites `dx` with the max pool's input gradient; `x` is the pool's input, from
/// which each window's winner is found again (no indices are kept).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxPoolBackward {
    pub shape: MaxPool2d,
    pub x: Buf,
    pub dy: Buf,
    pub dx: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearBackward {
    pub shape: ops::Linear,
    pub weight: usize,
    pub bias: usize,
    pub x: Buf,
    pub dy: Buf,
    pub dx: Option<Buf>,
}

/// Adds the gradient of a resize into the window of `dx`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResizeBackward {
    pub window: Window,
    pub dy: Buf,
    pub dx: Buf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L2NormalizeBackward {
    pub dim: usize,
    pub x: Buf,
    pub dy: Buf,
    pub dx: Buf,
}

/// y += x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Add {
    pub y: Buf,
    pub x: Buf,
}

/// `y` (bf16 or f16, as its element says) = `x` (`f32`) rounded to nearest even, and `x`
/// rounded in place to the same values ([`crate::ops::narrow`]): a value the forward keeps
/// for backward in 16 bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Narrow {
    pub x: Buf,
    pub y: Buf,
}

/// `y` (`f32`) = `x` (bf16 or f16), exactly: a kept value read back for backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Widen {
    pub x: Buf,
    pub y: Buf,
}

impl Narrow {
    /// The format `y` is stored in.
    pub fn format(&self) -> ops::Half {
        self.y.elem.half().expect("a Narrow writes a 16-bit buffer")
    }
}

impl Widen {
    /// The format `x` is stored in.
    pub fn format(&self) -> ops::Half {
        self.x.elem.half().expect("a Widen reads a 16-bit buffer")
    }
}

/// One SGD step over module `module`'s parameters `params` (offsets in the parameter
/// region: with their gradients and momentum). The schedule emits one per module, as soon
/// as the module's gradients are final and nothing later reads its parameters (see
/// [`super::Plan::module_params`]); the dispatcher calls
/// [`crate::exec::Backend::module_done`] right before it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub module: usize,
    pub params: Buf,
}

/// Sets loss-record slot `slot` to 1 if any gradient is NaN or infinite, else leaves
/// its 0 (the last op of a training step: the host learns of a bad step from the loss
/// record it receives anyway, without reading the gradients back).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckGrads {
    pub slot: LossSlot,
}

/// Hands `buf` to the neighbouring pipeline stage `to` (see [`super::Plan::stage`]):
/// a stage's last module's output, or the cascade gradient of its first module's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Send {
    pub buf: Buf,
    pub to: Peer,
}

/// Overwrites `buf` with what the neighbouring stage `from` sends at the matching [`Op::Send`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recv {
    pub buf: Buf,
    pub from: Peer,
}

/// A neighbouring pipeline stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Peer {
    /// The stage holding the modules below.
    Prev,
    /// The stage holding the modules above.
    Next,
}

impl Peer {
    pub const fn name(self) -> &'static str {
        match self {
            Peer::Prev => "prev",
            Peer::Next => "next",
        }
    }
}

impl Op {
    /// The op's name, as listed by `hpff plan --ops`.
    pub const fn name(&self) -> &'static str {
        match self {
            Op::BeginStep => "begin_step",
            Op::Zero(_) => "zero",
            Op::Restore(_) => "restore",
            Op::Conv(_) => "conv",
            Op::BnTrain(_) => "bn_train",
            Op::BnEval(_) => "bn_eval",
            Op::BnApply(_) => "bn_apply",
            Op::Relu(_) => "relu",
            Op::AddRelu(_) => "add_relu",
            Op::Sigmoid(_) => "sigmoid",
            Op::Pool(_) => "pool",
            Op::MaxPool(_) => "max_pool",
            Op::Linear(_) => "linear",
            Op::Resize(_) => "resize",
            Op::Crop(_) => "crop",
            Op::L2Normalize(_) => "l2_normalize",
            Op::CrossEntropy(_) => "cross_entropy",
            Op::Bce(_) => "bce",
            Op::SupCon(_) => "supcon",
            Op::ConvBackward(_) => "conv_backward",
            Op::BnBackward(_) => "bn_backward",
            Op::ReluBackward(_) => "relu_backward",
            Op::SigmoidBackward(_) => "sigmoid_backward",
            Op::PoolBackward(_) => "pool_backward",
            Op::MaxPoolBackward(_) => "max_pool_backward",
            Op::LinearBackward(_) => "linear_backward",
            Op::ResizeBackward(_) => "resize_backward",
            Op::L2NormalizeBackward(_) => "l2_normalize_backward",
            Op::Add(_) => "add",
            Op::Narrow(_) => "narrow",
            Op::Widen(_) => "widen",
            Op::Sgd(_) => "sgd",
            Op::CheckGrads(_) => "check_grads",
            Op::Send(_) => "send",
            Op::Recv(_) => "recv",
        }
    }

    /// Calls `f(field, access, buffer)` for every activation-stack buffer the op touches
    /// (parameters, gradients and BN state live in their own regions and are not listed).
    pub fn for_each_buf(&self, mut f: impl FnMut(&'static str, Access, Buf)) {
        use Access::{Read as R, Update as U, Write as W};
        match *self {
            Op::BeginStep | Op::Sgd(_) | Op::CheckGrads(_) => {}
            Op::Zero(Zero { buf }) | Op::Recv(Recv { buf, .. }) => f("buf", W, buf),
            Op::Send(Send { buf, .. }) => f("buf", R, buf),
            Op::Relu(Relu { x }) => f("x", U, x),
            Op::Restore(Restore { x, y, .. })
            | Op::Conv(Conv { x, y, .. })
            | Op::Sigmoid(Sigmoid { x, y })
            | Op::Pool(Pool { x, y, .. })
            | Op::MaxPool(MaxPool { x, y, .. })
            | Op::Linear(Linear { x, y, .. })
            | Op::Resize(Resize { x, y, .. })
            | Op::Crop(Crop { x, y, .. })
            | Op::L2Normalize(L2Normalize { x, y, .. })
            | Op::Widen(Widen { x, y }) => {
                f("x", R, x);
                f("y", W, y);
            }
            Op::Narrow(Narrow { x, y }) => {
                f("x", U, x);
                f("y", W, y);
            }
            Op::AddRelu(AddRelu { y, x }) | Op::Add(Add { y, x }) => {
                f("x", R, x);
                f("y", U, y);
            }
            Op::BnTrain(BnTrain { x, y, stats, .. }) | Op::BnEval(BnEval { x, y, stats, .. }) => {
                f("x", R, x);
                f("stats", W, stats);
                f("y", W, y);
            }
            Op::BnApply(BnApply { x, y, stats, .. }) => {
                f("x", R, x);
                f("stats", R, stats);
                f("y", W, y);
            }
            Op::CrossEntropy(CrossEntropy { logits, dlogits, .. }) => {
                f("logits", R, logits);
                f("dlogits", W, dlogits);
            }
            Op::Bce(Bce { probs, target, dprobs, .. }) => {
                f("probs", R, probs);
                f("target", R, target);
                f("dprobs", W, dprobs);
            }
            Op::SupCon(SupCon { features, dfeatures, scratch, .. }) => {
                f("features", R, features);
                f("scratch", W, scratch);
                f("dfeatures", W, dfeatures);
            }
            Op::ConvBackward(ConvBackward { x, dy, dx, .. }) => {
                if let Some(x) = x {
                    f("x", R, x);
                }
                f("dy", R, dy);
                if let Some(dx) = dx {
                    f("dx", W, dx);
                }
            }
            Op::LinearBackward(LinearBackward { x, dy, dx, .. }) => {
                f("x", R, x);
                f("dy", R, dy);
                if let Some(dx) = dx {
                    f("dx", W, dx);
                }
            }
            Op::MaxPoolBackward(MaxPoolBackward { x, dy, dx, .. }) => {
                f("x", R, x);
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::BnBackward(BnBackward { x, dy, dx, stats, sums, .. }) => {
                f("x", R, x);
                f("dy", R, dy);
                f("stats", R, stats);
                f("sums", W, sums);
                f("dx", W, dx);
            }
            Op::ReluBackward(ReluBackward { y, dy }) => {
                f("y", R, y);
                f("dy", U, dy);
            }
            Op::SigmoidBackward(SigmoidBackward { y, dy, dx })
            | Op::L2NormalizeBackward(L2NormalizeBackward { x: y, dy, dx, .. }) => {
                f(if matches!(self, Op::SigmoidBackward(_)) { "y" } else { "x" }, R, y);
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::PoolBackward(PoolBackward { dy, dx, .. }) => {
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::ResizeBackward(ResizeBackward { dy, dx, .. }) => {
                f("dy", R, dy);
                f("dx", U, dx);
            }
        }
    }
}

impl Op {
    /// Calls `f` with every range of the parameter region (offsets as in the op) whose
    /// values the op reads or whose gradients it adds to, or, for [`Op::Sgd`], updates.
    /// [`Op::BeginStep`], which zeroes every gradient, lists nothing.
    pub fn for_each_param(&self, mut f: impl FnMut(Buf)) {
        let mut at = |off: usize, len: usize| f(Buf::f32(off, len));
        match *self {
            Op::Conv(Conv { shape, weight, bias, .. }) | Op::ConvBackward(ConvBackward { shape, weight, bias, .. }) => {
                at(weight, shape.weight_len());
                if let Some(b) = bias {
                    at(b, shape.c_out);
                }
            }
            Op::BnTrain(BnTrain { shape, affine, .. })
            | Op::BnEval(BnEval { shape, affine, .. })
            | Op::BnApply(BnApply { shape, affine, .. })
            | Op::BnBackward(BnBackward { shape, affine, .. }) => at(affine, 2 * shape.c),
            Op::Linear(Linear { shape, weight, bias, .. })
            | Op::LinearBackward(LinearBackward { shape, weight, bias, .. }) => {
                at(weight, shape.in_f * shape.out_f);
                at(bias, shape.out_f);
            }
            Op::Sgd(Sgd { params, .. }) => f(params),
            _ => {}
        }
    }

    /// Moves every parameter offset (weights, biases, BN affines) through `param`, and
    /// every BN running-statistics offset through `state`: from the layout's checkpoint
    /// order to the arena's (a pipeline stage's own). An [`Op::Sgd`] is made with the
    /// arena's offsets and stays.
    pub fn relocate(&mut self, param: impl Fn(usize) -> usize, state: impl Fn(usize) -> usize) {
        match self {
            Op::Conv(Conv { weight, bias, .. }) | Op::ConvBackward(ConvBackward { weight, bias, .. }) => {
                *weight = param(*weight);
                *bias = bias.map(&param);
            }
            Op::BnTrain(BnTrain { affine, state: s, .. }) | Op::BnEval(BnEval { affine, state: s, .. }) => {
                *affine = param(*affine);
                *s = state(*s);
            }
            Op::BnApply(BnApply { affine, .. }) | Op::BnBackward(BnBackward { affine, .. }) => *affine = param(*affine),
            Op::Linear(Linear { weight, bias, .. }) | Op::LinearBackward(LinearBackward { weight, bias, .. }) => {
                *weight = param(*weight);
                *bias = param(*bias);
            }
            _ => {}
        }
    }
}

/// How an op uses a buffer: what a liveness analysis needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Overwritten whole, without reading it first.
    Write,
    /// Read and written (in place, or accumulated into).
    Update,
}

impl Access {
    pub const fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Update => "update",
        }
    }
}

/// Kinds of recorded loss; a module has one slot per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum LossKind {
    /// Cross-entropy at the network's classifier (E2E, or a local method's last module).
    Ce = 0,
    /// A local method's decoder (summed over patches).
    Decoder = 1,
    /// A local method's auxiliary classifier.
    Classifier = 2,
    /// HPFF's independent level (module alone, its own head).
    Independent = 3,
    /// HPFF's cascade level: decoder, summed over patches.
    CascadeDecoder = 4,
    /// HPFF's cascade level: classifier.
    CascadeClassifier = 5,
    /// HPFF's last module, independent path.
    LastX = 6,
    /// HPFF's last module, cascade path.
    LastY = 7,
}

pub const LOSS_KINDS: usize = 8;

/// Length of the loss record of a plan with `modules` modules: [`LOSS_KINDS`] losses per
/// module, then the non-finite gradient flag ([`Op::CheckGrads`]). For static buffers.
pub const fn loss_record_len(modules: usize) -> usize {
    modules * LOSS_KINDS + 1
}

impl LossKind {
    pub const ALL: [LossKind; LOSS_KINDS] = [
        LossKind::Ce,
        LossKind::Decoder,
        LossKind::Classifier,
        LossKind::Independent,
        LossKind::CascadeDecoder,
        LossKind::CascadeClassifier,
        LossKind::LastX,
        LossKind::LastY,
    ];

    pub const fn slot(self, module: usize) -> LossSlot {
        module * LOSS_KINDS + self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            LossKind::Ce => "ce",
            LossKind::Decoder => "decoder",
            LossKind::Classifier => "classifier",
            LossKind::Independent => "independent",
            LossKind::CascadeDecoder => "cascade_decoder",
            LossKind::CascadeClassifier => "cascade_classifier",
            LossKind::LastX => "last_x",
            LossKind::LastY => "last_y",
        }
    }
}
