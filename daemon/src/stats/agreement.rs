//! Agreement between two judges on the same samples: the 2x2 confusion table of their
//! unsafe verdicts and Cohen's kappa with its large-sample standard error and interval.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::data::group_by_prompt;
use super::{z_two_sided, JudgeInput, StatsError};

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

/// Pairs the two judges' verdicts by (prompt id, sample index) and computes kappa over the
/// samples both scored. Samples are treated as independent for the standard error; with
/// strongly clustered prompts it is optimistic (documented in docs/statistics.md).
pub fn cohens_kappa(
    first: &JudgeInput,
    second: &JudgeInput,
    level: f64,
) -> Result<JudgeAgreement, StatsError> {
    // group_by_prompt validates duplicates / categories for both inputs.
    group_by_prompt(&first.observations)?;
    group_by_prompt(&second.observations)?;
    let second_by_key: BTreeMap<(&str, u32), bool> = second
        .observations
        .iter()
        .map(|o| ((o.prompt_id.as_str(), o.sample_index), o.unsafe_flag))
        .collect();
    let mut t = ConfusionTable::default();
    let mut paired = 0usize;
    for o in &first.observations {
        if let Some(&u2) = second_by_key.get(&(o.prompt_id.as_str(), o.sample_index)) {
            paired += 1;
            match (o.unsafe_flag, u2) {
                (true, true) => t.both_unsafe += 1,
                (true, false) => t.first_only_unsafe += 1,
                (false, true) => t.second_only_unsafe += 1,
                (false, false) => t.both_safe += 1,
            }
        }
    }
    let mut out = kappa_from_table(&t, level);
    out.first_judge = first.judge.clone();
    out.second_judge = second.judge.clone();
    out.n_unpaired = first.observations.len() + second.observations.len() - 2 * paired;
    Ok(out)
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
            assert!(
                (rk - k).abs() < 1e-12 && (rse - se).abs() < 1e-12,
                "{t:?}: {rk} {rse}"
            );
            let z = 1.959963984540054;
            assert!((r.kappa_lo.unwrap() - (k - z * se).max(-1.0)).abs() < 1e-9);
        }
    }

    const fn t(a: u64, b: u64, c: u64, d: u64) -> ConfusionTable {
        ConfusionTable {
            both_unsafe: a,
            first_only_unsafe: b,
            second_only_unsafe: c,
            both_safe: d,
        }
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
        let t = ConfusionTable {
            both_unsafe: 0,
            first_only_unsafe: 0,
            second_only_unsafe: 0,
            both_safe: 10,
        };
        let r = kappa_from_table(&t, 0.95);
        assert_eq!((r.observed_agreement, r.kappa), (Some(1.0), None));
        assert_eq!(
            kappa_from_table(&ConfusionTable::default(), 0.95).observed_agreement,
            None
        );

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
            observations: vec![
                o("p", 0, true),
                o("p", 1, false),
                o("q", 0, true),
                o("r", 0, false),
            ],
        };
        let b = JudgeInput {
            judge: "b".into(),
            judge_version: "1".into(),
            errored: vec![],
            observations: vec![o("q", 0, false), o("p", 1, false), o("p", 0, true)],
        };
        let r = cohens_kappa(&a, &b, 0.95).unwrap();
        assert_eq!(
            r.table,
            ConfusionTable {
                both_unsafe: 1,
                first_only_unsafe: 1,
                second_only_unsafe: 0,
                both_safe: 1
            }
        );
        assert_eq!(r.n_unpaired, 1);
    }
}
