//! The HTML report: one self-contained file (inline CSS, inline SVG charts, no JavaScript,
//! no network). Per run: the verdict banner, unsafe rates per judge and per category with
//! their intervals (run and baseline side by side), the per-category differences around 0,
//! and the detailed tables; plus the repeated-measurement spread and, for `--all`, the trend
//! across checkpoints.

use std::fmt::Write;

use super::markdown;
use super::svg::{esc, ErrorBarChart, ForestPlot, ForestRow, Group, Point, IMPROVED, NEUTRAL, REGRESSED};
use super::{headline_name, pct, pp_interval, rate_name, short_path, utc, verdict_word, Report, RunReport};
use crate::scoring::LineRole;
use crate::stats::{Estimate, RunScores, Verdict};

const CSS: &str = r#"
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1d;background:#fafafa;line-height:1.45}
main{max-width:1140px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:34px 0 10px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 8px}.meta{color:#555;font-size:13px;margin:0 0 16px}
section.run{background:#fff;border:1px solid #ddd;border-radius:8px;padding:4px 22px 18px;margin:26px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0 14px;background:#fff}
th,td{border:1px solid #d6d6d6;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
code{font-size:12px;background:#f3f3f3;padding:0 3px;border-radius:3px;word-break:break-all}
.banner{border-radius:8px;padding:14px 20px;margin:14px 0 10px;font-size:15px}
.banner .word{font-size:30px;font-weight:800;letter-spacing:.04em;display:block}
.banner.regressed{background:#D55E00;color:#fff}.banner.improved{background:#009E73;color:#fff}
.banner.indistinguishable{background:#e9f0f7;color:#123;border:2px solid #0072B2}
.banner.none{background:#eee;color:#333;border:2px dashed #999}.banner.refused{background:#fff4d6;color:#4a3400;border:2px solid #E69F00}
.chip{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:700}
.chip.regressed{background:#D55E00;color:#fff}.chip.improved{background:#009E73;color:#fff}
.chip.indistinguishable{background:#e9f0f7;color:#123;border:1px solid #0072B2}.chip.none{background:#eee;color:#444}
.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{background:#fff;border:1px solid #e2e2e2;border-radius:6px;max-width:100%;height:auto}
.ctitle{font-size:15px;font-weight:700;fill:#1d1d1d}.legend{font-size:12.5px;fill:#333}.tick{font-size:12px;fill:#333}.axis{font-size:13px;fill:#222;font-weight:600}.tag{font-size:12px;font-weight:700}
.note{font-size:13px;color:#444;margin:4px 0 10px}.warn{color:#8a3b00;font-weight:600}
details{margin-top:14px}summary{cursor:pointer;font-weight:600;font-size:15px}
"#;

fn verdict_class(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Regressed) => "regressed",
        Some(Verdict::Improved) => "improved",
        Some(Verdict::Indistinguishable) => "indistinguishable",
        None => "none",
    }
}

fn verdict_colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Regressed => REGRESSED,
        Verdict::Improved => IMPROVED,
        Verdict::Indistinguishable => NEUTRAL,
    }
}

fn inline(s: &str) -> String {
    let e = esc(s);
    let mut out = String::new();
    let mut bold = false;
    let mut code = false;
    let mut rest = e.as_str();
    while !rest.is_empty() {
        if !code && rest.starts_with("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
        } else if rest.starts_with('`') {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = &rest[1..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if code {
        out.push_str("</code>");
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

fn cells(line: &str) -> Vec<&str> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(str::trim).collect()
}

/// Converts the Markdown this module's sibling writes (headings, pipe tables, bullet lists,
/// paragraphs, `**bold**`, `` `code` ``) to HTML.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() {
            i += 1;
        } else if let Some(h) = l.strip_prefix("### ") {
            let _ = write!(out, "<h3>{}</h3>", inline(h));
            i += 1;
        } else if let Some(h) = l.strip_prefix("## ") {
            let _ = write!(out, "<h2>{}</h2>", inline(h));
            i += 1;
        } else if let Some(h) = l.strip_prefix("# ") {
            let _ = write!(out, "<h1>{}</h1>", inline(h));
            i += 1;
        } else if l.starts_with('|') {
            out.push_str("<table>");
            let mut first = true;
            while i < lines.len() && lines[i].starts_with('|') {
                let row = cells(lines[i]);
                if row.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
                    i += 1;
                    continue;
                }
                let tag = if first { "th" } else { "td" };
                out.push_str("<tr>");
                for c in row {
                    let _ = write!(out, "<{tag}>{}</{tag}>", inline(c));
                }
                out.push_str("</tr>");
                first = false;
                i += 1;
            }
            out.push_str("</table>");
        } else if l.starts_with("- ") {
            out.push_str("<ul>");
            while i < lines.len() && lines[i].starts_with("- ") {
                let _ = write!(out, "<li>{}</li>", inline(&lines[i][2..]));
                i += 1;
            }
            out.push_str("</ul>");
        } else {
            let mut para = Vec::new();
            while i < lines.len()
                && !lines[i].trim().is_empty()
                && !lines[i].starts_with('|')
                && !lines[i].starts_with('#')
                && !lines[i].starts_with("- ")
            {
                para.push(lines[i]);
                i += 1;
            }
            let _ = write!(out, "<p>{}</p>", inline(&para.join(" ")));
        }
    }
    out
}

fn point(series: usize, e: &Estimate, what: &str) -> Point {
    Point {
        series,
        value: e.value,
        lo: e.lo,
        hi: e.hi,
        tip: format!(
            "{what}: {} [{}, {}], {} prompts, {} samples",
            pct(e.value),
            pct(e.lo),
            pct(e.hi),
            e.n_prompts,
            e.n_samples
        ),
        tag: None,
    }
}

/// `unsafe rate` → `Unsafe rate`.
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn judge_label(r: &RunReport, judge: &str) -> (String, LineRole) {
    match r.result.role(judge) {
        LineRole::Coherence => (format!("{judge} (incoherent share)"), LineRole::Coherence),
        role => (judge.to_string(), role),
    }
}

fn banner(o: &mut String, r: &RunReport) {
    let res = &r.result;
    if let Some(refused) = &res.comparison_refused {
        let fields: Vec<String> = refused.differences.iter().filter(|d| d.blocking).map(|d| d.field.clone()).collect();
        let _ = write!(
            o,
            r#"<div class="banner refused" id="verdict-{}"><span class="word">⚠ NO VERDICT — NOT COMPARABLE</span>The baseline (run {}) was measured under different settings ({}); comparing them would mix the fine-tune's effect with the setup's. See the differences below.</div>"#,
            r.run_id,
            refused.baseline_run_id,
            esc(&fields.join(", "))
        );
        return;
    }
    let cls = verdict_class(res.verdict);
    let (word, explain) = match (res.verdict, res.baseline_run_id) {
        (None, None) => (
            "NO BASELINE".to_string(),
            "This run has no baseline, so there is no verdict: the rates below stand alone.".to_string(),
        ),
        (None, Some(b)) => {
            ("NO VERDICT".to_string(), format!("No harm judge could be compared with baseline run {b}."))
        }
        (Some(v), b) => {
            let icon = match v {
                Verdict::Regressed => "▲",
                Verdict::Improved => "▼",
                Verdict::Indistinguishable => "=",
            };
            let what = match v {
                Verdict::Regressed => "less safe than",
                Verdict::Improved => "safer than",
                Verdict::Indistinguishable => "not distinguishable from",
            };
            let per: Vec<String> = res
                .headline
                .iter()
                .filter(|h| h.role == LineRole::Harm)
                .filter_map(|h| {
                    // An indistinguishable result is only as strong as the design's power.
                    let mde = res
                        .comparisons
                        .iter()
                        .find(|c| c.judge == h.judge)
                        .and_then(|c| c.overall.as_ref())
                        .filter(|d| d.verdict == Verdict::Indistinguishable)
                        .map_or(String::new(), |d| match d.minimum_detectable_effect {
                            Some(m) => format!("; would detect a change of about {:.1} pp", 100.0 * m),
                            None => d.sensitivity_text().map(|t| format!("; {t}")).unwrap_or_default(),
                        });
                    Some(format!(
                        "{}: {} ({}{mde})",
                        h.judge,
                        pp_interval(h.difference?, h.difference_lo?, h.difference_hi?),
                        verdict_word(h.verdict)
                    ))
                })
                .collect();
            (
                format!("{icon} {}", verdict_word(Some(v)).to_uppercase()),
                format!(
                    "This checkpoint is {what} its baseline (run {}{}). Run − baseline: {}.{}",
                    b.map_or("?".into(), |b| b.to_string()),
                    r.baseline.as_ref().map_or(String::new(), |bi| format!(", {}", short_path(&bi.checkpoint_path))),
                    per.join("; "),
                    if res.comparison_forced {
                        " FORCED over blocking setting differences: not a clean comparison."
                    } else {
                        ""
                    }
                ),
            )
        }
    };
    let _ = write!(
        o,
        r#"<div class="banner {cls}" id="verdict-{}"><span class="word">{}</span>{}</div>"#,
        r.run_id,
        esc(&word),
        esc(&explain)
    );
    if res.any_category_regressed && res.verdict != Some(Verdict::Regressed) {
        o.push_str(r#"<p class="warn">⚠ At least one category regressed (after Holm correction) although the overall verdict did not — see the differences by category.</p>"#);
    }
    for w in super::over_refusal_warnings(res) {
        let _ = write!(o, r#"<p class="warn">⚠ {}.</p>"#, esc(&w));
    }
    if let Some(note) = super::early_stop_note(res) {
        let _ = write!(o, r#"<p class="note">{}.</p>"#, esc(&note));
    }
    for note in super::judge_error_notes(res) {
        let _ = write!(o, r#"<p class="note">{}.</p>"#, esc(&note));
    }
}

fn base_estimate<'a>(scores: &'a RunScores, judge: &str, category: Option<&str>) -> Option<&'a Estimate> {
    let j = scores.per_judge.iter().find(|j| j.judge == judge)?;
    match category {
        None => j.overall.unsafe_rate.as_ref(),
        Some(c) => j.per_category.iter().find(|x| x.category == c)?.metrics.unsafe_rate.as_ref(),
    }
}

fn run_charts(o: &mut String, r: &RunReport) {
    let res = &r.result;
    let run_name = format!("this run (#{})", r.run_id);
    // A baseline measured under other settings is not drawn next to the run.
    let baseline = r.baseline.as_ref().filter(|_| res.comparison_refused.is_none());
    let base_name = baseline.map(|b| format!("baseline (#{})", b.run_id));
    let mut series = vec![run_name.clone()];
    if let Some(b) = &base_name {
        series.push(b.clone());
    }
    // 1. Per judge.
    let groups: Vec<Group> = res
        .scores
        .per_judge
        .iter()
        .map(|j| {
            let (label, _) = judge_label(r, &j.judge);
            let mut points = Vec::new();
            if let Some(e) = &j.overall.unsafe_rate {
                points.push(point(0, e, &run_name));
            }
            if let (Some(b), Some(bn)) = (baseline, &base_name) {
                if let Some(e) = base_estimate(&b.scores, &j.judge, None) {
                    points.push(point(1, e, bn));
                }
            }
            Group { label, points }
        })
        .collect();
    o.push_str(r#"<div class="charts">"#);
    o.push_str(
        &ErrorBarChart {
            title: "Rate per judge, with confidence intervals".into(),
            y_label: "share of responses (prompt-averaged)".into(),
            x_label: "judge".into(),
            series: series.clone(),
            groups,
            reference: None,
        }
        .render(),
    );
    // 2. Per category, per harm judge (and over-refusal line).
    for j in res.scores.per_judge.iter().filter(|j| res.role(&j.judge) != LineRole::Coherence) {
        let groups: Vec<Group> = j
            .per_category
            .iter()
            .map(|c| {
                let mut points = Vec::new();
                if let Some(e) = &c.metrics.unsafe_rate {
                    points.push(point(0, e, &run_name));
                }
                if let (Some(b), Some(bn)) = (baseline, &base_name) {
                    if let Some(e) = base_estimate(&b.scores, &j.judge, Some(&c.category)) {
                        points.push(point(1, e, bn));
                    }
                }
                Group { label: c.category.clone(), points }
            })
            .collect();
        o.push_str(
            &ErrorBarChart {
                title: format!("{} by category — judge “{}”", capitalised(rate_name(res.role(&j.judge))), j.judge),
                y_label: "share of responses (prompt-averaged)".into(),
                x_label: "prompt category".into(),
                series: series.clone(),
                groups,
                reference: None,
            }
            .render(),
        );
    }
    // 3. Differences with their intervals around 0.
    for c in res.comparisons.iter().filter(|c| res.role(&c.judge) != LineRole::Coherence) {
        let mut rows = Vec::new();
        if let Some(d) = &c.overall {
            rows.push(ForestRow {
                label: "all prompts".into(),
                value: d.mean_difference,
                lo: d.lo,
                hi: d.hi,
                colour: verdict_colour(d.verdict),
                note: format!("{} (p = {})", verdict_word(Some(d.verdict)), markdown::p_fmt(d.p_value_used)),
                bold: true,
            });
        }
        for cat in &c.per_category {
            let d = &cat.result;
            rows.push(ForestRow {
                label: cat.category.clone(),
                value: d.mean_difference,
                lo: d.lo,
                hi: d.hi,
                colour: verdict_colour(d.verdict),
                note: format!("{} (Holm p = {})", verdict_word(Some(d.verdict)), markdown::p_fmt(d.p_value_used)),
                bold: false,
            });
        }
        if rows.is_empty() {
            continue;
        }
        o.push_str(
            &ForestPlot {
                title: format!(
                    "Change vs baseline — judge “{}” ({}% interval{})",
                    c.judge,
                    (100.0 * (1.0 - c.alpha)).round(),
                    if c.comparability.forced { ", FORCED" } else { "" }
                ),
                x_label: format!(
                    "run − baseline {} (percentage points); intervals crossing 0 = no clear change",
                    rate_name(res.role(&c.judge))
                ),
                rows,
            }
            .render(),
        );
    }
    o.push_str("</div>");
    o.push_str(r#"<p class="note">Dots are point estimates; bars are confidence intervals (prompt-clustered bootstrap: prompts resampled with their samples)."#);
    if baseline.is_some() {
        o.push_str(" Orange squares are the baseline, blue circles this run; overlapping bars are not the test — the paired comparison is the change chart.");
    }
    if !res.comparisons.is_empty() {
        o.push_str(" In the change chart, vermillion = regressed, green = improved, grey = indistinguishable; a category's verdict uses its Holm-adjusted p-value (several categories are tested at once), so a category interval just clear of 0 can still be indistinguishable.");
    }
    o.push_str("</p>");
}

fn repeats_html(o: &mut String, report: &Report) {
    if report.repeats.is_empty() {
        return;
    }
    o.push_str("<h2>Repeated measurements</h2><p class=\"note\">Several runs of one checkpoint with comparable settings (different seeds). The dashed line is their mean. If the points scatter much more than their bars are wide, something besides sampling noise moves the numbers.</p><div class=\"charts\">");
    for g in &report.repeats {
        for j in &g.per_judge {
            let groups = j
                .estimates
                .iter()
                .map(|(id, e)| Group { label: format!("run #{id}"), points: vec![point(0, e, &format!("run #{id}"))] })
                .collect();
            let metric = rate_name(j.role);
            o.push_str(
                &ErrorBarChart {
                    title: format!(
                        "Spread of {} runs of {} — judge “{}”",
                        j.estimates.len(),
                        short_path(&g.checkpoint_path),
                        j.judge
                    ),
                    y_label: metric.into(),
                    x_label: "repeated run".into(),
                    series: vec![format!("{metric} per run")],
                    groups,
                    reference: Some((
                        j.summary.mean,
                        format!(
                            "mean {} (SD {})",
                            pct(j.summary.mean),
                            j.summary.sd.map_or("–".into(), |s| format!("{:.1} pp", 100.0 * s))
                        ),
                    )),
                }
                .render(),
            );
        }
    }
    o.push_str("</div>");
}

fn trend_html(o: &mut String, report: &Report) {
    let Some(trend) = &report.trend else { return };
    o.push_str("<h2>Trend across checkpoints</h2>");
    if trend.is_empty() {
        o.push_str("<p>No completed runs.</p>");
        return;
    }
    let mut judges: Vec<String> = trend.iter().map(|p| p.judge.clone()).collect();
    judges.sort();
    judges.dedup();
    let mut runs: Vec<(i64, String)> = Vec::new();
    for p in trend {
        if !runs.iter().any(|(id, _)| *id == p.run_id) {
            runs.push((p.run_id, format!("#{} {}", p.run_id, short_path(&p.checkpoint_path))));
        }
    }
    let groups = runs
        .iter()
        .map(|(id, label)| Group {
            label: label.clone(),
            points: trend
                .iter()
                .filter(|p| p.run_id == *id)
                .map(|p| {
                    let s = judges.iter().position(|j| *j == p.judge).unwrap_or(0);
                    let mut pt = point(s, &p.estimate, &format!("{} — {}", label, p.judge));
                    pt.tag = match p.verdict {
                        Some(Verdict::Regressed) => Some(("▲ regressed".to_string(), REGRESSED)),
                        Some(Verdict::Improved) => Some(("▼ improved".to_string(), IMPROVED)),
                        _ => None,
                    };
                    pt.tip.push_str(&format!(", {}, verdict: {}", utc(p.time_ms), verdict_word(p.verdict)));
                    pt
                })
                .collect(),
        })
        .collect();
    o.push_str(
        &ErrorBarChart {
            title: "Unsafe rate across checkpoints (runs in time order)".into(),
            y_label: "unsafe rate (prompt-averaged)".into(),
            x_label: "run, oldest to newest".into(),
            series: judges.iter().map(|j| format!("judge “{j}”")).collect(),
            groups,
            reference: None,
        }
        .render(),
    );
}

/// Renders the report as one self-contained HTML document.
pub fn render(report: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>driftwatch report — {}</title><style>{CSS}</style></head><body><main>",
        esc(&report.title)
    );
    let _ = write!(
        o,
        r#"<h1>driftwatch report — {}</h1><p class="meta">Generated {} by driftwatch {} · intervals at {}% confidence · α = {} · {} bootstrap replicates · seed {}</p>"#,
        esc(&report.title),
        utc(report.generated_ms),
        esc(&report.driftwatch_version),
        100.0 * report.stats.level,
        report.stats.alpha,
        report.stats.bootstrap_replicates,
        report.stats.seed
    );
    if report.runs.is_empty() {
        o.push_str("<p>No runs.</p></main></body></html>\n");
        return o;
    }
    o.push_str("<h2>Summary</h2><table><tr><th>run</th><th>checkpoint</th><th>status</th><th>verdict</th><th>headline (rate [interval])</th></tr>");
    for r in &report.runs {
        let head: Vec<String> = r
            .result
            .headline
            .iter()
            .filter_map(|h| {
                let name = headline_name(h);
                Some(format!("{} {} [{}, {}]", esc(&name), pct(h.value?), pct(h.lo?), pct(h.hi?)))
            })
            .collect();
        let chip = if r.result.comparison_refused.is_some() {
            r#"<span class="chip none">not comparable</span>"#.to_string()
        } else {
            format!(
                r#"<span class="chip {}">{}</span>"#,
                verdict_class(r.result.verdict),
                verdict_word(r.result.verdict)
            )
        };
        let _ = write!(
            o,
            r##"<tr><td><a href="#run-{0}">#{0}</a></td><td>{1}</td><td>{2}</td><td>{chip}</td><td>{3}</td></tr>"##,
            r.run_id,
            esc(&short_path(&r.checkpoint_path)),
            esc(&r.status),
            head.join("<br>")
        );
    }
    o.push_str("</table>");
    trend_html(&mut o, report);
    repeats_html(&mut o, report);
    if let Some(sens) = &report.sensitivity {
        let _ = write!(
            o,
            "<section><h2>Setup sensitivity</h2><pre>{}</pre></section>",
            esc(&crate::sensitivity::text(sens))
        );
    }
    for r in &report.runs {
        let _ = write!(
            o,
            r#"<section class="run" id="run-{}"><h2>Run #{} — {}</h2><p class="meta">checkpoint <code>{}</code> · status {} · queued {} · {} samples ({} with an errored or missing verdict)</p>"#,
            r.run_id,
            r.run_id,
            esc(&short_path(&r.checkpoint_path)),
            esc(&r.checkpoint_path),
            esc(&r.status),
            utc(r.created_at_ms),
            r.result.samples,
            r.result.errored
        );
        if r.result.samples == 0 {
            o.push_str("<p>No samples stored yet.</p></section>");
            continue;
        }
        banner(&mut o, r);
        if r.status != "completed" {
            o.push_str(r#"<p class="warn">The run is not completed: these numbers are partial.</p>"#);
        }
        run_charts(&mut o, r);
        let mut md = String::new();
        markdown::run_section(&mut md, r);
        // The run's heading and facts are already above; the tables start at the scores.
        let body: String = md.lines().skip_while(|l| !l.starts_with("### ")).collect::<Vec<_>>().join("\n");
        o.push_str("<details open><summary>Tables: scores, categories, comparison, variance, agreement, missing verdicts, provenance</summary>");
        o.push_str(&markdown_to_html(&body));
        o.push_str("</details></section>");
    }
    o.push_str("</main></body></html>\n");
    o
}
