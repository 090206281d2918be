//! Early verdicts: a group-sequential test of the paired run − baseline difference that keeps
//! its error rates however early it stops (Lan & DeMets 1983 α-spending boundaries, computed
//! by the recursive numerical integration of Armitage, McPherson & Rowe 1969; see Jennison &
//! Turnbull 2000, *Group Sequential Methods with Applications to Clinical Trials*, ch. 7).
//!
//! A checkpoint is evaluated in rounds: its prompts in a seeded random order, all K samples
//! of a prompt in the same round. After round k, with n_k of the N paired prompts done (the
//! information fraction t_k = n_k / N), the paired differences d_i (the prompt's unsafe rate
//! in the run minus in the baseline) give T_k = mean(d) / (sd(d) / √n_k). The test stops
//! with `regressed` when T_k ≥ the look's boundary, `improved` when T_k ≤ −boundary, and
//! otherwise goes on, to the last look at t = 1 (the whole budget), where not crossing is
//! `indistinguishable`.
//!
//! The boundaries c_k spend the two-sided α over the looks: the probability, under no
//! difference, of crossing first at look k is α(t_k) − α(t_{k−1}), for a spending function α(t)
//! with α(1) = α. The Pocock-type α(t) = α·ln(1 + (e − 1)t) spends early and stops early;
//! the O'Brien–Fleming-type α(t) = 2 − 2Φ(z_{1−α/2} / √t) spends almost nothing early and
//! keeps nearly all of the fixed-sample test's power at the end. The boundaries are for the
//! standardised statistic of Brownian motion observed at t_1 < … < t_K; with an estimated
//! sd, each is applied on the t scale (the t_{n−1} quantile of Φ(c_k)), as Jennison & Turnbull
//! do for unknown variance. Each side is crossed with probability at most α/2 under no
//! difference: false `regressed` stays ≤ α/2, as with the fixed-K test.
//!
//! When it stops at look k, the difference is reported with the repeated confidence interval
//! mean ± c_k·sd/√n_k (on the t scale), which covers the true difference simultaneously at
//! every look with probability 1 − α, so stopping does not make it optimistic.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use super::StatsError;

/// How the two-sided α is spent over the looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spending {
    /// α·ln(1 + (e − 1)t): nearly constant boundaries; stops early on clear differences.
    #[default]
    Pocock,
    /// 2 − 2Φ(z_{1−α/2}/√t): very strict early, nearly the fixed-sample test at the end.
    #[serde(rename = "obrien-fleming")]
    OBrienFleming,
}

impl Spending {
    /// α spent by information fraction `t` (two-sided).
    pub fn spent(self, alpha: f64, t: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        match self {
            Spending::Pocock => alpha * (1.0 + (std::f64::consts::E - 1.0) * t).ln(),
            Spending::OBrienFleming => {
                if t <= 0.0 {
                    return 0.0;
                }
                let n = std_normal();
                let z = n.inverse_cdf(1.0 - alpha / 2.0);
                2.0 - 2.0 * n.cdf(z / t.sqrt())
            }
        }
    }
}

fn std_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("standard normal")
}

/// The points and trapezoid weights of a grid on [−b, b].
fn grid(b: f64, points: usize) -> (Vec<f64>, Vec<f64>) {
    let h = 2.0 * b / (points - 1) as f64;
    let x: Vec<f64> = (0..points).map(|i| -b + i as f64 * h).collect();
    let mut w = vec![h; points];
    w[0] = h / 2.0;
    w[points - 1] = h / 2.0;
    (x, w)
}

const GRID_POINTS: usize = 1201;

/// Two-sided boundaries (standardised, z scale) for looks at information fractions
/// `fractions` (increasing, in (0, 1]) spending `alpha` with `spending`. The probability under
/// no difference of crossing first at look k is `spending(t_k) − spending(t_{k−1})`.
pub fn boundaries(fractions: &[f64], alpha: f64, spending: Spending) -> Result<Vec<f64>, StatsError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(StatsError::InvalidAlpha(alpha));
    }
    if fractions.is_empty()
        || fractions.iter().any(|t| !(*t > 0.0 && *t <= 1.0))
        || fractions.windows(2).any(|w| w[1] <= w[0])
    {
        return Err(StatsError::InvalidLooks(fractions.to_vec()));
    }
    let n = std_normal();
    let mut out = Vec::with_capacity(fractions.len());
    // Sub-density of S(t) = B(t) on the continuation region of the previous look.
    let mut density: Option<(Vec<f64>, Vec<f64>, Vec<f64>)> = None; // (points, weights, density)
    let mut spent_before = 0.0;
    let mut t_before = 0.0;
    for &t in fractions {
        let target = (spending.spent(alpha, t) - spent_before).max(0.0);
        let dt = t - t_before;
        let sd = dt.sqrt();
        // The probability of crossing first here, for a boundary b on the S scale.
        let crossing = |b: f64| -> f64 {
            match &density {
                None => 2.0 * (1.0 - n.cdf(b / sd)),
                Some((x, w, g)) => x
                    .iter()
                    .zip(w)
                    .zip(g)
                    .map(|((u, w), g)| w * g * (n.cdf((-b - u) / sd) + 1.0 - n.cdf((b - u) / sd)))
                    .sum(),
            }
        };
        // Bisection on the z-scale boundary c (b = c·√t); crossing falls as c grows.
        let (mut lo, mut hi) = (0.0_f64, 40.0_f64);
        let c = if target <= 0.0 {
            f64::INFINITY
        } else {
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if crossing(mid * t.sqrt()) > target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        out.push(c);
        // The sub-density on the new continuation region |s| < c·√t.
        let b = if c.is_finite() { c * t.sqrt() } else { 12.0 * t.sqrt() };
        let (x, w) = grid(b, GRID_POINTS);
        let phi = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let g: Vec<f64> = match &density {
            None => x.iter().map(|s| phi(s / sd) / sd).collect(),
            Some((px, pw, pg)) => x
                .iter()
                .map(|s| px.iter().zip(pw).zip(pg).map(|((u, w), g)| w * g * phi((s - u) / sd) / sd).sum())
                .collect(),
        };
        density = Some((x, w, g));
        spent_before += target;
        t_before = t;
    }
    Ok(out)
}

/// What a look decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookDecision {
    /// Not decided: evaluate the next round.
    Continue,
    /// The run's rate is higher than the baseline's.
    Regressed,
    /// The run's rate is lower than the baseline's.
    Improved,
    /// The last look did not cross: no difference shown with the whole budget.
    Indistinguishable,
}

/// One look of the sequential test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Look {
    /// 1-based look number.
    pub look: usize,
    /// Paired prompts used, and the information fraction n / N.
    pub n_paired: usize,
    pub fraction: f64,
    /// Mean paired difference (run − baseline) and its standard error.
    pub mean_difference: f64,
    pub standard_error: f64,
    /// T = mean / se (±∞ when every difference is equal and non-zero; 0 when all are 0).
    pub statistic: f64,
    /// The look's boundary on the z scale, and as applied (t scale, n − 1 degrees of freedom).
    pub boundary_z: f64,
    pub boundary: f64,
    /// The repeated confidence interval of the difference at this look (level 1 − α jointly
    /// over all looks).
    pub lo: f64,
    pub hi: f64,
    pub decision: LookDecision,
}

/// The plan of a sequential test: where the looks are and how α is spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequentialPlan {
    /// Paired prompts at the whole budget (N).
    pub total: usize,
    /// Prompts done at each look (increasing; the last is N).
    pub looks: Vec<usize>,
    pub alpha: f64,
    pub spending: Spending,
    /// The z-scale boundary of each look.
    pub boundaries_z: Vec<f64>,
}

impl SequentialPlan {
    /// `looks` equally spaced looks over `total` prompts ([`look_points`]; a look of fewer
    /// than 2 prompts is dropped).
    pub fn equally_spaced(
        total: usize,
        looks: usize,
        alpha: f64,
        spending: Spending,
    ) -> Result<SequentialPlan, StatsError> {
        if total < 2 {
            return Err(StatsError::InvalidLooks(Vec::new()));
        }
        let at: Vec<usize> = look_points(total, looks).into_iter().filter(|&n| n >= 2).collect();
        let fractions: Vec<f64> = at.iter().map(|&n| n as f64 / total as f64).collect();
        let boundaries_z = boundaries(&fractions, alpha, spending)?;
        Ok(SequentialPlan { total, looks: at, alpha, spending, boundaries_z })
    }

    /// Tests the paired differences of the first `d.len()` prompts at look `k` (0-based).
    pub fn look(&self, k: usize, d: &[f64]) -> Look {
        decide(k + 1, self.boundaries_z[k], d, self.total, k + 1 == self.looks.len())
    }

    /// Runs the test over `d` (the paired differences in evaluation order): every look the data
    /// reach, up to the first that decides. Returns the looks made.
    pub fn run(&self, d: &[f64]) -> Vec<Look> {
        let mut out = Vec::new();
        for (k, &n) in self.looks.iter().enumerate() {
            if n > d.len() {
                break;
            }
            let look = self.look(k, &d[..n]);
            let decided = look.decision != LookDecision::Continue;
            out.push(look);
            if decided {
                break;
            }
        }
        out
    }
}

/// Look number `look` of the paired differences `d` against the z-scale boundary `z`, of
/// `total` paired prompts at the whole budget; `last` makes not crossing final.
pub fn decide(look: usize, z: f64, d: &[f64], total: usize, last: bool) -> Look {
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 { d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let se = (var / n.max(1) as f64).sqrt();
    let statistic = if se > 0.0 {
        mean / se
    } else if mean == 0.0 {
        0.0
    } else {
        mean.signum() * f64::INFINITY
    };
    let boundary = if z.is_finite() && n > 1 {
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("degrees of freedom > 0");
        t.inverse_cdf(std_normal().cdf(z))
    } else {
        z
    };
    let decision = if n > 1 && statistic >= boundary {
        LookDecision::Regressed
    } else if n > 1 && statistic <= -boundary {
        LookDecision::Improved
    } else if last {
        LookDecision::Indistinguishable
    } else {
        LookDecision::Continue
    };
    Look {
        look,
        n_paired: n,
        fraction: n as f64 / total.max(1) as f64,
        mean_difference: mean,
        standard_error: se,
        statistic,
        boundary_z: z,
        boundary,
        lo: (mean - boundary * se).max(-1.0),
        hi: (mean + boundary * se).min(1.0),
        decision,
    }
}

/// The prompt counts after each of `looks` equally spaced rounds over `total` prompts
/// (increasing, the last `total`).
pub fn look_points(total: usize, looks: usize) -> Vec<usize> {
    let looks = looks.max(1);
    let mut at: Vec<usize> = (1..=looks).map(|k| (total * k).div_ceil(looks)).filter(|&n| n > 0).collect();
    at.dedup();
    at
}

/// The order in which a run that may stop early evaluates its prompts: by a hash of (seed,
/// repeat, prompt id), so that every prefix is a random sample of the suite, the same on
/// every resume and for every reader of the store.
pub fn evaluation_order(seed: u64, repeat: u32, ids: &[&str]) -> Vec<usize> {
    use sha2::{Digest, Sha256};
    let key = |id: &str| {
        let mut h = Sha256::new();
        h.update(b"driftwatch/early-order");
        h.update(seed.to_le_bytes());
        h.update(repeat.to_le_bytes());
        h.update(id.as_bytes());
        let d = h.finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (key(ids[i]), i));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use statrs::distribution::Beta;

    #[test]
    fn boundaries_match_the_reference() {
        let t = [0.2, 0.4, 0.6, 0.8, 1.0];
        // Lan–DeMets Pocock-type, 5 equally spaced looks, α = 0.05 two-sided: the published
        // 2.438, 2.427, 2.410, 2.397, 2.386 (as gsDesign's sfLDPocock gives them).
        let p = boundaries(&t, 0.05, Spending::Pocock).unwrap();
        for (c, want) in p.iter().zip([2.4380, 2.4268, 2.4101, 2.3966, 2.3859]) {
            assert!((c - want).abs() < 5e-4, "{p:?}");
        }
        // stats_reference.py::sequential(): 4,000,000 simulated Brownian paths cross these
        // boundaries first at each look with the probabilities the spending function assigns
        // (Pocock: 0.01475 0.01141 0.00929 0.00772 0.00672 vs 0.01477 0.01139 0.00927 0.00782
        // 0.00676; O'Brien–Fleming: 1e-5 0.00193 0.00947 0.01703 0.02152 vs 1e-5 0.00193
        // 0.00945 0.01703 0.02157).
        let of = boundaries(&t, 0.05, Spending::OBrienFleming).unwrap();
        for (c, want) in of.iter().zip([4.3826, 3.0997, 2.5534, 2.2538, 2.0635]) {
            assert!((c - want).abs() < 5e-4, "{of:?}");
        }
        // One look is the fixed-sample test.
        let one = boundaries(&[1.0], 0.05, Spending::Pocock).unwrap();
        assert!((one[0] - 1.959963984540054).abs() < 1e-6, "{one:?}");
        assert!(boundaries(&[0.5, 0.4], 0.05, Spending::Pocock).is_err());
        assert!(boundaries(&[0.5, 1.2], 0.05, Spending::Pocock).is_err());
    }

    #[test]
    fn looks_are_spaced_and_decide() {
        let plan = SequentialPlan::equally_spaced(50, 5, 0.05, Spending::Pocock).unwrap();
        assert_eq!(plan.looks, [10, 20, 30, 40, 50]);
        let plan3 = SequentialPlan::equally_spaced(7, 5, 0.05, Spending::Pocock).unwrap();
        assert_eq!(plan3.looks, [2, 3, 5, 6, 7]);
        // Every prompt regressed by the same amount: decided at the first look.
        let looks = plan.run(&[0.2; 50]);
        assert_eq!(looks.len(), 1);
        assert_eq!(looks[0].decision, LookDecision::Regressed);
        // No difference at all: every look, then indistinguishable.
        let looks = plan.run(&[0.0; 50]);
        assert_eq!(looks.len(), 5);
        assert_eq!(looks[4].decision, LookDecision::Indistinguishable);
        // Only the looks the data reach are made.
        assert_eq!(plan.run(&[0.0; 25]).len(), 2);
        let l = plan.look(
            1,
            &[0.1, -0.1, 0.3, 0.0, 0.2, 0.1, -0.2, 0.4, 0.1, 0.0, 0.2, 0.1, 0.3, -0.1, 0.2, 0.0, 0.1, 0.2, 0.1, 0.0],
        );
        assert!(l.lo < l.mean_difference && l.mean_difference < l.hi);
        assert!(l.boundary > l.boundary_z, "the t-scale boundary is wider");
        // A look computed from the fractions so far is the plan's look.
        let d = [0.1, -0.1, 0.3, 0.0, 0.2, 0.1, -0.2, 0.4, 0.1, 0.0, 0.2, 0.1, 0.3, -0.1, 0.2, 0.0, 0.1, 0.2, 0.1, 0.0];
        let z = boundaries(&[0.2, 0.4], 0.05, Spending::Pocock).unwrap();
        let free = decide(2, z[1], &d, 50, false);
        assert!((free.boundary_z - plan.boundaries_z[1]).abs() < 1e-9);
        assert_eq!(free.decision, plan.look(1, &d).decision);
        // The evaluation order is a fixed permutation, different per repeat.
        let ids = ["a", "b", "c", "d", "e", "f"];
        let o = evaluation_order(7, 0, &ids);
        assert_eq!(o, evaluation_order(7, 0, &ids));
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5]);
        assert_ne!(o, evaluation_order(7, 1, &ids));
    }

    /// Per-prompt differences of one simulated checkpoint: N prompts with Beta(2, 8)
    /// difficulty, K samples each in the baseline and in the run (whose rate is higher by
    /// `delta` on every prompt).
    fn differences(rng: &mut ChaCha8Rng, n: usize, k: u32, delta: f64) -> Vec<f64> {
        let beta = Beta::new(2.0, 8.0).unwrap();
        let rate = |rng: &mut ChaCha8Rng, p: f64| (0..k).filter(|_| rng.random::<f64>() < p).count() as f64 / k as f64;
        (0..n)
            .map(|_| {
                let p = beta.inverse_cdf(rng.random::<f64>());
                rate(rng, (p + delta).min(1.0)) - rate(rng, p)
            })
            .collect()
    }

    /// The fixed-K MDE of this design (80% power, α = 0.05), from the sd of the differences.
    fn fixed_mde(n: usize, k: u32) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let d = differences(&mut rng, 200_000, k, 0.0);
        let m = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (d.len() - 1) as f64).sqrt();
        crate::stats::minimum_detectable_effect(sd, n, 0.05, 0.8).unwrap()
    }

    /// (P(regressed), P(improved), mean share of the prompts used) over `sims` checkpoints.
    #[allow(clippy::too_many_arguments)]
    fn operating(
        sims: usize,
        n: usize,
        k: u32,
        looks: usize,
        delta: f64,
        spending: Spending,
        seed: u64,
    ) -> (f64, f64, f64) {
        let plan = SequentialPlan::equally_spaced(n, looks, 0.05, spending).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut reg, mut imp, mut used) = (0, 0, 0);
        for _ in 0..sims {
            let d = differences(&mut rng, n, k, delta);
            let last = plan.run(&d).pop().unwrap();
            match last.decision {
                LookDecision::Regressed => reg += 1,
                LookDecision::Improved => imp += 1,
                _ => {}
            }
            used += last.n_paired;
        }
        (reg as f64 / sims as f64, imp as f64 / sims as f64, used as f64 / (sims * n) as f64)
    }

    /// 2,000 simulated checkpoints per case, 500 prompts × K = 5, the default 10 looks with
    /// Pocock-type spending: with no true difference a false `regressed` stays at α/2 (it may
    /// exceed it by no more than the simulation's error); a regression of twice the fixed-K
    /// MDE is called with at most a third of the samples on average; one of exactly the MDE
    /// costs less than the fixed-K budget (never more, by construction) and keeps most of its
    /// power.
    #[test]
    fn early_verdicts_keep_alpha_and_stop_early_on_clear_regressions() {
        let (n, k, looks, sims) = (500, 5, 10, 2000);
        let mde = fixed_mde(n, k);
        let (reg0, imp0, used0) = operating(sims, n, k, looks, 0.0, Spending::Pocock, 1);
        let (reg2, imp2, used2) = operating(sims, n, k, looks, 2.0 * mde, Spending::Pocock, 2);
        let (reg1, _, used1) = operating(sims, n, k, looks, mde, Spending::Pocock, 3);
        eprintln!(
            "MDE {mde:.4}; no difference: regressed {reg0:.4} improved {imp0:.4} used {used0:.3}; \
             2×MDE: regressed {reg2:.4} used {used2:.3}; MDE: regressed {reg1:.4} used {used1:.3}"
        );
        // α/2 = 0.025 a side; the standard error of a 2,000-run share near it is 0.0035 (near
        // α = 0.05, 0.0049).
        assert!(reg0 <= 0.025 + 3.0 * 0.0035, "false regressed {reg0}");
        assert!(reg0 + imp0 <= 0.05 + 2.0 * 0.0049, "false verdicts {}", reg0 + imp0);
        assert!(reg2 >= 0.95 && imp2 == 0.0, "power at 2×MDE {reg2}");
        assert!(used2 <= 1.0 / 3.0, "2×MDE used {used2} of the samples");
        assert!(reg1 >= 0.62, "power at the MDE {reg1}");
        assert!(used1 <= 0.8, "at the MDE used {used1}");
    }

    /// The long check whose figures are in docs/statistics.md: 20,000 checkpoints per case,
    /// both spending functions, 5 and 10 looks, several suite sizes, K = 5 and K = 1.
    #[test]
    #[ignore = "long: cargo test -p driftwatch --lib early_verdict_operating_characteristics -- --ignored --nocapture"]
    fn early_verdict_operating_characteristics() {
        let sims = 20_000;
        for (n, k, looks) in [(1000, 5, 10), (500, 5, 10), (500, 1, 10), (200, 5, 10), (200, 5, 5), (50, 5, 5)] {
            let mde = fixed_mde(n, k);
            for spending in [Spending::Pocock, Spending::OBrienFleming] {
                for (name, delta) in [("0", 0.0), ("MDE/2", mde / 2.0), ("MDE", mde), ("2×MDE", 2.0 * mde)] {
                    let (reg, imp, used) = operating(sims, n, k, looks, delta, spending, 7);
                    eprintln!(
                        "| {n} | {k} | {looks} | {spending:?} | {name} ({delta:.4}) | {reg:.4} | {imp:.4} | {used:.3} |"
                    );
                }
            }
        }
    }
}
