//! Synthetic LoRA adapters: seeded random perturbations of a base model's weights, written as a
//! GGUF LoRA adapter that llama.cpp accepts. They are *not* fine-tunes; they let a newcomer
//! watch scores move without training anything, and tests use them.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, CheckpointError};
use crate::gguf::GgufWriter;

/// What to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// LoRA rank.
    pub rank: u64,
    /// Standard deviation of each entry of the weight update ΔW = B·A (at adapter scale 1).
    pub noise: f64,
    /// Seed of the random draw.
    pub seed: u64,
    /// Matrices adapted in every layer, by their short names (e.g. `attn_q`, `attn_v`).
    pub targets: Vec<String>,
}

/// Why an adapter cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The base model is unusable.
    #[error(transparent)]
    Base(#[from] CheckpointError),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
    /// Writing failed.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The output.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Writes a synthetic adapter for the model at `base` to `out`. Returns how many matrices it
/// adapts.
pub fn write_adapter(base: &Path, spec: &SynthSpec, out: &Path) -> Result<usize, SynthError> {
    if spec.rank == 0 || spec.rank > 1024 {
        return Err(SynthError::Invalid(format!("--rank must be between 1 and 1024, not {}", spec.rank)));
    }
    if !(spec.noise.is_finite() && spec.noise >= 0.0) {
        return Err(SynthError::Invalid(format!("--noise must be a non-negative number, not {}", spec.noise)));
    }
    let model = checkpoint::inspect_model(base)?;
    let info = &model.info;
    let mut w = GgufWriter::new();
    w.string("general.architecture", &model.architecture)
        .string("general.type", "adapter")
        .string("general.name", "driftwatch synthetic adapter (seeded random perturbation, not a trained fine-tune)")
        .string("adapter.type", "lora")
        // alpha = rank: llama.cpp scales the update by alpha / rank = 1.
        .f32("adapter.lora.alpha", spec.rank as f32)
        .bool("driftwatch.synthetic", true)
        .f32("driftwatch.synthetic.noise", spec.noise as f32)
        .u32("driftwatch.synthetic.seed", (spec.seed & 0xffff_ffff) as u32);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    // Entries of A and B ~ N(0, s²) with s² = noise / sqrt(rank): then each entry of B·A has
    // variance rank · s⁴ = noise².
    let s = (spec.noise / (spec.rank as f64).sqrt()).sqrt();
    let mut n = 0;
    for t in &info.tensors {
        let Some(short) = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map(|(_, rest)| rest) else {
            continue;
        };
        if !spec.targets.iter().any(|target| short == format!("{target}.weight")) || t.dims.len() != 2 {
            continue;
        }
        let (n_in, n_out, r) = (t.dims[0], t.dims[1], spec.rank);
        let a: Vec<f32> = (0..n_in * r).map(|_| (s * normal(&mut rng)) as f32).collect();
        let b: Vec<f32> = (0..r * n_out).map(|_| (s * normal(&mut rng)) as f32).collect();
        w.tensor_f32(&format!("{}.lora_a", t.name), &[n_in, r], a);
        w.tensor_f32(&format!("{}.lora_b", t.name), &[r, n_out], b);
        n += 1;
    }
    if n == 0 {
        return Err(SynthError::Invalid(format!(
            "the base model has no 2-D layer tensors named {:?} (e.g. blk.0.attn_q.weight)",
            spec.targets
        )));
    }
    w.write(out).map_err(|cause| SynthError::Write { path: out.display().to_string(), cause })?;
    Ok(n)
}
