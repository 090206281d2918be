//! driftwatch: the daemon crate.
pub mod stats;
