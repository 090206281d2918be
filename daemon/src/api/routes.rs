//! The routes: REST over the store, the SSE and WebSocket event streams, `/metrics`, and the
//! bearer-token check in front of everything but `/v1/health`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::stream::{StreamItem, Subscription};
use super::{constant_time_eq, ApiError, ApiState};
use crate::events::EventFilter;
use crate::store::{EventId, Store};

/// Default and largest page of `/v1/runs/{id}/samples`.
pub const SAMPLES_DEFAULT_LIMIT: usize = 100;
/// Largest page of `/v1/runs/{id}/samples` (larger limits are capped).
pub const SAMPLES_MAX_LIMIT: usize = 1000;
/// Default and largest number of checkpoints listed.
pub const CHECKPOINTS_DEFAULT_LIMIT: usize = 100;
/// Largest number of checkpoints listed.
pub const CHECKPOINTS_MAX_LIMIT: usize = 10_000;
/// Default and largest number of finished runs listed by `/v1/runs`.
pub const RUNS_DEFAULT_RECENT: usize = 20;
/// Largest number of finished runs listed by `/v1/runs`.
pub const RUNS_MAX_RECENT: usize = 1000;
/// The silence after which an SSE stream sends a keep-alive comment, and the interval of
/// WebSocket pings.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct AppState {
    api: ApiState,
    shutdown: CancellationToken,
}

/// The API's router (for embedding or `tower` tests); [`super::serve`] serves it.
/// Open event streams end when `shutdown` is cancelled.
pub fn router(state: ApiState, shutdown: CancellationToken) -> Router {
    let app = AppState { api: state, shutdown };
    let protected = Router::new()
        .route("/v1/checkpoints", get(checkpoints))
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{id}", get(run))
        .route("/v1/runs/{id}/samples", get(samples))
        .route("/v1/plugins", get(plugins))
        .route("/v1/evaluate", post(evaluate))
        .route("/v1/events", get(events_sse))
        .route("/v1/events/ws", get(events_ws))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/v1/health", get(health))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// The largest request body the API reads (`POST /v1/evaluate` needs a path, not more).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        // Digests first: equal lengths, so not even the token's length leaks through timing.
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        let ok = given.is_some_and(|g| constant_time_eq(&digest(g.as_bytes()), &digest(token.as_bytes())));
        if !ok {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Runs a store call on the blocking pool.
async fn blocking<R, F>(store: &Arc<Store>, f: F) -> Result<R, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&Store) -> Result<R, ApiError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

pub(crate) type Params = HashMap<String, String>;

pub(crate) fn params(q: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    q.map(|Query(p)| p).map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
}

fn only_params(p: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    for k in p.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {k:?}{}",
                if allowed.is_empty() { String::new() } else { format!(" (expected: {})", allowed.join(", ")) }
            )));
        }
    }
    Ok(())
}

pub(crate) fn usize_param(p: &Params, name: &str, default: usize) -> Result<usize, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("{name} must be a non-negative integer, got {v:?}"))),
    }
}

fn run_id(p: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    match p {
        Ok(Path(id)) if id > 0 => Ok(id),
        Ok(Path(id)) => Err(ApiError::BadRequest(format!("run id must be a positive integer, got {id}"))),
        Err(e) => Err(ApiError::BadRequest(format!("run id must be a positive integer: {}", e.body_text()))),
    }
}

async fn health(State(app): State<AppState>) -> Response {
    let store = Arc::clone(&app.api.store);
    match tokio::task::spawn_blocking(move || store.last_event_id()).await {
        Ok(Ok(last)) => Json(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "last_event_id": last,
        }))
        .into_response(),
        Ok(Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "degraded", "error": format!("store: {e}")})))
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "degraded", "error": e.to_string()})))
            .into_response(),
    }
}

async fn checkpoints(
    State(app): State<AppState>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    only_params(&p, &["limit"])?;
    let limit = usize_param(&p, "limit", CHECKPOINTS_DEFAULT_LIMIT)?.min(CHECKPOINTS_MAX_LIMIT);
    let list = blocking(&app.api.store, move |s| Ok(s.list_checkpoints(limit)?)).await?;
    Ok(Json(json!({ "checkpoints": list })))
}

async fn runs(State(app): State<AppState>, q: Result<Query<Params>, QueryRejection>) -> Result<Json<Value>, ApiError> {
    let p = params(q)?;
    only_params(&p, &["recent"])?;
    let recent = usize_param(&p, "recent", RUNS_DEFAULT_RECENT)?.min(RUNS_MAX_RECENT);
    let summary = blocking(&app.api.store, move |s| Ok(s.status_summary(recent)?)).await?;
    let with_progress = |list: Vec<crate::store::RunOverview>| -> Vec<Value> {
        list.into_iter()
            .map(|o| {
                let progress = if o.total > 0 { o.done as f64 / o.total as f64 } else { 0.0 };
                let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("progress".into(), json!(progress));
                }
                v
            })
            .collect()
    };
    Ok(Json(json!({
        "queued": with_progress(summary.queued),
        "running": with_progress(summary.running),
        "recent": with_progress(summary.recent),
        "checkpoints": summary.checkpoints,
        "last_event_id": summary.last_event_id,
    })))
}

async fn run(State(app): State<AppState>, id: Result<Path<i64>, PathRejection>) -> Result<Json<Value>, ApiError> {
    let id = run_id(id)?;
    let v = blocking(&app.api.store, move |s| {
        let run = s.run(id)?.ok_or_else(|| ApiError::NotFound(format!("run {id} not found")))?;
        let checkpoint = s.checkpoint(run.checkpoint_id)?;
        let done = s.sample_count(id)?;
        let progress = if run.total_samples > 0 { done as f64 / run.total_samples as f64 } else { 0.0 };
        Ok(json!({ "run": run, "checkpoint": checkpoint, "done": done, "total": run.total_samples, "progress": progress }))
    })
    .await?;
    Ok(Json(v))
}

async fn samples(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = run_id(id)?;
    let p = params(q)?;
    only_params(&p, &["offset", "limit"])?;
    let offset = usize_param(&p, "offset", 0)?;
    let limit = usize_param(&p, "limit", SAMPLES_DEFAULT_LIMIT)?;
    if limit == 0 {
        return Err(ApiError::BadRequest("limit must be at least 1".into()));
    }
    let limit = limit.min(SAMPLES_MAX_LIMIT);
    let v = blocking(&app.api.store, move |s| {
        if s.run(id)?.is_none() {
            return Err(ApiError::NotFound(format!("run {id} not found")));
        }
        let all = s.samples_for_run(id)?;
        let total = all.len();
        let page: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        let next = (offset.saturating_add(page.len()) < total).then(|| offset + page.len());
        Ok(json!({ "run_id": id, "offset": offset, "limit": limit, "total": total, "next_offset": next, "samples": page }))
    })
    .await?;
    Ok(Json(v))
}

async fn plugins(State(app): State<AppState>) -> Json<Value> {
    Json(app.api.control.plugins())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateRequest {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    served_model: Option<String>,
}

async fn evaluate(
    State(app): State<AppState>,
    body: Result<Json<EvaluateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| match e {
        e if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!("the request body is over the API's limit of {MAX_BODY_BYTES} bytes"))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest("send a JSON body {\"path\": \"...\"} with Content-Type: application/json".into())
        }
        e => ApiError::BadRequest(format!("bad JSON body (expected {{\"path\": \"...\"}}): {}", e.body_text())),
    })?;
    let check = |what: &str, v: &Option<String>| -> Result<(), ApiError> {
        match v {
            Some(v) if v.trim().is_empty() => Err(ApiError::BadRequest(format!("{what} must not be empty"))),
            Some(v) if v.contains('\0') => Err(ApiError::BadRequest(format!("{what} must not contain NUL"))),
            _ => Ok(()),
        }
    };
    check("path", &req.path)?;
    check("served_model", &req.served_model)?;
    if req.path.is_none() && req.served_model.is_none() {
        return Err(ApiError::BadRequest(
            "give {\"path\": \"...\"} (a checkpoint file), {\"served_model\": \"...\"} (a model on the inference servers), or both".into(),
        ));
    }
    if req.served_model.as_ref().is_some_and(|m| m.len() > 512) {
        return Err(ApiError::BadRequest("served_model is over 512 bytes".into()));
    }
    let target = super::EvaluateTarget { path: req.path.map(PathBuf::from), served_model: req.served_model };
    let queued = app.api.control.evaluate(target).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)).into_response())
}

async fn metrics(State(app): State<AppState>) -> Response {
    let body = app.api.metrics.render();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

/// The starting point and filter of an event stream, from `?since=`, `Last-Event-ID` and
/// `?types=`. No starting point = only events published from now on.
pub(crate) fn stream_params(headers: &HeaderMap, p: &Params) -> Result<(Option<EventId>, EventFilter), ApiError> {
    only_params(p, &["since", "types"])?;
    let parse_id = |what: &str, v: &str| -> Result<EventId, ApiError> {
        v.trim()
            .parse::<EventId>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| ApiError::BadRequest(format!("{what} must be a non-negative event id, got {v:?}")))
    };
    // A reconnecting EventSource sends Last-Event-ID with the original URL: the header wins.
    let since = match headers.get("last-event-id") {
        Some(h) => {
            let v = h.to_str().map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?;
            Some(parse_id("Last-Event-ID", v)?)
        }
        None => match p.get("since") {
            Some(v) => Some(parse_id("since", v)?),
            None => None,
        },
    };
    let filter = match p.get("types") {
        Some(t) => EventFilter::parse(t).map_err(ApiError::BadRequest)?,
        None => EventFilter::default(),
    };
    Ok((since, filter))
}

/// Subscribes (before the response goes out, so nothing published from now on is missed);
/// without a starting point, starts after the newest stored event.
async fn subscription(api: &ApiState, since: Option<EventId>, filter: EventFilter) -> Result<Subscription, ApiError> {
    let mut sub = Subscription::new(&api.bus, since.unwrap_or(0), filter).with_metrics(Arc::clone(&api.metrics));
    let newest = blocking(&api.store, |s| Ok(s.last_event_id()?)).await?;
    match since {
        None => sub.skip_to(newest),
        // Ids are stored before anyone sees them, so a client can only be ahead of the log
        // when the store was replaced: say so instead of staying silent until the ids catch up.
        Some(s) if s > newest => {
            return Err(ApiError::Conflict(format!(
                "event id {s} is beyond the newest event ({newest}): the event log was reset; \
                 resume with since=0 (everything) or without since (new events only)"
            )))
        }
        Some(_) => {}
    }
    Ok(sub)
}

/// Keeps the subscriber gauge up while a stream is open.
struct SubscriberGuard(Arc<crate::metrics::Metrics>);

impl SubscriberGuard {
    fn new(m: &Arc<crate::metrics::Metrics>) -> SubscriberGuard {
        m.stream_opened();
        SubscriberGuard(Arc::clone(m))
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// An SSE write takes no more ready events once it holds this many bytes (so a write is at most
/// this plus one event).
pub const SSE_WRITE_BYTES: usize = 64 * 1024;

/// The SSE keep-alive: a comment line, which clients ignore.
const SSE_KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// What an SSE stream sends: each event as its shared frame (a live event is serialized once
/// for every subscriber), the events that are ready together in one write, a comment after
/// [`KEEP_ALIVE`] of silence, and an `error` event before it ends when it cannot go on.
struct SseBody {
    /// Where the events come from.
    sub: Subscription,
    /// Ends the stream.
    shutdown: CancellationToken,
    /// Fires after `keep_alive` without a write.
    quiet: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// [`KEEP_ALIVE`], but for tests.
    keep_alive: Duration,
    /// An error was sent: nothing more.
    ended: bool,
    /// Keeps the open-streams gauge up.
    _guard: SubscriberGuard,
}

impl SseBody {
    fn new(
        sub: Subscription,
        shutdown: CancellationToken,
        metrics: &Arc<crate::metrics::Metrics>,
        keep_alive: Duration,
    ) -> SseBody {
        SseBody {
            sub,
            shutdown,
            quiet: Box::pin(tokio::time::sleep(keep_alive)),
            keep_alive,
            ended: false,
            _guard: SubscriberGuard::new(metrics),
        }
    }

    /// The `event: error` message a stream ends with.
    fn error_frame(message: &str, last_id: EventId) -> Bytes {
        let data = json!({"error": message, "last_id": last_id});
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }

    /// The next write: one frame as it is, or several copied into one buffer.
    async fn next_write(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            _ = self.quiet.as_mut() => {
                self.quiet.as_mut().reset(tokio::time::Instant::now() + self.keep_alive);
                return Some(Bytes::from_static(SSE_KEEP_ALIVE));
            }
            item = self.sub.next() => item?,
        };
        self.quiet.as_mut().reset(tokio::time::Instant::now() + self.keep_alive);
        let first = self.frame_of(first);
        let mut batch: Option<BytesMut> = None;
        while !self.ended && batch.as_ref().map_or(first.len(), BytesMut::len) < SSE_WRITE_BYTES {
            let Some(item) = self.sub.try_next() else { break };
            let frame = self.frame_of(item);
            batch.get_or_insert_with(|| BytesMut::from(&first[..])).extend_from_slice(&frame);
        }
        Some(batch.map_or(first, BytesMut::freeze))
    }

    /// What one stream item is on the wire; an error ends the stream after it.
    fn frame_of(&mut self, item: StreamItem) -> Bytes {
        match item {
            StreamItem::Event(e) => e.sse_frame(),
            StreamItem::Error { message, last_id } => {
                self.ended = true;
                Self::error_frame(&message, last_id)
            }
        }
    }
}

async fn events_sse(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q)?;
    let (since, filter) = stream_params(&headers, &p)?;
    // Subscribed before the response goes out: nothing published from now on can be missed.
    let sub = subscription(&app.api, since, filter).await?;
    let body = SseBody::new(sub, app.shutdown.clone(), &app.api.metrics, KEEP_ALIVE);
    let stream = futures::stream::unfold(body, |mut body| async move {
        let bytes = body.next_write().await?;
        Some((Ok::<_, Infallible>(bytes), body))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Reverse proxies (nginx) must not hold events back in a buffer.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn events_ws(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let p = params(q)?;
    let (since, filter) = stream_params(&headers, &p)?;
    let ws = ws.map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade request: {}", e.body_text())))?;
    let sub = subscription(&app.api, since, filter).await?;
    let guard = SubscriberGuard::new(&app.api.metrics);
    let shutdown = app.shutdown.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        let _guard = guard;
        ws_forward(socket, sub, shutdown).await;
    }))
}

async fn ws_forward(mut socket: WebSocket, mut sub: Subscription, shutdown: CancellationToken) {
    let mut ping = tokio::time::interval(KEEP_ALIVE);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // The client talks only to close; pings are answered by the library.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            item = sub.next() => {
                let text = match item {
                    Some(StreamItem::Event(e)) => e.json().to_owned(),
                    Some(StreamItem::Error { message, last_id }) => {
                        let t = json!({"type": "error", "error": message, "last_id": last_id}).to_string();
                        let _ = socket.send(Message::Text(t.into())).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    None => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::subscribe::SseParser;
    use crate::events::{EventBus, EventKind};
    use crate::metrics::Metrics;
    use futures::StreamExt;

    struct NoControl;

    fn bus_for_test(store: &Arc<Store>) -> EventBus {
        EventBus::new(Arc::clone(store))
    }

    /// A store in a fresh folder (kept alive by the returned folder) and a bus over it.
    fn store_and_bus() -> (tempfile::TempDir, Arc<Store>, EventBus) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = bus_for_test(&store);
        (dir, store, bus)
    }

    /// The API over `store` and `bus` (no token, no daemon behind it) served on a loopback
    /// port: its address, its shutdown, and the server task.
    async fn serve_for_test(
        store: &Arc<Store>,
        bus: EventBus,
    ) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<Result<(), crate::api::ApiStartError>>) {
        let state = ApiState {
            store: Arc::clone(store),
            bus,
            metrics: Arc::new(Metrics::new()),
            control: Arc::new(NoControl),
            token: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::api::serve(state, listener, shutdown.clone()));
        (addr, shutdown, server)
    }

    impl crate::api::Control for NoControl {
        fn evaluate(
            &self,
            _target: super::super::EvaluateTarget,
        ) -> futures::future::BoxFuture<'static, Result<Value, ApiError>> {
            Box::pin(async { Err(ApiError::Unavailable("not in this test".into())) })
        }
        fn plugins(&self) -> Value {
            json!([])
        }
    }

    /// The body's next write, failing the test after 30 s.
    async fn timeout_write(body: &mut SseBody) -> Option<Bytes> {
        tokio::time::timeout(Duration::from_secs(30), body.next_write()).await.expect("a write within 30 s")
    }

    /// The keep-alive comes after a silence (`KEEP_ALIVE`, shortened here), not on a clock: an
    /// event pushes it back. A shutdown ends the stream.
    #[tokio::test]
    async fn the_keep_alive_follows_silence_and_shutdown_ends_the_stream() {
        let (_dir, _store, bus) = store_and_bus();
        bus.publish_blocking(&EventKind::RunFailed { run_id: 1, reason: "x".into() }).unwrap();
        let mut sub = Subscription::new(&bus, 0, EventFilter::default());
        // Past the replay (a store read on another thread), so that what follows is live.
        assert!(matches!(sub.next().await, Some(StreamItem::Event(e)) if e.id == 1));
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let silence = Duration::from_millis(600);
        let mut body = SseBody::new(sub, shutdown.clone(), &metrics, silence);
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                bus.publish_blocking(&EventKind::RunFailed { run_id: 2, reason: "y".into() }).unwrap();
            })
        };
        let first = timeout_write(&mut body).await.unwrap();
        let after_event = std::time::Instant::now();
        assert!(first.starts_with(b"id: 2\n"), "the event, not a keep-alive before it: {first:?}");
        publisher.await.unwrap();
        let second = timeout_write(&mut body).await.unwrap();
        assert_eq!(&second[..], SSE_KEEP_ALIVE);
        assert!(after_event.elapsed() >= silence, "the keep-alive came {:?} after the event", after_event.elapsed());
        let before = std::time::Instant::now();
        assert_eq!(&timeout_write(&mut body).await.unwrap()[..], SSE_KEEP_ALIVE);
        assert!(before.elapsed() >= silence - Duration::from_millis(5));
        shutdown.cancel();
        assert!(timeout_write(&mut body).await.is_none());
    }

    /// Events that are ready together leave in few writes (not one per event), each an SSE
    /// message a client reads back whole and in order, and live events keep coming after.
    #[tokio::test]
    async fn ready_events_are_sent_together_and_read_back_whole() {
        let (_dir, store, bus) = store_and_bus();
        for i in 0..300 {
            bus.publish_blocking(&EventKind::RunFailed { run_id: i, reason: "a\nreason".into() }).unwrap();
        }
        let (addr, shutdown, server) = serve_for_test(&store, bus.clone()).await;
        let resp = reqwest::get(format!("http://{addr}/v1/events?since=0")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        let (mut messages, mut chunks) = (Vec::new(), 0);
        while messages.len() < 300 {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap().unwrap().unwrap();
            chunks += 1;
            messages.extend(parser.feed(&chunk));
        }
        assert!(chunks <= 10, "300 stored events came in {chunks} chunks");
        for (i, m) in messages.iter().enumerate() {
            let e: crate::store::Event = serde_json::from_str(&m.data).unwrap();
            assert_eq!((m.id.as_deref(), m.event.as_deref()), (Some(e.id.to_string().as_str()), Some("run.failed")));
            assert_eq!(
                (e.id, &e.payload["run_id"], &e.payload["reason"]),
                (i as i64 + 1, &json!(i), &json!("a\nreason"))
            );
        }
        bus.publish_blocking(&EventKind::RunFailed { run_id: 300, reason: "live".into() }).unwrap();
        let live = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap().unwrap().unwrap();
            if let Some(m) = parser.feed(&chunk).pop() {
                break m;
            }
        };
        assert_eq!(live.id.as_deref(), Some("301"));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_cannot_go_on_ends_with_an_error_event() {
        let (_dir, store, bus) = store_and_bus();
        bus.publish_blocking(&EventKind::RunFailed { run_id: 1, reason: "x".into() }).unwrap();
        let (addr, shutdown, server) = serve_for_test(&store, bus).await;
        bus_for_test(&store).publish_blocking(&EventKind::RunFailed { run_id: 2, reason: "y".into() }).unwrap();
        // Event 2 becomes unreadable (the store reads pages, so the page from 1 fails): the
        // stream says why it stops, with the position to resume from, and ends.
        let raw = rusqlite::Connection::open(store.path()).unwrap();
        raw.execute_batch("UPDATE events SET payload = 'not json' WHERE id = 2").unwrap();
        let resp = reqwest::get(format!("http://{addr}/v1/events?since=0")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        let mut messages = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap() {
            messages.extend(parser.feed(&chunk.unwrap()));
        }
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0].event.as_deref(), Some("error"));
        let v: Value = serde_json::from_str(&messages[0].data).unwrap();
        assert!(v["error"].as_str().unwrap().contains("cannot read events"), "{v}");
        assert_eq!(v["last_id"], 0);
        // With the log gone entirely, a new stream is refused with a JSON 500.
        raw.execute_batch("DROP TABLE events").unwrap();
        let resp = reqwest::get(format!("http://{addr}/v1/events?since=0")).await.unwrap();
        assert_eq!(resp.status(), 500);
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().starts_with("store failure"), "{v}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
