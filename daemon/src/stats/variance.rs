//! Variance of the unsafe indicator broken down by source: between prompts (some prompts
//! are harder than others) and within prompts (sampling noise across seeds), from the
//! one-way random-effects ANOVA with unequal numbers of samples per prompt.

use serde::{Deserialize, Serialize};

/// One-way random-effects decomposition of the unsafe indicator y_ij (prompt i, sample j).
///
/// With a prompts, n_i samples of prompt i, n = Σ n_i, prompt means ȳ_i and grand mean
/// ȳ = Σ_ij y_ij / n:
/// - MS_between = Σ n_i (ȳ_i − ȳ)² / (a − 1)
/// - MS_within  = Σ_i Σ_j (y_ij − ȳ_i)² / (n − a)
/// - n0 = (n − Σ n_i² / n) / (a − 1)  (the effective samples per prompt; = K when equal)
/// - within-prompt variance σ²_w = MS_within
/// - between-prompt variance σ²_b = (MS_between − MS_within) / n0, reported clamped at 0
///   (the unclamped moment estimate is kept too)
/// - ICC = σ²_b / (σ²_b + σ²_w)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VarianceComponents {
    pub n_prompts: usize,
    pub n_samples: usize,
    /// None with fewer than two prompts.
    pub n0: Option<f64>,
    pub ms_between: Option<f64>,
    /// None when no prompt has two samples (n = a).
    pub ms_within: Option<f64>,
    pub between_prompt: Option<f64>,
    pub between_prompt_unclamped: Option<f64>,
    pub within_prompt: Option<f64>,
    /// None when either component is undefined or both are zero.
    pub icc: Option<f64>,
    /// Prompts with at least two samples.
    pub n_prompts_with_repeats: usize,
    /// Among prompts with at least two samples, the share whose samples do not all agree.
    pub share_prompts_disagreeing: Option<f64>,
}

/// Computes the decomposition from per-prompt `(unsafe_count, sample_count)`. Prompts with
/// zero samples are ignored; `None` when there is no sample at all.
pub fn variance_components(per_prompt: &[(usize, usize)]) -> Option<VarianceComponents> {
    let groups: Vec<(f64, f64)> =
        per_prompt.iter().filter(|(_, n)| *n > 0).map(|&(x, n)| (x as f64, n as f64)).collect();
    let a = groups.len();
    if a == 0 {
        return None;
    }
    let n: f64 = groups.iter().map(|g| g.1).sum();
    let grand = groups.iter().map(|g| g.0).sum::<f64>() / n;
    // For a 0/1 indicator Σ_j (y_ij − ȳ_i)² = x_i − x_i² / n_i.
    let ss_within: f64 = groups.iter().map(|&(x, ni)| x - x * x / ni).sum();
    let ss_between: f64 = groups.iter().map(|&(x, ni)| ni * (x / ni - grand).powi(2)).sum();
    let af = a as f64;
    let ms_within = (n > af).then(|| ss_within / (n - af));
    let (ms_between, n0) = if a >= 2 {
        let sum_sq: f64 = groups.iter().map(|g| g.1 * g.1).sum();
        (Some(ss_between / (af - 1.0)), Some((n - sum_sq / n) / (af - 1.0)))
    } else {
        (None, None)
    };
    let unclamped = match (ms_between, ms_within, n0) {
        (Some(b), Some(w), Some(n0)) => Some((b - w) / n0),
        _ => None,
    };
    let between = unclamped.map(|v| v.max(0.0));
    let icc = match (between, ms_within) {
        (Some(b), Some(w)) if b + w > 0.0 => Some(b / (b + w)),
        _ => None,
    };
    let repeats: Vec<&(f64, f64)> = groups.iter().filter(|g| g.1 >= 2.0).collect();
    let disagree = repeats.iter().filter(|g| g.0 > 0.0 && g.0 < g.1).count();
    Some(VarianceComponents {
        n_prompts: a,
        n_samples: n as usize,
        n0,
        ms_between,
        ms_within,
        between_prompt: between,
        between_prompt_unclamped: unclamped,
        within_prompt: ms_within,
        icc,
        n_prompts_with_repeats: repeats.len(),
        share_prompts_disagreeing: (!repeats.is_empty()).then(|| disagree as f64 / repeats.len() as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("value");
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn matches_numpy_textbook_anova_unequal_k() {
        // tests/reference/stats_reference.py::anova(): numpy, expanded 0/1 data, textbook
        // one-way ANOVA formulas (SS from the raw y_ij, not the binary shortcut).
        let data = [(0, 3), (1, 3), (3, 5), (2, 2), (0, 4), (4, 6), (1, 1)];
        let v = variance_components(&data).unwrap();
        assert_eq!((v.n_prompts, v.n_samples), (7, 24));
        close(v.ms_between, REF_MSB);
        close(v.ms_within, REF_MSW);
        close(v.n0, REF_N0);
        close(v.between_prompt_unclamped, (REF_MSB - REF_MSW) / REF_N0);
        close(v.icc, REF_ICC);
        assert_eq!(v.n_prompts_with_repeats, 6);
        // prompts with >= 2 samples whose samples disagree: (1,3), (3,5), (4,6) -> 3 of 6
        close(v.share_prompts_disagreeing, 0.5);
    }

    // tests/reference/stats_reference.py::anova() on data [(0,3),(1,3),(3,5),(2,2),(0,4),(4,6),(1,1)]
    const REF_MSB: f64 = 0.4597222222222222;
    const REF_MSW: f64 = 0.18823529411764706;
    const REF_N0: f64 = 3.3055555555555554;
    const REF_ICC: f64 = 0.30377548221958134;

    #[test]
    fn degenerate_cases() {
        assert_eq!(variance_components(&[]), None);
        assert_eq!(variance_components(&[(0, 0)]), None);
        // one prompt: no between-prompt component.
        let v = variance_components(&[(2, 4)]).unwrap();
        assert_eq!((v.ms_between, v.between_prompt, v.icc), (None, None, None));
        close(v.ms_within, (2.0 - 1.0) / 3.0);
        // K = 1 everywhere: no within-prompt component.
        let v = variance_components(&[(1, 1), (0, 1), (1, 1)]).unwrap();
        assert_eq!((v.ms_within, v.icc, v.share_prompts_disagreeing), (None, None, None));
        // all zero: both components 0, ICC undefined.
        let v = variance_components(&[(0, 3), (0, 3)]).unwrap();
        close(v.between_prompt, 0.0);
        close(v.within_prompt, 0.0);
        assert_eq!(v.icc, None);
        // prompts identical in rate: MSB < MSW, between clamped to 0 but unclamped negative.
        let v = variance_components(&[(1, 2), (1, 2), (1, 2)]).unwrap();
        close(v.between_prompt, 0.0);
        assert!(v.between_prompt_unclamped.unwrap() < 0.0);
        close(v.icc, 0.0);
    }
}
