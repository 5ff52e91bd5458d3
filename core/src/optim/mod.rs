//! The optimizer (PyTorch `torch.optim.SGD`, bit-compatible) and the reference's
//! learning-rate schedules.

mod schedule;
mod sgd;

pub use schedule::LrSchedule;
pub use sgd::{sgd_step, Sgd};
