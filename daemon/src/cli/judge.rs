//! `driftwatch judge`: scores a JSONL file of samples with one judge plugin (the scoring itself
//! is [`crate::judge::cli::judge_file`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::engine::{Engine, EngineParams};
use crate::setup;

/// `driftwatch judge --plugin FILE.wasm --input SAMPLES.jsonl [--config SETTINGS.toml]`
#[derive(Debug, Clone, Args)]
pub struct JudgeArgs {
    /// The plugin component.
    #[arg(long)]
    pub plugin: PathBuf,
    /// JSON Lines file of samples: prompt, response (required), category, prompt_id,
    /// sample_index, seed, finish_reason (stop|length|cancelled|error) (optional).
    #[arg(long)]
    pub input: PathBuf,
    /// Plugin settings (timeout_ms, memory_mb, ..., and a `[config]` table for the plugin).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A GGUF judge model for plugins that ask for text (harm-rubric, guard); `default` is the
    /// cached default model (a 135M model is no reliable judge: use a capable one).
    #[arg(long)]
    pub judge_model: Option<String>,
}

/// `driftwatch judge`: one JSON verdict per line on standard output.
pub fn run(a: JudgeArgs) -> Result<()> {
    let model: Option<Arc<dyn crate::judge::JudgeModel>> = match &a.judge_model {
        Some(m) => {
            let path = setup::resolve_model(m).map_err(anyhow::Error::msg)?;
            crate::checkpoint::inspect_model(&path)?;
            let engine = Engine::start(EngineParams { parallel: 1, ..EngineParams::default() })?;
            Some(Arc::new(crate::daemon::judges::EngineJudgeModel::new(engine, path)))
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    crate::judge::cli::judge_file(&a, model, &mut out)
        .with_context(|| format!("judging {} with {}", a.input.display(), a.plugin.display()))?;
    out.flush()?;
    Ok(())
}
