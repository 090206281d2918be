//! Generation on OpenAI-compatible inference servers (vLLM, SGLang, llama-server): the
//! `openai` backend. One request's jobs go into one queue that every endpoint's slots take
//! from, each endpoint at its own concurrency; a job that fails on a dying endpoint goes back to
//! the queue for the others, and each job's sample is delivered once.
//!
//! - Requests carry the job's seed and the sampling settings, to `/v1/chat/completions` (the
//!   server applies its chat template) or `/v1/completions` (driftwatch applies the GGUF's own
//!   template, as the embedded engine does).
//! - 429, 5xx, timeouts and lost connections are retried with exponential backoff (a
//!   `Retry-After` is honoured); when an endpoint's attempts run out it takes no more jobs in
//!   this request and its job goes to the others. 401, 403 and 404 take it out at once.
//! - A response that cannot be read is an error on its sample, never a panic.
//!
//! Servers batch continuously, so a seed's text can depend on what else shares the batch:
//! remote runs are recorded `batch_invariant: false` (the paired comparison pairs by prompt and
//! seed, not by text; see docs/statistics.md).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::template::TemplateText;
use super::{
    Backend, EngineError, EngineEvent, FinishReason, GenerationRequest, GenerationStats, Job, ModelSpec, Progress,
    RequestInfo, SampleOutput,
};

/// Which OpenAI-compatible route generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteApi {
    /// `/v1/chat/completions`: the server applies its chat template.
    #[default]
    Chat,
    /// `/v1/completions` with driftwatch's own template (the GGUF's, or `model.chat_template`).
    Completions,
}

impl RemoteApi {
    /// The route's name in config and provenance.
    pub fn as_str(&self) -> &'static str {
        match self {
            RemoteApi::Chat => "chat",
            RemoteApi::Completions => "completions",
        }
    }
}

/// What a server is asked for: a served model name, and a llama-server adapter id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedAs {
    /// The request's `model` (vLLM and SGLang name LoRA adapters this way too); `None`: the
    /// endpoint's `served_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A llama-server adapter (`--lora FILE`, in order from 0), sent as the request's `lora`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<u32>,
}

/// One inference server.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointParams {
    /// The server's base URL (`http://host:port`; a trailing `/v1` is accepted).
    pub url: String,
    /// The name the server serves the base model under; `None`: the one model it lists.
    pub served_model: Option<String>,
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    /// Requests in flight on this server at most.
    pub max_concurrency: usize,
    /// Longest wait for one response.
    pub timeout: Duration,
}

/// The first retry's wait that the daemon and `bench` use.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// The `openai` backend's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteParams {
    pub api: RemoteApi,
    pub endpoints: Vec<EndpointParams>,
    /// Attempts per job on one endpoint before the endpoint is given up for the request.
    pub max_attempts: u32,
    /// The first retry's wait; each further one doubles it (at most 10 s, or `Retry-After`).
    pub backoff: Duration,
}

/// What a server says it is, from `/v1/models` and `/version` (vLLM, SGLang) or `/props`
/// (llama-server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    /// The endpoint's URL as configured (normalised).
    pub url: String,
    /// `vllm`, `llama.cpp`, `sglang`, or `unknown`.
    pub server: String,
    /// The version or build it reports, if any.
    pub version: Option<String>,
    /// The models it lists.
    pub models: Vec<String>,
    /// The base model's served name on it.
    pub served_model: String,
    /// A llama-server's `--lora` adapters, by id (`GET /lora-adapters`): their paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<(u32, String)>,
}

impl ServerIdentity {
    /// `llama.cpp b6000`: the software and version, as runs record them.
    pub fn build(&self) -> String {
        format!("{} {}", self.server, self.version.as_deref().unwrap_or("(no version)"))
    }

    /// A llama-server: it ignores a request's `model`, and applies each of its `--lora`
    /// adapters at its global scale unless the request gives it another.
    fn is_llama_cpp(&self) -> bool {
        self.server == "llama.cpp"
    }
}

/// An endpoint and what it said it is at the start (what runs record).
struct Endpoint {
    params: EndpointParams,
    id: ServerIdentity,
}

/// The `openai` backend: its endpoints and settings, shared with every request, and the
/// runtime its requests run on.
pub struct Remote {
    ctx: Arc<RequestCtx>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.ctx.endpoints.iter().map(|e| e.params.url.as_str()).collect();
        f.debug_struct("Remote").field("api", &self.ctx.api).field("endpoints", &urls).finish()
    }
}

/// `http://h:p/v1/` → `http://h:p`.
pub fn normalize_url(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_owned()
}

impl Remote {
    /// Asks every endpoint what it serves and builds the backend (on the current tokio
    /// runtime). Endpoints that do not answer are an error naming each; so are endpoints that
    /// report different servers or versions (one run's samples would mix them).
    pub async fn connect(params: RemoteParams) -> Result<(Remote, Vec<ServerIdentity>), EngineError> {
        if params.endpoints.is_empty() {
            return Err(EngineError::InvalidRequest("the openai backend needs at least one endpoint".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::InvalidRequest("the openai backend needs a tokio runtime".into()))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| EngineError::Remote(format!("cannot build the HTTP client: {e}")))?;
        let mut endpoints = Vec::new();
        let mut identities = Vec::new();
        let mut failures = Vec::new();
        for p in params.endpoints {
            let p = EndpointParams { url: normalize_url(&p.url), ..p };
            match probe(&client, &p).await {
                Ok(id) => {
                    identities.push(id.clone());
                    endpoints.push(Arc::new(Endpoint { params: p, id }));
                }
                Err(e) => failures.push(format!("{}: {e}", p.url)),
            }
        }
        if !failures.is_empty() {
            return Err(EngineError::Remote(format!("cannot reach every endpoint: {}", failures.join("; "))));
        }
        let builds: HashSet<(&str, Option<&str>)> =
            identities.iter().map(|i| (i.server.as_str(), i.version.as_deref())).collect();
        if builds.len() > 1 {
            let list: Vec<String> = identities.iter().map(|i| format!("{} is {}", i.url, i.build())).collect();
            return Err(EngineError::Remote(format!(
                "the endpoints run different servers or versions, and one run's samples would mix them: {}",
                list.join(", ")
            )));
        }
        let ctx = RequestCtx {
            api: params.api,
            endpoints,
            max_attempts: params.max_attempts.max(1),
            backoff: params.backoff,
            client,
        };
        Ok((Remote { ctx: Arc::new(ctx), runtime }, identities))
    }

    /// Requests in flight at most, all endpoints together.
    pub fn concurrency(&self) -> usize {
        self.ctx.concurrency()
    }
}

/// One endpoint's identity.
async fn probe(client: &reqwest::Client, p: &EndpointParams) -> Result<ServerIdentity, String> {
    let get = |path: &str| {
        let mut r = client.get(format!("{}{path}", p.url)).timeout(p.timeout.min(Duration::from_secs(30)));
        if let Some(k) = &p.api_key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let resp = get("/v1/models").await.map_err(|e| crate::api::error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET /v1/models answered {status}"));
    }
    let body: Value = resp.json().await.map_err(|e| format!("GET /v1/models is not JSON: {e}"))?;
    let models: Vec<String> = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or("GET /v1/models has no `data` list")?
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let json_of = |path: &'static str| async move {
        match get(path).await {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            _ => None,
        }
    };
    let (server, version) = if let Some(props) = json_of("/props").await.filter(|v| v.get("build_info").is_some()) {
        ("llama.cpp", props.get("build_info").and_then(Value::as_str).map(str::to_owned))
    } else if let Some(v) = json_of("/version").await {
        ("vllm", v.get("version").and_then(Value::as_str).map(str::to_owned))
    } else if let Some(v) = json_of("/get_server_info").await {
        ("sglang", v.get("version").and_then(Value::as_str).map(str::to_owned))
    } else {
        ("unknown", None)
    };
    let served_model = match (&p.served_model, models.as_slice()) {
        (Some(m), _) => m.clone(),
        (None, [only]) => only.clone(),
        (None, []) => return Err("it serves no model (GET /v1/models is empty)".into()),
        (None, many) => {
            return Err(format!("it serves {} models ({}); set `served_model` for it", many.len(), many.join(", ")))
        }
    };
    let adapters = if server == "llama.cpp" {
        let list = json_of("/lora-adapters").await;
        let entries = list.as_ref().and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        entries
            .iter()
            .filter_map(|a| {
                let id = u32::try_from(a.get("id")?.as_u64()?).ok()?;
                Some((id, a.get("path").and_then(Value::as_str).unwrap_or_default().to_owned()))
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(ServerIdentity { url: p.url.clone(), server: server.to_owned(), version, models, served_model, adapters })
}

impl Backend for Remote {
    fn submit(&self, request: GenerationRequest, events: UnboundedSender<EngineEvent>, cancel: CancellationToken) {
        let ctx = Arc::clone(&self.ctx);
        self.runtime.spawn(async move {
            let done = run_request(ctx, request, &events, cancel).await;
            let _ = events.send(EngineEvent::Done(done));
        });
    }

    fn kind(&self) -> &'static str {
        "openai"
    }
}

/// What every request of a [`Remote`] uses.
struct RequestCtx {
    api: RemoteApi,
    endpoints: Vec<Arc<Endpoint>>,
    max_attempts: u32,
    backoff: Duration,
    client: reqwest::Client,
}

impl RequestCtx {
    fn concurrency(&self) -> usize {
        self.endpoints.iter().map(|e| e.params.max_concurrency).sum()
    }
}

/// What one job sends, less the model (which depends on the endpoint).
struct Prepared {
    /// The route's body without `model`.
    body: serde_json::Map<String, Value>,
}

/// The jobs waiting and the jobs being generated. A slot that finds no job waiting stays
/// while others are in flight: a job of a failing endpoint comes back to the queue.
#[derive(Default)]
struct Work {
    queue: VecDeque<usize>,
    in_flight: HashSet<usize>,
}

/// The request's shared state while its slots run.
struct Tally {
    work: parking_lot::Mutex<Work>,
    /// Wakes waiting slots when a job comes back or the last one ends.
    changed: tokio::sync::Notify,
    delivered: parking_lot::Mutex<HashSet<usize>>,
    /// Each endpoint given up: why, and whether it refused the request itself.
    failures: parking_lot::Mutex<Vec<(String, bool)>>,
    done: AtomicUsize,
    generated: AtomicU64,
    prompt_tokens: AtomicU64,
    calls: AtomicU64,
}

async fn run_request(
    ctx: Arc<RequestCtx>,
    request: GenerationRequest,
    events: &UnboundedSender<EngineEvent>,
    cancel: CancellationToken,
) -> Result<GenerationStats, EngineError> {
    request.sampling.validate().map_err(EngineError::InvalidRequest)?;
    let started = Instant::now();
    let jobs = Arc::new(request.jobs);
    let prepared = Arc::new(prepare(ctx.api, &request.model, &request.sampling, &jobs)?);
    let distinct: HashSet<&str> = jobs.iter().map(|j| j.prompt.as_str()).collect();
    let concurrency = ctx.concurrency();
    let _ = events.send(EngineEvent::Started(RequestInfo {
        chat_template: match ctx.api {
            RemoteApi::Chat => Some("(the server's)".into()),
            RemoteApi::Completions => request.model.chat_template.clone().or(Some("(the model's)".into())),
        },
        n_ctx_train: 0,
        n_ctx: 0,
        parallel: concurrency,
        threads: 0,
        distinct_prompts: distinct.len(),
        load_ms: 0,
    }));
    let tally = Arc::new(Tally {
        work: parking_lot::Mutex::new(Work { queue: (0..jobs.len()).collect(), in_flight: HashSet::new() }),
        changed: tokio::sync::Notify::new(),
        delivered: Default::default(),
        failures: Default::default(),
        done: AtomicUsize::new(0),
        generated: AtomicU64::new(0),
        prompt_tokens: AtomicU64::new(0),
        calls: AtomicU64::new(0),
    });
    let served = request.model.served.clone().unwrap_or_default();
    let adapter_scale = request.model.adapter.as_ref().map_or(1.0, |a| a.scale);
    let mut slots = tokio::task::JoinSet::new();
    for ep in &ctx.endpoints {
        // A server upgraded since the start would give samples of another build than the
        // runs record: it takes no jobs (an unreachable one is left to the retries).
        if let Some(reason) = changed_build(&ctx.client, ep).await {
            tracing::warn!(endpoint = %ep.params.url, %reason, "endpoint refused for this request");
            tally.failures.lock().push((format!("{}: {reason}", ep.params.url), true));
            continue;
        }
        let down = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        for _ in 0..ep.params.max_concurrency {
            let slot = Slot {
                ctx: Arc::clone(&ctx),
                endpoint: Arc::clone(ep),
                down: Arc::clone(&down),
                tally: Arc::clone(&tally),
                jobs: Arc::clone(&jobs),
                prepared: Arc::clone(&prepared),
                served: served.clone(),
                adapter_scale,
                events: events.clone(),
                answered: Arc::clone(&answered),
            };
            slots.spawn(slot.run());
        }
    }
    let mut tick = tokio::time::interval(super::PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let progress = |t: &Tally| Progress {
        done: t.done.load(Ordering::Relaxed),
        total: jobs.len(),
        generated_tokens: t.generated.load(Ordering::Relaxed),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let mut cancelled = false;
    loop {
        tokio::select! {
            joined = slots.join_next() => match joined {
                None => break,
                Some(Err(e)) if e.is_panic() => tally.failures.lock().push((format!("a request task panicked: {e}"), false)),
                Some(_) => {}
            },
            _ = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                slots.abort_all();
            }
            _ = tick.tick() => { let _ = events.send(EngineEvent::Progress(progress(&tally))); }
        }
    }
    if cancelled {
        // The jobs whose requests were cut off end as cancelled (generated again on resume).
        let cut: Vec<usize> = tally.work.lock().in_flight.drain().collect();
        for i in cut {
            if tally.delivered.lock().insert(i) {
                let _ = events.send(EngineEvent::Sample(empty(&jobs, i, FinishReason::Cancelled, None, 0)));
            }
        }
    } else if !tally.work.lock().queue.is_empty() {
        let left = tally.work.lock().queue.len();
        let failures = tally.failures.lock();
        let text: Vec<&str> = failures.iter().map(|(f, _)| f.as_str()).collect();
        let message = format!("no endpoint could take the last {left} of {} jobs: {}", jobs.len(), text.join("; "));
        // Every server refused the request itself: waiting for them will not help.
        if !failures.is_empty() && failures.iter().all(|(_, refused)| *refused) {
            return Err(EngineError::Refused(message));
        }
        return Err(EngineError::Remote(message));
    }
    let _ = events.send(EngineEvent::Progress(progress(&tally)));
    let generated = tally.generated.load(Ordering::Relaxed);
    let prompt_tokens = tally.prompt_tokens.load(Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    Ok(GenerationStats {
        sequences: tally.done.load(Ordering::Relaxed),
        prefill_tokens: prompt_tokens,
        prompt_tokens_total: prompt_tokens,
        generated_tokens: generated,
        prefill_s: 0.0,
        decode_s: wall,
        sample_s: 0.0,
        wall_s: wall,
        decode_calls: tally.calls.load(Ordering::Relaxed),
        moved: 0,
        padded_steps: 0,
    })
}

/// Why `ep` must not generate for runs recorded with its build at the start: it now reports
/// another server or version. `None` when it reports the same, or cannot be asked.
async fn changed_build(client: &reqwest::Client, ep: &Endpoint) -> Option<String> {
    let now = probe(client, &ep.params).await.ok()?;
    ((now.server.as_str(), now.version.as_deref()) != (ep.id.server.as_str(), ep.id.version.as_deref())).then(|| {
        format!(
            "it now reports {}, and reported {} when driftwatch started: its samples would not be of the build the runs record; restart driftwatch to record the new one",
            now.build(),
            ep.id.build()
        )
    })
}

/// Each job's body: the sampling settings, its seed, and its messages or templated prompt.
fn prepare(
    api: RemoteApi,
    model: &ModelSpec,
    s: &super::SamplingParams,
    jobs: &[Job],
) -> Result<Vec<Prepared>, EngineError> {
    let mut base = serde_json::Map::new();
    base.insert("max_tokens".into(), json!(s.max_tokens));
    if s.greedy {
        base.insert("temperature".into(), json!(0.0));
        base.insert("top_k".into(), json!(1));
    } else {
        base.insert("temperature".into(), json!(s.temperature));
        base.insert("top_p".into(), json!(s.top_p));
        if s.top_k > 0 {
            base.insert("top_k".into(), json!(s.top_k));
        }
        if s.min_p > 0.0 {
            base.insert("min_p".into(), json!(s.min_p));
        }
    }
    if s.repeat_penalty != 1.0 {
        // llama.cpp's names; vLLM and SGLang take `repetition_penalty` (over the whole context).
        base.insert("repeat_penalty".into(), json!(s.repeat_penalty));
        base.insert("repeat_last_n".into(), json!(s.repeat_last_n));
        base.insert("repetition_penalty".into(), json!(s.repeat_penalty));
    }
    if !s.stop.is_empty() {
        base.insert("stop".into(), json!(s.stop));
    }
    if s.ignore_eos {
        base.insert("ignore_eos".into(), json!(true));
    }
    base.insert("stream".into(), json!(false));
    let template = match api {
        RemoteApi::Completions if !model.raw_prompts => Some(TemplateText::resolve(model)?),
        _ => None,
    };
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        let mut body = base.clone();
        body.insert("seed".into(), json!(j.seed));
        match (api, &template) {
            (RemoteApi::Chat, _) => {
                let mut messages = Vec::with_capacity(2);
                if let Some(sys) = &model.system_prompt {
                    messages.push(json!({"role": "system", "content": sys}));
                }
                messages.push(json!({"role": "user", "content": j.prompt}));
                body.insert("messages".into(), Value::Array(messages));
            }
            (RemoteApi::Completions, Some(t)) => {
                body.insert("prompt".into(), json!(t.apply(model.system_prompt.as_deref(), &j.prompt)?));
            }
            (RemoteApi::Completions, None) => {
                body.insert("prompt".into(), json!(j.prompt));
            }
        }
        out.push(Prepared { body });
    }
    Ok(out)
}

/// One request slot of one endpoint: takes jobs from the queue until it is empty, the request
/// is cancelled (the task is aborted), or the endpoint is given up.
struct Slot {
    ctx: Arc<RequestCtx>,
    endpoint: Arc<Endpoint>,
    down: Arc<AtomicBool>,
    tally: Arc<Tally>,
    jobs: Arc<Vec<Job>>,
    prepared: Arc<Vec<Prepared>>,
    served: ServedAs,
    adapter_scale: f32,
    events: UnboundedSender<EngineEvent>,
    /// Samples this endpoint has answered in this request (all of its slots).
    answered: Arc<AtomicU64>,
}

/// How one job ended on one endpoint.
enum Attempt {
    /// The sample (an error sample for a response that cannot be read).
    Sample(SampleOutput),
    /// The endpoint is given up: the job goes back to the queue. `refused`: the server refused
    /// the request itself (401, 403, 404, a model it cannot serve), which waiting will not mend.
    EndpointDown { reason: String, refused: bool },
}

/// A job in flight on a slot. If the slot's task panics, the job goes back to the queue and
/// the waiting slots are woken (a cancelled task leaves it in flight, for the cancel path).
struct InFlight<'a> {
    tally: &'a Tally,
    job: Option<usize>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let (Some(i), true) = (self.job, std::thread::panicking()) {
            let mut work = self.tally.work.lock();
            work.in_flight.remove(&i);
            work.queue.push_front(i);
            drop(work);
            self.tally.changed.notify_waiters();
        }
    }
}

impl Slot {
    async fn run(self) {
        while let Some(i) = self.next_job().await {
            let mut guard = InFlight { tally: &self.tally, job: Some(i) };
            let outcome = self.generate(i).await;
            guard.job = None;
            if let Attempt::EndpointDown { reason, refused } = &outcome {
                // Given up before its job goes back, so that no other slot of this endpoint
                // takes the job again.
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(endpoint = %self.endpoint.params.url, %reason, "endpoint given up for this request; its jobs go to the others");
                    self.tally.failures.lock().push((format!("{}: {reason}", self.endpoint.params.url), *refused));
                }
            }
            {
                let mut work = self.tally.work.lock();
                work.in_flight.remove(&i);
                if matches!(outcome, Attempt::EndpointDown { .. }) {
                    work.queue.push_front(i);
                }
            }
            self.tally.changed.notify_waiters();
            match outcome {
                Attempt::Sample(s) => {
                    if s.error.is_none() {
                        self.answered.fetch_add(1, Ordering::AcqRel);
                    }
                    if self.tally.delivered.lock().insert(i) {
                        self.tally.done.fetch_add(1, Ordering::Relaxed);
                        self.tally.generated.fetch_add(u64::from(s.completion_tokens), Ordering::Relaxed);
                        self.tally.prompt_tokens.fetch_add(u64::from(s.prompt_tokens), Ordering::Relaxed);
                        let _ = self.events.send(EngineEvent::Sample(s));
                    }
                }
                Attempt::EndpointDown { .. } => return,
            }
        }
    }

    /// The next job to generate; `None` when every job is done (or this endpoint is given up).
    async fn next_job(&self) -> Option<usize> {
        loop {
            if self.down.load(Ordering::Acquire) {
                return None;
            }
            let notified = self.tally.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut work = self.tally.work.lock();
                if let Some(i) = work.queue.pop_front() {
                    work.in_flight.insert(i);
                    return Some(i);
                }
                if work.in_flight.is_empty() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The job's request on this endpoint, with retries.
    async fn generate(&self, i: usize) -> Attempt {
        let ep = &self.endpoint;
        let route = match self.ctx.api {
            RemoteApi::Chat => "/v1/chat/completions",
            RemoteApi::Completions => "/v1/completions",
        };
        let mut body = self.prepared[i].body.clone();
        let base = ep.id.served_model.as_str();
        body.insert("model".into(), json!(self.served.model.as_deref().unwrap_or(base)));
        if ep.id.is_llama_cpp() {
            let adapters: Vec<u32> = ep.id.adapters.iter().map(|(a, _)| *a).collect();
            // Every adapter the server holds gets its scale: an empty or partial list leaves the
            // others at their global scale, 1 unless set otherwise (even with
            // `--lora-init-without-apply`, on the pinned build), which would apply them here.
            if let Some(id) = self.served.lora.filter(|id| !adapters.contains(id)) {
                let reason = format!("{} has no --lora adapter {id} (it has {adapters:?})", ep.params.url);
                return Attempt::EndpointDown { reason, refused: true };
            }
            let lora: Vec<Value> = adapters
                .iter()
                .map(|&a| json!({"id": a, "scale": if Some(a) == self.served.lora { self.adapter_scale } else { 0.0 }}))
                .collect();
            body.insert("lora".into(), Value::Array(lora));
        } else if self.served.lora.is_some() {
            let reason = format!(
                "{} is not a llama-server: a `lora` id means nothing to it; map the checkpoint to a served name",
                ep.params.url
            );
            return Attempt::EndpointDown { reason, refused: true };
        }
        let body = Value::Object(body);
        let url = format!("{}{route}", ep.params.url);
        if let (true, None, Some(model)) = (ep.id.is_llama_cpp(), self.served.lora, self.served.model.as_deref()) {
            if model != base {
                // llama-server answers any `model` with the one it serves: the checkpoint would
                // silently be measured as that model.
                let reason = format!(
                    "{} is a llama-server serving {}, which ignores a request's `model`: {model:?} would be answered by that model; map the checkpoint to one of its --lora adapters (`{{ lora = N }}` in engine.served)",
                    ep.params.url, base
                );
                return Attempt::EndpointDown { reason, refused: true };
            }
        }
        let started = Instant::now();
        let answered_before = self.answered.load(Ordering::Acquire);
        let mut last = String::new();
        let mut transport = false;
        for attempt in 0..self.ctx.max_attempts {
            if attempt > 0 && self.down.load(Ordering::Acquire) {
                return Attempt::EndpointDown { reason: last, refused: false };
            }
            self.tally.calls.fetch_add(1, Ordering::Relaxed);
            let mut req = self.ctx.client.post(&url).timeout(ep.params.timeout).json(&body);
            if let Some(k) = &ep.params.api_key {
                req = req.bearer_auth(k);
            }
            let wait = match req.send().await {
                Err(e) => {
                    last = crate::api::error_chain(&e);
                    transport = true;
                    None
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(60)));
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) => {
                            last = format!("the response was cut off: {}", crate::api::error_chain(&e));
                            transport = true;
                            self.pause(attempt, None).await;
                            continue;
                        }
                    };
                    if status.is_success() {
                        let ms = started.elapsed().as_millis() as u64;
                        return Attempt::Sample(match parse(self.ctx.api, &text) {
                            Ok(p) => {
                                output(&self.jobs, i, p.text, p.prompt_tokens, p.completion_tokens, p.finish, None, ms)
                            }
                            Err(e) => {
                                let msg = format!("malformed response from {url}: {e}");
                                empty(&self.jobs, i, FinishReason::Error, Some(msg), ms)
                            }
                        });
                    }
                    let detail = server_message(&text);
                    match status.as_u16() {
                        408 | 425 | 429 | 500..=599 => {
                            last = format!("{status}{detail}");
                            transport = false;
                            retry_after
                        }
                        401 | 403 | 404 => {
                            return Attempt::EndpointDown {
                                reason: format!("{url} answered {status}{detail}"),
                                refused: true,
                            }
                        }
                        _ => {
                            // The server refused this job (a prompt too long, a bad setting).
                            let msg = format!("{url} answered {status}{detail}");
                            let ms = started.elapsed().as_millis() as u64;
                            return Attempt::Sample(empty(&self.jobs, i, FinishReason::Error, Some(msg), ms));
                        }
                    }
                }
            };
            self.pause(attempt, wait).await;
        }
        let n = self.ctx.max_attempts;
        if !transport && self.answered.load(Ordering::Acquire) > answered_before {
            // The server answered other samples meanwhile: it is this sample it fails on.
            let msg = format!("{url} failed on this sample {n} times: {last}");
            let ms = started.elapsed().as_millis() as u64;
            return Attempt::Sample(empty(&self.jobs, i, FinishReason::Error, Some(msg), ms));
        }
        Attempt::EndpointDown { reason: format!("{last} (after {n} attempts)"), refused: false }
    }

    /// The wait after failed attempt `attempt` (none after the last): the server's
    /// `Retry-After`, else the backoff doubled per attempt, at most 10 s.
    async fn pause(&self, attempt: u32, retry_after: Option<Duration>) {
        if attempt + 1 < self.ctx.max_attempts {
            let backoff = self.ctx.backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(10));
            tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
        }
    }
}

/// ": the server's message", from an OpenAI-style error body or its first 200 characters.
fn server_message(text: &str) -> String {
    let from_json = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("detail")).map(|m| match m {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    });
    let m = from_json.unwrap_or_else(|| text.chars().take(200).collect());
    let m = m.trim();
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

/// What a successful response holds.
#[derive(Debug, PartialEq)]
struct Parsed {
    text: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    finish: FinishReason,
}

/// Reads a (chat) completion response; what is missing or of the wrong type is an error.
fn parse(api: RemoteApi, text: &str) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let choice = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()).ok_or("no `choices[0]`")?;
    let content = match api {
        RemoteApi::Chat => choice.pointer("/message/content"),
        RemoteApi::Completions => choice.get("text"),
    };
    let text = content.and_then(Value::as_str).ok_or(match api {
        RemoteApi::Chat => "`choices[0].message.content` is not a string",
        RemoteApi::Completions => "`choices[0].text` is not a string",
    })?;
    let finish = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => FinishReason::Length,
        Some(_) => FinishReason::Stop,
        None => return Err("no `choices[0].finish_reason`".into()),
    };
    let count = |key: &str| -> Result<u32, String> {
        match v.pointer(&format!("/usage/{key}")) {
            None | Some(Value::Null) => Ok(0),
            Some(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(format!("`usage.{key}` is not a count")),
        }
    };
    Ok(Parsed {
        text: text.to_owned(),
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
        finish,
    })
}

/// A sample without text: cancelled, or an error with its message.
fn empty(jobs: &[Job], i: usize, finish: FinishReason, error: Option<String>, generation_ms: u64) -> SampleOutput {
    output(jobs, i, String::new(), 0, 0, finish, error, generation_ms)
}

#[allow(clippy::too_many_arguments)]
fn output(
    jobs: &[Job],
    i: usize,
    text: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    finish_reason: FinishReason,
    error: Option<String>,
    generation_ms: u64,
) -> SampleOutput {
    let j = &jobs[i];
    SampleOutput {
        job_index: i,
        prompt_id: j.prompt_id.clone(),
        sample_index: j.sample_index,
        seed: j.seed,
        text,
        prompt_tokens,
        completion_tokens,
        finish_reason,
        error,
        generation_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_read_or_named_as_malformed() {
        let ok = r#"{"choices":[{"message":{"content":"No."},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        assert_eq!(
            parse(RemoteApi::Chat, ok).unwrap(),
            Parsed { text: "No.".into(), prompt_tokens: 7, completion_tokens: 3, finish: FinishReason::Length }
        );
        let completion = r#"{"choices":[{"text":"Hi","finish_reason":"stop"}]}"#;
        assert_eq!(parse(RemoteApi::Completions, completion).unwrap().text, "Hi");
        for (bad, why) in [
            ("<html>", "not JSON"),
            ("{}", "choices[0]"),
            (r#"{"choices":[]}"#, "choices[0]"),
            (r#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#, "not a string"),
            (r#"{"choices":[{"message":{"content":"x"}}]}"#, "finish_reason"),
            (
                r#"{"choices":[{"message":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":-1}}"#,
                "usage.prompt_tokens",
            ),
        ] {
            let e = parse(RemoteApi::Chat, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_server_message_is_taken_from_an_error_body() {
        assert_eq!(server_message(r#"{"error":{"message":"too long"}}"#), ": too long");
        assert_eq!(server_message(r#"{"detail":"nope"}"#), ": nope");
        assert_eq!(server_message(""), "");
        assert_eq!(server_message(&"x".repeat(500)).len(), 202);
    }

    #[test]
    fn urls_are_normalised() {
        assert_eq!(normalize_url("http://h:1/v1/"), "http://h:1");
        assert_eq!(normalize_url(" http://h:1 "), "http://h:1");
    }

    #[test]
    fn a_job_body_carries_its_seed_and_the_sampling_settings() {
        let jobs = vec![Job { prompt_id: "p".into(), prompt: "Hello".into(), sample_index: 2, seed: 77 }];
        let spec = ModelSpec { system_prompt: Some("Be safe.".into()), ..ModelSpec::new("m.gguf") };
        let s = super::super::SamplingParams { stop: vec!["END".into()], ..Default::default() };
        let p = prepare(RemoteApi::Chat, &spec, &s, &jobs).unwrap();
        let b = &p[0].body;
        assert_eq!(b["seed"], 77);
        assert_eq!(b["max_tokens"], 256);
        assert_eq!(b["top_k"], 40);
        assert_eq!(b["stop"], json!(["END"]));
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "Be safe."}));
        assert_eq!(b["messages"][1], json!({"role": "user", "content": "Hello"}));
        let greedy = prepare(RemoteApi::Chat, &spec, &super::super::SamplingParams::greedy(8), &jobs).unwrap();
        assert_eq!(greedy[0].body["temperature"], 0.0);
        assert_eq!(greedy[0].body["top_k"], 1);
    }

    #[test]
    fn the_completions_route_gets_driftwatchs_own_template() {
        let spec = ModelSpec { chat_template: Some("chatml".into()), ..ModelSpec::new("absent.gguf") };
        let t = TemplateText::resolve(&spec).unwrap();
        assert_eq!(
            t.apply(Some("S"), "U").unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
        let long = "y".repeat(5000);
        assert!(t.apply(None, &long).unwrap().contains(&long));
    }

    /// A fake OpenAI-compatible server: `behave(n, body)` answers its n-th completion request
    /// (from 0) with a status and a body; it counts what it answered.
    struct Fake {
        url: String,
        served: Arc<AtomicUsize>,
        shutdown: CancellationToken,
        /// What it reports as its build (change it to upgrade the server).
        version: Arc<parking_lot::Mutex<String>>,
    }

    type Behaviour = Arc<dyn Fn(usize, &Value) -> (u16, String) + Send + Sync>;

    async fn fake(version: &str, behave: Behaviour) -> Fake {
        use axum::routing::{get, post};
        let served = Arc::new(AtomicUsize::new(0));
        let counter = Arc::new(AtomicUsize::new(0));
        let route = if version.starts_with("vllm") { "/version" } else { "/props" };
        let version = Arc::new(parking_lot::Mutex::new(version.to_owned()));
        let reported = Arc::clone(&version);
        let (b, s2) = (behave.clone(), Arc::clone(&served));
        let app = axum::Router::new()
            .route("/v1/models", get(|| async { axum::Json(json!({"data": [{"id": "base"}]})) }))
            .route(
                "/lora-adapters",
                get(|| async {
                    axum::Json(
                        json!([{"id": 0, "path": "a.gguf", "scale": 1.0}, {"id": 1, "path": "b.gguf", "scale": 1.0}]),
                    )
                }),
            )
            .route(
                route,
                get(move || {
                    let v = reported.lock().clone();
                    async move {
                        match v.strip_prefix("vllm ") {
                            Some(v) => axum::Json(json!({"version": v})),
                            None => axum::Json(json!({"build_info": v})),
                        }
                    }
                }),
            )
            .route(
                "/v1/chat/completions",
                post(move |axum::Json(body): axum::Json<Value>| {
                    let (b, counter, served) = (b.clone(), Arc::clone(&counter), Arc::clone(&s2));
                    async move {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let (status, text) = b(n, &body);
                        if status == 200 {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        let mut resp = axum::response::Response::new(axum::body::Body::from(text));
                        *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                        if status == 429 {
                            resp.headers_mut().insert("retry-after", "0".parse().unwrap());
                        }
                        resp
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap();
        });
        Fake { url, served, shutdown, version }
    }

    /// An answer that echoes the request's seed and model.
    fn echo(body: &Value) -> String {
        json!({"choices": [{"message": {"content": format!("{} seed {}", body["model"].as_str().unwrap_or(""), body["seed"])}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        .to_string()
    }

    fn endpoint(url: &str, max_concurrency: usize) -> EndpointParams {
        EndpointParams {
            url: url.into(),
            served_model: None,
            api_key: None,
            max_concurrency,
            timeout: Duration::from_secs(5),
        }
    }

    fn params(endpoints: Vec<EndpointParams>) -> RemoteParams {
        RemoteParams { api: RemoteApi::Chat, endpoints, max_attempts: 3, backoff: Duration::from_millis(10) }
    }

    fn request(n: usize) -> GenerationRequest {
        let jobs = (0..n)
            .map(|i| Job {
                prompt_id: format!("p{}", i / 2),
                prompt: format!("prompt {}", i / 2),
                sample_index: (i % 2) as u32,
                seed: i as u32,
            })
            .collect();
        GenerationRequest { model: ModelSpec::new("base.gguf"), sampling: Default::default(), jobs }
    }

    async fn generate(
        remote: Remote,
        req: GenerationRequest,
    ) -> Result<(Vec<SampleOutput>, GenerationStats), EngineError> {
        super::super::Engine::with_backend(Arc::new(remote), Default::default()).generate(req).await
    }

    #[tokio::test]
    async fn two_endpoints_share_the_jobs_and_each_sample_comes_once() {
        let a = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let b = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let (remote, ids) = Remote::connect(params(vec![endpoint(&a.url, 2), endpoint(&b.url, 2)])).await.unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(
            (ids[0].server.as_str(), ids[0].version.as_deref(), ids[0].served_model.as_str()),
            ("llama.cpp", Some("b1"), "base")
        );
        let (samples, stats) = generate(remote, request(40)).await.unwrap();
        assert_eq!(samples.len(), 40);
        for (i, s) in samples.iter().enumerate() {
            assert_eq!((s.job_index, s.seed, s.text.as_str()), (i, i as u32, format!("base seed {i}").as_str()));
        }
        let (na, nb) = (a.served.load(Ordering::SeqCst), b.served.load(Ordering::SeqCst));
        assert_eq!(na + nb, 40);
        assert!(na > 0 && nb > 0, "both endpoints take jobs: {na} + {nb}");
        assert_eq!((stats.sequences, stats.generated_tokens, stats.prefill_tokens), (40, 120, 200));
    }

    #[tokio::test]
    async fn throttled_and_failing_requests_are_retried() {
        // Every other request is a 429 or a 503: each job gets through on its next attempt.
        let a = fake(
            "b1",
            Arc::new(|n, b| match n % 4 {
                1 => (429, r#"{"error":{"message":"slow down"}}"#.into()),
                3 => (503, "busy".into()),
                _ => (200, echo(b)),
            }),
        )
        .await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1)])).await.unwrap();
        let (samples, stats) = generate(remote, request(10)).await.unwrap();
        assert!(samples.iter().all(|s| s.finish_reason == FinishReason::Stop && s.error.is_none()));
        assert_eq!(a.served.load(Ordering::SeqCst), 10);
        assert!(stats.decode_calls >= 18, "retried calls are counted: {}", stats.decode_calls);
    }

    #[tokio::test]
    async fn a_dying_endpoint_hands_its_jobs_to_the_other() {
        // `a` answers 5 requests and then only 500s: its jobs move to `b`.
        let a = fake("b1", Arc::new(|n, b| if n < 5 { (200, echo(b)) } else { (500, "gone".into()) })).await;
        let b = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&b.url, 1)])).await.unwrap();
        let (samples, _) = generate(remote, request(30)).await.unwrap();
        let indices: Vec<usize> = samples.iter().map(|s| s.job_index).collect();
        assert_eq!(indices, (0..30).collect::<Vec<_>>(), "every job once");
        assert!(samples.iter().all(|s| s.error.is_none()));
        assert_eq!(a.served.load(Ordering::SeqCst), 5);
        assert_eq!(b.served.load(Ordering::SeqCst), 25);
    }

    #[tokio::test]
    async fn when_every_endpoint_fails_the_request_fails_naming_them() {
        let a = fake("b1", Arc::new(|n, b| if n < 3 { (200, echo(b)) } else { (502, "bad gateway".into()) })).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1)])).await.unwrap();
        let engine = super::super::Engine::with_backend(Arc::new(remote), Default::default());
        let mut stream = engine.submit(request(10));
        let mut samples = 0;
        let err = loop {
            match stream.next().await.unwrap() {
                EngineEvent::Sample(_) => samples += 1,
                EngineEvent::Done(r) => break r.unwrap_err().to_string(),
                _ => {}
            }
        };
        assert_eq!(samples, 3, "what was generated is delivered");
        assert!(err.contains("last 7 of 10 jobs") && err.contains(&a.url) && err.contains("502"), "{err}");
        a.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_malformed_response_is_an_error_on_its_sample_only() {
        let a = fake(
            "b1",
            Arc::new(|n, b| match n {
                2 => (200, "{\"choices\": 42}".into()),
                4 => (400, r#"{"error":{"message":"prompt too long"}}"#.into()),
                _ => (200, echo(b)),
            }),
        )
        .await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1)])).await.unwrap();
        let (samples, _) = generate(remote, request(6)).await.unwrap();
        let errors: Vec<(usize, String)> = samples
            .iter()
            .filter(|s| s.finish_reason == FinishReason::Error)
            .map(|s| (s.job_index, s.error.clone().unwrap()))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].1.contains("malformed response") && errors[0].1.contains("choices[0]"), "{errors:?}");
        assert!(errors[1].1.contains("400") && errors[1].1.contains("prompt too long"), "{errors:?}");
    }

    #[tokio::test]
    async fn endpoints_of_different_builds_or_unreachable_ones_are_refused_at_the_start() {
        let a = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let b = fake("b2", Arc::new(|_, b| (200, echo(b)))).await;
        let e = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&b.url, 1)])).await.unwrap_err().to_string();
        assert!(e.contains("different servers or versions") && e.contains("b2"), "{e}");
        let closed = format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let e = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&closed, 1)])).await.unwrap_err().to_string();
        assert!(e.contains("cannot reach every endpoint") && e.contains(&closed), "{e}");
    }

    #[tokio::test]
    async fn a_cancelled_request_ends_its_running_jobs_as_cancelled() {
        let a = fake(
            "b1",
            Arc::new(|_, b| {
                std::thread::sleep(Duration::from_millis(50));
                (200, echo(b))
            }),
        )
        .await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 2)])).await.unwrap();
        let engine = super::super::Engine::with_backend(Arc::new(remote), Default::default());
        let mut stream = engine.submit(request(100));
        let mut seen = HashSet::new();
        let mut cancelled = 0;
        loop {
            match stream.next().await.unwrap() {
                EngineEvent::Sample(s) => {
                    assert!(seen.insert(s.job_index), "job {} twice", s.job_index);
                    if s.finish_reason == FinishReason::Cancelled {
                        cancelled += 1;
                    } else if seen.len() == 4 {
                        stream.cancel();
                    }
                }
                EngineEvent::Done(r) => {
                    r.unwrap();
                    break;
                }
                _ => {}
            }
        }
        assert!(seen.len() < 20, "the rest is dropped: {}", seen.len());
        assert!(cancelled <= 2);
    }

    #[tokio::test]
    async fn an_adapter_is_asked_for_by_its_served_name_or_llama_server_id() {
        let answer: Behaviour = Arc::new(|_, b| {
            let lora = b.get("lora").map(|l| l.to_string()).unwrap_or_default();
            (200, json!({"choices": [{"message": {"content": format!("{}|{lora}", b["model"].as_str().unwrap())}, "finish_reason": "stop"}]}).to_string())
        });
        // vLLM: the adapter is a served model name.
        let vllm = fake("vllm 0.11", answer.clone()).await;
        let (remote, ids) = Remote::connect(params(vec![endpoint(&vllm.url, 1)])).await.unwrap();
        assert_eq!((ids[0].server.as_str(), ids[0].version.as_deref()), ("vllm", Some("0.11")));
        let engine = super::super::Engine::with_backend(Arc::new(remote), Default::default());
        let mut req = request(1);
        req.model.served = Some(ServedAs { model: Some("ft-a".into()), lora: None });
        assert_eq!(engine.generate(req.clone()).await.unwrap().0[0].text, "ft-a|");
        // llama-server: an adapter by its id; the base model with none applied.
        let llama = fake("b1", answer).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&llama.url, 1)])).await.unwrap();
        let engine = super::super::Engine::with_backend(Arc::new(remote), Default::default());
        assert_eq!(
            engine.generate(request(1)).await.unwrap().0[0].text,
            r#"base|[{"id":0,"scale":0.0},{"id":1,"scale":0.0}]"#,
            "no adapter leaks into the base"
        );
        let mut with_id = request(1);
        with_id.model.served = Some(ServedAs { model: None, lora: Some(0) });
        with_id.model.adapter = Some(super::super::AdapterSpec { path: "a.gguf".into(), scale: 0.5 });
        assert_eq!(
            engine.generate(with_id.clone()).await.unwrap().0[0].text,
            r#"base|[{"id":0,"scale":0.5},{"id":1,"scale":0.0}]"#
        );
        with_id.model.served = Some(ServedAs { model: None, lora: Some(7) });
        let e = engine.generate(with_id).await.unwrap_err().to_string();
        assert!(e.contains("no --lora adapter 7"), "{e}");
        // llama-server answers any `model` with its own: another name is refused, not
        // silently measured as the base model.
        let e = engine.generate(req).await.unwrap_err();
        assert!(matches!(e, EngineError::Refused(_)), "{e}");
        assert!(e.to_string().contains("ignores a request's `model`") && e.to_string().contains("lora"), "{e}");
        assert_eq!(llama.served.load(Ordering::SeqCst), 2, "the refused request was never sent");
    }

    #[tokio::test]
    async fn a_server_upgraded_since_the_start_takes_no_jobs() {
        let a = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let b = fake("b1", Arc::new(|_, b| (200, echo(b)))).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&b.url, 1)])).await.unwrap();
        let engine = super::super::Engine::with_backend(Arc::new(remote), Default::default());
        *b.version.lock() = "b2".into();
        let (samples, _) = engine.generate(request(6)).await.unwrap();
        assert_eq!((samples.len(), a.served.load(Ordering::SeqCst), b.served.load(Ordering::SeqCst)), (6, 6, 0));
        *a.version.lock() = "b2".into();
        let e = engine.generate(request(2)).await.unwrap_err().to_string();
        assert!(e.contains("now reports llama.cpp b2") && e.contains("reported llama.cpp b1"), "{e}");
    }

    #[tokio::test]
    async fn an_unknown_served_name_is_refused_not_waited_for() {
        let a = fake(
            "vllm 0.11",
            Arc::new(|_, _| (404, r#"{"error":{"message":"The model `ft-x` does not exist."}}"#.into())),
        )
        .await;
        let b = fake("vllm 0.11", Arc::new(|_, _| (404, "not found".into()))).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&b.url, 1)])).await.unwrap();
        let e = generate(remote, request(4)).await.unwrap_err();
        assert!(matches!(e, EngineError::Refused(_)), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        // One endpoint down (not refused) among refusals: the fleet may come back.
        let c = fake("vllm 0.11", Arc::new(|_, _| (503, "busy".into()))).await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 1), endpoint(&c.url, 1)])).await.unwrap();
        assert!(matches!(generate(remote, request(4)).await.unwrap_err(), EngineError::Remote(_)));
    }

    #[tokio::test]
    async fn a_sample_the_server_always_fails_on_is_an_error_sample_and_the_server_stays() {
        // Prompt 1 (jobs 2 and 3) always gets a 500; the others are answered, by other slots
        // meanwhile: the server is alive, and it is those samples that fail.
        let a = fake(
            "b1",
            Arc::new(
                |_, b| {
                    if b["messages"][0]["content"] == "prompt 1" {
                        (500, "boom".into())
                    } else {
                        (200, echo(b))
                    }
                },
            ),
        )
        .await;
        let (remote, _) = Remote::connect(params(vec![endpoint(&a.url, 3)])).await.unwrap();
        let (samples, _) = generate(remote, request(8)).await.unwrap();
        let failed: Vec<usize> =
            samples.iter().filter(|s| s.finish_reason == FinishReason::Error).map(|s| s.job_index).collect();
        assert_eq!(failed, [2, 3]);
        assert!(
            samples[2].error.as_deref().unwrap().contains("failed on this sample 3 times: 500"),
            "{:?}",
            samples[2].error
        );
        assert_eq!(a.served.load(Ordering::SeqCst), 6);
    }
}
