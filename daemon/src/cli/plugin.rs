//! `driftwatch plugin new|check`: scaffolds a judge plugin crate, or validates a component (the
//! work itself is [`crate::judge::cli::plugin_new`] and [`crate::judge::cli::plugin_check`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::judge::cli::{plugin_check, plugin_new, CliError};

/// `driftwatch plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a new judge plugin crate that builds to a component as is.
    New(PluginNewArgs),
    /// Validate a plugin component (contract version, exports, sandbox) and print its info.
    Check(PluginCheckArgs),
}

/// `driftwatch plugin new NAME [--dir D] [--sdk-path P]`
#[derive(Debug, Clone, Args)]
pub struct PluginNewArgs {
    /// Crate name: lower-case letters, digits and '-', starting with a letter.
    pub name: String,
    /// Folder in which the crate folder `NAME` is created.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Path of the driftwatch-sdk crate to depend on (default: the SDK this driftwatch was
    /// built from when it still exists, else the published version).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
}

/// `driftwatch plugin check FILE.wasm [--config SETTINGS.toml]`
#[derive(Debug, Clone, Args)]
pub struct PluginCheckArgs {
    /// The plugin component.
    pub file: PathBuf,
    /// Plugin settings (timeout_ms, memory_mb, ..., and a `[config]` table for the plugin).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `driftwatch plugin …`, writing human-readable output to standard output.
pub fn run(cmd: PluginCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match &cmd {
        PluginCommand::New(args) => {
            let dir = plugin_new(args)?;
            writeln!(
                out,
                "created {}\nbuild it with:  cd {} && cargo build --target wasm32-wasip2 --release\nthen check it:  driftwatch plugin check target/wasm32-wasip2/release/{}.wasm",
                dir.display(),
                dir.display(),
                args.name.replace('-', "_")
            )
            .map_err(CliError::Output)?;
        }
        PluginCommand::Check(args) => {
            plugin_check(args, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}
