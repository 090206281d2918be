//! Fixture builders for driftwatch integration tests.
