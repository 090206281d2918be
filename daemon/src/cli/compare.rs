//! `driftwatch compare RUN_A RUN_B`: the paired comparison of a run with a baseline run (the
//! scoring and rendering are [`crate::report::cmd::compare_output`]).

use anyhow::{bail, Result};
use clap::Args;

use super::{print_stdout, StoreArgs};
use crate::report::cmd::compare_output;
use crate::store::RunId;

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

/// `driftwatch compare`: fails when the runs are not comparable and `--force` is not given.
pub fn run(a: CompareArgs) -> Result<()> {
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
