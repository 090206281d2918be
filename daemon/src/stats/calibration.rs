//! Judge error: a judge's accuracy against human labels (confusion matrix, sensitivity and
//! specificity with Wilson intervals, Cohen's κ), and a run's unsafe rate corrected for that
//! error (Rogan & Gladen 1978), with an interval that carries the calibration set's
//! uncertainty as well as the prompts'.
//!
//! A judge that calls a truly unsafe response unsafe with probability Se (sensitivity) and a
//! safe one safe with probability Sp (specificity) reports, on a run whose true unsafe rate is
//! π, the rate p = Se·π + (1 − Sp)(1 − π). Solving for π gives the Rogan–Gladen estimator
//! π̂ = (p̂ + Sp − 1) / (Se + Sp − 1), clipped to [0, 1]; it exists only for an informative
//! judge, Youden's J = Se + Sp − 1 > 0.
//!
//! Se and Sp are themselves estimates from a labelled set of n₁ unsafe and n₀ safe responses.
//! The interval is a percentile bootstrap over both sources at once: each replicate resamples
//! the run's prompts (a prompt's samples together, as every other interval here) and the
//! calibration set (the labelled unsafe and safe responses separately, so n₁ and n₀ stay
//! fixed), and applies the correction with that replicate's Se and Sp. A replicate whose J is
//! not positive cannot be corrected; it is counted, and when more than (1 − level)/2 of them
//! are, the interval is the whole [0, 1]: the calibration set cannot bound the rate.
//!
//! For a paired comparison with the baseline, both runs are scored by the same judge, so one
//! Se and Sp serve both: the corrected difference is (p̂_run − p̂_base) / J, bootstrapped with
//! the paired prompts and the calibration set resampled together. Its sign is the raw
//! difference's (J > 0), so the verdict of the paired test is unchanged; the correction
//! rescales the effect and widens its interval by the calibration's uncertainty.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bootstrap::percentile;
use super::data::prompt_rates;
use super::point::wilson_interval;
use super::{derive_seed, kappa_from_table, ConfusionTable, JudgeAgreement, JudgeInput, StatsError, StatsParams};

/// A judge's verdicts on a labelled calibration set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CalibrationCounts {
    /// Labelled unsafe, judged unsafe.
    pub true_positive: u64,
    /// Labelled unsafe, judged safe.
    pub false_negative: u64,
    /// Labelled safe, judged safe.
    pub true_negative: u64,
    /// Labelled safe, judged unsafe.
    pub false_positive: u64,
}

impl CalibrationCounts {
    /// Labelled unsafe responses (n₁).
    pub fn positives(&self) -> u64 {
        self.true_positive + self.false_negative
    }

    /// Labelled safe responses (n₀).
    pub fn negatives(&self) -> u64 {
        self.true_negative + self.false_positive
    }

    /// Adds one judged, labelled response.
    pub fn add(&mut self, labelled_unsafe: bool, judged_unsafe: bool) {
        match (labelled_unsafe, judged_unsafe) {
            (true, true) => self.true_positive += 1,
            (true, false) => self.false_negative += 1,
            (false, false) => self.true_negative += 1,
            (false, true) => self.false_positive += 1,
        }
    }

    /// (Se, Sp), when both classes are present.
    pub fn rates(&self) -> Option<(f64, f64)> {
        (self.positives() > 0 && self.negatives() > 0).then(|| {
            (self.true_positive as f64 / self.positives() as f64, self.true_negative as f64 / self.negatives() as f64)
        })
    }
}

/// A proportion with its Wilson interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub successes: u64,
    pub trials: u64,
}

fn proportion(successes: u64, trials: u64, level: f64) -> Option<Proportion> {
    let (lo, hi) = wilson_interval(successes, trials, level)?;
    Some(Proportion { value: successes as f64 / trials as f64, lo, hi, successes, trials })
}

/// How well a judge agrees with human labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeAccuracy {
    pub counts: CalibrationCounts,
    /// P(judged unsafe | labelled unsafe), Wilson interval.
    pub sensitivity: Option<Proportion>,
    /// P(judged safe | labelled safe), Wilson interval.
    pub specificity: Option<Proportion>,
    /// Share of responses on which judge and label agree, Wilson interval.
    pub accuracy: Option<Proportion>,
    /// Youden's J = Se + Sp − 1: the correction exists only when it is positive.
    pub youden: Option<f64>,
    /// Cohen's κ between the judge (first) and the labels (second), with its asymptotic
    /// interval (responses independent).
    pub kappa: JudgeAgreement,
    pub level: f64,
}

/// The accuracy of a judge from its calibration counts, at confidence `level`.
pub fn judge_accuracy(counts: &CalibrationCounts, level: f64) -> JudgeAccuracy {
    let c = counts;
    let table = ConfusionTable {
        both_unsafe: c.true_positive,
        first_only_unsafe: c.false_positive,
        second_only_unsafe: c.false_negative,
        both_safe: c.true_negative,
    };
    let mut kappa = kappa_from_table(&table, level);
    kappa.first_judge = "judge".into();
    kappa.second_judge = "labels".into();
    let sensitivity = proportion(c.true_positive, c.positives(), level);
    let specificity = proportion(c.true_negative, c.negatives(), level);
    JudgeAccuracy {
        counts: *c,
        youden: c.rates().map(|(se, sp)| se + sp - 1.0),
        sensitivity,
        specificity,
        accuracy: proportion(c.true_positive + c.true_negative, c.positives() + c.negatives(), level),
        kappa,
        level,
    }
}

/// The Rogan–Gladen estimate (p + Sp − 1) / (Se + Sp − 1), unclipped; `None` when the judge
/// is not informative (Se + Sp ≤ 1).
pub fn rogan_gladen(p: f64, se: f64, sp: f64) -> Option<f64> {
    let j = se + sp - 1.0;
    (j > 0.0).then(|| (p + sp - 1.0) / j)
}

/// A run's unsafe rate corrected for its judge's error, beside the raw one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectedRate {
    /// The judge's prompt-averaged rate, as reported.
    pub raw: f64,
    /// The Rogan–Gladen estimate, clipped to [0, 1].
    pub value: f64,
    /// Bootstrap interval over the prompts and the calibration set.
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    /// True when the unclipped estimate fell outside [0, 1] (the raw rate is below 1 − Sp
    /// or above Se: the calibration and the run disagree).
    pub clipped: bool,
    pub sensitivity: f64,
    pub specificity: f64,
    pub n_prompts: usize,
    /// Labelled unsafe and safe responses in the calibration set.
    pub n_calibration_unsafe: u64,
    pub n_calibration_safe: u64,
    pub replicates: u32,
    /// Replicates whose resampled Se + Sp ≤ 1 (no correction possible; left out).
    pub undefined_replicates: u32,
}

/// The paired run − baseline difference corrected for the judge's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectedDifference {
    /// Raw difference of the prompt-averaged rates over the paired prompts.
    pub raw: f64,
    /// (raw) / (Se + Sp − 1).
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    pub n_paired: usize,
    pub replicates: u32,
    pub undefined_replicates: u32,
}

/// Why a rate cannot be corrected.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("the calibration set needs labelled unsafe and labelled safe responses (it has {unsafe_n} unsafe, {safe_n} safe)")]
    OneClass { unsafe_n: u64, safe_n: u64 },
    #[error("the judge is not informative on its calibration set (Se + Sp − 1 = {youden:.3} ≤ 0): its rate cannot be corrected")]
    Uninformative { youden: f64 },
    #[error("no verdicts to correct")]
    NoData,
    #[error(transparent)]
    Stats(#[from] StatsError),
}

/// One bootstrap draw of (Se, Sp): the labelled unsafe and safe responses resampled
/// separately, so each keeps its size.
fn draw_rates(rng: &mut ChaCha8Rng, c: &CalibrationCounts, se: f64, sp: f64) -> (f64, f64) {
    let mut binomial = |n: u64, p: f64| (0..n).filter(|_| rng.random::<f64>() < p).count() as f64 / n as f64;
    (binomial(c.positives(), se), binomial(c.negatives(), sp))
}

fn informative(c: &CalibrationCounts) -> Result<(f64, f64), CalibrationError> {
    let (se, sp) = c.rates().ok_or(CalibrationError::OneClass { unsafe_n: c.positives(), safe_n: c.negatives() })?;
    if se + sp - 1.0 <= 0.0 {
        return Err(CalibrationError::Uninformative { youden: se + sp - 1.0 });
    }
    Ok((se, sp))
}

/// The percentile interval of the defined replicates, or [lo_all, hi_all] when too many
/// replicates were undefined to trust the tails.
fn interval(mut values: Vec<f64>, undefined: u32, replicates: u32, level: f64, whole: (f64, f64)) -> (f64, f64) {
    let a = (1.0 - level) / 2.0;
    if values.is_empty() || f64::from(undefined) > a * f64::from(replicates) {
        return whole;
    }
    values.sort_by(f64::total_cmp);
    (percentile(&values, a), percentile(&values, 1.0 - a))
}

/// The two-source bootstrap: `replicates` times, the mean of `per_prompt` resampled (prompts
/// with replacement) and a draw of (Se*, Sp*) from the calibration set, corrected by
/// `correct(mean*, Se*, Sp*)`. Returns the corrected replicates, and how many could not be
/// corrected (`correct` gave `None`).
fn two_source_bootstrap(
    per_prompt: &[f64],
    counts: &CalibrationCounts,
    (se, sp): (f64, f64),
    replicates: u32,
    seed: u64,
    correct: impl Fn(f64, f64, f64) -> Option<f64>,
) -> (Vec<f64>, u32) {
    let n = per_prompt.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(replicates as usize);
    let mut undefined = 0;
    for _ in 0..replicates {
        let m = (0..n).map(|_| per_prompt[rng.random_range(0..n)]).sum::<f64>() / n as f64;
        let (se_b, sp_b) = draw_rates(&mut rng, counts, se, sp);
        match correct(m, se_b, sp_b) {
            Some(v) => values.push(v),
            None => undefined += 1,
        }
    }
    (values, undefined)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The run's unsafe rate (prompt-averaged, as the headline) corrected for the judge's error
/// measured by `counts`, with the two-source bootstrap interval at `cfg.level`
/// (B = `cfg.bootstrap_replicates`, seeded from `cfg.seed` and the judge's name).
pub fn corrected_rate(
    input: &JudgeInput,
    counts: &CalibrationCounts,
    cfg: &StatsParams,
) -> Result<CorrectedRate, CalibrationError> {
    cfg.validate()?;
    let (se, sp) = informative(counts)?;
    let per_prompt: Vec<f64> = prompt_rates(&input.observations)?.into_values().collect();
    if per_prompt.is_empty() {
        return Err(CalibrationError::NoData);
    }
    let raw = mean(&per_prompt);
    let unclipped = rogan_gladen(raw, se, sp).expect("informative");
    let n = per_prompt.len();
    let seed = derive_seed(cfg.seed, &format!("calibration/{}", input.judge));
    let (values, undefined) =
        two_source_bootstrap(&per_prompt, counts, (se, sp), cfg.bootstrap_replicates, seed, |p, se_b, sp_b| {
            rogan_gladen(p, se_b, sp_b).map(|v| v.clamp(0.0, 1.0))
        });
    let (lo, hi) = interval(values, undefined, cfg.bootstrap_replicates, cfg.level, (0.0, 1.0));
    Ok(CorrectedRate {
        raw,
        value: unclipped.clamp(0.0, 1.0),
        lo,
        hi,
        level: cfg.level,
        clipped: !(0.0..=1.0).contains(&unclipped),
        sensitivity: se,
        specificity: sp,
        n_prompts: n,
        n_calibration_unsafe: counts.positives(),
        n_calibration_safe: counts.negatives(),
        replicates: cfg.bootstrap_replicates,
        undefined_replicates: undefined,
    })
}

/// The paired run − baseline difference corrected for the judge's error, at level 1 − α as
/// the raw comparison's interval: prompts scored in both runs are paired, and the paired
/// prompts and the calibration set are resampled together.
pub fn corrected_difference(
    run: &JudgeInput,
    baseline: &JudgeInput,
    counts: &CalibrationCounts,
    cfg: &StatsParams,
) -> Result<CorrectedDifference, CalibrationError> {
    cfg.validate()?;
    let (se, sp) = informative(counts)?;
    let base = prompt_rates(&baseline.observations)?;
    let d: Vec<f64> =
        prompt_rates(&run.observations)?.into_iter().filter_map(|(p, r)| base.get(p).map(|b| r - b)).collect();
    if d.is_empty() {
        return Err(CalibrationError::NoData);
    }
    let level = 1.0 - cfg.alpha;
    let raw = mean(&d);
    let j = se + sp - 1.0;
    let n = d.len();
    let seed = derive_seed(cfg.seed, &format!("calibration-difference/{}", run.judge));
    let (values, undefined) =
        two_source_bootstrap(&d, counts, (se, sp), cfg.bootstrap_replicates, seed, |d_b, se_b, sp_b| {
            let j_b = se_b + sp_b - 1.0;
            (j_b > 0.0).then(|| (d_b / j_b).clamp(-1.0, 1.0))
        });
    let (lo, hi) = interval(values, undefined, cfg.bootstrap_replicates, level, (-1.0, 1.0));
    Ok(CorrectedDifference {
        raw,
        value: (raw / j).clamp(-1.0, 1.0),
        lo,
        hi,
        level,
        n_paired: n,
        replicates: cfg.bootstrap_replicates,
        undefined_replicates: undefined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Observation;

    /// 200 prompts × 5 samples; prompt i has (i·7 mod 6) unsafe samples, capped at 5, and the
    /// baseline (i·3 mod 4) (stats_reference.py::calibration() builds the same data).
    fn runs() -> (JudgeInput, JudgeInput) {
        let input = |f: &dyn Fn(usize) -> usize| JudgeInput {
            judge: "refusal".into(),
            judge_version: "1".into(),
            observations: (0..200)
                .flat_map(|i| {
                    let x = f(i).min(5);
                    (0..5).map(move |k| Observation {
                        prompt_id: format!("p{i:03}"),
                        category: "c".into(),
                        sample_index: k,
                        unsafe_flag: (k as usize) < x,
                        score: None,
                        refusal: None,
                        coherent: None,
                    })
                })
                .collect(),
            errored: Vec::new(),
        };
        (input(&|i| (i * 7) % 6), input(&|i| (i * 3) % 4))
    }

    const COUNTS: CalibrationCounts =
        CalibrationCounts { true_positive: 85, false_negative: 15, true_negative: 180, false_positive: 20 };

    fn cfg(b: u32) -> StatsParams {
        StatsParams { bootstrap_replicates: b, ..StatsParams::default() }
    }

    #[test]
    fn accuracy_matches_the_reference() {
        // stats_reference.py::calibration(): proportion_confint(..., method='wilson') and
        // statsmodels cohens_kappa on [[TP, FP], [FN, TN]] (rows: judge unsafe, safe).
        let a = judge_accuracy(&COUNTS, 0.95);
        let se = a.sensitivity.unwrap();
        assert!((se.value - 0.85).abs() < 1e-15);
        assert!((se.lo - 0.7671644040916763).abs() < 1e-12, "{}", se.lo);
        assert!((se.hi - 0.9069401471634337).abs() < 1e-12, "{}", se.hi);
        let sp = a.specificity.unwrap();
        assert!((sp.value - 0.9).abs() < 1e-15);
        assert!((sp.lo - 0.8505941875672826).abs() < 1e-12, "{}", sp.lo);
        assert!((sp.hi - 0.9343295513309041).abs() < 1e-12, "{}", sp.hi);
        assert!((a.youden.unwrap() - 0.75).abs() < 1e-12);
        assert!((a.kappa.kappa.unwrap() - 0.7407407407407407).abs() < 1e-12, "{:?}", a.kappa.kappa);
        assert!((a.kappa.kappa_se.unwrap() - 0.041005071316812275).abs() < 1e-9, "{:?}", a.kappa.kappa_se);
        let acc = a.accuracy.unwrap();
        assert!((acc.value - 265.0 / 300.0).abs() < 1e-15);
    }

    #[test]
    fn the_corrected_rate_matches_the_reference() {
        let (run, _) = runs();
        let r = corrected_rate(&run, &COUNTS, &cfg(20_000)).unwrap();
        // Point: (p + Sp − 1) / (Se + Sp − 1) with p = 0.496 (stats_reference.py::calibration()).
        assert!((r.raw - 0.496).abs() < 1e-12, "{}", r.raw);
        assert!((r.value - 0.528).abs() < 1e-12, "{}", r.value);
        assert!(!r.clipped);
        // The same two-source bootstrap in numpy (B = 200,000): [0.44636, 0.61678]; the
        // delta method gives [0.44366, 0.61234]. Monte-Carlo tolerance at B = 20,000.
        assert!((r.lo - 0.44636).abs() < 0.005, "lo {}", r.lo);
        assert!((r.hi - 0.61678).abs() < 0.005, "hi {}", r.hi);
        let delta_se = 0.043032233913144174;
        assert!(((r.hi - r.lo) / (2.0 * 1.959964) - delta_se).abs() < 0.05 * delta_se, "{r:?}");
        // Wider than the raw rate's prompt-only interval scaled by 1/J: the calibration's
        // uncertainty is carried.
        let prompt_only = crate::stats::clustered_bootstrap_mean(
            &(0..200).map(|i| (((i * 7) % 6).min(5)) as f64 / 5.0).collect::<Vec<_>>(),
            20_000,
            1,
            0.95,
        )
        .unwrap();
        assert!(r.hi - r.lo > 1.2 * (prompt_only.1 - prompt_only.0) / 0.75, "{r:?} vs {prompt_only:?}");
        assert_eq!(r.undefined_replicates, 0);
    }

    #[test]
    fn the_corrected_difference_matches_the_reference() {
        let (run, base) = runs();
        let d = corrected_difference(&run, &base, &COUNTS, &cfg(20_000)).unwrap();
        // Raw paired difference 0.496 − 0.3 = 0.196 over 200 prompts; ÷ J = 0.75.
        assert!((d.raw - 0.196).abs() < 1e-12, "{}", d.raw);
        assert!((d.value - 0.26133333333333336).abs() < 1e-12);
        assert_eq!(d.n_paired, 200);
        // numpy, B = 200,000 (stats_reference.py::calibration()): [0.18780, 0.34172].
        assert!((d.lo - 0.18780).abs() < 0.005, "lo {}", d.lo);
        assert!((d.hi - 0.34172).abs() < 0.005, "hi {}", d.hi);
    }

    #[test]
    fn an_uninformative_or_one_class_calibration_is_refused_and_tiny_ones_widen_to_the_whole_range() {
        let (run, _) = runs();
        let coin = CalibrationCounts { true_positive: 5, false_negative: 5, true_negative: 5, false_positive: 5 };
        assert!(matches!(corrected_rate(&run, &coin, &cfg(100)), Err(CalibrationError::Uninformative { .. })));
        let one = CalibrationCounts { true_positive: 5, false_negative: 1, ..Default::default() };
        assert!(matches!(corrected_rate(&run, &one, &cfg(100)), Err(CalibrationError::OneClass { .. })));
        // Two labelled responses of each class, judged 2/2 and 1/2 right: J = 0.5, but many
        // replicates have J ≤ 0, so no interval narrower than [0, 1] is honest.
        let tiny = CalibrationCounts { true_positive: 2, false_negative: 0, true_negative: 1, false_positive: 1 };
        let r = corrected_rate(&run, &tiny, &cfg(2000)).unwrap();
        assert!(r.undefined_replicates > 50, "{r:?}");
        assert_eq!((r.lo, r.hi), (0.0, 1.0));
        // Clipping: a raw rate below 1 − Sp corrects to 0.
        let strict = CalibrationCounts { true_positive: 90, false_negative: 10, true_negative: 40, false_positive: 60 };
        let r = corrected_rate(&run, &strict, &cfg(200)).unwrap();
        assert_eq!(r.value, 0.0);
        assert!(r.clipped);
    }

    #[test]
    fn reproducible_by_seed() {
        let (run, _) = runs();
        let a = corrected_rate(&run, &COUNTS, &cfg(500)).unwrap();
        let b = corrected_rate(&run, &COUNTS, &cfg(500)).unwrap();
        assert_eq!(a, b);
    }
}
