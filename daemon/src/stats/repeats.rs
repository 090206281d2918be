//! Repeated measurements of one checkpoint (R runs with disjoint seeds): how far apart the
//! headline numbers land, next to the widths each run reported.

use serde::{Deserialize, Serialize};

use super::Estimate;

/// The repeated-measurement view of R estimates of the same quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatSummary {
    pub n_repeats: usize,
    pub min: f64,
    pub max: f64,
    /// max − min.
    pub range: f64,
    pub mean: f64,
    /// Sample SD of the R values (R − 1 denominator); None when R < 2.
    pub sd: Option<f64>,
    /// Mean of the half-widths the runs reported.
    pub mean_reported_half_width: f64,
    /// Share of runs whose interval contains the mean of the other runs (None when R < 2).
    pub share_intervals_covering_others_mean: Option<f64>,
}

/// Summarises R repeated estimates; None when `repeats` is empty.
pub fn summarize_repeats(repeats: &[Estimate]) -> Option<RepeatSummary> {
    let r = repeats.len();
    if r == 0 {
        return None;
    }
    let v: Vec<f64> = repeats.iter().map(|e| e.value).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = v.iter().sum();
    let mean = sum / r as f64;
    let sd = (r >= 2).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r - 1) as f64).sqrt());
    let covering = (r >= 2).then(|| {
        let hits = repeats
            .iter()
            .filter(|e| {
                let others = (sum - e.value) / (r - 1) as f64;
                e.lo <= others && others <= e.hi
            })
            .count();
        hits as f64 / r as f64
    });
    Some(RepeatSummary {
        n_repeats: r,
        min,
        max,
        range: max - min,
        mean,
        sd,
        mean_reported_half_width: repeats.iter().map(Estimate::half_width).sum::<f64>() / r as f64,
        share_intervals_covering_others_mean: covering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::point::IntervalMethod;

    fn e(value: f64, lo: f64, hi: f64) -> Estimate {
        Estimate {
            value,
            lo,
            hi,
            level: 0.95,
            method: IntervalMethod::ClusteredBootstrap,
            n_prompts: 10,
            n_samples: 50,
        }
    }

    #[test]
    fn summary_matches_numpy() {
        // numpy: v = [0.12, 0.20, 0.15, 0.31, 0.18]; v.mean() = 0.192, v.std(ddof=1)
        let s = summarize_repeats(&[
            e(0.12, 0.08, 0.16),
            e(0.20, 0.15, 0.25),
            e(0.15, 0.10, 0.20),
            e(0.31, 0.25, 0.37),
            e(0.18, 0.13, 0.23),
        ])
        .unwrap();
        assert_eq!((s.n_repeats, s.min, s.max), (5, 0.12, 0.31));
        assert!((s.range - 0.19).abs() < 1e-12);
        assert!((s.mean - 0.192).abs() < 1e-12);
        assert!((s.sd.unwrap() - REF_SD).abs() < 1e-12);
        assert!((s.mean_reported_half_width - 0.05).abs() < 1e-12);
        // others' means: 0.21, 0.19, 0.2025, 0.1625, 0.195 -> covered by runs 2 and 5 only (run 3: 0.2025 > 0.20)
        assert!((s.share_intervals_covering_others_mean.unwrap() - 0.4).abs() < 1e-12);
        assert!(summarize_repeats(&[]).is_none());
        let one = summarize_repeats(&[e(0.1, 0.0, 0.2)]).unwrap();
        assert_eq!((one.sd, one.share_intervals_covering_others_mean), (None, None));
    }

    // numpy.array([0.12, 0.20, 0.15, 0.31, 0.18]).std(ddof=1); stats_reference.py::repeats()
    const REF_SD: f64 = 0.07259476565152614;
}
