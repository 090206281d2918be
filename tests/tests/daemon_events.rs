//! End-to-end evidence for the event stream and the HTTP API, with the daemon running on tiny
//! fixtures and its API enabled on a free loopback port:
//! - an SSE client on `GET /v1/events` sees each checkpoint's story in order
//!   (`checkpoint.discovered → run.queued → run.started → run.progress → run.completed`);
//! - a client that disconnects mid-run and reconnects with `Last-Event-ID` gets every event the
//!   store holds for its filter, with no gap and no duplicate;
//! - `driftwatch subscribe --json --count N` (a subprocess) prints exactly the stored events;
//! - `POST /v1/evaluate` accepts a good adapter (202, a run that completes) and refuses a junk
//!   file (422 with the reason); `GET /v1/runs/{id}` returns the scores with intervals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftwatch::api::subscribe::SseParser;
use driftwatch::config::Config;
use driftwatch::store::{Event, RunStatus, Store};
use driftwatch_tests::wait_for;
use driftwatch_tests::{open_store, ConfigBuilder, Fixture, TinyAdapter};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The filter the stream clients use (everything about checkpoints and runs).
const TYPES: &str = "checkpoint.*,run.*";

fn wanted(t: &str) -> bool {
    t.starts_with("checkpoint.") || t.starts_with("run.")
}

/// Writes a config: `prompts` prompts × `samples` samples of `max_tokens`, API on `port`.
fn write_config(fx: &Fixture, root: &Path, port: u16, prompts: usize, samples: u32, max_tokens: u32) -> PathBuf {
    let suite = root.join("suite.txt");
    driftwatch_tests::write_numbered_suite(&suite, prompts);
    ConfigBuilder::new(root.join("data"), &fx.base)
        .watch(root.join("checkpoints"))
        .settle_ms(300)
        .log_level("warn")
        .parallel(4)
        .batch_size(64)
        .samples(samples)
        .seed(7)
        .plain_sampling()
        .max_tokens(max_tokens)
        .suite("mini", suite)
        .judge("refusal", driftwatch_tests::bundled("refusal"))
        .api(port)
        .evaluate_root(root.join("elsewhere"))
        .bootstrap(200)
        .write(root.join("driftwatch.toml"))
}

/// Every stored event of the filter, in id order.
fn stored(store: &Store) -> Vec<Event> {
    store.events_since(0, &[], 100_000).unwrap().into_iter().filter(|e| wanted(&e.event_type)).collect()
}

/// One SSE connection, read by a background task; dropping it disconnects.
struct Sse {
    rx: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sse {
    /// Connects to `GET /v1/events?types=…`, resuming after `last_event_id` when given.
    async fn connect(client: &reqwest::Client, base: &str, last_event_id: Option<i64>, since: Option<i64>) -> Sse {
        let mut req =
            client.get(format!("{base}/v1/events")).query(&[("types", TYPES)]).header("Accept", "text/event-stream");
        if let Some(s) = since {
            req = req.query(&[("since", s.to_string())]);
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .expect("SSE connect timed out")
            .expect("SSE connect");
        assert_eq!(resp.status(), 200, "GET /v1/events");
        let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut parser = SseParser::default();
            while let Some(chunk) = body.next().await {
                let Ok(bytes) = chunk else {
                    let _ = tx.send(Err("stream broke".into()));
                    return;
                };
                for msg in parser.feed(&bytes) {
                    let parsed = if msg.event.as_deref() == Some("error") {
                        Err(format!("error event: {}", msg.data))
                    } else {
                        serde_json::from_str::<Event>(&msg.data)
                            .map_err(|e| format!("bad event {}: {e}", msg.data))
                            .and_then(|ev| {
                                // The SSE framing agrees with the record.
                                if msg.id.as_deref() != Some(ev.id.to_string().as_str())
                                    || msg.event.as_deref() != Some(ev.event_type.as_str())
                                {
                                    Err(format!(
                                        "SSE id/event fields {:?}/{:?} disagree with {}",
                                        msg.id, msg.event, msg.data
                                    ))
                                } else {
                                    Ok(ev)
                                }
                            })
                    };
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Err("the daemon closed the stream".into()));
        });
        Sse { rx, task }
    }

    /// The next event, or a panic after `secs`.
    async fn next(&mut self, secs: u64) -> Event {
        match tokio::time::timeout(Duration::from_secs(secs), self.rx.recv()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("SSE: {e}"),
            Ok(None) => panic!("SSE reader ended"),
            Err(_) => panic!("no SSE event within {secs}s"),
        }
    }

    /// Reads events into `seen` until one satisfies `stop` (returned too), within `secs` in all.
    async fn until(&mut self, secs: u64, seen: &mut Vec<Event>, stop: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
            assert!(Instant::now() < deadline, "timed out reading the stream");
            let e = self.next(left).await;
            seen.push(e.clone());
            if stop(&e) {
                return e;
            }
        }
    }
}

/// Events about one checkpoint (by path) and its runs, as the story a subscriber reads.
fn story(events: &[Event], path_suffix: &str) -> (Vec<String>, i64) {
    let mut runs: Vec<i64> = Vec::new();
    let mut out = Vec::new();
    for e in events {
        let by_path = e.payload["path"].as_str().is_some_and(|p| p.ends_with(path_suffix));
        if by_path && e.event_type == "run.queued" {
            runs.push(e.payload["run_id"].as_i64().unwrap());
        }
        let by_run = e.payload["run_id"].as_i64().is_some_and(|r| runs.contains(&r));
        if by_path || by_run {
            out.push(e.event_type.clone());
        }
    }
    assert_eq!(runs.len(), 1, "one run queued for {path_suffix}: {out:?}");
    (out, runs[0])
}

/// Asserts the order discovered → queued → started → progress(+) → completed, nothing else.
fn assert_story(story: &[String]) {
    assert!(story.len() >= 5, "{story:?}");
    assert_eq!(&story[..3], ["checkpoint.discovered", "run.queued", "run.started"], "{story:?}");
    assert_eq!(story.last().unwrap(), "run.completed", "{story:?}");
    assert!(story[3..story.len() - 1].iter().all(|t| t == "run.progress"), "{story:?}");
}

/// `ids` is exactly the run of stored ids (for the filter) from its first to its last: no gap,
/// no duplicate, nothing out of order.
fn assert_contiguous(ids: &[i64], store_ids: &[i64]) {
    assert!(!ids.is_empty());
    let start = store_ids.iter().position(|i| *i == ids[0]).unwrap_or_else(|| panic!("{} not stored", ids[0]));
    let expected = &store_ids[start..start + ids.len().min(store_ids.len() - start)];
    assert_eq!(ids, expected, "received ids differ from the stored sequence");
}

async fn post_json(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{url} answered {status} with content-type {ct:?}");
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_in_order_resume_without_gap_and_the_api_evaluates() {
    let fx = Fixture::new();
    let root = fx.dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("checkpoints")).unwrap();
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    let port = driftwatch_tests::free_port();
    let cfg = write_config(&fx, &root, port, 24, 4, 160);
    let config = Config::load(&cfg).unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(driftwatch::daemon::run(config, stop.clone()));
    let store = open_store(&root.join("data"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap();

    // The API comes up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/v1/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the API did not come up on {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The judges the daemon serves, with their declared roles (the request took the judges'
    // lock twice in one expression and hung, and the runner with it).
    let r = tokio::time::timeout(Duration::from_secs(10), client.get(format!("{base}/v1/plugins")).send())
        .await
        .expect("GET /v1/plugins answers")
        .unwrap();
    let plugins: Value = r.json().await.unwrap();
    let roles: Vec<(&str, &str)> = plugins
        .as_array()
        .expect("a list of plugins")
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or(""), p["role"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(roles, [("refusal", "harm")], "{plugins}");

    // 1. One client from the beginning: the baseline's story, then an adapter's, in order.
    let mut seen: Vec<Event> = Vec::new();
    let mut sse = Sse::connect(&client, &base, None, Some(0)).await;
    sse.until(300, &mut seen, |e| e.event_type == "run.completed").await;
    let ft1 = root.join("checkpoints/ft-1.gguf");
    std::fs::copy(&fx.adapter, &ft1).unwrap();
    sse.until(300, &mut seen, |e| {
        e.event_type == "run.completed" && e.payload["path"].as_str().is_some_and(|p| p.ends_with("ft-1.gguf"))
    })
    .await;
    let (story1, run1) = story(&seen, "ft-1.gguf");
    assert_story(&story1);
    assert!(seen.iter().all(|e| wanted(&e.event_type)), "the type filter let through something else");

    // 2. Disconnect mid-run on a second checkpoint, reconnect with Last-Event-ID.
    let ft2 = root.join("checkpoints/ft-2.gguf");
    TinyAdapter { seed: 11, ..TinyAdapter::default() }.write(&fx.base, &ft2).unwrap();
    let started = sse
        .until(120, &mut seen, |e| e.event_type == "run.started" && e.payload["run_id"].as_i64() != Some(run1))
        .await;
    let run2 = started.payload["run_id"].as_i64().unwrap();
    let last_before = seen.last().unwrap().id;
    drop(sse);
    assert_eq!(store.run(run2).unwrap().unwrap().status, RunStatus::Running, "the disconnect was not mid-run");
    // Events for the filter are stored while nobody listens (two, or all that are left).
    wait_for(120, "events stored while disconnected", || {
        let missed = stored(&store).iter().filter(|e| e.id > last_before && e.payload["run_id"] == run2).count();
        (missed >= 2 || (missed >= 1 && store.run(run2).unwrap().unwrap().status != RunStatus::Running)).then_some(())
    })
    .await;
    let missed_at_reconnect = stored(&store).iter().filter(|e| e.id > last_before).count();
    assert!(missed_at_reconnect > 0);
    let before_len = seen.len();
    let mut sse = Sse::connect(&client, &base, Some(last_before), None).await;
    sse.until(300, &mut seen, |e| e.event_type == "run.completed" && e.payload["run_id"] == run2).await;
    assert_eq!(
        seen[before_len].id,
        stored(&store).iter().find(|e| e.id > last_before).unwrap().id,
        "the replay starts right after Last-Event-ID"
    );
    let (story2, r2) = story(&seen, "ft-2.gguf");
    assert_eq!(r2, run2);
    assert_story(&story2);
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    let store_events = stored(&store);
    let store_ids: Vec<i64> = store_events.iter().map(|e| e.id).collect();
    assert_eq!(ids[0], store_ids[0], "?since=0 replays from the first stored event");
    assert_contiguous(&ids, &store_ids);
    // What was received is what is stored, field for field.
    for e in &seen {
        let s = store_events.iter().find(|s| s.id == e.id).unwrap();
        assert_eq!(e, s);
    }
    eprintln!(
        "stream: {} events received over two connections ({} replayed after the reconnect), ids {}..={}",
        seen.len(),
        missed_at_reconnect,
        ids[0],
        ids.last().unwrap()
    );

    // 3. `driftwatch subscribe --json --count N` prints what the store holds.
    let all = store.events_since(0, &[], 100_000).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(driftwatch_tests::command())
            .args(["subscribe", "--url", &base, "--since", "0", "--json", "--count", &all.len().to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("subscribe --count did not exit")
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<Event> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed, all, "subscribe --json printed something other than the stored events");
    // And filtered, starting mid-log.
    let after = store_ids[store_ids.len() / 2];
    let expect: Vec<&Event> =
        store_events.iter().filter(|e| e.id > after && e.event_type.starts_with("run.")).collect();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(driftwatch_tests::command())
            .args([
                "subscribe",
                "--url",
                &base,
                "--since",
                &after.to_string(),
                "--types",
                "run.*",
                "--json",
                "--count",
                &expect.len().to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("subscribe --types did not exit")
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<Event> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed.iter().collect::<Vec<_>>(), expect);

    // 4. POST /v1/evaluate: a good adapter outside the watched folders (in an
    //    `api.evaluate_roots` folder) is queued and run.
    let good = root.join("elsewhere/ft-3.gguf");
    TinyAdapter { seed: 23, ..TinyAdapter::default() }.write(&fx.base, &good).unwrap();
    let (status, body) =
        post_json(&client, &format!("{base}/v1/evaluate"), json!({"path": good.to_str().unwrap()})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["outcome"], "accepted", "{body}");
    assert_eq!(body["kind"], "adapter", "{body}");
    let queued = body["queued"].as_array().unwrap();
    assert_eq!(queued.len(), 1, "{body}");
    let run3 = queued[0].as_i64().unwrap();
    // Asking again for the same file is not a new run.
    let (status, again) =
        post_json(&client, &format!("{base}/v1/evaluate"), json!({"path": good.to_str().unwrap()})).await;
    assert!(
        status == 409 || (status == 202 && again["queued"].as_array().is_some_and(|q| q.is_empty())),
        "{status} {again}"
    );
    // A junk file is refused with the reason.
    let junk = root.join("elsewhere/junk.gguf");
    std::fs::write(&junk, b"definitely not a model, just some text").unwrap();
    let (status, err) =
        post_json(&client, &format!("{base}/v1/evaluate"), json!({"path": junk.to_str().unwrap()})).await;
    assert_eq!(status, 422, "{err}");
    let msg = err["error"].as_str().unwrap_or_else(|| panic!("no error message: {err}"));
    assert!(msg.contains("not a GGUF file") && msg.contains("junk.gguf"), "{msg}");
    // Files outside the watched folders and `api.evaluate_roots` are refused without being
    // read, whatever the path says (it used to answer 422 quoting the file's first bytes).
    std::os::unix::fs::symlink("/etc/passwd", root.join("elsewhere/passwd.gguf")).unwrap();
    let elsewhere = root.join("elsewhere");
    for path in [
        "/etc/passwd".to_owned(),
        format!("{}/../../../../../etc/passwd", elsewhere.display()),
        elsewhere.join("passwd.gguf").display().to_string(),
        "/proc/self/environ".to_owned(),
    ] {
        let (status, err) = post_json(&client, &format!("{base}/v1/evaluate"), json!({ "path": path })).await;
        assert_eq!(status, 403, "{path}: {err}");
        let msg = err["error"].as_str().unwrap();
        assert!(
            msg.contains("not inside a folder this daemon evaluates from") && !msg.contains("root:"),
            "{path}: {msg}"
        );
    }
    // An oversized body is refused before it is parsed.
    let huge = "x".repeat(driftwatch::api::MAX_BODY_BYTES + 1);
    let (status, err) = post_json(&client, &format!("{base}/v1/evaluate"), json!({ "path": huge })).await;
    assert_eq!(status, 413, "{err}");

    let done = wait_for(300, "the evaluated adapter's run", || {
        store.run(run3).unwrap().filter(|r| matches!(r.status, RunStatus::Completed | RunStatus::Failed))
    })
    .await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    let r = client.get(format!("{base}/v1/runs/{run3}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["run"]["id"], run3, "{v}");
    assert_eq!(v["run"]["status"], "completed", "{v}");
    assert_eq!(v["done"], v["total"], "{v}");
    assert_eq!(v["total"], 96, "24 prompts × 4 samples: {v}");
    assert!(
        v["checkpoint"]["path"].as_str().is_some_and(|p| p.ends_with("ft-3.gguf"))
            || v["checkpoint"].to_string().contains("ft-3.gguf"),
        "{v}"
    );
    let scores = &v["run"]["scores"];
    let headline = scores["headline"].as_array().unwrap_or_else(|| panic!("no headline scores: {scores}"));
    let h = headline.iter().find(|h| h["judge"] == "refusal").unwrap_or_else(|| panic!("no refusal score: {scores}"));
    let (lo, hi) = (h["lo"].as_f64().unwrap(), h["hi"].as_f64().unwrap());
    assert!(0.0 <= lo && lo <= hi && hi <= 1.0, "interval [{lo}, {hi}] in {h}");
    // The run.completed event carries the stored headline scores, comparison, verdict and the
    // digest of the stored provenance.
    let completed = store
        .events_since(0, &["run.completed"], 1000)
        .unwrap()
        .into_iter()
        .find(|e| e.payload["run_id"] == run3)
        .expect("run.completed of the evaluated run");
    assert_eq!(completed.payload["scores"], scores["headline"]);
    assert_eq!(completed.payload["comparison"], scores["comparisons"]);
    assert_eq!(completed.payload["verdict"], scores["verdict"]);
    assert_eq!(
        completed.payload["provenance_digest"].as_str().unwrap(),
        driftwatch::config::canonical_hash(&v["run"]["provenance"])
    );
    // Unknown runs are a 404 JSON error.
    let r = client.get(format!("{base}/v1/runs/999999")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.expect("the daemon stops promptly").unwrap().unwrap();
}
