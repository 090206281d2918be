//! The run queue, the one owner of a run's life cycle: runs are queued (each with its
//! `run.queued` event, in one transaction) for a checkpoint, one per repeat unless an
//! equivalent run exists; claimed oldest first, a run whose baseline is still to run after
//! that baseline; executed by the runner; and queued again when the settings changed under
//! them. The daemon claims every queued run; a one-shot `eval` claims only its own, through
//! the same life cycle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::runner::{self, RunOutcome};
use super::Ctx;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{CheckpointId, CheckpointRecord, NewRun, Run, RunId, Store, StoreError};

/// Queued runs: enqueue, claim, and the wake-up between them.
pub(crate) struct RunQueue {
    store: Arc<Store>,
    bus: EventBus,
    metrics: Arc<Metrics>,
    /// Wakes a waiting [`RunQueue::claim`] when a run is queued.
    wake: Notify,
}

impl RunQueue {
    pub fn new(store: Arc<Store>, bus: EventBus, metrics: Arc<Metrics>) -> RunQueue {
        RunQueue { store, bus, metrics, wake: Notify::new() }
    }

    /// Queues a run with its `run.queued` event, stored together (blocking: call from the
    /// blocking pool), and wakes the runner.
    pub fn enqueue(&self, new: &NewRun, path: &str) -> Result<Run, StoreError> {
        let (run, _) = self.bus.queue_blocking(new, path)?;
        self.update_length();
        self.wake.notify_one();
        Ok(run)
    }

    /// The next of `runs` to execute, if any is queued (never waits): oldest first, a run
    /// whose baseline is among the queued ones after it.
    pub async fn claim_among(&self, runs: &[RunId]) -> Result<Option<Run>, StoreError> {
        let store = Arc::clone(&self.store);
        let runs = runs.to_vec();
        tokio::task::spawn_blocking(move || store.next_queued_run(Some(&runs)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The next queued run (oldest first, a run whose baseline is still queued or running
    /// after it), waiting for one until `stop` (then `None`). A store that cannot be read is
    /// logged and tried again.
    pub async fn claim(&self, stop: &CancellationToken) -> Option<Run> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // Registered before looking, so a run queued in between still wakes us.
            let woken = self.wake.notified();
            let store = Arc::clone(&self.store);
            match tokio::task::spawn_blocking(move || store.next_queued_run(None)).await {
                Ok(Ok(Some(run))) => return Some(run),
                Ok(Ok(None)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = woken => {}
                        // Belt and braces: look at the queue now and then.
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the run queue");
                    tokio::select! { _ = stop.cancelled() => return None, _ = tokio::time::sleep(Duration::from_secs(2)) => {} }
                }
                Err(e) => {
                    tracing::error!(error = %e, "run queue task failed");
                    return None;
                }
            }
        }
    }

    /// Publishes the queue's length as a metric (blocking).
    pub fn update_length(&self) {
        let queued = self.store.status_summary(0).map(|s| s.queued.len() as u64).unwrap_or(0);
        self.metrics.set_queue_length(queued);
    }
}

/// Executes queued runs one at a time until shutdown, or until the store cannot be written:
/// then the daemon cannot go on, and says why.
/// While the inference servers are unavailable, the queue waits `UNAVAILABLE_WAIT`, doubling
/// each time they still are, up to `UNAVAILABLE_WAIT_MAX`.
pub(super) async fn run_loop(ctx: Arc<Ctx>, stop: CancellationToken) -> Result<(), super::DaemonError> {
    let mut wait = UNAVAILABLE_WAIT;
    while let Some(run) = ctx.queue.claim(&stop).await {
        let id = run.id;
        match execute(&ctx, run, &stop).await {
            RunOutcome::StorageFault(reason) => return Err(super::DaemonError::StoreUnwritable(reason)),
            RunOutcome::Unavailable(reason) => {
                tracing::warn!(run = id, %reason, wait_s = wait.as_secs(), "the inference servers cannot take the run; it stays queued with its samples and resumes after the wait");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(UNAVAILABLE_WAIT_MAX);
            }
            _ => wait = UNAVAILABLE_WAIT,
        }
    }
    Ok(())
}

const UNAVAILABLE_WAIT: Duration = Duration::from_secs(5);
const UNAVAILABLE_WAIT_MAX: Duration = Duration::from_secs(300);

/// Executes a claimed run, then does what its end asks of the queue: a run that ended because
/// the settings changed under it has its checkpoint queued again under the new ones (it keeps
/// its samples); a completed base-model run tells the daemon's user what to do next.
pub(super) async fn execute(ctx: &Arc<Ctx>, run: Run, stop: &CancellationToken) -> RunOutcome {
    let id = run.id;
    let outcome = runner::run_one(&ctx.runner, run, stop).await;
    let _ = super::blocking(ctx, |c| c.queue.update_length()).await;
    match &outcome {
        RunOutcome::Requeue { checkpoint_id, path, .. } => requeue(ctx, *checkpoint_id, path.clone()).await,
        RunOutcome::Completed { base: true } if ctx.watching => baseline_ready(ctx, id),
        _ => {}
    }
    outcome
}

/// Queues a checkpoint's runs again under the current settings, from the file its run found.
async fn requeue(ctx: &Arc<Ctx>, checkpoint_id: CheckpointId, path: String) {
    let queued = super::blocking(ctx, move |c| -> Result<Vec<RunId>, StoreError> {
        let Some(ckpt) = c.store.checkpoint(checkpoint_id)? else { return Ok(Vec::new()) };
        Ok(queue_checkpoint(c, &ckpt, &path)?.0)
    })
    .await;
    match queued.and_then(|r| r) {
        Ok(runs) => tracing::info!(checkpoint = checkpoint_id, ?runs, "queued again under the new settings"),
        Err(e) => tracing::error!(checkpoint = checkpoint_id, error = %e, "cannot queue the checkpoint again"),
    }
}

/// The daemon's note once a baseline is ready.
fn baseline_ready(ctx: &Ctx, run: RunId) {
    let c = &ctx.eval.config;
    let folders: Vec<String> = c.daemon.watch.iter().map(|p| p.display().to_string()).collect();
    let api = if c.api.enabled {
        format!("; follow the results with `driftwatch subscribe --url http://{}`", c.api.listen)
    } else {
        String::new()
    };
    tracing::info!(
        "baseline ready (run {run}): drop GGUF models or LoRA adapters into {}{api}; `driftwatch report --run {run}` for the full report",
        folders.join(", "),
    );
}

/// Queues one run of `ckpt` per repeat under the current settings, unless an equivalent run
/// exists (blocking). Returns (queued, existing).
pub(super) fn queue_checkpoint(
    ctx: &Ctx,
    ckpt: &CheckpointRecord,
    path: &str,
) -> Result<(Vec<RunId>, Vec<RunId>), StoreError> {
    let mut queued = Vec::new();
    let mut existing_runs = Vec::new();
    let eval = &ctx.eval;
    let is_base = ckpt.sha256 == eval.base_sha256;
    let settings = ctx.settings();
    for repeat in 0..eval.config.sampling.repeats.max(1) {
        let hash = settings.hash(&ckpt.sha256, repeat);
        if let Some(existing) = ctx.store.find_run_by_settings(&ckpt.sha256, &hash)? {
            tracing::info!(run = existing.id, status = ?existing.status, "already evaluated under these settings; linked to the existing run");
            existing_runs.push(existing.id);
            continue;
        }
        let baseline = if is_base { None } else { settings.baseline_run(&ctx.store, repeat)? };
        let run = ctx.queue.enqueue(
            &NewRun {
                checkpoint_id: ckpt.id,
                baseline_run_id: baseline,
                settings_hash: hash,
                provenance: settings.provenance(ckpt, path, repeat).to_value(),
                total_samples: (eval.prompts.len() as u64) * u64::from(eval.first_k()),
            },
            path,
        )?;
        tracing::info!(run = run.id, repeat, "run queued");
        queued.push(run.id);
    }
    Ok((queued, existing_runs))
}
