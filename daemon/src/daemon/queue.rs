//! The run queue, the one owner of a run's place in line: runs are queued (each with its
//! `run.queued` event, in one transaction), claimed oldest first by the runner, and planned
//! for a checkpoint (one per repeat, unless an equivalent run exists) by intake and by the
//! runner alike when settings change under a run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{CheckpointRecord, NewRun, Run, RunId, Store, StoreError};

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

    /// The oldest queued run, waiting for one until `stop` (then `None`). A store that cannot
    /// be read is logged and tried again.
    pub async fn claim(&self, stop: &CancellationToken) -> Option<Run> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // Registered before looking, so a run queued in between still wakes us.
            let woken = self.wake.notified();
            let store = Arc::clone(&self.store);
            match tokio::task::spawn_blocking(move || store.next_queued_run()).await {
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

/// The base model's run of `repeat` under the current settings, if queued or done.
pub(super) fn baseline_run(ctx: &Ctx, repeat: u32) -> Result<Option<RunId>, StoreError> {
    Ok(ctx.store.find_run_by_settings(&ctx.base_sha256, &ctx.settings_hash(repeat))?.map(|r| r.id))
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
    let is_base = ckpt.sha256 == ctx.base_sha256;
    for repeat in 0..ctx.config.sampling.repeats.max(1) {
        let hash = ctx.settings_hash(repeat);
        if let Some(existing) = ctx.store.find_run_by_settings(&ckpt.sha256, &hash)? {
            tracing::info!(run = existing.id, status = ?existing.status, "already evaluated under these settings; linked to the existing run");
            existing_runs.push(existing.id);
            continue;
        }
        let baseline = if is_base { None } else { baseline_run(ctx, repeat)? };
        let k = ctx.config.sampling.adaptive().map(|a| a.min_samples).unwrap_or(ctx.config.sampling.samples);
        let run = ctx.queue.enqueue(
            &NewRun {
                checkpoint_id: ckpt.id,
                baseline_run_id: baseline,
                settings_hash: hash,
                provenance: ctx.provenance(ckpt, path, repeat).to_value(),
                total_samples: (ctx.prompts.len() as u64) * u64::from(k),
            },
            path,
        )?;
        tracing::info!(run = run.id, repeat, "run queued");
        queued.push(run.id);
    }
    Ok((queued, existing_runs))
}
