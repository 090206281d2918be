//! `driftwatch serve`: the daemon, with the logging its configuration asks for, stopped by the
//! one shutdown future.

use anyhow::Result;
use clap::Args;

use super::{init_logging, shutdown_on_signals, ConfigArgs};

/// `driftwatch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `driftwatch serve`: runs the daemon until SIGTERM or Ctrl-C.
pub async fn run(a: ServeArgs, log_json: bool) -> Result<()> {
    let (config, source) = a.config.load()?;
    let json = log_json || config.daemon.log_format == crate::config::LogFormat::Json;
    init_logging(json, &config.daemon.log_level);
    tracing::info!("configuration: {source}");
    let shutdown = shutdown_on_signals(|| tracing::info!("stop requested: finishing safely"));
    Ok(crate::daemon::run(config, shutdown).await?)
}
