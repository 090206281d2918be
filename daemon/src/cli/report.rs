//! `driftwatch report`: a report on stored runs in Markdown, self-contained HTML or JSON (built
//! and rendered by [`crate::report::cmd::report_output`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{print_stdout, StoreArgs};
use crate::report::cmd::report_output;
use crate::report::{Format, Selection};
use crate::store::RunId;

/// `driftwatch report`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("which").args(["run", "checkpoint", "all"])))]
pub struct ReportArgs {
    /// One run.
    #[arg(long, value_name = "ID")]
    pub run: Option<RunId>,
    /// Every run of the checkpoint at this path (found by recorded path or by content hash).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Every run of every checkpoint, with the trend across checkpoints (the default).
    #[arg(long)]
    pub all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl ReportArgs {
    /// The selection the flags ask for (`--all` when none is given).
    pub fn selection(&self) -> Selection {
        match (&self.run, &self.checkpoint) {
            (Some(id), _) => Selection::Run(*id),
            (None, Some(p)) => Selection::Checkpoint(p.clone()),
            (None, None) => Selection::All,
        }
    }
}

/// `driftwatch report`: to `--out`, else to standard output.
pub fn run(a: ReportArgs) -> Result<()> {
    let (store, cfg) = a.store.open()?;
    let text = report_output(&store, &a, &cfg)?;
    match &a.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        None => print_stdout(&text)?,
    }
    Ok(())
}
