//! The CPU executor's op methods: each op cut into chunks of images, per-image work in
//! parallel, reductions over the batch in chunk order (see the [parent](super)).

use std::convert::Infallible;

use hpff_core::exec::{Backend, Run};
use hpff_core::loss;
use hpff_core::ops;
use hpff_core::plan::{op, Op};
use rayon::prelude::*;

use super::ctx::{Ctx, Tail};
use super::SGD_PIECE;

impl Backend for Ctx<'_> {
    type Error = Infallible;

    /// Every kind of run, as one pass over the batch:
    /// - eval's conv → BN (→ ReLU or residual add + ReLU): finished in the direct conv
    ///   kernel's registers, or else each image's conv output normalized (and rectified)
    ///   while still in cache;
    /// - training's BN apply (→ ReLU or residual add + ReLU), after the batch statistics;
    /// - a conv's input gradient → ReLU backward: the mask is applied per image in cache;
    /// - ReLU backward → BN backward over that gradient: masked in the BN's first pass.
    ///
    /// A run whose chunks could overwrite each other's inputs ([`Run::chunk_safe`]) goes
    /// op by op.
    fn run(&mut self, index: usize, run: &Run) -> Result<(), Infallible> {
        if !run.chunk_safe() {
            return hpff_core::exec::run_unfused(self, index, run);
        }
        self.advance_updates();
        match *run {
            Run::ConvBnEval { conv, bn, then } => self.conv_bn_eval(conv, bn, then.map(|e| Tail::of(bn.y, e))),
            Run::BnTrain { bn, then } => {
                let op::BnTrain { shape, affine, state, x, y, stats, updates } = bn;
                self.bn_stats(shape, x, stats, state, updates);
                self.bn_apply_tail(shape, affine, x, y, stats, Tail::of(y, then));
            }
            Run::BnApply { bn, then } => {
                let op::BnApply { shape, affine, x, y, stats } = bn;
                self.bn_apply_tail(shape, affine, x, y, stats, Tail::of(y, then));
            }
            Run::ConvBackwardRelu { conv, relu } => {
                let op::ConvBackward { shape, weight, x, dy, dx, .. } = conv;
                let dx = dx.expect("the dispatcher fuses only a conv backward that writes dx");
                self.conv_grads(shape, weight, None, x, dy, Some((dx, Some(relu.y))));
            }
            Run::ReluBackwardBn { relu, bn } => {
                let op::BnBackward { shape, affine, x, dy, dx, stats, sums, weights } = bn;
                self.bn_grads(shape, affine, x, dy, dx, stats, sums, weights, Some(relu.y));
            }
        }
        Ok(())
    }

    /// Between ops: the gradient sums in flight advance (see `update.rs`).
    fn begin_op(&mut self, _index: usize, _op: &Op) {
        self.advance_updates();
    }

    fn begin_step(&mut self) -> Result<(), Infallible> {
        let p = self.plan.params;
        self.arena.w(p, p).par_chunks_mut(SGD_PIECE).for_each(|g| g.fill(0.0));
        self.losses.fill(0.0);
        Ok(())
    }

    fn zero(&mut self, a: &op::Zero) -> Result<(), Infallible> {
        let op::Zero { buf } = *a;
        self.w(buf).fill(0.0);
        Ok(())
    }

    fn restore(&mut self, a: &op::Restore) -> Result<(), Infallible> {
        let op::Restore { x, y, channels, hw, mean, std } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::denormalize(channels, hw, cnt, &mean, &std, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn conv(&mut self, a: &op::Conv) -> Result<(), Infallible> {
        let op::Conv { shape: s, weight: w, bias: b, x, y } = *a;
        let wt = self.arena.r(w, s.weight_len());
        let bias = b.map(|b| self.arena.r(b, s.c_out));
        // A part of the batch a call: the weights are prepared once per call.
        self.each_part(|i0, cnt| {
            let (xs, ys) = (self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt));
            ops::conv2d_forward(&s, cnt, xs, wt, bias, ys, self.thread_scratch());
        });
        Ok(())
    }

    fn bn_train(&mut self, a: &op::BnTrain) -> Result<(), Infallible> {
        let op::BnTrain { shape, affine, state, x, y, stats, updates } = *a;
        self.bn_stats(shape, x, stats, state, updates);
        self.bn_apply_all(shape, affine, x, y, stats);
        Ok(())
    }

    fn bn_eval(&mut self, a: &op::BnEval) -> Result<(), Infallible> {
        let op::BnEval { shape, affine, state, x, y, stats } = *a;
        self.bn_eval_stats(shape.c, state, stats);
        self.bn_apply_all(shape, affine, x, y, stats);
        Ok(())
    }

    fn bn_apply(&mut self, a: &op::BnApply) -> Result<(), Infallible> {
        let op::BnApply { shape, affine, x, y, stats } = *a;
        self.bn_apply_all(shape, affine, x, y, stats);
        Ok(())
    }

    fn relu(&mut self, a: &op::Relu) -> Result<(), Infallible> {
        let op::Relu { x } = *a;
        self.each_chunk(|_, i0, cnt| ops::relu_inplace(self.rows_mut(x, i0, cnt)));
        Ok(())
    }

    fn add_relu(&mut self, a: &op::AddRelu) -> Result<(), Infallible> {
        let op::AddRelu { y, x } = *a;
        self.each_chunk(|_, i0, cnt| {
            let ys = self.rows_mut(y, i0, cnt);
            ops::add_assign(ys, self.rows(x, i0, cnt));
            ops::relu_inplace(ys);
        });
        Ok(())
    }

    fn sigmoid(&mut self, a: &op::Sigmoid) -> Result<(), Infallible> {
        let op::Sigmoid { x, y } = *a;
        self.each_chunk(|_, i0, cnt| ops::sigmoid_forward(self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt)));
        Ok(())
    }

    fn pool(&mut self, a: &op::Pool) -> Result<(), Infallible> {
        let op::Pool { channels, hw, x, y } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::global_avg_pool_forward(channels, hw, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn max_pool(&mut self, a: &op::MaxPool) -> Result<(), Infallible> {
        let op::MaxPool { shape, x, y } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::maxpool_forward(&shape, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn linear(&mut self, a: &op::Linear) -> Result<(), Infallible> {
        let op::Linear { shape: s, weight: w, bias: b, x, y } = *a;
        let (wt, bias) = (self.arena.r(w, s.weight_len()), self.arena.r(b, s.out_f));
        self.each_chunk(|_, i0, cnt| {
            ops::linear_forward(&s, cnt, self.rows(x, i0, cnt), wt, bias, self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn resize(&mut self, a: &op::Resize) -> Result<(), Infallible> {
        let op::Resize { window, x, y } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::bilinear_forward(&window, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn crop(&mut self, a: &op::Crop) -> Result<(), Infallible> {
        let op::Crop { window, x, y } = *a;
        self.each_chunk(|_, i0, cnt| ops::crop_forward(&window, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt)));
        Ok(())
    }

    fn l2_normalize(&mut self, a: &op::L2Normalize) -> Result<(), Infallible> {
        let op::L2Normalize { dim, x, y } = *a;
        self.each_chunk(|_, i0, cnt| {
            loss::l2_normalize_forward(cnt, dim, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
        });
        Ok(())
    }

    fn cross_entropy(&mut self, a: &op::CrossEntropy) -> Result<(), Infallible> {
        let op::CrossEntropy { classes, logits, dlogits, scale, slot } = *a;
        let (labels, n) = (self.input.labels, self.n);
        let v = self.sum_values(|i0, cnt| {
            let (l, dl) = (self.rows(logits, i0, cnt), self.rows_mut(dlogits, i0, cnt));
            loss::cross_entropy(cnt, classes, l, &labels[i0..i0 + cnt], n, scale, dl)
        });
        self.losses[slot] += v;
        Ok(())
    }

    fn bce(&mut self, a: &op::Bce) -> Result<(), Infallible> {
        let op::Bce { probs, target, dprobs, scale, slot } = *a;
        let v = self.sum_values(|i0, cnt| {
            let (a, b, d) = (self.rows(probs, i0, cnt), self.rows(target, i0, cnt), self.rows_mut(dprobs, i0, cnt));
            loss::bce(a, b, probs.len, scale, d)
        });
        self.losses[slot] += v;
        Ok(())
    }

    fn supcon(&mut self, a: &op::SupCon) -> Result<(), Infallible> {
        let op::SupCon { dim, features, dfeatures, scale, slot, scratch } = *a;
        let t = loss::SUPCON_TEMPERATURE;
        let (labels, n) = (self.input.labels, self.n);
        let v = loss::supcon(n, dim, self.r(features), labels, t, t, scale, self.w(dfeatures), self.w(scratch));
        self.losses[slot] += v;
        Ok(())
    }

    fn conv_backward(&mut self, a: &op::ConvBackward) -> Result<(), Infallible> {
        let op::ConvBackward { shape, weight, bias, x, dy, dx } = *a;
        self.conv_grads(shape, weight, bias, x, dy, dx.map(|d| (d, None)));
        Ok(())
    }

    fn bn_backward(&mut self, a: &op::BnBackward) -> Result<(), Infallible> {
        let op::BnBackward { shape, affine, x, dy, dx, stats, sums, weights } = *a;
        self.bn_grads(shape, affine, x, dy, dx, stats, sums, weights, None);
        Ok(())
    }

    fn relu_backward(&mut self, a: &op::ReluBackward) -> Result<(), Infallible> {
        let op::ReluBackward { y, dy } = *a;
        self.each_chunk(|_, i0, cnt| ops::relu_backward_inplace(self.rows(y, i0, cnt), self.rows_mut(dy, i0, cnt)));
        Ok(())
    }

    fn sigmoid_backward(&mut self, a: &op::SigmoidBackward) -> Result<(), Infallible> {
        let op::SigmoidBackward { y, dy, dx } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::sigmoid_backward(self.rows(y, i0, cnt), self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
        });
        Ok(())
    }

    fn pool_backward(&mut self, a: &op::PoolBackward) -> Result<(), Infallible> {
        let op::PoolBackward { channels, hw, dy, dx } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::global_avg_pool_backward(channels, hw, cnt, self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
        });
        Ok(())
    }

    fn max_pool_backward(&mut self, a: &op::MaxPoolBackward) -> Result<(), Infallible> {
        let op::MaxPoolBackward { shape, x, dy, dx } = *a;
        self.each_chunk(|_, i0, cnt| {
            let (x, dy) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt));
            ops::maxpool_backward(&shape, cnt, x, dy, self.rows_mut(dx, i0, cnt))
        });
        Ok(())
    }

    fn linear_backward(&mut self, a: &op::LinearBackward) -> Result<(), Infallible> {
        let op::LinearBackward { shape, weight, bias, x, dy, dx } = *a;
        let wl = shape.weight_len();
        let wt = self.arena.r(weight, wl);
        let (grad, gbias) =
            (self.arena.w(self.plan.grad_of(weight), wl), self.arena.w(self.plan.grad_of(bias), shape.out_f));
        self.each_chunk(|c, i0, cnt| {
            let part = self.partial(c, wl + shape.out_f);
            part.fill(0.0);
            let (pw, pb) = part.split_at_mut(wl);
            let (xs, dys) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt));
            ops::linear_accumulate_weight_grad(&shape, cnt, xs, dys, pw, pb);
            if let Some(dx) = dx {
                ops::linear_backward_input(&shape, cnt, dys, wt, self.rows_mut(dx, i0, cnt));
            }
        });
        self.gather(wl, shape.out_f, grad, gbias);
        Ok(())
    }

    fn resize_backward(&mut self, a: &op::ResizeBackward) -> Result<(), Infallible> {
        let op::ResizeBackward { window, dy, dx } = *a;
        self.each_chunk(|_, i0, cnt| {
            ops::bilinear_accumulate_backward(&window, cnt, self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
        });
        Ok(())
    }

    fn l2_normalize_backward(&mut self, a: &op::L2NormalizeBackward) -> Result<(), Infallible> {
        let op::L2NormalizeBackward { dim, x, dy, dx } = *a;
        self.each_chunk(|_, i0, cnt| {
            let (xs, dys, dxs) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt));
            loss::l2_normalize_backward(cnt, dim, xs, dys, dxs)
        });
        Ok(())
    }

    fn add(&mut self, a: &op::Add) -> Result<(), Infallible> {
        let op::Add { y, x } = *a;
        self.each_chunk(|_, i0, cnt| ops::add_assign(self.rows_mut(y, i0, cnt), self.rows(x, i0, cnt)));
        Ok(())
    }

    fn narrow(&mut self, a: &op::Narrow) -> Result<(), Infallible> {
        let (op::Narrow { x, y }, h) = (*a, a.format());
        self.each_chunk(|_, i0, cnt| ops::narrow(h, self.rows_mut(x, i0, cnt), self.rows16(y, i0, cnt)));
        Ok(())
    }

    fn widen(&mut self, a: &op::Widen) -> Result<(), Infallible> {
        let (op::Widen { x, y }, h) = (*a, a.format());
        self.each_chunk(|_, i0, cnt| ops::widen(h, self.rows16(x, i0, cnt), self.rows_mut(y, i0, cnt)));
        Ok(())
    }

    fn check_grads(&mut self, a: &op::CheckGrads) -> Result<(), Infallible> {
        self.finish_updates();
        let op::CheckGrads { slot } = *a;
        let p = self.plan.params;
        let grads = self.arena.r(p, p);
        if grads.par_chunks(SGD_PIECE).any(|c| c.iter().any(|g| !g.is_finite())) {
            self.losses[slot] = 1.0;
        }
        Ok(())
    }

    /// Data parallelism: the module's gradients summed over the processes in the
    /// background; its update waits for the sum (see `update.rs`).
    fn module_done(&mut self, a: &op::Sgd) -> Result<(), Infallible> {
        self.start_average(a);
        Ok(())
    }

    fn sgd(&mut self, a: &op::Sgd) -> Result<(), Infallible> {
        if !self.update_waits(a) {
            self.update(a);
        }
        Ok(())
    }

    fn send(&mut self, a: &op::Send) -> Result<(), Infallible> {
        let op::Send { buf, to } = *a;
        let l = self.link.expect("checked: a stage that talks runs with a link");
        l.comm.send_f32(l.rank_of(to), self.r(buf));
        Ok(())
    }

    fn recv(&mut self, a: &op::Recv) -> Result<(), Infallible> {
        let op::Recv { buf, from } = *a;
        let l = self.link.expect("checked: a stage that talks runs with a link");
        l.comm.recv_f32(l.rank_of(from), self.w(buf));
        Ok(())
    }
}
