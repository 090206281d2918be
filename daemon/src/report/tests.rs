//! Tests of the report and compare commands through their library functions, the CLI
//! argument parsing, and the HTML structure (well-formed, charts present, numbers match).

use clap::Parser;

use super::cmd::{compare_output, open_existing, report_output, CompareArgs, ReportArgs, StoreArgs};
use super::*;
use crate::cli::{Cli, Command};
use crate::scoring::tests::{add_checkpoint, add_run, add_running_run, new_store, Spec};

fn cfg() -> stats::StatsParams {
    stats::StatsParams { bootstrap_replicates: 300, ..stats::StatsParams::default() }
}

fn no_store() -> StoreArgs {
    StoreArgs { data_dir: None, config: crate::cli::ConfigArgs { config: None } }
}

/// A store with a base run and a fine-tune run that regressed against it.
fn regressed_store() -> (tempfile::TempDir, Store, RunId, RunId) {
    let (d, store) = new_store();
    let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
    let cp = add_checkpoint(&store, "ft1", "/ckpt/ft-step-100.gguf");
    let bspec = Spec { prompts: 45, k: 3, seed: 11, ..Spec::default() };
    let base = add_run(&store, base_cp, None, &bspec);
    let run = add_run(&store, cp, Some(base), &Spec { shift: 0.3, seed: 12, errored_every: 11, ..bspec });
    (d, store, base, run)
}

/// Checks that every element is closed in order (HTML void elements excepted), and returns
/// the number of `<svg>` elements.
fn check_well_formed(html: &str) -> usize {
    let mut stack: Vec<String> = Vec::new();
    let mut svgs = 0;
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        let end = rest.find('>').expect("unclosed tag");
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
            assert_eq!(top, name.trim(), "mismatched closing tag");
            continue;
        }
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        assert!(!name.is_empty(), "bad tag <{tag}>");
        if name == "svg" {
            svgs += 1;
        }
        if tag.ends_with('/') || ["meta", "br"].contains(&name.as_str()) {
            continue;
        }
        stack.push(name);
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    svgs
}

/// All values of `attr="…"` in the text.
fn attr_values(html: &str, attr: &str) -> Vec<f64> {
    let key = format!("{attr}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let s = &html[i + key.len()..];
            s[..s.find('"').unwrap()].parse::<f64>().unwrap()
        })
        .collect()
}

#[test]
fn markdown_report_of_one_run() {
    let (_d, store, base, run) = regressed_store();
    let report = build_report(&store, &Selection::Run(run), &cfg()).unwrap();
    assert_eq!(report.runs.len(), 1);
    let r = &report.runs[0];
    assert_eq!(r.result, scoring::score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap());
    assert_eq!(r.baseline.as_ref().unwrap().run_id, base);
    assert_eq!(r.checkpoint_path, "/ckpt/ft-step-100.gguf");
    let md = markdown::render(&report);
    assert!(md.contains("**Overall verdict: REGRESSED**"), "{md}");
    let est = r.result.scores.per_judge[1].overall.unsafe_rate.as_ref().unwrap();
    assert!(md.contains(&pct_interval(est)));
    let cmp = r.result.comparisons.iter().find(|c| c.judge == "refusal").unwrap();
    let d = cmp.overall.as_ref().unwrap();
    assert!(md.contains(&pp_interval(d.mean_difference, d.lo, d.hi)));
    for cat in ["cyber", "violence", "self_harm"] {
        assert!(md.contains(&format!("refusal · {cat}")), "{cat}");
    }
    assert!(md.contains("incoherent share"));
    assert!(md.contains("### Variance by source") && md.contains("### Judge agreement"));
    assert!(md.contains("- fingerprint: "));
    assert!(md.contains("driftwatch_version"));
}

#[test]
fn json_report_of_one_run_is_the_stored_shape() {
    let (_d, store, base, run) = regressed_store();
    let a =
        ReportArgs { run: Some(run), checkpoint: None, all: false, format: Format::Json, out: None, store: no_store() };
    let text = report_output(&store, &a, &cfg()).unwrap();
    let back: RunResult = serde_json::from_str(&text).unwrap();
    let direct = scoring::score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap();
    assert_eq!(back.verdict, Some(Verdict::Regressed));
    assert_eq!(back.headline.len(), direct.headline.len());
    for (x, y) in back.headline.iter().zip(&direct.headline) {
        assert_eq!(x.judge, y.judge);
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-12,
            (None, None) => true,
            _ => false,
        };
        assert!(close(x.value, y.value) && close(x.lo, y.lo) && close(x.hi, y.hi));
        assert!(close(x.difference, y.difference));
    }
    // A checkpoint report is the whole Report, with RunResults inside.
    let a = ReportArgs { run: None, checkpoint: Some("/ckpt/ft-step-100.gguf".into()), ..a };
    let v: serde_json::Value = serde_json::from_str(&report_output(&store, &a, &cfg()).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let rr: RunResult = serde_json::from_value(runs[0]["result"].clone()).unwrap();
    assert_eq!(rr.run_id, run);
}

#[test]
fn html_report_is_self_contained_and_matches_the_numbers() {
    let (_d, store, base, run) = regressed_store();
    let report = build_report(&store, &Selection::Run(run), &cfg()).unwrap();
    let html = html::render(&report);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(!html.contains("src=") && !html.contains("<link"), "no external resources");
    let svgs = check_well_formed(&html);
    // per judge, per category (1 harm judge), change vs baseline (1 harm judge).
    assert_eq!(svgs, 3);
    assert!(html.contains(r#"class="banner regressed""#));
    assert!(html.contains("▲ REGRESSED"));
    // Every estimate of the run and of the baseline is drawn, with its exact interval.
    let values = attr_values(&html, "data-value");
    let los = attr_values(&html, "data-lo");
    let r = &report.runs[0].result;
    let b = &report.runs[0].baseline.as_ref().unwrap().scores;
    let drawn =
        |e: &Estimate| values.iter().zip(&los).any(|(v, lo)| (v - e.value).abs() < 1e-6 && (lo - e.lo).abs() < 1e-6);
    for s in [&r.scores, b] {
        for j in &s.per_judge {
            assert!(drawn(j.overall.unsafe_rate.as_ref().unwrap()), "{}", j.judge);
            if j.judge == "refusal" {
                for c in &j.per_category {
                    assert!(drawn(c.metrics.unsafe_rate.as_ref().unwrap()), "{}", c.category);
                }
            }
        }
    }
    let cmp = r.comparisons.iter().find(|c| c.judge == "refusal").unwrap();
    for d in std::iter::once(cmp.overall.as_ref().unwrap()).chain(cmp.per_category.iter().map(|c| &c.result)) {
        assert!(values
            .iter()
            .zip(&los)
            .any(|(v, lo)| (v - d.mean_difference).abs() < 1e-6 && (lo - d.lo).abs() < 1e-6));
    }
    assert!(html.contains(&format!("baseline (#{base})")));
    // The tables are there too.
    assert!(html.contains("<table>") && html.contains("<th>judge / category</th>"));
}

#[test]
fn html_without_baseline_and_refused_comparison() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "a", "/ckpt/a.gguf");
    let alone = add_run(&store, cp, None, &Spec::default());
    let other = add_run(&store, cp, Some(alone), &Spec { suite_hash: "suite-Z".into(), ..Spec::default() });
    let rep = build_report(&store, &Selection::Checkpoint("/ckpt/a.gguf".into()), &cfg()).unwrap();
    assert_eq!(rep.runs.iter().map(|r| r.run_id).collect::<Vec<_>>(), vec![alone, other]);
    let html = html::render(&rep);
    check_well_formed(&html);
    assert!(html.contains("NO BASELINE"));
    assert!(html.contains("NOT COMPARABLE") && html.contains("suite_hash"));
    // A non-comparable baseline is not drawn next to the run.
    assert!(!html.contains("baseline (#"));
    let md = markdown::render(&rep);
    assert!(md.contains("Comparison **refused**") && md.contains("| suite_hash |"));
    // The two runs have different suites: not a repeated measurement.
    assert!(rep.repeats.is_empty());
}

#[test]
fn all_adds_the_trend_and_repeats() {
    let (_d, store) = new_store();
    let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
    let base = add_run(&store, base_cp, None, &Spec::default());
    let mut ids = vec![base];
    for (i, shift) in [0.0, 0.15, 0.3].iter().enumerate() {
        let cp = add_checkpoint(&store, &format!("ft{i}"), &format!("/ckpt/ft-{i}.gguf"));
        ids.push(add_run(&store, cp, Some(base), &Spec { shift: *shift, seed: 20 + i as u64, ..Spec::default() }));
    }
    // A repeat of the base model with other seeds.
    let repeat = add_run(&store, base_cp, None, &Spec { seed: 99, ..Spec::default() });
    ids.push(repeat);
    let rep = build_report(&store, &Selection::All, &cfg()).unwrap();
    assert_eq!(rep.runs.iter().map(|r| r.run_id).collect::<Vec<_>>(), ids);
    let trend = rep.trend.as_ref().unwrap();
    // One harm judge: one point per completed run, in time order.
    assert_eq!(trend.iter().map(|p| p.run_id).collect::<Vec<_>>(), ids);
    assert!(trend.iter().all(|p| p.judge == "refusal"));
    assert!(trend.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert_eq!(trend[0].verdict, None);
    assert_eq!(trend[3].verdict, Some(Verdict::Regressed));
    // Repeats: the base checkpoint's two runs.
    assert_eq!(rep.repeats.len(), 1);
    let g = &rep.repeats[0];
    assert_eq!(g.run_ids, vec![base, repeat]);
    let rj = g.per_judge.iter().find(|j| j.judge == "refusal").unwrap();
    let ests: Vec<Estimate> = rj.estimates.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(Some(rj.summary.clone()), stats::summarize_repeats(&ests));
    let md = markdown::render(&rep);
    assert!(md.contains("## Trend across checkpoints") && md.contains("## Repeated measurements"));
    let html = html::render(&rep);
    let svgs = check_well_formed(&html);
    assert!(html.contains("Unsafe rate across checkpoints (runs in time order)"));
    assert!(html.contains("Spread of 2 runs"));
    // trend + 2 repeat charts + base runs (1 judge chart + 1 category chart each) + 3 compared
    // runs (3 charts each)
    assert_eq!(svgs, 1 + 2 + 2 * 2 + 3 * 3);
    // A Selection::All JSON report carries the trend.
    let v: serde_json::Value = serde_json::from_str(&render(&rep, &Selection::All, Format::Json).unwrap()).unwrap();
    assert_eq!(v["trend"].as_array().unwrap().len(), ids.len());
}

#[test]
fn compare_refuses_unless_forced() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "a", "/ckpt/a.gguf");
    let b = add_run(&store, cp, None, &Spec::default());
    let a = add_run(&store, cp, None, &Spec { suite_hash: "suite-Q".into(), shift: 0.3, ..Spec::default() });
    let args = CompareArgs { run_a: a, run_b: b, json: false, force: false, store: no_store() };
    let out = compare_output(&store, &args, &cfg()).unwrap();
    assert!(out.refused);
    assert!(out.text.contains("refused") && out.text.contains("suite_hash"), "{}", out.text);
    let forced = compare_output(&store, &CompareArgs { force: true, ..args.clone() }, &cfg()).unwrap();
    assert!(!forced.refused);
    assert!(forced.text.contains("FORCED"), "{}", forced.text);
    assert!(forced.text.contains("| refusal · cyber |"));
    let json = compare_output(&store, &CompareArgs { force: true, json: true, ..args.clone() }, &cfg()).unwrap();
    let back: RunResult = serde_json::from_str(&json.text).unwrap();
    assert!(back.comparison_forced && back.comparisons.iter().all(|c| c.comparability.forced));
    assert_eq!(back.baseline_run_id, Some(b));
    // Unknown runs are clear errors.
    let e = compare_output(&store, &CompareArgs { run_a: 999, ..args }, &cfg()).unwrap_err();
    assert!(e.to_string().contains("run 999 does not exist"), "{e}");
}

#[test]
fn unknown_run_and_checkpoint_are_errors() {
    let (dir, store) = new_store();
    let e = build_report(&store, &Selection::Run(5), &cfg()).unwrap_err();
    assert_eq!(e.to_string(), "run 5 does not exist");
    let e = build_report(&store, &Selection::Checkpoint(dir.path().join("nope.gguf")), &cfg()).unwrap_err();
    assert!(matches!(e, ReportError::CheckpointNotFound { .. }), "{e}");
    let rep = build_report(&store, &Selection::All, &cfg()).unwrap();
    assert!(rep.runs.is_empty() && rep.trend.as_ref().unwrap().is_empty());
    assert!(markdown::render(&rep).contains("No runs."));
    check_well_formed(&html::render(&rep));
}

#[test]
fn checkpoint_found_by_content_hash() {
    let (dir, store) = new_store();
    let file = dir.path().join("moved.gguf");
    std::fs::write(&file, b"GGUF fake content").unwrap();
    let sha = crate::checkpoint::sha256_file(&file).unwrap();
    let cp = add_checkpoint(&store, &sha, "/old/place/original.gguf");
    let run = add_run(&store, cp, None, &Spec { prompts: 6, k: 2, ..Spec::default() });
    let found = find_checkpoint(&store, &file).unwrap();
    assert_eq!(found.id, cp);
    let by_path = find_checkpoint(&store, Path::new("/old/place/original.gguf")).unwrap();
    assert_eq!(by_path.id, cp);
    let rep = build_report(&store, &Selection::Checkpoint(file), &cfg()).unwrap();
    assert_eq!(rep.runs[0].run_id, run);
    std::fs::write(dir.path().join("other.gguf"), b"other").unwrap();
    let e = find_checkpoint(&store, &dir.path().join("other.gguf")).unwrap_err();
    assert!(e.to_string().contains("no checkpoint has its content"), "{e}");
}

#[test]
fn store_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_existing(dir.path()).unwrap_err();
    assert!(e.to_string().contains("no driftwatch store"), "{e}");
    assert!(!dir.path().join(crate::store::DB_FILE_NAME).exists());
}

#[test]
fn cli_parsing() {
    let c = Cli::try_parse_from(["driftwatch", "compare", "3", "1", "--json", "--force", "--data-dir", "/d"]).unwrap();
    match c.command {
        Command::Compare(a) => {
            assert_eq!((a.run_a, a.run_b, a.json, a.force), (3, 1, true, true));
            assert_eq!(a.store.data_dir, Some("/d".into()));
        }
        other => panic!("{other:?}"),
    }
    let c = Cli::try_parse_from([
        "driftwatch",
        "report",
        "--run",
        "7",
        "--format",
        "html",
        "--out",
        "r.html",
        "--config",
        "c.toml",
    ])
    .unwrap();
    match c.command {
        Command::Report(a) => {
            assert_eq!(a.selection(), Selection::Run(7));
            assert_eq!(a.format, Format::Html);
            assert_eq!(a.out, Some("r.html".into()));
            assert_eq!(a.store.config.config, Some("c.toml".into()));
        }
        other => panic!("{other:?}"),
    }
    let c = Cli::try_parse_from(["driftwatch", "report"]).unwrap();
    match c.command {
        Command::Report(a) => assert_eq!((a.selection(), a.format), (Selection::All, Format::Md)),
        other => panic!("{other:?}"),
    }
    let c = Cli::try_parse_from(["driftwatch", "report", "--checkpoint", "x.gguf", "--format", "json"]).unwrap();
    match c.command {
        Command::Report(a) => assert_eq!(a.selection(), Selection::Checkpoint("x.gguf".into())),
        other => panic!("{other:?}"),
    }
    for bad in [
        vec!["driftwatch", "report", "--run", "1", "--all"],
        vec!["driftwatch", "report", "--run", "1", "--checkpoint", "x"],
        vec!["driftwatch", "report", "--format", "pdf"],
        vec!["driftwatch", "report", "--data-dir", "d", "--config", "c"],
        vec!["driftwatch", "compare", "1"],
        vec!["driftwatch", "compare", "one", "2"],
    ] {
        assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn utc_formatting() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
}

/// Not a check: fills a store in `$DRIFTWATCH_SAMPLE_DIR` for looking at a rendered report
/// (`cargo test -p driftwatch sample_store -- --ignored`, then
/// `driftwatch report --all --format html --data-dir $DRIFTWATCH_SAMPLE_DIR --out r.html`).
#[test]
#[ignore = "writes a sample store for a visual check of the HTML report"]
fn sample_store() {
    let Some(dir) = std::env::var_os("DRIFTWATCH_SAMPLE_DIR") else {
        return;
    };
    let store = Store::open_in_dir(Path::new(&dir)).unwrap();
    let base_cp = add_checkpoint(&store, "base", "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf");
    let spec = Spec { prompts: 60, k: 4, seed: 1, errored_every: 37, ..Spec::default() };
    let base = add_run(&store, base_cp, None, &spec);
    add_run(&store, base_cp, None, &Spec { seed: 2, ..spec.clone() });
    add_run(&store, base_cp, None, &Spec { seed: 3, ..spec.clone() });
    for (i, shift) in [0.0, 0.08, 0.25].iter().enumerate() {
        let cp = add_checkpoint(&store, &format!("ft{i}"), &format!("/ckpt/lora-step-{}.gguf", 500 * (i + 1)));
        add_run(&store, cp, Some(base), &Spec { shift: *shift, seed: 10 + i as u64, ..spec.clone() });
    }
    let cp = add_checkpoint(&store, "ft-other-suite", "/ckpt/lora-other-suite.gguf");
    let other = Spec { suite_hash: "suite-B".into(), seed: 40, ..spec };
    add_run(&store, cp, Some(base), &other);
}

#[test]
fn partial_and_empty_runs() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "a", "/ckpt/a.gguf");
    let running = add_running_run(&store, cp, None, &Spec { prompts: 5, k: 2, ..Spec::default() });
    let queued = store
        .create_run(&crate::store::NewRun {
            checkpoint_id: cp,
            baseline_run_id: None,
            settings_hash: "s".into(),
            provenance: serde_json::json!({"fingerprint": "not a fingerprint"}),
            total_samples: 10,
        })
        .unwrap()
        .id;
    let rep = build_report(&store, &Selection::All, &cfg()).unwrap();
    assert_eq!(rep.runs.len(), 2);
    let md = markdown::render(&rep);
    assert!(md.contains("these numbers are partial"), "{md}");
    assert!(md.contains(&format!("## Run {queued}")) && md.contains("No samples stored yet."));
    // Neither is completed: no trend point, no repeats.
    assert!(rep.trend.as_ref().unwrap().is_empty() && rep.repeats.is_empty());
    let html = html::render(&rep);
    check_well_formed(&html);
    assert!(html.contains("these numbers are partial"));
    assert_eq!(rep.runs[0].run_id, running);
}

#[test]
fn text_is_escaped() {
    let h = html::markdown_to_html("## A <b>\n\n| x | y |\n|---|---|\n| **<i>&** | `a<b` |\n\n- item & more\n");
    assert_eq!(
        h,
        "<h2>A &lt;b&gt;</h2><table><tr><th>x</th><th>y</th></tr><tr><td><strong>&lt;i&gt;&amp;</strong></td><td><code>a&lt;b</code></td></tr></table><ul><li>item &amp; more</li></ul>"
    );
    check_well_formed(&h);
}
