//! The op interface every executor implements: one method per op of [`Op`], and one
//! for the runs of ops that a backend may compute as one pass ([`Run`]).
//!
//! A plan's ops reach a backend only through [`super::dispatch`], the one place that
//! matches on [`Op`] to run a step. Adding an op is one variant (with its struct in
//! [`crate::plan::op`]), one method here, one arm in the dispatcher and one
//! implementation per backend.
//!
//! A backend holds what a step reads besides the ops (its arena, the labels, the
//! learning rate, where losses go); the methods take the op's own fields.

use crate::plan::{op, Access, Op};

/// What a BN's output goes through next, when that op only transforms it: a fusing
/// backend applies it to each image straight after the image's BN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `Relu { x: bn.y }`.
    Relu(op::Relu),
    /// `AddRelu` with the BN's output as its `y` (a residual added into it) or as its `x`
    /// (a shortcut's BN output added into the block's output).
    AddRelu(op::AddRelu),
}

impl Epilogue {
    /// The epilogue `next` makes of a BN that writes `bn_y`, if it is one.
    pub fn after(bn_y: op::Buf, next: Option<&Op>) -> Option<Epilogue> {
        match next {
            Some(&Op::Relu(r)) if r.x == bn_y => Some(Epilogue::Relu(r)),
            Some(&Op::AddRelu(a)) if a.y == bn_y || a.x == bn_y => Some(Epilogue::AddRelu(a)),
            _ => None,
        }
    }

    pub fn op(self) -> Op {
        match self {
            Epilogue::Relu(r) => Op::Relu(r),
            Epilogue::AddRelu(a) => Op::AddRelu(a),
        }
    }
}

/// A run of consecutive ops that a backend may compute in one pass over the batch
/// (while each image is in cache). Whatever a backend does with it, every element must
/// get the operations of the ops one by one, in their order, so the bits stay those of
/// the unfused ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Run {
    /// Eval: a conv, the BN over its output, and the BN's epilogue if it has one.
    ConvBnEval { conv: op::Conv, bn: op::BnEval, then: Option<Epilogue> },
    /// Training's BN (statistics, then apply) and its epilogue.
    BnTrain { bn: op::BnTrain, then: Epilogue },
    /// A recomputed BN apply and its epilogue.
    BnApply { bn: op::BnApply, then: Epilogue },
    /// A bias-free conv's backward that writes `dx`, then the ReLU backward masking `dx`.
    ConvBackwardRelu { conv: op::ConvBackward, relu: op::ReluBackward },
    /// A ReLU backward masking `dy`, then the BN backward reading that `dy`.
    ReluBackwardBn { relu: op::ReluBackward, bn: op::BnBackward },
}

impl Run {
    /// Whether the run may go chunk by chunk of images with chunks in parallel, as the
    /// CPU executor runs it: no op of it writes where an earlier op of it reads, unless
    /// exactly on that buffer (each image's value then replaces its own, after the
    /// earlier op read it). Otherwise one chunk's write could land on another chunk's
    /// input before that chunk read it: eval's plan puts a bottleneck's 1×1 conv → BN
    /// output at the start of the conv's four times wider input, where the ops one by
    /// one (the conv over the whole batch, then the BN) are right. A ReLU backward → BN
    /// backward is always safe: the BN's input gradient needs the batch's sums, which
    /// need every image's masked gradient, so every read of the ReLU's comes before the
    /// first write of the BN's.
    pub fn chunk_safe(&self) -> bool {
        if let Run::ReluBackwardBn { .. } = self {
            return true;
        }
        let (ops, len) = self.ops();
        let ops = &ops[..len];
        let mut safe = true;
        for (j, later) in ops.iter().enumerate() {
            later.for_each_buf(|_, access, written| {
                if access == Access::Read {
                    return;
                }
                for earlier in &ops[..j] {
                    earlier.for_each_buf(|_, a, read| {
                        safe &= a == Access::Write || read == written || !read.overlaps(&written);
                    });
                }
            });
        }
        safe
    }

    /// The run's ops in order, and how many there are.
    pub fn ops(&self) -> ([Op; 3], usize) {
        let none = Op::BeginStep;
        match *self {
            Run::ConvBnEval { conv, bn, then: Some(t) } => ([Op::Conv(conv), Op::BnEval(bn), t.op()], 3),
            Run::ConvBnEval { conv, bn, then: None } => ([Op::Conv(conv), Op::BnEval(bn), none], 2),
            Run::BnTrain { bn, then } => ([Op::BnTrain(bn), then.op(), none], 2),
            Run::BnApply { bn, then } => ([Op::BnApply(bn), then.op(), none], 2),
            Run::ConvBackwardRelu { conv, relu } => ([Op::ConvBackward(conv), Op::ReluBackward(relu), none], 2),
            Run::ReluBackwardBn { relu, bn } => ([Op::ReluBackward(relu), Op::BnBackward(bn), none], 2),
        }
    }
}

/// Runs ops; [`super::dispatch`] calls these methods (see the `backend` module docs).
pub trait Backend {
    type Error;

    /// Told before op `index` of the step runs alone (not before a [`Run`]: its
    /// [`Backend::run`] is told): a backend that names ops in its diagnostics, or
    /// advances work running in the background between ops, listens; nothing by default.
    fn begin_op(&mut self, _index: usize, _op: &Op) {}

    /// Runs the ops of `run` (the first is op `index`) as one pass, if this backend
    /// fuses that kind of run; by default, and for the kinds it does not fuse, one by
    /// one ([`super::run_unfused`]).
    fn run(&mut self, index: usize, run: &Run) -> Result<(), Self::Error>
    where
        Self: Sized,
    {
        super::run_unfused(self, index, run)
    }

    /// Zero the gradient region and the loss record.
    fn begin_step(&mut self) -> Result<(), Self::Error>;
    fn zero(&mut self, a: &op::Zero) -> Result<(), Self::Error>;
    fn restore(&mut self, a: &op::Restore) -> Result<(), Self::Error>;
    fn conv(&mut self, a: &op::Conv) -> Result<(), Self::Error>;
    fn bn_train(&mut self, a: &op::BnTrain) -> Result<(), Self::Error>;
    fn bn_eval(&mut self, a: &op::BnEval) -> Result<(), Self::Error>;
    fn bn_apply(&mut self, a: &op::BnApply) -> Result<(), Self::Error>;
    fn relu(&mut self, a: &op::Relu) -> Result<(), Self::Error>;
    fn add_relu(&mut self, a: &op::AddRelu) -> Result<(), Self::Error>;
    fn sigmoid(&mut self, a: &op::Sigmoid) -> Result<(), Self::Error>;
    fn pool(&mut self, a: &op::Pool) -> Result<(), Self::Error>;
    fn max_pool(&mut self, a: &op::MaxPool) -> Result<(), Self::Error>;
    fn linear(&mut self, a: &op::Linear) -> Result<(), Self::Error>;
    fn resize(&mut self, a: &op::Resize) -> Result<(), Self::Error>;
    fn crop(&mut self, a: &op::Crop) -> Result<(), Self::Error>;
    fn l2_normalize(&mut self, a: &op::L2Normalize) -> Result<(), Self::Error>;
    fn cross_entropy(&mut self, a: &op::CrossEntropy) -> Result<(), Self::Error>;
    fn bce(&mut self, a: &op::Bce) -> Result<(), Self::Error>;
    fn supcon(&mut self, a: &op::SupCon) -> Result<(), Self::Error>;
    fn conv_backward(&mut self, a: &op::ConvBackward) -> Result<(), Self::Error>;
    fn bn_backward(&mut self, a: &op::BnBackward) -> Result<(), Self::Error>;
    fn relu_backward(&mut self, a: &op::ReluBackward) -> Result<(), Self::Error>;
    fn sigmoid_backward(&mut self, a: &op::SigmoidBackward) -> Result<(), Self::Error>;
    fn pool_backward(&mut self, a: &op::PoolBackward) -> Result<(), Self::Error>;
    fn max_pool_backward(&mut self, a: &op::MaxPoolBackward) -> Result<(), Self::Error>;
    fn linear_backward(&mut self, a: &op::LinearBackward) -> Result<(), Self::Error>;
    fn resize_backward(&mut self, a: &op::ResizeBackward) -> Result<(), Self::Error>;
    fn l2_normalize_backward(&mut self, a: &op::L2NormalizeBackward) -> Result<(), Self::Error>;
    fn add(&mut self, a: &op::Add) -> Result<(), Self::Error>;
    /// Keeps an `f32` value in 16 bits (rounding the `f32` copy too).
    fn narrow(&mut self, a: &op::Narrow) -> Result<(), Self::Error>;
    /// Reads a 16-bit value back as `f32`.
    fn widen(&mut self, a: &op::Widen) -> Result<(), Self::Error>;
    /// Module `a.module`'s gradients are final and nothing later in the step reads its
    /// parameters: called right before its update ([`Backend::sgd`]). The seam where a
    /// multi-process job reduces the module's gradients (at `plan.grad_of(a.params.off)`,
    /// `a.params.len` of them) while the modules below still compute; nothing by default.
    fn module_done(&mut self, _a: &op::Sgd) -> Result<(), Self::Error> {
        Ok(())
    }
    /// One module's update.
    fn sgd(&mut self, a: &op::Sgd) -> Result<(), Self::Error>;
    fn check_grads(&mut self, a: &op::CheckGrads) -> Result<(), Self::Error>;
    fn send(&mut self, a: &op::Send) -> Result<(), Self::Error>;
    fn recv(&mut self, a: &op::Recv) -> Result<(), Self::Error>;
}
