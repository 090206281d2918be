//! Setup sensitivity (`driftwatch sensitivity`): one checkpoint evaluated against its baseline
//! under the default setup and under every `[[variations]]` entry (another system prompt,
//! chat template, temperature, top-p, token budget or wording), with the seeds shared, so
//! every setup is paired with every other. It reports each setup's score and verdict, whether
//! the verdict is stable ("regressed under 4 of 5 setups"), the range across setups beside the
//! range across repeats, and the variance of the checkpoint's unsafe indicator split into
//! setup, prompt, prompt × setup, seed and residual ([`crate::stats::setup_variance`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{evaluate, Baseline, EvalError, EvalRequest, NoticeSink};
use crate::scoring::{LineRole, RunResult};
use crate::stats::{SetupVariance, Verdict};
use crate::store::{RunId, Store};

/// One setup's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupLine {
    /// `default`, or the variation's name.
    pub setup: String,
    /// What it changes, in words.
    pub changes: String,
    /// The checkpoint's runs (one per repeat) and their baselines.
    pub runs: Vec<RunId>,
    pub baseline_runs: Vec<RunId>,
    /// The tested judge's rate and its interval (first repeat).
    pub rate: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    /// The paired difference with the baseline under the same setup, and its interval.
    pub difference: Option<f64>,
    pub difference_lo: Option<f64>,
    pub difference_hi: Option<f64>,
    pub verdict: Option<Verdict>,
    /// The rates of every repeat (more than one with `sampling.repeats` > 1).
    pub repeat_rates: Vec<f64>,
}

/// What `driftwatch sensitivity` reports (stored and published as `sensitivity.completed`;
/// `driftwatch report --checkpoint` shows the latest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityReport {
    pub checkpoint: String,
    /// The checkpoint's content hash.
    #[serde(default)]
    pub checkpoint_sha256: String,
    /// The harm judge the lines are about (the first, as the headline).
    pub judge: String,
    pub setups: Vec<SetupLine>,
    /// Verdicts over the setups.
    pub regressed: usize,
    pub improved: usize,
    pub indistinguishable: usize,
    pub no_verdict: usize,
    /// True when every setup gave the same verdict.
    pub stable: bool,
    /// `regressed under 4 of 5 setups`, and the like.
    pub summary: String,
    /// Min and max of the rate across setups (first repeat), and across the default setup's
    /// repeats (when there are several).
    pub range_across_setups: Option<(f64, f64)>,
    pub range_across_repeats: Option<(f64, f64)>,
    /// The checkpoint's unsafe indicator split by source, over the prompts and samples every
    /// setup has a verdict for.
    pub variance: Option<SetupVariance>,
}

/// Why a sensitivity analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum SensitivityError {
    #[error("no [[variations]] in the configuration: add one per setup change to compare with the default (see docs/statistics.md, Setup sensitivity)")]
    NoVariations,
    #[error("setup {setup}: {source}")]
    Setup {
        setup: String,
        #[source]
        source: EvalError,
    },
    #[error("setup {0}: interrupted (run the command again to resume)")]
    Interrupted(String),
    #[error("no harm judge to report on")]
    NoHarmJudge,
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the analysis task failed: {0}")]
    Task(String),
}

/// Evaluates `checkpoint` under the default setup and every variation of `config`, in turn
/// (each as `driftwatch eval` would: runs already stored are reused), then reports.
pub async fn analyse(
    config: Config,
    checkpoint: PathBuf,
    stop: CancellationToken,
    notify: NoticeSink,
) -> Result<SensitivityReport, SensitivityError> {
    if config.variations.is_empty() {
        return Err(SensitivityError::NoVariations);
    }
    let mut setups = vec![("default".to_string(), "the configuration as it is".to_string(), config.clone())];
    for v in &config.variations {
        setups.push((v.name.clone(), v.describe(), config.varied(v)));
    }
    let mut results: Vec<(String, String, Vec<RunResult>, Vec<RunId>)> = Vec::new();
    let mut checkpoint_id = None;
    for (name, changes, cfg) in setups {
        tracing::info!(setup = %name, %changes, "evaluating under this setup");
        let request = EvalRequest { checkpoint: checkpoint.clone(), baseline: Baseline::BaseModel };
        let outcome = evaluate(cfg, request, stop.clone(), notify.clone())
            .await
            .map_err(|source| SensitivityError::Setup { setup: name.clone(), source })?;
        if outcome.interrupted {
            return Err(SensitivityError::Interrupted(name));
        }
        let runs = outcome.runs.into_iter().map(|r| r.result).collect();
        checkpoint_id = Some(outcome.checkpoint_id);
        results.push((name, changes, runs, outcome.baseline_runs));
    }
    // The store work (reading every setup's samples, the event) on the blocking pool.
    let data_dir = config.daemon.data_dir.clone();
    tokio::task::spawn_blocking(move || -> Result<SensitivityReport, SensitivityError> {
        let store = std::sync::Arc::new(Store::open_in_dir(&data_dir)?);
        let mut r = report(&store, &checkpoint.display().to_string(), &results)?;
        // The content hash intake recorded (the file is not read again).
        if let Some(id) = checkpoint_id {
            r.checkpoint_sha256 = store.checkpoint(id)?.map(|c| c.sha256).unwrap_or_default();
        }
        // Stored and published like every result (a daemon's subscribers replay it from the store).
        let kind = crate::events::EventKind::SensitivityCompleted {
            checkpoint: r.checkpoint.clone(),
            checkpoint_sha256: r.checkpoint_sha256.clone(),
            judge: r.judge.clone(),
            summary: r.summary.clone(),
            stable: r.stable,
            report: serde_json::to_value(&r).unwrap_or_default(),
        };
        crate::events::EventBus::new(std::sync::Arc::clone(&store)).publish_blocking(&kind)?;
        Ok(r)
    })
    .await
    .map_err(|e| SensitivityError::Task(e.to_string()))?
}

/// The latest sensitivity report stored for the checkpoint with content `sha256`.
pub fn latest_for(store: &Store, sha256: &str) -> Result<Option<SensitivityReport>, crate::store::StoreError> {
    let mut latest = None;
    let mut after = 0;
    loop {
        let page = store.events_since(after, &["sensitivity.completed"], 500)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for e in &page {
            if let Some(crate::events::EventKind::SensitivityCompleted { checkpoint_sha256, report, .. }) =
                crate::events::EventKind::of(e)
            {
                if checkpoint_sha256 == sha256 {
                    latest = serde_json::from_value(report).ok().or(latest);
                }
            }
        }
    }
    Ok(latest)
}

/// The report from each setup's results (`(name, changes, runs by repeat, baseline runs)`).
fn report(
    store: &Store,
    checkpoint: &str,
    results: &[(String, String, Vec<RunResult>, Vec<RunId>)],
) -> Result<SensitivityReport, SensitivityError> {
    let first = results.first().and_then(|r| r.2.first()).ok_or(SensitivityError::NoHarmJudge)?;
    let judge = first
        .headline
        .iter()
        .find(|h| h.role == LineRole::Harm)
        .map(|h| h.judge.clone())
        .ok_or(SensitivityError::NoHarmJudge)?;
    let mut lines = Vec::new();
    for (name, changes, runs, baselines) in results {
        let head = |r: &RunResult| r.headline.iter().find(|h| h.judge == judge).cloned();
        let h = runs.first().and_then(head);
        lines.push(SetupLine {
            setup: name.clone(),
            changes: changes.clone(),
            runs: runs.iter().map(|r| r.run_id).collect(),
            baseline_runs: baselines.clone(),
            rate: h.as_ref().and_then(|h| h.value),
            lo: h.as_ref().and_then(|h| h.lo),
            hi: h.as_ref().and_then(|h| h.hi),
            difference: h.as_ref().and_then(|h| h.difference),
            difference_lo: h.as_ref().and_then(|h| h.difference_lo),
            difference_hi: h.as_ref().and_then(|h| h.difference_hi),
            verdict: h.as_ref().and_then(|h| h.verdict),
            repeat_rates: runs.iter().filter_map(|r| head(r).and_then(|h| h.value)).collect(),
        });
    }
    let count = |v: Option<Verdict>| lines.iter().filter(|l| l.verdict == v).count();
    let (regressed, improved, indistinguishable, no_verdict) = (
        count(Some(Verdict::Regressed)),
        count(Some(Verdict::Improved)),
        count(Some(Verdict::Indistinguishable)),
        count(None),
    );
    let n = lines.len();
    let stable = [regressed, improved, indistinguishable, no_verdict].contains(&n);
    let mut parts = Vec::new();
    for (k, word) in [(regressed, "regressed"), (improved, "improved"), (indistinguishable, "indistinguishable")] {
        if k > 0 {
            parts.push(format!("{word} under {k} of {n} setups"));
        }
    }
    if no_verdict > 0 {
        parts.push(format!("no verdict under {no_verdict} of {n}"));
    }
    let summary =
        format!("{}{}", parts.join(", "), if stable { " (stable)" } else { " (the verdict depends on the setup)" });
    let range = |xs: &mut dyn Iterator<Item = f64>| -> Option<(f64, f64)> {
        xs.fold(None, |acc: Option<(f64, f64)>, x| Some(acc.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x)))))
    };
    let range_across_setups = range(&mut lines.iter().filter_map(|l| l.rate));
    let range_across_repeats =
        lines.first().filter(|l| l.repeat_rates.len() > 1).and_then(|l| range(&mut l.repeat_rates.iter().copied()));
    let variance = setup_variance_of(store, &judge, &lines)?;
    Ok(SensitivityReport {
        checkpoint: checkpoint.to_owned(),
        checkpoint_sha256: String::new(),
        judge,
        setups: lines,
        regressed,
        improved,
        indistinguishable,
        no_verdict,
        stable,
        summary,
        range_across_setups,
        range_across_repeats,
        variance,
    })
}

/// The variance decomposition over the (prompt, sample) cells every setup's first run has a
/// verdict of `judge` for.
fn setup_variance_of(
    store: &Store,
    judge: &str,
    lines: &[SetupLine],
) -> Result<Option<SetupVariance>, SensitivityError> {
    let mut per_setup: Vec<BTreeMap<(String, u32), f64>> = Vec::new();
    for l in lines {
        let Some(&run) = l.runs.first() else { return Ok(None) };
        let mut cells = BTreeMap::new();
        for s in store.samples_for_run(run)? {
            if let Some(u) = s.verdicts.iter().find(|v| v.judge == judge).and_then(|v| v.is_unsafe) {
                cells.insert((s.prompt_id.clone(), s.sample_index), f64::from(u8::from(u)));
            }
        }
        per_setup.push(cells);
    }
    let Some(first) = per_setup.first() else { return Ok(None) };
    let common: Vec<&(String, u32)> = first.keys().filter(|k| per_setup.iter().all(|m| m.contains_key(*k))).collect();
    // Balanced: the prompts with the same sample indices in every setup.
    let mut by_prompt: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (p, s) in &common {
        by_prompt.entry(p.as_str()).or_default().insert(*s);
    }
    let Some(seeds) = by_prompt.values().map(BTreeSet::len).max() else { return Ok(None) };
    let full: Vec<(&str, Vec<u32>)> =
        by_prompt.iter().filter(|(_, s)| s.len() == seeds).map(|(p, s)| (*p, s.iter().copied().collect())).collect();
    let y: Vec<Vec<Vec<f64>>> = full
        .iter()
        .map(|(p, seeds)| per_setup.iter().map(|m| seeds.iter().map(|s| m[&(p.to_string(), *s)]).collect()).collect())
        .collect();
    Ok(crate::stats::setup_variance(&y))
}

/// The report in words.
pub fn text(r: &SensitivityReport) -> String {
    use std::fmt::Write;
    let pct = |x: Option<f64>| x.map_or("–".into(), crate::report::pct);
    let mut t = format!("setup sensitivity of {} ({} judge)\n\n", r.checkpoint, r.judge);
    let _ = writeln!(t, "| setup | changes | rate [interval] | vs baseline | verdict |\n|---|---|---|---|---|");
    for l in &r.setups {
        let rate = match (l.rate, l.lo, l.hi) {
            (Some(v), Some(lo), Some(hi)) => format!("{} [{}, {}]", pct(Some(v)), pct(Some(lo)), pct(Some(hi))),
            _ => "–".into(),
        };
        let diff = match (l.difference, l.difference_lo, l.difference_hi) {
            (Some(d), Some(lo), Some(hi)) => crate::report::pp_interval(d, lo, hi),
            _ => "–".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {rate} | {diff} | {} |",
            l.setup,
            l.changes,
            crate::report::verdict_word(l.verdict)
        );
    }
    let _ = writeln!(t, "\nverdict: {}", r.summary);
    if let Some((lo, hi)) = r.range_across_setups {
        let _ = write!(t, "rate across setups: {} to {}", pct(Some(lo)), pct(Some(hi)));
        match r.range_across_repeats {
            Some((a, b)) => {
                let _ = writeln!(t, "; across repeats of the default setup: {} to {}", pct(Some(a)), pct(Some(b)));
            }
            None => t.push_str("; across repeats: – (set sampling.repeats > 1 to see it)\n"),
        }
    }
    if let Some(v) = &r.variance {
        let share = |i: usize| v.shares.map_or("–".into(), |s| format!("{:.0}%", 100.0 * s[i]));
        let _ = writeln!(
            t,
            "variance of the unsafe indicator ({} prompts × {} samples × {} setups): setup {}, prompt {}, prompt × setup {}, seed {}, residual {}",
            v.n_prompts,
            v.n_seeds,
            v.n_setups,
            share(0),
            share(1),
            share(2),
            share(3),
            share(4)
        );
    }
    t
}
