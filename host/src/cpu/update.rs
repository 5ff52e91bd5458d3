//! Module updates, and data parallelism's gradient averaging overlapped with compute.
//!
//! With several processes, a module's gradients are summed over them as soon as they are
//! final ([`hpff_core::exec::Backend::module_done`]), in the background, while the
//! executor runs the later modules' ops; the module's SGD step waits until its sum is
//! in. The executor advances the sums between ops (Open MPI progresses a non-blocking
//! collective only inside MPI calls) and finishes them all before the step's gradient
//! check. Nothing reads a module's parameters or touches its gradients between its
//! update op and the step's end (the plan's invariant), so a later update is the same
//! update: the bits equal those of a blocking average at the update op.

use hpff_core::optim::sgd_step;
use hpff_core::plan::op;
use rayon::prelude::*;

use super::ctx::Ctx;
use super::SGD_PIECE;
use crate::dist::divide;

impl Ctx<'_> {
    /// Starts summing module `a`'s gradients over the processes (none: nothing to do).
    pub(super) fn start_average(&mut self, a: &op::Sgd) {
        let Some(comm) = self.comm else { return };
        let g = self.arena.w(self.plan.grad_of(a.params.off), a.params.len);
        // SAFETY: the module's gradients are final and nothing reads or writes them
        // until its update, which runs only once the sum is done (`advance_updates`,
        // `finish_updates`); the arena outlives the step, which waits for every sum.
        let sum = unsafe { comm.start_sum_f32(g.as_mut_ptr(), g.len()) };
        self.pending.push_back((*a, sum));
    }

    /// Whether module `a`'s update waits for its gradients' sum.
    pub(super) fn update_waits(&self, a: &op::Sgd) -> bool {
        self.pending.back().is_some_and(|(s, _)| s == a)
    }

    /// Advances the sums in flight, and runs the updates whose sums are in (oldest first:
    /// every rank then starts the sums' second phases in the same order).
    pub(super) fn advance_updates(&mut self) {
        while let Some((_, sum)) = self.pending.front_mut() {
            if !sum.poll() {
                return;
            }
            let (a, _) = self.pending.pop_front().expect("looked at");
            self.averaged_update(&a);
        }
    }

    /// Waits for every sum in flight and runs the updates that waited for them.
    pub(super) fn finish_updates(&mut self) {
        while let Some((a, mut sum)) = self.pending.pop_front() {
            if !sum.poll() {
                sum.wait();
            }
            self.averaged_update(&a);
        }
    }

    fn averaged_update(&self, a: &op::Sgd) {
        let n = self.comm.map_or(1, |c| c.size());
        divide(self.arena.w(self.plan.grad_of(a.params.off), a.params.len), n);
        self.update(a);
    }

    /// Module `a`'s SGD step over its gradients as they stand.
    pub(super) fn update(&self, a: &op::Sgd) {
        let op::Sgd { params: r, .. } = *a;
        let p = self.plan.params;
        let (params, grads, mom) =
            (self.arena.w(r.off, r.len), self.arena.r(p + r.off, r.len), self.arena.w(2 * p + r.off, r.len));
        let (sgd, lr) = (self.input.sgd, self.input.lr);
        params
            .par_chunks_mut(SGD_PIECE)
            .zip(grads.par_chunks(SGD_PIECE))
            .zip(mom.par_chunks_mut(SGD_PIECE))
            .for_each(|((pp, gg), mm)| sgd_step(&sgd, lr, pp, gg, mm));
    }
}
