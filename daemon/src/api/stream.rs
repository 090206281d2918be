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

use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::task::JoinHandle;

use crate::events::{EventBus, EventFilter, LiveEvent};
use crate::metrics::Metrics;
use crate::store::{Event, EventId, StoreError};

/// Events read from the store per replay query.
pub const REPLAY_PAGE: usize = 500;

/// A subscriber that must catch up from the store this many times in a row without ever
/// reaching the live stream is given up on (it cannot keep up at all).
pub const MAX_CONSECUTIVE_LAGS: u32 = 32;

/// What a subscriber stream yields.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The next event.
    Event(Arc<LiveEvent>),
    /// The stream cannot go on (it ends after this); the text says why.
    Error {
        /// Why.
        message: String,
        /// The last event id delivered (resume after it).
        last_id: EventId,
    },
}

/// One read of stored events (at most [`REPLAY_PAGE`]).
type Page = Result<Vec<Event>, StoreError>;

/// A subscriber's position in the event log. Create it (which subscribes to the bus) before
/// answering the client, then call [`Subscription::next`] whenever the client can take more.
pub struct Subscription {
    bus: EventBus,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    filter: EventFilter,
    last: EventId,
    replaying: bool,
    /// The store read in flight, kept across a cancelled [`Subscription::next`].
    replay: Option<JoinHandle<Page>>,
    pending: VecDeque<Arc<LiveEvent>>,
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
            replay: None,
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
    /// after an [`StreamItem::Error`]. Cancel-safe: a call dropped while it waits (for a
    /// keep-alive tick, say) loses nothing, and a store read it started is picked up by the
    /// next call.
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(item) = self.try_next() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if self.replaying {
                if let Some(failed) = self.read_page().await {
                    return Some(failed);
                }
                continue;
            }
            let received = self.rx.recv().await;
            if let Some(item) = self.take_live(received) {
                return Some(item);
            }
        }
    }

    /// The next event if it is at hand now (live, or already read from the store), without
    /// waiting: a sender drains these after [`Subscription::next`] to write several events at
    /// once. `None` says only that nothing is ready; the stream goes on.
    pub fn try_next(&mut self) -> Option<StreamItem> {
        loop {
            if self.done {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                self.last = e.id;
                return Some(StreamItem::Event(e));
            }
            if self.replaying {
                return None;
            }
            let received = match self.rx.try_recv() {
                Ok(e) => Ok(e),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(item) = self.take_live(received) {
                return Some(item);
            }
        }
    }

    /// Reads the next page from the store into `pending` (ending the replay when it comes up
    /// short); an error ends the stream.
    async fn read_page(&mut self) -> Option<StreamItem> {
        let handle = self.replay.get_or_insert_with(|| {
            let bus = self.bus.clone();
            let after = self.last;
            let filter = self.filter.clone();
            tokio::task::spawn_blocking(move || bus.replay(after, &filter.patterns(), REPLAY_PAGE))
        });
        let page = handle.await;
        self.replay = None;
        let page = match page {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Some(self.fail(format!("cannot read events from the store: {e}"))),
            Err(e) => return Some(self.fail(format!("event replay task failed: {e}"))),
        };
        if page.len() < REPLAY_PAGE {
            self.replaying = false;
        }
        self.pending.extend(page.into_iter().map(|e| Arc::new(LiveEvent::new(e))));
        None
    }

    /// Handles what the live broadcast gave: an event to hand out, one to skip (already
    /// replayed, or filtered out), a lag (back to the store) or the end.
    fn take_live(&mut self, received: Result<Arc<LiveEvent>, RecvError>) -> Option<StreamItem> {
        match received {
            Ok(e) => {
                if e.id <= self.last {
                    return None; // already replayed
                }
                self.lags = 0;
                // Wanted or not, remember the position so a lag resumes after it.
                self.last = e.id;
                self.filter.matches(&e.event_type).then_some(StreamItem::Event(e))
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
                None
            }
            Err(RecvError::Closed) => {
                self.done = true;
                None
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

    /// A bus over a fresh store (kept alive by the returned folder).
    fn test_bus() -> (tempfile::TempDir, Arc<Store>, EventBus) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
        let bus = EventBus::new(Arc::clone(&store));
        (dir, store, bus)
    }

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
        let (_dir, _, bus) = test_bus();
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
        let (_dir, _, bus) = test_bus();
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
        let (_dir, store, bus) = test_bus();
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

    /// The id of a stream's event, `None` at its end; an error fails the test.
    fn id_of(item: Option<StreamItem>) -> Option<EventId> {
        match item? {
            StreamItem::Event(e) => Some(e.id),
            StreamItem::Error { message, .. } => panic!("{message}"),
        }
    }

    /// `try_next` hands out what is at hand without waiting, in order and filtered like
    /// `next`; after a lag it says "nothing ready" and `next` goes back to the store, without
    /// a gap.
    #[tokio::test]
    async fn try_next_takes_what_is_ready_and_leaves_a_lag_to_next() {
        let (_dir, _, bus) = test_bus();
        bus.publish_blocking(&failed(1)).unwrap();
        let mut sub = Subscription::new(&bus, 0, EventFilter::parse("run.failed").unwrap());
        assert_eq!(sub.try_next().map(|_| ()), None, "nothing is read from the store without waiting");
        assert_eq!(id_of(sub.next().await), Some(1));
        assert!(sub.try_next().is_none());
        bus.publish_blocking(&failed(2)).unwrap();
        bus.publish_blocking(&EventKind::CheckpointRejected { path: "/a".into(), reason: "r".into() }).unwrap();
        bus.publish_blocking(&failed(3)).unwrap();
        assert_eq!(id_of(sub.next().await), Some(2));
        assert_eq!(id_of(sub.try_next()), Some(4), "the rejected checkpoint is filtered out");
        assert!(sub.try_next().is_none());
        // Past the broadcast buffer: try_next cannot serve it, next replays from the store.
        let n = BROADCAST_CAPACITY as i64 + 10;
        for i in 0..n {
            bus.publish_blocking(&failed(i)).unwrap();
        }
        assert!(sub.try_next().is_none());
        let mut expect = 5;
        while expect < 5 + n {
            assert_eq!(id_of(sub.next().await), Some(expect));
            expect += 1;
            while let Some(id) = id_of(sub.try_next()) {
                assert_eq!(id, expect);
                expect += 1;
            }
        }
    }

    /// A `next` dropped while it waits for the store (as a keep-alive tick or shutdown does in
    /// `select!`) loses and repeats nothing, and the read it started goes on: a caller whose
    /// every call is cut short still gets through the replay, instead of starting the same read
    /// over forever.
    #[tokio::test]
    async fn a_cancelled_next_loses_nothing_and_its_read_goes_on() {
        use futures::FutureExt;
        let (_dir, _, bus) = test_bus();
        let n = 3 * REPLAY_PAGE as i64 + 7;
        for i in 0..n {
            bus.publish_blocking(&failed(i)).unwrap();
        }
        let mut sub = Subscription::new(&bus, 0, EventFilter::default());
        let mut got = Vec::new();
        let mut cancelled = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < n as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck after {} events, {cancelled} cancelled calls",
                got.len()
            );
            // Poll once and drop: cancels whatever the call was waiting on.
            match sub.next().now_or_never() {
                Some(item) => got.push(id_of(item).unwrap()),
                None => {
                    cancelled += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
        assert!(cancelled > 0, "no call was cancelled: the test shows nothing");
        assert_eq!(got, (1..=n).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn filters_apply_to_replay_and_live() {
        let (_dir, _, bus) = test_bus();
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
