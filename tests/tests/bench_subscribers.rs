//! Benchmark (ignored by default): slow subscribers never slow evaluation. With 1,000 SSE
//! subscribers connected, 10 of which never read, a run's decode throughput should stay
//! within 5% of the same run with no subscriber (`DRIFTWATCH_BENCH_SUBSCRIBERS` and
//! `DRIFTWATCH_BENCH_STALLED` change the two numbers).
//!
//! Run it with
//! `cargo test --workspace --test bench_subscribers -- --ignored --nocapture`
//! (`DRIFTWATCH_BENCH_ROUNDS` sets the number of A/B pairs, 10 by default). It uses the real
//! default model (`driftwatch setup` caches it); without it, it says so and does nothing.
//!
//! One `driftwatch serve` process does every measurement, so that start-up, page cache and
//! machine drift are shared: it evaluates the base model first (its baseline, not measured),
//! then a copy of the base model with one metadata byte changed (a new checkpoint, identical
//! weights) is dropped into the watched folder for each measurement, with the subscribers
//! connected (B) or not (A), in the order A B, B A, A B, … so that a steady drift cancels.
//! A measurement is the run's generated tokens (the samples' `completion_tokens` in the store)
//! over its wall time (its stored started/finished times).
//!
//! Beside throughput, which this shared machine makes noisy, it reads the CPU time the daemon's
//! threads ran (`/proc/<pid>/stat` and `/proc/<pid>/task/*/stat`) over each measured run: the engine's threads
//! (`driftwatch-engine`), and all the others (the async runtime, where the event streams are
//! served, its blocking pool, the watcher, the judges). The difference in the others' time
//! between B and A is what serving the subscribers cost the daemon, in core-seconds.
//!
//! It asserts, from the pairs, with 95% confidence: serving the subscribers takes under 5% of
//! the daemon's two-core budget, and the engine keeps at least 95% of its cores. Throughput is
//! printed beside them, with its interval, but not asserted.
//!
//! The 10 connections that never read cannot block the daemon here: a run's events fit in their
//! socket buffers, and the broadcast never waits for anyone. A subscriber that falls behind the
//! broadcast buffer is `api::stream`'s `replays_then_follows_live_and_survives_lag_without_gaps`.
//!
//! The subscribers are clients. They would run on other machines; here they share the daemon's
//! two cores, so they run on one thread of this process under `SCHED_IDLE` (the scheduler gives
//! them only the time nobody else wants), and what is measured is the daemon's own cost of
//! serving them. `DRIFTWATCH_BENCH_READERS_IDLE=0` runs them at normal priority instead, to show
//! what sharing the cores with 990 clients costs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use driftwatch::api::subscribe::SseParser;
use driftwatch::store::{CheckpointRecord, RunStatus, Store};
use driftwatch_tests::{wait_for, ConfigBuilder};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The suite size: 16 prompts × K=4 × 64 tokens, parallel 16 by default;
/// `DRIFTWATCH_BENCH_PROMPTS`, `_SAMPLES`, `_MAX_TOKENS` override them.
#[derive(Clone, Copy)]
struct Size {
    prompts: usize,
    samples: u32,
    max_tokens: u32,
    parallel: u32,
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

/// A copy of `model` with the last character of `general.name` set to `mark`: a new
/// checkpoint (new content hash) with exactly the same weights.
fn write_variant(model: &Path, to: &Path, mark: u8) {
    let mut bytes = std::fs::read(model).unwrap();
    let key = b"general.name";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("general.name in the model's metadata");
    let len_at = at + key.len() + 4; // after the key, its u32 value type (8 = string)
    assert_eq!(u32::from_le_bytes(bytes[at + key.len()..len_at].try_into().unwrap()), 8, "general.name is a string");
    let len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    let last = len_at + 8 + len - 1;
    assert_ne!(bytes[last], mark, "the variant must differ from the base");
    bytes[last] = mark;
    // Write under a temporary name, then rename into place (the watcher sees a settled file).
    let tmp = to.with_extension("part");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The finished run of `checkpoint`, if there is one.
fn finished_run(store: &Store, checkpoint: &CheckpointRecord) -> Option<driftwatch::store::Run> {
    store
        .runs_for_checkpoint(checkpoint.id)
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.status, RunStatus::Completed | RunStatus::Failed))
}

/// Puts the calling thread (and every thread it starts) under `SCHED_IDLE`.
fn become_idle() {
    #[repr(C)]
    struct SchedParam {
        priority: i32,
    }
    extern "C" {
        fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
    }
    const SCHED_IDLE: i32 = 5;
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with a valid parameter.
    let rc = unsafe { sched_setscheduler(0, SCHED_IDLE, &SchedParam { priority: 0 }) };
    assert_eq!(rc, 0, "sched_setscheduler(SCHED_IDLE) failed: {}", std::io::Error::last_os_error());
}

/// A reading subscriber: records every event id it receives (the SSE id only: decoding every
/// event's JSON 990 times over would be the clients' work, not the daemon's).
async fn reader(url: String, since: i64, ids: Arc<parking_lot::Mutex<Vec<i64>>>, connected: Arc<AtomicUsize>) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let resp = client.get(&url).query(&[("since", since.to_string())]).send().await.expect("subscriber connect");
    assert_eq!(resp.status(), 200);
    connected.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(Ok(bytes)) = body.next().await {
        for m in parser.feed(&bytes) {
            if let Some(id) = m.id.as_deref().and_then(|i| i.parse::<i64>().ok()).filter(|_| m.data.starts_with('{')) {
                ids.lock().push(id);
            }
        }
    }
}

/// The subscribers of one measurement: `readers` reading on their own thread, and `stalled`
/// connections that sent their request and never read.
struct Subscribers {
    ids: Vec<Arc<parking_lot::Mutex<Vec<i64>>>>,
    stalled: Vec<std::net::TcpStream>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscribers {
    async fn connect(port: u16, since: i64, total: usize, stalled_n: usize, idle: bool) -> Subscribers {
        assert!(stalled_n < total);
        let readers_n = total - stalled_n;
        let ids: Vec<_> = (0..readers_n).map(|_| Arc::new(parking_lot::Mutex::new(Vec::new()))).collect();
        let connected = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let url = format!("http://127.0.0.1:{port}/v1/events");
        let thread = {
            let (ids, connected, stop) = (ids.clone(), connected.clone(), stop.clone());
            std::thread::spawn(move || {
                if idle {
                    become_idle();
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = ids
                        .into_iter()
                        .map(|ids| tokio::spawn(reader(url.clone(), since, ids, connected.clone())))
                        .collect();
                    stop.cancelled().await;
                    for t in tasks {
                        t.abort();
                    }
                });
            })
        };
        let mut stalled = Vec::new();
        for _ in 0..stalled_n {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET /v1/events?since={since} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                .unwrap();
            stalled.push(s); // never read from
        }
        wait_for(300, "every reader connected", || (connected.load(Ordering::SeqCst) >= readers_n).then_some(())).await;
        let open =
            wait_for(60, "the daemon counting every subscriber", || streams_open(port).filter(|n| *n >= total)).await;
        assert_eq!(open, total);
        Subscribers { ids, stalled, stop, thread: Some(thread) }
    }

    /// Waits until every reader has every event in `expected`, and checks that each got them
    /// all, in order, once.
    async fn check(&self, expected: &[i64]) {
        let last = *expected.last().unwrap();
        wait_for(300, "every reader to catch up", || {
            self.ids.iter().all(|ids| ids.lock().last().is_some_and(|l| *l >= last)).then_some(())
        })
        .await;
        for ids in &self.ids {
            let ids = ids.lock();
            assert_eq!(&ids[..expected.len()], expected, "a reader missed or repeated an event");
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "a reader got an event twice or out of order");
        }
    }

    fn disconnect(mut self) {
        self.stalled.clear();
        self.stop.cancel();
        self.thread.take().unwrap().join().unwrap();
    }
}

/// The daemon's open event streams, from `/metrics` (a plain blocking request: this is polled
/// from `wait_for`'s synchronous closure).
fn streams_open(port: u16) -> Option<usize> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with("driftwatch_event_stream_subscribers "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|n| n as usize)
}

/// CPU time the daemon's threads have run, in seconds: the engine's, and every other thread's.
#[derive(Clone, Copy, Default)]
struct Cpu {
    engine: f64,
    other: f64,
}

impl Cpu {
    /// The process's CPU time (`/proc/<pid>/stat`: every thread's, those that ended too) and its
    /// engine threads' (`/proc/<pid>/task/<tid>/stat`), in clock ticks of 10 ms.
    fn of(pid: u32) -> Cpu {
        let ticks = |stat: &str| -> f64 {
            // After the parenthesized name: state is field 3, utime and stime fields 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (n(14) + n(15)) / 100.0
        };
        let total = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap());
        let mut engine = 0.0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let p = task.path();
            let (Ok(comm), Ok(stat)) =
                (std::fs::read_to_string(p.join("comm")), std::fs::read_to_string(p.join("stat")))
            else {
                continue; // a thread that just ended
            };
            if comm.starts_with("driftwatch-engi") {
                engine += ticks(&stat);
            }
        }
        Cpu { engine, other: total - engine }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu { engine: self.engine - start.engine, other: self.other - start.other }
    }
}

struct Measurement {
    subscribers: usize,
    tokens: u64,
    wall_s: f64,
    /// Over the measured window: from the drop to the run's end being seen.
    cpu: Cpu,
    /// That window's length.
    window_s: f64,
    /// After the run, while the readers caught up (with subscribers only).
    catch_up: Cpu,
}

impl Measurement {
    fn tps(&self) -> f64 {
        self.tokens as f64 / self.wall_s
    }
}

struct Bench {
    root: tempfile::TempDir,
    model: PathBuf,
    port: u16,
    daemon: Child,
    store: Store,
    size: Size,
    made: u8,
}

impl Bench {
    async fn start(model: &Path, size: Size) -> Bench {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("checkpoints")).unwrap();
        let port = driftwatch_tests::free_port();
        let config = write_config(root.path(), model, port, size);
        let log = std::fs::File::create(root.path().join("daemon.log")).unwrap();
        let daemon = driftwatch_tests::command()
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start driftwatch serve");
        let store = driftwatch_tests::open_store(&root.path().join("data"));
        // The baseline (the base model) is evaluated first; it is not measured.
        wait_for(900, "the baseline run", || {
            store.list_checkpoints(10).unwrap().iter().find_map(|c| finished_run(&store, c))
        })
        .await;
        Bench { root, model: model.to_owned(), port, daemon, store, size, made: 0 }
    }

    async fn measure(&mut self, subscribers: usize, stalled: usize, idle: bool) -> Measurement {
        let since = self.store.last_event_id().unwrap();
        let subs = match subscribers {
            0 => None,
            n => Some(Subscribers::connect(self.port, since, n, stalled, idle).await),
        };

        let cpu_start = Cpu::of(self.daemon.id());
        let window_start = std::time::Instant::now();
        self.made += 1;
        let name = format!("variant-{}.gguf", self.made);
        write_variant(&self.model, &self.root.path().join("checkpoints").join(&name), b'a' + self.made);
        let store = &self.store;
        let variant = wait_for(120, "the variant's checkpoint", || {
            store.list_checkpoints(1000).unwrap().into_iter().find(|c| c.path.ends_with(&name))
        })
        .await;
        let run = wait_for(900, "the measured run", || finished_run(store, &variant)).await;
        assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
        let samples = store.samples_for_run(run.id).unwrap();
        assert_eq!(samples.len() as u32, self.size.prompts as u32 * self.size.samples);
        let tokens: u64 = samples.iter().map(|s| u64::from(s.completion_tokens)).sum();
        let wall_s = (run.finished_at_ms.unwrap() - run.started_at_ms.unwrap()) as f64 / 1000.0;
        let cpu_end = Cpu::of(self.daemon.id());
        let window_s = window_start.elapsed().as_secs_f64();
        let cpu = cpu_end.since(cpu_start);
        let mut catch_up = Cpu::default();

        if let Some(subs) = subs {
            // Every reader got every event published since it connected, in order, once.
            let expected: Vec<i64> = wait_for(30, "the run.completed event", || {
                let ev = store.events_since(since, &[], 1_000_000).unwrap();
                ev.iter()
                    .any(|e| e.event_type == "run.completed" && e.payload["run_id"] == run.id)
                    .then_some(ev.iter().map(|e| e.id).collect())
            })
            .await;
            subs.check(&expected).await;
            catch_up = Cpu::of(self.daemon.id()).since(cpu_end);
            eprintln!("  {} readers each received all {} events", subs.ids.len(), expected.len());
            subs.disconnect();
            wait_for(60, "the daemon to close every stream", || (streams_open(self.port) == Some(0)).then_some(()))
                .await;
        }
        Measurement { subscribers, tokens, wall_s, cpu, window_s, catch_up }
    }

    fn stop(mut self) {
        driftwatch_tests::sigterm(&self.daemon);
        let status = driftwatch_tests::wait_exit(&mut self.daemon, 60);
        assert!(status.success(), "the daemon exited with {status}");
    }
}

/// Mean and a 95% confidence half-width (Student's t) of `x`.
fn mean_ci(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let t = StudentsT::new(0.0, 1.0, n - 1.0).expect("degrees of freedom > 0").inverse_cdf(0.975);
    (mean, t * (var / n).sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: needs the default model; run with --ignored --nocapture"]
async fn a_slow_subscriber_never_slows_evaluation() {
    let model = driftwatch::setup::default_model_path();
    if !model.is_file() {
        eprintln!("SKIPPED: the default model is not cached at {} (run `driftwatch setup`)", model.display());
        return;
    }
    let rounds: usize = env_or("DRIFTWATCH_BENCH_ROUNDS", 10);
    let subscribers: usize = env_or("DRIFTWATCH_BENCH_SUBSCRIBERS", 1000);
    let stalled: usize = env_or("DRIFTWATCH_BENCH_STALLED", 10);
    let idle = env_or("DRIFTWATCH_BENCH_READERS_IDLE", 1) != 0;
    let size = Size::from_env();
    eprintln!(
        "suite: {} prompts × K={} × max {} tokens, parallel {}; {rounds} A/B pairs; model {}",
        size.prompts,
        size.samples,
        size.max_tokens,
        size.parallel,
        model.display()
    );
    eprintln!(
        "{subscribers} subscribers, {stalled} of them never reading; the readers {}",
        if idle { "under SCHED_IDLE" } else { "at normal priority" }
    );
    let mut bench = Bench::start(&model, size).await;
    // Per pair: throughput B / A, the engine's cores B / A, and the serving cost (the other
    // threads' CPU, B − A) as a share of the two-core budget of A's window.
    let (mut ratios, mut engine_ratios, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let order = if round % 2 == 1 { [0, subscribers] } else { [subscribers, 0] };
        let mut pair: [Option<Measurement>; 2] = [None, None];
        for n in order {
            let m = bench.measure(n, stalled, idle).await;
            eprintln!(
                "pair {round}: {:>4} subscribers: {} tokens in {:.2}s = {:.1} tok/s; over {:.2}s: CPU engine {:.2}s, other threads {:.2}s{}",
                m.subscribers,
                m.tokens,
                m.wall_s,
                m.tps(),
                m.window_s,
                m.cpu.engine,
                m.cpu.other,
                if n > 0 { format!(" (+{:.2}s while the readers caught up)", m.catch_up.other) } else { String::new() }
            );
            if n == 0 {
                a.push(m.tps());
            } else {
                b.push(m.tps());
            }
            pair[usize::from(n > 0)] = Some(m);
        }
        let [Some(without), Some(with)] = pair else { unreachable!("both measured") };
        ratios.push(with.tps() / without.tps());
        engine_ratios.push((with.cpu.engine / with.window_s) / (without.cpu.engine / without.window_s));
        costs.push((with.cpu.other - without.cpu.other) / (2.0 * without.window_s));
    }
    bench.stop();
    let (ma, ca) = mean_ci(&a);
    let (mb, cb) = mean_ci(&b);
    let (mr, cr) = mean_ci(&ratios);
    let list = |v: &[f64]| v.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ");
    eprintln!("0 subscribers:    mean {ma:.1} ± {ca:.1} tok/s ({} runs)", a.len());
    eprintln!("{subscribers} subscribers: mean {mb:.1} ± {cb:.1} tok/s ({} runs)", b.len());
    eprintln!("throughput, with / without, per pair: {}", list(&ratios));
    eprintln!("  mean {mr:.3} (95% CI {:.3}..{:.3})", mr - cr, mr + cr);
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!("  median {:.3}", (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0);
    let (me, ce) = mean_ci(&engine_ratios);
    eprintln!("the engine's cores, with / without, per pair: {}", list(&engine_ratios));
    eprintln!("  mean {me:.3} (95% CI {:.3}..{:.3})", me - ce, me + ce);
    let (mc, cc) = mean_ci(&costs);
    eprintln!("serving cost, share of the two-core budget, per pair: {}", list(&costs));
    eprintln!("  mean {:.2}% (95% CI {:.2}%..{:.2}%)", 100.0 * mc, 100.0 * (mc - cc), 100.0 * (mc + cc));
    // The criteria: with 95% confidence, serving the subscribers takes under 5% of the CPU and
    // leaves the engine at least 95% of its cores (decode is CPU-bound, so of its throughput).
    // Throughput itself is reported, not asserted: this shared machine makes it too noisy.
    if rounds >= 2 {
        assert!(mc + cc < 0.05, "serving {subscribers} subscribers costs up to {:.1}% of the CPU", 100.0 * (mc + cc));
        assert!(me - ce >= 0.95, "with {subscribers} subscribers the engine keeps only {:.3} of its cores", me - ce);
    }
}
