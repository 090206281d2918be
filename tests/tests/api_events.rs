//! The live event stream over SSE and WebSocket: order, resume without gap or duplicate while
//! events keep coming, type filters, lagging subscribers, and a slow subscriber that never
//! reads among 200 (with the publish-throughput benchmark).

mod api_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::{numbered, SseClient, TestApi};
use driftwatch::events::{EventKind, BROADCAST_CAPACITY};
use driftwatch::store::Event;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Publishes `n` events from a blocking thread, pausing every few, while the caller reads.
fn publish_in_background(bus: &driftwatch::events::EventBus, from: i64, n: i64) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::task::spawn_blocking(move || {
        for i in from..from + n {
            bus.publish_blocking(&numbered(i)).unwrap();
            if i % 3 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_in_order_and_resumes_without_gap_or_duplicate() {
    let api = TestApi::start(None).await;
    let client = reqwest::Client::new();
    // A few stored before anyone connects.
    for i in 1..=5 {
        api.bus.publish_blocking(&numbered(i)).unwrap();
    }
    let url = api.url("/v1/events?since=0");
    let total: i64 = 500;
    let mut sse = SseClient::connect(&client, &url, None).await;
    let publisher = publish_in_background(&api.bus, 6, total - 5);
    let mut seen: Vec<i64> = Vec::new();
    // Read a while, drop the connection mid-stream, reconnect with Last-Event-ID: three times.
    for round in 0..8 {
        for _ in 0..40 {
            let e = sse.next_event().await.unwrap();
            assert_eq!(e.payload["run_id"], e.id, "payload belongs to its id");
            seen.push(e.id);
        }
        drop(sse);
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await; // let events pile up meanwhile
        }
        sse = SseClient::connect(&client, &url, seen.last().copied()).await;
    }
    while *seen.last().unwrap() < total {
        seen.push(sse.next_event().await.unwrap().id);
    }
    publisher.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "every id exactly once, in order");
    // `?since=` works like the header.
    let mut late = SseClient::connect(&client, &api.url(&format!("/v1/events?since={}", total - 3)), None).await;
    for want in total - 2..=total {
        assert_eq!(late.next_event().await.unwrap().id, want);
    }
    drop(late);
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_starting_point_only_new_events_come() {
    let api = TestApi::start(None).await;
    for i in 1..=3 {
        api.bus.publish_blocking(&numbered(i)).unwrap();
    }
    let client = reqwest::Client::new();
    let mut sse = SseClient::connect(&client, &api.url("/v1/events"), None).await;
    api.bus.publish_blocking(&numbered(4)).unwrap();
    assert_eq!(sse.next_event().await.unwrap().id, 4);
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_apply_to_replay_and_live() {
    let api = TestApi::start(None).await;
    let rejected = |p: &str| EventKind::CheckpointRejected { path: p.into(), reason: "empty".into() };
    let loaded =
        EventKind::PluginLoaded { name: "k".into(), version: "1".into(), path: "/k.wasm".into(), sha256: "00".into() };
    api.bus.publish_blocking(&numbered(1)).unwrap(); // 1 run.failed
    api.bus.publish_blocking(&loaded).unwrap(); // 2
    api.bus.publish_blocking(&rejected("/a")).unwrap(); // 3
    let client = reqwest::Client::new();
    let mut sse =
        SseClient::connect(&client, &api.url("/v1/events?since=0&types=run.*,checkpoint.rejected"), None).await;
    api.bus.publish_blocking(&loaded).unwrap(); // 4
    api.bus.publish_blocking(&rejected("/b")).unwrap(); // 5
    api.bus.publish_blocking(&numbered(6)).unwrap(); // 6
    let got: Vec<(i64, String)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let e = sse.next_event().await.unwrap();
            v.push((e.id, e.event_type));
        }
        v
    };
    assert_eq!(
        got,
        vec![
            (1, "run.failed".to_string()),
            (3, "checkpoint.rejected".to_string()),
            (5, "checkpoint.rejected".to_string()),
            (6, "run.failed".to_string())
        ]
    );
    drop(sse);
    api.stop().await;
}

async fn ws_connect(
    api: &TestApi,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/v1/events/ws{query}", api.addr);
    let (ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_next(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Event {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("WS stalled").unwrap().unwrap();
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert!(v.get("error").is_none(), "stream error: {v}");
                for k in ["id", "type", "time_ms", "payload"] {
                    assert!(v.get(k).is_some(), "{k} missing in {v}");
                }
                return serde_json::from_value(v).unwrap();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_delivers_in_order_and_resumes_with_since() {
    let api = TestApi::start(None).await;
    for i in 1..=5 {
        api.bus.publish_blocking(&numbered(i)).unwrap();
    }
    let total: i64 = 200;
    let mut ws = ws_connect(&api, "?since=0").await;
    let publisher = publish_in_background(&api.bus, 6, total - 5);
    let mut seen = Vec::new();
    for _ in 0..2 {
        for _ in 0..50 {
            let e = ws_next(&mut ws).await;
            assert_eq!(e.payload["run_id"], e.id);
            seen.push(e.id);
        }
        let _ = ws.close(None).await;
        ws = ws_connect(&api, &format!("?since={}", seen.last().unwrap())).await;
    }
    while *seen.last().unwrap() < total {
        seen.push(ws_next(&mut ws).await.id);
    }
    publisher.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    // Filters work the same way.
    // Ahead of the event log: refused before the upgrade.
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/events/ws?since=99999", api.addr)).await.unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    let mut only = ws_connect(&api, "?since=0&types=checkpoint.*").await;
    api.bus.publish_blocking(&EventKind::CheckpointRejected { path: "/x".into(), reason: "r".into() }).unwrap();
    let e = ws_next(&mut only).await;
    assert_eq!((e.id, e.event_type.as_str()), (total + 1, "checkpoint.rejected"));
    let _ = ws.close(None).await;
    let _ = only.close(None).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_lags_behind_the_broadcast_resumes_from_the_store_without_loss() {
    let api = TestApi::start(None).await;
    let client = reqwest::Client::new();
    let mut sse = SseClient::connect(&client, &api.url("/v1/events?since=0"), None).await;
    // Big events, many more than the broadcast buffer plus the socket buffers, while the
    // client does not read at all.
    let n = (BROADCAST_CAPACITY * 5) as i64;
    let big = "x".repeat(8 * 1024);
    let bus = api.bus.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        for i in 1..=n {
            bus.publish_blocking(&EventKind::RunFailed { run_id: i, reason: big.clone() }).unwrap();
        }
    })
    .await
    .unwrap();
    let publish_s = started.elapsed().as_secs_f64();
    for want in 1..=n {
        let e = sse.next_event().await.unwrap();
        assert_eq!(e.id, want);
        assert_eq!(e.payload["run_id"], want);
    }
    assert!(api.metrics.stream_lags() >= 1, "the subscriber should have lagged (and caught up from the store)");
    eprintln!(
        "lagging subscriber: {n} events of 8 KiB published in {publish_s:.2}s; {} catch-ups from the store",
        api.metrics.stream_lags()
    );
    drop(sse);
    api.stop().await;
}

/// Publishes `n` events; returns events per second and the slowest single publish (ms).
async fn publish_rate(bus: &driftwatch::events::EventBus, from: i64, n: i64) -> (f64, f64) {
    let bus = bus.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut worst = Duration::ZERO;
        for i in from..from + n {
            let one = Instant::now();
            bus.publish_blocking(&numbered(i)).unwrap();
            worst = worst.max(one.elapsed());
        }
        (n as f64 / t.elapsed().as_secs_f64(), worst.as_secs_f64() * 1e3)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_subscribers_and_one_that_never_reads_do_not_slow_the_publisher() {
    let api = TestApi::start(None).await;
    let n: i64 = 5000;
    // A: no subscribers.
    let (rate_0, worst_0) = publish_rate(&api.bus, 1, n).await;
    let base = n; // ids 1..=n used by A
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = api.url(&format!("/v1/events?since={base}"));
    // One subscriber that connects and never reads a byte (until the very end).
    let mut stuck = SseClient::connect(&client, &url, None).await;
    // 199 that will read everything.
    let readers = 199;
    let mut clients = Vec::new();
    for _ in 0..readers {
        clients.push(SseClient::connect(&client, &url, None).await);
    }
    assert_eq!(api.metrics.stream_subscribers(), 200);
    // B: 200 connected, nobody reading yet.
    let (rate_idle, worst_idle) = publish_rate(&api.bus, base + 1, n).await;
    // C: 199 reading while the publisher goes on, one still not reading.
    let total = 2 * n;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                for want in base + 1..=base + total {
                    let e = c.next_event().await.unwrap();
                    assert_eq!(e.id, want, "in order, no gap, no duplicate");
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let (rate_200, worst_200) = publish_rate(&api.bus, base + n + 1, n).await;
    let publish_s = t.elapsed().as_secs_f64();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task).await.expect("a reader stalled").unwrap();
    }
    let all_read_s = t.elapsed().as_secs_f64();
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), readers);
    eprintln!(
        "BENCH publish {n} events each: (A) 0 subscribers {rate_0:.0} events/s, slowest publish {worst_0:.2} ms; \
         (B) 200 SSE subscribers connected, none reading: {rate_idle:.0} events/s, slowest {worst_idle:.2} ms; \
         (C) 199 reading + 1 never reading: {rate_200:.0} events/s, slowest {worst_200:.2} ms \
         (publishing done after {publish_s:.2}s; all {readers} readers had all {total} events after {all_read_s:.2}s)"
    );
    // The one that never read still gets everything, in order, when it finally reads.
    for want in base + 1..=base + total {
        assert_eq!(stuck.next_event().await.unwrap().id, want);
    }
    drop(stuck);
    api.stop().await;
}
