//! The commands: `hpff eval`, `hpff plan` and `hpff bench` a file each, `hpff train` a
//! folder ([`train`]). Each takes plain values (completed [`Settings`], paths, flags), so
//! nothing here depends on the command-line parser that calls it.

pub mod bench;
pub mod eval;
pub mod ops;
pub mod plan;
pub mod train;

use crate::config::Settings;
use crate::device::{self, DynExecutor, ExecOptions};
use crate::error::Result;
use hpff_core::plan::Plan;

/// The executor `cfg` asks for, laid out for `plan`, in this process's job (which
/// averages gradients over the job's processes under mpirun, or, with `link`, runs one
/// stage of a pipeline).
pub(crate) fn open_executor(cfg: &Settings, plan: &Plan, link: Option<crate::dist::StageLink>) -> Result<DynExecutor> {
    let opts = ExecOptions {
        threads: cfg.threads,
        tf32: cfg.tf32,
        comm: if link.is_some() { None } else { Some(crate::dist::world()) },
        sync_bn: cfg.sync_bn,
        link,
    };
    device::open(cfg.device, plan, opts)
}
