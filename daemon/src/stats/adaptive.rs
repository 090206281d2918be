//! Adaptive sampling: after each round, decide from the observations so far whether the
//! headline interval is narrow enough, the per-prompt budget is spent, or how many
//! samples per prompt to aim for next.

use serde::{Deserialize, Serialize};

use super::data::{group_by_prompt, summarize, Metric, PromptGroup};
use super::point::estimate_metric;
use super::variance::variance_components;
use super::{z_two_sided, Observation, StatsError, StatsParams};

/// Limits for adaptive sampling, per prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptivePlan {
    /// Stop once the headline interval's half-width is at most this.
    pub target_half_width: f64,
    /// Every prompt gets at least this many samples before any stopping decision.
    pub min_samples: u32,
    /// Never more than this many samples of one prompt.
    pub max_samples: u32,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum AdaptiveDecision {
    /// The headline interval is narrow enough.
    TargetReached { half_width: f64 },
    /// Every prompt has max_samples samples; the target was not reached.
    BudgetSpent { half_width: f64 },
    /// Bring every prompt up to `next_k` samples and ask again.
    Continue { next_k: u32 },
}

/// Decides whether to stop. The half-width is that of the headline unsafe-rate interval
/// exactly as it will be reported (prompt-clustered bootstrap with its fallbacks, same
/// seed), so "target reached" is a statement about the published number.
///
/// `next_k` projects the K needed from the variance components: the variance of the
/// prompt-averaged rate is ≈ (σ²_b + σ²_w / K) / N, so the target needs
/// K ≥ σ²_w / (N (h / z)² − σ²_b); it is at least current K + 1, at most max_samples
/// (max_samples when the between-prompt part alone exceeds the target: more samples per
/// prompt cannot fix that, only more prompts can).
pub fn adaptive_decision(
    observations: &[Observation],
    plan: &AdaptivePlan,
    cfg: &StatsParams,
) -> Result<AdaptiveDecision, StatsError> {
    cfg.validate()?;
    if plan.min_samples == 0 || plan.min_samples > plan.max_samples {
        return Err(StatsError::InvalidSampleLimits { min: plan.min_samples, max: plan.max_samples });
    }
    if !(plan.target_half_width > 0.0 && plan.target_half_width.is_finite()) {
        return Err(StatsError::InvalidTarget(plan.target_half_width));
    }
    let prompts = group_by_prompt(observations)?;
    let refs: Vec<&PromptGroup<'_>> = prompts.iter().collect();
    let current_k = prompts.iter().map(|p| p.obs.len() as u32).min().unwrap_or(0);
    if current_k < plan.min_samples {
        return Ok(AdaptiveDecision::Continue { next_k: plan.min_samples });
    }
    let est = estimate_metric(&refs, Metric::Unsafe, cfg, "adaptive/unsafe_rate").expect("prompts have samples");
    let half_width = est.half_width();
    if half_width <= plan.target_half_width {
        return Ok(AdaptiveDecision::TargetReached { half_width });
    }
    if current_k >= plan.max_samples {
        return Ok(AdaptiveDecision::BudgetSpent { half_width });
    }
    let n = summarize(&refs, Metric::Unsafe).len() as f64;
    let counts: Vec<(usize, usize)> =
        prompts.iter().map(|p| (p.obs.iter().filter(|o| o.unsafe_flag).count(), p.obs.len())).collect();
    let vc = variance_components(&counts).expect("samples present");
    let sb = vc.between_prompt.unwrap_or(0.0);
    let sw = vc.within_prompt.unwrap_or(0.25); // K = 1: assume the worst (p = 1/2)
    let room = n * (plan.target_half_width / z_two_sided(cfg.level)).powi(2) - sb;
    let projected = if room > 0.0 { (sw / room).ceil() } else { f64::INFINITY };
    let next_k = if projected.is_finite() { projected.min(plan.max_samples as f64) as u32 } else { plan.max_samples };
    Ok(AdaptiveDecision::Continue { next_k: next_k.clamp(current_k + 1, plan.max_samples) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n_prompts: usize, k: u32, unsafe_of: impl Fn(usize, u32) -> bool) -> Vec<Observation> {
        let mut v = Vec::new();
        for p in 0..n_prompts {
            for i in 0..k {
                v.push(Observation {
                    prompt_id: format!("p{p:03}"),
                    category: "c".into(),
                    sample_index: i,
                    unsafe_flag: unsafe_of(p, i),
                    score: None,
                    refusal: None,
                    coherent: None,
                });
            }
        }
        v
    }

    #[test]
    fn decisions() {
        let cfg = StatsParams { bootstrap_replicates: 500, ..StatsParams::default() };
        let plan = AdaptivePlan { target_half_width: 0.05, min_samples: 3, max_samples: 20 };
        // below min_samples: continue to min.
        let obs = run(50, 2, |p, i| (p + i as usize).is_multiple_of(3));
        assert_eq!(adaptive_decision(&obs, &plan, &cfg).unwrap(), AdaptiveDecision::Continue { next_k: 3 });
        // noisy within prompts (every prompt 50%): more samples help; projection > 3.
        let obs = run(50, 4, |_, i| i % 2 == 0);
        match adaptive_decision(&obs, &plan, &cfg).unwrap() {
            // every prompt 0.5 exactly -> bootstrap degenerate -> Wilson over 50 prompts
            // half-width ~0.13 > 0.05; sb = 0, sw = 1/3 -> K >= (1/3) / (50 (0.05/1.96)^2) = 10.2
            AdaptiveDecision::Continue { next_k } => assert_eq!(next_k, 11),
            d => panic!("{d:?}"),
        }
        // at max samples without reaching the target: budget spent.
        let obs = run(10, 20, |p, i| (p * 7 + i as usize) % 5 < 2);
        assert!(matches!(adaptive_decision(&obs, &plan, &cfg).unwrap(), AdaptiveDecision::BudgetSpent { .. }));
        // many prompts, little noise: target reached with the reported half-width.
        let loose = AdaptivePlan { target_half_width: 0.2, ..plan };
        match adaptive_decision(&run(200, 3, |p, _| p % 10 == 0), &loose, &cfg).unwrap() {
            AdaptiveDecision::TargetReached { half_width } => {
                assert!(half_width > 0.0 && half_width <= 0.2)
            }
            d => panic!("{d:?}"),
        }
        // between-prompt variance alone exceeds the target: go straight to the budget.
        let tight = AdaptivePlan { target_half_width: 0.01, min_samples: 3, max_samples: 20 };
        let obs = run(20, 3, |p, _| p % 2 == 0);
        assert_eq!(adaptive_decision(&obs, &tight, &cfg).unwrap(), AdaptiveDecision::Continue { next_k: 20 });
        assert!(adaptive_decision(&obs, &AdaptivePlan { min_samples: 5, max_samples: 4, ..plan }, &cfg).is_err());
        assert!(adaptive_decision(&obs, &AdaptivePlan { target_half_width: 0.0, ..plan }, &cfg).is_err());
    }
}
