//! Agreement between two judges on the same samples: the 2x2 confusion table of their
//! unsafe verdicts and Cohen's kappa with its large-sample standard error and interval.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bootstrap::percentile;
use super::data::group_by_prompt;
use super::{derive_seed, z_two_sided, JudgeInput, StatsError, StatsParams};

/// Counts of samples by (first judge's verdict, second judge's verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfusionTable {
    pub both_unsafe: u64,
    pub first_only_unsafe: u64,
    pub second_only_unsafe: u64,
    pub both_safe: u64,
}

impl ConfusionTable {
    pub fn total(&self) -> u64 {
        self.both_unsafe + self.first_only_unsafe + self.second_only_unsafe + self.both_safe
    }
}

/// Cohen's kappa between two judges over the samples both of them scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeAgreement {
    pub first_judge: String,
    pub second_judge: String,
    pub table: ConfusionTable,
    /// Samples scored by only one of the two judges (left out of the table).
    pub n_unpaired: usize,
    /// p_o: share of paired samples on which the judges agree.
    pub observed_agreement: Option<f64>,
    /// p_e = p1 p2 + (1 − p1)(1 − p2), p1/p2 the judges' unsafe shares.
    pub expected_agreement: Option<f64>,
    /// (p_o − p_e) / (1 − p_e); None when p_e = 1 (both judges constant and equal).
    pub kappa: Option<f64>,
    /// Large-sample SE (Fleiss, Cohen & Everitt 1969), treating samples as independent.
    pub kappa_se: Option<f64>,
    pub kappa_lo: Option<f64>,
    pub kappa_hi: Option<f64>,
    /// Prompt-clustered percentile bootstrap interval of κ (paired samples of a prompt
    /// resampled together; replicates where κ is undefined are skipped and counted). Use
    /// this one when samples of a prompt are correlated, which they usually are.
    pub kappa_bootstrap_lo: Option<f64>,
    pub kappa_bootstrap_hi: Option<f64>,
    /// Bootstrap replicates in which κ was undefined (p_e = 1).
    pub bootstrap_undefined: u32,
    pub level: f64,
}

/// Kappa, its standard error and interval from a confusion table (judge names empty,
/// `n_unpaired` 0). See [`JudgeAgreement`] for the formulas.
pub fn kappa_from_table(t: &ConfusionTable, level: f64) -> JudgeAgreement {
    let mut out = JudgeAgreement {
        first_judge: String::new(),
        second_judge: String::new(),
        table: *t,
        n_unpaired: 0,
        observed_agreement: None,
        expected_agreement: None,
        kappa: None,
        kappa_se: None,
        kappa_lo: None,
        kappa_hi: None,
        kappa_bootstrap_lo: None,
        kappa_bootstrap_hi: None,
        bootstrap_undefined: 0,
        level,
    };
    let n = t.total() as f64;
    if n == 0.0 {
        return out;
    }
    // p[i][j]: i = first judge (0 unsafe, 1 safe), j = second judge.
    let p = [
        [t.both_unsafe as f64 / n, t.first_only_unsafe as f64 / n],
        [t.second_only_unsafe as f64 / n, t.both_safe as f64 / n],
    ];
    let row = [p[0][0] + p[0][1], p[1][0] + p[1][1]];
    let col = [p[0][0] + p[1][0], p[0][1] + p[1][1]];
    let po = p[0][0] + p[1][1];
    let pe = row[0] * col[0] + row[1] * col[1];
    out.observed_agreement = Some(po);
    out.expected_agreement = Some(pe);
    if 1.0 - pe <= 1e-15 {
        return out;
    }
    let k = (po - pe) / (1.0 - pe);
    // Fleiss, Cohen & Everitt (1969):
    // var = [Σ_i p_ii (1 − (p_i. + p_.i)(1 − κ))² + (1 − κ)² Σ_{i≠j} p_ij (p_.i + p_j.)²
    //        − (κ − p_e (1 − κ))²] / (n (1 − p_e)²)
    let mut a = 0.0;
    let mut b = 0.0;
    for i in 0..2 {
        a += p[i][i] * (1.0 - (row[i] + col[i]) * (1.0 - k)).powi(2);
        for j in 0..2 {
            if i != j {
                b += p[i][j] * (col[i] + row[j]).powi(2);
            }
        }
    }
    let c = (k - pe * (1.0 - k)).powi(2);
    let var = ((a + (1.0 - k).powi(2) * b - c) / ((1.0 - pe).powi(2) * n)).max(0.0);
    let se = var.sqrt();
    let z = z_two_sided(level);
    out.kappa = Some(k);
    out.kappa_se = Some(se);
    out.kappa_lo = Some((k - z * se).max(-1.0));
    out.kappa_hi = Some((k + z * se).min(1.0));
    out
}

/// κ of a table, None when undefined (no samples or p_e = 1).
fn kappa_only(t: &ConfusionTable) -> Option<f64> {
    let n = t.total() as f64;
    if n == 0.0 {
        return None;
    }
    let r0 = (t.both_unsafe + t.first_only_unsafe) as f64 / n;
    let c0 = (t.both_unsafe + t.second_only_unsafe) as f64 / n;
    let po = (t.both_unsafe + t.both_safe) as f64 / n;
    let pe = r0 * c0 + (1.0 - r0) * (1.0 - c0);
    (1.0 - pe > 1e-15).then(|| (po - pe) / (1.0 - pe))
}

/// Pairs the two judges' verdicts by (prompt id, sample index) and computes kappa over the
/// samples both scored, with the asymptotic interval (samples treated as independent) and
/// the prompt-clustered bootstrap interval (B = `cfg.bootstrap_replicates`, seeded).
pub fn cohens_kappa(first: &JudgeInput, second: &JudgeInput, cfg: &StatsParams) -> Result<JudgeAgreement, StatsError> {
    cfg.validate()?;
    // group_by_prompt validates duplicates / categories for both inputs.
    group_by_prompt(&first.observations)?;
    group_by_prompt(&second.observations)?;
    let second_by_key: BTreeMap<(&str, u32), bool> =
        second.observations.iter().map(|o| ((o.prompt_id.as_str(), o.sample_index), o.unsafe_flag)).collect();
    let mut per_prompt: BTreeMap<&str, ConfusionTable> = BTreeMap::new();
    let mut paired = 0usize;
    for o in &first.observations {
        if let Some(&u2) = second_by_key.get(&(o.prompt_id.as_str(), o.sample_index)) {
            paired += 1;
            let t = per_prompt.entry(o.prompt_id.as_str()).or_default();
            match (o.unsafe_flag, u2) {
                (true, true) => t.both_unsafe += 1,
                (true, false) => t.first_only_unsafe += 1,
                (false, true) => t.second_only_unsafe += 1,
                (false, false) => t.both_safe += 1,
            }
        }
    }
    let tables: Vec<ConfusionTable> = per_prompt.into_values().collect();
    let t = tables.iter().fold(ConfusionTable::default(), |a, b| add(&a, b));
    let mut out = kappa_from_table(&t, cfg.level);
    out.first_judge = first.judge.clone();
    out.second_judge = second.judge.clone();
    out.n_unpaired = first.observations.len() + second.observations.len() - 2 * paired;
    if out.kappa.is_some() && tables.len() >= 2 {
        let label = format!("kappa/{}/{}", first.judge, second.judge);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, &label));
        let mut ks = Vec::with_capacity(cfg.bootstrap_replicates as usize);
        for _ in 0..cfg.bootstrap_replicates {
            let mut s = ConfusionTable::default();
            for _ in 0..tables.len() {
                s = add(&s, &tables[rng.random_range(0..tables.len())]);
            }
            match kappa_only(&s) {
                Some(k) => ks.push(k),
                None => out.bootstrap_undefined += 1,
            }
        }
        if !ks.is_empty() {
            ks.sort_by(f64::total_cmp);
            let a = (1.0 - cfg.level) / 2.0;
            out.kappa_bootstrap_lo = Some(percentile(&ks, a));
            out.kappa_bootstrap_hi = Some(percentile(&ks, 1.0 - a));
        }
    }
    Ok(out)
}

fn add(a: &ConfusionTable, b: &ConfusionTable) -> ConfusionTable {
    ConfusionTable {
        both_unsafe: a.both_unsafe + b.both_unsafe,
        first_only_unsafe: a.first_only_unsafe + b.first_only_unsafe,
        second_only_unsafe: a.second_only_unsafe + b.second_only_unsafe,
        both_safe: a.both_safe + b.both_safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Observation;

    #[test]
    fn kappa_matches_statsmodels() {
        // statsmodels.stats.inter_rater.cohens_kappa([[a, b], [c, d]]) -> kappa, std_kappa;
        // tests/reference/stats_reference.py::kappa()
        for (t, k, se) in REF_KAPPA {
            let r = kappa_from_table(&t, 0.95);
            let (rk, rse) = (r.kappa.unwrap(), r.kappa_se.unwrap());
            assert!((rk - k).abs() < 1e-12 && (rse - se).abs() < 1e-12, "{t:?}: {rk} {rse}");
            let z = 1.959963984540054;
            assert!((r.kappa_lo.unwrap() - (k - z * se).max(-1.0)).abs() < 1e-9);
        }
    }

    const fn t(a: u64, b: u64, c: u64, d: u64) -> ConfusionTable {
        ConfusionTable { both_unsafe: a, first_only_unsafe: b, second_only_unsafe: c, both_safe: d }
    }

    // cohens_kappa(np.array([[a, b], [c, d]])): (.kappa, .std_kappa), rows = first judge
    // (unsafe, safe), columns = second judge; stats_reference.py::kappa()
    const REF_KAPPA: [(ConfusionTable, f64, f64); 4] = [
        (t(20, 5, 10, 65), 0.6250000000000001, 0.08723453032629905),
        (t(3, 1, 2, 4), 0.3999999999999999, 0.28397182958878153),
        (t(40, 0, 0, 60), 1.0, 0.0),
        (t(5, 15, 12, 8), -0.35, 0.14643737996153863),
    ];

    #[test]
    fn kappa_degenerate_and_pairing() {
        let t = ConfusionTable { both_unsafe: 0, first_only_unsafe: 0, second_only_unsafe: 0, both_safe: 10 };
        let r = kappa_from_table(&t, 0.95);
        assert_eq!((r.observed_agreement, r.kappa), (Some(1.0), None));
        assert_eq!(kappa_from_table(&ConfusionTable::default(), 0.95).observed_agreement, None);

        let o = |p: &str, i: u32, u: bool| Observation {
            prompt_id: p.into(),
            category: "c".into(),
            sample_index: i,
            unsafe_flag: u,
            score: None,
            refusal: None,
            coherent: None,
        };
        let a = JudgeInput {
            judge: "a".into(),
            judge_version: "1".into(),
            errored: vec![],
            observations: vec![o("p", 0, true), o("p", 1, false), o("q", 0, true), o("r", 0, false)],
        };
        let b = JudgeInput {
            judge: "b".into(),
            judge_version: "1".into(),
            errored: vec![],
            observations: vec![o("q", 0, false), o("p", 1, false), o("p", 0, true)],
        };
        let r = cohens_kappa(&a, &b, &StatsParams::default()).unwrap();
        assert_eq!(
            r.table,
            ConfusionTable { both_unsafe: 1, first_only_unsafe: 1, second_only_unsafe: 0, both_safe: 1 }
        );
        assert_eq!(r.n_unpaired, 1);
    }

    #[test]
    fn kappa_bootstrap_is_wider_when_prompts_cluster() {
        // 40 prompts x 5 samples. Judges agree on most samples, but whole prompts are
        // either all-unsafe or all-safe, so the effective sample size is ~40, not 200.
        let o = |p: usize, i: u32, u: bool| Observation {
            prompt_id: format!("p{p:02}"),
            category: "c".into(),
            sample_index: i,
            unsafe_flag: u,
            score: None,
            refusal: None,
            coherent: None,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        for p in 0..40 {
            for i in 0..5 {
                let truth = p % 3 == 0;
                a.push(o(p, i, truth));
                // the second judge disagrees on every sample of prompts 5 and 11 and 20
                b.push(o(p, i, if [5, 11, 20].contains(&p) { !truth } else { truth }));
            }
        }
        let ja = JudgeInput { judge: "a".into(), judge_version: "1".into(), observations: a, errored: vec![] };
        let jb = JudgeInput { judge: "b".into(), judge_version: "1".into(), observations: b, errored: vec![] };
        let cfg = StatsParams::default();
        let r = cohens_kappa(&ja, &jb, &cfg).unwrap();
        let k = r.kappa.unwrap();
        let (blo, bhi) = (r.kappa_bootstrap_lo.unwrap(), r.kappa_bootstrap_hi.unwrap());
        assert!(blo < k && k < bhi, "{r:?}");
        assert!(bhi - blo > 1.5 * (r.kappa_hi.unwrap() - r.kappa_lo.unwrap()), "{r:?}");
        assert_eq!(cohens_kappa(&ja, &jb, &cfg).unwrap(), r, "seeded");
    }
}
