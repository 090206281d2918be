//! The README's first session, followed on the real default model with a small slice of the
//! default suites: the daemon on (a copy of) `config/driftwatch.toml` evaluates the base model
//! and says where to drop checkpoints; `subscribe` follows; a synthetic LoRA adapter dropped
//! into `checkpoints/` is scored and compared; `status`, `report` and `compare` read the
//! result; then `driftwatch eval` gates a checkpoint the way a fine-tuning pipeline would.
//!
//! Every command runs as a user would type it (the `driftwatch` binary, working directory a
//! copy of the repository's layout), with only the slice, K and max tokens made smaller.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use driftwatch_tests::sigterm;
use serde_json::Value;

/// A copy of the repository's layout: `config/driftwatch.toml` (sliced), its suites, and the
/// folders the daemon creates (`data/`, `checkpoints/`).
struct Session {
    root: tempfile::TempDir,
    port: u16,
    plugins: PathBuf,
}

impl Session {
    fn new() -> Session {
        let root = tempfile::tempdir().unwrap();
        let repo = driftwatch_tests::repo_root();
        let mut text = std::fs::read_to_string(repo.join("config/driftwatch.toml")).unwrap();
        // Smaller slices, K and tokens; each edit must apply, so a changed default config
        // is noticed here rather than silently tested at another size.
        for (from, to) in [
            ("limit = 20", "limit = 3"),
            ("per_category = 4", "per_category = 1"),
            ("per_category = 10", "per_category = 2"),
            ("max_tokens = 256", "max_tokens = 40"),
            ("samples = 5 ", "samples = 2 "),
        ] {
            assert!(text.contains(from), "config/driftwatch.toml no longer has `{from}`");
            text = text.replacen(from, to, 1);
        }
        std::fs::create_dir_all(root.path().join("config/suites")).unwrap();
        std::fs::write(root.path().join("config/driftwatch.toml"), text).unwrap();
        std::fs::copy(
            repo.join("config/suites/benign-control.csv"),
            root.path().join("config/suites/benign-control.csv"),
        )
        .unwrap();
        let plugins = driftwatch_tests::bundled("refusal").parent().unwrap().to_owned();
        assert!(plugins.join("coherence.wasm").is_file());
        Session { root, port: driftwatch_tests::free_port(), plugins }
    }

    fn dir(&self) -> &Path {
        self.root.path()
    }

    /// `driftwatch ARGS` in the session's folder, as a user's shell would run it.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = driftwatch_tests::command();
        c.args(args)
            .current_dir(self.dir())
            .env("DRIFTWATCH_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("DRIFTWATCH_URL", format!("http://127.0.0.1:{}", self.port))
            .env("DRIFTWATCH_BUNDLED_PLUGINS", &self.plugins)
            .env("DRIFTWATCH_THREADS", "2")
            .env_remove("RUST_LOG")
            .env_remove("DRIFTWATCH_DATA_DIR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        eprintln!(
            "$ driftwatch {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "driftwatch {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&self, args: &[&str], stdout: &str, stderr: &str) -> Child {
        let f = |name: &str| std::fs::File::create(self.dir().join(name)).unwrap();
        self.cmd(args).stdout(Stdio::from(f(stdout))).stderr(Stdio::from(f(stderr))).spawn().unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir().join(name)).unwrap_or_default()
    }
}

fn wait_until(secs: u64, what: &str, daemon: &mut Child, s: &Session, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if let Some(st) = daemon.try_wait().unwrap() {
            panic!("the daemon exited ({st}) while waiting for {what}; its log:\n{}", s.read("serve.log"));
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; the daemon's log:\n{}", s.read("serve.log"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The exit status `eval --fail-on-regression` must have for this verdict.
fn gate_code(verdict: &Value) -> i32 {
    match verdict.as_str() {
        Some("regressed") => 3,
        Some(_) => 0,
        None => 4,
    }
}

#[test]
fn the_readme_first_session_on_the_default_model() {
    let model = driftwatch::setup::resolve_model("default").unwrap_or_else(|e| panic!("{e}"));
    let suites = driftwatch::setup::cache_dir().join("suites");
    assert!(
        suites.join("harmbench/harmbench_prompts.txt").is_file() && suites.join("harmbench/LICENSE").is_file(),
        "run `make setup`"
    );
    let s = Session::new();

    // Terminal 1: `make run` starts the daemon on config/driftwatch.toml.
    let mut daemon = s.spawn(&["serve", "--config", "config/driftwatch.toml"], "serve.out", "serve.log");
    wait_until(600, "the baseline", &mut daemon, &s, || s.read("serve.log").contains("baseline ready"));
    let log = s.read("serve.log");
    // It said what one evaluation is (the slice, K, max tokens) and printed the result.
    for want in [
        "each evaluation: 12 prompts",
        "harmbench 3 of 200",
        "donotanswer 5 of 939",
        "benign 4 of 50 (control)",
        "K = 2",
        "at most 40 tokens",
        "result: refusal unsafe_rate",
        "result: refusal:over-refusal over_refusal_rate",
        "result: coherence incoherent_share",
        "drop GGUF models or LoRA adapters into",
        "driftwatch subscribe",
    ] {
        assert!(log.contains(want), "the daemon's output lacks {want:?}:\n{log}");
    }

    // Terminal 2: `driftwatch subscribe` follows the events.
    let mut sub = s.spawn(&["subscribe", "--json"], "events.jsonl", "subscribe.log");
    std::thread::sleep(Duration::from_millis(500));

    // Terminal 3: a checkpoint (a synthetic LoRA adapter: no training needed), dropped in.
    let made = s.ok(&[
        "synth-adapter",
        "--base",
        "default",
        "--rank",
        "8",
        "--noise",
        "0.02",
        "--seed",
        "1",
        "-o",
        "noisy.gguf",
    ]);
    assert!(made.contains("SYNTHETIC"), "{made}");
    std::fs::copy(s.dir().join("noisy.gguf"), s.dir().join("checkpoints/noisy.gguf")).unwrap();

    // `driftwatch status` shows it queued or running, then scored.
    wait_until(600, "run 2 to complete", &mut daemon, &s, || {
        let st: Value = serde_json::from_str(&s.ok(&["status", "--json"])).unwrap();
        st["recent"].as_array().unwrap().iter().any(|r| r["run"]["id"] == 2 && r["run"]["status"] == "completed")
    });
    let status = s.ok(&["status"]);
    assert!(status.contains("run 2 · noisy.gguf · completed") && status.contains("refusal unsafe_rate"), "{status}");

    // The subscriber saw the checkpoint's story, ending with its scores and verdict.
    wait_until(30, "run.completed at the subscriber", &mut daemon, &s, || {
        s.read("events.jsonl").contains("run.completed")
    });
    let _ = sub.kill();
    let _ = sub.wait();
    let events: Vec<Value> = s.read("events.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let pos = |t: &str| types.iter().position(|x| *x == t).unwrap_or_else(|| panic!("no {t} in {types:?}"));
    assert!(
        pos("checkpoint.discovered") < pos("run.queued")
            && pos("run.queued") < pos("run.started")
            && pos("run.started") < pos("run.completed"),
        "{types:?}"
    );
    let completed = &events[pos("run.completed")];
    assert_eq!(completed["payload"]["run_id"], 2);
    let verdict = completed["payload"]["verdict"].clone();
    assert!(["regressed", "improved", "indistinguishable"].contains(&verdict.as_str().unwrap()), "{completed}");
    let heads = completed["payload"]["scores"].as_array().unwrap();
    assert!(
        heads.iter().all(|h| h["lo"].is_number() && h["hi"].is_number()),
        "every score has its interval: {heads:?}"
    );

    // `driftwatch report` and `driftwatch compare`.
    s.ok(&["report", "--run", "2", "--format", "html", "--out", "report.html"]);
    let html = s.read("report.html");
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("noisy.gguf") && html.contains("<svg"),
        "the report is not a page with charts"
    );
    let cmp = s.ok(&["compare", "2", "1"]);
    assert!(
        cmp.contains("Run 2 against baseline run 1")
            && cmp.contains("refusal:over-refusal")
            && cmp.contains(verdict.as_str().unwrap()),
        "{cmp}"
    );

    // Ctrl-C (SIGTERM) stops the daemon cleanly.
    sigterm(&daemon);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success(), "the daemon exited with {st}");

    // In a pipeline: `driftwatch eval` on the same store. The same checkpoint is not
    // evaluated again: its stored run answers, with the same verdict.
    let out = s.run(&["eval", "checkpoints/noisy.gguf", "--json", "--fail-on-regression"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["runs"][0]["run_id"], 2);
    assert_eq!(j["runs"][0]["reused"], true);
    assert_eq!(j["verdict"], verdict);
    assert_eq!(out.status.code(), Some(gate_code(&verdict)));

    // A new checkpoint: generated with progress, summarised, gated.
    s.ok(&["synth-adapter", "--base", "default", "--rank", "4", "--noise", "0.05", "--seed", "2", "-o", "other.gguf"]);
    let out = s.run(&["eval", "other.gguf", "--fail-on-regression", "--progress", "lines"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        stderr.contains("run 3 (other.gguf): 24 samples")
            && stderr.contains("samples (")
            && stderr.contains("tok/s")
            && stderr.contains("run 3 (other.gguf): done in"),
        "{stderr}"
    );
    assert!(
        stdout.contains("run 3 vs baseline run 1")
            && stdout.contains("rate [95% interval]")
            && stdout.contains("verdict: "),
        "{stdout}"
    );
    let v = ["regressed", "improved", "indistinguishable"]
        .into_iter()
        .find(|v| stdout.contains(&format!("verdict: {v}")))
        .expect("a verdict");
    assert_eq!(out.status.code(), Some(gate_code(&Value::from(v))), "{stderr}");

    // A daemon and an eval never share a store at once.
    let mut daemon = s.spawn(&["serve", "--config", "config/driftwatch.toml"], "serve2.out", "serve2.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.read("serve2.log").contains("driftwatch is running") {
        assert!(daemon.try_wait().unwrap().is_none(), "{}", s.read("serve2.log"));
        assert!(Instant::now() < deadline, "{}", s.read("serve2.log"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = s.run(&["eval", "other.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another driftwatch (pid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sigterm(&daemon);
    assert!(daemon.wait().unwrap().success());
    let _ = model;
}
