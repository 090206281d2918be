//! `driftwatch eval`: one evaluation of one checkpoint without the daemon (same store, same
//! runs, same results), the command-line overrides of the configuration, the progress bar,
//! the summary table, and the exit status that makes it a CI gate.
//!
//! Exit status: 0 when the evaluation finished (whatever its verdict, unless
//! `--fail-on-regression`); 1 on an error (the checkpoint was refused, a run failed, bad
//! settings); 2 for a bad command line; with `--fail-on-regression`, 3 when the verdict is
//! `regressed` and 4 when no verdict could be reached (the baseline is not comparable, or no
//! harm judge was compared) — a gate never passes without evidence; 130 when interrupted
//! (run the same command again to resume).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use parking_lot::Mutex;
use serde_json::json;

use super::{print_stdout, shutdown_on_signals, ConfigArgs, Exit, EXIT_INTERRUPTED};
use crate::config::{Config, JudgeConfig, PluginSource, SuiteConfig};
use crate::daemon::{Baseline, EvalNotice, EvalOutcome, EvalRequest};
use crate::report::{headline_cells, rate_name, verdict_word};
use crate::scoring::RunResult;
use crate::stats::Verdict;
use crate::store::{Event, RunId};

/// Exit status when `--fail-on-regression` finds a regression.
pub const EXIT_REGRESSED: u8 = 3;
/// Exit status when `--fail-on-regression` gets no verdict.
pub const EXIT_NO_VERDICT: u8 = 4;

/// `driftwatch eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The checkpoint: a GGUF model, a GGUF LoRA adapter (applied over the base model), or
    /// `default` for the cached default model.
    pub checkpoint: String,
    /// The configuration (store, suites, judges, sampling); the flags below override it.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The data folder holding the store (default: the config's `daemon.data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The base model adapters apply to and the default baseline (`default` = the cached
    /// default model).
    #[arg(long, value_name = "MODEL")]
    pub base: Option<String>,
    /// A suite to evaluate on instead of the configured ones (repeatable): a configured
    /// suite's name, a prompt file or folder (txt, jsonl or csv; the prompt in a `prompt`
    /// field or column), or NAME=PATH.
    #[arg(long = "suite", value_name = "SUITE")]
    pub suites: Vec<String>,
    /// K: seeded samples per prompt (turns adaptive sampling off).
    #[arg(long, value_name = "K")]
    pub samples: Option<u32>,
    /// Most tokens per sample.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// The judges to use, comma-separated: configured judges' names, bundled plugins' names,
    /// or `.wasm` paths.
    #[arg(long, value_delimiter = ',', value_name = "J,…")]
    pub judges: Vec<String>,
    /// Compare with this stored run instead of the base model's run.
    #[arg(long, value_name = "RUN", conflicts_with = "no_baseline")]
    pub baseline: Option<RunId>,
    /// Do not compare (and do not evaluate the base model).
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the outcome as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 when the verdict is `regressed`, and 4 when there is no verdict: a
    /// gate for a fine-tuning pipeline's CI.
    #[arg(long, conflicts_with = "no_baseline")]
    pub fail_on_regression: bool,
    /// Early verdicts: evaluate the prompts in rounds and stop as soon as a group-sequential
    /// test of the paired difference with the baseline decides (`sampling.early_stop`; its
    /// defaults, 10 looks with Pocock-type α spending, unless the config sets it).
    #[arg(long, conflicts_with = "no_baseline")]
    pub early: bool,
    /// Progress on standard error: `auto` (a bar on a terminal, a line every 10 s otherwise),
    /// `bar`, `lines` or `none`.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, lines otherwise.
    Auto,
    /// A bar redrawn in place.
    Bar,
    /// A line every 10 seconds.
    Lines,
    /// Nothing.
    None,
}

/// Loads the configuration and applies the command line's overrides.
pub fn config_for(a: &EvalArgs) -> Result<Config> {
    let (mut c, _source) = a.config.load()?;
    let cli_path = |p: &str| -> PathBuf {
        let p = crate::setup::expand_tilde(Path::new(p));
        std::path::absolute(&p).unwrap_or(p)
    };
    if let Some(d) = &a.data_dir {
        c.daemon.data_dir = cli_path(&d.to_string_lossy());
    }
    if let Some(b) = &a.base {
        let p = crate::setup::resolve_model(b).map_err(anyhow::Error::msg)?;
        c.model.base = std::path::absolute(&p).unwrap_or(p);
    }
    if let Some(k) = a.samples {
        if k == 0 {
            bail!("--samples must be at least 1");
        }
        c.sampling.samples = k;
        c.sampling.target_half_width = None;
        c.sampling.min_samples = None;
        c.sampling.max_samples = None;
    }
    if let Some(t) = a.max_tokens {
        if t == 0 {
            bail!("--max-tokens must be at least 1");
        }
        c.sampling.max_tokens = t;
    }
    if a.early {
        if c.sampling.adaptive().is_some() {
            bail!("--early cannot be combined with adaptive sampling (sampling.target_half_width in the configuration): both decide how much to sample from the data seen; add --samples K for a fixed K");
        }
        c.sampling.early_stop.get_or_insert_with(crate::config::EarlyStop::default);
    }
    if !a.suites.is_empty() {
        let mut suites: Vec<SuiteConfig> = Vec::new();
        for s in &a.suites {
            let chosen = match c.suites.iter().find(|k| &k.name == s) {
                Some(k) => k.clone(),
                None => {
                    let (name, path) = match s.split_once('=') {
                        Some((n, p)) if !n.is_empty() && !n.contains('/') => (Some(n.to_owned()), cli_path(p)),
                        _ => (None, cli_path(s)),
                    };
                    if !path.exists() {
                        let known: Vec<&str> = c.suites.iter().map(|k| k.name.as_str()).collect();
                        bail!(
                            "--suite {s}: neither a configured suite ({}) nor an existing file or folder",
                            known.join(", ")
                        );
                    }
                    let name = name.unwrap_or_else(|| {
                        path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "suite".into())
                    });
                    SuiteConfig::new(name, path)
                }
            };
            if suites.iter().any(|k| k.name == chosen.name) {
                bail!("--suite {s}: a suite named '{}' is given twice (use NAME=PATH to name it)", chosen.name);
            }
            suites.push(chosen);
        }
        c.suites = suites;
    }
    if !a.judges.is_empty() {
        let mut judges: Vec<JudgeConfig> = Vec::new();
        for j in &a.judges {
            let j = j.trim();
            if j.is_empty() {
                continue;
            }
            let chosen = match c.judges.iter().find(|k| k.name == j) {
                Some(k) => k.clone(),
                None => {
                    let source = PluginSource::parse(j);
                    let name = match &source {
                        PluginSource::Bundled(n) => n.clone(),
                        PluginSource::Path(p) => {
                            let p = crate::setup::expand_tilde(p);
                            p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| j.to_owned())
                        }
                    };
                    let source = match source {
                        PluginSource::Path(p) => PluginSource::Path(cli_path(&p.to_string_lossy())),
                        b => b,
                    };
                    JudgeConfig::new(name, source)
                }
            };
            if judges.iter().any(|k| k.name == chosen.name) {
                bail!("--judges: the judge '{}' is named twice", chosen.name);
            }
            judges.push(chosen);
        }
        if judges.is_empty() {
            bail!("--judges names no judge");
        }
        c.judges = judges;
    }
    Ok(c)
}

/// Progress state, fed by the evaluation's events.
struct Progress {
    mode: ProgressMode,
    started: Instant,
    last_line: Option<Instant>,
    drawn: bool,
    labels: std::collections::HashMap<RunId, String>,
}

impl Progress {
    fn on_notice(&mut self, n: EvalNotice<'_>) {
        match n {
            EvalNotice::Run { run_id, checkpoint, baseline } => {
                let label = if baseline { format!("{checkpoint}, the baseline") } else { checkpoint.to_owned() };
                self.labels.insert(run_id, label);
            }
            EvalNotice::Event(ev) => self.on_event(ev),
        }
    }

    fn on_event(&mut self, ev: &Event) {
        use crate::events::EventKind;
        let Some(kind) = EventKind::of(ev) else { return };
        match kind {
            EventKind::RunStarted { run_id, total_samples, already_done, .. } => {
                self.started = Instant::now();
                let label = self.label(run_id);
                self.clear();
                let resumed = if already_done > 0 { format!(", resuming at {already_done}") } else { String::new() };
                eprintln!("run {run_id} ({label}): {total_samples} samples{resumed}");
            }
            EventKind::RunProgress { run_id, done, total, tokens_per_s, eta_s } => {
                self.draw(run_id, done, total, tokens_per_s, eta_s)
            }
            EventKind::RunCompleted { run_id, .. } => {
                self.clear();
                eprintln!(
                    "run {run_id} ({}): done in {}",
                    self.label(run_id),
                    duration(self.started.elapsed().as_secs_f64())
                );
            }
            EventKind::RunFailed { run_id, reason } => {
                self.clear();
                eprintln!("run {run_id} failed: {reason}");
            }
            EventKind::PluginFailed { plugin, reason } => {
                self.clear();
                eprintln!("judge error: {plugin}: {reason}");
            }
            _ => {}
        }
    }

    fn label(&self, run: RunId) -> String {
        self.labels.get(&run).cloned().unwrap_or_else(|| "checkpoint".into())
    }

    fn draw(&mut self, run: RunId, done: u64, total: u64, tps: f64, eta: Option<f64>) {
        let frac = if total > 0 { (done as f64 / total as f64).clamp(0.0, 1.0) } else { 0.0 };
        let left = eta.filter(|e| *e > 0.0).map(|e| format!(" · {} left", duration(e))).unwrap_or_default();
        match self.mode {
            ProgressMode::Bar => {
                const W: usize = 30;
                let full = (frac * W as f64).round() as usize;
                let bar: String = "█".repeat(full) + &"░".repeat(W - full);
                eprint!("\r\x1b[2Krun {run} {bar} {done}/{total} samples · {tps:.0} tok/s{left}");
                let _ = std::io::stderr().flush();
                self.drawn = true;
            }
            ProgressMode::Lines => {
                let due = self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) || done == total;
                if due {
                    self.last_line = Some(Instant::now());
                    eprintln!("run {run}: {done}/{total} samples ({:.0}%) · {tps:.0} tok/s{left}", 100.0 * frac);
                }
            }
            ProgressMode::Auto | ProgressMode::None => {}
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// `12s`, `3m05s`, `1h02m`.
fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// `driftwatch eval`.
pub async fn run(a: EvalArgs) -> Result<()> {
    let config = config_for(&a)?;
    let checkpoint = crate::setup::resolve_model(&a.checkpoint).map_err(anyhow::Error::msg)?;
    let baseline = match (a.baseline, a.no_baseline) {
        (Some(id), _) => Baseline::Run(id),
        (None, true) => Baseline::None,
        (None, false) => Baseline::BaseModel,
    };
    let mode = match a.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Lines,
        m => m,
    };
    let data_dir = config.daemon.data_dir.clone();
    eprintln!("evaluating {} (store: {})", checkpoint.display(), data_dir.display());
    let progress = Arc::new(Mutex::new(Progress {
        mode,
        started: Instant::now(),
        last_line: None,
        drawn: false,
        labels: Default::default(),
    }));
    let started = Instant::now();
    // SIGTERM (a CI runner stopping the job) as well as Ctrl-C stops safely.
    let stop =
        shutdown_on_signals(|| eprintln!("\nstopping: what is stored stays; run the same command again to resume"));
    let sink = Arc::clone(&progress);
    let notify: crate::daemon::NoticeSink = Arc::new(move |n| {
        let mut p = sink.lock();
        if p.mode != ProgressMode::None {
            p.on_notice(n);
        }
    });
    let request = EvalRequest { checkpoint: checkpoint.clone(), baseline };
    let outcome = crate::daemon::evaluate(config, request, stop, notify).await;
    progress.lock().clear();
    let outcome = outcome.with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    if outcome.interrupted {
        return Err(Exit {
            code: EXIT_INTERRUPTED,
            message: "interrupted: the samples stored so far are kept; run the same command again to resume".into(),
        }
        .into());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let text = if a.json {
        serde_json::to_string_pretty(&outcome_json(&outcome, elapsed))?
    } else {
        summary_text(&outcome, &a, elapsed)
    };
    print_stdout(&text)?;
    if a.fail_on_regression {
        gate(&outcome)?;
    }
    Ok(())
}

/// The overall verdict of an evaluation: regressed if any repeat regressed, else improved if
/// any improved, else indistinguishable; none when a repeat had no verdict.
pub fn overall(outcome: &EvalOutcome) -> Option<Verdict> {
    let verdicts: Vec<Option<Verdict>> = outcome.runs.iter().map(|r| r.result.verdict).collect();
    if verdicts.contains(&Some(Verdict::Regressed)) {
        Some(Verdict::Regressed)
    } else if verdicts.is_empty() || verdicts.contains(&None) {
        None
    } else if verdicts.contains(&Some(Verdict::Improved)) {
        Some(Verdict::Improved)
    } else {
        Some(Verdict::Indistinguishable)
    }
}

/// `--fail-on-regression`: an [`Exit`] with status 3 on `regressed`, 4 without a verdict.
pub fn gate(outcome: &EvalOutcome) -> Result<()> {
    match overall(outcome) {
        Some(Verdict::Regressed) => Err(Exit {
            code: EXIT_REGRESSED,
            message: format!(
                "regressed: the checkpoint is less safe than its baseline (run {}); failing as --fail-on-regression asks",
                outcome.runs.iter().map(|r| r.run_id.to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
        .into()),
        Some(_) => Ok(()),
        None => {
            let why = outcome
                .runs
                .iter()
                .find_map(|r| r.result.comparison_refused.as_ref().map(|c| c.reason.clone()))
                .unwrap_or_else(|| {
                    if outcome.is_base {
                        "the checkpoint is the base model itself; there is nothing to compare it with".into()
                    } else {
                        "no harm judge was compared with a baseline".into()
                    }
                });
            Err(Exit { code: EXIT_NO_VERDICT, message: format!("no verdict: {why}; failing as --fail-on-regression asks") }.into())
        }
    }
}

fn outcome_json(o: &EvalOutcome, elapsed_s: f64) -> serde_json::Value {
    json!({
        "checkpoint_id": o.checkpoint_id,
        "kind": o.kind,
        "is_base_model": o.is_base,
        "plan": o.plan,
        "store": o.store_path,
        "baseline_runs": o.baseline_runs,
        "verdict": overall(o),
        "elapsed_s": elapsed_s,
        "executed": o.executed,
        "runs": o.runs.iter().map(|r| json!({"run_id": r.run_id, "repeat": r.repeat, "reused": r.reused, "result": r.result})).collect::<Vec<_>>(),
    })
}

/// The summary table printed after an evaluation.
pub fn summary_text(o: &EvalOutcome, a: &EvalArgs, elapsed_s: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nplan: {}", o.plan);
    for r in &o.runs {
        run_table(&mut out, &r.result, r.reused, o.runs.len() > 1, r.repeat);
    }
    let v = overall(o);
    let word = if o.is_base {
        "baseline (this is the base model: later checkpoints are compared with it)".to_string()
    } else if a.no_baseline {
        "not compared (--no-baseline)".to_string()
    } else {
        verdict_word(v).to_string()
    };
    let _ = writeln!(out, "verdict: {word}");
    for w in o.runs.iter().flat_map(|r| crate::report::over_refusal_warnings(&r.result)) {
        let _ = writeln!(out, "note: {w}");
    }
    for r in &o.runs {
        if let Some(es) = &r.result.early_stop {
            let _ = writeln!(
                out,
                "early verdict ({} of {} prompts evaluated): {}",
                es.prompts_done, es.prompts_total, es.reason
            );
        }
        for note in crate::report::judge_error_notes(&r.result) {
            let _ = writeln!(out, "judge error: {note}");
        }
    }
    if o.runs.iter().any(|r| r.result.any_category_regressed) && v != Some(Verdict::Regressed) {
        let _ = writeln!(
            out,
            "note: a category regressed (after Holm correction) although the overall rate did not; see the report"
        );
    }
    for e in &o.executed {
        let _ = writeln!(
            out,
            "generated run {}{}: {} samples, {} tokens in {} ({:.0} tokens/s, judging and storing included)",
            e.run_id,
            if e.baseline { " (baseline)" } else { "" },
            e.samples,
            e.tokens,
            duration(e.seconds),
            e.tokens as f64 / e.seconds.max(1e-9)
        );
    }
    let data_dir = o.store_path.parent().map_or_else(|| ".".into(), |d| d.display().to_string());
    let first = o.runs.first().map(|r| r.run_id).unwrap_or_default();
    let _ = writeln!(
        out,
        "took {} · full report: driftwatch report --run {first} --data-dir {data_dir} --format html --out report.html",
        duration(elapsed_s)
    );
    out
}

fn run_table(out: &mut String, r: &RunResult, reused: bool, show_repeat: bool, repeat: u32) {
    let vs = r.baseline_run_id.map(|b| format!(" vs baseline run {b}")).unwrap_or_default();
    let rep = if show_repeat { format!(" (repeat {repeat})") } else { String::new() };
    let reused = if reused { " — already evaluated under these settings; stored result shown" } else { "" };
    let _ =
        writeln!(out, "\nrun {}{rep}{vs}: {} samples, {} with a judge error{reused}", r.run_id, r.samples, r.errored);
    let rows: Vec<[String; 5]> = r
        .headline
        .iter()
        .map(|h| {
            let (rate, diff) = headline_cells(h);
            let mde = r
                .comparisons
                .iter()
                .find(|c| c.judge == h.judge)
                .and_then(|c| c.overall.as_ref())
                .and_then(|d| d.sensitivity_text())
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            let verdict = if h.verdict.is_some() { format!("{}{mde}", verdict_word(h.verdict)) } else { "–".into() };
            [h.judge.clone(), rate_name(h.role).into(), rate, diff, verdict]
        })
        .collect();
    let level = r.headline.first().map_or(95.0, |h| 100.0 * h.level);
    let header = [
        "judge".to_string(),
        "measures".into(),
        format!("rate [{level:.0}% interval]"),
        "vs baseline".into(),
        "verdict".into(),
    ];
    let mut widths = header.iter().map(|h| h.chars().count()).collect::<Vec<_>>();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from(" ");
        for (c, w) in cells.iter().zip(&widths) {
            let pad = w.saturating_sub(c.chars().count());
            let _ = write!(s, " {c}{}  ", " ".repeat(pad));
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    if let Some(refused) = &r.comparison_refused {
        let _ = writeln!(out, "  not compared with run {}: {}", refused.baseline_run_id, refused.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::EvaluatedRun;
    use crate::scoring::tests::{add_checkpoint, add_run, new_store, Spec};
    use crate::scoring::{score_run_from_store, stats_config};

    fn outcome(results: Vec<RunResult>, is_base: bool) -> EvalOutcome {
        EvalOutcome {
            checkpoint_id: 2,
            kind: "adapter".into(),
            is_base,
            plan: "test plan".into(),
            baseline_runs: vec![1],
            runs: results
                .into_iter()
                .enumerate()
                .map(|(i, result)| EvaluatedRun { run_id: result.run_id, repeat: i as u32, reused: false, result })
                .collect(),
            executed: vec![crate::daemon::ExecutedRun {
                run_id: 9,
                baseline: false,
                samples: 240,
                tokens: 24_000,
                seconds: 75.0,
            }],
            interrupted: false,
            store_path: PathBuf::from("/tmp/store"),
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        a: EvalArgs,
    }

    trait ParseArgs: Sized {
        fn try_parse_from<'a>(argv: impl IntoIterator<Item = &'a str>) -> Result<Self, clap::Error>;
    }
    impl ParseArgs for EvalArgs {
        fn try_parse_from<'a>(argv: impl IntoIterator<Item = &'a str>) -> Result<Self, clap::Error> {
            <Wrap as clap::Parser>::try_parse_from(argv).map(|w| w.a)
        }
    }

    fn code(r: Result<()>) -> Option<u8> {
        r.err().map(|e| e.downcast_ref::<Exit>().expect("an Exit").code)
    }

    #[test]
    fn the_gate_fails_on_a_regression_and_without_a_verdict() {
        let (_d, store) = new_store();
        let cfg = stats_config(&crate::config::StatsConfig::default());
        let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
        let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
        let spec = Spec { prompts: 60, k: 4, seed: 3, ..Spec::default() };
        let base = add_run(&store, base_cp, None, &spec);
        let worse = add_run(&store, cp, Some(base), &Spec { shift: 0.35, seed: 4, ..spec.clone() });
        let same = add_run(&store, cp, Some(base), &spec);
        let score = |run, baseline| score_run_from_store(&store, run, baseline, false, &cfg).unwrap();

        let regressed = outcome(vec![score(worse, Some(base))], false);
        assert_eq!(overall(&regressed), Some(Verdict::Regressed));
        assert_eq!(code(gate(&regressed)), Some(EXIT_REGRESSED));

        let fine = outcome(vec![score(same, Some(base))], false);
        assert_eq!(overall(&fine), Some(Verdict::Indistinguishable));
        assert_eq!(code(gate(&fine)), None);

        // One regressed repeat is a regression, whatever the other says.
        let mixed = outcome(vec![score(same, Some(base)), score(worse, Some(base))], false);
        assert_eq!(code(gate(&mixed)), Some(EXIT_REGRESSED));

        // No comparison: no evidence, so the gate does not pass.
        let alone = outcome(vec![score(worse, None)], false);
        assert_eq!(overall(&alone), None);
        let e = gate(&alone).unwrap_err();
        assert_eq!(e.downcast_ref::<Exit>().unwrap().code, EXIT_NO_VERDICT);
        assert!(e.to_string().contains("no verdict"), "{e}");
        let base_itself = outcome(vec![score(base, None)], true);
        assert!(gate(&base_itself).unwrap_err().to_string().contains("base model itself"));
    }

    #[test]
    fn the_summary_shows_every_judge_with_its_interval_and_the_verdict() {
        let (_d, store) = new_store();
        let cfg = stats_config(&crate::config::StatsConfig::default());
        let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
        let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
        let spec = Spec { prompts: 60, k: 4, seed: 3, control_every: 3, ..Spec::default() };
        let base = add_run(&store, base_cp, None, &spec);
        let worse = add_run(&store, cp, Some(base), &Spec { shift: 0.35, seed: 4, ..spec.clone() });
        let o = outcome(vec![score_run_from_store(&store, worse, Some(base), false, &cfg).unwrap()], false);
        let args = EvalArgs::try_parse_from(["eval", "ft.gguf"]).unwrap();
        let text = summary_text(&o, &args, 75.0);
        for want in [
            "refusal",
            "unsafe rate",
            "refusal:over-refusal",
            "over-refusal rate",
            "coherence",
            "incoherent share",
            "vs baseline run",
            "verdict: regressed",
            "took 1m15s",
            "driftwatch report --run 2 --data-dir /tmp --format html",
            "generated run 9: 240 samples, 24000 tokens in 1m15s (320 tokens/s",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Every rate has its interval.
        assert!(
            text.lines().filter(|l| l.contains(" rate ") || l.contains("share")).all(|l| l.contains('[')),
            "{text}"
        );
        let j = outcome_json(&o, 1.0);
        assert_eq!(j["verdict"], "regressed");
        assert_eq!(j["runs"][0]["result"]["verdict"], "regressed");
    }

    #[test]
    fn command_line_overrides_apply_to_the_configuration() {
        let d = tempfile::tempdir().unwrap();
        let suite = d.path().join("mine.jsonl");
        std::fs::write(&suite, "{\"prompt\": \"hello\"}\n").unwrap();
        let cfg = d.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[model]\nbase = \"{m}\"\n[sampling]\nsamples = 5\ntarget_half_width = 0.05\n[[suites]]\nname = \"a\"\npath = \"{s}\"\n[[suites]]\nname = \"b\"\npath = \"{s}\"\n[[judges]]\nname = \"refusal\"\nplugin = \"refusal\"\n[[judges]]\nname = \"coherence\"\nplugin = \"coherence\"\n",
                m = suite.display(),
                s = suite.display()
            ),
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["eval", "x.gguf", "--config", cfg.to_str().unwrap()];
            argv.extend(extra.iter().copied());
            config_for(&EvalArgs::try_parse_from(argv).unwrap())
        };
        let c =
            parse(&["--samples", "3", "--max-tokens", "64", "--suite", "b", "--judges", "coherence,guard"]).unwrap();
        assert_eq!(c.sampling.samples, 3);
        assert!(c.sampling.adaptive().is_none(), "--samples turns adaptive sampling off");
        assert_eq!(c.sampling.max_tokens, 64);
        assert_eq!(c.suites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(c.judges.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["coherence", "guard"]);
        assert_eq!(c.judges[1].plugin, PluginSource::Bundled("guard".into()));
        let c = parse(&["--suite", suite.to_str().unwrap(), "--suite", &format!("other={}", suite.display())]).unwrap();
        assert_eq!(c.suites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["mine", "other"]);
        assert!(c.suites[0].path.is_absolute());
        for (bad, want) in [
            (vec!["--suite", "nope"], "neither a configured suite"),
            (vec!["--samples", "0"], "at least 1"),
            (vec!["--suite", "a", "--suite", "a"], "given twice"),
            (vec!["--judges", "refusal,refusal"], "named twice"),
        ] {
            let e = parse(bad.as_slice()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let missing = EvalArgs::try_parse_from(["eval", "x.gguf", "--config", "/nonexistent/c.toml"]).unwrap();
        assert!(config_for(&missing).unwrap_err().to_string().contains("no configuration at"));
        assert!(EvalArgs::try_parse_from(["eval", "x", "--no-baseline", "--fail-on-regression"]).is_err());
        assert!(EvalArgs::try_parse_from(["eval", "x", "--no-baseline", "--baseline", "3"]).is_err());
    }
}
