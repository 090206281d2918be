//! driftwatch: the daemon crate.

pub mod config;
