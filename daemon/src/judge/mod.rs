//! Judge plugins: the sandboxed WebAssembly host that runs judge components, their registry
//! with hot reload, the judge-model capability, and the `plugin`/`judge` CLI pieces.
//!
//! - [`JudgeRuntime`]: one `wasmtime::Engine` per process, epoch ticker, compiled-component
//!   cache; loads a component into a [`JudgePlugin`].
//! - [`JudgePlugin`]: one loaded plugin; [`JudgePlugin::judge`] scores samples in batches,
//!   turning every kind of plugin misbehaviour into a typed [`JudgeError`].
//! - [`PluginRegistry`]: every `.wasm` in a folder, reloaded when files change, reporting
//!   [`PluginEvent`]s.
//! - [`JudgeModel`]: what the daemon plugs in to answer a plugin's `generate` calls.
//! - [`calibration`]: a judge measured against a labelled calibration set.

pub mod bench;
mod bindings;
pub mod calibration;
pub mod cli;
mod error;
pub mod host;
mod registry;
mod settings;
mod types;

pub use bindings::SUPPORTED_CONTRACTS;
pub use error::{JudgeError, LoadError, PluginErrorKind, RegistryError, SettingsError};
pub use host::{JudgePlugin, JudgeRuntime};
pub use registry::{PluginEvent, PluginRegistry, RegistryConfig, RegistryWatcher};
pub use settings::PluginSettings;
pub use types::{FinishReason, JudgeInfo, JudgeRole, JudgeVerdict, Sample};

/// The contract version this daemon speaks (the WIT package `driftwatch:judge@0.2.0`); it
/// serves 0.1.0 plugins too ([`SUPPORTED_CONTRACTS`]).
pub const CONTRACT_VERSION: &str = bindings::SUPPORTED_CONTRACTS[0];

/// A text-generation request from a plugin to its judge model (mirrors the WIT
/// `generate-request`; `max_tokens` is already capped at the plugin's host limit).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeGenerateRequest {
    /// Optional system prompt.
    pub system: Option<String>,
    /// The user prompt.
    pub prompt: String,
    /// Maximum number of tokens to generate (1 ..= the plugin's `max_generate_tokens`).
    pub max_tokens: u32,
    /// Sampling temperature; `None` means greedy decoding.
    pub temperature: Option<f32>,
    /// Stop strings; generation ends at the first one (excluded from the output).
    pub stop: Vec<String>,
}

/// A judge model: answers the `generate` calls of the plugins it is assigned to.
///
/// The daemon assigns one per plugin from its config (for example a llama.cpp-hosted guard
/// model). Calls come from the thread running the plugin and block it; an implementation
/// must bound its own time: the plugin's deadline does not count time spent here; instead
/// the host allows at most [`host::MAX_GENERATE_CALLS_PER_SAMPLE`] requests per sample of a
/// call, with `max_tokens` capped by the plugin's `max_generate_tokens`.
pub trait JudgeModel: Send + Sync + 'static {
    /// Generates text for `req`, or explains why it could not.
    fn generate(&self, req: &JudgeGenerateRequest) -> Result<String, String>;
}
