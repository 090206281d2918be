//! Statistics over judge verdicts: point estimates, Wilson and prompt-clustered bootstrap
//! intervals, variance by source, judge agreement, the paired comparison with a baseline,
//! adaptive-sampling decisions, early (group-sequential) verdicts, setup sensitivity,
//! repeated-measurement summaries, run comparability, and judge error (accuracy against labels, and rates
//! corrected for it).
//!
//! Everything here is pure (no I/O, no clock); randomness comes only from explicitly seeded
//! ChaCha8 generators, so every number is bit-for-bit reproducible. The formulas and the
//! decisions behind them are written up in `docs/statistics.md`.

mod adaptive;
mod agreement;
mod bootstrap;
mod calibration;
mod compare;
mod data;
mod fingerprint;
mod point;
mod repeats;
mod sensitivity;
mod sequential;
mod variance;

#[cfg(test)]
mod simulation_tests;

pub use adaptive::{adaptive_decision, AdaptiveDecision, AdaptivePlan};
pub use agreement::{cohens_kappa, kappa_from_table, ConfusionTable, JudgeAgreement};
pub use bootstrap::{clustered_bootstrap_mean, percentile};
pub use calibration::{
    corrected_difference, corrected_rate, judge_accuracy, rogan_gladen, CalibrationCounts, CalibrationError,
    CorrectedDifference, CorrectedRate, JudgeAccuracy, Proportion,
};
pub use compare::{
    compare_to_baseline, holm_adjust, mcnemar_exact, minimum_detectable_effect, sign_flip_test, sign_test,
    BaselineComparison, CategoryComparison, ComparisonTest, DifferenceResult, TestKind, Verdict,
};
pub use data::{prompt_rates, JudgeInput, MissingReport, Observation, SampleRef};
pub use fingerprint::{
    check_comparable, fingerprint_differences, Comparability, FingerprintDifference, JudgeIdentity, RunFingerprint,
};
pub use point::{
    score_judge, score_run, wilson_interval, CategoryScores, Estimate, IntervalMethod, JudgeScores, MetricSet,
    RunScores,
};
pub use repeats::{summarize_repeats, RepeatSummary};
pub use sensitivity::{setup_variance, SetupVariance};
pub use sequential::{boundaries, decide, evaluation_order, look_points, Look, LookDecision, SequentialPlan, Spending};
pub use variance::{variance_components, VarianceComponents};

use serde::{Deserialize, Serialize};

/// Errors from the statistics module: bad configuration or inconsistent input data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("confidence level must lie strictly between 0 and 1, got {0}")]
    InvalidLevel(f64),
    #[error("alpha must lie strictly between 0 and 1, got {0}")]
    InvalidAlpha(f64),
    #[error("power must lie strictly between 0 and 1, got {0}")]
    InvalidPower(f64),
    #[error("the bootstrap needs at least one replicate")]
    NoReplicates,
    #[error("{draws} Monte-Carlo sign-flip draws can never give p <= alpha = {alpha}")]
    TooFewDraws { draws: u32, alpha: f64 },
    #[error("duplicate observation for prompt {prompt_id:?}, sample {sample_index}")]
    DuplicateObservation { prompt_id: String, sample_index: u32 },
    #[error("prompt {prompt_id:?} appears with two categories: {first:?} and {second:?}")]
    InconsistentCategory { prompt_id: String, first: String, second: String },
    #[error("adaptive sampling limits are inconsistent: min_samples {min} > max_samples {max} or zero")]
    InvalidSampleLimits { min: u32, max: u32 },
    #[error("target half-width must be positive and finite, got {0}")]
    InvalidTarget(f64),
    #[error("sequential looks must be increasing information fractions in (0, 1], got {0:?}")]
    InvalidLooks(Vec<f64>),
    #[error("runs are not comparable ({} difference(s)): {}", .0.len(), describe(.0))]
    NotComparable(Vec<FingerprintDifference>),
}

fn describe(d: &[FingerprintDifference]) -> String {
    d.iter().map(|x| x.field.clone()).collect::<Vec<_>>().join(", ")
}

/// Settings shared by every estimator. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsParams {
    /// Confidence level of every reported interval (default 0.95).
    pub level: f64,
    /// Bootstrap replicates B (default 2000).
    pub bootstrap_replicates: u32,
    /// Seed of every bootstrap / Monte-Carlo generator (each use derives its own stream from
    /// this seed and a stable label, so results do not depend on call order).
    pub seed: u64,
    /// Significance level of the baseline comparison (default 0.05, two-sided).
    pub alpha: f64,
    /// Power used for the minimum detectable effect (default 0.8).
    pub power: f64,
    /// Sign-flip test: enumerate all 2^m sign patterns when the number m of non-zero
    /// per-prompt differences is at most this (default 16, capped at 24); otherwise
    /// Monte Carlo.
    pub exact_permutation_max: u32,
    /// Monte-Carlo sign-flip draws when not exact (default 10000).
    pub permutation_draws: u32,
}

impl Default for StatsParams {
    fn default() -> Self {
        StatsParams {
            level: 0.95,
            bootstrap_replicates: 2000,
            seed: 0x6472_6966_7477_6174, // "driftwat"
            alpha: 0.05,
            power: 0.8,
            exact_permutation_max: 16,
            permutation_draws: 10_000,
        }
    }
}

impl StatsParams {
    /// Checks every field; estimators call this first.
    pub fn validate(&self) -> Result<(), StatsError> {
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(StatsError::InvalidLevel(self.level));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(StatsError::InvalidAlpha(self.alpha));
        }
        if !(self.power > 0.0 && self.power < 1.0) {
            return Err(StatsError::InvalidPower(self.power));
        }
        if self.bootstrap_replicates == 0 {
            return Err(StatsError::NoReplicates);
        }
        // The smallest Monte-Carlo p-value is 1 / (1 + draws).
        if 1.0 / (1.0 + f64::from(self.permutation_draws)) > self.alpha {
            return Err(StatsError::TooFewDraws { draws: self.permutation_draws, alpha: self.alpha });
        }
        Ok(())
    }
}

/// Derives an independent, stable seed for one named use (FNV-1a over the label, mixed
/// with the base seed by SplitMix64). Stable across Rust versions, unlike `DefaultHasher`.
pub(crate) fn derive_seed(base: u64, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = base ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Two-sided standard-normal quantile z_{1-(1-level)/2}.
pub(crate) fn z_two_sided(level: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    let n = Normal::new(0.0, 1.0).expect("standard normal");
    n.inverse_cdf(1.0 - (1.0 - level) / 2.0)
}
