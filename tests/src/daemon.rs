//! A `driftwatch serve` under test and what its store holds: starting it with its log in a file,
//! killing it, and waiting for its runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};

use driftwatch::store::{Run, RunStatus, Store};
use serde_json::Value;

use crate::wait_for;

/// `driftwatch serve --config CONFIG`, its log (at `info`) in `log`.
pub fn serve(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    crate::command()
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,llama_cpp_2=warn,llama-cpp-2=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start driftwatch serve")
}

/// A child process (a daemon under test) that is killed when dropped, so that a failing test
/// leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGTERM, and a clean exit within a minute.
    pub fn stop(&mut self) {
        crate::sigterm(&self.0);
        let status = crate::wait_exit(&mut self.0, 60);
        assert!(status.success(), "the daemon exited with {status}");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGKILL, and the child reaped.
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every run with its checkpoint's sha256 and its stored sample count, by run id.
pub fn runs(store: &Store) -> Vec<(Run, String, u64)> {
    let mut out = Vec::new();
    for c in store.list_checkpoints(1000).unwrap() {
        for r in store.runs_for_checkpoint(c.id).unwrap() {
            let n = store.sample_count(r.id).unwrap();
            out.push((r, c.sha256.clone(), n));
        }
    }
    out.sort_by_key(|(r, _, _)| r.id);
    out
}

/// Waits until the store holds `n` runs, all completed; panics on a failed one.
pub async fn all_runs_completed(st: &Store, n: usize, what: &str) {
    wait_for(600, what, || {
        let r = runs(st);
        assert!(r.iter().all(|(run, _, _)| run.status != RunStatus::Failed), "a run failed: {r:?}");
        (r.len() == n && r.iter().all(|(run, _, _)| run.status == RunStatus::Completed)).then_some(())
    })
    .await;
}

/// Waits until a daemon started with its log in `log` says it is running (a signal is only
/// handled once the process runs).
pub async fn wait_running(log: &Path) {
    wait_for(60, "the daemon to be running", || {
        std::fs::read_to_string(log).unwrap().contains("driftwatch is running").then_some(())
    })
    .await;
}

/// The samples of every run by (checkpoint sha256, prompt, k); panics on a duplicate.
pub fn samples_by_checkpoint(store: &Store) -> BTreeMap<(String, String, u32), Value> {
    let mut out = BTreeMap::new();
    for (run, sha, _) in runs(store) {
        for s in store.samples_for_run(run.id).unwrap() {
            let key = (sha.clone(), s.prompt_id.clone(), s.sample_index);
            assert!(out.insert(key.clone(), crate::comparable_sample(&s)).is_none(), "sample {key:?} stored twice");
        }
    }
    out
}
