//! Hostile judge components through every entry point: the library API outside and inside a
//! tokio runtime (current-thread and multi-thread), `driftwatch plugin check`, `driftwatch
//! judge`, `driftwatch eval` and the daemon's judge set. Each misbehaviour is a named error and
//! the host never crashes: a component that imports the network (`wasi:sockets`) is refused at
//! load naming the imports (it crashed `driftwatch judge` with "Cannot start a runtime from
//! within a runtime"), and a `configure` that never returns is reported once.

use std::path::Path;
use std::process::Output;

use driftwatch::judge::{JudgeRuntime, LoadError, PluginSettings};
use driftwatch_tests::{hostile, write_numbered_suite, ConfigBuilder};

fn load(name: &str, settings: &str) -> Result<driftwatch::judge::JudgePlugin, LoadError> {
    JudgeRuntime::shared().unwrap().load_file(name, &hostile(name), PluginSettings::from_toml(settings).unwrap(), None)
}

fn assert_refused_for_sockets(e: &LoadError) {
    assert!(matches!(e, LoadError::ForbiddenImport(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("wasi:sockets/"), "the message names the imports: {msg}");
}

fn driftwatch(args: &[&str]) -> Output {
    driftwatch_tests::command().args(args).env("NO_COLOR", "1").output().expect("cannot run driftwatch")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 1 with a message, never a panic (101) or a signal.
fn assert_clean_failure(o: &Output) {
    assert_eq!(o.status.code(), Some(1), "status {:?}, stderr:\n{}", o.status, stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

#[test]
fn a_component_that_imports_sockets_is_refused_at_load_outside_a_runtime() {
    assert_refused_for_sockets(&load("sockets", "").unwrap_err());
}

#[tokio::test(flavor = "current_thread")]
async fn a_component_that_imports_sockets_is_refused_inside_a_current_thread_runtime() {
    assert_refused_for_sockets(&load("sockets", "").unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_imports_sockets_is_refused_inside_a_multi_thread_runtime() {
    assert_refused_for_sockets(&load("sockets", "").unwrap_err());
}

#[test]
fn the_judge_and_plugin_check_commands_refuse_a_sockets_plugin_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("samples.jsonl");
    std::fs::write(&input, "{\"prompt_id\": \"a\", \"prompt\": \"hi\", \"response\": \"hello\"}\n").unwrap();
    let plugin = hostile("sockets");
    let judged = driftwatch(&["judge", "--plugin", plugin.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert_clean_failure(&judged);
    assert!(stderr(&judged).contains("wasi:sockets/"), "{}", stderr(&judged));
    let checked = driftwatch(&["plugin", "check", plugin.to_str().unwrap()]);
    assert_clean_failure(&checked);
    assert!(stderr(&checked).contains("wasi:sockets/"), "{}", stderr(&checked));
}

#[test]
fn a_configure_that_never_returns_is_one_error_said_once() {
    let e = load("confspin", "timeout_ms = 200").unwrap_err();
    assert!(matches!(e, LoadError::ConfigureFailed(_)), "{e:?}");
    let msg = e.to_string();
    assert_eq!(msg.matches("timed out").count(), 1, "{msg}");
    assert_eq!(msg.matches("configur").count(), 1, "{msg}");

    // Through the command line, whose error printing shows the whole chain.
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.toml");
    std::fs::write(&settings, "timeout_ms = 200\n").unwrap();
    let plugin = hostile("confspin");
    let o = driftwatch(&["plugin", "check", plugin.to_str().unwrap(), "--config", settings.to_str().unwrap()]);
    assert_clean_failure(&o);
    let err = stderr(&o);
    assert_eq!(err.matches("timed out").count(), 1, "{err}");
    assert_eq!(err.matches("configur").count(), 1, "{err}");
}

fn eval_config(dir: &Path, base: &Path, judge: &Path) -> std::path::PathBuf {
    let suite = dir.join("suite.txt");
    write_numbered_suite(&suite, 2);
    ConfigBuilder::new(dir.join("data"), base)
        .watch(dir.join("checkpoints"))
        .parallel(2)
        .batch_size(64)
        .samples(1)
        .max_tokens(4)
        .suite("mini", suite)
        .judge("hostile", judge)
        .bootstrap(100)
        .write(dir.join("driftwatch.toml"))
}

/// `driftwatch eval` (and the daemon, which builds its judges the same way) refuses the
/// plugin with the judge and the imports named, before generating anything.
#[test]
fn eval_refuses_a_sockets_judge_by_name_before_generating() {
    let fx = driftwatch_tests::Fixture::new();
    let cfg = eval_config(fx.dir.path(), &fx.base, &hostile("sockets"));
    let o = driftwatch(&[
        "eval",
        fx.base.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--no-baseline",
        "--progress",
        "none",
    ]);
    assert_clean_failure(&o);
    let err = stderr(&o);
    assert!(err.contains("judge 'hostile'") && err.contains("wasi:sockets/"), "{err}");
}
