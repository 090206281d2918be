//! The daemon: `driftwatch serve`. Watches folders, takes in every checkpoint that settles
//! there, evaluates it (suite × K seeded samples from the engine, scored by the judges), keeps
//! every result in the store, and publishes events.
//!
//! Data flows one way: file settles → checkpoint record → run queued → engine generates in
//! batches → judges score → store persists each sample → stats summarise → event published.
//! Runs execute one after another; the engine batches inside a run. A run interrupted by a
//! crash or a signal is resumed at the next start: samples already stored are kept, and the
//! ones left are generated with the same seeds, giving exactly the uninterrupted run's results.

mod evaluation;
mod intake;
pub mod judges;
mod oneshot;
mod queue;
mod runner;

pub use oneshot::{
    evaluate, Baseline, EvalError, EvalNotice, EvalOutcome, EvalRequest, EvaluatedRun, ExecutedRun, NoticeSink,
};

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::checkpoint;
use crate::config::Config;
use crate::engine::{self, Engine, EngineParams};
use crate::events::{EventBus, EventKind};
use crate::judge::JudgeRuntime;
use crate::store::{Store, StoreError};
use crate::suite;
use evaluation::{Evaluation, Settings};
use judges::Judging;
use runner::Runner;

/// Why the daemon cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store cannot be opened or written.
    #[error("store: {0}")]
    Store(StoreError),
    /// The base model is unusable.
    #[error("base model: {0}")]
    BaseModel(checkpoint::CheckpointError),
    /// A suite cannot be loaded.
    #[error("{0}")]
    Suite(suite::SuiteError),
    /// No suite is configured.
    #[error("no prompt suite is configured: add a [[suites]] entry to the config")]
    NoSuite,
    /// The judges cannot be set up.
    #[error("{0}")]
    Judges(judges::JudgeSetError),
    /// The wasm runtime cannot start.
    #[error("judge runtime: {0}")]
    Runtime(crate::judge::LoadError),
    /// The engine cannot start.
    #[error("engine: {0}")]
    Engine(engine::EngineError),
    /// The watcher cannot start.
    #[error("watcher: {0}")]
    Watch(crate::watch::WatchStartError),
    /// Another process is evaluating with the same data folder.
    #[error("{0}")]
    Busy(String),
    /// The store cannot be written (a full disk, an I/O error, a read-only file system).
    #[error(
        "the store cannot be written: {0}. driftwatch stopped: nothing stored is lost, and the run resumes where it stopped once the store can be written again (free disk space, or check the data folder)"
    )]
    StoreUnwritable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for DaemonError {
    /// A storage fault is said as one (with what to do about it); any other store error as is.
    fn from(e: StoreError) -> Self {
        if e.is_storage_fault() {
            DaemonError::StoreUnwritable(e.to_string())
        } else {
            DaemonError::Store(e)
        }
    }
}

error_from!(checkpoint::CheckpointError => DaemonError::BaseModel, suite::SuiteError => DaemonError::Suite, judges::JudgeSetError => DaemonError::Judges, crate::judge::LoadError => DaemonError::Runtime, engine::EngineError => DaemonError::Engine, crate::watch::WatchStartError => DaemonError::Watch);

/// What the daemon's parts share: the evaluation, the store with its events and metrics, the
/// run queue, the judges, and the runner (which holds the engine). Each part takes the
/// narrowest piece it needs: the runner only [`Runner`].
pub(crate) struct Ctx {
    /// The configuration, prompts and base model.
    pub eval: Arc<Evaluation>,
    pub store: Arc<Store>,
    pub bus: EventBus,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The queued runs.
    pub queue: queue::RunQueue,
    /// The judges serving now, and the plugins folder's registry.
    pub judging: Arc<Judging>,
    /// What executes a run.
    pub runner: Arc<Runner>,
    /// True for the daemon (it watches folders), false for a one-shot evaluation.
    pub watching: bool,
}

impl Ctx {
    /// The settings of a run under the judges serving now (one snapshot of them).
    pub fn settings(&self) -> Settings<'_> {
        self.eval.under(self.judging.identities())
    }
}

/// Runs synchronous work with a shared part of the daemon — SQLite calls, file reads — on the
/// blocking pool, never on an async worker thread.
pub(crate) async fn blocking<T: Send + Sync + 'static, R: Send + 'static>(
    part: &Arc<T>,
    f: impl FnOnce(&T) -> R + Send + 'static,
) -> Result<R, StoreError> {
    let part = Arc::clone(part);
    tokio::task::spawn_blocking(move || f(&part)).await.map_err(|e| StoreError::Task(e.to_string()))
}

/// What the HTTP API may ask of the daemon.
struct DaemonControl {
    ctx: std::sync::Weak<Ctx>,
}

impl crate::api::Control for DaemonControl {
    fn evaluate(
        &self,
        target: crate::api::EvaluateTarget,
    ) -> futures::future::BoxFuture<'static, Result<Value, crate::api::ApiError>> {
        use crate::api::ApiError;
        let ctx = self.ctx.upgrade();
        Box::pin(async move {
            let ctx = ctx.ok_or_else(|| ApiError::Unavailable("the daemon is stopping".into()))?;
            if target.served_model.is_some() && ctx.eval.remote.is_none() {
                return Err(ApiError::Unprocessable(
                    "`served_model` names a model on inference servers: it needs engine.backend = \"openai\"".into(),
                ));
            }
            let served = target.served_model.map(|m| crate::engine::remote::ServedAs { model: Some(m), lora: None });
            let taken = match target.path {
                None => intake::take_served(&ctx, served.unwrap_or_default()).await,
                Some(path) => {
                    if !path.is_absolute() {
                        return Err(ApiError::BadRequest(format!("give an absolute path, not {}", path.display())));
                    }
                    let c = &ctx.eval.config;
                    let roots: Vec<PathBuf> = c.daemon.watch.iter().chain(&c.api.evaluate_roots).cloned().collect();
                    let path = evaluable_path(&path, &roots)?;
                    let shown = path.display().to_string();
                    intake::take_path(&ctx, &path, served).await.map(|t| match t {
                        intake::Taken::Rejected { reason } => {
                            intake::Taken::Rejected { reason: format!("{shown}: {reason}") }
                        }
                        t => t,
                    })
                }
            };
            match taken {
                Ok(t @ intake::Taken::Accepted { .. }) => Ok(serde_json::to_value(t).unwrap_or_default()),
                Ok(intake::Taken::Rejected { reason }) => Err(ApiError::Unprocessable(reason)),
                Err(e) => Err(ApiError::Store(e)),
            }
        })
    }

    fn plugins(&self) -> Value {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.judging.describe(),
            None => Value::Array(Vec::new()),
        }
    }
}

/// The file `POST /v1/evaluate` may take for `path`: one inside a watched folder or an
/// `api.evaluate_roots` folder, after `..` and symlinks are resolved, so that a client cannot
/// make the daemon open (and describe) any file the daemon can read. A path outside is
/// refused with one answer whether or not a file is there, and nothing of it is read.
pub(crate) fn evaluable_path(path: &std::path::Path, roots: &[PathBuf]) -> Result<PathBuf, crate::api::ApiError> {
    use crate::api::ApiError;
    let canonical: Vec<PathBuf> = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    let outside = || {
        ApiError::Forbidden(format!(
            "{} is not inside a folder this daemon evaluates from (the watched folders and api.evaluate_roots)",
            path.display()
        ))
    };
    // Lexically first (`..` folded), so a path outside is refused without touching it.
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            std::path::Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    if !roots.iter().chain(&canonical).any(|r| lexical.starts_with(r)) {
        return Err(outside());
    }
    // Then for real: a symlink inside a root may point anywhere.
    let real =
        std::fs::canonicalize(&lexical).map_err(|_| ApiError::NotFound(format!("no file at {}", path.display())))?;
    if !canonical.iter().any(|r| real.starts_with(r)) {
        return Err(outside());
    }
    if !real.is_file() {
        return Err(ApiError::NotFound(format!("no file at {}", path.display())));
    }
    Ok(real)
}

/// The seed of sample `k` of `prompt_id` in repeat `repeat`: independent of every other job,
/// so a resumed run draws exactly the seeds the uninterrupted run would have.
pub fn sample_seed(base_seed: u64, repeat: u32, prompt_id: &str, k: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(base_seed.to_le_bytes());
    h.update(repeat.to_le_bytes());
    h.update(prompt_id.as_bytes());
    h.update(k.to_le_bytes());
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// The engine settings of a configuration: every `[engine]` key reaches the engine.
pub(crate) fn engine_config(c: &Config) -> EngineParams {
    EngineParams {
        threads: c.engine.threads.unwrap_or(0) as usize,
        parallel: c.engine.parallel as usize,
        batch_size: (c.engine.batch_size as usize).max(c.engine.parallel as usize),
        // -1 offloads every layer (llama.cpp takes any count above the model's layers as all).
        gpu_layers: u32::try_from(c.engine.effective_gpu_layers()).unwrap_or(crate::engine::ALL_LAYERS),
        n_ctx: c.engine.n_ctx,
        max_prompt_tokens: Some(c.engine.max_prompt_tokens),
        ..EngineParams::default()
    }
}

/// Starts the configured backend: the embedded engine, or the `openai` backend once every
/// endpoint has said what it serves (recorded in `eval`, for the runs' settings and provenance).
pub(crate) async fn start_engine(eval: &mut Evaluation) -> Result<Engine, DaemonError> {
    use crate::config::BackendKind;
    use crate::engine::remote::{EndpointParams, Remote, RemoteParams};
    let e = &eval.config.engine;
    match e.backend {
        BackendKind::Embedded => Ok(Engine::start(eval.engine.clone())?),
        BackendKind::Openai => {
            let mut endpoints = Vec::new();
            for (i, p) in e.endpoints.iter().enumerate() {
                let api_key = match &p.api_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        DaemonError::Other(format!(
                            "engine.endpoints[{i}].api_key_env names {var}, which is not set (or not UTF-8)"
                        ))
                    })?),
                    None => None,
                };
                endpoints.push(EndpointParams {
                    url: p.url.clone(),
                    served_model: p.served_model.clone(),
                    api_key,
                    max_concurrency: p.max_concurrency as usize,
                    timeout: std::time::Duration::from_millis(p.timeout_ms),
                });
            }
            let params = RemoteParams {
                api: e.api,
                endpoints,
                max_attempts: e.max_attempts,
                backoff: crate::engine::remote::DEFAULT_BACKOFF,
            };
            let (remote, servers) = Remote::connect(params).await?;
            for s in &servers {
                tracing::info!(url = %s.url, server = %s.server, version = ?s.version, served_model = %s.served_model, "inference server ready");
            }
            let engine = Engine::with_backend(Arc::new(remote), eval.engine.clone());
            eval.remote = Some(evaluation::RemoteSetup { api: e.api, servers });
            Ok(engine)
        }
    }
}

/// Watches `plugins.dir`: every new or changed `.wasm` there is validated and loaded, and
/// reported as `plugin.loaded` or `plugin.failed` (a broken update keeps the previous version).
/// Judges that name a plugin of this folder use its newest good version from their next run.
async fn scan_plugins_dir(
    runtime: &Arc<JudgeRuntime>,
    dir: PathBuf,
    bus: &EventBus,
) -> Result<crate::judge::PluginRegistry, DaemonError> {
    use crate::judge::{PluginRegistry, RegistryConfig};
    let registry = PluginRegistry::new(Arc::clone(runtime), RegistryConfig::new(&dir));
    let scan = registry.clone();
    let initial = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Other(format!("plugins.dir {}: {e}", dir.display())))?;
        scan.scan().map_err(|e| DaemonError::Other(format!("plugins.dir: {e}")))
    })
    .await
    .map_err(|e| DaemonError::Other(e.to_string()))??;
    for ev in initial {
        if let Some(k) = plugin_event(ev) {
            bus.emit(k).await;
        }
    }
    Ok(registry)
}

/// The event a change in the plugins folder publishes (a removal is only logged).
fn plugin_event(ev: crate::judge::PluginEvent) -> Option<EventKind> {
    use crate::judge::PluginEvent;
    match ev {
        PluginEvent::Loaded { name, path, sha256, info_version, .. } => {
            Some(EventKind::PluginLoaded { name, version: info_version, path: path.display().to_string(), sha256 })
        }
        PluginEvent::Failed { name, path, error, previous_kept } => Some(EventKind::PluginFailed {
            plugin: name,
            reason: format!(
                "{}: {error}{}",
                path.display(),
                if previous_kept { " (the previous version keeps serving)" } else { "" }
            ),
        }),
        PluginEvent::Removed { name, .. } => {
            tracing::info!(plugin = %name, "plugin removed from the plugins folder");
            None
        }
    }
}

/// Watches the plugins folder (scanned when the context was built): a new or changed
/// component is compiled as it settles, and serves from the next run on.
fn spawn_plugin_watch(
    ctx: &Arc<Ctx>,
    registry: &crate::judge::PluginRegistry,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<Result<(), DaemonError>>,
) -> Result<(), DaemonError> {
    let mut rx = registry.subscribe();
    let watcher = registry.watch().map_err(|e| DaemonError::Other(format!("plugins.dir: {e}")))?;
    let bus = ctx.bus.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if let Some(k) = plugin_event(ev) {
                            tracing::info!(event = k.type_name(), "plugins folder");
                            bus.emit(k).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            }
        }
        Ok(())
    });
    Ok(())
}

impl Ctx {
    /// Everything a daemon or a one-shot evaluation needs, built from the configuration: the
    /// store (interrupted runs queued again), the event bus, the suites, the base model, the
    /// engine and the judges. The caller holds the data folder's [`DataDirLock`].
    pub(crate) async fn build(config: Config, watching: bool) -> Result<Arc<Ctx>, DaemonError> {
        let data_dir = config.daemon.data_dir.clone();
        let (store, requeued) = {
            let d = data_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let store = Store::open_in_dir(&d)?;
                let requeued = store.requeue_interrupted_runs()?;
                Ok((Arc::new(store), requeued))
            })
            .await
            .map_err(|e| DaemonError::Other(e.to_string()))??
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let bus = EventBus::new(Arc::clone(&store)).with_metrics(Arc::clone(&metrics));
        if !requeued.is_empty() {
            tracing::info!(runs = ?requeued, "resuming runs interrupted by a stop or a crash");
        }

        let mut evaluation = Evaluation::load(config).await?;
        let engine = start_engine(&mut evaluation).await?;
        let eval = Arc::new(evaluation);
        let runtime = JudgeRuntime::shared()?;
        // The daemon keeps the plugins folder compiled and watched; a one-shot evaluation
        // loads only the plugins its judges name (from the folder's files).
        let registry = match eval.config.plugins.dir.clone() {
            Some(dir) if watching => Some(scan_plugins_dir(&runtime, dir, &bus).await?),
            _ => None,
        };
        let judging = {
            let (e, st) = (Arc::clone(&eval), Arc::clone(&store));
            tokio::task::spawn_blocking(move || -> Result<Judging, DaemonError> {
                let judging = Judging::start(&e.config, runtime, registry)?;
                judging.record_calibrations(&st)?;
                Ok(judging)
            })
            .await
            .map_err(|e| DaemonError::Other(e.to_string()))??
        };
        for id in judging.identities() {
            bus.emit(EventKind::PluginLoaded {
                name: id.name,
                version: id.version,
                path: String::new(),
                sha256: id.wasm_sha256,
            })
            .await;
        }
        let judging = Arc::new(judging);
        let (removed, _) = broadcast::channel(64);
        let runner = Arc::new(Runner {
            eval: Arc::clone(&eval),
            store: Arc::clone(&store),
            bus: bus.clone(),
            metrics: Arc::clone(&metrics),
            judging: Arc::clone(&judging),
            engine,
            removed,
        });
        Ok(Arc::new(Ctx {
            queue: queue::RunQueue::new(Arc::clone(&store), bus.clone(), Arc::clone(&metrics)),
            eval,
            store,
            bus,
            metrics,
            judging,
            runner,
            watching,
        }))
    }

    /// What one evaluation under the current settings is, in words.
    pub fn plan_summary(&self) -> String {
        self.settings().plan_summary()
    }
}

/// An exclusive lock on a data folder: one daemon or one `driftwatch eval` at a time runs
/// evaluations on a store (readers such as `status` and `report` need none). Released when
/// dropped, or by the kernel when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// The lock file's name inside the data folder.
pub const LOCK_FILE_NAME: &str = "driftwatch.lock";

impl DataDirLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(data_dir: &std::path::Path) -> Result<DataDirLock, DaemonError> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)
            .map_err(|e| DaemonError::Other(format!("cannot create the data folder {}: {e}", data_dir.display())))?;
        let path = data_dir.join(LOCK_FILE_NAME);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                    DaemonError::Other(format!(
                        "the data folder {} is not writable ({e}): driftwatch keeps its store there; make it writable or set daemon.data_dir to another folder",
                        data_dir.display()
                    ))
                }
                _ => DaemonError::Other(format!("cannot open {}: {e}", path.display())),
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DaemonError::Busy(format!(
                    "another driftwatch{} is evaluating with the data folder {}; stop it first, or hand it the checkpoint (drop it into a watched folder, or POST /v1/evaluate)",
                    if holder.is_empty() { String::new() } else { format!(" ({holder})") },
                    data_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DaemonError::Other(format!("cannot lock {}: {e}", path.display())))
            }
        }
        let who = format!("pid {}, `{}`", std::process::id(), std::env::args().collect::<Vec<_>>().join(" "));
        let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(who.as_bytes()));
        Ok(DataDirLock { _file: file })
    }
}

/// Runs the daemon until `shutdown` is cancelled (SIGTERM/SIGINT in the binary). In-flight
/// work is abandoned safely: what was stored stays, and the run resumes at the next start.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let data_dir = config.daemon.data_dir.clone();
    // Refuse a reachable API without a token before doing any work.
    if config.api.enabled {
        crate::api::check_listen(config.api.listen, config.api.token.as_deref())
            .map_err(|e| DaemonError::Other(format!("api: {e}")))?;
    }
    let _lock = DataDirLock::acquire(&data_dir)?;
    let ctx = Ctx::build(config, true).await?;
    tracing::info!("each evaluation: {}", ctx.plan_summary());

    // The base model first: every later checkpoint is compared with its run.
    intake::take_base(&ctx).await?;

    // Each task ends with Ok, or with the reason the daemon cannot go on.
    let mut tasks: tokio::task::JoinSet<Result<(), DaemonError>> = tokio::task::JoinSet::new();
    if let Some(registry) = ctx.judging.registry() {
        spawn_plugin_watch(&ctx, registry, &shutdown, &mut tasks)?;
    }
    let config = &ctx.eval.config;
    if config.api.enabled {
        let listener = crate::api::bind(config.api.listen, config.api.token.as_deref())
            .await
            .map_err(|e| DaemonError::Other(format!("api: {e}")))?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let state = crate::api::ApiState {
            store: Arc::clone(&ctx.store),
            bus: ctx.bus.clone(),
            metrics: Arc::clone(&ctx.metrics),
            control: Arc::new(DaemonControl { ctx: Arc::downgrade(&ctx) }),
            token: config.api.token.clone(),
        };
        let api_stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::api::serve(state, listener, api_stop).await {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
            Ok(())
        });
        tracing::info!(listen = %addr, "HTTP API listening (events: GET /v1/events; `driftwatch subscribe`)");
        if !config.api.webhooks.is_empty() {
            let handle =
                crate::webhooks::spawn_webhooks(&config.api, Arc::clone(&ctx.store), ctx.bus.clone(), shutdown.clone());
            tasks.spawn(async move {
                let _ = handle.await;
                Ok(())
            });
        }
    }
    let intake_ctx = Arc::clone(&ctx);
    let intake_stop = shutdown.clone();
    let watcher = crate::watch::Watcher::start_with(
        &config.daemon.watch,
        crate::watch::WatchOptions::new(std::time::Duration::from_millis(config.daemon.settle_ms)),
        shutdown.child_token(),
    )
    .await?;
    tasks.spawn(async move { intake::watch_loop(intake_ctx, watcher, intake_stop).await });
    let runner_ctx = Arc::clone(&ctx);
    let runner_stop = shutdown.clone();
    tasks.spawn(async move { queue::run_loop(runner_ctx, runner_stop).await });

    tracing::info!(
        watch = ?config.daemon.watch, data_dir = %data_dir.display(),
        "driftwatch is running: drop GGUF models or LoRA adapters into a watched folder"
    );
    let mut fatal = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "driftwatch cannot go on; stopping");
                fatal.get_or_insert(e);
                shutdown.cancel();
            }
            Err(e) => {
                tracing::error!(error = %e, "a daemon task ended abnormally");
                fatal.get_or_insert(DaemonError::Other(format!("a daemon task ended abnormally: {e}")));
                shutdown.cancel();
            }
        }
    }
    tracing::info!("driftwatch stopped");
    fatal.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `[engine]` key reaches the engine (`n_ctx` and `max_prompt_tokens` were
    /// validated, documented and hashed, then dropped here).
    #[test]
    fn every_engine_key_reaches_the_engine() {
        let text = "[engine]\nthreads = 3\nparallel = 4\nn_ctx = 4096\nmax_prompt_tokens = 300\nbatch_size = 128\ngpu_layers = 5\n";
        let env = |k: &str| (k == "HOME").then(|| "/h".to_string());
        let c = Config::from_toml_str(text, "t.toml", std::path::Path::new("/c"), &env).unwrap();
        let e = engine_config(&c);
        assert_eq!(
            (e.threads, e.parallel, e.n_ctx, e.max_prompt_tokens, e.batch_size, e.gpu_layers),
            (3, 4, Some(4096), Some(300), 128, 5)
        );
        let c = Config::from_toml_str("", "t.toml", std::path::Path::new("/c"), &env).unwrap();
        let e = engine_config(&c);
        assert_eq!((e.n_ctx, e.max_prompt_tokens), (None, Some(512)));
    }
}

#[cfg(test)]
mod evaluate_path_tests {
    use super::evaluable_path;
    use crate::api::ApiError;

    /// `POST /v1/evaluate` takes files inside the allowed folders only, after `..` and
    /// symlinks are resolved (it opened any file the daemon could read).
    #[test]
    fn only_files_inside_the_allowed_folders_after_resolving_links_and_dots() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("watched");
        let other = dir.path().join("other");
        std::fs::create_dir_all(watched.join("sub")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(watched.join("sub/ok.gguf"), b"x").unwrap();
        std::fs::write(other.join("secret.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(other.join("secret.gguf"), watched.join("link.gguf")).unwrap();
        std::os::unix::fs::symlink(&other, watched.join("dirlink")).unwrap();
        let roots = vec![watched.clone()];
        let real = std::fs::canonicalize(watched.join("sub/ok.gguf")).unwrap();
        assert_eq!(evaluable_path(&watched.join("sub/ok.gguf"), &roots).unwrap(), real);
        assert_eq!(evaluable_path(&watched.join("sub/../sub/./ok.gguf"), &roots).unwrap(), real);
        let forbidden = |p: std::path::PathBuf| matches!(evaluable_path(&p, &roots), Err(ApiError::Forbidden(_)));
        assert!(forbidden(other.join("secret.gguf")));
        assert!(forbidden(watched.join("../other/secret.gguf")));
        assert!(forbidden(watched.join("link.gguf")), "a symlink out of the folder");
        assert!(forbidden(watched.join("dirlink/secret.gguf")), "a folder symlink out of the folder");
        assert!(forbidden("/etc/passwd".into()));
        assert!(forbidden("/proc/self/environ".into()));
        // Outside and missing gets the same answer as outside and present.
        assert!(forbidden(other.join("missing.gguf")));
        assert!(matches!(evaluable_path(&watched.join("missing.gguf"), &roots), Err(ApiError::NotFound(_))));
        assert!(matches!(evaluable_path(&watched.join("sub"), &roots), Err(ApiError::NotFound(_))));
        // An evaluate root is a folder like a watched one.
        assert!(evaluable_path(&other.join("secret.gguf"), &[watched, other.clone()]).is_ok());
    }
}
