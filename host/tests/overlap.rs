//! The CPU executor's overlapped gradient averaging, without MPI: a pretend second
//! process whose background sums finish only after a number of polls. However late a
//! module's sum finishes, its update must use the averaged gradients (never the local
//! ones) and the step must end with every update done: the executor's gradients,
//! parameters and momentum equal, bit for bit, the core's SGD applied to the average
//! computed here. (`tests/dist.rs` checks the same on a real MPI job.)

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use hpff::config::MethodName;
use hpff::cpu::CpuExecutor;
use hpff::device::Snapshot;
use hpff::dist::{Comm, Pending};
use hpff_core::exec::{Executor, Region, StepInput};
use hpff_core::optim::sgd_step;
use hpff_core::rng::Rng;
use support::{holds, small_plan};

/// Rank 0 of two, whose partner's gradients are `other` everywhere; a background sum
/// finishes on its `lag + 1`-th poll (or when waited for).
#[derive(Debug)]
struct Pretend {
    other: f32,
    lag: u64,
    started: AtomicU64,
    hidden: AtomicU64,
}

/// One background sum of [`Pretend`].
struct Late {
    comm: &'static Pretend,
    buf: *mut f32,
    len: usize,
    polls_left: u64,
    done: bool,
}

// SAFETY: `buf` belongs to the sum until it is done (`start_sum_f32`'s contract), and a
// `Late` is used by one thread at a time (`&mut self` methods only).
unsafe impl Send for Late {}
// SAFETY: as above; nothing is reachable through `&Late`.
unsafe impl Sync for Late {}

impl Late {
    fn add(&mut self) {
        if !self.done {
            // SAFETY: the caller of `start_sum_f32` keeps these values to this sum.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.buf, self.len) };
            buf.iter_mut().for_each(|g| *g += self.comm.other);
            self.done = true;
        }
    }
}

impl Pending for Late {
    fn poll(&mut self) -> bool {
        if self.polls_left > 0 {
            self.polls_left -= 1;
            return false;
        }
        if !self.done {
            self.comm.hidden.fetch_add(1, Ordering::Relaxed);
        }
        self.add();
        true
    }
    fn wait(&mut self) {
        self.add();
    }
}

impl Comm for Pretend {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        buf.iter_mut().for_each(|g| *g += self.other);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        buf.iter_mut().for_each(|g| *g += self.other as f64);
    }
    unsafe fn start_sum_f32(&'static self, buf: *mut f32, len: usize) -> Box<dyn Pending> {
        self.started.fetch_add(1, Ordering::Relaxed);
        Box::new(Late { comm: self, buf, len, polls_left: self.lag, done: false })
    }
    fn broadcast_f32(&self, _: &mut [f32]) {}
    fn gather_bytes(&self, mine: &[u8]) -> Vec<u8> {
        [mine, mine].concat()
    }
    fn send_f32(&self, _: usize, _: &[f32]) {
        unreachable!("no pipeline here")
    }
    fn recv_f32(&self, _: usize, _: &mut [f32]) {
        unreachable!("no pipeline here")
    }
    fn reduce_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn background_sums(&self) -> (u64, u64) {
        (self.started.load(Ordering::Relaxed), self.hidden.load(Ordering::Relaxed))
    }
    fn abort(&self, code: i32) -> ! {
        panic!("aborted with {code}")
    }
    fn finish(&self) {}
}

/// Two steps of `method` with sums finishing after `lag` polls, against the core's SGD
/// on the average; returns the plan's module count, how many sums started and how many
/// a poll saw finish.
fn updates_wait_for_their_sums(method: MethodName, hpff: bool, lag: u64) -> (u64, u64, u64) {
    let (setup, plan) = small_plan(method, hpff, 4);
    let comm: &'static Pretend =
        Box::leak(Box::new(Pretend { other: 0.25, lag, started: AtomicU64::new(0), hidden: AtomicU64::new(0) }));
    let init = Snapshot::init(&plan, &mut Rng::new(3));
    let mut job = CpuExecutor::new(&plan, 2).with_comm(Some(comm));
    let mut alone = CpuExecutor::new(&plan, 2);
    init.upload(&mut job).unwrap();
    let (mut params, mut momentum) = (init.params.clone(), vec![0f32; plan.params]);
    let mut rng = Rng::new(9);
    let mut losses = vec![0f32; plan.loss_slots()];
    let what = format!("{method:?}{} with sums {lag} polls late", if hpff { "+HPFF" } else { "" });
    for step in 0..2 {
        let x: Vec<f32> = (0..plan.input().len).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..plan.batch).map(|_| rng.below(4) as u32).collect();
        let input = StepInput { x: &x, labels: &y, lr: 0.05, sgd: setup.sgd };
        job.train_step(&plan, &input, &mut losses).unwrap();
        Snapshot { params: params.clone(), ..init.clone() }.upload(&mut alone).unwrap();
        alone.train_step(&plan, &input, &mut losses).unwrap();
        let mut mean = vec![0f32; plan.params];
        alone.download(Region::Grads, 0, &mut mean).unwrap();
        mean.iter_mut().for_each(|g| *g = (*g + comm.other) / 2.0);
        sgd_step(&setup.sgd, 0.05, &mut params, &mean, &mut momentum);
        holds(&mut job, &mean, &params, &momentum, &what, step);
    }
    let (started, hidden) = comm.background_sums();
    (plan.modules() as u64, started, hidden)
}

#[test]
fn every_method_updates_with_the_average_however_late_it_arrives() {
    let methods =
        [(MethodName::E2e, false), (MethodName::Dgl, false), (MethodName::Infopro, false), (MethodName::Infopro, true)];
    for (method, hpff) in methods {
        // Done on their first poll, a few polls late, and never done until waited for
        // at the step's end.
        let (modules, started, hidden) = updates_wait_for_their_sums(method, hpff, 0);
        assert_eq!((started, hidden), (2 * modules, 2 * modules), "{method:?}: a sum per module and step");
        updates_wait_for_their_sums(method, hpff, 3);
        let (modules, started, hidden) = updates_wait_for_their_sums(method, hpff, u64::MAX);
        assert_eq!((started, hidden), (2 * modules, 0), "{method:?}: every sum waited for");
    }
}
