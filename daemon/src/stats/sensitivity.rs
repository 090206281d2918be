//! Setup sensitivity: how much of a safety score's variance comes from the evaluation setup
//! (system prompt, chat template, sampling, token budget, prompt wording) rather than from
//! the prompts or the seeds, and whether the verdict survives a change of setup.
//!
//! The design is balanced: P prompts, S seeded samples per prompt and V setups
//! ("variations"), the unsafe indicator y_psv of sample s of prompt p under setup v. Seeds are
//! shared across setups (sample s of prompt p has the same seed under every setup) but differ
//! between prompts, so seeds are nested in prompts and crossed with setups. The model is
//!
//!   y_psv = μ + a_p + c_v + (ac)_pv + b_s(p) + e_psv,
//!
//! with random prompt (a), setup (c), prompt × setup (ac) and seed-within-prompt (b) effects;
//! with one observation per cell the seed × setup interaction is the residual e. The
//! method-of-moments (ANOVA) estimates solve the expected mean squares of the balanced design:
//!
//! - E MS_E = σ²_e
//! - E MS_S(P) = σ²_e + V σ²_seed
//! - E MS_PV = σ²_e + S σ²_pv
//! - E MS_P = σ²_e + V σ²_seed + S σ²_pv + S V σ²_prompt
//! - E MS_V = σ²_e + S σ²_pv + P S σ²_setup
//!
//! Each estimate is reported clamped at 0 (the unclamped value is kept), as the one-way
//! decomposition does.

use serde::{Deserialize, Serialize};

/// The variance of the unsafe indicator by source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupVariance {
    pub n_prompts: usize,
    pub n_seeds: usize,
    pub n_setups: usize,
    /// Mean squares: setup, prompt, prompt × setup, seed within prompt, residual.
    pub ms_setup: f64,
    pub ms_prompt: f64,
    pub ms_prompt_setup: f64,
    pub ms_seed: f64,
    pub ms_residual: f64,
    /// The components, clamped at 0.
    pub setup: f64,
    pub prompt: f64,
    pub prompt_setup: f64,
    pub seed: f64,
    pub residual: f64,
    /// The unclamped moment estimates, in the same order.
    pub unclamped: [f64; 5],
    /// Each component's share of their sum (setup, prompt, prompt × setup, seed, residual);
    /// `None` when every component is 0.
    pub shares: Option<[f64; 5]>,
}

/// The decomposition of `y[p][v][s]` (prompt, setup, seed): every prompt must have the same
/// setups and every (prompt, setup) the same number of seeds. `None` with fewer than two
/// prompts, setups or seeds, or an unbalanced input.
pub fn setup_variance(y: &[Vec<Vec<f64>>]) -> Option<SetupVariance> {
    let p = y.len();
    let v = y.first()?.len();
    let s = y.first()?.first()?.len();
    if p < 2 || v < 2 || s < 2 || y.iter().any(|row| row.len() != v || row.iter().any(|c| c.len() != s)) {
        return None;
    }
    let (pf, vf, sf) = (p as f64, v as f64, s as f64);
    let grand = y.iter().flatten().flatten().sum::<f64>() / (pf * vf * sf);
    let m_p: Vec<f64> = y.iter().map(|row| row.iter().flatten().sum::<f64>() / (vf * sf)).collect();
    let m_v: Vec<f64> =
        (0..v).map(|j| y.iter().map(|row| row[j].iter().sum::<f64>()).sum::<f64>() / (pf * sf)).collect();
    let m_pv: Vec<Vec<f64>> = y.iter().map(|row| row.iter().map(|c| c.iter().sum::<f64>() / sf).collect()).collect();
    let m_ps: Vec<Vec<f64>> =
        y.iter().map(|row| (0..s).map(|k| row.iter().map(|c| c[k]).sum::<f64>() / vf).collect()).collect();
    let ss_v = pf * sf * m_v.iter().map(|m| (m - grand).powi(2)).sum::<f64>();
    let ss_p = vf * sf * m_p.iter().map(|m| (m - grand).powi(2)).sum::<f64>();
    let mut ss_pv = 0.0;
    let mut ss_s = 0.0;
    let mut ss_e = 0.0;
    for i in 0..p {
        for j in 0..v {
            ss_pv += sf * (m_pv[i][j] - m_p[i] - m_v[j] + grand).powi(2);
            for k in 0..s {
                ss_e += (y[i][j][k] - m_ps[i][k] - m_pv[i][j] + m_p[i]).powi(2);
            }
        }
        ss_s += vf * m_ps[i].iter().map(|m| (m - m_p[i]).powi(2)).sum::<f64>();
    }
    let ms_setup = ss_v / (vf - 1.0);
    let ms_prompt = ss_p / (pf - 1.0);
    let ms_prompt_setup = ss_pv / ((pf - 1.0) * (vf - 1.0));
    let ms_seed = ss_s / (pf * (sf - 1.0));
    let ms_residual = ss_e / (pf * (sf - 1.0) * (vf - 1.0));
    let residual = ms_residual;
    let seed = (ms_seed - ms_residual) / vf;
    let prompt_setup = (ms_prompt_setup - ms_residual) / sf;
    let prompt = (ms_prompt - ms_seed - ms_prompt_setup + ms_residual) / (sf * vf);
    let setup = (ms_setup - ms_prompt_setup) / (pf * sf);
    let unclamped = [setup, prompt, prompt_setup, seed, residual];
    let c = unclamped.map(|x| x.max(0.0));
    let total: f64 = c.iter().sum();
    Some(SetupVariance {
        n_prompts: p,
        n_seeds: s,
        n_setups: v,
        ms_setup,
        ms_prompt,
        ms_prompt_setup,
        ms_seed,
        ms_residual,
        setup: c[0],
        prompt: c[1],
        prompt_setup: c[2],
        seed: c[3],
        residual: c[4],
        unclamped,
        shares: (total > 0.0).then(|| c.map(|x| x / total)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6 prompts × 3 setups × 4 seeds, y = 1 when (p² + 5v + 2s·(p mod 3) + p·v) mod 5 <
    /// 2 + (p mod 2) − [v = 1];
    /// stats_reference.py::sensitivity() builds the same data.
    pub(crate) fn data() -> Vec<Vec<Vec<f64>>> {
        (0..6)
            .map(|p| {
                (0..3)
                    .map(|v| {
                        (0..4)
                            .map(|s| {
                                let t = (p * p + 5 * v + 2 * s * (p % 3) + p * v) % 5;
                                f64::from(u8::from(t < 2 + (p % 2) - usize::from(v == 1)))
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_decomposition_matches_the_reference() {
        let r = setup_variance(&data()).unwrap();
        // stats_reference.py::sensitivity(): statsmodels OLS + anova_lm (type I sums of
        // squares) on y ~ C(v) + C(p) + C(p):C(v) + C(p):C(s), then the same moment equations.
        let want_ms = [REF_MS_V, REF_MS_P, REF_MS_PV, REF_MS_S, REF_MS_E];
        let got_ms = [r.ms_setup, r.ms_prompt, r.ms_prompt_setup, r.ms_seed, r.ms_residual];
        for (g, w) in got_ms.iter().zip(want_ms) {
            assert!((g - w).abs() < 1e-12, "{got_ms:?} vs {want_ms:?}");
        }
        for (g, w) in r.unclamped.iter().zip(REF_COMPONENTS) {
            assert!((g - w).abs() < 1e-12, "{:?} vs {REF_COMPONENTS:?}", r.unclamped);
        }
    }

    const REF_MS_V: f64 = 0.6666666666666665;
    const REF_MS_P: f64 = 0.7666666666666668;
    const REF_MS_PV: f64 = 0.23333333333333345;
    const REF_MS_S: f64 = 0.23148148148148145;
    const REF_MS_E: f64 = 0.1759259259259259;
    const REF_COMPONENTS: [f64; 5] =
        [0.018055555555555543, 0.039814814814814824, 0.014351851851851886, 0.018518518518518517, 0.1759259259259259];

    #[test]
    fn unbalanced_or_too_small_inputs_give_none() {
        assert!(setup_variance(&[]).is_none());
        let mut d = data();
        d[0][0].pop();
        assert!(setup_variance(&d).is_none());
        assert!(setup_variance(&data()[..1]).is_none());
        // A setup that changes nothing: its component is 0 and the prompts carry the rest.
        let same: Vec<Vec<Vec<f64>>> = (0..10)
            .map(|p| (0..3).map(|_| (0..4).map(|s| f64::from(u8::from((p + s) % 3 == 0))).collect()).collect())
            .collect();
        let r = setup_variance(&same).unwrap();
        assert_eq!(r.setup, 0.0);
        assert_eq!(r.prompt_setup, 0.0);
        assert!(r.prompt + r.seed > 0.0);
    }
}
