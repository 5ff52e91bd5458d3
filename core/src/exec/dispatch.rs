//! The dispatcher: the one place that turns a plan's ops into [`Backend`] calls.
//!
//! The schedule emits ops one at a time (it allocates nothing, so there is no list to
//! look ahead in). The dispatcher keeps a window of the last three, recognises the
//! [`Run`]s at its head and hands each to [`Backend::run`]; every other op goes to its
//! own method through [`run_op`].

use super::backend::{Backend, Epilogue, Run};
use crate::plan::{Op, Plan};

/// Runs the ops of `plan`'s training step on `backend`, stopping at the first error.
pub fn train_step<B: Backend>(plan: &Plan, backend: &mut B) -> Result<(), B::Error> {
    let mut d = Dispatcher::new(backend);
    plan.train_step(|op| d.push(op));
    d.finish()
}

/// Runs the ops of `plan`'s evaluation pass on `backend`, stopping at the first error.
pub fn eval_step<B: Backend>(plan: &Plan, backend: &mut B) -> Result<(), B::Error> {
    let mut d = Dispatcher::new(backend);
    plan.eval_step(|op| d.push(op));
    d.finish()
}

/// Runs `ops` (any stream of ops: a recorded step, a test's hand-made one) on `backend`,
/// stopping at the first error.
pub fn run_ops<'o, B: Backend>(ops: impl IntoIterator<Item = &'o Op>, backend: &mut B) -> Result<(), B::Error> {
    let mut d = Dispatcher::new(backend);
    ops.into_iter().for_each(|op| d.push(op));
    d.finish()
}

/// Runs `run`'s ops one by one (op `index` first): what [`Backend::run`] does unless
/// the backend fuses that kind of run.
pub fn run_unfused<B: Backend>(backend: &mut B, index: usize, run: &Run) -> Result<(), B::Error> {
    let (ops, len) = run.ops();
    for (i, op) in ops[..len].iter().enumerate() {
        backend.begin_op(index + i, op);
        run_op(backend, op)?;
    }
    Ok(())
}

/// Runs one op on its own method.
pub fn run_op<B: Backend>(b: &mut B, op: &Op) -> Result<(), B::Error> {
    match op {
        Op::BeginStep => b.begin_step(),
        Op::Zero(a) => b.zero(a),
        Op::Restore(a) => b.restore(a),
        Op::Conv(a) => b.conv(a),
        Op::BnTrain(a) => b.bn_train(a),
        Op::BnEval(a) => b.bn_eval(a),
        Op::BnApply(a) => b.bn_apply(a),
        Op::Relu(a) => b.relu(a),
        Op::AddRelu(a) => b.add_relu(a),
        Op::Sigmoid(a) => b.sigmoid(a),
        Op::Pool(a) => b.pool(a),
        Op::MaxPool(a) => b.max_pool(a),
        Op::Linear(a) => b.linear(a),
        Op::Resize(a) => b.resize(a),
        Op::Crop(a) => b.crop(a),
        Op::L2Normalize(a) => b.l2_normalize(a),
        Op::CrossEntropy(a) => b.cross_entropy(a),
        Op::Bce(a) => b.bce(a),
        Op::SupCon(a) => b.supcon(a),
        Op::ConvBackward(a) => b.conv_backward(a),
        Op::BnBackward(a) => b.bn_backward(a),
        Op::ReluBackward(a) => b.relu_backward(a),
        Op::SigmoidBackward(a) => b.sigmoid_backward(a),
        Op::PoolBackward(a) => b.pool_backward(a),
        Op::MaxPoolBackward(a) => b.max_pool_backward(a),
        Op::LinearBackward(a) => b.linear_backward(a),
        Op::ResizeBackward(a) => b.resize_backward(a),
        Op::L2NormalizeBackward(a) => b.l2_normalize_backward(a),
        Op::Add(a) => b.add(a),
        Op::Narrow(a) => b.narrow(a),
        Op::Widen(a) => b.widen(a),
        Op::Sgd(a) => {
            b.module_done(a)?;
            b.sgd(a)
        }
        Op::CheckGrads(a) => b.check_grads(a),
        Op::Send(a) => b.send(a),
        Op::Recv(a) => b.recv(a),
    }
}

/// What the head of the window is.
// A short-lived value on the stack (and no allocator to box it in): size does not matter.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// Could start a run: wait for the next op.
    Wait,
    /// A run of this many ops.
    Run(Run, usize),
    /// An op on its own.
    Single,
}

/// The head of `w` (the ops received and not yet run); `end`: no op will follow.
fn head(w: &[Op], end: bool) -> Head {
    let short = |need: usize| w.len() < need && !end;
    match w[0] {
        Op::Conv(conv) => match w.get(1) {
            _ if short(2) => Head::Wait,
            Some(&Op::BnEval(bn)) if bn.x == conv.y => match Epilogue::after(bn.y, w.get(2)) {
                _ if short(3) => Head::Wait,
                Some(t) => Head::Run(Run::ConvBnEval { conv, bn, then: Some(t) }, 3),
                None => Head::Run(Run::ConvBnEval { conv, bn, then: None }, 2),
            },
            _ => Head::Single,
        },
        Op::BnTrain(bn) => match Epilogue::after(bn.y, w.get(1)) {
            _ if short(2) => Head::Wait,
            Some(then) => Head::Run(Run::BnTrain { bn, then }, 2),
            None => Head::Single,
        },
        Op::BnApply(bn) => match Epilogue::after(bn.y, w.get(1)) {
            _ if short(2) => Head::Wait,
            Some(then) => Head::Run(Run::BnApply { bn, then }, 2),
            None => Head::Single,
        },
        Op::ConvBackward(conv) if conv.bias.is_none() && conv.dx.is_some() => match w.get(1) {
            _ if short(2) => Head::Wait,
            Some(&Op::ReluBackward(relu)) if Some(relu.dy) == conv.dx => {
                Head::Run(Run::ConvBackwardRelu { conv, relu }, 2)
            }
            _ => Head::Single,
        },
        Op::ReluBackward(relu) => match w.get(1) {
            _ if short(2) => Head::Wait,
            Some(&Op::BnBackward(bn)) if bn.dy == relu.dy => Head::Run(Run::ReluBackwardBn { relu, bn }, 2),
            _ => Head::Single,
        },
        _ => Head::Single,
    }
}

/// The window over the op stream, and the first error (the ops after it are skipped).
struct Dispatcher<'b, B: Backend> {
    backend: &'b mut B,
    window: [Op; 3],
    len: usize,
    /// Index in the step of `window[0]`.
    index: usize,
    result: Result<(), B::Error>,
}

impl<'b, B: Backend> Dispatcher<'b, B> {
    fn new(backend: &'b mut B) -> Self {
        Dispatcher { backend, window: [Op::BeginStep; 3], len: 0, index: 0, result: Ok(()) }
    }

    fn push(&mut self, op: &Op) {
        if self.result.is_err() {
            return;
        }
        self.window[self.len] = *op;
        self.len += 1;
        self.drain(false);
    }

    fn finish(mut self) -> Result<(), B::Error> {
        if self.result.is_ok() {
            self.drain(true);
        }
        self.result
    }

    /// Runs what the window's head allows.
    fn drain(&mut self, end: bool) {
        while self.len > 0 {
            let w = &self.window[..self.len];
            let (result, taken) = match head(w, end) {
                Head::Wait => return,
                Head::Run(run, taken) => (self.backend.run(self.index, &run), taken),
                Head::Single => {
                    self.backend.begin_op(self.index, &w[0]);
                    (run_op(self.backend, &w[0]), 1)
                }
            };
            self.window.copy_within(taken..self.len, 0);
            self.len -= taken;
            self.index += taken;
            if result.is_err() {
                self.result = result;
                return;
            }
        }
    }
}
