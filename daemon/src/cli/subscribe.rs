//! `driftwatch subscribe`: follows a running daemon's events until SIGTERM, Ctrl-C or
//! `--count` events (the client itself, with its reconnects and resumption, is
//! [`crate::api::subscribe`]).

use clap::Args;

use super::shutdown_on_signals;
use crate::api::subscribe::{subscribe_to, SubscribeError};
use crate::store::EventId;

/// `driftwatch subscribe`.
#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// Base URL of the daemon's API.
    #[arg(long, default_value = "http://127.0.0.1:7878", env = "DRIFTWATCH_URL")]
    pub url: String,
    /// Start after this event id (replays stored events first); default: only new events.
    #[arg(long)]
    pub since: Option<EventId>,
    /// Only these event types (comma-separated; `run.*` matches a prefix).
    #[arg(long)]
    pub types: Option<String>,
    /// Print each event as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Bearer token (the daemon's `api.token`).
    #[arg(long, env = "DRIFTWATCH_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Exit after printing this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `driftwatch subscribe`: prints to standard output until stopped (or `--count` events).
pub async fn run(args: SubscribeArgs) -> Result<(), SubscribeError> {
    let shutdown = shutdown_on_signals(|| {});
    let mut out = std::io::stdout();
    subscribe_to(&args, &mut out, shutdown).await
}
