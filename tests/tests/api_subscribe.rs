//! `driftwatch subscribe`: prints events as they come, survives the daemon going away and
//! coming back (resuming after the last id printed: no gap, no duplicate), and refuses for
//! good when the token is wrong.

mod api_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::numbered;
use driftwatch::api::subscribe::{subscribe_to, SubscribeArgs, SubscribeError};
use driftwatch::api::{self, ApiState};
use driftwatch::events::EventBus;
use driftwatch::metrics::Metrics;
use driftwatch::store::Store;
use tokio_util::sync::CancellationToken;

fn args(url: String, json: bool, count: u64) -> SubscribeArgs {
    SubscribeArgs { url, since: Some(0), types: None, json, token: Some("tok".into()), count: Some(count) }
}

/// Serves the API over `store` on `addr` until the returned token is cancelled.
async fn serve_on(
    addr: std::net::SocketAddr,
    store: &Arc<Store>,
    bus: &EventBus,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut listener = None;
    for _ in 0..100 {
        match api::bind(addr, Some("tok")).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await, // the old socket is closing
        }
    }
    let state = ApiState {
        store: Arc::clone(store),
        bus: bus.clone(),
        metrics: Arc::new(Metrics::new()),
        control: Arc::new(api_support::TestControl::default()),
        token: Some("tok".into()),
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    let listener = listener.expect("port free again");
    let h = tokio::spawn(async move {
        api::serve(state, listener, s).await.unwrap();
    });
    (stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_every_event_once_across_a_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_dir(dir.path()).unwrap());
    let bus = EventBus::new(Arc::clone(&store));
    // Find a free loopback port, then serve on it.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (stop, server) = serve_on(addr, &store, &bus).await;
    for i in 1..=5 {
        bus.publish_blocking(&numbered(i)).unwrap();
    }
    let a = args(format!("http://{addr}"), true, 15);
    let mut out: Vec<u8> = Vec::new();
    let shutdown = CancellationToken::new();
    let driver = async {
        // Let it print the first five, then take the daemon away.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        server.await.unwrap();
        // Published while the daemon is down (the store still takes them).
        for i in 6..=10 {
            bus.publish_blocking(&numbered(i)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (stop2, server2) = serve_on(addr, &store, &bus).await;
        for i in 11..=15 {
            bus.publish_blocking(&numbered(i)).unwrap();
        }
        (stop2, server2)
    };
    let (result, (stop2, server2)) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(subscribe_to(&a, &mut out, shutdown.clone()), driver)
    })
    .await
    .expect("subscribe finished");
    result.unwrap();
    let ids: Vec<i64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=15).collect::<Vec<_>>());

    // Readable lines.
    let mut out: Vec<u8> = Vec::new();
    let mut a = args(format!("http://{addr}"), false, 2);
    a.since = Some(13);
    subscribe_to(&a, &mut out, CancellationToken::new()).await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "#14 run.failed run 14: event 14\n#15 run.failed run 15: event 15\n");

    // A wrong token is final, not retried forever.
    let mut a = args(format!("http://{addr}"), false, 1);
    a.token = Some("wrong".into());
    let err =
        tokio::time::timeout(Duration::from_secs(10), subscribe_to(&a, &mut Vec::new(), CancellationToken::new()))
            .await
            .unwrap()
            .unwrap_err();
    assert!(matches!(err, SubscribeError::Refused { status: 401, .. }), "{err}");

    // Without --since: only events published after it started.
    let mut a = args(format!("http://{addr}"), true, 1);
    a.since = None;
    let mut out: Vec<u8> = Vec::new();
    let publish_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bus.publish_blocking(&numbered(16)).unwrap();
    };
    let (r, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(subscribe_to(&a, &mut out, CancellationToken::new()), publish_later)
    })
    .await
    .unwrap();
    r.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], 16);

    stop2.cancel();
    server2.await.unwrap();
}
