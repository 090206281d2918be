//! `driftwatch status`: the queue, the run in progress and recent results, read from the store.

use anyhow::{bail, Result};
use clap::Args;

use super::StoreArgs;

/// `driftwatch status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the store is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// How many recent runs to show.
    #[arg(long, default_value_t = 10)]
    pub recent: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `driftwatch status`.
pub fn run(a: StatusArgs) -> Result<()> {
    let data_dir = match a.store.data_dir {
        Some(d) => d,
        None => a.store.config.load()?.0.daemon.data_dir,
    };
    let db = data_dir.join(crate::store::DB_FILE_NAME);
    if !db.is_file() {
        bail!("no store at {} (has the daemon run with this data_dir?)", db.display());
    }
    let store = crate::store::Store::open(&db)?;
    let s = store.status_summary(a.recent)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let name = |p: &str| {
        std::path::Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
    };
    println!("store: {} ({} checkpoints, last event #{})", db.display(), s.checkpoints, s.last_event_id);
    match s.running.as_slice() {
        [] => println!("running: nothing"),
        runs => {
            for r in runs {
                let pct = if r.total > 0 { 100.0 * r.done as f64 / r.total as f64 } else { 0.0 };
                println!(
                    "running: run {} · {} · {}/{} samples ({pct:.0}%)",
                    r.run.id,
                    name(&r.checkpoint_path),
                    r.done,
                    r.total
                );
            }
        }
    }
    if s.queued.is_empty() {
        println!("queue:   empty");
    } else {
        println!(
            "queue:   {}",
            s.queued
                .iter()
                .map(|r| format!("run {} ({})", r.run.id, name(&r.checkpoint_path)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("recent:");
    if s.recent.is_empty() {
        println!("  (none yet)");
    }
    for r in &s.recent {
        let mut line = format!("  run {} · {} · {}", r.run.id, name(&r.checkpoint_path), r.run.status.as_str());
        // The stored scores, typed; scores of a version this one cannot read are left out.
        let result = r.run.scores.clone().and_then(|v| serde_json::from_value::<crate::scoring::RunResult>(v).ok());
        for h in result.iter().flat_map(|r| &r.headline) {
            line.push_str(&format!(" · {}", crate::report::headline_line(h)));
        }
        if let Some(e) = &r.run.error {
            line.push_str(&format!(" · {e}"));
        }
        println!("{line}");
    }
    Ok(())
}
