//! Point estimates with intervals (Wilson; prompt-clustered bootstrap for the headline),
//! overall and per category, and the per-judge / per-run score records built from them.

use serde::{Deserialize, Serialize};

use super::agreement::{cohens_kappa, JudgeAgreement};
use super::bootstrap::clustered_bootstrap_mean;
use super::data::{group_by_prompt, missing_report, summarize, Metric, PromptGroup};
use super::variance::{variance_components, VarianceComponents};
use super::{derive_seed, z_two_sided, JudgeInput, MissingReport, StatsError, StatsParams};

/// How an interval was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalMethod {
    /// Percentile bootstrap resampling prompts (the headline method).
    ClusteredBootstrap,
    /// Wilson score interval treating every sample as an independent trial.
    Wilson,
    /// The bootstrap distribution collapsed to a point (e.g. every prompt 0% or 100%):
    /// Wilson interval with n = number of prompts, i.e. one trial per prompt, so that
    /// "0 unsafe out of N prompts" still gets an honest upper bound.
    WilsonPromptsFallback,
    /// Only one prompt: Wilson interval over that prompt's samples. It says nothing about
    /// other prompts.
    WilsonSinglePrompt,
    /// A graded score with no variability to resample: the interval is the point.
    Degenerate,
}

/// A point estimate with its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    pub method: IntervalMethod,
    pub n_prompts: usize,
    pub n_samples: usize,
}

impl Estimate {
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }
}

/// Wilson score interval for `successes` out of `trials` independent trials:
/// centre = (p + z²/2n) / (1 + z²/n), half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).
/// `None` when `trials == 0`.
pub fn wilson_interval(successes: u64, trials: u64, level: f64) -> Option<(f64, f64)> {
    if trials == 0 || successes > trials {
        return None;
    }
    Some(wilson_p(successes as f64 / trials as f64, trials as f64, level))
}

pub(crate) fn wilson_p(p: f64, n: f64, level: f64) -> (f64, f64) {
    let z = z_two_sided(level);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Headline estimate of one metric over a set of prompts: the prompt-averaged mean (each
/// prompt's eligible samples averaged first, then prompts weighted equally) with the
/// prompt-clustered percentile bootstrap, falling back as documented in [`IntervalMethod`].
pub(crate) fn estimate_metric(
    prompts: &[&PromptGroup<'_>],
    metric: Metric,
    cfg: &StatsParams,
    seed_label: &str,
) -> Option<Estimate> {
    let sums = summarize(prompts, metric);
    if sums.is_empty() {
        return None;
    }
    let values: Vec<f64> = sums.iter().map(|s| s.mean()).collect();
    let n_prompts = values.len();
    let n_samples: usize = sums.iter().map(|s| s.count).sum();
    let value = values.iter().sum::<f64>() / n_prompts as f64;
    let mk = |lo: f64, hi: f64, method| Estimate { value, lo, hi, level: cfg.level, method, n_prompts, n_samples };
    if n_prompts >= 2 {
        let seed = derive_seed(cfg.seed, seed_label);
        if let Some((lo, hi)) = clustered_bootstrap_mean(&values, cfg.bootstrap_replicates, seed, cfg.level) {
            if hi > lo {
                return Some(mk(lo, hi, IntervalMethod::ClusteredBootstrap));
            }
        }
    }
    if !metric.is_proportion() {
        return Some(mk(value, value, IntervalMethod::Degenerate));
    }
    if n_prompts == 1 {
        let (lo, hi) = wilson_p(value, n_samples as f64, cfg.level);
        Some(mk(lo, hi, IntervalMethod::WilsonSinglePrompt))
    } else {
        let (lo, hi) = wilson_p(value, n_prompts as f64, cfg.level);
        Some(mk(lo, hi, IntervalMethod::WilsonPromptsFallback))
    }
}

/// Pooled unsafe rate (all samples as independent trials) with its Wilson interval.
fn pooled_wilson(prompts: &[&PromptGroup<'_>], cfg: &StatsParams) -> Option<Estimate> {
    let n: usize = prompts.iter().map(|p| p.obs.len()).sum();
    let x: usize = prompts.iter().map(|p| p.obs.iter().filter(|o| o.unsafe_flag).count()).sum();
    let (lo, hi) = wilson_interval(x as u64, n as u64, cfg.level)?;
    Some(Estimate {
        value: x as f64 / n as f64,
        lo,
        hi,
        level: cfg.level,
        method: IntervalMethod::Wilson,
        n_prompts: prompts.len(),
        n_samples: n,
    })
}

/// The estimates reported for one set of prompts (all of them, or one category).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    /// Headline: prompt-averaged unsafe rate, prompt-clustered bootstrap interval.
    pub unsafe_rate: Option<Estimate>,
    /// Pooled unsafe rate (unsafe samples / samples) with a Wilson interval that treats
    /// samples as independent; narrower than the headline when prompts differ.
    pub unsafe_rate_wilson: Option<Estimate>,
    /// Prompt-averaged mean score over samples that carry a score.
    pub mean_score: Option<Estimate>,
    /// Prompt-averaged refusal rate over samples with a refusal verdict.
    pub refusal_rate: Option<Estimate>,
    /// Prompt-averaged unsafe rate among samples judged coherent (coherent == Some(true)).
    pub coherent_unsafe_rate: Option<Estimate>,
}

fn metric_set(prompts: &[&PromptGroup<'_>], cfg: &StatsParams, label: &str) -> MetricSet {
    let e = |m: Metric| estimate_metric(prompts, m, cfg, &format!("{label}/{}", m.label()));
    MetricSet {
        unsafe_rate: e(Metric::Unsafe),
        unsafe_rate_wilson: pooled_wilson(prompts, cfg),
        mean_score: e(Metric::Score),
        refusal_rate: e(Metric::Refusal),
        coherent_unsafe_rate: e(Metric::CoherentUnsafe),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryScores {
    pub category: String,
    pub metrics: MetricSet,
}

/// Everything computed from one judge's verdicts on one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeScores {
    pub judge: String,
    pub judge_version: String,
    pub overall: MetricSet,
    pub per_category: Vec<CategoryScores>,
    /// Between- vs within-prompt variance of the unsafe indicator.
    pub variance: Option<VarianceComponents>,
    pub missing: MissingReport,
}

/// Scores of one run: one record per judge, and Cohen's kappa for every pair of judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunScores {
    pub config: StatsParams,
    pub per_judge: Vec<JudgeScores>,
    pub agreement: Vec<JudgeAgreement>,
}

/// Scores one judge's verdicts: overall and per-category estimates, variance components,
/// missing-verdict report.
pub fn score_judge(input: &JudgeInput, cfg: &StatsParams) -> Result<JudgeScores, StatsError> {
    cfg.validate()?;
    let prompts = group_by_prompt(&input.observations)?;
    let all: Vec<&PromptGroup<'_>> = prompts.iter().collect();
    let overall = metric_set(&all, cfg, &format!("{}/*", input.judge));
    let mut cats: Vec<&str> = prompts.iter().map(|p| p.category).collect();
    cats.sort_unstable();
    cats.dedup();
    let per_category = cats
        .iter()
        .map(|c| {
            let ps: Vec<&PromptGroup<'_>> = prompts.iter().filter(|p| p.category == *c).collect();
            CategoryScores { category: c.to_string(), metrics: metric_set(&ps, cfg, &format!("{}/{c}", input.judge)) }
        })
        .collect();
    let counts: Vec<(usize, usize)> =
        prompts.iter().map(|p| (p.obs.iter().filter(|o| o.unsafe_flag).count(), p.obs.len())).collect();
    Ok(JudgeScores {
        judge: input.judge.clone(),
        judge_version: input.judge_version.clone(),
        overall,
        per_category,
        variance: variance_components(&counts),
        missing: missing_report(input, &prompts),
    })
}

/// Scores every judge of a run and the agreement between each pair of judges.
pub fn score_run(inputs: &[JudgeInput], cfg: &StatsParams) -> Result<RunScores, StatsError> {
    let per_judge = inputs.iter().map(|i| score_judge(i, cfg)).collect::<Result<Vec<_>, _>>()?;
    let mut agreement = Vec::new();
    for (i, a) in inputs.iter().enumerate() {
        for b in &inputs[i + 1..] {
            agreement.push(cohens_kappa(a, b, cfg)?);
        }
    }
    Ok(RunScores { config: cfg.clone(), per_judge, agreement })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Observation;

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels.stats.proportion.proportion_confint(count, nobs, alpha=0.05,
        // method='wilson'); tests/reference/stats_reference.py::wilson()
        let cases: [(u64, u64, f64, f64); 5] = [
            (7, 50, 0.06950833427016288, 0.26186193710585537),
            (0, 20, 0.0, 0.1611251580528194),
            (20, 20, 0.8388748419471804, 0.9999999999999999),
            (1, 1, 0.2065493143772374, 1.0),
            (123, 400, 0.2642873977313039, 0.3543748355874003),
        ];
        for (x, n, lo, hi) in cases {
            let (l, h) = wilson_interval(x, n, 0.95).unwrap();
            assert!((l - lo).abs() < 1e-12 && (h - hi).abs() < 1e-12, "{x}/{n}: {l} {h}");
        }
        // proportion_confint(7, 50, alpha=0.1, method='wilson')
        let (l, h) = wilson_interval(7, 50, 0.90).unwrap();
        assert!((l - 0.07772089782062995).abs() < 1e-12 && (h - 0.2392389959454846).abs() < 1e-12);
        assert_eq!(wilson_interval(0, 0, 0.95), None);
    }

    fn obs(p: &str, c: &str, i: u32, u: bool) -> Observation {
        Observation {
            prompt_id: p.into(),
            category: c.into(),
            sample_index: i,
            unsafe_flag: u,
            score: Some(if u { 4.0 } else { 1.0 }),
            refusal: Some(!u),
            coherent: Some(i.is_multiple_of(2)),
        }
    }

    fn input(observations: Vec<Observation>) -> JudgeInput {
        JudgeInput { judge: "j".into(), judge_version: "1".into(), observations, errored: vec![] }
    }

    #[test]
    fn point_estimates_are_prompt_averaged() {
        // p1: 1 of 2 unsafe; p2: 0 of 4 unsafe -> prompt-averaged 0.25, pooled 1/6.
        let mut o = vec![obs("p1", "a", 0, true), obs("p1", "a", 1, false)];
        o.extend((0..4).map(|i| obs("p2", "b", i, false)));
        let s = score_judge(&input(o), &StatsParams::default()).unwrap();
        let u = s.overall.unsafe_rate.unwrap();
        assert!((u.value - 0.25).abs() < 1e-15);
        assert_eq!((u.n_prompts, u.n_samples), (2, 6));
        assert_eq!(u.method, IntervalMethod::ClusteredBootstrap);
        assert!(u.lo <= u.value && u.value <= u.hi);
        let w = s.overall.unsafe_rate_wilson.unwrap();
        assert!((w.value - 1.0 / 6.0).abs() < 1e-15);
        // scores: p1 mean 2.5, p2 mean 1 -> 1.75
        assert!((s.overall.mean_score.unwrap().value - 1.75).abs() < 1e-15);
        // refusal is the complement here: p1 0.5, p2 1 -> 0.75
        assert!((s.overall.refusal_rate.unwrap().value - 0.75).abs() < 1e-15);
        // coherent samples are even indices: p1 {0: unsafe} -> 1; p2 {0,2: safe} -> 0
        assert!((s.overall.coherent_unsafe_rate.unwrap().value - 0.5).abs() < 1e-15);
        assert_eq!(s.per_category.len(), 2);
        let a = s.per_category[0].metrics.unsafe_rate.clone().unwrap();
        assert_eq!(a.method, IntervalMethod::WilsonSinglePrompt);
        // Wilson over p1's 2 samples: proportion_confint(1, 2, method='wilson')
        assert!((a.lo - 0.09453120573423068).abs() < 1e-12 && (a.hi - 0.9054687942657693).abs() < 1e-12);
    }

    #[test]
    fn degenerate_cases() {
        let cfg = StatsParams::default();
        // zero observations: nothing to estimate, nothing invented.
        let s = score_judge(&input(vec![]), &cfg).unwrap();
        assert_eq!(s.overall.unsafe_rate, None);
        assert_eq!(s.overall.unsafe_rate_wilson, None);
        assert!(s.per_category.is_empty());
        // all safe over 30 prompts: bootstrap collapses; fall back to Wilson(0, 30 prompts).
        let o: Vec<_> = (0..30).flat_map(|p| (0..3).map(move |i| obs(&format!("p{p}"), "a", i, false))).collect();
        let u = score_judge(&input(o), &cfg).unwrap().overall.unsafe_rate.unwrap();
        assert_eq!(u.method, IntervalMethod::WilsonPromptsFallback);
        assert_eq!(u.value, 0.0);
        // proportion_confint(0, 30, method='wilson') upper = 0.1135133931739688
        assert!(u.lo.abs() < 1e-15 && (u.hi - 0.1135133931739688).abs() < 1e-12, "{u:?}");
        // all unsafe: mirror image.
        let o: Vec<_> = (0..30).flat_map(|p| (0..3).map(move |i| obs(&format!("p{p}"), "a", i, true))).collect();
        let u = score_judge(&input(o), &cfg).unwrap().overall.unsafe_rate.unwrap();
        assert!((u.hi - 1.0).abs() < 1e-15 && (u.lo - (1.0 - 0.1135133931739688)).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_rejected() {
        let cfg = StatsParams::default();
        let dup = vec![obs("p", "a", 0, true), obs("p", "a", 0, false)];
        assert!(matches!(score_judge(&input(dup), &cfg), Err(StatsError::DuplicateObservation { .. })));
        let cat = vec![obs("p", "a", 0, true), obs("p", "b", 1, false)];
        assert!(matches!(score_judge(&input(cat), &cfg), Err(StatsError::InconsistentCategory { .. })));
        let bad = StatsParams { level: 1.0, ..StatsParams::default() };
        assert_eq!(score_judge(&input(vec![]), &bad), Err(StatsError::InvalidLevel(1.0)));
    }

    #[test]
    fn errored_samples_are_reported_not_counted_safe() {
        let o = vec![obs("p1", "a", 0, true), obs("p1", "a", 1, false), obs("p2", "a", 0, false)];
        let mut inp = input(o);
        let key = |p: &str, i| crate::stats::SampleRef { prompt_id: p.into(), category: "a".into(), sample_index: i };
        inp.errored = vec![key("p2", 1), key("p3", 0), key("p3", 1)];
        let s = score_judge(&inp, &StatsParams::default()).unwrap();
        assert_eq!(s.missing.n_errored, 3);
        assert_eq!(s.missing.n_observed, 3);
        assert!((s.missing.share_errored - 0.5).abs() < 1e-15);
        assert_eq!(s.missing.n_prompts_without_verdict, 1);
        assert_eq!(s.missing.errored_per_category.get("a"), Some(&3));
        assert!((s.missing.pooled_unsafe_rate_observed.unwrap() - 1.0 / 3.0).abs() < 1e-15);
        assert!((s.missing.pooled_unsafe_rate_if_errored_unsafe.unwrap() - 4.0 / 6.0).abs() < 1e-15);
        // p3 has no verdicts and is not counted as a safe prompt: 2 prompts, (0.5 + 0) / 2.
        let u = s.overall.unsafe_rate.unwrap();
        assert_eq!((u.n_prompts, u.n_samples), (2, 3));
        assert!((u.value - 0.25).abs() < 1e-15);
    }

    fn mixed_run(n_prompts: usize, k: u32) -> JudgeInput {
        let o = (0..n_prompts)
            .flat_map(|p| {
                (0..k).map(move |i| {
                    let c = if p % 3 == 0 { "x" } else { "y" };
                    obs(&format!("p{p:03}"), c, i, (p * 31 + i as usize * 17) % 7 < 2 + p % 3)
                })
            })
            .collect();
        input(o)
    }

    #[test]
    fn scores_are_reproducible_by_seed_and_serialize() {
        let inp = mixed_run(60, 4);
        let cfg = StatsParams { seed: 99, ..StatsParams::default() };
        let a = score_judge(&inp, &cfg).unwrap();
        let b = score_judge(&inp, &cfg).unwrap();
        let ja = serde_json::to_string(&a).unwrap();
        assert_eq!(ja, serde_json::to_string(&b).unwrap(), "same seed, same bytes");
        let back: JudgeScores = serde_json::from_str(&ja).unwrap();
        same_up_to_float_parsing(&back, &a);
        let c = score_judge(&inp, &StatsParams { seed: 100, ..cfg.clone() }).unwrap();
        let (ua, uc) = (a.overall.unsafe_rate.unwrap(), c.overall.unsafe_rate.unwrap());
        assert_eq!(ua.value, uc.value);
        assert!(ua.lo != uc.lo || ua.hi != uc.hi, "different seed, different interval");
        assert!((ua.lo - uc.lo).abs() < 0.02 && (ua.hi - uc.hi).abs() < 0.02, "{ua:?} {uc:?}");
        // categories are scored separately and the run record serializes with agreement.
        assert_eq!(a.per_category.iter().map(|c| c.category.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        let mut other = inp.clone();
        other.judge = "k".into();
        for o in &mut other.observations {
            if o.sample_index == 0 {
                o.unsafe_flag = !o.unsafe_flag;
            }
        }
        let run = score_run(&[inp, other], &cfg).unwrap();
        assert_eq!(run.per_judge.len(), 2);
        assert_eq!(run.agreement.len(), 1);
        let ag = &run.agreement[0];
        assert_eq!(ag.table.total(), 240);
        assert_eq!(ag.table.first_only_unsafe + ag.table.second_only_unsafe, 60);
        let json = serde_json::to_string(&run).unwrap();
        same_up_to_float_parsing(&serde_json::from_str::<RunScores>(&json).unwrap(), &run);
    }

    /// serde_json (without its `float_roundtrip` feature) may parse a float back one ulp
    /// off; compare two records field by field with a 1e-15 relative tolerance on numbers.
    fn same_up_to_float_parsing<T: Serialize>(a: &T, b: &T) {
        fn cmp(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
            use serde_json::Value as V;
            match (a, b) {
                (V::Number(x), V::Number(y)) => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!((x - y).abs() <= 1e-15 * x.abs().max(1.0), "{path}: {x} vs {y}");
                }
                (V::Array(x), V::Array(y)) => {
                    assert_eq!(x.len(), y.len(), "{path}");
                    for (i, (x, y)) in x.iter().zip(y).enumerate() {
                        cmp(x, y, &format!("{path}[{i}]"));
                    }
                }
                (V::Object(x), V::Object(y)) => {
                    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}");
                    for (k, v) in x {
                        cmp(v, &y[k], &format!("{path}.{k}"));
                    }
                }
                _ => assert_eq!(a, b, "{path}"),
            }
        }
        cmp(&serde_json::to_value(a).unwrap(), &serde_json::to_value(b).unwrap(), "");
    }
}
