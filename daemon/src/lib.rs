//! driftwatch: the daemon crate.
