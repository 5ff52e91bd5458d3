//! The CPU executor: runs a plan's ops on several threads.
//!
//! (First version: delegates to the core's single-threaded reference executor; the
//! multi-threaded chunked executor replaces the body without changing this API.)

use hpff_core::exec::{self, ExecError, StepInput};
use hpff_core::plan::Plan;

/// Runs plans on the host's CPUs.
#[derive(Debug)]
pub struct CpuExecutor {
    threads: usize,
}

impl CpuExecutor {
    /// An executor using `threads` worker threads (0 = all cores).
    pub fn new(threads: usize) -> CpuExecutor {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        CpuExecutor { threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes this executor needs beyond the plan's arena (per-thread scratch, partial sums).
    pub fn extra_bytes(&self, plan: &Plan) -> usize {
        let _ = plan;
        0
    }

    /// One training step; see [`hpff_core::exec::train_step`].
    pub fn train_step(
        &mut self,
        plan: &Plan,
        arena: &mut [f32],
        input: &StepInput,
        losses: &mut [f32],
    ) -> Result<(), ExecError> {
        exec::train_step(plan, arena, input, losses)
    }

    /// One eval pass; returns the logits (batch × classes).
    pub fn eval_step<'a>(&mut self, plan: &Plan, arena: &'a mut [f32], x: &[f32]) -> Result<&'a [f32], ExecError> {
        exec::eval_step(plan, arena, x)
    }
}
