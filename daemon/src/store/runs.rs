//! The `runs` table: queueing runs, their settings, and every state change ([`Store::transition_run`]).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{now_ms, to_i64, to_u32, to_u64, CheckpointId, Event, Result, RunId, Store, StoreError};

string_enum!(
    /// Life cycle of a run: queued → running → completed | failed | cancelled (running →
    /// queued again when a crash interrupted it).
    RunStatus, "runs.status" {
        /// Waiting for the engine.
        Queued = "queued",
        /// Generating and judging.
        Running = "running",
        /// Finished with scores.
        Completed = "completed",
        /// Finished with an error.
        Failed = "failed",
        /// Stopped on request.
        Cancelled = "cancelled",
    }
);

impl RunStatus {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }
}

/// A run to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The checkpoint evaluated.
    pub checkpoint_id: CheckpointId,
    /// The run it is compared with.
    pub baseline_run_id: Option<RunId>,
    /// `SettingsHashes::combined` of the configuration (plus content hashes).
    pub settings_hash: String,
    /// Full provenance (settings, hashes, versions).
    pub provenance: Value,
    /// Planned number of samples.
    pub total_samples: u64,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Row id.
    pub id: RunId,
    /// The checkpoint evaluated.
    pub checkpoint_id: CheckpointId,
    /// Its baseline run.
    pub baseline_run_id: Option<RunId>,
    /// Status.
    pub status: RunStatus,
    /// Settings hash (dedup key together with the checkpoint's content).
    pub settings_hash: String,
    /// Provenance JSON.
    pub provenance: Value,
    /// Scores JSON (completed runs).
    pub scores: Option<Value>,
    /// Error (failed or cancelled runs).
    pub error: Option<String>,
    /// Planned samples.
    pub total_samples: u64,
    /// How many times it was started (more than 1 after resumes).
    pub attempts: u32,
    /// Created (Unix ms).
    pub created_at_ms: i64,
    /// First started (Unix ms).
    pub started_at_ms: Option<i64>,
    /// Finished (Unix ms).
    pub finished_at_ms: Option<i64>,
}

/// A change of a run's state ([`Store::transition_run`]).
#[derive(Debug, Clone)]
pub enum RunTransition {
    /// queued → running (counts an attempt).
    Start,
    /// running → completed, with the scores.
    Complete {
        /// The run's scores.
        scores: Value,
    },
    /// queued | running → failed, with the error.
    Fail {
        /// Why.
        error: String,
    },
    /// queued | running → cancelled, with the reason.
    Cancel {
        /// Why.
        reason: String,
    },
}

pub(super) const RUN_COLUMNS: &str = "r.id, r.checkpoint_id, r.baseline_run_id, r.status, r.settings_hash, \
     r.provenance, r.scores, r.error, r.total_samples, r.attempts, r.created_at, r.started_at, \
     r.finished_at";

pub(super) fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Run, String, String, Option<String>)> {
    // Parse-able columns are returned raw and converted by `finish_run_row` so that a bad
    // value is a StoreError, not a panic.
    let status: String = row.get(3)?;
    let provenance: String = row.get(5)?;
    let scores: Option<String> = row.get(6)?;
    Ok((
        Run {
            id: row.get(0)?,
            checkpoint_id: row.get(1)?,
            baseline_run_id: row.get(2)?,
            status: RunStatus::Queued,
            settings_hash: row.get(4)?,
            provenance: Value::Null,
            scores: None,
            error: row.get(7)?,
            total_samples: to_u64(row.get(8)?),
            attempts: to_u32(row.get(9)?),
            created_at_ms: row.get(10)?,
            started_at_ms: row.get(11)?,
            finished_at_ms: row.get(12)?,
        },
        status,
        provenance,
        scores,
    ))
}

pub(super) fn finish_run_row(raw: (Run, String, String, Option<String>)) -> Result<Run> {
    let (mut run, status, provenance, scores) = raw;
    run.status = RunStatus::parse(&status)?;
    run.provenance = serde_json::from_str(&provenance)?;
    run.scores = scores.as_deref().map(serde_json::from_str).transpose()?;
    Ok(run)
}

/// Inserts a queued run; returns its id.
fn insert_run(c: &rusqlite::Connection, new: &NewRun, provenance: &str, now: i64) -> Result<RunId> {
    c.execute(
        "INSERT INTO runs (checkpoint_id, baseline_run_id, status, settings_hash,
                           provenance, total_samples, created_at)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6)",
        params![new.checkpoint_id, new.baseline_run_id, new.settings_hash, provenance, to_i64(new.total_samples), now],
    )?;
    Ok(c.last_insert_rowid())
}

impl Store {
    /// Queues a run without an event (the daemon queues with [`Store::queue_run`]).
    pub fn create_run(&self, new: &NewRun) -> Result<Run> {
        let provenance = serde_json::to_string(&new.provenance)?;
        let id = self.write(|c| insert_run(c, new, &provenance, now_ms()))?;
        self.run(id)?.ok_or(StoreError::NotFound { what: "run", id })
    }

    /// Queues a run and stores its event in one transaction, so that a queued run and its
    /// `run.queued` event are never one without the other: `event` makes the event (type and
    /// payload) from the new run's id and its position in the queue (1 = next).
    pub fn queue_run(&self, new: &NewRun, event: impl FnOnce(RunId, u64) -> (String, Value)) -> Result<(Run, Event)> {
        let provenance = serde_json::to_string(&new.provenance)?;
        let event = self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let id = insert_run(&tx, new, &provenance, now)?;
            let position: i64 = tx.query_row("SELECT COUNT(*) FROM runs WHERE status = 'queued'", [], |r| r.get(0))?;
            let (event_type, payload) = event(id, position.max(0) as u64);
            tx.prepare_cached("INSERT INTO events (type, time, payload) VALUES (?1, ?2, ?3)")?.execute(params![
                event_type,
                now,
                serde_json::to_string(&payload)?
            ])?;
            let event = Event { id: tx.last_insert_rowid(), event_type, time_ms: now, payload };
            tx.commit()?;
            Ok((id, event))
        })?;
        let (id, event) = event;
        Ok((self.run(id)?.ok_or(StoreError::NotFound { what: "run", id })?, event))
    }

    /// The run with this id.
    pub fn run(&self, id: RunId) -> Result<Option<Run>> {
        self.read(|c| {
            c.query_row(&format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = ?1"), [id], run_from_row)
                .optional()?
                .map(finish_run_row)
                .transpose()
        })
    }

    /// Runs of a checkpoint, newest first.
    pub fn runs_for_checkpoint(&self, checkpoint_id: CheckpointId) -> Result<Vec<Run>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs r WHERE r.checkpoint_id = ?1 ORDER BY r.id DESC"
            ))?;
            let rows = st.query_map([checkpoint_id], run_from_row)?;
            rows.map(|r| finish_run_row(r?)).collect()
        })
    }

    /// A run of the content `checkpoint_sha256` under `settings_hash` that makes a new one
    /// unnecessary: the newest completed one, else the newest queued or running one. Failed
    /// and cancelled runs do not count (the content may be evaluated again).
    pub fn find_run_by_settings(&self, checkpoint_sha256: &str, settings_hash: &str) -> Result<Option<Run>> {
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r JOIN checkpoints k ON k.id = r.checkpoint_id
                     WHERE k.sha256 = ?1 AND r.settings_hash = ?2
                       AND r.status IN ('completed', 'running', 'queued')
                     ORDER BY (r.status = 'completed') DESC, r.id DESC LIMIT 1"
                ),
                params![checkpoint_sha256, settings_hash],
                run_from_row,
            )
            .optional()?
            .map(finish_run_row)
            .transpose()
        })
    }

    /// The next queued run to execute, among `among` when given: the oldest whose baseline run
    /// is not still queued or running, else the oldest (a baseline outside `among` is not
    /// waited for).
    pub fn next_queued_run(&self, among: Option<&[RunId]>) -> Result<Option<Run>> {
        let among = among.map(|ids| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()));
        self.read(|c| {
            c.query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r WHERE r.status = 'queued'
                       AND (?1 IS NULL OR r.id IN (SELECT value FROM json_each(?1)))
                     ORDER BY EXISTS (SELECT 1 FROM runs b WHERE b.id = r.baseline_run_id
                                        AND b.status IN ('queued', 'running')), r.id
                     LIMIT 1"
                ),
                [among],
                run_from_row,
            )
            .optional()?
            .map(finish_run_row)
            .transpose()
        })
    }

    /// Changes a run's state, and appends its event in the same transaction when one is given:
    /// the event exists exactly when the state change does, so a crash can never leave a
    /// completed run without its `run.completed` event, nor an event for a change that did not
    /// happen. A change the run's current state does not allow is
    /// [`StoreError::InvalidTransition`] and writes nothing. Returns the event as
    /// [`Store::events_since`] will return it.
    pub fn transition_run(
        &self,
        id: RunId,
        change: RunTransition,
        event: Option<(&str, &Value)>,
    ) -> Result<Option<Event>> {
        let (to, allowed_from, sql, extra): (RunStatus, &[RunStatus], &str, Option<String>) = match change {
            RunTransition::Start => (
                RunStatus::Running,
                &[RunStatus::Queued],
                "UPDATE runs SET status = ?2, started_at = COALESCE(started_at, ?3),
                                 attempts = attempts + 1, error = ?4 WHERE id = ?1",
                None,
            ),
            RunTransition::Complete { scores } => (
                RunStatus::Completed,
                &[RunStatus::Running],
                "UPDATE runs SET status = ?2, finished_at = ?3, scores = ?4, error = NULL WHERE id = ?1",
                Some(serde_json::to_string(&scores)?),
            ),
            RunTransition::Fail { error } => (
                RunStatus::Failed,
                &[RunStatus::Queued, RunStatus::Running],
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                Some(error),
            ),
            RunTransition::Cancel { reason } => (
                RunStatus::Cancelled,
                &[RunStatus::Queued, RunStatus::Running],
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                Some(reason),
            ),
        };
        let event = event.map(|(t, p)| serde_json::to_string(p).map(|text| (t, text, p))).transpose()?;
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let from: Option<String> =
                tx.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            let from = RunStatus::parse(&from.ok_or(StoreError::NotFound { what: "run", id })?)?;
            if !allowed_from.contains(&from) {
                return Err(StoreError::InvalidTransition { run: id, from, to });
            }
            let now = now_ms();
            tx.execute(sql, params![id, to.as_str(), now, extra])?;
            let stored = match &event {
                Some((event_type, text, payload)) => {
                    tx.prepare_cached("INSERT INTO events (type, time, payload) VALUES (?1, ?2, ?3)")?
                        .execute(params![event_type, now, text])?;
                    Some(Event {
                        id: tx.last_insert_rowid(),
                        event_type: (*event_type).to_owned(),
                        time_ms: now,
                        payload: (*payload).clone(),
                    })
                }
                None => None,
            };
            tx.commit()?;
            Ok(stored)
        })
    }

    /// queued → running (counts an attempt; the first start time is kept):
    /// [`Store::transition_run`] with [`RunTransition::Start`] and no event.
    pub fn start_run(&self, id: RunId) -> Result<()> {
        self.transition_run(id, RunTransition::Start, None).map(|_| ())
    }

    /// Updates the planned number of samples (adaptive sampling grows it).
    pub fn set_run_total(&self, id: RunId, total_samples: u64) -> Result<()> {
        self.write(|c| {
            let n =
                c.execute("UPDATE runs SET total_samples = ?2 WHERE id = ?1", params![id, to_i64(total_samples)])?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "run", id });
            }
            Ok(())
        })
    }

    /// Replaces a run's settings hash and provenance (its judges were reloaded with another
    /// version before it started or resumed).
    pub fn update_run_settings(&self, id: RunId, settings_hash: &str, provenance: &Value) -> Result<()> {
        let provenance = serde_json::to_string(provenance)?;
        self.write(|c| {
            let n = c.execute(
                "UPDATE runs SET settings_hash = ?2, provenance = ?3 WHERE id = ?1",
                params![id, settings_hash, provenance],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "run", id });
            }
            Ok(())
        })
    }

    /// Sets the baseline a queued (or running) run is compared with when it completes.
    pub fn set_run_baseline(&self, id: RunId, baseline: Option<RunId>) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE runs SET baseline_run_id = ?2 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, baseline],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "queued run", id });
            }
            Ok(())
        })
    }

    /// running → completed, with its scores: [`Store::transition_run`] with
    /// [`RunTransition::Complete`] and no event.
    pub fn complete_run(&self, id: RunId, scores: &Value) -> Result<()> {
        self.transition_run(id, RunTransition::Complete { scores: scores.clone() }, None).map(|_| ())
    }

    /// Puts one running run back in the queue (its samples stay): true when it was running.
    pub fn requeue_run(&self, id: RunId) -> Result<bool> {
        self.write(|c| {
            Ok(c.execute("UPDATE runs SET status = 'queued' WHERE id = ?1 AND status = 'running'", [id])? == 1)
        })
    }

    /// At start-up: runs left `running` by a crash go back to `queued` (their stored
    /// samples are kept and are skipped when they resume). Returns their ids.
    pub fn requeue_interrupted_runs(&self) -> Result<Vec<RunId>> {
        self.write(|c| {
            let mut st = c.prepare("UPDATE runs SET status = 'queued' WHERE status = 'running' RETURNING id")?;
            let mut ids = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<RunId>>>()?;
            ids.sort_unstable();
            Ok(ids)
        })
    }
}
