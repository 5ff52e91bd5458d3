//! The schedule of the ImageNet decoders ([`super::super::StagedDecoderP`]): the forward
//! keeps each conv's output (its BN's input) and batch statistics; the ReLU outputs and
//! their upsampled copies, the largest values of the net, are temporaries, recomputed in
//! the backward with the forward's arithmetic (the same bits).

use super::{Fwd, Gen};
use crate::method::Pff;
use crate::ops::Window;
use crate::plan::{op, BnP, Buf, ConvP, LossSlot, Op, StagedDecoderP, MAX_DECODER_LAYERS};

impl<F: FnMut(&Op)> Gen<'_, F> {
    /// The decoder loss on module output `x`, its input gradient added into `dacc`.
    ///
    /// - [`Pff::Output`] (the ImageNet reference): one decoder on the whole map; its output
    ///   is cut into `n × n` patches, each scored by a mean BCE against the same patch of
    ///   the de-normalised image, the losses summed (the reference's four quadrants).
    /// - [`Pff::Input`]: patch `p` of the map goes through decoder `p` to patch `p` of the
    ///   image, one patch after the other, so one patch's values are live at a time.
    pub(super) fn staged_decoder_loss(
        &mut self,
        dp: &StagedDecoderP,
        x: Buf,
        dacc: Buf,
        img: Buf,
        scale: f32,
        slot: LossSlot,
    ) {
        let entry = self.top;
        let (n, g) = (self.n, dp.n);
        match dp.pff {
            Pff::Output => {
                let dx = self.staged_decoder(&dp.layers, dp.n_layers, x, img, (0, 0), g, scale, slot, entry);
                self.op(Op::Add(op::Add { y: dacc, x: dx }));
            }
            Pff::Input => {
                let (ph, po) = (dp.in_side(), dp.out_side());
                for r in 0..g {
                    for c in 0..g {
                        let mark = self.top;
                        let win =
                            Window { c: dp.c, h: dp.h, w: dp.h, y0: r * ph, x0: c * ph, ph, pw: ph, oh: ph, ow: ph };
                        let xp = self.alloc(n * win.out_len());
                        self.op(Op::Crop(op::Crop { window: win, x, y: xp }));
                        let layers = dp.patch(r * g + c);
                        let at = (r * po, c * po);
                        let dxp = self.staged_decoder(&layers, dp.n_layers, xp, img, at, 1, scale, slot, entry);
                        // The gradient of the crop: an identity resize adds each value into
                        // its place (weights exactly 1 and 0).
                        self.op(Op::ResizeBackward(op::ResizeBackward { window: win, dy: dxp, dx: dacc }));
                        self.top = mark;
                    }
                }
            }
        }
        self.top = entry;
    }

    /// One decoder on `x` (the map or a patch of it): forward, the loss of its output
    /// against the image window at `at` of the output's size cut into `cut × cut` pieces,
    /// backward. Returns its input gradient, on top of the stack (the caller pops it).
    #[allow(clippy::too_many_arguments)]
    fn staged_decoder(
        &mut self,
        layers: &[(ConvP, BnP); MAX_DECODER_LAYERS],
        nl: usize,
        x: Buf,
        img: Buf,
        at: (usize, usize),
        cut: usize,
        scale: f32,
        slot: LossSlot,
        entry: usize,
    ) -> Buf {
        let n = self.n;
        let len = |l: usize| {
            let s = layers[l].0.s;
            n * s.c_out * s.h * s.w
        };
        // Kept: every conv's output and its BN's statistics.
        let mut hs = [(Buf::f32(0, 0), Buf::f32(0, 0)); MAX_DECODER_LAYERS];
        for (l, h) in hs.iter_mut().enumerate().take(nl) {
            *h = (self.alloc(len(l)), if l + 1 < nl { self.alloc(4 * layers[l].1.s.c) } else { Buf::f32(0, 0) });
        }
        for l in 0..nl {
            let (conv, _) = layers[l];
            let mark = self.top;
            let inp = if l == 0 { x } else { self.relu_upsampled(layers, &hs, l, None) };
            self.op(Op::Conv(op::Conv { shape: conv.s, weight: conv.w, bias: conv.b, x: inp, y: hs[l].0 }));
            self.top = mark;
        }
        // The output, its loss, and the gradient of the last conv's output over that output.
        let hl = hs[nl - 1].0;
        let o = self.alloc(hl.len);
        self.op(Op::Sigmoid(op::Sigmoid { x: hl, y: o }));
        let d_o = self.decoder_bce(o, layers[nl - 1].0.s.h, img, at, cut, scale, slot);
        self.op(Op::SigmoidBackward(op::SigmoidBackward { y: o, dy: d_o, dx: hl }));
        self.decoder_peak = self.decoder_peak.max(self.top - entry);
        // Backward, top down. The running gradient `d` (of conv l's output) sits at `base`;
        // conv l−1's goes there too, over d and the recomputed ReLU output, both dead by
        // the time the BN backward writes it.
        let base = hl.off;
        let mut d = hl;
        for l in (1..nl).rev() {
            let (conv, _) = layers[l];
            let (below, bn) = (hs[l - 1], layers[l - 1].1);
            self.top = d.end();
            let a = self.alloc(below.0.len);
            let da = self.alloc(below.0.len);
            let r = self.relu_upsampled(layers, &hs, l, Some(a));
            let sums = self.alloc(2 * bn.s.c);
            self.op(Op::ConvBackward(op::ConvBackward {
                shape: conv.s,
                weight: conv.w,
                bias: conv.b,
                x: Some(r),
                dy: d,
                dx: None,
            }));
            self.op(Op::ConvBackward(op::ConvBackward {
                shape: conv.s,
                weight: conv.w,
                bias: None,
                x: None,
                dy: d,
                dx: Some(r),
            }));
            self.op(Op::Zero(op::Zero { buf: da }));
            let up = layers[l].0.s.h;
            let side = layers[l - 1].0.s.h;
            let win = Window::full(bn.s.c, side, side, up, up);
            self.op(Op::ResizeBackward(op::ResizeBackward { window: win, dy: r, dx: da }));
            self.op(Op::ReluBackward(op::ReluBackward { y: a, dy: da }));
            let dh = Buf::f32(base, below.0.len);
            self.op(Op::BnBackward(op::BnBackward {
                shape: bn.s,
                affine: bn.p,
                x: below.0,
                dy: da,
                dx: dh,
                stats: below.1,
                sums,
                weights: true,
            }));
            self.decoder_peak = self.decoder_peak.max(self.top - entry);
            d = dh;
        }
        self.top = d.end();
        let (conv, _) = layers[0];
        let dx = self.alloc(x.len);
        self.op(Op::ConvBackward(op::ConvBackward {
            shape: conv.s,
            weight: conv.w,
            bias: conv.b,
            x: Some(x),
            dy: d,
            dx: Some(dx),
        }));
        self.decoder_peak = self.decoder_peak.max(self.top - entry);
        dx
    }

    /// Layer `l`'s input: layer `l − 1`'s BN + ReLU output (into `a`, a temporary on top
    /// unless given), upsampled to layer `l`'s side. The forward trains the BN; the
    /// backward (`a` given) applies the statistics the forward kept.
    fn relu_upsampled(
        &mut self,
        layers: &[(ConvP, BnP); MAX_DECODER_LAYERS],
        hs: &[(Buf, Buf); MAX_DECODER_LAYERS],
        l: usize,
        a: Option<Buf>,
    ) -> Buf {
        let (h, st) = hs[l - 1];
        let bn = layers[l - 1].1;
        let recompute = a.is_some();
        let a = a.unwrap_or_else(|| self.alloc(h.len));
        if recompute {
            self.op(Op::BnApply(op::BnApply { shape: bn.s, affine: bn.p, x: h, y: a, stats: st }));
        } else {
            self.bn_fwd(bn, h, a, st, Fwd::Train(1));
        }
        self.op(Op::Relu(op::Relu { x: a }));
        let (side, up) = (layers[l - 1].0.s.h, layers[l].0.s.h);
        let r = self.alloc(self.n * bn.s.c * up * up);
        self.op(Op::Resize(op::Resize { window: Window::full(bn.s.c, side, side, up, up), x: a, y: r }));
        r
    }

    /// Mean BCE of each of the `cut × cut` pieces of the decoder output `o` (side `side`)
    /// against the same piece of the de-normalised image window at `at`, summed into
    /// `slot`; returns the output's gradient (scaled by `scale`).
    #[allow(clippy::too_many_arguments)]
    fn decoder_bce(
        &mut self,
        o: Buf,
        side: usize,
        img: Buf,
        at: (usize, usize),
        cut: usize,
        scale: f32,
        slot: LossSlot,
    ) -> Buf {
        let (n, ci, image) = (self.n, self.plan.arch.in_channels, self.plan.arch.image);
        let (mean, std) = (self.plan.mean, self.plan.std);
        let d_o = self.alloc(o.len);
        if cut == 1 {
            let t = self.alloc(o.len);
            let twin = Window { c: ci, h: image, w: image, y0: at.0, x0: at.1, ph: side, pw: side, oh: side, ow: side };
            self.op(Op::Crop(op::Crop { window: twin, x: img, y: d_o }));
            self.op(Op::Restore(op::Restore { x: d_o, y: t, channels: ci, hw: side * side, mean, std }));
            self.op(Op::Bce(op::Bce { probs: o, target: t, dprobs: d_o, scale, slot }));
            self.top = t.off;
            return d_o;
        }
        self.op(Op::Zero(op::Zero { buf: d_o }));
        for r in 0..cut {
            for c in 0..cut {
                let mark = self.top;
                let (y0, y1) = (r * side / cut, (r + 1) * side / cut);
                let (x0, x1) = (c * side / cut, (c + 1) * side / cut);
                let (ph, pw) = (y1 - y0, x1 - x0);
                let owin = Window { c: ci, h: side, w: side, y0, x0, ph, pw, oh: ph, ow: pw };
                let twin = Window { y0: at.0 + y0, x0: at.1 + x0, h: image, w: image, ..owin };
                let plen = n * owin.out_len();
                let (op, t, dp) = (self.alloc(plen), self.alloc(plen), self.alloc(plen));
                self.op(Op::Crop(op::Crop { window: owin, x: o, y: op }));
                self.op(Op::Crop(op::Crop { window: twin, x: img, y: dp }));
                self.op(Op::Restore(op::Restore { x: dp, y: t, channels: ci, hw: ph * pw, mean, std }));
                self.op(Op::Bce(op::Bce { probs: op, target: t, dprobs: dp, scale, slot }));
                // The gradient of the crop (an identity resize adds each value into its place).
                self.op(Op::ResizeBackward(op::ResizeBackward { window: owin, dy: dp, dx: d_o }));
                self.top = mark;
            }
        }
        d_o
    }
}
