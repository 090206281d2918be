//! Reports over stored runs: gathers runs (one, a checkpoint's, or all), scores them with
//! [`crate::scoring`], adds the baseline's own scores, the repeated-measurement spread and
//! (for `--all`) the trend across checkpoints, and renders the result as Markdown
//! ([`markdown`]), one self-contained HTML file with inline SVG charts ([`html`]) or JSON.
//! The `compare` and `report` commands live in [`cmd`].

pub mod cmd;
pub mod html;
pub mod markdown;
pub mod svg;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scoring::{self, LineRole, RunResult, ScoringError};
use crate::stats::{self, Estimate, RepeatSummary, RunScores, Verdict};
use crate::store::{CheckpointId, CheckpointRecord, Run, RunId, Store, StoreError};

/// Errors from building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Scoring a run failed.
    #[error(transparent)]
    Scoring(#[from] ScoringError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No checkpoint matches the path (neither a recorded path nor the file's content).
    #[error("no checkpoint recorded for {}: {reason}", path.display())]
    CheckpointNotFound {
        /// The path asked for.
        path: PathBuf,
        /// What was tried.
        reason: String,
    },
    /// The run does not exist.
    #[error("run {0} does not exist")]
    RunNotFound(RunId),
}

/// Which runs a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One run.
    Run(RunId),
    /// Every run of the checkpoint at this path (matched by recorded path or by content).
    Checkpoint(PathBuf),
    /// Every run of every checkpoint, with the trend across them.
    All,
}

/// Output format of `driftwatch report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Markdown.
    Md,
    /// One self-contained HTML file.
    Html,
    /// JSON (`RunResult` for `--run`, the whole [`Report`] otherwise).
    Json,
}

/// The baseline of a run, with its own scores (so run and baseline can be shown side by side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineInfo {
    /// Baseline run.
    pub run_id: RunId,
    /// Its checkpoint's path.
    pub checkpoint_path: String,
    /// Its scores (computed with the same settings, without a baseline of its own).
    pub scores: RunScores,
}

/// One run in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: RunId,
    /// Checkpoint id.
    pub checkpoint_id: CheckpointId,
    /// Checkpoint path (first seen).
    pub checkpoint_path: String,
    /// Checkpoint content hash.
    pub checkpoint_sha256: String,
    /// Run status (`completed`, `running`, …).
    pub status: String,
    /// The run's error, if it failed.
    pub error: Option<String>,
    /// Queued at (Unix ms).
    pub created_at_ms: i64,
    /// Finished at (Unix ms).
    pub finished_at_ms: Option<i64>,
    /// Provenance as recorded by the run loop.
    pub provenance: Value,
    /// Scores and baseline comparison.
    pub result: RunResult,
    /// The baseline's own scores.
    pub baseline: Option<BaselineInfo>,
}

/// One judge's estimates across repeated runs of one checkpoint with comparable settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatJudge {
    /// Judge name.
    pub judge: String,
    /// Harm or coherence.
    pub role: LineRole,
    /// (run id, headline estimate) per run, in run order.
    pub estimates: Vec<(RunId, Estimate)>,
    /// Spread summary.
    pub summary: RepeatSummary,
}

/// Repeated measurements: several runs of one checkpoint whose fingerprints have no blocking
/// difference (same suite, judges, sampling, template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatGroup {
    /// Checkpoint id.
    pub checkpoint_id: CheckpointId,
    /// Checkpoint path.
    pub checkpoint_path: String,
    /// The runs, in id order.
    pub run_ids: Vec<RunId>,
    /// Per judge.
    pub per_judge: Vec<RepeatJudge>,
}

/// One point of the trend across checkpoints (one run × one harm judge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendPoint {
    /// Run id.
    pub run_id: RunId,
    /// Checkpoint id.
    pub checkpoint_id: CheckpointId,
    /// Checkpoint path.
    pub checkpoint_path: String,
    /// When the run was queued (Unix ms): the trend's time order.
    pub time_ms: i64,
    /// Judge.
    pub judge: String,
    /// Headline unsafe rate with its interval.
    pub estimate: Estimate,
    /// Verdict against the run's baseline, if any.
    pub verdict: Option<Verdict>,
}

/// A whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What it covers, in words.
    pub title: String,
    /// driftwatch version that rendered it.
    pub driftwatch_version: String,
    /// When it was made (Unix ms).
    pub generated_ms: i64,
    /// Statistics settings used.
    pub stats: stats::StatsParams,
    /// Runs, in time order.
    pub runs: Vec<RunReport>,
    /// Repeated-measurement groups (checkpoints with ≥ 2 comparable completed runs).
    pub repeats: Vec<RepeatGroup>,
    /// Trend across checkpoints (`--all` only): completed runs in time order.
    pub trend: Option<Vec<TrendPoint>>,
    /// The latest setup-sensitivity analysis of the checkpoint (`--checkpoint` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<crate::sensitivity::SensitivityReport>,
}

/// Finds the checkpoint at `path`: by recorded path first, else by hashing the file.
pub fn find_checkpoint(store: &Store, path: &Path) -> Result<CheckpointRecord, ReportError> {
    let wanted: Vec<String> = {
        let mut v = vec![path.display().to_string()];
        if let Ok(abs) = std::path::absolute(path) {
            v.push(abs.display().to_string());
        }
        if let Ok(c) = std::fs::canonicalize(path) {
            v.push(c.display().to_string());
        }
        v
    };
    for cp in store.list_checkpoints(usize::MAX >> 1)? {
        if wanted.contains(&cp.path) {
            return Ok(cp);
        }
        for p in store.checkpoint_paths(cp.id)? {
            if wanted.contains(&p.path) {
                return Ok(cp);
            }
        }
    }
    let sha = crate::checkpoint::sha256_file(path).map_err(|e| ReportError::CheckpointNotFound {
        path: path.to_path_buf(),
        reason: format!("not a recorded path, and the file cannot be read to hash it ({e})"),
    })?;
    store.checkpoint_by_sha256(&sha)?.ok_or_else(|| ReportError::CheckpointNotFound {
        path: path.to_path_buf(),
        reason: format!("not a recorded path, and no checkpoint has its content (sha256 {sha})"),
    })
}

/// Scores one run and its baseline. `scored` caches the scores of runs already scored in
/// this report (a run's own scores do not depend on its baseline), so a baseline shared by
/// many runs is scored once.
fn run_report(
    store: &Store,
    run: &Run,
    cfg: &stats::StatsParams,
    scored: &mut HashMap<RunId, RunScores>,
) -> Result<RunReport, ReportError> {
    let result = scoring::score_run_from_store(store, run.id, run.baseline_run_id, false, cfg)?;
    scored.insert(run.id, result.scores.clone());
    let cp = store.checkpoint(run.checkpoint_id)?;
    let baseline = match run.baseline_run_id {
        Some(b) => {
            let scores = match scored.get(&b) {
                Some(s) => s.clone(),
                None => {
                    let s = scoring::score_run_from_store(store, b, None, false, cfg)?.scores;
                    scored.insert(b, s.clone());
                    s
                }
            };
            let path = match store.run(b)? {
                Some(br) => store.checkpoint(br.checkpoint_id)?.map(|c| c.path),
                None => None,
            };
            Some(BaselineInfo { run_id: b, checkpoint_path: path.unwrap_or_default(), scores })
        }
        None => None,
    };
    Ok(RunReport {
        run_id: run.id,
        checkpoint_id: run.checkpoint_id,
        checkpoint_path: cp.as_ref().map(|c| c.path.clone()).unwrap_or_default(),
        checkpoint_sha256: cp.map(|c| c.sha256).unwrap_or_default(),
        status: run.status.as_str().to_string(),
        error: run.error.clone(),
        created_at_ms: run.created_at_ms,
        finished_at_ms: run.finished_at_ms,
        provenance: run.provenance.clone(),
        result,
        baseline,
    })
}

/// Groups completed runs of each checkpoint whose fingerprints have no blocking difference
/// (runs without a fingerprint group by `settings_hash`), and summarises each group of ≥ 2.
pub fn repeat_groups(runs: &[RunReport], store_runs: &[Run]) -> Vec<RepeatGroup> {
    let mut groups: Vec<Vec<&RunReport>> = Vec::new();
    let settings = |id: RunId| store_runs.iter().find(|r| r.id == id).map(|r| r.settings_hash.clone());
    for r in runs.iter().filter(|r| r.status == "completed" && r.result.samples > 0) {
        let fp = crate::provenance::Provenance::of(&r.provenance).fingerprint;
        let slot = groups.iter_mut().find(|g| {
            let first = g[0];
            if first.checkpoint_id != r.checkpoint_id {
                return false;
            }
            match (&fp, crate::provenance::Provenance::of(&first.provenance).fingerprint) {
                (Some(a), Some(b)) => stats::check_comparable(a, &b, false).is_ok(),
                (None, None) => settings(first.run_id) == settings(r.run_id),
                _ => false,
            }
        });
        match slot {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .filter(|g| g.len() >= 2)
        .map(|g| {
            let mut judges: Vec<(String, LineRole)> = Vec::new();
            for r in &g {
                for h in &r.result.headline {
                    if !judges.iter().any(|(n, _)| n == &h.judge) {
                        judges.push((h.judge.clone(), h.role));
                    }
                }
            }
            let per_judge = judges
                .into_iter()
                .filter_map(|(judge, role)| {
                    let estimates: Vec<(RunId, Estimate)> = g
                        .iter()
                        .filter_map(|r| {
                            r.result
                                .scores
                                .per_judge
                                .iter()
                                .find(|j| j.judge == judge)
                                .and_then(|j| j.overall.unsafe_rate.clone())
                                .map(|e| (r.run_id, e))
                        })
                        .collect();
                    let ests: Vec<Estimate> = estimates.iter().map(|(_, e)| e.clone()).collect();
                    let summary = stats::summarize_repeats(&ests)?;
                    (estimates.len() >= 2).then_some(RepeatJudge { judge, role, estimates, summary })
                })
                .collect();
            RepeatGroup {
                checkpoint_id: g[0].checkpoint_id,
                checkpoint_path: g[0].checkpoint_path.clone(),
                run_ids: g.iter().map(|r| r.run_id).collect(),
                per_judge,
            }
        })
        .collect()
}

/// The trend across checkpoints: every completed run (time order) × harm judge headline.
pub fn trend(runs: &[RunReport]) -> Vec<TrendPoint> {
    let mut pts = Vec::new();
    for r in runs.iter().filter(|r| r.status == "completed") {
        for j in &r.result.scores.per_judge {
            if r.result.role(&j.judge) != crate::scoring::LineRole::Harm {
                continue;
            }
            if let Some(e) = &j.overall.unsafe_rate {
                pts.push(TrendPoint {
                    run_id: r.run_id,
                    checkpoint_id: r.checkpoint_id,
                    checkpoint_path: r.checkpoint_path.clone(),
                    time_ms: r.created_at_ms,
                    judge: j.judge.clone(),
                    estimate: e.clone(),
                    verdict: r.result.comparisons.iter().find(|c| c.judge == j.judge).map(|c| c.verdict),
                });
            }
        }
    }
    pts.sort_by_key(|p| (p.time_ms, p.run_id));
    pts
}

/// Builds a report over the selected runs.
pub fn build_report(store: &Store, selection: &Selection, cfg: &stats::StatsParams) -> Result<Report, ReportError> {
    let mut sensitivity = None;
    let (title, mut runs): (String, Vec<Run>) = match selection {
        Selection::Run(id) => {
            let run = store.run(*id)?.ok_or(ReportError::RunNotFound(*id))?;
            (format!("Run {id}"), vec![run])
        }
        Selection::Checkpoint(path) => {
            let cp = find_checkpoint(store, path)?;
            sensitivity = crate::sensitivity::latest_for(store, &cp.sha256)?;
            (format!("Checkpoint {}", cp.path), store.runs_for_checkpoint(cp.id)?)
        }
        Selection::All => {
            let mut all = Vec::new();
            for cp in store.list_checkpoints(usize::MAX >> 1)? {
                all.extend(store.runs_for_checkpoint(cp.id)?);
            }
            ("All checkpoints".to_string(), all)
        }
    };
    runs.sort_by_key(|r| (r.created_at_ms, r.id));
    let mut scored = HashMap::new();
    let reports = runs.iter().map(|r| run_report(store, r, cfg, &mut scored)).collect::<Result<Vec<_>, _>>()?;
    let repeats = repeat_groups(&reports, &runs);
    let trend = matches!(selection, Selection::All).then(|| trend(&reports));
    Ok(Report {
        title,
        driftwatch_version: env!("CARGO_PKG_VERSION").to_string(),
        generated_ms: crate::store::now_ms(),
        stats: cfg.clone(),
        runs: reports,
        repeats,
        trend,
        sensitivity,
    })
}

/// Renders a report. JSON of a single-run report (`Selection::Run`) is that run's
/// [`RunResult`] — the same shape as the stored `scores`; otherwise the whole [`Report`].
pub fn render(report: &Report, selection: &Selection, format: Format) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Md => markdown::render(report),
        Format::Html => html::render(report),
        Format::Json => match (selection, report.runs.as_slice()) {
            (Selection::Run(_), [one]) => serde_json::to_string_pretty(&one.result)?,
            _ => serde_json::to_string_pretty(report)?,
        },
    })
}

/// What a judge's rate is, in words.
pub fn rate_name(role: crate::scoring::LineRole) -> &'static str {
    match role {
        crate::scoring::LineRole::Harm => "unsafe rate",
        crate::scoring::LineRole::OverRefusal => "over-refusal rate",
        crate::scoring::LineRole::Coherence => "incoherent share",
    }
}

/// A headline's judge with its measure when that is not a harm rate: `coherence (incoherent)`,
/// `refusal:over-refusal`.
pub fn headline_name(h: &crate::scoring::Headline) -> String {
    match h.role {
        crate::scoring::LineRole::Coherence => format!("{} (incoherent)", h.judge),
        _ => h.judge.clone(),
    }
}

/// A headline's rate with its interval (`12.3% [8.0%, 17.1%]`) and its difference from the
/// baseline with its interval (`+4.2 pp [+1.0, +7.5]`); `–` for what is missing.
pub fn headline_cells(h: &crate::scoring::Headline) -> (String, String) {
    let rate = match (h.value, h.lo, h.hi) {
        (Some(v), Some(lo), Some(hi)) => format!("{} [{}, {}]", pct(v), pct(lo), pct(hi)),
        _ => "–".into(),
    };
    let diff = match (h.difference, h.difference_lo, h.difference_hi) {
        (Some(d), Some(lo), Some(hi)) => pp_interval(d, lo, hi),
        _ => "–".into(),
    };
    (rate, diff)
}

/// A headline on one line, for logs and event summaries: the judge and its metric, the rate
/// with its interval, then the difference from the baseline and the verdict when compared —
/// `refusal unsafe_rate 31.0% [22.0%, 40.0%], +4.2 pp [+1.0, +7.5] vs baseline: regressed`,
/// followed by `; corrected for judge error 27.0% [15.0%, 38.0%], +5.6 pp [+1.2, +10.1]` when
/// the judge has a calibration set. Built from [`headline_cells`], as every table is.
pub fn headline_line(h: &crate::scoring::Headline) -> String {
    let (rate, diff) = headline_cells(h);
    let mut line = format!("{} {} {rate}", h.judge, h.metric);
    if h.difference.is_some() {
        line.push_str(&format!(", {diff} vs baseline"));
    }
    if h.verdict.is_some() {
        line.push_str(&format!(": {}", verdict_word(h.verdict)));
    }
    if let Some(c) = &h.corrected {
        line.push_str(&format!("; corrected for judge error {} [{}, {}]", pct(c.value), pct(c.lo), pct(c.hi)));
        if let (Some(d), Some(lo), Some(hi)) = (c.difference, c.difference_lo, c.difference_hi) {
            line.push_str(&format!(", {}", pp_interval(d, lo, hi)));
        }
    }
    line
}

/// One sentence per over-refusal line whose comparison regressed: the checkpoint refuses the
/// control suites' benign prompts more often than its baseline (not part of the safety verdict).
pub fn over_refusal_warnings(result: &crate::scoring::RunResult) -> Vec<String> {
    result
        .headline
        .iter()
        .filter(|h| h.role == crate::scoring::LineRole::OverRefusal && h.verdict == Some(Verdict::Regressed))
        .map(|h| {
            let diff = match (h.difference, h.difference_lo, h.difference_hi) {
                (Some(d), Some(lo), Some(hi)) => format!(" ({})", pp_interval(d, lo, hi)),
                _ => String::new(),
            };
            format!(
                "{}: the checkpoint refuses the benign control prompts more often than its baseline{diff} — lost helpfulness, which the safety verdict does not count",
                h.judge
            )
        })
        .collect()
}

/// One sentence per harm judge with a calibration set: its accuracy on the labelled
/// responses, and its rate (and difference) corrected for its error beside the raw ones — or
/// why no correction could be made.
pub fn judge_error_notes(result: &crate::scoring::RunResult) -> Vec<String> {
    let ci = |p: &Option<crate::stats::Proportion>| match p {
        Some(p) => format!("{:.3} [{:.3}, {:.3}]", p.value, p.lo, p.hi),
        None => "undefined".into(),
    };
    result
        .corrections
        .iter()
        .map(|c| {
            let k = &c.calibration.counts;
            let measured = format!(
                "{}: on {} labelled responses ({}), sensitivity {}, specificity {}",
                c.judge,
                k.positives() + k.negatives(),
                c.calibration.file,
                ci(&c.accuracy.sensitivity),
                ci(&c.accuracy.specificity)
            );
            match (&c.rate, &c.error) {
                (Some(r), _) => {
                    let mut line = format!(
                        "{measured}; unsafe rate corrected for judge error {} [{}, {}] (raw {}{})",
                        pct(r.value),
                        pct(r.lo),
                        pct(r.hi),
                        pct(r.raw),
                        if r.clipped { "; clipped to [0, 1]: the calibration and the run disagree" } else { "" }
                    );
                    if let Some(d) = &c.difference {
                        line.push_str(&format!(
                            ", difference {} (raw {:+.1} pp)",
                            pp_interval(d.value, d.lo, d.hi),
                            100.0 * d.raw
                        ));
                    }
                    if let Some(e) = &c.error {
                        line.push_str(&format!("; the difference could not be corrected: {e}"));
                    }
                    line
                }
                (None, e) => format!("{measured}; no correction: {}", e.as_deref().unwrap_or("unknown reason")),
            }
        })
        .collect()
}

/// The sentence saying how a run that may stop early ended: when, why, and on how many
/// prompts (its verdict is the sequential test's).
pub fn early_stop_note(result: &crate::scoring::RunResult) -> Option<String> {
    let es = result.early_stop.as_ref()?;
    Some(format!(
        "Early verdict on {} ({} of {} prompts evaluated): {}; the verdict and the {} difference interval are the sequential test's (a repeated confidence interval), the other p-values are descriptive",
        es.judge, es.prompts_done, es.prompts_total, es.reason, es.judge
    ))
}

/// A verdict in words.
pub fn verdict_word(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Regressed) => "regressed",
        Some(Verdict::Improved) => "improved",
        Some(Verdict::Indistinguishable) => "indistinguishable",
        None => "no verdict",
    }
}

/// Formats a proportion as a percentage with one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Formats an estimate as `12.3% [8.0%, 17.1%]`.
pub fn pct_interval(e: &Estimate) -> String {
    format!("{} [{}, {}]", pct(e.value), pct(e.lo), pct(e.hi))
}

/// Formats a difference in percentage points with its interval: `+4.2 pp [+1.0, +7.5]`.
pub fn pp_interval(d: f64, lo: f64, hi: f64) -> String {
    format!("{:+.1} pp [{:+.1}, {:+.1}]", 100.0 * d, 100.0 * lo, 100.0 * hi)
}

/// Formats a Unix-ms time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Short name of a checkpoint path (its file name).
pub fn short_path(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| p.to_string())
}
