//! Intake: a settled file becomes a checkpoint record (or a rejection with its reason), and a
//! run is queued for it unless the same content was already evaluated under the same settings.
//!
//! The work is synchronous (file checks, hashing, SQLite) and runs on the blocking pool: the
//! async entry points hand it there whole, so no store call blocks an async worker thread.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Ctx, DaemonError};
use crate::checkpoint;
use crate::events::EventKind;
use crate::store::{CheckpointKind, CheckpointStatus, NewCheckpoint, RunId, StoreError};
use crate::watch::{WatchEvent, Watcher};

/// Follows the watcher until shutdown, or until the store cannot be written (then the daemon
/// cannot go on, and the file is taken in at the next start).
pub(super) async fn watch_loop(
    ctx: Arc<Ctx>,
    watcher: (Watcher, tokio::sync::mpsc::Receiver<WatchEvent>),
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let (watcher, mut rx) = watcher;
    let mut result = Ok(());
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
        };
        match ev {
            WatchEvent::Settled(f) => {
                let span = tracing::info_span!("checkpoint", path = %f.path.display());
                let (path, mtime) = (f.path.clone(), f.mtime_ms());
                let taken = super::blocking(&ctx, move |c| span.in_scope(|| take_file(c, &path, mtime))).await;
                match taken.and_then(|r| r) {
                    Ok(_) => {}
                    Err(e) if e.is_storage_fault() => {
                        result = Err(DaemonError::StoreUnwritable(e.to_string()));
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot record a checkpoint"),
                }
            }
            WatchEvent::Removed(path) => {
                let p = path.clone();
                let store = Arc::clone(&ctx.store);
                match tokio::task::spawn_blocking(move || store.mark_path_removed(&p)).await {
                    Ok(Ok(found)) if !found.is_empty() => {
                        tracing::info!(path = %path.display(), "checkpoint file removed")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot record a removed file"),
                    _ => {}
                }
                ctx.runner.file_removed(path);
            }
            WatchEvent::Error(e) => tracing::warn!(error = %e, "watcher"),
        }
    }
    watcher.shutdown().await;
    result
}

/// Records the base model and queues its runs under the current settings.
pub(super) async fn take_base(ctx: &Arc<Ctx>) -> Result<(), DaemonError> {
    super::blocking(ctx, take_base_now).await??;
    Ok(())
}

fn take_base_now(ctx: &Ctx) -> Result<(), DaemonError> {
    let path = ctx.eval.base_path.clone();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let new = NewCheckpoint {
        sha256: ctx.eval.base_sha256.clone(),
        path: path.clone(),
        size,
        kind: CheckpointKind::Model,
        architecture: Some(ctx.eval.base.architecture.clone()),
        mtime_ms: None,
    };
    let (ckpt, _) = ctx.store.upsert_checkpoint(&new)?;
    ctx.store.link_path(ckpt.id, &path, size, None)?;
    ctx.store.set_checkpoint_status(ckpt.id, CheckpointStatus::Accepted, None)?;
    super::queue::queue_checkpoint(ctx, &ckpt, &path.display().to_string())?;
    Ok(())
}

/// Takes in a file named by hand (the API's `POST /v1/evaluate`, `driftwatch eval`); `served`:
/// the name the `openai` backend's servers serve it under, for this daemon's life (each run
/// records it in its provenance, and a resumed run asks for what it recorded).
pub(crate) async fn take_path(
    ctx: &Arc<Ctx>,
    path: &Path,
    served: Option<crate::engine::remote::ServedAs>,
) -> Result<Taken, StoreError> {
    let path = path.to_owned();
    super::blocking(ctx, move |c| {
        let mtime = std::fs::metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .map(crate::watch::system_time_ms)
            .unwrap_or(0);
        take_file_served(c, &path, mtime, served)
    })
    .await?
}

/// Takes in a checkpoint that exists only on the `openai` backend's servers, by its served
/// name: its identity is the name (`served:NAME`, hashed), as a file's is its content.
pub(crate) async fn take_served(ctx: &Arc<Ctx>, served: crate::engine::remote::ServedAs) -> Result<Taken, StoreError> {
    super::blocking(ctx, move |c| take_served_now(c, &served)).await?
}

fn take_served_now(ctx: &Ctx, served: &crate::engine::remote::ServedAs) -> Result<Taken, StoreError> {
    let name = served.model.clone().unwrap_or_default();
    let path = std::path::PathBuf::from(crate::daemon::evaluation::served_path(&name));
    let sha = crate::daemon::evaluation::served_identity(&name);
    let new = NewCheckpoint {
        sha256: sha.clone(),
        path: path.clone(),
        size: 0,
        kind: CheckpointKind::Model,
        architecture: None,
        mtime_ms: None,
    };
    let (ckpt, created) = accept(ctx, &new, "served")?;
    tracing::info!(checkpoint = ckpt.id, served_model = %name, "served checkpoint taken in");
    let (queued, existing) = super::queue::queue_checkpoint(ctx, &ckpt, &path.display().to_string())?;
    Ok(Taken::Accepted { checkpoint_id: ckpt.id, kind: "served".into(), duplicate: !created, queued, existing })
}

/// What became of a file handed to intake.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Taken {
    /// The file was refused.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The file is a checkpoint; runs were queued unless equivalent ones exist.
    Accepted {
        /// Store id of the checkpoint.
        checkpoint_id: i64,
        /// `model` or `adapter`.
        kind: String,
        /// True when the content was known under another name.
        duplicate: bool,
        /// Runs queued now.
        queued: Vec<RunId>,
        /// Existing runs under the same settings (not evaluated again).
        existing: Vec<RunId>,
    },
}

/// Publishes an event from intake's blocking work; one that cannot be stored is logged (the
/// state it reports is in the store either way).
fn publish(ctx: &Ctx, kind: EventKind) {
    if let Err(e) = ctx.bus.publish_blocking(&kind) {
        tracing::error!(event = kind.type_name(), error = %e, "cannot store an event");
    }
}

fn reject(ctx: &Ctx, path: &Path, sha256: Option<String>, size: u64, reason: String) -> Result<Taken, StoreError> {
    tracing::warn!(reason = %reason, "checkpoint rejected");
    if let Some(sha) = sha256 {
        let new = NewCheckpoint {
            sha256: sha,
            path: path.to_owned(),
            size,
            kind: CheckpointKind::Unknown,
            architecture: None,
            mtime_ms: None,
        };
        let (c, _) = ctx.store.upsert_checkpoint(&new)?;
        // Content already accepted under another name stays accepted.
        if c.status != CheckpointStatus::Accepted {
            ctx.store.set_checkpoint_status(c.id, CheckpointStatus::Rejected, Some(&reason))?;
        }
    }
    publish(ctx, EventKind::CheckpointRejected { path: path.display().to_string(), reason: reason.clone() });
    Ok(Taken::Rejected { reason })
}

/// Records an accepted checkpoint under its path (its kind corrected if the content was known
/// as another), and publishes `checkpoint.discovered`. Returns it, and whether it is new.
fn accept(
    ctx: &Ctx,
    new: &NewCheckpoint,
    kind_name: &str,
) -> Result<(crate::store::CheckpointRecord, bool), StoreError> {
    let (ckpt, created) = ctx.store.upsert_checkpoint(new)?;
    ctx.store.link_path(ckpt.id, &new.path, new.size, new.mtime_ms)?;
    if ckpt.kind != new.kind {
        ctx.store.set_checkpoint_kind(ckpt.id, new.kind, new.architecture.as_deref())?;
    }
    ctx.store.set_checkpoint_status(ckpt.id, CheckpointStatus::Accepted, None)?;
    publish(
        ctx,
        EventKind::CheckpointDiscovered {
            checkpoint_id: ckpt.id,
            path: new.path.display().to_string(),
            sha256: new.sha256.clone(),
            kind: kind_name.to_owned(),
            size_bytes: new.size,
            duplicate: !created,
        },
    );
    Ok((ckpt, created))
}

/// Takes in one settled file (blocking: it reads the whole file).
fn take_file(ctx: &Ctx, path: &Path, mtime_ms: i64) -> Result<Taken, StoreError> {
    take_file_served(ctx, path, mtime_ms, None)
}

/// [`take_file`], with the name the servers serve it under, if given.
fn take_file_served(
    ctx: &Ctx,
    path: &Path,
    mtime_ms: i64,
    served: Option<crate::engine::remote::ServedAs>,
) -> Result<Taken, StoreError> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let sha = checkpoint::sha256_file(path).ok();
    let header = checkpoint::inspect(path).and_then(|c| {
        if c.is_adapter() {
            checkpoint::inspect_adapter_for(path, &ctx.eval.base)
        } else {
            Ok(c)
        }
    });
    let header = match header {
        Ok(h) => h,
        Err(e) => return reject(ctx, path, sha, size, e.to_string()),
    };
    let Some(sha) = sha else {
        return reject(ctx, path, None, size, "the file could not be read to the end".into());
    };
    let kind = if header.is_adapter() { CheckpointKind::Adapter } else { CheckpointKind::Model };
    if let Some(served) = served {
        ctx.eval.register_served(&sha, served);
    }
    let new = NewCheckpoint {
        sha256: sha.clone(),
        path: path.to_owned(),
        size,
        kind,
        architecture: Some(header.architecture.clone()),
        mtime_ms: Some(mtime_ms),
    };
    let (ckpt, created) = accept(ctx, &new, header.kind_name())?;
    tracing::info!(checkpoint = ckpt.id, kind = header.kind_name(), duplicate = !created, "checkpoint taken in");
    let ckpt = ctx.store.checkpoint(ckpt.id)?.unwrap_or(ckpt);
    let (queued, existing) = super::queue::queue_checkpoint(ctx, &ckpt, &path.display().to_string())?;
    Ok(Taken::Accepted {
        checkpoint_id: ckpt.id,
        kind: header.kind_name().to_owned(),
        duplicate: !created,
        queued,
        existing,
    })
}
