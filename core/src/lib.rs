//! # hpff-core
//!
//! The `no_std`, allocation-free heart of hpff: layer math (forward and backward),
//! losses, the optimizer and learning-rate schedules, a deterministic RNG, network
//! descriptions ([`arch`]), module partitions ([`partition`]), methods ([`method`]),
//! the choice of a configuration from a memory budget ([`budget`]),
//! the training-step schedule with its static memory plan ([`plan`]) and a
//! single-threaded reference executor ([`exec`]).
//!
//! ## Conventions
//! - Tensors are `f32`, NCHW, contiguous; a batch of `n` images is `n` consecutive
//!   per-image blocks, so a sub-range of the batch is a sub-slice. Every op takes its
//!   batch size `n` explicitly and works on whatever sub-range it is handed.
//! - Sizes come from `const fn`s on shape structs and from [`plan::Plan`], so a caller
//!   can size a static array.
//! - A function whose name contains `accumulate` adds into its output (gradients of
//!   parameters, partial sums over batch chunks); every other function overwrites.
//! - Nothing here allocates or panics on valid shapes; shapes are checked with
//!   `debug_assert!` in the hot paths and by the plan before anything runs.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod budget;
pub mod error;
pub mod exec;
pub mod init;
pub mod loss;
pub mod method;
pub mod ops;
pub mod optim;
pub mod partition;
pub mod plan;
pub mod rng;
