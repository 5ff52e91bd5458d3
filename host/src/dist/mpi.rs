//! [`Comm`] on MPI (the `mpi` crate over the system's MPI library, e.g. Open MPI).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::ordered_sum::{Channels, Lane, LaneComms, OrderedSum};
use super::{Comm, Pending};
use crate::error::{Error, Result};

/// The job's communicators. MPI is initialised with `MPI_THREAD_SERIALIZED`: the
/// executor reduces gradients from one of its worker threads, never two at once.
pub(super) struct MpiComm {
    /// Kept until [`Comm::finish`]: dropping the universe calls `MPI_Finalize`.
    universe: Mutex<Option<Universe>>,
    comms: Mutex<Comms>,
    rank: usize,
    size: usize,
    /// Nanoseconds spent in `sum_f32` and in starting, advancing and waiting for
    /// background sums.
    reducing: AtomicU64,
    /// Nanoseconds spent in `send_f32` and `recv_f32`.
    linking: AtomicU64,
    /// Background sums started; all-gathers of background sums started; background sums
    /// seen done by a poll (while the executor computed) rather than waited for.
    started: AtomicU64,
    gathers: AtomicU64,
    hidden: AtomicU64,
    watch: Arc<Watch>,
}

/// When this process entered the MPI call it is in (ns since `t0`, plus 1; 0: in none),
/// read by the watchdog thread.
struct Watch {
    t0: Instant,
    since: AtomicU64,
}

/// The world communicator, for every blocking call, and two duplicates of it for the
/// background gradient sums ([`Comm::start_sum_f32`]): one for their all-to-alls, one for
/// their all-gathers. Collectives on one communicator must start in the same order on
/// every rank; a background sum starts its all-gather whenever its all-to-all is seen to
/// complete, which differs between ranks, so neither phase may share a communicator
/// with the other or with the blocking calls.
struct Comms {
    world: SimpleCommunicator,
    scatter: SimpleCommunicator,
    gather: SimpleCommunicator,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED, which allows calls from any
// thread as long as no two run at once; every use goes through `MpiComm::comms`'s mutex.
unsafe impl Send for Comms {}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiComm {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

impl MpiComm {
    pub(super) fn init() -> Result<MpiComm> {
        let (universe, got) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::msg("internal: MPI was already initialised"))?;
        if matches!(got, Threading::Single | Threading::Funneled) {
            return Err(Error::msg(
                "this MPI library offers no MPI_THREAD_SERIALIZED support, which hpff's worker threads need",
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let (scatter, gather) = (world.duplicate(), world.duplicate());
        let watch = Arc::new(Watch { t0: Instant::now(), since: AtomicU64::new(0) });
        if let Some(limit) = timeout()? {
            watchdog(watch.clone(), limit, rank, size);
        }
        Ok(MpiComm {
            universe: Mutex::new(Some(universe)),
            comms: Mutex::new(Comms { world, scatter, gather }),
            rank,
            size,
            reducing: AtomicU64::new(0),
            linking: AtomicU64::new(0),
            started: AtomicU64::new(0),
            gathers: AtomicU64::new(0),
            hidden: AtomicU64::new(0),
            watch,
        })
    }

    /// Runs `f` on the world communicator (no other MPI call runs meanwhile).
    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        self.locked(|c| f(&c.world))
    }

    /// Runs `f` holding the lock, with the watchdog told that this process is inside MPI.
    fn locked<T>(&self, f: impl FnOnce(&Comms) -> T) -> T {
        let c = self.comms.lock().unwrap_or_else(|e| e.into_inner());
        let since = self.watch.t0.elapsed().as_nanos() as u64 + 1;
        self.watch.since.store(since, Ordering::Relaxed);
        let r = f(&c);
        self.watch.since.store(0, Ordering::Relaxed);
        r
    }

    /// Adds the time since `t` to the reduction time.
    fn reduced_since(&self, t: Instant) {
        self.reducing.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Channels for MpiComm {
    fn with_lane<T>(&self, lane: Lane, f: impl FnOnce(&LaneComms) -> T) -> T {
        self.locked(|c| {
            let (s, g) = match lane {
                Lane::World => (&c.world, &c.world),
                Lane::Background => (&c.scatter, &c.gather),
            };
            f(&LaneComms { scatter: s.as_raw(), gather: g.as_raw() })
        })
    }

    fn background_seq(&self, lane: Lane) -> Option<u64> {
        matches!(lane, Lane::Background).then(|| self.started.fetch_add(1, Ordering::Relaxed))
    }

    fn gather_turn(&self, seq: u64) {
        let turn = self.gathers.fetch_add(1, Ordering::Relaxed);
        if turn != seq {
            eprintln!(
                "hpff: internal error (rank {} of {}): background sum {seq} advanced before sum {turn}; ending the job",
                self.rank, self.size
            );
            self.abort(70);
        }
    }
}

/// A background gradient sum ([`Comm::start_sum_f32`]) on MPI.
struct Background(OrderedSum<'static, MpiComm, f32>);

impl Pending for Background {
    fn poll(&mut self) -> bool {
        let t = Instant::now();
        let done = self.0.poll();
        let comm = self.0.comm();
        comm.reduced_since(t);
        if done {
            comm.hidden.fetch_add(1, Ordering::Relaxed);
        }
        done
    }
    fn wait(&mut self) {
        let t = Instant::now();
        self.0.wait();
        self.0.comm().reduced_since(t);
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        let t = Instant::now();
        // SAFETY: `buf` is borrowed until the sum is done (it is waited for here).
        unsafe { OrderedSum::start(self, Lane::World, buf.as_mut_ptr(), buf.len()) }.wait();
        self.reduced_since(t);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        // SAFETY: as in `sum_f32`.
        unsafe { OrderedSum::start(self, Lane::World, buf.as_mut_ptr(), buf.len()) }.wait();
    }
    unsafe fn start_sum_f32(&'static self, buf: *mut f32, len: usize) -> Box<dyn Pending> {
        let t = Instant::now();
        // SAFETY: the caller keeps the `len` values at `buf` to the sum until it is done
        // (this method's contract), and every rank starts its background sums in the
        // same order (the plan's order of module updates).
        let sum = unsafe { OrderedSum::start(self, Lane::Background, buf, len) };
        self.reduced_since(t);
        Box::new(Background(sum))
    }
    fn broadcast_f32(&self, buf: &mut [f32]) {
        self.with(|w| w.process_at_rank(0).broadcast_into(buf));
    }
    fn gather_bytes(&self, mine: &[u8]) -> Vec<u8> {
        let mut all = vec![0u8; mine.len() * self.size];
        self.with(|w| w.all_gather_into(mine, &mut all[..]));
        all
    }
    fn send_f32(&self, to: usize, buf: &[f32]) {
        let t = Instant::now();
        self.with(|w| w.process_at_rank(rank_of(to)).send(buf));
        self.linking.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    fn recv_f32(&self, from: usize, buf: &mut [f32]) {
        let t = Instant::now();
        let status = self.with(|w| w.process_at_rank(rank_of(from)).receive_into(buf));
        self.linking.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let got = status.count(f32::equivalent_datatype()) as usize;
        if got != buf.len() {
            eprintln!(
                "hpff: error (rank {} of {}): expected {} values from rank {from}, got {got}; ending the job",
                self.rank,
                self.size,
                buf.len()
            );
            self.abort(1);
        }
    }
    fn reduce_time(&self) -> Duration {
        Duration::from_nanos(self.reducing.load(Ordering::Relaxed))
    }
    fn link_time(&self) -> Duration {
        Duration::from_nanos(self.linking.load(Ordering::Relaxed))
    }
    fn background_sums(&self) -> (u64, u64) {
        (self.started.load(Ordering::Relaxed), self.hidden.load(Ordering::Relaxed))
    }
    fn abort(&self, code: i32) -> ! {
        // No lock: a thread that panicked while holding it must still end the job.
        // SAFETY: MPI_Abort may be called from any thread of an initialised MPI process.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
    fn finish(&self) {
        let u = self.universe.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(u);
    }
}

fn rank_of(r: usize) -> mpi::Rank {
    mpi::Rank::try_from(r).expect("a rank below 2^31")
}

/// How long one MPI call may wait for the other processes (`HPFF_MPI_TIMEOUT`, seconds;
/// default 300, 0 = forever).
fn timeout() -> Result<Option<Duration>> {
    let Ok(v) = std::env::var("HPFF_MPI_TIMEOUT") else {
        return Ok(Some(Duration::from_secs(300)));
    };
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(s) => Ok(Some(Duration::from_secs(s))),
        Err(_) => Err(Error::msg(format!("HPFF_MPI_TIMEOUT={v:?}: expected whole seconds (0: wait forever)"))),
    }
}

/// A process alive but stuck (a deadlock, a hung file system, a frozen node) would hold
/// the others in their next collective forever: a thread ends the job when this
/// process has been inside one MPI call for longer than `limit`.
fn watchdog(watch: Arc<Watch>, limit: Duration, rank: usize, size: usize) {
    let spawned = std::thread::Builder::new().name("hpff-mpi-watchdog".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let since = watch.since.load(Ordering::Relaxed);
        if since == 0 {
            continue;
        }
        let waited = watch.t0.elapsed().saturating_sub(Duration::from_nanos(since - 1));
        if waited > limit {
            eprintln!(
                "hpff: error (rank {rank} of {size}): waited {} s for the other processes; one is stuck or unreachable; ending the job (HPFF_MPI_TIMEOUT sets the limit)",
                waited.as_secs()
            );
            // SAFETY: MPI is initialised (the watchdog starts after MPI_Init and only
            // fires while this process is inside an MPI call, so before MPI_Finalize).
            unsafe {
                mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
            }
            std::process::exit(1);
        }
    });
    if spawned.is_err() {
        eprintln!("hpff: warning: no watchdog thread; a stuck process would hold this job");
    }
}

/// A panic on one rank ends the whole job: without this the other ranks wait in their
/// next collective forever (the panicking rank's MPI would finalize on unwind).
pub(super) fn abort_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        super::world().abort(101);
    }));
}
