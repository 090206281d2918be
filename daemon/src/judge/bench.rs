//! Judge overhead measurement: how long a plugin takes per sample and per call, so the
//! daemon (`driftwatch bench`) can show that judging costs a small fraction of generation.

use std::time::Instant;

use super::{FinishReason, JudgeError, JudgePlugin, Sample};

/// Results of [`measure_overhead`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OverheadReport {
    /// Samples judged in the throughput run.
    pub samples: usize,
    /// Samples per call in the throughput run.
    pub batch_size: usize,
    /// Wall time of the throughput run, in milliseconds.
    pub total_ms: f64,
    /// Mean cost per sample, in microseconds.
    pub per_sample_us: f64,
    /// Samples per second.
    pub samples_per_second: f64,
    /// Calls made for the per-call measurement.
    pub single_calls: usize,
    /// Mean cost of one call with a one-sample batch, in microseconds.
    pub per_call_us: f64,
}

/// Deterministic synthetic responses: refusals, partial compliance, compliance and
/// degenerate text, of varied length.
pub fn synthetic_samples(n: usize) -> Vec<Sample> {
    const OPENINGS: &[&str] = &[
        "I'm sorry, but I can't help with that request.",
        "Sure! Here is a detailed explanation of the process you asked about.",
        "I can't help with that, but here is how it is usually done:",
        "Thanks for asking. Unfortunately that is not something I can assist with.",
        "Absolutely. Step 1: gather the materials. Step 2: follow the instructions carefully.",
        "As an AI, I am not able to provide that information.",
    ];
    const FILLER: &str = "The details depend on the circumstances, and there are several considerations worth weighing before anyone proceeds. ";
    (0..n)
        .map(|i| Sample {
            prompt_id: format!("p{:05}", i / 5),
            category: ["violence", "cyber", "fraud", "self-harm"][i % 4].into(),
            prompt: format!("Synthetic prompt number {i}"),
            response: format!("{} {}", OPENINGS[i % OPENINGS.len()], FILLER.repeat(1 + i % 7)),
            sample_index: (i % 5) as u32,
            seed: i as u64,
            finish_reason: if i % 11 == 0 { FinishReason::Length } else { FinishReason::Stop },
        })
        .collect()
}

/// Judges `samples` in `batch_size` batches, then makes `single_calls` one-sample calls.
pub fn measure_overhead(
    plugin: &JudgePlugin,
    samples: &[Sample],
    batch_size: usize,
    single_calls: usize,
) -> Result<OverheadReport, JudgeError> {
    let batch_size = batch_size.max(1);
    // Warm up (first call pays for lazy initialisation inside the plugin).
    plugin.judge_batch(&samples[..samples.len().min(1)])?;
    let t0 = Instant::now();
    let mut judged = 0;
    for chunk in samples.chunks(batch_size) {
        judged += plugin.judge_batch(chunk)?.len();
    }
    let total = t0.elapsed().as_secs_f64();
    let one = &samples[..samples.len().min(1)];
    let t1 = Instant::now();
    for _ in 0..single_calls {
        plugin.judge_batch(one)?;
    }
    let per_call = if single_calls == 0 { 0.0 } else { t1.elapsed().as_secs_f64() / single_calls as f64 };
    Ok(OverheadReport {
        samples: judged,
        batch_size,
        total_ms: total * 1e3,
        per_sample_us: if judged == 0 { 0.0 } else { total * 1e6 / judged as f64 },
        samples_per_second: if total > 0.0 { judged as f64 / total } else { 0.0 },
        single_calls,
        per_call_us: per_call * 1e6,
    })
}
