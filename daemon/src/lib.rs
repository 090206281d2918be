//! driftwatch: the daemon crate.

pub mod config;
pub mod store;
