//! The `openai` backend end to end against real `llama-server`s on loopback (the default model,
//! and a LoRA adapter of it served by id), through `driftwatch serve` as a user runs it: a
//! watched adapter evaluated remotely; two endpoints sharing a run while one is throttled with
//! 429s and then killed; `kill -9` of driftwatch mid-run; and the fingerprint refusing to
//! compare an embedded run with a remote one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use driftwatch::provenance::Provenance;
use driftwatch::store::RunStatus;
use driftwatch_tests::{
    all_runs_completed, kill9, open_store, runs, samples_by_checkpoint, serve, wait_for, wait_running, ConfigBuilder,
    KillOnDrop, LlamaServer,
};
use serde_json::Value;

/// llama-server and the daemon share the machine's two cores: one test at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PROMPTS: usize = 8;
const K: u32 = 2;

/// The default model, a noise adapter of it, a suite, and folders.
struct Bed {
    dir: tempfile::TempDir,
    model: PathBuf,
    adapter: PathBuf,
    suite: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let model = driftwatch::setup::resolve_model("default")
            .unwrap_or_else(|e| panic!("{e}\n(the README's test command runs the set-up that fetches it)"));
        let adapter = dir.path().join("synth.gguf");
        let spec = driftwatch::synth::SynthSpec {
            rank: 8,
            noise: 0.25,
            seed: 3,
            targets: vec!["attn_q".into(), "attn_v".into()],
        };
        driftwatch::synth::write_adapter(&model, &spec, &adapter).unwrap();
        let suite = dir.path().join("suite.txt");
        driftwatch_tests::write_numbered_suite(&suite, PROMPTS);
        Bed { dir, model, adapter, suite }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn watched(&self) -> PathBuf {
        let d = self.path("checkpoints");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A daemon storing in `data`, watching `checkpoints/`, generating through `endpoints`
    /// (the embedded engine when empty).
    fn config(&self, data: &str, endpoints: &[(&str, u32)]) -> ConfigBuilder {
        ConfigBuilder::new(self.path(data), &self.model)
            .watch(self.watched())
            .settle_ms(300)
            .log_level("info")
            .parallel(4)
            .samples(K)
            .seed(7)
            .max_tokens(24)
            .suite("mini", &self.suite)
            .judge("refusal", driftwatch_tests::bundled("refusal"))
            .judge("coherence", driftwatch_tests::bundled("coherence"))
            .openai(endpoints)
    }

    fn server(&self, name: &str, slots: u32, extra: &[&str]) -> LlamaServer {
        LlamaServer::start(&self.model, slots, extra, &self.path(&format!("{name}.log")))
    }
}

/// The stored samples' texts by (checkpoint sha256, prompt, k).
fn texts(store: &driftwatch::store::Store) -> BTreeMap<(String, String, u32), String> {
    samples_by_checkpoint(store).into_iter().map(|(k, v)| (k, v["response"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn a_watched_adapter_is_evaluated_on_llama_server_by_its_adapter_id() {
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    let adapter = bed.adapter.display().to_string();
    let server = bed.server("server", 4, &["--lora", &adapter, "--lora-init-without-apply"]);
    let config =
        bed.config("data", &[(&server.url, 4)]).served("synth.gguf", "{ lora = 0 }").write(bed.path("dw.toml"));
    let log = bed.path("daemon.log");
    let mut daemon = KillOnDrop(serve(&config, &log));
    let store = open_store(&bed.path("data"));
    all_runs_completed(&store, 1, "the base model's run on llama-server").await;
    std::fs::copy(&bed.adapter, bed.watched().join("synth.gguf")).unwrap();
    all_runs_completed(&store, 2, "the adapter's run on llama-server").await;
    daemon.stop();

    let all = runs(&store);
    let (base, adapter_run) = (&all[0], &all[1]);
    assert_eq!((base.2, adapter_run.2), (PROMPTS as u64 * u64::from(K), PROMPTS as u64 * u64::from(K)));
    let (pb, pa) = (Provenance::of(&base.0.provenance), Provenance::of(&adapter_run.0.provenance));
    let remote = pb.remote.clone().expect("a remote run records its servers");
    assert_eq!(remote.api, "chat");
    assert_eq!(remote.servers.len(), 1);
    let s = &remote.servers[0];
    assert_eq!((s.server.as_str(), s.url.as_str()), ("llama.cpp", server.url.as_str()));
    assert!(s.version.as_deref().is_some_and(|v| v.starts_with('b')), "the server's build: {s:?}");
    assert!(!remote.batch_invariant && !pb.engine.batch_invariant);
    assert_eq!(remote.served, Default::default(), "the base model is the endpoint's own");
    assert_eq!(pa.remote.as_ref().unwrap().served.lora, Some(0), "the adapter is asked for by its id");
    let (fb, fa) = (pb.fingerprint.unwrap(), pa.fingerprint.unwrap());
    assert!(fb.backend_hash.is_some() && fb.backend_hash == fa.backend_hash);
    // The adapter run was compared with the base model's run.
    let scores = adapter_run.0.scores.as_ref().expect("scores");
    assert_eq!(scores["baseline_run_id"], base.0.id, "{scores}");
    // Every sample is a real answer, and the adapter changed what the model says.
    let t = texts(&store);
    assert!(t.values().all(|x| !x.trim().is_empty()), "{t:?}");
    let (by_base, by_adapter): (Vec<_>, Vec<_>) = t.iter().partition(|((sha, _, _), _)| *sha == base.1);
    let differ = by_base.iter().zip(&by_adapter).filter(|((_, a), (_, b))| a != b).count();
    assert!(
        differ >= by_base.len() / 2,
        "{differ} of {} texts differ: the adapter was not applied, or applied to the base too",
        by_base.len()
    );
    // Before each adapter got its scale in every request, the base run's samples came out of
    // the adapter too (an empty `lora` list leaves it at its global scale, 1), and the two runs'
    // texts were nearly the same.
    assert_eq!(remote.servers[0].adapters.len(), 1);
    drop(server);
}

/// A proxy in front of `target` that answers every `every`-th completion request with a 429
/// (and `Retry-After: 0`) and forwards the rest; 502 when the target is down.
async fn throttling_proxy(target: String, every: usize) -> (String, Arc<AtomicUsize>) {
    use axum::body::Bytes;
    use axum::http::{Method, StatusCode, Uri};
    let throttled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let t = Arc::clone(&throttled);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let (client, target, seen, throttled) = (client.clone(), target.clone(), Arc::clone(&seen), Arc::clone(&t));
        async move {
            let completion = uri.path().ends_with("/completions");
            if completion && seen.fetch_add(1, Ordering::SeqCst) % every == every - 1 {
                throttled.fetch_add(1, Ordering::SeqCst);
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "0")],
                    Bytes::from_static(b"{\"error\":{\"message\":\"throttled\"}}"),
                );
            }
            let req =
                client.request(method, format!("{target}{}", uri.path())).header("content-type", "application/json");
            match req.body(body).send().await {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                    (status, [("retry-after", "")], r.bytes().await.unwrap_or_default())
                }
                Err(_) => (StatusCode::BAD_GATEWAY, [("retry-after", "")], Bytes::from_static(b"upstream down")),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, throttled)
}

/// Generations a llama-server finished, from its log (a slot's `stop processing` line).
fn answered(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap().lines().filter(|l| l.contains("stop processing")).count()
}

#[tokio::test]
async fn two_endpoints_share_a_run_through_429s_and_one_dying_mid_run() {
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    let a = bed.server("a", 2, &[]);
    let mut b = bed.server("b", 2, &[]);
    let (proxy, throttled) = throttling_proxy(b.url.clone(), 3).await;
    let config = bed.config("data", &[(&a.url, 2), (&proxy, 2)]).write(bed.path("dw.toml"));
    let log = bed.path("daemon.log");
    let mut daemon = KillOnDrop(serve(&config, &log));
    let store = open_store(&bed.path("data"));
    // Once both have answered, `b` dies with its requests in flight.
    wait_for(300, "both servers to answer", || {
        (answered(&bed.path("a.log")) >= 1 && answered(&bed.path("b.log")) >= 2).then_some(())
    })
    .await;
    b.kill();
    all_runs_completed(&store, 1, "the run, on the endpoint that is left").await;
    daemon.stop();

    let samples = samples_by_checkpoint(&store);
    assert_eq!(samples.len(), PROMPTS * K as usize, "every sample once");
    for (key, s) in &samples {
        assert_ne!(s["finish"], "error", "{key:?}: {s}");
    }
    assert!(throttled.load(Ordering::SeqCst) >= 1, "the proxy throttled");
    let daemon_log = std::fs::read_to_string(&log).unwrap();
    assert!(daemon_log.contains("endpoint given up for this request"), "{daemon_log}");
    assert!(answered(&bed.path("a.log")) >= 1 && answered(&bed.path("b.log")) >= 2);
}

#[tokio::test]
async fn a_kill_9_of_driftwatch_mid_run_resumes_without_losing_or_repeating_a_sample() {
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    let server = bed.server("server", 2, &[]);
    let config = bed.config("data", &[(&server.url, 2)]).write(bed.path("dw.toml"));
    let mut daemon = KillOnDrop(serve(&config, &bed.path("daemon-1.log")));
    let store = open_store(&bed.path("data"));
    wait_for(300, "a few stored samples", || (runs(&store).first().is_some_and(|r| r.2 >= 5)).then_some(())).await;
    kill9(&mut daemon.0);
    let before = texts(&store);
    assert!(before.len() >= 5 && before.len() < PROMPTS * K as usize, "killed mid-run: {} stored", before.len());
    let mut daemon = KillOnDrop(serve(&config, &bed.path("daemon-2.log")));
    wait_running(&bed.path("daemon-2.log")).await;
    all_runs_completed(&store, 1, "the resumed run").await;
    daemon.stop();
    let after = texts(&store);
    assert_eq!(after.len(), PROMPTS * K as usize, "every sample once");
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "a sample stored before the kill is kept as it was");
    }
    assert_eq!(runs(&store).len(), 1, "the same run resumed");
    drop(server);
}

#[tokio::test]
async fn an_embedded_run_and_a_remote_run_are_never_compared_silently() {
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    // The base model on the embedded engine, then on llama-server, in one store.
    let embedded = bed.config("data", &[]).write(bed.path("embedded.toml"));
    let mut daemon = KillOnDrop(serve(&embedded, &bed.path("daemon-1.log")));
    let store = open_store(&bed.path("data"));
    all_runs_completed(&store, 1, "the embedded run").await;
    daemon.stop();
    let server = bed.server("server", 2, &[]);
    let remote = bed.config("data", &[(&server.url, 2)]).write(bed.path("remote.toml"));
    let mut daemon = KillOnDrop(serve(&remote, &bed.path("daemon-2.log")));
    all_runs_completed(&store, 2, "a new run on the remote backend (not the embedded one reused)").await;
    daemon.stop();
    let all = runs(&store);
    assert!(all.iter().all(|r| r.0.status == RunStatus::Completed));
    let out = driftwatch_tests::command()
        .args(["compare", &all[1].0.id.to_string(), &all[0].0.id.to_string(), "--data-dir"])
        .arg(bed.path("data"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "refused: {text}");
    assert!(text.contains("backend_hash") && text.contains("not comparable"), "{text}");
    let forced = driftwatch_tests::command()
        .args(["compare", &all[1].0.id.to_string(), &all[0].0.id.to_string(), "--force", "--json", "--data-dir"])
        .arg(bed.path("data"))
        .output()
        .unwrap();
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let v: Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert!(v.to_string().contains("backend_hash"), "{v}");
    drop(server);
}

/// A fake OpenAI-compatible server (`vllm` 0.0-test by its `/version`): it answers with the
/// model and seed it was asked for, and with a malformed body for prompt 3.
async fn fake_server() -> String {
    use axum::routing::{get, post};
    use axum::Json;
    let app = axum::Router::new()
        .route("/v1/models", get(|| async { Json(serde_json::json!({"data": [{"id": "base-model"}]})) }))
        .route("/version", get(|| async { Json(serde_json::json!({"version": "0.0-test"})) }))
        .route(
            "/v1/chat/completions",
            post(|Json(body): Json<Value>| async move {
                let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
                if prompt.contains("(3)") {
                    return "{\"choices\": 7}".to_string();
                }
                serde_json::json!({"choices": [{"message": {"content": format!("model:{} seed:{}", body["model"].as_str().unwrap_or(""), body["seed"])},
                    "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
                .to_string()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_model_known_only_to_the_servers_is_evaluated_by_name_and_a_bad_response_is_a_sample_error() {
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    let url = fake_server().await;
    let port = driftwatch_tests::free_port();
    let config = bed.config("data", &[(&url, 4)]).api(port).write(bed.path("dw.toml"));
    let log = bed.path("daemon.log");
    let mut daemon = KillOnDrop(serve(&config, &log));
    let store = open_store(&bed.path("data"));
    all_runs_completed(&store, 1, "the base model's run").await;
    let client = reqwest::Client::new();
    let evaluate = |body: Value| client.post(format!("http://127.0.0.1:{port}/v1/evaluate")).json(&body).send();
    let r = evaluate(serde_json::json!({"served_model": "ft-remote"})).await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["kind"].as_str(), v["queued"].as_array().map(Vec::len)), (Some("served"), Some(1)), "{v}");
    all_runs_completed(&store, 2, "the served model's run").await;
    // The same name again is the same checkpoint, already evaluated.
    let v: Value = evaluate(serde_json::json!({"served_model": "ft-remote"})).await.unwrap().json().await.unwrap();
    assert_eq!((v["duplicate"].as_bool(), v["queued"].as_array().map(Vec::len)), (Some(true), Some(0)), "{v}");
    let r = evaluate(serde_json::json!({"served_model": " "})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon keeps running");
    daemon.stop();

    let all = runs(&store);
    let p = Provenance::of(&all[1].0.provenance);
    assert_eq!(p.model.path, "served:ft-remote");
    let remote = p.remote.unwrap();
    assert_eq!(remote.served.model.as_deref(), Some("ft-remote"));
    assert_eq!((remote.servers[0].server.as_str(), remote.servers[0].version.as_deref()), ("vllm", Some("0.0-test")));
    for (run, want) in [(&all[0], "model:base-model"), (&all[1], "model:ft-remote")] {
        let samples = store.samples_for_run(run.0.id).unwrap();
        assert_eq!(samples.len(), PROMPTS * K as usize);
        for s in samples {
            if s.prompt.contains("(3)") {
                assert_eq!(s.finish_reason, "error", "{s:?}");
                assert!(s.error.as_deref().is_some_and(|e| e.contains("malformed response")), "{s:?}");
            } else {
                assert!(s.response.starts_with(want), "{}: {}", want, s.response);
            }
        }
    }
}

#[tokio::test]
async fn a_run_waits_out_a_fleet_that_is_down_and_resumes_with_its_samples() {
    use std::sync::atomic::AtomicBool;
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    // A server that answers, then is down (503 on every generation) until told otherwise.
    let up = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let app = {
        use axum::routing::{get, post};
        let (up, answered) = (Arc::clone(&up), Arc::clone(&answered));
        axum::Router::new()
            .route("/v1/models", get(|| async { axum::Json(serde_json::json!({"data": [{"id": "m"}]})) }))
            .route(
                "/v1/chat/completions",
                post(move |axum::Json(body): axum::Json<Value>| {
                    let (up, answered) = (Arc::clone(&up), Arc::clone(&answered));
                    async move {
                        if !up.load(Ordering::SeqCst) || answered.load(Ordering::SeqCst) == 5 {
                            up.store(false, Ordering::SeqCst);
                            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down".to_string());
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        let text = format!("answer {}", body["seed"]);
                        let v =
                            serde_json::json!({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]});
                        (axum::http::StatusCode::OK, v.to_string())
                    }
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = bed.config("data", &[(&url, 1)]).max_attempts(1).write(bed.path("dw.toml"));
    let log = bed.path("daemon.log");
    let mut daemon = KillOnDrop(serve(&config, &log));
    let store = open_store(&bed.path("data"));
    wait_for(60, "the run to wait for the servers", || {
        std::fs::read_to_string(&log).unwrap().contains("the inference servers cannot take the run").then_some(())
    })
    .await;
    let all = runs(&store);
    assert_eq!((all.len(), all[0].0.status, all[0].2), (1, RunStatus::Queued, 5), "queued again with its 5 samples");
    up.store(true, Ordering::SeqCst);
    answered.store(100, Ordering::SeqCst);
    all_runs_completed(&store, 1, "the run, once the server is back").await;
    daemon.stop();
    assert_eq!(samples_by_checkpoint(&store).len(), PROMPTS * K as usize);
    assert!(store.runs_for_checkpoint(all[0].0.checkpoint_id).unwrap().iter().all(|r| r.error.is_none()));
}

/// `api = "completions"` sends the prompt driftwatch's own template makes, token for token what
/// the embedded engine evaluates; llama-server's chat route renders the model's whole Jinja
/// template instead, which adds SmolLM2's default system prompt.
#[tokio::test]
async fn the_completions_route_sends_exactly_the_prompt_the_embedded_engine_evaluates() {
    use driftwatch::engine::remote::{EndpointParams, Remote, RemoteApi, RemoteParams};
    use driftwatch::engine::{Engine, EngineParams, GenerationRequest, Job, ModelSpec, SamplingParams};
    let _heavy = HEAVY.lock().await;
    let bed = Bed::new();
    let server = bed.server("server", 2, &[]);
    let jobs: Vec<Job> = (0..2)
        .map(|i| Job {
            prompt_id: format!("p{i}"),
            prompt: format!("Tell me about the number {i}."),
            sample_index: 0,
            seed: i,
        })
        .collect();
    let request = GenerationRequest {
        model: ModelSpec::new(&bed.model),
        sampling: SamplingParams { max_tokens: 4, ..SamplingParams::default() },
        jobs,
    };
    let prompt_tokens =
        |samples: &[driftwatch::engine::SampleOutput]| samples.iter().map(|s| s.prompt_tokens).collect::<Vec<_>>();
    let embedded = Engine::start(EngineParams { threads: 2, parallel: 2, ..EngineParams::default() }).unwrap();
    let (local, _) = embedded.generate(request.clone()).await.unwrap();
    let mut by_route = Vec::new();
    for api in [RemoteApi::Completions, RemoteApi::Chat] {
        let endpoint = EndpointParams {
            url: server.url.clone(),
            served_model: None,
            api_key: None,
            max_concurrency: 2,
            timeout: std::time::Duration::from_secs(60),
        };
        let params = RemoteParams {
            api,
            endpoints: vec![endpoint],
            max_attempts: 2,
            backoff: std::time::Duration::from_millis(100),
        };
        let (remote, _) = Remote::connect(params).await.unwrap();
        let engine = Engine::with_backend(Arc::new(remote), EngineParams::default());
        let (samples, _) = engine.generate(request.clone()).await.unwrap();
        assert!(samples.iter().all(|s| s.error.is_none() && s.completion_tokens > 0), "{samples:?}");
        by_route.push(prompt_tokens(&samples));
    }
    assert_eq!(by_route[0], prompt_tokens(&local), "completions: driftwatch's template, as embedded");
    assert!(
        by_route[1].iter().zip(&by_route[0]).all(|(chat, own)| chat > own),
        "chat: the server's template {by_route:?}"
    );
}
