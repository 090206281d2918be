//! Input records (one judge's verdict on one sample), missing-verdict bookkeeping, and the
//! grouping of observations into prompts that every estimator works on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StatsError;

/// One judge's verdict on one generated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub prompt_id: String,
    pub category: String,
    /// Index of the seeded sample for this prompt (0..K).
    pub sample_index: u32,
    pub unsafe_flag: bool,
    /// Optional graded score (e.g. 1–5 harmfulness).
    pub score: Option<f64>,
    pub refusal: Option<bool>,
    pub coherent: Option<bool>,
}

/// Identifies one planned sample (used for samples whose verdict is missing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleRef {
    pub prompt_id: String,
    pub category: String,
    pub sample_index: u32,
}

/// Everything one judge produced for one run: the verdicts it returned, and the samples it
/// was given but failed on (trap, timeout, malformed output). Failed samples are never
/// counted as safe: they are excluded from the estimates and reported in [`MissingReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeInput {
    pub judge: String,
    pub judge_version: String,
    pub observations: Vec<Observation>,
    pub errored: Vec<SampleRef>,
}

/// How much of the planned data is missing because the judge errored, and how much that
/// could matter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingReport {
    pub n_observed: usize,
    pub n_errored: usize,
    /// n_errored / (n_observed + n_errored); 0 when nothing was planned.
    pub share_errored: f64,
    /// Prompts that had samples planned but not one verdict (they drop out of every estimate).
    pub n_prompts_without_verdict: usize,
    pub errored_per_category: BTreeMap<String, usize>,
    /// Pooled unsafe rate over observed samples (errored ones left out).
    pub pooled_unsafe_rate_observed: Option<f64>,
    /// Sensitivity bound: pooled unsafe rate if every errored sample had been unsafe.
    pub pooled_unsafe_rate_if_errored_unsafe: Option<f64>,
}

/// Observations of one prompt, sorted by sample index.
#[derive(Debug, Clone)]
pub(crate) struct PromptGroup<'a> {
    pub id: &'a str,
    pub category: &'a str,
    pub obs: Vec<&'a Observation>,
}

/// Each prompt's unsafe rate (the share of its samples judged unsafe), by prompt id; the
/// observations are checked as [`group_by_prompt`] checks them.
pub fn prompt_rates(observations: &[Observation]) -> Result<BTreeMap<&str, f64>, StatsError> {
    Ok(group_by_prompt(observations)?
        .into_iter()
        .filter(|p| !p.obs.is_empty())
        .map(|p| (p.id, p.obs.iter().filter(|o| o.unsafe_flag).count() as f64 / p.obs.len() as f64))
        .collect())
}

/// Groups observations by prompt (sorted by prompt id), rejecting duplicate
/// (prompt, sample) pairs and prompts seen with two categories.
pub(crate) fn group_by_prompt(observations: &[Observation]) -> Result<Vec<PromptGroup<'_>>, StatsError> {
    let mut map: BTreeMap<&str, PromptGroup<'_>> = BTreeMap::new();
    for o in observations {
        let p = map.entry(o.prompt_id.as_str()).or_insert_with(|| PromptGroup {
            id: o.prompt_id.as_str(),
            category: o.category.as_str(),
            obs: Vec::new(),
        });
        if p.category != o.category {
            return Err(StatsError::InconsistentCategory {
                prompt_id: o.prompt_id.clone(),
                first: p.category.to_string(),
                second: o.category.clone(),
            });
        }
        p.obs.push(o);
    }
    let mut out: Vec<PromptGroup<'_>> = map.into_values().collect();
    for p in &mut out {
        p.obs.sort_by_key(|o| o.sample_index);
        for w in p.obs.windows(2) {
            if w[0].sample_index == w[1].sample_index {
                return Err(StatsError::DuplicateObservation {
                    prompt_id: p.id.to_string(),
                    sample_index: w[0].sample_index,
                });
            }
        }
    }
    Ok(out)
}

/// Which quantity a per-prompt summary is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Unsafe indicator over all observed samples.
    Unsafe,
    /// Graded score where present.
    Score,
    /// Refusal indicator where present.
    Refusal,
    /// Unsafe indicator among samples judged coherent.
    CoherentUnsafe,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Metric::Unsafe => "unsafe_rate",
            Metric::Score => "mean_score",
            Metric::Refusal => "refusal_rate",
            Metric::CoherentUnsafe => "coherent_unsafe_rate",
        }
    }

    /// The value this observation contributes, or None when it is not eligible.
    pub fn value(self, o: &Observation) -> Option<f64> {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Metric::Unsafe => Some(b(o.unsafe_flag)),
            Metric::Score => o.score.filter(|s| s.is_finite()),
            Metric::Refusal => o.refusal.map(b),
            Metric::CoherentUnsafe => match o.coherent {
                Some(true) => Some(b(o.unsafe_flag)),
                _ => None,
            },
        }
    }

    pub fn is_proportion(self) -> bool {
        !matches!(self, Metric::Score)
    }
}

/// Per-prompt (sum, count) of a metric over the prompt's eligible samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PromptSummary {
    pub sum: f64,
    pub count: usize,
}

impl PromptSummary {
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// Summaries of the prompts that have at least one eligible sample for `metric`.
pub(crate) fn summarize(prompts: &[&PromptGroup<'_>], metric: Metric) -> Vec<PromptSummary> {
    prompts
        .iter()
        .filter_map(|p| {
            let mut s = PromptSummary { sum: 0.0, count: 0 };
            for o in &p.obs {
                if let Some(v) = metric.value(o) {
                    s.sum += v;
                    s.count += 1;
                }
            }
            (s.count > 0).then_some(s)
        })
        .collect()
}

/// Builds the missing-verdict report for one judge.
pub(crate) fn missing_report(input: &JudgeInput, prompts: &[PromptGroup<'_>]) -> MissingReport {
    let n_observed = input.observations.len();
    let n_errored = input.errored.len();
    let planned = n_observed + n_errored;
    let mut errored_per_category = BTreeMap::new();
    for k in &input.errored {
        *errored_per_category.entry(k.category.clone()).or_insert(0) += 1;
    }
    let seen: std::collections::BTreeSet<&str> = prompts.iter().map(|p| p.id).collect();
    let without: std::collections::BTreeSet<&str> =
        input.errored.iter().map(|k| k.prompt_id.as_str()).filter(|id| !seen.contains(id)).collect();
    let n_unsafe = input.observations.iter().filter(|o| o.unsafe_flag).count();
    MissingReport {
        n_observed,
        n_errored,
        share_errored: if planned == 0 { 0.0 } else { n_errored as f64 / planned as f64 },
        n_prompts_without_verdict: without.len(),
        errored_per_category,
        pooled_unsafe_rate_observed: (n_observed > 0).then(|| n_unsafe as f64 / n_observed as f64),
        pooled_unsafe_rate_if_errored_unsafe: (planned > 0).then(|| (n_unsafe + n_errored) as f64 / planned as f64),
    }
}
