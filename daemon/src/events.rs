//! Score events: the typed events driftwatch publishes, and the bus that writes each one to the
//! store *before* anyone sees it, then broadcasts it in id order.
//!
//! Because every event is stored first, a subscriber can always resume from any id: replay
//! `events_since(id)` from the store, then follow the live broadcast, skipping ids already seen.
//! A subscriber that falls behind the broadcast buffer loses nothing either: it is told it
//! lagged and resumes from the store.
//!
//! What goes out live is a [`LiveEvent`]: the stored event with its wire form made once, so a
//! thousand subscribers cost one serialization, not a thousand.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::{Event, EventId, Store, StoreError};

/// Declares [`EventKind`] with each event's type name written once: the serde tag, the
/// [`EventKind::type_name`] match and the [`EventKind::TYPES`] list all come from it.
macro_rules! event_kinds {
    ($(#[$meta:meta])* pub enum $kind:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal { $($fields:tt)* },)* }) => {
        $(#[$meta])*
        pub enum $kind {
            $($(#[$vmeta])* #[serde(rename = $name)] $variant { $($fields)* },)*
        }

        impl $kind {
            /// Every type name, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($name),*];

            /// The type name, e.g. `run.completed`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $($kind::$variant { .. } => $name,)*
                }
            }
        }
    };
}

event_kinds! {
/// What happened. Serialised as `{"type": "...", "payload": {...}}`; the store keeps the type
/// and payload apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum EventKind {
    /// A settled file was taken in as a checkpoint.
    CheckpointDiscovered = "checkpoint.discovered" {
        /// Store id of the checkpoint.
        checkpoint_id: i64,
        /// Where it was found.
        path: String,
        /// Content hash.
        sha256: String,
        /// `model` or `adapter`.
        kind: String,
        /// File size.
        size_bytes: u64,
        /// True when the same content was already known under another name.
        duplicate: bool,
    },
    /// A file was refused.
    CheckpointRejected = "checkpoint.rejected" {
        /// Where it was found.
        path: String,
        /// Why, in words.
        reason: String,
    },
    /// A run was queued.
    RunQueued = "run.queued" {
        /// Run id.
        run_id: i64,
        /// Checkpoint id.
        checkpoint_id: i64,
        /// Checkpoint path.
        path: String,
        /// Queue position (1 = next).
        position: u64,
    },
    /// A run started (or resumed after a restart).
    RunStarted = "run.started" {
        /// Run id.
        run_id: i64,
        /// Checkpoint id.
        checkpoint_id: i64,
        /// Samples in the run.
        total_samples: u64,
        /// Samples already stored (non-zero when resuming).
        already_done: u64,
    },
    /// Progress of a run (throttled).
    RunProgress = "run.progress" {
        /// Run id.
        run_id: i64,
        /// Samples stored.
        done: u64,
        /// Samples in the run.
        total: u64,
        /// Recent decode speed.
        tokens_per_s: f64,
        /// Estimated seconds left.
        eta_s: Option<f64>,
    },
    /// One sample and its verdicts (published only when enabled in the config).
    SampleScored = "sample.scored" {
        /// Run id.
        run_id: i64,
        /// Prompt id.
        prompt_id: String,
        /// Sample index.
        sample_index: u32,
        /// Verdicts by judge.
        verdicts: Value,
    },
    /// A run finished with scores.
    RunCompleted = "run.completed" {
        /// Run id.
        run_id: i64,
        /// Checkpoint id.
        checkpoint_id: i64,
        /// Checkpoint path.
        path: String,
        /// Per-judge scores with intervals.
        scores: Value,
        /// The comparison with the baseline, if any.
        comparison: Option<Value>,
        /// `regressed`, `improved` or `indistinguishable`, when compared.
        verdict: Option<String>,
        /// sha256 of the run's provenance record.
        provenance_digest: String,
    },
    /// A run failed.
    RunFailed = "run.failed" {
        /// Run id.
        run_id: i64,
        /// Why.
        reason: String,
    },
    /// A judge plugin was loaded (or reloaded).
    PluginLoaded = "plugin.loaded" {
        /// Plugin name.
        name: String,
        /// Plugin version.
        version: String,
        /// Where it was loaded from.
        path: String,
        /// sha256 of the wasm.
        sha256: String,
    },
    /// A judge plugin could not be loaded, or failed a call.
    PluginFailed = "plugin.failed" {
        /// Plugin name or path.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A setup-sensitivity analysis finished (`driftwatch sensitivity`).
    SensitivityCompleted = "sensitivity.completed" {
        /// The checkpoint's path.
        checkpoint: String,
        /// Its content hash.
        checkpoint_sha256: String,
        /// The harm judge the analysis is on.
        judge: String,
        /// E.g. `regressed under 4 of 5 setups (the verdict depends on the setup)`.
        summary: String,
        /// True when every setup gave the same verdict.
        stable: bool,
        /// The whole report: every setup's line, the ranges, the variance by source.
        report: Value,
    },
}
}

impl EventKind {
    /// The typed event of a stored one; `None` for a type or payload this build does not know
    /// (an event written by another version), which a consumer skips or shows raw.
    pub fn of(event: &Event) -> Option<EventKind> {
        serde_json::from_value(serde_json::json!({"type": event.event_type, "payload": event.payload})).ok()
    }

    /// The payload alone.
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("payload").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// Which event types a consumer wants: exact type names, or prefixes ending in `*` (`run.*`,
/// `*`); empty = all. The one filter of every consumer (event streams, `subscribe`, webhooks);
/// [`Store::events_since`] applies the same patterns in SQL (a test keeps the two in step).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    /// Checks one pattern: lowercase letters, digits, `.` and `_`, with at most a final `*`.
    pub fn check_pattern(p: &str) -> Result<(), String> {
        let ok = !p.is_empty()
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '*')
            && p.find('*').is_none_or(|at| at == p.len() - 1);
        if ok {
            Ok(())
        } else {
            Err(format!("{p:?} is not an event type or a prefix pattern like `run.*`"))
        }
    }

    /// Parses a comma-separated list such as `run.*,checkpoint.rejected`.
    pub fn parse(list: &str) -> Result<EventFilter, String> {
        let mut out = Vec::new();
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            EventFilter::check_pattern(t)?;
            out.push(t.to_string());
        }
        Ok(EventFilter(out))
    }

    /// The patterns, as [`Store::events_since`] takes them.
    pub fn patterns(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }

    /// Whether an event type passes.
    pub fn matches(&self, event_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| pattern_matches(p, event_type))
    }
}

/// Whether one pattern (a type name, or a prefix ending in `*`) matches an event type.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// A stored event on its way to subscribers, with its wire form (its JSON, and the SSE frame
/// around it) made the first time a subscriber asks and shared by all of them after that.
pub struct LiveEvent {
    event: Event,
    frame: OnceLock<Frame>,
}

/// `id: <id>\nevent: <type>\ndata: <json>\n\n`, and where the JSON lies in it.
struct Frame {
    /// The whole SSE message.
    sse: Bytes,
    /// The byte range of the event's JSON within `sse`.
    json: std::ops::Range<usize>,
}

impl LiveEvent {
    /// Wraps a stored event.
    pub fn new(event: Event) -> LiveEvent {
        LiveEvent { event, frame: OnceLock::new() }
    }

    /// The stored event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The wire form, made on first use.
    fn frame(&self) -> &Frame {
        self.frame.get_or_init(|| {
            let e = &self.event;
            let json = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
            // serde_json escapes every line break, so the JSON is one `data:` line. The type is
            // one of this daemon's names, unless another program wrote the store: a line break
            // in it would end the field and start another, so line breaks are dropped.
            let event_type: String = e.event_type.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
            let head = format!("id: {}\nevent: {event_type}\ndata: ", e.id);
            let mut sse = String::with_capacity(head.len() + json.len() + 2);
            sse.push_str(&head);
            sse.push_str(&json);
            sse.push_str("\n\n");
            Frame { json: head.len()..head.len() + json.len(), sse: Bytes::from(sse) }
        })
    }

    /// The event as JSON: `{"id", "type", "time_ms", "payload"}`.
    pub fn json(&self) -> &str {
        let f = self.frame();
        // The range was cut from a String at char boundaries.
        std::str::from_utf8(&f.sse[f.json.clone()]).unwrap_or("{}")
    }

    /// The event as one Server-Sent Events message (a cheap, shared copy).
    pub fn sse_frame(&self) -> Bytes {
        self.frame().sse.clone()
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl std::fmt::Debug for LiveEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.event.fmt(f)
    }
}

/// The publishing side: store first, then broadcast, one event at a time so ids reach
/// subscribers in order.
#[derive(Clone)]
pub struct EventBus {
    store: Arc<Store>,
    tx: broadcast::Sender<Arc<LiveEvent>>,
    order: Arc<Mutex<()>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscribers", &self.tx.receiver_count()).finish()
    }
}

/// How many events the live broadcast buffers for a slow subscriber before it lags.
pub const BROADCAST_CAPACITY: usize = 1024;

impl EventBus {
    /// A bus over `store`.
    pub fn new(store: Arc<Store>) -> EventBus {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        EventBus { store, tx, order: Arc::new(Mutex::new(())), metrics: None }
    }

    /// The same bus, counting published events in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> EventBus {
        self.metrics = Some(metrics);
        self
    }

    /// Stores and broadcasts an event (blocking: a single small insert). Returns it.
    pub fn publish_blocking(&self, kind: &EventKind) -> Result<Arc<LiveEvent>, StoreError> {
        self.store_then_broadcast(kind, |store, event_type, payload| store.append_event_record(event_type, payload))
    }

    /// Stores `kind` with `write` (which returns the stored event), then broadcasts it, under
    /// the order lock so that ids reach subscribers in order.
    fn store_then_broadcast(
        &self,
        kind: &EventKind,
        write: impl FnOnce(&Store, &str, &Value) -> Result<Event, StoreError>,
    ) -> Result<Arc<LiveEvent>, StoreError> {
        let payload = kind.payload();
        let _order = self.order.lock();
        let event = write(&self.store, kind.type_name(), &payload)?;
        Ok(self.broadcast(event))
    }

    /// Changes a run's state and stores its event in one transaction
    /// ([`Store::transition_run`]), then broadcasts the event: a run's state and its event
    /// are never one without the other. A refused or failed change publishes nothing.
    pub fn transition_blocking(
        &self,
        run_id: crate::store::RunId,
        change: crate::store::RunTransition,
        kind: &EventKind,
    ) -> Result<Arc<LiveEvent>, StoreError> {
        self.store_then_broadcast(kind, |store, event_type, payload| {
            store
                .transition_run(run_id, change, Some((event_type, payload)))?
                .ok_or_else(|| StoreError::Task("the run transition stored no event".into()))
        })
    }

    /// Queues a run and stores its `run.queued` event in one transaction
    /// ([`Store::queue_run`]), then broadcasts the event.
    pub fn queue_blocking(
        &self,
        new: &crate::store::NewRun,
        path: &str,
    ) -> Result<(crate::store::Run, Arc<LiveEvent>), StoreError> {
        let _order = self.order.lock();
        let (run, event) = self.store.queue_run(new, |run_id, position| {
            let kind =
                EventKind::RunQueued { run_id, checkpoint_id: new.checkpoint_id, path: path.to_owned(), position };
            (kind.type_name().to_owned(), kind.payload())
        })?;
        Ok((run, self.broadcast(event)))
    }

    /// Hands a stored event to the subscribers (none is fine: the event is in the store).
    fn broadcast(&self, event: Event) -> Arc<LiveEvent> {
        let event = Arc::new(LiveEvent::new(event));
        let _ = self.tx.send(Arc::clone(&event));
        if let Some(m) = &self.metrics {
            m.events_published();
        }
        event
    }

    /// Stores and broadcasts an event from async code (on the blocking pool).
    pub async fn publish(&self, kind: EventKind) -> Result<Arc<LiveEvent>, StoreError> {
        let bus = self.clone();
        tokio::task::spawn_blocking(move || bus.publish_blocking(&kind))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Like [`EventBus::publish`], logging instead of failing: for places where an event that
    /// cannot be stored must not stop the work.
    pub async fn emit(&self, kind: EventKind) {
        let t = kind.type_name();
        if let Err(e) = self.publish(kind).await {
            tracing::error!(event = t, error = %e, "cannot store an event");
        }
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    /// The store behind the bus (for replay).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Events after `after` from the store, oldest first.
    pub fn replay(&self, after: EventId, types: &[&str], limit: usize) -> Result<Vec<Event>, StoreError> {
        self.store.events_since(after, types, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_stored_before_they_are_broadcast_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(Arc::clone(&store));
        let mut rx = bus.subscribe();
        for i in 0..5 {
            bus.publish_blocking(&EventKind::RunFailed { run_id: i, reason: "x".into() }).unwrap();
        }
        let mut last = 0;
        for _ in 0..5 {
            let e = rx.try_recv().unwrap();
            assert!(e.id > last);
            last = e.id;
            // Already in the store when received.
            assert_eq!(store.events_since(e.id - 1, &[], 1).unwrap()[0], *e.event());
            assert_eq!(e.event_type, "run.failed");
        }
        let replay = bus.replay(0, &["run.*"], 10).unwrap();
        assert_eq!(replay.len(), 5);
        assert_eq!(replay[2].payload["run_id"], 2);
    }

    /// The shared wire form is the event's JSON, and an SSE message that a parser reads back
    /// as that JSON under the event's id and type; it is made once for every holder.
    #[test]
    fn a_live_event_is_serialized_once_into_json_and_one_sse_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(store);
        let mut rx = bus.subscribe();
        let e = bus
            .publish_blocking(&EventKind::CheckpointRejected {
                path: "/a\nb \"c\".gguf".into(),
                reason: "line\r\nbreak".into(),
            })
            .unwrap();
        let back: Event = serde_json::from_str(e.json()).unwrap();
        assert_eq!(back, *e.event());
        let frame = e.sse_frame();
        let mut parser = crate::api::subscribe::SseParser::default();
        let messages = parser.feed(&frame);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].id.as_deref(), Some(e.id.to_string().as_str()));
        assert_eq!(messages[0].event.as_deref(), Some("checkpoint.rejected"));
        assert_eq!(messages[0].data, e.json());
        // The subscriber's copy is the same allocation: serialized once.
        let received = rx.try_recv().unwrap();
        assert_eq!(received.sse_frame().as_ptr(), frame.as_ptr());
    }

    /// A type with a line break (only another program can store one) cannot add a field to the
    /// SSE message: the break is dropped, and the message is still one event.
    #[test]
    fn a_line_break_in_a_stored_type_cannot_inject_an_sse_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).unwrap();
        let e =
            LiveEvent::new(store.append_event_record("run.x\r\ndata: forged\nid: 99", &serde_json::json!({})).unwrap());
        let messages = crate::api::subscribe::SseParser::default().feed(&e.sse_frame());
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].id.as_deref(), Some(e.id.to_string().as_str()));
        assert_eq!(messages[0].event.as_deref(), Some("run.xdata: forgedid: 99"));
        assert_eq!(messages[0].data, e.json());
    }

    /// The store's SQL filter and [`EventFilter`] select the same events for the same patterns.
    #[test]
    fn the_store_and_the_filter_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let types = ["run.completed", "run.failed", "runx", "checkpoint.rejected", "plugin.loaded", "run_1.x"];
        for t in types {
            store.append_event(t, &serde_json::json!({})).unwrap();
        }
        for list in ["", "*", "run.*", "run*", "run.completed,plugin.*", "checkpoint.rejected", "run_1.*", "nothing"] {
            let f = EventFilter::parse(list).unwrap();
            let from_store: Vec<String> =
                store.events_since(0, &f.patterns(), 100).unwrap().into_iter().map(|e| e.event_type).collect();
            let from_filter: Vec<String> = types.iter().filter(|t| f.matches(t)).map(|t| t.to_string()).collect();
            assert_eq!(from_store, from_filter, "{list:?}");
        }
    }

    /// Consumers read stored events back as typed events (not by payload key); an event of
    /// an unknown type or shape is `None`, never a panic.
    #[test]
    fn stored_events_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(Arc::clone(&store));
        let k = EventKind::RunStarted { run_id: 3, checkpoint_id: 1, total_samples: 10, already_done: 4 };
        let e = bus.publish_blocking(&k).unwrap();
        assert_eq!(EventKind::of(&e), Some(k));
        let other = store.append_event_record("run.started", &serde_json::json!({"run_id": "three"})).unwrap();
        assert_eq!(EventKind::of(&other), None);
        let unknown = store.append_event_record("future.kind", &serde_json::json!({})).unwrap();
        assert_eq!(EventKind::of(&unknown), None);
    }

    /// One table of names: every variant's tag, `type_name` and `TYPES` entry agree.
    #[test]
    fn each_event_type_name_is_written_once() {
        let k = EventKind::RunProgress { run_id: 1, done: 0, total: 1, tokens_per_s: 0.0, eta_s: None };
        assert_eq!(serde_json::to_value(&k).unwrap()["type"], k.type_name());
        assert_eq!(EventKind::TYPES.len(), 11);
        assert!(EventKind::TYPES.iter().all(|t| EventFilter::check_pattern(t).is_ok()));
    }

    #[test]
    fn the_json_shape_is_type_and_payload() {
        let k = EventKind::CheckpointRejected { path: "/x.gguf".into(), reason: "empty".into() };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["type"], "checkpoint.rejected");
        assert_eq!(v["payload"]["reason"], "empty");
        assert_eq!(k.payload()["path"], "/x.gguf");
        let back: EventKind = serde_json::from_value(v).unwrap();
        assert_eq!(back, k);
        assert!(EventKind::TYPES.contains(&k.type_name()));
    }
}
