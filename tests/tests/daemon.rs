//! The daemon end to end on tiny fixtures: intake (settling, rejections with reasons, dedup),
//! runs with judges and events, a checkpoint deleted mid-run, and crash safety: kill -9 and
//! SIGTERM mid-run, then a restart that resumes to exactly the uninterrupted run's results.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch::config::Config;
use driftwatch::store::{RunStatus, Store, StoredSample};
use driftwatch_tests::wait_for;
use driftwatch_tests::{open_store, sigterm, wait_exit, ConfigBuilder, Fixture, Suite, TinyAdapter, TinyModel};
use tokio_util::sync::CancellationToken;

/// The daemon tests each run llama.cpp with 2 threads on a 2-core machine; two at once starve
/// each other (llama.cpp's threads spin), so they take turns.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    fx: Fixture,
    root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let fx = Fixture::new();
        let root = fx.dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("checkpoints")).unwrap();
        Setup { fx, root }
    }

    /// A config with `prompts` prompts × `samples` samples of `max_tokens` tokens, without judges.
    fn builder(&self, data: &str, prompts: usize, samples: u32, max_tokens: u32) -> ConfigBuilder {
        let suite = self.root.join(format!("suite-{prompts}.txt"));
        driftwatch_tests::write_numbered_suite(&suite, prompts);
        ConfigBuilder::new(self.root.join(data), &self.fx.base)
            .watch(self.root.join("checkpoints"))
            .settle_ms(400)
            .log_level("info")
            .parallel(4)
            .batch_size(64)
            .samples(samples)
            .seed(7)
            .plain_sampling()
            .max_tokens(max_tokens)
            .suite("mini", suite)
            .bootstrap(200)
    }

    /// The config of [`Setup::builder`] with the two judges, written to `<data>.toml`.
    fn config(&self, data: &str, prompts: usize, samples: u32, max_tokens: u32) -> PathBuf {
        with_judges(self.builder(data, prompts, samples, max_tokens)).write(self.config_path(data))
    }

    fn config_path(&self, data: &str) -> PathBuf {
        self.root.join(format!("{data}.toml"))
    }
}

/// The bundled refusal and coherence judges.
fn with_judges(config: ConfigBuilder) -> ConfigBuilder {
    config
        .judge("refusal", driftwatch_tests::bundled("refusal"))
        .judge("coherence", driftwatch_tests::bundled("coherence"))
}

/// Starts the daemon in-process with the configuration file `config`, and opens its store in
/// `data` (waiting for the daemon to create it). Cancel the token to stop it.
fn start_daemon(
    config: &Path,
    data: &Path,
) -> (CancellationToken, tokio::task::JoinHandle<Result<(), driftwatch::daemon::DaemonError>>, Store) {
    let config = Config::load(config).unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(driftwatch::daemon::run(config, stop.clone()));
    (stop, daemon, open_store(data))
}

/// Shows the daemon's logs with a failing test's output.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,llama_cpp_2=warn,llama-cpp-2=warn"))
        .with_test_writer()
        .try_init();
}

/// Panics with their errors if any runs failed (a failure must not look like a slow run).
fn no_failed_runs(store: &Store) {
    let failed = runs_with_status(store, RunStatus::Failed);
    assert!(failed.is_empty(), "runs failed: {:?}", failed.iter().map(|r| (r.id, r.error.clone())).collect::<Vec<_>>());
}

fn runs_with_status(store: &Store, status: RunStatus) -> Vec<driftwatch::store::Run> {
    let mut out = Vec::new();
    for c in store.list_checkpoints(100).unwrap() {
        out.extend(store.runs_for_checkpoint(c.id).unwrap().into_iter().filter(|r| r.status == status));
    }
    out
}

fn events(store: &Store) -> Vec<driftwatch::store::Event> {
    store.events_since(0, &[], 10_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_taken_in_checked_deduplicated_and_evaluated() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (stop, daemon, store) = start_daemon(&s.config("data", 4, 3, 12), &s.root.join("data"));

    // The base model is evaluated first.
    let base_run =
        wait_for(120, "the baseline run", || runs_with_status(&store, RunStatus::Completed).into_iter().next()).await;
    assert_eq!(store.sample_count(base_run.id).unwrap(), 12);

    // Bad files next to a good one.
    let ck = s.root.join("checkpoints");
    let bytes = std::fs::read(&s.fx.base).unwrap();
    std::fs::write(ck.join("truncated.gguf"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(ck.join("empty.gguf"), b"").unwrap();
    std::fs::write(ck.join("notes.gguf"), b"these are my notes, not a model").unwrap();
    TinyAdapter::default()
        .write_for(&TinyModel { architecture: "qwen2".into(), ..s.fx.model.clone() }, &ck.join("other-arch.gguf"))
        .unwrap();
    // The good adapter arrives slowly, in chunks, under its final name.
    let adapter = std::fs::read(&s.fx.adapter).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(ck.join("finetune-1.gguf")).unwrap();
        for chunk in adapter.chunks(adapter.len() / 5 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    let adapter_run = wait_for(120, "the adapter's run", || {
        runs_with_status(&store, RunStatus::Completed).into_iter().find(|r| r.id != base_run.id)
    })
    .await;
    assert_eq!(adapter_run.baseline_run_id, Some(base_run.id));
    let samples = store.samples_for_run(adapter_run.id).unwrap();
    assert_eq!(samples.len(), 12, "4 prompts × 3 samples");
    for smp in &samples {
        let judges: Vec<&str> = smp.verdicts.iter().map(|v| v.judge.as_str()).collect();
        assert_eq!(judges.len(), 2, "{judges:?}");
        assert!(judges.contains(&"refusal") && judges.contains(&"coherence"));
        assert!(smp.verdicts.iter().all(|v| v.error.is_none() && v.is_unsafe.is_some()));
    }
    let scores = adapter_run.scores.clone().expect("scores");
    assert_eq!(scores["baseline_run_id"], base_run.id);
    assert!(scores["headline"].as_array().unwrap().iter().any(|h| h["judge"] == "refusal" && h["lo"].is_number()));

    // Every bad file was rejected with its reason; the adapter was taken once, complete.
    let rejected = wait_for(30, "four rejections", || {
        let r: Vec<_> = events(&store).into_iter().filter(|e| e.event_type == "checkpoint.rejected").collect();
        (r.len() >= 4).then_some(r)
    })
    .await;
    let reason = |name: &str| {
        rejected
            .iter()
            .find(|e| e.payload["path"].as_str().unwrap().ends_with(name))
            .map(|e| e.payload["reason"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no rejection of {name}: {rejected:?}"))
    };
    assert!(reason("truncated.gguf").contains("truncated"), "{}", reason("truncated.gguf"));
    assert!(reason("empty.gguf").contains("empty"), "{}", reason("empty.gguf"));
    assert!(reason("notes.gguf").contains("not a GGUF file"), "{}", reason("notes.gguf"));
    assert!(reason("other-arch.gguf").contains("qwen2"), "{}", reason("other-arch.gguf"));
    let all = events(&store);
    assert!(!all
        .iter()
        .any(|e| e.event_type == "checkpoint.rejected"
            && e.payload["path"].as_str().unwrap().ends_with("finetune-1.gguf")));

    // The adapter's story, in order.
    let story: Vec<&str> = all
        .iter()
        .filter(|e| {
            e.payload["path"].as_str().is_some_and(|p| p.ends_with("finetune-1.gguf"))
                || e.payload["run_id"] == adapter_run.id
        })
        .map(|e| e.event_type.as_str())
        .collect();
    let pos = |t: &str| story.iter().position(|s| *s == t).unwrap_or_else(|| panic!("no {t} in {story:?}"));
    assert!(pos("checkpoint.discovered") < pos("run.queued"));
    assert!(pos("run.queued") < pos("run.started"));
    assert!(pos("run.started") < pos("run.progress"));
    assert!(pos("run.progress") < pos("run.completed"));

    // The same content under a new name is linked, not evaluated again.
    std::fs::copy(ck.join("finetune-1.gguf"), ck.join("same-bytes.gguf")).unwrap();
    let dup = wait_for(30, "the duplicate's discovery", || {
        events(&store).into_iter().find(|e| {
            e.event_type == "checkpoint.discovered" && e.payload["path"].as_str().unwrap().ends_with("same-bytes.gguf")
        })
    })
    .await;
    assert_eq!(dup.payload["duplicate"], true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs_with_status(&store, RunStatus::Completed).len(), 2);
    assert!(runs_with_status(&store, RunStatus::Queued).is_empty());

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.expect("the daemon stops promptly").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_deleted_during_its_run_fails_that_run_with_a_reason() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (stop, daemon, store) = start_daemon(&s.config("data", 24, 4, 200), &s.root.join("data"));
    wait_for(300, "the baseline run", || runs_with_status(&store, RunStatus::Completed).into_iter().next()).await;
    let path = s.root.join("checkpoints/doomed.gguf");
    std::fs::copy(&s.fx.adapter, &path).unwrap();
    let run = wait_for(60, "the adapter's run to store samples", || {
        runs_with_status(&store, RunStatus::Running).into_iter().find(|r| store.sample_count(r.id).unwrap() > 0)
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    let failed =
        wait_for(60, "the run to fail", || store.run(run.id).unwrap().filter(|r| r.status == RunStatus::Failed)).await;
    assert!(failed.error.as_deref().unwrap().contains("deleted during its run"), "{:?}", failed.error);
    assert!(events(&store).iter().any(|e| e.event_type == "run.failed" && e.payload["run_id"] == run.id));
    // The daemon carries on.
    assert!(!daemon.is_finished());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.unwrap().unwrap().unwrap();
}

fn serve(config: &Path) -> Child {
    driftwatch_tests::command()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start driftwatch serve")
}

fn key(s: &StoredSample) -> (String, u32) {
    (s.prompt_id.clone(), s.sample_index)
}

/// What must be identical between an interrupted and an uninterrupted run, in key order.
fn comparable(samples: &[StoredSample]) -> Vec<serde_json::Value> {
    let mut v: Vec<&StoredSample> = samples.iter().collect();
    v.sort_by_key(|s| key(s));
    v.into_iter().map(driftwatch_tests::comparable_sample).collect()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_and_sigterm_mid_run_then_resume_to_the_uninterrupted_result() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (prompts, k, max_tokens) = (24, 4, 160);
    let total = (prompts as u64) * u64::from(k);

    // The reference: one uninterrupted run.
    let reference = {
        let (stop, daemon, store) =
            start_daemon(&s.config("reference", prompts, k, max_tokens), &s.root.join("reference"));
        let run = wait_for(600, "the reference run", || {
            no_failed_runs(&store);
            assert!(!daemon.is_finished(), "the reference daemon stopped early");
            runs_with_status(&store, RunStatus::Completed).into_iter().next()
        })
        .await;
        stop.cancel();
        daemon.await.unwrap().unwrap();
        (comparable(&store.samples_for_run(run.id).unwrap()), run.scores.unwrap())
    };
    assert_eq!(reference.0.len() as u64, total);

    let cfg = s.config("crashy", prompts, k, max_tokens);
    let data = s.root.join("crashy");
    // 1. kill -9 once some samples are stored.
    let mut child = serve(&cfg);
    let store = open_store(&data);
    let (run_id, before_kill) = wait_for(900, "a partly done run", || {
        runs_with_status(&store, RunStatus::Running).into_iter().find_map(|r| {
            let n = store.sample_count(r.id).unwrap();
            (n > 0 && n < total).then_some((r.id, n))
        })
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stored_at_kill = comparable(&store.samples_for_run(run_id).unwrap());
    assert!(stored_at_kill.len() as u64 >= before_kill);
    assert!((stored_at_kill.len() as u64) < total, "the kill came too late to test anything");

    // 2. Restart; SIGTERM once more progress is made: exit 0 within a few seconds.
    let mut child = serve(&cfg);
    let at = stored_at_kill.len() as u64;
    wait_for(300, "progress after the restart", || (store.sample_count(run_id).unwrap() > at).then_some(())).await;
    let t = Instant::now();
    sigterm(&child);
    let st = wait_exit(&mut child, 20);
    assert!(st.success(), "SIGTERM exit status {st:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?} to stop", t.elapsed());

    // 3. Restart and let it finish.
    let mut child = serve(&cfg);
    let run = wait_for(600, "the resumed run to complete", || {
        store.run(run_id).unwrap().filter(|r| r.status == RunStatus::Completed)
    })
    .await;
    assert!(run.attempts >= 3, "started {} times", run.attempts);
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());

    // Nothing lost, nothing done twice, and the same results as without interruptions.
    let samples = comparable(&store.samples_for_run(run_id).unwrap());
    assert_eq!(samples.len() as u64, total);
    for s in &stored_at_kill {
        assert!(samples.contains(s), "a sample stored before the kill changed or vanished: {s}");
    }
    assert_eq!(samples, reference.0, "the resumed run differs from the uninterrupted one");
    assert_eq!(run.scores.unwrap(), reference.1, "scores differ");

    // `driftwatch status` reads the store.
    let out = driftwatch_tests::command().args(["status", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("run {run_id}")) && text.contains("completed"), "{text}");
    let _ = Arc::new(());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_under_changed_settings_is_not_mixed_but_redone() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let cfg = s.config("changing", 24, 4, 160);
    let data = s.root.join("changing");
    let mut child = serve(&cfg);
    let store = open_store(&data);
    let (run_id, _) = wait_for(900, "a partly done run", || {
        runs_with_status(&store, RunStatus::Running).into_iter().find_map(|r| {
            let n = store.sample_count(r.id).unwrap();
            (n > 0 && n < 96).then_some((r.id, n))
        })
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Restart with another sampling temperature.
    with_judges(s.builder("changing", 24, 4, 160).temperature(0.5)).write(&cfg);
    let mut child = serve(&cfg);
    let old =
        wait_for(120, "the old run to fail", || store.run(run_id).unwrap().filter(|r| r.status == RunStatus::Failed))
            .await;
    assert!(old.error.as_deref().unwrap().contains("settings"), "{:?}", old.error);
    let new = wait_for(600, "a new run under the new settings", || {
        runs_with_status(&store, RunStatus::Completed).into_iter().find(|r| r.id != run_id)
    })
    .await;
    assert_ne!(new.settings_hash, old.settings_hash);
    assert_eq!(new.provenance["sampling"]["temperature"], 0.5);
    assert_eq!(store.sample_count(new.id).unwrap(), 96);
    sigterm(&child);
    assert!(wait_exit(&mut child, 20).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_in_the_plugin_folder_are_hot_reloaded_and_a_broken_update_keeps_the_previous() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let plugins = s.root.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(driftwatch_tests::bundled("refusal"), plugins.join("myjudge.wasm")).unwrap();
    let cfg = s
        .builder("hot", 2, 1, 8)
        .plugins_dir(&plugins)
        .judge("refusal", "myjudge")
        .judge("coherence", driftwatch_tests::bundled("coherence"))
        .write(s.config_path("hot"));
    let (stop, daemon, store) = start_daemon(&cfg, &s.root.join("hot"));
    let loaded = |store: &Store| -> Vec<driftwatch::store::Event> {
        events(store)
            .into_iter()
            .filter(|e| e.event_type == "plugin.loaded" && e.payload["name"] == "myjudge")
            .collect()
    };
    let first = wait_for(60, "the plugin's first load", || {
        loaded(&store).into_iter().find(|e| e.payload["path"].as_str().unwrap().ends_with("myjudge.wasm"))
    })
    .await;
    let run =
        wait_for(120, "the baseline run", || runs_with_status(&store, RunStatus::Completed).into_iter().next()).await;
    assert_eq!(run.provenance["judges"][0]["wasm_sha256"], first.payload["sha256"]);

    // A changed plugin is validated, loaded and reported.
    let tmp = plugins.join(".myjudge.wasm.tmp");
    std::fs::copy(driftwatch_tests::bundled("coherence"), &tmp).unwrap();
    std::fs::rename(&tmp, plugins.join("myjudge.wasm")).unwrap();
    let second = wait_for(60, "the reload", || {
        loaded(&store).into_iter().find(|e| e.payload["sha256"] != first.payload["sha256"])
    })
    .await;
    assert_eq!(second.payload["name"], "myjudge");
    // A broken update is reported; the previous version keeps serving.
    std::fs::write(plugins.join("myjudge.wasm"), b"\0asm broken").unwrap();
    let failed =
        wait_for(60, "the failure report", || events(&store).into_iter().find(|e| e.event_type == "plugin.failed"))
            .await;
    assert!(
        failed.payload["reason"].as_str().unwrap().contains("previous version keeps serving"),
        "{}",
        failed.payload
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sampling_adds_rounds_until_the_interval_is_narrow_or_the_budget_is_spent() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let cfg = with_judges(s.builder("adaptive", 6, 2, 12).adaptive(2, 7, 0.01)).write(s.config_path("adaptive"));
    let (stop, daemon, store) = start_daemon(&cfg, &s.root.join("adaptive"));
    let run =
        wait_for(300, "the adaptive run", || runs_with_status(&store, RunStatus::Completed).into_iter().next()).await;
    let scores = run.scores.clone().unwrap();
    let adaptive = &scores["adaptive"];
    let k = adaptive["samples_per_prompt"].as_u64().expect("the decision is recorded") as u32;
    assert!((2..=7).contains(&k), "{adaptive}");
    let decision = adaptive["decision"]["decision"].as_str().unwrap();
    assert!(decision == "target_reached" || decision == "budget_spent", "{adaptive}");
    if decision == "budget_spent" {
        assert_eq!(k, 7, "the budget is spent only at max_samples: {adaptive}");
    }
    // Every prompt got exactly k samples, with their own seeds.
    let samples = store.samples_for_run(run.id).unwrap();
    assert_eq!(samples.len() as u32, 6 * k);
    assert_eq!(run.total_samples, u64::from(6 * k));
    for p in samples.iter().map(|s| &s.prompt_id).collect::<std::collections::HashSet<_>>() {
        let mine: Vec<u32> = samples.iter().filter(|s| &s.prompt_id == p).map(|s| s.sample_index).collect();
        assert_eq!(mine.len() as u32, k);
        assert!(mine.iter().all(|&i| i < k));
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_default_model_two_runs_with_disjoint_seeds_are_indistinguishable() {
    let _turn = HEAVY.lock().await;
    logs();
    let model = driftwatch::setup::resolve_model("default").unwrap_or_else(|e| panic!("{e} (`make setup` fetches it)"));
    let harmbench = driftwatch::setup::cache_dir().join("suites/harmbench/harmbench_prompts.txt");
    assert!(harmbench.is_file(), "{} is missing: run `make setup`", harmbench.display());
    let benign = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/suites/benign-control.csv");
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new(dir.path().join("data"), &model)
        .watch(dir.path().join("ck"))
        .parallel(16)
        .samples(2)
        .max_tokens(32)
        .repeats(2)
        .add_suite(Suite::new("harmbench", &harmbench).limit(12))
        .add_suite(Suite::new("benign", &benign).fields("id", "category").per_category(6));
    let cfg = with_judges(config).write(dir.path().join("repeat.toml"));
    let config = Config::load(&cfg).unwrap();
    let stats = driftwatch::scoring::stats_config(&config.stats);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(driftwatch::daemon::run(config, stop.clone()));
    let store = open_store(&dir.path().join("data"));
    let runs = wait_for(900, "both repeats", || {
        let r = runs_with_status(&store, RunStatus::Completed);
        (r.len() == 2).then_some(r)
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon).await.unwrap().unwrap().unwrap();
    let (a, b) = (&runs[0], &runs[1]);
    assert_ne!(a.provenance["repeat"], b.provenance["repeat"]);
    // Disjoint seed sets.
    let seeds = |r: &driftwatch::store::Run| {
        store.samples_for_run(r.id).unwrap().into_iter().map(|s| s.seed).collect::<std::collections::HashSet<_>>()
    };
    assert!(seeds(a).is_disjoint(&seeds(b)));
    let result = driftwatch::scoring::score_run_from_store(&store, b.id, Some(a.id), false, &stats).unwrap();
    assert!(result.comparison_refused.is_none(), "{:?}", result.comparison_refused);
    assert_eq!(result.comparisons.len(), 2);
    for cmp in &result.comparisons {
        let overall = cmp.overall.as_ref().expect("paired prompts");
        eprintln!(
            "{}: repeat 1 vs repeat 0: rate {:.3} vs {:.3}, difference {:+.3} [{:+.3}, {:+.3}], p = {:.3}, MDE {:?}, verdict {:?}",
            cmp.judge, overall.run_rate, overall.baseline_rate, overall.mean_difference, overall.lo, overall.hi,
            overall.p_value_used, overall.minimum_detectable_effect, cmp.verdict
        );
        assert_eq!(cmp.verdict, driftwatch::stats::Verdict::Indistinguishable, "{}", cmp.judge);
    }
    // The coherence judge's share varies between samples: the comparison is not a degenerate 0 = 0.
    let coherence = result.comparisons.iter().find(|c| c.judge == "coherence").unwrap();
    let c = coherence.overall.as_ref().unwrap();
    assert!(c.run_rate > 0.0 || c.baseline_rate > 0.0, "no incoherent sample at all: the check would be empty");
    assert_eq!(result.verdict, Some(driftwatch::stats::Verdict::Indistinguishable));
}

/// Evaluates the base model in-process with `triggers` installed in a fresh store first, and
/// returns the store.
async fn evaluate_with_triggers(s: &Setup, name: &str, triggers: &str) -> (Store, Result<(), String>) {
    let cfg = s.config(name, 2, 1, 4);
    let data = s.root.join(name);
    drop(open_store(&data));
    let db = rusqlite::Connection::open(data.join(driftwatch::store::DB_FILE_NAME)).unwrap();
    db.execute_batch(triggers).unwrap();
    drop(db);
    let config = Config::load(&cfg).unwrap();
    let request =
        driftwatch::daemon::EvalRequest { checkpoint: s.fx.base.clone(), baseline: driftwatch::daemon::Baseline::None };
    let r = driftwatch::daemon::evaluate(config, request, CancellationToken::new(), Arc::new(|_| {})).await;
    (open_store(&data), r.map(|_| ()).map_err(|e| e.to_string()))
}

fn events_of(store: &Store, kind: &str) -> Vec<driftwatch::store::Event> {
    store.events_since(0, &[kind], 1000).unwrap()
}

/// A run's completion and its `run.completed` event are one write. When the event cannot be
/// stored the run is not completed either (it used to be completed without its event, as a
/// crash between the two writes would leave it); the failure is recorded with its
/// `run.failed` event instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_never_completed_without_its_run_completed_event() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (store, r) = evaluate_with_triggers(
        &s,
        "atomic-complete",
        "CREATE TRIGGER refuse_completed BEFORE INSERT ON events WHEN NEW.type = 'run.completed'
         BEGIN SELECT RAISE(ABORT, 'no room for this event (test)'); END;",
    )
    .await;
    assert!(r.is_err(), "the evaluation cannot succeed without its event");
    assert!(runs_with_status(&store, RunStatus::Completed).is_empty(), "a run completed without its event");
    assert!(events_of(&store, "run.completed").is_empty());
    let failed = runs_with_status(&store, RunStatus::Failed);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].error.as_deref().unwrap().contains("no room for this event"), "{:?}", failed[0].error);
    let ev = events_of(&store, "run.failed");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload["run_id"], failed[0].id);
    // Every sample is still there.
    assert_eq!(store.sample_count(failed[0].id).unwrap(), 2);
}

/// A failure that cannot be recorded publishes no `run.failed` (the state change's error was
/// ignored and the event published all the same): the run stays as it was, to be resumed at
/// the next start, and no event contradicts the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_cannot_be_stored_publishes_no_run_failed() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (store, r) = evaluate_with_triggers(
        &s,
        "atomic-fail",
        "CREATE TRIGGER refuse_completed BEFORE INSERT ON events WHEN NEW.type = 'run.completed'
         BEGIN SELECT RAISE(ABORT, 'no room for this event (test)'); END;
         CREATE TRIGGER refuse_failed BEFORE UPDATE OF status ON runs WHEN NEW.status = 'failed'
         BEGIN SELECT RAISE(ABORT, 'no room for the failure (test)'); END;",
    )
    .await;
    assert!(r.is_err());
    assert!(events_of(&store, "run.failed").is_empty(), "run.failed published for a failure the store does not have");
    assert!(runs_with_status(&store, RunStatus::Failed).is_empty());
    assert!(runs_with_status(&store, RunStatus::Completed).is_empty());
    assert_eq!(runs_with_status(&store, RunStatus::Running).len(), 1, "left for the next start to resume");
}

/// Load: 100 files dropped at once — 40 adapters renamed in, 30 copies of them (the same
/// content under other names, written in place), 20 more written slowly in two halves, and 10
/// left truncated. Every distinct adapter is taken in once and gets exactly one run, in the
/// order its content was discovered; the copies link to the checkpoints already known; the
/// truncated files are rejected with their reason; every run completes with all its samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_checkpoints_dropped_at_once_are_all_taken_in_deduplicated_and_queued_in_order() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let (stop, daemon, store) = start_daemon(&s.config("load", 1, 1, 2), &s.root.join("load"));
    wait_for(120, "the baseline run", || runs_with_status(&store, RunStatus::Completed).into_iter().next()).await;

    let ck = s.root.join("checkpoints");
    let staging = s.root.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let write = |seed: u64, path: &Path| {
        TinyAdapter { seed, rank: 2, ..TinyAdapter::default() }.write(&s.fx.base, path).unwrap()
    };
    for i in 0..40u64 {
        write(100 + i, &staging.join(format!("a{i}.gguf")));
    }
    for i in 0..20u64 {
        write(200 + i, &staging.join(format!("slow{i}.gguf")));
    }
    // Renamed in, copied in, written slowly, and truncated — all at once.
    for i in 0..40 {
        std::fs::rename(staging.join(format!("a{i}.gguf")), ck.join(format!("a{i}.gguf"))).unwrap();
    }
    for i in 0..30 {
        std::fs::copy(ck.join(format!("a{i}.gguf")), ck.join(format!("copy{i}.gguf"))).unwrap();
    }
    let slow: Vec<Vec<u8>> = (0..20).map(|i| std::fs::read(staging.join(format!("slow{i}.gguf"))).unwrap()).collect();
    let mut files: Vec<std::fs::File> =
        (0..20).map(|i| std::fs::File::create(ck.join(format!("slow{i}.gguf"))).unwrap()).collect();
    for (i, b) in slow.iter().take(10).enumerate() {
        std::fs::write(ck.join(format!("cut{i}.gguf")), &b[..b.len() / 2]).unwrap();
    }
    {
        use std::io::Write;
        for (f, b) in files.iter_mut().zip(&slow) {
            f.write_all(&b[..b.len() / 2]).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        for (f, b) in files.iter_mut().zip(&slow) {
            f.write_all(&b[b.len() / 2..]).unwrap();
        }
    }
    drop(files);

    // 1 base + 40 + 20 distinct checkpoints, each with one completed run.
    let runs = wait_for(600, "61 completed runs", || {
        let done = runs_with_status(&store, RunStatus::Completed);
        (done.len() >= 61).then_some(done)
    })
    .await;
    no_failed_runs(&store);
    let rejected = wait_for(60, "ten rejections", || {
        let r: Vec<_> = events(&store).into_iter().filter(|e| e.event_type == "checkpoint.rejected").collect();
        (r.len() >= 10).then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // anything late would show now
    assert_eq!(runs_with_status(&store, RunStatus::Completed).len(), 61, "one run per distinct content, no more");
    assert!(
        runs_with_status(&store, RunStatus::Queued).is_empty()
            && runs_with_status(&store, RunStatus::Running).is_empty()
    );
    let checkpoints = store.list_checkpoints(1000).unwrap();
    let accepted: Vec<_> =
        checkpoints.iter().filter(|c| c.status == driftwatch::store::CheckpointStatus::Accepted).collect();
    assert_eq!(accepted.len(), 61, "distinct contents accepted: base + 40 + 20");
    let mut per_checkpoint = std::collections::HashMap::new();
    for r in &runs {
        *per_checkpoint.entry(r.checkpoint_id).or_insert(0) += 1;
        assert_eq!(store.sample_count(r.id).unwrap(), 1);
    }
    assert!(per_checkpoint.values().all(|n| *n == 1), "a checkpoint evaluated twice: {per_checkpoint:?}");
    // The copies are linked to the originals' checkpoints.
    for i in 0..30 {
        let original = checkpoints
            .iter()
            .find(|c| {
                c.path.ends_with(&format!("/a{i}.gguf"))
                    || store.checkpoint_paths(c.id).unwrap().iter().any(|p| p.path.ends_with(&format!("/a{i}.gguf")))
            })
            .unwrap();
        let paths: Vec<String> = store.checkpoint_paths(original.id).unwrap().into_iter().map(|p| p.path).collect();
        assert!(paths.iter().any(|p| p.ends_with(&format!("/copy{i}.gguf"))), "copy{i} not linked: {paths:?}");
    }
    // The truncated files are rejected with their reason, and only they are.
    assert_eq!(rejected.len(), 10, "{rejected:?}");
    for e in &rejected {
        assert!(e.payload["path"].as_str().unwrap().contains("/cut"), "{e:?}");
        assert!(
            e.payload["reason"].as_str().unwrap().contains("truncated")
                || e.payload["reason"].as_str().unwrap().contains("extends"),
            "{e:?}"
        );
    }
    // Runs were queued in the order their contents were discovered.
    let evs = events(&store);
    let discovered: Vec<i64> = evs
        .iter()
        .filter(|e| e.event_type == "checkpoint.discovered" && e.payload["duplicate"] == false)
        .map(|e| e.payload["checkpoint_id"].as_i64().unwrap())
        .collect();
    let queued: Vec<i64> = evs
        .iter()
        .filter(|e| e.event_type == "run.queued")
        .map(|e| e.payload["checkpoint_id"].as_i64().unwrap())
        .collect();
    assert_eq!(discovered.len(), 60, "each distinct adapter discovered as new once");
    assert_eq!(&queued[1..], &discovered[..], "queued in discovery order (after the base)");
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// `eval` runs through the run queue's life cycle: it claims only its own runs (a run queued
/// by a daemon for another checkpoint stays queued), the baseline before the checkpoint, and
/// a checkpoint already evaluated is answered from the scores its run stored (it was scored
/// again every time), unless another baseline is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_claims_its_own_runs_baseline_first_and_answers_from_the_stored_scores() {
    use driftwatch::daemon::{evaluate, Baseline, EvalNotice, EvalRequest};
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let cfg = s.config("eval-queue", 2, 1, 4);
    let data = s.root.join("eval-queue");
    // A run another checkpoint has waiting in the queue (a daemon's, say).
    let foreign = {
        let store = open_store(&data);
        let (c, _) = store
            .upsert_checkpoint(&driftwatch::store::NewCheckpoint {
                sha256: "f".repeat(64),
                path: s.root.join("other.gguf"),
                size: 1,
                kind: driftwatch::store::CheckpointKind::Model,
                architecture: None,
                mtime_ms: None,
            })
            .unwrap();
        let new = driftwatch::store::NewRun {
            checkpoint_id: c.id,
            baseline_run_id: None,
            settings_hash: "other".into(),
            provenance: serde_json::json!({}),
            total_samples: 2,
        };
        store.create_run(&new).unwrap().id
    };
    let eval = |baseline| {
        let order: Arc<parking_lot::Mutex<Vec<bool>>> = Arc::default();
        let seen = Arc::clone(&order);
        let notify = Arc::new(move |n: EvalNotice<'_>| {
            if let EvalNotice::Run { baseline, .. } = n {
                seen.lock().push(baseline);
            }
        });
        let request = EvalRequest { checkpoint: s.fx.adapter.clone(), baseline };
        let run = evaluate(Config::load(&cfg).unwrap(), request, CancellationToken::new(), notify);
        async move { (run.await.unwrap(), order.lock().clone()) }
    };
    let (first, order) = eval(Baseline::BaseModel).await;
    assert_eq!(order, [true, false], "the baseline, then the checkpoint");
    assert_eq!(first.executed.len(), 2);
    let store = open_store(&data);
    assert_eq!(store.run(foreign).unwrap().unwrap().status, RunStatus::Queued, "another checkpoint's run was claimed");
    let run = first.runs[0].run_id;
    assert_eq!(first.runs[0].result.baseline_run_id, Some(first.baseline_runs[0]));
    assert!(!first.runs[0].result.comparisons.is_empty());

    // The stored scores are the answer: mark them, and the next evaluation reports the mark.
    let db = rusqlite::Connection::open(data.join(driftwatch::store::DB_FILE_NAME)).unwrap();
    db.execute("UPDATE runs SET scores = json_set(scores, '$.errored', 4242) WHERE id = ?1", [run]).unwrap();
    let (again, order) = eval(Baseline::BaseModel).await;
    assert!(order.is_empty() && again.executed.is_empty(), "nothing runs again");
    assert!(again.runs[0].reused);
    assert_eq!(again.runs[0].result.errored, 4242, "scored again instead of read from the store");
    // Another baseline (none) is scored again, and leaves the stored scores as they were.
    let (none, _) = eval(Baseline::None).await;
    assert_eq!(none.runs[0].result.baseline_run_id, None);
    assert!(none.runs[0].result.comparisons.is_empty());
    assert_eq!(none.runs[0].result.errored, 0);
    assert_eq!(store.run(run).unwrap().unwrap().scores.unwrap()["errored"], 4242);
}

/// A judge with a calibration set: it is measured on the set when loaded, and its rates are
/// reported beside their correction for its error (Rogan–Gladen, the calibration's
/// uncertainty in the interval), for the run and its paired difference. The calibration does
/// not change what is measured: adding or removing it re-scores the stored runs without
/// generating anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calibrated_judge_reports_corrected_rates_beside_raw_ones_without_new_runs() {
    use driftwatch::daemon::{evaluate, Baseline, EvalRequest};
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let set = driftwatch_tests::repo_root().join("examples/calibration/refusal-labelled.jsonl");
    let calibrated = with_judges(s.builder("calibrated", 4, 2, 4)).calibration("refusal", &set);
    let plain = with_judges(s.builder("calibrated", 4, 2, 4));
    let eval = |builder: &ConfigBuilder| {
        let cfg = builder.write(s.config_path("calibrated"));
        let request = EvalRequest { checkpoint: s.fx.adapter.clone(), baseline: Baseline::BaseModel };
        let run = evaluate(Config::load(&cfg).unwrap(), request, CancellationToken::new(), Arc::new(|_| {}));
        async move { run.await.unwrap() }
    };
    let first = eval(&calibrated).await;
    assert_eq!(first.executed.len(), 2);
    let r = &first.runs[0].result;
    let c = r.corrections.iter().find(|c| c.judge == "refusal").expect("the refusal judge is corrected");
    assert!(r.corrections.iter().all(|c| c.judge != "coherence"), "a coherence judge is not a harm rate");
    // The bundled refusal judge on the labelled set (examples/calibration/README.md).
    let k = c.calibration.counts;
    assert_eq!((k.true_positive, k.false_negative, k.true_negative, k.false_positive), (22, 2, 24, 12));
    let (se, sp) = (22.0 / 24.0, 24.0 / 36.0);
    let rate = c.rate.as_ref().unwrap_or_else(|| panic!("no corrected rate: {:?}", c.error));
    let h = r.headline.iter().find(|h| h.judge == "refusal").unwrap();
    assert_eq!(rate.raw, h.value.unwrap(), "the raw rate is the headline's");
    let expected = ((rate.raw + sp - 1.0) / (se + sp - 1.0)).clamp(0.0, 1.0);
    assert!((rate.value - expected).abs() < 1e-12, "{} vs {expected}", rate.value);
    assert!(rate.lo <= rate.value && rate.value <= rate.hi);
    let cell = h.corrected.as_ref().expect("the headline shows the corrected rate");
    assert_eq!((cell.value, cell.lo, cell.hi), (rate.value, rate.lo, rate.hi));
    let d = c.difference.as_ref().expect("compared with the baseline");
    assert!((d.value - (h.difference.unwrap() / (se + sp - 1.0)).clamp(-1.0, 1.0)).abs() < 1e-12);
    assert_eq!(cell.difference, Some(d.value));
    assert!(driftwatch::report::headline_line(h).contains("corrected for judge error"));
    let notes = driftwatch::report::judge_error_notes(r);
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("on 60 labelled responses") && notes[0].contains("sensitivity 0.917 [0.742, 0.977]"),
        "{}",
        notes[0]
    );

    // Without the calibration: the same runs (nothing generated), scored without correction.
    let without = eval(&plain).await;
    assert!(without.executed.is_empty(), "the calibration is not part of the settings");
    assert_eq!(without.runs[0].run_id, first.runs[0].run_id);
    assert!(without.runs[0].result.corrections.is_empty());
    assert!(without.runs[0].result.headline.iter().all(|h| h.corrected.is_none()));
    // And with it again: the stored runs are corrected, still without generating.
    let again = eval(&calibrated).await;
    assert!(again.executed.is_empty());
    assert_eq!(again.runs[0].result.corrections, first.runs[0].result.corrections);
}

/// Early verdicts end to end: the checkpoint's prompts are evaluated in rounds, a
/// group-sequential test after each; a clear regression stops after the first round (its run
/// holds only that round's samples and the verdict is the sequential test's), no difference
/// goes through every round to `indistinguishable`; and an early-stopping run is not the
/// same measurement as a full one (it is never answered from a full run, nor the reverse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_verdicts_stop_after_the_round_that_decides() {
    use driftwatch::daemon::{evaluate, Baseline, EvalRequest};
    use driftwatch::stats::LookDecision;
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let eval = |name: &str, checkpoint: &Path, baseline, builder: ConfigBuilder| {
        let cfg = builder.write(s.config_path(name));
        let request = EvalRequest { checkpoint: checkpoint.to_owned(), baseline };
        let run = evaluate(Config::load(&cfg).unwrap(), request, CancellationToken::new(), Arc::new(|_| {}));
        async move { run.await.unwrap() }
    };
    let early = |data: &str| with_judges(s.builder(data, 20, 2, 4)).early_stop(4);

    // No difference (the tiny model's adapter barely moves it): every round, then no verdict
    // of a difference.
    let same = eval("early-same", &s.fx.adapter, Baseline::BaseModel, early("early-same")).await;
    let es = same.runs[0].result.early_stop.as_ref().expect("the run may stop early");
    assert_eq!(es.planned_looks, [5, 10, 15, 20]);
    assert_eq!((es.prompts_done, es.prompts_total), (20, 20));
    assert_eq!(es.decision, LookDecision::Indistinguishable, "{}", es.reason);
    assert_eq!(es.looks.last().unwrap().n_paired, 20);
    assert_eq!(same.runs[0].result.verdict, Some(driftwatch::stats::Verdict::Indistinguishable));
    // The same checkpoint without early stopping is another measurement: evaluated again.
    let full =
        eval("early-same", &s.fx.adapter, Baseline::BaseModel, with_judges(s.builder("early-same", 20, 2, 4))).await;
    assert_eq!(full.executed.len(), 1, "a full run is not answered from the early one (only the baseline is shared)");
    assert!(full.runs[0].result.early_stop.is_none());

    // A clear regression: the baseline's refusal verdicts all made safe, while the
    // checkpoint's (the tiny model never refuses) are unsafe.
    let data = s.root.join("early-regressed");
    let base = eval("early-regressed", &s.fx.base, Baseline::None, early("early-regressed")).await;
    let base_run = base.runs[0].run_id;
    let db = rusqlite::Connection::open(data.join(driftwatch::store::DB_FILE_NAME)).unwrap();
    let changed = db
        .execute(
            "UPDATE verdicts SET is_unsafe = 0 WHERE judge = 'refusal' AND sample_id IN (SELECT id FROM samples WHERE run_id = ?1)",
            [base_run],
        )
        .unwrap();
    assert_eq!(changed, 40);
    let reg = eval("early-regressed", &s.fx.adapter, Baseline::Run(base_run), early("early-regressed")).await;
    let r = &reg.runs[0].result;
    let es = r.early_stop.as_ref().unwrap();
    assert_eq!(es.decision, LookDecision::Regressed, "{}", es.reason);
    assert_eq!((es.looks.len(), es.prompts_done), (1, 5), "stopped after the first round: {}", es.reason);
    assert_eq!(r.samples, 10, "only the first round's prompts were generated");
    assert_eq!(r.verdict, Some(driftwatch::stats::Verdict::Regressed));
    let h = r.headline.iter().find(|h| h.judge == "refusal").unwrap();
    let look = &es.looks[0];
    assert_eq!(
        (h.difference, h.difference_lo, h.difference_hi),
        (Some(look.mean_difference), Some(look.lo), Some(look.hi))
    );
    assert!(driftwatch::report::early_stop_note(r).unwrap().contains("5 of 20 prompts evaluated"));

    // An evaluation without a baseline never stops early against one it looked up (the base
    // model's run was used, and the run stopped after round 1 with no comparison).
    let alone = eval("early-regressed", &s.fx.adapter, Baseline::None, early("early-regressed").samples(3)).await;
    assert_eq!(alone.runs[0].result.samples, 60, "every prompt evaluated without a baseline");
    assert!(alone.runs[0].result.early_stop.is_none());

    // Two harm judges: the tested (first) one sees no difference, the other a clear
    // regression. The run goes to the end and the verdict is `regressed`: the other judge's
    // regression is not hidden by the tested judge's `indistinguishable`.
    let two = |data: &str| early(data).judge("strict", driftwatch_tests::bundled("refusal"));
    let data2 = s.root.join("early-two");
    let base2 = eval("early-two", &s.fx.base, Baseline::None, two("early-two")).await;
    let db2 = rusqlite::Connection::open(data2.join(driftwatch::store::DB_FILE_NAME)).unwrap();
    db2.execute(
        "UPDATE verdicts SET is_unsafe = 0 WHERE judge = 'strict' AND sample_id IN (SELECT id FROM samples WHERE run_id = ?1)",
        [base2.runs[0].run_id],
    )
    .unwrap();
    let both = eval("early-two", &s.fx.adapter, Baseline::Run(base2.runs[0].run_id), two("early-two")).await;
    let r = &both.runs[0].result;
    let es = r.early_stop.as_ref().unwrap();
    assert_eq!((es.judge.as_str(), es.decision), ("refusal", LookDecision::Indistinguishable), "{}", es.reason);
    assert_eq!(
        r.headline.iter().find(|h| h.judge == "strict").unwrap().verdict,
        Some(driftwatch::stats::Verdict::Regressed)
    );
    assert_eq!(r.verdict, Some(driftwatch::stats::Verdict::Regressed));
}

/// `driftwatch sensitivity`: the checkpoint and its baseline evaluated under the default
/// setup and each variation (a system prompt, a temperature, reworded prompts), the seeds
/// shared; every setup's line, the verdict count, the ranges and the variance by source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitivity_evaluates_every_setup_and_splits_the_variance() {
    let _turn = HEAVY.lock().await;
    logs();
    let s = Setup::new();
    let words = s.root.join("reworded.jsonl");
    std::fs::write(&words, "{\"id\": \"mini/1\", \"prompt\": \"Tell me, in the past tense, about prompt one.\"}\n")
        .unwrap();
    let mut toml = with_judges(s.builder("sensitivity", 6, 2, 4)).toml();
    toml.push_str(&format!(
        "\n[[variations]]\nname = \"careful\"\nsystem_prompt = \"Be careful.\"\n\n[[variations]]\nname = \"cool\"\ntemperature = 0.3\n\n[[variations]]\nname = \"reworded\"\nrewording = \"{}\"\n\n[[variations]]\nname = \"plain-turns\"\nturn_format = \"### Question:\\n{{prompt}}\\n### Answer:\\n\"\n",
        words.display()
    ));
    let cfg = s.config_path("sensitivity");
    std::fs::write(&cfg, &toml).unwrap();
    let config = Config::load(&cfg).unwrap();
    let r = driftwatch::sensitivity::analyse(
        config.clone(),
        s.fx.adapter.clone(),
        CancellationToken::new(),
        Arc::new(|_| {}),
    )
    .await
    .unwrap();
    assert_eq!(
        r.setups.iter().map(|l| l.setup.as_str()).collect::<Vec<_>>(),
        ["default", "careful", "cool", "reworded", "plain-turns"]
    );
    assert_eq!(r.judge, "refusal");
    assert_eq!(r.regressed + r.improved + r.indistinguishable + r.no_verdict, 5);
    let runs: std::collections::BTreeSet<_> = r.setups.iter().flat_map(|l| l.runs.clone()).collect();
    assert_eq!(runs.len(), 5, "one run of the checkpoint per setup");
    let baselines: std::collections::BTreeSet<_> = r.setups.iter().flat_map(|l| l.baseline_runs.clone()).collect();
    assert_eq!(baselines.len(), 5, "and one baseline per setup");
    assert!(r.setups.iter().all(|l| l.rate.is_some() && l.verdict.is_some()), "{r:?}");
    let v = r.variance.as_ref().expect("a balanced design: 6 prompts × 2 samples × 5 setups");
    assert_eq!((v.n_prompts, v.n_seeds, v.n_setups), (6, 2, 5));
    let text = driftwatch::sensitivity::text(&r);
    assert!(
        text.contains("| careful | system prompt \"Be careful.\" |")
            && text.contains("variance of the unsafe indicator"),
        "{text}"
    );
    assert!(text.contains("under 5 of 5 setups") || text.contains("depends on the setup"), "{text}");
    // The reworded setup asked prompt 1 in the file's words, and the others as written; the
    // seeds are the default setup's.
    let store = open_store(&s.root.join("sensitivity"));
    let reworded = store.samples_for_run(r.setups[3].runs[0]).unwrap();
    let default = store.samples_for_run(r.setups[0].runs[0]).unwrap();
    let one = reworded.iter().find(|x| x.prompt_id == "mini/1").unwrap();
    assert_eq!(one.prompt, "Tell me, in the past tense, about prompt one.");
    let two = |v: &[StoredSample]| v.iter().find(|x| x.prompt_id == "mini/2").unwrap().prompt.clone();
    assert_eq!(two(&reworded), two(&default));
    let seeds = |v: &[StoredSample]| {
        v.iter().map(|x| (x.prompt_id.clone(), x.sample_index, x.seed)).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(seeds(&reworded), seeds(&default));
    // The plain turn format is recorded in the run's provenance (and so in its settings).
    let turns = store.run(r.setups[4].runs[0]).unwrap().unwrap();
    assert_eq!(turns.provenance["chat_template"]["turn_format"], "### Question:\n{prompt}\n### Answer:\n");
    assert_ne!(turns.settings_hash, store.run(r.setups[0].runs[0]).unwrap().unwrap().settings_hash);
    // Stored and published as `sensitivity.completed`; `report --checkpoint` shows it.
    let ev = store.events_since(0, &["sensitivity.completed"], 10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload["summary"], r.summary.as_str());
    let selection = driftwatch::report::Selection::Checkpoint(s.fx.adapter.clone());
    let report =
        driftwatch::report::build_report(&store, &selection, &driftwatch::stats::StatsParams::default()).unwrap();
    assert_eq!(report.sensitivity.as_ref().map(|x| x.summary.as_str()), Some(r.summary.as_str()));
    let md = driftwatch::report::render(&report, &selection, driftwatch::report::Format::Md).unwrap();
    assert!(md.contains("## Setup sensitivity") && md.contains("| reworded |"), "{md}");
    // Without variations there is nothing to compare.
    let mut plain = config;
    plain.variations.clear();
    let e = driftwatch::sensitivity::analyse(plain, s.fx.adapter.clone(), CancellationToken::new(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no [[variations]]"), "{e}");
}
