//! driftwatch: a daemon that keeps watch over fine-tuned GGUF checkpoints and tells their owners,
//! with honest statistics, whether a fine-tune made the model less safe.
//!
//! The crate is both the `driftwatch` binary and a library, so tests and tools can drive every
//! part directly: [`gguf`] and [`checkpoint`] read and check files before llama.cpp sees them,
//! [`engine`] generates seeded samples in batches, [`config`] is the typed configuration,
//! [`store`] the durable SQLite store, [`watch`] turns watched folders into settled files,
//! [`setup`] knows where the default model lives, [`api`] serves HTTP (REST, SSE, WebSocket,
//! [`metrics`]), [`webhooks`] POSTs events out, and [`cli`] is the command line.

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod engine;
pub mod events;
pub mod gguf;
pub mod metrics;
pub mod setup;
pub mod store;
pub mod watch;
pub mod webhooks;
