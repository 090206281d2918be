//! `driftwatch bench`: end-to-end generation throughput (prefill, decode, wall time).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::ModelArgs;
use crate::engine::{EngineEvent, GenerationRequest, Job, SamplingParams};

/// `driftwatch bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Distinct prompts.
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 4)]
    samples: u32,
    /// Most tokens per sample.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Generate exactly `max-tokens` per sample (ignore end-of-generation), as llama.cpp's
    /// batched-bench does; needed for a like-for-like comparison.
    #[arg(long)]
    ignore_eos: bool,
    /// A text file of prompts (one per line) instead of the built-in benchmark prompts.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `driftwatch bench`.
pub async fn run(a: BenchArgs) -> Result<()> {
    if a.prompts == 0 || a.samples == 0 {
        bail!("--prompts and --samples must be at least 1");
    }
    let base: Vec<String> = match &a.prompt_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => include_str!("../../../config/bench_prompts.txt").lines().map(str::to_owned).collect(),
    };
    if base.is_empty() {
        bail!("no prompts to benchmark with");
    }
    // Distinct prompts: cycle through the list, numbering repeats so every prompt differs.
    let prompts: Vec<String> = (0..a.prompts)
        .map(|i| {
            let p = &base[i % base.len()];
            if i < base.len() {
                p.clone()
            } else {
                format!("{p} (variant {})", i / base.len())
            }
        })
        .collect();
    let mut jobs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for k in 0..a.samples {
            jobs.push(Job {
                prompt_id: format!("p{i}"),
                prompt: p.clone(),
                sample_index: k,
                seed: 1000 * i as u32 + k,
            });
        }
    }
    let sampling = SamplingParams { max_tokens: a.max_tokens, ignore_eos: a.ignore_eos, ..SamplingParams::default() };
    let engine = a.model.engine()?;
    let req = GenerationRequest { model: a.model.spec()?, sampling, jobs };
    let mut stream = engine.submit(req);
    let mut info = None;
    let mut stats = None;
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Started(i) => info = Some(i),
            EngineEvent::Done(r) => stats = Some(r?),
            EngineEvent::Sample(_) | EngineEvent::Progress(_) => {}
        }
    }
    let stats = stats.context("the engine ended without a result")?;
    let info = info.context("the engine never started the request")?;
    let avg_prompt = stats.prompt_tokens_total as f64 / stats.sequences.max(1) as f64;
    let v = json!({
        "model": a.model.model, "prompts": a.prompts, "samples": a.samples, "parallel": info.parallel,
        "threads": info.threads, "max_tokens": a.max_tokens, "ignore_eos": a.ignore_eos,
        "sequences": stats.sequences, "prefill_tokens": stats.prefill_tokens,
        "prompt_tokens_total": stats.prompt_tokens_total, "avg_prompt_tokens": avg_prompt,
        "generated_tokens": stats.generated_tokens,
        "prefill_s": stats.prefill_s, "decode_s": stats.decode_s, "wall_s": stats.wall_s,
        "prefill_tokens_per_s": stats.prefill_tokens_per_s(), "decode_tokens_per_s": stats.decode_tokens_per_s(),
        "decode_calls": stats.decode_calls, "load_ms": info.load_ms,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} sequences ({} prompts × {} samples), parallel {}, {} threads\n\
             prefill: {} tokens ({} without prefix sharing) in {:.2}s = {:.1} tokens/s\n\
             decode:  {} tokens in {:.2}s = {:.1} tokens/s\n\
             wall:    {:.2}s (model load {} ms excluded)",
            stats.sequences,
            a.prompts,
            a.samples,
            info.parallel,
            info.threads,
            stats.prefill_tokens,
            stats.prompt_tokens_total,
            stats.prefill_s,
            stats.prefill_tokens_per_s(),
            stats.generated_tokens,
            stats.decode_s,
            stats.decode_tokens_per_s(),
            stats.wall_s,
            info.load_ms
        );
    }
    Ok(())
}
