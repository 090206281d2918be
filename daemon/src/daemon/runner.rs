//! Run execution: one claimed run generates its missing samples in one engine request, judges
//! them on a blocking thread as they arrive, and commits every sample with its verdicts as it
//! completes. A stop leaves the run resumable; a deleted checkpoint fails it with a reason; a
//! finished run is scored and published. What a run may touch is [`Runner`]: the evaluation,
//! the store and its events, the engine and the judges — not the queue, intake or the API.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::evaluation::{Evaluation, Settings};
use super::judges::Judging;
use super::sample_seed;
use crate::engine::{AdapterSpec, Engine, EngineEvent, FinishReason, GenerationRequest, Job, ModelSpec, SampleOutput};
use crate::events::{EventBus, EventKind};
use crate::judge::Sample;
use crate::metrics::Metrics;
use crate::provenance::Provenance;
use crate::store::{
    CheckpointId, CheckpointKind, CheckpointRecord, NewSample, Run, RunId, RunTransition, SampleKey, Store, StoreError,
};
use crate::suite::Prompt;

/// What a run's execution may use.
pub(crate) struct Runner {
    /// The configuration, prompts and base model.
    pub eval: Arc<Evaluation>,
    pub store: Arc<Store>,
    pub bus: EventBus,
    pub metrics: Arc<Metrics>,
    /// The judges (reloaded at each run's start).
    pub judging: Arc<Judging>,
    /// The generation engine.
    pub engine: Engine,
    /// Paths of checkpoint files that disappeared (a run whose file goes stops).
    pub removed: tokio::sync::broadcast::Sender<PathBuf>,
}

impl Runner {
    /// The settings of a run under the judges serving now (one snapshot of them).
    pub fn settings(&self) -> Settings<'_> {
        self.eval.under(self.judging.identities())
    }

    /// Tells a run in progress that `path` is gone.
    pub fn file_removed(&self, path: PathBuf) {
        let _ = self.removed.send(path);
    }
}

/// How one run's execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// Scored and published; `base` when the run is one of the base model's.
    Completed { base: bool },
    /// Stopped by the shutdown token: left resumable.
    Interrupted,
    /// Failed with this reason (stored and published as `run.failed`).
    Failed(String),
    /// Failed because the settings changed since it started (stored and published as
    /// `run.failed`): the checkpoint is to be queued again under the new settings.
    Requeue { checkpoint_id: CheckpointId, path: String, reason: String },
    /// Stopped because the store cannot be written (a full disk, an I/O error, a read-only
    /// file system): nothing is recorded, and the run resumes at the next start.
    StorageFault(String),
    /// Stopped because no inference server could take its jobs (the `openai` backend): its
    /// samples stay stored and it is queued again, to resume when the servers answer.
    Unavailable(String),
}

/// Executes one run to its end, a stop or a failure; a failure is stored and published.
pub(crate) async fn run_one(ctx: &Arc<Runner>, run: Run, stop: &CancellationToken) -> RunOutcome {
    let span = tracing::info_span!("run", run = run.id, checkpoint = run.checkpoint_id);
    let (id, checkpoint_id) = (run.id, run.checkpoint_id);
    let outcome = tracing::Instrument::instrument(execute(ctx, run, stop), span).await;
    let outcome = match outcome {
        Ok(Some(base)) => RunOutcome::Completed { base },
        Ok(None) => RunOutcome::Interrupted,
        Err(RunError::Store(e)) if e.is_storage_fault() => storage_fault(id, &e),
        Err(RunError::Unavailable(reason)) => {
            // Its stored samples stay; it is queued again, to resume once the servers answer.
            match super::blocking(ctx, move |c| c.store.requeue_run(id)).await.and_then(|r| r) {
                Err(e) if e.is_storage_fault() => storage_fault(id, &e),
                Err(e) => {
                    tracing::error!(run = id, error = %e, "cannot queue the run again; it resumes at the next start");
                    RunOutcome::Unavailable(reason)
                }
                Ok(_) => RunOutcome::Unavailable(reason),
            }
        }
        Err(e) => {
            tracing::error!(run = id, error = %e, "run failed");
            let reason = e.to_string();
            // The failure and its `run.failed` event are stored together, or neither is: a
            // failure that cannot be recorded publishes nothing (the run is taken up again at
            // the next start).
            let kind = EventKind::RunFailed { run_id: id, reason: reason.clone() };
            match transition(ctx, id, RunTransition::Fail { error: reason.clone() }, kind).await {
                Err(store_error) if store_error.is_storage_fault() => storage_fault(id, &store_error),
                result => {
                    if let Err(store_error) = result {
                        tracing::error!(run = id, error = %store_error, "cannot record the run's failure; nothing is published, and the run is retried at the next start");
                    }
                    match e {
                        RunError::SettingsChanged { path, .. } => RunOutcome::Requeue { checkpoint_id, path, reason },
                        _ => RunOutcome::Failed(reason),
                    }
                }
            }
        }
    };
    ctx.metrics.run_finished(match outcome {
        RunOutcome::Completed { .. } => "completed",
        RunOutcome::Interrupted | RunOutcome::StorageFault(_) | RunOutcome::Unavailable(_) => "interrupted",
        RunOutcome::Failed(_) | RunOutcome::Requeue { .. } => "failed",
    });
    outcome
}

/// The outcome of a run stopped by a storage fault: nothing recorded, resumed at the next start.
fn storage_fault(id: RunId, e: &StoreError) -> RunOutcome {
    tracing::error!(run = id, error = %e, "the store cannot be written; the run stops here and resumes at the next start");
    RunOutcome::StorageFault(e.to_string())
}

/// A store call on the blocking pool (never on an async worker thread).
async fn db<R: Send + 'static>(
    ctx: &Arc<Runner>,
    f: impl FnOnce(&crate::store::Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, RunError> {
    Ok(super::blocking(ctx, move |c| f(&c.store)).await??)
}

/// Changes a run's state and publishes its event, stored in one transaction (on the blocking
/// pool): the state and its event are never one without the other.
async fn transition(
    ctx: &Arc<Runner>,
    run_id: RunId,
    change: RunTransition,
    kind: EventKind,
) -> Result<(), StoreError> {
    super::blocking(ctx, move |c| c.bus.transition_blocking(run_id, change, &kind).map(|_| ())).await?
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error("{0}")]
    Store(StoreError),
    #[error("the checkpoint file is gone: {0}")]
    Gone(String),
    #[error("the checkpoint file was deleted during its run: {0}")]
    DeletedDuringRun(String),
    #[error("generation failed: {0}")]
    Engine(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("scoring failed: {0}")]
    Scoring(String),
    #[error("the evaluation settings (configuration or judge versions) changed since this run started; its {stored} samples stay stored and the checkpoint is queued again under the new settings")]
    SettingsChanged { stored: u64, path: String },
    #[error("{0}")]
    Other(String),
}

error_from!(StoreError => RunError::Store);

impl RunError {
    /// A scoring error; the store's own errors stay store errors (a storage fault while
    /// scoring stops the daemon like any other, instead of failing the run).
    fn from_scoring(e: crate::scoring::ScoringError) -> RunError {
        match e {
            crate::scoring::ScoringError::Store(e) => RunError::Store(e),
            other => RunError::Scoring(other.to_string()),
        }
    }
}

struct Planned {
    job: Job,
    category: String,
}

/// The jobs of a run that are not stored yet, for `k` samples per prompt (of the `allowed`
/// prompts only, when given).
fn plan(
    eval: &Evaluation,
    repeat: u32,
    done: &HashSet<SampleKey>,
    k: u32,
    allowed: Option<&HashSet<String>>,
) -> Vec<Planned> {
    let mut out = Vec::new();
    for p in eval.prompts.iter().filter(|p| allowed.is_none_or(|a| a.contains(&p.id))) {
        for i in 0..k {
            if done.contains(&SampleKey { prompt_id: p.id.clone(), sample_index: i }) {
                continue;
            }
            out.push(Planned {
                job: Job {
                    prompt_id: p.id.clone(),
                    prompt: p.text.clone(),
                    sample_index: i,
                    seed: sample_seed(eval.config.sampling.seed, repeat, &p.id, i),
                },
                category: p.category.clone(),
            });
        }
    }
    out
}

/// Runs one run to its end (`Some`, true for a base-model run), or to a stop (`None`).
async fn execute(ctx: &Arc<Runner>, run: Run, stop: &CancellationToken) -> Result<Option<bool>, RunError> {
    let checkpoint_id = run.checkpoint_id;
    let (ckpt, paths) = db(ctx, move |s| {
        let ckpt = s.checkpoint(checkpoint_id)?;
        let paths = match &ckpt {
            Some(c) => s.checkpoint_paths(c.id)?,
            None => Vec::new(),
        };
        Ok((ckpt, paths))
    })
    .await?;
    let ckpt = ckpt.ok_or_else(|| RunError::Other(format!("checkpoint {checkpoint_id} is not in the store")))?;
    let served_only = super::evaluation::served_name(&ckpt.path).is_some();
    if served_only && ctx.eval.remote.is_none() {
        return Err(RunError::Other(format!(
            "{} exists only on inference servers: evaluating it needs engine.backend = \"openai\"",
            ckpt.path
        )));
    }
    let path = if served_only {
        PathBuf::from(&ckpt.path)
    } else {
        paths
            .into_iter()
            .filter(|p| p.removed_at_ms.is_none())
            .map(|p| PathBuf::from(p.path))
            .find(|p| p.is_file())
            .ok_or_else(|| RunError::Gone(ckpt.path.clone()))?
    };
    let id = run.id;
    let repeat = Provenance::of(&run.provenance).repeat;
    // Hot-reloaded plugins serve from here on; a run whose judges changed records them.
    reload_judges(ctx).await;
    let mut run = run;
    let hash = ctx.settings().hash(&ckpt.sha256, repeat);
    if hash != run.settings_hash {
        let stored = db(ctx, move |s| s.sample_count(id)).await?;
        if stored > 0 {
            // Never mix two settings in one run: this one ends (and the checkpoint is queued
            // again by whoever runs the queue).
            return Err(RunError::SettingsChanged { stored, path: path.display().to_string() });
        }
        let provenance = ctx.settings().provenance(&ckpt, &path.display().to_string(), repeat).to_value();
        let (h, p) = (hash.clone(), provenance.clone());
        db(ctx, move |s| s.update_run_settings(id, &h, &p)).await?;
        tracing::info!("the run's judges or settings changed since it was queued; provenance updated");
        run.settings_hash = hash;
        run.provenance = provenance;
    }
    let adaptive = ctx.eval.config.sampling.adaptive();
    let mut k = ctx.eval.first_k();
    let n_prompts = ctx.eval.prompts.len() as u64;
    let already = db(ctx, move |s| s.sample_count(id)).await?;
    let started = EventKind::RunStarted {
        run_id: run.id,
        checkpoint_id: ckpt.id,
        total_samples: n_prompts * u64::from(k),
        already_done: already,
    };
    transition(ctx, run.id, RunTransition::Start, started).await?;
    tracing::info!(total = n_prompts * u64::from(k), already_done = already, path = %path.display(), "run started");
    let mut decision = None;
    // Early verdicts: rounds of prompts in the seeded order, a look after each.
    let mut early = early_rounds(ctx, &run, repeat).await?;
    let mut round = 0;
    loop {
        let allowed = early.as_ref().map(|e| e.prompts(round));
        let n_now = allowed.as_ref().map_or(n_prompts, |a| a.len() as u64);
        let total = n_now * u64::from(k);
        if total != run.total_samples {
            db(ctx, move |s| s.set_run_total(id, total)).await?;
            run.total_samples = total;
        }
        let done = db(ctx, move |s| s.completed_sample_keys(id)).await?;
        let jobs = plan(&ctx.eval, repeat, &done, k, allowed.as_ref());
        match generate_round(ctx, &run, &ckpt, &path, jobs, done.len() as u64, total, stop).await? {
            Round::Done => {}
            Round::Interrupted => return Ok(None), // left `running`: resumed at the next start
            Round::Deleted => return Err(RunError::DeletedDuringRun(path.display().to_string())),
        }
        // Every planned sample of this round's prompts is stored (samples of later rounds,
        // kept from before an interruption, do not count).
        let keys = db(ctx, move |s| s.completed_sample_keys(id)).await?;
        let count = keys
            .iter()
            .filter(|key| allowed.as_ref().is_none_or(|a| a.contains(&key.prompt_id)) && key.sample_index < k)
            .count() as u64;
        if count < total {
            return Err(RunError::Other(format!("only {count} of {total} samples were stored")));
        }
        if let Some(e) = &early {
            match early_step(ctx, run.id, e.baseline).await? {
                Some(result) => {
                    tracing::info!(round = round + 1, of = e.points.len(), decision = ?result.decision, "{}", result.reason);
                    if result.decision != crate::stats::LookDecision::Continue || round + 1 >= e.points.len() {
                        break;
                    }
                    round += 1;
                }
                None => {
                    tracing::warn!("the baseline cannot be compared with this run (or lacks its harm judge): no early verdict, every prompt is evaluated");
                    early = None;
                }
            }
            continue;
        }
        let Some(plan) = &adaptive else { break };
        let d = adaptive_step(ctx, run.id, &run.provenance, plan).await?;
        tracing::info!(k, decision = ?d, "adaptive sampling");
        match d {
            crate::stats::AdaptiveDecision::Continue { next_k } if next_k > k => k = next_k,
            other => {
                decision = Some(json!({"decision": other, "samples_per_prompt": k, "plan": {
                    "min_samples": plan.min_samples, "max_samples": plan.max_samples, "target_half_width": plan.target_half_width}}));
                break;
            }
        }
    }
    let base = finish(ctx, &run, &ckpt.path, decision).await?;
    Ok(Some(base))
}

/// The rounds of a run that may stop early: the baseline's prompts in the seeded evaluation
/// order (as scoring orders them), and the prompt counts after each round.
struct EarlyRounds {
    /// Prompt ids in evaluation order.
    order: Vec<String>,
    /// Prompts evaluated after each round (the last is every prompt).
    points: Vec<usize>,
    /// The completed baseline run the looks compare with.
    baseline: RunId,
    /// Every prompt of the suites: the last round evaluates them all.
    all: HashSet<String>,
}

impl EarlyRounds {
    /// The prompts of rounds 0..=`round`.
    fn prompts(&self, round: usize) -> HashSet<String> {
        if round + 1 >= self.points.len() {
            return self.all.clone();
        }
        self.order[..self.points[round]].iter().cloned().collect()
    }
}

/// Rounds for a run whose settings ask for early verdicts and whose baseline has completed;
/// `None` otherwise (every prompt is evaluated, as without early stopping; a base-model run,
/// or one whose baseline is not there, says why in the log).
async fn early_rounds(ctx: &Arc<Runner>, run: &Run, repeat: u32) -> Result<Option<EarlyRounds>, RunError> {
    let Some(es) = ctx.eval.config.sampling.early_stop else { return Ok(None) };
    // Never for a base-model run (a baseline is always whole); only against the baseline the
    // run was queued with (an evaluation without one has none), once it has completed.
    let r = run.clone();
    let found = super::blocking(ctx, move |c| -> Result<Option<(RunId, Vec<String>)>, StoreError> {
        if is_base_run(c, &r)? {
            return Ok(None);
        }
        let completed = match r.baseline_run_id {
            Some(b) => c.store.run(b)?.filter(|b| b.status == crate::store::RunStatus::Completed),
            None => None,
        };
        let Some(b) = completed else {
            tracing::warn!("early verdicts need the run's completed baseline; every prompt is evaluated");
            return Ok(None);
        };
        // The baseline's prompts (sorted), ordered below as scoring orders them.
        let ids: std::collections::BTreeSet<String> =
            c.store.completed_sample_keys(b.id)?.into_iter().map(|k| k.prompt_id).collect();
        Ok(Some((b.id, ids.into_iter().collect())))
    })
    .await??;
    let Some((b, ids)) = found else { return Ok(None) };
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let order = crate::stats::evaluation_order(ctx.eval.config.sampling.seed, repeat, &refs);
    let points = crate::stats::look_points(ids.len(), es.looks as usize);
    let order = order.into_iter().map(|i| ids[i].clone()).collect();
    let all = ctx.eval.prompts.iter().map(|p| p.id.clone()).collect();
    Ok(Some(EarlyRounds { order, points, baseline: b, all }))
}

/// The sequential test after a round, from the store (the same computation as the run's
/// final scores make).
async fn early_step(
    ctx: &Arc<Runner>,
    run_id: RunId,
    baseline: RunId,
) -> Result<Option<crate::scoring::EarlyStopResult>, RunError> {
    let store = Arc::clone(&ctx.store);
    tokio::task::spawn_blocking(move || {
        crate::scoring::early_stop_from_store(&store, run_id, baseline).map_err(RunError::from_scoring)
    })
    .await
    .map_err(|e| RunError::Other(e.to_string()))?
}

/// Whether `run` is one of the base model's.
fn is_base_run(c: &Runner, run: &Run) -> Result<bool, StoreError> {
    Ok(c.store.checkpoint_by_sha256(&c.eval.base_sha256)?.is_some_and(|b| b.id == run.checkpoint_id))
}

/// Whether `run` is one of the base model's, and its completed baseline run (the one it was
/// queued with, or the base model's run under the current settings), if any.
fn baseline_of(c: &Runner, run: &Run, repeat: u32) -> Result<(bool, Option<RunId>), StoreError> {
    let is_base = is_base_run(c, run)?;
    // The baseline may have been queued after this run was (e.g. settings changed): look again.
    let baseline = match run.baseline_run_id {
        Some(b) => Some(b),
        None if !is_base => c.settings().baseline_run(&c.store, repeat)?,
        None => None,
    };
    let completed = match baseline {
        Some(b) => c.store.run(b)?.filter(|r| r.status == crate::store::RunStatus::Completed).map(|_| b),
        None => None,
    };
    if let (Some(b), None) = (baseline, completed) {
        tracing::warn!(baseline = b, "the baseline run has not completed; scoring without a comparison");
    }
    Ok((is_base, completed))
}

/// Reloads the judges (cheap: compiled components are cached by content). A failure keeps the
/// judges that were serving and is reported.
async fn reload_judges(ctx: &Arc<Runner>) {
    let reloaded = super::blocking(ctx, |c| {
        let changed = c.judging.reload(&c.eval.config)?;
        if let Err(e) = c.judging.record_calibrations(&c.store) {
            tracing::warn!(error = %e, "cannot record the judges' calibrations; runs are scored with the ones stored before");
        }
        Ok::<_, super::judges::JudgeSetError>(changed)
    })
    .await;
    match reloaded {
        Ok(Ok(changed)) => {
            if changed {
                let judges: Vec<String> =
                    ctx.judging.identities().iter().map(|j| format!("{} {}", j.name, j.version)).collect();
                tracing::info!(?judges, "judges reloaded with new versions");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot reload the judges; the previous ones keep serving");
            ctx.bus
                .emit(EventKind::PluginFailed {
                    plugin: "judges".into(),
                    reason: format!("{e} (the previous version keeps serving)"),
                })
                .await;
        }
        Err(e) => tracing::warn!(error = %e, "judge reload task failed"),
    }
}

/// A turn format with its `{system}` and `{prompt}` filled in one pass (a prompt that itself
/// contains `{system}` is left as written).
fn fill_turn(format: &str, system: &str, prompt: &str) -> String {
    let mut out = String::with_capacity(format.len() + prompt.len() + system.len());
    let mut rest = format;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let r = &rest[i..];
        if let Some(t) = r.strip_prefix("{prompt}") {
            out.push_str(prompt);
            rest = t;
        } else if let Some(t) = r.strip_prefix("{system}") {
            out.push_str(system);
            rest = t;
        } else {
            out.push('{');
            rest = &r[1..];
        }
    }
    out.push_str(rest);
    out
}

/// How a round of generation ended.
enum Round {
    Done,
    Interrupted,
    Deleted,
}

/// Generates the given jobs in one engine request and stores each sample with its verdicts.
#[allow(clippy::too_many_arguments)]
async fn generate_round(
    ctx: &Arc<Runner>,
    run: &Run,
    ckpt: &CheckpointRecord,
    path: &std::path::Path,
    jobs: Vec<Planned>,
    already: u64,
    total: u64,
    stop: &CancellationToken,
) -> Result<Round, RunError> {
    if jobs.is_empty() {
        return Ok(Round::Done);
    }
    let eval = &ctx.eval;
    let mut spec = ModelSpec {
        model: path.to_owned(),
        adapter: None,
        chat_template: eval.config.model.chat_template.clone(),
        system_prompt: eval.config.model.system_prompt.clone(),
        raw_prompts: false,
        // What the run recorded when it was queued (a name given with `POST /v1/evaluate`
        // survives a restart this way), else the mapping now.
        served: eval.remote.as_ref().map(|_| {
            Provenance::of(&run.provenance)
                .remote
                .map(|r| r.served)
                .unwrap_or_else(|| eval.served_as(&ckpt.sha256, path))
        }),
    };
    if ckpt.kind == CheckpointKind::Adapter {
        spec.adapter = Some(AdapterSpec { path: path.to_owned(), scale: eval.config.model.adapter_scale });
        spec.model = eval.base_path.clone();
    }
    let categories: Vec<String> = jobs.iter().map(|p| p.category.clone()).collect();
    let mut jobs: Vec<Job> = jobs.into_iter().map(|p| p.job).collect();
    // A plain-text turn format instead of the chat template: the prompts as written.
    if let Some(format) = &eval.config.model.turn_format {
        let system = spec.system_prompt.take().unwrap_or_default();
        (spec.raw_prompts, spec.chat_template) = (true, None);
        for j in &mut jobs {
            j.prompt = fill_turn(format, &system, &j.prompt);
        }
    }
    let request = GenerationRequest { model: spec, sampling: eval.sampling(), jobs };
    let texts: HashMap<String, String> = eval.prompts.iter().map(|p: &Prompt| (p.id.clone(), p.text.clone())).collect();

    // The judging and storing side, on its own thread: generation never waits for it.
    let (tx, rx) = std_mpsc::channel::<SampleOutput>();
    let engine_progress: Arc<parking_lot::Mutex<Option<crate::engine::Progress>>> = Arc::default();
    let worker = {
        let ctx = Arc::clone(ctx);
        let run_id = run.id;
        let meter = ProgressMeter {
            already,
            total,
            max_tokens: ctx.eval.config.sampling.max_tokens,
            ..ProgressMeter::default()
        };
        let live = Arc::clone(&engine_progress);
        tokio::task::spawn_blocking(move || judge_and_store(&ctx, run_id, rx, categories, texts, meter, &live))
    };
    let mut stream = ctx.engine.submit(request);
    let mut removed = ctx.removed.subscribe();
    let mut engine_error = None;
    let mut interrupted = false;
    let mut deleted = false;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(EngineEvent::Sample(s)) => {
                    // A cancelled sample is incomplete: it is generated again on resume.
                    if s.finish_reason != FinishReason::Cancelled && tx.send(s).is_err() {
                        break;
                    }
                }
                Some(EngineEvent::Done(r)) => {
                    if let Err(e) = r { engine_error = Some(e); }
                    break;
                }
                Some(EngineEvent::Started(info)) => tracing::debug!(?info, "engine started the round"),
                Some(EngineEvent::Progress(p)) => *engine_progress.lock() = Some(p),
                None => break,
            },
            gone = removed.recv() => {
                if let Ok(gone) = gone {
                    if gone == path {
                        tracing::warn!("the checkpoint file was deleted during its run");
                        deleted = true;
                        stream.cancel();
                    }
                }
            }
            _ = stop.cancelled(), if !interrupted => {
                tracing::info!("stopping: abandoning the batch in flight (the run resumes at the next start)");
                interrupted = true;
                stream.cancel();
            }
        }
    }
    drop(tx);
    let stored = worker.await.map_err(|e| RunError::Other(format!("the judging thread failed: {e}")))??;
    tracing::info!(stored, "samples stored");
    if deleted {
        return Ok(Round::Deleted);
    }
    if interrupted {
        return Ok(Round::Interrupted);
    }
    match engine_error {
        // Not this run's fault: it waits for the servers (see `RunOutcome::Unavailable`).
        Some(crate::engine::EngineError::Remote(e)) => return Err(RunError::Unavailable(e)),
        Some(e) => return Err(RunError::Engine(e.to_string())),
        None => {}
    }
    Ok(Round::Done)
}

/// The adaptive-sampling decision after a round: on the first harm judge's observations (not
/// a coherence judge or an over-refusal line), exactly as the published headline interval is
/// computed.
async fn adaptive_step(
    ctx: &Arc<Runner>,
    run_id: RunId,
    provenance: &serde_json::Value,
    plan: &crate::config::Adaptive,
) -> Result<crate::stats::AdaptiveDecision, RunError> {
    let provenance = provenance.clone();
    let store = Arc::clone(&ctx.store);
    let cfg = crate::scoring::stats_config(&ctx.eval.config.stats);
    let plan = crate::stats::AdaptivePlan {
        target_half_width: plan.target_half_width,
        min_samples: plan.min_samples,
        max_samples: plan.max_samples,
    };
    tokio::task::spawn_blocking(move || {
        let samples = store.samples_for_run(run_id)?;
        let ri = crate::scoring::run_inputs(&samples, &[], &Provenance::of(&provenance));
        let input = ri
            .first_harm()
            .or_else(|| ri.inputs.first())
            .ok_or_else(|| RunError::Other("adaptive sampling needs at least one judge".into()))?;
        crate::stats::adaptive_decision(&input.observations, &plan, &cfg).map_err(|e| RunError::Scoring(e.to_string()))
    })
    .await
    .map_err(|e| RunError::Other(e.to_string()))?
}

/// Scores a completed run and publishes it; `adaptive` records how adaptive sampling ended.
/// Returns true for a base-model run.
async fn finish(
    ctx: &Arc<Runner>,
    run: &Run,
    path: &str,
    adaptive: Option<serde_json::Value>,
) -> Result<bool, RunError> {
    let repeat = Provenance::of(&run.provenance).repeat;
    let r = run.clone();
    let (is_base, baseline) = super::blocking(ctx, move |c| baseline_of(c, &r, repeat)).await??;
    let stats_cfg = crate::scoring::stats_config(&ctx.eval.config.stats);
    let store = Arc::clone(&ctx.store);
    let id = run.id;
    let result = tokio::task::spawn_blocking(move || {
        crate::scoring::score_run_from_store(&store, id, baseline, false, &stats_cfg)
    })
    .await
    .map_err(|e| RunError::Scoring(e.to_string()))?
    .map_err(RunError::from_scoring)?;
    let mut scores = serde_json::to_value(&result).map_err(|e| RunError::Scoring(e.to_string()))?;
    if let (Some(a), Some(obj)) = (adaptive, scores.as_object_mut()) {
        obj.insert("adaptive".into(), a);
    }
    let digest = crate::config::canonical_hash(&run.provenance);
    let verdict = result
        .verdict
        .map(|v| serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default());
    let completed = EventKind::RunCompleted {
        run_id: run.id,
        checkpoint_id: run.checkpoint_id,
        path: path.to_owned(),
        scores: serde_json::to_value(&result.headline).unwrap_or_default(),
        comparison: (!result.comparisons.is_empty())
            .then(|| serde_json::to_value(&result.comparisons).unwrap_or_default()),
        verdict,
        provenance_digest: digest,
    };
    transition(ctx, run.id, RunTransition::Complete { scores }, completed).await?;
    for h in &result.headline {
        tracing::info!(run = run.id, "result: {}", crate::report::headline_line(h));
    }
    Ok(is_base)
}

/// A run's progress as the daemon reports it: samples stored of the run's total, the
/// engine's live decode rate (the tokens of samples still being generated counted, not only
/// of finished ones), and the time left at that rate.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgressMeter {
    /// Samples stored before this round.
    pub already: u64,
    /// Samples the run has in all.
    pub total: u64,
    /// Samples stored in this round, and their tokens.
    pub stored: u64,
    pub stored_tokens: u64,
    /// The token budget of one sample.
    pub max_tokens: u32,
    /// The engine's last progress report of this round.
    pub engine: Option<crate::engine::Progress>,
}

impl ProgressMeter {
    /// Samples stored, this round and before.
    pub fn done(&self) -> u64 {
        self.already + self.stored
    }

    /// The engine's decode rate: every token generated this round (those of samples still
    /// running too) over the time since the round started decoding.
    pub fn tokens_per_s(&self) -> f64 {
        match &self.engine {
            Some(p) if p.elapsed_s > 0.0 => p.generated_tokens as f64 / p.elapsed_s,
            _ => 0.0,
        }
    }

    /// The `run.progress` event of this state, with `eta_s` as given.
    pub fn event(&self, run_id: RunId, eta_s: Option<f64>) -> EventKind {
        EventKind::RunProgress {
            run_id,
            done: self.done(),
            total: self.total,
            tokens_per_s: self.tokens_per_s(),
            eta_s,
        }
    }

    /// Seconds left: the tokens the remaining samples are expected to take, less those already
    /// generated for samples in flight, at the engine's rate.
    ///
    /// A sample's expected length counts the samples still in flight: every token generated
    /// so far over the samples finished (a censored mean: a sample in flight is at least as
    /// long as it is now), at most the budget, and the budget before any has finished. The
    /// mean of the finished ones alone is biased low early on, because the first to finish
    /// are the short ones: the default evaluation showed "1m06s left" at 2 of 300 samples, with
    /// about six minutes to go.
    pub fn eta_s(&self) -> Option<f64> {
        let rate = self.tokens_per_s();
        let engine = self.engine.as_ref()?;
        if rate <= 0.0 {
            return None;
        }
        let left = self.total.saturating_sub(self.done()) as f64;
        let budget = f64::from(self.max_tokens);
        let generated = engine.generated_tokens.max(self.stored_tokens) as f64;
        let per_sample = if self.stored > 0 { (generated / self.stored as f64).min(budget) } else { budget };
        let in_flight = generated - self.stored_tokens as f64;
        Some(((left * per_sample) - in_flight).max(0.0) / rate)
    }
}

/// Judges samples as they arrive (in small batches) and commits each with its verdicts;
/// reports progress every second, from the engine's live figures, whether or not a sample
/// finished. Returns how many samples were stored.
fn judge_and_store(
    ctx: &Runner,
    run_id: RunId,
    rx: std_mpsc::Receiver<SampleOutput>,
    categories: Vec<String>,
    texts: HashMap<String, String>,
    mut meter: ProgressMeter,
    engine_progress: &parking_lot::Mutex<Option<crate::engine::Progress>>,
) -> Result<u64, RunError> {
    let judges = ctx.judging.current();
    let batch_max = ctx.eval.config.judges.iter().map(|j| j.batch_size as usize).min().unwrap_or(16).max(1);
    let mut last_progress = Instant::now();
    let report = |meter: &ProgressMeter| {
        let tps = meter.tokens_per_s();
        let eta = meter.eta_s();
        ctx.metrics.set_decode_tokens_per_s(tps);
        tracing::info!(
            run = run_id,
            done = meter.done(),
            total = meter.total,
            tokens_per_s = format!("{tps:.0}"),
            eta_s = eta.map(|e| e.round()),
            "progress"
        );
        let _ = ctx.bus.publish_blocking(&meter.event(run_id, eta));
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(s) => Some(s),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let (stored, tokens) = judge_and_store_batch(ctx, run_id, &judges, &batch, &categories, &texts)?;
            meter.stored += stored;
            meter.stored_tokens += tokens;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            meter.engine = engine_progress.lock().clone();
            report(&meter);
        }
    }
    meter.engine = engine_progress.lock().clone();
    let _ = ctx.bus.publish_blocking(&meter.event(run_id, Some(0.0)));
    Ok(meter.stored)
}

/// Judges one batch of samples and commits each with its verdicts. Returns how many were
/// stored now (a sample already stored is not counted again) and their tokens.
fn judge_and_store_batch(
    ctx: &Runner,
    run_id: RunId,
    judges: &super::judges::JudgeSet,
    batch: &[SampleOutput],
    categories: &[String],
    texts: &HashMap<String, String>,
) -> Result<(u64, u64), RunError> {
    let samples: Vec<Sample> = batch
        .iter()
        .map(|s| Sample {
            prompt_id: s.prompt_id.clone(),
            category: categories[s.job_index].clone(),
            prompt: texts.get(&s.prompt_id).cloned().unwrap_or_default(),
            response: s.text.clone(),
            sample_index: s.sample_index,
            seed: u64::from(s.seed),
            finish_reason: s.finish_reason,
        })
        .collect();
    let (verdicts, judge_s) =
        judges.judge(&samples, &mut |judge, secs| ctx.metrics.observe_judge_call(judge, secs), &mut |judge, msg| {
            tracing::warn!(judge, error = msg, "judge error");
            ctx.metrics.plugin_error(judge);
            let _ =
                ctx.bus.publish_blocking(&EventKind::PluginFailed { plugin: judge.to_owned(), reason: msg.to_owned() });
        });
    let per_sample_ms = judge_s * 1000.0 / batch.len() as f64;
    let (mut stored, mut tokens) = (0, 0);
    for ((out, sample), verdicts) in batch.iter().zip(&samples).zip(verdicts) {
        let new = NewSample {
            prompt_id: out.prompt_id.clone(),
            category: Some(sample.category.clone()),
            sample_index: out.sample_index,
            seed: u64::from(out.seed),
            prompt: sample.prompt.clone(),
            response: out.text.clone(),
            prompt_tokens: out.prompt_tokens,
            completion_tokens: out.completion_tokens,
            finish_reason: out.finish_reason.as_str().to_owned(),
            generation_ms: Some(out.generation_ms as f64),
            judge_ms: Some(per_sample_ms),
            error: out.error.clone(),
        };
        let w = ctx.store.insert_sample_with_verdicts(run_id, &new, &verdicts)?;
        if w.inserted {
            stored += 1;
            tokens += u64::from(out.completion_tokens);
            ctx.metrics.samples_generated(1);
        }
        if ctx.eval.config.events.sample_scored {
            let v = serde_json::to_value(&verdicts).unwrap_or_default();
            let _ = ctx.bus.publish_blocking(&EventKind::SampleScored {
                run_id,
                prompt_id: out.prompt_id.clone(),
                sample_index: out.sample_index,
                verdicts: v,
            });
        }
    }
    Ok((stored, tokens))
}

#[cfg(test)]
mod tests {
    use super::{fill_turn, ProgressMeter};

    #[test]
    fn a_turn_format_is_filled_in_one_pass() {
        assert_eq!(
            fill_turn("{system}\n### Q: {prompt}\n### A:", "Be kind.", "Hi {system}"),
            "Be kind.\n### Q: Hi {system}\n### A:"
        );
        assert_eq!(fill_turn("{x} {prompt}}", "", "p"), "{x} p}");
    }
    use crate::engine::Progress;

    /// The rate is the engine's, tokens of unfinished samples included (it was the tokens of
    /// finished samples only: 5–27 t/s shown while the engine ran at about 100 t/s).
    #[test]
    fn progress_shows_the_engines_live_rate_and_counts_tokens_in_flight() {
        let mut m = ProgressMeter { already: 10, total: 110, max_tokens: 100, ..ProgressMeter::default() };
        assert_eq!(m.tokens_per_s(), 0.0);
        assert_eq!(m.eta_s(), None);
        // 10 s into the round: 16 sequences decoding, 1,000 tokens generated, none finished.
        m.engine = Some(Progress { done: 0, total: 100, generated_tokens: 1000, elapsed_s: 10.0 });
        assert_eq!(m.tokens_per_s(), 100.0);
        // 100 samples left × the 100-token budget, less the 1,000 tokens in flight, at 100 t/s.
        assert_eq!(m.eta_s(), Some(90.0));
        // 40 samples of 50 tokens stored; 3,000 tokens generated in 20 s (1,000 of them for the
        // samples in flight).
        m.stored = 40;
        m.stored_tokens = 2000;
        m.engine = Some(Progress { done: 40, total: 100, generated_tokens: 3000, elapsed_s: 20.0 });
        assert_eq!(m.done(), 50);
        assert_eq!(m.tokens_per_s(), 150.0);
        // 60 left × 75 tokens (3,000 generated over 40 finished), less 1,000 in flight, at 150 t/s.
        assert!((m.eta_s().unwrap() - 3500.0 / 150.0).abs() < 1e-9);
    }

    /// The first samples to finish are the short ones: their mean alone put the default
    /// evaluation's time left at about a minute at 2 of 300 samples, with six to go. The
    /// samples in flight count: they are at least as long as they are now.
    #[test]
    fn time_left_early_on_is_not_taken_from_the_short_samples_that_finish_first() {
        // 2 samples of 10 tokens finished; 14 more in flight, 40 tokens each so far; 200 t/s.
        let m = ProgressMeter {
            total: 300,
            max_tokens: 256,
            stored: 2,
            stored_tokens: 20,
            engine: Some(Progress { done: 2, total: 300, generated_tokens: 580, elapsed_s: 2.9 }),
            ..ProgressMeter::default()
        };
        let eta = m.eta_s().unwrap();
        // The finished samples' mean (10 tokens) would say 298 × 10 − 560 tokens: 12 s.
        // Counting those in flight, a sample takes at least 40 tokens; here the censored mean
        // (580 / 2) is above the budget, so the budget: (298 × 256 − 560) / 200 t/s.
        assert!((eta - (298.0 * 256.0 - 560.0) / 200.0).abs() < 1e-6, "{eta}");
    }
}
