//! The ops of a schedule: what an executor runs, with every tensor an arena slice.
//!
//! Offsets are in `f32` elements from the arena's start. Parameter offsets `w`, `b`,
//! `p` point into the parameter region; the matching gradient is at the same offset
//! plus [`super::Plan::params`] and the momentum buffer at plus twice that. `state`
//! offsets point at BN running statistics (mean, then var). Every op works on the
//! plan's whole batch; buffers of one op never overlap.

use crate::ops::{BatchNorm2d, Conv2d, Linear, MaxPool2d, Window};

/// A slice of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Buf {
    pub off: usize,
    pub len: usize,
}

impl Buf {
    pub const fn end(&self) -> usize {
        self.off + self.len
    }
    /// Whether two buffers share any element.
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
    Zero {
        buf: Buf,
    },
    /// y = x·std[c] + mean[c]: the de-normalised image the decoders reconstruct.
    Restore {
        x: Buf,
        y: Buf,
        channels: usize,
        hw: usize,
        mean: [f32; 4],
        std: [f32; 4],
    },
    Conv {
        shape: Conv2d,
        weight: usize,
        bias: Option<usize>,
        x: Buf,
        y: Buf,
    },
    /// Training-mode BN: batch statistics into `stats` (4·c floats: mean, invstd, then the
    /// raw sums), the running statistics updated `updates` times with them (once per pass the
    /// reference would make through this layer on the same batch; 0 when the forward is
    /// recomputed for a backward, see [`crate::method::Method::recompute`]).
    BnTrain {
        shape: BatchNorm2d,
        affine: usize,
        state: usize,
        x: Buf,
        y: Buf,
        stats: Buf,
        updates: u8,
    },
    /// Eval-mode BN with the running statistics (`stats` is scratch for mean, invstd).
    BnEval {
        shape: BatchNorm2d,
        affine: usize,
        state: usize,
        x: Buf,
        y: Buf,
        stats: Buf,
    },
    /// BN with the batch statistics a [`Op::BnTrain`] left in `stats` (same arithmetic, so the
    /// same bits): recomputes in backward a BN output that the forward did not keep.
    BnApply {
        shape: BatchNorm2d,
        affine: usize,
        x: Buf,
        y: Buf,
        stats: Buf,
    },
    Relu {
        x: Buf,
    },
    /// y = relu(y + x): the end of a residual block.
    AddRelu {
        y: Buf,
        x: Buf,
    },
    Sigmoid {
        x: Buf,
        y: Buf,
    },
    Pool {
        channels: usize,
        hw: usize,
        x: Buf,
        y: Buf,
    },
    /// The ImageNet stem's max pool.
    MaxPool {
        shape: MaxPool2d,
        x: Buf,
        y: Buf,
    },
    Linear {
        shape: Linear,
        weight: usize,
        bias: usize,
        x: Buf,
        y: Buf,
    },
    Resize {
        window: Window,
        x: Buf,
        y: Buf,
    },
    Crop {
        window: Window,
        x: Buf,
        y: Buf,
    },
    L2Normalize {
        dim: usize,
        x: Buf,
        y: Buf,
    },
    /// Mean cross-entropy of `logits` against the labels; `dlogits` = scale·gradient.
    CrossEntropy {
        classes: usize,
        logits: Buf,
        dlogits: Buf,
        scale: f32,
        slot: LossSlot,
    },
    /// Mean BCE of `probs` against `target`; `dprobs` = scale·gradient. Losses of one slot add up.
    Bce {
        probs: Buf,
        target: Buf,
        dprobs: Buf,
        scale: f32,
        slot: LossSlot,
    },
    /// SupCon on normalised `features` (batch × dim); `dfeatures` = scale·gradient.
    SupCon {
        dim: usize,
        features: Buf,
        dfeatures: Buf,
        scale: f32,
        slot: LossSlot,
        scratch: Buf,
    },
    /// Adds `weight` (and `bias`) gradients when the layer's input `x` is given (it is read
    /// for nothing else, so an input-gradient-only pass does not keep it alive); writes dx
    /// when asked.
    ConvBackward {
        shape: Conv2d,
        weight: usize,
        bias: Option<usize>,
        x: Option<Buf>,
        dy: Buf,
        dx: Option<Buf>,
    },
    /// Training-mode BN backward; adds γ/β gradients when `weights`; `sums` is 2·c scratch.
    BnBackward {
        shape: BatchNorm2d,
        affine: usize,
        x: Buf,
        dy: Buf,
        dx: Buf,
        stats: Buf,
        sums: Buf,
        weights: bool,
    },
    /// dy ← dy·[y > 0] in place (y is the ReLU's output).
    ReluBackward {
        y: Buf,
        dy: Buf,
    },
    SigmoidBackward {
        y: Buf,
        dy: Buf,
        dx: Buf,
    },
    PoolBackward {
        channels: usize,
        hw: usize,
        dy: Buf,
        dx: Buf,
    },
    /// Overwrites `dx` with the max pool's input gradient; `x` is the pool's input, from
    /// which each window's winner is found again (no indices are kept).
    MaxPoolBackward {
        shape: MaxPool2d,
        x: Buf,
        dy: Buf,
        dx: Buf,
    },
    LinearBackward {
        shape: Linear,
        weight: usize,
        bias: usize,
        x: Buf,
        dy: Buf,
        dx: Option<Buf>,
    },
    /// Adds the gradient of a resize into the window of `dx`.
    ResizeBackward {
        window: Window,
        dy: Buf,
        dx: Buf,
    },
    L2NormalizeBackward {
        dim: usize,
        x: Buf,
        dy: Buf,
        dx: Buf,
    },
    /// y += x.
    Add {
        y: Buf,
        x: Buf,
    },
    /// One SGD step over the parameters `params` (offsets in the parameter region: with
    /// their gradients and momentum). The schedule emits one per module and parameter
    /// range, as soon as the module's gradients are final (see
    /// [`super::Plan::module_params`]).
    Sgd {
        params: Buf,
    },
    /// Sets loss-record slot `slot` to 1 if any gradient is NaN or infinite, else leaves
    /// its 0 (the last op of a training step: the host learns of a bad step from the loss
    /// record it receives anyway, without reading the gradients back).
    CheckGrads {
        slot: LossSlot,
    },
    /// Hands `buf` to the neighbouring pipeline stage `to` (see [`super::Plan::stage`]):
    /// a stage's last module's output, or the cascade gradient of its first module's input.
    Send {
        buf: Buf,
        to: Peer,
    },
    /// Overwrites `buf` with what the neighbouring stage `from` sends at the matching [`Op::Send`].
    Recv {
        buf: Buf,
        from: Peer,
    },
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
            Op::Zero { .. } => "zero",
            Op::Restore { .. } => "restore",
            Op::Conv { .. } => "conv",
            Op::BnTrain { .. } => "bn_train",
            Op::BnEval { .. } => "bn_eval",
            Op::BnApply { .. } => "bn_apply",
            Op::Relu { .. } => "relu",
            Op::AddRelu { .. } => "add_relu",
            Op::Sigmoid { .. } => "sigmoid",
            Op::Pool { .. } => "pool",
            Op::MaxPool { .. } => "max_pool",
            Op::Linear { .. } => "linear",
            Op::Resize { .. } => "resize",
            Op::Crop { .. } => "crop",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Bce { .. } => "bce",
            Op::SupCon { .. } => "supcon",
            Op::ConvBackward { .. } => "conv_backward",
            Op::BnBackward { .. } => "bn_backward",
            Op::ReluBackward { .. } => "relu_backward",
            Op::SigmoidBackward { .. } => "sigmoid_backward",
            Op::PoolBackward { .. } => "pool_backward",
            Op::MaxPoolBackward { .. } => "max_pool_backward",
            Op::LinearBackward { .. } => "linear_backward",
            Op::ResizeBackward { .. } => "resize_backward",
            Op::L2NormalizeBackward { .. } => "l2_normalize_backward",
            Op::Add { .. } => "add",
            Op::Sgd { .. } => "sgd",
            Op::CheckGrads { .. } => "check_grads",
            Op::Send { .. } => "send",
            Op::Recv { .. } => "recv",
        }
    }

    /// Calls `f(field, access, buffer)` for every activation-stack buffer the op touches
    /// (parameters, gradients and BN state live in their own regions and are not listed).
    pub fn for_each_buf(&self, mut f: impl FnMut(&'static str, Access, Buf)) {
        use Access::{Read as R, Update as U, Write as W};
        match *self {
            Op::BeginStep | Op::Sgd { .. } | Op::CheckGrads { .. } => {}
            Op::Zero { buf } | Op::Recv { buf, .. } => f("buf", W, buf),
            Op::Send { buf, .. } => f("buf", R, buf),
            Op::Relu { x } => f("x", U, x),
            Op::Restore { x, y, .. }
            | Op::Conv { x, y, .. }
            | Op::Sigmoid { x, y }
            | Op::Pool { x, y, .. }
            | Op::MaxPool { x, y, .. }
            | Op::Linear { x, y, .. }
            | Op::Resize { x, y, .. }
            | Op::Crop { x, y, .. }
            | Op::L2Normalize { x, y, .. } => {
                f("x", R, x);
                f("y", W, y);
            }
            Op::AddRelu { y, x } | Op::Add { y, x } => {
                f("x", R, x);
                f("y", U, y);
            }
            Op::BnTrain { x, y, stats, .. } | Op::BnEval { x, y, stats, .. } => {
                f("x", R, x);
                f("stats", W, stats);
                f("y", W, y);
            }
            Op::BnApply { x, y, stats, .. } => {
                f("x", R, x);
                f("stats", R, stats);
                f("y", W, y);
            }
            Op::CrossEntropy { logits, dlogits, .. } => {
                f("logits", R, logits);
                f("dlogits", W, dlogits);
            }
            Op::Bce { probs, target, dprobs, .. } => {
                f("probs", R, probs);
                f("target", R, target);
                f("dprobs", W, dprobs);
            }
            Op::SupCon { features, dfeatures, scratch, .. } => {
                f("features", R, features);
                f("scratch", W, scratch);
                f("dfeatures", W, dfeatures);
            }
            Op::ConvBackward { x, dy, dx, .. } => {
                if let Some(x) = x {
                    f("x", R, x);
                }
                f("dy", R, dy);
                if let Some(dx) = dx {
                    f("dx", W, dx);
                }
            }
            Op::LinearBackward { x, dy, dx, .. } => {
                f("x", R, x);
                f("dy", R, dy);
                if let Some(dx) = dx {
                    f("dx", W, dx);
                }
            }
            Op::MaxPoolBackward { x, dy, dx, .. } => {
                f("x", R, x);
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::BnBackward { x, dy, dx, stats, sums, .. } => {
                f("x", R, x);
                f("dy", R, dy);
                f("stats", R, stats);
                f("sums", W, sums);
                f("dx", W, dx);
            }
            Op::ReluBackward { y, dy } => {
                f("y", R, y);
                f("dy", U, dy);
            }
            Op::SigmoidBackward { y, dy, dx } | Op::L2NormalizeBackward { x: y, dy, dx, .. } => {
                f(if matches!(self, Op::SigmoidBackward { .. }) { "y" } else { "x" }, R, y);
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::PoolBackward { dy, dx, .. } => {
                f("dy", R, dy);
                f("dx", W, dx);
            }
            Op::ResizeBackward { dy, dx, .. } => {
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
        let mut at = |off: usize, len: usize| f(Buf { off, len });
        match *self {
            Op::Conv { shape, weight, bias, .. } | Op::ConvBackward { shape, weight, bias, .. } => {
                at(weight, shape.weight_len());
                if let Some(b) = bias {
                    at(b, shape.c_out);
                }
            }
            Op::BnTrain { shape, affine, .. }
            | Op::BnEval { shape, affine, .. }
            | Op::BnApply { shape, affine, .. }
            | Op::BnBackward { shape, affine, .. } => at(affine, 2 * shape.c),
            Op::Linear { shape, weight, bias, .. } | Op::LinearBackward { shape, weight, bias, .. } => {
                at(weight, shape.in_f * shape.out_f);
                at(bias, shape.out_f);
            }
            Op::Sgd { params } => f(params),
            _ => {}
        }
    }

    /// Moves every parameter offset (weights, biases, BN affines, the range of an
    /// [`Op::Sgd`]) through `param`, and every BN running-statistics offset through
    /// `state`: from the whole model's layout to a pipeline stage's.
    pub fn relocate(&mut self, param: impl Fn(usize) -> usize, state: impl Fn(usize) -> usize) {
        match self {
            Op::Conv { weight, bias, .. } | Op::ConvBackward { weight, bias, .. } => {
                *weight = param(*weight);
                *bias = bias.map(&param);
            }
            Op::BnTrain { affine, state: s, .. } | Op::BnEval { affine, state: s, .. } => {
                *affine = param(*affine);
                *s = state(*s);
            }
            Op::BnApply { affine, .. } | Op::BnBackward { affine, .. } => *affine = param(*affine),
            Op::Linear { weight, bias, .. } | Op::LinearBackward { weight, bias, .. } => {
                *weight = param(*weight);
                *bias = param(*bias);
            }
            Op::Sgd { params } => params.off = param(params.off),
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
