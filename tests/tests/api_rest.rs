//! The REST routes, `/metrics`, bearer-token authentication and JSON errors with the right
//! status codes.

mod api_support;

use std::path::PathBuf;

use api_support::{numbered, TestApi};
use driftwatch::api::{self, ApiStartError};
use driftwatch::store::{CheckpointKind, NewCheckpoint, NewRun, NewSample, StoredVerdict};
use serde_json::{json, Value};

/// A checkpoint with a completed run of `n` samples; returns the run id.
fn seed_run(api: &TestApi, n: u32) -> i64 {
    let (ckpt, _) = api
        .store
        .upsert_checkpoint(&NewCheckpoint {
            sha256: "ab".repeat(32),
            path: PathBuf::from("/models/ft-1.gguf"),
            size: 1234,
            kind: CheckpointKind::Adapter,
            architecture: Some("llama".into()),
            mtime_ms: None,
        })
        .unwrap();
    let run = api
        .store
        .create_run(&NewRun {
            checkpoint_id: ckpt.id,
            baseline_run_id: None,
            settings_hash: "s".repeat(16),
            provenance: json!({"suite": "mini", "seed": 7}),
            total_samples: u64::from(n) + 10,
        })
        .unwrap();
    api.store.start_run(run.id).unwrap();
    for i in 0..n {
        let sample = NewSample {
            prompt_id: format!("p{:03}", i / 2),
            category: Some("weapons".into()),
            sample_index: i % 2,
            seed: u64::from(i),
            prompt: format!("prompt {}", i / 2),
            response: format!("response {i}"),
            prompt_tokens: 5,
            completion_tokens: 9,
            finish_reason: "stop".into(),
            generation_ms: Some(1.0),
            judge_ms: Some(0.5),
            error: None,
        };
        let verdict = StoredVerdict {
            judge: "keyword".into(),
            judge_version: "0.1.0".into(),
            is_unsafe: Some(i % 3 == 0),
            score: None,
            label: Some("x".into()),
            rationale: None,
            refusal: Some(false),
            error: None,
        };
        api.store.insert_sample_with_verdicts(run.id, &sample, &[verdict]).unwrap();
    }
    run.id
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(ct.starts_with("application/json"), "JSON answer expected, got {ct:?}");
    (status, r.json().await.unwrap())
}

fn error_text(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("no error message in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_answer_from_the_store() {
    let api = TestApi::start(None).await;
    let c = reqwest::Client::new();
    let run_id = seed_run(&api, 25);
    api.bus.publish_blocking(&numbered(1)).unwrap();

    let (s, v) = get(&c, api.url("/v1/health")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(v["last_event_id"], 1);

    let (s, v) = get(&c, api.url("/v1/checkpoints")).await;
    assert_eq!(s, 200);
    assert_eq!(v["checkpoints"][0]["path"], "/models/ft-1.gguf");
    assert_eq!(v["checkpoints"][0]["kind"], "adapter");

    let (s, v) = get(&c, api.url("/v1/runs")).await;
    assert_eq!(s, 200);
    let running = v["running"].as_array().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["run"]["id"], run_id);
    assert_eq!(running[0]["done"], 25);
    assert_eq!(running[0]["total"], 35);
    assert!((running[0]["progress"].as_f64().unwrap() - 25.0 / 35.0).abs() < 1e-9);
    assert_eq!(v["last_event_id"], 1);

    let (s, v) = get(&c, api.url(&format!("/v1/runs/{run_id}"))).await;
    assert_eq!(s, 200);
    assert_eq!(v["run"]["status"], "running");
    assert_eq!(v["run"]["provenance"]["suite"], "mini");
    assert_eq!(v["checkpoint"]["sha256"], "ab".repeat(32));
    assert_eq!(v["done"], 25);

    // Paging: 25 samples in pages of 10.
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let (s, v) = get(&c, api.url(&format!("/v1/runs/{run_id}/samples?offset={offset}&limit=10"))).await;
        assert_eq!(s, 200);
        assert_eq!(v["total"], 25);
        let page = v["samples"].as_array().unwrap();
        assert!(page.len() <= 10);
        all.extend(page.iter().map(|x| x["response"].as_str().unwrap().to_string()));
        assert_eq!(page[0]["verdicts"][0]["judge"], "keyword");
        match v["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    assert_eq!(all.len(), 25);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 25, "pages do not overlap");
    // Past the end: an empty page; too large a limit is capped.
    let (_, v) = get(&c, api.url(&format!("/v1/runs/{run_id}/samples?offset=100"))).await;
    assert_eq!(v["samples"].as_array().unwrap().len(), 0);
    let (_, v) = get(&c, api.url(&format!("/v1/runs/{run_id}/samples?limit=999999"))).await;
    assert_eq!(v["limit"], 1000);
    assert_eq!(v["samples"].as_array().unwrap().len(), 25);

    let (s, v) = get(&c, api.url("/v1/plugins")).await;
    assert_eq!((s, v["plugins"][0]["name"].as_str()), (200, Some("keyword")));

    let r = c.post(api.url("/v1/evaluate")).json(&json!({"path": "/models/new.gguf"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["queued"], "/models/new.gguf");
    assert_eq!(*api.control.evaluated.lock().unwrap(), vec![PathBuf::from("/models/new.gguf")]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let api = TestApi::start(None).await;
    let c = reqwest::Client::new();
    let run_id = seed_run(&api, 3);

    for (path, status) in [
        ("/v1/runs/999".to_string(), 404),
        ("/v1/runs/999/samples".to_string(), 404),
        ("/v1/runs/abc".to_string(), 400),
        ("/v1/runs/-4".to_string(), 400),
        ("/v1/nothing-here".to_string(), 404),
        ("/".to_string(), 404),
        (format!("/v1/runs/{run_id}/samples?limit=0"), 400),
        (format!("/v1/runs/{run_id}/samples?limit=ten"), 400),
        (format!("/v1/runs/{run_id}/samples?offset=-1"), 400),
        (format!("/v1/runs/{run_id}/samples?page=2"), 400),
        ("/v1/checkpoints?limit=x".to_string(), 400),
        ("/v1/runs?recent=-1".to_string(), 400),
        ("/v1/events?since=abc".to_string(), 400),
        ("/v1/events?since=-5".to_string(), 400),
        ("/v1/events?types=RUN;drop".to_string(), 400),
        ("/v1/events/ws?since=x".to_string(), 400),
        // A plain GET on the WebSocket route is not an upgrade.
        ("/v1/events/ws".to_string(), 400),
    ] {
        let (s, v) = get(&c, api.url(&path)).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(!error_text(&v).is_empty());
    }
    // Ahead of the event log (it was reset): a clear conflict, not silence.
    let (s, v) = get(&c, api.url("/v1/events?since=999")).await;
    assert_eq!(s, 409, "{v}");
    assert!(error_text(&v).contains("beyond the newest event"));
    let r = c.get(api.url("/v1/events")).header("Last-Event-ID", "nope").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Wrong method.
    let r = c.delete(api.url("/v1/runs")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(error_text(&r.json::<Value>().await.unwrap()).contains("method"));
    let r = c.get(api.url("/v1/evaluate")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // POST /v1/evaluate: bad bodies and refusals.
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut r = c.post(api.url("/v1/evaluate")).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    for (body, ct, status, needle) in [
        ("{\"path\": \"/a.gguf\"}", None, 400, "Content-Type"),
        ("not json", Some("application/json"), 400, "bad JSON"),
        ("{}", Some("application/json"), 400, "path"),
        ("{\"path\": 5}", Some("application/json"), 400, "bad JSON"),
        ("{\"path\": \"\"}", Some("application/json"), 400, "empty"),
        ("{\"path\": \"/a.gguf\", \"extra\": 1}", Some("application/json"), 400, "extra"),
        ("{\"path\": \"/notes.txt\"}", Some("application/json"), 422, "not a .gguf"),
        ("{\"path\": \"/a.gguf\"}", Some("application/json"), 202, ""),
        ("{\"path\": \"/a.gguf\"}", Some("application/json"), 409, "already queued"),
    ] {
        let r = post(body, ct).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        if status != 202 {
            assert!(error_text(&v).contains(needle), "{body}: {v}");
        }
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text_format() {
    let api = TestApi::start(None).await;
    api.metrics.run_finished("completed");
    api.metrics.observe_judge_call("keyword", 0.02);
    api.metrics.set_queue_length(4);
    let r = reqwest::get(api.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let t = r.text().await.unwrap();
    assert!(t.contains("# TYPE driftwatch_runs_finished_total counter\n"));
    assert!(t.contains("driftwatch_runs_finished_total{outcome=\"completed\"} 1\n"));
    assert!(t.contains("driftwatch_queue_length 4\n"));
    assert!(t.contains("driftwatch_judge_call_duration_seconds_bucket{plugin=\"keyword\",le=\"0.025\"} 1\n"));
    assert!(t.contains("driftwatch_judge_call_duration_seconds_count{plugin=\"keyword\"} 1\n"));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route_but_health() {
    // Reachable from other machines without a token: refused before anything is bound.
    let err = api::bind("0.0.0.0:0".parse().unwrap(), None).await.unwrap_err();
    assert!(matches!(err, ApiStartError::TokenRequired { .. }), "{err}");
    assert!(err.to_string().contains("api.token"));
    assert!(api::check_listen("[::]:7878".parse().unwrap(), None).is_err());
    assert!(api::check_listen("0.0.0.0:7878".parse().unwrap(), Some("s3cret")).is_ok());

    let api = TestApi::start(Some("s3cret-token")).await;
    let c = reqwest::Client::new();
    // Health is open.
    assert_eq!(c.get(api.url("/v1/health")).send().await.unwrap().status(), 200);
    for path in ["/v1/runs", "/v1/checkpoints", "/v1/plugins", "/metrics", "/v1/events?since=0", "/v1/runs/1"] {
        let r = c.get(api.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        assert!(r.headers().contains_key("www-authenticate"));
        let v: Value = r.json().await.unwrap();
        assert!(error_text(&v).contains("bearer"), "{v}");
        for bad in
            ["Bearer wrong", "Bearer s3cret-toke", "Bearer s3cret-token-and-more", "s3cret-token", "Basic czNjcmV0"]
        {
            let r = c.get(api.url(path)).header("authorization", bad).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {bad:?}");
        }
    }
    for path in ["/v1/runs", "/v1/checkpoints", "/v1/plugins", "/metrics"] {
        let r = c.get(api.url(path)).bearer_auth("s3cret-token").send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    let r = c.post(api.url("/v1/evaluate")).json(&json!({"path": "/x.gguf"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(api.control.evaluated.lock().unwrap().is_empty(), "nothing happens without the token");
    // The event stream with the token.
    api.bus.publish_blocking(&numbered(1)).unwrap();
    let r = c.get(api.url("/v1/events?since=0")).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // WebSocket without the token is refused before the upgrade.
    let url = format!("ws://{}/v1/events/ws", api.addr);
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    api.stop().await;
}
