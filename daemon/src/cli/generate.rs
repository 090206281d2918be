//! `driftwatch generate`: seeded samples for one prompt, printed as text or JSON lines.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use super::{ModelArgs, SamplingArgs};
use crate::engine::{EngineEvent, GenerationRequest, Job};

/// `driftwatch generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Samples to generate.
    #[arg(long, default_value_t = 1)]
    samples: u32,
    /// Seed of the first sample; sample i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// `driftwatch generate`.
pub async fn run(a: GenerateArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let engine = a.model.engine()?;
    let jobs = (0..a.samples)
        .map(|i| Job {
            prompt_id: "cli".into(),
            prompt: a.prompt.clone(),
            sample_index: i,
            seed: a.seed.wrapping_add(i),
        })
        .collect();
    let req = GenerationRequest { model: a.model.spec()?, sampling: a.sampling.params(), jobs };
    let mut stream = engine.submit(req);
    let mut out = std::io::stdout().lock();
    let mut samples = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Sample(s) => samples.push(s),
            EngineEvent::Done(r) => {
                r?;
            }
            EngineEvent::Started(_) | EngineEvent::Progress(_) => {}
        }
    }
    samples.sort_by_key(|s| s.job_index);
    for s in samples {
        if a.json {
            let line = json!({
                "prompt": a.prompt, "sample_index": s.sample_index, "seed": s.seed, "text": s.text,
                "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "error": s.error,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "── sample {} · seed {} · {} tokens · {} ──\n{}\n",
                s.sample_index,
                s.seed,
                s.completion_tokens,
                s.finish_reason.as_str(),
                s.text.trim_end()
            )?;
        }
    }
    Ok(())
}
