//! Faults end to end on tiny fixtures, each met as a user meets it, through `driftwatch serve`:
//! the crash soak (ten `kill -9` at chosen and random moments of a daemon's life, with a
//! webhook receiver listening), a webhook receiver that is down for a whole run, and disk and
//! store faults (a read-only data folder, a full disk, a truncated WAL, another program's SQLite
//! file, a store from a newer schema).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use driftwatch::config::Config;
use driftwatch::store::{Run, RunStatus, Store};
use driftwatch_tests::{
    all_runs_completed, free_port, kill9, open_store, runs, samples_by_checkpoint, serve, sigterm, wait_exit, wait_for,
    wait_running, ConfigBuilder, Fixture, TinyAdapter,
};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The daemons here run llama.cpp with 2 threads on a 2-core machine: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PROMPTS: usize = 12;
const K: u32 = 3;
const TOKENS: u32 = 64;
const TOTAL: u64 = PROMPTS as u64 * K as u64;

/// A tiny base model, `n` adapters of it (outside any watched folder) and a suite.
struct Bed {
    fx: Fixture,
    root: PathBuf,
    adapters: Vec<PathBuf>,
    suite: PathBuf,
}

impl Bed {
    fn new(n: usize) -> Bed {
        let fx = Fixture::new();
        let root = fx.dir.path().to_path_buf();
        let adapters = (0..n)
            .map(|i| {
                let p = root.join(format!("adapter-{i}.gguf"));
                TinyAdapter { seed: 100 + i as u64, ..TinyAdapter::default() }.write(&fx.base, &p).unwrap();
                p
            })
            .collect();
        let suite = root.join("suite.txt");
        driftwatch_tests::write_numbered_suite(&suite, PROMPTS);
        Bed { fx, root, adapters, suite }
    }

    fn watched(&self, name: &str) -> PathBuf {
        let dir = self.root.join(format!("{name}-checkpoints"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The configuration of a daemon storing in `data_dir`, watching `<name>-checkpoints`.
    fn builder(&self, name: &str, data_dir: &Path) -> ConfigBuilder {
        ConfigBuilder::new(data_dir, &self.fx.base)
            .watch(self.watched(name))
            .settle_ms(300)
            .log_level("info")
            .parallel(4)
            .batch_size(64)
            .samples(K)
            .seed(7)
            .plain_sampling()
            .max_tokens(TOKENS)
            .suite("mini", &self.suite)
            .judge("refusal", driftwatch_tests::bundled("refusal"))
            .judge("coherence", driftwatch_tests::bundled("coherence"))
    }

    /// Copies adapter `i` into the watched folder of `name`.
    fn drop_adapter(&self, name: &str, i: usize) {
        std::fs::copy(&self.adapters[i], self.watched(name).join(format!("adapter-{i}.gguf"))).unwrap();
    }
}

/// A run's scores without the ids that differ between two stores.
fn scores_without_ids(run: &Run) -> Value {
    let mut v = run.scores.clone().expect("a completed run has scores");
    for k in ["run_id", "checkpoint_id", "baseline_run_id"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

/// The webhook receiver: answers 200 and records each delivery, or, while `hold` is set,
/// takes the request and never answers (a delivery cut off in flight when the daemon dies).
#[derive(Default)]
struct Receiver {
    hold: AtomicBool,
    held: Mutex<Vec<i64>>,
    /// Event ids of the accepted deliveries, in arrival order.
    delivered: Mutex<Vec<i64>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap) -> StatusCode {
    let id: i64 = headers["x-driftwatch-event-id"].to_str().unwrap().parse().unwrap();
    if r.hold.load(Ordering::SeqCst) {
        r.held.lock().unwrap().push(id);
        std::future::pending::<()>().await;
    }
    r.delivered.lock().unwrap().push(id);
    StatusCode::OK
}

/// Serves the receiver on `port` until the token is cancelled.
async fn start_receiver(r: Arc<Receiver>, port: u16) -> CancellationToken {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = Router::new().route("/hook", post(receive)).with_state(r);
    tokio::spawn(async move {
        tokio::select! {
            _ = axum::serve(listener, app) => {}
            _ = s.cancelled() => {}
        }
    });
    stop
}

/// Polls `f` every 2 ms for up to `secs`; false when it never held.
async fn poll(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// The moments of a daemon's life the soak kills it in.
#[derive(Debug, Clone)]
enum Moment {
    /// A run started, no sample stored yet: prompts being prefilled.
    Prefill,
    /// Samples being decoded (some stored, under half).
    Decode,
    /// Right after a sample is stored: the next ones being judged and written.
    JudgeAndStore,
    /// Every sample stored, the run not yet completed: scoring and the `run.completed` event.
    ScoreAndPublish,
    /// Adapters dropped into the watched folder: settling, hashing, checking, recording.
    Intake(Vec<usize>),
    /// A webhook delivery in flight.
    WebhookDelivery,
    /// A random moment soon after a (re)start: opening the store, loading, resuming.
    Startup,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak_ten_kill_nines_lose_and_double_nothing_and_end_as_an_uninterrupted_run() {
    let _turn = HEAVY.lock().await;
    let bed = Bed::new(3);
    let seed: u64 = std::env::var("DRIFTWATCH_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    println!("crash soak seed {seed} (DRIFTWATCH_SOAK_SEED={seed} repeats its delays)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // The reference: the same evaluation, uninterrupted, in-process.
    let reference = {
        let data = bed.root.join("reference");
        let cfg = bed.builder("reference", &data).write(bed.root.join("reference.toml"));
        for i in 0..bed.adapters.len() {
            bed.drop_adapter("reference", i);
        }
        let stop = CancellationToken::new();
        let daemon = tokio::spawn(driftwatch::daemon::run(Config::load(&cfg).unwrap(), stop.clone()));
        let store = open_store(&data);
        all_runs_completed(&store, 4, "the reference runs").await;
        stop.cancel();
        daemon.await.unwrap().unwrap();
        let scores: BTreeMap<String, Value> =
            runs(&store).into_iter().map(|(run, sha, _)| (sha, scores_without_ids(&run))).collect();
        (samples_by_checkpoint(&store), scores)
    };
    assert_eq!(reference.0.len() as u64, 4 * TOTAL);

    let receiver = Arc::new(Receiver::default());
    let hook_port = free_port();
    let stop_receiver = start_receiver(Arc::clone(&receiver), hook_port).await;
    let data = bed.root.join("soak");
    let cfg = bed
        .builder("soak", &data)
        .api(free_port())
        .webhook(&format!("http://127.0.0.1:{hook_port}/hook"), 1)
        .write(bed.root.join("soak.toml"));

    let plan = [
        Moment::Prefill,
        Moment::Decode,
        Moment::JudgeAndStore,
        Moment::ScoreAndPublish,
        Moment::Intake(vec![0]),
        Moment::WebhookDelivery,
        Moment::Decode,
        Moment::Intake(vec![1, 2]),
        Moment::ScoreAndPublish,
        Moment::Startup,
    ];
    let mut seen: BTreeMap<(i64, String, u32), Value> = BTreeMap::new();
    // The last accepted delivery at each kill: the only ones that may arrive twice.
    let mut cut_off: BTreeSet<i64> = BTreeSet::new();
    let mut report = Vec::new();
    let mut hits = 0;
    let mut store: Option<Store> = None;
    for (n, moment) in plan.iter().enumerate() {
        let mut child = serve(&cfg, &bed.root.join(format!("soak-{n}.log")));
        let st = store.get_or_insert_with(|| open_store(&data));
        let running = |st: &Store, f: &dyn Fn(u64) -> bool| {
            runs(st).iter().any(|(r, _, c)| r.status == RunStatus::Running && f(*c))
        };
        let hit = match moment {
            Moment::Prefill => {
                let hit = poll(120, || running(st, &|c| c == 0)).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                hit
            }
            Moment::Decode => {
                let hit = poll(120, || running(st, &|c| c > 0 && c < TOTAL / 2)).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
                hit
            }
            Moment::JudgeAndStore => {
                let before: u64 = runs(st).iter().map(|(_, _, c)| c).sum();
                let hit = poll(120, || runs(st).iter().map(|(_, _, c)| c).sum::<u64>() > before).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
                hit
            }
            // Scoring takes milliseconds: a run may complete between two looks.
            Moment::ScoreAndPublish => {
                let mut hit = false;
                poll(120, || {
                    let r = runs(st);
                    hit = r.iter().any(|(r, _, c)| r.status == RunStatus::Running && *c == TOTAL);
                    hit || r.iter().all(|(r, _, _)| r.status == RunStatus::Completed)
                })
                .await;
                hit
            }
            Moment::Intake(adapters) => {
                // Give the restarted daemon its start first, then drop.
                tokio::time::sleep(Duration::from_millis(500)).await;
                for &i in adapters {
                    bed.drop_adapter("soak", i);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(150..800))).await;
                true
            }
            Moment::WebhookDelivery => {
                receiver.hold.store(true, Ordering::SeqCst);
                let held = receiver.held.lock().unwrap().len();
                poll(120, || receiver.held.lock().unwrap().len() > held).await
            }
            Moment::Startup => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
                true
            }
        };
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited by itself before kill {n}");
        kill9(&mut child);
        receiver.hold.store(false, Ordering::SeqCst);
        if let Some(&last) = receiver.delivered.lock().unwrap().last() {
            cut_off.insert(last);
        }
        // The daemon is dead: check the store as it was left.
        let state: Vec<String> =
            runs(st).iter().map(|(r, _, c)| format!("run {} {:?} {c}/{TOTAL}", r.id, r.status)).collect();
        report.push(format!(
            "kill {n}: {moment:?}{} — {}",
            if hit { "" } else { " (moment missed)" },
            state.join(", ")
        ));
        hits += usize::from(hit);
        check_store(st, &mut seen);
    }

    println!("{}", report.join("\n"));
    // A moment can pass between two looks (scoring takes milliseconds); most must be hit.
    assert!(hits >= 8, "only {hits} of the 10 planned moments were hit:\n{}", report.join("\n"));
    // The last start: everything finishes, and every event reaches the webhook.
    let final_log = bed.root.join("soak-final.log");
    let mut child = serve(&cfg, &final_log);
    let st = store.unwrap();
    all_runs_completed(&st, 4, "every run to complete after the last restart").await;
    let last_event = st.last_event_id().unwrap();
    wait_for(120, "every event delivered to the webhook", || {
        receiver.delivered.lock().unwrap().contains(&last_event).then_some(())
    })
    .await;
    // Everything may have been done before this start: a signal is only handled once the
    // process runs, so wait for it to say so.
    wait_running(&final_log).await;
    sigterm(&child);
    let status = wait_exit(&mut child, 20);
    assert!(status.success(), "SIGTERM after the soak: {status:?}\n{}", std::fs::read_to_string(&final_log).unwrap());
    stop_receiver.cancel();
    check_store(&st, &mut seen);

    // Nothing lost or doubled, and the results of the uninterrupted run.
    let samples = samples_by_checkpoint(&st);
    assert_eq!(samples.len() as u64, 4 * TOTAL);
    assert!(samples == reference.0, "the soaked runs' samples differ from the uninterrupted ones");
    for (run, sha, _) in runs(&st) {
        assert_eq!(scores_without_ids(&run), reference.1[&sha], "scores of run {} differ", run.id);
        assert!(run.attempts >= 1);
    }
    // Every event reached the webhook once in id order, from its first; only a delivery cut
    // off by a kill arrived twice.
    let delivered = receiver.delivered.lock().unwrap().clone();
    let first = delivered[0];
    let mut unique = Vec::new();
    for &id in &delivered {
        if unique.contains(&id) {
            assert!(cut_off.contains(&id), "event {id} was delivered twice without a kill cutting it off");
        } else {
            unique.push(id);
        }
    }
    let stored: Vec<i64> = st.events_since(first - 1, &[], 100_000).unwrap().iter().map(|e| e.id).collect();
    assert_eq!(unique, stored, "the webhook's deliveries are not every stored event in order");
    let first_completed = st.events_since(0, &["run.completed"], 1).unwrap()[0].id;
    assert!(first < first_completed, "the webhook started only at event {first}");
    println!(
        "webhook: {} deliveries of {} events, {} repeated after kills",
        delivered.len(),
        unique.len(),
        delivered.len() - unique.len()
    );
}

/// The store as a dead daemon left it: no sample twice, none of those seen before lost or
/// changed, no failed run, and every completed run with exactly one `run.completed` event
/// (and none for a run that is not completed).
fn check_store(st: &Store, seen: &mut BTreeMap<(i64, String, u32), Value>) {
    let mut now = BTreeMap::new();
    for (run, _, n) in runs(st) {
        assert_ne!(run.status, RunStatus::Failed, "run {} failed: {:?}", run.id, run.error);
        let samples = st.samples_for_run(run.id).unwrap();
        assert_eq!(samples.len() as u64, n);
        for s in samples {
            let key = (run.id, s.prompt_id.clone(), s.sample_index);
            assert!(
                now.insert(key.clone(), driftwatch_tests::comparable_sample(&s)).is_none(),
                "sample {key:?} stored twice"
            );
        }
    }
    for (key, v) in seen.iter() {
        assert_eq!(now.get(key), Some(v), "sample {key:?} was lost or changed after a kill");
    }
    let completed_events: Vec<i64> = st
        .events_since(0, &["run.completed"], 100_000)
        .unwrap()
        .iter()
        .map(|e| e.payload["run_id"].as_i64().unwrap())
        .collect();
    for (run, _, _) in runs(st) {
        let k = completed_events.iter().filter(|&&id| id == run.id).count();
        let want = usize::from(run.status == RunStatus::Completed);
        assert_eq!(k, want, "run {} is {:?} with {k} run.completed events", run.id, run.status);
    }
    *seen = now;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_down_for_a_whole_run_gets_every_event_once_in_order_when_it_is_back() {
    let _turn = HEAVY.lock().await;
    let bed = Bed::new(1);
    let hook_port = free_port();
    let api_port = std::iter::repeat_with(free_port).find(|&p| p != hook_port).unwrap();
    let data = bed.root.join("down");
    let cfg = bed
        .builder("down", &data)
        .api(api_port)
        .webhook(&format!("http://127.0.0.1:{hook_port}/hook"), 2)
        .write(bed.root.join("down.toml"));
    bed.drop_adapter("down", 0);
    // Nothing listens on the webhook's port for the whole run: every attempt is refused.
    let mut child = serve(&cfg, &bed.root.join("down.log"));
    let st = open_store(&data);
    all_runs_completed(&st, 2, "the base's and the adapter's runs").await;
    let url = format!("http://127.0.0.1:{hook_port}/hook");
    let cursor = st.webhook_cursor(&url).unwrap().expect("the webhook's cursor");
    assert!(cursor.failures > 0 && cursor.last_error.is_some(), "no failed attempt recorded: {cursor:?}");
    let pending = st.events_since(cursor.last_event_id, &[], 100_000).unwrap();
    assert!(pending.iter().any(|e| e.event_type == "run.completed"), "the run's events were not held back");

    // The receiver comes up: everything arrives, once each, in id order.
    let receiver = Arc::new(Receiver::default());
    let up = Instant::now();
    let stop_receiver = start_receiver(Arc::clone(&receiver), hook_port).await;
    let last = st.last_event_id().unwrap();
    wait_for(60, "the held-back events", || receiver.delivered.lock().unwrap().contains(&last).then_some(())).await;
    let took = up.elapsed();
    println!("{} held-back events delivered {took:?} after the receiver came up", pending.len());
    // The next retry comes within max_retry_delay_s (2 s); the rest follow at once.
    assert!(took < Duration::from_secs(2 + 8), "delivery resumed only after {took:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // room for a duplicate to show
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
    stop_receiver.cancel();
    let delivered = receiver.delivered.lock().unwrap().clone();
    let expected: Vec<i64> = pending.iter().map(|e| e.id).collect();
    assert_eq!(delivered, expected, "not every held-back event once, in order");
    let cursor = st.webhook_cursor(&url).unwrap().unwrap();
    assert_eq!((cursor.last_event_id, cursor.failures), (last, 0));
}

/// Mounts a tmpfs of `size` (e.g. "64m") on `dir`; false where this machine does not allow it.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED: cannot mount a tmpfs here (mount needs root); this fault is not tested on this machine");
    }
    ok
}

/// A test bed whose data folder `data` is a tmpfs of its own, with the configuration `cfg`
/// of a daemon storing there; `None` where this machine cannot mount one.
struct OnTmpfs {
    /// Unmounted before the bed's folder is removed (fields drop in order).
    _mounted: Mounted,
    data: PathBuf,
    cfg: PathBuf,
    bed: Bed,
}

impl OnTmpfs {
    fn new(name: &str, size: &str, adapters: usize) -> Option<OnTmpfs> {
        let bed = Bed::new(adapters);
        let data = bed.root.join(name);
        if !mount_tmpfs(&data, size) {
            return None;
        }
        let mounted = Mounted(data.clone());
        let cfg = bed.builder(name, &data).write(bed.root.join(format!("{name}.toml")));
        Some(OnTmpfs { _mounted: mounted, data, cfg, bed })
    }
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn remount(dir: &Path, options: &str) {
    let st = std::process::Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(dir).status().unwrap();
    assert!(st.success(), "remount {options} failed");
}

/// sha256 of every file in a folder, by name.
fn file_hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())),
            )
        })
        .collect()
}

/// Runs `driftwatch ARGS PATH [CHECKPOINT]` to its end (at most `secs`): exit status and stderr.
fn run_command(
    args: &[&str],
    config_or_dir: &Path,
    checkpoint: Option<&Path>,
    secs: u64,
) -> (std::process::ExitStatus, String) {
    let mut child = driftwatch_tests::command()
        .args(args)
        .arg(config_or_dir)
        .args(checkpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let status = wait_exit(&mut child, secs);
    (status, reader.join().unwrap())
}

/// Runs the base model's evaluation to completion with `serve`, then stops it.
async fn complete_base_run(cfg: &Path, data: &Path, log: &Path) -> Store {
    let mut child = serve(cfg, log);
    let st = open_store(data);
    wait_for(600, "the base run", || runs(&st).iter().any(|(r, _, _)| r.status == RunStatus::Completed).then_some(()))
        .await;
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_folder_is_a_clear_error_with_a_non_zero_exit_and_nothing_changes() {
    let _turn = HEAVY.lock().await;
    let Some(OnTmpfs { bed, data, cfg, _mounted }) = OnTmpfs::new("ro", "64m", 0) else { return };
    drop(complete_base_run(&cfg, &data, &bed.root.join("ro-1.log")).await);
    let before = file_hashes(&data);
    remount(&data, "ro");

    let (status, stderr) = run_command(&["serve", "--config"], &cfg, None, 60);
    assert!(!status.success(), "serve on a read-only data folder exited 0: {stderr}");
    let said = |e: &str| {
        e.contains(&format!("the data folder {} is not writable", data.display()))
            && e.contains("Read-only file system")
    };
    assert!(said(&stderr), "{stderr}");
    let (status, stderr) = run_command(&["eval", "--config"], &cfg, Some(&bed.fx.base), 60);
    assert!(!status.success() && said(&stderr), "eval: {status:?} {stderr}");
    assert_eq!(file_hashes(&data), before, "a file of the read-only store changed");

    // Writable again: the stored run is still there, complete.
    remount(&data, "rw");
    let (status, stderr) = run_command(&["status", "--data-dir"], &data, None, 60);
    assert!(status.success(), "{stderr}");
    let st = open_store(&data);
    let r = runs(&st);
    assert!(r.len() == 1 && r[0].0.status == RunStatus::Completed && r[0].2 == TOTAL, "{r:?}");
}

/// Fills the file system holding `path` to the last byte.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let mut chunk = 1 << 20;
    while chunk > 0 {
        let buf = vec![0x5a_u8; chunk];
        if f.write_all(&buf).is_err() || f.flush().is_err() {
            chunk /= 2;
        }
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_daemon_with_a_clear_error_and_once_space_is_freed_the_run_resumes_with_nothing_lost() {
    let _turn = HEAVY.lock().await;
    let Some(OnTmpfs { bed, data, cfg, _mounted }) = OnTmpfs::new("full", "32m", 0) else { return };
    let log = bed.root.join("full-1.log");
    let mut child = serve(&cfg, &log);
    let st = open_store(&data);
    let partly =
        poll(300, || runs(&st).iter().any(|(r, _, c)| r.status == RunStatus::Running && *c > 0 && *c < TOTAL / 2))
            .await;
    assert!(partly, "no partly done run to fill the disk under");
    fill_disk(&data.join("filler"));
    let status = wait_exit(&mut child, 120);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the daemon went on with a full disk: {status:?}");
    assert!(
        text.contains("the store cannot be written")
            && text.contains("database or disk is full")
            && text.contains("nothing stored is lost"),
        "{text}"
    );
    let mut seen = BTreeMap::new();
    check_store(&st, &mut seen);
    let (run, _, stored) = runs(&st).into_iter().next().unwrap();
    assert!(run.status == RunStatus::Running && stored < TOTAL, "the run was {:?} with {stored} samples", run.status);
    assert!(st.events_since(0, &["run.failed"], 10).unwrap().is_empty(), "a run.failed event for a full disk");
    // `eval` on the same full disk: the same clear error and a non-zero exit.
    let (status, stderr) = run_command(&["eval", "--config"], &cfg, Some(&bed.fx.base), 120);
    assert!(
        !status.success()
            && stderr.contains("the store cannot be written")
            && stderr.contains("database or disk is full"),
        "eval: {status:?} {stderr}"
    );
    check_store(&st, &mut seen);

    // Space again: the run resumes where it stopped.
    std::fs::remove_file(data.join("filler")).unwrap();
    let mut child = serve(&cfg, &bed.root.join("full-2.log"));
    wait_for(600, "the run to resume and complete", || {
        st.run(run.id).unwrap().filter(|r| r.status == RunStatus::Completed)
    })
    .await;
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
    check_store(&st, &mut seen);
    assert_eq!(st.sample_count(run.id).unwrap(), TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_wal_after_a_kill_costs_only_its_tail_and_the_run_completes_identically() {
    let _turn = HEAVY.lock().await;
    let bed = Bed::new(0);
    let data = bed.root.join("wal");
    let cfg = bed.builder("wal", &data).write(bed.root.join("wal.toml"));
    let mut child = serve(&cfg, &bed.root.join("wal-1.log"));
    let before = {
        // Read while the daemon has the store open, and closed before the kill: the last
        // connection to close would checkpoint the WAL away.
        let st = open_store(&data);
        let partly = poll(300, || {
            runs(&st).iter().any(|(r, _, c)| r.status == RunStatus::Running && *c > TOTAL / 3 && *c < TOTAL)
        })
        .await;
        assert!(partly, "no partly done run");
        samples_by_checkpoint(&st)
    };
    kill9(&mut child);
    let wal = data.join(format!("{}-wal", driftwatch::store::DB_FILE_NAME));
    let len = std::fs::metadata(&wal).expect("the WAL after kill -9").len();
    assert!(len > 32, "the WAL is empty ({len} bytes)");
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len / 2).unwrap();
    let kept = samples_by_checkpoint(&open_store(&data));
    for (key, v) in &kept {
        if let Some(b) = before.get(key) {
            assert_eq!(v, b, "sample {key:?} changed by the truncation");
        }
    }
    println!(
        "WAL truncated from {len} to {} bytes: {} samples read before the kill, {} kept in the store",
        len / 2,
        before.len(),
        kept.len()
    );

    let mut child = serve(&cfg, &bed.root.join("wal-2.log"));
    let st = open_store(&data);
    all_runs_completed(&st, 1, "the run to complete after the truncation").await;
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
    let after = samples_by_checkpoint(&st);
    assert_eq!(after.len() as u64, TOTAL);
    for (key, v) in &before {
        assert_eq!(after.get(key), Some(v), "sample {key:?} differs after the truncated WAL");
    }
    check_store(&st, &mut BTreeMap::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_programs_sqlite_file_or_a_newer_schema_is_refused_by_every_command_and_left_untouched() {
    let _turn = HEAVY.lock().await;
    let bed = Bed::new(0);
    let foreign = bed.root.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    {
        let c = rusqlite::Connection::open(foreign.join(driftwatch::store::DB_FILE_NAME)).unwrap();
        c.execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');").unwrap();
    }
    let newer = bed.root.join("newer");
    drop(Store::open_in_dir(&newer).unwrap());
    {
        let c = rusqlite::Connection::open(newer.join(driftwatch::store::DB_FILE_NAME)).unwrap();
        c.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    for (dir, says) in [
        (&foreign, "is not a usable driftwatch store (an SQLite database without driftwatch's application_id)"),
        (&newer, "has schema version 99, newer than this driftwatch supports"),
    ] {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let cfg = bed.builder(name, dir).write(bed.root.join(format!("{name}.toml")));
        let before = file_hashes(dir);
        for (args, checkpoint) in [
            (&["serve", "--config"][..], None),
            (&["eval", "--config"], Some(&bed.fx.base)),
            (&["report", "--config"], None),
        ] {
            let (status, stderr) = run_command(args, &cfg, checkpoint.map(PathBuf::as_path), 60);
            assert!(!status.success() && stderr.contains(says), "{args:?} on {name}: {status:?} {stderr}");
        }
        let (status, stderr) = run_command(&["status", "--data-dir"], dir, None, 60);
        assert!(!status.success() && stderr.contains(says), "status on {name}: {status:?} {stderr}");
        let mut after = file_hashes(dir);
        after.remove(driftwatch::daemon::LOCK_FILE_NAME);
        let mut before = before;
        before.remove(driftwatch::daemon::LOCK_FILE_NAME);
        assert_eq!(after, before, "{name}: the store's files changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_intake_stops_the_daemon_and_the_checkpoint_is_taken_in_at_the_next_start() {
    let _turn = HEAVY.lock().await;
    let Some(OnTmpfs { bed, data, cfg, _mounted }) = OnTmpfs::new("intake-full", "32m", 1) else { return };
    let st = complete_base_run(&cfg, &data, &bed.root.join("intake-full-1.log")).await;
    let log = bed.root.join("intake-full-2.log");
    let mut child = serve(&cfg, &log);
    wait_running(&log).await;
    fill_disk(&data.join("filler"));
    bed.drop_adapter("intake-full", 0);
    let status = wait_exit(&mut child, 60);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the daemon went on with a full disk: {status:?}");
    assert!(text.contains("the store cannot be written") && text.contains("database or disk is full"), "{text}");
    assert_eq!(st.list_checkpoints(10).unwrap().len(), 1, "the adapter was recorded on a full disk");

    // Space again: the next start takes the adapter in and evaluates it.
    std::fs::remove_file(data.join("filler")).unwrap();
    let mut child = serve(&cfg, &bed.root.join("intake-full-3.log"));
    all_runs_completed(&st, 2, "the adapter's run").await;
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
    check_store(&st, &mut BTreeMap::new());
}
