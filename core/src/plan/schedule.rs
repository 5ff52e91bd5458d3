//! The schedule generator: emits the ops of a step while a stack allocator hands
//! out activation buffers. Popping a module's frame after its backward is what
//! makes the memory of local learning follow one module at a time.
//!
//! What a training step keeps for backward, and why it is enough:
//! - per conv–BN(–ReLU) layer only the conv output (the BN input) and the batch statistics;
//!   an inner ReLU output is recomputed in backward ([`Op::BnApply`] + [`Op::Relu`], the
//!   forward's own arithmetic on the same values, so the same bits) and lives in a
//!   temporary; the shortcut BN's output is a forward temporary too;
//! - a module's last backward (the one that takes its parameter gradients) walks its blocks
//!   from the top down and reuses the region of every block it has finished: the next
//!   block's output gradient and its temporaries go there, and a block's input gradient
//!   overlays the block's own values once nothing reads them any more;
//! - an eval pass keeps only the current block's input, output and two temporaries;
//! - at [`crate::method::Precision::Bf16Mixed`] (and `F16Mixed`) a block's kept values (its
//!   conv outputs and, inside a module, its output) are bf16 (f16) ([`Gen::alloc_kept`]): the forward computes
//!   each in an `f32` temporary (in the regions of the module's later blocks, not yet
//!   written, when it fits), narrows it ([`Op::Narrow`] also rounds the `f32` copy, so the
//!   forward goes on from what the backward will read) and the backward widens it back
//!   ([`Op::Widen`]) into one room per block, once per value. Everything else stays `f32`.

use super::layout::{BlockP, BnP, DecoderP, HeadP};
use super::op::{self, Buf, Elem, LossKind, LossSlot, Op, Peer};
use super::placement::Placement;
use super::{AuxNet, Plan};
use crate::method::{Family, Levels, Precision};
use crate::ops::Window;

mod imagenet_decoder;

pub(crate) struct DryRun {
    pub peak: usize,
    pub decoder_peak: usize,
    pub scratch: usize,
}

/// Runs the generator without an executor, measuring the stack's peak.
pub(crate) fn dry_run(plan: &Plan, train: bool) -> DryRun {
    let mut g = Gen::new(plan, |_: &Op| {});
    if train {
        g.train();
    } else {
        g.eval();
    }
    DryRun { peak: g.peak, decoder_peak: g.decoder_peak, scratch: g.scratch }
}

/// Saved forward values of one residual block in training.
#[derive(Clone, Copy)]
struct BlockActs {
    x: Buf,
    /// Conv outputs (BN inputs) and BN batch statistics.
    h: [Buf; 3],
    st: [Buf; 3],
    /// Shortcut conv output and its BN statistics.
    ds: Option<(Buf, Buf)>,
    out: Buf,
    /// The block's own region of the stack, `[start, end)`.
    start: usize,
    end: usize,
}

/// What the stem keeps: its batch statistics. Its conv output and its ReLU output (module
/// 0's input) are forward temporaries, recomputed for the backward: the stem conv is a
/// few channels deep, so recomputing it costs little and saves a full-resolution tensor.
#[derive(Clone, Copy)]
struct StemActs {
    st: Buf,
}

/// A module waiting for its parameter gradients in [`Gen::train_hpff`].
struct Frame {
    fwd: ModuleFwd,
    out: Buf,
    /// Gradient of the output from every loss that trains this module.
    t: Buf,
    stem: Option<StemActs>,
    /// Its forward values were dropped after its cascade backward
    /// ([`crate::method::Method::recompute`]): the backward recomputes them from `fwd.x`.
    dropped: bool,
}

/// Where a module's forward left its values: enough to re-derive every block's layout.
#[derive(Clone, Copy)]
struct ModuleFwd {
    j: usize,
    start: usize,
    /// End of its values on the stack.
    end: usize,
    x: Buf,
    out: Buf,
}

const NONE: Buf = Buf::f32(0, 0);

/// Floats of `f32` room a kept buffer needs to be computed in or read back into: its
/// length when it is narrower than `f32`, else none (it is used in place).
fn narrow_len(b: Buf) -> usize {
    if b.elem == Elem::F32 {
        0
    } else {
        b.len
    }
}

/// Where the `f32` value of kept buffer `b` is: `b` itself, or the room at `into`.
fn computed(b: Buf, into: Buf) -> Buf {
    if b.elem == Elem::F32 {
        b
    } else {
        Buf::f32(into.off, b.len)
    }
}

/// Where a backward pass puts its input gradient.
#[derive(Clone, Copy)]
enum Dx {
    /// Not wanted.
    No,
    /// Into this buffer.
    At(Buf),
    /// `len` floats wherever the pass's temporaries leave room; the caller reads the
    /// returned buffer before it allocates anything.
    Temp(usize),
}

/// How a forward pass runs its BNs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fwd {
    Eval,
    /// Batch statistics, applying the running-statistics update this many times (one per
    /// pass the reference makes through the module; see [`Gen::train_hpff`]).
    Train(u8),
}

const TRAIN: Fwd = Fwd::Train(1);
/// A forward run again for a backward: batch statistics, no running-statistics update.
const RECOMPUTE: Fwd = Fwd::Train(0);

pub(crate) struct Gen<'a, F: FnMut(&Op)> {
    plan: &'a Plan,
    /// Moves the layout's checkpoint-order offsets to the arena's.
    place: Placement,
    emit: F,
    n: usize,
    /// The element of the values a block keeps for backward.
    kept: Elem,
    top: usize,
    pub(crate) peak: usize,
    pub(crate) decoder_peak: usize,
    pub(crate) scratch: usize,
}

impl<'a, F: FnMut(&Op)> Gen<'a, F> {
    pub(crate) fn new(plan: &'a Plan, emit: F) -> Self {
        Gen {
            plan,
            place: Placement::of(plan),
            emit,
            n: plan.batch,
            kept: match plan.method.precision {
                Precision::F32 => Elem::F32,
                Precision::Bf16Mixed => Elem::Bf16,
                Precision::F16Mixed => Elem::F16,
            },
            top: plan.act_off(),
            peak: 0,
            decoder_peak: 0,
            scratch: 0,
        }
    }

    /// `len` elements on top of the stack. Every activation and activation gradient is
    /// allocated here or at [`Gen::alloc_at`]: where their element type is chosen.
    fn alloc(&mut self, len: usize) -> Buf {
        self.alloc_as(len, Elem::F32)
    }

    /// `len` elements of a value a block keeps for backward, in the plan's precision
    /// ([`crate::method::Precision`]).
    fn alloc_kept(&mut self, len: usize) -> Buf {
        self.alloc_as(len, self.kept)
    }

    fn alloc_as(&mut self, len: usize, elem: Elem) -> Buf {
        let b = Buf { off: self.top, len, elem };
        self.top = b.end();
        self.peak = self.peak.max(self.top - self.plan.act_off());
        b
    }

    /// `len` elements at `off`, over values the caller knows are dead; the stack grows to cover them.
    fn alloc_at(&mut self, off: usize, len: usize) -> Buf {
        let b = Buf::f32(off, len);
        self.top = self.top.max(b.end());
        self.peak = self.peak.max(self.top - self.plan.act_off());
        b
    }

    fn op(&mut self, mut op: Op) {
        if let Op::Conv(op::Conv { shape: s, .. }) | Op::ConvBackward(op::ConvBackward { shape: s, .. }) = op {
            self.scratch = self.scratch.max(s.scratch_len());
        }
        let share = self.plan.micro.share;
        if let Op::CrossEntropy(op::CrossEntropy { scale, .. })
        | Op::Bce(op::Bce { scale, .. })
        | Op::SupCon(op::SupCon { scale, .. }) = &mut op
        {
            *scale *= share;
        }
        let (stage, place, base) = (self.plan.stage, &self.place, self.plan.state_off());
        op.relocate(
            |p| stage.param(place.param(p)).expect("a stage's ops touch only its own parameters"),
            |s| base + stage.state_of(place.state(s - base)).expect("a stage's ops touch only its own BN statistics"),
        );
        (self.emit)(&op);
    }

    fn zeroed(&mut self, len: usize) -> Buf {
        let b = self.alloc(len);
        self.op(Op::Zero(op::Zero { buf: b }));
        b
    }

    /// Length of module `j`'s output.
    fn out_len(&self, j: usize) -> usize {
        let (c, h, _) = self.plan.module_out(j);
        self.n * c * h * h
    }

    /// The largest output among the stage's modules and the input it receives.
    fn max_out_len(&self) -> usize {
        let st = self.plan.stage;
        (st.first.saturating_sub(1)..st.end).map(|j| self.out_len(j)).max().unwrap_or(0)
    }

    /// A stage after the first: room for its first module's input, received from below.
    fn received_input(&mut self) -> Option<Buf> {
        let first = self.plan.stage.first;
        (first > 0).then(|| {
            let x = self.alloc(self.out_len(first - 1));
            self.op(Op::Recv(op::Recv { buf: x, from: Peer::Prev }));
            x
        })
    }

    /// Whether module `j` is the last of a stage below the top one, whose output goes up.
    fn sends_output(&self, j: usize) -> bool {
        j + 1 == self.plan.stage.end && j + 1 < self.plan.modules()
    }

    // ---- backbone ------------------------------------------------------------------

    /// Room for the stem's batch statistics.
    fn stem_acts(&mut self) -> StemActs {
        StemActs { st: self.alloc(4 * self.plan.stem().bn.s.c) }
    }

    /// The stem (statistics into `s`) and module 0 (BN running statistics of module 0
    /// updated per `mode`). The stem's output goes above the module's values, so it is
    /// dropped with the forward.
    fn stem_module_fwd(&mut self, img: Buf, s: StemActs, out: Buf, mode: Fwd) -> ModuleFwd {
        let m = self.module_alloc(0, NONE, out);
        let a = self.alloc(self.stem_len());
        self.stem_output(img, s, a, Some(TRAIN));
        let m = ModuleFwd { x: a, ..m };
        self.module_run(&m, mode);
        self.top = m.end;
        m
    }

    /// Floats of the stem's output (module 0's input).
    fn stem_len(&self) -> usize {
        let sp = self.plan.stem();
        let side = self.plan.arch.stem_size();
        self.n * sp.bn.s.c * side * side
    }

    /// Floats of the stem's conv output: the stem's output itself unless a max pool follows.
    fn stem_conv_len(&self) -> usize {
        let sp = self.plan.stem();
        self.n * sp.bn.s.c * sp.bn.s.hw
    }

    /// The stem's output into `a`: its conv output (and, before a max pool, its ReLU output)
    /// are temporaries above the stack, and the BN trains (`mode`) or applies the statistics
    /// the forward kept (recomputation: the same arithmetic on the same values, so the same bits).
    fn stem_output(&mut self, img: Buf, s: StemActs, a: Buf, mode: Option<Fwd>) {
        let sp = self.plan.stem();
        let mark = self.top;
        let h = self.alloc(self.stem_conv_len());
        self.op(Op::Conv(op::Conv { shape: sp.conv.s, weight: sp.conv.w, bias: None, x: img, y: h }));
        let r = if sp.pool.is_some() { self.alloc(h.len) } else { a };
        match mode {
            Some(mode) => self.bn_fwd(sp.bn, h, r, s.st, mode),
            None => self.op(Op::BnApply(op::BnApply { shape: sp.bn.s, affine: sp.bn.p, x: h, y: r, stats: s.st })),
        }
        self.op(Op::Relu(op::Relu { x: r }));
        if let Some(pool) = sp.pool {
            self.op(Op::MaxPool(op::MaxPool { shape: pool, x: r, y: a }));
        }
        self.top = mark;
    }

    /// Backward of module 0 and the stem under it, the last use of their values: the
    /// stem's output is recomputed into `spare` when the caller has a free buffer that
    /// large, else on top (and module 0's values from it, on top, when `dropped`); its
    /// gradient and temporaries go over the module's values when they fit.
    fn stem_module_bwd(&mut self, m: &ModuleFwd, s: &StemActs, img: Buf, dout: Buf, spare: Option<Buf>, dropped: bool) {
        let mark = self.top;
        let len = self.stem_len();
        let a = match spare {
            Some(b) if b.len >= len => Buf::f32(b.off, len),
            _ => self.alloc(len),
        };
        self.stem_output(img, *s, a, None);
        let m = match dropped {
            true => self.module_fwd(0, a, m.out, RECOMPUTE),
            false => ModuleFwd { x: a, ..*m },
        };
        let ds = match self.input_grad_in_module(&m, a.len) {
            Some(b) => b,
            None => self.alloc(a.len),
        };
        self.module_bwd(&m, dout, Dx::At(ds), true);
        let lo = if ds.off >= m.start && ds.off < m.end { ds.end() } else { m.start };
        self.stem_bwd(s, a, img, ds, Some((lo, m.end)));
        self.top = mark;
    }

    /// The stem's backward from `dout`, the gradient of its output `a`; temporaries go into
    /// `room` when they fit.
    fn stem_bwd(&mut self, s: &StemActs, a: Buf, img: Buf, dout: Buf, room: Option<(usize, usize)>) {
        let sp = self.plan.stem();
        let mark = self.top;
        let hl = self.stem_conv_len();
        let (h, dh) = match sp.pool {
            None => {
                self.op(Op::ReluBackward(op::ReluBackward { y: a, dy: dout }));
                self.top = self.reuse_or_top(room, 2 * hl + 2 * sp.bn.s.c);
                // The conv output again, for the BN's backward.
                let h = self.alloc(hl);
                self.op(Op::Conv(op::Conv { shape: sp.conv.s, weight: sp.conv.w, bias: None, x: img, y: h }));
                (h, (dout, self.alloc(hl)))
            }
            Some(pool) => {
                // The pool's backward finds each window's winner in the ReLU output, so the
                // conv output and the ReLU output are both recomputed; the BN's input
                // gradient then goes over the ReLU output, dead by then.
                self.top = self.reuse_or_top(room, 3 * hl + 2 * sp.bn.s.c);
                let h = self.alloc(hl);
                self.op(Op::Conv(op::Conv { shape: sp.conv.s, weight: sp.conv.w, bias: None, x: img, y: h }));
                let r = self.alloc(hl);
                self.op(Op::BnApply(op::BnApply { shape: sp.bn.s, affine: sp.bn.p, x: h, y: r, stats: s.st }));
                self.op(Op::Relu(op::Relu { x: r }));
                let dr = self.alloc(hl);
                self.op(Op::MaxPoolBackward(op::MaxPoolBackward { shape: pool, x: r, dy: dout, dx: dr }));
                self.op(Op::ReluBackward(op::ReluBackward { y: r, dy: dr }));
                (h, (dr, r))
            }
        };
        let (dy, dx) = dh;
        let sums = self.alloc(2 * sp.bn.s.c);
        self.op(Op::BnBackward(op::BnBackward {
            shape: sp.bn.s,
            affine: sp.bn.p,
            x: h,
            dy,
            dx,
            stats: s.st,
            sums,
            weights: true,
        }));
        self.op(Op::ConvBackward(op::ConvBackward {
            shape: sp.conv.s,
            weight: sp.conv.w,
            bias: None,
            x: Some(img),
            dy: dx,
            dx: None,
        }));
        self.top = mark;
    }

    fn bn_fwd(&mut self, bn: super::BnP, x: Buf, y: Buf, stats: Buf, mode: Fwd) {
        let (s, p, state) = (bn.s, bn.p, bn.state + self.plan.state_off());
        self.op(match mode {
            Fwd::Train(updates) => Op::BnTrain(op::BnTrain { shape: s, affine: p, state, x, y, stats, updates }),
            Fwd::Eval => Op::BnEval(op::BnEval { shape: s, affine: p, state, x, y, stats }),
        });
    }

    fn block_alloc(&mut self, bp: &BlockP, x: Buf, out: Option<Buf>) -> BlockActs {
        let n = self.n;
        let start = self.top;
        let mut acts = BlockActs { x, h: [NONE; 3], st: [NONE; 3], ds: None, out: NONE, start, end: start };
        for l in 0..bp.layers {
            let bn = bp.bns[l].s;
            acts.h[l] = self.alloc_kept(n * bn.c * bn.hw);
            acts.st[l] = self.alloc(4 * bn.c);
        }
        if let Some((_, bn)) = bp.downsample {
            acts.ds = Some((self.alloc_kept(n * bn.s.c * bn.s.hw), self.alloc(4 * bn.s.c)));
        }
        let sh = bp.shape;
        acts.out = out.unwrap_or_else(|| self.alloc_kept(n * sh.c_out * sh.h_out * sh.w_out));
        acts.end = self.top;
        acts
    }

    /// Floats of the longest inner ReLU output of a block (0 for one layer).
    fn inner_len(&self, bp: &BlockP) -> usize {
        (0..bp.layers.saturating_sub(1)).map(|l| self.n * bp.bns[l].s.c * bp.bns[l].s.hw).max().unwrap_or(0)
    }

    /// Forward of one block into its kept values `a`; its temporaries go into `room` (the
    /// regions of the module's blocks above, not yet written) when they fit.
    fn block_fwd(&mut self, bp: &BlockP, a: &BlockActs, mode: Fwd, room: Option<(usize, usize)>) {
        let mark = self.top;
        // Inner ReLU outputs and the shortcut's BN output die within the forward. Values
        // kept in 16 bits are computed in f32 here, then narrowed (and the f32 copy
        // rounded, so the rest of the forward reads what the backward will); a kept input
        // is read widened.
        let tmp_len = self.inner_len(bp).max(if a.ds.is_some() { a.out.len } else { 0 });
        let hmax = (0..bp.layers).map(|l| a.h[l]).chain(a.ds.map(|d| d.0)).map(narrow_len).max().unwrap_or(0);
        let mut room = room.unwrap_or((0, 0));
        let mut take = |g: &mut Self, len: usize| match room {
            (lo, hi) if lo + len <= hi => {
                room.0 += len;
                Buf::f32(lo, len)
            }
            _ => g.alloc(len),
        };
        let tmp = take(self, tmp_len);
        let (xw, hw, ow) = (take(self, narrow_len(a.x)), take(self, hmax), take(self, narrow_len(a.out)));
        let x = self.wide(a.x, xw);
        let out = computed(a.out, ow);
        let mut inp = x;
        for l in 0..bp.layers {
            let c = bp.convs[l];
            let h = computed(a.h[l], hw);
            self.op(Op::Conv(op::Conv { shape: c.s, weight: c.w, bias: None, x: inp, y: h }));
            self.narrow(h, a.h[l]);
            if l + 1 < bp.layers {
                let r = Buf::f32(tmp.off, h.len);
                self.bn_fwd(bp.bns[l], h, r, a.st[l], mode);
                self.op(Op::Relu(op::Relu { x: r }));
                inp = r;
            } else {
                self.bn_fwd(bp.bns[l], h, out, a.st[l], mode);
            }
        }
        match (bp.downsample, a.ds) {
            (Some((c, bn)), Some((hd, sd))) => {
                let od = Buf::f32(tmp.off, a.out.len);
                let h = computed(hd, hw);
                self.op(Op::Conv(op::Conv { shape: c.s, weight: c.w, bias: None, x, y: h }));
                self.narrow(h, hd);
                self.bn_fwd(bn, h, od, sd, mode);
                self.op(Op::AddRelu(op::AddRelu { y: out, x: od }));
            }
            _ => self.op(Op::AddRelu(op::AddRelu { y: out, x })),
        }
        self.narrow(out, a.out);
        self.top = mark;
    }

    /// `b` as `f32`: itself, or widened into the room at `into`.
    fn wide(&mut self, b: Buf, into: Buf) -> Buf {
        let y = computed(b, into);
        if y != b {
            self.op(Op::Widen(op::Widen { x: b, y }));
        }
        y
    }

    /// [`Gen::wide`] through one room that remembers which kept buffer it holds, so a
    /// value read twice in a row is widened once.
    fn wide_in(&mut self, held: &mut Buf, b: Buf, into: Buf) -> Buf {
        if b.elem == Elem::F32 {
            return b;
        }
        if *held != b {
            *held = b;
            return self.wide(b, into);
        }
        computed(b, into)
    }

    /// Keeps `f32` value `x` in `kept` when that is 16 bits (`x` is `kept` otherwise).
    fn narrow(&mut self, x: Buf, kept: Buf) {
        if x != kept {
            self.op(Op::Narrow(op::Narrow { x, y: kept }));
        }
    }

    /// Where `len` floats of temporaries go: at `lo` when they fit below `hi` (dead values
    /// the caller knows of), else on top of the stack.
    fn reuse_or_top(&self, room: Option<(usize, usize)>, len: usize) -> usize {
        match room {
            Some((lo, hi)) if lo + len <= hi => lo,
            _ => self.top,
        }
    }

    /// Backward of one block: `dout` (modified in place) is the gradient of its output;
    /// adds parameter gradients when `weights` and writes the input gradient per `dx`,
    /// returning where it went. Temporaries go into `room` when they fit. An `At` buffer
    /// may overlay the block's own values: it is written by the last op that reads them.
    fn block_bwd(
        &mut self,
        bp: &BlockP,
        a: &BlockActs,
        dout: Buf,
        dx: Dx,
        weights: bool,
        room: Option<(usize, usize)>,
    ) -> Option<Buf> {
        let mark = self.top;
        let tmax = (0..bp.layers).map(|l| a.h[l].len).max().unwrap_or(0).max(a.ds.map_or(0, |d| d.0.len));
        let cmax = (0..bp.layers).map(|l| bp.bns[l].s.c).max().unwrap_or(0).max(bp.shape.c_out);
        // A recomputed ReLU output is needed as the conv's input only for its weight
        // gradient: without one it is computed after the conv, over the conv's dy (t1).
        // On a last backward it goes over the BN input just consumed and what lies above
        // it in the block's region, all read by then.
        let overlay = room.is_some() && (1..bp.layers).all(|l| a.h[l].off + a.h[l - 1].len <= a.end);
        let inner = if overlay || !weights { 0 } else { self.inner_len(bp) };
        let want = match dx {
            Dx::No => 0,
            Dx::At(d) => d.len,
            Dx::Temp(len) => len,
        };
        let shortcut_dx = if a.ds.is_some() { want } else { 0 };
        // Kept 16-bit values are read back into `wv` (the output's into t2, free until the
        // first conv backward writes it).
        let wlen =
            (0..bp.layers).map(|l| a.h[l]).chain(a.ds.map(|d| d.0)).chain([a.x]).map(narrow_len).max().unwrap_or(0);
        debug_assert!(a.out.len <= tmax);
        let start = self.reuse_or_top(room, 2 * tmax + inner + 2 * cmax + shortcut_dx + wlen);
        let on_top = start == self.top;
        self.top = start;
        let (t1, sums, sc) = (self.alloc(tmax), self.alloc(2 * cmax), self.alloc(shortcut_dx));
        let wv = self.alloc(wlen);
        let (t2, ra) = (self.alloc(tmax), self.alloc(inner));
        // A temporary input gradient is written by the first layer's conv, which reads only
        // t1 and wv (and the shortcut's gradient): from t2 on everything is dead by then, and
        // on top of the stack it may reach past the end.
        let dx = match dx {
            Dx::No => None,
            Dx::At(d) => Some(d),
            Dx::Temp(len) if on_top || t2.off + len <= self.top => Some(Buf::f32(t2.off, len)),
            Dx::Temp(len) => Some(Buf::f32(mark.max(self.top), len)),
        };
        // Both reads of the ReLU backward -> BN backward run are widened before it.
        let y = self.wide(a.out, t2);
        let mut held = NONE;
        let first = a.ds.map_or(a.h[bp.layers - 1], |d| d.0);
        self.wide_in(&mut held, first, wv);
        self.op(Op::ReluBackward(op::ReluBackward { y, dy: dout }));
        // The shortcut first: dx may overlay this block's values, which it reads.
        let shortcut = match (bp.downsample, a.ds) {
            (Some((c, bn)), Some((hd, sd))) => {
                let dh = Buf::f32(t1.off, hd.len);
                let sums_d = Buf::f32(sums.off, 2 * bn.s.c);
                let x = self.wide_in(&mut held, hd, wv);
                self.op(Op::BnBackward(op::BnBackward {
                    shape: bn.s,
                    affine: bn.p,
                    x,
                    dy: dout,
                    dx: dh,
                    stats: sd,
                    sums: sums_d,
                    weights,
                }));
                let tmp = dx.map(|d| Buf::f32(sc.off, d.len));
                let x = weights.then(|| self.wide_in(&mut held, a.x, wv));
                self.op(Op::ConvBackward(op::ConvBackward { shape: c.s, weight: c.w, bias: None, x, dy: dh, dx: tmp }));
                tmp
            }
            _ => dx.map(|_| dout),
        };
        let mut dcur = dout;
        for l in (0..bp.layers).rev() {
            let bn = bp.bns[l];
            let dh = Buf::f32(t1.off, a.h[l].len);
            let sums_l = Buf::f32(sums.off, 2 * bn.s.c);
            let x = self.wide_in(&mut held, a.h[l], wv);
            self.op(Op::BnBackward(op::BnBackward {
                shape: bn.s,
                affine: bn.p,
                x,
                dy: dcur,
                dx: dh,
                stats: a.st[l],
                sums: sums_l,
                weights,
            }));
            let c = bp.convs[l];
            if l > 0 {
                let len = a.h[l - 1].len;
                let da = Buf::f32(t2.off, len);
                if weights {
                    let r = Buf::f32(if overlay { a.h[l].off } else { ra.off }, len);
                    let h = self.wide_in(&mut held, a.h[l - 1], wv);
                    self.relu_recompute(bp.bns[l - 1], (h, a.st[l - 1]), r);
                    self.op(Op::ConvBackward(op::ConvBackward {
                        shape: c.s,
                        weight: c.w,
                        bias: None,
                        x: Some(r),
                        dy: dh,
                        dx: Some(da),
                    }));
                    self.op(Op::ReluBackward(op::ReluBackward { y: r, dy: da }));
                } else {
                    self.op(Op::ConvBackward(op::ConvBackward {
                        shape: c.s,
                        weight: c.w,
                        bias: None,
                        x: None,
                        dy: dh,
                        dx: Some(da),
                    }));
                    let r = Buf::f32(t1.off, len);
                    let h = self.wide_in(&mut held, a.h[l - 1], wv);
                    self.relu_recompute(bp.bns[l - 1], (h, a.st[l - 1]), r);
                    self.op(Op::ReluBackward(op::ReluBackward { y: r, dy: da }));
                }
                dcur = da;
            } else {
                let x = weights.then(|| self.wide_in(&mut held, a.x, wv));
                self.op(Op::ConvBackward(op::ConvBackward { shape: c.s, weight: c.w, bias: None, x, dy: dh, dx }));
            }
        }
        if let (Some(d), Some(s)) = (dx, shortcut) {
            self.op(Op::Add(op::Add { y: d, x: s }));
        }
        if let Some(d) = dx {
            self.peak = self.peak.max(d.end() - self.plan.act_off());
        }
        self.top = mark;
        dx
    }

    fn module_fwd(&mut self, j: usize, x: Buf, out: Buf, mode: Fwd) -> ModuleFwd {
        let m = self.module_alloc(j, x, out);
        self.module_run(&m, mode);
        m
    }

    /// Allocates the values module `j` keeps for backward (all its blocks').
    fn module_alloc(&mut self, j: usize, x: Buf, out: Buf) -> ModuleFwd {
        let start = self.top;
        let blocks = self.plan.part.blocks_of(j);
        let mut cur = x;
        for g in blocks.clone() {
            let bp = self.plan.block(g);
            let acts = self.block_alloc(&bp, cur, (g + 1 == blocks.end).then_some(out));
            cur = acts.out;
        }
        ModuleFwd { j, start, end: self.top, x, out }
    }

    fn module_run(&mut self, m: &ModuleFwd, mode: Fwd) {
        for g in self.plan.part.blocks_of(m.j) {
            let (bp, acts) = self.acts_of(m, g);
            self.block_fwd(&bp, &acts, mode, Some((acts.end, m.end)));
        }
    }

    /// Re-derives the layout of block `g` of a module's forward (allocation is deterministic).
    fn acts_of(&mut self, m: &ModuleFwd, g: usize) -> (BlockP, BlockActs) {
        let saved = (self.top, self.peak);
        self.top = m.start;
        let blocks = self.plan.part.blocks_of(m.j);
        let mut cur = m.x;
        let mut found = None;
        for gg in blocks.start..=g {
            let bp = self.plan.block(gg);
            let last = gg + 1 == blocks.end;
            let acts = self.block_alloc(&bp, cur, last.then_some(m.out));
            cur = acts.out;
            if gg == g {
                found = Some((bp, acts));
            }
        }
        (self.top, self.peak) = saved;
        found.expect("block belongs to the module")
    }

    /// Where the input gradient of module `m` can go when its backward is the last use of
    /// its values: over its first block's, if it fits there.
    fn input_grad_in_module(&mut self, m: &ModuleFwd, len: usize) -> Option<Buf> {
        let (_, first) = self.acts_of(m, self.plan.part.blocks_of(m.j).start);
        (first.start + len <= first.end).then_some(Buf::f32(first.start, len))
    }

    /// Backward of a module: parameter gradients when `weights`, input gradient per `dx`
    /// (returned). The pass that takes parameter gradients is the last to read the module's
    /// values (see [`Gen::train_hpff`]), so it reuses the region of each block it finishes.
    fn module_bwd(&mut self, m: &ModuleFwd, dout: Buf, dx: Dx, weights: bool) -> Option<Buf> {
        let mark = self.top;
        let blocks = self.plan.part.blocks_of(m.j);
        let consume = weights;
        let mut ping: Option<[Buf; 2]> = None;
        let mut dy = dout;
        let mut k = 0;
        let mut input_grad = None;
        for g in blocks.clone().rev() {
            let (bp, acts) = self.acts_of(m, g);
            let first = g == blocks.start;
            let len = acts.x.len;
            let dxb = if first {
                dx
            } else if consume && acts.start + len <= acts.end {
                Dx::At(Buf::f32(acts.start, len))
            } else {
                let maxlen = blocks.clone().map(|b| self.in_len(b)).max().unwrap_or(0);
                let p = *ping.get_or_insert_with(|| [self.alloc(maxlen), self.alloc(maxlen)]);
                k ^= 1;
                Dx::At(Buf::f32(p[k].off, len))
            };
            // Dead space: the regions of the blocks above, less the gradient living there.
            let room = consume.then(|| {
                let lo = if dy.off >= acts.end && dy.off < m.end { dy.end() } else { acts.end };
                (lo, m.end)
            });
            let d = self.block_bwd(&bp, &acts, dy, dxb, weights, room);
            match (first, d) {
                (true, _) => input_grad = d,
                (false, Some(d)) => dy = d,
                (false, None) => {}
            }
        }
        self.top = mark;
        input_grad
    }

    /// Floats of block `g`'s input.
    fn in_len(&self, g: usize) -> usize {
        let s = self.plan.arch.block(g);
        self.n * s.c_in * s.h_in * s.w_in
    }

    // ---- auxiliary nets and the classifier ----------------------------------------

    /// An auxiliary classifier's loss on `x`; its input gradient is added to `dacc`. Each
    /// conv keeps its output and batch statistics; its ReLU output is a temporary, recomputed
    /// in backward.
    fn head_loss(&mut self, hp: &HeadP, x: Buf, dacc: Buf, scale: f32, slot: LossSlot) {
        let mark = self.top;
        let n = self.n;
        let mut saved = [(NONE, NONE); super::MAX_HEAD_CONVS];
        for (i, s) in saved.iter_mut().enumerate().take(hp.n_convs) {
            let bn = hp.convs[i].1.s;
            *s = (self.alloc(n * bn.c * bn.hw), self.alloc(4 * bn.c));
        }
        let pooled = self.alloc(n * hp.pool_c);
        let alen = saved.iter().map(|s| s.0.len).max().unwrap_or(0);
        let fwd_tmp = self.top;
        let r = self.alloc(alen);
        let mut inp = x;
        for (i, &(h, st)) in saved.iter().enumerate().take(hp.n_convs) {
            let (c, bn) = hp.convs[i];
            self.op(Op::Conv(op::Conv { shape: c.s, weight: c.w, bias: None, x: inp, y: h }));
            inp = Buf::f32(r.off, h.len);
            self.bn_fwd(bn, h, inp, st, TRAIN);
            self.op(Op::Relu(op::Relu { x: inp }));
        }
        self.op(Op::Pool(op::Pool { channels: hp.pool_c, hw: hp.pool_hw, x: inp, y: pooled }));
        self.top = fwd_tmp;
        let mut outs = [NONE; 3];
        let mut lin_in = pooled;
        for i in 0..hp.n_linears {
            let l = hp.linears[i];
            outs[i] = self.alloc(n * l.s.out_f);
            self.op(Op::Linear(op::Linear { shape: l.s, weight: l.w, bias: l.b, x: lin_in, y: outs[i] }));
            if i + 1 < hp.n_linears {
                self.op(Op::Relu(op::Relu { x: outs[i] }));
            }
            lin_in = outs[i];
        }
        let logits = lin_in;
        let dl = self.alloc(logits.len);
        let d = logits.len / n;
        if hp.contrast {
            let f = self.alloc(logits.len);
            let df = self.alloc(logits.len);
            let scratch = self.alloc(crate::loss::supcon_scratch_len(n));
            self.op(Op::L2Normalize(op::L2Normalize { dim: d, x: logits, y: f }));
            self.op(Op::SupCon(op::SupCon { dim: d, features: f, dfeatures: df, scale, slot, scratch }));
            self.op(Op::L2NormalizeBackward(op::L2NormalizeBackward { dim: d, x: logits, dy: df, dx: dl }));
        } else {
            self.op(Op::CrossEntropy(op::CrossEntropy { classes: d, logits, dlogits: dl, scale, slot }));
        }
        let mut dcur = dl;
        for i in (0..hp.n_linears).rev() {
            let l = hp.linears[i];
            let xin = if i == 0 { pooled } else { outs[i - 1] };
            let dxi = self.alloc(xin.len);
            self.op(Op::LinearBackward(op::LinearBackward {
                shape: l.s,
                weight: l.w,
                bias: l.b,
                x: xin,
                dy: dcur,
                dx: Some(dxi),
            }));
            if i > 0 {
                self.op(Op::ReluBackward(op::ReluBackward { y: outs[i - 1], dy: dxi }));
            }
            dcur = dxi;
        }
        let dpool = dcur;
        if hp.n_convs == 0 {
            let dp = self.alloc(x.len);
            self.op(Op::PoolBackward(op::PoolBackward { channels: hp.pool_c, hw: hp.pool_hw, dy: dpool, dx: dp }));
            self.op(Op::Add(op::Add { y: dacc, x: dp }));
            self.top = mark;
            return;
        }
        // Conv backward: the running gradient in `g`, the BN input gradient in `dh`, the
        // recomputed ReLU output in `r` (it is also the next conv's input, so computed once).
        // The input gradient is written by the first conv's backward, which reads only `dh`
        // and `x`: it goes over the saved values below `dh` when they are large enough.
        let g = self.alloc(alen);
        let dh = self.alloc(alen);
        let dx = if mark + x.len <= dh.off { Buf::f32(mark, x.len) } else { self.alloc(x.len) };
        let r = self.alloc(alen);
        let sums = self.alloc(2 * hp.convs.iter().take(hp.n_convs).map(|c| c.1.s.c).max().unwrap_or(0));
        let last = hp.n_convs - 1;
        self.relu_recompute(hp.convs[last].1, saved[last], Buf::f32(r.off, saved[last].0.len));
        let mut dcur = Buf::f32(g.off, saved[last].0.len);
        self.op(Op::PoolBackward(op::PoolBackward { channels: hp.pool_c, hw: hp.pool_hw, dy: dpool, dx: dcur }));
        for i in (0..hp.n_convs).rev() {
            let (c, bn) = hp.convs[i];
            let (h, st) = saved[i];
            let a = Buf::f32(r.off, h.len);
            self.op(Op::ReluBackward(op::ReluBackward { y: a, dy: dcur }));
            let dhi = Buf::f32(dh.off, h.len);
            let sums_i = Buf::f32(sums.off, 2 * bn.s.c);
            self.op(Op::BnBackward(op::BnBackward {
                shape: bn.s,
                affine: bn.p,
                x: h,
                dy: dcur,
                dx: dhi,
                stats: st,
                sums: sums_i,
                weights: true,
            }));
            let xin = if i == 0 {
                x
            } else {
                let below = Buf::f32(r.off, saved[i - 1].0.len);
                self.relu_recompute(hp.convs[i - 1].1, saved[i - 1], below);
                below
            };
            dcur = if i == 0 { dx } else { Buf::f32(g.off, xin.len) };
            self.op(Op::ConvBackward(op::ConvBackward {
                shape: c.s,
                weight: c.w,
                bias: None,
                x: Some(xin),
                dy: dhi,
                dx: Some(dcur),
            }));
        }
        self.op(Op::Add(op::Add { y: dacc, x: dcur }));
        self.top = mark;
    }

    /// Recomputes a BN–ReLU output into `y` from the BN input and batch statistics kept by the forward.
    fn relu_recompute(&mut self, bn: BnP, (h, st): (Buf, Buf), y: Buf) {
        self.op(Op::BnApply(op::BnApply { shape: bn.s, affine: bn.p, x: h, y, stats: st }));
        self.op(Op::Relu(op::Relu { x: y }));
    }

    /// The decoder loss of module `j` on its output `x`, by the method's kind of decoder.
    fn any_decoder_loss(&mut self, j: usize, x: Buf, dacc: Buf, img: Buf, scale: f32, slot: LossSlot) {
        match self.plan.method.aux {
            Family::Cifar => {
                let dp = self.plan.decoder(j, AuxNet::Decoder);
                self.decoder_loss(&dp, x, dacc, img, scale, slot);
            }
            Family::ImageNet => {
                let dp = self.plan.staged_decoder(j, AuxNet::Decoder);
                self.staged_decoder_loss(&dp, x, dacc, img, scale, slot);
            }
        }
    }

    /// The decoder's loss on `x`, one patch at a time (each patch's backward before the
    /// next patch's forward, so only one patch's values are ever live). Its target is the
    /// patch of the de-normalised input `img`, restored from the crop (elementwise, so the
    /// same bits as cropping a restored image, without keeping one for the whole step).
    fn decoder_loss(&mut self, dp: &DecoderP, x: Buf, dacc: Buf, img: Buf, scale: f32, slot: LossSlot) {
        let n = self.n;
        let (gn, po, h) = (dp.n, dp.out, dp.h);
        let ci = self.plan.arch.in_channels;
        let image = self.plan.arch.image;
        let entry = self.top;
        for r in 0..gn {
            for c in 0..gn {
                let mark = self.top;
                let (ca, bn, cb) = dp.patch(r * gn + c);
                let (y0, y1) = (r * h / gn, (r + 1) * h / gn);
                let (x0, x1) = (c * h / gn, (c + 1) * h / gn);
                let win = Window { c: dp.c, h, w: h, y0, x0, ph: y1 - y0, pw: x1 - x0, oh: po, ow: po };
                let rs = self.alloc(n * dp.c * po * po);
                self.op(Op::Resize(op::Resize { window: win, x, y: rs }));
                let mid = n * bn.s.c * po * po;
                let a1 = self.alloc(mid);
                let h1 = self.alloc(mid);
                let st = self.alloc(4 * bn.s.c);
                self.op(Op::Conv(op::Conv { shape: ca.s, weight: ca.w, bias: ca.b, x: rs, y: h1 }));
                self.bn_fwd(bn, h1, a1, st, TRAIN);
                self.op(Op::Relu(op::Relu { x: a1 }));
                // Each value takes the place of one that is dead by the time it is written:
                // the target and dh2 that of h2, da1 that of o and the BCE gradient, dh1 that
                // of a1, and the resize gradient that of the resized input.
                let olen = n * ci * po * po;
                let h2 = self.alloc(olen);
                let o = self.alloc(olen);
                self.op(Op::Conv(op::Conv { shape: cb.s, weight: cb.w, bias: cb.b, x: a1, y: h2 }));
                self.op(Op::Sigmoid(op::Sigmoid { x: h2, y: o }));
                let t = h2;
                let twin = Window { c: ci, h: image, w: image, y0: r * po, x0: c * po, ph: po, pw: po, oh: po, ow: po };
                let dout = self.alloc(olen);
                self.op(Op::Crop(op::Crop { window: twin, x: img, y: dout }));
                let (mean, std) = (self.plan.mean, self.plan.std);
                self.op(Op::Restore(op::Restore { x: dout, y: t, channels: ci, hw: po * po, mean, std }));
                self.op(Op::Bce(op::Bce { probs: o, target: t, dprobs: dout, scale, slot }));
                let dh2 = h2;
                self.op(Op::SigmoidBackward(op::SigmoidBackward { y: o, dy: dout, dx: dh2 }));
                let da1 = self.alloc_at(o.off, mid);
                self.op(Op::ConvBackward(op::ConvBackward {
                    shape: cb.s,
                    weight: cb.w,
                    bias: cb.b,
                    x: Some(a1),
                    dy: dh2,
                    dx: Some(da1),
                }));
                self.op(Op::ReluBackward(op::ReluBackward { y: a1, dy: da1 }));
                let dh1 = a1;
                let sums = self.alloc_at(da1.end(), 2 * bn.s.c);
                self.op(Op::BnBackward(op::BnBackward {
                    shape: bn.s,
                    affine: bn.p,
                    x: h1,
                    dy: da1,
                    dx: dh1,
                    stats: st,
                    sums,
                    weights: true,
                }));
                // Weight gradients first, so that the resize gradient (as large as the
                // resized input, the decoder's largest values) can take the input's place.
                self.op(Op::ConvBackward(op::ConvBackward {
                    shape: ca.s,
                    weight: ca.w,
                    bias: ca.b,
                    x: Some(rs),
                    dy: dh1,
                    dx: None,
                }));
                let drs = rs;
                self.op(Op::ConvBackward(op::ConvBackward {
                    shape: ca.s,
                    weight: ca.w,
                    bias: None,
                    x: None,
                    dy: dh1,
                    dx: Some(drs),
                }));
                self.op(Op::ResizeBackward(op::ResizeBackward { window: win, dy: drs, dx: dacc }));
                self.decoder_peak = self.decoder_peak.max(self.top - entry);
                self.top = mark;
            }
        }
    }

    /// Cross-entropy at the network's classifier on `x` (last module's output); adds into `dacc`.
    fn final_loss(&mut self, x: Buf, dacc: Buf, scale: f32, slot: LossSlot) {
        let mark = self.top;
        let n = self.n;
        let fc = self.plan.fc();
        let (c, h, _) = self.plan.module_out(self.plan.modules() - 1);
        let pooled = self.alloc(n * c);
        let logits = self.alloc(n * fc.s.out_f);
        let dl = self.alloc(logits.len);
        let dp = self.alloc(pooled.len);
        let dx = self.alloc(x.len);
        self.op(Op::Pool(op::Pool { channels: c, hw: h * h, x, y: pooled }));
        self.op(Op::Linear(op::Linear { shape: fc.s, weight: fc.w, bias: fc.b, x: pooled, y: logits }));
        self.op(Op::CrossEntropy(op::CrossEntropy { classes: fc.s.out_f, logits, dlogits: dl, scale, slot }));
        self.op(Op::LinearBackward(op::LinearBackward {
            shape: fc.s,
            weight: fc.w,
            bias: fc.b,
            x: pooled,
            dy: dl,
            dx: Some(dp),
        }));
        self.op(Op::PoolBackward(op::PoolBackward { channels: c, hw: h * h, dy: dp, dx }));
        self.op(Op::Add(op::Add { y: dacc, x: dx }));
        self.top = mark;
    }

    // ---- steps ----------------------------------------------------------------------

    pub(crate) fn train(&mut self) {
        let micro = self.plan.micro;
        if micro.first {
            self.op(Op::BeginStep);
        }
        let img = self.alloc(self.plan.input().len);
        if self.plan.method.hpff {
            self.train_hpff(img);
        } else {
            self.train_local(img);
        }
        if micro.last {
            self.op(Op::CheckGrads(op::CheckGrads { slot: self.plan.nonfinite_slot() }));
        }
    }

    /// Module `j`'s update: its gradients are final and nothing after this reads its
    /// parameters (the plan's tests check both for every method). A micro-batch before
    /// the step's last only adds its gradients.
    fn update(&mut self, j: usize) {
        if !self.plan.micro.last {
            return;
        }
        let p = self.place.module_params(j);
        let params = Buf::f32(self.plan.stage.param(p.off).expect("a stage updates its own modules"), p.len);
        self.op(Op::Sgd(op::Sgd { module: j, params }));
    }

    /// E2E (one module) and the plain local methods: each module alone, input detached.
    fn train_local(&mut self, img: Buf) {
        let m = self.plan.modules();
        let method = self.plan.method;
        // A module's output outlives it (the next module's input): it goes at the base when
        // it fits below the module's input, else right above it, so two outputs of the
        // current size are live, not two of the largest.
        let base = self.top;
        let mut input: Option<Buf> = self.received_input();
        for j in self.plan.stage.modules() {
            let len = self.out_len(j);
            let out = match input {
                Some(x) if base + len > x.off => self.alloc_at(x.end(), len),
                _ => self.alloc_at(base, len),
            };
            self.top = out.end().max(input.map_or(base, |x| x.end()));
            let mark = self.top;
            let (stem, fwd) = match input {
                None => {
                    let s = self.stem_acts();
                    (Some(s), self.stem_module_fwd(img, s, out, TRAIN))
                }
                Some(x) => (None, self.module_fwd(j, x, out, TRAIN)),
            };
            input = Some(out);
            if self.sends_output(j) {
                self.op(Op::Send(op::Send { buf: out, to: Peer::Next }));
            }
            let d = self.zeroed(out.len);
            if j + 1 < m {
                let (l1, l2) = method.local_weights(&self.plan.part, j);
                if method.uses_decoder() {
                    self.any_decoder_loss(j, out, d, img, l1, LossKind::Decoder.slot(j));
                }
                let hp = self.plan.head(j, AuxNet::Classifier);
                self.head_loss(&hp, out, d, l2, LossKind::Classifier.slot(j));
            } else {
                self.final_loss(out, d, 1.0, LossKind::Ce.slot(j));
            }
            match stem {
                Some(s) => self.stem_module_bwd(&fwd, &s, img, d, None, false),
                None => _ = self.module_bwd(&fwd, d, Dx::No, true),
            }
            self.update(j);
            self.top = mark;
        }
        self.top = base;
    }

    /// HiLo, with each module's forward computed once.
    ///
    /// The reference runs module i up to three times per batch — on the independent path
    /// (x), as the top of cascade i (z) and as the bottom of cascade i+1 (y) — but with the
    /// same weights on the same batch those passes compute identical values. So each
    /// module runs forward once; its BN running statistics get one update per reference
    /// pass (same batch statistics, so the same bits), and the backward is split by where
    /// the reference lets gradients flow:
    /// - its own losses (independent head ·wx, cascade decoder and head ·wy·λ) and the
    ///   gradient that cascade i+1 sends down into it all train its parameters (`t`);
    /// - only the cascade part (`c`) continues into module i−1 (the x path and cascade
    ///   i+1's bottom have detached inputs).
    ///
    /// Modules i−1 and i are live together, as in the reference's cascade; their frames
    /// alternate between two regions so the older one can be dropped first. With
    /// `recompute`, a frame's values are dropped once its cascade backward has run and
    /// recomputed for its parameter gradients, so only the gradient accumulators (two fixed
    /// slots) and one module's values are live at a time.
    fn train_hpff(&mut self, img: Buf) {
        let plan = self.plan;
        let method = plan.method;
        let last = plan.modules() - 1;
        let lv = method.levels;
        let (do_x, do_y) = (lv != Levels::Cascade, lv != Levels::Independent);
        let (wx, wy) = if lv == Levels::Both { (method.wx, method.wy) } else { (1.0, 1.0) };
        let x_pass = |j: usize| do_x || (j == 0 && method.module0_x_pass());
        let passes =
            |j: usize| Fwd::Train(u8::from(x_pass(j)) + u8::from(do_y && (1..last).contains(&j)) + u8::from(do_y));
        // Outputs live longer than frames: module i's parameter gradients (taken one step
        // later) still read its input, the output of module i−1.
        let maxo = self.max_out_len();
        let outs = [self.alloc(maxo), self.alloc(maxo), self.alloc(maxo)];
        let recompute = method.recompute;
        // With recompute, what outlives a step (the accumulators, the stem's statistics) has
        // fixed room below the frames.
        let kept = recompute.then(|| ([self.alloc(maxo), self.alloc(maxo)], self.stem_acts()));
        // A stage after the first receives its first module's input into the slot the
        // module below would have written.
        let (first, end) = (plan.stage.first, plan.stage.end);
        let received = (first > 0).then(|| {
            let x = Buf::f32(outs[(first - 1) % 3].off, self.out_len(first - 1));
            self.op(Op::Recv(op::Recv { buf: x, from: Peer::Prev }));
            x
        });
        let base = self.top;
        // Frames: module j's goes at the base when it fits below module j−1's (frames shrink
        // with depth, so they mostly alternate), else right above it; temporaries go above both.
        let mut below = (base, base);

        let mut frames: [Option<Frame>; 2] = [None, None];
        for j in first..end {
            // Module j's frame: gradient accumulators, then its forward values.
            let flen = self.frame_len(j);
            let start = if base + flen <= below.0 { base } else { below.1 };
            self.top = start;
            let len = self.out_len(j);
            let out = Buf::f32(outs[j % 3].off, len);
            let t = match kept {
                Some((ts, _)) => Buf::f32(ts[j % 2].off, len),
                None => self.alloc(len),
            };
            let (stem, fwd) = if j == 0 {
                let s = match kept {
                    Some((_, s)) => s,
                    None => self.stem_acts(),
                };
                (Some(s), self.stem_module_fwd(img, s, out, passes(0)))
            } else {
                let x = match received {
                    Some(x) if j == first => x,
                    _ => frames[(j - 1) % 2].as_ref().expect("module below is live").out,
                };
                let m = self.module_alloc(j, x, out);
                // The forward's temporaries go above both frames: a frame placed at the
                // base may end right below the older one.
                let values_end = self.top;
                self.top = values_end.max(below.1);
                self.module_run(&m, passes(j));
                self.top = values_end;
                (None, m)
            };
            debug_assert_eq!(self.top, start + flen);
            self.top = below.1.max(start + flen);
            below = (start, start + flen);
            if self.sends_output(j) {
                self.op(Op::Send(op::Send { buf: out, to: Peer::Next }));
            }
            self.op(Op::Zero(op::Zero { buf: t }));

            // The cascade losses first, alone in `t`: their gradient is the part that
            // continues into module j−1. Its backward masks `t` by the output ReLU in place;
            // the frame's own backward applies the same mask to the sum again, which
            // changes nothing (the mask is idempotent and the additions commute), so no
            // separate cascade gradient is kept.
            let prev = if j > 0 { frames[(j - 1) % 2].take() } else { None };
            // The last module's two losses share the network's classifier, whose gradient
            // they accumulate in the reference's order (x path first): the x loss goes
            // into a buffer of its own, added to `t` after the cascade.
            let mark = self.top;
            let last_x = (j == last && do_x).then(|| {
                let g = self.zeroed(len);
                self.final_loss(out, g, wx, LossKind::LastX.slot(j));
                g
            });
            if do_y && j > 0 {
                if j < last {
                    let (l1, l2) = method.local_weights(&plan.part, j);
                    if method.uses_decoder() {
                        self.any_decoder_loss(j, out, t, img, wy * l1, LossKind::CascadeDecoder.slot(j));
                    }
                    let hp = plan.head(j, AuxNet::Classifier);
                    self.head_loss(&hp, out, t, wy * l2, LossKind::CascadeClassifier.slot(j));
                } else {
                    self.final_loss(out, t, wy, LossKind::LastY.slot(j));
                }
                // The module below is on this stage, or (the stage's first module) on the one below.
                let h = self.module_bwd(&fwd, t, Dx::Temp(self.out_len(j - 1)), false).expect("asked for");
                self.op(match &prev {
                    Some(prev) => Op::Add(op::Add { y: prev.t, x: h }),
                    None => Op::Send(op::Send { buf: h, to: Peer::Prev }),
                });
            }
            // Then the independent level's loss.
            if let Some(g) = last_x {
                self.op(Op::Add(op::Add { y: t, x: g }));
            } else if do_x && (j > 0 || lv == Levels::Independent) {
                let hp = plan.head(j, AuxNet::Independent);
                self.head_loss(&hp, out, t, wx, LossKind::Independent.slot(j));
            }
            self.top = mark;
            // Recompute drops module j's values, spent until its parameter gradients (the
            // last module's come next, so it keeps them).
            let dropped = recompute && j < last;
            if dropped {
                (self.top, below) = (base, (base, base));
            }
            // Module j−1 has every gradient it gets: its parameter gradients, then it is done.
            // Module 0's backward comes at the end of module 1's step, when the slot of
            // module 2's output is still free: the stem's output is recomputed there.
            if let Some(prev) = prev {
                self.frame_bwd(&prev, img, (j == 1).then_some(outs[2]));
                self.update(j - 1);
            }
            frames[j % 2] = Some(Frame { fwd, out, t, stem, dropped });
        }
        let top = frames[(end - 1) % 2].take().expect("last module is live");
        if end <= last && do_y {
            // The cascade of the stage above's first module sends its input gradient down:
            // the last gradient this module's output gets, added as the sequential order adds it.
            let mark = self.top;
            let h = self.alloc(top.out.len);
            self.op(Op::Recv(op::Recv { buf: h, from: Peer::Next }));
            self.op(Op::Add(op::Add { y: top.t, x: h }));
            self.top = mark;
        }
        self.frame_bwd(&top, img, (end == 1).then_some(outs[2]));
        self.update(end - 1);
        self.top = base;
    }

    /// Parameter gradients of a module from its accumulated output gradient (through the
    /// stem for module 0, whose output may be recomputed into `spare`), its forward
    /// recomputed first on top of the stack if its values were dropped.
    fn frame_bwd(&mut self, f: &Frame, img: Buf, spare: Option<Buf>) {
        let mark = self.top;
        match f.stem {
            Some(s) => self.stem_module_bwd(&f.fwd, &s, img, f.t, spare, f.dropped),
            None => {
                let m = match f.dropped {
                    true => self.module_fwd(f.fwd.j, f.fwd.x, f.out, RECOMPUTE),
                    false => f.fwd,
                };
                _ = self.module_bwd(&m, f.t, Dx::No, true);
            }
        }
        self.top = mark;
    }

    /// Floats of module `j`'s frame in [`Gen::train_hpff`]: its gradient accumulator (and
    /// the stem's statistics) unless they have fixed room (recompute), its forward values.
    fn frame_len(&mut self, j: usize) -> usize {
        let saved = (self.top, self.peak);
        let start = self.top;
        if !self.plan.method.recompute {
            self.alloc(self.out_len(j));
            if j == 0 {
                self.alloc(4 * self.plan.stem().bn.s.c);
            }
        }
        let mut x = NONE;
        let blocks = self.plan.part.blocks_of(j);
        for g in blocks.clone() {
            let bp = self.plan.block(g);
            let acts = self.block_alloc(&bp, x, (g + 1 == blocks.end).then_some(NONE));
            x = acts.out;
        }
        let len = self.top - start;
        (self.top, self.peak) = saved;
        len
    }

    /// Inference with running BN statistics; logits land at [`Plan::logits`]. Only the
    /// current block's input and output and two temporaries are live: O(largest layer).
    /// A pipeline stage runs its modules' blocks on the input it receives and sends their
    /// output on; the top stage computes the logits.
    pub(crate) fn eval(&mut self) {
        let img = self.alloc(self.plan.input().len);
        let logits = self.alloc(self.plan.logits().len);
        let (n, arch, part, st) = (self.n, self.plan.arch, &self.plan.part, self.plan.stage);
        let sp = self.plan.stem();
        let blocks = part.blocks_of(st.first).start..part.blocks_of(st.end - 1).end;
        let stem = st.first == 0;
        let (stem_len, conv_len) = if stem { (self.stem_len(), self.stem_conv_len()) } else { (0, 0) };
        let out_len = |g: usize| {
            let s = arch.block(g);
            n * s.c_out * s.h_out * s.w_out
        };
        let in_len = if stem { stem_len } else { self.out_len(st.first - 1) };
        let maxo = blocks.clone().map(out_len).fold(in_len, usize::max);
        let layer_len = |g: usize| {
            let bp = self.plan.block(g);
            (0..bp.layers).map(|l| n * bp.bns[l].s.c * bp.bns[l].s.hw).max().unwrap_or(0)
        };
        let maxt = blocks.clone().map(layer_len).fold(conv_len.max(maxo), usize::max);
        let c0 = if stem { sp.bn.s.c } else { 0 };
        let cmax = blocks.clone().map(|g| arch.block(g).c_out).fold(c0, usize::max);
        let carry = [self.alloc(maxo), self.alloc(maxo)];
        let (ta, tb, stats) = (self.alloc(maxt), self.alloc(maxt), self.alloc(4 * cmax));
        let mut x = Buf::f32(carry[blocks.start % 2].off, in_len);
        if stem {
            let h = Buf::f32(ta.off, conv_len);
            // Before a max pool the ReLU output is a temporary in `tb`.
            let r = if sp.pool.is_some() { Buf::f32(tb.off, conv_len) } else { x };
            self.op(Op::Conv(op::Conv { shape: sp.conv.s, weight: sp.conv.w, bias: None, x: img, y: h }));
            self.bn_fwd(sp.bn, h, r, Buf::f32(stats.off, 4 * sp.bn.s.c), Fwd::Eval);
            self.op(Op::Relu(op::Relu { x: r }));
            if let Some(pool) = sp.pool {
                self.op(Op::MaxPool(op::MaxPool { shape: pool, x: r, y: x }));
            }
        } else {
            self.op(Op::Recv(op::Recv { buf: x, from: Peer::Prev }));
        }
        for g in blocks {
            let out = Buf::f32(carry[(g + 1) % 2].off, out_len(g));
            self.block_eval(&self.plan.block(g), x, out, ta, tb, stats);
            x = out;
        }
        if self.sends_output(st.end - 1) {
            self.op(Op::Send(op::Send { buf: x, to: Peer::Next }));
            return;
        }
        let fc = self.plan.fc();
        let (c, h, _) = self.plan.module_out(self.plan.modules() - 1);
        let pooled = self.alloc(self.n * c);
        self.op(Op::Pool(op::Pool { channels: c, hw: h * h, x, y: pooled }));
        self.op(Op::Linear(op::Linear { shape: fc.s, weight: fc.w, bias: fc.b, x: pooled, y: logits }));
    }

    /// One block in eval mode: conv outputs in `ta`, BN(–ReLU) outputs in `tb`, then `out`.
    fn block_eval(&mut self, bp: &BlockP, x: Buf, out: Buf, ta: Buf, tb: Buf, stats: Buf) {
        let n = self.n;
        let mut inp = x;
        for l in 0..bp.layers {
            let (c, bn) = (bp.convs[l], bp.bns[l]);
            let len = n * bn.s.c * bn.s.hw;
            let (h, st) = (Buf::f32(ta.off, len), Buf::f32(stats.off, 4 * bn.s.c));
            self.op(Op::Conv(op::Conv { shape: c.s, weight: c.w, bias: None, x: inp, y: h }));
            if l + 1 < bp.layers {
                inp = Buf::f32(tb.off, len);
                self.bn_fwd(bn, h, inp, st, Fwd::Eval);
                self.op(Op::Relu(op::Relu { x: inp }));
            } else {
                self.bn_fwd(bn, h, out, st, Fwd::Eval);
            }
        }
        match bp.downsample {
            Some((c, bn)) => {
                let (h, od) = (Buf::f32(ta.off, out.len), Buf::f32(tb.off, out.len));
                self.op(Op::Conv(op::Conv { shape: c.s, weight: c.w, bias: None, x, y: h }));
                self.bn_fwd(bn, h, od, Buf::f32(stats.off, 4 * bn.s.c), Fwd::Eval);
                self.op(Op::AddRelu(op::AddRelu { y: out, x: od }));
            }
            None => self.op(Op::AddRelu(op::AddRelu { y: out, x })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::method::{Base, Method};
    use crate::partition::{Partition, TableKind};

    /// Every buffer of every op lies inside the planned stack, and no two buffers of one op
    /// overlap (the overlays above rely on values being dead, never on sharing within an op).
    fn check(plan: &Plan, train: bool) {
        let (lo, hi) = (plan.act_off(), plan.act_off() + if train { plan.train_peak } else { plan.eval_peak });
        let mut count = 0;
        let mut visit = |op: &Op| {
            let mut bufs: heapless::Vec<Buf, 8> = heapless::Vec::new();
            op.for_each_buf(|field, _, b| {
                assert!(b.off >= lo && b.end() <= hi, "op {count} {} {field}: {b:?} outside {lo}..{hi}", op.name());
                assert!(b.len > 0 || field == "dx", "op {count} {} {field} is empty", op.name());
                bufs.push(b).expect("at most 8 buffers");
            });
            for (i, a) in bufs.iter().enumerate() {
                for b in &bufs[i + 1..] {
                    assert!(!a.overlaps(b), "op {count} {}: {a:?} overlaps {b:?}", op.name());
                }
            }
            // Elementwise ops see their buffers image by image (an executor may cut the
            // batch anywhere), so their buffers must be exactly as long as each other.
            let same = match *op {
                Op::BnTrain(op::BnTrain { x, y, .. })
                | Op::BnEval(op::BnEval { x, y, .. })
                | Op::BnApply(op::BnApply { x, y, .. }) => [x, y, x],
                Op::Sigmoid(op::Sigmoid { x, y })
                | Op::Restore(op::Restore { x, y, .. })
                | Op::Add(op::Add { y, x })
                | Op::AddRelu(op::AddRelu { y, x }) => [x, y, x],
                Op::SigmoidBackward(op::SigmoidBackward { y, dy, dx }) => [y, dy, dx],
                Op::ReluBackward(op::ReluBackward { y, dy }) => [y, dy, y],
                Op::BnBackward(op::BnBackward { x, dy, dx, .. }) => [x, dy, dx],
                _ => [NONE; 3],
            };
            assert!(same.iter().all(|b| b.len == same[0].len), "op {count} {}: lengths differ: {same:?}", op.name());
            count += 1;
        };
        if train {
            plan.train_step(&mut visit);
        } else {
            plan.eval_step(&mut visit);
        }
        assert!(count > 0);
    }

    /// Every parameter is updated exactly once per step, by the [`Op::Sgd`] of its
    /// module, and no op after that update reads the parameter or adds to its gradient:
    /// the seam where a data-parallel run reduces a module's gradients while later
    /// modules compute.
    fn check_updates(plan: &Plan) {
        let mut updated: heapless::Vec<Buf, 512> = heapless::Vec::new();
        let mut modules: heapless::Vec<usize, 512> = heapless::Vec::new();
        let mut count = 0;
        plan.train_step(|op| {
            op.for_each_param(|r| {
                assert!(r.end() <= plan.params, "op {count} {}: {r:?} beyond the parameters", op.name());
                if let Some(u) = updated.iter().find(|u| u.overlaps(&r)) {
                    panic!("op {count} {} touches {r:?}, updated before at {u:?}", op.name());
                }
            });
            if let Op::Sgd(op::Sgd { module, params }) = *op {
                assert!(params.len > 0, "op {count}: an empty update");
                assert!(!modules.contains(&module), "op {count}: module {module} updated twice");
                updated.push(params).expect("at most 512 updates");
                modules.push(module).expect("at most 512 updates");
            }
            count += 1;
        });
        let total: usize = updated.iter().map(|u| u.len).sum();
        assert_eq!(total, plan.params, "updates cover {total} of {} parameters", plan.params);
        // Each module's update is its one span, relocated to the stage's region.
        for j in plan.stage.modules() {
            let p = plan.module_params(j);
            let local = Buf::f32(plan.stage.param(p.off).expect("the stage holds its modules"), p.len);
            let at = modules.iter().position(|&m| m == j).unwrap_or_else(|| panic!("module {j} is not updated"));
            assert_eq!(updated[at], local, "module {j}");
        }
    }

    /// What one stage sends to (or receives from) one neighbour, in order: buffer lengths.
    fn links(plan: &Plan, train: bool, send: bool, peer: Peer) -> heapless::Vec<usize, 64> {
        let mut v = heapless::Vec::new();
        let mut visit = |op: &Op| match *op {
            Op::Send(op::Send { buf, to }) if send && to == peer => v.push(buf.len).expect("at most 64"),
            Op::Recv(op::Recv { buf, from }) if !send && from == peer => v.push(buf.len).expect("at most 64"),
            _ => {}
        };
        if train {
            plan.train_step(&mut visit);
        } else {
            plan.eval_step(&mut visit);
        }
        v
    }

    /// Cuts `plan` into the stages ending at `ends` and checks each stage as a plan of its
    /// own: its parameters and statistics are its modules' and every model tensor is in
    /// exactly one stage; its buffers stay in its arena; it updates each of its parameters
    /// once; and what a stage sends matches what its neighbour receives, in order.
    fn check_stages(plan: &Plan, ends: &[usize]) {
        let mut first = 0;
        let (mut params, mut state) = (0, 0);
        let mut prev: Option<Plan> = None;
        for &end in ends {
            let st = plan.stage(first..end).expect("a valid stage");
            check(&st, true);
            check(&st, false);
            check_updates(&st);
            let mut count = 0;
            st.for_each_tensor(|t| {
                let region = if t.kind == crate::plan::TensorKind::Param { st.params } else { st.state };
                assert!(t.off + t.len <= region, "{}: beyond the stage's region", t.name);
                count += t.len;
            });
            assert_eq!(count, st.params + st.state);
            (params, state) = (params + st.params, state + st.state);
            if let Some(p) = &prev {
                for train in [true, false] {
                    assert_eq!(links(p, train, true, Peer::Next), links(&st, train, false, Peer::Prev));
                    assert_eq!(links(&st, train, true, Peer::Prev), links(p, train, false, Peer::Next));
                }
                assert_eq!(links(&st, true, false, Peer::Prev).len(), 1, "one input per step");
            }
            prev = Some(st);
            first = end;
        }
        assert_eq!((params, state), (plan.params, plan.state));
    }

    #[test]
    fn stages_split_the_model_and_agree_on_what_crosses() {
        let arch = Arch::resnet(32, 3, 32, 10).unwrap();
        let local = [(Base::Greedy, false), (Base::Dgl, false), (Base::InfoPro, false), (Base::InfoPro, true)];
        let mut checked = 0;
        for (base, hpff) in local {
            for levels in [Levels::Both, Levels::Independent, Levels::Cascade] {
                for recompute in [false, true] {
                    if !hpff && (levels != Levels::Both || recompute) {
                        continue;
                    }
                    let method = Method { levels, recompute, ..Method::reference(base, hpff) };
                    let part = Partition::for_k(&arch, 8, TableKind::Reference).unwrap();
                    let plan = Plan::new(arch, part, method, 3, [0.0; 4], [1.0; 4]).unwrap();
                    for ends in [&[1, 8][..], &[4, 8], &[2, 5, 8], &[1, 2, 3, 4, 5, 6, 7, 8], &[7, 8]] {
                        check_stages(&plan, ends);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 45);
        // The ImageNet networks and recipe, both kinds of PFF.
        let arch = Arch::resnet_imagenet(18, 3, 64, 10).unwrap().with_width(8).unwrap();
        for hpff in [false, true] {
            let m = Method::imagenet_reference(Base::InfoPro, hpff);
            for method in [m, Method { pff: crate::method::Pff::Input, ..m }] {
                let part = Partition::for_k(&arch, 4, TableKind::Reference).unwrap();
                let plan = Plan::new(arch, part, method, 3, [0.0; 4], [1.0; 4]).unwrap();
                check_stages(&plan, &[1, 3, plan.modules()]);
            }
        }
    }

    /// A step cut into micro-batches: only the first zeroes the gradients, only the last
    /// checks and updates them, and every loss's gradient is weighted by the share.
    #[test]
    fn micro_batches_zero_first_update_last_and_weight_their_losses() {
        let arch = Arch::resnet(20, 3, 32, 10).unwrap();
        let part = Partition::for_k(&arch, 4, TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part, Method::reference(Base::InfoPro, true), 2, [0.0; 4], [1.0; 4]).unwrap();
        let scales = |p: &Plan| {
            let (mut begin, mut sgd, mut check) = (0, 0, 0);
            let mut scales: heapless::Vec<f32, 64> = heapless::Vec::new();
            p.train_step(|op| match *op {
                Op::BeginStep => begin += 1,
                Op::Sgd(_) => sgd += 1,
                Op::CheckGrads(_) => check += 1,
                Op::CrossEntropy(op::CrossEntropy { scale, .. }) | Op::Bce(op::Bce { scale, .. }) => {
                    scales.push(scale).unwrap()
                }
                _ => {}
            });
            (begin, sgd > 0, check, scales)
        };
        let (_, _, _, whole) = scales(&plan);
        for i in 0..3 {
            let m = plan.micro_batch(i, 3, 8);
            let (begin, sgd, check, s) = scales(&m);
            assert_eq!((begin, sgd, check), (usize::from(i == 0), i == 2, usize::from(i == 2)), "micro-batch {i}");
            assert!(s.iter().zip(&whole).all(|(a, b)| *a == b * 0.25), "{s:?} against {whole:?}");
            check_updates_or_none(&m, i == 2);
        }
    }

    fn check_updates_or_none(plan: &Plan, last: bool) {
        if last {
            check_updates(plan);
        }
        check(plan, true);
    }

    #[test]
    fn a_stage_needs_modules_of_a_whole_plan() {
        let arch = Arch::resnet(20, 3, 32, 10).unwrap();
        let part = Partition::for_k(&arch, 4, TableKind::Reference).unwrap();
        let plan = Plan::new(arch, part, Method::reference(Base::InfoPro, true), 2, [0.0; 4], [1.0; 4]).unwrap();
        assert!(plan.stage(2..2).is_err());
        assert!(plan.stage(0..plan.modules() + 1).is_err());
        let st = plan.stage(1..3).unwrap();
        assert!(st.stage(1..2).is_err(), "a stage of a stage");
        assert!(st.memory().total() < plan.memory().total());
    }

    #[test]
    fn each_module_is_updated_once_its_gradients_are_final() {
        let arch = Arch::resnet(32, 3, 32, 10).unwrap();
        let mut checked = 0;
        for levels in [Levels::Both, Levels::Independent, Levels::Cascade] {
            for recompute in [false, true] {
                for k in [2, 4, 8, 16] {
                    let method = Method { levels, recompute, ..Method::reference(Base::InfoPro, true) };
                    let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
                    let plan = Plan::new(arch, part, method, 3, [0.0; 4], [1.0; 4]).unwrap();
                    check_updates(&plan);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 24);
    }

    #[test]
    fn buffers_stay_in_the_plan_and_never_overlap_within_an_op() {
        let methods = [
            (Base::E2e, false),
            (Base::Greedy, false),
            (Base::Dgl, true),
            (Base::InfoPro, false),
            (Base::InfoPro, true),
        ];
        let mut checked = 0;
        let cifar = [20, 32, 164].map(|d| Arch::resnet(d, 3, 32, 10).unwrap());
        let imagenet = [18, 50].map(|d| Arch::resnet_imagenet(d, 3, 64, 10).unwrap().with_width(8).unwrap());
        for arch in cifar.into_iter().chain(imagenet) {
            for (base, hpff) in methods {
                // Both recipes' aux nets on the ImageNet networks, and both kinds of PFF.
                let m = Method::imagenet_reference(base, hpff);
                let imagenet = [m, Method { pff: crate::method::Pff::Input, ..m }];
                let n = if arch.family == Family::ImageNet { 3 } else { 1 };
                for method in [Method::reference(base, hpff)].into_iter().chain(imagenet).take(n) {
                    for k in [1, 2, 4, 8] {
                        let Ok(part) = Partition::for_k(&arch, k, TableKind::Reference) else { continue };
                        let Ok(plan) = Plan::new(arch, part, method, 3, [0.0; 4], [1.0; 4]) else {
                            continue;
                        };
                        check(&plan, true);
                        check(&plan, false);
                        check_updates(&plan);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 90, "only {checked} plans built");
    }
}
