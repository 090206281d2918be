//! The sandbox that runs judge components: one `wasmtime::Engine` per process with an epoch
//! ticker, a cache of compiled components keyed by sha256, deny-by-default WASI, a memory
//! limiter, per-call deadlines, and the translation of every failure into a [`JudgeError`].
//!
//! What a plugin can reach: the `driftwatch:judge/host` imports (`generate`, routed to the
//! plugin's [`JudgeModel`], and `log`). WASI is linked only so that Rust's `std` works, and
//! grants nothing: no preopened directories, no environment, no arguments, stdin closed,
//! stdout/stderr discarded, no sockets or name lookup, wall and monotonic clocks frozen at
//! zero, sleeping (`subscribe-duration`/`subscribe-instant`) traps, and "random" bytes are a
//! fixed deterministic stream (so a plugin's output can depend only on its inputs).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_2::driftwatch::judge::host as wit_host;
use super::bindings::{self, wit, Contract, Instance, Pre};
use super::error::{JudgeError, LoadError, PluginErrorKind};
use super::settings::PluginSettings;
use super::types::{JudgeInfo, JudgeVerdict, Sample};
use super::{JudgeGenerateRequest, JudgeModel, CONTRACT_VERSION};

/// Epoch tick: the resolution of call deadlines.
const TICK: Duration = Duration::from_millis(2);
/// Longest log message kept from a plugin (longer ones are cut).
const MAX_LOG_BYTES: usize = 4096;
/// Log messages accepted from a plugin per call (the rest are dropped).
const MAX_LOGS_PER_CALL: u32 = 256;
/// Longest accepted verdict label.
const MAX_LABEL_BYTES: usize = 256;
/// Longest accepted verdict rationale.
const MAX_RATIONALE_BYTES: usize = 64 * 1024;
/// Longest accepted judge-model prompt.
const MAX_PROMPT_BYTES: usize = 1 << 20;
/// Judge-model requests a plugin may make per sample of a call (plus the same again per
/// call for `configure`/`info`): time in the judge model is not under the call deadline, so
/// the number of requests is bounded instead.
pub const MAX_GENERATE_CALLS_PER_SAMPLE: u32 = 4;
/// Most stop strings per judge-model request.
const MAX_STOP_STRINGS: usize = 16;
/// The WASI clock interface whose sleep functions are replaced by traps.
const WASI_MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The process-wide judge runtime: the `wasmtime::Engine`, its epoch ticker, the linker
/// with the sandbox's imports, and the compiled-component cache.
///
/// Use [`JudgeRuntime::shared`] (one per process) unless a test needs isolation.
pub struct JudgeRuntime {
    engine: Engine,
    linker: Linker<SandboxState>,
    cache: Mutex<HashMap<[u8; 32], Pre>>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for JudgeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JudgeRuntime").field("cached_components", &self.cache.lock().len()).finish()
    }
}

impl Drop for JudgeRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

static SHARED: OnceLock<Arc<JudgeRuntime>> = OnceLock::new();

impl JudgeRuntime {
    /// The process-wide runtime, created on first use.
    pub fn shared() -> Result<Arc<JudgeRuntime>, LoadError> {
        if let Some(rt) = SHARED.get() {
            return Ok(rt.clone());
        }
        let rt = JudgeRuntime::new()?;
        Ok(SHARED.get_or_init(|| rt).clone())
    }

    /// A new runtime with its own engine and ticker thread. Prefer [`JudgeRuntime::shared`].
    pub fn new() -> Result<Arc<JudgeRuntime>, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker = build_linker(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("judge-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker thread: {e}")))?;

        Ok(Arc::new(JudgeRuntime { engine, linker, cache: Mutex::new(HashMap::new()), ticker_stop }))
    }

    /// Loads a plugin from a `.wasm` file (see [`JudgeRuntime::load`]).
    pub fn load_file(
        self: &Arc<Self>,
        name: &str,
        path: &std::path::Path,
        settings: PluginSettings,
        model: Option<Arc<dyn JudgeModel>>,
    ) -> Result<JudgePlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|cause| LoadError::Read { path: path.to_owned(), cause })?;
        self.load(name, &bytes, settings, model)
    }

    /// Validates a component (contract version, exports, imports), instantiates it in the
    /// sandbox, reads its `info` and hands it its configuration.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        wasm: &[u8],
        settings: PluginSettings,
        model: Option<Arc<dyn JudgeModel>>,
    ) -> Result<JudgePlugin, LoadError> {
        settings.validate()?;
        let (pre, sha256) = self.compile(wasm)?;
        self.instantiate_configured(name, pre, sha256, settings, model)
    }

    /// A plugin from a compiled component: instantiated in the sandbox, its `info` read, and
    /// configured.
    fn instantiate_configured(
        self: &Arc<Self>,
        name: &str,
        pre: Pre,
        sha256: [u8; 32],
        settings: PluginSettings,
        model: Option<Arc<dyn JudgeModel>>,
    ) -> Result<JudgePlugin, LoadError> {
        let mut plugin = JudgePlugin {
            name: name.to_owned(),
            sha256,
            runtime: self.clone(),
            pre,
            config_text: settings.config_text(),
            settings,
            model,
            info: JudgeInfo { name: String::new(), version: String::new(), measures: String::new(), role: None },
            live: Mutex::new(None),
        };
        let mut live = plugin.instantiate().map_err(LoadError::Instantiate)?;
        plugin.info = plugin.call(&mut live, 0, |b, s| b.info(s)).map_err(|e| LoadError::Info(e.to_string()))?;
        plugin.configure(&mut live).map_err(|e| match e {
            ConfigureError::Rejected(m) => LoadError::Configure(m),
            ConfigureError::Failed(e) => LoadError::ConfigureFailed(e),
        })?;
        *plugin.live.lock() = Some(live);
        Ok(plugin)
    }

    /// Compiles (or takes from the cache) and validates a component.
    fn compile(&self, wasm: &[u8]) -> Result<(Pre, [u8; 32]), LoadError> {
        let sha256: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(pre) = self.cache.lock().get(&sha256) {
            return Ok((pre.clone(), sha256));
        }
        if !wasmparser_is_component(wasm) {
            return Err(LoadError::InvalidComponent(
                "the file is not a WebAssembly component (build the plugin with `--target wasm32-wasip2`)".into(),
            ));
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::InvalidComponent(format!("{e:#}")))?;
        let contract = check_contract(&self.engine, &component)?;
        check_imports(&self.engine, &component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let pre = Pre::new(contract, pre).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        self.cache.lock().insert(sha256, pre.clone());
        Ok((pre, sha256))
    }

    /// Number of compiled components in the cache.
    pub fn cached_components(&self) -> usize {
        self.cache.lock().len()
    }
}

/// True when the bytes start with the component-model preamble (not a core module).
fn wasmparser_is_component(wasm: &[u8]) -> bool {
    // magic `\0asm`, then version 0x0d and layer 0x01 for components.
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[6..8] == [0x01, 0x00]
}

/// Checks the component's `driftwatch:judge/...` exports and imports for a contract version
/// this daemon serves ([`bindings::SUPPORTED_CONTRACTS`]), and says which.
fn check_contract(engine: &Engine, component: &Component) -> Result<Contract, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let judge_export = exports.iter().find(|n| n.starts_with("driftwatch:judge/judge"));
    let Some(judge_export) = judge_export else {
        return Err(LoadError::NotAJudge(if exports.is_empty() { "none".into() } else { exports.join(", ") }));
    };
    let version = |name: &str| name.split_once('@').map(|(_, v)| v.to_owned()).unwrap_or("unversioned".into());
    let found = version(judge_export);
    let incompatible = |found: String| LoadError::IncompatibleContract { found, supported: CONTRACT_VERSION };
    let contract = Contract::of(&found).ok_or_else(|| incompatible(found.clone()))?;
    for name in imports.iter().filter(|n| n.starts_with("driftwatch:judge/")) {
        let v = version(name);
        if Contract::of(&v) != Some(contract) {
            return Err(incompatible(v));
        }
    }
    Ok(contract)
}

/// The interfaces a judge component may import: the judge contract, and the WASI interfaces
/// that Rust's `std` uses (command-line environment and stdio, streams, clocks, the
/// filesystem, random bytes), each granting nothing. Anything else — `wasi:sockets`,
/// `wasi:http`, an interface of another host — is refused when the component is loaded,
/// naming the import, and is not even linked.
pub const ALLOWED_IMPORTS: &[&str] =
    &["driftwatch:judge/", "wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:filesystem/", "wasi:random/"];

/// Refuses a component whose imports go beyond [`ALLOWED_IMPORTS`].
fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let forbidden: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_owned())
        .filter(|n| !ALLOWED_IMPORTS.iter().any(|a| n.starts_with(a)))
        .collect();
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(LoadError::ForbiddenImport(forbidden.join(", ")))
    }
}

/// The table that WASI's stream and pollable resources live in.
struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Links the WASI interfaces of [`ALLOWED_IMPORTS`] (synchronous host calls) and no others:
/// `wasmtime_wasi::p2::add_to_linker_sync` would also link `wasi:sockets`, whose synchronous
/// shims start a tokio runtime and crash a caller already inside one.
fn add_wasi_to_linker(l: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync};
    use wasmtime_wasi::random::WasiRandom;
    clocks::wall_clock::add_to_linker::<SandboxState, WasiClocks>(l, SandboxState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<SandboxState, WasiClocks>(l, SandboxState::clocks)?;
    filesystem::preopens::add_to_linker::<SandboxState, WasiFilesystem>(l, SandboxState::filesystem)?;
    sync::filesystem::types::add_to_linker::<SandboxState, WasiFilesystem>(l, SandboxState::filesystem)?;
    random::random::add_to_linker::<SandboxState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<SandboxState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<SandboxState, WasiRandom>(l, |t| t.wasi.random())?;
    cli::exit::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::environment::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::stdin::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::stdout::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::stderr::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::terminal_input::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::terminal_output::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::terminal_stdin::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::terminal_stdout::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    cli::terminal_stderr::add_to_linker::<SandboxState, WasiCli>(l, SandboxState::cli)?;
    sync::io::error::add_to_linker::<SandboxState, HasTable>(l, |t| &mut t.table)?;
    sync::io::poll::add_to_linker::<SandboxState, HasTable>(l, |t| &mut t.table)?;
    sync::io::streams::add_to_linker::<SandboxState, HasTable>(l, |t| &mut t.table)?;
    Ok(())
}

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<SandboxState>> {
    let mut linker = Linker::new(engine);
    add_wasi_to_linker(&mut linker)?;
    bindings::add_to_linker(&mut linker)?;
    // A plugin must not be able to block the calling thread in host code, where the epoch
    // deadline cannot reach it: sleeping is refused.
    linker.allow_shadowing(true);
    let mut clock = linker.instance(WASI_MONOTONIC_CLOCK)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_new(name, |_, _, _, _| {
            Err(wasmtime::Error::msg("sleeping and timers are not available to judge plugins"))
        })?;
    }
    Ok(linker)
}

/// The deadline of the current call passed (raised from the epoch callback).
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// The plugin tried to grow its memory past the cap (raised from the limiter).
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {desired} bytes)")]
struct MemoryCapExceeded {
    cap: usize,
    desired: usize,
}

/// Caps the total linear memory of one plugin instance.
struct Limits {
    cap: usize,
    total: usize,
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.total.saturating_add(grow) > self.cap {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded { cap: self.cap, desired: self.total + grow }));
        }
        self.total += grow;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Per-instance store data: the empty WASI context, limits, and the plugin's capabilities.
pub(crate) struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    plugin: Arc<str>,
    model: Option<Arc<dyn JudgeModel>>,
    max_generate_tokens: u32,
    deadline: Instant,
    last_panic: Option<String>,
    logs_this_call: u32,
    generate_calls: u32,
    generate_limit: u32,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for SandboxState {}

impl wit_host::Host for SandboxState {
    fn generate(&mut self, request: wit::GenerateRequest) -> Result<String, String> {
        let plugin = self.plugin.clone();
        let Some(model) = self.model.clone() else {
            return Err(format!("no judge model is configured for plugin {plugin}"));
        };
        self.generate_calls += 1;
        if self.generate_calls > self.generate_limit {
            return Err(format!(
                "generate: plugin {plugin} made more than {} judge-model requests in one call (at most {MAX_GENERATE_CALLS_PER_SAMPLE} per sample)",
                self.generate_limit
            ));
        }
        if request.max_tokens == 0 {
            return Err("generate: max_tokens must be at least 1".into());
        }
        if request.prompt.len() + request.system.as_ref().map_or(0, String::len) > MAX_PROMPT_BYTES {
            return Err(format!("generate: the prompt is longer than {MAX_PROMPT_BYTES} bytes"));
        }
        if let Some(t) = request.temperature {
            if !t.is_finite() || !(0.0..=2.0).contains(&t) {
                return Err(format!("generate: temperature {t} is outside 0..=2"));
            }
        }
        if request.stop.len() > MAX_STOP_STRINGS || request.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(format!("generate: at most {MAX_STOP_STRINGS} non-empty stop strings of at most 256 bytes"));
        }
        let req = JudgeGenerateRequest {
            system: request.system,
            prompt: request.prompt,
            max_tokens: request.max_tokens.min(self.max_generate_tokens),
            temperature: request.temperature,
            stop: request.stop,
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| model.generate(&req)))
            .unwrap_or_else(|_| Err(format!("the judge model of plugin {plugin} panicked")));
        // Time spent in the judge model does not count against the plugin's deadline.
        self.deadline += started.elapsed();
        result
    }

    fn log(&mut self, level: wit::LogLevel, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        if matches!(level, wit::LogLevel::Error) {
            if let Some(p) = message.strip_prefix("plugin panicked: ") {
                self.last_panic = Some(p.to_owned());
            }
        }
        self.logs_this_call += 1;
        if self.logs_this_call > MAX_LOGS_PER_CALL {
            if self.logs_this_call == MAX_LOGS_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logs too much; dropping its messages for this call");
            }
            return;
        }
        let plugin = &*self.plugin;
        match level {
            wit::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            wit::LogLevel::Info => tracing::info!(plugin, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            wit::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// A wall clock stopped at the Unix epoch.
struct FrozenWallClock;
impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that never advances.
struct FrozenMonotonicClock;
impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A fixed, deterministic byte stream standing in for randomness (splitmix64).
struct DeterministicBytes(u64);
impl rand_core_010::TryRng for DeterministicBytes {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

fn sandbox_wasi() -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.wall_clock(FrozenWallClock)
        .monotonic_clock(FrozenMonotonicClock)
        .secure_random(DeterministicBytes(1))
        .insecure_random(DeterministicBytes(2))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

/// A live instance: its store and bindings, used serially.
struct Live {
    store: Store<SandboxState>,
    bindings: Instance,
}

enum ConfigureError {
    Rejected(String),
    Failed(JudgeError),
}

/// One loaded judge plugin. Calls are serialised on its single instance; use several
/// plugins (or several loads of one) for parallelism.
pub struct JudgePlugin {
    name: String,
    sha256: [u8; 32],
    runtime: Arc<JudgeRuntime>,
    pre: Pre,
    settings: PluginSettings,
    config_text: String,
    model: Option<Arc<dyn JudgeModel>>,
    info: JudgeInfo,
    live: Mutex<Option<Live>>,
}

impl std::fmt::Debug for JudgePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JudgePlugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256_hex())
            .field("info", &self.info)
            .field("settings", &self.settings)
            .field("has_model", &self.model.is_some())
            .finish()
    }
}

impl JudgePlugin {
    /// The name the daemon knows the plugin by (its file stem in the registry).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &JudgeInfo {
        &self.info
    }

    /// The plugin's settings.
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// The same component as another plugin `name`, with its own settings and judge model:
    /// a new instance, configured, from the compiled component (no file read, no compile).
    pub fn reconfigured(
        &self,
        name: &str,
        settings: PluginSettings,
        model: Option<Arc<dyn JudgeModel>>,
    ) -> Result<JudgePlugin, LoadError> {
        settings.validate()?;
        self.runtime.instantiate_configured(name, self.pre.clone(), self.sha256, settings, model)
    }

    /// The contract version the component was built against (`0.2.0`, or `0.1.0`).
    pub fn contract(&self) -> &'static str {
        self.pre.contract().version()
    }

    /// The sha256 of the component's bytes, in hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The sha256 of the component's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Judges samples in batches of `batch_size`; returns one verdict per sample, in order.
    /// The first sample that could not be judged fails the call; the plugin stays usable for
    /// the next call. [`JudgePlugin::judge_each`] keeps every sample's own result instead.
    pub fn judge(&self, samples: &[Sample]) -> Result<Vec<JudgeVerdict>, JudgeError> {
        let mut out = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(self.settings.batch_size) {
            out.extend(self.judge_batch(chunk)?);
        }
        Ok(out)
    }

    /// Judges samples in batches of `batch_size`; returns, per sample and in order, its
    /// verdict or why it could not be judged: a sample the plugin could not judge (or whose
    /// verdict is malformed) has its own error, and a batch that failed as a whole (a trap,
    /// a timeout, a wrong count, an error for the batch) gives that error to each of its
    /// samples.
    pub fn judge_each(&self, samples: &[Sample]) -> Vec<Result<JudgeVerdict, JudgeError>> {
        let mut out = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(self.settings.batch_size) {
            match self.judge_batch_each(chunk) {
                Ok(results) => out.extend(results),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    /// Judges one batch in a single call into the plugin (ignores `batch_size`); the first
    /// sample that could not be judged fails the batch.
    pub fn judge_batch(&self, batch: &[Sample]) -> Result<Vec<JudgeVerdict>, JudgeError> {
        self.judge_batch_each(batch)?.into_iter().collect()
    }

    /// Judges one batch in a single call into the plugin: the outer error is a failure of the
    /// whole call, the inner ones each sample's own.
    pub fn judge_batch_each(&self, batch: &[Sample]) -> Result<Vec<Result<JudgeVerdict, JudgeError>>, JudgeError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.live.lock();
        if guard.is_none() {
            *guard = Some(self.restart()?);
        }
        let live = guard.as_mut().expect("instance was just created");
        let result = self.call(live, batch.len(), |b, s| b.judge(s, batch));
        let results = match result {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.reported(e)),
            Err(e) => {
                // After a trap the instance may be in any state: drop it, start afresh next time.
                *guard = None;
                return Err(e);
            }
        };
        drop(guard);
        if results.len() != batch.len() {
            return Err(JudgeError::WrongCount {
                plugin: self.name.clone(),
                expected: batch.len(),
                got: results.len(),
            });
        }
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(index, r)| match r {
                Ok(v) => self.check_verdict(index, v),
                Err(e) => Err(self.reported(e)),
            })
            .collect())
    }

    /// An error the plugin reported, for a sample or a batch.
    fn reported(&self, e: wit::JudgeError) -> JudgeError {
        JudgeError::Reported {
            plugin: self.name.clone(),
            kind: match e.kind {
                wit::JudgeErrorKind::Config => PluginErrorKind::Config,
                wit::JudgeErrorKind::Unjudgeable => PluginErrorKind::Unjudgeable,
                wit::JudgeErrorKind::Model => PluginErrorKind::Model,
                wit::JudgeErrorKind::Internal => PluginErrorKind::Internal,
            },
            message: e.message,
        }
    }

    fn check_verdict(&self, index: usize, v: wit::Verdict) -> Result<JudgeVerdict, JudgeError> {
        let bad = |reason: String| JudgeError::Malformed { plugin: self.name.clone(), index, reason };
        if let Some(score) = v.score {
            if !score.is_finite() {
                return Err(bad(format!("score {score} is not a finite number")));
            }
        }
        if v.label.trim().is_empty() {
            return Err(bad("the label is empty".into()));
        }
        if v.label.len() > MAX_LABEL_BYTES {
            return Err(bad(format!("the label is longer than {MAX_LABEL_BYTES} bytes")));
        }
        if v.rationale.as_ref().is_some_and(|r| r.len() > MAX_RATIONALE_BYTES) {
            return Err(bad(format!("the rationale is longer than {MAX_RATIONALE_BYTES} bytes")));
        }
        Ok(v.into())
    }

    /// A fresh instance after a failure, configured again.
    fn restart(&self) -> Result<Live, JudgeError> {
        let restart_err = |message: String| JudgeError::Restart { plugin: self.name.clone(), message };
        let mut live = self.instantiate().map_err(restart_err)?;
        self.configure(&mut live).map_err(|e| match e {
            ConfigureError::Rejected(m) => restart_err(format!("configure rejected: {m}")),
            ConfigureError::Failed(e) => restart_err(e.to_string()),
        })?;
        Ok(live)
    }

    fn configure(&self, live: &mut Live) -> Result<(), ConfigureError> {
        let text = self.config_text.clone();
        match self.call(live, 0, |b, s| b.configure(s, &text)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(ConfigureError::Rejected(m)),
            Err(e) => Err(ConfigureError::Failed(e)),
        }
    }

    fn instantiate(&self) -> Result<Live, String> {
        let state = SandboxState {
            wasi: sandbox_wasi(),
            table: ResourceTable::new(),
            limits: Limits {
                cap: usize::try_from(self.settings.memory_mb << 20).unwrap_or(usize::MAX),
                total: 0,
                hit: false,
            },
            plugin: Arc::from(self.name.as_str()),
            model: self.model.clone(),
            max_generate_tokens: self.settings.max_generate_tokens,
            deadline: Instant::now() + Duration::from_millis(self.settings.timeout_ms),
            last_panic: None,
            logs_this_call: 0,
            generate_calls: 0,
            generate_limit: MAX_GENERATE_CALLS_PER_SAMPLE,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Live { store, bindings }),
            Err(e) => Err(self.classify(e, &store).to_string()),
        }
    }

    /// Runs one call into the plugin under its deadline and maps failures to [`JudgeError`].
    fn call<R>(
        &self,
        live: &mut Live,
        samples: usize,
        f: impl FnOnce(&Instance, &mut Store<SandboxState>) -> wasmtime::Result<R>,
    ) -> Result<R, JudgeError> {
        let state = live.store.data_mut();
        state.generate_calls = 0;
        state.generate_limit =
            MAX_GENERATE_CALLS_PER_SAMPLE.saturating_mul(u32::try_from(samples.max(1)).unwrap_or(u32::MAX));
        state.deadline = Instant::now() + Duration::from_millis(self.settings.timeout_ms);
        state.last_panic = None;
        state.logs_this_call = 0;
        live.store.set_epoch_deadline(1);
        f(&live.bindings, &mut live.store).map_err(|e| self.classify(e, &live.store))
    }

    fn classify(&self, e: wasmtime::Error, store: &Store<SandboxState>) -> JudgeError {
        let plugin = self.name.clone();
        if e.downcast_ref::<DeadlineExceeded>().is_some() {
            return JudgeError::Timeout { plugin, timeout_ms: self.settings.timeout_ms };
        }
        if e.downcast_ref::<MemoryCapExceeded>().is_some() || store.data().limits.hit {
            return JudgeError::MemoryLimit { plugin, limit_mb: self.settings.memory_mb };
        }
        let message = match e.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{e:#}"),
        };
        JudgeError::Trap { plugin, message, panic: store.data().last_panic.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_contract_versions() {
        // 0.1 plugins keep loading beside 0.2 ones; 0.x minor bumps are breaking otherwise.
        assert_eq!(Contract::of("0.1.0"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.1.7"), Some(Contract::V0_1));
        assert_eq!(Contract::of("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::of("0.2.5"), Some(Contract::V0_2));
        assert_eq!(Contract::of("0.3.0"), None);
        assert_eq!(Contract::of("1.0.0"), None);
        assert_eq!(Contract::of("garbage"), None);
        assert_eq!(bindings::parse_version("1.2.3-rc.1"), Some((1, 2, 3)));
    }

    #[test]
    fn judge_rejects_non_components() {
        let rt = JudgeRuntime::shared().unwrap();
        let e = rt.load("x", b"not wasm at all", PluginSettings::default(), None).unwrap_err();
        assert!(matches!(e, LoadError::InvalidComponent(_)), "{e}");
        // A core module (version 1, layer 0) is not a component either.
        let core = b"\0asm\x01\0\0\0";
        let e = rt.load("x", core, PluginSettings::default(), None).unwrap_err();
        assert!(e.to_string().contains("wasm32-wasip2"), "{e}");
    }
}
