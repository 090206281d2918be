//! The `driftwatch compare` and `driftwatch report` commands: argument definitions, opening
//! the store and the statistics settings (from `--data-dir` or `--config`), and the library
//! functions that produce their output (so tests can call them without a process).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{build_report, markdown, render, Format, Selection};
use crate::config::Config;
use crate::scoring::{self, RunResult};
use crate::stats;
use crate::store::{RunId, Store, DB_FILE_NAME};

/// Where the store is: `--data-dir`, or the configuration's `daemon.data_dir` (found as every
/// command finds it: `--config`, `./driftwatch.toml`, the user's config file, the built-in
/// defaults, i.e. `./data` or `DRIFTWATCH_DATA_DIR`).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The data folder holding the store (statistics settings: defaults).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// Its `daemon.data_dir` and `[stats]` are used.
    #[command(flatten)]
    pub config: crate::cli::ConfigArgs,
}

impl StoreArgs {
    /// Opens the existing store (never creates one) and the statistics settings.
    pub fn open(&self) -> Result<(Store, stats::StatsParams)> {
        let (dir, cfg) = match (&self.data_dir, &self.config.config) {
            (Some(d), _) => (d.clone(), crate::config::StatsConfig::default()),
            (None, Some(f)) => {
                let c = Config::load(f).with_context(|| format!("cannot load {}", f.display()))?;
                (c.daemon.data_dir, c.stats)
            }
            (None, None) => match self.config.load() {
                Ok((c, _)) => (c.daemon.data_dir, c.stats),
                // The defaults can fail for reasons a report does not care about (e.g. no
                // $HOME for the default model); the data folder is all it needs.
                Err(_) => (
                    std::env::var_os("DRIFTWATCH_DATA_DIR").map_or_else(|| PathBuf::from("./data"), PathBuf::from),
                    crate::config::StatsConfig::default(),
                ),
            },
        };
        Ok((open_existing(&dir)?, scoring::stats_config(&cfg)))
    }
}

/// Opens the store in `dir`, failing clearly when there is none (a report must not create one).
pub fn open_existing(dir: &Path) -> Result<Store> {
    let file = dir.join(DB_FILE_NAME);
    if !file.is_file() {
        bail!("no driftwatch store at {} (give --data-dir or --config)", file.display());
    }
    Store::open(&file).with_context(|| format!("cannot open the store at {}", file.display()))
}

/// `driftwatch compare RUN_A RUN_B`: the paired comparison of run A with baseline run B.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The run.
    pub run_a: RunId,
    /// The baseline run.
    pub run_b: RunId,
    /// Print the result as JSON (the `RunResult` shape stored as a run's scores).
    #[arg(long)]
    pub json: bool,
    /// Compare even when the runs are not comparable (the output says it was forced).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

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

/// What `compare` produced: the text to print, and whether it was refused.
#[derive(Debug, Clone)]
pub struct CompareOutput {
    /// Text (table or JSON).
    pub text: String,
    /// The scoring result.
    pub result: RunResult,
    /// True when the runs are not comparable and `--force` was not given.
    pub refused: bool,
}

/// Runs the comparison and renders it.
pub fn compare_output(store: &Store, a: &CompareArgs, cfg: &stats::StatsParams) -> Result<CompareOutput> {
    let result = scoring::score_run_from_store(store, a.run_a, Some(a.run_b), a.force, cfg)?;
    let text = if a.json { serde_json::to_string_pretty(&result)? } else { markdown::compare_text(&result) };
    Ok(CompareOutput { refused: result.comparison_refused.is_some(), text, result })
}

/// Builds and renders the report the arguments ask for.
pub fn report_output(store: &Store, a: &ReportArgs, cfg: &stats::StatsParams) -> Result<String> {
    let sel = a.selection();
    let report = build_report(store, &sel, cfg)?;
    Ok(render(&report, &sel, a.format)?)
}

/// Prints to standard output; a closed pipe (`| head`) ends the output quietly.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r.context("cannot write to standard output")?),
    }
}

/// `driftwatch compare`.
pub fn compare(a: CompareArgs) -> Result<()> {
    let (store, cfg) = a.store.open()?;
    let out = compare_output(&store, &a, &cfg)?;
    print_stdout(&out.text)?;
    if out.refused {
        bail!(
            "runs {} and {} are not comparable (differences listed above); use --force to compare anyway",
            a.run_a,
            a.run_b
        );
    }
    Ok(())
}

/// `driftwatch report`.
pub fn report(a: ReportArgs) -> Result<()> {
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
