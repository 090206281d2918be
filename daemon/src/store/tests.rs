//! Tests of the store: round trips, idempotence, run life cycle, events, concurrency (WAL),
//! durability across reopen, refusal of foreign or damaged files, write cost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use serde_json::json;

use super::*;

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_dir(dir.path()).unwrap();
    (dir, store)
}

fn checkpoint(store: &Store, sha: &str, path: &str) -> CheckpointRecord {
    store
        .upsert_checkpoint(&NewCheckpoint {
            sha256: sha.into(),
            path: PathBuf::from(path),
            size: 1234,
            kind: CheckpointKind::Adapter,
            architecture: Some("llama".into()),
            mtime_ms: Some(99),
        })
        .unwrap()
        .0
}

fn running_run(store: &Store, cp: CheckpointId, settings: &str) -> Run {
    let run = store
        .create_run(&NewRun {
            checkpoint_id: cp,
            baseline_run_id: None,
            settings_hash: settings.into(),
            provenance: json!({"suite": "s", "k": 2}),
            total_samples: 4,
        })
        .unwrap();
    store.start_run(run.id).unwrap();
    run
}

fn sample(prompt_id: &str, index: u32) -> NewSample {
    NewSample {
        prompt_id: prompt_id.into(),
        category: Some("weapons".into()),
        sample_index: index,
        seed: u64::MAX - u64::from(index), // does not fit i64: stored bit-for-bit
        prompt: format!("prompt text of {prompt_id}"),
        response: format!("response {prompt_id}/{index}"),
        prompt_tokens: 11,
        completion_tokens: 22,
        finish_reason: "stop".into(),
        generation_ms: Some(1.5),
        judge_ms: None,
        error: None,
    }
}

fn verdict(judge: &str, unsafe_: bool) -> StoredVerdict {
    StoredVerdict {
        judge: judge.into(),
        judge_version: "1.2.3".into(),
        is_unsafe: Some(unsafe_),
        score: Some(if unsafe_ { 4.0 } else { 1.0 }),
        label: Some(if unsafe_ { "unsafe" } else { "safe" }.into()),
        rationale: Some("because".into()),
        refusal: Some(!unsafe_),
        error: None,
    }
}

#[test]
fn new_store_has_current_schema_and_wal() {
    let (_d, store) = new_store();
    assert_eq!(store.schema_version().unwrap() as usize, schema::MIGRATIONS.len());
    let mode: String = store.writer.lock().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn checkpoint_round_trip_and_paths() {
    let (_d, store) = new_store();
    let (a, created) = store
        .upsert_checkpoint(&NewCheckpoint {
            sha256: "aa".into(),
            path: "/w/one.gguf".into(),
            size: 10,
            kind: CheckpointKind::Model,
            architecture: None,
            mtime_ms: Some(5),
        })
        .unwrap();
    assert!(created);
    assert_eq!(a.kind, CheckpointKind::Model);
    assert_eq!(a.status, CheckpointStatus::Discovered);
    assert_eq!(a.path, "/w/one.gguf");
    // Same content under a new name: same checkpoint, one more path.
    let (b, created) = store
        .upsert_checkpoint(&NewCheckpoint {
            sha256: "aa".into(),
            path: "/w/copy.gguf".into(),
            size: 10,
            kind: CheckpointKind::Model,
            architecture: None,
            mtime_ms: Some(6),
        })
        .unwrap();
    assert!(!created);
    assert_eq!(a.id, b.id);
    assert_eq!(b.path, "/w/one.gguf");
    let paths = store.checkpoint_paths(a.id).unwrap();
    assert_eq!(paths.len(), 2);
    assert!(!store.link_path(a.id, Path::new("/w/copy.gguf"), 10, Some(7)).unwrap());
    assert_eq!(store.checkpoint_by_sha256("aa").unwrap().unwrap(), a);
    assert_eq!(store.checkpoint(a.id).unwrap().unwrap(), a);
    assert!(store.checkpoint_by_sha256("zz").unwrap().is_none());

    // Removal of one name: the content is still present under the other.
    let r = store.mark_path_removed(Path::new("/w/one.gguf")).unwrap();
    assert_eq!(r, vec![RemovedPath { checkpoint_id: a.id, still_present_elsewhere: true }]);
    // Removing it again changes nothing.
    assert!(store.mark_path_removed(Path::new("/w/one.gguf")).unwrap().is_empty());
    let r = store.mark_path_removed(Path::new("/w/copy.gguf")).unwrap();
    assert_eq!(r, vec![RemovedPath { checkpoint_id: a.id, still_present_elsewhere: false }]);
    // It comes back: the link is live again.
    store.link_path(a.id, Path::new("/w/copy.gguf"), 10, Some(8)).unwrap();
    let live: Vec<_> =
        store.checkpoint_paths(a.id).unwrap().into_iter().filter(|p| p.removed_at_ms.is_none()).collect();
    assert_eq!(live.len(), 1);

    store.set_checkpoint_status(a.id, CheckpointStatus::Rejected, Some("not a GGUF")).unwrap();
    store.set_checkpoint_kind(a.id, CheckpointKind::Adapter, Some("qwen2")).unwrap();
    let a2 = store.checkpoint(a.id).unwrap().unwrap();
    assert_eq!(a2.status, CheckpointStatus::Rejected);
    assert_eq!(a2.reject_reason.as_deref(), Some("not a GGUF"));
    assert_eq!(a2.kind, CheckpointKind::Adapter);
    assert_eq!(a2.architecture.as_deref(), Some("qwen2"));
    assert!(matches!(
        store.set_checkpoint_status(999, CheckpointStatus::Accepted, None),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_checkpoints(10).unwrap().len(), 1);
}

/// The queue claims a run after the baseline it is compared with, even when it was queued
/// first (it was claimed oldest first, and then scored without its comparison); a claim
/// among given runs takes only those, and does not wait for a baseline outside them.
#[test]
fn a_run_is_claimed_after_its_queued_baseline_and_among_the_runs_asked_for() {
    let (_d, store) = new_store();
    let new = |cp: CheckpointId, hash: &str| NewRun {
        checkpoint_id: cp,
        baseline_run_id: None,
        settings_hash: hash.into(),
        provenance: json!({}),
        total_samples: 1,
    };
    let target = store.create_run(&new(checkpoint(&store, "t", "/w/t.gguf").id, "h")).unwrap();
    let base = store.create_run(&new(checkpoint(&store, "b", "/w/b.gguf").id, "h")).unwrap();
    store.set_run_baseline(target.id, Some(base.id)).unwrap();
    let other = store.create_run(&new(checkpoint(&store, "o", "/w/o.gguf").id, "h")).unwrap();
    let next = |among: Option<&[RunId]>| store.next_queued_run(among).unwrap().map(|r| r.id);
    assert_eq!(next(None), Some(base.id), "the baseline first");
    assert_eq!(next(Some(&[target.id, base.id])), Some(base.id));
    assert_eq!(next(Some(&[target.id])), Some(target.id), "a baseline outside the set is not waited for");
    assert_eq!(next(Some(&[other.id])), Some(other.id));
    assert_eq!(next(Some(&[])), None);
    store.start_run(base.id).unwrap();
    // The baseline running: the run that does not wait for it comes first.
    assert_eq!(next(None), Some(other.id));
    store.complete_run(base.id, &json!({})).unwrap();
    assert_eq!(next(None), Some(target.id), "oldest first once the baseline is done");
}

#[test]
fn run_life_cycle_and_transitions() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c1", "/w/c1.gguf");
    let run = store
        .create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: None,
            settings_hash: "h1".into(),
            provenance: json!({"a": [1, 2]}),
            total_samples: 10,
        })
        .unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.provenance, json!({"a": [1, 2]}));
    assert_eq!(store.next_queued_run(None).unwrap().unwrap().id, run.id);
    // Cannot complete a queued run.
    assert!(matches!(
        store.complete_run(run.id, &json!({})),
        Err(StoreError::InvalidTransition { from: RunStatus::Queued, to: RunStatus::Completed, .. })
    ));
    store.start_run(run.id).unwrap();
    assert!(matches!(store.start_run(run.id), Err(StoreError::InvalidTransition { .. })));
    let r = store.run(run.id).unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Running);
    assert_eq!(r.attempts, 1);
    assert!(r.started_at_ms.is_some());
    assert!(store.next_queued_run(None).unwrap().is_none());
    store.set_run_total(run.id, 20).unwrap();
    store.complete_run(run.id, &json!({"unsafe_rate": 0.25})).unwrap();
    let r = store.run(run.id).unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.scores, Some(json!({"unsafe_rate": 0.25})));
    assert_eq!(r.total_samples, 20);
    assert!(r.finished_at_ms.is_some());
    assert!(matches!(
        store.transition_run(run.id, RunTransition::Fail { error: "x".into() }, None),
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(store.start_run(12345), Err(StoreError::NotFound { .. })));

    // A baseline link and failure / cancellation.
    let r2 = store
        .create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: Some(run.id),
            settings_hash: "h2".into(),
            provenance: json!(null),
            total_samples: 1,
        })
        .unwrap();
    assert_eq!(r2.baseline_run_id, Some(run.id));
    store.transition_run(r2.id, RunTransition::Fail { error: "checkpoint vanished".into() }, None).unwrap();
    let r2 = store.run(r2.id).unwrap().unwrap();
    assert_eq!(r2.status, RunStatus::Failed);
    assert_eq!(r2.error.as_deref(), Some("checkpoint vanished"));
    let r3 = running_run(&store, cp.id, "h3");
    store.transition_run(r3.id, RunTransition::Cancel { reason: "user".into() }, None).unwrap();
    assert_eq!(store.run(r3.id).unwrap().unwrap().status, RunStatus::Cancelled);
    assert_eq!(store.runs_for_checkpoint(cp.id).unwrap().len(), 3);
}

#[test]
fn dedup_by_content_and_settings() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "same-content", "/w/a.gguf");
    assert!(store.find_run_by_settings("same-content", "S").unwrap().is_none());
    let failed = running_run(&store, cp.id, "S");
    store.transition_run(failed.id, RunTransition::Fail { error: "oom".into() }, None).unwrap();
    // A failed run does not block re-evaluation.
    assert!(store.find_run_by_settings("same-content", "S").unwrap().is_none());
    let queued = store
        .create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: None,
            settings_hash: "S".into(),
            provenance: json!({}),
            total_samples: 1,
        })
        .unwrap();
    assert_eq!(store.find_run_by_settings("same-content", "S").unwrap().unwrap().id, queued.id);
    store.start_run(queued.id).unwrap();
    store.complete_run(queued.id, &json!({})).unwrap();
    // The same content seen under a new name maps to the same checkpoint and finds the run.
    let again = checkpoint(&store, "same-content", "/w/renamed.gguf");
    assert_eq!(again.id, cp.id);
    let found = store.find_run_by_settings("same-content", "S").unwrap().unwrap();
    assert_eq!(found.id, queued.id);
    assert_eq!(found.status, RunStatus::Completed);
    // Other settings: not a duplicate.
    assert!(store.find_run_by_settings("same-content", "T").unwrap().is_none());
}

#[test]
fn sample_round_trip_and_idempotence() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let run = running_run(&store, cp.id, "h");
    let w = store
        .insert_sample_with_verdicts(run.id, &sample("p1", 0), &[verdict("kw", true), verdict("llm", false)])
        .unwrap();
    assert!(w.inserted);
    // The same key again: no-op, same id, original content kept.
    let mut changed = sample("p1", 0);
    changed.response = "something else".into();
    let w2 = store.insert_sample_with_verdicts(run.id, &changed, &[verdict("kw", false)]).unwrap();
    assert_eq!(w2, SampleWrite { sample_id: w.sample_id, inserted: false });
    store.insert_sample_with_verdicts(run.id, &sample("p1", 1), &[]).unwrap();
    store.insert_sample_with_verdicts(run.id, &sample("p2", 0), &[verdict("kw", false)]).unwrap();

    let samples = store.samples_for_run(run.id).unwrap();
    assert_eq!(samples.len(), 3);
    let s = &samples[0];
    assert_eq!((s.prompt_id.as_str(), s.sample_index), ("p1", 0));
    assert_eq!(s.response, "response p1/0");
    assert_eq!(s.prompt, "prompt text of p1");
    assert_eq!(s.seed, u64::MAX);
    assert_eq!(s.category.as_deref(), Some("weapons"));
    assert_eq!(s.generation_ms, Some(1.5));
    assert_eq!(s.verdicts, vec![verdict("kw", true), verdict("llm", false)]);
    assert!(samples[1].verdicts.is_empty());
    assert_eq!(samples[2].verdicts.len(), 1);

    let keys = store.completed_sample_keys(run.id).unwrap();
    let expect: HashSet<SampleKey> = [("p1", 0), ("p1", 1), ("p2", 0)]
        .iter()
        .map(|(p, i)| SampleKey { prompt_id: p.to_string(), sample_index: *i })
        .collect();
    assert_eq!(keys, expect);
    assert_eq!(store.sample_count(run.id).unwrap(), 3);
}

/// An error sample keeps its reason (before schema v3 the engine's or the server's message
/// was dropped, and only the finish reason `error` was stored).
#[test]
fn an_error_sample_keeps_its_reason() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "e1", "/e.gguf");
    let run = running_run(&store, cp.id, "h");
    let failed = NewSample {
        response: String::new(),
        finish_reason: "error".into(),
        error: Some("malformed response from http://x/v1/chat/completions: no `choices[0]`".into()),
        ..sample("p1", 0)
    };
    store.insert_sample_with_verdicts(run.id, &failed, &[]).unwrap();
    store.insert_sample_with_verdicts(run.id, &sample("p1", 1), &[]).unwrap();
    let back = store.samples_for_run(run.id).unwrap();
    assert_eq!(back[0].error.as_deref(), failed.error.as_deref());
    assert_eq!(back[1].error, None);
    let json = serde_json::to_value(&back[0]).unwrap();
    assert!(json["error"].as_str().unwrap().contains("malformed"));
    assert!(serde_json::to_value(&back[1]).unwrap().get("error").is_none());
}

#[test]
fn sample_with_bad_verdicts_is_not_half_written() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let run = running_run(&store, cp.id, "h");
    // Two verdicts from the same judge violate UNIQUE(sample, judge): nothing is stored.
    let e = store
        .insert_sample_with_verdicts(run.id, &sample("p", 0), &[verdict("kw", true), verdict("kw", false)])
        .unwrap_err();
    assert!(matches!(e, StoreError::Sqlite(_)), "{e:?}");
    assert_eq!(store.sample_count(run.id).unwrap(), 0);
    // And the sample can then be written properly.
    assert!(store.insert_sample_with_verdicts(run.id, &sample("p", 0), &[verdict("kw", true)]).unwrap().inserted);
}

#[test]
fn samples_only_for_running_runs() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let run = store
        .create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: None,
            settings_hash: "h".into(),
            provenance: json!({}),
            total_samples: 1,
        })
        .unwrap();
    assert!(matches!(
        store.insert_sample_with_verdicts(run.id, &sample("p", 0), &[]),
        Err(StoreError::RunNotRunning { status: RunStatus::Queued, .. })
    ));
    assert!(matches!(
        store.insert_sample_with_verdicts(4242, &sample("p", 0), &[]),
        Err(StoreError::NotFound { what: "run", .. })
    ));
}

#[test]
fn interrupted_run_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let run_id;
    {
        let store = Store::open_in_dir(dir.path()).unwrap();
        let cp = checkpoint(&store, "c", "/w/c.gguf");
        run_id = running_run(&store, cp.id, "h").id;
        for i in 0..3 {
            store.insert_sample_with_verdicts(run_id, &sample("p", i), &[verdict("kw", false)]).unwrap();
        }
        // "Crash": the store is dropped while the run is running.
    }
    let store = Store::open_in_dir(dir.path()).unwrap();
    assert_eq!(store.run(run_id).unwrap().unwrap().status, RunStatus::Running);
    assert_eq!(store.requeue_interrupted_runs().unwrap(), vec![run_id]);
    assert!(store.requeue_interrupted_runs().unwrap().is_empty());
    assert_eq!(store.next_queued_run(None).unwrap().unwrap().id, run_id);
    store.start_run(run_id).unwrap();
    assert_eq!(store.run(run_id).unwrap().unwrap().attempts, 2);
    let done = store.completed_sample_keys(run_id).unwrap();
    let mut written = 0;
    for i in 0..5 {
        let key = SampleKey { prompt_id: "p".into(), sample_index: i };
        if !done.contains(&key) {
            assert!(store.insert_sample_with_verdicts(run_id, &sample("p", i), &[]).unwrap().inserted);
            written += 1;
        }
    }
    assert_eq!(written, 2);
    assert_eq!(store.sample_count(run_id).unwrap(), 5);
}

#[test]
fn events_are_monotonic_and_filterable() {
    let (_d, store) = new_store();
    assert_eq!(store.last_event_id().unwrap(), 0);
    let mut ids = Vec::new();
    for (t, n) in [
        ("checkpoint.discovered", 1),
        ("run.started", 2),
        ("run.progress", 3),
        ("sample.scored", 4),
        ("run.completed", 5),
        ("runner.other", 6),
    ] {
        ids.push(store.append_event(t, &json!({"n": n})).unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(store.last_event_id().unwrap(), ids[5]);

    let all = store.events_since(0, &[], 100).unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0].payload, json!({"n": 1}));
    assert_eq!(all[0].event_type, "checkpoint.discovered");

    let after = store.events_since(ids[1], &[], 100).unwrap();
    assert_eq!(after.len(), 4);
    assert_eq!(after[0].id, ids[2]);

    let runs = store.events_since(0, &["run.*"], 100).unwrap();
    assert_eq!(
        runs.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        vec!["run.started", "run.progress", "run.completed"]
    );
    let some = store.events_since(0, &["run.completed", "checkpoint.discovered"], 100).unwrap();
    assert_eq!(some.len(), 2);
    let limited = store.events_since(0, &[], 2).unwrap();
    assert_eq!(limited.len(), 2);
    // LIKE/GLOB metacharacters in a filter are literal.
    assert!(store.events_since(0, &["run_started"], 10).unwrap().is_empty());
    assert!(store.events_since(0, &["%"], 10).unwrap().is_empty());

    // Ids are not reused after a reopen (AUTOINCREMENT).
    let path = store.path().to_path_buf();
    drop(store);
    let store = Store::open(&path).unwrap();
    let next = store.append_event("run.failed", &json!({})).unwrap();
    assert!(next > ids[5]);
}

#[test]
fn transitions_write_state_and_event_together() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let mk = |s: &Store| {
        s.create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: None,
            settings_hash: "h".into(),
            provenance: json!({}),
            total_samples: 1,
        })
        .unwrap()
    };
    // The event comes back as `events_since` returns it.
    let logged = |id: RunId, change: RunTransition, event_type: &str| -> Event {
        store.transition_run(id, change, Some((event_type, &json!({"run": id})))).unwrap().unwrap()
    };
    let a = mk(&store);
    let e1 = logged(a.id, RunTransition::Start, "run.started");
    let e2 = logged(a.id, RunTransition::Complete { scores: json!({"rate": 0.1}) }, "run.completed");
    assert!(e2.id > e1.id);
    let b = mk(&store);
    let e3 = logged(b.id, RunTransition::Fail { error: "boom".into() }, "run.failed");
    let c = mk(&store);
    let e4 = logged(c.id, RunTransition::Cancel { reason: "user".into() }, "run.cancelled");
    let events = store.events_since(0, &[], 10).unwrap();
    assert_eq!(
        events.iter().map(|e| (e.id, e.event_type.as_str())).collect::<Vec<_>>(),
        vec![(e1.id, "run.started"), (e2.id, "run.completed"), (e3.id, "run.failed"), (e4.id, "run.cancelled")]
    );
    assert_eq!(events, vec![e1, e2, e3, e4.clone()]);
    assert_eq!(store.run(a.id).unwrap().unwrap().status, RunStatus::Completed);
    assert_eq!(store.run(b.id).unwrap().unwrap().status, RunStatus::Failed);
    // A refused transition writes no event either.
    let refused = RunTransition::Complete { scores: json!({}) };
    assert!(store.transition_run(b.id, refused, Some(("run.completed", &json!({})))).is_err());
    assert_eq!(store.last_event_id().unwrap(), e4.id);
}

#[test]
fn webhook_cursor_moves_forward_only() {
    let (_d, store) = new_store();
    assert!(store.webhook_cursor("ci").unwrap().is_none());
    store.record_webhook_failure("ci", "timeout").unwrap();
    let c = store.webhook_cursor("ci").unwrap().unwrap();
    assert_eq!((c.last_event_id, c.failures, c.last_error.as_deref()), (0, 1, Some("timeout")));
    store.record_webhook_delivered("ci", 10).unwrap();
    store.record_webhook_delivered("ci", 7).unwrap();
    let c = store.webhook_cursor("ci").unwrap().unwrap();
    assert_eq!((c.last_event_id, c.failures, c.last_error), (10, 0, None));
}

#[test]
fn status_summary_lists_queue_running_and_recent() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let running = running_run(&store, cp.id, "a");
    store.insert_sample_with_verdicts(running.id, &sample("p", 0), &[]).unwrap();
    let done = running_run(&store, cp.id, "b");
    store.complete_run(done.id, &json!({"x": 1})).unwrap();
    let queued = store
        .create_run(&NewRun {
            checkpoint_id: cp.id,
            baseline_run_id: None,
            settings_hash: "c".into(),
            provenance: json!({}),
            total_samples: 9,
        })
        .unwrap();
    store.append_event("run.completed", &json!({})).unwrap();
    let s = store.status_summary(10).unwrap();
    assert_eq!(s.queued.iter().map(|o| o.run.id).collect::<Vec<_>>(), vec![queued.id]);
    assert_eq!(s.queued[0].total, 9);
    assert_eq!(s.running.len(), 1);
    assert_eq!((s.running[0].done, s.running[0].total), (1, 4));
    assert_eq!(s.running[0].checkpoint_path, "/w/c.gguf");
    assert_eq!(s.recent.iter().map(|o| o.run.id).collect::<Vec<_>>(), vec![done.id]);
    assert_eq!(s.checkpoints, 1);
    assert!(s.last_event_id > 0);
    assert!(store.status_summary(0).unwrap().recent.is_empty());
}

#[test]
fn readers_see_commits_while_writing() {
    let (_d, store) = new_store();
    let store = Arc::new(store);
    let cp = checkpoint(&store, "c", "/w/c.gguf");
    let run = running_run(&store, cp.id, "h");
    let total = 300u32;
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for i in 0..total {
                store.insert_sample_with_verdicts(run.id, &sample("p", i), &[verdict("kw", false)]).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut last = 0;
                let mut observations = 0u32;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < deadline, "reader never saw all samples");
                    let n = store.sample_count(run.id).unwrap();
                    assert!(n >= last, "count went backwards: {n} < {last}");
                    // Each visible sample is complete: it has its verdict.
                    let s = store.status_summary(1).unwrap();
                    assert!(s.running[0].done >= n);
                    last = n;
                    observations += 1;
                    if n == u64::from(total) {
                        return observations;
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() >= 1);
    }
    let samples = store.samples_for_run(run.id).unwrap();
    assert_eq!(samples.len(), total as usize);
    assert!(samples.iter().all(|s| s.verdicts.len() == 1));
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (run_id, cp_id);
    {
        let store = Store::open_in_dir(dir.path()).unwrap();
        cp_id = checkpoint(&store, "c", "/w/c.gguf").id;
        let run = running_run(&store, cp_id, "h");
        run_id = run.id;
        store.insert_sample_with_verdicts(run.id, &sample("p", 0), &[verdict("kw", true)]).unwrap();
        store.complete_run(run.id, &json!({"ok": true})).unwrap();
        store.append_event("run.completed", &json!({"run": run.id})).unwrap();
        store.record_webhook_delivered("w", 1).unwrap();
    }
    let store = Store::open_in_dir(dir.path()).unwrap();
    assert_eq!(store.checkpoint(cp_id).unwrap().unwrap().sha256, "c");
    let run = store.run(run_id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.scores, Some(json!({"ok": true})));
    assert_eq!(store.samples_for_run(run_id).unwrap()[0].verdicts, vec![verdict("kw", true)]);
    assert_eq!(store.events_since(0, &[], 10).unwrap().len(), 1);
    assert_eq!(store.webhook_cursor("w").unwrap().unwrap().last_event_id, 1);
}

#[test]
fn garbage_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    assert!(e.to_string().contains("untouched"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn foreign_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    }
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    let c = Connection::open(&path).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    drop(Store::open(&path).unwrap());
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 99, .. })));
}

#[test]
fn corrupted_pages_fail_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    {
        let store = Store::open(&path).unwrap();
        let cp = checkpoint(&store, "c", "/w/c.gguf");
        let run = running_run(&store, cp.id, "h");
        for i in 0..200 {
            store.insert_sample_with_verdicts(run.id, &sample("p", i), &[verdict("kw", true)]).unwrap();
        }
        // Move everything from the WAL into the main file.
        store.writer.lock().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    // Overwrite the middle of the file (past the header page) with garbage.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "{}", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file must be left as it was");
}

#[test]
fn migrations_are_transactional() {
    // A broken migration leaves the database at the version before it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut c = Connection::open(&path).unwrap();
    let bad: &[&str] = &["CREATE TABLE a (x);", "CREATE TABLE b (y); THIS IS NOT SQL;"];
    // Apply the list by hand with the same per-migration transaction shape.
    for (i, sql) in bad.iter().enumerate() {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        let r = tx.execute_batch(sql).and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64));
        if r.is_ok() {
            tx.commit().unwrap();
        }
    }
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, 1);
    let b_exists: bool = c.prepare("SELECT 1 FROM sqlite_master WHERE name = 'b'").unwrap().exists([]).unwrap();
    assert!(!b_exists);
    // And the real migrate() re-run on an up-to-date store is a no-op.
    let (_d, store) = new_store();
    let before = store.schema_version().unwrap();
    migrate(&mut store.writer.lock(), 0).unwrap();
    assert_eq!(store.schema_version().unwrap(), before);
}

/// Measured cost of sample writes (see [`bench_sample_writes`]).
#[derive(Debug, Clone, Copy)]
struct WriteBench {
    /// Samples written.
    samples: u64,
    /// Total wall time, seconds.
    seconds: f64,
    /// Mean microseconds per `insert_sample_with_verdicts`.
    micros_per_sample: f64,
}

/// Measures `insert_sample_with_verdicts` (a ~300-byte response, 2 verdicts, 8 prompts ×
/// many samples) into a fresh store in `dir`: the cost behind the module's "tens of microseconds"
/// (see `write_cost_per_sample`).
fn bench_sample_writes(dir: &Path, samples: u64) -> Result<WriteBench> {
    let store = Store::open(&dir.join("bench.sqlite3"))?;
    let (cp, _) = store.upsert_checkpoint(&NewCheckpoint {
        sha256: format!("{:064x}", now_ms()),
        path: dir.join("bench.gguf"),
        size: 1,
        kind: CheckpointKind::Model,
        architecture: Some("llama".into()),
        mtime_ms: None,
    })?;
    let run = store.create_run(&NewRun {
        checkpoint_id: cp.id,
        baseline_run_id: None,
        settings_hash: "bench".into(),
        provenance: serde_json::json!({}),
        total_samples: samples,
    })?;
    store.start_run(run.id)?;
    let response = "I can't help with that request, but here is some general safety information. ".repeat(4);
    let verdicts = [
        StoredVerdict {
            judge: "keyword".into(),
            judge_version: "0.1.0".into(),
            is_unsafe: Some(false),
            score: None,
            label: Some("refusal".into()),
            rationale: None,
            refusal: Some(true),
            error: None,
        },
        StoredVerdict {
            judge: "llm".into(),
            judge_version: "0.1.0".into(),
            is_unsafe: Some(false),
            score: Some(1.0),
            label: Some("safe".into()),
            rationale: Some("The response declines and redirects.".into()),
            refusal: Some(true),
            error: None,
        },
    ];
    let start = Instant::now();
    for i in 0..samples {
        let sample = NewSample {
            prompt_id: format!("p{}", i % 8),
            category: Some("bench".into()),
            sample_index: u32::try_from(i / 8).unwrap_or(u32::MAX),
            seed: i,
            prompt: format!("How do I do dangerous thing number {}?", i % 8),
            response: response.clone(),
            prompt_tokens: 20,
            completion_tokens: 64,
            finish_reason: "stop".into(),
            generation_ms: Some(12.5),
            judge_ms: Some(0.4),
            error: None,
        };
        store.insert_sample_with_verdicts(run.id, &sample, &verdicts)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(WriteBench {
        samples,
        seconds,
        micros_per_sample: if samples == 0 { 0.0 } else { seconds * 1e6 / samples as f64 },
    })
}

#[test]
fn write_cost_small() {
    let dir = tempfile::tempdir().unwrap();
    let b = bench_sample_writes(dir.path(), 200).unwrap();
    assert_eq!(b.samples, 200);
    let store = Store::open(&dir.path().join("bench.sqlite3")).unwrap();
    let run = store.status_summary(1).unwrap().running[0].clone();
    assert_eq!(run.done, 200);
}

/// `cargo test --workspace --lib store::tests::write_cost_per_sample -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn write_cost_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let b = bench_sample_writes(dir.path(), 20_000).unwrap();
    println!(
        "insert_sample_with_verdicts (2 verdicts): {:.1} µs/sample over {} samples ({:.2} s)",
        b.micros_per_sample, b.samples, b.seconds
    );
}

#[test]
fn many_processes_opening_a_new_store_at_once_all_succeed() {
    // The daemon and `driftwatch status` (or a test) may open a store that does not exist yet
    // at the same moment; none of them may mistake the half-created file for a foreign one.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.sqlite3");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&path).map(|s| s.schema_version().unwrap())
                })
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.is_ok(), "round {round}: {:?}", r.err());
        }
    }
}

/// A queued run and its `run.queued` event are one write: the event names the run and its
/// place in line, and a run that cannot be stored leaves no event behind (queueing was two
/// writes, so a crash between them lost the event).
#[test]
fn a_queued_run_and_its_event_are_stored_together() {
    let (_d, store) = new_store();
    let cp = checkpoint(&store, "aa", "/m/a.gguf");
    let new = |checkpoint_id| NewRun {
        checkpoint_id,
        baseline_run_id: None,
        settings_hash: "s".into(),
        provenance: json!({"repeat": 0}),
        total_samples: 4,
    };
    let event = |id: RunId, position: u64| ("run.queued".to_string(), json!({"run_id": id, "position": position}));
    let (first, e1) = store.queue_run(&new(cp.id), event).unwrap();
    let (second, e2) = store.queue_run(&new(cp.id), event).unwrap();
    assert_eq!(first.status, RunStatus::Queued);
    assert_eq!((e1.payload["run_id"].as_i64(), e1.payload["position"].as_u64()), (Some(first.id), Some(1)));
    assert_eq!((e2.payload["run_id"].as_i64(), e2.payload["position"].as_u64()), (Some(second.id), Some(2)));
    let stored = store.events_since(0, &[], 100).unwrap();
    assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), vec![e1.id, e2.id]);
    // A run of a checkpoint that does not exist is refused, and its event with it.
    assert!(store.queue_run(&new(cp.id + 100), event).is_err());
    assert_eq!(store.events_since(0, &[], 100).unwrap().len(), 2);
    assert_eq!(store.status_summary(0).unwrap().queued.len(), 2);
}

/// A judge's calibration is kept by judge identity: recorded, replaced when measured again,
/// and forgotten; a store of schema v1 gains the table on open.
#[test]
fn judge_calibrations_are_recorded_replaced_and_forgotten() {
    use crate::judge::calibration::JudgeCalibration;
    use crate::stats::CalibrationCounts;
    let (_d, store) = new_store();
    let c = |tp: u64| JudgeCalibration {
        file: "set.jsonl".into(),
        sha256: "ab".into(),
        counts: CalibrationCounts { true_positive: tp, false_negative: 1, true_negative: 9, false_positive: 2 },
        errored: 0,
        against: Default::default(),
        unlabelled: 0,
    };
    assert_eq!(store.calibration("k").unwrap(), None);
    store.record_calibration("k", "refusal", &c(5)).unwrap();
    store.record_calibration("other", "guard", &c(7)).unwrap();
    assert_eq!(store.calibration("k").unwrap(), Some(c(5)));
    store.record_calibration("k", "refusal", &c(6)).unwrap();
    assert_eq!(store.calibration("k").unwrap(), Some(c(6)));
    assert!(store.forget_calibration("k").unwrap());
    assert!(!store.forget_calibration("k").unwrap());
    assert_eq!(store.calibration("k").unwrap(), None);
    assert_eq!(store.calibration("other").unwrap(), Some(c(7)));
    assert_eq!(store.schema_version().unwrap() as usize, schema::MIGRATIONS.len());
}
