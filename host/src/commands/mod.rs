//! The `hpff eval`, `hpff plan` and `hpff bench` commands, a file each; `hpff train` is
//! [`crate::train`]. Each takes plain values (a completed [`Config`], paths, flags), so
//! nothing here depends on the command-line parser that calls it.

pub mod bench;
pub mod budget;
pub mod eval;
pub mod ops;
pub mod plan;

use crate::config::Config;
use crate::device::{self, DynExecutor, ExecOptions};
use crate::error::Result;
use hpff_core::plan::Plan;

/// The executor `cfg` (completed) asks for, laid out for `plan`.
pub(crate) fn open_executor(cfg: &Config, plan: &Plan) -> Result<DynExecutor> {
    let opts = ExecOptions { threads: cfg.threads.unwrap_or(0), tf32: cfg.tf32.unwrap_or(false) };
    device::open(cfg.device.unwrap_or_default(), plan, opts)
}
