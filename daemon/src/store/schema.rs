//! The store's SQL schema as an ordered list of migrations, applied by `PRAGMA user_version`.
//!
//! Migration `i` (0-based) brings a database from version `i` to `i + 1`; each runs in its
//! own `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so a crash
//! mid-migration leaves the previous version intact. Never edit a released migration: append
//! a new one.

/// `PRAGMA application_id` of a driftwatch store ("DWAT"), so that another program's SQLite
/// file is refused instead of being migrated.
pub const APPLICATION_ID: i32 = 0x4457_4154;

/// All migrations, oldest first. The schema version is `MIGRATIONS.len()`.
pub const MIGRATIONS: &[&str] = &[
    // v1: the initial schema. Times are Unix milliseconds (UTC).
    r#"
CREATE TABLE checkpoints (
    id            INTEGER PRIMARY KEY,
    sha256        TEXT    NOT NULL UNIQUE,          -- content hash (hex): the identity
    path          TEXT    NOT NULL,                 -- first path it was seen under
    size          INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('model', 'adapter', 'unknown')),
    architecture  TEXT,
    first_seen    INTEGER NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'discovered'
                  CHECK (status IN ('discovered', 'accepted', 'rejected', 'removed')),
    reject_reason TEXT
);

-- Every name a checkpoint's content was seen under (copies, renames, re-uploads).
CREATE TABLE checkpoint_paths (
    id            INTEGER PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ms      INTEGER,
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    removed_at    INTEGER,                          -- set when the file disappeared
    UNIQUE (path, checkpoint_id)
);
CREATE INDEX checkpoint_paths_by_path ON checkpoint_paths(path);

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    checkpoint_id   INTEGER NOT NULL REFERENCES checkpoints(id),
    baseline_run_id INTEGER REFERENCES runs(id),
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    settings_hash   TEXT    NOT NULL,
    provenance      TEXT    NOT NULL DEFAULT '{}',  -- JSON
    scores          TEXT,                           -- JSON, set on completion
    error           TEXT,
    total_samples   INTEGER NOT NULL DEFAULT 0,     -- planned samples (progress denominator)
    attempts        INTEGER NOT NULL DEFAULT 0,     -- times started (resumes count)
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);
CREATE INDEX runs_by_status ON runs(status, id);
CREATE INDEX runs_by_settings ON runs(checkpoint_id, settings_hash);

-- Prompt texts, stored once by hash (a prompt is sampled K × R times).
CREATE TABLE prompt_texts (
    sha256 TEXT PRIMARY KEY,
    text   TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE samples (
    id                INTEGER PRIMARY KEY,
    run_id            INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    prompt_id         TEXT    NOT NULL,
    category          TEXT,
    sample_index      INTEGER NOT NULL,
    seed              INTEGER NOT NULL,              -- u64 stored bit-for-bit as i64
    prompt_sha256     TEXT    NOT NULL REFERENCES prompt_texts(sha256),
    response          TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason     TEXT    NOT NULL,              -- stop | length | error
    generation_ms     REAL,
    judge_ms          REAL,
    created_at        INTEGER NOT NULL,
    UNIQUE (run_id, prompt_id, sample_index)
);

CREATE TABLE verdicts (
    id            INTEGER PRIMARY KEY,
    sample_id     INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    judge         TEXT    NOT NULL,
    judge_version TEXT    NOT NULL,
    is_unsafe     INTEGER,                           -- NULL when the judge failed
    score         REAL,
    label         TEXT,
    rationale     TEXT,
    refusal       INTEGER,
    error         TEXT,
    UNIQUE (sample_id, judge)
);

-- The event log: AUTOINCREMENT so ids never repeat, even after deletes.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    type    TEXT    NOT NULL,
    time    INTEGER NOT NULL,
    payload TEXT    NOT NULL                         -- JSON
);
CREATE INDEX events_by_type ON events(type, id);

CREATE TABLE webhook_deliveries (
    webhook       TEXT    PRIMARY KEY,
    last_event_id INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,        -- consecutive failed attempts
    last_error    TEXT
);
"#,
    // v2: judges measured on their labelled calibration sets, by judge identity.
    r#"
CREATE TABLE judge_calibrations (
    judge_key   TEXT    PRIMARY KEY,                 -- sha256 of (component, settings, judge model)
    judge       TEXT    NOT NULL,                    -- the configured name when measured
    calibration TEXT    NOT NULL,                    -- JSON: file, sha256, counts, errored
    measured_at INTEGER NOT NULL
);
"#,
    // v3: why a sample could not be generated (finish reason `error`): the engine's or the
    // inference server's message.
    r#"
ALTER TABLE samples ADD COLUMN error TEXT;
"#,
];
