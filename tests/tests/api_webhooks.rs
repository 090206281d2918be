//! Webhooks: a receiver on 127.0.0.1 that fails the first attempts gets every event once it
//! recovers, each with its id, type and a valid signature; a restarted delivery task over the
//! same store neither re-sends what was delivered nor loses what was not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use driftwatch::config::WebhookConfig;
use driftwatch::events::{EventBus, EventKind};
use driftwatch::store::Store;
use driftwatch::webhooks::{signature, spawn_webhooks_with, WebhookOptions};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "hook-secret";

#[derive(Default)]
struct Receiver {
    /// Attempts answered with 500 still to come.
    fail_next: Mutex<u32>,
    attempts: Mutex<u32>,
    /// Accepted deliveries: (id header, type header, body id).
    accepted: Mutex<Vec<(i64, String, i64)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    *r.attempts.lock().unwrap() += 1;
    {
        let mut f = r.fail_next.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    // Verify the signature independently of driftwatch's helper.
    let sig = headers["x-driftwatch-signature"].to_str().unwrap();
    let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap()).expect("valid signature");
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id: i64 = headers["x-driftwatch-event-id"].to_str().unwrap().parse().unwrap();
    let ty = headers["x-driftwatch-event-type"].to_str().unwrap().to_string();
    assert_eq!(v["type"].as_str(), Some(ty.as_str()));
    assert!(v["payload"].is_object() && v["time_ms"].is_i64());
    r.accepted.lock().unwrap().push((id, ty, v["id"].as_i64().unwrap()));
    StatusCode::OK
}

async fn start_receiver(r: Arc<Receiver>) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = Router::new().route("/hook", post(receive)).with_state(r);
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned()).await.unwrap();
    });
    (url, stop)
}

fn fast() -> WebhookOptions {
    WebhookOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(80),
        request_timeout: Duration::from_secs(5),
        deliver_history: false,
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn numbered(i: i64) -> EventKind {
    EventKind::RunFailed { run_id: i, reason: format!("event {i}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_once_despite_failures_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
    let bus = EventBus::new(Arc::clone(&store));
    // History before the webhook exists is not sent to it.
    bus.publish_blocking(&numbered(0)).unwrap();

    let receiver = Arc::new(Receiver::default());
    *receiver.fail_next.lock().unwrap() = 4;
    let (url, stop_receiver) = start_receiver(Arc::clone(&receiver)).await;
    let hook = WebhookConfig {
        name: Some("test".into()),
        url,
        events: vec![],
        secret: Some(SECRET.into()),
        max_retry_delay_s: None,
    };

    let shutdown = CancellationToken::new();
    let task =
        spawn_webhooks_with(std::slice::from_ref(&hook), Arc::clone(&store), bus.clone(), shutdown.clone(), fast());
    wait_until("the cursor", || store.webhook_cursor("test").unwrap().is_some()).await;
    for i in 1..=10 {
        bus.publish_blocking(&numbered(i)).unwrap();
    }
    wait_until("10 deliveries", || receiver.accepted.lock().unwrap().len() >= 10).await;
    let first: Vec<i64> = receiver.accepted.lock().unwrap().iter().map(|a| a.0).collect();
    assert_eq!(first, (2..=11).collect::<Vec<_>>(), "ids 2..=11 (event 1 predates the webhook), in order, once each");
    assert!(receiver.accepted.lock().unwrap().iter().all(|(h, t, b)| h == b && t == "run.failed"));
    assert_eq!(*receiver.attempts.lock().unwrap(), 14, "4 failed attempts were retried");
    let cursor = store.webhook_cursor("test").unwrap().unwrap();
    assert_eq!((cursor.last_event_id, cursor.failures), (11, 0));

    // Stop the task; events published while it is down wait in the store.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    for i in 11..=15 {
        bus.publish_blocking(&numbered(i)).unwrap();
    }
    // The receiver is failing when the new task starts: the failures are recorded, then it recovers.
    *receiver.fail_next.lock().unwrap() = 3;
    let shutdown = CancellationToken::new();
    let task =
        spawn_webhooks_with(std::slice::from_ref(&hook), Arc::clone(&store), bus.clone(), shutdown.clone(), fast());
    wait_until("15 deliveries", || receiver.accepted.lock().unwrap().len() >= 15).await;
    bus.publish_blocking(&numbered(16)).unwrap();
    wait_until("16 deliveries", || receiver.accepted.lock().unwrap().len() >= 16).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // room for a wrong re-send to show up
    let all: Vec<i64> = receiver.accepted.lock().unwrap().iter().map(|a| a.0).collect();
    assert_eq!(all, (2..=17).collect::<Vec<_>>(), "nothing re-sent, nothing lost across the restart");
    assert_eq!(store.webhook_cursor("test").unwrap().unwrap().last_event_id, 17);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    stop_receiver.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_only_their_event_types_and_failures_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
    let bus = EventBus::new(Arc::clone(&store));
    let receiver = Arc::new(Receiver::default());
    *receiver.fail_next.lock().unwrap() = 1_000_000; // down for now
    let (url, stop_receiver) = start_receiver(Arc::clone(&receiver)).await;
    let hook = WebhookConfig {
        name: Some("checkpoints".into()),
        url,
        events: vec!["checkpoint.*".into()],
        secret: Some(SECRET.into()),
        max_retry_delay_s: None,
    };
    let shutdown = CancellationToken::new();
    let opts = WebhookOptions { deliver_history: true, ..fast() };
    bus.publish_blocking(&EventKind::CheckpointRejected { path: "/old".into(), reason: "r".into() }).unwrap(); // 1
    let task = spawn_webhooks_with(&[hook], Arc::clone(&store), bus.clone(), shutdown.clone(), opts);
    bus.publish_blocking(&numbered(2)).unwrap(); // 2: not wanted
    bus.publish_blocking(&EventKind::CheckpointRejected { path: "/new".into(), reason: "r".into() }).unwrap(); // 3
    wait_until("recorded failures", || store.webhook_cursor("checkpoints").unwrap().is_some_and(|c| c.failures >= 3))
        .await;
    let c = store.webhook_cursor("checkpoints").unwrap().unwrap();
    assert_eq!(c.last_event_id, 0);
    assert!(c.last_error.unwrap().contains("500"));
    *receiver.fail_next.lock().unwrap() = 0; // back up
    wait_until("2 deliveries", || receiver.accepted.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got: Vec<(i64, String)> = receiver.accepted.lock().unwrap().iter().map(|a| (a.0, a.1.clone())).collect();
    assert_eq!(got, vec![(1, "checkpoint.rejected".to_string()), (3, "checkpoint.rejected".to_string())]);
    let c = store.webhook_cursor("checkpoints").unwrap().unwrap();
    assert_eq!((c.last_event_id, c.failures, c.last_error), (3, 0, None));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    stop_receiver.cancel();
    // The helper signs as the receiver verifies.
    assert!(signature(SECRET, b"{}").starts_with("sha256="));
}
