//! The encoder's op methods: each op as kernel launches, GEMMs and library
//! convolutions on the sink (see the [parent](super)).

use hpff_core::exec::{Backend, ExecError};
use hpff_core::loss::SUPCON_TEMPERATURE;
use hpff_core::ops::{Half, BN_EPS, BN_MOMENTUM};
use hpff_core::plan::{op, Op};

use super::{i, l, maxpool_dims, window_args, Encoder};
use crate::error::CudaError;
use crate::kernels::K;
use crate::launch::{Arg, Gemm, Sink, BLOCK};
use crate::sizing::{chan_parts, flat_parts};

impl<S: Sink> Backend for Encoder<'_, S> {
    type Error = CudaError;

    fn begin_op(&mut self, index: usize, op: &Op) {
        self.sink.begin_op(index, op);
    }

    fn begin_step(&mut self) -> Result<(), CudaError> {
        let plan = self.plan;
        self.fill_zero(self.a(plan.grads_off()), plan.params)?;
        self.fill_zero(self.p.loss, plan.loss_slots())
    }

    fn zero(&mut self, a: &op::Zero) -> Result<(), CudaError> {
        let op::Zero { buf } = *a;
        self.fill_zero(self.a(buf.off), buf.len)
    }

    fn restore(&mut self, a: &op::Restore) -> Result<(), CudaError> {
        let op::Restore { x, y, channels, hw, mean, std } = *a;
        let n = self.plan.batch;
        let c32 = |v: usize| i("channels", v);
        let mut args = vec![self.b(x), self.b(y), c32(channels)?, l("hw", hw)?];
        args.extend(mean.iter().chain(std.iter()).map(|&v| Arg::F(v)));
        self.each(K::Restore, n * channels * hw, &args)
    }

    fn conv(&mut self, a: &op::Conv) -> Result<(), CudaError> {
        let op::Conv { shape, weight, bias, x, y } = *a;
        self.conv_forward(&shape, weight, bias, x, y)
    }

    fn bn_train(&mut self, a: &op::BnTrain) -> Result<(), CudaError> {
        let op::BnTrain { shape, affine, state, x, y, stats, updates } = *a;
        let n = self.plan.batch;
        let c32 = |v: usize| i("channels", v);
        let total = n * shape.hw;
        let parts = chan_parts(total);
        let common = [self.b(x), c32(shape.c)?, l("hw", shape.hw)?, l("count", total)?, i("parts", parts)?];
        let mut a = common.to_vec();
        a.push(Arg::P(self.p.partials));
        self.launch(K::ChanPartialSum, (parts, shape.c), BLOCK, &a)?;
        let (part, st) = (Arg::P(self.p.partials), self.b(stats));
        self.each(K::BnMean, shape.c, &[part, i("parts", parts)?, l("count", total)?, st])?;
        let mut a = common.to_vec();
        a.extend([st, part]);
        self.launch(K::ChanPartialSqdev, (parts, shape.c), BLOCK, &a)?;
        let fin = [
            part,
            i("parts", parts)?,
            l("count", total)?,
            st,
            Arg::P(self.a(state)),
            Arg::I(updates.into()),
            Arg::F(BN_MOMENTUM),
            Arg::F(BN_EPS),
        ];
        self.each(K::BnFinalize, shape.c, &fin)?;
        self.bn_forward(&shape, affine, x, y, stats)
    }

    fn bn_eval(&mut self, a: &op::BnEval) -> Result<(), CudaError> {
        let op::BnEval { shape, affine, state, x, y, stats } = *a;
        self.each(K::BnEvalStats, shape.c, &[Arg::P(self.a(state)), self.b(stats), Arg::F(BN_EPS)])?;
        self.bn_forward(&shape, affine, x, y, stats)
    }

    fn bn_apply(&mut self, a: &op::BnApply) -> Result<(), CudaError> {
        let op::BnApply { shape, affine, x, y, stats } = *a;
        self.bn_forward(&shape, affine, x, y, stats)
    }

    fn relu(&mut self, a: &op::Relu) -> Result<(), CudaError> {
        let op::Relu { x } = *a;
        self.each(K::Relu, x.len, &[self.b(x)])
    }

    fn narrow(&mut self, a: &op::Narrow) -> Result<(), CudaError> {
        let op::Narrow { x, y } = *a;
        let k = match a.format() {
            Half::Bf16 => K::Bf16Narrow,
            Half::F16 => K::F16Narrow,
        };
        self.each(k, x.len, &[self.b(x), self.b16(y)])
    }

    fn widen(&mut self, a: &op::Widen) -> Result<(), CudaError> {
        let op::Widen { x, y } = *a;
        let k = match a.format() {
            Half::Bf16 => K::Bf16Widen,
            Half::F16 => K::F16Widen,
        };
        self.each(k, x.len, &[self.b16(x), self.b(y)])
    }

    fn add_relu(&mut self, a: &op::AddRelu) -> Result<(), CudaError> {
        let op::AddRelu { y, x } = *a;
        self.each(K::AddRelu, y.len, &[self.b(y), self.b(x)])
    }

    fn sigmoid(&mut self, a: &op::Sigmoid) -> Result<(), CudaError> {
        let op::Sigmoid { x, y } = *a;
        self.each(K::Sigmoid, x.len, &[self.b(x), self.b(y)])
    }

    fn pool(&mut self, a: &op::Pool) -> Result<(), CudaError> {
        let op::Pool { channels, hw, x, y } = *a;
        let n = self.plan.batch;
        self.each(K::PoolForward, n * channels, &[self.b(x), self.b(y), l("hw", hw)?])
    }

    fn max_pool(&mut self, a: &op::MaxPool) -> Result<(), CudaError> {
        let op::MaxPool { shape, x, y } = *a;
        let n = self.plan.batch;
        let mut args = vec![self.b(x), self.b(y)];
        args.extend(maxpool_dims(&shape)?);
        self.each(K::MaxPoolForward, n * shape.out_len(), &args)
    }

    fn linear(&mut self, a: &op::Linear) -> Result<(), CudaError> {
        let op::Linear { shape, weight, bias, x, y } = *a;
        let n = self.plan.batch;
        if n == 0 || shape.out_f == 0 {
            return Ok(());
        }
        let (inf, outf) = (shape.in_f, shape.out_f);
        let g = Gemm {
            m: n,
            n: outf,
            k: inf,
            a: self.a(x.off),
            lda: inf,
            ta: false,
            b: self.a(weight),
            ldb: inf,
            tb: true,
            c: self.a(y.off),
            ldc: outf,
            beta: 0.0,
        };
        self.gemm(g)?;
        self.each(K::AddRowBias, n * outf, &[self.b(y), Arg::P(self.a(bias)), i("features", outf)?])
    }

    fn resize(&mut self, a: &op::Resize) -> Result<(), CudaError> {
        let op::Resize { window, x, y } = *a;
        let n = self.plan.batch;
        let mut args = vec![self.b(x), self.b(y)];
        args.extend(window_args(&window)?);
        self.each(K::ResizeForward, n * window.out_len(), &args)
    }

    fn crop(&mut self, a: &op::Crop) -> Result<(), CudaError> {
        let op::Crop { window, x, y } = *a;
        let n = self.plan.batch;
        let args = [
            self.b(x),
            self.b(y),
            i("h", window.h)?,
            i("w", window.w)?,
            i("y0", window.y0)?,
            i("x0", window.x0)?,
            i("oh", window.oh)?,
            i("ow", window.ow)?,
        ];
        self.each(K::CropForward, n * window.out_len(), &args)
    }

    fn l2_normalize(&mut self, a: &op::L2Normalize) -> Result<(), CudaError> {
        let op::L2Normalize { dim, x, y } = *a;
        let n = self.plan.batch;
        self.each(K::L2normForward, n, &[i("dim", dim)?, self.b(x), self.b(y)])
    }

    fn cross_entropy(&mut self, a: &op::CrossEntropy) -> Result<(), CudaError> {
        let op::CrossEntropy { classes, logits, dlogits, scale, slot } = *a;
        let n = self.plan.batch;
        let args = [
            i("batch", n)?,
            i("classes", classes)?,
            self.b(logits),
            Arg::P(self.p.labels),
            self.b(dlogits),
            Arg::F(scale),
            Arg::P(self.p.loss),
            i("slot", slot)?,
        ];
        self.launch(K::CrossEntropy, (1, 1), BLOCK, &args)
    }

    fn bce(&mut self, a: &op::Bce) -> Result<(), CudaError> {
        let op::Bce { probs, target, dprobs, scale, slot } = *a;
        if probs.len == 0 {
            return Ok(());
        }
        let parts = flat_parts(probs.len);
        let args = [
            l("len", probs.len)?,
            i("parts", parts)?,
            self.b(probs),
            self.b(target),
            self.b(dprobs),
            Arg::F(scale),
            l("len", probs.len)?,
            Arg::P(self.p.partials),
        ];
        self.launch(K::BcePartial, (parts, 1), BLOCK, &args)?;
        self.loss_finalize(parts, 1.0 / probs.len as f64, slot)
    }

    fn supcon(&mut self, a: &op::SupCon) -> Result<(), CudaError> {
        let op::SupCon { dim, features, dfeatures, scale, slot, scratch } = *a;
        let n = self.plan.batch;
        // The reference passes the temperature as the base temperature too.
        let (t, base_t) = (SUPCON_TEMPERATURE as f64, SUPCON_TEMPERATURE as f64);
        let inv_t = 1.0 / t;
        let coef = -(t / base_t) / n as f64;
        let (nn, dd) = (i("batch", n)?, i("dim", dim)?);
        self.each(K::SupconSim, n * n, &[nn, dd, self.b(features), self.b(scratch), Arg::D(inv_t)])?;
        let rows = [Arg::P(self.p.labels), self.b(scratch), Arg::P(self.p.partials), Arg::D(coef)];
        self.each(K::SupconRows, n, &rows)?;
        let g = scale as f64 * inv_t;
        self.each(K::SupconGrad, n * dim, &[nn, dd, self.b(features), self.b(scratch), self.b(dfeatures), Arg::D(g)])?;
        self.loss_finalize(n, coef, slot)
    }

    fn conv_backward(&mut self, a: &op::ConvBackward) -> Result<(), CudaError> {
        let op::ConvBackward { shape, weight, bias, x, dy, dx } = *a;
        self.conv_backward(&shape, weight, bias, x, dy, dx)
    }

    fn bn_backward(&mut self, a: &op::BnBackward) -> Result<(), CudaError> {
        let op::BnBackward { shape, affine, x, dy, dx, stats, sums, weights } = *a;
        let plan = self.plan;
        let n = self.plan.batch;
        let c32 = |v: usize| i("channels", v);
        let total = n * shape.hw;
        let parts = chan_parts(total);
        let args = [
            self.b(x),
            self.b(dy),
            c32(shape.c)?,
            l("hw", shape.hw)?,
            l("count", total)?,
            i("parts", parts)?,
            self.b(stats),
            Arg::P(self.p.partials),
        ];
        self.launch(K::ChanPartialBwd, (parts, shape.c), BLOCK, &args)?;
        let fin = [
            Arg::P(self.p.partials),
            i("parts", parts)?,
            self.b(stats),
            self.b(sums),
            Arg::P(self.a(plan.grad_of(affine))),
            Arg::I(weights.into()),
        ];
        self.each(K::BnBackwardFinalize, shape.c, &fin)?;
        let inv_count = 1.0f32 / total as f32;
        let args = [
            self.b(x),
            self.b(dy),
            self.b(dx),
            c32(shape.c)?,
            l("hw", shape.hw)?,
            self.b(stats),
            Arg::P(self.a(affine)),
            self.b(sums),
            Arg::F(inv_count),
        ];
        self.each(K::BnBackwardInput, n * shape.len(), &args)
    }

    fn relu_backward(&mut self, a: &op::ReluBackward) -> Result<(), CudaError> {
        let op::ReluBackward { y, dy } = *a;
        self.each(K::ReluBackward, y.len, &[self.b(y), self.b(dy)])
    }

    fn sigmoid_backward(&mut self, a: &op::SigmoidBackward) -> Result<(), CudaError> {
        let op::SigmoidBackward { y, dy, dx } = *a;
        self.each(K::SigmoidBackward, y.len, &[self.b(y), self.b(dy), self.b(dx)])
    }

    fn pool_backward(&mut self, a: &op::PoolBackward) -> Result<(), CudaError> {
        let op::PoolBackward { channels, hw, dy, dx } = *a;
        let n = self.plan.batch;
        self.each(K::PoolBackward, n * channels * hw, &[self.b(dy), self.b(dx), l("hw", hw)?])
    }

    fn max_pool_backward(&mut self, a: &op::MaxPoolBackward) -> Result<(), CudaError> {
        let op::MaxPoolBackward { shape, x, dy, dx } = *a;
        let n = self.plan.batch;
        let mut args = vec![self.b(x), self.b(dy), self.b(dx)];
        args.extend(maxpool_dims(&shape)?);
        self.each(K::MaxPoolBackward, n * shape.in_len(), &args)
    }

    fn linear_backward(&mut self, a: &op::LinearBackward) -> Result<(), CudaError> {
        let op::LinearBackward { shape, weight, bias, x, dy, dx } = *a;
        let plan = self.plan;
        let n = self.plan.batch;
        let (inf, outf) = (shape.in_f, shape.out_f);
        if n > 0 && outf > 0 {
            let g = Gemm {
                m: outf,
                n: inf,
                k: n,
                a: self.a(dy.off),
                lda: outf,
                ta: true,
                b: self.a(x.off),
                ldb: inf,
                tb: false,
                c: self.a(plan.grad_of(weight)),
                ldc: inf,
                beta: 1.0,
            };
            self.gemm(g)?;
            let db = Arg::P(self.a(plan.grad_of(bias)));
            self.each(K::ColSumAdd, outf, &[self.b(dy), db, i("batch", n)?])?;
        }
        if let Some(dx) = dx {
            if n > 0 && inf > 0 {
                let g = Gemm {
                    m: n,
                    n: inf,
                    k: outf,
                    a: self.a(dy.off),
                    lda: outf,
                    ta: false,
                    b: self.a(weight),
                    ldb: inf,
                    tb: false,
                    c: self.a(dx.off),
                    ldc: inf,
                    beta: 0.0,
                };
                self.gemm(g)?;
            }
        }
        Ok(())
    }

    fn resize_backward(&mut self, a: &op::ResizeBackward) -> Result<(), CudaError> {
        let op::ResizeBackward { window, dy, dx } = *a;
        let n = self.plan.batch;
        let mut args = vec![self.b(dy), self.b(dx)];
        args.extend(window_args(&window)?);
        self.each(K::ResizeBackward, n * window.c * window.ph * window.pw, &args)
    }

    fn l2_normalize_backward(&mut self, a: &op::L2NormalizeBackward) -> Result<(), CudaError> {
        let op::L2NormalizeBackward { dim, x, dy, dx } = *a;
        let n = self.plan.batch;
        self.each(K::L2normBackward, n, &[i("dim", dim)?, self.b(x), self.b(dy), self.b(dx)])
    }

    fn add(&mut self, a: &op::Add) -> Result<(), CudaError> {
        let op::Add { y, x } = *a;
        self.each(K::Add, y.len, &[self.b(y), self.b(x)])
    }

    fn check_grads(&mut self, a: &op::CheckGrads) -> Result<(), CudaError> {
        let op::CheckGrads { slot } = *a;
        let plan = self.plan;
        let args = [Arg::P(self.a(plan.grads_off())), Arg::P(self.p.loss), i("slot", slot)?];
        self.each(K::FlagNonfinite, plan.params, &args)
    }

    fn sgd(&mut self, a: &op::Sgd) -> Result<(), CudaError> {
        let op::Sgd { params: r, .. } = *a;
        let plan = self.plan;
        let (g, m) = (plan.grad_of(r.off), plan.momentum_off() + r.off);
        let args = [Arg::P(self.a(r.off)), Arg::P(self.a(g)), Arg::P(self.a(m)), Arg::P(self.p.step)];
        self.each(K::SgdStep, r.len, &args)
    }
    // Pipeline stages run on the CPU executor (the executors refuse them first).
    fn send(&mut self, _: &op::Send) -> Result<(), CudaError> {
        Err(ExecError::NoLink.into())
    }

    fn recv(&mut self, _: &op::Recv) -> Result<(), CudaError> {
        Err(ExecError::NoLink.into())
    }
}
