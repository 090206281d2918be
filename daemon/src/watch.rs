//! Folder watching: notify events and a start-up scan → settled `*.gguf` files (or files of
//! another extension, [`WatchOptions::extension`]: the plugin registry watches `*.wasm`) → a
//! channel of [`WatchEvent`]s; plus the streamed content hash of a file ([`hash_file`]).
//!
//! # How a file is taken
//! - notify's callback (on notify's own thread) only forwards the event's paths with
//!   `try_send` into a bounded queue; it never blocks. When the queue is full the event is
//!   dropped and a flag asks for a **rescan** of every watched folder, which finds whatever
//!   the dropped events were about (the same happens when the OS reports its own queue
//!   overflow, notify's `need_rescan`).
//! - One settle thread owns all state. Every path it hears about (and every file the
//!   start-up scan or a rescan finds) becomes *pending*; a pending file is stat-ed every
//!   poll interval and is emitted as [`WatchEvent::Settled`] once its size and mtime have not
//!   changed for `settle` — or for one poll interval when it was *renamed into place* (a
//!   rename is atomic, the writer finished before it). An empty file is emitted only after it has
//!   stayed empty for three settle times (so that the daemon can reject it as empty).
//! - A file is emitted once per `(path, size, mtime)`: touching or re-reading it changes
//!   nothing, re-writing it (new size or mtime) emits it again.
//! - Hidden names (a file or a folder under the watched root whose name starts with `.`)
//!   and temporary names (`*.part`, `*.tmp`, `*.crdownload`, `*.partial`, `*.download`,
//!   `*.swp`, `*~`) are ignored; only `*.gguf` (any case) are candidates, so `x.gguf.part`
//!   is taken when it is renamed to `x.gguf`.
//! - A file that was emitted and disappears (deleted, or renamed away) is reported as
//!   [`WatchEvent::Removed`]; a folder that disappears reports every emitted file under it.
//!   Files deleted while the daemon was down are not reported (compare with the store).
//! - A watched folder that does not exist is **created** at start (with its parents); one
//!   that cannot be created, or is a file, is a fatal [`WatchStartError`]. Problems with one
//!   path while running (permission denied, a watched folder removed) are reportable
//!   [`WatchError`]s delivered as [`WatchEvent::Error`]; the watcher goes on.
//! - Whether a writer still holds the file open is not checked (no cheap portable way);
//!   settling covers it for writers that write continuously.
//!
//! # Shutdown
//! Dropping the [`Watcher`] (or cancelling the token given to [`Watcher::start_with`]) stops
//! notify and the settle thread within one poll interval; dropping the receiver does too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A file that has settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledFile {
    /// Absolute path (under the canonical form of the watched folder).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
}

impl SettledFile {
    /// The mtime in Unix milliseconds (0 before 1970).
    pub fn mtime_ms(&self) -> i64 {
        system_time_ms(self.mtime)
    }
}

/// A time in Unix milliseconds (0 before 1970).
pub fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// What the watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// A `*.gguf` file is complete and ready to be taken.
    Settled(SettledFile),
    /// A file that was emitted as settled no longer exists at this path.
    Removed(PathBuf),
    /// A reportable problem; watching goes on.
    Error(WatchError),
}

/// A reportable problem: one path, one event; the watcher keeps running.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A file or folder could not be read (permissions, I/O error).
    #[error("cannot read {}: {cause}", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// A watched folder disappeared; it is no longer watched.
    #[error("watched folder {} disappeared; it is no longer watched", .0.display())]
    FolderGone(PathBuf),
    /// The event queue overflowed (or the OS dropped events); every folder was rescanned.
    /// Reported at most once every 10 s.
    #[error("file event queue overflowed; all watched folders were rescanned")]
    Overflow,
    /// An error reported by the OS file-watching backend.
    #[error("file watcher: {0}")]
    Backend(String),
}

/// A fatal problem: the watcher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchStartError {
    /// A missing watched folder could not be created.
    #[error("cannot create watched folder {}: {cause}", path.display())]
    CreateFolder {
        /// The folder.
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// A watched path exists but is not a folder.
    #[error("watched path {} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    /// A watched folder could not be resolved to its canonical path.
    #[error("cannot resolve watched folder {}: {cause}", path.display())]
    Resolve {
        /// The folder.
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// The OS watcher could not be created or could not watch a folder (e.g. the inotify
    /// watch limit).
    #[error("cannot watch {}: {cause}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "folders".into()))]
    Backend {
        /// The folder, when the error is about one.
        path: Option<PathBuf>,
        /// notify's error.
        cause: notify::Error,
    },
    /// The settle thread could not be spawned.
    #[error("cannot start the watcher thread: {0}")]
    Thread(std::io::Error),
    /// The start-up task failed.
    #[error("watcher start-up task failed: {0}")]
    Task(String),
}

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long size and mtime must stay unchanged (`daemon.settle_ms`).
    pub settle: Duration,
    /// How often pending files are checked. Default: settle / 5, between 10 ms and 250 ms.
    pub poll: Option<Duration>,
    /// Capacity of the queue from notify's callback (overflow → rescan). Default 4096.
    pub raw_capacity: usize,
    /// Capacity of the [`WatchEvent`] channel. Default 1024.
    pub channel_capacity: usize,
    /// The extension (any case) of the files taken. Default `gguf`.
    pub extension: &'static str,
}

impl WatchOptions {
    /// Defaults with the given settle time.
    pub fn new(settle: Duration) -> WatchOptions {
        WatchOptions { settle, poll: None, raw_capacity: 4096, channel_capacity: 1024, extension: "gguf" }
    }

    fn poll_interval(&self) -> Duration {
        self.poll.unwrap_or_else(|| (self.settle / 5).clamp(Duration::from_millis(10), Duration::from_millis(250)))
    }
}

/// The running watcher. Dropping it stops watching.
pub struct Watcher {
    cancel: CancellationToken,
    rescan: Arc<AtomicBool>,
    folders: Vec<PathBuf>,
    thread: Option<std::thread::JoinHandle<()>>,
    _backend: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("folders", &self.folders).finish()
    }
}

/// What notify's callback forwards.
enum Raw {
    /// Paths an event touched; `renamed_to` are those that were renamed into place.
    Paths { paths: Vec<PathBuf>, renamed_to: Vec<PathBuf> },
    /// The backend reported an error.
    Error(String),
}

impl Watcher {
    /// Watches `folders` recursively with default options; see the module docs.
    pub async fn start(
        folders: &[PathBuf],
        settle: Duration,
    ) -> Result<(Watcher, mpsc::Receiver<WatchEvent>), WatchStartError> {
        Watcher::start_with(folders, WatchOptions::new(settle), CancellationToken::new()).await
    }

    /// Watches `folders` recursively; `cancel` stops it (as does dropping the watcher).
    pub async fn start_with(
        folders: &[PathBuf],
        options: WatchOptions,
        cancel: CancellationToken,
    ) -> Result<(Watcher, mpsc::Receiver<WatchEvent>), WatchStartError> {
        let folders = folders.to_vec();
        tokio::task::spawn_blocking(move || start_blocking(folders, options, cancel))
            .await
            .map_err(|e| WatchStartError::Task(e.to_string()))?
    }

    /// [`Watcher::start_with`] from synchronous code (it blocks for the start-up).
    pub fn start_blocking(
        folders: &[PathBuf],
        options: WatchOptions,
        cancel: CancellationToken,
    ) -> Result<(Watcher, mpsc::Receiver<WatchEvent>), WatchStartError> {
        start_blocking(folders.to_vec(), options, cancel)
    }

    /// The watched folders (canonical paths).
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// Asks for a rescan of every folder (files already emitted are not emitted again).
    pub fn rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
    }

    /// Stops watching and waits for the settle thread to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start_blocking(
    folders: Vec<PathBuf>,
    options: WatchOptions,
    cancel: CancellationToken,
) -> Result<(Watcher, mpsc::Receiver<WatchEvent>), WatchStartError> {
    let mut roots = Vec::with_capacity(folders.len());
    for folder in &folders {
        match std::fs::metadata(folder) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(WatchStartError::NotAFolder(folder.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(folder)
                    .map_err(|cause| WatchStartError::CreateFolder { path: folder.clone(), cause })?;
                tracing::info!(folder = %folder.display(), "created missing watched folder");
            }
            Err(cause) => return Err(WatchStartError::Resolve { path: folder.clone(), cause }),
        }
        let root =
            std::fs::canonicalize(folder).map_err(|cause| WatchStartError::Resolve { path: folder.clone(), cause })?;
        if !roots.contains(&root) {
            roots.push(root);
        }
    }

    let (raw_tx, raw_rx) = std_mpsc::sync_channel::<Raw>(options.raw_capacity.max(1));
    let rescan = Arc::new(AtomicBool::new(false));
    let overflow = Arc::clone(&rescan);
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflowed_cb = Arc::clone(&overflowed);
    let mut backend = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(event) => {
                if event.need_rescan() {
                    overflowed_cb.store(true, Ordering::SeqCst);
                    overflow.store(true, Ordering::SeqCst);
                }
                // Opening and reading (our own scans and hashing included) change nothing;
                // only a close after writing is worth a look.
                if let EventKind::Access(kind) = event.kind {
                    if kind != AccessKind::Close(AccessMode::Write) {
                        return;
                    }
                }
                let renamed_to = match event.kind {
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.clone(),
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                        event.paths.get(1).cloned().into_iter().collect()
                    }
                    _ => Vec::new(),
                };
                if event.paths.is_empty() {
                    return;
                }
                Raw::Paths { paths: event.paths, renamed_to }
            }
            Err(e) => Raw::Error(e.to_string()),
        };
        if let Err(std_mpsc::TrySendError::Full(_)) = raw_tx.try_send(msg) {
            // Never block notify's thread: drop the event and rescan instead.
            overflowed_cb.store(true, Ordering::SeqCst);
            overflow.store(true, Ordering::SeqCst);
        }
    })
    .map_err(|cause| WatchStartError::Backend { path: None, cause })?;
    for root in &roots {
        backend
            .watch(root, RecursiveMode::Recursive)
            .map_err(|cause| WatchStartError::Backend { path: Some(root.clone()), cause })?;
    }

    let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
    let mut settler = Settler {
        roots: roots.clone(),
        settle: options.settle,
        poll: options.poll_interval(),
        extension: options.extension,
        pending: BTreeMap::new(),
        emitted: HashMap::new(),
        tx,
        cancel: cancel.clone(),
    };
    let rescan_flag = Arc::clone(&rescan);
    let thread = std::thread::Builder::new()
        .name("driftwatch-watch".into())
        .spawn(move || settler.run(raw_rx, rescan_flag, overflowed))
        .map_err(WatchStartError::Thread)?;
    Ok((Watcher { cancel, rescan, folders: roots, thread: Some(thread), _backend: backend }, rx))
}

/// Overflow reports are rate-limited to one per this period (rescans are not).
const OVERFLOW_REPORT_EVERY: Duration = Duration::from_secs(10);

/// A file waiting to settle.
#[derive(Debug)]
struct Pending {
    size: u64,
    mtime: SystemTime,
    /// When size/mtime were last seen to change (or first seen).
    since: Instant,
    /// How long it must stay unchanged.
    required: Duration,
}

struct Settler {
    roots: Vec<PathBuf>,
    settle: Duration,
    poll: Duration,
    /// The extension of the files taken.
    extension: &'static str,
    pending: BTreeMap<PathBuf, Pending>,
    /// (size, mtime) each path was last emitted with.
    emitted: HashMap<PathBuf, (u64, SystemTime)>,
    tx: mpsc::Sender<WatchEvent>,
    cancel: CancellationToken,
}

/// Stop the settle loop.
struct Stop;

impl Settler {
    fn run(&mut self, raw_rx: std_mpsc::Receiver<Raw>, rescan: Arc<AtomicBool>, overflowed: Arc<AtomicBool>) {
        if self.scan_all().is_err() {
            return;
        }
        let mut last_overflow_report: Option<Instant> = None;
        loop {
            if self.cancel.is_cancelled() || self.tx.is_closed() {
                return;
            }
            let mut dirty: HashSet<PathBuf> = HashSet::new();
            let mut renamed: HashSet<PathBuf> = HashSet::new();
            let mut errors = Vec::new();
            let mut disconnected = false;
            let mut take = |raw: Raw, dirty: &mut HashSet<PathBuf>, renamed: &mut HashSet<PathBuf>| match raw {
                Raw::Paths { paths, renamed_to } => {
                    dirty.extend(paths);
                    renamed.extend(renamed_to);
                }
                Raw::Error(e) => errors.push(e),
            };
            match raw_rx.recv_timeout(self.poll) {
                Ok(raw) => take(raw, &mut dirty, &mut renamed),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
            }
            while let Ok(raw) = raw_rx.try_recv() {
                take(raw, &mut dirty, &mut renamed);
            }
            for e in errors {
                if self.send(WatchEvent::Error(WatchError::Backend(e))).is_err() {
                    return;
                }
            }
            let mut paths: Vec<PathBuf> = dirty.into_iter().collect();
            paths.sort();
            for p in paths {
                let is_renamed = renamed.contains(&p);
                if self.observe(&p, is_renamed).is_err() {
                    return;
                }
            }
            if rescan.swap(false, Ordering::SeqCst) {
                // Report overflows, at most one every OVERFLOW_REPORT_EVERY.
                if overflowed.swap(false, Ordering::SeqCst)
                    && last_overflow_report.is_none_or(|t: Instant| t.elapsed() >= OVERFLOW_REPORT_EVERY)
                {
                    last_overflow_report = Some(Instant::now());
                    if self.send(WatchEvent::Error(WatchError::Overflow)).is_err() {
                        return;
                    }
                }
                if self.scan_all().is_err() {
                    return;
                }
            }
            if self.tick().is_err() || disconnected {
                return;
            }
        }
    }

    /// Sends an event, waiting while the channel is full but giving up on cancellation.
    fn send(&self, mut event: WatchEvent) -> Result<(), Stop> {
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop),
                Err(mpsc::error::TrySendError::Full(e)) => {
                    if self.cancel.is_cancelled() {
                        return Err(Stop);
                    }
                    event = e;
                    std::thread::sleep(self.poll.min(Duration::from_millis(20)));
                }
            }
        }
    }

    fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots.iter().filter(|r| path.starts_with(r)).max_by_key(|r| r.as_os_str().len()).map(PathBuf::as_path)
    }

    /// Whether any component of `path` below its watched root is hidden or temporary.
    fn ignored(&self, path: &Path) -> bool {
        let Some(root) = self.root_of(path) else {
            return true;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            return true;
        };
        rel.components().any(|c| match c {
            std::path::Component::Normal(name) => is_ignored_name(&name.to_string_lossy()),
            _ => false,
        })
    }

    /// Handles a path an event mentioned.
    fn observe(&mut self, path: &Path, renamed_into_place: bool) -> Result<(), Stop> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.gone(path),
            Err(e) => {
                if self.ignored(path) {
                    return Ok(());
                }
                self.send(WatchEvent::Error(WatchError::Unreadable { path: path.to_path_buf(), cause: e }))
            }
            Ok(m) if m.is_dir() => {
                if self.roots.iter().any(|r| r == path) || !self.ignored(path) {
                    self.scan(path)
                } else {
                    Ok(())
                }
            }
            Ok(m) => {
                if is_candidate_with(path, self.extension) && !self.ignored(path) {
                    self.add_pending(path, &m, renamed_into_place);
                }
                Ok(())
            }
        }
    }

    fn add_pending(&mut self, path: &Path, m: &std::fs::Metadata, renamed_into_place: bool) {
        let size = m.len();
        let mtime = m.modified().unwrap_or(UNIX_EPOCH);
        if self.emitted.get(path) == Some(&(size, mtime)) {
            return;
        }
        let required = if renamed_into_place { self.poll.min(self.settle) } else { self.settle };
        let now = Instant::now();
        let entry = self.pending.entry(path.to_path_buf()).or_insert(Pending { size, mtime, since: now, required });
        if (entry.size, entry.mtime) != (size, mtime) {
            entry.size = size;
            entry.mtime = mtime;
            entry.since = now;
        }
        entry.required = entry.required.min(required);
    }

    /// A path no longer exists: forget pending files under it, report emitted ones.
    fn gone(&mut self, path: &Path) -> Result<(), Stop> {
        self.pending.retain(|p, _| !p.starts_with(path));
        let mut removed: Vec<PathBuf> = self.emitted.keys().filter(|p| p.starts_with(path)).cloned().collect();
        removed.sort();
        for p in removed {
            self.emitted.remove(&p);
            self.send(WatchEvent::Removed(p))?;
        }
        if let Some(i) = self.roots.iter().position(|r| r == path) {
            let root = self.roots.remove(i);
            self.send(WatchEvent::Error(WatchError::FolderGone(root)))?;
        }
        Ok(())
    }

    fn scan_all(&mut self) -> Result<(), Stop> {
        for root in self.roots.clone() {
            self.scan(&root)?;
        }
        Ok(())
    }

    /// Adds every candidate under `dir` to the pending set (no symlinked folders: no loops).
    fn scan(&mut self, dir: &Path) -> Result<(), Stop> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if self.cancel.is_cancelled() {
                return Err(Stop);
            }
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.send(WatchEvent::Error(WatchError::Unreadable { path: d, cause: e }))?;
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if is_ignored_name(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if is_candidate_with(&path, self.extension) {
                    match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => self.add_pending(&path, &m, false),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => self.send(WatchEvent::Error(WatchError::Unreadable { path, cause: e }))?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks pending files; emits those that settled.
    fn tick(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let mut settled = Vec::new();
        let mut vanished = Vec::new();
        for (path, p) in self.pending.iter_mut() {
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => {
                    let size = m.len();
                    let mtime = m.modified().unwrap_or(UNIX_EPOCH);
                    // An empty file must stay empty much longer before it is taken (and
                    // rejected as empty): a file being created is briefly empty.
                    let required = if size == 0 { p.required * EMPTY_SETTLE_FACTOR } else { p.required };
                    if (size, mtime) != (p.size, p.mtime) {
                        p.size = size;
                        p.mtime = mtime;
                        p.since = now;
                    } else if now.duration_since(p.since) >= required {
                        settled.push(path.clone());
                    }
                }
                _ => vanished.push(path.clone()),
            }
        }
        for path in vanished {
            self.pending.remove(&path);
            if self.emitted.contains_key(&path) {
                self.gone(&path)?;
            }
        }
        for path in settled {
            let Some(p) = self.pending.remove(&path) else {
                continue;
            };
            if self.emitted.get(&path) == Some(&(p.size, p.mtime)) {
                continue;
            }
            self.emitted.insert(path.clone(), (p.size, p.mtime));
            self.send(WatchEvent::Settled(SettledFile { path, size: p.size, mtime: p.mtime }))?;
        }
        Ok(())
    }
}

/// An empty file is taken only after this many times the settle time without change.
pub const EMPTY_SETTLE_FACTOR: u32 = 3;

/// Temporary-file suffixes that are never taken (until renamed).
pub const TEMP_SUFFIXES: &[&str] = &[".part", ".tmp", ".crdownload", ".partial", ".download", ".swp", ".swx", "~"];

/// Whether a file or folder name is hidden or temporary.
pub fn is_ignored_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.') || TEMP_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// Whether a path names a checkpoint candidate: a `*.gguf` (any case) file name that is
/// neither hidden nor temporary.
pub fn is_candidate(path: &Path) -> bool {
    is_candidate_with(path, "gguf")
}

/// Whether a path names a `*.<extension>` (any case) file that is neither hidden nor temporary.
pub fn is_candidate_with(path: &Path, extension: &str) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !is_ignored_name(name) && path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension))
}

/// Buffer size of [`hash_file`].
pub const HASH_BUFFER: usize = 1 << 20;

/// sha256 (lowercase hex) of a file's content, streamed through a 1 MiB buffer.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// [`hash_file`] on tokio's blocking pool.
pub async fn hash_file_async(path: PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || hash_file(&path)).await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    //! Real-filesystem tests with bounded, polled waits.

    use super::*;
    use std::io::Write;

    const SETTLE: Duration = Duration::from_millis(300);

    async fn start(dir: &Path) -> (Watcher, mpsc::Receiver<WatchEvent>) {
        Watcher::start(&[dir.to_path_buf()], SETTLE).await.unwrap()
    }

    /// The next event within `within`, or None.
    async fn next(rx: &mut mpsc::Receiver<WatchEvent>, within: Duration) -> Option<WatchEvent> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    /// Waits (bounded) for an event matching `pred`, failing on any other event.
    async fn expect(rx: &mut mpsc::Receiver<WatchEvent>, what: &str, pred: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
        match next(rx, Duration::from_secs(10)).await {
            Some(ev) if pred(&ev) => ev,
            Some(ev) => panic!("expected {what}, got {ev:?}"),
            None => panic!("timed out waiting for {what}"),
        }
    }

    /// Asserts that nothing arrives for a few settle periods.
    async fn expect_quiet(rx: &mut mpsc::Receiver<WatchEvent>) {
        if let Some(ev) = next(rx, SETTLE * 4).await {
            panic!("expected no event, got {ev:?}");
        }
    }

    fn settled_path(ev: &WatchEvent) -> Option<&Path> {
        match ev {
            WatchEvent::Settled(f) => Some(&f.path),
            _ => None,
        }
    }

    #[test]
    fn names() {
        for ok in ["a.gguf", "A.GGUF", "model-q4.Gguf", "dir/x.gguf"] {
            assert!(is_candidate(Path::new(ok)), "{ok}");
        }
        for no in [
            ".a.gguf",
            "a.gguf.part",
            "a.gguf.tmp",
            "a.gguf~",
            "a.gguf.crdownload",
            "a.gguf.partial",
            "a.gguf.download",
            "a.gguf.swp",
            "a.bin",
            "gguf",
            "a.gguf.PART",
        ] {
            assert!(!is_candidate(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn hash_matches_known_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(hash_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // Larger than the buffer: equal to hashing in one go.
        let big: Vec<u8> = (0..(HASH_BUFFER * 2 + 12345)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        assert_eq!(hash_file(&p).unwrap(), hex::encode(Sha256::digest(&big)));
        assert!(hash_file(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn async_hash_equals_sync_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, b"GGUF and some bytes").unwrap();
        assert_eq!(hash_file_async(p.clone()).await.unwrap(), hash_file(&p).unwrap());
        assert!(hash_file_async(dir.path().join("nope")).await.is_err());
    }

    #[tokio::test]
    async fn slow_copy_is_emitted_once_when_complete() {
        // A longer settle time than the other tests: the chunk interval must stay well
        // below it even on a loaded machine.
        let settle = Duration::from_millis(1500);
        let dir = tempfile::tempdir().unwrap();
        let (_w, mut rx) = Watcher::start(&[dir.path().to_path_buf()], settle).await.unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap().join("slow.gguf");
        let chunk = vec![7u8; 64 * 1024];
        let mut f = std::fs::File::create(&path).unwrap();
        // Chunks arrive more often than the settle time: never settled in between.
        for _ in 0..12 {
            f.write_all(&chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(ev) = rx.try_recv() {
                panic!("emitted before the copy finished: {ev:?}");
            }
        }
        drop(f);
        let ev = expect(&mut rx, "settled", |e| settled_path(e) == Some(&path)).await;
        let WatchEvent::Settled(file) = ev else { unreachable!() };
        assert_eq!(file.size, 12 * 64 * 1024);
        assert_eq!(file.mtime, std::fs::metadata(&path).unwrap().modified().unwrap());
        if let Some(ev) = next(&mut rx, settle * 3).await {
            panic!("emitted twice: {ev:?}");
        }
    }

    #[tokio::test]
    async fn temporary_names_wait_for_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (_w, mut rx) = start(&root).await;
        for tmp in ["m.gguf.part", "m.gguf.crdownload", "m.gguf~", "m.gguf.tmp"] {
            std::fs::write(root.join(tmp), b"GGUF....").unwrap();
        }
        expect_quiet(&mut rx).await;
        std::fs::rename(root.join("m.gguf.part"), root.join("m.gguf")).unwrap();
        let ev = expect(&mut rx, "settled m.gguf", |e| settled_path(e).is_some()).await;
        assert_eq!(settled_path(&ev), Some(root.join("m.gguf").as_path()));
        expect_quiet(&mut rx).await;
    }

    #[tokio::test]
    async fn hidden_files_and_folders_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (_w, mut rx) = start(&root).await;
        std::fs::write(root.join(".hidden.gguf"), b"x").unwrap();
        std::fs::create_dir(root.join(".cache")).unwrap();
        std::fs::write(root.join(".cache/inside.gguf"), b"x").unwrap();
        std::fs::write(root.join("notes.txt"), b"x").unwrap();
        expect_quiet(&mut rx).await;
        // A visible file in a visible subfolder is taken.
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/visible.GGUF"), b"x").unwrap();
        let ev = expect(&mut rx, "settled", |e| settled_path(e).is_some()).await;
        assert_eq!(settled_path(&ev), Some(root.join("sub/visible.GGUF").as_path()));
    }

    #[tokio::test]
    async fn an_empty_file_is_taken_only_after_staying_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (_w, mut rx) = start(&root).await;
        let t = std::time::Instant::now();
        std::fs::write(root.join("empty.gguf"), b"").unwrap();
        let ev = expect(&mut rx, "settled", |e| settled_path(e).is_some()).await;
        assert_eq!(settled_path(&ev), Some(root.join("empty.gguf").as_path()));
        assert!(t.elapsed() >= SETTLE * EMPTY_SETTLE_FACTOR, "taken after {:?}", t.elapsed());
        // Once written, it is taken again with its content.
        std::fs::write(root.join("empty.gguf"), b"now with content").unwrap();
        let ev = expect(&mut rx, "settled", |e| settled_path(e).is_some()).await;
        match ev {
            WatchEvent::Settled(f) => assert_eq!(f.size, 16),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn startup_scan_takes_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("top.gguf"), b"1").unwrap();
        std::fs::write(root.join("a/b/deep.gguf"), b"22").unwrap();
        std::fs::write(root.join("a/skip.gguf.part"), b"333").unwrap();
        let (_w, mut rx) = start(&root).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let ev = expect(&mut rx, "settled", |e| settled_path(e).is_some()).await;
            got.push(settled_path(&ev).unwrap().to_path_buf());
        }
        got.sort();
        assert_eq!(got, vec![root.join("a/b/deep.gguf"), root.join("top.gguf")]);
        expect_quiet(&mut rx).await;
    }

    #[tokio::test]
    async fn rewrite_emits_again_and_removal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (w, mut rx) = start(&root).await;
        let p = root.join("m.gguf");
        std::fs::write(&p, b"first").unwrap();
        expect(&mut rx, "settled", |e| settled_path(e) == Some(&p)).await;
        // Re-reading or a rescan does not emit again.
        let _ = std::fs::read(&p).unwrap();
        w.rescan();
        expect_quiet(&mut rx).await;
        // Re-writing does.
        std::fs::write(&p, b"second version").unwrap();
        let ev = expect(&mut rx, "settled again", |e| settled_path(e) == Some(&p)).await;
        let WatchEvent::Settled(f) = ev else { unreachable!() };
        assert_eq!(f.size, 14);
        std::fs::remove_file(&p).unwrap();
        let ev = expect(&mut rx, "removed", |e| matches!(e, WatchEvent::Removed(_))).await;
        let WatchEvent::Removed(r) = ev else { unreachable!() };
        assert_eq!(r, p);
        // Removing a folder reports the emitted files under it.
        std::fs::create_dir(root.join("d")).unwrap();
        let q = root.join("d/q.gguf");
        std::fs::write(&q, b"q").unwrap();
        expect(&mut rx, "settled q", |e| settled_path(e) == Some(&q)).await;
        std::fs::remove_dir_all(root.join("d")).unwrap();
        let ev = expect(&mut rx, "removed q", |e| matches!(e, WatchEvent::Removed(_))).await;
        assert!(matches!(ev, WatchEvent::Removed(r) if r == q));
    }

    #[tokio::test]
    async fn missing_folder_is_created_and_a_file_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet");
        let (w, _rx) = Watcher::start(std::slice::from_ref(&missing), SETTLE).await.unwrap();
        assert!(missing.is_dir());
        assert_eq!(w.folders(), &[std::fs::canonicalize(&missing).unwrap()]);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = Watcher::start(std::slice::from_ref(&file), SETTLE).await.unwrap_err();
        assert!(matches!(e, WatchStartError::NotAFolder(p) if p == file));
    }

    #[tokio::test]
    async fn overflow_falls_back_to_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let mut options = WatchOptions::new(SETTLE);
        options.raw_capacity = 1;
        let (_w, mut rx) =
            Watcher::start_with(std::slice::from_ref(&root), options, CancellationToken::new()).await.unwrap();
        // Many files at once overflow a queue of one; every file must still be emitted.
        let n = 40;
        for i in 0..n {
            std::fs::write(root.join(format!("f{i:02}.gguf")), b"x").unwrap();
        }
        let mut seen = HashSet::new();
        let mut overflows = 0;
        let deadline = Instant::now() + Duration::from_secs(15);
        while seen.len() < n && Instant::now() < deadline {
            match next(&mut rx, Duration::from_secs(5)).await {
                Some(WatchEvent::Settled(f)) => assert!(seen.insert(f.path), "emitted twice"),
                Some(WatchEvent::Error(WatchError::Overflow)) => overflows += 1,
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), n);
        assert!(overflows >= 1, "the queue of one never overflowed: the test did not exercise the rescan");
    }

    #[tokio::test]
    async fn cancellation_and_drop_stop_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let (w, mut rx) =
            Watcher::start_with(&[dir.path().to_path_buf()], WatchOptions::new(SETTLE), cancel.clone()).await.unwrap();
        cancel.cancel();
        // The channel closes once the settle thread has stopped.
        assert!(next(&mut rx, Duration::from_secs(5)).await.is_none());
        assert!(rx.is_closed());
        w.shutdown().await;
        let (w, mut rx) = start(dir.path()).await;
        drop(w);
        assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().is_none());
    }
}
