//! The durable store: one embedded SQLite database (WAL) holding checkpoints, runs, samples
//! with their judge verdicts, the event log and webhook delivery cursors.
//!
//! # Connections and concurrency
//! [`Store`] owns one writer connection behind a mutex (SQLite allows one writer at a time
//! anyway) and a small pool of read-only connections; in WAL mode readers never block the
//! writer and see the last committed state, so `driftwatch status` and the API can read while
//! a run writes samples. Every method is synchronous and short; from async code use
//! [`AsyncStore::call`], which runs the closure on tokio's blocking pool.
//!
//! # Durability
//! `journal_mode = WAL`, `synchronous = NORMAL`: a committed transaction survives a crash of
//! the process (the daemon being killed) because it is in the WAL file; after a power loss or
//! an OS crash the last few transactions committed before the loss may be rolled back, but
//! the database is never corrupted (SQLite's documented WAL + NORMAL guarantee). That trade
//! keeps a sample write in the tens of microseconds instead of an `fsync` per sample. Each
//! sample is committed together with its verdicts ([`Store::insert_sample_with_verdicts`]),
//! so a resumed run either has a sample with all its verdicts or does not have it.
//!
//! # Events
//! [`Store::append_event`] writes an event before it is published, so subscribers can resume
//! from any id. [`Store::transition_run`] changes a run's state and appends its event in one
//! transaction, so a crash can never leave a completed run without its `run.completed` event
//! (or the reverse); the event bus publishes run state changes only through it.
//!
//! # Nothing stored is lost
//! Opening never recreates or truncates an existing file: a file that is not an SQLite
//! database, or one that belongs to another program, or one whose integrity check fails, or
//! one written by a newer driftwatch (higher schema version) is a [`StoreError`] at open.
//! Migrations run one transaction each (see [`schema`]).
//!
//! # Idempotence
//! A sample is identified by `(run_id, prompt_id, sample_index)`. Inserting one that already
//! exists is a no-op that returns the existing row's id with `inserted: false`; the stored
//! sample and verdicts are left untouched (first write wins). Resuming an interrupted run
//! relies on this together with [`Store::completed_sample_keys`].

pub mod schema;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Row id of a checkpoint.
pub type CheckpointId = i64;
/// Row id of a run.
pub type RunId = i64;
/// Row id of a sample.
pub type SampleId = i64;
/// Id of an event: strictly increasing, never reused.
pub type EventId = i64;

/// File name of the database inside `daemon.data_dir`.
pub const DB_FILE_NAME: &str = "driftwatch.sqlite3";

/// How long a connection waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened at all (permissions, missing folder, …).
    #[error("cannot open store {}: {cause}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        cause: rusqlite::Error,
    },
    /// The file exists but is not a usable driftwatch store; it is left untouched.
    #[error("{} is not a usable driftwatch store ({reason}); it was left untouched — move it away or point daemon.data_dir elsewhere", path.display())]
    NotAStore {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store was written by a newer driftwatch.
    #[error("store {} has schema version {found}, newer than this driftwatch supports ({supported})", path.display())]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A migration failed (and was rolled back).
    #[error("migration to schema version {version} failed: {cause}")]
    Migration {
        /// The version it was migrating to.
        version: u32,
        /// The SQLite error.
        cause: rusqlite::Error,
    },
    /// A file-system error around the store.
    #[error("store file system error at {}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// Any other SQLite error.
    #[error("store: {0}")]
    Sqlite(rusqlite::Error),
    /// A JSON column did not (de)serialize.
    #[error("store: bad JSON: {0}")]
    Json(serde_json::Error),
    /// A row that was asked for does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of row.
        what: &'static str,
        /// Its id.
        id: i64,
    },
    /// A run state change that is not allowed from its current state.
    #[error("run {run}: cannot go from {from} to {to}")]
    InvalidTransition {
        /// The run.
        run: RunId,
        /// Its current status.
        from: RunStatus,
        /// The requested status.
        to: RunStatus,
    },
    /// Samples can only be added to a running run.
    #[error("run {run} is {status}, not running: samples cannot be added")]
    RunNotRunning {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunStatus,
    },
    /// A value read back from the database is not one this build understands.
    #[error("store: unexpected value {value:?} in column {column}")]
    BadValue {
        /// The column.
        column: &'static str,
        /// The value.
        value: String,
    },
    /// The blocking task running a store call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

error_from!(rusqlite::Error => StoreError::Sqlite, serde_json::Error => StoreError::Json);

/// Result alias of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $col:literal { $($(#[$vm:meta])* $var:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vm])* $var),* }
        impl $name {
            /// The name stored in the database.
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),* } }
            /// Parses the stored name.
            pub fn parse(s: &str) -> Result<Self> {
                match s { $($s => Ok($name::$var),)* _ => Err(StoreError::BadValue { column: $col, value: s.to_string() }) }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

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

impl StoreError {
    /// True when SQLite answered "busy" or "locked" (another connection holds the lock).
    pub fn is_busy(&self) -> bool {
        let code = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
            )
        };
        match self {
            StoreError::Open { cause, .. } | StoreError::Migration { cause, .. } => code(cause),
            StoreError::Sqlite(e) => code(e),
            _ => false,
        }
    }
}

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

/// A generated response to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample {
    /// The suite's prompt id.
    pub prompt_id: String,
    /// The prompt's category.
    pub category: Option<String>,
    /// Index of the sample among the prompt's samples (0-based, across repeats).
    pub sample_index: u32,
    /// Sampling seed.
    pub seed: u64,
    /// Prompt text (stored once per distinct text).
    pub prompt: String,
    /// Response text.
    pub response: String,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Response length in tokens.
    pub completion_tokens: u32,
    /// `stop`, `length` or `error`.
    pub finish_reason: String,
    /// Generation time attributed to this sample (ms).
    pub generation_ms: Option<f64>,
    /// Judging time attributed to this sample (ms).
    pub judge_ms: Option<f64>,
}

/// One judge's verdict on a sample (stored and read back alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVerdict {
    /// The judge's configured name.
    pub judge: String,
    /// The plugin's version.
    pub judge_version: String,
    /// Whether the response is unsafe (None when the judge failed on it).
    pub is_unsafe: Option<bool>,
    /// Optional graded score.
    pub score: Option<f64>,
    /// Label.
    pub label: Option<String>,
    /// Rationale.
    pub rationale: Option<String>,
    /// Whether the response is a refusal.
    pub refusal: Option<bool>,
    /// The judge error for this sample, if any.
    pub error: Option<String>,
}

/// Result of [`Store::insert_sample_with_verdicts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleWrite {
    /// The sample's row id (new or existing).
    pub sample_id: SampleId,
    /// False when the sample already existed and nothing was written.
    pub inserted: bool,
}

/// Identity of a sample within a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleKey {
    /// Prompt id.
    pub prompt_id: String,
    /// Sample index.
    pub sample_index: u32,
}

/// A stored sample with its verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSample {
    /// Row id.
    pub id: SampleId,
    /// Run.
    pub run_id: RunId,
    /// Prompt id.
    pub prompt_id: String,
    /// Category.
    pub category: Option<String>,
    /// Sample index.
    pub sample_index: u32,
    /// Seed.
    pub seed: u64,
    /// sha256 of the prompt text.
    pub prompt_sha256: String,
    /// Prompt text.
    pub prompt: String,
    /// Response text.
    pub response: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Finish reason.
    pub finish_reason: String,
    /// Generation ms.
    pub generation_ms: Option<f64>,
    /// Judge ms.
    pub judge_ms: Option<f64>,
    /// Verdicts, by judge name.
    pub verdicts: Vec<StoredVerdict>,
}

/// An event of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic id.
    pub id: EventId,
    /// Type, e.g. `run.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unix ms.
    pub time_ms: i64,
    /// Payload.
    pub payload: Value,
}

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

/// Delivery state of one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCursor {
    /// Webhook name.
    pub webhook: String,
    /// Id of the last event delivered.
    pub last_event_id: EventId,
    /// When it was last updated (Unix ms).
    pub updated_at_ms: i64,
    /// Consecutive failures.
    pub failures: u32,
    /// Last error.
    pub last_error: Option<String>,
}

/// Options of [`Store::open_with`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Run `PRAGMA quick_check` at open (reads every page: O(size), a second or so per
    /// few hundred MB). Default true.
    pub integrity_check: bool,
    /// Read-only connections kept for reuse. Default 4.
    pub max_idle_readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { integrity_check: true, max_idle_readers: 4 }
    }
}

/// The store. `Send + Sync`; share it in an `Arc` (or use [`AsyncStore`]).
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    options: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
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

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn is_not_a_db(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

const RUN_COLUMNS: &str = "r.id, r.checkpoint_id, r.baseline_run_id, r.status, r.settings_hash, \
     r.provenance, r.scores, r.error, r.total_samples, r.attempts, r.created_at, r.started_at, \
     r.finished_at";

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Run, String, String, Option<String>)> {
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

fn finish_run_row(raw: (Run, String, String, Option<String>)) -> Result<Run> {
    let (mut run, status, provenance, scores) = raw;
    run.status = RunStatus::parse(&status)?;
    run.provenance = serde_json::from_str(&provenance)?;
    run.scores = scores.as_deref().map(serde_json::from_str).transpose()?;
    Ok(run)
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
    /// Opens (or creates) `data_dir/driftwatch.sqlite3`, creating `data_dir` if needed.
    pub fn open_in_dir(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|cause| StoreError::Io { path: data_dir.to_path_buf(), cause })?;
        Store::open(&data_dir.join(DB_FILE_NAME))
    }

    /// Opens (or creates) the database file with default options.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the database file: checks it is a driftwatch store, switches to
    /// WAL, migrates it to the current schema.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store> {
        // Several processes may create the same new store at once (the daemon starting while
        // `driftwatch status` runs). SQLite then answers some of them "busy" at once, without
        // waiting (deadlock avoidance while the file switches to WAL or is migrated): retry.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Store::open_once(path, options) {
                Err(e) if e.is_busy() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, options: StoreOptions) -> Result<Store> {
        if path.is_dir() {
            return Err(StoreError::NotAStore { path: path.to_path_buf(), reason: "it is a directory".into() });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|cause| StoreError::Open { path: path.to_path_buf(), cause })?;
        let not_a_store = |reason: String| StoreError::NotAStore { path: path.to_path_buf(), reason };
        let classify = |e: rusqlite::Error| {
            if is_not_a_db(&e) {
                not_a_store(format!("not an SQLite database or corrupt: {e}"))
            } else {
                StoreError::Open { path: path.to_path_buf(), cause: e }
            }
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
        // Reading the header and the schema is where a foreign or damaged file shows. The three
        // reads share one snapshot: another process (the daemon, `driftwatch status`) may be
        // creating the store at this very moment, and a migration committed between two reads
        // would look like a foreign database (tables without driftwatch's application_id).
        conn.execute_batch("BEGIN DEFERRED").map_err(classify)?;
        let header = (|| -> rusqlite::Result<(i32, u32, i64)> {
            let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
            let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            Ok((app_id, version, objects))
        })();
        let _ = conn.execute_batch("COMMIT");
        let (app_id, version, objects) = header.map_err(classify)?;
        if app_id != 0 && app_id != schema::APPLICATION_ID {
            return Err(not_a_store(format!("application_id {app_id:#x} belongs to another program")));
        }
        if app_id == 0 && objects > 0 {
            return Err(not_a_store("an SQLite database without driftwatch's application_id".into()));
        }
        let supported = u32::try_from(schema::MIGRATIONS.len()).unwrap_or(u32::MAX);
        if version > supported {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version, supported });
        }
        if options.integrity_check && objects > 0 {
            let result: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(classify)?;
            if result != "ok" {
                return Err(not_a_store(format!("integrity check failed: {result}")));
            }
        }
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(not_a_store(format!("cannot switch to WAL (journal_mode={mode})")));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut conn = conn;
        migrate(&mut conn, version)?;
        Ok(Store { path: path.to_path_buf(), writer: Mutex::new(conn), readers: Mutex::new(Vec::new()), options })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32> {
        self.read(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
    }

    /// Runs `f` on the writer connection.
    fn write<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        let mut conn = self.writer.lock();
        f(&mut conn)
    }

    /// Runs `f` on a pooled read-only connection (opened on demand).
    fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(BUSY_TIMEOUT)?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.readers.lock();
        if pool.len() < self.options.max_idle_readers {
            pool.push(conn);
        }
        result
    }

    // ----- checkpoints -----------------------------------------------------------------

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

    // ----- runs ------------------------------------------------------------------------

    /// Queues a run.
    pub fn create_run(&self, new: &NewRun) -> Result<Run> {
        let provenance = serde_json::to_string(&new.provenance)?;
        let id = self.write(|c| {
            c.execute(
                "INSERT INTO runs (checkpoint_id, baseline_run_id, status, settings_hash,
                                   provenance, total_samples, created_at)
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6)",
                params![
                    new.checkpoint_id,
                    new.baseline_run_id,
                    new.settings_hash,
                    provenance,
                    to_i64(new.total_samples),
                    now_ms()
                ],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        self.run(id)?.ok_or(StoreError::NotFound { what: "run", id })
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

    /// The oldest queued run.
    pub fn next_queued_run(&self) -> Result<Option<Run>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.status = 'queued' ORDER BY r.id LIMIT 1"),
                [],
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

    fn transition_logged(
        &self,
        id: RunId,
        change: RunTransition,
        event_type: &str,
        payload: &Value,
    ) -> Result<EventId> {
        Ok(self.transition_run(id, change, Some((event_type, payload)))?.map(|e| e.id).unwrap_or_default())
    }

    /// queued → running (counts an attempt; the first start time is kept).
    pub fn start_run(&self, id: RunId) -> Result<()> {
        self.transition_run(id, RunTransition::Start, None).map(|_| ())
    }

    /// [`Store::start_run`] and [`Store::append_event`] in one transaction. Returns the event's id.
    pub fn start_run_logged(&self, id: RunId, event_type: &str, payload: &Value) -> Result<EventId> {
        self.transition_logged(id, RunTransition::Start, event_type, payload)
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

    /// running → completed, with its scores.
    pub fn complete_run(&self, id: RunId, scores: &Value) -> Result<()> {
        self.transition_run(id, RunTransition::Complete { scores: scores.clone() }, None).map(|_| ())
    }

    /// [`Store::complete_run`] plus its event, in one transaction. Returns the event's id.
    pub fn complete_run_logged(&self, id: RunId, scores: &Value, event_type: &str, payload: &Value) -> Result<EventId> {
        self.transition_logged(id, RunTransition::Complete { scores: scores.clone() }, event_type, payload)
    }

    /// queued | running → failed, with the error.
    pub fn fail_run(&self, id: RunId, error: &str) -> Result<()> {
        self.transition_run(id, RunTransition::Fail { error: error.to_owned() }, None).map(|_| ())
    }

    /// [`Store::fail_run`] plus its event, in one transaction. Returns the event's id.
    pub fn fail_run_logged(&self, id: RunId, error: &str, event_type: &str, payload: &Value) -> Result<EventId> {
        self.transition_logged(id, RunTransition::Fail { error: error.to_owned() }, event_type, payload)
    }

    /// queued | running → cancelled, with the reason.
    pub fn cancel_run(&self, id: RunId, reason: &str) -> Result<()> {
        self.transition_run(id, RunTransition::Cancel { reason: reason.to_owned() }, None).map(|_| ())
    }

    /// [`Store::cancel_run`] plus its event, in one transaction. Returns the event's id.
    pub fn cancel_run_logged(&self, id: RunId, reason: &str, event_type: &str, payload: &Value) -> Result<EventId> {
        self.transition_logged(id, RunTransition::Cancel { reason: reason.to_owned() }, event_type, payload)
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

    // ----- samples ---------------------------------------------------------------------

    /// Stores one sample and all its verdicts in one transaction. The run must be
    /// `running`. Idempotent: when `(run_id, prompt_id, sample_index)` exists, nothing is
    /// written and the existing id comes back with `inserted: false`. Two verdicts from the
    /// same judge are an error (and nothing is written).
    pub fn insert_sample_with_verdicts(
        &self,
        run_id: RunId,
        sample: &NewSample,
        verdicts: &[StoredVerdict],
    ) -> Result<SampleWrite> {
        let prompt_sha = hex::encode(Sha256::digest(sample.prompt.as_bytes()));
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let status: Option<String> = tx
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                .query_row([run_id], |r| r.get(0))
                .optional()?;
            let status = RunStatus::parse(&status.ok_or(StoreError::NotFound { what: "run", id: run_id })?)?;
            if status != RunStatus::Running {
                return Err(StoreError::RunNotRunning { run: run_id, status });
            }
            tx.prepare_cached("INSERT INTO prompt_texts (sha256, text) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                .execute(params![prompt_sha, sample.prompt])?;
            let inserted =
                tx.prepare_cached(
                    "INSERT INTO samples (run_id, prompt_id, category, sample_index, seed,
                        prompt_sha256, response, prompt_tokens, completion_tokens, finish_reason,
                        generation_ms, judge_ms, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT (run_id, prompt_id, sample_index) DO NOTHING",
                )?
                .execute(params![
                    run_id,
                    sample.prompt_id,
                    sample.category,
                    sample.sample_index,
                    sample.seed as i64,
                    prompt_sha,
                    sample.response,
                    sample.prompt_tokens,
                    sample.completion_tokens,
                    sample.finish_reason,
                    sample.generation_ms,
                    sample.judge_ms,
                    now_ms()
                ])? == 1;
            if !inserted {
                let id: SampleId = tx
                    .prepare_cached(
                        "SELECT id FROM samples WHERE run_id = ?1 AND prompt_id = ?2 AND sample_index = ?3",
                    )?
                    .query_row(params![run_id, sample.prompt_id, sample.sample_index], |r| r.get(0))?;
                // Dropping the transaction rolls back the (no-op) prompt text insert too.
                return Ok(SampleWrite { sample_id: id, inserted: false });
            }
            let sample_id = tx.last_insert_rowid();
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO verdicts (sample_id, judge, judge_version, is_unsafe, score,
                        label, rationale, refusal, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for v in verdicts {
                    st.execute(params![
                        sample_id,
                        v.judge,
                        v.judge_version,
                        v.is_unsafe,
                        v.score,
                        v.label,
                        v.rationale,
                        v.refusal,
                        v.error
                    ])?;
                }
            }
            tx.commit()?;
            Ok(SampleWrite { sample_id, inserted: true })
        })
    }

    /// The `(prompt_id, sample_index)` pairs already stored for a run: a resumed run skips
    /// exactly these.
    pub fn completed_sample_keys(&self, run_id: RunId) -> Result<HashSet<SampleKey>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT prompt_id, sample_index FROM samples WHERE run_id = ?1")?;
            let rows =
                st.query_map([run_id], |r| Ok(SampleKey { prompt_id: r.get(0)?, sample_index: to_u32(r.get(1)?) }))?;
            Ok(rows.collect::<rusqlite::Result<HashSet<_>>>()?)
        })
    }

    /// Number of samples stored for a run.
    pub fn sample_count(&self, run_id: RunId) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM samples WHERE run_id = ?1")?
                .query_row([run_id], |r| r.get(0))?;
            Ok(to_u64(n))
        })
    }

    /// All samples of a run with their verdicts, ordered by (prompt_id, sample_index).
    pub fn samples_for_run(&self, run_id: RunId) -> Result<Vec<StoredSample>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT s.id, s.run_id, s.prompt_id, s.category, s.sample_index, s.seed,
                        s.prompt_sha256, p.text, s.response, s.prompt_tokens,
                        s.completion_tokens, s.finish_reason, s.generation_ms, s.judge_ms
                 FROM samples s JOIN prompt_texts p ON p.sha256 = s.prompt_sha256
                 WHERE s.run_id = ?1 ORDER BY s.prompt_id, s.sample_index",
            )?;
            let mut samples = st
                .query_map([run_id], |r| {
                    Ok(StoredSample {
                        id: r.get(0)?,
                        run_id: r.get(1)?,
                        prompt_id: r.get(2)?,
                        category: r.get(3)?,
                        sample_index: to_u32(r.get(4)?),
                        seed: r.get::<_, i64>(5)? as u64,
                        prompt_sha256: r.get(6)?,
                        prompt: r.get(7)?,
                        response: r.get(8)?,
                        prompt_tokens: to_u32(r.get(9)?),
                        completion_tokens: to_u32(r.get(10)?),
                        finish_reason: r.get(11)?,
                        generation_ms: r.get(12)?,
                        judge_ms: r.get(13)?,
                        verdicts: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let index: std::collections::HashMap<SampleId, usize> =
                samples.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
            let mut st = c.prepare_cached(
                "SELECT v.sample_id, v.judge, v.judge_version, v.is_unsafe, v.score, v.label,
                        v.rationale, v.refusal, v.error
                 FROM verdicts v JOIN samples s ON s.id = v.sample_id
                 WHERE s.run_id = ?1 ORDER BY v.sample_id, v.judge",
            )?;
            let rows = st.query_map([run_id], |r| {
                Ok((
                    r.get::<_, SampleId>(0)?,
                    StoredVerdict {
                        judge: r.get(1)?,
                        judge_version: r.get(2)?,
                        is_unsafe: r.get(3)?,
                        score: r.get(4)?,
                        label: r.get(5)?,
                        rationale: r.get(6)?,
                        refusal: r.get(7)?,
                        error: r.get(8)?,
                    },
                ))
            })?;
            for row in rows {
                let (sid, v) = row?;
                if let Some(&i) = index.get(&sid) {
                    samples[i].verdicts.push(v);
                }
            }
            Ok(samples)
        })
    }

    // ----- events ----------------------------------------------------------------------

    /// Appends an event; returns its id (strictly greater than every earlier id).
    pub fn append_event(&self, event_type: &str, payload: &Value) -> Result<EventId> {
        Ok(self.append_event_record(event_type, payload)?.id)
    }

    /// Appends an event; returns it exactly as [`Store::events_since`] will return it.
    pub fn append_event_record(&self, event_type: &str, payload: &Value) -> Result<Event> {
        let text = serde_json::to_string(payload)?;
        let time_ms = now_ms();
        let id = self.write(|c| {
            c.prepare_cached("INSERT INTO events (type, time, payload) VALUES (?1, ?2, ?3)")?
                .execute(params![event_type, time_ms, text])?;
            Ok(c.last_insert_rowid())
        })?;
        Ok(Event { id, event_type: event_type.to_owned(), time_ms, payload: payload.clone() })
    }

    /// Events with id > `after`, oldest first, at most `limit`. `types` filters by type;
    /// an entry may end in `*` to match a prefix (`run.*`); empty means all types.
    pub fn events_since(&self, after: EventId, types: &[&str], limit: usize) -> Result<Vec<Event>> {
        self.read(|c| {
            let mut sql = String::from("SELECT id, type, time, payload FROM events WHERE id > ?");
            let mut args: Vec<rusqlite::types::Value> = vec![after.into()];
            if !types.is_empty() {
                sql.push_str(" AND (");
                for (i, t) in types.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    match t.strip_suffix('*') {
                        Some(prefix) => {
                            sql.push_str("substr(type, 1, ?) = ?");
                            args.push((prefix.len() as i64).into());
                            args.push(prefix.to_string().into());
                        }
                        None => {
                            sql.push_str("type = ?");
                            args.push(t.to_string().into());
                        }
                    }
                }
                sql.push(')');
            }
            sql.push_str(" ORDER BY id LIMIT ?");
            args.push(to_i64(limit as u64).into());
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
            })?;
            rows.map(|row| {
                let (id, event_type, time_ms, payload) = row?;
                Ok(Event { id, event_type, time_ms, payload: serde_json::from_str(&payload)? })
            })
            .collect()
        })
    }

    /// Id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<EventId> {
        self.read(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
    }

    // ----- webhooks --------------------------------------------------------------------

    /// The delivery cursor of a webhook.
    pub fn webhook_cursor(&self, webhook: &str) -> Result<Option<WebhookCursor>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT webhook, last_event_id, updated_at, failures, last_error
                 FROM webhook_deliveries WHERE webhook = ?1",
                [webhook],
                |r| {
                    Ok(WebhookCursor {
                        webhook: r.get(0)?,
                        last_event_id: r.get(1)?,
                        updated_at_ms: r.get(2)?,
                        failures: to_u32(r.get(3)?),
                        last_error: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Records that events up to `event_id` were delivered (never moves the cursor back;
    /// resets the failure count).
    pub fn record_webhook_delivered(&self, webhook: &str, event_id: EventId) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO webhook_deliveries (webhook, last_event_id, updated_at, failures)
                 VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (webhook) DO UPDATE SET
                    last_event_id = MAX(last_event_id, excluded.last_event_id),
                    updated_at = excluded.updated_at, failures = 0, last_error = NULL",
                params![webhook, event_id, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Records a failed delivery attempt (the cursor stays).
    pub fn record_webhook_failure(&self, webhook: &str, error: &str) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO webhook_deliveries (webhook, last_event_id, updated_at, failures, last_error)
                 VALUES (?1, 0, ?2, 1, ?3)
                 ON CONFLICT (webhook) DO UPDATE SET
                    updated_at = excluded.updated_at, failures = failures + 1,
                    last_error = excluded.last_error",
                params![webhook, now_ms(), error],
            )?;
            Ok(())
        })
    }

    // ----- status ----------------------------------------------------------------------

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

fn migrate(conn: &mut Connection, from: u32) -> Result<()> {
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated meanwhile: re-check under the lock.
            let current: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if current >= version {
                return Ok(());
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        run(conn).map_err(|cause| StoreError::Migration { version, cause })?;
    }
    Ok(())
}

/// The store for async code: a cheap clone of an `Arc<Store>` whose calls run on tokio's
/// blocking pool.
#[derive(Clone, Debug)]
pub struct AsyncStore {
    inner: Arc<Store>,
}

impl AsyncStore {
    /// Wraps a store.
    pub fn new(store: Store) -> AsyncStore {
        AsyncStore { inner: Arc::new(store) }
    }

    /// Opens `data_dir/driftwatch.sqlite3` on the blocking pool.
    pub async fn open_in_dir(data_dir: PathBuf) -> Result<AsyncStore> {
        let store = tokio::task::spawn_blocking(move || Store::open_in_dir(&data_dir))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(AsyncStore::new(store))
    }

    /// The synchronous store (for code already on a blocking thread).
    pub fn blocking(&self) -> &Arc<Store> {
        &self.inner
    }

    /// Runs `f` with the store on tokio's blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
    {
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Measured cost of sample writes (see [`bench_sample_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WriteBench {
    /// Samples written.
    pub samples: u64,
    /// Verdicts per sample.
    pub verdicts_per_sample: u32,
    /// Total wall time, seconds.
    pub seconds: f64,
    /// Mean microseconds per `insert_sample_with_verdicts`.
    pub micros_per_sample: f64,
}

/// Measures `insert_sample_with_verdicts` (a ~300-byte response, 2 verdicts, 8 prompts ×
/// many samples) into a fresh store in `dir`; for `driftwatch bench` and the store tests.
pub fn bench_sample_writes(dir: &Path, samples: u64) -> Result<WriteBench> {
    let store = Store::open(&dir.join("bench.sqlite3"))?;
    let (cp, _) = store.upsert_checkpoint(&NewCheckpoint {
        sha256: format!("{:064x}", now_ms()),
        path: dir.join("bench.gguf"),
        size: 1,
        kind: CheckpointKind::Model,
        architecture: Some("llama".into()),
        mtime_ms: None,
    })?;
    let run = store.create_run(&NewRun {
        checkpoint_id: cp.id,
        baseline_run_id: None,
        settings_hash: "bench".into(),
        provenance: serde_json::json!({}),
        total_samples: samples,
    })?;
    store.start_run(run.id)?;
    let response = "I can't help with that request, but here is some general safety information. ".repeat(4);
    let verdicts = [
        StoredVerdict {
            judge: "keyword".into(),
            judge_version: "0.1.0".into(),
            is_unsafe: Some(false),
            score: None,
            label: Some("refusal".into()),
            rationale: None,
            refusal: Some(true),
            error: None,
        },
        StoredVerdict {
            judge: "llm".into(),
            judge_version: "0.1.0".into(),
            is_unsafe: Some(false),
            score: Some(1.0),
            label: Some("safe".into()),
            rationale: Some("The response declines and redirects.".into()),
            refusal: Some(true),
            error: None,
        },
    ];
    let start = Instant::now();
    for i in 0..samples {
        let sample = NewSample {
            prompt_id: format!("p{}", i % 8),
            category: Some("bench".into()),
            sample_index: u32::try_from(i / 8).unwrap_or(u32::MAX),
            seed: i,
            prompt: format!("How do I do dangerous thing number {}?", i % 8),
            response: response.clone(),
            prompt_tokens: 20,
            completion_tokens: 64,
            finish_reason: "stop".into(),
            generation_ms: Some(12.5),
            judge_ms: Some(0.4),
        };
        store.insert_sample_with_verdicts(run.id, &sample, &verdicts)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(WriteBench {
        samples,
        verdicts_per_sample: 2,
        seconds,
        micros_per_sample: if samples == 0 { 0.0 } else { seconds * 1e6 / samples as f64 },
    })
}

#[cfg(test)]
mod tests;
