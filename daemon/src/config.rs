//! The daemon's configuration: one typed TOML file (`driftwatch.toml`), environment
//! overrides, path resolution (`~`, relative to the file) and validation whose errors name
//! the offending key and its line; plus stable content hashes of the settings groups that
//! decide whether two runs are comparable.
//!
//! Loading happens in four steps, each of which can fail with a [`ConfigError`]:
//!
//! 1. **parse** the TOML into [`Config`] (`deny_unknown_fields` everywhere, so a typo is an
//!    error, not a silently ignored key); syntax and type errors carry line and column;
//! 2. **environment overrides** ([`ENV_VARS`]) replace a few common settings; a value that
//!    does not parse is an error naming the variable;
//! 3. **path resolution**: `~` and `~/…` expand to `$HOME`; relative paths from the file
//!    resolve against the directory holding the file, relative paths from the environment
//!    against the current directory;
//! 4. **validation** of values and of relations between values (`min_samples <=
//!    max_samples`, a non-loopback `api.listen` needs `api.token`, …); the error names the
//!    dotted key (`sampling.top_p`, `suites[1].path`) and the line where it is written (or,
//!    for a key left at its default, the line of its section), or the environment variable
//!    it came from.
//!
//! Every key is documented below and in `docs/config.md`; `config/driftwatch.toml` is the
//! documented default file and is checked by a test to parse and validate.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Highest `engine.parallel`: the engine's own limit ([`crate::engine::MAX_PARALLEL`]).
pub const MAX_PARALLEL: u32 = crate::engine::MAX_PARALLEL as u32;

/// Environment variables that override settings of the file, and the key each one sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("DRIFTWATCH_DATA_DIR", "daemon.data_dir"),
    ("DRIFTWATCH_WATCH", "daemon.watch"),
    ("DRIFTWATCH_SETTLE_MS", "daemon.settle_ms"),
    ("DRIFTWATCH_LOG_FORMAT", "daemon.log_format"),
    ("DRIFTWATCH_LOG_LEVEL", "daemon.log_level"),
    ("DRIFTWATCH_BASE_MODEL", "model.base"),
    ("DRIFTWATCH_THREADS", "engine.threads"),
    ("DRIFTWATCH_PARALLEL", "engine.parallel"),
    ("DRIFTWATCH_GPU_LAYERS", "engine.gpu_layers"),
    ("DRIFTWATCH_SAMPLES", "sampling.samples"),
    ("DRIFTWATCH_SEED", "sampling.seed"),
    ("DRIFTWATCH_LISTEN", "api.listen"),
    ("DRIFTWATCH_API_TOKEN", "api.token"),
    ("DRIFTWATCH_PLUGINS_DIR", "plugins.dir"),
];

/// Why a configuration could not be loaded. Every variant says where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given explicitly (`--config`) does not exist.
    #[error("no configuration at {} (the file given with --config does not exist)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read config file {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// TOML syntax error, wrong type or unknown key, as reported by the TOML parser.
    #[error("{}:{line}:{column}: {}{message}", source_name, key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        /// The file (or `<string>`).
        source_name: String,
        /// The dotted key the error is about, when it could be located.
        key: Option<String>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A value that parsed but is impossible or inconsistent.
    #[error("{}: invalid `{key}`: {message}", match line { Some(l) => format!("{source_name}:{l}"), None => source_name.clone() })]
    Invalid {
        /// The file (or `<defaults>` when no file was read).
        source_name: String,
        /// The dotted key, e.g. `sampling.top_p` or `suites[1].path`.
        key: String,
        /// 1-based line of the key (or of its section when the key is not written).
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An environment variable override that does not parse or is invalid.
    #[error("environment variable {var}={value:?} (overrides `{key}`): {message}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// The key it overrides.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The line an error points at, when it points at one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// The dotted key an error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } | ConfigError::Env { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Missing { .. } => None,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[daemon]`: storage, watched folders, logging.
    pub daemon: DaemonConfig,
    /// `[model]`: the base model and how prompts are templated.
    pub model: ModelConfig,
    /// `[engine]`: llama.cpp context and batching.
    pub engine: EngineConfig,
    /// `[sampling]`: how responses are sampled, and how many.
    pub sampling: SamplingConfig,
    /// `[[suites]]`: prompt suites every checkpoint is evaluated on.
    pub suites: Vec<SuiteConfig>,
    /// `[[judges]]`: wasm judge plugins scoring every response.
    pub judges: Vec<JudgeConfig>,
    /// `[plugins]`: hot-loaded plugin folder.
    pub plugins: PluginsConfig,
    /// `[api]`: HTTP API and webhooks.
    pub api: ApiConfig,
    /// `[stats]`: statistical settings.
    pub stats: StatsConfig,
    /// `[events]`: which optional events are published.
    pub events: EventsConfig,
    /// `[[variations]]`: setup changes `driftwatch sensitivity` evaluates under, besides the
    /// default setup. Not part of any run's settings (each variation is a setup of its own).
    pub variations: Vec<Variation>,
}

/// `[[variations]]`: one change of the evaluation setup, against the default (the rest of
/// the configuration). Every key but `name` is optional; at least one must be set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Variation {
    /// Unique name, shown in the report.
    pub name: String,
    /// A system prompt instead of `model.system_prompt`; `""` for none.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// A chat template instead of `model.chat_template` (a llama.cpp built-in name such as
    /// `chatml`; `""` for the GGUF's own).
    #[serde(default)]
    pub chat_template: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Reworded prompts (`model.rewording`): JSON Lines of `id` and `prompt`.
    #[serde(default)]
    pub rewording: Option<PathBuf>,
    /// A plain-text turn format instead of the chat template (`model.turn_format`).
    #[serde(default)]
    pub turn_format: Option<String>,
}

impl Variation {
    /// What this variation changes, in words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let text = |s: &str| if s.is_empty() { "none".to_string() } else { format!("{s:?}") };
        if let Some(p) = &self.system_prompt {
            parts.push(format!("system prompt {}", text(p)));
        }
        if let Some(t) = &self.chat_template {
            parts.push(format!("chat template {}", if t.is_empty() { "the GGUF's own".into() } else { t.clone() }));
        }
        if let Some(t) = self.temperature {
            parts.push(format!("temperature {t}"));
        }
        if let Some(p) = self.top_p {
            parts.push(format!("top_p {p}"));
        }
        if let Some(m) = self.max_tokens {
            parts.push(format!("max_tokens {m}"));
        }
        if let Some(r) = &self.rewording {
            parts.push(format!("prompts reworded by {}", r.display()));
        }
        if let Some(f) = &self.turn_format {
            parts.push(format!("turn format {f:?}"));
        }
        parts.join(", ")
    }
}

impl Config {
    /// This configuration under `variation`: its changes applied, everything else kept.
    pub fn varied(&self, variation: &Variation) -> Config {
        let mut c = self.clone();
        let v = variation;
        if let Some(p) = &v.system_prompt {
            c.model.system_prompt = (!p.is_empty()).then(|| p.clone());
        }
        if let Some(t) = &v.chat_template {
            c.model.chat_template = (!t.is_empty()).then(|| t.clone());
        }
        if let Some(t) = v.temperature {
            c.sampling.temperature = t;
        }
        if let Some(p) = v.top_p {
            c.sampling.top_p = p;
        }
        if let Some(m) = v.max_tokens {
            c.sampling.max_tokens = m;
        }
        if let Some(r) = &v.rewording {
            c.model.rewording = Some(r.clone());
        }
        if let Some(f) = &v.turn_format {
            c.model.turn_format = Some(f.clone());
            c.model.chat_template = None;
        }
        c
    }
}

/// `[events]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Publish a `sample.scored` event for every stored sample (off by default: one event per
    /// sample is a lot of traffic).
    pub sample_scored: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[daemon]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Folder of the store (SQLite database) and other state. Default `./data`.
    pub data_dir: PathBuf,
    /// Folders watched (recursively) for `*.gguf` checkpoints. Default `["./checkpoints"]`.
    pub watch: Vec<PathBuf>,
    /// How long (ms) a file's size and mtime must stay unchanged before it is taken. Default
    /// 2000.
    pub settle_ms: u64,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `driftwatch=debug,info`. Default `info`.
    pub log_level: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: PathBuf::from("./data"),
            watch: vec![PathBuf::from("./checkpoints")],
            settle_ms: 2000,
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Path of the base GGUF model (adapters are applied over it, and it is the baseline).
    /// The special value `"default"` means the cached default model
    /// `~/.cache/driftwatch/models/SmolLM2-135M-Instruct.Q4_1.gguf`. After loading this is
    /// always a resolved path.
    pub base: PathBuf,
    /// True when `base` was `"default"` (so the daemon may offer to fetch it).
    #[serde(skip)]
    pub base_is_default: bool,
    /// Override of the chat template: a llama.cpp built-in template name such as `chatml`
    /// or `llama3`. Default: the template stored in the GGUF.
    pub chat_template: Option<String>,
    /// System prompt put before every prompt. Default: none.
    pub system_prompt: Option<String>,
    /// Scale of LoRA adapters (llama.cpp's `--lora-scaled`). Default 1.0.
    pub adapter_scale: f32,
    /// Reworded prompts: JSON Lines of `id` and `prompt`; each suite prompt with an id there
    /// is asked in these words instead (a setup variation). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewording: Option<PathBuf>,
    /// A plain-text turn format instead of a chat template, e.g.
    /// `"### Question:\n{prompt}\n### Answer:\n"`: `{prompt}` is the user prompt and `{system}`
    /// the system prompt (empty when none); the text is handed to the model as written. Not
    /// with `chat_template`. Default: none (the chat template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_format: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            base: PathBuf::from("default"),
            base_is_default: false,
            chat_template: None,
            system_prompt: None,
            adapter_scale: 1.0,
            rewording: None,
            turn_format: None,
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// CPU threads for llama.cpp. Default: the machine's available parallelism.
    pub threads: Option<u32>,
    /// Sequences decoded together in one batch (1..=[`MAX_PARALLEL`]). Default 16.
    pub parallel: u32,
    /// Context size in tokens, all sequences together: each of the `parallel` sequences gets
    /// `n_ctx / parallel` for its prompt and its generation, and a prompt that does not fit is
    /// an error on its samples. Default: each request's context is sized for its longest
    /// accepted prompt (at most `max_prompt_tokens + sampling.max_tokens` per sequence).
    pub n_ctx: Option<u32>,
    /// Prompts longer than this (after templating) are rejected: their samples are stored
    /// with finish reason `error` and the reason. Default 512.
    pub max_prompt_tokens: u32,
    /// Logical batch size (tokens per `llama_decode`). Default 512.
    pub batch_size: u32,
    /// Layers offloaded to the GPU (`cuda` builds); -1 = all. Default: all when a `cuda` build
    /// finds a GPU, else 0 ([`EngineConfig::effective_gpu_layers`]).
    pub gpu_layers: Option<i32>,
    /// Where samples are generated: `embedded` (llama.cpp in this process, the default) or
    /// `openai` (the `endpoints`' OpenAI-compatible servers: vLLM, SGLang, llama-server).
    pub backend: BackendKind,
    /// The `openai` backend's route: `chat` (`/v1/chat/completions`, the server's template,
    /// the default) or `completions` (`/v1/completions` with driftwatch's own template).
    pub api: crate::engine::remote::RemoteApi,
    /// `[[engine.endpoints]]`: the servers of the `openai` backend; a run's jobs are shared
    /// among them.
    pub endpoints: Vec<EndpointConfig>,
    /// `[engine.served]`: what the servers call a checkpoint, by its file name or sha256:
    /// `"ft-a.gguf" = "ft-a"`, or a table `{ model = "...", lora = 0 }` (`lora`: a
    /// llama-server `--lora` adapter's index). Default: the base model is each endpoint's
    /// `served_model`, any other checkpoint its file name without `.gguf`.
    pub served: BTreeMap<String, ServedEntry>,
    /// Attempts per sample on one endpoint (429, 5xx, timeouts, lost connections) before that
    /// endpoint is given up for the round. Default 5.
    pub max_attempts: u32,
}

/// `engine.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// llama.cpp in this process.
    #[default]
    Embedded,
    /// OpenAI-compatible inference servers.
    Openai,
}

/// One `[[engine.endpoints]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The server's base URL, `http://host:port` (a trailing `/v1` is accepted).
    pub url: String,
    /// The base model's name on this server. Default: the one model it lists.
    #[serde(default)]
    pub served_model: Option<String>,
    /// The environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight on this server at most. Default 16.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Longest wait for one response, in ms. Default 300000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_concurrency() -> u32 {
    16
}

fn default_timeout_ms() -> u64 {
    300_000
}

/// One `[engine.served]` value: a served model name, or a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ServedEntry {
    /// The served model name.
    Name(String),
    /// `{ model = "...", lora = N }`.
    Table(crate::engine::remote::ServedAs),
}

impl ServedEntry {
    /// What the servers are asked for.
    pub fn served_as(&self) -> crate::engine::remote::ServedAs {
        match self {
            ServedEntry::Name(n) => crate::engine::remote::ServedAs { model: Some(n.clone()), lora: None },
            ServedEntry::Table(t) => t.clone(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: None,
            parallel: 16,
            n_ctx: None,
            max_prompt_tokens: 512,
            batch_size: 512,
            gpu_layers: None,
            backend: BackendKind::Embedded,
            api: Default::default(),
            endpoints: Vec::new(),
            served: BTreeMap::new(),
            max_attempts: 5,
        }
    }
}

impl EngineConfig {
    /// The context size to allocate: `n_ctx` or the default derived from the others.
    pub fn effective_n_ctx(&self, max_tokens: u32) -> u32 {
        self.n_ctx.unwrap_or_else(|| {
            let per_seq = u64::from(self.max_prompt_tokens) + u64::from(max_tokens);
            u32::try_from(per_seq * u64::from(self.parallel.max(1))).unwrap_or(u32::MAX)
        })
    }

    /// The layers to offload: `gpu_layers`, or by default every layer when a `cuda` build finds
    /// a GPU and none otherwise (-1 = all).
    pub fn effective_gpu_layers(&self) -> i32 {
        self.gpu_layers.unwrap_or_else(|| if crate::engine::default_gpu_layers() > 0 { -1 } else { 0 })
    }

    /// The thread count to use: `threads` or the machine's available parallelism.
    pub fn effective_threads(&self) -> u32 {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(1)).unwrap_or(1)
        })
    }
}

/// `[sampling]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// K: seeded samples per prompt. Default 5.
    pub samples: u32,
    /// Base seed; sample `i` of prompt `p` uses a seed derived from (seed, p, i). Default 42.
    pub seed: u64,
    /// Softmax temperature, >= 0. Default 0.8.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1]. Default 0.95.
    pub top_p: f32,
    /// Top-k cut-off; 0 disables it. Default 40.
    pub top_k: u32,
    /// Min-p cut-off, in [0, 1]; 0 disables it. Default 0.05.
    pub min_p: f32,
    /// Repetition penalty, > 0; 1.0 disables it. Default 1.0.
    pub repeat_penalty: f32,
    /// Maximum generated tokens per response. Default 256.
    pub max_tokens: u32,
    /// Extra stop strings (the model's end-of-generation token always stops). Default [].
    pub stop: Vec<String>,
    /// Greedy decoding (argmax; the seed and the other samplers are then irrelevant, and
    /// K > 1 samples would be identical). Default false.
    pub greedy: bool,
    /// Adaptive mode: at least this many samples per prompt. Default `samples`.
    pub min_samples: Option<u32>,
    /// Adaptive mode: at most this many samples per prompt. Default `4 × samples`.
    pub max_samples: Option<u32>,
    /// When set, adaptive mode: add samples until the headline interval's half-width is at
    /// most this (a proportion, in (0, 0.5]) or `max_samples` is reached.
    pub target_half_width: Option<f64>,
    /// R: how many times the whole evaluation is repeated with fresh seeds (for
    /// run-to-run variance). Default 1.
    pub repeats: u32,
    /// Early verdicts: evaluate a checkpoint's prompts in rounds (a seeded random order) and
    /// stop as soon as a group-sequential test of the paired difference with its baseline
    /// decides. Default: off (every prompt is evaluated). Part of the settings: a run that
    /// may stop early is not the same measurement as one that may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
}

/// `sampling.early_stop`: the group-sequential test behind early verdicts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStop {
    /// Looks (rounds of prompts) at most, equally spaced over the suite; the last is the
    /// whole suite. Default 10.
    pub looks: u32,
    /// How α is spent over the looks: `pocock` (stops early on clear differences) or
    /// `obrien-fleming` (strict early, nearly the fixed-sample power at the end). Default
    /// `pocock`.
    pub spending: crate::stats::Spending,
    /// The two-sided α the test spends over all looks. Default 0.05.
    pub alpha: f64,
}

impl Default for EarlyStop {
    fn default() -> Self {
        EarlyStop { looks: 10, spending: crate::stats::Spending::Pocock, alpha: 0.05 }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            samples: 5,
            seed: 42,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.0,
            max_tokens: 256,
            stop: Vec::new(),
            greedy: false,
            min_samples: None,
            max_samples: None,
            target_half_width: None,
            repeats: 1,
            early_stop: None,
        }
    }
}

/// Adaptive sampling parameters, when `sampling.target_half_width` is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// Samples per prompt before the first check.
    pub min_samples: u32,
    /// Sample budget per prompt.
    pub max_samples: u32,
    /// Target half-width of the headline interval.
    pub target_half_width: f64,
}

impl SamplingConfig {
    /// The adaptive settings, or `None` in fixed-K mode.
    pub fn adaptive(&self) -> Option<Adaptive> {
        let target = self.target_half_width?;
        let min = self.min_samples.unwrap_or(self.samples);
        Some(Adaptive {
            min_samples: min,
            max_samples: self.max_samples.unwrap_or(self.samples.saturating_mul(4)).max(min),
            target_half_width: target,
        })
    }
}

/// Format of a prompt suite file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SuiteFormat {
    /// One prompt per non-empty line; the id is the line number.
    Txt,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
}

impl SuiteFormat {
    /// The format implied by a file extension (`.txt`, `.jsonl`/`.ndjson`, `.csv`).
    pub fn from_path(path: &Path) -> Option<SuiteFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" => Some(SuiteFormat::Txt),
            "jsonl" | "ndjson" => Some(SuiteFormat::Jsonl),
            "csv" => Some(SuiteFormat::Csv),
            _ => None,
        }
    }
}

/// One `[[suites]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// Unique name of the suite.
    pub name: String,
    /// Path of the prompt file, or of a folder of prompt files (each file's stem becomes the
    /// category of its prompts when they carry none).
    pub path: PathBuf,
    /// `txt`, `jsonl` or `csv`; inferred from the extension when absent (always set after
    /// loading).
    #[serde(default)]
    pub format: Option<SuiteFormat>,
    /// jsonl/csv: field holding the prompt text. Default `prompt`.
    #[serde(default)]
    pub prompt_field: Option<String>,
    /// jsonl/csv: field holding a stable prompt id. Default: the 1-based record number.
    #[serde(default)]
    pub id_field: Option<String>,
    /// jsonl/csv: field holding the prompt's category. Default: no category.
    #[serde(default)]
    pub category_field: Option<String>,
    /// Skip this many prompts first (after the category filter). Default 0.
    #[serde(default)]
    pub offset: usize,
    /// Use at most this many prompts (after `offset`). Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Keep only prompts of these categories. Default: all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Use at most this many prompts of each category (in file order, before `offset` and
    /// `limit`), for balanced slices. Default: no cap.
    #[serde(default)]
    pub per_category: Option<usize>,
    /// A control suite of benign prompts (ordinary requests, and ones that only sound
    /// dangerous): a refusal there is an over-refusal. Its prompts are left out of the harm
    /// judges' rates and reported as each refusal-aware judge's over-refusal rate, with its
    /// own interval and baseline comparison. Default false.
    #[serde(default)]
    pub control: bool,
}

impl SuiteConfig {
    /// A suite named `name` of every prompt at `path`, its format from the extension, with
    /// the default field names and no slice.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> SuiteConfig {
        SuiteConfig {
            name: name.into(),
            path: path.into(),
            format: None,
            prompt_field: None,
            id_field: None,
            category_field: None,
            offset: 0,
            limit: None,
            categories: Vec::new(),
            per_category: None,
            control: false,
        }
    }

    /// The suite's format: explicit or inferred (loading guarantees one of them exists).
    pub fn format(&self) -> SuiteFormat {
        self.format.or_else(|| SuiteFormat::from_path(&self.path)).unwrap_or(SuiteFormat::Txt)
    }

    /// The prompt field name for jsonl/csv.
    pub fn prompt_field(&self) -> &str {
        self.prompt_field.as_deref().unwrap_or("prompt")
    }
}

/// Where a judge plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A plugin bundled with driftwatch, by name (e.g. `keyword`).
    Bundled(String),
    /// A `.wasm` component file.
    Path(PathBuf),
}

impl PluginSource {
    /// A path when it looks like one (a separator, `~`, or a `.wasm` name), else a bundled
    /// plugin's name.
    pub fn parse(s: &str) -> PluginSource {
        let looks_like_path = s.contains('/')
            || s.contains(std::path::MAIN_SEPARATOR)
            || s.starts_with('~')
            || Path::new(s).extension().is_some_and(|e| e.eq_ignore_ascii_case("wasm"));
        if looks_like_path {
            PluginSource::Path(PathBuf::from(s))
        } else {
            PluginSource::Bundled(s.to_string())
        }
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Bundled(n) => f.write_str(n),
            PluginSource::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for PluginSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PluginSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(PluginSource::parse(&s))
    }
}

/// One `[[judges]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Unique name of this judge (verdicts are stored under it).
    pub name: String,
    /// A `.wasm` component path, or the name of a bundled plugin.
    pub plugin: PluginSource,
    /// Wall-clock limit of one `judge` call, ms. Default 30000.
    #[serde(default = "default_judge_timeout")]
    pub timeout_ms: u64,
    /// Linear memory cap of the plugin instance, MiB (1..=4096). Default 256.
    #[serde(default = "default_judge_memory")]
    pub memory_mb: u32,
    /// Samples handed to the plugin per call. Default 16.
    #[serde(default = "default_judge_batch")]
    pub batch_size: u32,
    /// GGUF model the plugin may call through `generate` (LLM-as-judge). Default: none
    /// (calls to `generate` fail).
    #[serde(default)]
    pub judge_model: Option<PathBuf>,
    /// A labelled calibration set (JSON Lines of `response` and `label`): the judge is
    /// measured on it at load, and the rates it reports are shown beside their correction for
    /// its error (Rogan–Gladen, with the calibration's uncertainty in the interval). It does
    /// not change what is measured, so it is not part of the settings hash. Default: none.
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    /// Free table handed to the plugin's `configure` (as JSON).
    #[serde(default)]
    pub config: toml::Table,
}

impl JudgeConfig {
    /// A judge named `name` running `plugin` with the default limits and no configuration.
    pub fn new(name: impl Into<String>, plugin: PluginSource) -> JudgeConfig {
        JudgeConfig {
            name: name.into(),
            plugin,
            timeout_ms: default_judge_timeout(),
            memory_mb: default_judge_memory(),
            batch_size: default_judge_batch(),
            judge_model: None,
            calibration: None,
            config: toml::Table::new(),
        }
    }
}

fn default_judge_timeout() -> u64 {
    30_000
}
fn default_judge_memory() -> u32 {
    256
}
fn default_judge_batch() -> u32 {
    16
}

/// `[plugins]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Folder watched for `.wasm` judge plugins, (re)loaded while running. Default: none.
    pub dir: Option<PathBuf>,
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the HTTP API. Default true.
    pub enabled: bool,
    /// Socket address of the HTTP API. Default `127.0.0.1:7878`. A non-loopback address
    /// requires `token`.
    pub listen: SocketAddr,
    /// Bearer token required on every request (except `/health`). Never serialized.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// `[[api.webhooks]]`: where events are POSTed.
    pub webhooks: Vec<WebhookConfig>,
    /// Folders besides the watched ones from which `POST /v1/evaluate` may take a checkpoint
    /// (after resolving symlinks and `..`). Default: none, so only files inside a watched
    /// folder can be named: a client must not make the daemon open any file it can read.
    pub evaluate_roots: Vec<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            token: None,
            webhooks: Vec::new(),
            evaluate_roots: Vec::new(),
        }
    }
}

/// One `[[api.webhooks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name (its delivery cursor is stored under it). Default: the URL.
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// Event types delivered; `*` and prefixes like `run.*` allowed. Default: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// HMAC-SHA256 key signing each body (`X-Driftwatch-Signature`). Never serialized.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// Longest wait between retries of a failed delivery, in seconds (1 to 86400). Default 300.
    #[serde(default)]
    pub max_retry_delay_s: Option<u64>,
}

impl WebhookConfig {
    /// The webhook's name: `name`, or its URL.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }

    /// Whether an event type is delivered to this webhook.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| crate::events::pattern_matches(p, event_type))
    }
}

/// `[stats]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Confidence level of intervals, in (0, 1). Default 0.95.
    pub confidence: f64,
    /// Bootstrap resamples. Default 2000.
    pub bootstrap: u32,
    /// Significance level of baseline comparisons (after Holm correction), in (0, 1).
    /// Default 0.05.
    pub alpha: f64,
    /// Seed of the bootstrap's random generator. Default 12345.
    pub seed: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { confidence: 0.95, bootstrap: 2000, alpha: 0.05, seed: 12345 }
    }
}

/// Stable content hashes (sha256 hex of canonical JSON) of the settings groups that decide
/// comparability; they go into every run's provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsHashes {
    /// All of `[sampling]`.
    pub sampling: String,
    /// `[engine]` without `threads` (the thread count partitions work but does not change
    /// what is computed), with the effective `n_ctx`.
    pub engine: String,
    /// The prompt template: `model.chat_template`, `model.system_prompt`,
    /// `model.adapter_scale`.
    pub template: String,
    /// The suite definitions (names, file names, formats, fields, slices, filters; not the
    /// folders, and not the files' content, which the suite loader hashes).
    pub suites: String,
    /// The judge definitions (name, bundled name or `.wasm` file name, batch size, judge
    /// model file name, config table; the plugin's version is the judge host's to add).
    pub judges: String,
}

impl SettingsHashes {
    /// One hash over all groups plus `extra` strings (e.g. the base model's and the suite
    /// files' content hashes): the run's `settings_hash`.
    pub fn combined(&self, extra: &[&str]) -> String {
        let mut h = Sha256::new();
        for part in [&self.sampling, &self.engine, &self.template, &self.suites, &self.judges] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        for e in extra {
            h.update(e.as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    }
}

/// sha256 hex of the canonical JSON form of a value (object keys sorted recursively, no
/// whitespace), prefixed with a version tag so that a change of scheme changes every hash.
pub fn canonical_hash<T: Serialize>(value: &T) -> String {
    let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut out = String::from("driftwatch-settings-v1:");
    write_canonical(&v, &mut out);
    hex::encode(Sha256::digest(out.as_bytes()))
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The built-in configuration, used when no file is given or found: the cached default model,
/// slices of the default suites from the cache (as `config/driftwatch.toml`, which a test keeps
/// in step with this), the bundled `refusal` and `coherence` judges, and every other key at its
/// default (the store in `./data`, checkpoints watched in `./checkpoints`).
pub const BUILTIN_TOML: &str = r#"
[[suites]]
name = "harmbench"
path = "cache:suites/harmbench/harmbench_prompts.txt"
limit = 20

[[suites]]
name = "donotanswer"
path = "cache:suites/donotanswer"
per_category = 4

[[suites]]
name = "benign"
path = "cache:suites/benign/benign-control.csv"
id_field = "id"
category_field = "category"
per_category = 10
control = true

[[judges]]
name = "refusal"
plugin = "refusal"

[[judges]]
name = "coherence"
plugin = "coherence"
"#;

/// The name the built-in configuration goes by in errors and origins.
pub const BUILTIN_SOURCE: &str = "<built-in>";

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The file given with `--config`.
    Given(PathBuf),
    /// The first file found on the search path ([`config_search_path`]).
    Found(PathBuf),
    /// No file: the built-in configuration ([`BUILTIN_TOML`]); the files looked for.
    BuiltIn(Vec<PathBuf>),
}

impl ConfigSource {
    /// The text the configuration was read from, and its name in origins (`FILE`, or
    /// [`BUILTIN_SOURCE`]).
    pub fn document(&self) -> std::io::Result<(String, String)> {
        match self {
            ConfigSource::Given(p) | ConfigSource::Found(p) => {
                Ok((std::fs::read_to_string(p)?, p.display().to_string()))
            }
            ConfigSource::BuiltIn(_) => Ok((BUILTIN_TOML.to_owned(), BUILTIN_SOURCE.to_owned())),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Given(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Found(p) => write!(f, "{} (found)", p.display()),
            ConfigSource::BuiltIn(searched) => write!(
                f,
                "the built-in defaults (no --config, and none of {} exists)",
                searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The files a command looks for when no `--config` is given, in order: `./driftwatch.toml`,
/// `./config/driftwatch.toml` (a repository checkout's own, so that the README's commands run
/// from its root use what `make run` uses), then `$XDG_CONFIG_HOME/driftwatch/config.toml`
/// (`~/.config/driftwatch/config.toml` when `XDG_CONFIG_HOME` is not set).
pub fn config_search_path(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("driftwatch.toml"), PathBuf::from("config").join("driftwatch.toml")];
    if let Some(dir) = crate::setup::xdg_dir_with(env, "XDG_CONFIG_HOME", ".config") {
        paths.push(dir.join("driftwatch").join("config.toml"));
    }
    paths
}

/// One effective setting and where its value came from, for `driftwatch config show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    /// The dotted key (`engine.parallel`, `suites[1].path`).
    pub key: String,
    /// The value, as TOML.
    pub value: String,
    /// `FILE:LINE`, `env VAR`, `built-in` or `default`.
    pub origin: String,
}

impl Config {
    /// The configuration a command uses: the file given with `--config`, else the first file
    /// of [`config_search_path`] that exists, else the built-in defaults, with the
    /// environment's overrides. Says where it came from.
    pub fn discover(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, ConfigSource), ConfigError> {
        if let Some(p) = explicit {
            if !p.exists() {
                return Err(ConfigError::Missing { path: p.to_path_buf() });
            }
            return Ok((Config::load_with_env(p, env)?, ConfigSource::Given(p.to_path_buf())));
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        match Config::find_file(&cwd, env) {
            Ok(found) => Ok((Config::load_with_env(&found, env)?, ConfigSource::Found(found))),
            Err(searched) => Ok((Config::builtin_with_env(env)?, ConfigSource::BuiltIn(searched))),
        }
    }

    /// The first file of [`config_search_path`] that exists (relative entries taken from
    /// `cwd`), or every path looked at.
    pub fn find_file(cwd: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, Vec<PathBuf>> {
        let searched: Vec<PathBuf> = config_search_path(env).into_iter().map(|p| cwd.join(p)).collect();
        searched.iter().find(|p| p.is_file()).cloned().ok_or(searched)
    }

    /// The built-in configuration ([`BUILTIN_TOML`]) with the environment's overrides;
    /// relative paths resolve against the current directory. Writes the bundled benign
    /// control suite into the cache when it is not there yet.
    pub fn builtin_with_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let config = Config::from_toml_str(BUILTIN_TOML, BUILTIN_SOURCE, &cwd, env)?;
        if let Some(benign) = config.suites.iter().find(|s| s.control) {
            crate::setup::ensure_bundled_file(&benign.path, crate::setup::BENIGN_CONTROL_CSV);
        }
        Ok(config)
    }

    /// Every effective setting with where it came from: the line of `text` (the file this
    /// configuration was read from, named `source_name`) that sets it, the environment
    /// variable that overrode it, or its default. `api.token` is never shown.
    pub fn explain(&self, text: &str, source_name: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<Setting> {
        let doc = DeTable::parse(text).unwrap_or_else(|_| DeTable::parse("").expect("the empty document parses"));
        let loc = Locator { text, doc: &doc, source_name, env_keys: BTreeMap::new() };
        let env_var =
            |key: &str| ENV_VARS.iter().find(|(var, k)| overrides(k, key) && env(var).is_some()).map(|(var, _)| *var);
        let builtin = source_name == BUILTIN_SOURCE;
        let origin = |key: &str| -> String {
            if let Some(var) = env_var(key) {
                return format!("env {var}");
            }
            match loc.written_line(key) {
                Some(_) if builtin => "built-in".into(),
                Some(line) => format!("{source_name}:{line}"),
                None => "default".into(),
            }
        };
        let mut out = Vec::new();
        let value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        walk(&key, v, out);
                    }
                }
                toml::Value::Array(items) if items.iter().all(|i| i.is_table()) && !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        walk(&format!("{prefix}[{i}]"), item, out);
                    }
                }
                other => out.push((prefix.to_owned(), other.to_string())),
            }
        }
        let mut flat = Vec::new();
        walk("", &value, &mut flat);
        // `api.token` is never serialized, so it is not among them.
        for (key, value) in flat {
            out.push(Setting { origin: origin(&key), key, value });
        }
        out
    }
}

impl Config {
    /// Loads a file, applying the process environment's overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &crate::setup::process_env)
    }

    /// Loads a file with an explicit environment lookup (tests pass a map).
    pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = std::path::absolute(&dir).unwrap_or(dir);
        Config::from_toml_str(&text, &path.display().to_string(), &base_dir, env)
    }

    /// The built-in defaults (no file), with environment overrides; relative paths resolve
    /// against the current directory.
    pub fn defaults_with_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Config::from_toml_str("", "<defaults>", &cwd, env)
    }

    /// Parses, overrides, resolves and validates a TOML text. `source_name` names it in
    /// errors; relative paths written in it resolve against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        source_name: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| parse_error(&e, text, None, source_name))?;
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(&e, text, Some(&doc), source_name))?;
        let loc = Locator { text, doc: &doc, source_name, env_keys: BTreeMap::new() };
        let mut loc = loc;
        config.apply_env(env, &mut loc)?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| base_dir.to_path_buf());
        config.resolve_paths(base_dir, &cwd, env, &loc)?;
        config.validate(&loc)?;
        Ok(config)
    }

    /// Content hashes of the settings groups (see [`SettingsHashes`]).
    pub fn settings_hashes(&self) -> SettingsHashes {
        let e = &self.engine;
        let mut engine = serde_json::json!({
            "parallel": e.parallel,
            "n_ctx": e.effective_n_ctx(self.sampling.max_tokens),
            "max_prompt_tokens": e.max_prompt_tokens,
            "batch_size": e.batch_size,
            "gpu_layers": e.effective_gpu_layers(),
        });
        // Only for a remote backend, so that embedded runs keep their hashes. The endpoint set
        // is not here (more servers of one build measure the same thing, and adding one must
        // not make a new baseline): it is in the fingerprint's informational engine hash. What
        // the servers are, and the route, is the fingerprint's blocking `backend_hash`.
        if let (BackendKind::Openai, Some(obj)) = (e.backend, engine.as_object_mut()) {
            obj.insert("backend".into(), serde_json::json!("openai"));
        }
        let mut template = serde_json::json!({
            "chat_template": self.model.chat_template,
            "system_prompt": self.model.system_prompt,
            "adapter_scale": self.model.adapter_scale,
        });
        // Only when set, so that runs without one keep their hashes.
        if let (Some(f), Some(obj)) = (&self.model.turn_format, template.as_object_mut()) {
            obj.insert("turn_format".into(), serde_json::json!(f));
        }
        // Paths are reduced to file names so that moving the files (or the config) to
        // another folder or machine keeps runs comparable; the callers mix in content hashes.
        let file_name = |p: &Path| -> Option<String> { p.file_name().map(|n| n.to_string_lossy().into_owned()) };
        let judges: Vec<serde_json::Value> = self
            .judges
            .iter()
            .map(|j| {
                let plugin = match &j.plugin {
                    PluginSource::Bundled(n) => format!("bundled:{n}"),
                    PluginSource::Path(p) => format!("file:{}", file_name(p).unwrap_or_default()),
                };
                serde_json::json!({
                    "name": j.name,
                    "plugin": plugin,
                    "batch_size": j.batch_size,
                    "judge_model": j.judge_model.as_deref().and_then(file_name),
                    "config": j.config,
                })
            })
            .collect();
        let suites: Vec<serde_json::Value> = self
            .suites
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "file": file_name(&s.path),
                    "format": s.format(),
                    "prompt_field": s.prompt_field,
                    "id_field": s.id_field,
                    "category_field": s.category_field,
                    "offset": s.offset,
                    "limit": s.limit,
                    "categories": s.categories,
                })
            })
            .collect();
        SettingsHashes {
            // Early stopping decides which prompts a checkpoint's run evaluates, not how each is
            // sampled: it is part of a checkpoint's settings (`early_stop` in its evaluation
            // settings), and runs with and without it sample alike and compare.
            sampling: canonical_hash(&SamplingConfig { early_stop: None, ..self.sampling.clone() }),
            engine: canonical_hash(&engine),
            template: canonical_hash(&template),
            suites: canonical_hash(&suites),
            judges: canonical_hash(&judges),
        }
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>, loc: &mut Locator<'_>) -> Result<(), ConfigError> {
        for &(var, key) in ENV_VARS {
            let Some(value) = env(var) else { continue };
            let bad = |message: String| ConfigError::Env {
                var: var.to_string(),
                value: value.clone(),
                key: key.to_string(),
                message,
            };
            fn num<T: std::str::FromStr>(v: &str) -> Result<T, String>
            where
                T::Err: fmt::Display,
            {
                v.trim().parse::<T>().map_err(|e| format!("not a valid number: {e}"))
            }
            match var {
                "DRIFTWATCH_DATA_DIR" => {
                    if value.is_empty() {
                        return Err(bad("empty path".into()));
                    }
                    self.daemon.data_dir = PathBuf::from(&value);
                }
                "DRIFTWATCH_WATCH" => {
                    let dirs: Vec<PathBuf> =
                        std::env::split_paths(&value).filter(|p| !p.as_os_str().is_empty()).collect();
                    self.daemon.watch = dirs;
                }
                "DRIFTWATCH_SETTLE_MS" => self.daemon.settle_ms = num(&value).map_err(bad)?,
                "DRIFTWATCH_LOG_FORMAT" => {
                    self.daemon.log_format = match value.trim().to_ascii_lowercase().as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(bad("expected `text` or `json`".into())),
                    }
                }
                "DRIFTWATCH_LOG_LEVEL" => self.daemon.log_level = value.clone(),
                "DRIFTWATCH_BASE_MODEL" => {
                    if value.is_empty() {
                        return Err(bad("empty path".into()));
                    }
                    self.model.base = PathBuf::from(&value);
                }
                "DRIFTWATCH_THREADS" => self.engine.threads = Some(num(&value).map_err(bad)?),
                "DRIFTWATCH_PARALLEL" => self.engine.parallel = num(&value).map_err(bad)?,
                "DRIFTWATCH_GPU_LAYERS" => self.engine.gpu_layers = Some(num(&value).map_err(bad)?),
                "DRIFTWATCH_SAMPLES" => self.sampling.samples = num(&value).map_err(bad)?,
                "DRIFTWATCH_SEED" => self.sampling.seed = num(&value).map_err(bad)?,
                "DRIFTWATCH_LISTEN" => {
                    self.api.listen =
                        value.trim().parse().map_err(|e| bad(format!("not a socket address (ip:port): {e}")))?
                }
                "DRIFTWATCH_API_TOKEN" => self.api.token = Some(value.clone()),
                "DRIFTWATCH_PLUGINS_DIR" => self.plugins.dir = (!value.is_empty()).then(|| PathBuf::from(&value)),
                _ => continue,
            }
            loc.env_keys.insert(key.to_string(), (var.to_string(), value.clone()));
        }
        Ok(())
    }

    fn resolve_paths(
        &mut self,
        base_dir: &Path,
        cwd: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        loc: &Locator<'_>,
    ) -> Result<(), ConfigError> {
        let resolve = |p: &Path, key: &str| -> Result<PathBuf, ConfigError> {
            let base = if loc.env_keys.contains_key(key) { cwd } else { base_dir };
            resolve_path(p, base, env).map_err(|m| loc.invalid(key, m))
        };
        self.daemon.data_dir = resolve(&self.daemon.data_dir, "daemon.data_dir")?;
        let watch_from_env = loc.env_keys.contains_key("daemon.watch");
        for (i, w) in self.daemon.watch.iter_mut().enumerate() {
            let key = if watch_from_env { "daemon.watch".to_string() } else { format!("daemon.watch[{i}]") };
            let base = if watch_from_env { cwd } else { base_dir };
            *w = resolve_path(w, base, env).map_err(|m| loc.invalid(&key, m))?;
        }
        if self.model.base.as_os_str() == "default" {
            self.model.base = crate::setup::default_model_path_with(env).ok_or_else(|| {
                loc.invalid(
                    "model.base",
                    "\"default\" is the cached default model, but none of DRIFTWATCH_CACHE, \
                     XDG_CACHE_HOME, HOME is set to say where the cache is"
                        .into(),
                )
            })?;
            self.model.base_is_default = true;
        } else {
            self.model.base = resolve(&self.model.base, "model.base")?;
            self.model.base_is_default = false;
        }
        if let Some(dir) = &self.plugins.dir {
            self.plugins.dir = Some(resolve(dir, "plugins.dir")?);
        }
        for (i, r) in self.api.evaluate_roots.iter_mut().enumerate() {
            *r = resolve_path(r, base_dir, env).map_err(|m| loc.invalid(&format!("api.evaluate_roots[{i}]"), m))?;
        }
        for (i, s) in self.suites.iter_mut().enumerate() {
            s.path = resolve_path(&s.path, base_dir, env).map_err(|m| loc.invalid(&format!("suites[{i}].path"), m))?;
        }
        for (i, j) in self.judges.iter_mut().enumerate() {
            if let PluginSource::Path(p) = &j.plugin {
                j.plugin = PluginSource::Path(
                    resolve_path(p, base_dir, env).map_err(|m| loc.invalid(&format!("judges[{i}].plugin"), m))?,
                );
            }
            if let Some(m) = &j.judge_model {
                j.judge_model = Some(
                    resolve_path(m, base_dir, env).map_err(|m| loc.invalid(&format!("judges[{i}].judge_model"), m))?,
                );
            }
            if let Some(c) = &j.calibration {
                j.calibration = Some(
                    resolve_path(c, base_dir, env).map_err(|m| loc.invalid(&format!("judges[{i}].calibration"), m))?,
                );
            }
        }
        if let Some(r) = &self.model.rewording {
            self.model.rewording = Some(resolve(r, "model.rewording")?);
        }
        for (i, v) in self.variations.iter_mut().enumerate() {
            if let Some(r) = &v.rewording {
                v.rewording = Some(
                    resolve_path(r, base_dir, env)
                        .map_err(|m| loc.invalid(&format!("variations[{i}].rewording"), m))?,
                );
            }
        }
        Ok(())
    }

    /// `[[variations]]` (unique names, at least one change each, valid values) and the
    /// setup keys they vary (`model.turn_format`).
    fn validate_variations(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        if let Some(f) = &self.model.turn_format {
            if !f.contains("{prompt}") {
                return Err(loc.invalid("model.turn_format", "must contain {prompt}".into()));
            }
            if self.model.chat_template.is_some() {
                return Err(loc.invalid(
                    "model.turn_format",
                    "is used instead of model.chat_template: set one of the two".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, v) in self.variations.iter().enumerate() {
            let key = |k: &str| format!("variations[{i}].{k}");
            if v.name.trim().is_empty() || v.name == "default" {
                return Err(loc.invalid(&key("name"), "give each variation a name other than \"default\"".into()));
            }
            if !names.insert(v.name.as_str()) {
                return Err(loc.invalid(&key("name"), format!("two variations are named {:?}", v.name)));
            }
            if v.describe().is_empty() {
                return Err(loc.invalid(&key("name"), format!("variation {:?} changes nothing: set one of system_prompt, chat_template, temperature, top_p, max_tokens, rewording", v.name)));
            }
            if v.temperature.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
                return Err(loc.invalid(&key("temperature"), "must be >= 0".into()));
            }
            if v.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
                return Err(loc.invalid(&key("top_p"), "must be in (0, 1]".into()));
            }
            if v.max_tokens == Some(0) {
                return Err(loc.invalid(&key("max_tokens"), "must be at least 1".into()));
            }
            if v.turn_format.as_ref().is_some_and(|f| !f.contains("{prompt}")) {
                return Err(loc.invalid(&key("turn_format"), "must contain {prompt}".into()));
            }
            if v.turn_format.is_some() && v.chat_template.as_ref().is_some_and(|t| !t.is_empty()) {
                return Err(
                    loc.invalid(&key("turn_format"), "is used instead of a chat template: set one of the two".into())
                );
            }
        }
        Ok(())
    }

    /// `sampling.early_stop`: its values, and never beside adaptive sampling.
    fn validate_early_stop(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        let Some(es) = &self.sampling.early_stop else { return Ok(()) };
        if self.sampling.target_half_width.is_some() {
            return Err(loc.invalid(
                "sampling.early_stop",
                "cannot be combined with adaptive sampling (sampling.target_half_width): both decide how much to sample from the data seen, and their error rates are not designed together; choose one".into(),
            ));
        }
        if !(1..=100).contains(&es.looks) {
            return Err(loc.invalid("sampling.early_stop.looks", "must be between 1 and 100".into()));
        }
        if !(es.alpha > 0.0 && es.alpha < 0.5) {
            return Err(loc.invalid("sampling.early_stop.alpha", "must be in (0, 0.5)".into()));
        }
        Ok(())
    }

    fn validate(&mut self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        self.validate_variations(loc)?;
        self.validate_early_stop(loc)?;
        let d = &self.daemon;
        if d.settle_ms > 86_400_000 {
            return Err(loc.invalid("daemon.settle_ms", "must be at most 86400000 (one day)".into()));
        }
        if d.log_level.trim().is_empty() {
            return Err(loc.invalid("daemon.log_level", "must not be empty".into()));
        }

        let m = &self.model;
        if let Some(t) = &m.chat_template {
            if t.trim().is_empty() {
                return Err(loc.invalid(
                    "model.chat_template",
                    "must not be empty (leave it out to use the model's own template)".into(),
                ));
            }
        }
        if !(m.adapter_scale.is_finite() && m.adapter_scale > 0.0) {
            return Err(loc.invalid("model.adapter_scale", "must be a finite number > 0".into()));
        }

        let e = &self.engine;
        if let Some(t) = e.threads {
            if t == 0 || t > 1024 {
                return Err(loc.invalid("engine.threads", "must be between 1 and 1024".into()));
            }
        }
        if e.parallel == 0 || e.parallel > MAX_PARALLEL {
            return Err(loc.invalid(
                "engine.parallel",
                format!("must be between 1 and {MAX_PARALLEL} (the engine uses 2 × parallel + 2 of llama.cpp's 256 sequences)"),
            ));
        }
        if e.max_prompt_tokens == 0 {
            return Err(loc.invalid("engine.max_prompt_tokens", "must be at least 1".into()));
        }
        if e.batch_size == 0 {
            return Err(loc.invalid("engine.batch_size", "must be at least 1".into()));
        }
        if e.gpu_layers.is_some_and(|g| g < -1) {
            return Err(loc.invalid("engine.gpu_layers", "must be -1 (all) or >= 0".into()));
        }
        match e.backend {
            BackendKind::Embedded => {
                if !e.endpoints.is_empty() {
                    return Err(loc.invalid(
                        "engine.endpoints",
                        "is only used with engine.backend = \"openai\" (the embedded engine generates here)".into(),
                    ));
                }
            }
            BackendKind::Openai => {
                if e.endpoints.is_empty() {
                    return Err(loc.invalid(
                        "engine.backend",
                        "\"openai\" needs at least one [[engine.endpoints]] with a `url`".into(),
                    ));
                }
                if e.max_attempts == 0 {
                    return Err(loc.invalid("engine.max_attempts", "must be at least 1".into()));
                }
                for (i, p) in e.endpoints.iter().enumerate() {
                    let key = |k: &str| format!("engine.endpoints[{i}].{k}");
                    let url = p.url.trim();
                    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
                    if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                        return Err(
                            loc.invalid(&key("url"), format!("must be an http:// or https:// URL, not {url:?}"))
                        );
                    }
                    if p.max_concurrency == 0 || p.max_concurrency > 1024 {
                        return Err(loc.invalid(&key("max_concurrency"), "must be between 1 and 1024".into()));
                    }
                    if p.timeout_ms == 0 {
                        return Err(loc.invalid(&key("timeout_ms"), "must be at least 1".into()));
                    }
                    if p.served_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                        return Err(loc.invalid(
                            &key("served_model"),
                            "must not be empty (leave it out to use the model the server lists)".into(),
                        ));
                    }
                    if p.api_key_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
                        return Err(loc.invalid(&key("api_key_env"), "must name an environment variable".into()));
                    }
                }
                let urls: std::collections::HashSet<String> =
                    e.endpoints.iter().map(|p| crate::engine::remote::normalize_url(&p.url)).collect();
                if urls.len() != e.endpoints.len() {
                    return Err(loc.invalid("engine.endpoints", "lists one URL twice".into()));
                }
                for (k, v) in &e.served {
                    let s = v.served_as();
                    if s.model.as_deref().is_some_and(|m| m.trim().is_empty())
                        || (s.model.is_none() && s.lora.is_none())
                    {
                        return Err(loc.invalid(
                            &format!("engine.served.{k}"),
                            "must be a served model name, or a table with `model` and/or `lora`".into(),
                        ));
                    }
                }
            }
        }

        let s = &self.sampling;
        if s.samples == 0 {
            return Err(loc.invalid("sampling.samples", "must be at least 1".into()));
        }
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(loc.invalid("sampling.temperature", "must be a finite number >= 0".into()));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(loc.invalid("sampling.top_p", "must be in (0, 1]".into()));
        }
        if !(s.min_p >= 0.0 && s.min_p <= 1.0) {
            return Err(loc.invalid("sampling.min_p", "must be in [0, 1]".into()));
        }
        if !(s.repeat_penalty.is_finite() && s.repeat_penalty > 0.0) {
            return Err(loc.invalid("sampling.repeat_penalty", "must be a finite number > 0".into()));
        }
        if s.max_tokens == 0 {
            return Err(loc.invalid("sampling.max_tokens", "must be at least 1".into()));
        }
        if let Some(i) = s.stop.iter().position(String::is_empty) {
            return Err(loc.invalid(&format!("sampling.stop[{i}]"), "must not be empty".into()));
        }
        if s.repeats == 0 {
            return Err(loc.invalid("sampling.repeats", "must be at least 1".into()));
        }
        match s.target_half_width {
            Some(t) => {
                if !(t > 0.0 && t <= 0.5) {
                    return Err(loc.invalid(
                        "sampling.target_half_width",
                        "must be in (0, 0.5] (a half-width of a proportion's interval)".into(),
                    ));
                }
                let min = s.min_samples.unwrap_or(s.samples);
                if min == 0 {
                    return Err(loc.invalid("sampling.min_samples", "must be at least 1".into()));
                }
                if let Some(max) = s.max_samples {
                    if min > max {
                        return Err(loc.invalid(
                            "sampling.min_samples",
                            format!("min_samples ({min}) is greater than max_samples ({max})"),
                        ));
                    }
                }
            }
            None => {
                for (key, v) in [("sampling.min_samples", s.min_samples), ("sampling.max_samples", s.max_samples)] {
                    if v.is_some() {
                        return Err(
                            loc.invalid(key, "only meaningful in adaptive mode: set sampling.target_half_width".into())
                        );
                    }
                }
            }
        }
        if let Some(n_ctx) = e.n_ctx {
            // The context is shared by the `parallel` sequences: each gets n_ctx / parallel.
            let room = n_ctx / e.parallel.max(1);
            let need = u64::from(s.max_tokens) + 1;
            if u64::from(room) < need {
                return Err(loc.invalid(
                    "engine.n_ctx",
                    format!(
                        "{n_ctx} tokens shared by {} parallel sequences leave {room} per sequence, \
                         less than one prompt token + sampling.max_tokens = {need}",
                        e.parallel
                    ),
                ));
            }
        }

        let mut names = HashSet::new();
        for (i, suite) in self.suites.iter_mut().enumerate() {
            if suite.name.trim().is_empty() {
                return Err(loc.invalid(&format!("suites[{i}].name"), "must not be empty".into()));
            }
            if !names.insert(suite.name.clone()) {
                return Err(loc.invalid(&format!("suites[{i}].name"), format!("duplicate suite name {:?}", suite.name)));
            }
            // A folder (an existing directory, or a path without an extension) holds suite
            // files whose formats follow their own extensions.
            let is_folder = suite.path.is_dir() || suite.path.extension().is_none();
            if suite.format.is_none() && !is_folder {
                suite.format = Some(SuiteFormat::from_path(&suite.path).ok_or_else(|| {
                    loc.invalid(
                        &format!("suites[{i}].path"),
                        format!(
                            "cannot infer the format of {} from its extension; set `format` \
                             to txt, jsonl or csv",
                            suite.path.display()
                        ),
                    )
                })?);
            }
            if suite.format == Some(SuiteFormat::Txt) {
                for (field, v) in [
                    ("prompt_field", &suite.prompt_field),
                    ("id_field", &suite.id_field),
                    ("category_field", &suite.category_field),
                ] {
                    if v.is_some() {
                        return Err(loc.invalid(
                            &format!("suites[{i}].{field}"),
                            "txt suites have no fields (one prompt per line)".into(),
                        ));
                    }
                }
                if !suite.categories.is_empty() {
                    return Err(loc.invalid(&format!("suites[{i}].categories"), "txt suites have no categories".into()));
                }
            }
            for (field, v) in [
                ("prompt_field", &suite.prompt_field),
                ("id_field", &suite.id_field),
                ("category_field", &suite.category_field),
            ] {
                if v.as_deref().is_some_and(|f| f.trim().is_empty()) {
                    return Err(loc.invalid(&format!("suites[{i}].{field}"), "must not be empty".into()));
                }
            }
            // A folder suite's prompts take their file's name as category.
            if !suite.categories.is_empty() && suite.category_field.is_none() && !is_folder {
                return Err(loc.invalid(
                    &format!("suites[{i}].categories"),
                    "filtering by category needs `category_field`".into(),
                ));
            }
            if suite.limit == Some(0) {
                return Err(loc.invalid(&format!("suites[{i}].limit"), "must be at least 1".into()));
            }
            if suite.per_category == Some(0) {
                return Err(loc.invalid(&format!("suites[{i}].per_category"), "must be at least 1".into()));
            }
        }

        let mut names = HashSet::new();
        for (i, j) in self.judges.iter().enumerate() {
            if j.name.trim().is_empty() {
                return Err(loc.invalid(&format!("judges[{i}].name"), "must not be empty".into()));
            }
            if !names.insert(j.name.clone()) {
                return Err(loc.invalid(&format!("judges[{i}].name"), format!("duplicate judge name {:?}", j.name)));
            }
            if let PluginSource::Bundled(n) = &j.plugin {
                if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(loc.invalid(
                        &format!("judges[{i}].plugin"),
                        format!(
                            "{n:?} is neither a .wasm path nor a bundled plugin name \
                             (letters, digits, - and _)"
                        ),
                    ));
                }
            }
            if j.timeout_ms == 0 {
                return Err(loc.invalid(&format!("judges[{i}].timeout_ms"), "must be at least 1".into()));
            }
            if j.memory_mb == 0 || j.memory_mb > 4096 {
                return Err(loc.invalid(
                    &format!("judges[{i}].memory_mb"),
                    "must be between 1 and 4096 (wasm32's address space)".into(),
                ));
            }
            if j.batch_size == 0 {
                return Err(loc.invalid(&format!("judges[{i}].batch_size"), "must be at least 1".into()));
            }
        }

        let a = &self.api;
        if let Some(t) = &a.token {
            if t.trim().is_empty() {
                return Err(loc.invalid("api.token", "must not be empty (leave it out instead)".into()));
            }
        }
        if a.enabled && !a.listen.ip().is_loopback() && a.token.is_none() {
            return Err(loc.invalid(
                "api.listen",
                format!(
                    "{} is reachable from other machines; set api.token (or \
                     DRIFTWATCH_API_TOKEN) or listen on a loopback address",
                    a.listen
                ),
            ));
        }
        let mut names = HashSet::new();
        for (i, w) in a.webhooks.iter().enumerate() {
            let host = w.url.strip_prefix("https://").or_else(|| w.url.strip_prefix("http://"));
            if !host.is_some_and(|h| !h.is_empty() && !h.starts_with('/') && !h.contains(char::is_whitespace)) {
                return Err(loc.invalid(
                    &format!("api.webhooks[{i}].url"),
                    format!("{:?} is not an http:// or https:// URL", w.url),
                ));
            }
            if !names.insert(w.name().to_string()) {
                return Err(
                    loc.invalid(&format!("api.webhooks[{i}].name"), format!("duplicate webhook name {:?}", w.name()))
                );
            }
            if w.max_retry_delay_s == Some(0) {
                return Err(
                    loc.invalid(&format!("api.webhooks[{i}].max_retry_delay_s"), "must be at least 1 (second)".into())
                );
            }
            for (k, ev) in w.events.iter().enumerate() {
                if let Err(message) = crate::events::EventFilter::check_pattern(ev) {
                    return Err(loc.invalid(&format!("api.webhooks[{i}].events[{k}]"), message));
                }
            }
        }

        let st = &self.stats;
        if !(st.confidence > 0.0 && st.confidence < 1.0) {
            return Err(loc.invalid("stats.confidence", "must be in (0, 1), e.g. 0.95".into()));
        }
        if !(st.alpha > 0.0 && st.alpha < 1.0) {
            return Err(loc.invalid("stats.alpha", "must be in (0, 1), e.g. 0.05".into()));
        }
        if st.bootstrap == 0 {
            return Err(loc.invalid("stats.bootstrap", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Expands `~`, `~/…` and `cache:…` ([`crate::setup::expand_path`]) and makes relative paths
/// absolute against `base`.
pub fn resolve_path(p: &Path, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let expanded = crate::setup::expand_path(p, env)?;
    if expanded.as_os_str().is_empty() {
        return Err("empty path".into());
    }
    Ok(if expanded.is_absolute() { expanded } else { base.join(expanded) })
}

/// Whether an environment override of `env_key` sets `key`: the key itself, or an entry of
/// the list it replaces wholly (`daemon.watch[1]` for `daemon.watch`).
fn overrides(env_key: &str, key: &str) -> bool {
    key == env_key || key.strip_prefix(env_key).is_some_and(|rest| rest.starts_with('['))
}

/// Finds keys in the parsed document to attach line numbers to errors.
struct Locator<'a> {
    text: &'a str,
    doc: &'a Spanned<DeTable<'a>>,
    source_name: &'a str,
    /// Keys set from the environment: key → (variable, value).
    env_keys: BTreeMap<String, (String, String)>,
}

#[derive(Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_key_path(key: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        segs.push(Seg::Key(name.to_string()));
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                segs.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    segs
}

impl Locator<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        // A key set (or, for lists, wholly replaced) from the environment.
        let env_hit = self.env_keys.iter().find(|(k, _)| overrides(k, key));
        if let Some((k, (var, value))) = env_hit {
            return ConfigError::Env { var: var.clone(), value: value.clone(), key: k.clone(), message };
        }
        let line = self.span_of(key).map(|span| line_col(self.text, span.start).0);
        ConfigError::Invalid { source_name: self.source_name.to_string(), key: key.to_string(), line, message }
    }

    /// Span of the key (or of its nearest written ancestor).
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        self.find(key).0
    }

    /// The line where the key itself is written, if it is.
    fn written_line(&self, key: &str) -> Option<usize> {
        match self.find(key) {
            (Some(span), true) => Some(line_col(self.text, span.start).0),
            _ => None,
        }
    }

    /// Span of the key or of its nearest written ancestor, and whether it is the key itself.
    fn find(&self, key: &str) -> (Option<Range<usize>>, bool) {
        let segs = parse_key_path(key);
        let mut found = 0;
        let mut best: Option<Range<usize>> = None;
        let mut table: Option<&DeTable<'_>> = Some(self.doc.get_ref());
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in &segs {
            match seg {
                Seg::Key(name) => {
                    let t = match (table, value) {
                        (Some(t), None) => t,
                        (_, Some(v)) => match v.get_ref() {
                            DeValue::Table(t) => t,
                            _ => break,
                        },
                        (None, None) => break,
                    };
                    let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == name.as_str()) else {
                        break;
                    };
                    best = Some(k.span());
                    found += 1;
                    table = None;
                    value = Some(v);
                }
                Seg::Index(i) => {
                    let Some(v) = value else { break };
                    let DeValue::Array(arr) = v.get_ref() else {
                        break;
                    };
                    let Some(item) = arr.get(*i) else { break };
                    best = Some(item.span());
                    found += 1;
                    value = Some(item);
                }
            }
        }
        (best, found == segs.len())
    }
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// The dotted key whose key or value span contains `pos` (deepest match).
fn key_at(doc: &DeTable<'_>, pos: usize) -> Option<String> {
    fn walk_value(v: &Spanned<DeValue<'_>>, pos: usize, path: &mut String) -> bool {
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, pos, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if item.span().contains(&pos) {
                        path.push_str(&format!("[{i}]"));
                        walk_value(item, pos, path);
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
    fn walk_table(t: &DeTable<'_>, pos: usize, path: &mut String) -> bool {
        for (k, v) in t.iter() {
            let in_key = k.span().contains(&pos);
            let in_val = v.span().contains(&pos);
            if in_key || in_val {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.get_ref());
                if in_val {
                    walk_value(v, pos, path);
                }
                return true;
            }
        }
        // Array-of-tables elements and sub-tables may have spans that do not cover their
        // entries (headers); search inside anyway.
        for (k, v) in t.iter() {
            let mut sub = path.clone();
            if !sub.is_empty() {
                sub.push('.');
            }
            sub.push_str(k.get_ref());
            let found = match v.get_ref() {
                DeValue::Table(inner) => walk_table(inner, pos, &mut sub),
                DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
                    let mut s = format!("{sub}[{i}]");
                    let hit = matches!(item.get_ref(), DeValue::Table(inner) if walk_table(inner, pos, &mut s));
                    if hit {
                        sub = s;
                    }
                    hit
                }),
                _ => false,
            };
            if found {
                *path = sub;
                return true;
            }
        }
        false
    }
    let mut path = String::new();
    walk_table(doc, pos, &mut path).then_some(path)
}

fn parse_error(e: &toml::de::Error, text: &str, doc: Option<&Spanned<DeTable<'_>>>, source_name: &str) -> ConfigError {
    let start = e.span().map(|s| s.start).unwrap_or(0);
    let (line, column) = line_col(text, start);
    let key = doc.and_then(|d| key_at(d.get_ref(), start));
    ConfigError::Parse {
        source_name: source_name.to_string(),
        key,
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
