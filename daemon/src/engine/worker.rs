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
            make_kquant_products_alike();
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
            let model = load_model(path, config)?;
            load_ms = t.elapsed().as_millis() as u64;
            tracing::info!(model = %path.display(), load_ms, "model loaded");
            self.models.insert(path.to_path_buf(), Loaded { model, identity: id, last_used: Instant::now() });
        }
        let l = self.models.get_mut(path).expect("just inserted");
        l.last_used = Instant::now();
        Ok((&mut l.model, load_ms))
    }
}

/// Loads the GGUF model at `path` with `config.gpu_layers` offloaded, and without llama.cpp's
/// repacked weight copies where [`plain_cpu_buffers`] says so. llama-cpp-2's
/// `LlamaModelParams` has no setter for `use_extra_bufts` (and its CPU buffer override still
/// picks the repacked types), so the model is loaded through llama-cpp-sys-2 and handed to
/// llama-cpp-2's owner, which frees it.
fn load_model(path: &Path, config: &EngineParams) -> Result<LlamaModel, EngineError> {
    backend()?;
    let fail = |reason: String| EngineError::Load { path: path.display().to_string(), reason };
    let c_path = path
        .to_str()
        .and_then(|p| std::ffi::CString::new(p).ok())
        .ok_or_else(|| fail("the path is not valid UTF-8 without NUL bytes".into()))?;
    // SAFETY: plain value initialisation, as llama-cpp-2's `LlamaModelParams::default` does.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_default_params() };
    params.n_gpu_layers = i32::try_from(config.gpu_layers).unwrap_or(i32::MAX);
    params.use_extra_bufts = !plain_cpu_buffers(path, config);
    // SAFETY: a NUL-terminated path and parameters whose pointers are all null (the defaults).
    let raw = unsafe { llama_cpp_sys_2::llama_model_load_from_file(c_path.as_ptr(), params) };
    let ptr = NonNull::new(raw).ok_or_else(|| fail("no model came back (llama.cpp's log above says why)".into()))?;
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over llama-cpp-2's `Ptr`, itself
    // `#[repr(transparent)]` over `NonNull<llama_model>` (transmute checks the sizes); the model
    // is owned by nothing else, and `LlamaModel`'s `Drop` frees it once.
    Ok(unsafe { std::mem::transmute::<NonNull<llama_cpp_sys_2::llama_model>, LlamaModel>(ptr) })
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
/// was measured (`tests/tests/default_model.rs`), i.e. on an x86-64 CPU with one KV stream per
/// sequence and `config.batch_invariant` on. There llama.cpp's llamafile kernels, where they are
/// compiled in, take every product of two or more columns, and the engine never hands over one
/// column ([`batch`]'s padding sequence). Elsewhere it is not claimed: other CPUs were not
/// measured (ARM's llamafile kernels start at 4 or 8 columns for some types, and with int8
/// matrix instructions ggml's dot product takes two rows and two columns at once when their
/// counts are even), a GPU offload computes the products with other kernels, and an engine
/// with `config.batch_invariant` off neither pads nor loads K-quant models without their
/// repacked copies ([`plain_cpu_buffers`]). Which weights keep it is
/// [`weights_batch_invariant`]'s answer.
pub fn batch_invariant(build: &BuildInfo, config: &super::EngineParams) -> bool {
    invariant_on(cfg!(target_arch = "x86_64"), build, config)
}

/// [`batch_invariant`] on an x86-64 CPU (`x86_64`) or another.
fn invariant_on(x86_64: bool, build: &BuildInfo, config: &super::EngineParams) -> bool {
    x86_64 && config.batch_invariant && !gpu_offloads(build, config) && !config.kv_unified
}

fn gpu_offloads(build: &BuildInfo, config: &super::EngineParams) -> bool {
    build.gpu_offload && config.gpu_layers > 0
}

/// Sets `GGML_CPU_TILED_MM=0` for this process, before llama.cpp starts, unless the
/// environment already sets it or `GGML_CPU_TILED_MM_FORCE`. On x86-64 ggml computes K-quant
/// products (Q2_K to Q6_K, most IQ types) with its tiled kernel from eight columns on and with
/// its dot product below eight, and the two add up in different orders: a sample's text would
/// then depend on how many other sequences share its steps. Switched off, the dot product takes
/// every such product, one call per output element, whatever the columns. Measured on two AVX2
/// cores with a Q4_K_M model: decode at parallel 16 as fast either way, prefill 6% slower,
/// one-sequence decode 1.6x faster than with the tiled kernel forced (the other way to make
/// the products alike). ggml reads the variables once, on its first such product. The binary
/// calls this first thing, before any other thread; [`backend`] calls it again for library
/// users, before llama.cpp starts.
pub fn make_kquant_products_alike() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(TILED_VAR).is_none() && std::env::var_os(TILED_FORCE_VAR).is_none() {
            std::env::set_var(TILED_VAR, "0");
        }
    });
}

const TILED_VAR: &str = "GGML_CPU_TILED_MM";
const TILED_FORCE_VAR: &str = "GGML_CPU_TILED_MM_FORCE";

/// Whether ggml computes every K-quant product with one kernel whatever its columns: its tiled
/// kernel switched off (`GGML_CPU_TILED_MM=0`, this process's default, applied first if it
/// was not yet) or forced (`GGML_CPU_TILED_MM_FORCE=1`), as ggml reads the two variables.
pub fn kquant_products_alike() -> bool {
    make_kquant_products_alike();
    tiled_settings_alike(std::env::var(TILED_VAR).ok().as_deref(), std::env::var(TILED_FORCE_VAR).ok().as_deref())
}

/// [`kquant_products_alike`] for the values of `GGML_CPU_TILED_MM` and
/// `GGML_CPU_TILED_MM_FORCE`: ggml's kernel is on unless the first reads as 0, and forced when
/// the second reads as 1.
fn tiled_settings_alike(tiled: Option<&str>, force: Option<&str>) -> bool {
    let enabled = tiled.is_none_or(|v| atoi(v) != 0);
    let forced = force.is_some_and(|v| atoi(v) == 1);
    !enabled || forced
}

/// C's `atoi`: the leading integer after white space, 0 when there is none.
fn atoi(v: &str) -> i64 {
    let v = v.trim_start();
    let sign = usize::from(v.starts_with(['-', '+']));
    let end = v[sign..].find(|c: char| !c.is_ascii_digit()).map_or(v.len(), |e| e + sign);
    v[..end].parse().unwrap_or(0)
}

/// The weight types whose products were measured batch-invariant on x86-64 (Q4_0 through its
/// repacked copy on AVX2): the default model's Q4_1 and Q8_0, copies of it requantized to F16,
/// Q4_0, Q5_0 and Q8_0, Q5_1 as the other matrices of the Q3_K and Q5_K copies, a synthetic
/// F32 adapter; no text differed between parallel 1, 3 and 16 (`docs/reliability.md`).
pub const INVARIANT_WEIGHT_TYPES: &[&str] = &["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"];

/// The K-quant types measured batch-invariant (copies of the default model whose `ffn_down`
/// matrices hold Q2_K to Q6_K, and a Q4_K_M copy): only while [`kquant_products_alike`], and
/// with the model loaded without repacked copies (Q4_K's take groups of four columns with one
/// kernel and the rest with another), which a batch-invariant engine does for such models
/// ([`plain_cpu_buffers`]).
pub const INVARIANT_KQUANT_TYPES: &[&str] = &["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"];

/// The tensor types of the GGUF at `path`; `None` when it cannot be read, or when it is one
/// file of a model split over several (llama.cpp loads the others too, unread here).
fn tensor_types(path: &Path) -> Option<Vec<&'static str>> {
    let info = crate::checkpoint::inspect(path).ok()?.info;
    if info.get("split.count").is_some() {
        return None;
    }
    let mut types: Vec<&'static str> = info.tensors.iter().map(|t| t.ggml_type.name).collect();
    types.sort_unstable();
    types.dedup();
    Some(types)
}

/// Whether every tensor of the GGUF at `path` (a model or an adapter) is of a type whose
/// products are batch-invariant here ([`INVARIANT_WEIGHT_TYPES`], and
/// [`INVARIANT_KQUANT_TYPES`] while [`kquant_products_alike`]), as measured on x86-64 (a run
/// claims it only where [`batch_invariant`] does too); false when the file cannot be read.
pub fn weights_batch_invariant(path: &Path) -> bool {
    let kquants = kquant_products_alike();
    tensor_types(path).is_some_and(|types| {
        types.iter().all(|t| INVARIANT_WEIGHT_TYPES.contains(t) || (kquants && INVARIANT_KQUANT_TYPES.contains(t)))
    })
}

/// Whether the model at `path` is loaded without llama.cpp's repacked weight copies: for a
/// batch-invariant engine ([`batch_invariant`], x86-64 only), when the model has a type whose
/// copy's kernels take groups of columns one way and the rest another, or were not measured:
/// Q4_K (repacked on AVX2), Q2_K (AVX-512), IQ4_NL and MXFP4; Q4_0 where the build has AVX-512
/// (its copy was measured invariant on AVX2 only, where it is 1.3x faster at parallel 16, and
/// kept); every type in a build with AMX's kernels. Q3_K, Q5_K, Q6_K and the rest have no copy
/// on x86-64.
fn plain_cpu_buffers(path: &Path, config: &super::EngineParams) -> bool {
    let build = build_info();
    if !batch_invariant(&build, config) {
        return false;
    }
    let amx = build.system_info.contains("AMX_INT8 = 1");
    let avx512 = build.compiled_cpu_features.contains(&"avx512f");
    amx || tensor_types(path).is_none_or(|types| {
        types.iter().any(|t| matches!(*t, "Q4_K" | "Q2_K" | "IQ4_NL" | "MXFP4") || (avx512 && *t == "Q4_0"))
    })
}

/// Whether one-sequence generation steps carry a padding sequence: where llama.cpp's llamafile
/// kernels are compiled in on x86-64, whose kernels take any product of two or more columns
/// (`llamafile_sgemm` refuses only `n < 2` there).
fn pads_single_steps(build: &BuildInfo) -> bool {
    build.system_info.contains("LLAMAFILE = 1") && cfg!(target_arch = "x86_64")
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

#[cfg(test)]
mod tests {
    use super::{atoi, build_info, invariant_on, tiled_settings_alike, BuildInfo};
    use crate::engine::EngineParams;

    #[test]
    fn batch_invariance_is_claimed_on_x86_64_only() {
        let info = build_info();
        let without =
            BuildInfo { system_info: info.system_info.replace("LLAMAFILE = 1", "LLAMAFILE = 0"), ..info.clone() };
        let cpu = EngineParams::default();
        for build in [&info, &without] {
            assert!(invariant_on(true, build, &cpu));
            // Not measured elsewhere: `doctor` said yes off x86-64 for a build without the
            // llamafile kernels while no run there claimed it.
            assert!(!invariant_on(false, build, &cpu));
        }
    }

    #[test]
    fn atoi_reads_as_c_does() {
        for (text, value) in
            [("0", 0), ("1", 1), (" 1", 1), ("+1", 1), ("-3", -3), ("1x", 1), ("x1", 0), ("", 0), ("-", 0)]
        {
            assert_eq!(atoi(text), value, "{text:?}");
        }
    }

    #[test]
    fn kquant_products_are_alike_when_the_tiled_kernel_is_off_or_forced() {
        // ggml: on unless GGML_CPU_TILED_MM reads as 0; forced when GGML_CPU_TILED_MM_FORCE reads as 1.
        assert!(!tiled_settings_alike(None, None), "ggml's default takes the kernel from eight columns on");
        assert!(tiled_settings_alike(Some("0"), None));
        assert!(tiled_settings_alike(Some("0"), Some("0")));
        assert!(tiled_settings_alike(None, Some("1")));
        assert!(tiled_settings_alike(Some("1"), Some("1")));
        assert!(!tiled_settings_alike(Some("1"), None));
        assert!(tiled_settings_alike(Some("yes"), None), "atoi reads \"yes\" as 0: off");
        assert!(!tiled_settings_alike(None, Some("2")), "only 1 forces it");
    }
}
