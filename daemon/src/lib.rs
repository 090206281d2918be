//! driftwatch: a daemon that keeps watch over fine-tuned GGUF checkpoints and tells their owners,
//! with honest statistics, whether a fine-tune made the model less safe.
//!
//! The crate is both the `driftwatch` binary and a library, so tests and tools can drive every
//! part directly: [`gguf`] and [`checkpoint`] read and check files before llama.cpp sees them,
//! [`engine`] generates seeded samples in batches, [`judge`] runs sandboxed wasm judge plugins,
//! [`suite`] loads prompt suites, [`stats`] turns verdicts into scores with honest intervals and
//! [`scoring`] applies it to stored runs, [`sensitivity`] compares evaluation setups, [`report`] renders them, [`provenance`] is a run's typed provenance record, [`config`] is the typed
//! configuration, [`store`] the durable SQLite store, [`events`] the score events, [`watch`]
//! turns watched folders into settled files, [`daemon`] runs it all (and [`cli::eval`] runs one evaluation without it), [`api`] serves the HTTP API
//! and event streams (with [`webhooks`] and [`metrics`] beside it), [`setup`] knows where the
//! default model lives, [`fuzzing`] holds the fuzz targets' entry points, [`testbed`] the fine-tune testbed's
//! own steps, and [`cli`] is the command line.

/// `impl From<Cause> for Error` for error variants whose message already includes their cause
/// (`#[error("store: {0}")]`): the cause is printed once, by the variant, and is not chained
/// again as its `source()` (which would print it twice in an error chain). Variants that only
/// forward their cause use `#[error(transparent)]` and `#[from]` instead.
macro_rules! error_from {
    ($($cause:ty => $error:ident :: $variant:ident),* $(,)?) => {
        $(impl From<$cause> for $error {
            fn from(e: $cause) -> Self {
                $error::$variant(e)
            }
        })*
    };
}

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod fuzzing;
pub mod gguf;
pub mod judge;
pub mod metrics;
pub mod provenance;
pub mod report;
pub mod scoring;
pub mod sensitivity;
pub mod setup;
pub mod stats;
pub mod store;
pub mod suite;
pub mod synth;
pub mod testbed;
pub mod watch;
pub mod webhooks;
