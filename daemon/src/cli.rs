//! The command line: argument definitions and the commands `generate`, `doctor`, `bench`,
//! `serve`, `status`, `plugin` and `judge` (`compare` and `report` are defined in
//! [`crate::report::cmd`], `subscribe` in [`crate::api::subscribe`], `eval` in [`crate::eval`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::engine::{
    AdapterSpec, Engine, EngineEvent, EngineParams, GenerationRequest, Job, ModelSpec, SamplingParams,
};
use crate::setup;

/// driftwatch: safety-drift evaluation for fine-tuned GGUF checkpoints.
#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about, long_about = None)]
pub struct Cli {
    /// Log as JSON lines instead of readable lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate seeded samples for one prompt.
    Generate(GenerateArgs),
    /// Show the build (llama.cpp, CPU features, GPU) and what set-up has fetched.
    Doctor(DoctorArgs),
    /// Measure end-to-end generation throughput.
    Bench(BenchArgs),
    /// Run the daemon: watch folders, evaluate every checkpoint, store and publish results.
    Serve(ServeArgs),
    /// Evaluate one checkpoint without the daemon (same store, same results), with progress,
    /// a summary table and a verdict; `--fail-on-regression` makes it a CI gate.
    Eval(crate::eval::EvalArgs),
    /// Show the queue, the run in progress and recent results (reads the store).
    Status(StatusArgs),
    /// Judge plugins: scaffold a new one, or check a component.
    #[command(subcommand)]
    Plugin(crate::judge::cli::PluginCommand),
    /// Score a JSONL file of samples with one judge plugin (one JSON verdict per line).
    Judge(crate::judge::cli::JudgeArgs),
    /// Write a synthetic LoRA adapter: seeded random perturbations of a base model (not a
    /// trained fine-tune), to watch scores move without training anything.
    SynthAdapter(SynthArgs),
    /// Compare run RUN_A with baseline run RUN_B (paired by prompt).
    Compare(crate::report::cmd::CompareArgs),
    /// Report on stored runs (Markdown, self-contained HTML, or JSON).
    Report(crate::report::cmd::ReportArgs),
    /// Follow a running daemon's events (reconnects and resumes by itself).
    Subscribe(crate::api::subscribe::SubscribeArgs),
    /// The configuration: `config show` prints the effective one and where each value came from.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `driftwatch config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, every key with where its value came from (a file's
    /// line, an environment variable, the built-in defaults, or a key's default).
    Show(ConfigShowArgs),
}

/// `driftwatch config show`.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON: the source, and every setting with its value and origin.
    #[arg(long)]
    pub json: bool,
}

/// Where a command's configuration comes from (shared by every command that reads one).
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// The configuration file. Default: `./driftwatch.toml`, else `./config/driftwatch.toml`, else
    /// `$XDG_CONFIG_HOME/driftwatch/config.toml` (`~/.config/driftwatch/config.toml`), else the
    /// built-in defaults (the cached default model and suites, the bundled judges; see
    /// `driftwatch config show`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration and where it came from ([`crate::config::Config::discover`]).
    pub fn load(&self) -> Result<(crate::config::Config, crate::config::ConfigSource)> {
        Ok(crate::config::Config::discover(self.config.as_deref(), &setup::process_env)?)
    }
}

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

/// `driftwatch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `driftwatch status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The configuration (its data_dir holds the store).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The data folder holding the store (instead of --config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How many recent runs to show.
    #[arg(long, default_value_t = 10)]
    pub recent: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `driftwatch config show`: the effective configuration, each key with its origin.
fn config_show(a: ConfigShowArgs) -> Result<()> {
    let (config, source) = a.config.load()?;
    let (text, name) = source.document().with_context(|| format!("cannot read {source}"))?;
    let settings = config.explain(&text, &name, &setup::process_env);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"source": source.to_string(), "settings": settings}))?
        )?;
        return Ok(());
    }
    writeln!(out, "# configuration: {source}")?;
    let width = settings.iter().map(|s| s.key.len() + s.value.len() + 3).max().unwrap_or(0).min(90);
    for s in &settings {
        let line = format!("{} = {}", s.key, s.value);
        writeln!(out, "{line:<width$}  # {}", s.origin)?;
    }
    Ok(())
}

/// Model and engine options shared by the generation commands.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF model, or `default` for the cached default model.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A GGUF LoRA adapter applied over the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The adapter's scale.
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    pub adapter_scale: f32,
    /// Use this llama.cpp built-in chat template instead of the model's own.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// CPU threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Layers to offload to the GPU (builds with `--features cuda`).
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
}

impl ModelArgs {
    fn spec(&self) -> Result<ModelSpec> {
        let model = setup::resolve_model(&self.model).map_err(anyhow::Error::msg)?;
        Ok(ModelSpec {
            model,
            adapter: self
                .adapter
                .as_ref()
                .map(|p| AdapterSpec { path: setup::expand_tilde(p), scale: self.adapter_scale }),
            chat_template: self.chat_template.clone(),
            system_prompt: self.system.clone(),
            raw_prompts: false,
        })
    }

    fn engine(&self) -> Result<Engine> {
        let config = EngineParams {
            threads: self.threads,
            parallel: self.parallel,
            batch_size: 512.max(self.parallel),
            gpu_layers: self.gpu_layers,
            ..EngineParams::default()
        };
        Engine::start(config).context("cannot start the engine")
    }
}

/// Sampling options.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Top-p (1 disables).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Top-k (0 disables).
    #[arg(long, default_value_t = 40)]
    pub top_k: i32,
    /// Min-p (0 disables).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 disables).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Greedy decoding.
    #[arg(long)]
    pub greedy: bool,
    /// Most tokens per sample.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// A stop string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            greedy: self.greedy,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ..SamplingParams::default()
        }
    }
}

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

/// `driftwatch doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

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

/// Sets up `tracing`: JSON lines or readable lines on stderr, `RUST_LOG` overriding `level`.
pub fn init_logging(json: bool, level: &str) {
    use tracing_subscriber::EnvFilter;
    // llama.cpp's own logs are chatty at info level.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,driftwatch={level},llama_cpp_2=warn,llama-cpp-2=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve(_) => {}
        // The progress bar and the summary say what happened; warnings and errors still show.
        Command::Eval(_) => init_logging(cli.log_json, "warn"),
        _ => init_logging(cli.log_json, "info"),
    }
    match cli.command {
        Command::Generate(a) => generate(a).await,
        Command::Doctor(a) => doctor(a),
        Command::Bench(a) => bench(a).await,
        Command::Serve(a) => serve(a, cli.log_json).await,
        Command::Eval(a) => crate::eval::eval(a).await,
        Command::Status(a) => status(a),
        Command::Plugin(cmd) => {
            let mut out = std::io::stdout().lock();
            crate::judge::cli::run_plugin_command(&cmd, &mut out)?;
            out.flush()?;
            Ok(())
        }
        Command::Judge(a) => judge(a),
        Command::SynthAdapter(a) => {
            let base = setup::resolve_model(&a.base).map_err(anyhow::Error::msg)?;
            let spec = crate::synth::SynthSpec { rank: a.rank, noise: a.noise, seed: a.seed, targets: a.targets };
            let n = crate::synth::write_adapter(&base, &spec, &a.out)?;
            println!(
                "wrote {}: a SYNTHETIC LoRA adapter (seeded random perturbation, not a trained fine-tune) over {} matrices, rank {}, noise {}, seed {}",
                a.out.display(), n, spec.rank, spec.noise, spec.seed
            );
            Ok(())
        }
        Command::Compare(a) => crate::report::cmd::compare(a),
        Command::Report(a) => crate::report::cmd::report(a),
        Command::Subscribe(a) => Ok(crate::api::subscribe::run_subscribe(a).await?),
        Command::Config(ConfigCommand::Show(a)) => config_show(a),
    }
}

fn judge(a: crate::judge::cli::JudgeArgs) -> Result<()> {
    let model: Option<std::sync::Arc<dyn crate::judge::JudgeModel>> = match &a.judge_model {
        Some(m) => {
            let path = setup::resolve_model(m).map_err(anyhow::Error::msg)?;
            crate::checkpoint::inspect_model(&path)?;
            let engine = Engine::start(EngineParams { parallel: 1, ..EngineParams::default() })?;
            Some(std::sync::Arc::new(crate::daemon::judges::EngineJudgeModel::new(engine, path)))
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    crate::judge::cli::judge_file(&a, model, &mut out)
        .with_context(|| format!("judging {} with {}", a.input.display(), a.plugin.display()))?;
    out.flush()?;
    Ok(())
}

async fn serve(a: ServeArgs, log_json: bool) -> Result<()> {
    let (config, source) = a.config.load()?;
    let json = log_json || config.daemon.log_format == crate::config::LogFormat::Json;
    init_logging(json, &config.daemon.log_level);
    tracing::info!("configuration: {source}");
    let shutdown = shutdown_on_signals(|| tracing::info!("stop requested: finishing safely"));
    Ok(crate::daemon::run(config, shutdown).await?)
}

/// The one shutdown future of the long-running commands (`serve`, `eval`): a token cancelled
/// at the first SIGTERM or SIGINT (Ctrl-C), after `on_first` has said so; a second signal
/// exits at once with status 130. What is stored stays either way, and an interrupted run
/// resumes at the next start.
pub fn shutdown_on_signals(on_first: impl FnOnce() + Send + 'static) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        on_first();
        token.cancel();
        wait_for_signal().await;
        std::process::exit(130);
    });
    shutdown
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(a: StatusArgs) -> Result<()> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => a.config.load()?.0.daemon.data_dir,
    };
    let db = data_dir.join(crate::store::DB_FILE_NAME);
    if !db.is_file() {
        bail!("no store at {} (has the daemon run with this data_dir?)", db.display());
    }
    let store = crate::store::Store::open(&db)?;
    let s = store.status_summary(a.recent)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let name = |p: &str| {
        std::path::Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
    };
    println!("store: {} ({} checkpoints, last event #{})", db.display(), s.checkpoints, s.last_event_id);
    match s.running.as_slice() {
        [] => println!("running: nothing"),
        runs => {
            for r in runs {
                let pct = if r.total > 0 { 100.0 * r.done as f64 / r.total as f64 } else { 0.0 };
                println!(
                    "running: run {} · {} · {}/{} samples ({pct:.0}%)",
                    r.run.id,
                    name(&r.checkpoint_path),
                    r.done,
                    r.total
                );
            }
        }
    }
    if s.queued.is_empty() {
        println!("queue:   empty");
    } else {
        println!(
            "queue:   {}",
            s.queued
                .iter()
                .map(|r| format!("run {} ({})", r.run.id, name(&r.checkpoint_path)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("recent:");
    if s.recent.is_empty() {
        println!("  (none yet)");
    }
    for r in &s.recent {
        let mut line = format!("  run {} · {} · {}", r.run.id, name(&r.checkpoint_path), r.run.status.as_str());
        if let Some(scores) = &r.run.scores {
            if let Some(heads) = scores.get("headline").and_then(|h| h.as_array()) {
                for h in heads {
                    let f = |k: &str| h.get(k).and_then(|v| v.as_f64());
                    if let (Some(v), Some(lo), Some(hi)) = (f("value"), f("lo"), f("hi")) {
                        line.push_str(&format!(
                            " · {} {} {:.3} [{:.3}, {:.3}]",
                            h.get("judge").and_then(|v| v.as_str()).unwrap_or("?"),
                            h.get("metric").and_then(|v| v.as_str()).unwrap_or(""),
                            v,
                            lo,
                            hi
                        ));
                    }
                    if let Some(v) = h.get("verdict").and_then(|v| v.as_str()) {
                        line.push_str(&format!(" ({v})"));
                    }
                }
            }
        }
        if let Some(e) = &r.run.error {
            line.push_str(&format!(" · {e}"));
        }
        println!("{line}");
    }
    Ok(())
}

async fn generate(a: GenerateArgs) -> Result<()> {
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

fn doctor(a: DoctorArgs) -> Result<()> {
    let info = crate::engine::build_info();
    let model = setup::default_model_path();
    let cached = model.is_file();
    let wasm = setup::wasm_target_installed();
    let embedded = crate::daemon::judges::embedded_plugins();
    let invariant = crate::engine::batch_invariant(&info, &EngineParams::default());
    if a.json {
        let v = json!({
            "build": info, "default_model": {"path": model, "cached": cached, "sha256": setup::DEFAULT_MODEL_SHA256},
            "wasm32_wasip2_target": wasm, "embedded_plugins": embedded, "batch_invariant": invariant,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("driftwatch {}", info.driftwatch_version);
    println!("llama.cpp (ggml) {} commit {}", info.ggml_version, info.ggml_commit);
    println!(
        "compiled CPU features: {}",
        if info.compiled_cpu_features.is_empty() {
            "none (portable build: slow)".to_string()
        } else {
            info.compiled_cpu_features.join(" ")
        }
    );
    println!("llama.cpp system info: {}", info.system_info);
    println!(
        "GPU offload: {}",
        if info.gpu_offload { "yes (cuda build)" } else { "no (CPU build; `--features cuda` for GPU)" }
    );
    println!(
        "batch-invariant: {}",
        if invariant {
            "yes (a sample's text does not depend on the other jobs in its batches)"
        } else {
            "no (llamafile kernels or a GPU offload: recorded in each run's provenance)"
        }
    );
    println!("default model: {} ({})", model.display(), if cached { "cached" } else { "missing: run `make setup`" });
    println!(
        "bundled judges embedded in this binary: {}",
        if embedded.is_empty() {
            "none (found in plugins/dist at run time; `make plugins`)".into()
        } else {
            embedded.join(", ")
        }
    );
    println!(
        "wasm32-wasip2 target: {}",
        match wasm {
            Some(b) => yes(b).to_string(),
            None => "unknown (rustup not found)".into(),
        }
    );
    Ok(())
}

async fn bench(a: BenchArgs) -> Result<()> {
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
        None => include_str!("../../config/bench_prompts.txt").lines().map(str::to_owned).collect(),
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
