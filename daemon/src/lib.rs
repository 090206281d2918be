//! driftwatch: the daemon crate.
pub mod judge;
