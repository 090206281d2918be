//! Simulation checks of the whole pipeline against known truth: synthetic judges with
//! Beta-distributed prompt difficulty, many seeded runs; interval coverage, the false
//! regression rate with no true difference, and power against a clear regression.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{Beta, ContinuousCDF};

use super::*;

const CAT: &str = "sim";

fn fingerprint() -> RunFingerprint {
    RunFingerprint {
        suite_hash: "suite".into(),
        judges: vec![JudgeIdentity { name: "sim".into(), version: "1".into(), hash: "h".into() }],
        sampling_hash: "s".into(),
        chat_template_hash: "t".into(),
        engine_hash: "e".into(),
        backend_hash: None,
    }
}

/// Draws `n` prompt difficulties from Beta(a, b) by inverse CDF.
fn difficulties(rng: &mut ChaCha8Rng, n: usize, a: f64, b: f64) -> Vec<f64> {
    let beta = Beta::new(a, b).unwrap();
    (0..n).map(|_| beta.inverse_cdf(rng.random::<f64>())).collect()
}

/// A synthetic judge's verdicts: prompt i unsafe with probability rates[i], k_of(i) samples.
fn judge_run(rng: &mut ChaCha8Rng, rates: &[f64], k_of: impl Fn(usize) -> u32) -> JudgeInput {
    let mut observations = Vec::new();
    for (i, &p) in rates.iter().enumerate() {
        for s in 0..k_of(i) {
            observations.push(Observation {
                prompt_id: format!("p{i:04}"),
                category: CAT.into(),
                sample_index: s,
                unsafe_flag: rng.random::<f64>() < p,
                score: None,
                refusal: None,
                coherent: None,
            });
        }
    }
    JudgeInput { judge: "sim".into(), judge_version: "1".into(), observations, errored: vec![] }
}

/// 95% headline intervals (prompt-clustered bootstrap, unequal K from 3 to 7) cover the
/// population mean of the prompt difficulty distribution 93–97% of the time.
#[test]
fn headline_interval_coverage() {
    let (runs, n_prompts, a, b) = (1000usize, 100usize, 1.2, 4.0);
    let truth = a / (a + b);
    let cfg = StatsParams { bootstrap_replicates: 1000, seed: 7, ..StatsParams::default() };
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut covered = 0;
    let mut bootstrap_method = 0;
    for r in 0..runs {
        let rates = difficulties(&mut rng, n_prompts, a, b);
        let k: Vec<u32> = (0..n_prompts).map(|_| rng.random_range(3..=7)).collect();
        let input = judge_run(&mut rng, &rates, |i| k[i]);
        let cfg = StatsParams { seed: r as u64, ..cfg.clone() };
        let e = score_judge(&input, &cfg).unwrap().overall.unsafe_rate.unwrap();
        if e.method == IntervalMethod::ClusteredBootstrap {
            bootstrap_method += 1;
        }
        if e.lo <= truth && truth <= e.hi {
            covered += 1;
        }
    }
    let coverage = covered as f64 / runs as f64;
    eprintln!("simulated coverage of 95% headline interval: {coverage:.3} ({covered}/{runs})");
    assert_eq!(bootstrap_method, runs);
    assert!((0.93..=0.97).contains(&coverage), "coverage {coverage}");
}

fn verdict_rates(runs: usize, n_prompts: usize, k: u32, shift: f64, cfg: &StatsParams, seed: u64) -> (f64, f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut reg, mut imp, mut ind) = (0, 0, 0);
    for r in 0..runs {
        let base_rates = difficulties(&mut rng, n_prompts, 2.0, 8.0);
        let run_rates: Vec<f64> = base_rates.iter().map(|p| (p + shift).min(1.0)).collect();
        let base = judge_run(&mut rng, &base_rates, |_| k);
        let run = judge_run(&mut rng, &run_rates, |_| k);
        let cfg = StatsParams { seed: r as u64, ..cfg.clone() };
        let c = compare_to_baseline(&run, &base, &fingerprint(), &fingerprint(), false, &cfg).unwrap();
        assert_eq!(c.n_prompts_paired, n_prompts);
        match c.verdict {
            Verdict::Regressed => reg += 1,
            Verdict::Improved => imp += 1,
            Verdict::Indistinguishable => ind += 1,
        }
    }
    let f = |x: usize| x as f64 / runs as f64;
    (f(reg), f(imp), f(ind))
}

/// No true difference: the verdict is `Indistinguishable` at least 95% of the time
/// (sign-flip Monte-Carlo test with K = 5; McNemar with K = 1).
#[test]
fn no_difference_is_indistinguishable() {
    let cfg = StatsParams { bootstrap_replicates: 1000, permutation_draws: 2000, ..StatsParams::default() };
    let (reg, imp, ind) = verdict_rates(600, 100, 5, 0.0, &cfg, 11);
    eprintln!("K=5, no difference: regressed {reg:.3}, improved {imp:.3}, indistinguishable {ind:.3}");
    assert!(ind >= 0.95, "indistinguishable only {ind}");
    assert!(reg <= 0.035, "false regression rate {reg}");
    let (reg1, imp1, ind1) = verdict_rates(600, 200, 1, 0.0, &cfg, 12);
    eprintln!("K=1 (McNemar), no difference: regressed {reg1:.3}, improved {imp1:.3}, indistinguishable {ind1:.3}");
    assert!(ind1 >= 0.95, "indistinguishable only {ind1}");
    assert!(reg1 <= 0.035, "false regression rate {reg1}");
    let _ = (imp, imp1);
}

/// A clear regression (+0.10 on every prompt, 100 prompts × 5 samples) is called
/// `Regressed` most of the time and never `Improved`.
#[test]
fn clear_regression_is_detected() {
    let cfg = StatsParams { bootstrap_replicates: 1000, permutation_draws: 2000, ..StatsParams::default() };
    let (reg, imp, _) = verdict_rates(200, 100, 5, 0.10, &cfg, 13);
    eprintln!("K=5, +0.10: regressed {reg:.3}, improved {imp:.3}");
    assert!(reg >= 0.9, "power only {reg}");
    assert_eq!(imp, 0.0);
}
