//! `driftwatch sensitivity CHECKPOINT`: the checkpoint evaluated under the default setup and
//! every `[[variations]]` entry, and how much the verdict and the score depend on the setup
//! (the analysis is [`crate::sensitivity`]).

use std::path::PathBuf;
use std::sync::Arc;

use super::ConfigArgs;
use anyhow::Result;
use clap::Args;

/// `driftwatch sensitivity CHECKPOINT [--config F] [--json]`
#[derive(Debug, Clone, Args)]
pub struct SensitivityArgs {
    /// The checkpoint: a GGUF model or LoRA adapter (`default`: the default model).
    pub checkpoint: String,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `driftwatch sensitivity`: evaluates each setup in turn (stored runs are reused), then
/// prints the report.
pub async fn run(a: SensitivityArgs) -> Result<()> {
    let (config, _) = a.config.load()?;
    let checkpoint = crate::setup::resolve_model(&a.checkpoint).map_err(anyhow::Error::msg)?;
    let checkpoint = std::path::absolute(&checkpoint).unwrap_or(checkpoint);
    let stop = super::shutdown_on_signals(|| eprintln!("\nstopping: the runs in progress resume at the next start"));
    eprintln!(
        "evaluating {} under the default setup and {} variation(s)",
        checkpoint.display(),
        config.variations.len()
    );
    let report = crate::sensitivity::analyse(config, PathBuf::from(&checkpoint), stop, Arc::new(|_| {})).await?;
    let text = if a.json { serde_json::to_string_pretty(&report)? + "\n" } else { crate::sensitivity::text(&report) };
    super::print_stdout(&text)?;
    Ok(())
}
