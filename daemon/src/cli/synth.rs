//! `driftwatch synth-adapter`: writes a synthetic LoRA adapter (seeded random perturbations of
//! a base model, not a trained fine-tune) with [`crate::synth`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::setup;

/// `driftwatch synth-adapter`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The base model (`default` = the cached default model).
    #[arg(long, default_value = "default")]
    pub base: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: u64,
    /// Standard deviation of each entry of the weight update (at adapter scale 1).
    #[arg(long, default_value_t = 0.01)]
    pub noise: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Adapted matrices in every layer, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "attn_q,attn_v")]
    pub targets: Vec<String>,
    /// Output file (.gguf).
    #[arg(short = 'o', long)]
    pub out: PathBuf,
}

/// `driftwatch synth-adapter`.
pub fn run(a: SynthArgs) -> Result<()> {
    let base = setup::resolve_model(&a.base).map_err(anyhow::Error::msg)?;
    let spec = crate::synth::SynthSpec { rank: a.rank, noise: a.noise, seed: a.seed, targets: a.targets };
    let n = crate::synth::write_adapter(&base, &spec, &a.out)?;
    println!(
        "wrote {}: a SYNTHETIC LoRA adapter (seeded random perturbation, not a trained fine-tune) over {} matrices, rank {}, noise {}, seed {}",
        a.out.display(), n, spec.rank, spec.noise, spec.seed
    );
    Ok(())
}
