//! One-shot evaluation (`driftwatch eval`): the daemon's own parts — store, intake, the run
//! queue, run execution, scoring, events — driven for one checkpoint without watching folders
//! or serving the API. Its runs go through the queue's life cycle like the daemon's (it claims
//! only its own), so the same store and the same settings give the same runs and results: a
//! checkpoint already evaluated under these settings is not evaluated again, its stored scores
//! are used when they compare with the baseline asked for, and a run interrupted by Ctrl-C
//! resumes where it stopped the next time.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::runner::RunOutcome;
use super::{intake, queue, Ctx, DaemonError, DataDirLock};
use crate::config::Config;
use crate::scoring::{self, RunResult};
use crate::store::{Event, RunId, RunStatus};

/// What a one-shot evaluation tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum EvalNotice<'a> {
    /// A run is about to execute (its `run.started` event follows).
    Run {
        /// The run.
        run_id: RunId,
        /// The checkpoint's file name.
        checkpoint: &'a str,
        /// True for a baseline (base model) run.
        baseline: bool,
    },
    /// An event the evaluation published (progress included), in order.
    Event(&'a Event),
}

/// The callback that receives [`EvalNotice`]s.
pub type NoticeSink = Arc<dyn Fn(EvalNotice<'_>) + Send + Sync>;

/// What a checkpoint is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The base model's run under the same settings (evaluated first when missing).
    BaseModel,
    /// A stored, completed run.
    Run(RunId),
    /// No comparison (and the base model is not evaluated).
    None,
}

/// One evaluation to do.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The checkpoint: a GGUF model, or a LoRA adapter over the configured base model.
    pub checkpoint: PathBuf,
    /// What to compare it with.
    pub baseline: Baseline,
}

/// One run of the evaluated checkpoint (one per repeat) and its result.
#[derive(Debug, Clone)]
pub struct EvaluatedRun {
    /// The run.
    pub run_id: RunId,
    /// Its repeat index.
    pub repeat: u32,
    /// True when an equivalent completed run already existed (nothing was generated).
    pub reused: bool,
    /// The scores, with the comparison against the chosen baseline.
    pub result: RunResult,
}

/// A run this evaluation generated (a baseline or the checkpoint's), with its cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutedRun {
    /// The run.
    pub run_id: RunId,
    /// True for a baseline (base model) run.
    pub baseline: bool,
    /// Samples generated now (a resumed run's earlier samples not counted).
    pub samples: u64,
    /// Completion tokens of those samples.
    pub tokens: u64,
    /// Wall-clock seconds, judging and storing included.
    pub seconds: f64,
}

/// What a one-shot evaluation produced.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// The checkpoint's store id.
    pub checkpoint_id: i64,
    /// `model` or `adapter`.
    pub kind: String,
    /// True when the checkpoint is the base model itself.
    pub is_base: bool,
    /// The plan in words (suites, slices, K, tokens, judges).
    pub plan: String,
    /// The base-model runs evaluated (or reused) as baselines, by repeat.
    pub baseline_runs: Vec<RunId>,
    /// The checkpoint's runs, by repeat.
    pub runs: Vec<EvaluatedRun>,
    /// The runs generated now, in order, with their cost.
    pub executed: Vec<ExecutedRun>,
    /// True when a stop came before every run finished (they resume next time).
    pub interrupted: bool,
    /// Where the store is.
    pub store_path: PathBuf,
}

/// Why a one-shot evaluation failed (the daemon's errors, plus the evaluation's own).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Start-up failed (store, suites, base model, engine, judges, lock).
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The checkpoint was refused by intake (the reason names the file).
    #[error("{reason}")]
    Rejected {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A run failed.
    #[error("run {run} failed: {reason}")]
    RunFailed {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// The baseline asked for cannot be used.
    #[error("{0}")]
    Baseline(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(crate::store::StoreError),
    /// Scoring failed.
    #[error("scoring: {0}")]
    Scoring(scoring::ScoringError),
}

error_from!(crate::store::StoreError => EvalError::Store, scoring::ScoringError => EvalError::Scoring);

/// Evaluates one checkpoint with `config`'s settings and store. `notify` is told which run
/// executes and sees every event the evaluation publishes (progress included), in order. A
/// cancelled `stop` leaves the runs resumable and returns with `interrupted` set.
pub async fn evaluate(
    config: Config,
    request: EvalRequest,
    stop: CancellationToken,
    notify: NoticeSink,
) -> Result<EvalOutcome, EvalError> {
    let checkpoint = std::path::absolute(&request.checkpoint).unwrap_or(request.checkpoint.clone());
    if !checkpoint.is_file() {
        return Err(EvalError::Rejected {
            path: checkpoint.display().to_string(),
            reason: format!("{}: no such file", checkpoint.display()),
        });
    }
    let _lock = DataDirLock::acquire(&config.daemon.data_dir)?;
    let ctx = Ctx::build(config, false).await?;

    // Forward the bus to the caller (the progress bar) until the evaluation ends.
    let mut rx = ctx.bus.subscribe();
    let forward_stop = CancellationToken::new();
    let forward = {
        let done = forward_stop.clone();
        let notify = Arc::clone(&notify);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    ev = rx.recv() => match ev {
                        Ok(ev) => notify(EvalNotice::Event(&ev)),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                    _ = done.cancelled() => break,
                }
            }
        })
    };
    let result = drive(&ctx, &checkpoint, request.baseline, &stop, &notify).await;
    // Let the last events reach the caller before returning.
    tokio::task::yield_now().await;
    forward_stop.cancel();
    let _ = forward.await;
    result
}

/// Samples and completion tokens stored for a run.
fn stored_totals(ctx: &Ctx, run: RunId) -> Result<(u64, u64), crate::store::StoreError> {
    let samples = ctx.store.samples_for_run(run)?;
    Ok((samples.len() as u64, samples.iter().map(|s| u64::from(s.completion_tokens)).sum()))
}

/// The runs an evaluation executes or reuses, from the store: whether the checkpoint is the
/// base model, the baseline run of each repeat, and the checkpoint's run of each repeat
/// (repeat, run, already completed). A queued run is set to compare with its baseline.
#[allow(clippy::type_complexity)]
fn plan_runs(
    ctx: &Ctx,
    checkpoint_id: i64,
    baseline: Baseline,
    repeats: u32,
) -> Result<(bool, Vec<Option<RunId>>, Vec<(u32, RunId, bool)>), EvalError> {
    let ckpt_sha = ctx
        .store
        .checkpoint(checkpoint_id)?
        .map(|c| c.sha256)
        .ok_or_else(|| DaemonError::Other(format!("checkpoint {checkpoint_id} is not in the store")))?;
    let is_base = ckpt_sha == ctx.eval.base_sha256;
    let settings = ctx.settings();

    // The baseline runs, one per repeat (none for the base model itself).
    let mut baseline_runs: Vec<Option<RunId>> = vec![None; repeats as usize];
    match baseline {
        _ if is_base => {}
        Baseline::BaseModel => {
            for (repeat, slot) in baseline_runs.iter_mut().enumerate() {
                *slot = settings.baseline_run(&ctx.store, repeat as u32)?;
            }
        }
        Baseline::Run(id) => baseline_runs = vec![Some(id); repeats as usize],
        Baseline::None => {}
    }

    // The checkpoint's runs, one per repeat; a queued run is compared with the chosen baseline.
    let mut targets = Vec::new();
    for repeat in 0..repeats {
        let run = ctx
            .store
            .find_run_by_settings(&ckpt_sha, &settings.hash(&ckpt_sha, repeat))?
            .ok_or_else(|| DaemonError::Other(format!("no run was queued for repeat {repeat}")))?;
        if run.status != RunStatus::Completed && !is_base {
            ctx.store.set_run_baseline(run.id, baseline_runs[repeat as usize])?;
        }
        targets.push((repeat, run.id, run.status == RunStatus::Completed));
    }
    Ok((is_base, baseline_runs, targets))
}

async fn drive(
    ctx: &Arc<Ctx>,
    checkpoint: &std::path::Path,
    baseline: Baseline,
    stop: &CancellationToken,
    notify: &NoticeSink,
) -> Result<EvalOutcome, EvalError> {
    let repeats = ctx.eval.config.sampling.repeats.max(1);
    // The base model's runs are queued first (when the checkpoint is the base model itself,
    // they are its own runs): intake then links the checkpoint to them or queues its own.
    match baseline {
        Baseline::BaseModel => intake::take_base(ctx).await?,
        // A named baseline must be usable before anything is queued.
        Baseline::Run(id) => {
            let run = super::blocking(ctx, move |c| c.store.run(id)).await??.ok_or_else(|| {
                EvalError::Baseline(format!("baseline run {id} does not exist in {}", ctx.store.path().display()))
            })?;
            if run.status != RunStatus::Completed {
                return Err(EvalError::Baseline(format!(
                    "baseline run {id} is {}, not completed",
                    run.status.as_str()
                )));
            }
        }
        Baseline::None => {}
    }
    // Intake hashes and checks the file once; a refused file costs no generation at all.
    let taken = intake::take_path(ctx, checkpoint, None).await?;
    let (checkpoint_id, kind) = match taken {
        intake::Taken::Rejected { reason } => {
            return Err(EvalError::Rejected { path: checkpoint.display().to_string(), reason })
        }
        intake::Taken::Accepted { checkpoint_id, kind, .. } => (checkpoint_id, kind),
    };
    let (is_base, baseline_runs, targets) =
        super::blocking(ctx, move |c| plan_runs(c, checkpoint_id, baseline, repeats)).await??;

    // The evaluation's runs go through the queue's life cycle, like the daemon's: claimed
    // among its own only, each baseline before the runs compared with it.
    let ours: Vec<RunId> = baseline_runs.iter().flatten().copied().chain(targets.iter().map(|t| t.1)).collect();
    let mut interrupted = false;
    let mut executed = Vec::new();
    while !interrupted {
        let Some(run) = ctx.queue.claim_among(&ours).await? else { break };
        let id = run.id;
        let is_baseline = baseline_runs.contains(&Some(id));
        let file = if is_baseline { ctx.eval.base_path.clone() } else { checkpoint.to_owned() };
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        notify(EvalNotice::Run { run_id: id, checkpoint: &name, baseline: is_baseline });
        let before = super::blocking(ctx, move |c| stored_totals(c, id)).await??;
        let started = std::time::Instant::now();
        let outcome = queue::execute(ctx, run, stop).await;
        let after = super::blocking(ctx, move |c| stored_totals(c, id)).await??;
        executed.push(ExecutedRun {
            run_id: id,
            baseline: is_baseline,
            samples: after.0 - before.0.min(after.0),
            tokens: after.1 - before.1.min(after.1),
            seconds: started.elapsed().as_secs_f64(),
        });
        match outcome {
            RunOutcome::Completed { .. } => {}
            RunOutcome::Interrupted => interrupted = true,
            // A run whose settings changed under it was queued again by the queue.
            RunOutcome::Failed(reason) | RunOutcome::Requeue { reason, .. } => {
                return Err(EvalError::RunFailed { run: id, reason })
            }
            RunOutcome::StorageFault(reason) => return Err(DaemonError::StoreUnwritable(reason).into()),
            // A CI gate does not wait for a fleet: the run stays queued with its samples.
            RunOutcome::Unavailable(reason) => {
                return Err(EvalError::RunFailed {
                    run: id,
                    reason: format!("{reason} (the run keeps its samples and resumes at the next evaluation)"),
                })
            }
        }
    }

    let mut runs = Vec::new();
    if !interrupted {
        let cfg = scoring::stats_config(&ctx.eval.config.stats);
        for &id in &ours {
            let run = super::blocking(ctx, move |c| c.store.run(id)).await??;
            match run.map(|r| r.status) {
                Some(RunStatus::Completed) => {}
                Some(other) => {
                    return Err(EvalError::RunFailed { run: id, reason: format!("the run is {}", other.as_str()) })
                }
                None => return Err(EvalError::RunFailed { run: id, reason: "the run is not in the store".into() }),
            }
        }
        for (repeat, id, reused) in targets {
            let baseline = baseline_runs[repeat as usize];
            let cfg = cfg.clone();
            let store = Arc::clone(&ctx.store);
            // The scores the run stored when it completed, when they are the ones asked for;
            // scored again otherwise (another baseline, estimator settings or calibration).
            let result = tokio::task::spawn_blocking(move || -> Result<RunResult, EvalError> {
                match scoring::stored_result_if_current(&store, id, baseline, &cfg)? {
                    Some(r) => Ok(r),
                    None => Ok(scoring::score_run_from_store(&store, id, baseline, false, &cfg)?),
                }
            })
            .await
            .map_err(|e| DaemonError::Other(e.to_string()))??;
            runs.push(EvaluatedRun { run_id: id, repeat, reused, result });
        }
    }
    Ok(EvalOutcome {
        checkpoint_id,
        kind,
        is_base,
        plan: ctx.plan_summary(),
        baseline_runs: baseline_runs.into_iter().flatten().collect(),
        runs,
        executed,
        interrupted,
        store_path: ctx.store.path().to_owned(),
    })
}
