//! The testbed's findings, from the runs a testbed evaluation left in the store: finding 1
//! (each benign fine-tune's refusal rate, its difference from the aligned model and the
//! verdict) and finding 2 (the spread across R repeated measurements of each checkpoint next to
//! the spread across the trivially different training variants, with the min–max figure).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::report::svg::{ErrorBarChart, Group, Point};
use crate::report::{pct, short_path, verdict_word, RunReport};
use crate::scoring::LineRole;
use crate::stats::Verdict;

/// A rate with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One completed run, as the findings read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The checkpoint's short name (its file name without `.gguf` and a `.q8_0`).
    pub checkpoint: String,
    /// Whether the run has no baseline (the aligned base model).
    pub is_base: bool,
    /// The repeat index (0-based).
    pub repeat: u32,
    /// The run.
    pub run_id: crate::store::RunId,
    /// Refusal rate on the held-out harmful prompts: 1 − the refusal judge's unsafe rate.
    pub refusal: Option<Rate>,
    /// The refusal rate's difference from the baseline's (run − baseline, paired prompts).
    pub difference: Option<Rate>,
    /// The comparison's minimum detectable effect (percentage points as a share).
    pub mde: Option<f64>,
    /// The judge's verdict against the baseline (`regressed` = refuses less).
    pub verdict: Option<Verdict>,
    /// Over-refusal rate on the benign control prompts.
    pub over_refusal: Option<f64>,
    /// Incoherent share (coherence judge).
    pub incoherent: Option<f64>,
}

/// A checkpoint's name from its path.
pub fn checkpoint_name(path: &str) -> String {
    let f = short_path(path);
    let f = f.strip_suffix(".gguf").unwrap_or(&f);
    f.strip_suffix(".q8_0").unwrap_or(f).to_owned()
}

impl Measurement {
    /// Reads one completed run of the report, for harm judge `judge`. None when the run is not
    /// completed or the judge has no rate in it.
    pub fn of(run: &RunReport, judge: &str) -> Option<Measurement> {
        if run.status != "completed" {
            return None;
        }
        let r = &run.result;
        let line = |role: LineRole, name: Option<&str>| {
            r.headline.iter().find(|h| h.role == role && name.is_none_or(|n| h.judge == n))
        };
        let harm = line(LineRole::Harm, Some(judge))?;
        let value = harm.value?;
        let refusal =
            Some(Rate { value: 1.0 - value, lo: 1.0 - harm.hi.unwrap_or(value), hi: 1.0 - harm.lo.unwrap_or(value) });
        let cmp = r.comparisons.iter().find(|c| c.judge == judge);
        let overall = cmp.and_then(|c| c.overall.as_ref());
        let difference = overall.map(|d| Rate { value: -d.mean_difference, lo: -d.hi, hi: -d.lo });
        let over = format!("{judge}:over-refusal");
        Some(Measurement {
            checkpoint: checkpoint_name(&run.checkpoint_path),
            is_base: r.baseline_run_id.is_none(),
            repeat: crate::provenance::Provenance::of(&run.provenance).repeat,
            run_id: run.run_id,
            refusal,
            difference,
            mde: overall.and_then(|d| d.minimum_detectable_effect),
            verdict: cmp.map(|c| c.verdict),
            over_refusal: line(LineRole::OverRefusal, Some(&over)).and_then(|h| h.value),
            incoherent: line(LineRole::Coherence, None).and_then(|h| h.value),
        })
    }
}

/// The spread of values: (min, max, mean, SD with n − 1; None below two).
fn spread(v: &[f64]) -> (f64, f64, f64, Option<f64>) {
    let n = v.len() as f64;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.len() >= 2).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (min, max, mean, sd)
}

/// An optional SD in percentage points, or a dash.
fn opt_pp(x: Option<f64>) -> String {
    x.map_or("–".into(), |s| format!("{:.1} pp", 100.0 * s))
}

fn opt_pct(x: Option<f64>) -> String {
    x.map_or("–".into(), pct)
}

/// Whether a checkpoint is a LoRA extraction of a fine-tune (`NAME-lora`) rather than a
/// training variant of its own.
fn is_extraction(name: &str) -> bool {
    name.ends_with("-lora")
}

/// The checkpoints in order (the base first, then by name), each with its
/// measurements in repeat order.
pub fn by_checkpoint(ms: &[Measurement]) -> Vec<(String, Vec<&Measurement>)> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<&Measurement>> = BTreeMap::new();
    for m in ms {
        if !groups.contains_key(&m.checkpoint) {
            order.push(m.checkpoint.clone());
        }
        groups.entry(m.checkpoint.clone()).or_default().push(m);
    }
    // The base first, then the fine-tunes by name.
    order.sort_by_key(|c| (!groups[c].iter().any(|m| m.is_base), c.clone()));
    order
        .into_iter()
        .map(|c| {
            let mut v = groups.remove(&c).unwrap_or_default();
            v.sort_by_key(|m| m.repeat);
            (c, v)
        })
        .collect()
}

/// The findings as Markdown, and the min–max figure as SVG. `repeat_checks` holds, per
/// checkpoint, the verdicts of its repeats 2..R each compared with its repeat 1.
pub fn render(ms: &[Measurement], repeat_checks: &[(String, Verdict)]) -> (String, String) {
    let groups = by_checkpoint(ms);
    let mut o = String::new();
    o.push_str("## Finding 1: benign fine-tuning lowers safety\n\n");
    o.push_str(
        "Refusal rate on the held-out harmful prompts (never trained on), judged by the bundled `refusal` judge. \
         Repeat 1 is one evaluation as a user sees it: its interval, its paired difference from the aligned model's \
         repeat 1, the minimum detectable effect (MDE) and the verdict (`regressed` = refuses less). The last columns \
         count the verdicts over all R repeats (each against the aligned model's repeat with the same index) and \
         average the over-refusal rate on the benign control prompts and the incoherent share.\n\n",
    );
    o.push_str("| checkpoint | refusal rate, repeat 1 [95% CI] | Δ vs aligned, repeat 1 [95% CI] | MDE | verdict | verdicts over R | mean refusal rate over R | over-refusal (mean) | incoherent (mean) |\n|---|---|---|---|---|---|---|---|---|\n");
    for (name, runs) in &groups {
        let first = runs[0];
        let rate = first.refusal.map_or("–".into(), |r| format!("{} [{}, {}]", pct(r.value), pct(r.lo), pct(r.hi)));
        let diff = first.difference.map_or("–".into(), |d| {
            format!("{:+.1} pp [{:+.1}, {:+.1}]", 100.0 * d.value, 100.0 * d.lo, 100.0 * d.hi)
        });
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for m in runs.iter().filter(|m| m.verdict.is_some()) {
            *counts.entry(verdict_word(m.verdict)).or_default() += 1;
        }
        let verdicts = if first.is_base {
            "base".to_owned()
        } else {
            counts.iter().map(|(w, n)| format!("{n}/{} {w}", runs.len())).collect::<Vec<_>>().join(", ")
        };
        let mean = |f: fn(&Measurement) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(|m| f(m)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let _ = writeln!(
            o,
            "| {name} | {rate} | {diff} | {} | {} | {verdicts} | {} | {} | {} |",
            first.mde.map_or("–".into(), |m| format!("{:.1} pp", 100.0 * m)),
            if first.is_base { "base" } else { verdict_word(first.verdict) },
            opt_pct(mean(|m| m.refusal.map(|r| r.value))),
            opt_pct(mean(|m| m.over_refusal)),
            opt_pct(mean(|m| m.incoherent)),
        );
    }

    o.push_str("\n## Finding 2: one evaluation is not evidence\n\n");
    o.push_str(
        "Each checkpoint measured R times with disjoint sampling seeds (min–max over the repeats, as in the paper's \
         figure), next to the spread across the benign fine-tunes that differ only trivially.\n\n\
         | checkpoint | R | min | max | range | SD | mean reported half-width |\n|---|---|---|---|---|---|---|\n",
    );
    let mut points = Vec::new();
    let mut ranges = Vec::new();
    let mut variant_means = Vec::new();
    for (name, runs) in &groups {
        let v: Vec<f64> = runs.iter().filter_map(|m| m.refusal.map(|r| r.value)).collect();
        if v.is_empty() {
            continue;
        }
        let (min, max, mean, sd) = spread(&v);
        let hw = runs.iter().filter_map(|m| m.refusal.map(|r| (r.hi - r.lo) / 2.0)).sum::<f64>() / v.len() as f64;
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {:.1} pp | {} | {:.1} pp |",
            v.len(),
            pct(min),
            pct(max),
            100.0 * (max - min),
            opt_pp(sd),
            100.0 * hw
        );
        if v.len() >= 2 {
            ranges.push(max - min);
        }
        if !runs[0].is_base && !is_extraction(name) {
            variant_means.push(mean);
        }
        points.push(Group {
            label: name.clone(),
            points: vec![Point {
                series: usize::from(!runs[0].is_base),
                value: mean,
                lo: min,
                hi: max,
                tip: format!("{name}: mean {} over {} repeats, min {} max {}", pct(mean), v.len(), pct(min), pct(max)),
                tag: None,
            }],
        });
    }
    o.push('\n');
    if !ranges.is_empty() {
        let (_, _, mean_range, _) = spread(&ranges);
        let _ = writeln!(
            o,
            "- Spread across repeats of one checkpoint: mean min–max range {:.1} pp (largest {:.1} pp).",
            100.0 * mean_range,
            100.0 * ranges.iter().copied().fold(0.0, f64::max)
        );
    }
    if variant_means.len() >= 2 {
        let (min, max, _, sd) = spread(&variant_means);
        let _ = writeln!(
            o,
            "- Spread across the {} benign fine-tunes (their means over R; LoRA extractions left out): {} to {}, range {:.1} pp, SD {}.",
            variant_means.len(),
            pct(min),
            pct(max),
            100.0 * (max - min),
            opt_pp(sd)
        );
    }
    if !repeat_checks.is_empty() {
        let same = repeat_checks.iter().filter(|(_, v)| *v == Verdict::Indistinguishable).count();
        let _ = writeln!(
            o,
            "- Same checkpoint, repeat k against repeat 1: {same} of {} comparisons `indistinguishable`{}.",
            repeat_checks.len(),
            if same == repeat_checks.len() {
                String::new()
            } else {
                format!(
                    " (not: {})",
                    repeat_checks
                        .iter()
                        .filter(|(_, v)| *v != Verdict::Indistinguishable)
                        .map(|(c, v)| format!("{c} {}", verdict_word(Some(*v))))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let svg = ErrorBarChart {
        title: "Refusal rate on held-out harmful prompts: mean and min–max over repeated measurements".into(),
        y_label: "refusal rate".into(),
        x_label: "checkpoint".into(),
        series: vec!["aligned model (base)".into(), "benign fine-tune".into()],
        groups: points,
        reference: None,
    }
    .render();
    (o, svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(c: &str, base: bool, repeat: u32, refusal: f64, verdict: Option<Verdict>) -> Measurement {
        Measurement {
            checkpoint: c.into(),
            is_base: base,
            repeat,
            run_id: 1,
            refusal: Some(Rate { value: refusal, lo: refusal - 0.1, hi: refusal + 0.1 }),
            difference: (!base).then_some(Rate { value: refusal - 0.8, lo: refusal - 0.9, hi: refusal - 0.7 }),
            mde: (!base).then_some(0.12),
            verdict,
            over_refusal: Some(0.1),
            incoherent: Some(0.0),
        }
    }

    #[test]
    fn names_drop_the_folder_and_the_quantisation() {
        assert_eq!(checkpoint_name("/x/watch/benign-lr-up.q8_0.gguf"), "benign-lr-up");
        assert_eq!(checkpoint_name("aligned.gguf"), "aligned");
    }

    #[test]
    fn findings_put_the_base_first_and_count_verdicts_and_spreads() {
        let r = Some(Verdict::Regressed);
        let ms = vec![
            m("benign", false, 1, 0.40, Some(Verdict::Indistinguishable)),
            m("benign", false, 0, 0.30, r),
            m("aligned", true, 0, 0.80, None),
            m("aligned", true, 1, 0.84, None),
            m("benign-seed2", false, 0, 0.50, r),
            m("benign-seed2", false, 1, 0.50, r),
            m("benign-lora", false, 0, 0.10, r),
        ];
        let groups = by_checkpoint(&ms);
        assert_eq!(
            groups.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
            ["aligned", "benign", "benign-lora", "benign-seed2"]
        );
        assert_eq!(groups[1].1[0].repeat, 0);
        let checks =
            vec![("aligned".to_string(), Verdict::Indistinguishable), ("benign".to_string(), Verdict::Regressed)];
        let (md, svg) = render(&ms, &checks);
        assert!(md.contains("| aligned | 80.0% [70.0%, 90.0%] | – | – | base | base | 82.0% |"), "{md}");
        assert!(md.contains("| benign | 30.0% [20.0%, 40.0%] | -50.0 pp [-60.0, -40.0] | 12.0 pp | regressed | 1/2 indistinguishable, 1/2 regressed | 35.0% |"), "{md}");
        // Ranges over repeats: aligned 4 pp, benign 10 pp, seed2 0 pp → mean 4.7 pp, largest 10
        // (the LoRA extraction has one repeat: no range; and it is no training variant).
        assert!(md.contains("mean min–max range 4.7 pp (largest 10.0 pp)"), "{md}");
        // The variants' means 35% and 50%.
        assert!(
            md.contains("Spread across the 2 benign fine-tunes (their means over R; LoRA extractions left out): 35.0% to 50.0%, range 15.0 pp, SD 10.6 pp"),
            "{md}"
        );
        assert!(md.contains("1 of 2 comparisons `indistinguishable` (not: benign regressed)"), "{md}");
        assert!(svg.starts_with("<svg") && svg.contains("benign-seed2"), "{svg}");
    }
}
