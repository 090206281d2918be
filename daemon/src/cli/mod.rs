//! The command line: the [`Cli`] and its [`Command`]s, the argument groups commands share
//! ([`ConfigArgs`], [`StoreArgs`], [`ModelArgs`], [`SamplingArgs`]), [`run`] (the dispatch),
//! logging, and the one shutdown future ([`shutdown_on_signals`]). Each command lives in its
//! own module.

pub mod bench;
pub mod compare;
pub mod config;
pub mod doctor;
pub mod eval;
pub mod generate;
pub mod judge;
pub mod plugin;
pub mod report;
pub mod sensitivity;
pub mod serve;
pub mod status;
pub mod subscribe;
pub mod synth;
pub mod testbed;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::engine::{AdapterSpec, Engine, EngineParams, ModelSpec, SamplingParams};
use crate::setup;
use crate::store::{Store, DB_FILE_NAME};

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

/// Whether SIGPIPE ends the process (`true`: the default disposition, as for `cat`) or is
/// ignored (`false`, what Rust's runtime sets: a write into a closed pipe is then an error, and
/// `println!` panics on it). Call while the process has one thread.
pub fn sigpipe_ends_the_process(ends: bool) {
    let disposition = if ends { libc::SIG_DFL } else { libc::SIG_IGN };
    // SAFETY: one of the two standard dispositions; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, disposition);
    }
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate seeded samples for one prompt.
    Generate(generate::GenerateArgs),
    /// Show the build (llama.cpp, CPU features, GPU) and what set-up has fetched.
    Doctor(doctor::DoctorArgs),
    /// Measure end-to-end generation throughput.
    Bench(bench::BenchArgs),
    /// Run the daemon: watch folders, evaluate every checkpoint, store and publish results.
    Serve(serve::ServeArgs),
    /// Evaluate one checkpoint without the daemon (same store, same results), with progress,
    /// a summary table and a verdict; `--fail-on-regression` makes it a CI gate.
    Eval(eval::EvalArgs),
    /// Evaluate one checkpoint under the default setup and every `[[variations]]` entry:
    /// scores, verdict stability and the variance by source (setup, prompt, seed).
    Sensitivity(sensitivity::SensitivityArgs),
    /// Show the queue, the run in progress and recent results (reads the store).
    Status(status::StatusArgs),
    /// Judge plugins: scaffold a new one, or check a component.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Score a JSONL file of samples with one judge plugin (one JSON verdict per line).
    Judge(judge::JudgeArgs),
    /// Write a synthetic LoRA adapter: seeded random perturbations of a base model (not a
    /// trained fine-tune), to watch scores move without training anything.
    SynthAdapter(synth::SynthArgs),
    /// Compare run RUN_A with baseline run RUN_B (paired by prompt).
    Compare(compare::CompareArgs),
    /// Report on stored runs (Markdown, self-contained HTML, or JSON).
    Report(report::ReportArgs),
    /// Follow a running daemon's events (reconnects and resumes by itself).
    Subscribe(subscribe::SubscribeArgs),
    /// The fine-tune testbed's own steps (split, training text); `scripts/testbed.sh` runs
    /// them around llama.cpp's trainer.
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
    /// The configuration: `config show` prints the effective one and where each value came from.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        // `serve` logs as its configuration says.
        Command::Serve(_) => {}
        // The progress bar and the summary say what happened; warnings and errors still show.
        Command::Eval(_) | Command::Sensitivity(_) => init_logging(cli.log_json, "warn"),
        _ => init_logging(cli.log_json, "info"),
    }
    match cli.command {
        Command::Generate(a) => generate::run(a).await,
        Command::Doctor(a) => doctor::run(a),
        Command::Bench(a) => bench::run(a).await,
        Command::Serve(a) => serve::run(a, cli.log_json).await,
        Command::Eval(a) => eval::run(a).await,
        Command::Sensitivity(a) => sensitivity::run(a).await,
        Command::Status(a) => status::run(a),
        Command::Plugin(cmd) => plugin::run(cmd),
        // A judge plugin that asks a judge model waits for the engine's answer on its own
        // thread ([`crate::engine::Engine::generate_blocking`]), which a runtime worker must not.
        Command::Judge(a) => tokio::task::spawn_blocking(move || judge::run(a)).await?,
        Command::SynthAdapter(a) => synth::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Report(a) => report::run(a),
        Command::Subscribe(a) => Ok(subscribe::run(a).await?),
        Command::Config(cmd) => config::run(cmd),
        Command::Testbed(cmd) => testbed::run(cmd),
    }
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

/// Where the store is, for the commands that only read one (`status`, `compare`, `report`):
/// `--data-dir`, or the configuration's `daemon.data_dir` (found as every command finds it:
/// `--config`, `./driftwatch.toml`, the user's config file, the built-in defaults, i.e.
/// `./data` or `DRIFTWATCH_DATA_DIR`).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The data folder holding the store (instead of --config; statistics settings: defaults).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// Its `daemon.data_dir` and `[stats]` are used.
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl StoreArgs {
    /// Opens the existing store (never creates one) and the statistics settings.
    pub fn open(&self) -> Result<(Store, crate::stats::StatsParams)> {
        let (dir, cfg) = match (&self.data_dir, &self.config.config) {
            (Some(d), _) => (d.clone(), crate::config::StatsConfig::default()),
            (None, Some(f)) => {
                let c = crate::config::Config::load(f).with_context(|| format!("cannot load {}", f.display()))?;
                (c.daemon.data_dir, c.stats)
            }
            (None, None) => match self.config.load() {
                Ok((c, _)) => (c.daemon.data_dir, c.stats),
                // The defaults can fail for reasons a report does not care about (e.g. no
                // $HOME for the default model); the data folder is all it needs.
                Err(_) => (
                    std::env::var_os("DRIFTWATCH_DATA_DIR").map_or_else(|| PathBuf::from("./data"), PathBuf::from),
                    crate::config::StatsConfig::default(),
                ),
            },
        };
        Ok((open_existing(&dir)?, crate::scoring::stats_config(&cfg)))
    }
}

/// Opens the store in `dir`, failing clearly when there is none (a report must not create one).
pub fn open_existing(dir: &Path) -> Result<Store> {
    let file = dir.join(DB_FILE_NAME);
    if !file.is_file() {
        bail!("no driftwatch store at {} (give --data-dir or --config)", file.display());
    }
    Store::open(&file).with_context(|| format!("cannot open the store at {}", file.display()))
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
    /// Layers to offload to the GPU (builds with `--features cuda`). Default: every layer when
    /// a GPU is there, else none.
    #[arg(long)]
    pub gpu_layers: Option<u32>,
    /// Let a decode step with one sequence run alone instead of padding it to two (about twice
    /// as fast at `--parallel 1`; a text may then differ from the same job decoded in a batch).
    #[arg(long)]
    pub no_batch_invariance: bool,
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
            served: None,
        })
    }

    fn engine(&self) -> Result<Engine> {
        let config = EngineParams {
            threads: self.threads,
            parallel: self.parallel,
            batch_size: 512.max(self.parallel),
            gpu_layers: self.gpu_layers.unwrap_or_else(crate::engine::default_gpu_layers),
            batch_invariant: !self.no_batch_invariance,
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

/// Exit status when a command was interrupted (by a second signal, or `eval` by the first).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An exit with a given status and a message (the binary prints the message and exits so).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process exit status.
    pub code: u8,
    /// What to say on standard error.
    pub message: String,
}

/// Prints to standard output; a closed pipe (`| head`) ends the output quietly.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r.context("cannot write to standard output")?),
    }
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

/// The one shutdown future of the long-running commands (`serve`, `eval`, `subscribe`), and
/// the only place that installs signal handlers: a token cancelled at the first SIGTERM or
/// SIGINT (Ctrl-C), after `on_first` has said so; a second signal exits at once with status
/// 130. What is stored stays either way, and an interrupted run resumes at the next start.
pub fn shutdown_on_signals(on_first: impl FnOnce() + Send + 'static) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    // Registered here and now, not when the task below first runs: until a handler is
    // registered, SIGTERM kills the process outright (a daemon stopped while it was starting
    // ended by the signal instead of stopping safely).
    let mut signals = Signals::register();
    tokio::spawn(async move {
        signals.next().await;
        on_first();
        token.cancel();
        signals.next().await;
        std::process::exit(EXIT_INTERRUPTED.into());
    });
    shutdown
}

/// SIGTERM and SIGINT, registered with tokio at once.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        match (&mut self.term, &mut self.int) {
            (Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Some(one), None) | (None, Some(one)) => {
                one.recv().await;
            }
            (None, None) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
