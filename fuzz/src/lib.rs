//! The harnesses behind the fuzz targets (see `harness.rs`).

mod harness;
pub use harness::*;
