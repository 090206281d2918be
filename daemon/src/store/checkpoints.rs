//! The `checkpoints` and `checkpoint_paths` tables: checkpoints by content hash and every path each was seen under.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{now_ms, to_i64, to_u64, CheckpointId, Result, Store, StoreError};

string_enum!(
    /// What a checkpoint file holds.
    CheckpointKind, "checkpoints.kind" {
        /// A whole model.
        Model = "model",
        /// A LoRA adapter over the base model.
        Adapter = "adapter",
        /// Not (yet) determined.
        Unknown = "unknown",
    }
);

string_enum!(
    /// Where a checkpoint stands.
    CheckpointStatus, "checkpoints.status" {
        /// Seen and hashed, not yet examined.
        Discovered = "discovered",
        /// Examined and evaluable.
        Accepted = "accepted",
        /// Not evaluable (see `reject_reason`).
        Rejected = "rejected",
        /// No file holds this content any more.
        Removed = "removed",
    }
);

/// A checkpoint to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCheckpoint {
    /// Content sha256 (hex).
    pub sha256: String,
    /// Path it was found at.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Model or adapter.
    pub kind: CheckpointKind,
    /// GGUF `general.architecture`, when known.
    pub architecture: Option<String>,
    /// File mtime (Unix ms), when known.
    pub mtime_ms: Option<i64>,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Row id.
    pub id: CheckpointId,
    /// Content sha256 (hex).
    pub sha256: String,
    /// First path it was seen under.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Model or adapter.
    pub kind: CheckpointKind,
    /// GGUF architecture.
    pub architecture: Option<String>,
    /// When it was first seen (Unix ms).
    pub first_seen_ms: i64,
    /// Status.
    pub status: CheckpointStatus,
    /// Why it was rejected.
    pub reject_reason: Option<String>,
}

/// One name a checkpoint was seen under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPath {
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// The path.
    pub path: String,
    /// Size seen.
    pub size: u64,
    /// Mtime seen (Unix ms).
    pub mtime_ms: Option<i64>,
    /// First seen (Unix ms).
    pub first_seen_ms: i64,
    /// Last seen (Unix ms).
    pub last_seen_ms: i64,
    /// When the file disappeared (Unix ms), if it did.
    pub removed_at_ms: Option<i64>,
}

/// What [`Store::mark_path_removed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedPath {
    /// The checkpoint whose file vanished.
    pub checkpoint_id: CheckpointId,
    /// Whether the same content is still present under another live path (then its runs
    /// can go on).
    pub still_present_elsewhere: bool,
}

const CHECKPOINT_COLUMNS: &str = "id, sha256, path, size, kind, architecture, first_seen, status, reject_reason";

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CheckpointRecord, String, String)> {
    Ok((
        CheckpointRecord {
            id: row.get(0)?,
            sha256: row.get(1)?,
            path: row.get(2)?,
            size: to_u64(row.get(3)?),
            kind: CheckpointKind::Unknown,
            architecture: row.get(5)?,
            first_seen_ms: row.get(6)?,
            status: CheckpointStatus::Discovered,
            reject_reason: row.get(8)?,
        },
        row.get(4)?,
        row.get(7)?,
    ))
}

fn finish_checkpoint_row(raw: (CheckpointRecord, String, String)) -> Result<CheckpointRecord> {
    let (mut c, kind, status) = raw;
    c.kind = CheckpointKind::parse(&kind)?;
    c.status = CheckpointStatus::parse(&status)?;
    Ok(c)
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Store {
    /// Records a checkpoint by content (or finds the existing one with the same sha256) and
    /// links its path, in one transaction. Returns the checkpoint and whether it is new.
    pub fn upsert_checkpoint(&self, new: &NewCheckpoint) -> Result<(CheckpointRecord, bool)> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let created = tx.execute(
                "INSERT INTO checkpoints (sha256, path, size, kind, architecture, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sha256) DO NOTHING",
                params![new.sha256, path_string(&new.path), to_i64(new.size), new.kind.as_str(), new.architecture, now],
            )? == 1;
            let raw = tx.query_row(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE sha256 = ?1"),
                [&new.sha256],
                checkpoint_from_row,
            )?;
            let cp = finish_checkpoint_row(raw)?;
            link_path_tx(&tx, cp.id, &path_string(&new.path), new.size, new.mtime_ms, now)?;
            tx.commit()?;
            Ok((cp, created))
        })
    }

    /// The checkpoint with this content hash.
    pub fn checkpoint_by_sha256(&self, sha256: &str) -> Result<Option<CheckpointRecord>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE sha256 = ?1"),
                [sha256],
                checkpoint_from_row,
            )
            .optional()?
            .map(finish_checkpoint_row)
            .transpose()
        })
    }

    /// The checkpoint with this id.
    pub fn checkpoint(&self, id: CheckpointId) -> Result<Option<CheckpointRecord>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ?1"),
                [id],
                checkpoint_from_row,
            )
            .optional()?
            .map(finish_checkpoint_row)
            .transpose()
        })
    }

    /// Checkpoints, newest first.
    pub fn list_checkpoints(&self, limit: usize) -> Result<Vec<CheckpointRecord>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY id DESC LIMIT ?1"))?;
            let rows = st.query_map([to_i64(limit as u64)], checkpoint_from_row)?;
            rows.map(|r| finish_checkpoint_row(r?)).collect()
        })
    }

    /// Links a path to a checkpoint (idempotent; refreshes `last_seen` and clears
    /// `removed_at`). Returns true when the link is new.
    pub fn link_path(
        &self,
        checkpoint_id: CheckpointId,
        path: &Path,
        size: u64,
        mtime_ms: Option<i64>,
    ) -> Result<bool> {
        self.write(|c| link_path_tx(c, checkpoint_id, &path_string(path), size, mtime_ms, now_ms()))
    }

    /// All paths a checkpoint was seen under.
    pub fn checkpoint_paths(&self, checkpoint_id: CheckpointId) -> Result<Vec<CheckpointPath>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT checkpoint_id, path, size, mtime_ms, first_seen, last_seen, removed_at
                 FROM checkpoint_paths WHERE checkpoint_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([checkpoint_id], |r| {
                Ok(CheckpointPath {
                    checkpoint_id: r.get(0)?,
                    path: r.get(1)?,
                    size: to_u64(r.get(2)?),
                    mtime_ms: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    last_seen_ms: r.get(5)?,
                    removed_at_ms: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Marks every live link of `path` as removed; reports each affected checkpoint and
    /// whether its content is still present under another live path.
    pub fn mark_path_removed(&self, path: &Path) -> Result<Vec<RemovedPath>> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let ids: Vec<CheckpointId> = {
                let mut st = tx.prepare_cached(
                    "UPDATE checkpoint_paths SET removed_at = ?2
                     WHERE path = ?1 AND removed_at IS NULL RETURNING checkpoint_id",
                )?;
                let rows = st.query_map(params![path_string(path), now], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let live: i64 = tx.query_row(
                    "SELECT count(*) FROM checkpoint_paths WHERE checkpoint_id = ?1 AND removed_at IS NULL",
                    [id],
                    |r| r.get(0),
                )?;
                out.push(RemovedPath { checkpoint_id: id, still_present_elsewhere: live > 0 });
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Sets a checkpoint's status (and rejection reason).
    pub fn set_checkpoint_status(
        &self,
        id: CheckpointId,
        status: CheckpointStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE checkpoints SET status = ?2, reject_reason = ?3 WHERE id = ?1",
                params![id, status.as_str(), reason],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "checkpoint", id });
            }
            Ok(())
        })
    }

    /// Updates what examination of the file found (kind, architecture).
    pub fn set_checkpoint_kind(
        &self,
        id: CheckpointId,
        kind: CheckpointKind,
        architecture: Option<&str>,
    ) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE checkpoints SET kind = ?2, architecture = ?3 WHERE id = ?1",
                params![id, kind.as_str(), architecture],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound { what: "checkpoint", id });
            }
            Ok(())
        })
    }
}

fn link_path_tx(
    c: &Connection,
    checkpoint_id: CheckpointId,
    path: &str,
    size: u64,
    mtime_ms: Option<i64>,
    now: i64,
) -> Result<bool> {
    let existed: bool = c
        .prepare_cached("SELECT 1 FROM checkpoint_paths WHERE path = ?1 AND checkpoint_id = ?2")?
        .exists(params![path, checkpoint_id])?;
    c.prepare_cached(
        "INSERT INTO checkpoint_paths (checkpoint_id, path, size, mtime_ms, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (path, checkpoint_id) DO UPDATE SET
            size = excluded.size, mtime_ms = excluded.mtime_ms,
            last_seen = excluded.last_seen, removed_at = NULL",
    )?
    .execute(params![checkpoint_id, path, to_i64(size), mtime_ms, now])?;
    Ok(!existed)
}
