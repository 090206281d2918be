//! The engine thread: owns the llama.cpp backend, the model cache and every context; serves
//! requests one after another; frees each request's adapter when it ends.

use std::collections::HashMap;
use std::ffi::CStr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::batch::{self, TokenizedPrompt};
use super::{template, EngineError, EngineEvent, EngineParams, GenerationRequest, GenerationStats, RequestInfo};
use crate::checkpoint;

pub(crate) enum WorkerCommand {
    Generate { request: Box<GenerationRequest>, events: UnboundedSender<EngineEvent>, cancel: CancellationToken },
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (initialised once; llama.cpp's logs go to `tracing`).
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Llama(format!("cannot initialise llama.cpp: {e}")))
}

pub(crate) fn spawn(config: EngineParams) -> Result<Sender<WorkerCommand>, EngineError> {
    backend()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("driftwatch-engine".into())
        .spawn(move || Worker { config, models: ModelCache::default() }.serve(rx))
        .map_err(|e| EngineError::Llama(format!("cannot start the engine thread: {e}")))?;
    Ok(tx)
}

/// A loaded model, and the file identity it was loaded from.
struct Loaded {
    model: LlamaModel,
    identity: (u64, Option<SystemTime>),
    last_used: Instant,
}

#[derive(Default)]
struct ModelCache {
    models: HashMap<PathBuf, Loaded>,
}

fn identity(path: &Path) -> (u64, Option<SystemTime>) {
    std::fs::metadata(path).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None))
}

impl ModelCache {
    /// The model at `path`, loaded if absent or changed on disk. Returns the load time.
    fn get(&mut self, path: &Path, config: &EngineParams) -> Result<(&mut LlamaModel, u64), EngineError> {
        let id = identity(path);
        let fresh = self.models.get(path).is_some_and(|l| l.identity == id);
        let mut load_ms = 0;
        if !fresh {
            self.models.remove(path);
            while self.models.len() >= config.max_loaded_models.max(1) {
                let oldest = self.models.iter().min_by_key(|(_, l)| l.last_used).map(|(p, _)| p.clone());
                match oldest {
                    Some(p) => {
                        self.models.remove(&p);
                    }
                    None => break,
                }
            }
            let t = Instant::now();
            let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
            let model = LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| EngineError::Load {
                path: path.display().to_string(),
                reason: format!("{e} (the llama.cpp log above says why)"),
            })?;
            load_ms = t.elapsed().as_millis() as u64;
            tracing::info!(model = %path.display(), load_ms, "model loaded");
            self.models.insert(path.to_path_buf(), Loaded { model, identity: id, last_used: Instant::now() });
        }
        let l = self.models.get_mut(path).expect("just inserted");
        l.last_used = Instant::now();
        Ok((&mut l.model, load_ms))
    }
}

/// Frees an adapter now. llama-cpp-2's `LlamaLoraAdapter` has no `Drop`: without this every
/// adapter would stay allocated until its base model is freed, and a daemon that evaluates many
/// adapters over one base would grow without bound.
fn free_adapter(adapter: LlamaLoraAdapter) {
    // SAFETY: `LlamaLoraAdapter` is `#[repr(transparent)]` over llama-cpp-2's `Ptr`, itself
    // `#[repr(transparent)]` over `NonNull<llama_adapter_lora>` (transmute checks the sizes).
    // The adapter came from `llama_adapter_lora_init`, every context that used it has been
    // dropped, and it is freed exactly once here (the value is consumed).
    let ptr: NonNull<llama_cpp_sys_2::llama_adapter_lora> = unsafe { std::mem::transmute(adapter) };
    unsafe { llama_cpp_sys_2::llama_adapter_lora_free(ptr.as_ptr()) }
}

struct Worker {
    config: EngineParams,
    models: ModelCache,
}

impl Worker {
    fn serve(mut self, rx: Receiver<WorkerCommand>) {
        while let Ok(cmd) = rx.recv() {
            match cmd {
                WorkerCommand::Generate { request, events, cancel } => {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.generate(&request, &events, &cancel)
                    }))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(EngineError::Llama(format!("the engine failed on this request: {msg}")))
                    });
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "generation request failed");
                    }
                    let _ = events.send(EngineEvent::Done(result));
                }
            }
        }
    }

    fn generate(
        &mut self,
        req: &GenerationRequest,
        events: &UnboundedSender<EngineEvent>,
        cancel: &CancellationToken,
    ) -> Result<GenerationStats, EngineError> {
        req.sampling.validate().map_err(EngineError::InvalidRequest)?;
        if let Some(a) = &req.model.adapter {
            if !(a.scale.is_finite()) {
                return Err(EngineError::InvalidRequest(format!("adapter scale must be finite, not {}", a.scale)));
            }
        }
        // driftwatch's own checks first: llama.cpp never sees a bad file.
        let base = checkpoint::inspect_model(&req.model.model)?;
        if let Some(a) = &req.model.adapter {
            checkpoint::inspect_adapter_for(&a.path, &base)?;
        }
        let config = self.config.clone();
        let (model, mut load_ms) = self.models.get(&req.model.model, &config)?;
        let mut adapter = match &req.model.adapter {
            Some(a) => {
                let t = Instant::now();
                let adapter = model
                    .lora_adapter_init(&a.path)
                    .map_err(|e| EngineError::Load { path: a.path.display().to_string(), reason: e.to_string() })?;
                load_ms += t.elapsed().as_millis() as u64;
                Some((adapter, a.scale))
            }
            None => None,
        };
        let model: &LlamaModel = model;
        let result = run_request(model, req, &config, adapter.as_mut(), load_ms, events, cancel);
        if let Some((a, _)) = adapter {
            free_adapter(a);
        }
        result
    }
}

fn run_request(
    model: &LlamaModel,
    req: &GenerationRequest,
    config: &EngineParams,
    adapter: Option<&mut (LlamaLoraAdapter, f32)>,
    load_ms: u64,
    events: &UnboundedSender<EngineEvent>,
    cancel: &CancellationToken,
) -> Result<GenerationStats, EngineError> {
    let spec = &req.model;
    let tmpl = if spec.raw_prompts {
        None
    } else {
        Some(template::resolve(model, &spec.model.display().to_string(), spec.chat_template.as_deref())?)
    };
    let n_ctx_train = model.n_ctx_train();

    // Distinct prompts, in order of first appearance; their samples share the prefill.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts: Vec<&str> = Vec::new();
    let job_prompt: Vec<usize> = req
        .jobs
        .iter()
        .map(|j| {
            *index.entry(j.prompt.as_str()).or_insert_with(|| {
                texts.push(j.prompt.as_str());
                texts.len() - 1
            })
        })
        .collect();
    let max_tokens = req.sampling.max_tokens as usize;
    // With a configured context, each of the `parallel` sequences has this much room.
    let per_seq_room = config.n_ctx.map(|n| n as usize / config.parallel.max(1));
    let mut prompts = Vec::with_capacity(texts.len());
    for text in &texts {
        let full = match &tmpl {
            Some(t) => t.apply(model, spec.system_prompt.as_deref(), text)?,
            None => text.to_string(),
        };
        // Special-token text in the templated prompt is parsed as special tokens, as llama.cpp's
        // own server does.
        let tokens = model.vocab().tokenize(full.as_bytes(), true, true);
        let error = prompt_error(tokens.len(), max_tokens, n_ctx_train as usize, config, per_seq_room);
        prompts.push(TokenizedPrompt { tokens, error });
    }

    let longest = prompts.iter().filter(|p| p.error.is_none()).map(|p| p.tokens.len()).max().unwrap_or(1);
    let p = config.parallel.min(req.jobs.len().max(1));
    let n_seq = batch::n_seq(p);
    let n_ctx = if config.kv_unified {
        match config.n_ctx {
            Some(n) => n as usize,
            // Worst case: every slot holds a distinct prompt plus its generation, and as many
            // prompts again wait in holders.
            None => (p * (longest + max_tokens) + (p + 1) * longest).div_ceil(256) * 256,
        }
    } else {
        // One stream per sequence; llama.cpp splits n_ctx evenly, in multiples of 256.
        let room = per_seq_room.unwrap_or(longest + max_tokens);
        n_seq * room.div_ceil(256) * 256
    };
    let n_ctx =
        u32::try_from(n_ctx).map_err(|_| EngineError::InvalidRequest("the context would be too large".into()))?;
    let threads = config.effective_threads() as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(batch::prefill_chunk(config.batch_size) as u32)
        .with_n_ubatch(batch::prefill_chunk(config.batch_size) as u32)
        .with_n_seq_max(n_seq as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_kv_unified(config.kv_unified);
    let mut ctx = model
        .new_context(backend()?, params)
        .map_err(|e| EngineError::Llama(format!("cannot create a context of {n_ctx} tokens: {e}")))?;
    if let Some((a, scale)) = adapter {
        ctx.lora_adapter_set(a, *scale).map_err(|e| EngineError::Llama(format!("cannot apply the adapter: {e}")))?;
    }
    let _ = events.send(EngineEvent::Started(RequestInfo {
        chat_template: tmpl.as_ref().map(|t| t.description.clone()),
        n_ctx_train,
        n_ctx,
        parallel: p,
        threads: threads as usize,
        distinct_prompts: prompts.len(),
        load_ms,
    }));
    let build = build_info();
    let work = batch::Work {
        prompts: &prompts,
        jobs: &req.jobs,
        job_prompt: &job_prompt,
        sampling: &req.sampling,
        parallel: p,
        batch_size: config.batch_size,
        // On a GPU the CPU kernels do not compute the products, and nothing is claimed there.
        pad_single: config.batch_invariant && pads_single_steps(&build) && !gpu_offloads(&build, config),
    };
    batch::run(model, &mut ctx, work, events, cancel)
}

/// Why a prompt of `tokens` tokens cannot run, if it cannot: empty, longer than
/// `max_prompt_tokens`, or with `max_tokens` more than the model's context or than the room
/// `n_ctx` gives each sequence.
fn prompt_error(
    tokens: usize,
    max_tokens: usize,
    n_ctx_train: usize,
    config: &EngineParams,
    per_seq_room: Option<usize>,
) -> Option<String> {
    if tokens == 0 {
        return Some("the prompt is empty after tokenization".to_string());
    }
    if let Some(limit) = config.max_prompt_tokens {
        if tokens > limit as usize {
            return Some(format!(
                "the prompt has {tokens} tokens after the chat template, more than engine.max_prompt_tokens ({limit})"
            ));
        }
    }
    if tokens + max_tokens > n_ctx_train {
        return Some(format!(
            "the prompt has {tokens} tokens; with max_tokens {max_tokens} it exceeds the model's context of {n_ctx_train} tokens"
        ));
    }
    if let (Some(room), Some(n_ctx)) = (per_seq_room, config.n_ctx) {
        if tokens + max_tokens > room {
            return Some(format!(
                "the prompt has {tokens} tokens; with max_tokens {max_tokens} it needs {} tokens, more than the {room} \
                 that engine.n_ctx ({n_ctx}) gives each of the {} parallel sequences",
                tokens + max_tokens,
                config.parallel
            ));
        }
    }
    None
}

/// What this binary was built with.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// driftwatch's version.
    pub driftwatch_version: &'static str,
    /// ggml's version string.
    pub ggml_version: String,
    /// ggml's commit.
    pub ggml_commit: String,
    /// llama.cpp's system info line (backends and CPU features in use).
    pub system_info: String,
    /// CPU features this build was compiled for (the Rust target features llama.cpp follows).
    pub compiled_cpu_features: Vec<&'static str>,
    /// Whether the build can offload to a GPU now (llama.cpp found a GPU backend to use).
    pub gpu_offload: bool,
    /// Whether this binary was built with the `cuda` feature (llama.cpp's CUDA backend).
    pub cuda_build: bool,
}

/// A model's tokenizer on its own (the vocabulary loaded, no weights), tokenizing as llama.cpp's
/// tools do: special-token text parsed as special tokens. The testbed packs its training text
/// with it.
pub struct Tokenizer {
    model: LlamaModel,
}

impl Tokenizer {
    /// The tokenizer of the GGUF model at `path`.
    pub fn load(path: &Path) -> Result<Tokenizer, EngineError> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| EngineError::Load {
            path: path.display().to_string(),
            reason: format!("{e} (the llama.cpp log above says why)"),
        })?;
        Ok(Tokenizer { model })
    }

    /// The tokens of `text`; with `add_special`, led by the model's BOS where it adds one.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), add_special, true).into_iter().map(|t| t.0).collect()
    }

    /// The end-of-sequence token and its text, if it has one.
    pub fn eos(&self) -> Option<(i32, String)> {
        let vocab = self.model.vocab();
        let eos = vocab.eos();
        let text = vocab.text(eos)?.to_str().ok()?.to_owned();
        (eos.0 >= 0 && !text.is_empty()).then_some((eos.0, text))
    }
}

/// The GPU llama.cpp can offload to: its name and description, when this is a `cuda` build
/// and a device is present; `None` otherwise (a CPU build, or no device).
pub fn gpu_device() -> Option<String> {
    backend().ok()?;
    // SAFETY: plain getters over llama.cpp's device registry, initialised by `backend()`; the
    // strings are static, NUL-terminated, owned by the registry.
    unsafe {
        if !llama_cpp_sys_2::llama_supports_gpu_offload() {
            return None;
        }
        for i in 0..llama_cpp_sys_2::ggml_backend_dev_count() {
            let dev = llama_cpp_sys_2::ggml_backend_dev_get(i);
            if dev.is_null()
                || llama_cpp_sys_2::ggml_backend_dev_type(dev) != llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_GPU
            {
                continue;
            }
            let text = |p: *const std::os::raw::c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let (name, description) = (
                text(llama_cpp_sys_2::ggml_backend_dev_name(dev)),
                text(llama_cpp_sys_2::ggml_backend_dev_description(dev)),
            );
            return Some(if description.is_empty() { name } else { format!("{name} ({description})") });
        }
    }
    None
}

/// The layers offloaded when none are configured: every layer when a GPU is there
/// ([`gpu_device`]), none otherwise.
pub fn default_gpu_layers() -> u32 {
    if gpu_device().is_some() {
        ALL_LAYERS
    } else {
        0
    }
}

/// A layer count above any model's: llama.cpp then offloads every layer.
pub const ALL_LAYERS: u32 = 999;

/// Whether a sample's text depends only on its model, adapter, prompt, settings and seed with
/// this build and engine, not on which other jobs share its batches: claimed only where it
/// was measured (`tests/tests/default_model.rs`), i.e. on the CPU with one KV stream per
/// sequence, and with llama.cpp's llamafile kernels either left out or on x86-64, where they
/// take every product of two or more columns and the engine never hands over one column
/// ([`batch`]'s padding sequence, unless `config.batch_invariant` is off). Elsewhere (ARM's
/// kernels start at 4 or 8 columns for some types) a build with them, and a GPU offload, are
/// recorded as not batch-invariant.
pub fn batch_invariant(build: &BuildInfo, config: &super::EngineParams) -> bool {
    let kernels = !has_llamafile(build) || (pads_single_steps(build) && config.batch_invariant);
    kernels && !gpu_offloads(build, config) && !config.kv_unified
}

fn gpu_offloads(build: &BuildInfo, config: &super::EngineParams) -> bool {
    build.gpu_offload && config.gpu_layers > 0
}

/// The weight types whose products were measured batch-invariant with this engine (the default
/// model's Q4_1 and Q8_0, copies of it requantized to F16, Q4_0, Q5_0 and Q8_0, a synthetic F32
/// adapter: no text differed between parallel 1, 3 and 16). K-quants are not
/// among them: copies with Q4_K or Q6_K `ffn_down` matrices gave other texts at parallel 1 and
/// 3 than at 16 (31 and 32 of 32), with or without llama.cpp's weight repacking; the cause is
/// not found yet. `docs/reliability.md` has the figures.
pub const INVARIANT_WEIGHT_TYPES: &[&str] = &["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0"];

/// Whether every tensor of the GGUF at `path` (a model or an adapter) is of a type in
/// [`INVARIANT_WEIGHT_TYPES`]; false when the file cannot be read.
pub fn weights_batch_invariant(path: &Path) -> bool {
    crate::checkpoint::inspect(path)
        .map(|c| c.info.tensors.iter().all(|t| INVARIANT_WEIGHT_TYPES.contains(&t.ggml_type.name)))
        .unwrap_or(false)
}

fn has_llamafile(build: &BuildInfo) -> bool {
    build.system_info.contains("LLAMAFILE = 1")
}

/// Whether one-sequence generation steps carry a padding sequence: where llama.cpp's llamafile
/// kernels are compiled in on x86-64, whose kernels take any product of two or more columns
/// (`llamafile_sgemm` refuses only `n < 2` there).
fn pads_single_steps(build: &BuildInfo) -> bool {
    has_llamafile(build) && cfg!(target_arch = "x86_64")
}

/// Facts about the llama.cpp build in this binary.
pub fn build_info() -> BuildInfo {
    let cstr = |p: *const std::os::raw::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: llama.cpp returns static NUL-terminated strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let _ = backend();
    // SAFETY: plain getters of static information.
    let (ggml_version, ggml_commit, system_info, gpu_offload) = unsafe {
        (
            cstr(llama_cpp_sys_2::ggml_version()),
            cstr(llama_cpp_sys_2::ggml_commit()),
            cstr(llama_cpp_sys_2::llama_print_system_info()),
            llama_cpp_sys_2::llama_supports_gpu_offload(),
        )
    };
    let mut features = Vec::new();
    macro_rules! feat {
        ($($f:tt),*) => { $( if cfg!(target_feature = $f) { features.push($f); } )* };
    }
    feat!(
        "sse4.2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi2",
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "avx512bf16",
        "avxvnni",
        "neon",
        "dotprod"
    );
    BuildInfo {
        driftwatch_version: env!("CARGO_PKG_VERSION"),
        ggml_version,
        ggml_commit,
        system_info: system_info.trim().to_owned(),
        compiled_cpu_features: features,
        gpu_offload,
        cuda_build: cfg!(feature = "cuda"),
    }
}
