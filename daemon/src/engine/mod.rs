//! The generation engine: llama.cpp on its own OS thread, a model cache, and a continuous
//! batching decoder that generates many seeded (prompt, sample) jobs at once.
//!
//! llama.cpp contexts, batches and samplers are not `Send`; they live on one dedicated thread
//! ([`worker`]) and async code talks to it through channels. A request streams back one
//! [`EngineEvent::Sample`] per finished job, so callers can store each sample as it completes,
//! and can be cancelled at any time.
//!
//! What makes a generated text reproducible: the model and adapter bytes, the adapter scale,
//! the prompt and chat template, the sampling settings and seed. Each sequence has its own KV
//! stream (`kv_unified = false`), each prompt is prefilled alone, and no matrix product is
//! handed to llama.cpp with one column (its llamafile kernels take products of two or more
//! columns in another order of accumulation than one column; see [`batch`]), so a sample
//! depends neither on the *other* jobs in the request nor on `parallel`: a run resumed
//! with only its remaining jobs generates the same texts as the uninterrupted run (tested, with
//! an adapter too, on the default model). `threads`, `batch_size`, the llama.cpp build and the
//! weight types can still matter (K-quant weights keep it because ggml's tiled K-quant kernel
//! is switched off and their repacked copies are not made; see `worker`); [`batch_invariant`]
//! and [`weights_batch_invariant`] say when the property is claimed.
//!
//! [`Engine`] is the one interface every caller generates through; behind it sits a
//! [`Backend`]: the embedded llama.cpp worker, or [`remote`]'s OpenAI-compatible inference
//! servers (vLLM, SGLang, llama-server). Both stream the same [`EngineEvent`]s.

mod batch;
pub mod remote;
pub mod sampling;
pub mod template;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use sampling::SamplingParams;
pub use worker::{
    batch_invariant, build_info, default_gpu_layers, gpu_device, kquant_products_alike, make_kquant_products_alike,
    weights_batch_invariant, BuildInfo, Tokenizer, ALL_LAYERS, INVARIANT_KQUANT_TYPES, INVARIANT_WEIGHT_TYPES,
};

/// Settings of the engine itself (not of a request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineParams {
    /// CPU threads for llama.cpp; 0 means one per available core.
    pub threads: usize,
    /// Sequences decoded together in one batch.
    pub parallel: usize,
    /// Largest number of tokens handed to one llama.cpp decode call (prefill chunks).
    pub batch_size: usize,
    /// Layers offloaded to the GPU (only with the `cuda` feature).
    pub gpu_layers: u32,
    /// How many whole models stay loaded at once (least recently used goes first).
    pub max_loaded_models: usize,
    /// One KV cache shared by all sequences (true) or one stream per sequence (false, the
    /// default). With one stream per sequence a sample's text does not depend on which other
    /// sequences share its batches, so a run resumed after a crash generates exactly what the
    /// uninterrupted run would have; a unified cache does not have that property.
    pub kv_unified: bool,
    /// The context of all `parallel` sequences together, in tokens: each sequence gets
    /// `n_ctx / parallel` for its prompt and its generation, and a prompt that does not fit is
    /// an error on its jobs. `None` sizes each request's context for its longest prompt.
    pub n_ctx: Option<u32>,
    /// Longest accepted prompt in tokens, after the chat template; longer prompts are an error
    /// on their jobs (the others run). `None`: only the model's context limits it.
    pub max_prompt_tokens: Option<u32>,
    /// Keep a sample's text independent of the other jobs in its batches and of `parallel`
    /// (default): on builds with llama.cpp's llamafile kernels a generation step with one
    /// sequence then carries a padding sequence ([`batch`]), which about doubles that step's
    /// cost, at `parallel = 1` and in a request's last steps. `false` lets such steps run alone
    /// (runs are then recorded as not batch-invariant on those builds): for engines whose
    /// requests always run one sequence, such as a judge model's, where nothing varies.
    pub batch_invariant: bool,
}

/// The most sequences one engine decodes together. llama.cpp holds at most 256 sequences in
/// a context (`LLAMA_MAX_SEQ`), and the engine uses `2 × parallel + 2` of them (each running
/// sample, a holder per prompt being shared, one more holder, and one spare), so 127.
pub const MAX_PARALLEL: usize = (LLAMA_MAX_SEQ - 2) / 2;

/// llama.cpp's limit on sequences in one context (`LLAMA_MAX_SEQ` in `llama-cparams.h`).
const LLAMA_MAX_SEQ: usize = 256;

impl Default for EngineParams {
    fn default() -> Self {
        EngineParams {
            threads: 0,
            parallel: 16,
            batch_size: 512,
            gpu_layers: 0,
            max_loaded_models: 2,
            kv_unified: false,
            n_ctx: None,
            max_prompt_tokens: None,
            batch_invariant: true,
        }
    }
}

impl EngineParams {
    /// The effective thread count.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

/// Which model to generate with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// A whole GGUF model (the base model when an adapter is given).
    pub model: PathBuf,
    /// A LoRA adapter applied over the model for this request only.
    pub adapter: Option<AdapterSpec>,
    /// A chat template to use instead of the model's own: a llama.cpp built-in name such as
    /// `chatml`, `llama3`, `gemma`, `mistral-v7`.
    pub chat_template: Option<String>,
    /// An optional system prompt put before every user prompt.
    pub system_prompt: Option<String>,
    /// Hand prompts to the model verbatim, without any chat template.
    #[serde(default)]
    pub raw_prompts: bool,
    /// What a remote backend asks its servers for (the served model name, a llama-server
    /// adapter id); `None` for the embedded engine, which loads the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<remote::ServedAs>,
}

impl ModelSpec {
    /// A plain model with its own chat template.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ModelSpec {
            model: model.into(),
            adapter: None,
            chat_template: None,
            system_prompt: None,
            raw_prompts: false,
            served: None,
        }
    }
}

/// A LoRA adapter and its scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSpec {
    /// The adapter GGUF.
    pub path: PathBuf,
    /// The scale applied to the adapter (1.0 = as trained).
    pub scale: f32,
}

/// One sample to generate: a prompt and a seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The caller's identifier of the prompt (jobs with the same prompt text share prefill).
    pub prompt_id: String,
    /// The user prompt (the chat template is applied by the engine).
    pub prompt: String,
    /// Which of the prompt's samples this is.
    pub sample_index: u32,
    /// The sampler seed.
    pub seed: u32,
}

/// A generation request: a model, sampling settings and the jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// Model (and adapter).
    pub model: ModelSpec,
    /// Sampling settings shared by all jobs (each job has its own seed).
    pub sampling: SamplingParams,
    /// The jobs, generated in this order (samples of one prompt should be adjacent).
    pub jobs: Vec<Job>,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    #[default]
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The request was cancelled while the sequence ran.
    Cancelled,
    /// The job could not run (e.g. its prompt does not fit the context).
    Error,
}

impl FinishReason {
    /// The lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOutput {
    /// Index of the job in the request.
    pub job_index: usize,
    /// The job's prompt id.
    pub prompt_id: String,
    /// The job's sample index.
    pub sample_index: u32,
    /// The job's seed.
    pub seed: u32,
    /// The generated text (stop string and end-of-generation token excluded).
    pub text: String,
    /// Tokens in the templated prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// What went wrong, for `FinishReason::Error`.
    pub error: Option<String>,
    /// Milliseconds from the job's admission to its end.
    pub generation_ms: u64,
}

/// Facts about a request once its model is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The chat template used (the model's text, or the override's name); `None` for raw prompts.
    pub chat_template: Option<String>,
    /// The model's training context length.
    pub n_ctx_train: u32,
    /// The context size allocated for the request.
    pub n_ctx: u32,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Threads used.
    pub threads: usize,
    /// Distinct prompts among the jobs.
    pub distinct_prompts: usize,
    /// Milliseconds spent loading the model (0 when cached) and the adapter.
    pub load_ms: u64,
}

/// Progress of a request, sent a few times a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Jobs finished.
    pub done: usize,
    /// Jobs in the request.
    pub total: usize,
    /// Tokens generated so far.
    pub generated_tokens: u64,
    /// Seconds since the request started decoding.
    pub elapsed_s: f64,
}

/// Throughput of a finished request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    /// Sequences generated.
    pub sequences: usize,
    /// Prompt tokens evaluated in prefill calls (shared prefixes counted once).
    pub prefill_tokens: u64,
    /// Prompt tokens a run without prefix sharing would have evaluated.
    pub prompt_tokens_total: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Seconds in prefill-only decode calls.
    pub prefill_s: f64,
    /// Seconds in generation decode calls (the model's forward passes, as
    /// `llama-batched-bench` times them).
    pub decode_s: f64,
    /// Seconds choosing and appending tokens after each generation decode call: the sampler
    /// chains, detokenizing, stop strings, retiring finished sequences.
    #[serde(default)]
    pub sample_s: f64,
    /// Wall seconds of the whole request, model load excluded.
    pub wall_s: f64,
    /// Number of generation decode calls.
    pub decode_calls: u64,
    /// Sequences moved to a lower slot, with their KV cells, to close the gaps that finished
    /// ones left once nothing was left to admit (so that a step stays one micro-batch).
    #[serde(default)]
    pub moved: u64,
    /// Generation steps with one sequence that carried a padding sequence, so that no matrix
    /// product had one column (batch invariance with llama.cpp's llamafile kernels).
    #[serde(default)]
    pub padded_steps: u64,
}

impl GenerationStats {
    /// Prompt tokens per second in prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        if self.prefill_s > 0.0 {
            self.prefill_tokens as f64 / self.prefill_s
        } else {
            0.0
        }
    }

    /// Generated tokens per second in decode.
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_s > 0.0 {
            self.generated_tokens as f64 / self.decode_s
        } else {
            0.0
        }
    }
}

/// What a request streams back.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// The model is loaded and decoding starts.
    Started(RequestInfo),
    /// A job finished.
    Sample(SampleOutput),
    /// Progress.
    Progress(Progress),
    /// The request ended: its stats, or why it failed.
    Done(Result<GenerationStats, EngineError>),
}

/// Why a request failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The model or adapter file is unusable (driftwatch's own check).
    #[error(transparent)]
    Checkpoint(Arc<crate::checkpoint::CheckpointError>),
    /// llama.cpp refused to load the file.
    #[error("llama.cpp could not load {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What llama.cpp said.
        reason: String,
    },
    /// The model has no chat template and none was configured.
    #[error(
        "{model} has no chat template; set `model.chat_template` to a llama.cpp built-in template name (e.g. \"chatml\", \"llama3\")"
    )]
    NoChatTemplate {
        /// The model path.
        model: String,
    },
    /// The chat template could not be applied.
    #[error("cannot apply the chat template: {0}")]
    Template(String),
    /// Invalid request settings.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// llama.cpp failed while decoding.
    #[error("llama.cpp failed: {0}")]
    Llama(String),
    /// No inference server could take the request's remaining jobs (down, overloaded).
    #[error("the inference servers failed: {0}")]
    Remote(String),
    /// Every inference server refused the request itself (an unknown served name, a wrong
    /// key, a model it cannot serve): not mended by waiting.
    #[error("the inference servers refused the request: {0}")]
    Refused(String),
    /// The engine thread is gone.
    #[error("the engine has stopped")]
    Stopped,
}

impl From<crate::checkpoint::CheckpointError> for EngineError {
    fn from(e: crate::checkpoint::CheckpointError) -> Self {
        EngineError::Checkpoint(Arc::new(e))
    }
}

/// What generates: the embedded llama.cpp worker or a fleet of inference servers. A backend
/// takes a request and streams its events to `events`, ending with [`EngineEvent::Done`];
/// `cancel` stops it (running jobs end as [`FinishReason::Cancelled`], the rest are dropped).
pub trait Backend: Send + Sync {
    /// Starts `request`; it never blocks on generation.
    fn submit(&self, request: GenerationRequest, events: mpsc::UnboundedSender<EngineEvent>, cancel: CancellationToken);

    /// Which backend this is, for logs and `doctor` (`embedded`, `openai`).
    fn kind(&self) -> &'static str;
}

/// The embedded backend: llama.cpp on its own thread.
struct Embedded {
    tx: std::sync::mpsc::Sender<worker::WorkerCommand>,
}

impl Backend for Embedded {
    fn submit(
        &self,
        request: GenerationRequest,
        events: mpsc::UnboundedSender<EngineEvent>,
        cancel: CancellationToken,
    ) {
        let cmd = worker::WorkerCommand::Generate { request: Box::new(request), events: events.clone(), cancel };
        if self.tx.send(cmd).is_err() {
            let _ = events.send(EngineEvent::Done(Err(EngineError::Stopped)));
        }
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// A handle to the generation backend. Cheap to clone; the embedded engine's thread stops when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    backend: Arc<dyn Backend>,
    config: Arc<EngineParams>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("backend", &self.backend.kind()).field("config", &self.config).finish()
    }
}

impl Engine {
    /// Starts the embedded engine's thread.
    pub fn start(config: EngineParams) -> Result<Engine, EngineError> {
        if config.parallel == 0 || config.parallel > MAX_PARALLEL {
            return Err(EngineError::InvalidRequest(format!(
                "engine.parallel must be between 1 and {MAX_PARALLEL}, not {}",
                config.parallel
            )));
        }
        if let Some(n) = config.n_ctx {
            if (n as usize) < config.parallel {
                return Err(EngineError::InvalidRequest(format!(
                    "engine.n_ctx ({n}) leaves no room for each of the {} parallel sequences",
                    config.parallel
                )));
            }
        }
        if config.batch_size < config.parallel {
            return Err(EngineError::InvalidRequest(format!(
                "engine.batch_size ({}) must be at least engine.parallel ({})",
                config.batch_size, config.parallel
            )));
        }
        let tx = worker::spawn(config.clone())?;
        Ok(Engine::with_backend(Arc::new(Embedded { tx }), config))
    }

    /// An engine generating through `backend` (e.g. [`remote::Remote`]).
    pub fn with_backend(backend: Arc<dyn Backend>, config: EngineParams) -> Engine {
        Engine { backend, config: Arc::new(config) }
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineParams {
        &self.config
    }

    /// Which backend generates (`embedded`, `openai`).
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Submits a request; events stream back on the returned [`GenerationStream`].
    pub fn submit(&self, request: GenerationRequest) -> GenerationStream {
        let (events, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        self.backend.submit(request, events, cancel.clone());
        GenerationStream { rx, cancel, finished: false }
    }

    /// Runs a request to the end and returns every sample (in job order) with the stats.
    pub async fn generate(
        &self,
        request: GenerationRequest,
    ) -> Result<(Vec<SampleOutput>, GenerationStats), EngineError> {
        let mut stream = self.submit(request);
        let mut samples = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                EngineEvent::Sample(s) => samples.push(s),
                EngineEvent::Done(r) => {
                    samples.sort_by_key(|s| s.job_index);
                    return r.map(|stats| (samples, stats));
                }
                EngineEvent::Started(_) | EngineEvent::Progress(_) => {}
            }
        }
        Err(EngineError::Stopped)
    }

    /// Like [`Engine::generate`], for callers on a plain (non-async) thread.
    pub fn generate_blocking(
        &self,
        request: GenerationRequest,
    ) -> Result<(Vec<SampleOutput>, GenerationStats), EngineError> {
        let mut stream = self.submit(request);
        let mut samples = Vec::new();
        while let Some(ev) = stream.rx.blocking_recv() {
            match ev {
                EngineEvent::Sample(s) => samples.push(s),
                EngineEvent::Done(r) => {
                    stream.finished = true;
                    samples.sort_by_key(|s| s.job_index);
                    return r.map(|stats| (samples, stats));
                }
                EngineEvent::Started(_) | EngineEvent::Progress(_) => {}
            }
        }
        Err(EngineError::Stopped)
    }
}

/// The events of one request. Dropping it before the end cancels the request.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
    cancel: CancellationToken,
    finished: bool,
}

impl GenerationStream {
    /// The next event; `None` after [`EngineEvent::Done`].
    pub async fn next(&mut self) -> Option<EngineEvent> {
        if self.finished {
            return None;
        }
        let ev = self.rx.recv().await;
        if matches!(ev, Some(EngineEvent::Done(_)) | None) {
            self.finished = true;
        }
        ev
    }

    /// Asks the engine to stop this request: running sequences end with
    /// [`FinishReason::Cancelled`], jobs not yet started are dropped, then `Done` follows.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this request when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

/// How often progress events are sent.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(250);
