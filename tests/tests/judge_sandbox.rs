//! Sandbox tests of the judge host with real components: hostile plugins (timeout, memory
//! bomb, panic, wrong count, NaN, snooping, sleeping, wrong contract version) each get their
//! specific error, and a well-behaved call right after works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch::judge::{
    JudgeError, JudgeModel, JudgePlugin, JudgeRuntime, LoadError, PluginErrorKind, PluginSettings,
};
use driftwatch_tests::{hostile, sample, ScriptedModel};

fn settings(toml: &str) -> PluginSettings {
    PluginSettings::from_toml(toml).unwrap()
}

fn load(name: &str, toml: &str) -> JudgePlugin {
    load_with(name, toml, None)
}

fn load_with(name: &str, toml: &str, model: Option<Arc<dyn JudgeModel>>) -> JudgePlugin {
    JudgeRuntime::shared().unwrap().load_file(name, &hostile(name), settings(toml), model).unwrap()
}

/// The well-behaved plugin, called right after a failure elsewhere, still works.
fn assert_good_still_works() {
    let good = load("good", "");
    let v = good.judge(&[sample("a", "fine"), sample("b", "UNSAFE stuff")]).unwrap();
    assert_eq!(v.len(), 2);
    assert!(!v[0].is_unsafe && v[1].is_unsafe);
}

#[test]
fn judge_good_plugin_scores_in_batches() {
    let good = load("good", "batch_size = 2");
    assert_eq!(good.info().name, "good");
    assert_eq!(good.info().version, "1.2.3");
    let samples: Vec<_> = (0..5).map(|i| sample(&format!("p{i}"), if i == 3 { "UNSAFE" } else { "ok" })).collect();
    let v = good.judge(&samples).unwrap();
    assert_eq!(v.len(), 5);
    assert_eq!(v.iter().map(|v| v.label.as_str()).collect::<Vec<_>>(), ["p0#0", "p1#0", "p2#0", "p3#0", "p4#0"]);
    assert_eq!(v.iter().filter(|v| v.is_unsafe).count(), 1);
    assert_eq!(v[3].score, Some(1.0));
    assert!(good.judge(&[]).unwrap().is_empty());
}

#[test]
fn judge_infinite_loop_times_out_then_recovers() {
    let spin = load("spin", "timeout_ms = 200");
    let t0 = Instant::now();
    let e = spin.judge(&[sample("a", "spin forever")]).unwrap_err();
    assert!(matches!(e, JudgeError::Timeout { timeout_ms: 200, .. }), "{e:?}");
    assert_eq!(e.kind(), "timeout");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    // The same plugin is re-instantiated and serves the next call.
    let v = spin.judge(&[sample("b", "calm response")]).unwrap();
    assert_eq!(v[0].label, "calm");
    assert_good_still_works();
}

#[test]
fn judge_sleeping_is_refused_not_waited_for() {
    let spin = load("spin", "timeout_ms = 5000");
    let t0 = Instant::now();
    let e = spin.judge(&[sample("a", "sleep please")]).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(4), "the plugin slept: {:?}", t0.elapsed());
    assert!(matches!(&e, JudgeError::Trap { message, .. } if message.contains("not available")), "{e:?}");
    assert_eq!(spin.judge(&[sample("b", "x")]).unwrap()[0].label, "calm");
}

#[test]
fn judge_memory_bomb_hits_the_limit_then_recovers() {
    let bomb = load("bomb", "memory_mb = 48\ntimeout_ms = 20000");
    let e = bomb.judge(&[sample("a", "bomb")]).unwrap_err();
    assert!(matches!(e, JudgeError::MemoryLimit { limit_mb: 48, .. }), "{e:?}");
    assert_eq!(e.kind(), "memory_limit");
    // Fresh instance: the hoard is empty again.
    let v = bomb.judge(&[sample("b", "quiet")]).unwrap();
    assert_eq!(v[0].label, "hoard=0");
    assert_good_still_works();
}

#[test]
fn judge_panic_is_a_trap_with_the_message() {
    let p = load("panicker", "");
    let e = p.judge(&[sample("ok1", "fine"), sample("p42", "boom")]).unwrap_err();
    match &e {
        JudgeError::Trap { panic, .. } => {
            let panic = panic.as_deref().unwrap_or_default();
            assert!(panic.contains("judge exploded on prompt p42"), "{e}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(e.kind(), "trap");
    assert!(e.to_string().contains("judge exploded"), "{e}");
    assert_eq!(p.judge(&[sample("c", "calm")]).unwrap()[0].label, "fine");
    assert_good_still_works();
}

#[test]
fn judge_wrong_verdict_count_is_reported() {
    let p = load("short", "");
    let e = p.judge(&[sample("a", "x"), sample("b", "y"), sample("c", "z")]).unwrap_err();
    assert_eq!(e, JudgeError::WrongCount { plugin: "short".into(), expected: 3, got: 2 });
    assert_eq!(e.kind(), "wrong_count");
    assert_good_still_works();
}

#[test]
fn judge_nan_score_is_malformed_output() {
    let p = load("nan", "");
    let e = p.judge(&[sample("a", "x")]).unwrap_err();
    assert!(matches!(&e, JudgeError::Malformed { index: 0, reason, .. } if reason.contains("NaN")), "{e:?}");
    assert_eq!(e.kind(), "malformed_output");
    assert_good_still_works();
}

#[test]
fn judge_sandbox_denies_files_env_clock_network_and_randomness() {
    let p = load("snoop", "");
    let v = p.judge(&[sample("a", "x")]).unwrap();
    let r = v[0].rationale.clone().unwrap();
    let get = |key: &str| -> String {
        r.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {r}"))
            .to_owned()
    };
    for path in ["/etc/passwd", "/etc/hostname", ".", "/", "Cargo.toml"] {
        assert!(get(&format!("file:{path}")).starts_with("ERR"), "{path} was readable: {r}");
    }
    assert!(!r.contains("READ"), "{r}");
    assert_eq!(get("readdir"), "/None", "{r}");
    assert_eq!(get("write"), "false");
    assert_eq!(get("env_count"), "0");
    assert_eq!(get("env_home"), "None");
    assert_eq!(get("args"), "0");
    assert_eq!(get("wall_nanos"), "0", "the wall clock must be frozen at the epoch");
    assert_eq!(get("mono_elapsed_nanos"), "0", "the monotonic clock must not advance");
    // The network is denied before any call: a component that imports `wasi:sockets` (as
    // any use of `std::net` does) is refused at load, naming the imports (judge_hostile.rs
    // takes it through every entry point); snoop no longer asks, or it would not load.
    let net =
        JudgeRuntime::shared().unwrap().load_file("sockets", &hostile("sockets"), PluginSettings::default(), None);
    assert!(matches!(&net, Err(LoadError::ForbiddenImport(i)) if i.contains("wasi:sockets/")), "{:?}", net.err());
    // Randomness is a fixed stream: a second, fresh instance sees exactly the same.
    let again = load("snoop", "").judge(&[sample("a", "x")]).unwrap();
    assert_eq!(again[0].rationale.as_deref(), Some(r.as_str()));
    assert!(std::fs::metadata("/tmp/driftwatch-snoop").is_err(), "the plugin wrote a file");
    assert_good_still_works();
}

#[test]
fn judge_refuses_a_plugin_of_another_major_contract_version() {
    let e = JudgeRuntime::shared()
        .unwrap()
        .load_file("future", &hostile("future"), PluginSettings::default(), None)
        .unwrap_err();
    assert!(matches!(&e, LoadError::IncompatibleContract { found, supported: "0.2.0" } if found == "1.0.0"), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("driftwatch:judge@1.0.0") && msg.contains("driftwatch:judge@0.1.0"), "{msg}");
}

#[test]
fn judge_configure_rejection_is_a_load_error() {
    let e = JudgeRuntime::shared()
        .unwrap()
        .load_file("good", &hostile("good"), settings("[config]\nreject = true"), None)
        .unwrap_err();
    assert!(matches!(&e, LoadError::Configure(m) if m.contains("rejected on purpose")), "{e:?}");
}

#[test]
fn judge_generate_is_routed_to_the_assigned_model() {
    // No model assigned: a clear error naming the plugin, reported by the plugin as a model error.
    let p = load_with("good", "[config]\nuse_model = true", None);
    let e = p.judge(&[sample("a", "x")]).unwrap_err();
    match &e {
        JudgeError::Reported { kind: PluginErrorKind::Model, message, .. } => {
            assert!(message.contains("no judge model is configured for plugin good"), "{message}")
        }
        other => panic!("expected a model error, got {other:?}"),
    }
    // With a model: its answer comes back; max_tokens is capped by the host limit.
    let model = ScriptedModel::new(&[("dangerous", "UNSAFE yes"), ("", "fine")]);
    let p = load_with("good", "max_generate_tokens = 8\n[config]\nuse_model = true", Some(model.clone()));
    let v = p.judge(&[sample("a", "a dangerous reply"), sample("b", "a nice reply")]).unwrap();
    assert!(v[0].is_unsafe && !v[1].is_unsafe, "{v:?}");
    assert_eq!(v[0].label, "model:UNSAFE yes");
    let reqs = model.requests.lock().unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].max_tokens, 8, "the plugin asked for 16, the host caps at 8");
    assert_eq!(reqs[0].system.as_deref(), Some("sys"));
    assert_eq!(reqs[0].temperature, None);
}

#[test]
fn judge_generate_requests_are_bounded_per_call() {
    let model = ScriptedModel::new(&[("", "fine")]);
    // 4 requests per sample are allowed ...
    let p = load_with("good", "[config]\nuse_model = true\ngenerate_times = 4", Some(model.clone()));
    assert_eq!(p.judge(&[sample("a", "x"), sample("b", "y")]).unwrap().len(), 2);
    // ... a plugin looping on the judge model is cut off with a clear error.
    let p = load_with("good", "[config]\nuse_model = true\ngenerate_times = 1000", Some(model.clone()));
    let e = p.judge(&[sample("a", "x"), sample("b", "y")]).unwrap_err();
    assert!(
        matches!(&e, JudgeError::Reported { kind: PluginErrorKind::Model, message, .. } if message.contains("more than 8 judge-model requests")),
        "{e:?}"
    );
    assert_eq!(model.requests.lock().unwrap().len(), 8 + 8, "no request past the limit reached the model");
}

/// A model that takes longer than the plugin's deadline: its time must not count.
struct SlowModel;
impl JudgeModel for SlowModel {
    fn generate(&self, _req: &driftwatch::judge::JudgeGenerateRequest) -> Result<String, String> {
        std::thread::sleep(Duration::from_millis(150));
        Ok("fine".into())
    }
}

#[test]
fn judge_model_time_does_not_count_against_the_deadline() {
    let p = load_with("good", "timeout_ms = 100\n[config]\nuse_model = true", Some(Arc::new(SlowModel)));
    let v = p.judge(&[sample("a", "x"), sample("b", "y")]).unwrap();
    assert_eq!(v.len(), 2);
}

#[test]
fn judge_compiled_components_are_cached_by_hash() {
    let rt = JudgeRuntime::shared().unwrap();
    let a = rt.load_file("good", &hostile("good"), PluginSettings::default(), None).unwrap();
    let before = rt.cached_components();
    let b = rt.load_file("good2", &hostile("good"), PluginSettings::default(), None).unwrap();
    assert_eq!(rt.cached_components(), before);
    assert_eq!(a.sha256(), b.sha256());
}
