//! Typed errors of the judge host: per-batch judge errors, load errors, settings and
//! registry errors.

use std::path::PathBuf;

use thiserror::Error;

/// The kind of failure a plugin reported itself (mirrors the WIT `judge-error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorKind {
    /// The plugin's configuration is unusable.
    Config,
    /// A sample could not be judged (for example an unparseable judge-model answer).
    Unjudgeable,
    /// The judge model failed.
    Model,
    /// Any other failure inside the plugin.
    Internal,
}

impl std::fmt::Display for PluginErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginErrorKind::Config => "config",
            PluginErrorKind::Unjudgeable => "unjudgeable",
            PluginErrorKind::Model => "model",
            PluginErrorKind::Internal => "internal",
        })
    }
}

/// Why one batch could not be judged. The plugin stays usable: the next call works (the
/// instance is re-created after a trap).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum JudgeError {
    /// The call ran past its wall-clock deadline.
    #[error("plugin `{plugin}` timed out: the call ran longer than {timeout_ms} ms")]
    Timeout { plugin: String, timeout_ms: u64 },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { plugin: String, limit_mb: u64 },
    /// The plugin trapped (a panic, `unreachable`, a stack overflow, a denied capability ...).
    #[error("plugin `{plugin}` trapped: {message}{}", panic.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Trap {
        plugin: String,
        /// The trap as wasmtime describes it.
        message: String,
        /// The panic message the plugin logged just before trapping, if any.
        panic: Option<String>,
    },
    /// The plugin returned a different number of verdicts than it was given samples.
    #[error("plugin `{plugin}` returned {got} verdicts for {expected} samples")]
    WrongCount { plugin: String, expected: usize, got: usize },
    /// A verdict is malformed (non-finite score, empty or oversized label ...).
    #[error("plugin `{plugin}` returned a malformed verdict for sample {index}: {reason}")]
    Malformed { plugin: String, index: usize, reason: String },
    /// The plugin reported an error for the batch.
    #[error("plugin `{plugin}` reported a {kind} error: {message}")]
    Reported { plugin: String, kind: PluginErrorKind, message: String },
    /// The plugin could not be re-instantiated or re-configured after a failure.
    #[error("plugin `{plugin}` could not be restarted: {message}")]
    Restart { plugin: String, message: String },
}

impl JudgeError {
    /// A stable name of the error kind, for reports and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JudgeError::Timeout { .. } => "timeout",
            JudgeError::MemoryLimit { .. } => "memory_limit",
            JudgeError::Trap { .. } => "trap",
            JudgeError::WrongCount { .. } => "wrong_count",
            JudgeError::Malformed { .. } => "malformed_output",
            JudgeError::Reported { .. } => "plugin_error",
            JudgeError::Restart { .. } => "restart_failed",
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    InvalidComponent(String),
    /// The component does not export the judge interface at all.
    #[error("the component does not export the driftwatch judge interface (`driftwatch:judge/judge@...`); exports found: {0}")]
    NotAJudge(String),
    /// The component was built against an incompatible contract version.
    #[error("the plugin was built against contract driftwatch:judge@{found}, but this daemon speaks driftwatch:judge@{supported} (and serves plugins built against driftwatch:judge@0.1.0); rebuild it with a matching driftwatch-sdk")]
    IncompatibleContract { found: String, supported: &'static str },
    /// The wasmtime engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The component imports interfaces beyond the judge contract and the WASI interfaces
    /// Rust's `std` needs (for example `wasi:sockets`): judges get no network.
    #[error("the plugin imports {0}, which judge plugins may not use (allowed: driftwatch:judge, wasi:cli, wasi:io, wasi:clocks, wasi:filesystem, wasi:random; each grants nothing); remove the code that needs it")]
    ForbiddenImport(String),
    /// Instantiation failed (for example an import the sandbox does not provide).
    #[error("cannot instantiate the plugin in the sandbox: {0}")]
    Instantiate(String),
    /// Calling `info` failed.
    #[error("the plugin's `info` failed: {0}")]
    Info(String),
    /// The plugin refused its configuration.
    #[error("the plugin rejected its configuration: {0}")]
    Configure(String),
    /// Configuring the plugin failed (it trapped, timed out, ran out of memory …).
    #[error("configuring the plugin failed: {0}")]
    ConfigureFailed(JudgeError),
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Invalid plugin settings.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SettingsError {
    /// The settings text is not valid TOML for [`super::PluginSettings`].
    #[error("invalid plugin settings: {0}")]
    Parse(String),
    /// A setting is out of range.
    #[error("invalid plugin setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Fatal errors of the plugin registry (a single broken plugin is an event, not an error).
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The plugin folder cannot be read.
    #[error("cannot read plugin folder {path}: {cause}")]
    ReadDir { path: PathBuf, cause: std::io::Error },
    /// The file watcher could not be started.
    #[error("cannot watch plugin folder {path}: {message}")]
    Watch { path: PathBuf, message: String },
}
