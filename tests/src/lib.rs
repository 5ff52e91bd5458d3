//! Shared helpers for the cross-crate tests in `tests/tests/`.

pub mod executors;
pub mod golden;
pub mod module_case;
