//! The reference executor: runs a plan's ops on one thread over a caller-provided arena.
//!
//! The arena is one `&mut [f32]` of [`Plan::arena_len`] floats (a `static mut` array on a
//! microcontroller, a `Vec` on a host): parameters, gradients, momentum, BN running
//! statistics, the activation stack and conv scratch, laid out by the plan. Nothing
//! here allocates.

use crate::init;
use crate::loss;
use crate::ops::{self, BN_MOMENTUM};
use crate::optim::{sgd_step, Sgd};
use crate::plan::{Buf, Init, Op, Plan, TensorKind};
use crate::rng::Rng;
use core::fmt;

/// Why a step could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError {
    ArenaSize { need: usize, have: usize },
    InputSize { need: usize, have: usize },
    LossSlots { need: usize, have: usize },
    Label { index: usize, label: u32, classes: usize },
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExecError::ArenaSize { need, have } => {
                write!(f, "arena holds {have} floats, the plan needs {need}")
            }
            ExecError::InputSize { need, have } => {
                write!(f, "input has {have} values, the plan's batch needs {need}")
            }
            ExecError::LossSlots { need, have } => {
                write!(f, "loss record has {have} slots, the plan needs {need}")
            }
            ExecError::Label { index, label, classes } => {
                write!(f, "label {label} of sample {index} is out of range for {classes} classes")
            }
        }
    }
}

impl core::error::Error for ExecError {}

/// Everything one training step needs besides the arena.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// Normalised images, batch × C × H × W.
    pub x: &'a [f32],
    pub labels: &'a [u32],
    pub lr: f32,
    pub sgd: Sgd,
}

/// Initialises parameters and BN statistics as the reference does, in checkpoint order.
pub fn init_params(plan: &Plan, arena: &mut [f32], rng: &mut Rng) {
    let state = plan.state_off();
    plan.for_each_tensor(|t| {
        let off = if t.kind == TensorKind::Param { t.off } else { state + t.off };
        let w = &mut arena[off..off + t.len];
        match t.init {
            Init::KaimingConv { c_out, k } => init::kaiming_normal_conv(rng, w, c_out, k),
            Init::UniformFanIn(fan_in) => init::uniform_fan_in(rng, w, fan_in),
            Init::Ones => init::fill(w, 1.0),
            Init::Zeros => init::fill(w, 0.0),
        }
    });
    let m = plan.momentum_off();
    arena[m..m + plan.params].fill(0.0);
}

/// Checks an eval pass's inputs against the plan.
pub fn check_eval(plan: &Plan, arena: &[f32], x: &[f32]) -> Result<(), ExecError> {
    if arena.len() < plan.arena_len() {
        return Err(ExecError::ArenaSize { need: plan.arena_len(), have: arena.len() });
    }
    if x.len() != plan.input().len {
        return Err(ExecError::InputSize { need: plan.input().len, have: x.len() });
    }
    Ok(())
}

/// Checks a training step's inputs against the plan (every executor calls this first).
pub fn check_step(plan: &Plan, arena: &[f32], x: &[f32], labels: &[u32]) -> Result<(), ExecError> {
    check_eval(plan, arena, x)?;
    if labels.len() != plan.batch {
        return Err(ExecError::InputSize { need: plan.batch, have: labels.len() });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= plan.arch.classes) {
        return Err(ExecError::Label { index, label, classes: plan.arch.classes });
    }
    Ok(())
}

/// Runs one training step (forward, local losses, backward, SGD). `losses` receives each
/// loss slot's unweighted value (see [`crate::plan::LossKind`]).
pub fn train_step(plan: &Plan, arena: &mut [f32], input: &StepInput, losses: &mut [f32]) -> Result<(), ExecError> {
    check_step(plan, arena, input.x, input.labels)?;
    if losses.len() < plan.loss_slots() {
        return Err(ExecError::LossSlots { need: plan.loss_slots(), have: losses.len() });
    }
    let inp = plan.input();
    arena[inp.off..inp.end()].copy_from_slice(input.x);
    let mut a = Arena::new(arena);
    plan.train_step(|op| a.run(plan, op, input, losses));
    Ok(())
}

/// Runs an eval pass; returns the logits (batch × classes), a slice of the arena.
pub fn eval_step<'a>(plan: &Plan, arena: &'a mut [f32], x: &[f32]) -> Result<&'a [f32], ExecError> {
    let labels = [0u32; 0];
    check_eval(plan, arena, x)?;
    let inp = plan.input();
    arena[inp.off..inp.end()].copy_from_slice(x);
    let input = StepInput { x, labels: &labels, lr: 0.0, sgd: Sgd::default() };
    let mut a = Arena::new(arena);
    plan.eval_step(|op| a.run(plan, op, &input, &mut []));
    let l = plan.logits();
    Ok(&arena[l.off..l.end()])
}

/// Raw view of the arena so one op can read some buffers while writing others.
struct Arena<'a> {
    ptr: *mut f32,
    len: usize,
    _life: core::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Arena<'a> {
    fn new(a: &'a mut [f32]) -> Self {
        Arena { ptr: a.as_mut_ptr(), len: a.len(), _life: core::marker::PhantomData }
    }

    fn r(&self, b: Buf) -> &[f32] {
        assert!(b.end() <= self.len, "buffer outside the arena");
        // SAFETY: in bounds (checked); the plan never lets an op write a buffer it also reads.
        unsafe { core::slice::from_raw_parts(self.ptr.add(b.off), b.len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn w(&self, b: Buf) -> &mut [f32] {
        assert!(b.end() <= self.len, "buffer outside the arena");
        // SAFETY: in bounds (checked); within one op, written buffers overlap no other buffer.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(b.off), b.len) }
    }

    fn run(&mut self, plan: &Plan, op: &Op, inp: &StepInput, losses: &mut [f32]) {
        let n = plan.batch;
        let p = plan.params;
        let buf = |off: usize, len: usize| Buf { off, len };
        let scratch = self.w(plan.scratch());
        match *op {
            Op::BeginStep => {
                self.w(buf(p, p)).fill(0.0);
                losses.iter_mut().for_each(|l| *l = 0.0);
            }
            Op::Zero { buf } => self.w(buf).fill(0.0),
            Op::Restore { x, y, c, hw, mean, std } => {
                let (x, y) = (self.r(x), self.w(y));
                for (i, (xs, ys)) in x.chunks_exact(hw).zip(y.chunks_exact_mut(hw)).enumerate() {
                    let ch = i % c;
                    for (a, b) in xs.iter().zip(ys) {
                        *b = a * std[ch] + mean[ch];
                    }
                }
            }
            Op::Conv { s, w, b, x, y } => {
                let bias = b.map(|b| self.r(buf(b, s.c_out)));
                ops::conv2d_forward(&s, n, self.r(x), self.r(buf(w, s.weight_len())), bias, self.w(y), scratch);
            }
            Op::BnTrain { s, p: gp, state, x, y, stats, updates } => {
                let c = s.c;
                let st = self.w(stats);
                let (mean_invstd, raw) = st.split_at_mut(2 * c);
                let (sum, sq_dev) = raw.split_at_mut(c);
                let x = self.r(x);
                sum.fill(0.0);
                ops::batchnorm_accumulate_sum(&s, n, x, sum);
                let (mean, invstd) = mean_invstd.split_at_mut(c);
                ops::batchnorm_mean_from_sum(sum, n * s.hw, mean);
                sq_dev.fill(0.0);
                ops::batchnorm_accumulate_sq_dev(&s, n, x, mean, sq_dev);
                let rs = self.w(buf(state, 2 * c));
                let (rm, rv) = rs.split_at_mut(c);
                for _ in 0..updates {
                    mean.copy_from_slice(sum);
                    invstd.copy_from_slice(sq_dev);
                    ops::batchnorm_finalize(&s, n * s.hw, mean, invstd, rm, rv, BN_MOMENTUM);
                }
                let gb = self.r(buf(gp, 2 * c));
                ops::batchnorm_forward(&s, n, x, mean, invstd, &gb[..c], &gb[c..], self.w(y));
            }
            Op::BnEval { s, p: gp, state, x, y, stats } => {
                let c = s.c;
                let st = self.w(stats);
                let (mean, invstd) = st[..2 * c].split_at_mut(c);
                let rs = self.r(buf(state, 2 * c));
                ops::batchnorm_eval_stats(&rs[..c], &rs[c..], mean, invstd);
                let gb = self.r(buf(gp, 2 * c));
                ops::batchnorm_forward(&s, n, self.r(x), mean, invstd, &gb[..c], &gb[c..], self.w(y));
            }
            Op::Relu { x } => ops::relu_inplace(self.w(x)),
            Op::AddRelu { y, x } => {
                let y = self.w(y);
                ops::add_assign(y, self.r(x));
                ops::relu_inplace(y);
            }
            Op::Sigmoid { x, y } => ops::sigmoid_forward(self.r(x), self.w(y)),
            Op::Pool { c, hw, x, y } => ops::global_avg_pool_forward(c, hw, n, self.r(x), self.w(y)),
            Op::Linear { s, w, b, x, y } => ops::linear_forward(
                &s,
                n,
                self.r(x),
                self.r(buf(w, s.weight_len())),
                self.r(buf(b, s.out_f)),
                self.w(y),
            ),
            Op::Resize { win, x, y } => ops::bilinear_forward(&win, n, self.r(x), self.w(y)),
            Op::Crop { win, x, y } => ops::crop_forward(&win, n, self.r(x), self.w(y)),
            Op::L2Normalize { d, x, y } => loss::l2_normalize_forward(n, d, self.r(x), self.w(y)),
            Op::CrossEntropy { classes, logits, dlogits, scale, slot } => {
                losses[slot] += loss::cross_entropy(n, classes, self.r(logits), inp.labels, n, scale, self.w(dlogits));
            }
            Op::Bce { p: pr, t, dp, scale, slot } => {
                losses[slot] += loss::bce(self.r(pr), self.r(t), pr.len, scale, self.w(dp));
            }
            Op::SupCon { d, f, df, scale, slot, scratch } => {
                let t = loss::SUPCON_TEMPERATURE;
                losses[slot] += loss::supcon(n, d, self.r(f), inp.labels, t, t, scale, self.w(df), self.w(scratch));
            }
            Op::ConvBackward { s, w, b, x, dy, dx, weights } => {
                if weights {
                    let dw = self.w(buf(p + w, s.weight_len()));
                    let db = b.map(|b| self.w(buf(p + b, s.c_out)));
                    ops::conv2d_accumulate_weight_grad(&s, n, self.r(x), self.r(dy), dw, db, scratch);
                }
                if let Some(dx) = dx {
                    ops::conv2d_backward_input(&s, n, self.r(dy), self.r(buf(w, s.weight_len())), self.w(dx), scratch);
                }
            }
            Op::BnBackward { s, p: gp, x, dy, dx, stats, sums, weights } => {
                let c = s.c;
                let st = self.r(stats);
                let (mean, invstd) = (&st[..c], &st[c..2 * c]);
                let sm = self.w(sums);
                sm.fill(0.0);
                let (sum_dy, sum_dy_xhat) = sm.split_at_mut(c);
                let (x, dy) = (self.r(x), self.r(dy));
                ops::batchnorm_accumulate_backward_sums(&s, n, x, dy, mean, invstd, sum_dy, sum_dy_xhat);
                let gamma = self.r(buf(gp, c));
                ops::batchnorm_backward_input(
                    &s,
                    n,
                    x,
                    dy,
                    mean,
                    invstd,
                    gamma,
                    sum_dy,
                    sum_dy_xhat,
                    n * s.hw,
                    self.w(dx),
                );
                if weights {
                    let g = self.w(buf(p + gp, 2 * c));
                    ops::add_assign(&mut g[..c], sum_dy_xhat);
                    ops::add_assign(&mut g[c..], sum_dy);
                }
            }
            Op::ReluBackward { y, dy } => ops::relu_backward_inplace(self.r(y), self.w(dy)),
            Op::SigmoidBackward { y, dy, dx } => ops::sigmoid_backward(self.r(y), self.r(dy), self.w(dx)),
            Op::PoolBackward { c, hw, dy, dx } => ops::global_avg_pool_backward(c, hw, n, self.r(dy), self.w(dx)),
            Op::LinearBackward { s, w, b, x, dy, dx } => {
                let dw = self.w(buf(p + w, s.weight_len()));
                let db = self.w(buf(p + b, s.out_f));
                ops::linear_accumulate_weight_grad(&s, n, self.r(x), self.r(dy), dw, db);
                if let Some(dx) = dx {
                    ops::linear_backward_input(&s, n, self.r(dy), self.r(buf(w, s.weight_len())), self.w(dx));
                }
            }
            Op::ResizeBackward { win, dy, dx } => ops::bilinear_accumulate_backward(&win, n, self.r(dy), self.w(dx)),
            Op::L2NormalizeBackward { d, x, dy, dx } => {
                loss::l2_normalize_backward(n, d, self.r(x), self.r(dy), self.w(dx))
            }
            Op::Add { y, x } => ops::add_assign(self.w(y), self.r(x)),
            Op::Sgd => {
                let params = self.w(buf(0, p));
                let grads = self.r(buf(p, p));
                let mom = self.w(buf(2 * p, p));
                sgd_step(&inp.sgd, inp.lr, params, grads, mom);
            }
        }
    }
}
