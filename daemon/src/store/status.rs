//! What `driftwatch status` shows: queued, running and recent runs with their progress (reads several tables).

use serde::{Deserialize, Serialize};

use super::runs::{finish_run_row, run_from_row, RUN_COLUMNS};
use super::{to_i64, to_u64, EventId, Result, Run, Store};

/// A run with its checkpoint and progress, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOverview {
    /// The run.
    pub run: Run,
    /// The checkpoint's first path.
    pub checkpoint_path: String,
    /// The checkpoint's content hash.
    pub checkpoint_sha256: String,
    /// Samples stored so far.
    pub done: u64,
    /// Samples planned.
    pub total: u64,
}

/// What `driftwatch status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// Queued runs, oldest first.
    pub queued: Vec<RunOverview>,
    /// Running runs with progress.
    pub running: Vec<RunOverview>,
    /// Recently finished runs, newest first.
    pub recent: Vec<RunOverview>,
    /// Number of checkpoints known.
    pub checkpoints: u64,
    /// Id of the newest event (0 when none).
    pub last_event_id: EventId,
}

impl Store {
    /// Queue, running runs with progress, the `recent` newest finished runs.
    pub fn status_summary(&self, recent: usize) -> Result<StatusSummary> {
        self.read(|c| {
            let overview = |filter: &str, order: &str, limit: i64| -> Result<Vec<RunOverview>> {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS}, k.path, k.sha256,
                            (SELECT count(*) FROM samples s WHERE s.run_id = r.id)
                     FROM runs r JOIN checkpoints k ON k.id = r.checkpoint_id
                     WHERE {filter} ORDER BY {order} LIMIT ?1"
                ))?;
                let rows = st.query_map([limit], |row| {
                    Ok((
                        run_from_row(row)?,
                        row.get::<_, String>(13)?,
                        row.get::<_, String>(14)?,
                        row.get::<_, i64>(15)?,
                    ))
                })?;
                rows.map(|row| {
                    let (raw, path, sha, done) = row?;
                    let run = finish_run_row(raw)?;
                    Ok(RunOverview {
                        total: run.total_samples,
                        run,
                        checkpoint_path: path,
                        checkpoint_sha256: sha,
                        done: to_u64(done),
                    })
                })
                .collect()
            };
            let queued = overview("r.status = 'queued'", "r.id", i64::MAX)?;
            let running = overview("r.status = 'running'", "r.id", i64::MAX)?;
            let recent = overview(
                "r.status IN ('completed', 'failed', 'cancelled')",
                "r.finished_at DESC, r.id DESC",
                to_i64(recent as u64),
            )?;
            let checkpoints: i64 = c.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))?;
            let last_event_id: i64 = c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
            Ok(StatusSummary { queued, running, recent, checkpoints: to_u64(checkpoints), last_event_id })
        })
    }
}
