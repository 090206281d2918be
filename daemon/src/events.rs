//! Score events: the typed events driftwatch publishes, and the bus that writes each one to the
//! store *before* anyone sees it, then broadcasts it in id order.
//!
//! Because every event is stored first, a subscriber can always resume from any id: replay
//! `events_since(id)` from the store, then follow the live broadcast, skipping ids already seen.
//! A subscriber that falls behind the broadcast buffer loses nothing either: it is told it
//! lagged and resumes from the store.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::{Event, EventId, Store, StoreError};

/// What happened. Serialised as `{"type": "...", "payload": {...}}`; the store keeps the type
/// and payload apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum EventKind {
    /// A settled file was taken in as a checkpoint.
    #[serde(rename = "checkpoint.discovered")]
    CheckpointDiscovered {
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
    #[serde(rename = "checkpoint.rejected")]
    CheckpointRejected {
        /// Where it was found.
        path: String,
        /// Why, in words.
        reason: String,
    },
    /// A run was queued.
    #[serde(rename = "run.queued")]
    RunQueued {
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
    #[serde(rename = "run.started")]
    RunStarted {
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
    #[serde(rename = "run.progress")]
    RunProgress {
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
    #[serde(rename = "sample.scored")]
    SampleScored {
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
    #[serde(rename = "run.completed")]
    RunCompleted {
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
    #[serde(rename = "run.failed")]
    RunFailed {
        /// Run id.
        run_id: i64,
        /// Why.
        reason: String,
    },
    /// A judge plugin was loaded (or reloaded).
    #[serde(rename = "plugin.loaded")]
    PluginLoaded {
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
    #[serde(rename = "plugin.failed")]
    PluginFailed {
        /// Plugin name or path.
        plugin: String,
        /// Why.
        reason: String,
    },
}

impl EventKind {
    /// The type name, e.g. `run.completed`.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::CheckpointDiscovered { .. } => "checkpoint.discovered",
            EventKind::CheckpointRejected { .. } => "checkpoint.rejected",
            EventKind::RunQueued { .. } => "run.queued",
            EventKind::RunStarted { .. } => "run.started",
            EventKind::RunProgress { .. } => "run.progress",
            EventKind::SampleScored { .. } => "sample.scored",
            EventKind::RunCompleted { .. } => "run.completed",
            EventKind::RunFailed { .. } => "run.failed",
            EventKind::PluginLoaded { .. } => "plugin.loaded",
            EventKind::PluginFailed { .. } => "plugin.failed",
        }
    }

    /// Every type name.
    pub const TYPES: [&'static str; 10] = [
        "checkpoint.discovered",
        "checkpoint.rejected",
        "run.queued",
        "run.started",
        "run.progress",
        "sample.scored",
        "run.completed",
        "run.failed",
        "plugin.loaded",
        "plugin.failed",
    ];

    /// The payload alone.
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("payload").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// The publishing side: store first, then broadcast, one event at a time so ids reach
/// subscribers in order.
#[derive(Clone)]
pub struct EventBus {
    store: Arc<Store>,
    tx: broadcast::Sender<Arc<Event>>,
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
    pub fn publish_blocking(&self, kind: &EventKind) -> Result<Arc<Event>, StoreError> {
        let payload = kind.payload();
        let _order = self.order.lock();
        let event = Arc::new(self.store.append_event_record(kind.type_name(), &payload)?);
        // No receivers is fine: the event is in the store.
        let _ = self.tx.send(Arc::clone(&event));
        if let Some(m) = &self.metrics {
            m.events_published();
        }
        Ok(event)
    }

    /// Stores and broadcasts an event from async code (on the blocking pool).
    pub async fn publish(&self, kind: EventKind) -> Result<Arc<Event>, StoreError> {
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
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
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
            assert_eq!(store.events_since(e.id - 1, &[], 1).unwrap()[0], *e);
            assert_eq!(e.event_type, "run.failed");
        }
        let replay = bus.replay(0, &["run.*"], 10).unwrap();
        assert_eq!(replay.len(), 5);
        assert_eq!(replay[2].payload["run_id"], 2);
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
