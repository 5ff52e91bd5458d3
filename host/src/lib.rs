//! # hpff (host)
//!
//! Datasets and augmentation, the local-training loop, checkpoints, metrics and the
//! `hpff` command line, on top of the `no_std` [`hpff_core`].

pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod files;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod resources;
