//! One subscriber's gap-free event stream: replay from the store, then follow the live
//! broadcast, falling back to the store whenever the subscriber lags behind the broadcast.
//!
//! The receiver is subscribed *before* the first store read, so an event is always either in
//! the replay or still in the receiver; ids at or below the last one handed out are skipped, so
//! nothing is delivered twice. The stream is pull-based: it only does work when the client's
//! connection asks for the next event, so a subscriber that stops reading costs the publisher
//! nothing (the broadcast never waits); when it reads again it lags and resumes from the store.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::{EventBus, EventFilter};
use crate::metrics::Metrics;
use crate::store::{Event, EventId};

/// Events read from the store per replay query.
pub const REPLAY_PAGE: usize = 500;

/// A subscriber that must catch up from the store this many times in a row without ever
/// reaching the live stream is given up on (it cannot keep up at all).
pub const MAX_CONSECUTIVE_LAGS: u32 = 32;

/// What a subscriber stream yields.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The next event.
    Event(Arc<Event>),
    /// The stream cannot go on (it ends after this); the text says why.
    Error {
        /// Why.
        message: String,
        /// The last event id delivered (resume after it).
        last_id: EventId,
    },
}

/// A subscriber's position in the event log. Create it (which subscribes to the bus) before
/// answering the client, then call [`Subscription::next`] whenever the client can take more.
pub struct Subscription {
    bus: EventBus,
    rx: broadcast::Receiver<Arc<Event>>,
    filter: EventFilter,
    last: EventId,
    replaying: bool,
    pending: VecDeque<Arc<Event>>,
    lags: u32,
    done: bool,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("last", &self.last).field("replaying", &self.replaying).finish()
    }
}

impl Subscription {
    /// Subscribes to the bus now; the stream will start with the stored events after `after`.
    pub fn new(bus: &EventBus, after: EventId, filter: EventFilter) -> Subscription {
        let rx = bus.subscribe();
        Subscription {
            bus: bus.clone(),
            rx,
            filter,
            last: after.max(0),
            replaying: true,
            pending: VecDeque::new(),
            lags: 0,
            done: false,
            metrics: None,
        }
    }

    /// Counts this subscriber's catch-ups from the store in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Subscription {
        self.metrics = Some(metrics);
        self
    }

    /// Starts after `id` instead (only before the first [`Subscription::next`]).
    pub fn skip_to(&mut self, id: EventId) {
        self.last = self.last.max(id);
    }

    /// The id of the last event handed out (or the starting point).
    pub fn last_id(&self) -> EventId {
        self.last
    }

    /// The next event, in id order, without gaps or repeats; `None` once the bus is gone or
    /// after an [`StreamItem::Error`].
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if self.done {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                self.last = e.id;
                return Some(StreamItem::Event(e));
            }
            if self.replaying {
                let bus = self.bus.clone();
                let after = self.last;
                let filter = self.filter.clone();
                let page =
                    tokio::task::spawn_blocking(move || bus.replay(after, &filter.patterns(), REPLAY_PAGE)).await;
                let page = match page {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return Some(self.fail(format!("cannot read events from the store: {e}"))),
                    Err(e) => return Some(self.fail(format!("event replay task failed: {e}"))),
                };
                if page.len() < REPLAY_PAGE {
                    self.replaying = false;
                }
                self.pending.extend(page.into_iter().map(Arc::new));
                continue;
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if e.id <= self.last {
                        continue; // already replayed
                    }
                    self.lags = 0;
                    if self.filter.matches(&e.event_type) {
                        self.last = e.id;
                        return Some(StreamItem::Event(e));
                    }
                    // Not wanted; remember the position so a lag resumes after it.
                    self.last = e.id;
                }
                Err(RecvError::Lagged(missed)) => {
                    self.lags += 1;
                    if let Some(m) = &self.metrics {
                        m.stream_lagged();
                    }
                    tracing::debug!(missed, last = self.last, "event subscriber lagged; resuming from the store");
                    if self.lags > MAX_CONSECUTIVE_LAGS {
                        return Some(self.fail(format!(
                            "subscriber fell behind the live stream {} times in a row and cannot keep up; reconnect with Last-Event-ID {} to resume",
                            self.lags, self.last
                        )));
                    }
                    self.replaying = true;
                }
                Err(RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    fn fail(&mut self, message: String) -> StreamItem {
        self.done = true;
        StreamItem::Error { message, last_id: self.last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, BROADCAST_CAPACITY};
    use crate::store::Store;

    fn failed(i: i64) -> EventKind {
        EventKind::RunFailed { run_id: i, reason: "x".into() }
    }

    #[test]
    fn type_filters() {
        let f = EventFilter::parse("run.*, checkpoint.rejected").unwrap();
        assert!(f.matches("run.completed"));
        assert!(f.matches("checkpoint.rejected"));
        assert!(!f.matches("checkpoint.discovered"));
        assert!(EventFilter::parse("").unwrap().matches("anything"));
        assert!(EventFilter::parse("*").unwrap().matches("plugin.loaded"));
        assert!(EventFilter::parse("ru*n").is_err());
        assert!(EventFilter::parse("RUN.x").is_err());
        assert!(EventFilter::parse("run;drop").is_err());
    }

    #[tokio::test]
    async fn replays_then_follows_live_and_survives_lag_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(store);
        for i in 0..10 {
            bus.publish_blocking(&failed(i)).unwrap();
        }
        let mut sub = Subscription::new(&bus, 3, EventFilter::default());
        // More than the broadcast buffer while the subscriber is not reading: it lags.
        let n = BROADCAST_CAPACITY as i64 + 700;
        for i in 10..10 + n {
            bus.publish_blocking(&failed(i)).unwrap();
        }
        let mut expect = 4;
        while expect <= 10 + n {
            match sub.next().await.unwrap() {
                StreamItem::Event(e) => {
                    assert_eq!(e.id, expect);
                    expect += 1;
                }
                StreamItem::Error { message, .. } => panic!("{message}"),
            }
        }
        // And then live.
        bus.publish_blocking(&failed(-1)).unwrap();
        match sub.next().await.unwrap() {
            StreamItem::Event(e) => assert_eq!(e.id, 11 + n),
            StreamItem::Error { message, .. } => panic!("{message}"),
        }
    }

    #[tokio::test]
    async fn events_both_replayed_and_broadcast_come_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(store);
        bus.publish_blocking(&failed(1)).unwrap();
        let mut sub = Subscription::new(&bus, 0, EventFilter::default());
        // Published after subscribing, before the replay: in the store *and* the receiver.
        for i in 2..=5 {
            bus.publish_blocking(&failed(i)).unwrap();
        }
        let mut ids = Vec::new();
        for _ in 0..5 {
            match sub.next().await.unwrap() {
                StreamItem::Event(e) => ids.push(e.id),
                StreamItem::Error { message, .. } => panic!("{message}"),
            }
        }
        bus.publish_blocking(&failed(6)).unwrap();
        match sub.next().await.unwrap() {
            StreamItem::Event(e) => ids.push(e.id),
            StreamItem::Error { message, .. } => panic!("{message}"),
        }
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_replay_that_cannot_read_the_store_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(Arc::clone(&store));
        bus.publish_blocking(&failed(1)).unwrap();
        let mut sub = Subscription::new(&bus, 0, EventFilter::default());
        // Break the store behind the subscriber's back.
        let raw = rusqlite::Connection::open(store.path()).unwrap();
        raw.execute_batch("DROP TABLE events").unwrap();
        match sub.next().await {
            Some(StreamItem::Error { message, last_id }) => {
                assert!(message.contains("cannot read events"), "{message}");
                assert_eq!(last_id, 0);
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(sub.next().await.is_none(), "the stream ends after the error");
    }

    #[tokio::test]
    async fn filters_apply_to_replay_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(store);
        bus.publish_blocking(&failed(1)).unwrap();
        bus.publish_blocking(&EventKind::CheckpointRejected { path: "/a".into(), reason: "r".into() }).unwrap();
        let mut sub = Subscription::new(&bus, 0, EventFilter::parse("checkpoint.*").unwrap());
        bus.publish_blocking(&failed(2)).unwrap();
        bus.publish_blocking(&EventKind::CheckpointRejected { path: "/b".into(), reason: "r".into() }).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            match sub.next().await.unwrap() {
                StreamItem::Event(e) => got.push((e.id, e.payload["path"].as_str().unwrap().to_string())),
                StreamItem::Error { message, .. } => panic!("{message}"),
            }
        }
        assert_eq!(got, vec![(2, "/a".to_string()), (4, "/b".to_string())]);
    }
}
