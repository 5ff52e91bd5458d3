//! The CPU executor: runs a plan's ops on several threads over fixed-size batch chunks.
//!
//! Every op of the schedule is cut into chunks of [`CHUNK`] images. Per-image work
//! (convolutions, BN normalisation, activations, resizes, input gradients) runs on the
//! chunks in parallel; reductions over the batch (weight gradients, BN statistics, loss
//! values) are computed per chunk into private partial buffers and then added up in
//! chunk order. The chunking does not depend on the thread count, so the result is
//! bit-identical whatever `--threads` is. (It differs in the last bits from the core's
//! single-threaded reference executor, which reduces over the whole batch at once.)

mod backend;
mod ctx;
mod update;

use hpff_core::exec::{
    self, check_eval, check_train, check_unlinked, dispatch, region_span, sizing, ExecError, Executor, Held, Sizing,
    StepInput,
};
use hpff_core::ops::{self, BatchNorm2d};
use hpff_core::plan::{op, Plan};

use crate::dist::{Comm, StageLink};
use ctx::Ctx;
use std::fmt;

/// Images per chunk: the unit of parallel work and of the fixed reduction order.
pub const CHUNK: usize = 8;
/// Parameters per parallel piece of the SGD update.
pub(crate) const SGD_PIECE: usize = 1 << 14;

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
    /// The neighbouring stages of a pipeline ([`hpff_core::plan::Op::Send`], [`hpff_core::plan::Op::Recv`]).
    link: Option<StageLink>,
}

/// Sizes of the executor's own buffers for one plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extra {
    scratch_per_thread: usize,
    partial_per_chunk: usize,
    chunks: usize,
}

/// What the CPU backend needs beside the arena for one op, in floats.
#[derive(Clone, Copy, Debug, Default)]
struct Need {
    /// A convolution's scratch, per thread.
    scratch: usize,
    /// A reduction's partial sums (weight and bias gradients, BN sums), per chunk.
    partial: usize,
}

struct CpuSizing;

impl Sizing for CpuSizing {
    type Need = Need;

    fn merge(a: Need, b: Need) -> Need {
        Need { scratch: a.scratch.max(b.scratch), partial: a.partial.max(b.partial) }
    }

    fn conv(&self, a: &op::Conv) -> Need {
        Need { scratch: a.shape.scratch_len(), partial: 0 }
    }

    fn conv_backward(&self, a: &op::ConvBackward) -> Need {
        let s = a.shape;
        let wgrad = a.x.map_or(0, |_| s.weight_len() + a.bias.map_or(0, |_| s.c_out));
        Need { scratch: s.scratch_len(), partial: wgrad }
    }

    fn bn(&self, shape: &BatchNorm2d, sums: bool) -> Need {
        Need { scratch: 0, partial: if sums { 2 * shape.c } else { 0 } }
    }

    fn linear_backward(&self, a: &op::LinearBackward) -> Need {
        Need { scratch: 0, partial: a.shape.weight_len() + a.shape.out_f }
    }
}

fn extra(plan: &Plan) -> Extra {
    let n = sizing::needs(plan, &CpuSizing);
    Extra { scratch_per_thread: n.scratch, partial_per_chunk: n.partial, chunks: plan.batch.div_ceil(CHUNK) }
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

    /// Bytes [`CpuExecutor::new`] allocates for `layout` and `threads`: the arena and
    /// [`CpuExecutor::extra_bytes`].
    pub fn bytes_needed(layout: &Plan, threads: usize) -> u64 {
        4 * layout.arena_len() as u64 + Self::extra_bytes(layout, threads)
    }

    /// Bytes of the executor's own buffers beside the arena for `layout` and `threads`:
    /// the plan's conv scratch per thread and the partial sums per batch chunk.
    pub fn extra_bytes(layout: &Plan, threads: usize) -> u64 {
        let e = extra(layout);
        let floats = (e.scratch_per_thread as u64) * Self::resolve_threads(threads) as u64
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

    /// Runs pipeline stages: [`hpff_core::plan::Op::Send`] and [`hpff_core::plan::Op::Recv`] go to the neighbouring ranks.
    pub fn with_link(mut self, link: Option<StageLink>) -> CpuExecutor {
        self.link = link;
        self
    }

    /// Averages each module's gradients over `comm`'s processes before its update (at
    /// [`hpff_core::exec::Backend::module_done`]): data parallelism. `None` or one
    /// process: alone, as before.
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

/// The variable that caps the CPU kernels' instruction set (`avx512`, `avx2`, `neon`, `scalar`).
pub const ISA_ENV: &str = "HPFF_CPU_ISA";

/// Applies [`ISA_ENV`] when set: kernels no richer than it names. An unknown name, or a
/// set this CPU lacks, is an error (a forced path must be the path that runs).
pub fn apply_isa_env() -> crate::error::Result<()> {
    let Ok(v) = std::env::var(ISA_ENV) else { return Ok(()) };
    ops::limit_isa(Some(isa_named(&v)?));
    Ok(())
}

/// The set `v` names, if this CPU runs it.
fn isa_named(v: &str) -> crate::error::Result<ops::Isa> {
    let want = ops::Isa::parse(v.trim())
        .ok_or_else(|| crate::error::Error::msg(format!("{ISA_ENV}={v:?}: expected avx512, avx2, neon or scalar")))?;
    if !want.runs_here() {
        let have: Vec<&str> = ops::Isa::ALL.iter().filter(|i| i.runs_here()).map(|i| i.name()).collect();
        return Err(crate::error::Error::msg(format!("{ISA_ENV}={}: this CPU runs {}", want.name(), have.join(", "))));
    }
    Ok(want)
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
        let mut ctx = Ctx::new(plan, &mut self.arena, &mut self.scratch, &mut self.partials, e, input, losses);
        ctx.comm = self.comm;
        ctx.sync_bn = self.comm.filter(|_| self.sync_bn);
        ctx.link = self.link;
        let Ok(()) = self.pool.install(|| {
            let done = dispatch::train_step(plan, &mut ctx);
            // The step's gradient check has finished every sum already; this holds for
            // any op stream: no background sum may outlive the step (it writes the arena).
            ctx.finish_updates();
            done
        });
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
        let mut ctx = Ctx::new(plan, &mut self.arena, &mut self.scratch, &mut self.partials, e, &input, &mut []);
        ctx.link = self.link;
        let Ok(()) = self.pool.install(|| dispatch::eval_step(plan, &mut ctx));
        let l = plan.logits();
        logits.copy_from_slice(&self.arena[l.off..l.end()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Snapshot;

    /// `HPFF_CPU_ISA` names a set this CPU runs, or says which it runs: the other
    /// architecture's sets are refused, not run as the portable loops under their name.
    #[test]
    fn isa_names_are_checked_against_this_cpu() {
        assert_eq!(isa_named(" scalar ").unwrap(), ops::Isa::Scalar);
        let e = isa_named("sse4").unwrap_err().to_string();
        assert!(e.contains("expected avx512, avx2, neon or scalar"), "{e}");
        let foreign = if cfg!(target_arch = "x86_64") { "neon" } else { "avx2" };
        let e = isa_named(foreign).unwrap_err().to_string();
        assert!(e.contains("this CPU runs scalar"), "{e}");
        assert_eq!(isa_named(ops::detected_isa().name()).unwrap(), ops::detected_isa());
    }
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
