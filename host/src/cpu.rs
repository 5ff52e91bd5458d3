//! The CPU executor: runs a plan's ops on several threads over fixed-size batch chunks.
//!
//! Every op of the schedule is cut into chunks of [`CHUNK`] images. Per-image work
//! (convolutions, BN normalisation, activations, resizes, input gradients) runs on the
//! chunks in parallel; reductions over the batch (weight gradients, BN statistics, loss
//! values) are computed per chunk into private partial buffers and then added up in
//! chunk order. The chunking does not depend on the thread count, so the result is
//! bit-identical whatever `--threads` is. (It differs in the last bits from the core's
//! single-threaded reference executor, which reduces over the whole batch at once.)

use hpff_core::exec::{
    self, check_eval, check_train, check_unlinked, region_span, ExecError, Executor, Held, StepInput,
};
use hpff_core::loss;
use hpff_core::ops::{self, BatchNorm2d};
use hpff_core::optim::sgd_step;
use hpff_core::plan::{Buf, Op, Plan};

use crate::dist::{Comm, StageLink};
use rayon::prelude::*;
use std::fmt;

/// Images per chunk: the unit of parallel work and of the fixed reduction order.
pub const CHUNK: usize = 8;
/// Parameters per parallel piece of the SGD update.
const SGD_PIECE: usize = 1 << 14;

/// Runs plans on the host's CPUs, over an arena it owns.
#[derive(Debug)]
pub struct CpuExecutor {
    layout: Plan,
    arena: Vec<f32>,
    pool: rayon::ThreadPool,
    threads: usize,
    /// Per-thread conv scratch, then per-chunk partial sums.
    scratch: Vec<f32>,
    partials: Vec<f32>,
    e: Extra,
    /// The processes a module's gradients are averaged over before its update.
    comm: Option<&'static dyn Comm>,
    /// BatchNorm's batch statistics over `comm`'s processes.
    sync_bn: bool,
    /// The neighbouring stages of a pipeline ([`Op::Send`], [`Op::Recv`]).
    link: Option<StageLink>,
}

/// Sizes of the executor's own buffers for one plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extra {
    scratch_per_thread: usize,
    partial_per_chunk: usize,
    chunks: usize,
}

fn extra(plan: &Plan) -> Extra {
    let mut partial = 0;
    let mut scan = |op: &Op| {
        let need = match *op {
            Op::ConvBackward { shape, bias, x: Some(_), .. } => shape.weight_len() + bias.map_or(0, |_| shape.c_out),
            Op::LinearBackward { shape, .. } => shape.weight_len() + shape.out_f,
            Op::BnTrain { shape, .. } | Op::BnBackward { shape, .. } => 2 * shape.c,
            _ => 0,
        };
        partial = partial.max(need);
    };
    plan.train_step(&mut scan);
    plan.eval_step(&mut scan);
    Extra { scratch_per_thread: plan.scratch().len, partial_per_chunk: partial, chunks: plan.batch.div_ceil(CHUNK) }
}

impl CpuExecutor {
    /// Worker threads `threads` means (0 = this process's share of the cores, see
    /// [`crate::dist::default_threads`]).
    pub fn resolve_threads(threads: usize) -> usize {
        if threads == 0 {
            crate::dist::default_threads()
        } else {
            threads
        }
    }

    /// Bytes [`CpuExecutor::new`] allocates for `layout` and `threads`: the arena, the
    /// per-thread conv scratch and the per-chunk partial sums.
    pub fn bytes_needed(layout: &Plan, threads: usize) -> u64 {
        let e = extra(layout);
        let floats = layout.arena_len() as u64
            + (e.scratch_per_thread as u64) * Self::resolve_threads(threads) as u64
            + (e.partial_per_chunk as u64) * e.chunks as u64;
        floats * 4
    }

    /// An executor for plans laid out as `layout`, using `threads` worker threads (0 = all
    /// cores). Allocates the arena (zeroed) and the executor's own buffers.
    pub fn new(layout: &Plan, threads: usize) -> CpuExecutor {
        let threads = Self::resolve_threads(threads);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hpff-cpu-{i}"))
            .build()
            .unwrap_or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("one thread"));
        let threads = pool.current_num_threads();
        let e = extra(layout);
        CpuExecutor {
            layout: layout.clone(),
            arena: vec![0.0; layout.arena_len()],
            pool,
            threads,
            scratch: vec![0.0; e.scratch_per_thread * threads],
            partials: vec![0.0; e.partial_per_chunk * e.chunks],
            e,
            comm: None,
            sync_bn: false,
            link: None,
        }
    }

    /// Runs pipeline stages: [`Op::Send`] and [`Op::Recv`] go to the neighbouring ranks.
    pub fn with_link(mut self, link: Option<StageLink>) -> CpuExecutor {
        self.link = link;
        self
    }

    /// Averages each module's gradients over `comm`'s processes before its update (its
    /// [`Op::Sgd`]s): data parallelism. `None` or one process: alone, as before.
    pub fn with_comm(mut self, comm: Option<&'static dyn Comm>) -> CpuExecutor {
        self.comm = comm.filter(|c| c.size() > 1);
        self
    }

    /// BatchNorm over the whole job's batch (PyTorch's `SyncBatchNorm`): each BN's sums
    /// (Σx, then Σ(x − mean)² in forward; Σdy, Σdy·x̂ in backward) are summed over the
    /// processes, so N processes at a global batch B compute the statistics of one
    /// process at B. No effect without [`CpuExecutor::with_comm`].
    pub fn with_sync_bn(mut self, on: bool) -> CpuExecutor {
        self.sync_bn = on;
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Checks `plan` fits the buffers sized for the layout (same per-image scratch, no
    /// more chunks or larger partial sums).
    fn extra_for(&self, plan: &Plan) -> Result<Extra, ExecError> {
        let e = extra(plan);
        let fits = e.scratch_per_thread <= self.e.scratch_per_thread
            && e.partial_per_chunk <= self.e.partial_per_chunk
            && e.chunks <= self.e.chunks;
        if !fits {
            return Err(ExecError::ArenaSize { need: plan.arena_len(), have: self.layout.arena_len() });
        }
        Ok(Extra { scratch_per_thread: self.e.scratch_per_thread, partial_per_chunk: self.e.partial_per_chunk, ..e })
    }
}

impl fmt::Display for CpuExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let isa = ops::cpu_isa().name();
        write!(f, "cpu ({} thread{}, {isa})", self.threads, if self.threads == 1 { "" } else { "s" })
    }
}

/// The variable that caps the CPU kernels' instruction set (`avx512`, `avx2`, `scalar`).
pub const ISA_ENV: &str = "HPFF_CPU_ISA";

/// Applies [`ISA_ENV`] when set: kernels no richer than it names. An unknown name, or a
/// set this CPU lacks, is an error (a forced path must be the path that runs).
pub fn apply_isa_env() -> crate::error::Result<()> {
    let Ok(v) = std::env::var(ISA_ENV) else { return Ok(()) };
    let want = ops::Isa::parse(v.trim())
        .ok_or_else(|| crate::error::Error::msg(format!("{ISA_ENV}={v:?}: expected avx512, avx2 or scalar")))?;
    let have = ops::detected_isa();
    if want > have {
        return Err(crate::error::Error::msg(format!(
            "{ISA_ENV}={}: this CPU supports up to {}",
            want.name(),
            have.name()
        )));
    }
    ops::limit_isa(Some(want));
    Ok(())
}

impl Executor for CpuExecutor {
    type Error = ExecError;

    fn layout(&self) -> &Plan {
        &self.layout
    }

    fn held(&self) -> Held {
        Held { arena: 4 * self.arena.len(), extra: 4 * (self.scratch.len() + self.partials.len()) }
    }

    fn upload(&mut self, r: exec::Region, offset: usize, src: &[f32]) -> Result<(), ExecError> {
        let b = region_span(&self.layout, r, offset, src.len())?;
        self.arena[b.off..b.end()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, r: exec::Region, offset: usize, dst: &mut [f32]) -> Result<(), ExecError> {
        let b = region_span(&self.layout, r, offset, dst.len())?;
        dst.copy_from_slice(&self.arena[b.off..b.end()]);
        Ok(())
    }

    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<(), ExecError> {
        check_train(&self.layout, plan, input, losses)?;
        if self.link.is_none() {
            check_unlinked(plan)?;
        }
        let e = self.extra_for(plan)?;
        let inp = plan.input();
        self.arena[inp.off..inp.end()].copy_from_slice(input.x);
        let mut ops = Vec::new();
        plan.train_step(|op| ops.push(*op));
        let mut ctx = Ctx::new(plan, &mut self.arena, &mut self.scratch, &mut self.partials, e, input);
        ctx.comm = self.comm;
        ctx.sync_bn = self.comm.filter(|_| self.sync_bn);
        ctx.link = self.link;
        self.pool.install(|| ctx.run_all(&ops, losses));
        Ok(())
    }

    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), ExecError> {
        check_eval(&self.layout, plan, x, logits)?;
        if self.link.is_none() {
            check_unlinked(plan)?;
        }
        let e = self.extra_for(plan)?;
        let inp = plan.input();
        self.arena[inp.off..inp.end()].copy_from_slice(x);
        let input = StepInput { x, labels: &[], lr: 0.0, sgd: Default::default() };
        let mut ops = Vec::new();
        plan.eval_step(|op| ops.push(*op));
        let mut ctx = Ctx::new(plan, &mut self.arena, &mut self.scratch, &mut self.partials, e, &input);
        ctx.link = self.link;
        self.pool.install(|| ctx.run_all(&ops, &mut []));
        let l = plan.logits();
        logits.copy_from_slice(&self.arena[l.off..l.end()]);
        Ok(())
    }
}

/// A raw region that threads slice disjointly.
#[derive(Clone, Copy)]
struct Region {
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

    fn r(&self, off: usize, len: usize) -> &[f32] {
        assert!(off + len <= self.len, "slice outside its region");
        // SAFETY: in bounds; no concurrent writer of these elements (see the Send impl).
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn w(&self, off: usize, len: usize) -> &mut [f32] {
        assert!(off + len <= self.len, "slice outside its region");
        // SAFETY: in bounds; the caller owns these elements exclusively for the op's duration.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

/// The op right after a BN apply when it only transforms that BN's output: the executor
/// runs it on each image straight after the image's BN apply, while the image is still in
/// cache, instead of as another pass over the whole batch. Every element gets the same
/// operations in the same order as the separate ops would give it, so results keep their bits.
#[derive(Clone, Copy)]
enum Tail {
    /// `Relu { x: bn.y }`.
    Relu,
    /// `AddRelu { y: bn.y, x: residual }`: the residual is added into the BN output.
    AddInto(Buf),
    /// `AddRelu { y: out, x: bn.y }`: the BN output (a shortcut's) is added into `out`.
    AddOnto(Buf),
}

impl Tail {
    /// The tail `next` makes of a BN that writes `bn_y`, if it is one.
    fn of(bn_y: Buf, next: Option<&Op>) -> Option<Tail> {
        match next {
            Some(&Op::Relu { x }) if x == bn_y => Some(Tail::Relu),
            Some(&Op::AddRelu { y, x }) if y == bn_y => Some(Tail::AddInto(x)),
            Some(&Op::AddRelu { y, x }) if x == bn_y => Some(Tail::AddOnto(y)),
            _ => None,
        }
    }
}

struct Ctx<'a> {
    plan: &'a Plan,
    arena: Region,
    scratch: Region,
    partials: Region,
    e: Extra,
    input: &'a StepInput<'a>,
    n: usize,
    comm: Option<&'a dyn Comm>,
    /// BN sums are summed over these processes (`--sync-bn`).
    sync_bn: Option<&'a dyn Comm>,
    link: Option<StageLink>,
}

impl<'a> Ctx<'a> {
    fn new(
        plan: &'a Plan,
        arena: &mut [f32],
        scratch: &mut [f32],
        partials: &mut [f32],
        e: Extra,
        input: &'a StepInput<'a>,
    ) -> Self {
        Ctx {
            plan,
            arena: Region::of(arena),
            scratch: Region::of(scratch),
            partials: Region::of(partials),
            e,
            input,
            n: plan.batch,
            comm: None,
            sync_bn: None,
            link: None,
        }
    }

    /// The whole of `b`.
    fn r(&self, b: Buf) -> &[f32] {
        self.arena.r(b.off, b.len)
    }
    #[allow(clippy::mut_from_ref)]
    fn w(&self, b: Buf) -> &mut [f32] {
        self.arena.w(b.off, b.len)
    }
    /// Images `[i0, i0 + cnt)` of a per-image buffer `b`.
    fn rows(&self, b: Buf, i0: usize, cnt: usize) -> &[f32] {
        let per = b.len / self.n;
        self.arena.r(b.off + i0 * per, cnt * per)
    }
    #[allow(clippy::mut_from_ref)]
    fn rows_mut(&self, b: Buf, i0: usize, cnt: usize) -> &mut [f32] {
        let per = b.len / self.n;
        self.arena.w(b.off + i0 * per, cnt * per)
    }
    #[allow(clippy::mut_from_ref)]
    fn thread_scratch(&self) -> &mut [f32] {
        let t = rayon::current_thread_index().unwrap_or(0);
        let len = self.e.scratch_per_thread;
        self.scratch.w(t * len, len)
    }
    #[allow(clippy::mut_from_ref)]
    fn partial(&self, chunk: usize, len: usize) -> &mut [f32] {
        self.partials.w(chunk * self.e.partial_per_chunk, len)
    }

    /// Runs `f(chunk, first image, count)` over all chunks in parallel.
    fn each_chunk(&self, f: impl Fn(usize, usize, usize) + Sync) {
        (0..self.e.chunks).into_par_iter().for_each(|c| {
            let i0 = c * CHUNK;
            f(c, i0, CHUNK.min(self.n - i0));
        });
    }

    /// Per-chunk partial sums of `len` floats computed by `f`, added to `out` in chunk order.
    fn reduce(&self, len: usize, out: &mut [f32], f: impl Fn(usize, usize, &mut [f32]) + Sync) {
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
    fn sum_values(&self, f: impl Fn(usize, usize) -> f32 + Sync) -> f32 {
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
    fn bn_stats(&self, s: BatchNorm2d, x: Buf, stats: Buf, state: usize, updates: u8) {
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

    /// Runs `ops` in order, fusing the runs of ops that [`Ctx::run_fused`] knows.
    fn run_all(&self, ops: &[Op], losses: &mut [f32]) {
        let mut i = 0;
        while i < ops.len() {
            i += match self.run_fused(&ops[i..]) {
                Some(taken) => taken,
                None => {
                    self.run(&ops[i], losses);
                    1
                }
            };
        }
    }

    /// Runs a fusable run of ops at the head of `ops` as one pass over the batch and
    /// returns how many ops it took, or `None` (nothing run) if the head is not one:
    /// - eval's conv → BN (→ ReLU or residual add + ReLU): each image's conv output is
    ///   normalized (and rectified) while still in cache;
    /// - training's BN apply (→ ReLU or residual add + ReLU), after the batch statistics;
    /// - a conv's input gradient → ReLU backward: the mask is applied per image in cache;
    /// - ReLU backward → BN backward over that gradient: masked in the BN's first pass.
    ///
    /// Each fused run performs exactly the element operations of its ops, so the bits are
    /// those of running them one by one.
    fn run_fused(&self, ops: &[Op]) -> Option<usize> {
        let tail = |bn_y: Buf, at: usize| Tail::of(bn_y, ops.get(at));
        let with_tail = |t: Option<Tail>, len: usize| len + usize::from(t.is_some());
        match (ops[0], ops.get(1)) {
            (
                Op::Conv { shape: s, weight, bias, x, y: h },
                Some(&Op::BnEval { shape, affine, state, x: bx, y, stats }),
            ) if bx == h => {
                self.bn_eval_stats(shape.c, state, stats);
                let t = tail(y, 2);
                let wt = self.arena.r(weight, s.weight_len());
                let bias = bias.map(|b| self.arena.r(b, s.c_out));
                self.each_chunk(|_, i0, cnt| {
                    // The chunk's convs in one call (the weights are packed once per
                    // call), then BN and its tail image by image.
                    let (xs, hs) = (self.rows(x, i0, cnt), self.rows_mut(h, i0, cnt));
                    ops::conv2d_forward(&s, cnt, xs, wt, bias, hs, self.thread_scratch());
                    (i0..i0 + cnt).for_each(|i| self.bn_apply_image(shape, affine, h, y, stats, t, i));
                });
                Some(with_tail(t, 2))
            }
            (Op::BnTrain { shape, affine, state, x, y, stats, updates }, _) => {
                let t = tail(y, 1)?;
                self.bn_stats(shape, x, stats, state, updates);
                self.bn_apply_tail(shape, affine, x, y, stats, t);
                Some(2)
            }
            (Op::BnApply { shape, affine, x, y, stats }, _) => {
                let t = tail(y, 1)?;
                self.bn_apply_tail(shape, affine, x, y, stats, t);
                Some(2)
            }
            (
                Op::ConvBackward { shape, weight, bias: None, x, dy, dx: Some(dx) },
                Some(&Op::ReluBackward { y: r, dy: d }),
            ) if d == dx => {
                self.conv_backward(shape, weight, None, x, dy, Some((dx, Some(r))));
                Some(2)
            }
            (
                Op::ReluBackward { y: r, dy },
                Some(&Op::BnBackward { shape, affine, x, dy: d, dx, stats, sums, weights }),
            ) if d == dy => {
                self.bn_backward(shape, affine, x, dy, dx, stats, sums, weights, Some(r));
                Some(2)
            }
            _ => None,
        }
    }

    /// Eval-mode BN statistics: the running statistics as mean and invstd into `stats`.
    fn bn_eval_stats(&self, c: usize, state: usize, stats: Buf) {
        let st = self.w(stats);
        let (mean, invstd) = st[..2 * c].split_at_mut(c);
        let rs = self.arena.r(state, 2 * c);
        ops::batchnorm_eval_stats(&rs[..c], &rs[c..], mean, invstd);
    }

    /// BN apply then `tail`, image by image.
    fn bn_apply_tail(&self, s: BatchNorm2d, gp: usize, x: Buf, y: Buf, stats: Buf, t: Tail) {
        self.each_chunk(|_, i0, cnt| (i0..i0 + cnt).for_each(|i| self.bn_apply_image(s, gp, x, y, stats, Some(t), i)));
    }

    /// BN apply of image `i` from `x` into `y`, then its `tail`.
    #[allow(clippy::too_many_arguments)]
    fn bn_apply_image(&self, s: BatchNorm2d, gp: usize, x: Buf, y: Buf, stats: Buf, t: Option<Tail>, i: usize) {
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
            Some(Tail::AddOnto(out)) => {
                let os = self.rows_mut(out, i, 1);
                ops::add_assign(os, ys);
                ops::relu_inplace(os);
            }
        }
    }

    fn run(&self, op: &Op, losses: &mut [f32]) {
        let p = self.plan.params;
        let n = self.n;
        let labels = self.input.labels;
        match *op {
            Op::BeginStep => {
                self.arena.w(p, p).par_chunks_mut(SGD_PIECE).for_each(|g| g.fill(0.0));
                losses.iter_mut().for_each(|l| *l = 0.0);
            }
            Op::Zero { buf } => self.w(buf).fill(0.0),
            Op::Restore { x, y, channels, hw, mean, std } => self.each_chunk(|_, i0, cnt| {
                ops::denormalize(channels, hw, cnt, &mean, &std, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::Conv { shape: s, weight: w, bias: b, x, y } => {
                let wt = self.arena.r(w, s.weight_len());
                let bias = b.map(|b| self.arena.r(b, s.c_out));
                self.each_chunk(|_, i0, cnt| {
                    let (xs, ys) = (self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt));
                    ops::conv2d_forward(&s, cnt, xs, wt, bias, ys, self.thread_scratch());
                });
            }
            Op::BnTrain { shape, affine, state, x, y, stats, updates } => {
                self.bn_stats(shape, x, stats, state, updates);
                self.bn_apply(shape, affine, x, y, stats);
            }
            Op::BnEval { shape, affine, state, x, y, stats } => {
                self.bn_eval_stats(shape.c, state, stats);
                self.bn_apply(shape, affine, x, y, stats);
            }
            Op::BnApply { shape, affine, x, y, stats } => self.bn_apply(shape, affine, x, y, stats),
            Op::Relu { x } => self.each_chunk(|_, i0, cnt| ops::relu_inplace(self.rows_mut(x, i0, cnt))),
            Op::AddRelu { y, x } => self.each_chunk(|_, i0, cnt| {
                let ys = self.rows_mut(y, i0, cnt);
                ops::add_assign(ys, self.rows(x, i0, cnt));
                ops::relu_inplace(ys);
            }),
            Op::Sigmoid { x, y } => {
                self.each_chunk(|_, i0, cnt| ops::sigmoid_forward(self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt)))
            }
            Op::Pool { channels, hw, x, y } => self.each_chunk(|_, i0, cnt| {
                ops::global_avg_pool_forward(channels, hw, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::MaxPool { shape, x, y } => self.each_chunk(|_, i0, cnt| {
                ops::maxpool_forward(&shape, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::Linear { shape: s, weight: w, bias: b, x, y } => {
                let (wt, bias) = (self.arena.r(w, s.weight_len()), self.arena.r(b, s.out_f));
                self.each_chunk(|_, i0, cnt| {
                    ops::linear_forward(&s, cnt, self.rows(x, i0, cnt), wt, bias, self.rows_mut(y, i0, cnt))
                });
            }
            Op::Resize { window, x, y } => self.each_chunk(|_, i0, cnt| {
                ops::bilinear_forward(&window, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::Crop { window, x, y } => self.each_chunk(|_, i0, cnt| {
                ops::crop_forward(&window, cnt, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::L2Normalize { dim, x, y } => self.each_chunk(|_, i0, cnt| {
                loss::l2_normalize_forward(cnt, dim, self.rows(x, i0, cnt), self.rows_mut(y, i0, cnt))
            }),
            Op::CrossEntropy { classes, logits, dlogits, scale, slot } => {
                losses[slot] += self.sum_values(|i0, cnt| {
                    let (l, dl) = (self.rows(logits, i0, cnt), self.rows_mut(dlogits, i0, cnt));
                    loss::cross_entropy(cnt, classes, l, &labels[i0..i0 + cnt], n, scale, dl)
                });
            }
            Op::Bce { probs, target, dprobs, scale, slot } => {
                losses[slot] += self.sum_values(|i0, cnt| {
                    let (a, b, d) =
                        (self.rows(probs, i0, cnt), self.rows(target, i0, cnt), self.rows_mut(dprobs, i0, cnt));
                    loss::bce(a, b, probs.len, scale, d)
                });
            }
            Op::SupCon { dim, features, dfeatures, scale, slot, scratch } => {
                let t = loss::SUPCON_TEMPERATURE;
                losses[slot] +=
                    loss::supcon(n, dim, self.r(features), labels, t, t, scale, self.w(dfeatures), self.w(scratch));
            }
            Op::ConvBackward { shape, weight, bias, x, dy, dx } => {
                self.conv_backward(shape, weight, bias, x, dy, dx.map(|d| (d, None)))
            }
            Op::BnBackward { shape, affine, x, dy, dx, stats, sums, weights } => {
                self.bn_backward(shape, affine, x, dy, dx, stats, sums, weights, None)
            }
            Op::ReluBackward { y, dy } => self
                .each_chunk(|_, i0, cnt| ops::relu_backward_inplace(self.rows(y, i0, cnt), self.rows_mut(dy, i0, cnt))),
            Op::SigmoidBackward { y, dy, dx } => self.each_chunk(|_, i0, cnt| {
                ops::sigmoid_backward(self.rows(y, i0, cnt), self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
            }),
            Op::PoolBackward { channels, hw, dy, dx } => self.each_chunk(|_, i0, cnt| {
                ops::global_avg_pool_backward(channels, hw, cnt, self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
            }),
            Op::MaxPoolBackward { shape, x, dy, dx } => self.each_chunk(|_, i0, cnt| {
                let (x, dy) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt));
                ops::maxpool_backward(&shape, cnt, x, dy, self.rows_mut(dx, i0, cnt))
            }),
            Op::LinearBackward { shape, weight, bias, x, dy, dx } => {
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
            }
            Op::ResizeBackward { window, dy, dx } => self.each_chunk(|_, i0, cnt| {
                ops::bilinear_accumulate_backward(&window, cnt, self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt))
            }),
            Op::L2NormalizeBackward { dim, x, dy, dx } => self.each_chunk(|_, i0, cnt| {
                let (xs, dys, dxs) = (self.rows(x, i0, cnt), self.rows(dy, i0, cnt), self.rows_mut(dx, i0, cnt));
                loss::l2_normalize_backward(cnt, dim, xs, dys, dxs)
            }),
            Op::Add { y, x } => {
                self.each_chunk(|_, i0, cnt| ops::add_assign(self.rows_mut(y, i0, cnt), self.rows(x, i0, cnt)))
            }
            Op::CheckGrads { slot } => {
                let grads = self.arena.r(p, p);
                if grads.par_chunks(SGD_PIECE).any(|c| c.iter().any(|g| !g.is_finite())) {
                    losses[slot] = 1.0;
                }
            }
            Op::Sgd { params: r } => {
                if let Some(c) = self.comm {
                    crate::dist::average(c, self.arena.w(p + r.off, r.len));
                }
                let (params, grads, mom) =
                    (self.arena.w(r.off, r.len), self.arena.r(p + r.off, r.len), self.arena.w(2 * p + r.off, r.len));
                let sgd = self.input.sgd;
                let lr = self.input.lr;
                params
                    .par_chunks_mut(SGD_PIECE)
                    .zip(grads.par_chunks(SGD_PIECE))
                    .zip(mom.par_chunks_mut(SGD_PIECE))
                    .for_each(|((pp, gg), mm)| sgd_step(&sgd, lr, pp, gg, mm));
            }
            Op::Send { buf, to } => {
                let l = self.link.expect("checked: a stage that talks runs with a link");
                l.comm.send_f32(l.rank_of(to), self.r(buf));
            }
            Op::Recv { buf, from } => {
                let l = self.link.expect("checked: a stage that talks runs with a link");
                l.comm.recv_f32(l.rank_of(from), self.w(buf));
            }
        }
    }

    /// A conv's weight gradient (with `x`) and input gradient (with `dx`); `dx`'s second
    /// part is a ReLU output whose backward mask then goes over each image's input
    /// gradient while it is in cache (a fused `ReluBackward { y, dy: dx }`).
    fn conv_backward(
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
    fn bn_backward(
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

    fn bn_apply(&self, s: BatchNorm2d, gp: usize, x: Buf, y: Buf, stats: Buf) {
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
    fn gather(&self, wl: usize, bl: usize, grad: &mut [f32], gbias: &mut [f32]) {
        for c in 0..self.e.chunks {
            let part = self.partials.r(c * self.e.partial_per_chunk, wl + bl);
            ops::add_assign(grad, &part[..wl]);
            if bl > 0 {
                ops::add_assign(gbias, &part[wl..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Snapshot;
    use hpff_core::arch::Arch;
    use hpff_core::method::{Base, Method};
    use hpff_core::optim::Sgd;
    use hpff_core::partition::{Partition, TableKind};
    use hpff_core::rng::Rng;

    /// The executor's own buffers, filled with a sentinel, are used up to their planned
    /// size by one step (every access is a bounds-checked slice of exactly that size, so
    /// none can go past it): the plan's conv scratch per thread and the partial sums per chunk.
    #[test]
    fn a_step_uses_its_own_scratch_up_to_the_planned_size() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let part = Partition::for_k(&arch, 4, TableKind::Reference).unwrap();
        let method = Method::reference(Base::InfoPro, true);
        let plan = Plan::new(arch, part, method, 16, [0.5; 4], [0.25, 0.25, 0.25, 1.0]).unwrap();
        let mut ex = CpuExecutor::new(&plan, 1);
        Snapshot::init(&plan, &mut Rng::new(1)).upload(&mut ex).unwrap();
        let sentinel = f32::from_bits(0x7fc0_1234);
        ex.scratch.fill(sentinel);
        ex.partials.fill(sentinel);
        let mut rng = Rng::new(2);
        let x: Vec<f32> = (0..plan.input().len).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
        let mut losses = vec![0.0; plan.loss_slots()];
        let input = StepInput { x: &x, labels: &labels, lr: 0.1, sgd: Sgd::default() };
        ex.train_step(&plan, &input, &mut losses).unwrap();
        let highest = |v: &[f32]| v.iter().rposition(|f| f.to_bits() != sentinel.to_bits()).map_or(0, |i| i + 1);
        assert_eq!(ex.scratch.len(), plan.scratch().len);
        assert!(
            highest(&ex.scratch) as f64 >= 0.95 * plan.scratch().len as f64,
            "{} of {}",
            highest(&ex.scratch),
            plan.scratch().len
        );
        let per_chunk = ex.e.partial_per_chunk;
        let first_chunk = &ex.partials[..per_chunk];
        assert_eq!(highest(first_chunk), per_chunk);
    }
}
