//! Tests of scoring from the store, and fixture builders (a store filled with runs of a
//! harm judge and a coherence judge) shared with the report tests.

use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::stats::{JudgeIdentity, RunFingerprint};
use crate::store::{CheckpointKind, NewCheckpoint, NewRun, NewSample, StoredVerdict};

/// Deterministic pseudo-random number in [0, 1) from a few integers (SplitMix64).
pub(crate) fn unit(a: u64, b: u64, c: u64) -> f64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(c.wrapping_mul(0x94d0_49bb_1331_11eb))
        .wrapping_add(0x1234_5678);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// How one fixture run is generated.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub prompts: u32,
    pub k: u32,
    /// Added to every prompt's unsafe probability.
    pub shift: f64,
    /// Seed of the verdict generator (different seeds = repeated measurement).
    pub seed: u64,
    /// Every `errored_every`-th sample gets an errored harm verdict (0 = never).
    pub errored_every: u32,
    pub suite_hash: String,
    /// Every `control_every`-th prompt (0 = none) belongs to a control suite `benign` (id
    /// `benign/pNNN`, recorded as a control suite in the provenance); the others to `harm`.
    pub control_every: u32,
    /// Added to the control prompts' refusal probability.
    pub control_refusal_shift: f64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            prompts: 24,
            k: 3,
            shift: 0.0,
            seed: 1,
            errored_every: 0,
            suite_hash: "suite-A".into(),
            control_every: 0,
            control_refusal_shift: 0.0,
        }
    }
}

pub(crate) fn fingerprint(suite_hash: &str) -> RunFingerprint {
    RunFingerprint {
        suite_hash: suite_hash.into(),
        judges: vec![
            JudgeIdentity { name: "coherence".into(), version: "0.1.0".into(), hash: "c0".into() },
            JudgeIdentity { name: "refusal".into(), version: "0.1.0".into(), hash: "r0".into() },
        ],
        sampling_hash: "sampling-1".into(),
        chat_template_hash: "template-1".into(),
        engine_hash: "engine-1".into(),
        backend_hash: None,
    }
}

pub(crate) fn category_of(p: u32) -> String {
    ["cyber", "violence", "self_harm"][(p % 3) as usize].to_string()
}

/// Per-prompt base unsafe probability: prompts differ in difficulty.
fn base_p(p: u32) -> f64 {
    0.05 + 0.5 * unit(7, u64::from(p), 0)
}

/// The verdicts of one sample: (refusal judge unsafe, coherence judge incoherent, refusal
/// verdict errored).
pub(crate) fn sample_truth(spec: &Spec, p: u32, i: u32) -> (bool, bool, bool) {
    let unsafe_ = unit(spec.seed, u64::from(p), u64::from(i)) < (base_p(p) + spec.shift).min(1.0);
    let incoherent = unit(spec.seed + 1000, u64::from(p), u64::from(i)) < 0.15;
    let errored = spec.errored_every > 0 && (p * spec.k + i).is_multiple_of(spec.errored_every);
    (unsafe_, incoherent, errored)
}

pub(crate) fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_dir(dir.path()).unwrap();
    (dir, store)
}

pub(crate) fn add_checkpoint(store: &Store, sha: &str, path: &str) -> CheckpointId {
    store
        .upsert_checkpoint(&NewCheckpoint {
            sha256: sha.into(),
            path: PathBuf::from(path),
            size: 4096,
            kind: CheckpointKind::Adapter,
            architecture: Some("llama".into()),
            mtime_ms: None,
        })
        .unwrap()
        .0
        .id
}

/// Creates, fills and completes a run following `spec`; returns its id.
pub(crate) fn add_run(store: &Store, cp: CheckpointId, baseline: Option<RunId>, spec: &Spec) -> RunId {
    let run = add_running_run(store, cp, baseline, spec);
    store.complete_run(run, &json!({})).unwrap();
    run
}

/// Creates and fills a run following `spec`, leaving it `running`; returns its id.
pub(crate) fn add_running_run(store: &Store, cp: CheckpointId, baseline: Option<RunId>, spec: &Spec) -> RunId {
    let mut provenance = json!({
        "driftwatch_version": "0.1.0",
        "model": {"path": "/models/base.gguf", "sha256": "ab12"},
        "adapter": {"path": "/ckpt/a.gguf", "sha256": "cd34", "scale": 1.0},
        "judges": [{"name": "refusal", "version": "0.1.0", "wasm_sha256": "r0"},
                   {"name": "coherence", "version": "0.1.0", "wasm_sha256": "c0"}],
        "sampling": {"temperature": 0.7, "k": spec.k},
        "fingerprint": fingerprint(&spec.suite_hash),
        "started_ms": 1_700_000_000_000i64,
    });
    if spec.control_every > 0 {
        provenance["suites"] = json!([{"name": "harm", "prompts": 0, "content_hash": "h"},
                                      {"name": "benign", "prompts": 0, "content_hash": "b", "control": true}]);
    }
    let prompt_id = |p: u32| match spec.control_every {
        0 => format!("p{p:03}"),
        n if p.is_multiple_of(n) => format!("benign/p{p:03}"),
        _ => format!("harm/p{p:03}"),
    };
    let run = store
        .create_run(&NewRun {
            checkpoint_id: cp,
            baseline_run_id: baseline,
            settings_hash: format!("settings-{}", spec.suite_hash),
            provenance,
            total_samples: u64::from(spec.prompts * spec.k),
        })
        .unwrap();
    store.start_run(run.id).unwrap();
    for p in 0..spec.prompts {
        for i in 0..spec.k {
            let (mut unsafe_, incoherent, errored) = sample_truth(spec, p, i);
            if spec.control_every > 0 && p % spec.control_every == 0 {
                // A benign prompt: mostly answered; refused with a small probability.
                unsafe_ = unit(spec.seed + 2000, u64::from(p), u64::from(i)) >= 0.1 + spec.control_refusal_shift;
            }
            let refusal = if errored {
                StoredVerdict {
                    judge: "refusal".into(),
                    judge_version: "0.1.0".into(),
                    is_unsafe: None,
                    score: None,
                    label: None,
                    rationale: None,
                    refusal: None,
                    error: Some("timeout".into()),
                }
            } else {
                StoredVerdict {
                    judge: "refusal".into(),
                    judge_version: "0.1.0".into(),
                    is_unsafe: Some(unsafe_),
                    score: None,
                    label: Some(if unsafe_ { "complied" } else { "refused" }.into()),
                    rationale: None,
                    refusal: Some(!unsafe_),
                    error: None,
                }
            };
            let coherence = StoredVerdict {
                judge: "coherence".into(),
                judge_version: "0.1.0".into(),
                is_unsafe: Some(incoherent),
                score: None,
                label: Some(if incoherent { "incoherent:repetition" } else { "coherent" }.into()),
                rationale: None,
                refusal: None,
                error: None,
            };
            store
                .insert_sample_with_verdicts(
                    run.id,
                    &NewSample {
                        prompt_id: prompt_id(p),
                        category: Some(category_of(p)),
                        sample_index: i,
                        seed: u64::from(1000 * p + i),
                        prompt: format!("prompt number {p}"),
                        response: format!("response {p}/{i}"),
                        prompt_tokens: 10,
                        completion_tokens: 20,
                        finish_reason: "stop".into(),
                        generation_ms: Some(5.0),
                        judge_ms: Some(1.0),
                        error: None,
                    },
                    &[refusal, coherence],
                )
                .unwrap();
        }
    }
    run.id
}

/// The judge inputs built directly from the spec (independently of `judge_inputs`).
fn expected_inputs(spec: &Spec) -> Vec<JudgeInput> {
    let mut coh =
        JudgeInput { judge: "coherence".into(), judge_version: "0.1.0".into(), observations: vec![], errored: vec![] };
    let mut refu =
        JudgeInput { judge: "refusal".into(), judge_version: "0.1.0".into(), observations: vec![], errored: vec![] };
    for p in 0..spec.prompts {
        for i in 0..spec.k {
            let (unsafe_, incoherent, errored) = sample_truth(spec, p, i);
            let base = Observation {
                prompt_id: format!("p{p:03}"),
                category: category_of(p),
                sample_index: i,
                unsafe_flag: incoherent,
                score: None,
                refusal: None,
                coherent: None,
            };
            coh.observations.push(base.clone());
            if errored {
                refu.errored.push(SampleRef {
                    prompt_id: base.prompt_id.clone(),
                    category: base.category.clone(),
                    sample_index: i,
                });
            } else {
                refu.observations.push(Observation {
                    unsafe_flag: unsafe_,
                    refusal: Some(!unsafe_),
                    coherent: Some(!incoherent),
                    ..base
                });
            }
        }
    }
    vec![coh, refu]
}

fn cfg() -> stats::StatsParams {
    stats::StatsParams { bootstrap_replicates: 400, ..stats::StatsParams::default() }
}

#[test]
fn scores_equal_score_run_on_the_same_observations() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "aa", "/ckpt/a.gguf");
    let spec = Spec { errored_every: 7, ..Spec::default() };
    let run = add_run(&store, cp, None, &spec);
    let r = score_run_from_store(&store, run, None, false, &cfg()).unwrap();
    let expected = stats::score_run(&expected_inputs(&spec), &cfg()).unwrap();
    assert_eq!(r.scores.per_judge, expected.per_judge);
    // Agreement between the refusal judge and the coherence judge is not reported.
    assert!(r.scores.agreement.is_empty());
    assert_eq!(r.coherence_judges, vec!["coherence".to_string()]);
    assert_eq!(r.samples, 72);
    let n_err = (0..24 * 3).filter(|n| n % 7 == 0).count();
    assert_eq!(r.errored, n_err as u64);
    assert_eq!(r.scores.per_judge[1].missing.n_errored, n_err);
    assert_eq!(r.scores.per_judge[1].missing.n_observed, 72 - n_err);
    assert!(r.verdict.is_none() && r.comparisons.is_empty() && r.baseline_run_id.is_none());
    // Headline: the coherence judge reports an incoherent share, the refusal judge a harm rate.
    let h_coh = &r.headline[0];
    assert_eq!((h_coh.role, h_coh.metric.as_str()), (LineRole::Coherence, "incoherent_share"));
    let h = &r.headline[1];
    assert_eq!((h.role, h.metric.as_str()), (LineRole::Harm, "unsafe_rate"));
    let est = expected.per_judge[1].overall.unsafe_rate.clone().unwrap();
    assert_eq!((h.value, h.lo, h.hi), (Some(est.value), Some(est.lo), Some(est.hi)));
    assert_eq!(h.errored, n_err as u64);
    // Stored and read back, it is the same shape.
    let v = serde_json::to_value(&r).unwrap();
    let back: RunResult = serde_json::from_value(v).unwrap();
    assert_eq!(back.headline.len(), 2);
    assert_eq!(back.run_id, run);
}

#[test]
fn errored_verdicts_are_missing_never_safe() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "aa", "/ckpt/a.gguf");
    // Every sample of prompt p000 errored; all else observed.
    let spec = Spec { prompts: 6, k: 2, errored_every: 0, ..Spec::default() };
    let run = add_run(&store, cp, None, &spec);
    let full = score_run_from_store(&store, run, None, false, &cfg()).unwrap();
    // Same data with errors on every third sample: the observed-rate must equal the rate over
    // the observed samples only, and the errored ones must not be counted at all.
    let spec_err = Spec { errored_every: 3, ..spec.clone() };
    let cp2 = add_checkpoint(&store, "bb", "/ckpt/b.gguf");
    let run2 = add_run(&store, cp2, None, &spec_err);
    let r = score_run_from_store(&store, run2, None, false, &cfg()).unwrap();
    let j = &r.scores.per_judge[1];
    assert_eq!(j.judge, "refusal");
    let n_err = (0..12).filter(|n| n % 3 == 0).count();
    assert_eq!(j.missing.n_errored, n_err);
    assert_eq!(j.overall.unsafe_rate.as_ref().unwrap().n_samples, 12 - n_err);
    let observed_unsafe = (0..6u32)
        .flat_map(|p| (0..2u32).map(move |i| (p, i)))
        .filter(|(p, i)| !(p * 2 + i).is_multiple_of(3))
        .filter(|(p, i)| sample_truth(&spec_err, *p, *i).0)
        .count();
    let pooled = j.overall.unsafe_rate_wilson.as_ref().unwrap().value;
    assert!((pooled - observed_unsafe as f64 / (12 - n_err) as f64).abs() < 1e-12);
    assert_eq!(full.scores.per_judge[1].missing.n_errored, 0);
}

#[test]
fn absent_verdict_of_a_known_judge_is_errored() {
    let samples = vec![
        StoredSample { category: None, ..blank_sample() },
        StoredSample {
            id: 2,
            prompt_id: "b".into(),
            finish_reason: "stop".into(),
            verdicts: vec![StoredVerdict {
                judge: "harm".into(),
                judge_version: "1".into(),
                is_unsafe: Some(false),
                score: Some(1.0),
                label: Some("safe".into()),
                rationale: None,
                refusal: None,
                error: None,
            }],
            ..blank_sample()
        },
    ];
    let ri = judge_inputs(&samples, &["other".to_string()]);
    assert_eq!(ri.inputs.len(), 2);
    assert_eq!(ri.inputs[0].judge, "harm");
    assert_eq!(ri.inputs[0].observations.len(), 1);
    assert_eq!(ri.inputs[0].errored.len(), 1);
    assert_eq!(ri.inputs[0].errored[0].category, UNCATEGORIZED);
    assert_eq!(ri.inputs[1].judge, "other");
    assert_eq!(ri.inputs[1].errored.len(), 2);
    assert_eq!(ri.errored, 2);
    assert!(ri.coherence_judges.is_empty());
}

#[test]
fn comparison_with_a_baseline() {
    let (_d, store) = new_store();
    let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let base_spec = Spec { prompts: 60, k: 4, seed: 3, ..Spec::default() };
    let base = add_run(&store, base_cp, None, &base_spec);
    let spec = Spec { shift: 0.35, seed: 4, ..base_spec.clone() };
    let run = add_run(&store, cp, Some(base), &spec);
    let r = score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap();
    assert_eq!(r.baseline_run_id, Some(base));
    assert!(r.comparison_refused.is_none() && !r.comparison_forced);
    assert_eq!(r.comparisons.len(), 2);
    let ri = expected_inputs(&spec);
    let bi = expected_inputs(&base_spec);
    let fp = fingerprint("suite-A");
    for (c, (a, b)) in r.comparisons.iter().zip(ri.iter().zip(bi.iter())) {
        let want = stats::compare_to_baseline(a, b, &fp, &fp, false, &cfg()).unwrap();
        assert_eq!(c, &want);
    }
    let refusal = r.comparisons.iter().find(|c| c.judge == "refusal").unwrap();
    assert_eq!(refusal.verdict, Verdict::Regressed);
    assert_eq!(r.verdict, Some(Verdict::Regressed));
    let h = r.headline.iter().find(|h| h.judge == "refusal").unwrap();
    assert_eq!(h.verdict, Some(Verdict::Regressed));
    assert!(h.difference.unwrap() > 0.2 && h.difference_lo.unwrap() > 0.0);

    // The baseline against itself-like data: same generator → indistinguishable.
    let run_same = add_run(&store, cp, Some(base), &Spec { seed: 3, ..base_spec.clone() });
    let r2 = score_run_from_store(&store, run_same, Some(base), false, &cfg()).unwrap();
    assert_eq!(r2.verdict, Some(Verdict::Indistinguishable));
}

#[test]
fn refused_comparison_lists_differences_unless_forced() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let base = add_run(&store, cp, None, &Spec::default());
    let other = Spec { suite_hash: "suite-B".into(), shift: 0.3, ..Spec::default() };
    let run = add_run(&store, cp, Some(base), &other);
    let r = score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap();
    let refused = r.comparison_refused.as_ref().expect("refused");
    assert_eq!(refused.baseline_run_id, base);
    assert_eq!(refused.differences.len(), 1);
    assert_eq!(refused.differences[0].field, "suite_hash");
    assert!(refused.differences[0].blocking);
    assert!(refused.reason.contains("suite_hash"));
    assert!(r.comparisons.is_empty() && r.verdict.is_none());
    // The scores themselves are still there.
    assert_eq!(r.scores.per_judge.len(), 2);

    let f = score_run_from_store(&store, run, Some(base), true, &cfg()).unwrap();
    assert!(f.comparison_refused.is_none());
    assert!(f.comparison_forced);
    assert_eq!(f.comparisons.len(), 2);
    assert!(f.comparisons.iter().all(|c| c.comparability.forced));
    assert!(f.verdict.is_some());
}

#[test]
fn missing_fingerprint_refuses_comparison() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let base = add_run(&store, cp, None, &Spec::default());
    let run = store
        .create_run(&NewRun {
            checkpoint_id: cp,
            baseline_run_id: Some(base),
            settings_hash: "x".into(),
            provenance: json!({}),
            total_samples: 0,
        })
        .unwrap();
    let r = score_run_from_store(&store, run.id, Some(base), false, &cfg()).unwrap();
    assert!(r.comparison_refused.is_some());
    assert_eq!(r.samples, 0);
    assert!(r.scores.per_judge.is_empty());
}

#[test]
fn unknown_runs_are_clear_errors() {
    let (_d, store) = new_store();
    let e = score_run_from_store(&store, 42, None, false, &cfg()).unwrap_err();
    assert!(matches!(e, ScoringError::RunNotFound(42)), "{e}");
    assert_eq!(e.to_string(), "run 42 does not exist");
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let run = add_run(&store, cp, None, &Spec { prompts: 3, k: 1, ..Spec::default() });
    let e = score_run_from_store(&store, run, Some(99), false, &cfg()).unwrap_err();
    assert!(matches!(e, ScoringError::BaselineNotFound(99)), "{e}");
    let e = score_run_from_store(&store, run, Some(run), false, &cfg()).unwrap_err();
    assert!(matches!(e, ScoringError::SelfBaseline(_)), "{e}");
    let bad = stats::StatsParams { level: 1.5, ..cfg() };
    let e = score_run_from_store(&store, run, None, false, &bad).unwrap_err();
    assert!(matches!(e, ScoringError::Stats { .. }), "{e}");
}

#[test]
fn overall_verdict_rule() {
    let (_d, store) = new_store();
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let base = add_run(&store, cp, None, &Spec::default());
    let run = add_run(&store, cp, None, &Spec { shift: 0.4, seed: 9, ..Spec::default() });
    let r = score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap();
    let mut cs = r.comparisons.clone();
    let coh = vec!["coherence".to_string()];
    let set = |cs: &mut Vec<BaselineComparison>, coh_v: Verdict, harm_v: Verdict| {
        cs[0].verdict = coh_v;
        cs[1].verdict = harm_v;
    };
    set(&mut cs, Verdict::Regressed, Verdict::Indistinguishable);
    assert_eq!(overall_verdict(&cs, &coh, &[]), Some(Verdict::Indistinguishable));
    set(&mut cs, Verdict::Indistinguishable, Verdict::Improved);
    assert_eq!(overall_verdict(&cs, &coh, &[]), Some(Verdict::Improved));
    let mut three = cs.clone();
    three.push(BaselineComparison { judge: "harm2".into(), verdict: Verdict::Regressed, ..cs[1].clone() });
    assert_eq!(overall_verdict(&three, &coh, &[]), Some(Verdict::Regressed));
    assert_eq!(overall_verdict(&cs[..1], &coh, &[]), None);
    assert_eq!(overall_verdict(&[], &coh, &[]), None);
}

#[test]
fn stats_config_maps_the_config_section() {
    let c = config::StatsConfig { confidence: 0.9, bootstrap: 500, alpha: 0.01, seed: 7 };
    let s = stats_config(&c);
    assert_eq!((s.level, s.bootstrap_replicates, s.alpha, s.seed), (0.9, 500, 0.01, 7));
    assert_eq!(s.power, stats::StatsParams::default().power);
}

#[test]
fn coherence_judge_detection() {
    assert!(is_coherence_judge("coherence", &[]));
    assert!(is_coherence_judge("coh2", &["coherent", "incoherent:repetition"]));
    assert!(!is_coherence_judge("harm", &["coherent", "unsafe"]));
    assert!(!is_coherence_judge("harm", &[]));
}

#[test]
fn control_suites_are_left_out_of_harm_rates_and_scored_as_over_refusal() {
    let (_d, store) = new_store();
    let base_cp = add_checkpoint(&store, "base", "/models/base.gguf");
    let cp = add_checkpoint(&store, "ft", "/ckpt/ft.gguf");
    let base_spec = Spec { prompts: 90, k: 4, seed: 3, control_every: 3, ..Spec::default() };
    let base = add_run(&store, base_cp, None, &base_spec);
    // The fine-tune refuses benign prompts far more often, and is as safe as the base.
    let spec = Spec { control_refusal_shift: 0.5, ..base_spec.clone() };
    let run = add_run(&store, cp, Some(base), &spec);
    let r = score_run_from_store(&store, run, Some(base), false, &cfg()).unwrap();
    let over = over_refusal_name("refusal");
    assert_eq!(r.over_refusal_judges, vec![over.clone()]);
    assert_eq!(r.role(&over), LineRole::OverRefusal);
    assert_eq!(r.role("refusal"), LineRole::Harm);
    assert_eq!(r.role("coherence"), LineRole::Coherence);
    let harm = r.scores.per_judge.iter().find(|j| j.judge == "refusal").unwrap();
    let ov = r.scores.per_judge.iter().find(|j| j.judge == over).unwrap();
    let coh = r.scores.per_judge.iter().find(|j| j.judge == "coherence").unwrap();
    // 30 control prompts, 60 harm prompts; coherence keeps all 90.
    assert_eq!(harm.overall.unsafe_rate.as_ref().unwrap().n_prompts, 60);
    assert_eq!(ov.overall.unsafe_rate.as_ref().unwrap().n_prompts, 30);
    assert_eq!(coh.overall.unsafe_rate.as_ref().unwrap().n_prompts, 90);
    // The over-refusal rate is the share of refusals on the control prompts (by hand).
    let mut per_prompt = Vec::new();
    for p in (0..90).step_by(3) {
        let refused = (0..4).filter(|&i| unit(3 + 2000, p, i) < 0.6).count();
        per_prompt.push(refused as f64 / 4.0);
    }
    let want = per_prompt.iter().sum::<f64>() / per_prompt.len() as f64;
    let h = r.headline.iter().find(|h| h.judge == over).unwrap();
    assert_eq!(h.role, LineRole::OverRefusal);
    assert_eq!(h.metric, "over_refusal_rate");
    assert!((h.value.unwrap() - want).abs() < 1e-12, "{:?} vs {want}", h.value);
    // Over-refusal regressed; safety did not move; the overall (safety) verdict ignores it.
    assert_eq!(h.verdict, Some(Verdict::Regressed));
    assert_eq!(r.headline.iter().find(|h| h.judge == "refusal").unwrap().verdict, Some(Verdict::Indistinguishable));
    assert_eq!(r.verdict, Some(Verdict::Indistinguishable));
    assert!(!r.any_category_regressed);
    // Without a control suite in the provenance nothing is split.
    let plain = Spec { control_every: 0, ..base_spec };
    let p = add_run(&store, cp, None, &plain);
    let r = score_run_from_store(&store, p, None, false, &cfg()).unwrap();
    assert!(r.over_refusal_judges.is_empty());
    assert_eq!(r.scores.per_judge.len(), 2);
}

/// A judge's declared role decides whether it is a coherence judge: the name `coherence` and
/// coherence-shaped labels were the only evidence before (contract 0.1), so a harm judge
/// that happened to label `coherent`/`incoherent` was taken for a coherence judge, and a
/// coherence judge under another name with its own labels was taken for a harm judge.
#[test]
fn declared_roles_decide_which_judges_measure_coherence() {
    let verdict = |judge: &str, label: &str, u: bool| StoredVerdict {
        judge: judge.into(),
        judge_version: "1".into(),
        is_unsafe: Some(u),
        score: None,
        label: Some(label.into()),
        rationale: None,
        refusal: None,
        error: None,
    };
    let sample = |id: i64, prompt: &str| StoredSample {
        id,
        prompt_id: prompt.into(),
        finish_reason: "stop".into(),
        verdicts: vec![
            verdict("strict", "incoherent", true),
            verdict("fluency", "garbled", id == 2),
            verdict("coherence", "coherent", false),
        ],
        ..blank_sample()
    };
    let samples = vec![sample(1, "a"), sample(2, "b")];
    // Undeclared (0.1 plugins): inferred from the name and the labels.
    let guessed = judge_inputs(&samples, &[]);
    assert_eq!(guessed.coherence_judges, vec!["coherence".to_string(), "strict".to_string()]);
    // Declared: `strict` is a harm judge with odd labels, `fluency` a coherence judge.
    let declared = vec![
        ("strict".to_string(), crate::judge::JudgeRole::Harm),
        ("fluency".to_string(), crate::judge::JudgeRole::Coherence),
    ];
    let ri = judge_inputs_declared(&samples, &[], &declared);
    assert_eq!(ri.coherence_judges, vec!["coherence".to_string(), "fluency".to_string()]);
    // The harm judge's observations carry the declared coherence judges' coherence.
    let strict = ri.inputs.iter().find(|i| i.judge == "strict").unwrap();
    assert_eq!(strict.observations.iter().map(|o| o.coherent).collect::<Vec<_>>(), vec![Some(true), Some(true)]);
    // Through a run's provenance, as the daemon records it.
    let provenance = crate::provenance::Provenance {
        judges: declared
            .iter()
            .map(|(name, role)| crate::provenance::JudgeProvenance {
                name: name.clone(),
                role: Some(*role),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(run_inputs(&samples, &[], &provenance).coherence_judges, ri.coherence_judges);
}

/// A stored sample of run 1, prompt `a`, category `x`, with nothing else set.
fn blank_sample() -> StoredSample {
    StoredSample {
        id: 1,
        run_id: 1,
        prompt_id: "a".into(),
        category: Some("x".into()),
        sample_index: 0,
        seed: 0,
        prompt_sha256: String::new(),
        prompt: String::new(),
        response: String::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        finish_reason: "error".into(),
        generation_ms: None,
        judge_ms: None,
        error: None,
        verdicts: vec![],
    }
}

/// A round interrupted half-way is not looked at: a prompt counts as evaluated only with all
/// K of its samples (a look was made on prompts with fewer after a resume, and could decide
/// on them).
#[test]
fn an_early_look_waits_for_every_sample_of_its_prompts() {
    use crate::stats::{LookDecision, Observation};
    let ids: Vec<String> = (0..8).map(|i| format!("s/p{i}")).collect();
    let obs = |p: &str, k: u32, unsafe_flag: bool| Observation {
        prompt_id: p.into(),
        category: "c".into(),
        sample_index: k,
        unsafe_flag,
        score: None,
        refusal: None,
        coherent: None,
    };
    let inputs = |observations: Vec<Observation>| RunInputs {
        prompts: observations.iter().map(|o| o.prompt_id.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
        samples: observations.len() as u64,
        inputs: vec![JudgeInput { judge: "harm".into(), judge_version: "1".into(), observations, errored: vec![] }],
        coherence_judges: vec![],
        over_refusal_judges: vec![],
        errored: 0,
    };
    let baseline = inputs(ids.iter().flat_map(|p| [obs(p, 0, false), obs(p, 1, false)]).collect());
    let provenance = crate::provenance::Provenance {
        sampling: crate::config::SamplingConfig {
            samples: 2,
            early_stop: Some(crate::config::EarlyStop { looks: 2, ..Default::default() }),
            ..Default::default()
        },
        seeds: crate::provenance::SeedScheme { base_seed: 1, ..Default::default() },
        ..Default::default()
    };
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let first: Vec<&str> = stats::evaluation_order(1, 0, &refs)[..4].iter().map(|&i| refs[i]).collect();
    // The first round's four prompts, the last with one of its two samples.
    let mut run: Vec<Observation> = first[..3].iter().flat_map(|p| [obs(p, 0, true), obs(p, 1, true)]).collect();
    run.push(obs(first[3], 0, true));
    let es = early_stop_of(&provenance, &inputs(run.clone()), &baseline).unwrap().unwrap();
    assert!(es.looks.is_empty(), "a look on an incomplete round: {:?}", es.looks);
    assert_eq!((es.decision, es.prompts_done), (LookDecision::Continue, 3));
    run.push(obs(first[3], 1, true));
    let es = early_stop_of(&provenance, &inputs(run), &baseline).unwrap().unwrap();
    assert_eq!((es.looks.len(), es.decision, es.prompts_done), (1, LookDecision::Regressed, 4));
}
