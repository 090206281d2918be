//! The library functions behind `driftwatch compare` and `driftwatch report`: the output they
//! produce from an open store (so tests can call them without a process). The commands
//! themselves are [`crate::cli::compare`] and [`crate::cli::report`]; where the store is,
//! [`StoreArgs`], is shared by every command that reads one.

use anyhow::Result;

use super::{build_report, markdown, render};
use crate::scoring::{self, RunResult};
use crate::stats;
use crate::store::Store;

pub use crate::cli::compare::CompareArgs;
pub use crate::cli::report::ReportArgs;
pub use crate::cli::{open_existing, StoreArgs};

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
