//! Markdown rendering of a [`Report`], and the readable table `driftwatch compare` prints.

use std::fmt::Write;

use super::{
    headline_name, pct, pct_interval, pp_interval, rate_name, short_path, utc, verdict_word, Report, RunReport,
};
use crate::scoring::{LineRole, RunResult};
use crate::stats::{BaselineComparison, DifferenceResult, Estimate, JudgeScores, TestKind};

fn opt_pct(e: Option<&Estimate>) -> String {
    e.map_or_else(|| "–".to_string(), pct_interval)
}

fn opt_f(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// Name of a test kind.
pub fn test_name(k: TestKind) -> &'static str {
    match k {
        TestKind::McnemarExact => "McNemar exact",
        TestKind::SignFlipExact => "sign-flip (exact)",
        TestKind::SignFlipMonteCarlo => "sign-flip (Monte Carlo)",
        TestKind::SignTest => "sign test",
    }
}

/// Formats a p-value (scientific notation below 1e-4).
pub fn p_fmt(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn role_of(result: &RunResult, judge: &str) -> LineRole {
    result.role(judge)
}

fn difference_row(out: &mut String, label: &str, d: &DifferenceResult) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} | {} (p = {}) | {} | {} | **{}** |",
        d.n_prompts,
        pct(d.run_rate),
        pct(d.baseline_rate),
        pp_interval(d.mean_difference, d.lo, d.hi),
        test_name(d.test.kind),
        p_fmt(d.test.p_value),
        p_fmt(d.p_value_used),
        d.sensitivity_text().map_or("–".into(), |t| t.trim_start_matches("MDE ").to_owned()),
        verdict_word(Some(d.verdict)),
    );
}

/// The comparison section (also the body of `driftwatch compare`).
pub fn comparison_section(out: &mut String, result: &RunResult, heading: &str) {
    let base = match result.baseline_run_id {
        Some(b) => b,
        None => {
            let _ = writeln!(out, "{heading} Baseline comparison\n\nNo baseline for this run.\n");
            return;
        }
    };
    let _ = writeln!(
        out,
        "{heading} Comparison with baseline run {base}\n\n**Overall verdict: {}**{}\n",
        verdict_word(result.verdict).to_uppercase(),
        if result.comparison_forced { " — FORCED over blocking differences: not a clean comparison" } else { "" }
    );
    if let Some(r) = &result.comparison_refused {
        let _ =
            writeln!(out, "Comparison **refused**: the runs are not comparable (use `--force` to compare anyway).\n");
        differences_table(out, &r.differences);
        return;
    }
    if result.any_category_regressed && result.verdict != Some(crate::stats::Verdict::Regressed) {
        let _ = writeln!(out, "⚠ A category regressed (after Holm) although the overall verdict did not.\n");
    }
    for w in super::over_refusal_warnings(result) {
        let _ = writeln!(out, "⚠ {w}.\n");
    }
    if let Some(note) = super::early_stop_note(result) {
        let _ = writeln!(out, "{note}.\n");
    }
    let _ = writeln!(
        out,
        "Difference = run − baseline over prompts present in both, interval at level 1 − α; p from the \
         driving test (categories: Holm-adjusted). MDE = smallest true difference detected 80% of the time.\n"
    );
    let _ = writeln!(
        out,
        "| judge / category | paired prompts | run | baseline | difference [interval] | test | p used | MDE | verdict |\n|---|---|---|---|---|---|---|---|---|"
    );
    for c in &result.comparisons {
        let role = role_of(result, &c.judge);
        match &c.overall {
            Some(d) => difference_row(out, &format!("**{}** ({}), all", c.judge, rate_name(role)), d),
            None => {
                let _ =
                    writeln!(out, "| **{}** | 0 | – | – | nothing paired | – | – | – | indistinguishable |", c.judge);
            }
        }
        for cat in &c.per_category {
            difference_row(out, &format!("{} · {}", c.judge, cat.category), &cat.result);
        }
    }
    out.push('\n');
    let forced_or_engine: Vec<&BaselineComparison> =
        result.comparisons.iter().filter(|c| !c.comparability.differences.is_empty()).collect();
    if let Some(c) = forced_or_engine.first() {
        let _ = writeln!(
            out,
            "Fingerprint differences{}:\n",
            if c.comparability.forced { " (comparison forced)" } else { " (not blocking)" }
        );
        differences_table(out, &c.comparability.differences);
    }
    for c in &result.comparisons {
        if c.n_prompts_only_in_run + c.n_prompts_only_in_baseline > 0 {
            let _ = writeln!(
                out,
                "- {}: {} prompt(s) only in the run, {} only in the baseline (left out of the pairing).",
                c.judge, c.n_prompts_only_in_run, c.n_prompts_only_in_baseline
            );
        }
    }
}

fn differences_table(out: &mut String, diffs: &[crate::stats::FingerprintDifference]) {
    let _ = writeln!(out, "| field | run | baseline | blocking |\n|---|---|---|---|");
    for d in diffs {
        let _ =
            writeln!(out, "| {} | `{}` | `{}` | {} |", d.field, d.left, d.right, if d.blocking { "yes" } else { "no" });
    }
    out.push('\n');
}

/// The text `driftwatch compare` prints.
pub fn compare_text(result: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run {} against baseline run {}\n",
        result.run_id,
        result.baseline_run_id.map_or("–".into(), |b| b.to_string())
    );
    headline_table(&mut out, result);
    comparison_section(&mut out, result, "##");
    out
}

fn headline_table(out: &mut String, result: &RunResult) {
    let _ = writeln!(
        out,
        "| judge | measures | rate [interval] | vs baseline | verdict | errored |\n|---|---|---|---|---|---|"
    );
    for h in &result.headline {
        let (rate, diff) = super::headline_cells(h);
        let _ = writeln!(
            out,
            "| {} | {} | {rate} | {diff} | {} | {} |",
            h.judge,
            rate_name(h.role),
            if h.verdict.is_some() { verdict_word(h.verdict) } else { "–" },
            h.errored
        );
    }
    out.push('\n');
    for note in super::judge_error_notes(result) {
        let _ = writeln!(out, "- {note}.");
    }
    if !result.corrections.is_empty() {
        out.push('\n');
    }
}

fn judge_table(out: &mut String, result: &RunResult) {
    let _ = writeln!(
        out,
        "| judge | measures | rate, prompt-clustered [interval] | pooled (Wilson, reference) | refusal rate | mean score | unsafe among coherent | prompts | samples | errored |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for j in &result.scores.per_judge {
        let m = &j.overall;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            j.judge,
            rate_name(role_of(result, &j.judge)),
            opt_pct(m.unsafe_rate.as_ref()),
            opt_pct(m.unsafe_rate_wilson.as_ref()),
            opt_pct(m.refusal_rate.as_ref()),
            m.mean_score.as_ref().map_or("–".into(), |e| format!("{:.2} [{:.2}, {:.2}]", e.value, e.lo, e.hi)),
            opt_pct(m.coherent_unsafe_rate.as_ref()),
            m.unsafe_rate.as_ref().map_or(0, |e| e.n_prompts),
            m.unsafe_rate.as_ref().map_or(0, |e| e.n_samples),
            j.missing.n_errored,
        );
    }
    out.push('\n');
}

fn category_table(out: &mut String, result: &RunResult, j: &JudgeScores) {
    let _ = writeln!(
        out,
        "**{}** ({}) by category:\n\n| category | rate [interval] | method | refusal rate | prompts | samples | errored |\n|---|---|---|---|---|---|---|",
        j.judge,
        rate_name(role_of(result, &j.judge))
    );
    for c in &j.per_category {
        let e = c.metrics.unsafe_rate.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.category,
            opt_pct(e),
            e.map_or("–".into(), |e| serde_json::to_value(e.method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()),
            opt_pct(c.metrics.refusal_rate.as_ref()),
            e.map_or(0, |e| e.n_prompts),
            e.map_or(0, |e| e.n_samples),
            j.missing.errored_per_category.get(&c.category).copied().unwrap_or(0),
        );
    }
    out.push('\n');
}

fn variance_table(out: &mut String, result: &RunResult) {
    let _ = writeln!(
        out,
        "| judge | between-prompt σ²_b | within-prompt σ²_w | ICC | prompts with ≥2 samples | share of those disagreeing |\n|---|---|---|---|---|---|"
    );
    for j in &result.scores.per_judge {
        if let Some(v) = &j.variance {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                j.judge,
                opt_f(v.between_prompt, 4),
                opt_f(v.within_prompt, 4),
                opt_f(v.icc, 2),
                v.n_prompts_with_repeats,
                v.share_prompts_disagreeing.map_or("–".into(), pct),
            );
        }
    }
    out.push_str("\nHigh ICC: prompts drive the score (more prompts narrow the interval). Low ICC: sampling noise dominates (more samples per prompt help).\n\n");
}

fn agreement_table(out: &mut String, result: &RunResult) {
    if result.scores.agreement.is_empty() {
        out.push_str("Judge agreement: only one harm judge scored this run (the coherence judge measures something else and is not compared).\n\n");
        return;
    }
    let _ = writeln!(
        out,
        "| judges | paired samples | observed agreement | κ [asymptotic] | κ [prompt bootstrap] |\n|---|---|---|---|---|"
    );
    for a in &result.scores.agreement {
        let _ = writeln!(
            out,
            "| {} × {} | {} | {} | {} [{}, {}] | [{}, {}] |",
            a.first_judge,
            a.second_judge,
            a.table.total(),
            a.observed_agreement.map_or("–".into(), pct),
            opt_f(a.kappa, 2),
            opt_f(a.kappa_lo, 2),
            opt_f(a.kappa_hi, 2),
            opt_f(a.kappa_bootstrap_lo, 2),
            opt_f(a.kappa_bootstrap_hi, 2),
        );
    }
    out.push('\n');
}

fn missing_table(out: &mut String, result: &RunResult) {
    let _ = writeln!(
        out,
        "| judge | observed | errored | share errored | prompts without any verdict | pooled rate observed | if every errored sample were unsafe |\n|---|---|---|---|---|---|---|"
    );
    for j in &result.scores.per_judge {
        let m = &j.missing;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            j.judge,
            m.n_observed,
            m.n_errored,
            pct(m.share_errored),
            m.n_prompts_without_verdict,
            m.pooled_unsafe_rate_observed.map_or("–".into(), pct),
            m.pooled_unsafe_rate_if_errored_unsafe.map_or("–".into(), pct),
        );
    }
    out.push('\n');
}

/// Key provenance fields as `(name, value)` pairs (missing fields are skipped).
pub fn provenance_fields(p: &serde_json::Value) -> Vec<(String, String)> {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "–".into(),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    for key in [
        "driftwatch_version",
        "llama_cpp",
        "model",
        "adapter",
        "suites",
        "judges",
        "sampling",
        "engine",
        "chat_template",
        "seeds",
        "started_ms",
    ] {
        if let Some(v) = p.get(key) {
            let text = if key == "started_ms" { v.as_i64().map_or_else(|| s(v), utc) } else { s(v) };
            out.push((key.to_string(), text));
        }
    }
    if let Some(fp) = p.get("fingerprint") {
        out.push(("fingerprint".into(), s(fp)));
    }
    out
}

pub(crate) fn run_section(out: &mut String, r: &RunReport) {
    let res = &r.result;
    let _ = writeln!(
        out,
        "## Run {} — {}\n\n- checkpoint: `{}` (sha256 `{}`)\n- status: {}{}\n- queued: {}{}\n- samples: {} ({} with an errored or missing verdict)\n",
        r.run_id,
        short_path(&r.checkpoint_path),
        r.checkpoint_path,
        r.checkpoint_sha256,
        r.status,
        r.error
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})")),
        utc(r.created_at_ms),
        r.finished_at_ms
            .map_or(String::new(), |f| format!(", finished {}", utc(f))),
        res.samples,
        res.errored,
    );
    if res.samples == 0 {
        out.push_str("No samples stored yet.\n\n");
        return;
    }
    if r.status != "completed" {
        out.push_str("⚠ The run is not completed: these numbers are partial.\n\n");
    }
    out.push_str("### Scores per judge\n\n");
    let _ = writeln!(
        out,
        "Intervals at level {}; the headline rate averages prompts (each prompt weighs the same) and its interval resamples prompts.\n",
        res.scores.config.level
    );
    judge_table(out, res);
    out.push_str("### Per category\n\n");
    for j in &res.scores.per_judge {
        category_table(out, res, j);
    }
    comparison_section(out, res, "###");
    out.push_str("\n### Variance by source\n\n");
    variance_table(out, res);
    out.push_str("### Judge agreement\n\n");
    agreement_table(out, res);
    out.push_str("### Missing verdicts\n\nErrored verdicts are left out (never counted as safe). If the last column is far from the observed rate, the missing data matter.\n\n");
    missing_table(out, res);
    out.push_str("### Provenance\n\n");
    for (k, v) in provenance_fields(&r.provenance) {
        let _ = writeln!(out, "- {k}: `{}`", v.replace('`', "'"));
    }
    out.push('\n');
}

/// Renders the whole report as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# driftwatch report — {}\n\nGenerated {} by driftwatch {}; confidence level {}, α = {}, {} bootstrap replicates, seed {}.\n",
        report.title,
        utc(report.generated_ms),
        report.driftwatch_version,
        report.stats.level,
        report.stats.alpha,
        report.stats.bootstrap_replicates,
        report.stats.seed
    );
    if report.runs.is_empty() {
        out.push_str("No runs.\n");
        return out;
    }
    out.push_str("## Summary\n\n| run | checkpoint | status | verdict | headline |\n|---|---|---|---|---|\n");
    for r in &report.runs {
        let head: Vec<String> = r
            .result
            .headline
            .iter()
            .filter_map(|h| {
                let name = headline_name(h);
                Some(format!("{name} {} [{}, {}]", pct(h.value?), pct(h.lo?), pct(h.hi?)))
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.run_id,
            short_path(&r.checkpoint_path),
            r.status,
            if r.result.comparison_refused.is_some() { "not comparable" } else { verdict_word(r.result.verdict) },
            head.join("; ")
        );
    }
    out.push('\n');
    if let Some(trend) = &report.trend {
        out.push_str("## Trend across checkpoints\n\nCompleted runs in time order; headline unsafe rate per harm judge.\n\n| queued | run | checkpoint | judge | rate [interval] | verdict |\n|---|---|---|---|---|---|\n");
        for p in trend {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                utc(p.time_ms),
                p.run_id,
                short_path(&p.checkpoint_path),
                p.judge,
                pct_interval(&p.estimate),
                verdict_word(p.verdict)
            );
        }
        out.push('\n');
    }
    if !report.repeats.is_empty() {
        out.push_str("## Repeated measurements\n\nRuns of one checkpoint with comparable settings. If the spread between runs is much larger than the reported half-widths, something outside the model is moving the numbers.\n\n| checkpoint | runs | judge | min | max | mean | SD | mean half-width | intervals covering the others' mean |\n|---|---|---|---|---|---|---|---|---|\n");
        for g in &report.repeats {
            for j in &g.per_judge {
                let s = &j.summary;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.1} pp | {} |",
                    short_path(&g.checkpoint_path),
                    g.run_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    j.judge,
                    pct(s.min),
                    pct(s.max),
                    pct(s.mean),
                    s.sd.map_or("–".into(), |x| format!("{:.1} pp", 100.0 * x)),
                    100.0 * s.mean_reported_half_width,
                    s.share_intervals_covering_others_mean.map_or("–".into(), pct),
                );
            }
        }
        out.push('\n');
    }
    if let Some(sens) = &report.sensitivity {
        out.push_str("## Setup sensitivity\n\n");
        out.push_str(&crate::sensitivity::text(sens));
        out.push('\n');
    }
    for r in &report.runs {
        run_section(&mut out, r);
    }
    out
}
