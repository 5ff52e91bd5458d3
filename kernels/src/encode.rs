//! Turns a plan's ops into kernel launches and GEMMs (the semantics are the reference
//! executor's, `hpff_core::exec::Reference`). Everything is addressed by device
//! address: arena offsets become `arena + 4·off`, so the same sequence can be launched
//! directly or captured once into a CUDA graph and replayed.

use crate::error::{dim_i32, dim_i64, CudaError};
use crate::kernels::K;
use crate::launch::{check_signature, Arg, ConvCall, ConvDir, ConvPath, Gemm, Sink, BLOCK, MAX_GRID};
use crate::sizing::{chan_parts, conv_ws_per_image, Extras};
use hpff_core::exec::dispatch;
use hpff_core::ops::{BatchNorm2d, Conv2d, MaxPool2d, Window};
use hpff_core::plan::{Buf, Elem, Plan};

mod backend;

/// Device addresses of the arena and the executor's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ptrs {
    pub arena: u64,
    pub conv_ws: u64,
    /// f64 partial sums.
    pub partials: u64,
    pub loss: u64,
    /// u32 labels.
    pub labels: u64,
    /// lr, momentum, weight decay, Nesterov (f32).
    pub step: u64,
}

/// Emits the work of one plan's ops into a [`Sink`].
pub(crate) struct Encoder<'a, S: Sink> {
    sink: &'a mut S,
    plan: &'a Plan,
    p: Ptrs,
    ex: Extras,
}

fn l(what: &'static str, v: usize) -> Result<Arg, CudaError> {
    Ok(Arg::L(dim_i64(what, v)?))
}

fn i(what: &'static str, v: usize) -> Result<Arg, CudaError> {
    Ok(Arg::I(dim_i32(what, v)?))
}

/// A max pool's geometry as its kernels take it: h, w, k, stride, pad, h_out, w_out.
fn maxpool_dims(s: &MaxPool2d) -> Result<[Arg; 7], CudaError> {
    Ok([
        i("height", s.h)?,
        i("width", s.w)?,
        i("window", s.k)?,
        i("stride", s.stride)?,
        i("padding", s.pad)?,
        i("height", s.h_out())?,
        i("width", s.w_out())?,
    ])
}

impl<'a, S: Sink> Encoder<'a, S> {
    pub(crate) fn new(sink: &'a mut S, plan: &'a Plan, p: Ptrs, ex: Extras) -> Self {
        Encoder { sink, plan, p, ex }
    }

    /// All ops of the training step (`train`) or of the eval pass.
    pub(crate) fn step(&mut self, train: bool) -> Result<(), CudaError> {
        let plan = self.plan;
        if train {
            dispatch::train_step(plan, self)
        } else {
            dispatch::eval_step(plan, self)
        }
    }

    /// Device address of arena float `off`.
    fn a(&self, off: usize) -> u64 {
        self.p.arena + 4 * off as u64
    }

    /// A kernel's `float*` argument.
    fn b(&self, b: Buf) -> Arg {
        assert_eq!(b.elem, Elem::F32, "a float* argument from {b:?}");
        Arg::P(self.a(b.off))
    }

    /// A kernel's `unsigned short*` argument: the bits of a 16-bit buffer.
    fn b16(&self, b: Buf) -> Arg {
        assert!(b.elem.half().is_some(), "an unsigned short* argument from {b:?}");
        Arg::P(self.a(b.off))
    }

    /// Launches `k` on a grid of `grid` blocks of [`BLOCK`] threads.
    fn launch(&mut self, k: K, grid: (usize, usize), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        check_signature(k, args)?;
        let gx = u32::try_from(grid.0).map_err(|_| CudaError::TooLarge { what: "grid", value: grid.0 })?;
        let gy = u32::try_from(grid.1).map_err(|_| CudaError::TooLarge { what: "grid", value: grid.1 })?;
        if gy > 65535 {
            return Err(CudaError::TooLarge { what: "grid y (channels)", value: grid.1 });
        }
        self.sink.launch(k, (gx, gy), block, args)
    }

    /// A grid-stride kernel over `count` items: the count is its first argument.
    fn each(&mut self, k: K, count: usize, rest: &[Arg]) -> Result<(), CudaError> {
        if count == 0 {
            return Ok(());
        }
        let mut args = Vec::with_capacity(rest.len() + 1);
        args.push(l("count", count)?);
        args.extend_from_slice(rest);
        let blocks = (count as u64).div_ceil(BLOCK as u64).min(MAX_GRID) as usize;
        self.launch(k, (blocks, 1), BLOCK, &args)
    }

    fn gemm(&mut self, g: Gemm) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        self.sink.gemm(&g)
    }

    fn fill_zero(&mut self, addr: u64, len: usize) -> Result<(), CudaError> {
        self.each(K::Fill, len, &[Arg::P(addr), Arg::F(0.0)])
    }

    /// `loss[slot] += Σ partials[..parts] · mult`, one thread.
    fn loss_finalize(&mut self, parts: usize, mult: f64, slot: usize) -> Result<(), CudaError> {
        let args = [i("parts", parts)?, Arg::P(self.p.partials), Arg::D(mult), Arg::P(self.p.loss), i("slot", slot)?];
        self.launch(K::LossFinalize, (1, 1), 1, &args)
    }

    fn bn_forward(&mut self, s: &BatchNorm2d, p: usize, x: Buf, y: Buf, stats: Buf) -> Result<(), CudaError> {
        let args = [
            self.b(x),
            self.b(y),
            i("channels", s.c)?,
            l("hw", s.hw)?,
            self.b(stats),
            Arg::P(self.a(p)),
            Arg::P(self.a(p + s.c)),
        ];
        self.each(K::BnForward, self.plan.batch * s.len(), &args)
    }

    /// Images per chunk for convolution `s`: as many as the workspace holds.
    fn chunk(&self, s: &Conv2d) -> Result<usize, CudaError> {
        let per = conv_ws_per_image(s).max(1);
        let g = (self.ex.conv_ws / per).min(self.plan.batch);
        if g == 0 {
            return Err(CudaError::TooLarge { what: "convolution workspace need per image", value: per });
        }
        Ok(g)
    }

    /// The im2col launch of images `i0..i0+g` of `x` into the workspace's column part.
    fn im2col(&mut self, s: &Conv2d, x: Buf, i0: usize, g: usize) -> Result<(), CudaError> {
        let (ckk, hw) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
        let args = [
            Arg::P(self.a(x.off + i0 * s.in_len())),
            Arg::P(self.p.conv_ws),
            i("c_in", s.c_in)?,
            i("h", s.h)?,
            i("w", s.w)?,
            i("k", s.k)?,
            i("stride", s.stride)?,
            i("pad", s.pad)?,
            i("w_out", s.w_out())?,
            l("hw_out", hw)?,
            i("chunk", g)?,
        ];
        self.each(K::Im2col, ckk * g * hw, &args)
    }

    /// A whole-batch library convolution.
    fn conv_call(&mut self, dir: ConvDir, s: &Conv2d, x: u64, w: u64, y: u64, bias: u64) -> Result<(), CudaError> {
        let n = self.plan.batch;
        self.sink.conv(&ConvCall { dir, shape: *s, n, x, w, y, bias })
    }

    /// Forward: per chunk, im2col, `rows[c_out × g·hw] = W·col`, then NCHW (+ bias); or
    /// one library call.
    fn conv_forward(&mut self, s: &Conv2d, w: usize, b: Option<usize>, x: Buf, y: Buf) -> Result<(), CudaError> {
        if self.sink.conv_path() == ConvPath::Cudnn {
            let bias = b.map_or(0, |b| self.a(b));
            return self.conv_call(ConvDir::Forward, s, self.a(x.off), self.a(w), self.a(y.off), bias);
        }
        let n = self.plan.batch;
        let (ckk, hw) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
        let gmax = self.chunk(s)?;
        let rows = self.p.conv_ws + 4 * (ckk * gmax * hw) as u64;
        let bias = Arg::P(b.map_or(0, |b| self.a(b)));
        for i0 in (0..n).step_by(gmax) {
            let g = gmax.min(n - i0);
            let cols = g * hw;
            self.im2col(s, x, i0, g)?;
            // Group j: its output rows from its weights and its input channels' rows.
            let (gs, gk) = (s.group(), ckk / s.groups);
            for j in 0..s.groups {
                let gm = Gemm {
                    m: gs.c_out,
                    n: cols,
                    k: gk,
                    a: self.a(w + j * gs.weight_len()),
                    lda: gk,
                    ta: false,
                    b: self.p.conv_ws + 4 * (j * gk * cols) as u64,
                    ldb: cols,
                    tb: false,
                    c: rows + 4 * (j * gs.c_out * cols) as u64,
                    ldc: cols,
                    beta: 0.0,
                };
                self.gemm(gm)?;
            }
            let args = [
                Arg::P(rows),
                Arg::P(self.a(y.off + i0 * s.out_len())),
                bias,
                i("c_out", s.c_out)?,
                l("hw_out", hw)?,
                i("chunk", g)?,
            ];
            self.each(K::RowsToNchw, g * s.out_len(), &args)?;
        }
        Ok(())
    }

    /// Backward: the library's weight and input gradients, or the im2col chunks. Bias: a
    /// per-channel reduction. Weight and bias gradients are taken when the input `x` is
    /// given.
    fn conv_backward(
        &mut self,
        s: &Conv2d,
        w: usize,
        b: Option<usize>,
        x: Option<Buf>,
        dy: Buf,
        dx: Option<Buf>,
    ) -> Result<(), CudaError> {
        let weights = x.is_some();
        let plan = self.plan;
        let n = plan.batch;
        let hw = s.h_out() * s.w_out();
        if self.sink.conv_path() == ConvPath::Cudnn {
            if let Some(x) = x {
                let dw = self.a(plan.grad_of(w));
                self.conv_call(ConvDir::BackwardFilter, s, self.a(x.off), dw, self.a(dy.off), 0)?;
            }
            if let Some(dx) = dx {
                self.conv_call(ConvDir::BackwardData, s, self.a(dx.off), self.a(w), self.a(dy.off), 0)?;
            }
        } else if weights || dx.is_some() {
            self.conv_backward_chunks(s, w, x, dy, dx)?;
        }
        if let (true, Some(b)) = (weights, b) {
            let total = n * hw;
            let parts = chan_parts(total);
            let args = [
                self.b(dy),
                i("c_out", s.c_out)?,
                l("hw_out", hw)?,
                l("count", total)?,
                i("parts", parts)?,
                Arg::P(self.p.partials),
            ];
            self.launch(K::ChanPartialSum, (parts, s.c_out), BLOCK, &args)?;
            let db = Arg::P(self.a(plan.grad_of(b)));
            self.each(K::ChanSumAdd, s.c_out, &[Arg::P(self.p.partials), i("parts", parts)?, db])?;
        }
        Ok(())
    }

    /// Backward on the im2col path: per chunk (in order), dy → rows; `dW += rows·colᵀ`
    /// (GEMM with β = 1); `dcol = Wᵀ·rows` and the col2im gather into dx. A grouped conv
    /// takes both products group by group, each on its own rows of `rows` and `col`.
    fn conv_backward_chunks(
        &mut self,
        s: &Conv2d,
        w: usize,
        x: Option<Buf>,
        dy: Buf,
        dx: Option<Buf>,
    ) -> Result<(), CudaError> {
        let plan = self.plan;
        let n = plan.batch;
        let (ckk, hw) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
        let gmax = self.chunk(s)?;
        let col = self.p.conv_ws;
        let rows = col + 4 * (ckk * gmax * hw) as u64;
        for i0 in (0..n).step_by(gmax) {
            let g = gmax.min(n - i0);
            let cols = g * hw;
            let args = [
                Arg::P(self.a(dy.off + i0 * s.out_len())),
                Arg::P(rows),
                i("c_out", s.c_out)?,
                l("hw_out", hw)?,
                i("chunk", g)?,
            ];
            self.each(K::NchwToRows, g * s.out_len(), &args)?;
            let (gs, gk) = (s.group(), ckk / s.groups);
            // Group j's rows of `rows` (its output channels) and of `col` (its input taps).
            let rows_j = |j: usize| rows + 4 * (j * gs.c_out * cols) as u64;
            let col_j = |j: usize| col + 4 * (j * gk * cols) as u64;
            if let Some(x) = x {
                self.im2col(s, x, i0, g)?;
                for j in 0..s.groups {
                    let gm = Gemm {
                        m: gs.c_out,
                        n: gk,
                        k: cols,
                        a: rows_j(j),
                        lda: cols,
                        ta: false,
                        b: col_j(j),
                        ldb: cols,
                        tb: true,
                        c: self.a(plan.grad_of(w) + j * gs.weight_len()),
                        ldc: gk,
                        beta: 1.0,
                    };
                    self.gemm(gm)?;
                }
            }
            if let Some(dx) = dx {
                for j in 0..s.groups {
                    let gm = Gemm {
                        m: gk,
                        n: cols,
                        k: gs.c_out,
                        a: self.a(w + j * gs.weight_len()),
                        lda: gk,
                        ta: true,
                        b: rows_j(j),
                        ldb: cols,
                        tb: false,
                        c: col_j(j),
                        ldc: cols,
                        beta: 0.0,
                    };
                    self.gemm(gm)?;
                }
                let args = [
                    Arg::P(col),
                    Arg::P(self.a(dx.off + i0 * s.in_len())),
                    i("c_in", s.c_in)?,
                    i("h", s.h)?,
                    i("w", s.w)?,
                    i("k", s.k)?,
                    i("stride", s.stride)?,
                    i("pad", s.pad)?,
                    i("h_out", s.h_out())?,
                    i("w_out", s.w_out())?,
                    i("chunk", g)?,
                ];
                self.each(K::Col2im, g * s.in_len(), &args)?;
            }
        }
        Ok(())
    }
}

/// c, h, w, y0, x0, ph, pw, oh, ow of a window.
fn window_args(win: &Window) -> Result<[Arg; 9], CudaError> {
    Ok([
        i("c", win.c)?,
        i("h", win.h)?,
        i("w", win.w)?,
        i("y0", win.y0)?,
        i("x0", win.x0)?,
        i("ph", win.ph)?,
        i("pw", win.pw)?,
        i("oh", win.oh)?,
        i("ow", win.ow)?,
    ])
}

#[cfg(test)]
mod tests {
    //! The encoder run against a recorder, without a GPU: every launch must match its
    //! kernel's signature and point into a buffer, every GEMM operand must lie inside
    //! one, on real plans (and a smaller last batch on the layout's buffers).
    use super::*;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, LocalLoss, Method, Precision};
    use hpff_core::partition::{Partition, TableKind};
    use hpff_core::plan::{op, Op};

    struct Recorder {
        /// (name, start address, bytes)
        bufs: Vec<(&'static str, u64, usize)>,
        launches: usize,
        gemms: usize,
        convs: usize,
        conv: ConvPath,
        kernels_seen: std::collections::HashSet<&'static str>,
    }

    impl Recorder {
        fn new(conv: ConvPath) -> Recorder {
            Recorder { bufs: vec![], launches: 0, gemms: 0, convs: 0, conv, kernels_seen: Default::default() }
        }
    }

    impl Recorder {
        fn find(&self, addr: u64) -> Option<(&'static str, u64, usize)> {
            self.bufs.iter().copied().find(|&(_, s, b)| addr >= s && addr < s + b as u64)
        }
    }

    impl Sink for Recorder {
        fn launch(&mut self, k: K, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
            check_signature(k, args)?;
            assert!(grid.0 >= 1 && grid.1 >= 1 && (block == BLOCK || block == 1), "{k:?}: grid {grid:?}");
            for (j, a) in args.iter().enumerate() {
                if let Arg::P(p) = *a {
                    let bias_null = k == K::RowsToNchw && j == 3 && p == 0;
                    assert!(bias_null || self.find(p).is_some(), "{k:?} argument {j} = {p:#x} points nowhere");
                }
            }
            self.launches += 1;
            self.kernels_seen.insert(k.decl().name);
            Ok(())
        }

        fn gemm(&mut self, g: &Gemm) -> Result<(), CudaError> {
            assert!(g.valid(), "{g:?}");
            for (addr, floats) in g.extents() {
                let (name, s, bytes) =
                    self.find(addr).unwrap_or_else(|| panic!("GEMM operand {addr:#x} outside: {g:?}"));
                assert!(addr + 4 * floats as u64 <= s + bytes as u64, "GEMM operand overruns {name}: {g:?}");
            }
            self.gemms += 1;
            Ok(())
        }

        fn conv_path(&self) -> ConvPath {
            self.conv
        }

        fn conv(&mut self, c: &ConvCall) -> Result<(), CudaError> {
            assert_eq!(self.conv, ConvPath::Cudnn, "a library convolution on the im2col path");
            for (addr, floats) in c.extents() {
                if floats == 0 {
                    continue;
                }
                let (name, s, bytes) = self.find(addr).unwrap_or_else(|| panic!("operand {addr:#x} outside: {c:?}"));
                assert!(addr + 4 * floats as u64 <= s + bytes as u64, "convolution operand overruns {name}: {c:?}");
                assert_eq!(name, "arena", "{c:?}");
            }
            self.convs += 1;
            Ok(())
        }
    }

    fn run(layout: &Plan, step: &Plan, train: bool, rec: &mut Recorder) {
        let ex = Extras::of(layout);
        let tb = 1u64 << 40;
        let p = Ptrs { arena: tb, conv_ws: 2 * tb, partials: 3 * tb, loss: 4 * tb, labels: 5 * tb, step: 6 * tb };
        rec.bufs = vec![
            ("arena", p.arena, 4 * layout.arena_len()),
            ("conv_ws", p.conv_ws, 4 * ex.conv_ws),
            ("partials", p.partials, 8 * ex.partials),
            ("loss", p.loss, 4 * ex.loss),
            ("labels", p.labels, 4 * ex.labels),
            ("step", p.step, 4 * ex.step),
        ];
        Encoder::new(rec, step, p, ex).step(train).unwrap();
    }

    fn plans(method: Method, k: usize, batch: usize, last: usize) -> (Plan, Plan) {
        plans_of(Arch::resnet(20, 3, 16, 10).unwrap(), method, k, batch, last)
    }

    fn plans_of(arch: Arch, method: Method, k: usize, batch: usize, last: usize) -> (Plan, Plan) {
        let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
        let mean = [0.5, 0.4, 0.3, 0.0];
        let std = [0.2, 0.25, 0.3, 1.0];
        let layout = Plan::new(arch, part.clone(), method, batch, mean, std).unwrap();
        let small = Plan::new(arch, part, method, last, mean, std).unwrap();
        (layout, small)
    }

    #[test]
    fn every_launch_and_gemm_stays_in_its_buffers() {
        let mut contrast = Method::reference(Base::Dgl, false);
        contrast.local_loss = LocalLoss::Contrast;
        let mut seen = std::collections::HashSet::new();
        let cifar = Arch::resnet(20, 3, 16, 10).unwrap();
        // The ImageNet stem's max pool, and four stages.
        let imagenet = Arch::resnet_imagenet(18, 3, 32, 10).unwrap().with_width(8).unwrap();
        // Grouped 3×3s (one GEMM per group on the im2col path), stride 1 and 2.
        let resnext = Arch::resnet_imagenet(50, 3, 32, 10).unwrap().with_width(16).unwrap().with_groups(4, 16).unwrap();
        for (arch, method, k) in [
            (cifar, Method::reference(Base::E2e, false), 1),
            (cifar, Method::reference(Base::InfoPro, false), 2),
            (cifar, Method::reference(Base::InfoPro, true), 4),
            (cifar, Method::reference(Base::Greedy, false), 2),
            (cifar, contrast, 2),
            (imagenet, Method::reference(Base::InfoPro, true), 4),
            (resnext, Method::reference(Base::E2e, false), 1),
            // Kept values in bf16 and in f16: the narrow and widen kernels.
            (cifar, Method { precision: Precision::Bf16Mixed, ..Method::reference(Base::InfoPro, true) }, 4),
            (cifar, Method { precision: Precision::F16Mixed, ..Method::reference(Base::E2e, false) }, 1),
        ] {
            let (layout, small) = plans_of(arch, method, k, 6, 3);
            for (step, train) in [(&layout, true), (&layout, false), (&small, true), (&small, false)] {
                for conv in [ConvPath::Im2col, ConvPath::Cudnn] {
                    let mut rec = Recorder::new(conv);
                    run(&layout, step, train, &mut rec);
                    assert!(rec.launches > 0 && rec.gemms > 0);
                    // Every convolution is one library call on the cuDNN path, none on im2col.
                    assert_eq!(rec.convs > 0, conv == ConvPath::Cudnn);
                    seen.extend(rec.kernels_seen);
                }
            }
        }
        // Every kernel of the table is reachable from some plan (none is dead code).
        let all: std::collections::HashSet<&str> = crate::kernels::KERNELS.iter().map(|d| d.name).collect();
        let missing: Vec<_> = all.difference(&seen).collect();
        assert!(missing.is_empty(), "kernels no plan launched: {missing:?}");
    }

    #[test]
    fn convolutions_are_chunked_to_the_workspace() {
        let (layout, _) = plans(Method::reference(Base::E2e, false), 1, 8, 8);
        let mut ex = Extras::of(&layout);
        // A workspace of 3 images' worth forces chunks of 3, 3, 2 in every conv.
        let mut per = 0;
        layout.train_step(|op| {
            if let Op::Conv(op::Conv { shape: s, .. }) = op {
                per = per.max(conv_ws_per_image(s));
            }
        });
        assert_eq!(ex.conv_ws, 8 * per);
        ex.conv_ws = 3 * per;
        let mut rec = Recorder::new(ConvPath::Im2col);
        let tb = 1u64 << 40;
        let p = Ptrs { arena: tb, conv_ws: 2 * tb, partials: 3 * tb, loss: 4 * tb, labels: 5 * tb, step: 6 * tb };
        rec.bufs = vec![
            ("arena", p.arena, 4 * layout.arena_len()),
            ("conv_ws", p.conv_ws, 4 * ex.conv_ws),
            ("partials", p.partials, 8 * ex.partials),
            ("loss", p.loss, 4 * ex.loss),
            ("labels", p.labels, 4 * ex.labels),
            ("step", p.step, 4 * ex.step),
        ];
        Encoder::new(&mut rec, &layout, p, ex).step(true).unwrap();
    }
}
