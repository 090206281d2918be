//! driftwatch: the daemon crate.

pub mod config;
pub mod store;
pub mod watch;
