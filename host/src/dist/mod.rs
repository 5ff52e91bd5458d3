//! Several processes training one model (data parallelism), on MPI.
//!
//! `mpirun -np N hpff train ...` starts N copies of hpff; each finds its rank and the
//! world size through MPI ([`init`]) and reaches the others only through a [`Comm`]:
//! - the executor averages each module's gradients over the ranks before the module's
//!   update (a rank-order sum, then a division by N): every rank applies the same
//!   averaged gradients, so the parameters stay bit-identical. The sum starts as soon as
//!   the module's gradients are final and runs in the background
//!   ([`Comm::start_sum_f32`]) while later modules compute;
//! - the data of an epoch is cut as PyTorch's `DistributedSampler` cuts it ([`Shard`]);
//! - losses and evaluation counts are summed; rank 0's BN running statistics are
//!   broadcast before an evaluation or a checkpoint (as DDP broadcasts buffers);
//! - rank 0 alone prints and writes.
//!
//! One process without mpirun gets [`Solo`]: no MPI, exactly the single-process
//! behaviour. MPI is a cargo feature (`mpi`); a binary without it that finds itself
//! started by mpirun with more than one process says so instead of training N copies.

use std::fmt;
use std::sync::OnceLock;

use crate::error::{Error, Result};

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
mod ordered_sum;
mod shard;

pub use shard::Shard;

/// What the processes of one job say to each other. Every method but the point-to-point
/// pair ([`Comm::send_f32`], [`Comm::recv_f32`]) is collective: every rank calls it, in
/// the same order, with buffers of the same length.
pub trait Comm: Send + Sync + fmt::Debug {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks in rank order (`((r0 + r1) + r2) + …`): the same
    /// bits on every rank, for any message size and process count (no dependence on the
    /// reduction algorithm an MPI library picks).
    fn sum_f32(&self, buf: &mut [f32]);
    /// Starts [`Comm::sum_f32`] over the `len` values at `buf` and returns while it runs
    /// in the background (an engine without one sums at once). Background sums are
    /// collective and start in the same order on every rank; they may finish in any
    /// order relative to the blocking calls.
    ///
    /// # Safety
    /// The `len` values at `buf` stay valid, and nothing else reads or writes them, until
    /// the returned [`Pending`] reports done (its `poll` returned true or its `wait`
    /// returned).
    unsafe fn start_sum_f32(&'static self, buf: *mut f32, len: usize) -> Box<dyn Pending> {
        // SAFETY: valid and ours for the call (the contract above).
        self.sum_f32(unsafe { std::slice::from_raw_parts_mut(buf, len) });
        Box::new(Summed)
    }
    /// [`Comm::sum_f32`] for `f64`.
    fn sum_f64(&self, buf: &mut [f64]);
    /// Rank 0's `buf` on every rank.
    fn broadcast_f32(&self, buf: &mut [f32]);
    /// Every rank's `mine` (the same length on every rank), in rank order.
    fn gather_bytes(&self, mine: &[u8]) -> Vec<u8>;
    /// Hands `buf` to rank `to`, which takes it with [`Comm::recv_f32`] of the same length
    /// (messages between two ranks arrive in the order they were sent).
    fn send_f32(&self, to: usize, buf: &[f32]);
    /// Overwrites `buf` with the next message rank `from` sends this rank; ends the job if
    /// its length differs (the two processes disagree on the schedule).
    fn recv_f32(&self, from: usize, buf: &mut [f32]);
    /// Time this process has spent in [`Comm::sum_f32`] so far (waiting included).
    fn reduce_time(&self) -> std::time::Duration;
    /// Time this process has spent in [`Comm::send_f32`] and [`Comm::recv_f32`] so far
    /// (waiting for the other rank included).
    fn link_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Background sums started so far, and how many of them were seen done by a
    /// [`Pending::poll`] (finished while the process computed) rather than waited for.
    fn background_sums(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Ends every process of the job with exit status `code`.
    fn abort(&self, code: i32) -> !;
    /// Shuts the engine down cleanly (before a normal exit; nothing collective after it).
    fn finish(&self);
}

/// A sum running in the background ([`Comm::start_sum_f32`]). (`Sync` so that an
/// executor holding one can share itself with its worker threads: every method takes
/// `&mut self`.)
pub trait Pending: Send + Sync {
    /// Advances it without blocking; true once the buffer holds the sum (call it at
    /// most until then). A process advances its sums oldest first: an engine may start
    /// a sum's later phase when it sees the earlier one complete, and every rank must
    /// start those in the same order.
    fn poll(&mut self) -> bool;
    /// Returns once the buffer holds the sum.
    fn wait(&mut self);
}

/// A sum that was done when it started.
struct Summed;

impl Pending for Summed {
    fn poll(&mut self) -> bool {
        true
    }
    fn wait(&mut self) {}
}

/// How a pipeline stage's executor reaches its neighbours ([`crate::pipeline`]): stage s
/// is rank s.
#[derive(Clone, Copy, Debug)]
pub struct StageLink {
    pub comm: &'static dyn Comm,
}

impl StageLink {
    /// The rank of neighbour `p`.
    pub fn rank_of(&self, p: hpff_core::plan::Peer) -> usize {
        match p {
            hpff_core::plan::Peer::Prev => self.comm.rank() - 1,
            hpff_core::plan::Peer::Next => self.comm.rank() + 1,
        }
    }
}

/// The communicator of one process alone.
#[derive(Debug, Clone, Copy)]
pub struct Solo;

impl Comm for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn broadcast_f32(&self, _: &mut [f32]) {}
    fn gather_bytes(&self, mine: &[u8]) -> Vec<u8> {
        mine.to_vec()
    }
    fn send_f32(&self, to: usize, _: &[f32]) {
        unreachable!("one process has no rank {to} to send to")
    }
    fn recv_f32(&self, from: usize, _: &mut [f32]) {
        unreachable!("one process has no rank {from} to receive from")
    }
    fn reduce_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn finish(&self) {}
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// This process's communicator: the job's after [`init`], else [`Solo`].
pub fn world() -> &'static dyn Comm {
    match WORLD.get() {
        Some(c) => &**c,
        None => &Solo,
    }
}

/// The process count a launcher announced in the environment (Open MPI's `mpirun`,
/// MPICH/Hydra and PMI launchers, Slurm's `srun`), if any.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Worker threads for `--threads 0`: the cores this process may run on, shared with the
/// other ranks on its node when they may all run on every core (`mpirun --bind-to none`);
/// a rank bound to its own cores (Open MPI's default for up to 2 ranks) keeps them.
pub fn default_threads() -> usize {
    let mine = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: sysconf only reads a system constant.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    if online > 0 && mine == online as usize {
        (mine / local).max(1)
    } else {
        mine
    }
}

/// Joins the job this process was started in: MPI when a launcher started more than one
/// process, else nothing (one process is [`Solo`]). Call once, before any thread that
/// might use the communicator starts.
pub fn init() -> Result<&'static dyn Comm> {
    match launched_size() {
        Some(n) if n > 1 => join(n),
        _ => Ok(world()),
    }
}

#[cfg(feature = "mpi")]
fn join(_: usize) -> Result<&'static dyn Comm> {
    let comm = mpi::MpiComm::init()?;
    if WORLD.set(Box::new(comm)).is_err() {
        return Err(Error::msg("internal: MPI initialised twice"));
    }
    mpi::abort_on_panic();
    Ok(world())
}

#[cfg(not(feature = "mpi"))]
fn join(n: usize) -> Result<&'static dyn Comm> {
    Err(Error::msg(format!(
        "started as one of {n} processes, but this hpff was built without MPI; build it with `cargo build --release --features mpi` (needs libopenmpi-dev), or run one process"
    )))
}

/// The per-rank batch of a global `batch` over `comm`'s ranks.
pub fn local_batch(batch: usize, comm: &dyn Comm) -> Result<usize> {
    let n = comm.size();
    if batch < n {
        return Err(Error::msg(format!(
            "--batch-size {batch} is smaller than the {n} processes; each needs at least one image"
        )));
    }
    if !batch.is_multiple_of(n) {
        return Err(Error::msg(format!(
            "--batch-size {batch} is the global batch and must divide evenly over the {n} processes (try {})",
            batch / n * n
        )));
    }
    Ok(batch / n)
}

/// Averages `grads` over the ranks: the rank-order sum, divided by the world size.
pub fn average(comm: &dyn Comm, grads: &mut [f32]) {
    if comm.size() > 1 {
        comm.sum_f32(grads);
        divide(grads, comm.size());
    }
}

/// `sums` over `n` ranks, divided into their average (after a [`Comm::start_sum_f32`]:
/// the same bits as [`average`]).
pub fn divide(sums: &mut [f32], n: usize) {
    let n = n as f32;
    sums.iter_mut().for_each(|g| *g /= n);
}

/// Stops with an error on every rank unless every rank holds the same `what` (a digest of
/// the configuration, the data and the binary): mismatched processes would train
/// different models silently.
pub fn check_same(comm: &dyn Comm, what: &str, digest: &[u8; 32]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let all = comm.gather_bytes(digest);
    let differ: Vec<usize> = all.chunks(32).enumerate().filter(|(_, d)| *d != &all[..32]).map(|(r, _)| r).collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::msg(format!(
        "rank{} {} {} another {what} than rank 0; every process of a job must run the same hpff with the same flags and data",
        if differ.len() == 1 { "" } else { "s" },
        differ.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        if differ.len() == 1 { "has" } else { "have" },
    )))
}
