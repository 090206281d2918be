//! `driftwatch bench`: end-to-end generation throughput (prefill, decode, wall time), on the
//! embedded engine or through OpenAI-compatible servers (`--backend openai --endpoint URL…`).

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
    /// Where to generate: `embedded` (llama.cpp here) or `openai` (the `--endpoint` servers,
    /// each with `--parallel` requests in flight).
    #[arg(long, value_enum, default_value_t = BenchBackend::Embedded)]
    backend: BenchBackend,
    /// An OpenAI-compatible server's base URL (repeat for several); with `--backend openai`.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    /// The model's name on the servers (default: the one model each lists).
    #[arg(long)]
    served_model: Option<String>,
    /// The servers' route: `chat` (their template) or `completions` (driftwatch's template
    /// from the model file).
    #[arg(long, value_enum, default_value_t = BenchApi::Chat)]
    api: BenchApi,
    /// Also write every sample as a JSON line (prompt id, k, seed, text, finish) to this file:
    /// two runs' files show whether a seed's text depends on the concurrency.
    #[arg(long, value_name = "FILE")]
    texts: Option<PathBuf>,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchBackend {
    Embedded,
    Openai,
}

/// `--api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchApi {
    Chat,
    Completions,
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
    let (engine, servers) = match a.backend {
        BenchBackend::Embedded => {
            if !a.endpoints.is_empty() {
                bail!("--endpoint is for --backend openai");
            }
            (a.model.engine()?, Vec::new())
        }
        BenchBackend::Openai => remote_engine(&a).await?,
    };
    let req = GenerationRequest { model: a.model.spec()?, sampling, jobs };
    let mut stream = engine.submit(req);
    let mut info = None;
    let mut stats = None;
    let mut samples = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Started(i) => info = Some(i),
            EngineEvent::Done(r) => stats = Some(r?),
            EngineEvent::Sample(s) => samples.push(s),
            EngineEvent::Progress(_) => {}
        }
    }
    if let Some(path) = &a.texts {
        samples.sort_by_key(|s| s.job_index);
        let lines: Vec<String> = samples
            .iter()
            .map(|s| {
                json!({"prompt_id": s.prompt_id, "k": s.sample_index, "seed": s.seed, "text": s.text,
                       "finish_reason": s.finish_reason.as_str(), "error": s.error})
                .to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(e) = samples.iter().find_map(|s| s.error.as_ref()) {
        tracing::warn!(error = %e, "a sample failed");
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
        "prefill_s": stats.prefill_s, "decode_s": stats.decode_s, "sample_s": stats.sample_s, "wall_s": stats.wall_s,
        "prefill_tokens_per_s": stats.prefill_tokens_per_s(), "decode_tokens_per_s": stats.decode_tokens_per_s(),
        "decode_calls": stats.decode_calls, "moved": stats.moved, "padded_steps": stats.padded_steps, "load_ms": info.load_ms,
        "backend": engine.kind(), "servers": servers,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} sequences ({} prompts × {} samples) on the {} backend, parallel {}, {} threads\n\
             prefill: {} tokens ({} without prefix sharing) in {:.2}s = {:.1} tokens/s\n\
             decode:  {} tokens in {:.2}s = {:.1} tokens/s (forward passes; choosing the tokens took {:.2}s more)\n\
             wall:    {:.2}s (model load {} ms excluded)",
            stats.sequences,
            a.prompts,
            a.samples,
            engine.kind(),
            info.parallel,
            info.threads,
            stats.prefill_tokens,
            stats.prompt_tokens_total,
            stats.prefill_s,
            stats.prefill_tokens_per_s(),
            stats.generated_tokens,
            stats.decode_s,
            stats.decode_tokens_per_s(),
            stats.sample_s,
            stats.wall_s,
            info.load_ms
        );
    }
    Ok(())
}

/// The `openai` backend on the `--endpoint` servers, each at `--parallel` requests in flight.
async fn remote_engine(a: &BenchArgs) -> Result<(crate::engine::Engine, Vec<crate::engine::remote::ServerIdentity>)> {
    use crate::engine::remote::{EndpointParams, Remote, RemoteApi, RemoteParams};
    if a.endpoints.is_empty() {
        bail!("--backend openai needs at least one --endpoint URL");
    }
    let endpoints = a
        .endpoints
        .iter()
        .map(|url| EndpointParams {
            url: url.clone(),
            served_model: a.served_model.clone(),
            api_key: None,
            max_concurrency: a.model.parallel.max(1),
            timeout: std::time::Duration::from_secs(600),
        })
        .collect();
    let api = match a.api {
        BenchApi::Chat => RemoteApi::Chat,
        BenchApi::Completions => RemoteApi::Completions,
    };
    let params = RemoteParams { api, endpoints, max_attempts: 5, backoff: crate::engine::remote::DEFAULT_BACKOFF };
    let (remote, servers) = Remote::connect(params).await.context("cannot use the endpoints")?;
    let config = crate::engine::EngineParams { parallel: remote.concurrency(), ..Default::default() };
    Ok((crate::engine::Engine::with_backend(std::sync::Arc::new(remote), config), servers))
}
