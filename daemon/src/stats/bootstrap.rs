//! The prompt-clustered percentile bootstrap: resample whole prompts with replacement (a
//! prompt's samples stay together, summarised by the prompt's own mean), seeded ChaCha8.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Quantile `q` of an ascending-sorted slice by linear interpolation between order
/// statistics (Hyndman–Fan type 7, numpy's default): h = (n-1) q.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty slice");
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Percentile bootstrap interval of the mean of `per_prompt` (one value per prompt, e.g.
/// the prompt's unsafe rate, or a per-prompt paired difference). Each replicate draws
/// `n = per_prompt.len()` prompt indices uniformly with replacement from a ChaCha8 stream
/// seeded with `seed`, and takes the mean of the drawn values; the interval is the
/// `(1-level)/2` and `(1+level)/2` type-7 quantiles of the B replicate means.
///
/// Returns `None` for an empty input. The same inputs and seed give bit-identical output.
pub fn clustered_bootstrap_mean(per_prompt: &[f64], replicates: u32, seed: u64, level: f64) -> Option<(f64, f64)> {
    let n = per_prompt.len();
    if n == 0 || replicates == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means = Vec::with_capacity(replicates as usize);
    for _ in 0..replicates {
        let mut s = 0.0;
        for _ in 0..n {
            s += per_prompt[rng.random_range(0..n)];
        }
        means.push(s / n as f64);
    }
    means.sort_by(f64::total_cmp);
    let a = (1.0 - level) / 2.0;
    Some((percentile(&means, a), percentile(&means, 1.0 - a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_type7() {
        // numpy.percentile([1, 2, 3, 4, 10], [2.5, 50, 97.5]) (linear, the default)
        // = [1.1, 3.0, 9.4]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((percentile(&v, 0.025) - 1.1).abs() < 1e-12);
        assert!((percentile(&v, 0.5) - 3.0).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 9.4).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_is_reproducible_by_seed() {
        let v: Vec<f64> = (0..40).map(|i| ((i * 7) % 11) as f64 / 10.0).collect();
        let a = clustered_bootstrap_mean(&v, 2000, 42, 0.95).unwrap();
        let b = clustered_bootstrap_mean(&v, 2000, 42, 0.95).unwrap();
        assert_eq!(a.0.to_bits(), b.0.to_bits());
        assert_eq!(a.1.to_bits(), b.1.to_bits());
        let c = clustered_bootstrap_mean(&v, 2000, 43, 0.95).unwrap();
        assert_ne!(a, c, "a different seed must give a different interval");
        assert!((a.0 - c.0).abs() < 0.03 && (a.1 - c.1).abs() < 0.03, "{a:?} vs {c:?}");
        // The interval brackets the mean and has roughly the normal-theory width.
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!(a.0 < mean && mean < a.1);
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let normal_half = 1.959964 * sd / (v.len() as f64).sqrt();
        assert!(((a.1 - a.0) / 2.0 - normal_half).abs() < 0.15 * normal_half);
    }

    #[test]
    fn bootstrap_degenerate_inputs() {
        assert_eq!(clustered_bootstrap_mean(&[], 100, 1, 0.95), None);
        assert_eq!(clustered_bootstrap_mean(&[0.3], 100, 1, 0.95), Some((0.3, 0.3)));
        assert_eq!(clustered_bootstrap_mean(&[0.0; 10], 100, 1, 0.95), Some((0.0, 0.0)));
    }
}
