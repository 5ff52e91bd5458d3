//! The reference executor: runs a plan's ops on one thread over an arena the caller
//! hands it.
//!
//! The arena is any `AsMut<[f32]>` of at least [`Plan::arena_len`] floats: a `&mut` to a
//! `static` array on a microcontroller, a `Vec` on a host. Parameters, gradients,
//! momentum, BN running statistics, the activation stack and conv scratch are laid out
//! by the plan. Nothing here allocates.

use super::{
    check_eval, check_train, check_unlinked, dispatch, init_params, region, region_span, Backend, ExecError, Executor,
    Held, Region, StepInput,
};
use crate::loss;
use crate::ops;
use crate::optim::sgd_step;
use crate::plan::{op, Buf, Elem, Plan};
use crate::rng::Rng;
use core::convert::Infallible;
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
        let Ok(()) = dispatch::train_step(plan, &mut Step::new(plan, arena, input, losses));
        Ok(())
    }

    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), ExecError> {
        check_eval(&self.layout, plan, x, logits)?;
        check_unlinked(plan)?;
        let arena = self.arena.as_mut();
        let inp = plan.input();
        arena[inp.off..inp.end()].copy_from_slice(x);
        let input = StepInput { x, labels: &[], lr: 0.0, sgd: Default::default() };
        let Ok(()) = dispatch::eval_step(plan, &mut Step::new(plan, arena, &input, &mut []));
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

    /// An `f32` view of an `f32` buffer.
    fn r(&self, b: Buf) -> &[f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        assert!(b.end() <= self.len, "buffer outside the arena");
        // SAFETY: in bounds (checked); the plan never lets an op write a buffer it also reads.
        unsafe { core::slice::from_raw_parts(self.ptr.add(b.off), b.len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn w(&self, b: Buf) -> &mut [f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        assert!(b.end() <= self.len, "buffer outside the arena");
        // SAFETY: in bounds (checked); within one op, written buffers overlap no other buffer.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(b.off), b.len) }
    }

    /// The bits of a 16-bit (bf16 or f16) buffer.
    fn r16(&self, b: Buf) -> &[u16] {
        self.w16(b)
    }

    #[allow(clippy::mut_from_ref)]
    fn w16(&self, b: Buf) -> &mut [u16] {
        assert!(b.elem.half().is_some(), "a 16-bit view of {b:?}");
        assert!(b.end() <= self.len, "buffer outside the arena");
        // SAFETY: in bounds (checked: `len` u16s fit in `slots()` f32s from `off`; u16 needs
        // less alignment than f32); written buffers overlap no other buffer of the op.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(b.off).cast::<u16>(), b.len) }
    }
}

/// One step on the arena: the [`Backend`] of the reference executor.
struct Step<'a> {
    plan: &'a Plan,
    a: Arena<'a>,
    input: &'a StepInput<'a>,
    losses: &'a mut [f32],
}

/// `len` floats at `off`.
const fn buf(off: usize, len: usize) -> Buf {
    Buf::f32(off, len)
}

impl<'a> Step<'a> {
    fn new(plan: &'a Plan, arena: &'a mut [f32], input: &'a StepInput<'a>, losses: &'a mut [f32]) -> Self {
        Step { plan, a: Arena::new(arena), input, losses }
    }

    fn r(&self, b: Buf) -> &[f32] {
        self.a.r(b)
    }

    #[allow(clippy::mut_from_ref)]
    fn w(&self, b: Buf) -> &mut [f32] {
        self.a.w(b)
    }

    /// Parameter floats `off..off + len`.
    fn param(&self, off: usize, len: usize) -> &[f32] {
        self.a.r(buf(off, len))
    }

    /// The gradient of parameter floats `off..off + len`.
    #[allow(clippy::mut_from_ref)]
    fn grad(&self, off: usize, len: usize) -> &mut [f32] {
        self.a.w(buf(self.plan.grad_of(off), len))
    }

    #[allow(clippy::mut_from_ref)]
    fn scratch(&self) -> &mut [f32] {
        self.a.w(self.plan.scratch())
    }

    /// BN forward from the mean and invstd at the start of `stats`.
    fn bn_forward(&self, shape: &ops::BatchNorm2d, affine: usize, x: Buf, y: Buf, stats: Buf) {
        let c = shape.c;
        let (mean, invstd) = self.r(stats)[..2 * c].split_at(c);
        let gb = self.param(affine, 2 * c);
        ops::batchnorm_forward(shape, self.plan.batch, self.r(x), mean, invstd, &gb[..c], &gb[c..], self.w(y));
    }
}

impl Backend for Step<'_> {
    type Error = Infallible;

    fn begin_step(&mut self) -> Result<(), Infallible> {
        let p = self.plan.params;
        self.w(buf(p, p)).fill(0.0);
        self.losses.fill(0.0);
        Ok(())
    }

    fn zero(&mut self, a: &op::Zero) -> Result<(), Infallible> {
        self.w(a.buf).fill(0.0);
        Ok(())
    }

    fn restore(&mut self, a: &op::Restore) -> Result<(), Infallible> {
        ops::denormalize(a.channels, a.hw, self.plan.batch, &a.mean, &a.std, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn conv(&mut self, a: &op::Conv) -> Result<(), Infallible> {
        let s = &a.shape;
        let bias = a.bias.map(|b| self.param(b, s.c_out));
        let w = self.param(a.weight, s.weight_len());
        ops::conv2d_forward(s, self.plan.batch, self.r(a.x), w, bias, self.w(a.y), self.scratch());
        Ok(())
    }

    fn bn_train(&mut self, a: &op::BnTrain) -> Result<(), Infallible> {
        let (shape, n, c) = (&a.shape, self.plan.batch, a.shape.c);
        let st = self.w(a.stats);
        let (mean_invstd, raw) = st.split_at_mut(2 * c);
        let (sum, sq_dev) = raw.split_at_mut(c);
        let x = self.r(a.x);
        sum.fill(0.0);
        ops::batchnorm_accumulate_sum(shape, n, x, sum);
        let mean = &mut mean_invstd[..c];
        ops::batchnorm_mean_from_sum(sum, n * shape.hw, mean);
        sq_dev.fill(0.0);
        ops::batchnorm_accumulate_sq_dev(shape, n, x, mean, sq_dev);
        let running = self.w(buf(a.state, 2 * c));
        ops::batchnorm_update_running(shape, n * shape.hw, raw, mean_invstd, running, a.updates);
        self.bn_forward(shape, a.affine, a.x, a.y, a.stats);
        Ok(())
    }

    fn bn_eval(&mut self, a: &op::BnEval) -> Result<(), Infallible> {
        let c = a.shape.c;
        let (mean, invstd) = self.w(a.stats)[..2 * c].split_at_mut(c);
        let rs = self.r(buf(a.state, 2 * c));
        ops::batchnorm_eval_stats(&rs[..c], &rs[c..], mean, invstd);
        self.bn_forward(&a.shape, a.affine, a.x, a.y, a.stats);
        Ok(())
    }

    fn bn_apply(&mut self, a: &op::BnApply) -> Result<(), Infallible> {
        self.bn_forward(&a.shape, a.affine, a.x, a.y, a.stats);
        Ok(())
    }

    fn relu(&mut self, a: &op::Relu) -> Result<(), Infallible> {
        ops::relu_inplace(self.w(a.x));
        Ok(())
    }

    fn add_relu(&mut self, a: &op::AddRelu) -> Result<(), Infallible> {
        let y = self.w(a.y);
        ops::add_assign(y, self.r(a.x));
        ops::relu_inplace(y);
        Ok(())
    }

    fn sigmoid(&mut self, a: &op::Sigmoid) -> Result<(), Infallible> {
        ops::sigmoid_forward(self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn pool(&mut self, a: &op::Pool) -> Result<(), Infallible> {
        ops::global_avg_pool_forward(a.channels, a.hw, self.plan.batch, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn max_pool(&mut self, a: &op::MaxPool) -> Result<(), Infallible> {
        ops::maxpool_forward(&a.shape, self.plan.batch, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn linear(&mut self, a: &op::Linear) -> Result<(), Infallible> {
        let s = &a.shape;
        let (w, b) = (self.param(a.weight, s.weight_len()), self.param(a.bias, s.out_f));
        ops::linear_forward(s, self.plan.batch, self.r(a.x), w, b, self.w(a.y));
        Ok(())
    }

    fn resize(&mut self, a: &op::Resize) -> Result<(), Infallible> {
        ops::bilinear_forward(&a.window, self.plan.batch, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn crop(&mut self, a: &op::Crop) -> Result<(), Infallible> {
        ops::crop_forward(&a.window, self.plan.batch, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn l2_normalize(&mut self, a: &op::L2Normalize) -> Result<(), Infallible> {
        loss::l2_normalize_forward(self.plan.batch, a.dim, self.r(a.x), self.w(a.y));
        Ok(())
    }

    fn cross_entropy(&mut self, a: &op::CrossEntropy) -> Result<(), Infallible> {
        let n = self.plan.batch;
        let labels = self.input.labels;
        let l = loss::cross_entropy(n, a.classes, self.r(a.logits), labels, n, a.scale, self.w(a.dlogits));
        self.losses[a.slot] += l;
        Ok(())
    }

    fn bce(&mut self, a: &op::Bce) -> Result<(), Infallible> {
        self.losses[a.slot] += loss::bce(self.r(a.probs), self.r(a.target), a.probs.len, a.scale, self.w(a.dprobs));
        Ok(())
    }

    fn supcon(&mut self, a: &op::SupCon) -> Result<(), Infallible> {
        let (n, t) = (self.plan.batch, loss::SUPCON_TEMPERATURE);
        let (f, labels) = (self.r(a.features), self.input.labels);
        self.losses[a.slot] += loss::supcon(n, a.dim, f, labels, t, t, a.scale, self.w(a.dfeatures), self.w(a.scratch));
        Ok(())
    }

    fn conv_backward(&mut self, a: &op::ConvBackward) -> Result<(), Infallible> {
        let (s, n) = (&a.shape, self.plan.batch);
        if let Some(x) = a.x {
            let dw = self.grad(a.weight, s.weight_len());
            let db = a.bias.map(|bias| self.grad(bias, s.c_out));
            ops::conv2d_accumulate_weight_grad(s, n, self.r(x), self.r(a.dy), dw, db, self.scratch());
        }
        if let Some(dx) = a.dx {
            let w = self.param(a.weight, s.weight_len());
            ops::conv2d_backward_input(s, n, self.r(a.dy), w, self.w(dx), self.scratch());
        }
        Ok(())
    }

    fn bn_backward(&mut self, a: &op::BnBackward) -> Result<(), Infallible> {
        let (shape, n, c) = (&a.shape, self.plan.batch, a.shape.c);
        let st = self.r(a.stats);
        let (mean, invstd) = (&st[..c], &st[c..2 * c]);
        let sm = self.w(a.sums);
        sm.fill(0.0);
        let (sum_dy, sum_dy_xhat) = sm.split_at_mut(c);
        let (x, dy) = (self.r(a.x), self.r(a.dy));
        ops::batchnorm_accumulate_backward_sums(shape, n, x, dy, mean, invstd, sum_dy, sum_dy_xhat);
        let gamma = self.param(a.affine, c);
        let count = n * shape.hw;
        ops::batchnorm_backward_input(shape, n, x, dy, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, self.w(a.dx));
        if a.weights {
            let g = self.grad(a.affine, 2 * c);
            ops::add_assign(&mut g[..c], sum_dy_xhat);
            ops::add_assign(&mut g[c..], sum_dy);
        }
        Ok(())
    }

    fn relu_backward(&mut self, a: &op::ReluBackward) -> Result<(), Infallible> {
        ops::relu_backward_inplace(self.r(a.y), self.w(a.dy));
        Ok(())
    }

    fn sigmoid_backward(&mut self, a: &op::SigmoidBackward) -> Result<(), Infallible> {
        ops::sigmoid_backward(self.r(a.y), self.r(a.dy), self.w(a.dx));
        Ok(())
    }

    fn pool_backward(&mut self, a: &op::PoolBackward) -> Result<(), Infallible> {
        ops::global_avg_pool_backward(a.channels, a.hw, self.plan.batch, self.r(a.dy), self.w(a.dx));
        Ok(())
    }

    fn max_pool_backward(&mut self, a: &op::MaxPoolBackward) -> Result<(), Infallible> {
        ops::maxpool_backward(&a.shape, self.plan.batch, self.r(a.x), self.r(a.dy), self.w(a.dx));
        Ok(())
    }

    fn linear_backward(&mut self, a: &op::LinearBackward) -> Result<(), Infallible> {
        let (s, n) = (&a.shape, self.plan.batch);
        let (dw, db) = (self.grad(a.weight, s.weight_len()), self.grad(a.bias, s.out_f));
        ops::linear_accumulate_weight_grad(s, n, self.r(a.x), self.r(a.dy), dw, db);
        if let Some(dx) = a.dx {
            ops::linear_backward_input(s, n, self.r(a.dy), self.param(a.weight, s.weight_len()), self.w(dx));
        }
        Ok(())
    }

    fn resize_backward(&mut self, a: &op::ResizeBackward) -> Result<(), Infallible> {
        ops::bilinear_accumulate_backward(&a.window, self.plan.batch, self.r(a.dy), self.w(a.dx));
        Ok(())
    }

    fn l2_normalize_backward(&mut self, a: &op::L2NormalizeBackward) -> Result<(), Infallible> {
        loss::l2_normalize_backward(self.plan.batch, a.dim, self.r(a.x), self.r(a.dy), self.w(a.dx));
        Ok(())
    }

    fn add(&mut self, a: &op::Add) -> Result<(), Infallible> {
        ops::add_assign(self.w(a.y), self.r(a.x));
        Ok(())
    }

    fn narrow(&mut self, a: &op::Narrow) -> Result<(), Infallible> {
        ops::narrow(a.format(), self.w(a.x), self.a.w16(a.y));
        Ok(())
    }

    fn widen(&mut self, a: &op::Widen) -> Result<(), Infallible> {
        ops::widen(a.format(), self.a.r16(a.x), self.w(a.y));
        Ok(())
    }

    fn sgd(&mut self, a: &op::Sgd) -> Result<(), Infallible> {
        let r = a.params;
        let (params, grads, mom) =
            (self.w(r), self.grad(r.off, r.len), self.w(buf(2 * self.plan.params + r.off, r.len)));
        sgd_step(&self.input.sgd, self.input.lr, params, grads, mom);
        Ok(())
    }

    fn check_grads(&mut self, a: &op::CheckGrads) -> Result<(), Infallible> {
        let p = self.plan.params;
        if self.r(buf(p, p)).iter().any(|g| !g.is_finite()) {
            self.losses[a.slot] = 1.0;
        }
        Ok(())
    }

    // Refused before the step (`check_unlinked`): this executor has no other stages.
    fn send(&mut self, _: &op::Send) -> Result<(), Infallible> {
        Ok(())
    }

    fn recv(&mut self, _: &op::Recv) -> Result<(), Infallible> {
        Ok(())
    }
}
