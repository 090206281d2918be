//! Shared helpers of the `api_*` tests: an API server on 127.0.0.1:0 over a temporary store,
//! a test `Control`, and a small SSE reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use driftwatch::api::subscribe::{SseMessage, SseParser};
use driftwatch::api::{self, ApiError, ApiState, Control, EvaluateTarget};
use driftwatch::events::{EventBus, EventKind};
use driftwatch::metrics::Metrics;
use driftwatch::store::{Event, Store};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A `Control` that records what it was asked.
#[derive(Debug, Default)]
pub struct TestControl {
    pub evaluated: Mutex<Vec<PathBuf>>,
}

impl Control for TestControl {
    fn evaluate(&self, target: EvaluateTarget) -> BoxFuture<'static, Result<Value, ApiError>> {
        let Some(path) = target.path else {
            return Box::pin(async { Err(ApiError::Unprocessable("no served models here".into())) });
        };
        let result = if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            Err(ApiError::Unprocessable(format!("{} is not a .gguf file", path.display())))
        } else {
            let mut list = self.evaluated.lock().unwrap();
            if list.contains(&path) {
                Err(ApiError::Conflict(format!("{} is already queued", path.display())))
            } else {
                list.push(path.clone());
                Ok(json!({"queued": path, "position": list.len()}))
            }
        };
        Box::pin(async move { result })
    }

    fn plugins(&self) -> Value {
        json!({"plugins": [{"name": "keyword", "version": "0.1.0"}]})
    }
}

/// A running API over a temporary store.
pub struct TestApi {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub bus: EventBus,
    pub metrics: Arc<Metrics>,
    pub control: Arc<TestControl>,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<Result<(), api::ApiStartError>>,
    pub dir: tempfile::TempDir,
}

impl TestApi {
    pub async fn start(token: Option<&str>) -> TestApi {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        TestApi::start_over(dir, store, token).await
    }

    pub async fn start_over(dir: tempfile::TempDir, store: Arc<Store>, token: Option<&str>) -> TestApi {
        let bus = EventBus::new(Arc::clone(&store));
        let metrics = Arc::new(Metrics::new());
        let control = Arc::new(TestControl::default());
        let shutdown = CancellationToken::new();
        let listener = api::bind("127.0.0.1:0".parse().unwrap(), token).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = ApiState {
            store: Arc::clone(&store),
            bus: bus.clone(),
            metrics: Arc::clone(&metrics),
            control: control.clone(),
            token: token.map(str::to_owned),
        };
        let server = tokio::spawn(api::serve(state, listener, shutdown.clone()));
        TestApi { addr, store, bus, metrics, control, shutdown, server, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server).await.expect("server stops").unwrap().unwrap();
    }
}

/// A run.failed event numbered `i` (cheap to publish, easy to check).
pub fn numbered(i: i64) -> EventKind {
    EventKind::RunFailed { run_id: i, reason: format!("event {i}") }
}

/// An open SSE stream.
pub struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    parser: SseParser,
    queue: std::collections::VecDeque<SseMessage>,
}

impl SseClient {
    /// Connects (the server is subscribed once this returns).
    pub async fn connect(client: &reqwest::Client, url: &str, last_event_id: Option<i64>) -> SseClient {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        SseClient {
            body: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            parser: SseParser::default(),
            queue: Default::default(),
        }
    }

    /// The next message (events and errors), or None when the stream ends.
    pub async fn next_message(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Some(m);
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(30), self.body.next()).await.expect("SSE stream stalled")?;
            self.queue.extend(self.parser.feed(&chunk.ok()?));
        }
    }

    /// The next event, checking that the SSE `id:` and `event:` lines agree with the JSON.
    pub async fn next_event(&mut self) -> Option<Event> {
        let m = self.next_message().await?;
        assert_ne!(m.event.as_deref(), Some("error"), "stream error: {}", m.data);
        let e: Event = serde_json::from_str(&m.data).unwrap();
        assert_eq!(m.id.as_deref(), Some(e.id.to_string().as_str()));
        assert_eq!(m.event.as_deref(), Some(e.event_type.as_str()));
        Some(e)
    }
}
