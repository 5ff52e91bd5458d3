//! The reference executor: runs a plan's ops on one thread over an arena the caller
//! hands it.
//!
//! The arena is any `AsMut<[f32]>` of at least [`Plan::arena_len`] floats: a `&mut` to a
//! `static` array on a microcontroller, a `Vec` on a host. Parameters, gradients,
//! momentum, BN running statistics, the activation stack and conv scratch are laid out
//! by the plan. Nothing here allocates.

use super::{
    check_eval, check_train, check_unlinked, init_params, region, region_span, ExecError, Executor, Held, Region,
    StepInput,
};
use crate::loss;
use crate::ops;
use crate::optim::sgd_step;
use crate::plan::{Buf, Op, Plan};
use crate::rng::Rng;
use core::fmt;

/// The single-threaded reference executor over an arena `A` it owns (or borrows).
#[derive(Debug)]
pub struct Reference<A> {
    layout: Plan,
    arena: A,
}

impl<A: AsRef<[f32]> + AsMut<[f32]>> Reference<A> {
    /// An executor for `layout` over `arena`, which must hold [`Plan::arena_len`] floats.
    pub fn new(layout: &Plan, arena: A) -> Result<Self, ExecError> {
        let have = arena.as_ref().len();
        if have < layout.arena_len() {
            return Err(ExecError::ArenaSize { need: layout.arena_len(), have });
        }
        Ok(Reference { layout: layout.clone(), arena })
    }

    /// Initialises parameters and BN statistics as the reference does and zeroes momentum.
    pub fn init(&mut self, rng: &mut Rng) {
        let a = self.arena.as_mut();
        let (p, st, m) = (
            region(&self.layout, Region::Params),
            region(&self.layout, Region::BnState),
            region(&self.layout, Region::Momentum),
        );
        let (params, rest) = a.split_at_mut(p.end());
        init_params(&self.layout, params, &mut rest[st.off - p.end()..st.end() - p.end()], rng);
        a[m.off..m.end()].fill(0.0);
    }

    /// The whole arena (the static-arena example and tests read it directly).
    pub fn arena(&self) -> &[f32] {
        self.arena.as_ref()
    }

    pub fn arena_mut(&mut self) -> &mut [f32] {
        self.arena.as_mut()
    }

    /// Gives the arena back.
    pub fn into_arena(self) -> A {
        self.arena
    }
}

impl<A> fmt::Display for Reference<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reference (1 thread)")
    }
}

impl<A: AsRef<[f32]> + AsMut<[f32]>> Executor for Reference<A> {
    type Error = ExecError;

    fn layout(&self) -> &Plan {
        &self.layout
    }

    fn held(&self) -> Held {
        Held { arena: 4 * self.layout.arena_len(), extra: 0 }
    }

    fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<(), ExecError> {
        let b = region_span(&self.layout, r, offset, src.len())?;
        self.arena.as_mut()[b.off..b.end()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<(), ExecError> {
        let b = region_span(&self.layout, r, offset, dst.len())?;
        dst.copy_from_slice(&self.arena.as_ref()[b.off..b.end()]);
        Ok(())
    }

    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<(), ExecError> {
        check_train(&self.layout, plan, input, losses)?;
        check_unlinked(plan)?;
        let arena = self.arena.as_mut();
        let inp = plan.input();
        arena[inp.off..inp.end()].copy_from_slice(input.x);
        let mut a = Arena::new(arena);
        plan.train_step(|op| a.run(plan, op, input, losses));
        Ok(())
    }

    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), ExecError> {
        check_eval(&self.layout, plan, x, logits)?;
        check_unlinked(plan)?;
        let arena = self.arena.as_mut();
        let inp = plan.input();
        arena[inp.off..inp.end()].copy_from_slice(x);
        let input = StepInput { x, labels: &[], lr: 0.0, sgd: Default::default() };
        let mut a = Arena::new(arena);
        plan.eval_step(|op| a.run(plan, op, &input, &mut []));
        let l = plan.logits();
        logits.copy_from_slice(&arena[l.off..l.end()]);
        Ok(())
    }
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
            Op::Restore { x, y, channels, hw, mean, std } => {
                ops::denormalize(channels, hw, n, &mean, &std, self.r(x), self.w(y))
            }
            Op::Conv { shape: s, weight: w, bias: b, x, y } => {
                let bias = b.map(|b| self.r(buf(b, s.c_out)));
                ops::conv2d_forward(&s, n, self.r(x), self.r(buf(w, s.weight_len())), bias, self.w(y), scratch);
            }
            Op::BnTrain { shape, affine, state, x, y, stats, updates } => {
                let c = shape.c;
                let st = self.w(stats);
                let (mean_invstd, raw) = st.split_at_mut(2 * c);
                let (sum, sq_dev) = raw.split_at_mut(c);
                let x = self.r(x);
                sum.fill(0.0);
                ops::batchnorm_accumulate_sum(&shape, n, x, sum);
                let mean = &mut mean_invstd[..c];
                ops::batchnorm_mean_from_sum(sum, n * shape.hw, mean);
                sq_dev.fill(0.0);
                ops::batchnorm_accumulate_sq_dev(&shape, n, x, mean, sq_dev);
                ops::batchnorm_update_running(
                    &shape,
                    n * shape.hw,
                    raw,
                    mean_invstd,
                    self.w(buf(state, 2 * c)),
                    updates,
                );
                let (mean, invstd) = mean_invstd.split_at(c);
                let gb = self.r(buf(affine, 2 * c));
                ops::batchnorm_forward(&shape, n, x, mean, invstd, &gb[..c], &gb[c..], self.w(y));
            }
            Op::BnEval { shape, affine, state, x, y, stats } => {
                let c = shape.c;
                let st = self.w(stats);
                let (mean, invstd) = st[..2 * c].split_at_mut(c);
                let rs = self.r(buf(state, 2 * c));
                ops::batchnorm_eval_stats(&rs[..c], &rs[c..], mean, invstd);
                let gb = self.r(buf(affine, 2 * c));
                ops::batchnorm_forward(&shape, n, self.r(x), mean, invstd, &gb[..c], &gb[c..], self.w(y));
            }
            Op::BnApply { shape, affine, x, y, stats } => {
                let c = shape.c;
                let (mean, invstd) = self.r(stats)[..2 * c].split_at(c);
                let gb = self.r(buf(affine, 2 * c));
                ops::batchnorm_forward(&shape, n, self.r(x), mean, invstd, &gb[..c], &gb[c..], self.w(y));
            }
            Op::Relu { x } => ops::relu_inplace(self.w(x)),
            Op::AddRelu { y, x } => {
                let y = self.w(y);
                ops::add_assign(y, self.r(x));
                ops::relu_inplace(y);
            }
            Op::Sigmoid { x, y } => ops::sigmoid_forward(self.r(x), self.w(y)),
            Op::Pool { channels, hw, x, y } => ops::global_avg_pool_forward(channels, hw, n, self.r(x), self.w(y)),
            Op::MaxPool { shape, x, y } => ops::maxpool_forward(&shape, n, self.r(x), self.w(y)),
            Op::Linear { shape, weight, bias, x, y } => ops::linear_forward(
                &shape,
                n,
                self.r(x),
                self.r(buf(weight, shape.weight_len())),
                self.r(buf(bias, shape.out_f)),
                self.w(y),
            ),
            Op::Resize { window, x, y } => ops::bilinear_forward(&window, n, self.r(x), self.w(y)),
            Op::Crop { window, x, y } => ops::crop_forward(&window, n, self.r(x), self.w(y)),
            Op::L2Normalize { dim, x, y } => loss::l2_normalize_forward(n, dim, self.r(x), self.w(y)),
            Op::CrossEntropy { classes, logits, dlogits, scale, slot } => {
                losses[slot] += loss::cross_entropy(n, classes, self.r(logits), inp.labels, n, scale, self.w(dlogits));
            }
            Op::Bce { probs, target, dprobs, scale, slot } => {
                losses[slot] += loss::bce(self.r(probs), self.r(target), probs.len, scale, self.w(dprobs));
            }
            Op::SupCon { dim, features, dfeatures, scale, slot, scratch } => {
                let t = loss::SUPCON_TEMPERATURE;
                losses[slot] +=
                    loss::supcon(n, dim, self.r(features), inp.labels, t, t, scale, self.w(dfeatures), self.w(scratch));
            }
            Op::ConvBackward { shape, weight, bias, x, dy, dx } => {
                if let Some(x) = x {
                    let dw = self.w(buf(plan.grad_of(weight), shape.weight_len()));
                    let db = bias.map(|bias| self.w(buf(plan.grad_of(bias), shape.c_out)));
                    ops::conv2d_accumulate_weight_grad(&shape, n, self.r(x), self.r(dy), dw, db, scratch);
                }
                if let Some(dx) = dx {
                    ops::conv2d_backward_input(
                        &shape,
                        n,
                        self.r(dy),
                        self.r(buf(weight, shape.weight_len())),
                        self.w(dx),
                        scratch,
                    );
                }
            }
            Op::BnBackward { shape, affine, x, dy, dx, stats, sums, weights } => {
                let c = shape.c;
                let st = self.r(stats);
                let (mean, invstd) = (&st[..c], &st[c..2 * c]);
                let sm = self.w(sums);
                sm.fill(0.0);
                let (sum_dy, sum_dy_xhat) = sm.split_at_mut(c);
                let (x, dy) = (self.r(x), self.r(dy));
                ops::batchnorm_accumulate_backward_sums(&shape, n, x, dy, mean, invstd, sum_dy, sum_dy_xhat);
                let gamma = self.r(buf(affine, c));
                ops::batchnorm_backward_input(
                    &shape,
                    n,
                    x,
                    dy,
                    mean,
                    invstd,
                    gamma,
                    sum_dy,
                    sum_dy_xhat,
                    n * shape.hw,
                    self.w(dx),
                );
                if weights {
                    let g = self.w(buf(plan.grad_of(affine), 2 * c));
                    ops::add_assign(&mut g[..c], sum_dy_xhat);
                    ops::add_assign(&mut g[c..], sum_dy);
                }
            }
            Op::ReluBackward { y, dy } => ops::relu_backward_inplace(self.r(y), self.w(dy)),
            Op::SigmoidBackward { y, dy, dx } => ops::sigmoid_backward(self.r(y), self.r(dy), self.w(dx)),
            Op::PoolBackward { channels, hw, dy, dx } => {
                ops::global_avg_pool_backward(channels, hw, n, self.r(dy), self.w(dx))
            }
            Op::MaxPoolBackward { shape, x, dy, dx } => {
                ops::maxpool_backward(&shape, n, self.r(x), self.r(dy), self.w(dx))
            }
            Op::LinearBackward { shape, weight, bias, x, dy, dx } => {
                let dw = self.w(buf(plan.grad_of(weight), shape.weight_len()));
                let db = self.w(buf(plan.grad_of(bias), shape.out_f));
                ops::linear_accumulate_weight_grad(&shape, n, self.r(x), self.r(dy), dw, db);
                if let Some(dx) = dx {
                    ops::linear_backward_input(
                        &shape,
                        n,
                        self.r(dy),
                        self.r(buf(weight, shape.weight_len())),
                        self.w(dx),
                    );
                }
            }
            Op::ResizeBackward { window, dy, dx } => {
                ops::bilinear_accumulate_backward(&window, n, self.r(dy), self.w(dx))
            }
            Op::L2NormalizeBackward { dim, x, dy, dx } => {
                loss::l2_normalize_backward(n, dim, self.r(x), self.r(dy), self.w(dx))
            }
            Op::Add { y, x } => ops::add_assign(self.w(y), self.r(x)),
            Op::CheckGrads { slot } => {
                if self.r(buf(p, p)).iter().any(|g| !g.is_finite()) {
                    losses[slot] = 1.0;
                }
            }
            Op::Sgd { params: r } => {
                let params = self.w(r);
                let grads = self.r(buf(p + r.off, r.len));
                let mom = self.w(buf(2 * p + r.off, r.len));
                sgd_step(&inp.sgd, inp.lr, params, grads, mom);
            }
            // Refused before the step (`check_unlinked`): this executor has no other stages.
            Op::Send { .. } | Op::Recv { .. } => {}
        }
    }
}
