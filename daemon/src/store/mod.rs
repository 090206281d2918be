//! The durable store: one embedded SQLite database (WAL) holding checkpoints, runs, samples
//! with their judge verdicts, the event log, webhook delivery cursors and judge calibrations.
//!
//! # Connections and concurrency
//! [`Store`] owns one writer connection behind a mutex (SQLite allows one writer at a time
//! anyway) and a small pool of read-only connections; in WAL mode readers never block the
//! writer and see the last committed state, so `driftwatch status` and the API can read while
//! a run writes samples. Every method is synchronous and short; async code runs them on tokio's
//! blocking pool (`tokio::task::spawn_blocking`, as the daemon, the API and the webhooks do),
//! never on an async worker thread.
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
//!
//! # Layout
//! One file per table, each with its rows' types and its `impl Store` block: `checkpoints.rs`
//! (with `checkpoint_paths`), `runs.rs` (with [`Store::transition_run`]), `samples.rs` (with
//! `prompt_texts` and `verdicts`), `events.rs`, `webhooks.rs` and `status.rs` (the summary read
//! across them) and `calibrations.rs` (judges measured on labelled sets); `schema.rs` holds the
//! migrations. This file holds the [`Store`] itself
//! (opening, migrating, its connections), its errors and the helpers the tables share.

/// A column holding one of a fixed set of names, as a Rust enum (`as_str`, `parse`, `Display`).
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
                match s {
                    $($s => Ok($name::$var),)*
                    _ => Err(StoreError::BadValue { column: $col, value: s.to_string() }),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

pub mod schema;

mod calibrations;
mod checkpoints;
mod events;
mod runs;
mod samples;
mod status;
mod webhooks;

pub use checkpoints::{CheckpointKind, CheckpointPath, CheckpointRecord, CheckpointStatus, NewCheckpoint, RemovedPath};
pub use events::Event;
pub use runs::{NewRun, Run, RunStatus, RunTransition};
pub use samples::{NewSample, SampleKey, SampleWrite, StoredSample, StoredVerdict};
pub use status::{RunOverview, StatusSummary};
pub use webhooks::WebhookCursor;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

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
    #[error(
        "{} is not a usable driftwatch store ({reason}); it was left untouched — \
         move it away or point daemon.data_dir elsewhere",
        path.display()
    )]
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

    /// True for a fault of the storage under the store — a full disk, an I/O error, a
    /// read-only file or file system — which no retry and no other write can get past: the
    /// daemon stops instead of recording failures it cannot store. ("Cannot open", which
    /// running out of file descriptors also gives, and corruption are not among them.)
    pub fn is_storage_fault(&self) -> bool {
        let code = |e: &rusqlite::Error| match e {
            rusqlite::Error::SqliteFailure(f, _) => {
                matches!(f.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
                    // Read-only, but not the transient "read-only while another connection
                    // recovers the WAL" (SQLITE_READONLY_RECOVERY).
                    || (f.code == rusqlite::ErrorCode::ReadOnly && f.extended_code != rusqlite::ffi::SQLITE_READONLY_RECOVERY)
            }
            _ => false,
        };
        match self {
            StoreError::Open { cause, .. } | StoreError::Migration { cause, .. } => code(cause),
            StoreError::Sqlite(e) => code(e),
            StoreError::Io { .. } => true,
            _ => false,
        }
    }
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

/// The store. `Send + Sync`; share it in an `Arc`.
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

#[cfg(test)]
mod tests;
