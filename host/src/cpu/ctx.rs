//! One step's view of the CPU executor's buffers ([`Ctx`]): the arena, the per-thread
//! scratch and the per-chunk partial sums as raw regions that chunks slice disjointly,
//! the chunked loops, and the kernels that several ops (or fused runs) share.

use hpff_core::exec::{Epilogue, StepInput};
use hpff_core::ops::{self, BatchNorm2d};
use hpff_core::plan::{op, Buf, Elem, Plan};
use rayon::prelude::*;
use std::collections::VecDeque;

use super::{Extra, CHUNK};
use crate::dist::{Comm, Pending, StageLink};

/// A raw region that threads slice disjointly.
#[derive(Clone, Copy)]
pub(super) struct Region {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the executor hands each thread (or chunk) disjoint parts of a region, and ops never
// write a buffer another op reads at the same time (the plan's invariant).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    fn of(v: &mut [f32]) -> Region {
        Region { ptr: v.as_mut_ptr(), len: v.len() }
    }

    pub(super) fn r(&self, off: usize, len: usize) -> &[f32] {
        assert!(off + len <= self.len, "slice outside its region");
        // SAFETY: in bounds; no concurrent writer of these elements (see the Send impl).
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    #[allow(clippy::mut_from_ref)]
    pub(super) fn w(&self, off: usize, len: usize) -> &mut [f32] {
        assert!(off + len <= self.len, "slice outside its region");
        // SAFETY: in bounds; the caller owns these elements exclusively for the op's duration.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }

    /// `len` u16s from u16 `off` (two to an `f32` slot).
    #[allow(clippy::mut_from_ref)]
    pub(super) fn w16(&self, off: usize, len: usize) -> &mut [u16] {
        assert!(off + len <= 2 * self.len, "slice outside its region");
        // SAFETY: in bounds (2 u16s per f32; u16 needs less alignment than f32); the
        // caller owns these elements exclusively for the op's duration.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u16>().add(off), len) }
    }
}

/// The op right after a BN apply when it only transforms that BN's output: the executor
/// runs it on each image straight after the image's BN apply, while the image is still in
/// cache, instead of as another pass over the whole batch. Every element gets the same
/// operations in the same order as the separate ops would give it, so results keep their bits.
#[derive(Clone, Copy)]
pub(super) enum Tail {
    /// `Relu { x: bn.y }`.
    Relu,
    /// `AddRelu { y: bn.y, x: residual }`: the residual is added into the BN output.
    AddInto(Buf),
    /// `AddRelu { y: out, x: bn.y }`: the BN output (a shortcut's) is added into `out`.
    AddOnto(Buf),
}

impl Tail {
    /// The tail of a BN that writes `bn_y`, followed by `e`.
    pub(super) fn of(bn_y: Buf, e: Epilogue) -> Tail {
        match e {
            Epilogue::Relu(_) => Tail::Relu,
            Epilogue::AddRelu(a) if a.y == bn_y => Tail::AddInto(a.x),
            Epilogue::AddRelu(a) => Tail::AddOnto(a.y),
        }
    }
}

/// The CPU executor's [`hpff_core::exec::Backend`] for one step (see `backend.rs`).
pub(super) struct Ctx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) arena: Region,
    scratch: Region,
    partials: Region,
    e: Extra,
    pub(super) input: &'a StepInput<'a>,
    /// The loss record.
    pub(super) losses: &'a mut [f32],
    pub(super) n: usize,
    /// The processes a module's gradients are averaged over.
    pub(super) comm: Option<&'static dyn Comm>,
    /// Modules whose update waits for their gradients' sum, oldest first (`update.rs`).
    pub(super) pending: VecDeque<(op::Sgd, Box<dyn Pending>)>,
    /// BN sums are summed over these processes (`--sync-bn`).
    pub(super) sync_bn: Option<&'a dyn Comm>,
    pub(super) link: Option<StageLink>,
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        plan: &'a Plan,
        arena: &mut [f32],
        scratch: &mut [f32],
        partials: &mut [f32],
        e: Extra,
        input: &'a StepInput<'a>,
        losses: &'a mut [f32],
    ) -> Self {
        Ctx {
            plan,
            arena: Region::of(arena),
            scratch: Region::of(scratch),
            partials: Region::of(partials),
            e,
            input,
            losses,
            n: plan.batch,
            comm: None,
            pending: VecDeque::new(),
            sync_bn: None,
            link: None,
        }
    }

    /// The whole of `f32` buffer `b` (16-bit buffers are read through [`Ctx::rows16`]).
    pub(super) fn r(&self, b: Buf) -> &[f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        self.arena.r(b.off, b.len)
    }
    #[allow(clippy::mut_from_ref)]
    pub(super) fn w(&self, b: Buf) -> &mut [f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        self.arena.w(b.off, b.len)
    }
    /// Images `[i0, i0 + cnt)` of a per-image `f32` buffer `b`.
    pub(super) fn rows(&self, b: Buf, i0: usize, cnt: usize) -> &[f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        let per = b.len / self.n;
        self.arena.r(b.off + i0 * per, cnt * per)
    }
    #[allow(clippy::mut_from_ref)]
    pub(super) fn rows_mut(&self, b: Buf, i0: usize, cnt: usize) -> &mut [f32] {
        assert_eq!(b.elem, Elem::F32, "an f32 view of {b:?}");
        let per = b.len / self.n;
        self.arena.w(b.off + i0 * per, cnt * per)
    }
    /// Images `[i0, i0 + cnt)` of a per-image 16-bit buffer `b`, as bits.
    #[allow(clippy::mut_from_ref)]
    pub(super) fn rows16(&self, b: Buf, i0: usize, cnt: usize) -> &mut [u16] {
        assert!(b.elem.half().is_some(), "a 16-bit view of {b:?}");
        let per = b.len / self.n;
        self.arena.w16(2 * b.off + i0 * per, cnt * per)
    }
    #[allow(clippy::mut_from_ref)]
    pub(super) fn thread_scratch(&self) -> &mut [f32] {
        let t = rayon::current_thread_index().unwrap_or(0);
        let len = self.e.scratch_per_thread;
        self.scratch.w(t * len, len)
    }
    #[allow(clippy::mut_from_ref)]
    pub(super) fn partial(&self, chunk: usize, len: usize) -> &mut [f32] {
        self.partials.w(chunk * self.e.partial_per_chunk, len)
    }

    /// Runs `f(chunk, first image, count)` over all chunks in parallel.
    pub(super) fn each_chunk(&self, f: impl Fn(usize, usize, usize) + Sync) {
        (0..self.e.chunks).into_par_iter().for_each(|c| {
            let i0 = c * CHUNK;
            f(c, i0, CHUNK.min(self.n - i0));
        });
    }

    /// Runs `f(first image, count)` over the batch cut into two parts of whole chunks per
    /// thread, in parallel: for per-image work whose calls pay once per call (a conv's
    /// weights, packed or Winograd-transformed, cost as much as several images on the
    /// 64-channel layers) and that sums nothing per chunk. Two per thread, so a thread
    /// slowed by the machine is made up for.
    pub(super) fn each_part(&self, f: impl Fn(usize, usize) + Sync) {
        let parts = (2 * rayon::current_num_threads()).clamp(1, self.e.chunks.max(1));
        let per = self.e.chunks.div_ceil(parts) * CHUNK;
        (0..self.n.div_ceil(per)).into_par_iter().for_each(|p| {
            let i0 = p * per;
            f(i0, per.min(self.n - i0));
        });
    }

    /// Per-chunk partial sums of `len` floats computed by `f`, added to `out` in chunk order.
    pub(super) fn reduce(&self, len: usize, out: &mut [f32], f: impl Fn(usize, usize, &mut [f32]) + Sync) {
        self.each_chunk(|c, i0, cnt| {
            let p = self.partial(c, len);
            p.fill(0.0);
            f(i0, cnt, p);
        });
        for c in 0..self.e.chunks {
            ops::add_assign(out, self.partials.r(c * self.e.partial_per_chunk, len));
        }
    }

    /// Per-chunk values of `f`, summed in chunk order.
    pub(super) fn sum_values(&self, f: impl Fn(usize, usize) -> f32 + Sync) -> f32 {
        let v: Vec<f32> = (0..self.e.chunks)
            .into_par_iter()
            .map(|c| {
                let i0 = c * CHUNK;
                f(i0, CHUNK.min(self.n - i0))
            })
            .collect();
        v.iter().sum()
    }

    /// Batch statistics into `stats` (mean, invstd, sum, squared deviations) and `updates`
    /// running-statistics updates.
    pub(super) fn bn_stats(&self, s: BatchNorm2d, x: Buf, stats: Buf, state: usize, updates: u8) {
        let c = s.c;
        let st = self.w(stats);
        let (mean_invstd, raw) = st.split_at_mut(2 * c);
        let (sum, sq_dev) = raw.split_at_mut(c);
        let mean = &mut mean_invstd[..c];
        sum.fill(0.0);
        self.reduce(c, sum, |i0, cnt, p| ops::batchnorm_accumulate_sum(&s, cnt, self.rows(x, i0, cnt), p));
        self.sync_bn.inspect(|comm| comm.sum_f32(sum));
        let count = self.n * s.hw * self.sync_bn.map_or(1, |comm| comm.size());
        ops::batchnorm_mean_from_sum(sum, count, mean);
        sq_dev.fill(0.0);
        {
            let mean: &[f32] = mean;
            self.reduce(c, sq_dev, |i0, cnt, p| {
                ops::batchnorm_accumulate_sq_dev(&s, cnt, self.rows(x, i0, cnt), mean, p)
            });
        }
        self.sync_bn.inspect(|comm| comm.sum_f32(sq_dev));
        ops::batchnorm_update_running(&s, count, raw, mean_invstd, self.arena.w(state, 2 * c), updates);
    }

    /// Eval-mode BN statistics: the running statistics as mean and invstd into `stats`.
    pub(super) fn bn_eval_stats(&self, c: usize, state: usize, stats: Buf) {
        let st = self.w(stats);
        let (mean, invstd) = st[..2 * c].split_at_mut(c);
        let rs = self.arena.r(state, 2 * c);
        ops::batchnorm_eval_stats(&rs[..c], &rs[c..], mean, invstd);
    }

    /// Eval's conv, its BN and the BN's tail: in the direct (or Winograd) kernel's
    /// registers where the conv runs there (without writing the conv's output, which only
    /// the BN reads), a part of the batch a call ([`Ctx::each_part`]); else chunk by chunk,
    /// the chunk's convs in one call (the weights are packed once per call), then BN and
    /// its tail image by image while the chunk is in cache. Both write a chunk's outputs
    /// over nothing but the chunk's own images (`run` checked
    /// [`hpff_core::exec::Run::chunk_safe`]): apart from the conv's input, or exactly on it.
    pub(super) fn conv_bn_eval(&self, conv: op::Conv, bn: op::BnEval, t: Option<Tail>) {
        let op::Conv { shape: s, weight, bias, x, y: h } = conv;
        let op::BnEval { shape, affine, state, y, stats, .. } = bn;
        self.bn_eval_stats(shape.c, state, stats);
        let c = shape.c;
        let (st, gb) = (self.r(stats), self.arena.r(affine, 2 * c));
        let wt = self.arena.r(weight, s.weight_len());
        let bias = bias.map(|b| self.arena.r(b, s.c_out));
        self.each_part(|p0, pcnt| {
            let residual = match t {
                Some(Tail::AddInto(r)) => Some(self.rows(r, p0, pcnt)),
                _ => None,
            };
            let relu = matches!(t, Some(Tail::Relu | Tail::AddInto(_)));
            let (mean, invstd) = (&st[..c], &st[c..2 * c]);
            let tail = ops::BnTail { mean, invstd, gamma: &gb[..c], beta: &gb[c..], residual, relu };
            let io = if y == x {
                ops::Images::InPlace(self.rows_mut(y, p0, pcnt))
            } else {
                ops::Images::Apart(self.rows(x, p0, pcnt), self.rows_mut(y, p0, pcnt))
            };
            if bias.is_none() && ops::conv2d_forward_bn(&s, pcnt, io, wt, &tail, self.thread_scratch()) {
                if let Some(Tail::AddOnto(out)) = t {
                    (p0..p0 + pcnt).for_each(|i| self.add_relu_onto(out, y, i));
                }
                return;
            }
            for i0 in (p0..p0 + pcnt).step_by(CHUNK) {
                let cnt = CHUNK.min(p0 + pcnt - i0);
                let (xs, hs) = (self.rows(x, i0, cnt), self.rows_mut(h, i0, cnt));
                ops::conv2d_forward(&s, cnt, xs, wt, bias, hs, self.thread_scratch());
                (i0..i0 + cnt).for_each(|i| self.bn_apply_image(shape, affine, h, y, stats, t, i));
            }
        });
    }

    /// `out = relu(out + y)` for image `i`.
    fn add_relu_onto(&self, out: Buf, y: Buf, i: usize) {
        let os = self.rows_mut(out, i, 1);
        ops::add_assign(os, self.rows(y, i, 1));
        ops::relu_inplace(os);
    }

    /// BN apply then `tail`, image by image.
    pub(super) fn bn_apply_tail(&self, s: BatchNorm2d, gp: usize, x: Buf, y: Buf, stats: Buf, t: Tail) {
        self.each_chunk(|_, i0, cnt| (i0..i0 + cnt).for_each(|i| self.bn_apply_image(s, gp, x, y, stats, Some(t), i)));
    }

    /// BN apply of image `i` from `x` into `y`, then its `tail`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_apply_image(
        &self,
        s: BatchNorm2d,
        gp: usize,
        x: Buf,
        y: Buf,
        stats: Buf,
        t: Option<Tail>,
        i: usize,
    ) {
        let c = s.c;
        let st = self.r(stats);
        let gb = self.arena.r(gp, 2 * c);
        let ys = self.rows_mut(y, i, 1);
        ops::batchnorm_forward(&s, 1, self.rows(x, i, 1), &st[..c], &st[c..2 * c], &gb[..c], &gb[c..], ys);
        match t {
            None => {}
            Some(Tail::Relu) => ops::relu_inplace(ys),
            Some(Tail::AddInto(r)) => {
                ops::add_assign(ys, self.rows(r, i, 1));
                ops::relu_inplace(ys);
            }
            Some(Tail::AddOnto(out)) => self.add_relu_onto(out, y, i),
        }
    }

    /// A conv's weight gradient (with `x`) and input gradient (with `dx`); `dx`'s second
    /// part is a ReLU output whose backward mask then goes over each image's input
    /// gradient while it is in cache (a fused `ReluBackward { y, dy: dx }`).
    pub(super) fn conv_grads(
        &self,
        shape: ops::Conv2d,
        weight: usize,
        bias: Option<usize>,
        x: Option<Buf>,
        dy: Buf,
        dx: Option<(Buf, Option<Buf>)>,
    ) {
        let weights = x.is_some();
        let (wl, cb) = (shape.weight_len(), if bias.is_some() { shape.c_out } else { 0 });
        let wt = self.arena.r(weight, wl);
        let grad = self.arena.w(self.plan.grad_of(weight), wl);
        let mut gb = [0f32; 0];
        let gbias = match bias {
            Some(bias) => self.arena.w(self.plan.grad_of(bias), shape.c_out),
            None => &mut gb[..],
        };
        self.each_chunk(|c, i0, cnt| {
            let scratch = self.thread_scratch();
            if let Some(x) = x {
                let (xs, dys) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt));
                let part = self.partial(c, wl + cb);
                part.fill(0.0);
                let (pw, pb) = part.split_at_mut(wl);
                ops::conv2d_accumulate_weight_grad(&shape, cnt, xs, dys, pw, bias.map(|_| pb), scratch);
            }
            if let Some((dx, mask)) = dx {
                // The whole chunk in one call: the conv packs its weights once per call.
                let dxs = self.rows_mut(dx, i0, cnt);
                ops::conv2d_backward_input(&shape, cnt, self.rows(dy, i0, cnt), wt, dxs, scratch);
                if let Some(r) = mask {
                    ops::relu_backward_inplace(self.rows(r, i0, cnt), dxs);
                }
            }
        });
        if weights {
            self.gather(wl, cb, grad, gbias);
        }
    }

    /// Training-mode BN backward; with `mask` (a ReLU output), `dy` first gets that
    /// ReLU's backward, in place, in the pass that sums it (a fused `ReluBackward`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_grads(
        &self,
        shape: BatchNorm2d,
        affine: usize,
        x: Buf,
        dy: Buf,
        dx: Buf,
        stats: Buf,
        sums: Buf,
        weights: bool,
        mask: Option<Buf>,
    ) {
        let (c, n) = (shape.c, self.n);
        let st = self.r(stats);
        let (mean, invstd) = (&st[..c], &st[c..2 * c]);
        let sm = self.w(sums);
        sm.fill(0.0);
        self.reduce(2 * c, sm, |i0, cnt, part| {
            if let Some(r) = mask {
                ops::relu_backward_inplace(self.rows(r, i0, cnt), self.rows_mut(dy, i0, cnt));
            }
            let (pd, px) = part.split_at_mut(c);
            let (xs, dys) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt));
            ops::batchnorm_accumulate_backward_sums(&shape, cnt, xs, dys, mean, invstd, pd, px);
        });
        // Under --sync-bn the input gradient takes the job's sums and count; γ and β keep
        // this process's share, as their gradients are averaged over the processes later.
        let mut local = None;
        if let Some(comm) = self.sync_bn {
            local = weights.then(|| sm.to_vec());
            comm.sum_f32(sm);
        }
        let count = n * shape.hw * self.sync_bn.map_or(1, |comm| comm.size());
        let (sum_dy, sum_dy_xhat) = sm.split_at(c);
        let gamma = self.arena.r(affine, c);
        self.each_chunk(|_, i0, cnt| {
            let (xs, dys, dxs) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt));
            ops::batchnorm_backward_input(&shape, cnt, xs, dys, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, dxs);
        });
        if weights {
            let (sum_dy, sum_dy_xhat) = local.as_deref().map_or((sum_dy, sum_dy_xhat), |l| l.split_at(c));
            let g = self.arena.w(self.plan.grad_of(affine), 2 * c);
            ops::add_assign(&mut g[..c], sum_dy_xhat);
            ops::add_assign(&mut g[c..], sum_dy);
        }
    }

    pub(super) fn bn_apply_all(&self, s: BatchNorm2d, gp: usize, x: Buf, y: Buf, stats: Buf) {
        let c = s.c;
        let st = self.r(stats);
        let (mean, invstd) = (&st[..c], &st[c..2 * c]);
        let gb = self.arena.r(gp, 2 * c);
        self.each_chunk(|_, i0, cnt| {
            let (xs, ys) = (self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt));
            ops::batchnorm_forward(&s, cnt, xs, mean, invstd, &gb[..c], &gb[c..], ys);
        });
    }

    /// Adds the per-chunk weight (and bias) partials into the gradients, in chunk order.
    pub(super) fn gather(&self, wl: usize, bl: usize, grad: &mut [f32], gbias: &mut [f32]) {
        for c in 0..self.e.chunks {
            let part = self.partials.r(c * self.e.partial_per_chunk, wl + bl);
            ops::add_assign(grad, &part[..wl]);
            if bl > 0 {
                ops::add_assign(gbias, &part[wl..]);
            }
        }
    }
}
