//! # hpff (host)
//!
//! Datasets and augmentation, the local-training loop, checkpoints, metrics and the
//! `hpff` command line, on top of the `no_std` [`hpff_core`].

pub mod cpu;
pub mod data;
