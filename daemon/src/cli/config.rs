//! `driftwatch config show`: the effective configuration, every key with where its value came
//! from.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::ConfigArgs;
use crate::setup;

/// `driftwatch config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, every key with where its value came from (a file's
    /// line, an environment variable, the built-in defaults, or a key's default).
    Show(ConfigShowArgs),
}

/// `driftwatch config show`.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON: the source, and every setting with its value and origin.
    #[arg(long)]
    pub json: bool,
}

/// `driftwatch config …`.
pub fn run(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Show(a) => show(a),
    }
}

/// `driftwatch config show`: the effective configuration, each key with its origin.
fn show(a: ConfigShowArgs) -> Result<()> {
    let (config, source) = a.config.load()?;
    let (text, name) = source.document().with_context(|| format!("cannot read {source}"))?;
    let settings = config.explain(&text, &name, &setup::process_env);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"source": source.to_string(), "settings": settings}))?
        )?;
        return Ok(());
    }
    writeln!(out, "# configuration: {source}")?;
    let width = settings.iter().map(|s| s.key.len() + s.value.len() + 3).max().unwrap_or(0).min(90);
    for s in &settings {
        let line = format!("{} = {}", s.key, s.value);
        writeln!(out, "{line:<width$}  # {}", s.origin)?;
    }
    Ok(())
}
