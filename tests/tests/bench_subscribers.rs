//! Benchmark (ignored by default): slow subscribers never slow evaluation. With 1,000 SSE
//! subscribers connected, 10 of which never read, a run's decode throughput should stay
//! within 5% of the same run with no subscriber (`DRIFTWATCH_BENCH_SUBSCRIBERS` and
//! `DRIFTWATCH_BENCH_STALLED` change the two numbers).
//!
//! Run it with
//! `cargo test --workspace --test bench_subscribers -- --ignored --nocapture`
//! (set `DRIFTWATCH_BENCH_ROUNDS` for more than 2 A/B rounds). It uses the real default model
//! (`driftwatch setup` caches it); without it, it says so and does nothing.
//!
//! Each measurement starts the daemon with a fresh data dir; the daemon evaluates the base model
//! first (its baseline), then the subscribers connect (or not), and a copy of the base model
//! with one metadata byte changed (so: a new checkpoint, identical weights) is dropped into the
//! watched folder. That run is the measurement: generated tokens (the samples'
//! `completion_tokens` in the store) / the run's wall time (its stored started/finished times),
//! and the last `run.progress` `tokens_per_s` for reference. A and B alternate, A first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch::api::subscribe::SseParser;
use driftwatch::config::Config;
use driftwatch::store::{RunStatus, Store};
use driftwatch_tests::wait_for;
use driftwatch_tests::ConfigBuilder;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Subscribers connected during the measured run, and how many of them never read.
fn subscribers() -> (usize, usize) {
    (env_or("DRIFTWATCH_BENCH_SUBSCRIBERS", 1000), env_or("DRIFTWATCH_BENCH_STALLED", 10))
}

/// The suite size: 16 prompts × K=4 × 64 tokens, parallel 16 by default;
/// `DRIFTWATCH_BENCH_PROMPTS`, `_SAMPLES`, `_MAX_TOKENS` override them (e.g. on a busy machine).
#[derive(Clone, Copy)]
struct Size {
    prompts: usize,
    samples: u32,
    max_tokens: u32,
    parallel: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Size {
    fn from_env() -> Size {
        Size {
            prompts: env_or("DRIFTWATCH_BENCH_PROMPTS", 16),
            samples: env_or("DRIFTWATCH_BENCH_SAMPLES", 4),
            max_tokens: env_or("DRIFTWATCH_BENCH_MAX_TOKENS", 64),
            parallel: 16,
        }
    }
}

fn write_config(root: &Path, model: &Path, port: u16, size: Size) -> PathBuf {
    let Size { prompts, samples, max_tokens, parallel } = size;
    let suite = root.join("suite.txt");
    driftwatch_tests::write_numbered_suite(&suite, prompts);
    ConfigBuilder::new(root.join("data"), model)
        .watch(root.join("checkpoints"))
        .settle_ms(300)
        .log_level("warn")
        .parallel(parallel)
        .samples(samples)
        .seed(7)
        .temperature(1.0)
        .max_tokens(max_tokens)
        .suite("bench", suite)
        .judge("refusal", driftwatch_tests::bundled("refusal"))
        .sample_scored_events()
        .api(port)
        .bootstrap(200)
        .write(root.join("driftwatch.toml"))
}

/// A copy of `model` with the last character of `general.name` changed: a new checkpoint
/// (new content hash) with exactly the same weights.
fn write_variant(model: &Path, to: &Path) {
    let mut bytes = std::fs::read(model).unwrap();
    let key = b"general.name";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("general.name in the model's metadata");
    let len_at = at + key.len() + 4; // after the key, its u32 value type (8 = string)
    assert_eq!(u32::from_le_bytes(bytes[at + key.len()..len_at].try_into().unwrap()), 8, "general.name is a string");
    let len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    let last = len_at + 8 + len - 1;
    bytes[last] = if bytes[last] == b'Z' { b'Y' } else { b'Z' };
    // Write under a temporary name, then rename into place (the watcher sees a settled file).
    let tmp = to.with_extension("part");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn completed_runs(store: &Store) -> Vec<driftwatch::store::Run> {
    let mut out = Vec::new();
    for c in store.list_checkpoints(100).unwrap() {
        out.extend(
            store
                .runs_for_checkpoint(c.id)
                .unwrap()
                .into_iter()
                .filter(|r| matches!(r.status, RunStatus::Completed | RunStatus::Failed)),
        );
    }
    out
}

/// A reading subscriber: records every event id it receives.
async fn reader(
    client: reqwest::Client,
    url: String,
    since: i64,
    ids: Arc<parking_lot::Mutex<Vec<i64>>>,
    connected: Arc<std::sync::atomic::AtomicUsize>,
) {
    let resp = client.get(&url).query(&[("since", since.to_string())]).send().await.expect("subscriber connect");
    assert_eq!(resp.status(), 200);
    connected.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(Ok(bytes)) = body.next().await {
        // The SSE id only: the readers share the daemon's two cores, and decoding every event's
        // JSON 1,000 times over would be measured as the daemon's cost.
        for m in parser.feed(&bytes) {
            if let Some(id) = m.id.as_deref().and_then(|i| i.parse::<i64>().ok()).filter(|_| m.data.starts_with('{')) {
                ids.lock().push(id);
            }
        }
    }
}

struct Measurement {
    subscribers: usize,
    tokens: u64,
    wall_s: f64,
    progress_tps: f64,
}

impl Measurement {
    fn tps(&self) -> f64 {
        self.tokens as f64 / self.wall_s
    }
}

async fn measure(model: &Path, subscribers: usize, stalled_n: usize, size: Size) -> Measurement {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("checkpoints")).unwrap();
    let port = driftwatch_tests::free_port();
    let config = Config::load(&write_config(root, model, port, size)).unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(driftwatch::daemon::run(config, stop.clone()));
    let base = format!("http://127.0.0.1:{port}");
    let store = wait_for(60, "the store", || Store::open_in_dir(&root.join("data")).ok()).await;
    // The baseline (the base model) is evaluated first; it is not measured.
    wait_for(900, "the baseline run", || completed_runs(&store).into_iter().next()).await;

    // Subscribers: readers, and `stalled_n` that connect, send their request and never read.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let since = store.last_event_id().unwrap();
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    let mut stalled = Vec::new();
    if subscribers > 0 {
        assert!(stalled_n < subscribers);
        for _ in 0..subscribers - stalled_n {
            let ids = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let task = tokio::spawn(reader(
                client.clone(),
                format!("{base}/v1/events"),
                since,
                ids.clone(),
                connected.clone(),
            ));
            readers.push((ids, task));
        }
        for _ in 0..stalled_n {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET /v1/events?since={since} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                .unwrap();
            stalled.push(s); // never read from
        }
        let c = connected.clone();
        let readers_n = subscribers - stalled_n;
        wait_for(120, "every reader connected", || (c.load(Ordering::SeqCst) == readers_n).then_some(())).await;
        // The stalled ones are counted by the daemon too.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            let n = text
                .lines()
                .find(|l| l.starts_with("driftwatch_event_stream_subscribers "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if n as usize >= subscribers {
                break;
            }
            assert!(Instant::now() < deadline, "the daemon counts {n} subscribers, not {subscribers}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    write_variant(model, &root.join("checkpoints/variant.gguf"));
    let variant = wait_for(120, "the variant's checkpoint", || {
        store.list_checkpoints(100).unwrap().into_iter().find(|c| c.path.ends_with("variant.gguf"))
    })
    .await;
    let run = wait_for(900, "the measured run", || {
        store
            .runs_for_checkpoint(variant.id)
            .unwrap()
            .into_iter()
            .find(|r| matches!(r.status, RunStatus::Completed | RunStatus::Failed))
    })
    .await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let samples = store.samples_for_run(run.id).unwrap();
    assert_eq!(samples.len() as u32, size.prompts as u32 * size.samples);
    let tokens: u64 = samples.iter().map(|s| u64::from(s.completion_tokens)).sum();
    let wall_s = (run.finished_at_ms.unwrap() - run.started_at_ms.unwrap()) as f64 / 1000.0;
    let progress_tps = store
        .events_since(since, &["run.progress"], 100_000)
        .unwrap()
        .into_iter()
        .rfind(|e| e.payload["run_id"] == run.id)
        .and_then(|e| e.payload["tokens_per_s"].as_f64())
        .unwrap_or(f64::NAN);

    // Every reader got every event published since it connected, in order, once.
    if subscribers > 0 {
        let expected: Vec<i64> = wait_for(30, "the run.completed event", || {
            let ev = store.events_since(since, &[], 1_000_000).unwrap();
            ev.iter()
                .any(|e| e.event_type == "run.completed" && e.payload["run_id"] == run.id)
                .then_some(ev.iter().map(|e| e.id).collect())
        })
        .await;
        let last = *expected.last().unwrap();
        wait_for(120, "every reader to catch up", || {
            readers.iter().all(|(ids, _)| ids.lock().last().is_some_and(|l| *l >= last)).then_some(())
        })
        .await;
        for (ids, _) in &readers {
            let got = ids.lock().clone();
            assert_eq!(&got[..expected.len()], &expected[..], "a reader missed or repeated an event");
        }
        eprintln!(
            "  {} readers each received all {} events (ids {}..={})",
            readers.len(),
            expected.len(),
            expected[0],
            last
        );
    }
    drop(stalled);
    for (_, task) in &readers {
        task.abort();
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), daemon).await.expect("the daemon stops").unwrap().unwrap();
    Measurement { subscribers, tokens, wall_s, progress_tps }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: needs the default model; run with --ignored --nocapture"]
async fn a_slow_subscriber_never_slows_evaluation() {
    let model = driftwatch::setup::default_model_path();
    if !model.is_file() {
        eprintln!("SKIPPED: the default model is not cached at {} (run `driftwatch setup`)", model.display());
        return;
    }
    let rounds: usize = env_or("DRIFTWATCH_BENCH_ROUNDS", 2);
    let size = Size::from_env();
    eprintln!(
        "suite: {} prompts × K={} × max {} tokens, parallel {}; {rounds} A/B rounds; model {}",
        size.prompts,
        size.samples,
        size.max_tokens,
        size.parallel,
        model.display()
    );
    let (subscribers, stalled) = subscribers();
    eprintln!("{subscribers} subscribers, {stalled} of them never reading");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for round in 1..=rounds {
        for n in [0, subscribers] {
            let m = measure(&model, n, stalled, size).await;
            eprintln!(
                "round {round}: {:>4} subscribers: {} tokens in {:.2}s = {:.1} tok/s (last run.progress: {:.1} tok/s)",
                m.subscribers,
                m.tokens,
                m.wall_s,
                m.tps(),
                m.progress_tps
            );
            if n == 0 {
                a.push(m)
            } else {
                b.push(m)
            }
        }
    }
    let mean = |v: &[Measurement]| v.iter().map(Measurement::tps).sum::<f64>() / v.len() as f64;
    let spread = |v: &[Measurement]| {
        let (lo, hi) = v.iter().map(Measurement::tps).fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        (lo, hi)
    };
    let (ma, mb) = (mean(&a), mean(&b));
    let (alo, ahi) = spread(&a);
    let (blo, bhi) = spread(&b);
    eprintln!("0 subscribers:   mean {ma:.1} tok/s (range {alo:.1}..{ahi:.1}, {} runs)", a.len());
    eprintln!("{subscribers} subscribers: mean {mb:.1} tok/s (range {blo:.1}..{bhi:.1}, {} runs)", b.len());
    eprintln!("ratio (with / without): {:.3}", mb / ma);
}
