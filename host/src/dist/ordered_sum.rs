//! The rank-order sum over MPI, as a reduction that can run in the background.
//!
//! Rank s receives segment s of every rank's buffer (an all-to-all), adds the pieces in
//! rank order, and every rank gathers the summed segments (an all-gather). Only data
//! moves through MPI, so the bits do not depend on the reduction algorithm the library
//! picks for a message size or process count. Both phases are non-blocking MPI
//! collectives: [`OrderedSum::poll`] advances them (Open MPI progresses a non-blocking
//! collective only inside MPI calls, so the executor polls between its ops).

use std::ffi::c_int;
use std::ops::Add;
use std::os::raw::c_void;

use mpi::ffi;
use mpi::traits::*;
use mpi::Count;

use super::Comm;

/// Which communicators an [`OrderedSum`] runs on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Lane {
    /// The world's (a blocking sum: both phases in program order).
    World,
    /// The background sums' own pair.
    Background,
}

/// The raw communicators of a [`Lane`]'s two phases.
pub(super) struct LaneComms {
    pub(super) scatter: ffi::MPI_Comm,
    pub(super) gather: ffi::MPI_Comm,
}

/// What an [`OrderedSum`] needs of the communicator it runs on.
pub(super) trait Channels: Comm {
    /// Runs `f` on `lane`'s communicators, no other MPI call running meanwhile (and
    /// the watchdog told that this process is inside MPI).
    fn with_lane<R>(&self, lane: Lane, f: impl FnOnce(&LaneComms) -> R) -> R;
    /// The place of a sum starting on `lane` among the background sums (`None` on the
    /// world's lane).
    fn background_seq(&self, lane: Lane) -> Option<u64>;
    /// Background sum `seq` starts its all-gather: every earlier one must have started
    /// its own (else the ranks could start them in different orders and mismatch them).
    fn gather_turn(&self, seq: u64);
}

/// Where an [`OrderedSum`] stands.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// The all-to-all of segments is in flight.
    Scatter,
    /// The all-gather of the summed segments is in flight.
    Gather,
    Done,
}

/// One rank-order sum in flight over `len` values at `buf`.
pub(super) struct OrderedSum<'c, C: Channels, T> {
    comm: &'c C,
    lane: Lane,
    buf: *mut T,
    /// Segment s of `buf`: `counts[s]` values from `displs[s]` (MPI reads these arrays
    /// until the collective completes, so they live here).
    counts: Vec<c_int>,
    displs: Vec<c_int>,
    /// Every rank's copy of this rank's segment, rank after rank.
    parts: Vec<T>,
    part_counts: Vec<c_int>,
    part_displs: Vec<c_int>,
    /// This rank's segment, summed.
    sum: Vec<T>,
    request: ffi::MPI_Request,
    phase: Phase,
    /// A background sum's place among the process's background sums (from 0).
    seq: Option<u64>,
}

// SAFETY: the raw request and buffer pointer are only used through `Channels::with_lane`, which
// serialises every MPI call of the process (MPI_THREAD_SERIALIZED); `buf` is owned by the
// reduction until it is done (the contract of `OrderedSum::start`).
unsafe impl<C: Channels, T: Send> Send for OrderedSum<'_, C, T> {}
// SAFETY: nothing is reachable through a shared reference but `comm` (itself Sync).
unsafe impl<C: Channels, T: Sync> Sync for OrderedSum<'_, C, T> {}

impl<'c, C: Channels, T: Equivalence + Copy + Default + Add<Output = T>> OrderedSum<'c, C, T> {
    /// Starts the sum of the `len` values at `buf` on `lane`'s communicators.
    ///
    /// # Safety
    /// The `len` values at `buf` stay valid, and nothing else reads or writes them,
    /// until [`OrderedSum::poll`] has returned true or [`OrderedSum::wait`] has returned
    /// (or the process ends). Every rank starts its sums in the same order.
    pub(super) unsafe fn start(comm: &'c C, lane: Lane, buf: *mut T, len: usize) -> Self {
        let n = comm.size();
        let count = |v: usize| Count::try_from(v).expect("a reduction of more than 2^31 values");
        let at = |s: usize| len * s / n;
        let mine = at(comm.rank() + 1) - at(comm.rank());
        let mut s = OrderedSum {
            comm,
            lane,
            buf,
            counts: (0..n).map(|s| count(at(s + 1) - at(s))).collect(),
            displs: (0..n).map(|s| count(at(s))).collect(),
            parts: vec![T::default(); mine * n],
            part_counts: vec![count(mine); n],
            part_displs: (0..n).map(|r| count(r * mine)).collect(),
            sum: Vec::new(),
            // SAFETY: reading an MPI constant.
            request: unsafe { ffi::RSMPI_REQUEST_NULL },
            phase: Phase::Scatter,
            seq: comm.background_seq(lane),
        };
        let ty = T::equivalent_datatype().as_raw();
        comm.with_lane(lane, |c| {
            // SAFETY: `buf` holds `len` values (the caller's contract) and `parts` its
            // segments' copies; the count and displacement arrays and `parts` live in
            // `s` until the request completes (a `Vec`'s heap block does not move with it).
            unsafe {
                ffi::MPI_Ialltoallv(
                    buf as *const c_void,
                    s.counts.as_ptr(),
                    s.displs.as_ptr(),
                    ty,
                    s.parts.as_mut_ptr() as *mut c_void,
                    s.part_counts.as_ptr(),
                    s.part_displs.as_ptr(),
                    ty,
                    c.scatter,
                    &mut s.request,
                )
            }
        });
        s
    }

    pub(super) fn comm(&self) -> &'c C {
        self.comm
    }

    /// Advances the sum without blocking; true once `buf` holds it. Background sums
    /// are advanced oldest first: each starts its all-gather when its all-to-all is seen
    /// complete, and every rank must start those in the same order.
    pub(super) fn poll(&mut self) -> bool {
        self.advance(false)
    }

    /// Blocks until `buf` holds the sum.
    pub(super) fn wait(&mut self) {
        self.advance(true);
    }

    fn advance(&mut self, block: bool) -> bool {
        while self.phase != Phase::Done {
            if !self.complete(block) {
                return false;
            }
            match self.phase {
                Phase::Scatter => self.gather(),
                _ => self.phase = Phase::Done,
            }
        }
        true
    }

    /// Whether the request in flight has completed (`block`: waits until it has).
    fn complete(&mut self, block: bool) -> bool {
        let mut flag: c_int = 0;
        self.comm.with_lane(self.lane, |_| {
            // SAFETY: `request` is the live request of this sum's current phase.
            unsafe {
                if block {
                    ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE);
                    flag = 1;
                } else {
                    ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE);
                }
            }
        });
        flag != 0
    }

    /// Adds the ranks' copies of this rank's segment in rank order, and starts gathering
    /// every rank's summed segment into `buf`.
    fn gather(&mut self) {
        if let Some(seq) = self.seq {
            self.comm.gather_turn(seq);
        }
        let mine = self.parts.len() / self.comm.size();
        let mut sum = self.parts[..mine].to_vec();
        for part in self.parts.chunks_exact(mine.max(1)).skip(1) {
            sum.iter_mut().zip(part).for_each(|(s, &v)| *s = *s + v);
        }
        self.sum = sum;
        let ty = T::equivalent_datatype().as_raw();
        let mine = Count::try_from(mine).expect("checked at start");
        self.comm.with_lane(self.lane, |c| {
            // SAFETY: `sum` (this rank's segment) and the count and displacement arrays
            // live in `self` until the request completes; `buf` is owned by this sum.
            unsafe {
                ffi::MPI_Iallgatherv(
                    self.sum.as_ptr() as *const c_void,
                    mine,
                    ty,
                    self.buf as *mut c_void,
                    self.counts.as_ptr(),
                    self.displs.as_ptr(),
                    ty,
                    c.gather,
                    &mut self.request,
                )
            }
        });
        self.phase = Phase::Gather;
    }
}

impl<C: Channels, T> Drop for OrderedSum<'_, C, T> {
    /// MPI writes into `parts` and `buf` until the request in flight completes: a sum
    /// dropped before it is done (an error ending the step) waits for that request. (It
    /// starts no all-gather: the job is ending, and the watchdog ends ranks that wait for it.)
    fn drop(&mut self) {
        if self.phase != Phase::Done {
            self.comm.with_lane(self.lane, |_| {
                // SAFETY: `request` is the live request of this sum's current phase.
                unsafe { ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE) };
            });
        }
    }
}
